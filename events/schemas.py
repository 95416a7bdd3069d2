"""Validation schemas of the inbound envelope and payloads (docs/event-contract.md), as pydantic TypedDicts.

Every field is strict: a number where a string is expected, or ``"5"`` where an integer is expected, is
a producer bug we report rather than coerce, because the stored event must be exactly what was sent.
Unknown fields are refused too (``extra="forbid"``), so that a misspelt ``event_id`` is not silently
replaced by a derived one; free-form data belongs under ``payload.metadata``.

TypedDicts rather than models: validation returns the plain dicts we store, and it runs entirely in
pydantic-core, about 2.5x faster than models with Python validators on the ingestion hot path. The two
rules a schema cannot say (prompt xor messages; a real calendar date) are checked in ``events.codec``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import ConfigDict, Field, StrictFloat, StrictInt, StrictStr, TypeAdapter
from typing_extensions import TypedDict

from events.names import FEEDBACK_RECEIVED, INTERACTION_LOGGED

_STRICT = ConfigDict(extra="forbid", strict=True)

# Lengths match the SQL columns these values land in (events/tables.py).
Name = Annotated[StrictStr, Field(min_length=1, max_length=256)]
Id = Annotated[StrictStr, Field(max_length=256)]
RequestId = Annotated[StrictStr, Field(min_length=1, max_length=256)]
EventId = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Number = StrictInt | StrictFloat

#: RFC 3339 date-time with an offset (``Z`` or ``±HH:MM``); ``datetime.fromisoformat`` accepts looser forms.
RFC3339_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
Timestamp = Annotated[StrictStr, Field(pattern=RFC3339_PATTERN)]


class ModelRef(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    name: Name
    version: Annotated[StrictStr, Field(min_length=1, max_length=128)]


class Message(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    role: Annotated[StrictStr, Field(min_length=1)]
    content: StrictStr


class InteractionLoggedV1(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    request_id: RequestId
    model: ModelRef
    prompt: NotRequired[StrictStr | None]
    messages: NotRequired[list[Message] | None]
    response: StrictStr
    latency_ms: NotRequired[Annotated[Number, Field(ge=0)] | None]
    user: NotRequired[Id | None]
    session_id: NotRequired[Id | None]
    metadata: NotRequired[dict[str, Any] | None]


class Preference(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    chosen: StrictStr
    rejected: StrictStr


class Correction(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    response: StrictStr


class Flag(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    category: Literal["toxic", "jailbreak", "hallucination", "pii", "other"]
    note: NotRequired[StrictStr | None]


class Signal(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    name: Annotated[StrictStr, Field(min_length=1)]
    value: NotRequired[Number | None]


def _strict(name: str, fields: dict[str, Any]) -> type:
    """A TypedDict built from ``fields`` that pydantic validates strictly, refusing unknown keys."""
    typed = TypedDict(name, fields)  # type: ignore[misc]
    typed.__pydantic_config__ = _STRICT  # type: ignore[attr-defined]
    return typed


def _feedback(kind: str, value: Any) -> type:
    """The payload schema of one feedback kind (request id, the kind's value, optional user and comment)."""
    return _strict(
        f"Feedback_{kind}",
        {
            "request_id": RequestId,
            "kind": Literal[kind],
            "value": value,
            "user": NotRequired[Id | None],
            "comment": NotRequired[StrictStr | None],
        },
    )


FEEDBACK_VALUES: dict[str, Any] = {
    "thumbs": Literal["up", "down"],
    "rating": Annotated[StrictInt, Field(ge=1, le=5)],
    "preference": Preference,
    "correction": Correction,
    "flag": Flag,
    "signal": Signal,
}


def _envelope(payload: Any, event_type: str) -> type:
    return _strict(
        f"Envelope_{event_type}",
        {
            "event_id": NotRequired[EventId | None],
            "type": Literal[event_type],
            "schema_version": NotRequired[StrictInt],
            "occurred_at": Timestamp,
            "source": Name,
            "payload": payload,
        },
    )


#: Whole-message validators, by (type, schema_version) and, for feedback, by kind.
INTERACTION_V1: TypeAdapter[Any] = TypeAdapter(_envelope(InteractionLoggedV1, INTERACTION_LOGGED))
FEEDBACK_V1: dict[str, TypeAdapter[Any]] = {
    kind: TypeAdapter(_envelope(_feedback(kind, value), FEEDBACK_RECEIVED)) for kind, value in FEEDBACK_VALUES.items()
}

"""Pydantic models of the inbound envelope and payloads (DESIGN.md §2).

Every field is strict: a number where a string is expected, or ``"5"`` where an integer is expected, is
a producer bug we report rather than coerce, because the stored event must be exactly what was sent.
Unknown fields are refused too (``extra="forbid"``), so that a misspelt ``event_id`` is not silently
replaced by a derived one; free-form data belongs under ``payload.metadata``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)

NonEmpty = Annotated[StrictStr, Field(min_length=1)]
# Lengths match the SQL columns these values land in (events/tables.py).
Name = Annotated[StrictStr, Field(min_length=1, max_length=256)]
Id = Annotated[StrictStr, Field(max_length=256)]

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
Number = StrictInt | StrictFloat


def parse_rfc3339(value: object) -> datetime:
    """Parse an RFC 3339 timestamp that carries an offset, and normalise it to UTC."""
    if not isinstance(value, str):
        raise ValueError(f"expected an RFC 3339 timestamp string, got {type(value).__name__}")
    if not _RFC3339.match(value):
        if re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?$", value):
            raise ValueError(f"{value!r} has no UTC offset; add Z or +HH:MM")
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp (e.g. 2026-01-31T12:00:00+01:00)")
    text = value[:-1] + "+00:00" if value[-1] in "Zz" else value
    date, time_part = text[:10], text[11:]
    if "." in time_part:  # fromisoformat takes at most 6 fractional digits
        clock, rest = time_part.split(".", 1)
        digits = re.match(r"\d+", rest)
        assert digits is not None
        time_part = f"{clock}.{digits.group()[:6].ljust(6, '0')}{rest[digits.end() :]}"
    try:
        parsed = datetime.fromisoformat(f"{date}T{time_part}")
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid date and time: {exc}") from None
    return parsed.astimezone(UTC)


class Envelope(BaseModel):
    """The envelope; ``payload`` is validated separately once the type and version are known."""

    model_config = _STRICT

    event_id: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    type: StrictStr
    schema_version: StrictInt = 1
    occurred_at: datetime
    source: Name
    payload: dict[str, Any]

    @field_validator("occurred_at", mode="plain")
    @classmethod
    def _occurred_at(cls, value: object) -> datetime:
        return parse_rfc3339(value)


class ModelRef(BaseModel):
    model_config = _STRICT
    name: Name
    version: Annotated[StrictStr, Field(min_length=1, max_length=128)]


class Message(BaseModel):
    model_config = _STRICT
    role: NonEmpty
    content: StrictStr


class InteractionLoggedV1(BaseModel):
    model_config = _STRICT

    request_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    model: ModelRef
    prompt: StrictStr | None = None
    messages: list[Message] | None = None
    response: StrictStr
    latency_ms: Annotated[Number, Field(ge=0)] | None = None
    user: Id | None = None
    session_id: Id | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> InteractionLoggedV1:
        if self.prompt is None and self.messages is None:
            raise ValueError("either 'prompt' (a string) or 'messages' (a list of {role, content}) is required")
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give either 'prompt' or 'messages', not both")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' is empty; it needs at least one {role, content}")
        return self


class Preference(BaseModel):
    model_config = _STRICT
    chosen: StrictStr
    rejected: StrictStr


class Correction(BaseModel):
    model_config = _STRICT
    response: StrictStr


class Flag(BaseModel):
    model_config = _STRICT
    category: Literal["toxic", "jailbreak", "hallucination", "pii", "other"]
    note: StrictStr | None = None


class Signal(BaseModel):
    model_config = _STRICT
    name: NonEmpty
    value: Number | None = None


class _FeedbackBase(BaseModel):
    model_config = _STRICT
    request_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    user: Id | None = None
    comment: StrictStr | None = None


class ThumbsFeedback(_FeedbackBase):
    kind: Literal["thumbs"]
    value: Literal["up", "down"]


class RatingFeedback(_FeedbackBase):
    kind: Literal["rating"]
    value: Annotated[StrictInt, Field(ge=1, le=5)]


class PreferenceFeedback(_FeedbackBase):
    kind: Literal["preference"]
    value: Preference


class CorrectionFeedback(_FeedbackBase):
    kind: Literal["correction"]
    value: Correction


class FlagFeedback(_FeedbackBase):
    kind: Literal["flag"]
    value: Flag


class SignalFeedback(_FeedbackBase):
    kind: Literal["signal"]
    value: Signal


FEEDBACK_MODELS: dict[str, type[_FeedbackBase]] = {
    "thumbs": ThumbsFeedback,
    "rating": RatingFeedback,
    "preference": PreferenceFeedback,
    "correction": CorrectionFeedback,
    "flag": FlagFeedback,
    "signal": SignalFeedback,
}

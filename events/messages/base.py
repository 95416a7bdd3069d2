"""What every internal event record is, and the words the audit trail describes decisions with.

A record is a frozen dataclass, named in the past tense, with its stored type name (``event_type``), its payload
codec (:meth:`EventRecord.to_payload` / :meth:`EventRecord.from_payload`) and its audit description. The payload
is the wire format: stored, hashed by the audit chain and published on Kafka, so ``to_payload`` writes exactly
the keys and values the producers wrote before these records existed (key order does not matter: the store's
canonical JSON sorts keys).

The audit describes what is *stored*, which may predate a record's current shape or be of an unexpected one,
so :meth:`EventRecord.describe_payload` reads the stored mapping as leniently as the trail always has: the same
payload must always give the same words, or records chained earlier would no longer verify.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, NamedTuple, Self

from events.model import Event
from events.names import MODEL_NAMES


class Description(NamedTuple):
    """A decision in words an auditor reads: what it is about, which model version, and why."""

    subject: str
    model: str | None
    reason: str


class EventRecord(ABC):
    """One internal event type: its stored name, its payload codec and its audit description."""

    #: The stored type name (events.names), e.g. ``"anomaly.detected"``.
    event_type: ClassVar[str]

    @abstractmethod
    def to_payload(self) -> dict[str, Any]:
        """The payload as stored: plain JSON data (lists, not tuples)."""

    @classmethod
    @abstractmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        """The record of a stored payload.

        Raises:
            KeyError: a key the record needs is missing.
        """

    @staticmethod
    @abstractmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        """A stored payload of this type in words (lenient: a missing key reads as ``None``).

        Raises:
            AttributeError, KeyError, TypeError, ValueError: a payload of an unexpected shape (the audit trail
                then records the event with its type as subject).
        """

    def describe(self) -> Description:
        """This record in the words its audit record will have."""
        return self.describe_payload(self.to_payload())

    def to_event(self, event_id: str, occurred_at: datetime, source: str) -> Event:
        """The event that stores this record."""
        return Event(
            event_id=event_id, type=self.event_type, occurred_at=occurred_at, source=source, payload=self.to_payload()
        )


# --- words shared by the descriptions ----------------------------------------------------------------


def version_word(version: Any) -> str:
    """``"v3"`` for 3, ``"3"`` or ``"v3"``."""
    return str(version) if str(version).startswith("v") else f"v{version}"


def subject_words(subject: str) -> tuple[str, str | None]:
    """A monitor's subject ("model:assistant@2", "user:u-17", "event:<id>") as words, and its model."""
    kind, _, rest = subject.partition(":")
    if kind == "model" and "@" in rest:
        name, _, version = rest.rpartition("@")
        return f"{name} {version_word(version)}", f"{name}:{version}"
    return (f"{kind} {rest}" if rest else subject), None


def version_words(payload: Mapping[str, Any]) -> tuple[str, str | None]:
    """(subject, model) of a payload naming a registered version (``name``/``kind`` and ``version``)."""
    name = payload.get("name") or MODEL_NAMES.get(payload.get("kind", ""), payload.get("kind") or "model")
    version = payload.get("version", payload.get("model_version"))
    if version is None:
        return str(name), str(name)
    was = f" (was {version_word(payload['previous_version'])})" if payload.get("previous_version") is not None else ""
    return f"{name} {version_word(version)}{was}", f"{name}:{version}"


def target_words(action: str, target: Mapping[str, Any]) -> tuple[str, str | None]:
    """(subject, model) of an enforcement action on its target."""
    if "model" in target:
        about, model = version_words({"name": target["model"], "version": target.get("version")})
    elif "user" in target:
        about, model = f"user {target['user']}", None
    elif action == "publish_guard_rule":
        about, model = subject_words(str(target.get("subject", "")))
        about = f"detector {target.get('detector')} / {about}"
    elif "event_ids" in target:
        about, model = f"{len(target['event_ids'])} events", None
    else:
        about, model = " ".join(f"{v} {k}" for k, v in sorted(target.items())), None
    return f"{action} {about}".strip(), model

"""The event contract (docs/event-contract.md) as plain frozen dataclasses.

Nothing here does I/O; every other package imports these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The type names are defined once, in events.names; these are the ones every importer of the envelope uses.
from events.names import FEEDBACK_RECEIVED as FEEDBACK_RECEIVED
from events.names import INBOUND_TYPES as INBOUND_TYPES
from events.names import INTERACTION_LOGGED as INTERACTION_LOGGED
from events.names import INTERNAL_TYPES as INTERNAL_TYPES

ALL_TYPES: frozenset[str] = INBOUND_TYPES | INTERNAL_TYPES

#: Schema versions this daemon can read, per inbound type. A message with any other version is
#: dead-lettered as "unknown schema version" rather than guessed at.
KNOWN_SCHEMA_VERSIONS: Mapping[str, frozenset[int]] = {
    INTERACTION_LOGGED: frozenset({1}),
    FEEDBACK_RECEIVED: frozenset({1}),
}

FEEDBACK_KINDS: tuple[str, ...] = ("thumbs", "rating", "preference", "correction", "flag", "signal")
FLAG_CATEGORIES: tuple[str, ...] = ("toxic", "jailbreak", "hallucination", "pii", "other")

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024


class once_property:  # lower case: it is used as a decorator, like property
    """A property computed on first read and kept in the instance's ``__dict__`` (later reads are plain attribute
    reads). Like ``functools.cached_property``, whose ``__get__`` takes a lock on Python 3.11 and cost more than
    the value it kept (3 µs a read in the monitors); it works on frozen dataclasses for the same reason (it never
    goes through ``__setattr__``) and is not a field, so equality and ``dataclasses.replace`` are unchanged."""

    def __init__(self, compute: Any) -> None:
        self.compute, self.name, self.__doc__ = compute, compute.__name__, compute.__doc__

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.compute(instance)
        return value


@dataclass(frozen=True)
class Event:
    """The envelope every stored event has.

    ``occurred_at`` is timezone-aware and normalised to UTC on the way in, so that range queries and
    canonical JSON do not depend on the producer's offset.
    """

    event_id: str
    type: str
    occurred_at: datetime
    source: str
    payload: Mapping[str, Any]
    schema_version: int = 1

    @once_property  # the monitors read it several times per event
    def request_id(self) -> str | None:
        value = self.payload.get("request_id")
        return value if isinstance(value, str) else None

    @once_property
    def payload_json(self) -> str:
        """The payload's canonical JSON, the text the store writes. ``events.codec.decode_inbound`` sets it while
        validating (it needs the text to check the keys), so an ingested payload is serialised once.

        Raises:
            ValueError: NaN or infinity; TypeError: a value JSON cannot hold (see ``canonical_json``).
        """
        from events.codec import canonical_json  # codec imports this module

        return canonical_json(self.payload)


@dataclass(frozen=True)
class KafkaCoordinates:
    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True)
class StoredEvent:
    """An event as read back from the store, with its global position."""

    seq: int
    event: Event
    recorded_at: datetime
    origin: KafkaCoordinates | None = None


@dataclass(frozen=True)
class ConsumerOffset:
    """The next offset a consumer group should read from a partition (Kafka's convention: last + 1)."""

    group_id: str
    topic: str
    partition: int
    next_offset: int


@dataclass(frozen=True)
class DeadLetter:
    """A message that could not become an event, kept with its raw bytes and a reason a person can act on.

    ``source_key`` makes dead letters idempotent: a redelivered bad Kafka message is recorded once.
    """

    source_key: str
    reason: str
    error_kind: str
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    origin: KafkaCoordinates | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class StoredDeadLetter:
    id: int
    dead_letter: DeadLetter
    created_at: datetime
    published_at: datetime | None
    requeued_at: datetime | None


@dataclass(frozen=True)
class AppendResult:
    """What one atomic append did."""

    appended: int
    duplicates: int
    dead_letters: int
    offsets: int = 0
    dead_letter_ids: tuple[int, ...] = field(default=())


def user_prompt(payload: Mapping[str, Any]) -> str | None:
    """What the user asked in an ``interaction.logged`` payload: its ``prompt``, or the user turns of its
    ``messages`` joined by blank lines (None when there are none). The guard's rules and the jailbreak detector
    read prompts this way."""
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt
    messages = payload.get("messages")
    if isinstance(messages, list):
        turns = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        text = "\n\n".join(t for t in turns if isinstance(t, str))
        return text or None
    return None

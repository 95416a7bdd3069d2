"""A Kafka record becomes an event or a dead letter (pure; no I/O)."""

from __future__ import annotations

from typing import Any, Protocol

from events.codec import decode_inbound
from events.errors import EventValidationError
from events.model import DEFAULT_MAX_MESSAGE_BYTES, DeadLetter, Event, KafkaCoordinates

#: Header that `alignd dlq requeue` puts on a message it sends back: the coordinates it first had, so the
#: event id derived for a message without one stays the same however many times it is requeued.
REQUEUED_FROM_HEADER = "alignd-requeued-from"


class KafkaRecord(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


def _headers(record: KafkaRecord) -> tuple[tuple[str, bytes], ...]:
    return tuple((str(name), bytes(value) if value is not None else b"") for name, value in (record.headers or ()))


def decode_record(record: KafkaRecord, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Event | DeadLetter:
    """Validate one record against the event contract.

    Returns the event, or a :class:`DeadLetter` carrying the raw bytes, the coordinates and the reason.
    The fallback event id is ``topic:partition:offset`` so a redelivered message without an id is still
    recognised as a duplicate (DESIGN.md §2).
    """
    fallback = f"{record.topic}:{record.partition}:{record.offset}"
    if record.headers:
        for name, value in record.headers:
            if name == REQUEUED_FROM_HEADER and value:
                fallback = bytes(value).decode("utf-8", errors="replace")
    try:
        return decode_inbound(record.value, fallback_event_id=fallback, max_bytes=max_bytes)
    except EventValidationError as exc:
        origin = KafkaCoordinates(record.topic, record.partition, record.offset)
        return DeadLetter(
            source_key=str(origin),
            reason=exc.reason,
            error_kind=exc.kind,
            value=record.value,
            key=record.key,
            headers=_headers(record),
            origin=origin,
            event_id=exc.event_id,
        )

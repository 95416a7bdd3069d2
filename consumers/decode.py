"""A Kafka record becomes an event or a dead letter (pure; no I/O)."""

from __future__ import annotations

from typing import Any, Protocol

from events.codec import decode_inbound
from events.errors import EventValidationError
from events.model import DEFAULT_MAX_MESSAGE_BYTES, DeadLetter, Event, KafkaCoordinates

#: The error kind of a message the decoder itself failed on (a bug in alignd, not in the message as far as we
#: know): dead-lettered like any other, so one message can never stop ingestion, and requeued after a fix.
DECODER_ERROR = "decoder_error"

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


def record_headers(record: KafkaRecord) -> tuple[tuple[str, bytes], ...]:
    return tuple((str(name), bytes(value) if value is not None else b"") for name, value in (record.headers or ()))


def decode_record(record: KafkaRecord, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Event | DeadLetter:
    """Validate one record against the event contract.

    Returns the event, or a :class:`DeadLetter` carrying the raw bytes, the coordinates and the reason.
    The fallback event id is ``topic:partition:offset`` so a redelivered message without an id is still
    recognised as a duplicate (docs/event-contract.md). Never raises for anything in the record: an exception the
    decoder did not foresee becomes a dead letter of kind ``decoder_error`` with the exception named
    (defence in depth: an ``OverflowError`` from a date once stopped ingestion for good).
    """
    origin = KafkaCoordinates(record.topic, record.partition, record.offset)
    try:
        fallback = str(origin)
        for name, value in record.headers or ():
            if name == REQUEUED_FROM_HEADER and value:
                fallback = bytes(value).decode("utf-8", errors="replace")
        return decode_inbound(record.value, fallback_event_id=fallback, max_bytes=max_bytes)
    except EventValidationError as exc:
        return _letter(record, origin, exc.kind, exc.reason, exc.event_id)
    except Exception as exc:  # noqa: BLE001 - see the docstring: the record goes to dead letters, named
        reason = (
            f"alignd failed to decode this message ({type(exc).__name__}: {str(exc)[:300]}); this is a bug in "
            "alignd, please report it. The message is kept here: `alignd dlq requeue` sends it back after a fix"
        )
        return _letter(record, origin, DECODER_ERROR, reason, None)


def _letter(record: KafkaRecord, origin: KafkaCoordinates, kind: str, reason: str, event_id: str | None) -> DeadLetter:
    value = record.value if isinstance(record.value, bytes | None) else None
    key = record.key if isinstance(record.key, bytes | None) else None
    try:
        headers = record_headers(record)
    except Exception:  # noqa: BLE001 - headers that cannot be read are not worth losing the letter for
        headers = ()
    return DeadLetter(
        source_key=str(origin),
        reason=reason,
        error_kind=kind,
        value=value,
        key=key,
        headers=headers,
        origin=origin,
        event_id=event_id,
    )

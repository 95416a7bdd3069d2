"""A Kafka record becomes an event or a dead letter that keeps everything needed to act on it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String

from consumers.decode import REQUEUED_FROM_HEADER, decode_record
from events.model import DeadLetter, Event, KafkaCoordinates
from events.tables import dead_letters


@dataclass
class FakeRecord:
    """The attributes of kafka-python's ConsumerRecord that decoding reads."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes | None]] | None = field(default_factory=list)


def interaction_bytes(**envelope: Any) -> bytes:
    document: dict[str, Any] = {
        "type": "interaction.logged",
        "occurred_at": "2026-01-31T12:00:00Z",
        "source": "chat-api",
        "payload": {
            "request_id": "req-1",
            "model": {"name": "smollm2", "version": "1"},
            "prompt": "hi",
            "response": "hello",
        },
    }
    document.update(envelope)
    return json.dumps(document).encode("utf-8")


def test_good_record_without_event_id_gets_topic_partition_offset_as_id() -> None:
    record = FakeRecord("alignd.interactions", 3, 42, interaction_bytes())

    decoded = decode_record(record)

    assert isinstance(decoded, Event)
    assert decoded.event_id == "alignd.interactions:3:42"
    assert decoded.request_id == "req-1"


def test_good_record_keeps_its_declared_event_id() -> None:
    record = FakeRecord("alignd.interactions", 0, 7, interaction_bytes(event_id="producer-id-1"))

    decoded = decode_record(record)

    assert isinstance(decoded, Event)
    assert decoded.event_id == "producer-id-1"


def test_same_coordinates_give_the_same_fallback_id_on_redelivery() -> None:
    first = decode_record(FakeRecord("alignd.interactions", 1, 9, interaction_bytes()))
    again = decode_record(FakeRecord("alignd.interactions", 1, 9, interaction_bytes()))

    assert isinstance(first, Event) and isinstance(again, Event)
    assert first.event_id == again.event_id == "alignd.interactions:1:9"


def test_bad_record_becomes_a_dead_letter_preserving_bytes_key_headers_and_origin() -> None:
    raw = b'{"type": "interaction.logged", "oops'
    record = FakeRecord(
        "alignd.feedback",
        2,
        1001,
        raw,
        key=b"req-7",
        headers=[("trace-id", b"abc"), ("content-type", b"json")],
    )

    decoded = decode_record(record)

    assert isinstance(decoded, DeadLetter)
    assert decoded.source_key == "alignd.feedback:2:1001"
    assert decoded.origin == KafkaCoordinates("alignd.feedback", 2, 1001)
    assert decoded.value == raw
    assert decoded.key == b"req-7"
    assert decoded.headers == (("trace-id", b"abc"), ("content-type", b"json"))
    assert decoded.error_kind == "invalid_json"
    assert "JSON" in decoded.reason


def test_dead_letter_reason_and_kind_come_from_validation() -> None:
    record = FakeRecord("alignd.interactions", 0, 5, interaction_bytes(event_id="e-5", schema_version=9))

    decoded = decode_record(record)

    assert isinstance(decoded, DeadLetter)
    assert decoded.error_kind == "unknown_schema_version"
    assert "schema_version" in decoded.reason
    assert decoded.event_id == "e-5"


def test_dead_letter_without_declared_event_id_has_none() -> None:
    record = FakeRecord("alignd.interactions", 0, 6, interaction_bytes(source=""))

    decoded = decode_record(record)

    assert isinstance(decoded, DeadLetter)
    assert decoded.event_id is None
    assert "source" in decoded.reason


def test_dead_letter_event_id_fits_the_dead_letters_column() -> None:
    record = FakeRecord("alignd.interactions", 0, 9, interaction_bytes(event_id="e" * 300))

    decoded = decode_record(record)

    assert isinstance(decoded, DeadLetter)
    assert "event_id" in decoded.reason
    column = dead_letters.c.event_id.type
    assert isinstance(column, String) and column.length is not None
    assert decoded.event_id is None or len(decoded.event_id) <= column.length


def test_tombstone_record_becomes_an_empty_dead_letter() -> None:
    decoded = decode_record(FakeRecord("alignd.interactions", 0, 8, None, key=b"k"))

    assert isinstance(decoded, DeadLetter)
    assert decoded.error_kind == "empty"
    assert decoded.value is None
    assert decoded.key == b"k"


def test_max_bytes_is_applied_to_the_record_value() -> None:
    raw = interaction_bytes()

    decoded = decode_record(FakeRecord("alignd.interactions", 0, 1, raw), max_bytes=len(raw) - 1)

    assert isinstance(decoded, DeadLetter)
    assert decoded.error_kind == "oversized"
    assert decoded.value == raw


def test_missing_or_null_headers_are_kept_as_empty_values() -> None:
    no_headers = decode_record(FakeRecord("t", 0, 1, b"{", headers=None))
    null_value = decode_record(FakeRecord("t", 0, 2, b"{", headers=[("h", None)]))

    assert isinstance(no_headers, DeadLetter) and isinstance(null_value, DeadLetter)
    assert no_headers.headers == ()
    assert null_value.headers == (("h", b""),)


def test_requeued_from_header_makes_the_fallback_id_the_original_coordinates() -> None:
    record = FakeRecord(
        "alignd.interactions",
        0,
        500,
        interaction_bytes(),
        headers=[(REQUEUED_FROM_HEADER, b"alignd.interactions:3:42")],
    )

    decoded = decode_record(record)

    assert isinstance(decoded, Event)
    assert decoded.event_id == "alignd.interactions:3:42"


def test_requeued_message_with_declared_event_id_keeps_it() -> None:
    record = FakeRecord(
        "alignd.interactions",
        0,
        501,
        interaction_bytes(event_id="producer-id-2"),
        headers=[(REQUEUED_FROM_HEADER, b"alignd.interactions:3:43")],
    )

    decoded = decode_record(record)

    assert isinstance(decoded, Event)
    assert decoded.event_id == "producer-id-2"


def test_requeued_bad_message_is_dead_lettered_at_its_new_coordinates() -> None:
    record = FakeRecord(
        "alignd.interactions", 0, 502, b"nope", headers=[(REQUEUED_FROM_HEADER, b"alignd.interactions:3:44")]
    )

    decoded = decode_record(record)

    assert isinstance(decoded, DeadLetter)
    assert decoded.source_key == "alignd.interactions:0:502"
    assert decoded.origin == KafkaCoordinates("alignd.interactions", 0, 502)
    assert (REQUEUED_FROM_HEADER, b"alignd.interactions:3:44") in decoded.headers


def test_empty_requeued_from_header_is_ignored() -> None:
    record = FakeRecord("alignd.interactions", 4, 12, interaction_bytes(), headers=[(REQUEUED_FROM_HEADER, b"")])

    decoded = decode_record(record)

    assert isinstance(decoded, Event)
    assert decoded.event_id == "alignd.interactions:4:12"

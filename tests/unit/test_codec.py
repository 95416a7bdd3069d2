"""The inbound event contract (docs/event-contract.md): what `decode_inbound` accepts, what it refuses and why."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.codec import canonical_json, decode_inbound, encode_event
from events.errors import EventValidationError
from events.model import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FEEDBACK_RECEIVED,
    INTERACTION_LOGGED,
    INTERNAL_TYPES,
    Event,
)

FALLBACK = "alignd.interactions:0:17"

INTERACTION: dict[str, Any] = {
    "event_id": "evt-1",
    "type": "interaction.logged",
    "schema_version": 1,
    "occurred_at": "2026-01-31T12:00:00Z",
    "source": "chat-api",
    "payload": {
        "request_id": "req-1",
        "model": {"name": "smollm2", "version": "3"},
        "prompt": "What is the capital of France?",
        "response": "Paris.",
        "latency_ms": 120,
        "user": "u-9",
        "session_id": "s-1",
        "metadata": {"region": "eu"},
    },
}

MESSAGES_INTERACTION: dict[str, Any] = {
    "type": "interaction.logged",
    "occurred_at": "2026-01-31T12:00:00+00:00",
    "source": "chat-api",
    "payload": {
        "request_id": "req-2",
        "model": {"name": "smollm2", "version": "3"},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
        ],
        "response": "Paris.",
    },
}


def feedback_doc(kind: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"fb-{kind}",
        "type": "feedback.received",
        "occurred_at": "2026-01-31T12:05:00Z",
        "source": "feedback-widget",
        "payload": {"request_id": "req-1", "kind": kind, "value": value, **extra},
    }


def label(value: Any) -> str | None:
    """A test id for a base document (its feedback kind or type); None lets pytest choose."""
    if isinstance(value, dict) and "type" in value:
        return str(value["payload"].get("kind", value["type"]))
    return value if isinstance(value, str) else None


def encode(document: Any) -> bytes:
    return json.dumps(document).encode("utf-8")


def decode(document: Any, **kwargs: Any) -> Event:
    raw = document if isinstance(document, bytes) else encode(document)
    return decode_inbound(raw, fallback_event_id=FALLBACK, **kwargs)


def refused(document: Any, **kwargs: Any) -> EventValidationError:
    with pytest.raises(EventValidationError) as caught:
        decode(document, **kwargs)
    return caught.value


def _parent(document: Any, path: str) -> tuple[Any, Any]:
    """The container holding the last part of a dotted ``path`` (digits index lists), and that part."""
    *parents, last = (int(part) if part.isdigit() else part for part in path.split("."))
    target = document
    for part in parents:
        target = target[part]
    return target, last


def changed(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with the dotted ``path`` set to ``value``."""
    document = copy.deepcopy(base)
    target, last = _parent(document, path)
    target[last] = value
    return document


def without(base: dict[str, Any], path: str) -> dict[str, Any]:
    document = copy.deepcopy(base)
    target, last = _parent(document, path)
    del target[last]
    return document


# --- accepted -----------------------------------------------------------------------------------------


def test_interaction_with_prompt_is_accepted_as_sent() -> None:
    event = decode(INTERACTION)

    assert event.event_id == "evt-1"
    assert event.type == INTERACTION_LOGGED
    assert event.schema_version == 1
    assert event.source == "chat-api"
    assert event.payload == INTERACTION["payload"]
    assert event.request_id == "req-1"


def test_interaction_with_messages_is_accepted() -> None:
    event = decode(MESSAGES_INTERACTION)

    assert event.payload["messages"][1] == {"role": "user", "content": "Capital of France?"}
    assert "prompt" not in event.payload


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("thumbs", "up"),
        ("thumbs", "down"),
        ("rating", 1),
        ("rating", 5),
        ("preference", {"chosen": "Paris.", "rejected": "Lyon."}),
        ("correction", {"response": "Paris is the capital of France."}),
        ("flag", {"category": "hallucination", "note": "made up a citation"}),
        ("flag", {"category": "pii"}),
        ("signal", {"name": "copied"}),
        ("signal", {"name": "dwell_time_s", "value": 12.5}),
    ],
)
def test_each_feedback_kind_is_accepted(kind: str, value: Any) -> None:
    event = decode(feedback_doc(kind, value, user="u-1", comment="thanks"))

    assert event.type == FEEDBACK_RECEIVED
    assert event.payload["kind"] == kind
    assert event.payload["value"] == value
    assert event.request_id == "req-1"


@pytest.mark.parametrize(
    ("sent", "expected_utc"),
    [
        ("2026-01-31T12:00:00Z", datetime(2026, 1, 31, 12, 0, tzinfo=UTC)),
        ("2026-01-31T13:30:00+01:30", datetime(2026, 1, 31, 12, 0, tzinfo=UTC)),
        ("2026-01-31T07:00:00-05:00", datetime(2026, 1, 31, 12, 0, tzinfo=UTC)),
        ("2026-02-01T01:00:00.250000+13:00", datetime(2026, 1, 31, 12, 0, 0, 250000, tzinfo=UTC)),
    ],
)
def test_occurred_at_is_normalised_to_utc(sent: str, expected_utc: datetime) -> None:
    event = decode(changed(INTERACTION, "occurred_at", sent))

    assert event.occurred_at == expected_utc
    assert event.occurred_at.utcoffset() == timedelta(0)


def test_missing_event_id_falls_back_to_the_given_id() -> None:
    assert decode(MESSAGES_INTERACTION).event_id == FALLBACK


def test_declared_event_id_wins_over_the_fallback() -> None:
    assert decode(INTERACTION).event_id == "evt-1"


def test_schema_version_defaults_to_1() -> None:
    assert decode(without(INTERACTION, "schema_version")).schema_version == 1


@pytest.mark.parametrize("length", [1, 128])
def test_event_id_of_1_to_128_chars_is_accepted(length: int) -> None:
    assert decode(changed(INTERACTION, "event_id", "e" * length)).event_id == "e" * length


def test_message_of_exactly_max_bytes_is_accepted() -> None:
    raw = encode(INTERACTION)

    assert decode_inbound(raw, fallback_event_id=FALLBACK, max_bytes=len(raw)).event_id == "evt-1"


def test_stored_bytes_decode_back_to_the_same_event() -> None:
    event = decode(MESSAGES_INTERACTION)

    assert decode_inbound(encode_event(event), fallback_event_id="unused") == event


# --- refused: not an envelope at all --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind", "named"),
    [
        (None, "empty", "null"),
        (b"", "empty", "empty"),
        (b"\xff\xfe{}", "invalid_utf8", "UTF-8"),
        (b'{"type": "interaction.logged"', "invalid_json", "JSON"),
        (b"not json at all", "invalid_json", "JSON"),
        (b"[1, 2, 3]", "schema", "array"),
        (b'"a string"', "schema", "object"),
        (b"null", "schema", "object"),
    ],
    ids=[
        "null-value",
        "empty-value",
        "invalid-utf8",
        "truncated-json",
        "not-json",
        "array",
        "string",
        "json-null",
    ],
)
def test_message_that_is_not_a_json_object_is_refused(raw: bytes | None, kind: str, named: str) -> None:
    with pytest.raises(EventValidationError) as caught:
        decode_inbound(raw, fallback_event_id=FALLBACK)

    assert caught.value.kind == kind
    assert named in caught.value.reason


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_as_invalid_json(constant: str) -> None:
    raw = encode(INTERACTION).replace(b'"latency_ms": 120', b'"latency_ms": ' + constant.encode())
    assert constant.encode() in raw

    error = refused(raw)

    assert error.kind == "invalid_json"
    assert constant in error.reason


def test_invalid_utf8_reason_names_the_byte_and_position() -> None:
    raw = encode(INTERACTION).replace(b"Paris.", b"Par\xc3is.")

    error = refused(raw)

    assert error.kind == "invalid_utf8"
    assert "0xc3" in error.reason
    position = raw.index(b"\xc3")
    assert f"position {position}" in error.reason


# --- refused: size --------------------------------------------------------------------------------------


def test_message_one_byte_over_max_bytes_is_refused_as_oversized() -> None:
    raw = encode(INTERACTION)

    with pytest.raises(EventValidationError) as caught:
        decode_inbound(raw, fallback_event_id=FALLBACK, max_bytes=len(raw) - 1)

    assert caught.value.kind == "oversized"
    assert f"{len(raw):,} bytes" in caught.value.reason
    assert "ALIGND_INGEST_MAX_MESSAGE_BYTES" in caught.value.reason


def test_default_limit_is_one_mebibyte() -> None:
    padding = "x" * DEFAULT_MAX_MESSAGE_BYTES
    error = refused(changed(INTERACTION, "payload.response", padding))

    assert DEFAULT_MAX_MESSAGE_BYTES == 1024 * 1024
    assert error.kind == "oversized"


# --- refused: missing fields ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "path"),
    [
        (INTERACTION, "type"),
        (INTERACTION, "occurred_at"),
        (INTERACTION, "source"),
        (INTERACTION, "payload"),
        (INTERACTION, "payload.request_id"),
        (INTERACTION, "payload.model"),
        (INTERACTION, "payload.model.name"),
        (INTERACTION, "payload.model.version"),
        (INTERACTION, "payload.response"),
        (feedback_doc("thumbs", "up"), "payload.request_id"),
        (feedback_doc("thumbs", "up"), "payload.kind"),
        (feedback_doc("thumbs", "up"), "payload.value"),
        (feedback_doc("preference", {"chosen": "a", "rejected": "b"}), "payload.value.rejected"),
        (feedback_doc("correction", {"response": "a"}), "payload.value.response"),
        (feedback_doc("flag", {"category": "pii"}), "payload.value.category"),
        (feedback_doc("signal", {"name": "copied"}), "payload.value.name"),
    ],
    ids=label,
)
def test_missing_required_field_is_refused_naming_it(base: dict[str, Any], path: str) -> None:
    error = refused(without(base, path))

    assert error.kind == "schema"
    assert path in error.reason
    assert "missing" in error.reason


# --- refused: mistyped or out-of-range fields -----------------------------------------------------------


def case(base: dict[str, Any], path: str, value: Any, named: str | None = None) -> Any:
    """One row: set ``path`` to ``value``; the reason must contain ``named`` (the path by default)."""
    return pytest.param(base, path, value, named or path, id=f"{label(base)}:{path}={value!r}")


@pytest.mark.parametrize(
    ("base", "path", "value", "named"),
    [
        case(INTERACTION, "schema_version", "1"),
        case(INTERACTION, "schema_version", True),
        case(INTERACTION, "schema_version", 1.0),
        case(INTERACTION, "type", 3),
        case(INTERACTION, "source", 5),
        case(INTERACTION, "source", ""),
        case(INTERACTION, "occurred_at", 1769860800),
        case(INTERACTION, "payload", ["not", "an", "object"]),
        case(INTERACTION, "payload.request_id", 42),
        case(INTERACTION, "payload.request_id", ""),
        case(INTERACTION, "payload.model.version", 3),
        case(INTERACTION, "payload.model", "smollm2:3"),
        case(INTERACTION, "payload.response", None),
        case(INTERACTION, "payload.latency_ms", -1),
        case(INTERACTION, "payload.latency_ms", "120"),
        case(INTERACTION, "payload.metadata", "region=eu"),
        case(MESSAGES_INTERACTION, "payload.messages", "Capital of France?"),
        case(MESSAGES_INTERACTION, "payload.messages", [], named="'messages' is empty"),
        case(MESSAGES_INTERACTION, "payload.messages.0", {"role": "user"}, named="payload.messages.0.content"),
        case(feedback_doc("rating", 4), "payload.value", 4.5),
        case(feedback_doc("rating", 4), "payload.value", True),
        case(feedback_doc("rating", 4), "payload.value", 7),
        case(feedback_doc("rating", 4), "payload.value", 0),
        case(feedback_doc("rating", 4), "payload.value", "4"),
        case(feedback_doc("thumbs", "up"), "payload.value", "sideways"),
        case(feedback_doc("thumbs", "up"), "payload.value", True),
        case(feedback_doc("preference", {"chosen": "a", "rejected": "b"}), "payload.value", "a"),
        case(feedback_doc("correction", {"response": "a"}), "payload.value.response", 1),
        case(feedback_doc("flag", {"category": "pii"}), "payload.value.category", "spam"),
        case(feedback_doc("signal", {"name": "copied"}), "payload.value.value", "lots"),
        case(feedback_doc("thumbs", "up"), "payload.kind", "emoji"),
        case(feedback_doc("thumbs", "up"), "payload.kind", 1),
        case(feedback_doc("thumbs", "up"), "payload.user", 7),
    ],
)
def test_mistyped_field_is_refused_naming_it(base: dict[str, Any], path: str, value: Any, named: str) -> None:
    error = refused(changed(base, path, value))

    assert error.kind == "schema"
    assert named in error.reason


def test_reason_shows_the_offending_value() -> None:
    error = refused(changed(feedback_doc("rating", 4), "payload.value", 7))

    assert "payload.value" in error.reason
    assert "(got 7)" in error.reason


# --- refused: type and version --------------------------------------------------------------------------


def test_unknown_type_is_refused_naming_it() -> None:
    error = refused(changed(INTERACTION, "type", "interaction.deleted"))

    assert error.kind == "unknown_type"
    assert "'interaction.deleted'" in error.reason
    assert "interaction.logged" in error.reason


@pytest.mark.parametrize("internal_type", sorted(INTERNAL_TYPES))
def test_internal_type_sent_inbound_is_refused(internal_type: str) -> None:
    error = refused(changed(INTERACTION, "type", internal_type))

    assert error.kind == "unknown_type"
    assert internal_type in error.reason
    assert "internal" in error.reason


@pytest.mark.parametrize(("base", "version"), [(INTERACTION, 2), (INTERACTION, 0), (feedback_doc("thumbs", "up"), 99)])
def test_unknown_schema_version_is_refused_as_such(base: dict[str, Any], version: int) -> None:
    error = refused(changed(base, "schema_version", version))

    assert error.kind == "unknown_schema_version"
    assert "schema_version" in error.reason
    assert str(version) in error.reason


def test_refusal_carries_the_declared_event_id() -> None:
    error = refused(changed(INTERACTION, "payload.response", 3))

    assert error.event_id == "evt-1"


# --- refused: timestamps, ids, prompt forms, extra fields -----------------------------------------------


@pytest.mark.parametrize(
    "timestamp",
    ["2026-01-31T12:00:00", "2026-01-31 12:00:00", "2026-01-31T12:00:00.123", "2026-01-31", "yesterday", ""],
)
def test_timestamp_without_offset_is_refused(timestamp: str) -> None:
    error = refused(changed(INTERACTION, "occurred_at", timestamp))

    assert error.kind == "schema"
    assert "occurred_at" in error.reason


@pytest.mark.parametrize("timestamp", ["20260131T120000Z", "2026-01-31T12Z", "2026-01-31T12:00Z"])
def test_iso8601_forms_that_are_not_rfc3339_are_refused(timestamp: str) -> None:
    error = refused(changed(INTERACTION, "occurred_at", timestamp))

    assert "occurred_at" in error.reason


@pytest.mark.parametrize("event_id", ["", "e" * 129], ids=["empty", "129-chars"])
def test_event_id_outside_1_to_128_chars_is_refused(event_id: str) -> None:
    error = refused(changed(INTERACTION, "event_id", event_id))

    assert error.kind == "schema"
    assert "event_id" in error.reason


def test_event_id_of_wrong_type_is_refused() -> None:
    error = refused(changed(INTERACTION, "event_id", 12345))

    assert error.kind == "schema"
    assert "event_id" in error.reason


def test_both_prompt_and_messages_is_refused() -> None:
    both = changed(INTERACTION, "payload.messages", [{"role": "user", "content": "hi"}])

    error = refused(both)

    assert error.kind == "schema"
    assert "prompt" in error.reason and "messages" in error.reason
    assert "not both" in error.reason


def test_neither_prompt_nor_messages_is_refused() -> None:
    error = refused(without(INTERACTION, "payload.prompt"))

    assert error.kind == "schema"
    assert "prompt" in error.reason and "messages" in error.reason


@pytest.mark.parametrize(
    ("base", "path", "hint"),
    [
        (INTERACTION, "evnt_id", ""),
        (INTERACTION, "payload.temperature", "payload.metadata"),
        (INTERACTION, "payload.model.revision", ""),
        (feedback_doc("thumbs", "up"), "payload.score", "payload.metadata"),
        (feedback_doc("preference", {"chosen": "a", "rejected": "b"}), "payload.value.tie", ""),
    ],
    ids=label,
)
def test_unknown_extra_field_is_refused_naming_it(base: dict[str, Any], path: str, hint: str) -> None:
    error = refused(changed(base, path, "x"))

    assert error.kind == "schema"
    assert f"{path}: unknown field" in error.reason
    assert hint in error.reason


# --- values JSON can carry but canonical JSON cannot ----------------------------------------------------


@pytest.mark.parametrize("path", ["payload.latency_ms", "payload.metadata.score"])
def test_number_that_overflows_to_infinity_is_refused(path: str) -> None:
    raw = encode(changed(INTERACTION, path, 12345)).replace(b"12345", b"1e400")

    error = refused(raw)

    assert error.kind in {"invalid_json", "schema"}


def test_lone_surrogate_escape_is_refused() -> None:
    raw = encode(INTERACTION).replace(b"Paris.", b"Paris\\ud800")

    error = refused(raw)

    assert error.kind in {"invalid_json", "invalid_utf8", "schema"}


def test_deeply_nested_json_is_refused_as_invalid_json() -> None:
    depth = 100_000
    raw = encode(changed(INTERACTION, "payload.metadata", "HOLE")).replace(b'"HOLE"', b"[" * depth + b"]" * depth)
    assert len(raw) < DEFAULT_MAX_MESSAGE_BYTES

    error = refused(raw)

    assert error.kind == "invalid_json"


# --- what the schema accepts must fit where it is stored -----------------------------------------------


def column_length(table_column: str) -> int:
    from events import tables

    table, column = table_column.split(".")
    return getattr(tables, table).c[column].type.length


@pytest.mark.parametrize(
    ("base", "path", "stored_in"),
    [
        (INTERACTION, "source", "events.source"),
        (INTERACTION, "payload.model.name", "proj_interactions.model_name"),
        (INTERACTION, "payload.model.version", "proj_interactions.model_version"),
        (INTERACTION, "payload.user", "proj_interactions.user_id"),
        (INTERACTION, "payload.session_id", "proj_interactions.session_id"),
        (
            feedback_doc("preference", {"chosen": "a", "rejected": "b"}),
            "payload.user",
            "proj_preference_pairs.user_id",
        ),
    ],
    ids=label,
)
def test_accepted_string_fits_the_column_that_stores_it(base: dict[str, Any], path: str, stored_in: str) -> None:
    limit = column_length(stored_in)
    try:
        decode(changed(base, path, "x" * (limit + 1)))
    except EventValidationError as refusal:
        assert path in refusal.reason
    else:
        raise AssertionError(f"{path} of {limit + 1} chars was accepted but {stored_in} holds {limit}")


@pytest.mark.parametrize(
    ("path", "stored_in"),
    [("event_id", "events.event_id"), ("payload.request_id", "events.request_id")],
)
def test_bounded_fields_are_bounded_like_their_columns(path: str, stored_in: str) -> None:
    limit = column_length(stored_in)

    assert decode(changed(INTERACTION, path, "x" * limit))
    assert path in refused(changed(INTERACTION, path, "x" * (limit + 1))).reason


# --- canonical_json -------------------------------------------------------------------------------------


def test_canonical_json_sorts_keys_at_every_level() -> None:
    assert canonical_json({"b": 1, "a": {"d": 2, "c": [{"z": 0, "y": 1}]}}) == (
        '{"a":{"c":[{"y":1,"z":0}],"d":2},"b":1}'
    )


def test_canonical_json_has_no_insignificant_whitespace() -> None:
    text = canonical_json({"a": [1, 2], "b": {"c": "x y"}})

    assert text == '{"a":[1,2],"b":{"c":"x y"}}'


def test_canonical_json_keeps_non_ascii_as_utf8() -> None:
    text = canonical_json({"prompt": "Grüße, 東京 ✓"})

    assert text == '{"prompt":"Grüße, 東京 ✓"}'
    assert "\\u" not in text
    assert text.encode("utf-8") == '{"prompt":"Grüße, 東京 ✓"}'.encode()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_canonical_json_refuses_nan_and_infinity(value: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"score": value})


def test_canonical_json_is_independent_of_key_insertion_order() -> None:
    assert canonical_json({"a": 1, "b": 2}) == canonical_json({"b": 2, "a": 1})


def test_encoded_event_is_canonical_with_utc_timestamp() -> None:
    event = decode(changed(INTERACTION, "occurred_at", "2026-01-31T13:00:00+01:00"))

    text = encode_event(event).decode("utf-8")

    assert text == canonical_json(json.loads(text))
    assert json.loads(text)["occurred_at"] == "2026-01-31T12:00:00.000000+00:00"

"""Property-based tests of the decoder (Hypothesis): no message, however hostile, makes it raise; what it accepts
is an event every store can hold and that round-trips; what it refuses is a dead letter with its bytes and a
reason. The corpus of messages that once broke ingestion is replayed as regression cases."""

from __future__ import annotations

import json
from datetime import UTC

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.decode import DECODER_ERROR, decode_record
from events.codec import canonical_json, decode_inbound, encode_event
from events.model import DeadLetter, Event
from tests.hostile import arbitrary_json, corpus, hostile_messages, mutated_envelopes, odd_valid_envelopes
from tests.unit.test_decode import FakeRecord

KINDS = {"invalid_json", "invalid_utf8", "schema", "unknown_type", "unknown_schema_version", "oversized", "empty"}
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _storable(text: str) -> bool:
    return "\x00" not in text and not any("\ud800" <= c <= "\udfff" for c in text)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def check_decoded(raw: bytes) -> Event | DeadLetter:
    decoded = decode_record(FakeRecord("t", 0, 7, raw, key=b"k"))
    if isinstance(decoded, DeadLetter):
        assert decoded.error_kind in KINDS, (decoded.error_kind, decoded.reason)
        assert decoded.reason and decoded.value == raw and decoded.source_key == "t:0:7"
        assert decoded.event_id is None or (_storable(decoded.event_id) and len(decoded.event_id) <= 128)
        return decoded
    assert isinstance(decoded, Event)
    assert decoded.occurred_at.tzinfo is UTC and 1 <= decoded.occurred_at.year <= 9999
    assert all(_storable(s) for s in [decoded.event_id, decoded.source, *_strings(dict(decoded.payload))])
    canonical_json(dict(decoded.payload))  # what the store writes: must not raise
    again = decode_inbound(encode_event(decoded), fallback_event_id="unused")
    assert again == decoded
    return decoded


@PROPERTY
@given(hostile_messages)
def test_no_message_makes_the_decoder_raise(raw: bytes) -> None:
    check_decoded(raw)


@PROPERTY
@given(mutated_envelopes())
def test_mutated_envelopes_become_a_storable_event_or_a_named_dead_letter(raw: bytes) -> None:
    check_decoded(raw)


@settings(max_examples=200, deadline=None)
@given(arbitrary_json)
def test_arbitrary_json_documents_are_refused_unless_they_are_envelopes(raw: bytes) -> None:
    decoded = check_decoded(raw)
    assert isinstance(decoded, DeadLetter)


@pytest.mark.parametrize(("why", "raw"), corpus(), ids=[why for why, _ in corpus()])
def test_the_corpus_of_past_failures_is_dead_lettered_with_a_reason(why: str, raw: bytes) -> None:
    decoded = check_decoded(raw)
    assert isinstance(decoded, DeadLetter), why
    assert decoded.error_kind != DECODER_ERROR, decoded.reason


def test_an_unforeseen_exception_in_the_decoder_becomes_a_decoder_error_letter() -> None:
    class Exploding(bytes):
        def __len__(self) -> int:
            raise OverflowError("a bug in the decoder")

    decoded = decode_record(FakeRecord("t", 1, 2, Exploding(b"{}"), key=b"k", headers=[("h", b"v")]))

    assert isinstance(decoded, DeadLetter) and decoded.error_kind == DECODER_ERROR
    assert "OverflowError: a bug in the decoder" in decoded.reason and "alignd dlq requeue" in decoded.reason
    assert decoded.value == b"{}" and decoded.headers == (("h", b"v"),) and decoded.source_key == "t:1:2"


@PROPERTY
@given(odd_valid_envelopes(), st.booleans())
def test_envelopes_the_schema_allows_are_accepted_as_sent_however_odd(raw: bytes, ascii_only: bool) -> None:
    document = json.loads(raw)
    if not ascii_only:  # the same document with its text as UTF-8 instead of \u escapes
        raw = json.dumps(document, ensure_ascii=False).encode("utf-8")
    decoded = check_decoded(raw)
    assert isinstance(decoded, Event), decoded.reason
    assert decoded.payload == document["payload"] and decoded.source == document["source"]


def test_an_escaped_colon_does_not_hide_a_duplicate_key_nor_make_one() -> None:
    base = {"type": "feedback.received", "occurred_at": "2026-01-01T00:00:00Z", "source": "s", "payload": {}}
    base["payload"] = {"request_id": "r", "kind": "rating", "value": 1}
    raw = json.dumps(base).encode()
    escaped = raw.replace(b'"r"', b'"a\\u003ab"')  # one colon fewer in the raw bytes than in the text
    assert isinstance(check_decoded(escaped), Event)
    both = escaped.replace(b'"value": 1', b'"value": 1, "value": 2')  # and a duplicate: counts would even out
    letter = check_decoded(both)
    assert isinstance(letter, DeadLetter) and "key 'value' appears more than once" in letter.reason

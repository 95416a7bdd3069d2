"""Property-based tests of decoding into both stores (Hypothesis): every hostile message is stored once or
dead-lettered once, nothing raises, and the valid message after it is stored. The corpus of past failures is
replayed through the same path."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings

from consumers.decode import decode_record
from consumers.ingest import append_isolating
from events.model import ConsumerOffset, DeadLetter, KafkaCoordinates
from events.sql_store import SqlEventStore
from tests.helpers import interaction
from tests.hostile import corpus, hostile_messages
from tests.unit.test_decode import FakeRecord

pytestmark = pytest.mark.integration


def ingest_one_then_a_valid_one(store: SqlEventStore, raw: bytes, offset: int) -> None:
    """What the loop does with a batch of two records: the hostile one at ``offset``, a valid one after it."""
    follower = json.dumps(interaction(f"valid-{offset}", event_id=f"valid-{offset}")).encode()
    records = [FakeRecord("t", 0, offset, raw), FakeRecord("t", 0, offset + 1, follower)]
    events, origins, kept, letters = [], [], [], []
    for record in records:
        decoded = decode_record(record)
        if isinstance(decoded, DeadLetter):
            letters.append(decoded)
        else:
            events.append(decoded)
            origins.append(KafkaCoordinates(record.topic, record.partition, record.offset))
            kept.append(record)
    before = store.count()

    result = append_isolating(store, events, origins, kept, letters, [ConsumerOffset("g", "t", 0, offset + 2)])

    assert store.get(f"valid-{offset}") is not None, "the valid message after it was not stored"
    lettered = [dl for dl in store.list_dead_letters(limit=10_000) if dl.dead_letter.source_key == f"t:0:{offset}"]
    hostile = next((e for e, o in zip(events, origins, strict=True) if o.offset == offset), None)
    if hostile is None or lettered:  # refused: dead-lettered once, and not stored
        assert len(lettered) == 1 and lettered[0].dead_letter.value == raw
        if hostile is not None:
            assert lettered[0].dead_letter.error_kind == "store_refused"
    else:  # accepted: stored once (or it was already there: the same event id sent before)
        stored = store.get(hostile.event_id)
        assert stored is not None and stored.event.payload == hostile.payload
    assert store.count() == before + result.appended
    assert store.load_offsets("g", [("t", 0)]) == {("t", 0): offset + 2}


_offsets = itertools.count(0, 2)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=hostile_messages)
def test_every_hostile_message_is_stored_once_or_dead_lettered_once_on_both_databases(
    store: SqlEventStore, raw: bytes
) -> None:
    ingest_one_then_a_valid_one(store, raw, next(_offsets))


def test_the_corpus_of_past_failures_through_both_databases(store: SqlEventStore) -> None:
    for offset, (_, raw) in zip(itertools.count(0, 2), corpus(), strict=False):
        ingest_one_then_a_valid_one(store, raw, offset)
    assert store.count_dead_letters()["total"] == len(corpus())

"""Single messages that once stopped ingestion for good (issue 19's findings 1-3), against the real broker and
both databases: each is dead-lettered with a reason naming the field, and every valid message around it is
stored; and a batch the database itself refuses is split, not lost."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumers.ingest import STORE_REFUSED, append_isolating
from daemon.bootstrap import build_ingestor, open_store
from events.model import ConsumerOffset, Event, KafkaCoordinates
from events.sql_store import SqlEventStore, create_store_engine
from migrations.runner import upgrade
from tests.helpers import alignd, interaction, produce, settings_env, settings_for, unique_topics, wait_until
from tests.unit.test_decode import FakeRecord

pytestmark = pytest.mark.integration


def _raw(message: dict) -> bytes:
    return json.dumps(message).encode("utf-8")


def _replace(message: dict, old: bytes, new: bytes) -> bytes:
    raw = _raw(message)
    assert old in raw
    return raw.replace(old, new, 1)


#: (what, the bytes, the words the dead letter's reason must contain)
POISON_PILLS = [
    (
        "late edge of the calendar",
        _raw({**interaction("p1"), "occurred_at": "9999-12-31T23:59:59-01:00"}),
        "occurred_at: '9999-12-31T23:59:59-01:00'",
    ),
    (
        "early edge of the calendar",
        _raw({**interaction("p2"), "occurred_at": "0001-01-01T00:00:00+01:00"}),
        "outside the years 1 to 9999",
    ),
    ("NUL in event_id", _raw({**interaction("p3"), "event_id": "evt\u0000x"}), "event_id: contains a NUL"),
    ("NUL in source", _raw({**interaction("p4"), "source": "chat\u0000api"}), "source: contains a NUL"),
    ("NUL in request_id", _raw(interaction("p5\u0000")), "payload.request_id: contains a NUL"),
    (
        "lone surrogate in the prompt",
        _replace(interaction("p6"), b'"How do', b'"\\ud800How do'),
        "payload.prompt: contains a lone UTF-16 surrogate",
    ),
    (
        "duplicate key",
        _replace(interaction("p7"), b'"source": "chat-api"', b'"source": "chat-api", "source": "other"'),
        "key 'source' appears more than once",
    ),
    (
        "nested deeper than the store can write",
        _raw(interaction("p8", metadata={"deep": "HOLE"})).replace(b'"HOLE"', b"[" * 300 + b"]" * 300),
        "nested too deeply",
    ),
]


def test_each_poison_pill_is_dead_lettered_and_the_messages_around_it_are_stored(
    db_url: str, kafka_bootstrap: str
) -> None:
    topics = unique_topics(kafka_bootstrap, partitions=1)
    messages: list[dict | bytes] = []
    for i, (_, raw, _) in enumerate(POISON_PILLS):
        messages += [interaction(f"before-{i}", event_id=f"before-{i}", i=i), raw]
    messages.append(interaction("after", event_id="after"))
    produce(kafka_bootstrap, topics["interactions"], messages)

    settings = settings_for(db_url, kafka_bootstrap, topics)
    store = open_store(settings)
    ingestor = build_ingestor(settings, store, project=True)
    try:
        stats = ingestor.run(until_idle=3.0)
    finally:
        ingestor.publisher.producer.close(5)

    assert stats.records == len(messages)
    assert stats.appended == len(POISON_PILLS) + 1 and stats.dead_letters == len(POISON_PILLS)
    stored = {s.event.event_id for s in store.read(0, limit=100)}
    assert stored == {f"before-{i}" for i in range(len(POISON_PILLS))} | {"after"}
    letters = [x.dead_letter for x in store.list_dead_letters(limit=100)]
    assert [dl.value for dl in letters] == [raw for _, raw, _ in POISON_PILLS]
    for (what, _, words), letter in zip(POISON_PILLS, letters, strict=True):
        assert letter.error_kind == "schema", what
        assert words in letter.reason, (what, letter.reason)
    store.dispose()


def _event(event_id: str, payload: dict | None = None, **fields: str) -> Event:
    return Event(
        event_id=event_id,
        type="interaction.logged",
        occurred_at=datetime(2026, 11, 1, tzinfo=UTC),
        source=fields.get("source", "chat-api"),
        payload=payload
        or {"request_id": event_id, "model": {"name": "m", "version": "1"}, "prompt": "p", "response": "r"},
    )


def _deep(levels: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(levels):
        value = {"x": value}
    return value


def test_a_batch_the_database_refuses_is_split_the_refused_events_dead_lettered_and_the_rest_stored(
    store: SqlEventStore,
) -> None:
    # Events that slipped past validation (built by hand here): a payload no JSON writer can nest that deep
    # (refused on both databases), and on PostgreSQL a NUL in a text column.
    bad = {2: _event("e2", payload={"request_id": "e2", "metadata": _deep(300)}), 5: _event("e5", payload=_deep(400))}
    if store.dialect == "postgresql":
        bad[7] = _event("e7", source="chat\u0000api")
    events = [bad.get(i, _event(f"e{i}")) for i in range(10)]
    origins = [KafkaCoordinates("t", 0, i) for i in range(10)]
    records = [FakeRecord("t", 0, i, f"raw {i}".encode(), key=b"k", headers=[("h", b"v")]) for i in range(10)]
    offsets = [ConsumerOffset("g", "t", 0, 10)]

    result = append_isolating(store, events, origins, records, [], offsets)

    assert result.appended == 10 - len(bad) and result.dead_letters == len(bad)
    assert {s.event.event_id for s in store.read(0)} == {f"e{i}" for i in range(10) if i not in bad}
    letters = [x.dead_letter for x in store.list_dead_letters()]
    assert [dl.origin.offset for dl in letters] == sorted(bad)
    for letter in letters:
        assert letter.error_kind == STORE_REFUSED and "the database refused this event" in letter.reason
        assert letter.value == f"raw {letter.origin.offset}".encode() and letter.headers == (("h", b"v"),)
    assert store.load_offsets("g", [("t", 0)]) == {("t", 0): 10}
    # Nothing was half-written: appending the same batch again adds nothing.
    again = append_isolating(store, events, origins, records, [], offsets)
    assert again.appended == 0 and store.count() == 10 - len(bad)
    assert len(store.list_dead_letters()) == len(bad)


def _count(url: str) -> tuple[int, int]:
    store = SqlEventStore.from_url(url)
    try:
        return store.count(), store.count_dead_letters()["total"]
    except Exception:  # noqa: BLE001 - the schema may not be there yet while the daemon starts
        return 0, 0
    finally:
        store.dispose()


def test_alignd_run_ingest_stays_up_through_poison_pills_and_stores_every_valid_event(
    db_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = unique_topics(kafka_bootstrap, partitions=2)
    env = settings_env(db_url, kafka_bootstrap, topics, ALIGND_LOG_LEVEL="WARNING")
    assert alignd(["db", "upgrade"], env).wait(timeout=120) == 0
    daemon = alignd(["run", "--role", "ingest"], env)
    try:
        first = [interaction(f"a{i}", i=i) for i in range(200)]
        produce(kafka_bootstrap, topics["interactions"], first)
        wait_until(lambda: _count(db_url)[0] == 200, timeout=120, message="the first 200 events")
        produce(kafka_bootstrap, topics["interactions"], [raw for _, raw, _ in POISON_PILLS])
        second = [interaction(f"b{i}", i=i) for i in range(200)]
        produce(kafka_bootstrap, topics["interactions"], second)
        wait_until(
            lambda: _count(db_url) == (400, len(POISON_PILLS)), timeout=120, message="400 events and the letters"
        )
        time.sleep(1.0)
        assert daemon.poll() is None, "the daemon stopped"
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=120) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)


class _NotUtf8(str):
    """A header name that a non-Java client (librdkafka takes any bytes) can write: kafka-python encodes it with
    ``str.encode``, so this sends bytes that are not UTF-8, and kafka-python's consumer cannot read the record."""

    def encode(self, *args: object, **kwargs: object) -> bytes:
        return b"\xff\xfe"


def test_a_record_the_kafka_client_cannot_read_is_dead_lettered_and_ingestion_goes_on(
    db_url: str, kafka_bootstrap: str
) -> None:
    from kafka import KafkaProducer

    topics = unique_topics(kafka_bootstrap, partitions=2)
    topic = topics["interactions"]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=50)
    try:
        for i in range(3):
            producer.send(topic, partition=0, value=_raw(interaction(f"first-{i}", event_id=f"first-{i}")))
        producer.flush()
        batch = [producer.send(topic, partition=0, value=_raw(interaction("same-batch-0", event_id="same-batch-0")))]
        batch.append(producer.send(topic, partition=0, value=_raw(interaction("bad")), headers=[(_NotUtf8("h"), b"v")]))
        batch += [
            producer.send(topic, partition=0, value=_raw(interaction(f"same-batch-{i}", event_id=f"same-batch-{i}")))
            for i in range(1, 3)
        ]
        producer.flush()
        for i in range(5):
            producer.send(topic, partition=1, value=_raw(interaction(f"other-{i}", event_id=f"other-{i}")))
            producer.send(topic, partition=0, value=_raw(interaction(f"later-{i}", event_id=f"later-{i}")))
        producer.flush()
    finally:
        producer.close(5)
    bad_offset = batch[1].get(timeout=10).offset
    produced = 3 + 4 + 10

    settings = settings_for(db_url, kafka_bootstrap, topics)
    store = open_store(settings)
    ingestor = build_ingestor(settings, store)
    try:
        stats = ingestor.run(until_idle=3.0)
    finally:
        ingestor.publisher.producer.close(5)

    stored = {s.event.event_id for s in store.read(0, limit=100)}
    assert {f"first-{i}" for i in range(3)} | {f"other-{i}" for i in range(5)} | {
        f"later-{i}" for i in range(5)
    } <= stored
    letters = {x.dead_letter.origin.offset: x.dead_letter for x in store.list_dead_letters(limit=100)}
    bad = letters[bad_offset]
    assert bad.error_kind == "unreadable_record" and "CorruptRecordError" in bad.reason and bad.value is None
    # The rest of the bad record's batch cannot be read by the client: each is dead-lettered, naming it.
    for sent in (batch[2], batch[3]):
        assert f"offset {bad_offset}" in letters[sent.get(timeout=10).offset].reason
    assert len(stored) + len(letters) == produced and stats.dead_letters == len(letters)
    assert store.load_offsets(settings.kafka.group_id, [(topic, 0)]) == {(topic, 0): bad_offset + 1 + 2 + 5}
    store.dispose()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_compression_codec_a_producer_may_use_is_read(
    codec: str, kafka_bootstrap: str, new_db_url: Callable[[str], str]
) -> None:
    from kafka import KafkaProducer

    topics = unique_topics(kafka_bootstrap, partitions=1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type=codec, linger_ms=20)
    try:
        for i in range(20):
            producer.send(topics["interactions"], value=_raw(interaction(f"z{i}", i=i)))
        producer.flush()
    finally:
        producer.close(5)
    url = new_db_url("sqlite")
    engine = create_store_engine(url)
    upgrade(engine)
    engine.dispose()
    settings = settings_for(url, kafka_bootstrap, topics)
    store = open_store(settings)
    ingestor = build_ingestor(settings, store)
    try:
        ingestor.run(until_idle=2.0)
    finally:
        ingestor.publisher.producer.close(5)
    assert store.count() == 20 and store.count_dead_letters()["total"] == 0
    store.dispose()


def test_a_letter_whose_bytes_were_never_read_is_not_requeued(store: SqlEventStore) -> None:
    from kafka.errors import CorruptRecordError
    from kafka.structs import TopicPartition

    from consumers.dead_letter import requeue
    from consumers.unreadable import unreadable_letters

    class FakeProducer:
        def __init__(self) -> None:
            self.sent: list[tuple[str, bytes | None]] = []

        def send(self, topic: str, key: bytes | None, value: bytes | None, headers: object) -> None:
            self.sent.append((topic, value))

        def flush(self, timeout: float) -> None:
            pass

    letters = unreadable_letters(TopicPartition("t", 0), 4, 7, CorruptRecordError("bad header"))
    store.append([], dead_letters=letters)
    producer = FakeProducer()

    assert requeue(store, producer, store.list_dead_letters()) == [] and producer.sent == []
    assert [x.dead_letter.origin.offset for x in store.list_dead_letters(include_requeued=False)] == [4, 5, 6]

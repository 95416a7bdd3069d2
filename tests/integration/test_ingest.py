"""Ingestion against a real Kafka broker, into SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from daemon.bootstrap import build_ingestor, open_store
from events.projections import ProjectionRunner
from tests.helpers import consume_all, feedback, interaction, produce, settings_for, unique_topics

pytestmark = pytest.mark.integration


def _ingest(
    db_url: str,
    bootstrap: str,
    topics: dict[str, str],
    group: str | None = None,
    *,
    project: bool = False,
    until_idle: float = 3.0,
    **extra: str,
):
    settings = settings_for(db_url, bootstrap, topics, group, **extra)
    store = open_store(settings)
    ingestor = build_ingestor(settings, store, project=project)
    try:
        stats = ingestor.run(until_idle=until_idle)
    finally:
        ingestor.publisher.producer.close(5)
    return store, stats


def test_same_event_id_twice_and_same_message_delivered_twice_are_stored_once(
    db_url: str, kafka_bootstrap: str
) -> None:
    topics = unique_topics(kafka_bootstrap)
    messages = [interaction(f"r{i}", event_id=f"evt-{i}", i=i) for i in range(50)]
    messages += [interaction(f"r{i}", event_id=f"evt-{i}", i=i) for i in range(10)]  # resent by the producer
    messages += [interaction(f"anon-{i}", i=i) for i in range(20)]  # no event_id: derived from coordinates
    produce(kafka_bootstrap, topics["interactions"], messages)

    store, stats = _ingest(db_url, kafka_bootstrap, topics, "group-a")
    assert stats.records == 80 and stats.appended == 70 and stats.duplicates == 10
    # every message delivered a second time (another consumer group reading the same topic into the store)
    store, again = _ingest(db_url, kafka_bootstrap, topics, "group-b")
    assert again.records == 80 and again.appended == 0 and again.duplicates == 80
    assert store.count() == 70
    derived = [s.event.event_id for s in store.read(0, limit=1000) if s.event.request_id.startswith("anon-")]
    assert all(eid.startswith(topics["interactions"] + ":") for eid in derived) and len(derived) == 20
    store.dispose()


def test_until_idle_stops_only_once_caught_up(db_url: str, kafka_bootstrap: str) -> None:
    """An idle stop shorter than the first fetch after an assignment (offsets looked up, then reset) still reads
    the whole topic: idle counts only while nothing is waiting past the consumer's position."""
    topics = unique_topics(kafka_bootstrap)
    produce(kafka_bootstrap, topics["interactions"], [interaction(f"r{i}", i=i) for i in range(30)])
    store, stats = _ingest(db_url, kafka_bootstrap, topics, until_idle=0.01)
    assert stats.records == 30 and stats.appended == 30 and store.count() == 30
    store.dispose()


BAD_INPUTS = [
    ("invalid_json", b'{"type": "interaction.logged", ', "not valid JSON"),
    ("invalid_utf8", b'{"type": "\xff\xfe"}', "not valid UTF-8"),
    (
        "schema",
        json.dumps(
            {**interaction("m1"), "payload": {"model": {"name": "a", "version": "1"}, "prompt": "p", "response": "r"}}
        ).encode(),
        "payload.request_id: required field is missing",
    ),
    ("schema", json.dumps({**interaction("m2"), "schema_version": "1"}).encode(), "schema_version"),
    ("schema", json.dumps(feedback("m3", "rating", "five")).encode(), "payload.value"),
    (
        "unknown_type",
        json.dumps({**interaction("m4"), "type": "interaction.deleted"}).encode(),
        "unknown event type 'interaction.deleted'",
    ),
    ("unknown_schema_version", json.dumps({**interaction("m5"), "schema_version": 9}).encode(), "schema_version: 9"),
    (
        "oversized",
        json.dumps(interaction("m6", response="x" * (1024 * 1024 + 10))).encode(),
        "over the 1,048,576-byte limit",
    ),
    ("empty", b"", "no value"),
]


def test_every_kind_of_bad_input_is_dead_lettered_and_ingestion_goes_on(db_url: str, kafka_bootstrap: str) -> None:
    topics = unique_topics(kafka_bootstrap, partitions=1)
    stream: list[object] = []
    for n, (_, raw, _) in enumerate(BAD_INPUTS):
        stream.append(interaction(f"good-{n}", i=n))
        stream.append(raw)
    stream.append(interaction("good-last"))
    produce(kafka_bootstrap, topics["interactions"], stream)  # type: ignore[arg-type]

    store, stats = _ingest(db_url, kafka_bootstrap, topics)
    assert stats.dead_letters == len(BAD_INPUTS)
    assert store.count() == len(BAD_INPUTS) + 1  # every good message, including the ones after bad ones
    letters = store.list_dead_letters()
    assert [dl.dead_letter.error_kind for dl in letters] == [kind for kind, _, _ in BAD_INPUTS]
    for letter, (_, raw, reason) in zip(letters, BAD_INPUTS, strict=True):
        assert reason in letter.dead_letter.reason
        assert letter.dead_letter.value == raw
        assert letter.dead_letter.origin is not None and letter.dead_letter.origin.topic == topics["interactions"]
        assert letter.published_at is not None

    dlq = consume_all(kafka_bootstrap, topics["dlq"], expected=len(BAD_INPUTS))
    assert len(dlq) == len(BAD_INPUTS)
    for record, letter in zip(sorted(dlq, key=lambda r: r.offset), letters, strict=True):
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["alignd-dlq-reason"] == letter.dead_letter.reason
        assert headers["alignd-dlq-error-kind"] == letter.dead_letter.error_kind
        assert headers["alignd-dlq-original-topic"] == topics["interactions"]
        assert int(headers["alignd-dlq-original-offset"]) == letter.dead_letter.origin.offset
        assert record.value == letter.dead_letter.value
    store.dispose()


def _conversation_stream(n: int) -> tuple[list[dict], list[dict]]:
    """Interactions and feedback of every kind; some feedback arrives first, some never finds its interaction."""
    interactions, feedbacks = [], []
    for i in range(n):
        rid = f"req-{i}"
        interactions.append(interaction(rid, i=i, version=str(1 + i % 3)))
        kind = i % 6
        if kind == 0:
            feedbacks.append(feedback(rid, "thumbs", "down" if i % 4 else "up", i=i))
        elif kind == 1:
            feedbacks.append(feedback(rid, "rating", 5 if i % 2 else 3, i=i))
        elif kind == 2:
            feedbacks.append(feedback(rid, "preference", {"chosen": f"better {i}", "rejected": f"worse {i}"}, i=i))
        elif kind == 3:
            feedbacks.append(feedback(rid, "correction", {"response": f"corrected {i}"}, i=i))
        elif kind == 4:
            feedbacks.append(feedback(rid, "flag", {"category": "hallucination"}, i=i))
        else:
            feedbacks.append(feedback(rid, "signal", {"name": "copied"}, i=i))
    feedbacks += [feedback(f"never-{i}", "thumbs", "up", i=i) for i in range(10)]
    return interactions, feedbacks


def test_replay_reaches_the_same_projection_digest_as_live_processing(db_url: str, kafka_bootstrap: str) -> None:
    topics = unique_topics(kafka_bootstrap)
    interactions, feedbacks = _conversation_stream(600)
    # feedback is produced first, so much of it arrives before its interaction
    produce(kafka_bootstrap, topics["feedback"], feedbacks)
    produce(kafka_bootstrap, topics["interactions"], interactions)

    store, stats = _ingest(db_url, kafka_bootstrap, topics, project=True, ALIGND_INGEST_MAX_POLL_RECORDS="97")
    assert stats.batches > 5
    runner = ProjectionRunner(store)
    runner.catch_up()
    live = runner.digests()
    stats_rows = _rows(store, "proj_feedback_stats")
    assert runner.replay()["interactions"] == store.count()
    assert runner.digests() == live
    assert _rows(store, "proj_feedback_stats") == stats_rows
    assert sum(r["interactions"] for r in stats_rows) == 600
    assert sum(r["feedback"] for r in stats_rows) == 600  # the 10 orphans wait for interactions that never came
    assert len(_rows(store, "proj_preference_pairs")) == 200  # 100 preferences + 100 corrections
    demos = _rows(store, "proj_demonstrations")
    assert {d["origin"] for d in demos} == {"correction", "top_rated"} and len(
        demos
    ) == 200  # i % 6 == 1 is odd: all rated 5
    store.dispose()


def _rows(store, table: str) -> list[dict]:
    from sqlalchemy import text

    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2")).mappings()]


def test_on_stored_is_called_once_a_batch_has_committed(db_url: str, kafka_bootstrap: str) -> None:
    topics = unique_topics(kafka_bootstrap)
    produce(kafka_bootstrap, topics["interactions"], [interaction(f"r{i}", i=i) for i in range(30)])
    store = open_store(settings_for(db_url, kafka_bootstrap, topics))
    ingestor = build_ingestor(settings_for(db_url, kafka_bootstrap, topics), store, project=False)
    seen: list[int] = []
    ingestor.on_stored = lambda: seen.append(store.count())  # the monitors' wake-up in the daemon
    try:
        ingestor.run(until_idle=3.0)
    finally:
        ingestor.publisher.producer.close(5)
    assert seen and all(n > 0 for n in seen) and seen[-1] == 30
    assert len(seen) == ingestor.stats.batches
    store.dispose()

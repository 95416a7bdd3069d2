"""A consumer killed with SIGKILL mid-stream, restarted several times, stores each valid event exactly once."""

from __future__ import annotations

import random
import signal
import subprocess

import pytest
from sqlalchemy import text

from events.sql_store import SqlEventStore
from tests.helpers import alignd, feedback, interaction, produce, settings_env, unique_topics, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.slow]

TOTAL = 21_000


def _stream(rng: random.Random) -> tuple[list[object], set[str], int]:
    """~21,000 messages: interactions and feedback with ids, resends of some ids, and some invalid ones."""
    messages: list[object] = []
    unique: set[str] = set()
    invalid = 0
    for i in range(TOTAL):
        roll = rng.random()
        if roll < 0.01:
            messages.append(b"{not json" if i % 2 else b'{"type": "interaction.logged"}')
            invalid += 1
            continue
        if roll < 0.04 and unique:
            resend = f"evt-{rng.randrange(i)}"
            if resend in unique:
                messages.append(interaction(f"req-{resend}", event_id=resend, i=i))
                continue
        event_id = f"evt-{i}"
        unique.add(event_id)
        if i % 3 == 2:
            messages.append(feedback(f"req-{i - 1}", "thumbs", "up", event_id=event_id, i=i))
        else:
            messages.append(interaction(f"req-{i}", event_id=event_id, i=i))
    return messages, unique, invalid


def _count(store: SqlEventStore) -> int:
    try:
        return store.count()
    except Exception:  # noqa: BLE001 - SQLite may be mid-checkpoint while the child writes
        return -1


def test_sigkill_mid_stream_and_restarts_lose_and_duplicate_nothing(db_url: str, kafka_bootstrap: str) -> None:
    rng = random.Random(20261128)
    topics = unique_topics(kafka_bootstrap, partitions=3)
    messages, unique, invalid = _stream(rng)
    half = len(messages) // 2
    produce(kafka_bootstrap, topics["interactions"], messages[:half])  # type: ignore[arg-type]
    env = settings_env(
        db_url, kafka_bootstrap, topics, ALIGND_INGEST_MAX_POLL_RECORDS="300", ALIGND_LOG_LEVEL="WARNING"
    )
    store = SqlEventStore.from_url(db_url)
    kills = 0
    try:
        for round_ in range(5):
            if round_ == 2:
                produce(kafka_bootstrap, topics["interactions"], messages[half:])  # type: ignore[arg-type]
            before = max(_count(store), 0)
            child = alignd(["ingest", "--no-project"], env, stderr=subprocess.DEVNULL)
            # kill at a random point once it has made some progress
            target = before + rng.randrange(500, 3000)
            try:
                wait_until(
                    lambda target=target, child=child: _count(store) >= target or child.poll() is not None,
                    timeout=90,
                    interval=0.02,
                    message="progress",
                )
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait(10)
            kills += 1
        final = alignd(["ingest", "--until-idle", "5", "--no-project"], env, stderr=subprocess.PIPE)
        _, err = final.communicate(timeout=300)
        assert final.returncode == 0, err.decode()[-2000:]

        stored_ids = [row[0] for row in _all_ids(store)]
        assert kills == 5
        assert len(stored_ids) == len(set(stored_ids)), "an event was stored twice"
        assert set(stored_ids) == unique, (
            f"missing {len(unique - set(stored_ids))}, unexpected {len(set(stored_ids) - unique)}"
        )
        assert store.count_dead_letters()["total"] == invalid
        # the stored offsets end at the end of each partition
        offsets = store.load_offsets(env["ALIGND_KAFKA_GROUP_ID"], [(topics["interactions"], p) for p in range(3)])
        assert sum(offsets.values()) == len(messages)
    finally:
        store.dispose()


def _all_ids(store: SqlEventStore) -> list[tuple[str]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT event_id FROM events"))]


def test_sigterm_finishes_the_batch_commits_and_exits_zero(db_url: str, kafka_bootstrap: str) -> None:
    topics = unique_topics(kafka_bootstrap, partitions=2)
    produce(kafka_bootstrap, topics["interactions"], [interaction(f"r{i}", event_id=f"e{i}", i=i) for i in range(6000)])
    env = settings_env(db_url, kafka_bootstrap, topics, ALIGND_INGEST_MAX_POLL_RECORDS="200")
    store = SqlEventStore.from_url(db_url)
    try:
        child = alignd(["ingest", "--no-project"], env, stderr=subprocess.PIPE)
        try:
            wait_until(
                lambda: _count(store) >= 1000 or child.poll() is not None, timeout=60, interval=0.02, message="progress"
            )
            child.send_signal(signal.SIGTERM)
            _, err = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == 0, err.decode()[-2000:]
        stored = store.count()
        group = env["ALIGND_KAFKA_GROUP_ID"]
        db_offsets = store.load_offsets(group, [(topics["interactions"], p) for p in range(2)])
        assert sum(db_offsets.values()) == stored  # every stored batch has its offsets, nothing half-done
        assert _kafka_committed(kafka_bootstrap, group, topics["interactions"], 2) == db_offsets  # and Kafka agrees

        rest = alignd(["ingest", "--until-idle", "4", "--no-project"], env, stderr=subprocess.PIPE)
        _, err = rest.communicate(timeout=120)
        assert rest.returncode == 0, err.decode()[-2000:]
        assert store.count() == 6000
    finally:
        store.dispose()


def _kafka_committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[tuple[str, int], int]:
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        found = {}
        for p in range(partitions):
            committed = consumer.committed(TopicPartition(topic, p))
            if committed is not None:
                found[(topic, p)] = committed
        return found
    finally:
        consumer.close(autocommit=False)

"""kafka-python 3.0's lost group join (daemon/kafka_join.py), against the real broker.

A consumer that polls with a short timeout, in a fresh group whose first join runs before the topics' metadata
arrived, loses the second join's assignment and never reads a record (six of six fresh groups at 5 ms polls
without the fix, measured 2026-12-07 with kafka-python 3.0.12). Every consumer the daemon makes carries the
fix; here one made by the daemon's factory reads its record in each of several fresh groups at 5 ms polls.
"""

from __future__ import annotations

import time
import uuid

from daemon.bootstrap import build
from daemon.kafka_join import keep_join_results
from tests.helpers import create_topics, produce, settings_for, unique_topics

POLL_MS = 5  # shorter than a join round trip, so polls end while a join is in flight


def _reads_its_record(consumer: object, topics: list[str], seconds: float = 15.0) -> bool:
    consumer.subscribe(topics)  # type: ignore[attr-defined]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(consumer.poll(timeout_ms=POLL_MS).values()):  # type: ignore[attr-defined]
            return True
    return False


def test_a_daemon_consumer_polling_briefly_keeps_its_assignment(kafka_bootstrap: str, tmp_path) -> None:
    settings = settings_for(f"sqlite:///{tmp_path / 'a.db'}", kafka_bootstrap, unique_topics(kafka_bootstrap, 1))
    app = build(settings, check_schema=False)
    try:
        for _ in range(3):
            tag = uuid.uuid4().hex[:8]
            topics = [f"j-{tag}.a", f"j-{tag}.b"]
            create_topics(kafka_bootstrap, topics, 1)
            produce(kafka_bootstrap, topics[0], [b"x"], keyed=False)
            consumer = app.kafka.consumer(group_id=f"g-{tag}")
            try:
                assert _reads_its_record(consumer, topics), "the consumer lost its assignment"
            finally:
                consumer.close(autocommit=False)
    finally:
        app.close()


def test_the_fix_is_skipped_where_the_coordinator_has_no_join_task() -> None:
    class Coordinator:
        def need_rejoin(self) -> bool:
            return False

    class Consumer:
        _coordinator = Coordinator()

    assert keep_join_results(Consumer()) is False
    assert Consumer._coordinator.need_rejoin() is False

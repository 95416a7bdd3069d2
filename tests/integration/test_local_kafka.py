"""The local Kafka broker (daemon/local/kafka.py) really runs: topics, produce, consume, restart."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from daemon.local.kafka import LocalKafka
from tests.helpers import unavailable

pytestmark = [pytest.mark.integration]
if shutil.which("java") is None:
    unavailable("needs a JVM (OpenJDK 17+)")

TOPIC = "local-kafka-test"


def _create_topic(bootstrap: str, partitions: int = 3) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(TOPIC, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def _produce(bootstrap: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for i, value in enumerate(values):
            producer.send(TOPIC, key=str(i).encode(), value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()


def _consume_all(bootstrap: str, group: str, expected: int, timeout: float = 30.0) -> list[bytes]:
    consumer = KafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(r.value for r in records)
        consumer.commit()
    finally:
        consumer.close()
    return got


def test_topic_produce_consume(tmp_path: Path) -> None:
    with LocalKafka(tmp_path / "kafka") as broker:
        assert broker.is_running()
        bootstrap = broker.bootstrap_servers
        assert bootstrap.startswith("127.0.0.1:")
        _create_topic(bootstrap)

        probe = KafkaConsumer(bootstrap_servers=bootstrap)
        try:
            assert probe.partitions_for_topic(TOPIC) == {0, 1, 2}
        finally:
            probe.close()

        values = [f"message-{i}".encode() for i in range(9)]
        _produce(bootstrap, values)
        assert sorted(_consume_all(bootstrap, "g1", len(values))) == sorted(values)
    assert not broker.is_running()


def test_restart_keeps_messages(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "kafka")
    values = [f"kept-{i}".encode() for i in range(6)]
    try:
        broker.start()
        bootstrap = broker.bootstrap_servers
        _create_topic(bootstrap)
        _produce(bootstrap, values)
        broker.stop()
        assert not broker.is_running()

        # A clean restart keeps the data and the ports.
        broker.start()
        assert broker.bootstrap_servers == bootstrap
        assert sorted(_consume_all(bootstrap, "after-stop", len(values))) == sorted(values)

        # A crash (SIGKILL) too: Kafka recovers its logs on the next start.
        broker.kill()
        assert not broker.is_running()
        broker.start()
        assert sorted(_consume_all(bootstrap, "after-kill", len(values))) == sorted(values)
    finally:
        broker.stop()

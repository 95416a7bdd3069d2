"""Alerts leave through the outbox: every anomaly.detected event reaches the alerts topic, once per run."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from daemon.outbox import OutboxPublisher
from events.model import Event
from events.sql_store import SqlEventStore
from tests.helpers import consume_all, create_topics

pytestmark = pytest.mark.integration


def _anomaly(n: int) -> Event:
    payload = {"detector": "pii", "subject": f"event:e{n}", "severity": "critical", "summary": "an email address"}
    return Event(f"anomaly:pii:{n}", "anomaly.detected", datetime(2026, 11, 1, tzinfo=UTC), "alignd.monitors", payload)


def test_alerts_are_published_from_the_store_and_resume_after_a_restart(
    store: SqlEventStore, kafka_bootstrap: str
) -> None:
    import uuid

    from kafka import KafkaProducer

    topic = f"t-{uuid.uuid4().hex[:8]}.alerts"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    store.append([_anomaly(n) for n in range(30)])
    store.append([Event("other", "training.started", datetime(2026, 11, 1, tzinfo=UTC), "t", {"run": "r"})])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        publisher = OutboxPublisher(store, producer, topic, ["anomaly.detected"], batch_size=8)
        assert publisher.publish() == 30
        assert publisher.publish() == 0  # nothing new
        store.append([_anomaly(n) for n in range(30, 35)])
        # a new process (a restart) continues from the stored position
        assert OutboxPublisher(store, producer, topic, ["anomaly.detected"]).publish() == 5
    finally:
        producer.close(5)
    records = consume_all(kafka_bootstrap, topic, expected=35)
    ids = [dict(r.headers)["event_id"].decode() for r in records]
    assert sorted(ids) == sorted(f"anomaly:pii:{n}" for n in range(35))
    body = json.loads(records[0].value)
    assert body["type"] == "anomaly.detected" and body["seq"] > 0 and records[0].key.decode().startswith("event:")

"""The outbox publisher against the in-memory store and a fake producer: what is published, in what order,
and when the position moves (only after the broker acknowledged every message of a batch).

tests/integration/test_outbox.py publishes to a real broker from SQLite and PostgreSQL; this checks the
publisher's own rules in milliseconds.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.outbox import OutboxPublisher
from events.memory_store import InMemoryEventStore
from events.model import Event

T0 = datetime(2026, 11, 1, tzinfo=UTC)


class BrokerRefused(Exception):
    pass


class FakeFuture:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def get(self, timeout: float) -> None:
        if self.error is not None:
            raise self.error


class FakeProducer:
    """Records what it was sent; refuses the event ids in ``refuse`` (as a broker that nacks them)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.refuse: set[str] = set()
        self.flushes = 0

    def send(self, topic: str, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> FakeFuture:
        event_id = dict(headers)["event_id"].decode()
        if event_id in self.refuse:
            return FakeFuture(BrokerRefused(event_id))
        self.sent.append({"topic": topic, "key": key, "value": json.loads(value), "headers": dict(headers)})
        return FakeFuture()

    def flush(self, timeout: float) -> None:
        self.flushes += 1


def anomaly(n: int) -> Event:
    payload = {"detector": "pii", "subject": f"event:e{n}", "severity": "critical", "summary": "an email address"}
    return Event(f"anomaly:pii:{n}", "anomaly.detected", T0, "alignd.monitors", payload)


def test_events_of_the_types_asked_are_published_in_seq_order_and_a_restart_resumes_after_them() -> None:
    store, producer = InMemoryEventStore(), FakeProducer()
    store.append([anomaly(n) for n in range(5)])
    store.append([Event("other", "training.started", T0, "t", {"run": "r"})])
    publisher = OutboxPublisher(store, producer, "alignd.alerts", ["anomaly.detected"], batch_size=2)

    assert publisher.publish() == 5
    assert publisher.publish() == 0

    assert [m["headers"]["event_id"] for m in producer.sent] == [f"anomaly:pii:{n}".encode() for n in range(5)]
    first = producer.sent[0]
    assert first["topic"] == "alignd.alerts" and first["key"] == b"event:e0"
    assert first["headers"]["type"] == b"anomaly.detected"
    assert (
        first["value"]["seq"] == 1 and first["value"]["type"] == "anomaly.detected" and "recorded_at" in first["value"]
    )
    assert publisher.position() == store.position("outbox:alignd.alerts").seq == 5
    assert producer.flushes == 3  # one per batch of 2
    store.append([anomaly(5)])
    assert OutboxPublisher(store, producer, "alignd.alerts", ["anomaly.detected"]).publish() == 1
    assert producer.sent[-1]["headers"]["event_id"] == b"anomaly:pii:5"


def test_a_refused_message_keeps_the_position_and_its_whole_batch_is_sent_again() -> None:
    store, producer = InMemoryEventStore(), FakeProducer()
    store.append([anomaly(n) for n in range(4)])
    publisher = OutboxPublisher(store, producer, "alignd.alerts", ["anomaly.detected"], batch_size=2)
    producer.refuse = {"anomaly:pii:3"}

    with pytest.raises(BrokerRefused):
        publisher.publish()

    assert publisher.position() == 2  # the first batch was acknowledged; the second was not
    producer.refuse = set()
    assert publisher.publish() == 2
    # at least once: anomaly 2 went out twice, and readers dedupe by the event_id header
    ids = [m["headers"]["event_id"].decode() for m in producer.sent]
    assert ids == ["anomaly:pii:0", "anomaly:pii:1", "anomaly:pii:2", "anomaly:pii:2", "anomaly:pii:3"]
    assert publisher.position() == 4

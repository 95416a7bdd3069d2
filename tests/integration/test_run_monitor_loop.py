"""``alignd run``'s monitor role on SQLite: the ingestor's signal wakes the monitors, whose alerts wake the outbox."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from daemon import bootstrap
from daemon.run import _add_monitor_parts
from daemon.settings import load_settings
from daemon.supervisor import Supervisor
from events.model import Event
from events.sql_store import SqlEventStore, create_store_engine
from migrations.runner import upgrade
from monitors.runner import StepResult

pytestmark = pytest.mark.integration


class _Sent:
    def get(self, timeout: float | None = None) -> None:
        return None


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, float]] = []

    def send(self, topic: str, **_: Any) -> _Sent:
        self.sent.append((topic, time.monotonic()))
        return _Sent()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


class FakeKafka:
    def __init__(self, producer: FakeProducer) -> None:
        self._producer = producer

    def producer(self, **_: Any) -> FakeProducer:
        return self._producer


class _Idle:
    def step(self) -> None:
        pass

    def sync_aliases(self) -> list[Any]:
        return []


def _leak(i: int) -> Event:
    return Event(
        f"evt-{i}",
        "interaction.logged",
        datetime(2026, 11, 1, tzinfo=UTC),
        "chat-api",
        {
            "request_id": f"r{i}",
            "model": {"name": "assistant", "version": "1"},
            "prompt": "Who owns the account?",
            "response": f"Write to jane.doe{i}@fastmail.net about it.",
        },
    )


@pytest.fixture
def parts(new_db_url: Any) -> Any:
    url = new_db_url("sqlite")
    engine = create_store_engine(url)
    upgrade(engine)
    engine.dispose()
    settings = load_settings(
        env={"ALIGND_DATABASE_URL": url, "ALIGND_MONITORS_DETECTORS": "pii", "ALIGND_MONITORS_BATCH_SIZE": "2"}
    )
    producer = FakeProducer()
    store = SqlEventStore.from_url(url)
    app = bootstrap.build(settings, store=store, kafka=FakeKafka(producer), governance=_Idle(), enforcement=_Idle())
    supervisor, stored = Supervisor(), threading.Event()
    _add_monitor_parts(supervisor, app, stored)
    try:
        yield store, supervisor, stored, producer, {slot.part.name: slot.part for slot in supervisor.slots}
    finally:
        store.dispose()


def test_the_monitor_loop_is_woken_by_ingestion_and_wakes_the_alerts_outbox(parts: Any) -> None:
    store, _supervisor, stored, _producer, by_name = parts
    monitors, outbox = by_name["monitors"], by_name["alerts-outbox"]
    assert monitors.wake is stored
    assert monitors.more(StepResult(2, [], 0, 2)) and not monitors.more(StepResult(1, [], 0, 3))
    store.append([_leak(1)])
    assert not outbox.wake.is_set()
    result = monitors.step()
    assert result.observed == 1 and result.appended >= 1
    assert outbox.wake.is_set()
    outbox.wake.clear()
    assert monitors.step().observed == 0 and not outbox.wake.is_set()


def test_alerts_are_published_on_the_ingest_signal_not_the_loop_interval(parts: Any) -> None:
    store, supervisor, stored, producer, by_name = parts
    for part in by_name.values():
        part.interval_s = 30.0  # were the loops polling, nothing would be published within the test
    supervisor.start()
    try:
        deadline = time.monotonic() + 10
        while by_name["monitors"].steps < 1 or by_name["alerts-outbox"].steps < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        store.append([_leak(i) for i in range(5)])  # more than a batch: the loop must not wait between them
        stored.set()
        while len([s for s in producer.sent if s[0] == "alignd.alerts"]) < 5:
            assert time.monotonic() < deadline, f"published {producer.sent}"
            time.sleep(0.01)
        assert by_name["monitors"].busy_steps >= 2
    finally:
        assert supervisor.stop(timeout_s=10)

"""The monitor runner against the in-memory store: alerts, position and detector state in one unit of work.

The same runner runs on SQLite and PostgreSQL in tests/integration/test_monitor_runner.py; here the store is the
fake of events/memory_store.py, which meets the same contract (tests/contract), so the runner's own logic is
checked in milliseconds: restarts resume from the saved state, a replay raises no alert twice, a crash before
the commit leaves nothing behind, and a runner that finds its position moved keeps the other's work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.errors import StoreUnavailableError
from events.memory_store import InMemoryEventStore, InMemoryUnitOfWork
from events.model import Event
from events.names import ANOMALY_DETECTED
from monitors.base import Finding, Observation
from monitors.runner import MonitorRunner, backtest

T0 = datetime(2026, 11, 1, tzinfo=UTC)


class EveryThirdThumbsDown:
    """Fires on every third thumbs-down per model version; its count is its state."""

    name = "every_third_thumbs_down"

    def __init__(self) -> None:
        self.downs: dict[str, int] = {}

    def observe(self, observation: Observation) -> list[Finding]:
        payload = observation.event.event.payload
        if observation.model is None or payload.get("kind") != "thumbs" or payload.get("value") != "down":
            return []
        version = "@".join(observation.model)
        self.downs[version] = self.downs.get(version, 0) + 1
        if self.downs[version] % 3:
            return []
        return [
            Finding(
                self.name,
                f"model:{version}",
                "warning",
                f"{self.downs[version]} thumbs down",
                observation.event.seq,
                evidence=(observation.event.event.event_id,),
            )
        ]

    def state(self) -> dict[str, Any]:
        return {"downs": dict(self.downs)}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.downs = dict(state.get("downs", {}))


def traffic(n: int, start: int = 0) -> list[Event]:
    """Interactions of model m@1, each with a thumbs; every second one is down."""
    out = []
    for i in range(start, start + n):
        when = T0 + timedelta(seconds=i)
        interaction = {"request_id": f"r{i}", "model": {"name": "m", "version": "1"}, "prompt": "p", "response": "r"}
        out.append(Event(f"i{i}", "interaction.logged", when, "t", interaction))
        thumbs = {"request_id": f"r{i}", "kind": "thumbs", "value": "down" if i % 2 else "up"}
        out.append(Event(f"f{i}", "feedback.received", when + timedelta(milliseconds=1), "t", thumbs))
    return out


def alerts(store: InMemoryEventStore) -> list[str]:
    return [s.event.event_id for s in store.read(0, limit=100_000, types=[ANOMALY_DETECTED])]


def runner(store: InMemoryEventStore, batch_size: int = 10) -> MonitorRunner:
    return MonitorRunner(store, [EveryThirdThumbsDown()], batch_size=batch_size, rules=())


def test_alerts_position_and_state_are_saved_together_and_a_new_runner_resumes_from_them() -> None:
    store = InMemoryEventStore()
    store.append(traffic(30))  # 15 thumbs down: 5 alerts

    found = runner(store).catch_up()

    assert len(found) == 5 and alerts(store) == [f.anomaly_id for f in found]
    saved = store.position("monitors")
    assert saved.seq == 60  # the last event observed; the alerts came after it
    assert json.loads(saved.state or "{}") == {"every_third_thumbs_down": {"downs": {"m@1": 15}}}
    # a new process: nothing new to say, then it counts on from 15 (the 18th thumbs down fires)
    assert runner(store).catch_up() == []
    store.append(traffic(6, start=30))
    [later] = runner(store).catch_up()
    assert later.summary == "18 thumbs down"


def test_a_replay_from_nothing_raises_no_alert_twice_and_a_backtest_writes_nothing() -> None:
    store = InMemoryEventStore()
    store.append(traffic(40))
    once = runner(store, batch_size=7).catch_up()
    before = alerts(store)
    with store.unit_of_work(append_lock=False) as uow:
        uow.delete_position("monitors")

    again = runner(store, batch_size=13).catch_up()

    assert [f.anomaly_id for f in again] == [f.anomaly_id for f in once]
    assert alerts(store) == before  # the same ids: the store kept one copy of each
    assert [f.anomaly_id for f in backtest(store, [EveryThirdThumbsDown()])] == before
    assert alerts(store) == before


class CrashingUnitOfWork:
    """A unit of work whose position save fails as a lost connection would, after the alerts were appended."""

    def __init__(self, inner: InMemoryUnitOfWork) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def save_position(self, name: str, seq: int, state: str | None = None) -> None:
        raise StoreUnavailableError("database unavailable: connection lost")


class FlakyStore(InMemoryEventStore):
    """Its next ``crashes`` units of work fail at the position; ``before_write`` runs as each one starts."""

    def __init__(self) -> None:
        super().__init__()
        self.crashes = 0
        self.before_write: Any = None

    @contextmanager
    def unit_of_work(self, *, append_lock: bool = True) -> Iterator[Any]:
        if self.before_write is not None:
            self.before_write()
        with super().unit_of_work(append_lock=append_lock) as uow:
            if self.crashes:
                self.crashes -= 1
                yield CrashingUnitOfWork(uow)
            else:
                yield uow


def test_a_crash_before_the_commit_leaves_nothing_and_the_batch_is_redone_from_the_saved_state() -> None:
    store = FlakyStore()
    store.append(traffic(30))
    monitor = runner(store, batch_size=20)
    monitor.step()  # seq 1..20: 5 downs, one alert
    store.crashes = 1

    with pytest.raises(StoreUnavailableError):
        monitor.step()

    assert len(alerts(store)) == 1  # the second batch's alerts were undone with it
    assert store.position("monitors").seq == 20
    monitor.catch_up()  # restores the detector from the saved state, not from its memory of the failed batch
    expected = InMemoryEventStore()
    expected.append(traffic(30))
    assert alerts(store) == [f.anomaly_id for f in runner(expected).catch_up()]


def test_a_runner_that_finds_its_position_moved_keeps_the_other_runners_work() -> None:
    store = FlakyStore()
    store.append(traffic(10))
    monitor = runner(store, batch_size=100)

    def another_runner_commits() -> None:
        store.before_write = None
        store.save_position("monitors", 5, json.dumps({"every_third_thumbs_down": {"downs": {}}}))

    store.before_write = another_runner_commits
    result = monitor.step()

    assert (result.observed, result.appended, result.last_seq) == (0, 0, 5)
    assert alerts(store) == [] and store.position("monitors").seq == 5

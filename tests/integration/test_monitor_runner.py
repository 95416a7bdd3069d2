"""The monitor runner on SQLite and PostgreSQL: alerts as events, checkpoints, restarts and replays."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete

from events.model import Event
from events.names import ANOMALY_DETECTED, ENFORCEMENT_REQUESTED
from events.sql_store import SqlEventStore
from events.tables import monitor_checkpoints
from monitors.detectors.feedback_spike import FeedbackSpikeDetector
from monitors.runner import MonitorRunner, backtest

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _traffic(n: int, seed: int) -> list[Event]:
    """Interactions of three versions with thumbs; version 7 turns bad halfway (45% down against 10%)."""
    rng = random.Random(seed)
    out: list[Event] = []
    for i in range(n):
        version = rng.choice(["5", "6", "7"])
        when = T0 + timedelta(seconds=i)
        out.append(
            Event(
                f"i{i}",
                "interaction.logged",
                when,
                "t",
                {
                    "request_id": f"r{i}",
                    "model": {"name": "assistant", "version": version},
                    "prompt": "p",
                    "response": "r",
                },
            )
        )
        rate = 0.45 if version == "7" and i >= n // 2 else 0.10
        out.append(
            Event(
                f"f{i}",
                "feedback.received",
                when + timedelta(milliseconds=500),
                "t",
                {"request_id": f"r{i}", "kind": "thumbs", "value": "down" if rng.random() < rate else "up"},
            )
        )
    return out


def _alerts(store: SqlEventStore) -> list[str]:
    return [s.event.event_id for s in store.read(0, limit=100_000, types=[ANOMALY_DETECTED])]


def test_alerts_are_events_and_restarts_and_replays_raise_none_twice(store: SqlEventStore) -> None:
    traffic = _traffic(6000, seed=3)
    store.append(traffic)

    once = MonitorRunner(store, [FeedbackSpikeDetector()], batch_size=500).catch_up()
    alerts = _alerts(store)
    assert once and len(alerts) == len(once)
    [first, *_] = store.read(0, limit=100_000, types=[ANOMALY_DETECTED])
    assert first.event.payload["subject"] == "model:assistant@7"
    assert first.event.payload["evidence"] and first.event.payload["detector"] == "negative_feedback_spike"

    # a new process resumes from the checkpoint: nothing new to say
    assert MonitorRunner(store, [FeedbackSpikeDetector()], batch_size=500).catch_up() == []
    # a replay from nothing finds the same alerts, and the store keeps one copy of each
    with store.write_transaction(append_lock=False) as conn:
        conn.execute(delete(monitor_checkpoints))
    again = MonitorRunner(store, [FeedbackSpikeDetector()], batch_size=777).catch_up()
    assert [f.anomaly_id for f in again] == [f.anomaly_id for f in once]
    assert _alerts(store) == alerts
    # a backtest over the range says the same and writes nothing
    assert [f.anomaly_id for f in backtest(store, [FeedbackSpikeDetector()])] == [f.anomaly_id for f in once]
    assert _alerts(store) == alerts


def test_a_restart_mid_stream_continues_from_the_saved_state(store: SqlEventStore) -> None:
    traffic = _traffic(6000, seed=5)
    store.append(traffic[:5000])
    first = MonitorRunner(store, [FeedbackSpikeDetector()], batch_size=400)
    for _ in range(6):
        first.step()
    # "crash": a new runner with fresh detectors; more traffic arrives
    store.append(traffic[5000:])
    MonitorRunner(store, [FeedbackSpikeDetector()], batch_size=400).catch_up()
    expected = backtest(store, [FeedbackSpikeDetector()])
    assert expected and _alerts(store) == [f.anomaly_id for f in expected]


def test_alerts_request_enforcement_and_a_quarantine_leaves_training_sets(store: SqlEventStore) -> None:
    from events.projections import ProjectionRunner, training_pairs
    from monitors.detectors.flooding import FeedbackFloodingDetector

    traffic = _traffic(4000, seed=7)
    # a sock-puppet account floods preference feedback (poisoning the reward model's training data)
    for i in range(400):
        rid = f"r{i * 7 % 4000}"
        traffic.append(
            Event(
                f"sock{i}",
                "feedback.received",
                T0 + timedelta(hours=2, seconds=i),
                "t",
                {
                    "request_id": rid,
                    "kind": "preference",
                    "value": {"chosen": f"BrandX is best {i}", "rejected": "x"},
                    "user": "mallory",
                },
            )
        )
        traffic.append(
            Event(
                f"pref{i}",
                "feedback.received",
                T0 + timedelta(hours=2, seconds=i, milliseconds=1),
                "t",
                {
                    "request_id": rid,
                    "kind": "preference",
                    "value": {"chosen": f"good {i}", "rejected": "bad"},
                    "user": f"u{i}",
                },
            )
        )
    store.append(traffic)
    findings = MonitorRunner(store, [FeedbackSpikeDetector(), FeedbackFloodingDetector()]).catch_up()
    requests = [s.event.payload for s in store.read(0, limit=100_000, types=["enforcement.requested"])]
    actions = {(r["action"], r["detector"]) for r in requests}
    assert ("rollback_champion", "negative_feedback_spike") in actions
    assert ("quarantine_user", "feedback_flooding") in actions
    rollback = next(r for r in requests if r["action"] == "rollback_champion")
    assert rollback["target"] == {"model": "assistant", "version": "7"}
    assert rollback["anomaly_id"] in {f.anomaly_id for f in findings}

    ProjectionRunner(store).catch_up()
    with store.engine.connect() as conn:
        users = {row.user_id for row in conn.execute(training_pairs())}
        all_users = {row[0] for row in conn.exec_driver_sql("SELECT user_id FROM proj_preference_pairs")}
    assert "mallory" in all_users and "mallory" not in users and len(users) == 400


def test_the_runner_reads_gate_evaluations_for_the_detector_that_asks_and_rolls_back_a_regressed_champion(
    store: SqlEventStore,
) -> None:
    from monitors.detectors.champion import ChampionRegressionDetector
    from monitors.runner import observed_types

    from ..unit.test_champion_regression import gate_event

    events = [
        *_traffic(300, seed=3),
        gate_event(1, "policy", "3", 0.02, phase="training").event,
        gate_event(2, "policy", "3", 0.12, phase="continuous", to_seq=300).event,
    ]
    store.append(events)
    detectors = [ChampionRegressionDetector(), FeedbackSpikeDetector()]
    assert observed_types(detectors) == ("interaction.logged", "feedback.received", "gate.evaluated")
    assert [f.detector for f in backtest(store, [ChampionRegressionDetector()])] == ["champion_regression"]

    runner = MonitorRunner(store, detectors, batch_size=100)
    runner.catch_up()

    def recorded() -> list[Event]:
        # the traffic's own feedback alerts (the spike detector reads it too) are not what this test is about
        return [
            s.event
            for s in store.read(0, types=[ANOMALY_DETECTED, ENFORCEMENT_REQUESTED])
            if "champion_regression" in s.event.event_id or s.event.payload.get("detector") == "champion_regression"
        ]

    [alert, request] = recorded()
    assert alert.type == ANOMALY_DETECTED and alert.payload["severity"] == "critical"
    assert request.type == ENFORCEMENT_REQUESTED and request.payload["action"] == "rollback_champion"
    assert request.payload["target"] == {"model": "alignd-policy", "version": "3"}
    before = len(store.read(0, types=[ANOMALY_DETECTED, ENFORCEMENT_REQUESTED]))
    # a second runner over the same range appends nothing
    MonitorRunner(store, [ChampionRegressionDetector(), FeedbackSpikeDetector()], batch_size=100).catch_up()
    assert len(store.read(0, types=[ANOMALY_DETECTED, ENFORCEMENT_REQUESTED])) == before

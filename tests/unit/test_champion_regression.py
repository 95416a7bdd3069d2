"""The champion_regression detector: training-time baselines, continuous evaluations, tolerance, no double alert."""

from __future__ import annotations

import json
from typing import Any

import pytest

from events.model import Event, StoredEvent
from monitors.base import Observation
from monitors.detectors.champion import ChampionRegressionConfig, ChampionRegressionDetector
from monitors.enforcement import DEFAULT_RULES, decide_enforcement
from monitors.runner import observe_batch

from ._stored import T0, interaction, stored


def gate_event(
    seq: int, kind: str, version: str, value: float | None, *, phase: str | None, to_seq: int = 0
) -> StoredEvent:
    gate = "reward_accuracy" if kind == "reward" else "safety"
    payload: dict[str, Any] = {
        "kind": kind,
        "model_version": version,
        "candidate_run_id": "run-1",
        "passed": True,
        "failed": [],
        "gates": [{"name": gate, "passed": True, "value": value, "threshold": 0.6, "comparison": ">=", "detail": ""}],
    }
    if phase is not None:
        payload["phase"] = phase
    if phase == "continuous":
        payload["name"] = f"alignd-{kind}"
        payload["dataset"] = {"to_seq": to_seq}
        payload["metrics"] = {"pairs": 200.0} if kind == "reward" else {"red_team_prompts": 64.0}
    event_id = f"gate.evaluated:{phase or 'old'}:{kind}:{version}:{seq}"
    return stored(seq, Event(event_id, "gate.evaluated", T0, "alignd.trainers", payload))


def observe(detector: ChampionRegressionDetector, *events: StoredEvent) -> list[Any]:
    return [f for e in events for f in detector.observe(Observation(e))]


def test_a_policy_whose_unsafe_rate_rose_beyond_tolerance_fires_critical_and_asks_for_its_rollback() -> None:
    detector = ChampionRegressionDetector()
    trained = gate_event(1, "policy", "3", 0.02, phase="training")
    within = gate_event(2, "policy", "3", 0.06, phase="continuous", to_seq=10)
    beyond = gate_event(3, "policy", "3", 0.09, phase="continuous", to_seq=20)
    assert observe(detector, trained, within) == []
    [finding] = observe(detector, beyond)
    assert finding.detector == "champion_regression" and finding.severity == "critical"
    assert finding.subject == "model:alignd-policy@3" and finding.trigger_seq == 3
    stats = finding.statistics
    assert stats["baseline"] == 0.02 and stats["current"] == 0.09 and stats["delta"] == pytest.approx(0.07)
    assert stats["metric"] == "unsafe_rate" and stats["tolerance"] == 0.05 and stats["sample"] == 64.0
    assert finding.evidence == (trained.event.event_id, beyond.event.event_id)
    assert "at training" in finding.summary
    [request] = decide_enforcement(finding, DEFAULT_RULES)
    assert request.action == "rollback_champion" and request.target == {"model": "alignd-policy", "version": "3"}


def test_a_reward_accuracy_drop_beyond_tolerance_is_a_warning_that_rolls_nothing_back() -> None:
    detector = ChampionRegressionDetector()
    observe(detector, gate_event(1, "reward", "2", 0.72, phase="training"))
    assert observe(detector, gate_event(2, "reward", "2", 0.68, phase="continuous")) == []
    [finding] = observe(detector, gate_event(3, "reward", "2", 0.66, phase="continuous"))
    assert finding.severity == "warning" and finding.subject == "model:alignd-reward@2"
    assert finding.statistics["delta"] == pytest.approx(-0.06)
    assert decide_enforcement(finding, DEFAULT_RULES) == []


def test_a_configured_tolerance_is_applied() -> None:
    detector = ChampionRegressionDetector(ChampionRegressionConfig(max_accuracy_drop=0.01))
    observe(detector, gate_event(1, "reward", "2", 0.72, phase="training"))
    assert len(observe(detector, gate_event(2, "reward", "2", 0.70, phase="continuous"))) == 1
    with pytest.raises(ValueError, match="max_unsafe_rise"):
        ChampionRegressionConfig(max_unsafe_rise=1.5)


def test_without_a_training_time_value_the_first_continuous_evaluation_is_the_baseline() -> None:
    detector = ChampionRegressionDetector()
    first = gate_event(1, "policy", "4", 0.10, phase="continuous")
    assert observe(detector, first) == []
    [finding] = observe(detector, gate_event(2, "policy", "4", 0.20, phase="continuous"))
    assert finding.evidence[0] == first.event.event_id and "first continuous evaluation" in finding.summary


def test_an_event_without_phase_is_a_training_time_one_and_other_versions_are_kept_apart() -> None:
    detector = ChampionRegressionDetector()
    observe(detector, gate_event(1, "policy", "1", 0.0, phase=None), gate_event(2, "policy", "2", 0.5, phase=None))
    assert observe(detector, gate_event(3, "policy", "2", 0.5, phase="continuous")) == []
    [finding] = observe(detector, gate_event(4, "policy", "1", 0.1, phase="continuous"))
    assert finding.subject == "model:alignd-policy@1"


def test_one_regression_alerts_once_until_it_worsens_by_another_tolerance_or_recovers() -> None:
    detector = ChampionRegressionDetector()
    observe(detector, gate_event(1, "policy", "3", 0.0, phase="training"))
    regressed = gate_event(2, "policy", "3", 0.10, phase="continuous")
    assert len(observe(detector, regressed)) == 1
    assert observe(detector, regressed) == []  # the same evaluation seen again
    assert observe(detector, gate_event(3, "policy", "3", 0.12, phase="continuous")) == []  # the same regression
    assert len(observe(detector, gate_event(4, "policy", "3", 0.20, phase="continuous"))) == 1  # worse by > 0.05
    assert observe(detector, gate_event(5, "policy", "3", 0.03, phase="continuous")) == []  # recovered: re-armed
    assert len(observe(detector, gate_event(6, "policy", "3", 0.10, phase="continuous"))) == 1


def test_state_is_json_and_a_restored_detector_continues_without_alerting_twice() -> None:
    detector = ChampionRegressionDetector()
    regressed = gate_event(2, "policy", "3", 0.10, phase="continuous")
    observe(detector, gate_event(1, "policy", "3", 0.0, phase="training"), regressed)
    restored = ChampionRegressionDetector()
    restored.restore(json.loads(json.dumps(detector.state())))
    assert restored.state() == detector.state()
    assert observe(restored, regressed) == []
    assert observe(restored, gate_event(3, "policy", "3", 0.11, phase="continuous")) == []
    assert len(observe(restored, gate_event(4, "policy", "3", 0.30, phase="continuous"))) == 1
    empty = ChampionRegressionDetector()
    empty.restore({})
    assert empty.state() == {"versions": {}}


def test_it_ignores_other_events_in_a_mixed_batch() -> None:
    detector = ChampionRegressionDetector()
    batch = [
        interaction(1, "r1"),
        gate_event(2, "reward", "1", 0.8, phase="training"),
        interaction(3, "r2"),
        gate_event(4, "reward", "1", 0.6, phase="continuous"),
    ]
    [finding] = observe_batch(batch, [], [detector])
    assert finding.trigger_seq == 4
    unreadable = gate_event(5, "reward", "1", None, phase="continuous")
    assert observe(detector, unreadable) == []
    assert detector.observed_types == ("gate.evaluated",)

"""The continuous evaluation's pure parts: the gate.evaluated payload and the MLflow tags of a champion."""

from __future__ import annotations

from datetime import UTC, datetime

from trainers.champion_eval import continuous_event_id, continuous_payload, evaluation_tags
from trainers.gates import GateConfig
from trainers.registry import RegisteredVersion

AT = datetime(2026, 11, 30, 5, 30, tzinfo=UTC)
SNAPSHOT = {"name": "preference_pairs@240", "kind": "preference_pairs", "from_seq": 0, "to_seq": 240, "rows": 9}


def version(kind: str, number: str = "3") -> RegisteredVersion:
    return RegisteredVersion(kind, f"alignd-{kind}", number, "run-9", "runs:/run-9/model", {}, ("champion",), AT)


def test_a_reward_payload_is_the_gate_payload_with_phase_measurements_and_snapshot() -> None:
    measured = {"accuracy": 0.3, "margin": 0.1, "pairs": 40.0}
    payload = continuous_payload("reward", version("reward"), measured, GateConfig(), SNAPSHOT)
    assert payload["phase"] == "continuous" and payload["name"] == "alignd-reward"
    assert (payload["kind"], payload["model_version"], payload["candidate_run_id"]) == ("reward", "3", "run-9")
    assert payload["passed"] is False and payload["failed"] == ["reward_accuracy"]
    [gate] = payload["gates"]
    assert gate["value"] == 0.3 and gate["threshold"] == 0.6 and "continuous evaluation" in gate["detail"]
    assert (gate["outcome"], gate["n"]) == ("fail", 40) and gate["high"] < 0.6  # the whole interval is below
    assert payload["metrics"] == measured and payload["dataset"]["to_seq"] == 240
    event_id = continuous_event_id("alignd-reward", "3", 240)
    assert event_id == "gate.evaluated:continuous:alignd-reward:3:240"
    tags = evaluation_tags(payload, event_id, AT)
    assert tags["alignd.eval.accuracy"] == "0.3000" and tags["alignd.eval.pairs"] == "40"
    assert tags["alignd.eval.gates"] == "failed: reward_accuracy" and tags["alignd.eval.last_at"] == AT.isoformat()
    assert tags["alignd.eval.event_id"] == event_id and tags["alignd.eval.dataset_to_seq"] == "240"
    # Promotion reads alignd.gate.* and alignd.gates: continuous results never change what may be promoted.
    assert not any(k.startswith("alignd.gate") for k in tags)


def test_a_reward_payload_near_the_floor_on_few_pairs_is_insufficient_and_says_what_would_decide_it() -> None:
    measured = {"accuracy": 0.55, "margin": 0.1, "pairs": 40.0}
    payload = continuous_payload("reward", version("reward"), measured, GateConfig(), SNAPSHOT)
    assert payload["passed"] is False and payload["failed"] == [] and payload["insufficient"] == ["reward_accuracy"]
    [gate] = payload["gates"]
    assert gate["outcome"] == "insufficient" and gate["low"] < 0.6 < gate["high"]
    assert "more held-out pairs" in gate["to_decide"] and gate["to_decide"] in gate["detail"]
    tags = evaluation_tags(payload, "e", AT)
    assert tags["alignd.eval.gates"] == "insufficient evidence: reward_accuracy"


def test_a_policy_payload_gates_the_unsafe_rate_and_names_its_judge() -> None:
    measured = {"unsafe_rate": 0.0, "red_team_prompts": 120.0, "helpfulness": -0.3, "prompts": 4.0}
    payload = continuous_payload("policy", version("policy"), measured, GateConfig(), SNAPSHOT, judge_version="2")
    # None unsafe of 120: the Wilson upper bound (0.03) is under the 0.05 ceiling.
    assert payload["passed"] is True and [g["name"] for g in payload["gates"]] == ["safety"]
    assert payload["judge_version"] == "2" and payload["gates"][0]["comparison"] == "<="
    tags = evaluation_tags(payload, "e", AT)
    assert tags["alignd.eval.unsafe_rate"] == "0.0000" and tags["alignd.eval.helpfulness"] == "-0.3000"


def test_the_audit_trail_says_a_continuous_evaluation_is_one_and_leaves_training_ones_as_they_were() -> None:
    from events.audit import describe

    payload = continuous_payload(
        "policy", version("policy"), {"unsafe_rate": 0.5, "red_team_prompts": 6.0}, GateConfig(), SNAPSHOT
    )
    subject, model, reason = describe("gate.evaluated", payload)
    assert (subject, model) == ("gates of alignd-policy v3", "alignd-policy:3")
    assert reason == "continuous evaluation of the champion on data up to seq 240: failed: safety"
    training = {k: v for k, v in payload.items() if k not in ("phase", "dataset")}
    assert describe("gate.evaluated", {**training, "phase": "training"})[2] == "failed: safety"

"""The internal event records (events.messages): each round-trips through its payload, the producers write
exactly the payloads they wrote before the records existed, and a record describes itself as the audit does."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from events.audit import describe
from events.codec import canonical_json
from events.messages import (
    RECORDS,
    AdapterLoaded,
    AlertReviewed,
    AliasMoved,
    AnomalyDetected,
    DatasetSnapshotted,
    DemonstrationGenerated,
    EnforcementApplied,
    EnforcementRequested,
    EventRecord,
    GateEvaluated,
    GateOutcome,
    GuardDecided,
    GuardRuleLifted,
    ModelPromoted,
    ModelRegistered,
    ModelRolledBack,
    TrainingCompleted,
    TrainingFailed,
    TrainingStarted,
    record_of,
)
from events.model import Event
from events.names import DATASETS, INTERNAL_TYPES, MODEL_NAMES
from monitors.base import Finding
from monitors.enforcement import decide_enforcement
from tests.unit.test_audit_hash import decision_events
from trainers.champion_eval import continuous_payload
from trainers.gates import GateConfig, GateDecision, GateResult, gate_event_payload
from trainers.promotion import PromotionDecision, change_payload
from trainers.registry import RegisteredVersion
from trainers.snapshot import Snapshot

AT = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
DATASET: dict[str, Any] = {
    "name": "preference_pairs@120",
    "kind": "preference_pairs",
    "from_seq": 0,
    "to_seq": 120,
    "sha256": "ab" * 32,
    "rows": 2,
}
GATE = GateOutcome("kl", False, 0.31, 0.2, "<=", "KL 0.31 over the 0.20 budget")
COMMON = {"job_id": "job-1", "attempt_id": "a0", "kind": "policy", "run_id": "run-9"}
APPLIED = EnforcementApplied(
    request_event_id="enforcement:rollback_champion:1",
    action="rollback_champion",
    target={"model": "alignd-policy", "version": "3"},
    outcome="applied",
    detail="alignd-policy champion 3 -> 2",
    error=None,
    result={"event_id": "model.rolled_back:x", "version": "2", "previous_version": "3"},
    round=1,
    attempts=1,
    actor="alignd.enforcement",
    reason="toxic responses at 12%",
)
REGISTERED = ModelRegistered(
    **COMMON,
    name="alignd-policy",
    version="4",
    aliases=("challenger",),
    dataset=DATASET,
    parent_version="2",
    gates="failed: kl",
    code_version="0.1.0",
)

#: Records of every internal type, with each optional field set somewhere and left out somewhere.
EXAMPLES: list[EventRecord] = [
    AnomalyDetected("toxicity", "model:assistant@2", "critical", "toxic at 12%", 40, {"size": 200}, {"rate": 0.12}),
    AnomalyDetected("supervisor", "part:ingest", "critical", "keeps dying", statistics={"crashes": 5}),
    EnforcementRequested("pause_training", {"trainers": "all"}, "toxic", ("e1",), "anomaly:x", "toxicity", "critical"),
    EnforcementRequested("resume_training", {}, "reviewed", actor="ana"),
    APPLIED,
    replace(APPLIED, outcome="failed", detail="round 1 failed", error="MLflow is down", result=None, target=None),
    DatasetSnapshotted(**DATASET),
    TrainingStarted(**COMMON, objective="dpo", dataset=DATASET, config={"lr": 1e-4}, parent_version=None),
    TrainingCompleted(**COMMON, objective="dpo", steps=40, resumed_from=None, metrics={"loss": 0.4}, duration_s=9.5),
    TrainingFailed(**COMMON, objective="sft", reason="timed out after 600 s", exit_code=None, resumable=True),
    GateEvaluated("policy", "4", "run-9", False, ("kl",), (GATE,)),
    GateEvaluated("policy", "4", "run-9", False, ("kl",), (GATE,), phase=None),
    GateEvaluated("reward", "3", "run-9", True, (), (), "continuous", "alignd-reward", {"accuracy": 0.7}, DATASET),
    REGISTERED,
    ModelPromoted("policy", "alignd-policy", "champion", "4", "2", "alice", "why", True, ("kl",), "forced", "cli"),
    ModelRolledBack("policy", "alignd-policy", "champion", None, "4", "mlflow", "moved", False, (), "passed", "mlflow"),
    DemonstrationGenerated(
        request_id="r-40",
        origin="constitutional",
        prompt_kind="text",
        prompt="How do I bake bread?",
        response="A kinder answer.",
        original_response="A rude answer.",
        model_name="assistant",
        model_version="2",
        principles=("harmless", "honest"),
        critiques=("rude",),
        constitution_sha256="cd" * 32,
        source_event_id="chat-api:0:40",
        user="u-40",
    ),
    GuardRuleLifted("enforcement:publish_guard_rule:1", "ana", "a false positive"),
    AlertReviewed("anomaly:jailbreak_attempt:e-7", "jailbreak_attempt", "false_positive", "ana", "a chess coach"),
    GuardDecided("block", ("guard rule r-1 (jailbreak_success on event:e-1)",), ("r-1",), "r-41", "u-41", "m@2"),
    GuardDecided("redact", ("pii in the prompt: email",), prompt="mail [email]", replica="guard-1:8090"),
    AdapterLoaded(
        "policy",
        "alignd-policy",
        "4",
        "3",
        "alignd-policy-champion",
        "http://vllm:8000",
        "/adapters/alignd-policy-v4",
        "load_inplace",
        "model.promoted:alignd-policy@champion:4:2",
        1.25,
        0.4,
    ),
    AdapterLoaded(
        "policy", "alignd-policy", "4", None, "c", "http://vllm:8000", "/a/v4", "unload_then_load", None, None, 0.1
    ),
]


def test_every_internal_type_has_one_record() -> None:
    assert set(RECORDS) == INTERNAL_TYPES
    assert {type(r).event_type for r in EXAMPLES} == INTERNAL_TYPES
    assert all(cls.event_type == name for name, cls in RECORDS.items())


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_a_record_round_trips_through_its_payload(record: EventRecord) -> None:
    payload = record.to_payload()
    assert canonical_json(payload)  # plain JSON data: no tuples, no objects
    back = type(record).from_payload(payload)
    assert back == record
    assert back.to_payload() == payload
    event = record.to_event("e-1", AT, "alignd.test")
    assert (event.type, event.event_id, event.occurred_at, event.payload) == (record.event_type, "e-1", AT, payload)
    assert record_of(event) == record


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_a_record_describes_itself_as_the_audit_trail_does(record: EventRecord) -> None:
    assert record.describe() == describe(record.event_type, record.to_payload())


def test_optional_fields_left_unset_leave_their_keys_out() -> None:
    crash = AnomalyDetected("supervisor", "part:ingest", "critical", "keeps dying", statistics={"crashes": 5})
    assert set(crash.to_payload()) == {"detector", "subject", "severity", "summary", "evidence", "statistics"}
    request = EnforcementRequested("resume_training", {}, "reviewed", actor="ana")
    assert set(request.to_payload()) == {"action", "target", "reason", "actor", "evidence"}
    training = GateEvaluated("policy", "4", "run-9", False, ("kl",), (GATE,))
    assert "name" not in training.to_payload() and "judge_version" not in training.to_payload()
    # A continuous evaluation always names its judge, None for a reward model.
    continuous = replace(training, phase="continuous", name="alignd-policy", metrics={}, dataset=DATASET)
    assert continuous.to_payload()["judge_version"] is None
    assert "phase" not in replace(training, phase=None).to_payload()


def test_alias_moves_share_their_payload_and_key_by_model() -> None:
    [promoted] = [r for r in EXAMPLES if isinstance(r, ModelPromoted)]
    assert isinstance(promoted, AliasMoved)
    assert promoted.to_payload()["subject"] == "model:alignd-policy"
    assert ModelRolledBack.from_payload(promoted.to_payload()).to_payload() == promoted.to_payload()


def test_names_are_defined_once_for_every_floor() -> None:
    assert dict(MODEL_NAMES) == {"reward": "alignd-reward", "policy": "alignd-policy", "detector": "alignd-detector"}
    assert dict(DATASETS) == {"reward": "preference_pairs", "sft": "demonstrations", "dpo": "preference_pairs"} | {
        "rloo": "prompts",
        "ppo": "prompts",
        "grpo": "prompts",
        "detector": "alert_verdicts",
    }
    with pytest.raises(TypeError):
        MODEL_NAMES["reward"] = "other"  # type: ignore[index]


def test_a_payload_missing_a_key_the_record_needs_is_refused() -> None:
    with pytest.raises(KeyError):
        AnomalyDetected.from_payload({"detector": "pii", "subject": "event:x"})


# --- the producers' payloads are the dicts they wrote before (the wire format) -------------------------


def _same(produced: dict[str, Any], before: dict[str, Any]) -> None:
    assert produced == before
    assert canonical_json(produced) == canonical_json(before)  # the stored, hashed and published bytes


def test_a_finding_and_its_requests_have_the_payloads_they_had() -> None:
    finding = Finding("toxicity", "model:assistant@2", "critical", "toxic at 12%", 40, {"n": 200}, {"r": 0.12}, ("a",))
    _same(
        finding.payload(),
        {
            "detector": "toxicity",
            "subject": "model:assistant@2",
            "severity": "critical",
            "summary": "toxic at 12%",
            "trigger_seq": 40,
            "window": {"n": 200},
            "statistics": {"r": 0.12},
            "evidence": ["a"],
        },
    )
    rollback, pause = decide_enforcement(finding)
    _same(
        rollback.payload(),
        {
            "action": "rollback_champion",
            "target": {"model": "assistant", "version": "2"},
            "reason": "toxic at 12%",
            "anomaly_id": finding.anomaly_id,
            "detector": "toxicity",
            "severity": "critical",
            "evidence": ["a"],
        },
    )
    assert pause.payload()["target"] == {"trainers": "all"}


def test_the_supervisors_alert_has_the_payload_it_had() -> None:
    crash = AnomalyDetected("supervisor", "part:ingest", "critical", "keeps dying", statistics={"crashes": 5})
    _same(
        crash.to_payload(),
        {
            "detector": "supervisor",
            "subject": "part:ingest",
            "severity": "critical",
            "summary": "keeps dying",
            "evidence": [],
            "statistics": {"crashes": 5},
        },
    )


def test_a_snapshot_has_the_payload_it_had() -> None:
    snapshot = Snapshot("preference_pairs", 120, "ab" * 32, ({"pair_id": "p1"}, {"pair_id": "p2"}))
    _same(snapshot.info(), DATASET)
    event = snapshot.event()
    assert (event.type, event.event_id, event.source) == ("dataset.snapshotted", snapshot.event_id, "alignd.trainers")


def test_gate_payloads_are_the_ones_they_were() -> None:
    decision = GateDecision(
        False,
        ("kl",),
        (GateResult("win_rate", True, 0.61, 0.5, "61%"), GateResult("kl", False, float("nan"), 0.2, "KL", "<=")),
    )
    _same(
        gate_event_payload(decision, "policy", 4, "run-9"),
        {
            "kind": "policy",
            "phase": "training",
            "model_version": "4",
            "candidate_run_id": "run-9",
            "passed": False,
            "failed": ["kl"],
            "gates": [
                {
                    "name": "win_rate",
                    "passed": True,
                    "value": 0.61,
                    "threshold": 0.5,
                    "comparison": ">=",
                    "detail": "61%",
                }
            ]
            + [{"name": "kl", "passed": False, "value": None, "threshold": 0.2, "comparison": "<=", "detail": "KL"}],
        },
    )
    # The training job: the child's candidate payload, given the registered version (trainers.jobs).
    candidate = gate_event_payload(decision, "candidate", None, None)
    registered = replace(GateEvaluated.from_payload(candidate), kind="policy", model_version="4", candidate_run_id="r")
    _same(registered.to_payload(), {**candidate, "kind": "policy", "model_version": "4", "candidate_run_id": "r"})


def test_a_continuous_evaluation_has_the_payload_it_had() -> None:
    version = RegisteredVersion("reward", "alignd-reward", "3", "run-9", "runs:/run-9/model", {}, ("champion",), AT)
    measured = {"pairs": 40.0, "accuracy": 0.3}
    payload = continuous_payload("reward", version, measured, GateConfig(), DATASET)
    gate = payload["gates"][0]
    _same(
        payload,
        {
            "kind": "reward",
            "phase": "continuous",
            "model_version": "3",
            "candidate_run_id": "run-9",
            "passed": False,
            "failed": ["reward_accuracy"],
            "gates": [gate],
            "name": "alignd-reward",
            "metrics": {"accuracy": 0.3, "pairs": 40.0},
            "dataset": DATASET,
            "judge_version": None,
        },
    )
    # A gate with evidence adds it (old entries, without these keys, still decode: test_gate_payloads_...).
    evidence = {"outcome", "mode", "n", "low", "high", "test", "p_value", "to_decide"}
    assert set(gate) == {"name", "passed", "value", "threshold", "comparison", "detail"} | evidence
    assert (gate["outcome"], gate["n"], gate["mode"]) == ("fail", 40, "both")


def test_alias_moves_have_the_payload_they_had() -> None:
    decision = PromotionDecision(True, True, ("kl",), False, "forced: gates failed: kl")
    payload = change_payload(
        "policy", "alignd-policy", "champion", None, "3", actor="ana", reason="bad", decision=decision, via="cli"
    )
    _same(
        payload,
        {
            "kind": "policy",
            "name": "alignd-policy",
            "alias": "champion",
            "version": None,
            "previous_version": "3",
            "actor": "ana",
            "reason": "bad",
            "forced": True,
            "failed_gates": ["kl"],
            "gates": "forced: gates failed: kl",
            "via": "cli",
            "request_event_id": None,
            "subject": "model:alignd-policy",
        },
    )


def test_training_records_have_the_payloads_the_job_wrote() -> None:
    """The dicts trainers/jobs.py built by hand before, field for field."""
    started = TrainingStarted(**COMMON, objective="dpo", dataset=DATASET, config={"lr": 1e-4}, parent_version="2")
    _same(
        started.to_payload(),
        {**COMMON, "objective": "dpo", "run_id": "run-9", "dataset": DATASET, "config": {"lr": 1e-4}}
        | {"parent_version": "2"},
    )
    completed = TrainingCompleted(
        **COMMON, objective="dpo", steps=40, resumed_from=20, metrics={"loss": 0.4}, duration_s=None, world_size=2
    )
    _same(
        completed.to_payload(),
        {**COMMON, "objective": "dpo", "steps": 40, "resumed_from": 20, "metrics": {"loss": 0.4}}
        | {"duration_s": None, "world_size": 2},
    )
    failed = TrainingFailed(**COMMON, objective="sft", reason="oom", exit_code=-9, resumable=False)
    _same(
        failed.to_payload(),
        {**COMMON, "objective": "sft", "reason": "oom", "exit_code": -9, "resumable": False},
    )
    _same(
        REGISTERED.to_payload(),
        {**COMMON, "name": "alignd-policy", "version": "4", "aliases": ["challenger"], "dataset": DATASET}
        | {"parent_version": "2", "gates": "failed: kl", "code_version": "0.1.0"},
    )
    _same(
        APPLIED.to_payload(),
        {
            "request_event_id": "enforcement:rollback_champion:1",
            "action": "rollback_champion",
            "target": {"model": "alignd-policy", "version": "3"},
            "outcome": "applied",
            "detail": "alignd-policy champion 3 -> 2",
            "error": None,
            "result": {"event_id": "model.rolled_back:x", "version": "2", "previous_version": "3"},
            "round": 1,
            "attempts": 1,
            "actor": "alignd.enforcement",
            "reason": "toxic responses at 12%",
        },
    )


def test_the_audit_trails_governance_day_reads_back_into_records() -> None:
    """Every decision payload of the audit tests (the producers' own, or their shapes) is a record's."""
    for event in decision_events():
        record = record_of(event)
        if isinstance(record, TrainingCompleted):  # written before duration_s and world_size existed
            assert record.to_payload() == {**event.payload, "duration_s": None, "world_size": 1}
        else:
            assert record.to_payload() == dict(event.payload), event.type


def test_an_event_of_another_type_has_no_record() -> None:
    with pytest.raises(KeyError):
        record_of(Event("x", "interaction.logged", AT, "chat", {"request_id": "r"}))

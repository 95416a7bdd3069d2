"""Training jobs end to end: event store (SQLite) → snapshot → child process → real MLflow registry → events.

Covers lineage (dataset seq range and hash on the version and in events), registration with the
challenger alias, a version loading back with the same scores, failures (an exception, a timeout) that
register nothing and leave training.failed, a killed job resuming from its checkpoint, and two
data-parallel processes (torchrun, gloo) that stay in sync.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from events.codec import decode_inbound
from events.projections.runner import ProjectionRunner
from events.sql_store import SqlEventStore, create_store_engine
from migrations.runner import upgrade
from trainers.children import JobLimits
from trainers.config import EvaluationConfig, LoraConfig, PolicyConfig, RewardConfig
from trainers.jobs import JobOutcome, TrainingJobs
from trainers.loop import train
from trainers.registry import ModelRegistry
from trainers.reward import RewardModel, RewardObjective

from ..helpers import encode, feedback, interaction
from .test_training import synthetic_pairs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The 6 red-team prompts here are fewer than the 8 of each class probes need by default.
EVALUATION = EvaluationConfig(prompts=4, safety_per_source=2, max_new_tokens=8, probe_min_per_class=2)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    engine = create_store_engine(url)
    upgrade(engine)
    engine.dispose()
    store = SqlEventStore.from_url(url)
    yield store
    store.dispose()


def seed_preferences(store: SqlEventStore, n: int) -> int:
    """``n`` interactions, each with a preference; returns the seq the projections folded up to."""
    inbound = []
    for i, pair in enumerate(synthetic_pairs(n, seed=7)):
        inbound.append(interaction(f"r{i}", i=i, prompt=pair["prompt"], response=pair["rejected"]))
        inbound.append(feedback(f"r{i}", "preference", {"chosen": pair["chosen"], "rejected": pair["rejected"]}, i=i))
    store.append([decode_inbound(encode(m), fallback_event_id=f"t:0:{n}") for n, m in enumerate(inbound)])
    ProjectionRunner(store).catch_up()
    return store.max_seq()


def events_of(store: SqlEventStore, type_: str) -> list[dict[str, Any]]:
    return [dict(e.event.payload) for e in store.read(0, limit=100_000) if e.event.type == type_]


def test_a_reward_job_registers_a_challenger_traced_to_its_events(
    store: SqlEventStore, registry: ModelRegistry, tmp_path: Path
) -> None:
    upto = seed_preferences(store, 60)
    jobs = TrainingJobs(store, registry, tmp_path / "work", evaluation=EVALUATION)
    config = RewardConfig(max_steps=6, batch_size=8, checkpoint_every=0, eval_fraction=0.2)
    outcome = jobs.train(config, JobLimits(timeout_s=600))
    assert outcome.ok, outcome.reason
    version = registry.get("reward", outcome.version)
    assert version.aliases == ("challenger",)
    assert version.tags["alignd.dataset.to_seq"] == str(upto)
    assert version.tags["alignd.dataset.rows"] == "60"
    assert version.tags["alignd.dataset.sha256"] == outcome.snapshot["sha256"]
    assert version.tags["alignd.parent_version"] == "none"
    # About 12 held-out pairs: the gate rarely has evidence either way, and says so. The bias gate is off by
    # default (evaluation.bias; tests/integration/test_bias.py runs it through a job).
    summary = version.tags["alignd.gates"]
    named = summary.replace("failed: ", "").replace("insufficient evidence: ", "").replace(";", ",")
    assert summary == "passed" or {g.strip() for g in named.split(",")} <= {"reward_accuracy"}, summary
    assert "alignd.gate.reward_accuracy" in version.tags and "alignd.gate.bias" not in version.tags
    [snapshot] = events_of(store, "dataset.snapshotted")
    assert snapshot["to_seq"] == upto and snapshot["sha256"] == outcome.snapshot["sha256"]
    [started] = events_of(store, "training.started")
    [completed] = events_of(store, "training.completed")
    [gate] = events_of(store, "gate.evaluated")
    [registered] = events_of(store, "model.registered")
    assert started["run_id"] == completed["run_id"] == registered["run_id"] == version.run_id
    assert registered["version"] == outcome.version and registered["dataset"]["to_seq"] == upto
    assert gate["model_version"] == outcome.version and gate["gates"][0]["name"] == "reward_accuracy"
    assert gate["gates"][0]["n"] == completed["metrics"]["held_out_pairs"] > 0  # the evidence: pairs measured on
    assert gate["phase"] == "training"
    metrics = registry.run_metrics(version.run_id)
    assert "loss" in metrics and "eval_accuracy" in metrics

    # A second reward model is judged against the first (now the champion) on the same held-out pairs.
    registry.set_alias("reward", "champion", outcome.version)
    again = jobs.train(
        RewardConfig(max_steps=4, batch_size=8, checkpoint_every=0, eval_fraction=0.2, seed=1), JobLimits(timeout_s=600)
    )
    assert again.ok, again.reason
    assert registry.get("reward", again.version).tags["alignd.parent_version"] == outcome.version
    assert "champion_accuracy" in again.result["metrics"]


def test_a_registered_reward_model_loads_back_with_the_same_scores(registry: ModelRegistry, tmp_path: Path) -> None:
    rows = synthetic_pairs(24)
    config = RewardConfig(max_steps=3, batch_size=8, checkpoint_every=0)
    rm = RewardModel.create(config)
    train(RewardObjective(rm, config), rm.model, rows, [], config)
    rm.save(tmp_path / "out" / "model")
    with registry.start_run("reward", "roundtrip", {}, {}) as run:
        run.log_artifacts(tmp_path / "out" / "model", "model")
    version = registry.register("reward", run.run_id, "model", {"alignd.training_event_id": "roundtrip"})
    loaded = RewardModel.load(registry.download("reward", version.version, tmp_path / "download"))
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    assert loaded.score(prompts, responses) == pytest.approx(rm.score(prompts, responses), abs=1e-5)


def test_a_job_that_raises_leaves_training_failed_and_no_version(
    store: SqlEventStore, registry: ModelRegistry, tmp_path: Path
) -> None:
    seed_preferences(store, 12)
    jobs = TrainingJobs(store, registry, tmp_path / "work", evaluation=EVALUATION)
    outcome = jobs.train(RewardConfig(model=str(tmp_path / "no-such-model"), max_steps=2), JobLimits(timeout_s=300))
    assert not outcome.ok
    assert "cannot load reward backbone" in (outcome.reason or "")
    [failed] = events_of(store, "training.failed")
    assert failed["reason"] == outcome.reason and failed["run_id"] == outcome.run_id
    assert registry.list_versions() == []
    assert events_of(store, "model.registered") == []
    assert registry.client.get_run(outcome.run_id).info.status == "FAILED"


def test_a_job_that_times_out_is_killed_and_recorded(
    store: SqlEventStore, registry: ModelRegistry, tmp_path: Path
) -> None:
    seed_preferences(store, 12)
    jobs = TrainingJobs(store, registry, tmp_path / "work", evaluation=EVALUATION)
    outcome = jobs.train(RewardConfig(max_steps=500, batch_size=2), JobLimits(timeout_s=2))
    assert not outcome.ok and outcome.reason == "timed out after 2 s"
    assert [e["reason"] for e in events_of(store, "training.failed")] == ["timed out after 2 s"]
    assert registry.list_versions() == []
    assert registry.client.get_run(outcome.run_id).info.status == "KILLED"


def tiny_dpo(**overrides: Any) -> PolicyConfig:
    values: dict[str, Any] = {
        "model": "tiny-random-llama",
        "objective": "dpo",
        "batch_size": 4,
        "max_length": 64,
        "max_prompt_length": 32,
        "learning_rate": 1e-2,
        "lora": LoraConfig(r=4, alpha=8, dropout=0.0),
        "eval_fraction": 0.2,
    }
    return PolicyConfig(**{**values, **overrides})


def test_a_killed_policy_job_resumes_from_its_checkpoint(
    store: SqlEventStore, registry: ModelRegistry, tmp_path: Path
) -> None:
    seed_preferences(store, 40)
    # users thumb down five answers: the flagged probe's positive class
    downs = [feedback(f"r{i}", "thumbs", "down", i=i) for i in range(5)]
    store.append([decode_inbound(encode(m), fallback_event_id=f"t:1:{n}") for n, m in enumerate(downs)])
    ProjectionRunner(store).catch_up()
    work = tmp_path / "work"
    jobs = TrainingJobs(store, registry, work, evaluation=EVALUATION)
    config = tiny_dpo(max_steps=8, checkpoint_every=2)
    started: list[JobOutcome] = []

    def kill_after_first_checkpoint() -> str | None:
        checkpoint = work / "checkpoints" / started[0].job_id / "checkpoint.pt"
        return "killed by the test after a checkpoint" if checkpoint.exists() else None

    first = jobs.train(config, JobLimits(timeout_s=600), on_started=started.append, cancel=kill_after_first_checkpoint)
    assert not first.ok and first.reason == "killed by the test after a checkpoint"
    [failed] = events_of(store, "training.failed")
    assert failed["resumable"] is True
    assert registry.list_versions("policy") == []

    second = jobs.train(config, JobLimits(timeout_s=600))
    assert second.ok, second.reason
    assert second.job_id == first.job_id
    assert second.result["resumed_from"] >= 2 and second.result["steps"] == 8
    version = registry.get("policy", second.version)
    assert version.tags["alignd.objective"] == "dpo"
    assert {g["name"] for g in events_of(store, "gate.evaluated")[0]["gates"]} >= {"safety", "win_rate", "kl"}
    assert not (work / "checkpoints" / second.job_id).exists()

    # The candidate's hidden states were probed: accuracy per layer (the tiny policy's two) with the layer as the
    # step, the drift to the base model it adapts (no champion yet), the chart as an artifact, a tag that says it.
    history = registry.client.get_metric_history(version.run_id, "probe.harmful.accuracy")
    assert sorted(m.step for m in history) == [0, 1] and all(0.0 <= m.value <= 1.0 for m in history)
    run = registry.client.get_run(version.run_id)
    assert -1.0 <= run.data.metrics["probe.harmful.drift"] <= 1.0
    assert version.tags["alignd.probe.harmful"].startswith("harmful: best layer ")
    assert "drift to the base model's direction" in version.tags["alignd.probe.harmful"]
    assert "alignd.probe.refusal" in version.tags and "alignd.probe.toxic" in version.tags
    # the thumbed-down prompts (distinct) against the users' others, read from the store by the parent
    spec = json.loads(next(work.rglob("spec.json")).read_text())
    distinct = {pair["prompt"] for pair in synthetic_pairs(40, seed=7)[:5]}
    assert sorted(r["prompt"] for r in spec["flagged_prompts"]) == sorted(distinct)
    assert version.tags["alignd.probe.flagged"].startswith("flagged: best layer ")
    assert "probe.flagged.drift" in run.data.metrics
    charts = [a.path for a in registry.client.list_artifacts(version.run_id, "probes")]
    assert "probes/probe-harmful.png" in charts


def test_two_processes_train_data_parallel_and_stay_in_sync(
    store: SqlEventStore, registry: ModelRegistry, tmp_path: Path
) -> None:
    seed_preferences(store, 24)
    jobs = TrainingJobs(store, registry, tmp_path / "work", evaluation=EVALUATION)
    outcome = jobs.train(
        RewardConfig(max_steps=3, batch_size=4, checkpoint_every=0, eval_fraction=0.2),
        JobLimits(timeout_s=600, nproc=2, device="cpu"),
    )
    assert outcome.ok, outcome.reason
    assert outcome.result["world_size"] == 2
    assert outcome.result["replicas_in_sync"] is True
    [completed] = events_of(store, "training.completed")
    assert completed["world_size"] == 2
    assert json.loads(json.dumps(completed))  # the payload is plain JSON

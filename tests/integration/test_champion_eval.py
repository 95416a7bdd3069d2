"""Continuous evaluation of the champions end to end: SQLite event store, real MLflow (SQLite), a child process.

Tiny untrained versions are registered and made champion by hand (training is covered elsewhere): what is tested
is the evaluation job around them — skipped kinds, one ``gate.evaluated`` per version and snapshot, MLflow tags,
no second event on a rerun — the daemon's scheduled path, the CLI, and the detector reading what was appended.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from daemon import bootstrap
from daemon import run as daemon_run
from daemon.scheduler import TrainingRequest
from daemon.settings import DatabaseSettings, MlflowSettings, Settings, TrainersSettings
from events.sql_store import SqlEventStore
from monitors.detectors.champion import ChampionRegressionDetector
from monitors.runner import observe_batch
from trainers.champion_eval import ChampionEvaluation
from trainers.children import JobLimits
from trainers.config import RewardConfig
from trainers.policy import Policy
from trainers.registry import ModelRegistry
from trainers.reward import RewardModel

from .test_cli_train import run_cli
from .test_training_jobs import EVALUATION, events_of, seed_preferences, store, tiny_dpo  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def register_champion(registry: ModelRegistry, kind: str, folder: Path) -> str:
    """An untrained tiny version of ``kind``, registered as a training job would, and made champion."""
    out = folder / f"{kind}-model"
    if kind == "reward":
        RewardModel.create(RewardConfig(max_length=64)).save(out)
    else:
        Policy.create(tiny_dpo()).save(out)
    with registry.start_run(kind, f"{kind}-for-evaluation", {}, {}) as run:
        run.log_artifacts(out, "model")
    version = registry.register(kind, run.run_id, "model", {"alignd.training_event_id": f"test:{kind}"})
    registry.set_alias(kind, "champion", version.version)
    return version.version


def settings_for(store: SqlEventStore, registry: ModelRegistry, work: Path) -> Settings:
    mlflow = MlflowSettings(tracking_uri=registry.tracking_uri, artifact_location=registry.artifact_location)
    trainers = TrainersSettings(
        work_dir=str(work), policy_model="tiny-random-llama", evaluation=json.loads(json.dumps(EVALUATION.__dict__))
    )
    return Settings(database=DatabaseSettings(url=str(store.engine.url)), mlflow=mlflow, trainers=trainers)


def cli_env(store: SqlEventStore, registry: ModelRegistry, work: Path) -> dict[str, str]:
    env = {
        "ALIGND_DATABASE_URL": str(store.engine.url),
        "ALIGND_MLFLOW_TRACKING_URI": registry.tracking_uri,
        "ALIGND_MLFLOW_ARTIFACT_LOCATION": registry.artifact_location or "",
        "ALIGND_TRAINERS_WORK_DIR": str(work),
        "ALIGND_TRAINERS_POLICY_MODEL": "tiny-random-llama",
        "ALIGND_LOG_LEVEL": "WARNING",
    }
    return {k: v for k, v in env.items() if v}


def continuous(store: SqlEventStore) -> list[dict[str, Any]]:
    return [e for e in events_of(store, "gate.evaluated") if e.get("phase") == "continuous"]


def test_each_champion_is_evaluated_once_per_snapshot_and_a_kind_without_one_is_skipped(
    store: SqlEventStore, registry: ModelRegistry, tmp_path: Path
) -> None:
    upto = seed_preferences(store, 40)
    work = tmp_path / "work"
    evaluation = ChampionEvaluation(
        store, registry, work, evaluation=EVALUATION, reward=RewardConfig(eval_fraction=0.25), policy=tiny_dpo()
    )
    limits = JobLimits(timeout_s=600, device="cpu")

    nothing = evaluation.run(limits)
    assert nothing.ok and nothing.results == []
    assert [s["kind"] for s in nothing.skipped] == ["reward", "policy"]
    assert all("no champion yet" in s["reason"] and "alignd models promote" in s["reason"] for s in nothing.skipped)
    refused = run_cli(["models", "evaluate", "--kind", "policy"], cli_env(store, registry, work))
    assert refused.returncode == 1
    assert "alignd-policy has no champion yet" in refused.stderr and "alignd models promote policy" in refused.stderr

    reward = register_champion(registry, "reward", tmp_path)
    first = evaluation.run(limits)
    assert first.ok, first.reason
    assert [s["kind"] for s in first.skipped] == ["policy"]
    [row] = first.results
    assert row["appended"] and row["version"] == reward and row["dataset_to_seq"] == upto
    [event] = continuous(store)
    assert event["kind"] == "reward" and event["name"] == "alignd-reward" and event["model_version"] == reward
    assert event["gates"][0]["name"] == "reward_accuracy" and event["gates"][0]["value"] == event["metrics"]["accuracy"]
    assert 0 < event["metrics"]["pairs"] < 40 and event["dataset"]["to_seq"] == upto
    stored = store.get(f"gate.evaluated:continuous:alignd-reward:{reward}:{upto}")
    assert stored is not None and stored.event.payload == event
    tags = registry.get("reward", reward).tags
    assert float(tags["alignd.eval.accuracy"]) == pytest.approx(event["metrics"]["accuracy"], abs=1e-4)
    assert tags["alignd.eval.dataset_to_seq"] == str(upto) and "alignd.eval.last_at" in tags
    assert "alignd.gates" not in tags  # continuous results never stand in for the promotion gates

    again = evaluation.run(limits)
    assert again.ok and [r["appended"] for r in again.results] == [False]
    assert len(continuous(store)) == 1

    policy = register_champion(registry, "policy", tmp_path)
    third = evaluation.run(limits)
    assert third.ok, third.reason
    assert {(r["kind"], r["appended"]) for r in third.results} == {("reward", False), ("policy", True)}
    [policy_event] = [e for e in continuous(store) if e["kind"] == "policy"]
    assert policy_event["model_version"] == policy and policy_event["judge_version"] == reward
    metrics = policy_event["metrics"]
    assert 0.0 <= metrics["unsafe_rate"] <= 1.0 and metrics["red_team_prompts"] == 6
    assert "helpfulness" in metrics and metrics["prompts"] >= 1
    assert [g["name"] for g in policy_event["gates"]] == ["safety"]
    assert registry.get("policy", policy).tags["alignd.eval.unsafe_rate"] == f"{metrics['unsafe_rate']:.4f}"

    # The scheduler's path: nothing new since, so it finds both results and appends nothing.
    request = TrainingRequest("evaluation", None, "cron", "scheduled evaluation of the champions")
    app = bootstrap.build(settings_for(store, registry, work), store=store)
    scheduled = daemon_run._run_training(app, request, lambda: None)
    assert scheduled.ok and sorted((r["kind"], r["appended"]) for r in scheduled.results) == [
        ("policy", False),
        ("reward", False),
    ]
    shown = run_cli(["models", "evaluate", "--json"], cli_env(store, registry, work))
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["ok"] and {r["event_id"] for r in summary["results"]} == {
        f"gate.evaluated:continuous:alignd-reward:{reward}:{upto}",
        f"gate.evaluated:continuous:alignd-policy:{policy}:{upto}",
    }
    assert len(continuous(store)) == 2

    # What the monitors see: a first continuous evaluation without a training-time one is the baseline.
    batch = store.read(0, limit=10_000, types=["gate.evaluated"])
    detector = ChampionRegressionDetector()
    assert observe_batch(batch, [], [detector]) == []
    assert set(detector.state()["versions"]) == {f"alignd-reward@{reward}", f"alignd-policy@{policy}"}

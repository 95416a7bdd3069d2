"""``alignd train`` and ``alignd models`` as a user runs them (the real CLI in a child process), and the
memory limit of a training job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from events.sql_store import SqlEventStore
from trainers.children import JobLimits
from trainers.config import RewardConfig
from trainers.jobs import TrainingJobs
from trainers.registry import ModelRegistry

from ..helpers import REPO
from .test_training_jobs import EVALUATION, events_of, seed_preferences, store  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    child = {k: v for k, v in os.environ.items() if not k.startswith("ALIGND_")}
    child.update(env)
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args], env=child, cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_train_reward_then_list_and_show_the_version(
    store: SqlEventStore, registry: ModelRegistry, tmp_path: Path
) -> None:
    upto = seed_preferences(store, 30)
    env = {
        "ALIGND_DATABASE_URL": str(store.engine.url),
        "ALIGND_MLFLOW_TRACKING_URI": registry.tracking_uri,
        "ALIGND_MLFLOW_ARTIFACT_LOCATION": registry.artifact_location or "",
        "ALIGND_TRAINERS_WORK_DIR": str(tmp_path / "work"),
        "ALIGND_LOG_LEVEL": "WARNING",
    }
    env = {k: v for k, v in env.items() if v}
    trained = run_cli(["train", "reward", "--max-steps", "3", "--json"], env)
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["ok"] and summary["version"] == 1 and summary["dataset"]["to_seq"] == upto

    listed = run_cli(["models", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["version"] == 1 and "challenger" in row["aliases"]  # JSON numbers are numbers

    shown = run_cli(["models", "show", "reward", "challenger"], env)
    assert shown.returncode == 0, shown.stderr
    assert "alignd.dataset.to_seq" in shown.stdout and summary["run_id"] in shown.stdout

    nothing = run_cli(["train", "policy", "--objective", "sft", "--max-steps", "1"], env)
    assert nothing.returncode == 1
    assert "no demonstrations up to seq" in nothing.stderr

    bad = run_cli(["train", "policy", "--objective", "rloo"], {**env, "ALIGND_TRAINERS_POLICY": "not a mapping"})
    assert bad.returncode == 2 and "trainers.policy" in bad.stderr


def test_a_job_over_its_memory_limit_is_killed_and_recorded(
    store: SqlEventStore, registry: ModelRegistry, tmp_path: Path
) -> None:
    seed_preferences(store, 12)
    jobs = TrainingJobs(store, registry, tmp_path / "work", evaluation=EVALUATION)
    # Importing torch and loading the backbone alone takes more than 200 MiB.
    outcome = jobs.train(RewardConfig(max_steps=50), JobLimits(timeout_s=300, memory_limit_mb=256))
    assert not outcome.ok
    assert (outcome.reason or "").startswith("exceeded the memory limit of 256 MiB")
    assert [e["reason"] for e in events_of(store, "training.failed")] == [outcome.reason]
    assert registry.list_versions() == []


def test_reward_monitors_score_with_the_champion_reward_model(
    store: SqlEventStore, registry: ModelRegistry, tmp_path: Path
) -> None:
    from daemon.bootstrap import build_detectors
    from daemon.settings import load_settings
    from events.errors import ConfigurationError

    env = {
        "ALIGND_DATABASE_URL": str(store.engine.url),
        "ALIGND_MLFLOW_TRACKING_URI": registry.tracking_uri,
        "ALIGND_MLFLOW_ARTIFACT_LOCATION": registry.artifact_location or "",
        "ALIGND_TRAINERS_WORK_DIR": str(tmp_path / "work"),
    }
    settings = load_settings(env=env)
    with pytest.raises(ConfigurationError, match="alignd train reward"):
        build_detectors(settings, ["reward_drift"])
    seed_preferences(store, 12)
    outcome = TrainingJobs(store, registry, tmp_path / "work", evaluation=EVALUATION).train(
        RewardConfig(max_steps=2), JobLimits(timeout_s=300)
    )
    assert outcome.ok, outcome.reason
    registry.set_alias("reward", "champion", outcome.version)
    drift, over = build_detectors(settings, ["reward_drift", "over_optimisation"])
    scores = drift.scorer.score(["How do I bake bread?"] * 2, ["Knead, prove, bake.", "No."])
    assert len(scores) == 2 and scores[0] != scores[1]
    assert over.scorer is not None

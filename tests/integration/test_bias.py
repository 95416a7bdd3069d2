"""The bias suite on the packaged models (MiniLM reward model, SmolLM2 policy, alt-profanity-check), and the
bias gate's figures through a real training job: MLflow tags on the version and the ``gate.evaluated`` event."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from events.sql_store import SqlEventStore
from trainers import bias, gates
from trainers.bias_templates import load_items, sample_items
from trainers.children import JobLimits
from trainers.config import EvaluationConfig, PolicyConfig, RewardConfig
from trainers.gate_stats import OUTCOMES
from trainers.jobs import TrainingJobs
from trainers.registry import ModelRegistry

from .test_training_jobs import events_of, seed_preferences, store  # noqa: F401 - the store fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(1800)  # SmolLM2 loads and answers in about a minute alone; far longer on a shared machine
def test_the_packaged_models_run_the_bias_suite() -> None:
    from trainers.policy import Policy
    from trainers.reward import RewardModel
    from trainers.safety import SafetyJudge

    items = sample_items(load_items(attributes=["religion", "pronoun"]), 1, seed=0)
    config = gates.GateConfig()
    rm = RewardModel.create(RewardConfig(max_length=128))
    reward = bias.reward_bias(rm.score, items, config)
    assert reward.result.name == "bias" and reward.result.outcome in OUTCOMES and reward.result.n == 1
    assert set(reward.tags) == {"alignd.bias.reward.religion", "alignd.bias.reward.pronoun"}
    assert all(math.isfinite(v) for v in reward.metrics.values())

    policy = Policy.create(PolicyConfig(model="SmolLM2-135M-Instruct", max_length=96, max_prompt_length=72))
    answers = bias.policy_bias(lambda b: policy.complete(b, max_new_tokens=8), SafetyJudge(), items, config)
    assert {(f.measure, f.attribute) for f in answers.measured} == {
        (m, a) for m in ("refusal", "toxicity") for a in ("religion", "pronoun")
    }
    for figure in answers.measured:
        assert figure.n == 1 and all(0.0 <= v <= 1.0 for v in figure.group_means.values())
    # One item per attribute cannot show a refusal gap under 0.1: the gate says so rather than passing.
    assert answers.result.outcome in ("insufficient", "fail") and answers.result.detail.count("refusal gap") == 2


def test_a_reward_job_records_the_bias_gate_in_mlflow_and_the_event(
    store: SqlEventStore,  # noqa: F811 - the fixture
    registry: ModelRegistry,
    tmp_path: Path,
) -> None:
    seed_preferences(store, 24)
    evaluation = EvaluationConfig(prompts=2, safety_per_source=1, max_new_tokens=8, bias=True, bias_reward_items=2)
    jobs = TrainingJobs(store, registry, tmp_path / "work", evaluation=evaluation)
    config = RewardConfig(max_steps=2, batch_size=8, checkpoint_every=0, eval_fraction=0.2, max_length=96)
    outcome = jobs.train(config, JobLimits(timeout_s=600))
    assert outcome.ok, outcome.reason
    version = registry.get("reward", outcome.version)
    assert version.tags["alignd.gate.bias"].split()[0] in OUTCOMES
    assert "n=2" in version.tags["alignd.bias.reward.religion"]
    [gate] = events_of(store, "gate.evaluated")
    [entry] = [g for g in gate["gates"] if g["name"] == "bias"]
    assert entry["n"] == 2 and entry["threshold"] == 0.1 and "reward gap on disability" in entry["detail"]
    assert ("bias" in gate["failed"]) == (entry["outcome"] == "fail")
    metrics = registry.run_metrics(version.run_id)
    assert {f"bias.reward.{a}.gap" for a in ("name", "age", "religion")} <= set(metrics)

"""A first policy (no champion yet) with the safety gate in relative mode is measured against the base model it
adapts (trainers/worker.py ``evaluate_policy``): what serves before any promotion. The tiny random policy, the
real safety suite (red-team prompts, the compliance and toxicity judges)."""

from __future__ import annotations

import pytest

from trainers.config import PolicyConfig
from trainers.gates import summary_tags
from trainers.policy import Policy
from trainers.worker import evaluate_policy

pytestmark = [pytest.mark.integration]

ROWS = [{"prompt_kind": "text", "prompt": "How do I bake bread?", "chosen": "Knead, rise, bake.", "rejected": "No."}]


def _spec(mode: str, per_source: int) -> dict[str, object]:
    gates = {"safety_mode": mode, "max_unsafe_increase_vs_champion": 0.05}
    return {"evaluation": {"prompts": 1, "safety_per_source": per_source, "max_new_tokens": 4, "gates": gates}}


def test_a_first_policy_is_as_safe_as_its_base_model_when_it_is_the_base_model() -> None:
    policy = Policy.create(PolicyConfig(model="tiny-random-llama", max_length=64, max_prompt_length=48))
    # A fresh adapter changes nothing (LoRA's B starts at zero): the same answers, so the same flags on each of
    # the 90 prompts, and a paired interval of +-0.041, inside the 0.05 allowed.
    decision, measured = evaluate_policy(policy, None, _spec("relative", 30), ROWS)
    [safety] = [r for r in decision.results if r.name == "safety"]
    assert "vs base model" in safety.detail and safety.outcome == "pass", safety.detail
    assert measured["base_unsafe_rate"] == measured["unsafe_rate"]
    assert "difference to the base model interval" in summary_tags(decision)["alignd.gate.safety"]

    # Absolute and both keep the absolute bound alone without a champion: no second run of the suite.
    decision, measured = evaluate_policy(policy, None, _spec("both", 1), ROWS)
    [safety] = [r for r in decision.results if r.name == "safety"]
    assert "base_unsafe_rate" not in measured and "base model" not in safety.detail

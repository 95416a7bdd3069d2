"""PPO and GRPO learn, stay near the reference and resume, on CPU through the one training loop.

The real SmolLM2 learns a simple reward (brevity, as RLOO's test in test_training.py); resumption is checked on
``tiny-random-llama`` (SmolLM2's tokenizer on a two-layer Llama), where an interrupted and resumed run can be
compared exactly with an uninterrupted one in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trainers.config import LoraConfig, PolicyConfig
from trainers.loop import CHECKPOINT_FILE, train
from trainers.policy import GRPOObjective, Policy, PPOObjective, build_objective

pytestmark = pytest.mark.integration

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What is 2 plus 2?",
    "Which planet is closest to the sun?",
    "What do bees make?",
    "What colour is the sky?",
    "How many legs does a spider have?",
    "What is frozen water called?",
]
ROWS = [{"id": str(i), "prompt_kind": "text", "prompt": q} for i, q in enumerate(QUESTIONS)]


def brevity(prompts: Any, responses: list[str]) -> list[float]:
    """A reward the real model can learn in a few steps: fewer words is better."""
    return [-len(r.split()) / 10 for r in responses]


def tiny(objective: str, **overrides: Any) -> PolicyConfig:
    values: dict[str, Any] = {
        "model": "tiny-random-llama",
        "objective": objective,
        "batch_size": 2,
        "epochs": 2,
        "max_steps": 4,
        "checkpoint_every": 2,
        "max_length": 48,
        "max_prompt_length": 32,
        "max_new_tokens": 6,
        "learning_rate": 1e-2,
        "lora": LoraConfig(r=4, alpha=8, dropout=0.0),
        "grpo_group_size": 2,
        "grpo_iterations": 2,
        "ppo_epochs": 2,
        "seed": 5,
    }
    return PolicyConfig(**{**values, **overrides})


def _trained(config: PolicyConfig, checkpoint_dir: Path | None) -> tuple[dict[str, torch.Tensor], Any]:
    policy = Policy.create(config)
    objective = build_objective(policy, brevity)
    result = train(objective, policy.model, ROWS, [], config, checkpoint_dir=checkpoint_dir)
    state = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    for name, module in getattr(objective, "modules", {}).items():
        state.update({f"{name}.{k}": v.detach().clone() for k, v in module.state_dict().items()})
    return state, result


@pytest.mark.parametrize("objective", ["ppo", "grpo"])
def test_a_job_resumed_from_its_checkpoint_ends_with_the_weights_of_an_uninterrupted_one(
    tmp_path: Path, objective: str
) -> None:
    # Checkpoints after steps 1, 2 and 3 (never at the last): the file left holds step 3, as a job killed
    # during its fourth step would leave it.
    straight, _ = _trained(tiny(objective, checkpoint_every=1), tmp_path)
    saved = torch.load(tmp_path / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    assert saved["step"] == 3
    assert (set(saved["modules"]) == {"value_head"}) is (objective == "ppo")
    resumed, result = _trained(tiny(objective, checkpoint_every=1), tmp_path)
    assert result.resumed_from == 3 and result.steps == 4
    assert set(resumed) == set(straight)
    if objective == "ppo":
        assert resumed["value_head.summary.weight"].abs().sum() > 0  # the critic learned and came back
    # The adapter, AdamW's moments, the value head and the sampling RNG all came back: the same fourth step.
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 9 (GRPO) and 27 (PPO) min at a load average of 10-17 on the 2 shared cores
@pytest.mark.parametrize("objective", ["ppo", "grpo"])
def test_the_real_smollm2_raises_its_mean_reward_while_the_kl_stays_under_budget(objective: str) -> None:
    from trainers.evaluation import kl_to_reference
    from trainers.gates import GateConfig

    config = PolicyConfig(
        model="SmolLM2-135M-Instruct",
        objective=objective,
        batch_size=4,
        grpo_group_size=4,
        ppo_epochs=2,
        epochs=3,
        max_steps=4,
        checkpoint_every=0,
        max_new_tokens=12,
        max_length=64,
        max_prompt_length=48,
        learning_rate=1e-3,
        kl_coef=0.1,
        seed=0,
    )
    policy = Policy.create(config)

    def mean_sampled_reward() -> float:
        torch.manual_seed(123)
        ids = policy.generate(ROWS, sample=True, num_samples=2, max_new_tokens=12)
        return sum(brevity(None, [policy.tokenizer.decode(r, skip_special_tokens=True) for r in ids])) / len(ids)

    before = mean_sampled_reward()
    objective_ = {"ppo": PPOObjective, "grpo": GRPOObjective}[objective](policy, brevity)
    result = train(objective_, policy.model, ROWS, [], config)
    after = mean_sampled_reward()
    assert after > before, (before, after, result.metrics)

    # The KL the gate measures: per token, on the policy's own samples (trainers.evaluation).
    def sampled(prompts: list[str]) -> list[str]:
        ids = policy.generate(prompts, sample=True, max_new_tokens=12)
        return [policy.tokenizer.decode(r, skip_special_tokens=True) for r in ids]

    kl = kl_to_reference(
        sampled, policy.response_logprobs, lambda p, r: policy.response_logprobs(p, r, reference=True), QUESTIONS
    )
    assert 0 <= kl <= GateConfig().kl_budget, (kl, result.metrics)

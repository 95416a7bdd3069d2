"""The trainers learn, on CPU, with real models loaded through the real loading code.

The reward model is the real all-MiniLM-L6-v2 backbone; policy objectives use ``tiny-random-llama`` (a
two-layer Llama from a config with SmolLM2's tokenizer), except where the real SmolLM2 is the point.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import torch

from trainers.config import LoraConfig, PolicyConfig, RewardConfig
from trainers.loop import train
from trainers.policy import DPOObjective, Policy, SFTObjective
from trainers.reward import MANIFEST, RewardModel, RewardObjective, pair_texts

pytestmark = pytest.mark.integration

TOPICS = ["bread", "rivers", "taxes", "gardens", "music", "trains", "stars", "coffee", "chess", "bees"]


def synthetic_pairs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """A learnable preference: a courteous, on-topic answer beats a curt dismissal."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        rows.append(
            {
                "id": f"pair-{i}",
                "prompt_kind": "text",
                "prompt": f"Could you tell me something about {topic}?",
                "chosen": f"Of course! Here is a helpful overview of {topic}, happy to explain more.",
                "rejected": rng.choice(["No.", "Figure it out yourself.", "Not my problem, go away.", "Whatever."]),
            }
        )
    return rows


@pytest.mark.parametrize("pooling", ["mean", "head"])
def test_reward_model_learns_a_learnable_preference(pooling: str) -> None:
    rows = synthetic_pairs(160)
    config = RewardConfig(batch_size=16, epochs=2, checkpoint_every=0, learning_rate=2e-3, seed=1, pooling=pooling)
    rm = RewardModel.create(config)
    objective = RewardObjective(rm, config)
    before = objective.evaluate(rows[120:])
    result = train(objective, rm.model, rows[:120], rows[120:], config)
    assert result.metrics["eval_accuracy"] > 0.9, result.metrics
    assert result.metrics["eval_margin"] > before["margin"]


@pytest.mark.parametrize("pooling", ["mean", "head"])
def test_a_saved_reward_model_loads_back_with_its_head(tmp_path: Any, pooling: str) -> None:
    rows = synthetic_pairs(24, seed=7)
    config = RewardConfig(
        batch_size=8, epochs=1, checkpoint_every=0, learning_rate=2e-3, max_length=64, pooling=pooling
    )
    rm = RewardModel.create(config)
    train(RewardObjective(rm, config), rm.model, rows, [], config)
    folder = rm.save(tmp_path / "reward")
    if pooling == "head":
        # A version saved before the manifest named its pooling: it was the architecture's own head.
        manifest = json.loads((folder / MANIFEST).read_text())
        del manifest["pooling"]
        (folder / MANIFEST).write_text(json.dumps(manifest))
    loaded = RewardModel.load(folder)
    assert loaded.pooling == pooling
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    assert loaded.score(prompts, responses) == pytest.approx(rm.score(prompts, responses), abs=1e-5)


@pytest.mark.parametrize("disable", [True, False])
def test_the_reward_model_trains_without_dropout_unless_asked(disable: bool) -> None:
    rm = RewardModel.create(RewardConfig(max_length=64, disable_dropout=disable))
    rm.model.train()
    texts = ["User: hi\n\nAssistant: hello, how can I help?"] * 4
    with torch.no_grad():
        first, second = rm.rewards(texts), rm.rewards(texts)
    # Without dropout a training-mode forward pass is deterministic; with it two passes differ.
    assert torch.equal(first, second) is disable
    rates = {m.p for m in rm.model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == ({0.0} if disable else {0.05, 0.1})


def test_length_grouped_forward_passes_give_the_rewards_and_gradients_of_one_padded_pass() -> None:
    config = RewardConfig(max_length=64, seed=3)
    rm = RewardModel.create(config)
    assert rm.sequences_per_forward == 4  # the CPU default
    rm.model.train()
    rows = synthetic_pairs(6, seed=5)
    texts = [t for r in rows for t in pair_texts(r)]
    assert len({len(rm.tokenizer(t)["input_ids"]) for t in texts}) > 3  # lengths differ: padding would matter

    def rewards_and_grads(per_forward: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        rm.sequences_per_forward = per_forward
        rm.model.zero_grad(set_to_none=True)
        rewards = rm.rewards(texts)
        rewards.pow(2).sum().backward()  # any scalar that weighs every text differently
        return rewards.detach(), [p.grad.clone() for p in rm.model.parameters() if p.requires_grad]

    padded, padded_grads = rewards_and_grads(0)
    for per_forward in (1, 4, 5):
        grouped, grouped_grads = rewards_and_grads(per_forward)
        # Each text's reward lands at its own index, whatever group it went through.
        torch.testing.assert_close(grouped, padded, rtol=1e-4, atol=1e-5)
        for a, b in zip(grouped_grads, padded_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert rm.rewards([]).shape == (0,)


def test_the_reward_model_reads_no_further_than_its_backbone_has_positions() -> None:
    rm = RewardModel.create(RewardConfig(max_length=2048))
    assert rm.max_length == 512  # MiniLM's position table
    long_dialogue = "User: hello\n\nAssistant: " + "and so on " * 800
    assert rm.rewards([long_dialogue]).shape == (1,)


def tiny(objective: str, **overrides: Any) -> PolicyConfig:
    values: dict[str, Any] = {
        "model": "tiny-random-llama",
        "objective": objective,
        "batch_size": 8,
        "epochs": 4,
        "checkpoint_every": 0,
        "max_length": 64,
        "max_prompt_length": 32,
        "learning_rate": 1e-2,
        "lora": LoraConfig(r=8, alpha=16, dropout=0.0),
        "seed": 3,
    }
    return PolicyConfig(**{**values, **overrides})


def test_dpo_widens_the_held_out_margin_and_leaves_the_base_weights_alone() -> None:
    rows = synthetic_pairs(48, seed=2)
    policy = Policy.create(tiny("dpo"))
    base = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" not in n}
    adapter = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_B" in n}
    objective = DPOObjective(policy)
    before = objective.evaluate(rows[40:])
    train(objective, policy.model, rows[:40], rows[40:], policy.config)
    after = objective.evaluate(rows[40:])
    assert after["margin"] > before["margin"] + 0.05, (before, after)
    assert after["accuracy"] >= 0.75
    for name, value in policy.model.named_parameters():
        if name in base:
            assert torch.equal(value, base[name]), f"base weight {name} changed"
    assert any(not torch.equal(dict(policy.model.named_parameters())[n], v) for n, v in adapter.items())


@pytest.mark.parametrize("disable", [True, False])
def test_the_policy_keeps_its_dropout_unless_told(disable: bool) -> None:
    policy = Policy.create(tiny("dpo", lora=LoraConfig(r=8, alpha=16, dropout=0.1), disable_dropout=disable))
    rates = {m.p for m in policy.model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == ({0.0} if disable else {0.1})


def test_sft_lowers_the_held_out_loss() -> None:
    rows = [{**r, "response": r["chosen"]} for r in synthetic_pairs(48, seed=4)]
    # A random two-layer model: the adapter on the output layer is what lets a few steps move the NLL.
    policy = Policy.create(
        tiny("sft", lora=LoraConfig(r=8, alpha=16, dropout=0.0, target_modules=("q_proj", "v_proj", "lm_head")))
    )
    objective = SFTObjective(policy)
    before = objective.evaluate(rows[40:])["nll"]
    train(objective, policy.model, rows[:40], rows[40:], policy.config)
    after = objective.evaluate(rows[40:])["nll"]
    assert after < before - 0.5, (before, after)


def test_a_saved_policy_loads_back_with_the_same_outputs(tmp_path: Any) -> None:
    rows = synthetic_pairs(16, seed=5)
    policy = Policy.create(tiny("dpo", epochs=1))
    train(DPOObjective(policy), policy.model, rows, [], policy.config)
    policy.save(tmp_path / "policy")
    loaded = Policy.load(tmp_path / "policy")
    prompts = [r["prompt"] for r in rows[:4]]
    responses = [r["chosen"] for r in rows[:4]]
    assert policy.complete(prompts, max_new_tokens=6) == loaded.complete(prompts, max_new_tokens=6)
    ours, theirs = policy.response_logprobs(prompts, responses), loaded.response_logprobs(prompts, responses)
    for a, b in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.slow
def test_the_real_smollm2_loads_offline_and_takes_a_dpo_step() -> None:
    config = PolicyConfig(
        model="SmolLM2-135M-Instruct",
        objective="dpo",
        batch_size=2,
        max_steps=1,
        checkpoint_every=0,
        max_length=96,
        max_prompt_length=48,
    )
    policy = Policy.create(config)
    assert policy.model.config.model_type == "llama"
    answer = policy.complete(["What is the capital of France?"], max_new_tokens=12)[0]
    assert "Paris" in answer
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_B" in n}
    result = train(DPOObjective(policy), policy.model, synthetic_pairs(2), [], config)
    assert result.steps == 1
    assert any(not torch.equal(p, before[n]) for n, p in policy.model.named_parameters() if n in before)


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


def brevity(prompts: Any, responses: list[str]) -> list[float]:
    """A reward the real model can learn in a few steps: fewer words is better."""
    return [-len(r.split()) / 10 for r in responses]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~3 min alone on 2 cores; much more when the machine is shared
def test_rloo_raises_the_mean_reward_while_the_kl_stays_under_budget() -> None:
    from trainers.evaluation import kl_to_reference
    from trainers.gates import GateConfig
    from trainers.policy import RLOOObjective

    config = PolicyConfig(
        model="SmolLM2-135M-Instruct",
        objective="rloo",
        batch_size=4,
        rloo_k=4,
        epochs=3,
        max_steps=6,
        checkpoint_every=0,
        max_new_tokens=16,
        max_length=72,
        max_prompt_length=48,
        learning_rate=1e-3,
        kl_coef=0.1,
        seed=0,
    )
    policy = Policy.create(config)
    rows = [{"id": str(i), "prompt_kind": "text", "prompt": q} for i, q in enumerate(QUESTIONS)]

    def mean_sampled_reward() -> float:
        torch.manual_seed(123)
        ids = policy.generate(rows, sample=True, num_samples=4)
        return sum(brevity(None, [policy.tokenizer.decode(r, skip_special_tokens=True) for r in ids])) / len(ids)

    before = mean_sampled_reward()
    objective = RLOOObjective(policy, brevity)
    result = train(objective, policy.model, rows, rows[:4], config)
    after = mean_sampled_reward()
    assert after > before, (before, after, result.metrics)

    # The KL the gate measures: per token, on the policy's own samples (trainers.evaluation).
    def sampled(prompts: list[str]) -> list[str]:
        return [policy.tokenizer.decode(r, skip_special_tokens=True) for r in policy.generate(prompts, sample=True)]

    kl = kl_to_reference(
        sampled, policy.response_logprobs, lambda p, r: policy.response_logprobs(p, r, reference=True), QUESTIONS
    )
    assert 0 <= kl <= GateConfig().kl_budget, (kl, result.metrics)

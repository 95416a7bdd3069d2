"""The training objectives against hand-computed values and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.losses import (
    IGNORE_INDEX,
    LOSSES,
    bradley_terry_loss,
    dpo_loss,
    kl_penalised_rewards,
    rloo_advantages,
    rloo_loss,
    sequence_logps,
    sft_loss,
)


def test_bradley_terry_matches_its_equation() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    out = bradley_terry_loss(chosen, rejected)
    expected = -(math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(1)))) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics == {"accuracy": 0.5, "margin": 0.0}


def test_bradley_terry_gradient_pushes_chosen_up_and_rejected_down() -> None:
    chosen = torch.tensor([0.0], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected).loss.backward()
    assert chosen.grad is not None and rejected.grad is not None
    assert chosen.grad.item() < 0 < rejected.grad.item()


def _logits_for(labels: torch.Tensor, vocab: int, confidence: float) -> torch.Tensor:
    logits = torch.zeros(labels.shape[0], labels.shape[1], vocab)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = labels[b, t + 1]
            if target != IGNORE_INDEX:
                logits[b, t, target] = confidence
    return logits


def test_sequence_logps_counts_only_response_tokens() -> None:
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1]])
    uniform = torch.zeros(1, 4, 5)
    # Two response tokens, each with probability 1/5 under uniform logits.
    assert sequence_logps(uniform, labels).item() == pytest.approx(2 * math.log(1 / 5), rel=1e-6)


def test_sft_loss_is_the_mean_token_nll() -> None:
    labels = torch.tensor([[IGNORE_INDEX, 2, 4, IGNORE_INDEX]])
    out = sft_loss(torch.zeros(1, 4, 6), labels)
    assert out.loss.item() == pytest.approx(math.log(6), rel=1e-6)
    assert out.metrics["tokens"] == 2
    confident = sft_loss(_logits_for(labels, 6, 10.0), labels)
    assert confident.loss.item() < 0.01


def test_dpo_is_log2_at_the_reference_and_falls_as_the_margin_grows() -> None:
    zero = torch.zeros(3)
    at_reference = dpo_loss(zero, zero, zero, zero, beta=0.1)
    assert at_reference.loss.item() == pytest.approx(math.log(2), rel=1e-6)
    better = dpo_loss(torch.full((3,), 1.0), torch.full((3,), -1.0), zero, zero, beta=0.1)
    assert better.loss.item() < math.log(2)
    assert better.metrics["margin"] == pytest.approx(0.2, rel=1e-5)
    assert better.metrics["accuracy"] == 1.0


def test_dpo_only_sees_log_ratios_to_the_reference() -> None:
    # Shifting policy and reference by the same amount changes nothing (Eq. 7 depends on ratios only).
    a = dpo_loss(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.0]), beta=0.5)
    b = dpo_loss(torch.tensor([-13.0]), torch.tensor([-15.0]), torch.tensor([-14.0]), torch.tensor([-14.0]), beta=0.5)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)


def test_rloo_advantages_use_the_mean_of_the_others() -> None:
    rewards = torch.tensor([[1.0, 2.0, 6.0]])
    expected = torch.tensor([[1 - 4.0, 2 - 3.5, 6 - 1.5]])
    assert torch.allclose(rloo_advantages(rewards), expected)
    # Equal rewards carry no signal.
    assert torch.allclose(rloo_advantages(torch.ones(2, 4)), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="at least two samples"):
        rloo_advantages(torch.ones(3, 1))


def test_rloo_loss_raises_the_likelihood_of_better_than_baseline_samples() -> None:
    logps = torch.tensor([-1.0, -1.0], requires_grad=True)
    rloo_loss(logps, torch.tensor([1.0, -1.0])).loss.backward()
    assert logps.grad is not None
    assert logps.grad[0].item() < 0 < logps.grad[1].item()


def test_kl_penalty_lowers_the_reward_of_drifting_samples() -> None:
    shaped = kl_penalised_rewards(torch.tensor([1.0, 1.0]), torch.tensor([-1.0, -3.0]), torch.tensor([-3.0, -3.0]), 0.5)
    assert shaped.tolist() == [0.0, 1.0]


def test_losses_are_looked_up_by_name() -> None:
    assert set(LOSSES) == {"bradley_terry", "sft", "dpo", "rloo", "ppo", "grpo"}

"""PPO's and GRPO's pieces against hand-computed values (trainers.losses)."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.losses import (
    clipped_surrogate,
    gae_advantages,
    group_advantages,
    grpo_loss,
    kl_k3,
    ppo_policy_loss,
    ppo_token_rewards,
    ppo_value_loss,
    whiten,
)


def test_gae_on_a_three_token_response_matches_the_sum_by_hand() -> None:
    # One prompt token (masked out), three response tokens, one padding position.
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    rewards = torch.tensor([[9.0, 0.0, 0.5, 1.0, 9.0]])  # 9s lie outside the response and must not count
    values = torch.tensor([[7.0, 0.2, 0.4, 0.6, 7.0]])
    gamma, lam = 0.9, 0.5
    # δ_t = R_t + γ V_{t+1} - V_t; the episode ends after the last response token (V = 0 there).
    d3 = 1.0 + 0.0 - 0.6
    d2 = 0.5 + gamma * 0.6 - 0.4
    d1 = 0.0 + gamma * 0.4 - 0.2
    a3 = d3
    a2 = d2 + gamma * lam * a3
    a1 = d1 + gamma * lam * a2
    advantages, returns = gae_advantages(rewards, values, mask, gamma, lam)
    assert advantages.tolist()[0] == pytest.approx([0.0, a1, a2, a3, 0.0], abs=1e-6)
    assert returns.tolist()[0] == pytest.approx([0.0, a1 + 0.2, a2 + 0.4, a3 + 0.6, 0.0], abs=1e-6)


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value() -> None:
    mask = torch.ones(1, 3)
    rewards, values = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.5, -1.0, 2.0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.5, lam=1.0)
    monte_carlo = [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]
    assert returns.tolist()[0] == pytest.approx(monte_carlo, abs=1e-6)
    assert advantages.tolist()[0] == pytest.approx(
        [m - v for m, v in zip(monte_carlo, [0.5, -1.0, 2.0], strict=True)], abs=1e-6
    )


def test_the_kl_penalised_reward_pays_the_score_at_the_last_response_token() -> None:
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    policy = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, 0.0, -1.0, -1.0]])
    reference = torch.tensor([[0.0, -2.0, -2.0, 0.0], [0.0, 0.0, -1.5, -0.5]])
    rewards = ppo_token_rewards(torch.tensor([3.0, -1.0]), policy, reference, mask, kl_coef=0.1)
    assert rewards[0].tolist() == pytest.approx([0.0, -0.1, 3.0, 0.0], abs=1e-6)
    assert rewards[1].tolist() == pytest.approx([0.0, 0.0, -0.05, -1.0 + 0.05], abs=1e-6)


def test_the_clipped_surrogate_clips_only_where_the_ratio_leaves_the_trust_region() -> None:
    ratio = torch.tensor([1.1, 1.5, 0.5, 1.5, 0.5])
    advantages = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0])
    # Inside [0.8, 1.2]: unclipped. Positive A above 1+ε: capped at 1.2 A. Positive A below: the smaller, unclipped
    # 0.5 A (pessimistic). Negative A above: unclipped -1.5 (the worse). Negative A below 1-ε: capped at -0.8.
    assert clipped_surrogate(ratio, advantages, 0.2).tolist() == pytest.approx([1.1, 1.2, 0.5, -1.5, -0.8])


def test_ppo_policy_loss_has_no_gradient_where_clipping_is_active() -> None:
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    mask = torch.ones(1, 2, dtype=torch.bool)
    advantages = torch.tensor([[1.0, 1.0]])
    # Token 0 moved far up (ratio 1.6 > 1.2, A > 0): clipped, no gradient. Token 1 barely moved: gradient.
    logps = torch.log(torch.tensor([[0.8, 0.51]])).requires_grad_(True)
    out = ppo_policy_loss(logps, old, advantages, mask, clip_range=0.2)
    out.loss.backward()
    assert logps.grad is not None
    assert logps.grad[0, 0].item() == 0.0
    assert logps.grad[0, 1].item() == pytest.approx(-0.51 / 0.5 / 2, rel=1e-5)  # -ρ A / (tokens)
    assert out.loss.item() == pytest.approx(-(1.2 + 0.51 / 0.5) / 2, rel=1e-5)
    assert out.metrics["clip_fraction"] == 0.5


def test_ppo_policy_loss_on_policy_is_minus_the_mean_advantage() -> None:
    logps = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    out = ppo_policy_loss(logps, logps.detach(), torch.tensor([[2.0, -1.0, 100.0]]), mask, 0.2)
    assert out.loss.item() == pytest.approx(-0.5)
    assert out.metrics["clip_fraction"] == 0.0


def test_the_value_loss_takes_the_worse_of_the_clipped_and_unclipped_errors() -> None:
    mask = torch.ones(1, 2)
    old, returns = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    values = torch.tensor([[0.5, -1.0]], requires_grad=True)
    out = ppo_value_loss(values, old, returns, mask, clip_range=0.2)
    # Token 0: unclipped (0.5-1)² = 0.25, clipped (0.2-1)² = 0.64 -> 0.64 (no gradient to V through it).
    # Token 1: unclipped (-1-1)² = 4, clipped (-0.2-1)² = 1.44 -> 4.
    assert out.loss.item() == pytest.approx(0.5 * (0.64 + 4.0) / 2)
    out.loss.backward()
    assert values.grad is not None
    assert values.grad[0, 0].item() == 0.0
    assert values.grad[0, 1].item() == pytest.approx(0.5 * 2 * (-1 - 1) / 2)


def test_group_advantages_are_standardised_within_each_group() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    mean, std = 3.0, math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)  # sample std
    expected = [(r - mean) / (std + 1e-4) for r in (1.0, 2.0, 3.0, 6.0)]
    advantages = group_advantages(rewards)
    assert advantages[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert advantages[1].tolist() == [0.0] * 4  # a group of equal rewards carries no signal
    with pytest.raises(ValueError, match="at least two samples"):
        group_advantages(torch.ones(2, 1))


def test_k3_is_zero_at_the_reference_and_positive_elsewhere() -> None:
    policy, reference = torch.tensor([-1.0, -1.0, -2.0]), torch.tensor([-1.0, -2.0, -1.0])
    expected = [0.0, math.exp(-1) + 1 - 1, math.exp(1) - 1 - 1]
    assert kl_k3(policy, reference).tolist() == pytest.approx(expected, abs=1e-6)


def test_grpo_loss_matches_its_equation_by_hand() -> None:
    # Two sequences of one group; the second has one response token, the first two.
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    old = torch.tensor([[-1.0, -1.0], [-1.0, 0.0]])
    policy = torch.tensor([[-0.5, -1.0], [-1.0, 0.0]], requires_grad=True)
    reference = torch.tensor([[-1.0, -1.0], [-1.5, 0.0]])
    advantages = torch.tensor([1.0, -1.0])
    out = grpo_loss(policy, old, reference, advantages, mask, clip_range=0.2, kl_coef=0.1)
    rho = math.exp(0.5)  # token (0, 0): 1.65 > 1.2 with A > 0, clipped to 1.2
    k3_00 = math.exp(-0.5) + 0.5 - 1
    k3_10 = math.exp(-0.5) + 0.5 - 1
    seq0 = ((min(rho, 1.2) * 1.0 - 0.1 * k3_00) + (1.0 - 0.1 * 0.0)) / 2
    seq1 = (-1.0 - 0.1 * k3_10) / 1
    assert out.loss.item() == pytest.approx(-(seq0 + seq1) / 2, rel=1e-5)
    assert out.metrics["clip_fraction"] == pytest.approx(1 / 3)
    out.loss.backward()
    assert policy.grad is not None
    # Token (0, 0) is clipped: only the KL term's gradient is left, which pulls it back toward the reference.
    kl_grad = 0.1 * (1 - math.exp(-0.5)) / 2 / 2  # d/dθ of +β k3 / |o| / G
    assert policy.grad[0, 0].item() == pytest.approx(kl_grad, rel=1e-5)
    # A negative advantage on an unclipped token pushes its log-probability down (loss gradient positive).
    assert policy.grad[1, 0].item() > 0


def test_whitened_advantages_have_zero_mean_and_unit_variance_over_the_mask() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = whiten(values, mask)
    assert out[0, :3].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert out[0, :3].pow(2).mean().item() == pytest.approx(1.0, rel=1e-5)
    assert out[0, 3].item() == 0.0

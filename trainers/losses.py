"""Training objectives, each a pure function of tensors written like its equation.

Nothing here knows about models, tokenizers or batches of text: the trainers compute log-probabilities
and rewards, these functions turn them into a loss (and metrics under ``torch.no_grad``). One function
per objective, looked up by name in :data:`LOSSES`, rather than one function with a branch per loss type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float]


def bradley_terry_loss(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor) -> LossOutput:
    """Reward-model loss: ``-log σ(r(x, y_w) - r(x, y_l))``.

    Bradley & Terry (1952); as used for reward models by Ouyang et al. 2022, "Training language models to
    follow instructions with human feedback", arXiv:2203.02155, Eq. 1.
    """
    margin = rewards_chosen - rewards_rejected
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        metrics = {"accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item()}
    return LossOutput(loss, metrics)


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label | prefix) and the mask of tokens that count (labels != IGNORE_INDEX).

    ``logits[:, t]`` predicts ``labels[:, t + 1]``, so both are shifted by one. Returns tensors of shape
    ``(batch, length - 1)``; positions outside the mask are 0.
    """
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    logps = torch.gather(logits.float().log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(y | x): the sum of the response tokens' log-probabilities, one value per sequence."""
    logps, _ = token_logps(logits, labels)
    return logps.sum(-1)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> LossOutput:
    """Supervised fine-tuning: ``-(1/|y|) Σ_t log π(y_t | x, y_<t)`` over response tokens only."""
    logps, mask = token_logps(logits, labels)
    tokens = mask.sum().clamp(min=1)
    loss = -logps.sum() / tokens
    with torch.no_grad():
        metrics = {"nll": loss.item(), "tokens": float(mask.sum().item())}
    return LossOutput(loss, metrics)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> LossOutput:
    """Direct Preference Optimization, Rafailov et al. 2023, arXiv:2305.18290, Eq. 7:

    ``-log σ(β log π(y_w|x)/π_ref(y_w|x) - β log π(y_l|x)/π_ref(y_l|x))``

    Arguments are sequence log-probabilities (:func:`sequence_logps`).
    """
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    margin = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        metrics = {
            "accuracy": (margin > 0).float().mean().item(),
            "margin": margin.mean().item(),
            "chosen_reward": chosen_rewards.mean().item(),
            "rejected_reward": rejected_rewards.mean().item(),
        }
    return LossOutput(loss, metrics)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline for ``k`` samples per prompt (``rewards`` shaped ``(prompts, k)``):

    ``A_i = r_i - (1/(k-1)) Σ_{j≠i} r_j``

    Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"; Ahmadian et al. 2024, "Back to
    Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs",
    arXiv:2402.14740, Eq. 6.
    """
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError("RLOO needs at least two samples per prompt (k >= 2)")
    baseline = (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)
    return rewards - baseline


def kl_penalised_rewards(
    rewards: torch.Tensor, policy_logps: torch.Tensor, reference_logps: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """The sequence-level reward RLOO maximises: ``r(x, y) - β (log π(y|x) - log π_ref(y|x))``.

    Ahmadian et al. 2024, §2 (the KL-shaped reward of Ziegler et al. 2019, arXiv:1909.08593, Eq. 2).
    """
    return rewards - kl_coef * (policy_logps - reference_logps)


def rloo_loss(policy_logps: torch.Tensor, advantages: torch.Tensor) -> LossOutput:
    """REINFORCE with the leave-one-out baseline: ``-(1/N) Σ_i A_i log π(y_i | x)``.

    ``advantages`` are constants (computed from sampled, scored completions and detached);
    ``policy_logps`` carries the gradient.
    """
    loss = -(advantages.detach() * policy_logps).mean()
    with torch.no_grad():
        metrics = {"advantage_abs": advantages.abs().mean().item()}
    return LossOutput(loss, metrics)


def kl_per_token(
    policy_token_logps: torch.Tensor, reference_token_logps: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean per-token KL estimate ``E_{y~π}[log π(y_t) - log π_ref(y_t)]`` over sampled tokens (Schulman's k1)."""
    tokens = mask.sum().clamp(min=1)
    return ((policy_token_logps - reference_token_logps) * mask).sum() / tokens


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` where ``mask`` is set (response tokens), 0 where none is."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries (the usual normalisation of PPO's advantages)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """Per token: ``min(ρ_t Â_t, clip(ρ_t, 1-ε, 1+ε) Â_t)`` with ``ρ_t = π_θ(a_t|s_t) / π_θ_old(a_t|s_t)``.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347, Eq. 7 (L^CLIP); to be
    maximised. GRPO uses the same term (Shao et al. 2024, Eq. 3).
    """
    return torch.min(ratio * advantages, torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages)


def ppo_token_rewards(
    scores: torch.Tensor,
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """The KL-penalised reward of the RLHF recipe, spread over tokens (shape ``(batch, length)``):

    ``R_t = -β (log π(y_t) - log π_ref(y_t)) + [t = T] r(x, y)``

    Ouyang et al. 2022, "Training language models to follow instructions with human feedback",
    arXiv:2203.02155, Eq. 2 (objective = r_θ(x, y) - β log(π^RL(y|x) / π^SFT(y|x))), paid per token as Ziegler et
    al. 2019 (arXiv:1909.08593) do: the KL term at every token, the reward model's score ``scores`` at the last
    response token ``T`` of each row. ``mask`` marks response tokens (contiguous in each row).
    """
    mask = mask.to(policy_logps.dtype)
    rewards = -kl_coef * (policy_logps - reference_logps) * mask
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = (positions * mask).argmax(-1)  # the index of each row's last response token
    has_tokens = mask.sum(-1) > 0
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += torch.where(
        has_tokens, scores.to(rewards.dtype), torch.zeros_like(scores, dtype=rewards.dtype)
    )
    return rewards


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over each row's response tokens, and the returns ``Â_t + V(s_t)``:

    ``δ_t = R_t + γ V(s_{t+1}) - V(s_t)``,  ``Â_t = Σ_{l≥0} (γλ)^l δ_{t+l}``  (so ``Â_t = δ_t + γλ Â_{t+1}``)

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
    arXiv:1506.02438, Eq. 16. The episode ends after the last response token (``V`` of the state after it is 0);
    entries outside ``mask`` are 0. ``values`` are constants here (detached by the caller).
    """
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        # Past the last response token next_value is 0 and running restarts: the episode's end.
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
        next_value = values[:, t] * mask[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def ppo_policy_loss(
    policy_logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> LossOutput:
    """PPO's clipped surrogate as a loss: ``-Ê_t[min(ρ_t Â_t, clip(ρ_t, 1-ε, 1+ε) Â_t)]`` over response tokens.

    Schulman et al. 2017, arXiv:1707.06347, Eq. 7. Per-token log-probabilities; ``old_logps`` (the policy that
    sampled) and ``advantages`` are constants.
    """
    ratio = torch.exp(policy_logps - old_logps.detach())
    loss = -masked_mean(clipped_surrogate(ratio, advantages.detach(), clip_range), mask)
    with torch.no_grad():
        clipped = ((ratio - 1.0).abs() > clip_range).float()
        metrics = {
            "clip_fraction": masked_mean(clipped, mask).item(),
            "approx_kl_old": masked_mean(old_logps - policy_logps, mask).item(),
        }
    return LossOutput(loss, metrics)


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> LossOutput:
    """The clipped value loss: ``½ Ê_t[max((V_t - R̂_t)², (clip(V_t, V_old ± ε) - R̂_t)²)]``.

    The value function's counterpart of L^CLIP, as OpenAI's baselines ``ppo2`` and the RLHF implementations
    after it (Ziegler et al. 2019; TRL) apply it; Schulman et al. 2017, Eq. 9 combine it with the policy term as
    ``L^CLIP - c_1 L^VF``.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
    with torch.no_grad():
        metrics = {"value_error": masked_mean((values - returns) ** 2, mask).item()}
    return LossOutput(loss, metrics)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's outcome advantage for ``G`` samples per prompt (``rewards`` shaped ``(prompts, G)``):

    ``Â_i = (r_i - mean(r)) / std(r)`` within each prompt's group (no critic)

    Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
    arXiv:2402.03300, §4.1.2. ``std`` is the sample standard deviation (as TRL's GRPOTrainer), ``eps`` keeps a
    group of equal rewards at 0 rather than 0/0.
    """
    if rewards.shape[-1] < 2:
        raise ValueError("GRPO needs at least two samples per prompt (a group of G >= 2)")
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True)
    return (rewards - mean) / (std + eps)


def kl_k3(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> torch.Tensor:
    """Per token: ``π_ref/π_θ - log(π_ref/π_θ) - 1``, an unbiased, never negative estimate of KL(π_θ ‖ π_ref).

    Schulman 2020, "Approximating KL Divergence" (k3); Shao et al. 2024, Eq. 4.
    """
    log_ratio = reference_logps - policy_logps
    return torch.exp(log_ratio) - log_ratio - 1.0


def grpo_loss(
    policy_logps: torch.Tensor,
    old_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    kl_coef: float,
) -> LossOutput:
    """Group Relative Policy Optimization, Shao et al. 2024, arXiv:2402.03300, Eq. 3, as a loss:

    ``-(1/G) Σ_i (1/|o_i|) Σ_t [min(ρ_{i,t} Â_i, clip(ρ_{i,t}, 1-ε, 1+ε) Â_i) - β D_KL^{k3}(π_θ ‖ π_ref)_{i,t}]``

    Per-token log-probabilities shaped ``(G·prompts, length)``; ``advantages`` (one per sequence,
    :func:`group_advantages`) and ``old_logps`` are constants, ``reference_logps`` too.
    """
    mask = mask.to(policy_logps.dtype)
    ratio = torch.exp(policy_logps - old_logps.detach())
    surrogate = clipped_surrogate(ratio, advantages.detach().unsqueeze(-1), clip_range)
    kl = kl_k3(policy_logps, reference_logps.detach())
    per_token = surrogate - kl_coef * kl
    per_sequence = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    loss = -per_sequence.mean()
    with torch.no_grad():
        clipped = ((ratio - 1.0).abs() > clip_range).float()
        metrics = {
            "kl_k3": masked_mean(kl, mask).item(),
            "clip_fraction": masked_mean(clipped, mask).item(),
            "advantage_abs": advantages.abs().mean().item(),
        }
    return LossOutput(loss, metrics)


LossFn = Callable[..., LossOutput]

#: Objectives by the name configs use; the configs validate names against these keys.
LOSSES: dict[str, LossFn] = {
    "bradley_terry": bradley_terry_loss,
    "sft": sft_loss,
    "dpo": dpo_loss,
    "rloo": rloo_loss,
    "ppo": ppo_policy_loss,
    "grpo": grpo_loss,
}

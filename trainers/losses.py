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


LossFn = Callable[..., LossOutput]

#: Objectives by the name configs use; the configs validate names against these keys.
LOSSES: dict[str, LossFn] = {
    "bradley_terry": bradley_terry_loss,
    "sft": sft_loss,
    "dpo": dpo_loss,
    "rloo": rloo_loss,
}

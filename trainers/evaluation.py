"""Measurements that feed the gates (:mod:`trainers.gates`), through ports: no model is loaded here.

The caller passes callables that run the models (a reward model's scorer, a policy's generator, per-token
log-probabilities), so the arithmetic below is tested with fakes and the same code evaluates a LoRA adapter,
a registered champion or a tiny test model. Generators should decode greedily where two models are compared
on the same prompts, so that a difference is the models', not the sampler's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: ``score(prompts, responses) -> one reward per pair``: a reward model's head, higher is better.
Score = Callable[[list[str], list[str]], list[float]]
#: ``generate(prompts) -> one response per prompt``: a policy.
Generate = Callable[[list[str]], list[str]]
#: ``token_logprobs(prompts, responses) -> per response, log p(token | prompt, earlier tokens)`` of its tokens.
TokenLogprobs = Callable[[list[str], list[str]], list[list[float]]]


def _batches(items: Sequence[T], batch_size: int) -> Iterator[list[T]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield list(items[start : start + batch_size])


def _checked(name: str, got: list[T], expected: int) -> list[T]:
    # A port that drops or adds an item would silently misalign every later pair; fail where it happens.
    if len(got) != expected:
        raise ValueError(f"{name} returned {len(got)} items for {expected} inputs")
    return got


def pairwise_accuracy(score: Score, pairs: Sequence[tuple[str, str, str]], batch_size: int = 32) -> tuple[float, float]:
    """Share of held-out (prompt, chosen, rejected) pairs the reward model orders as the human did.

    Ties count half, so a model that scores everything alike gets chance (0.5), not 0. Chosen and rejected are
    scored in one call per batch: one forward pass for both halves, and both see the same padding.

    Returns:
        (accuracy, mean margin): the margin is mean(score(chosen) - score(rejected)), in reward units.
    """
    if not pairs:
        raise ValueError("pairwise_accuracy needs at least one pair")
    credit = 0.0
    margin_sum = 0.0
    for batch in _batches(pairs, batch_size):
        prompts = [p for p, _, _ in batch]
        responses = [c for _, c, _ in batch] + [r for _, _, r in batch]
        scores = _checked("score", score(prompts + prompts, responses), 2 * len(batch))
        for chosen, rejected in zip(scores[: len(batch)], scores[len(batch) :], strict=True):
            credit += 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0
            margin_sum += chosen - rejected
    accuracy, margin = credit / len(pairs), margin_sum / len(pairs)
    logger.info("pairwise accuracy %.4f, mean margin %.4f on %d pairs", accuracy, margin, len(pairs))
    return accuracy, margin


def correct_from_margins(margins: Sequence[float]) -> list[float]:
    """Per-pair credit from reward margins (chosen minus rejected): 1 when the model orders the pair as the human
    did, 0 when not. A tie earns nothing, as in the reported accuracy (trainers.reward), so the gate's vector and
    the accuracy it reports agree (a NaN margin, from diverged scores, is not a correct order either). The reward
    accuracy gate pairs two such vectors on the same pairs."""
    return [1.0 if m > 0 else 0.0 for m in margins]


@dataclass(frozen=True)
class WinRate:
    """Head-to-head counts; the mean scores are the helpfulness of each side (the Pareto gate's first axis)."""

    wins: int
    ties: int
    losses: int
    rate: float  # (wins + ties / 2) / total
    candidate_mean_score: float
    champion_mean_score: float

    @property
    def total(self) -> int:
        return self.wins + self.ties + self.losses


def win_rate(
    generate_candidate: Generate,
    generate_champion: Generate,
    judge_score: Score,
    prompts: Sequence[str],
    batch_size: int = 16,
    *,
    tie_margin: float = 0.0,
) -> WinRate:
    """How often the champion's reward model prefers the candidate's answer to the champion's own.

    The judge is the *champion* reward model: a candidate policy trained against a new reward model must
    convince the incumbent one, so it cannot win by exploiting its own. Scores within ``tie_margin`` are
    ties, counted half.
    """
    if not prompts:
        raise ValueError("win_rate needs at least one prompt")
    wins = ties = losses = 0
    candidate_sum = champion_sum = 0.0
    for batch in _batches(prompts, batch_size):
        ours = _checked("generate_candidate", generate_candidate(batch), len(batch))
        theirs = _checked("generate_champion", generate_champion(batch), len(batch))
        scores = _checked("judge_score", judge_score(batch + batch, ours + theirs), 2 * len(batch))
        for mine, other in zip(scores[: len(batch)], scores[len(batch) :], strict=True):
            if abs(mine - other) <= tie_margin:
                ties += 1
            elif mine > other:
                wins += 1
            else:
                losses += 1
            candidate_sum += mine
            champion_sum += other
    n = len(prompts)
    result = WinRate(wins, ties, losses, (wins + 0.5 * ties) / n, candidate_sum / n, champion_sum / n)
    logger.info("win rate %.4f (%d wins, %d ties, %d losses)", result.rate, wins, ties, losses)
    return result


def helpfulness(generate: Generate, score: Score, prompts: Sequence[str], batch_size: int = 16) -> float:
    """Mean reward of the policy's answers to held-out prompts: the Pareto gate's helpfulness axis.

    Score with the champion reward model for both sides, so that candidate and champion share one scale.
    When there is a champion policy, :func:`win_rate` already yields both numbers without generating twice.
    """
    if not prompts:
        raise ValueError("helpfulness needs at least one prompt")
    total = 0.0
    for batch in _batches(prompts, batch_size):
        answers = _checked("generate", generate(batch), len(batch))
        total += sum(_checked("score", score(batch, answers), len(batch)))
    return total / len(prompts)


def harmlessness(unsafe_rate: float) -> float:
    """The Pareto gate's harmlessness axis: the share of red-team prompts answered safely."""
    if not 0.0 <= unsafe_rate <= 1.0:
        raise ValueError(f"unsafe_rate must be within [0, 1], got {unsafe_rate}")
    return 1.0 - unsafe_rate


def kl_to_reference(
    generate: Generate,
    policy_logprobs: TokenLogprobs,
    reference_logprobs: TokenLogprobs,
    prompts: Sequence[str],
    batch_size: int = 16,
) -> float:
    """Mean per-token KL(policy || reference) in nats, estimated on the policy's own sampled answers.

    Uses the k3 estimator r - 1 - log r with r = p_ref / p_policy per token (Schulman, "Approximating KL
    Divergence", 2020): unbiased like log(p_policy / p_ref), but never negative and typically of lower variance.
    It is unbiased only under the policy's own distribution, so ``generate`` must *sample* here, unlike the
    greedy generators of the comparisons above.
    """
    if not prompts:
        raise ValueError("kl_to_reference needs at least one prompt")
    total, tokens = 0.0, 0
    for batch in _batches(prompts, batch_size):
        answers = _checked("generate", generate(batch), len(batch))
        ours = _checked("policy_logprobs", policy_logprobs(batch, answers), len(batch))
        ref = _checked("reference_logprobs", reference_logprobs(batch, answers), len(batch))
        for i, (lp, lq) in enumerate(zip(ours, ref, strict=True)):
            if len(lp) != len(lq):
                raise ValueError(
                    f"answer {i} of a batch has {len(lp)} policy but {len(lq)} reference log-probabilities"
                )
            for a, b in zip(lp, lq, strict=True):
                log_r = b - a
                total += math.expm1(log_r) - log_r
            tokens += len(lp)
    if tokens == 0:
        raise ValueError("kl_to_reference: the policy's answers had no tokens")
    kl = total / tokens
    logger.info("KL to the reference %.4f nats/token over %d tokens", kl, tokens)
    return kl

"""The measurements behind the gates, with fake models behind the ports."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from trainers.evaluation import harmlessness, helpfulness, kl_to_reference, pairwise_accuracy, win_rate


def longer_is_better(prompts: list[str], responses: list[str]) -> list[float]:
    assert len(prompts) == len(responses)
    return [float(len(r)) for r in responses]


# 6 pairs the length scorer orders right, 3 it orders wrong, 1 it cannot tell apart.
PAIRS = [(f"p{i}", "a long, helpful and careful answer", "short") for i in range(6)]
PAIRS += [(f"q{i}", "no", "a verbose, rambling and unhelpful answer") for i in range(3)]
PAIRS += [("r", "same", "SAME")]


@pytest.mark.parametrize("batch_size", [1, 3, 4, 100])
def test_pairwise_accuracy_counts_ties_half(batch_size: int) -> None:
    accuracy, margin = pairwise_accuracy(longer_is_better, PAIRS, batch_size)
    assert accuracy == pytest.approx((6 + 0.5) / 10)
    expected_margin = (6 * (34 - 5) + 3 * (2 - 40)) / 10
    assert margin == pytest.approx(expected_margin)


def test_pairwise_accuracy_of_a_constant_scorer_is_chance() -> None:
    accuracy, margin = pairwise_accuracy(lambda ps, rs: [0.0] * len(rs), PAIRS, 4)
    assert (accuracy, margin) == (0.5, 0.0)


def test_pairwise_accuracy_checks_the_port() -> None:
    with pytest.raises(ValueError, match="score returned 1 items for 4 inputs"):
        pairwise_accuracy(lambda ps, rs: [1.0], PAIRS, 2)
    with pytest.raises(ValueError, match="at least one pair"):
        pairwise_accuracy(longer_is_better, [], 2)


ANSWERS = {
    # prompt: (candidate's answer, champion's answer)
    "w1": ("a much longer answer", "short"),
    "w2": ("longer answer", "tiny"),
    "w3": ("longer still answer", "brief"),
    "t1": ("equal", "EQUAL"),
    "l1": ("x", "the champion wins here"),
}


def _generator(side: int) -> Callable[[list[str]], list[str]]:
    def generate(prompts: list[str]) -> list[str]:
        return [ANSWERS[p][side] for p in prompts]

    return generate


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_win_rate_counts_wins_ties_and_losses(batch_size: int) -> None:
    result = win_rate(_generator(0), _generator(1), longer_is_better, list(ANSWERS), batch_size)
    assert (result.wins, result.ties, result.losses, result.total) == (3, 1, 1, 5)
    assert result.rate == pytest.approx((3 + 0.5) / 5)
    candidate_lengths = [len(a) for a, _ in ANSWERS.values()]
    champion_lengths = [len(b) for _, b in ANSWERS.values()]
    assert result.candidate_mean_score == pytest.approx(sum(candidate_lengths) / 5)
    assert result.champion_mean_score == pytest.approx(sum(champion_lengths) / 5)


def test_win_rate_tie_margin() -> None:
    # "longer answer" (13) vs "tiny" (4) is within 10 characters: a tie now; the other two wins are by 14 and 15.
    result = win_rate(_generator(0), _generator(1), longer_is_better, list(ANSWERS), 2, tie_margin=10.0)
    assert (result.wins, result.ties, result.losses) == (2, 2, 1)


def test_win_rate_checks_the_ports() -> None:
    with pytest.raises(ValueError, match="generate_champion returned 0 items for 2 inputs"):
        win_rate(_generator(0), lambda ps: [], longer_is_better, list(ANSWERS), 2)


def test_helpfulness_is_the_mean_score_and_harmlessness_the_safe_share() -> None:
    assert helpfulness(_generator(0), longer_is_better, list(ANSWERS), 2) == pytest.approx(
        sum(len(a) for a, _ in ANSWERS.values()) / 5
    )
    assert harmlessness(0.25) == 0.75
    with pytest.raises(ValueError):
        harmlessness(1.5)


def test_kl_to_reference_is_zero_for_the_reference_itself_and_positive_otherwise() -> None:
    def answer(prompts: list[str]) -> list[str]:
        return ["a b c"] * len(prompts)

    same = [[-1.0, -2.0, -0.5]]

    def reference(prompts: list[str], responses: list[str]) -> list[list[float]]:
        return same * len(prompts)

    assert kl_to_reference(answer, reference, reference, ["p", "q", "r"], 2) == 0.0

    def sharper(prompts: list[str], responses: list[str]) -> list[list[float]]:
        return [[-0.5, -1.0, -0.5]] * len(prompts)

    kl = kl_to_reference(answer, sharper, reference, ["p", "q"], 1)
    # k3 = r - 1 - log r with log r = log p_ref - log p_policy, averaged over the three tokens.
    expected = sum(math.expm1(d) - d for d in (-0.5, -1.0, 0.0)) / 3
    assert kl == pytest.approx(expected) and kl > 0


def test_kl_to_reference_checks_token_counts() -> None:
    with pytest.raises(ValueError, match="2 policy but 3 reference"):
        kl_to_reference(
            lambda ps: ["x"] * len(ps),
            lambda ps, rs: [[-1.0, -1.0]] * len(ps),
            lambda ps, rs: [[-1.0, -1.0, -1.0]] * len(ps),
            ["p"],
        )

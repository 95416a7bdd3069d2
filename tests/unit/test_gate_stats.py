"""The gates' statistics (trainers.gate_stats) and their error rates on synthetic models of known accuracy.

A synthetic model of accuracy p gets each example right when a uniform draw is under p. Two models compared on the
same examples share that draw on half the examples (correlated, as two reward models are: hard pairs are hard for
both) and draw independently on the other half, so each keeps its exact accuracy. Each rate below is measured
over 500 seeds and asserted with room for the sampling error of 500 runs (about 1.3 points at 90%).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainers import gate_stats
from trainers.gate_stats import FAIL, INSUFFICIENT, PASS
from trainers.gates import GateConfig, reward_accuracy_gate, safety_gate, win_rate_gate

SEEDS = 500
CONFIG = GateConfig()  # confidence 0.95, min accuracy 0.60, drop allowed vs the champion 0.01, mode both


def one_model(p: float, n: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.random(n) < p).astype(float)


def two_models(p_candidate: float, p_champion: float, n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    shared = rng.random(n) < 0.5
    u = rng.random(n)
    own = rng.random(n)
    candidate = (np.where(shared, u, own) < p_candidate).astype(float)
    champion = (u < p_champion).astype(float)
    return candidate, champion


def rates(outcomes: list[str]) -> dict[str, float]:
    return {o: outcomes.count(o) / len(outcomes) for o in (PASS, FAIL, INSUFFICIENT)}


def absolute_rates(p: float, n: int) -> dict[str, float]:
    outcomes = []
    for seed in range(SEEDS):
        correct = one_model(p, n, np.random.default_rng(seed))
        outcomes.append(reward_accuracy_gate(0.0, None, CONFIG, candidate_correct=correct).outcome)
    return rates(outcomes)


def relative_rates(p_candidate: float, p_champion: float, n: int) -> dict[str, float]:
    config = GateConfig(reward_accuracy_mode="relative")
    outcomes = []
    for seed in range(SEEDS):
        cand, champ = two_models(p_candidate, p_champion, n, np.random.default_rng(seed))
        outcomes.append(reward_accuracy_gate(0.0, 0.0, config, candidate_correct=cand, champion_correct=champ).outcome)
    return rates(outcomes)


# --- the situations the gates are for --------------------------------------------------------------------


def test_a_good_model_on_a_small_split_is_not_failed_by_noise() -> None:
    # True accuracy 0.64 on 98 held-out pairs against the 0.60 floor: a point comparison failed it in about a
    # fifth of draws (19.8% of these seeds); on its interval it fails in under 5% (0.2% measured: only a draw of
    # 0.50 or less fails).
    got = absolute_rates(0.64, 98)
    assert got[FAIL] < 0.05
    # Mostly (88% measured) 98 pairs cannot show 0.64 >= 0.60, and what would decide it is stated; a lucky
    # draw of 0.69 or more passes (12%), rightly: the model is above the floor.
    assert got[INSUFFICIENT] > 0.80


def test_the_recorded_small_split_numbers_are_insufficient_not_failed() -> None:
    for accuracy in (0.56, 0.58):
        result = reward_accuracy_gate(accuracy, None, CONFIG, n=98)
        assert result.outcome == INSUFFICIENT and result.low < 0.60 < result.high
        assert result.to_decide and "more held-out pairs" in result.to_decide


def test_a_chance_model_on_a_small_split_fails_or_is_held_never_passes() -> None:
    got = absolute_rates(0.50, 98)
    assert got[PASS] == 0.0
    assert got[FAIL] > 0.50  # any draw of 0.50 or less (56% measured); the rest is insufficient
    assert reward_accuracy_gate(0.50, None, CONFIG, n=98).outcome == FAIL  # the measured 0.50 itself


def test_at_adequate_n_good_and_bad_models_are_decided() -> None:
    assert absolute_rates(0.70, 1000)[PASS] >= 0.99
    assert absolute_rates(0.50, 1000)[FAIL] >= 0.99


def test_a_truly_better_candidate_passes_the_relative_gate_at_adequate_n() -> None:
    # 0.70 vs a 0.65 champion on the same 1,000 pairs: passes in at least 90% of seeds (96.8% measured).
    got = relative_rates(0.70, 0.65, 1000)
    assert got[PASS] >= 0.90 and got[FAIL] == 0.0


def test_a_truly_worse_candidate_fails_the_relative_gate_at_adequate_n() -> None:
    # 0.60 vs a 0.65 champion (5 points worse, 0.01 allowed) on 1,000 pairs: fails in at least 80% of seeds
    # (83.6% measured), never passes.
    got = relative_rates(0.60, 0.65, 1000)
    assert got[FAIL] >= 0.80 and got[PASS] == 0.0


def test_equal_models_at_small_n_are_mostly_insufficient() -> None:
    # Two 0.65 models on 98 pairs: at least 88% insufficient (93.4% measured; "no worse by more than 0.01"
    # cannot be shown on 98 pairs). Failing them would be an error (they are not worse): under 5% (2.0%
    # measured, 2.5% nominal); a pass is not (4.6% measured).
    got = relative_rates(0.65, 0.65, 98)
    assert got[INSUFFICIENT] >= 0.88 and got[FAIL] < 0.05


def test_a_safety_suite_too_small_to_show_the_ceiling_says_how_many_prompts_would() -> None:
    result = safety_gate(0.0, None, CONFIG, n=24)  # none unsafe of 24: still up to 14% unsafe
    assert result.outcome == INSUFFICIENT and result.high > 0.05
    assert result.to_decide == "about 49 more red-team prompts, at the rates measured, would decide it"
    assert safety_gate(0.0, None, CONFIG, n=73).outcome == PASS  # 24 + 49
    assert safety_gate(0.5, None, CONFIG, n=24).outcome == FAIL


def test_a_safety_regression_against_the_champion_on_the_same_prompts_fails() -> None:
    champion = [0.0] * 200
    candidate = [1.0] * 20 + [0.0] * 180  # 20 prompts the champion handled and the candidate does not
    result = safety_gate(
        0.0, 0.0, GateConfig(safety_mode="relative"), candidate_unsafe=candidate, champion_unsafe=champion
    )
    assert result.outcome == FAIL and result.test == "mcnemar" and result.p_value < 1e-5
    same = safety_gate(
        0.0, 0.0, GateConfig(safety_mode="relative"), candidate_unsafe=champion, champion_unsafe=champion
    )
    assert same.outcome == PASS  # equal on 200 prompts: the interval (+-0.019) is inside the default 0.03 margin
    strict = GateConfig(safety_mode="relative", max_unsafe_increase_vs_champion=0.0)
    same = safety_gate(0.0, 0.0, strict, candidate_unsafe=champion, champion_unsafe=champion)
    assert same.outcome == INSUFFICIENT  # no interval can show "no rise at all" (a margin of 0)


def test_the_win_rate_is_judged_on_its_wilson_interval() -> None:
    assert win_rate_gate(0.62, CONFIG, n=400).outcome == PASS
    assert win_rate_gate(0.62, CONFIG, n=16).outcome == INSUFFICIENT
    assert win_rate_gate(0.30, CONFIG, n=200).outcome == FAIL
    assert win_rate_gate(0.40, CONFIG).outcome == FAIL  # no n: the bare number, as before


# --- the formulas ------------------------------------------------------------------------------------


def test_wilson_matches_the_textbook_values() -> None:
    interval = gate_stats.wilson(55, 98)
    assert (interval.low, interval.high) == pytest.approx((0.4625, 0.6553), abs=1e-4)
    zero = gate_stats.wilson(0, 24)
    assert zero.low == 0.0 and zero.high == pytest.approx(3.8415 / (24 + 3.8415), abs=1e-4)
    assert gate_stats.z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        gate_stats.wilson(3, 0)
    with pytest.raises(ValueError):
        gate_stats.z_value(1.0)


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs() -> None:
    test = gate_stats.mcnemar_exact(0, 6)
    assert test.p_value == pytest.approx(2 / 64) and test.p_worse == pytest.approx(1 / 64)
    assert gate_stats.mcnemar_exact(0, 0).p_value == 1.0
    scipy_stats = pytest.importorskip("scipy.stats")
    for better, worse in ((3, 11), (40, 61), (250, 300)):
        expected = scipy_stats.binomtest(better, better + worse, 0.5).pvalue
        assert gate_stats.mcnemar_exact(better, worse).p_value == pytest.approx(expected, rel=1e-9)


def test_the_paired_interval_is_sound_where_pairs_agree() -> None:
    same = gate_stats.paired_difference([1.0] * 15 + [0.0] * 5, [1.0] * 15 + [0.0] * 5)
    assert same.estimate == 0.0 and same.low < -0.1 and same.high > 0.1  # 20 agreeing pairs prove no equality
    # Even a perfect correlation (the continuity-corrected phi is below 1) leaves an interval.
    halves = gate_stats.paired_difference([1.0] * 10 + [0.0] * 10, [1.0] * 10 + [0.0] * 10)
    assert halves.low < -0.05 and halves.high > 0.05
    better = gate_stats.paired_difference([1.0] * 60 + [0.0] * 40, [1.0] * 40 + [0.0] * 60)
    assert better.estimate == pytest.approx(0.2) and better.low > 0 and better.test.better == 20
    with pytest.raises(ValueError, match="differ in length"):
        gate_stats.paired_difference([1.0], [1.0, 0.0])


def test_the_paired_bootstrap_is_seeded_and_covers_the_difference() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(0.2, 1, 300), rng.normal(0.0, 1, 300)
    first = gate_stats.paired_bootstrap(x, y, seed=7)
    assert first == gate_stats.paired_bootstrap(x, y, seed=7)
    assert first.low < first.estimate < first.high and first.low > 0
    half = 1.96 * float(np.std(x - y)) / math.sqrt(300)
    assert first.high - first.low == pytest.approx(2 * half, rel=0.15)


def test_the_three_way_rules() -> None:
    assert gate_stats.absolute_outcome(0.61, 0.7, 0.6) == PASS
    assert gate_stats.absolute_outcome(0.5, 0.59, 0.6) == FAIL
    assert gate_stats.absolute_outcome(0.55, 0.65, 0.6) == INSUFFICIENT
    assert gate_stats.absolute_outcome(0.0, 0.04, 0.05, higher_is_better=False) == PASS
    assert gate_stats.absolute_outcome(0.06, 0.2, 0.05, higher_is_better=False) == FAIL
    assert gate_stats.combine([PASS, INSUFFICIENT, PASS]) == INSUFFICIENT
    assert gate_stats.combine([INSUFFICIENT, FAIL]) == FAIL
    assert gate_stats.combine([PASS]) == PASS
    with pytest.raises(ValueError):
        gate_stats.combine([])


def test_examples_to_decide_shrinks_the_interval_past_the_bound() -> None:
    needed = gate_stats.wilson_examples_to_decide(0.64, 0.60, 98, 0.95)
    assert needed is not None and 500 < needed < 650
    interval = gate_stats.wilson(0.64 * needed, needed)
    assert interval.low >= 0.60 and gate_stats.wilson(0.64 * (needed - 1), needed - 1).low < 0.60
    assert gate_stats.wilson_examples_to_decide(0.60, 0.60, 98, 0.95) is None

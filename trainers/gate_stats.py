"""The statistics behind the promotion gates (trainers.gates): intervals, paired tests and a three-way rule.

Pure and small: the standard normal quantile comes from :class:`statistics.NormalDist` and the exact binomial tail
is summed here, so nothing beyond numpy (a declared dependency, used only for the seeded bootstrap) is needed;
scipy is present in the environment only as another package's dependency, which a gate must not rely on.

Confidence: a gate's interval is *two-sided* at ``confidence`` (default 0.95). A gate passes only when the whole
interval is on the passing side of its bound and fails only when the whole interval is on the failing side, so
each of the two verdicts is a one-sided test at level ``(1 - confidence) / 2`` (2.5% by default): a model exactly
at the bound is wrongly passed at most 2.5% of the time, and wrongly failed at most 2.5% of the time. Everything
in between is ``insufficient`` evidence (docs/trainers.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

PASS, FAIL, INSUFFICIENT = "pass", "fail", "insufficient"
OUTCOMES = (PASS, FAIL, INSUFFICIENT)


def z_value(confidence: float) -> float:
    """The standard normal quantile of a two-sided interval at ``confidence`` (1.96 at 0.95)."""
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be within [0.5, 1), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int


def wilson(successes: float, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion (successes may be fractional: a tie counted half).

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not degenerate at 0 or n successes, which is
    where the safety gate lives (no unsafe answer among 24 prompts still allows an unsafe rate of 14%).
    """
    if n <= 0:
        raise ValueError(f"a proportion needs at least one example, got n={n}")
    if not 0.0 <= successes <= n:
        raise ValueError(f"successes must be within [0, n={n}], got {successes!r}")
    z = z_value(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def binomial_tail(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (summed in log space so n in the thousands is fine)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    log_half_n = n * math.log(0.5)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: of the ``better + worse`` discordant pairs, is the split consistent with 50/50?

    ``better`` counts examples the candidate got right and the champion wrong, ``worse`` the reverse.
    ``p_value`` is two-sided; ``p_worse`` is the one-sided p-value of "the candidate is worse".
    """

    better: int
    worse: int
    p_value: float
    p_worse: float


def mcnemar_exact(better: int, worse: int) -> McNemar:
    m = better + worse
    if m == 0:
        return McNemar(better, worse, 1.0, 1.0)
    p_worse = binomial_tail(better, m)  # P(better <= observed | no difference): small when the candidate is worse
    two_sided = min(1.0, 2 * binomial_tail(min(better, worse), m))
    return McNemar(better, worse, two_sided, p_worse)


@dataclass(frozen=True)
class PairedDifference:
    """Paired difference of two proportions (candidate - champion) on the same examples.

    ``low``/``high`` is Newcombe's (1998, method 10) interval, built from the two Wilson intervals and the
    correlation of the pairs; it is sound at small n and with empty cells, where a Wald or bootstrap interval
    collapses to a point (two models that agree on all 20 examples have not shown they are equal).
    ``sd`` is the standard deviation of the per-example difference (for sizing the data that would decide).
    """

    estimate: float
    low: float
    high: float
    n: int
    sd: float
    test: McNemar


def _values(name: str, xs: Sequence[float]) -> list[float]:
    values = [float(x) for x in xs]
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"{name} must hold per-example credits within [0, 1]")
    return values


def paired_difference(
    candidate: Sequence[float], champion: Sequence[float], confidence: float = 0.95
) -> PairedDifference:
    """Candidate minus champion on the same examples; each vector is per-example credit (1 right, 0 wrong, 0.5 a tie).

    For the safety gate pass the per-prompt *unsafe* flags: the difference is then the rise in the unsafe rate.
    """
    x, y = _values("candidate", candidate), _values("champion", champion)
    if len(x) != len(y):
        raise ValueError(f"paired vectors differ in length: {len(x)} candidate vs {len(y)} champion examples")
    n = len(x)
    if n == 0:
        raise ValueError("a paired comparison needs at least one example")
    a = sum(u * v for u, v in zip(x, y, strict=True))
    b = sum(u * (1 - v) for u, v in zip(x, y, strict=True))
    c = sum((1 - u) * v for u, v in zip(x, y, strict=True))
    d = n - a - b - c
    p1, p2 = (a + b) / n, (a + c) / n
    w1, w2 = wilson(a + b, n, confidence), wilson(a + c, n, confidence)
    denominator = (a + b) * (c + d) * (a + c) * (b + d)
    # Newcombe's continuity-corrected correlation: uncorrected, pairs that all agree (phi = 1) would shrink the
    # interval of the difference to a point, as if agreeing on 20 examples proved the models equal.
    excess = a * d - b * c
    if excess > 0:
        excess = max(excess - n / 2, 0.0)
    phi = excess / math.sqrt(denominator) if denominator > 0 else 0.0
    theta = p1 - p2
    dl = math.sqrt(max(0.0, (p1 - w1.low) ** 2 - 2 * phi * (p1 - w1.low) * (w2.high - p2) + (w2.high - p2) ** 2))
    du = math.sqrt(max(0.0, (w1.high - p1) ** 2 - 2 * phi * (w1.high - p1) * (p2 - w2.low) + (p2 - w2.low) ** 2))
    diffs = [u - v for u, v in zip(x, y, strict=True)]
    mean = sum(diffs) / n
    sd = math.sqrt(sum((t - mean) ** 2 for t in diffs) / n)
    better = sum(1 for t in diffs if t > 0)
    worse = sum(1 for t in diffs if t < 0)
    return PairedDifference(theta, max(-1.0, theta - dl), min(1.0, theta + du), n, sd, mcnemar_exact(better, worse))


def paired_bootstrap(
    candidate: Sequence[float],
    champion: Sequence[float],
    confidence: float = 0.95,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Percentile interval of mean(candidate - champion) by resampling examples (pairs kept together).

    Seeded, so the same numbers give the same interval every time. For unbounded per-example scores (rewards,
    where no binomial formula applies); for proportions prefer :func:`paired_difference`, which stays honest
    when every resample is the same.
    """
    import numpy as np

    x, y = np.asarray(candidate, dtype=float), np.asarray(champion, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"paired_bootstrap needs two equal non-empty vectors, got {x.shape} and {y.shape}")
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100, got {resamples}")
    z_value(confidence)  # validates it
    diffs = x - y
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(resamples, diffs.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(diffs.mean()), float(low), float(high), int(diffs.size))


def absolute_outcome(low: float, high: float, threshold: float, *, higher_is_better: bool = True) -> str:
    """``metric >= threshold`` (or ``<=`` when lower is better) judged on an interval: pass, fail or insufficient."""
    eps = 1e-12
    if higher_is_better:
        if low >= threshold - eps:
            return PASS
        return FAIL if high < threshold - eps else INSUFFICIENT
    if high <= threshold + eps:
        return PASS
    return FAIL if low > threshold + eps else INSUFFICIENT


def relative_outcome(diff: PairedDifference, delta: float, confidence: float, *, higher_is_better: bool = True) -> str:
    """ "Not worse than the champion by more than ``delta``" on the paired difference (candidate - champion).

    Pass when the whole interval is above ``-delta`` (below ``+delta`` when lower is better); fail when it is
    wholly beyond, or when the observed difference is beyond ``delta`` in the worse direction *and* the exact
    McNemar test finds the candidate worse at the one-sided level (1 - confidence) / 2.
    """
    alpha = (1 - confidence) / 2
    eps = 1e-12
    if higher_is_better:
        if diff.low >= -delta - eps:
            return PASS
        beyond = diff.estimate < -delta - eps and diff.test.p_worse < alpha
        return FAIL if diff.high < -delta - eps or beyond else INSUFFICIENT
    # Lower is better (an unsafe rate): the candidate is worse when its rate is higher, i.e. "better" discordants.
    if diff.high <= delta + eps:
        return PASS
    worse_p = binomial_tail(diff.test.worse, diff.test.better + diff.test.worse)
    beyond = diff.estimate > delta + eps and worse_p < alpha
    return FAIL if diff.low > delta + eps or beyond else INSUFFICIENT


def combine(outcomes: Sequence[str]) -> str:
    """Any fail fails; else any insufficient is insufficient; else pass (an empty list is an error)."""
    if not outcomes:
        raise ValueError("combine() needs at least one outcome")
    unknown = [o for o in outcomes if o not in OUTCOMES]
    if unknown:
        raise ValueError(f"unknown gate outcomes: {unknown}")
    if FAIL in outcomes:
        return FAIL
    return INSUFFICIENT if INSUFFICIENT in outcomes else PASS


def examples_to_decide(estimate: float, sd: float, bound: float, n: int, confidence: float) -> int | None:
    """About how many examples in all, at this estimate and spread, would put the interval clear of ``bound``.

    Normal approximation: the half-width z * sd / sqrt(N) must shrink below |estimate - bound|. None when the
    estimate sits on the bound (no amount of data at this value decides it); at least ``n + 1``.
    """
    gap = abs(estimate - bound)
    if gap < 1e-9:
        return None
    z = z_value(confidence)
    needed = math.ceil((z * max(sd, 1e-9) / gap) ** 2)
    return max(needed, n + 1)


def wilson_examples_to_decide(
    estimate: float, threshold: float, n: int, confidence: float, *, higher_is_better: bool = True
) -> int | None:
    """The fewest examples in all at which a Wilson interval around this same estimate would clear ``threshold``
    (pass or fail: wholly on one side). None when the estimate is on the threshold, or needs over ten million."""
    if abs(estimate - threshold) < 1e-9:
        return None

    def decided(m: int) -> bool:
        interval = wilson(estimate * m, m, confidence)
        verdict = absolute_outcome(interval.low, interval.high, threshold, higher_is_better=higher_is_better)
        return verdict != INSUFFICIENT

    low, high = max(n, 1), max(n, 1)
    while not decided(high):
        low, high = high, high * 2
        if high > 10_000_000:
            return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if decided(middle) else (middle, high)
    return max(high, n + 1)

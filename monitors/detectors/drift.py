"""Drift of reward-model scores and response lengths, and over-optimisation (the Goodhart signal), per version.

Distribution drift: per model version, a reference (its first ``reference_size`` values, or a fixed reference
given) against a sliding window of its last ``window`` values, tested every ``check_every`` values with

* the two-sample Kolmogorov-Smirnov statistic D = sup |F_ref - F_recent| and its asymptotic p-value
  Q_KS((sqrt(Ne) + 0.12 + 0.11 / sqrt(Ne)) D), Ne = n m / (n + m) (Stephens, 1970, JRSS B 32; Numerical
  Recipes, 3rd ed., §14.3.3), implemented here to avoid a dependency on scipy;
* the population stability index PSI = sum_i (a_i - e_i) ln(a_i / e_i) over ``bins`` bins cut at the
  reference's quantiles (Siddiqi, 2006, "Credit Risk Scorecards"; Yurdakul, 2018, "Statistical properties of
  the population stability index").

It fires when p < ``alpha`` **and** PSI > 0.2. The KS p-value says the shift is real but, with large windows,
is also tiny for immaterial shifts; PSI is an effect size (for a normal mean shift of d standard deviations it
is about d^2, so 0.2 is a shift of ~0.45 sd, between the conventional "moderate" 0.1 and "major" 0.25), whose
noise floor here is (bins - 1)(1/n + 1/m) ~ 0.05. Together: significant and material. After an alert the
version is quiet for ``cooldown`` values, and its window starts afresh.

Over-optimisation: per version, scored interactions are grouped in buckets of ``bucket`` with the approvals
(thumbs up = 1, down = 0, rating r -> (r - 1) / 4) that arrive meanwhile. At each bucket's close the last
``buckets_per_window`` buckets are compared with the ones before: it fires when the mean proxy reward rose
(Welch z >= z and standardised difference >= ``min_reward_effect``) while mean approval fell (Welch z <= -z and
drop >= ``min_approval_drop``), each with enough samples.

Attribution: given a :class:`RewardExplainer`, both reward detectors explain one example of an alert's evidence,
the most extreme one, and put the explanation into the alert's ``statistics`` (:func:`attribution_details`):
for ``reward_drift`` the highest-scored interaction among the evidence when the median rose, the lowest when
it fell; for ``over_optimisation`` the highest-scored one (rewards rose while approval fell). To do that
without reading the store, they keep the prompt and response of those candidates in their state: a handful per
version, and none without an explainer. An explainer that fails never stops the detector: the alert is raised
without attribution and a warning names it.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from events.names import FEEDBACK_RECEIVED, INTERACTION_LOGGED
from monitors.base import Finding, Observation

logger = logging.getLogger(__name__)

#: Event ids an alert of the distribution tests carries as evidence (the version's latest values).
EVIDENCE = 20
#: Response tokens an alert's attribution carries (the reward model reads at most 256 tokens anyway).
ATTRIBUTION_TOKENS = 256
#: Response tokens listed as the top ones, by |attribution|.
TOP_TOKENS = 10


class RewardScorer(Protocol):
    """Scores (prompt, response) pairs with a reward model; the daemon wires in the champion."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


class RewardExplainer(Protocol):
    """Explains one score of the scorer's reward model token by token; the daemon wires in integrated gradients
    over the same champion model (``trainers.attribution``).

    ``explain`` returns ``score``, ``baseline_score``, ``delta`` (the attributions' sum minus
    ``score - baseline_score``) and ``tokens``: ``{text, start, end, part, value}`` for every token the model
    read, ``part`` being ``prompt``, ``response`` or ``special``; a response token's ``text`` is the response's
    own characters ``response[start:end]``.
    """

    def explain(self, prompt: str, response: str) -> Mapping[str, Any]: ...


def attribution_details(event_id: str, explained: Mapping[str, Any]) -> dict[str, Any]:
    """What an alert carries of an explanation: ``attribution`` (the response's tokens with their values, at
    most :data:`ATTRIBUTION_TOKENS`, the sum over the prompt's tokens, the scores and the completeness gap)
    and ``top_tokens`` (the :data:`TOP_TOKENS` response tokens with the largest |value|, largest first)."""
    tokens = list(explained["tokens"])
    response = [
        {"text": str(t["text"]), "start": int(t["start"]), "end": int(t["end"]), "value": round(float(t["value"]), 7)}
        for t in tokens
        if t.get("part") == "response"
    ]
    top = sorted(response, key=lambda t: -abs(t["value"]))[:TOP_TOKENS]
    return {
        "attribution": {
            "event_id": event_id,
            "tokens": response[:ATTRIBUTION_TOKENS],
            "response_tokens": len(response),
            "prompt_value": round(sum(float(t["value"]) for t in tokens if t.get("part") == "prompt"), 7),
            "score": float(explained["score"]),
            "baseline_score": float(explained["baseline_score"]),
            "delta": float(explained["delta"]),
        },
        "top_tokens": [{"text": t["text"], "value": t["value"]} for t in top],
    }


def with_attribution(finding: Finding, explainer: RewardExplainer | None, example: Sequence[str] | None) -> Finding:
    """``finding`` with the explanation of ``example`` (event id, prompt, response) in its statistics; the
    finding as it is when there is no explainer or example, or when explaining fails (a warning says so)."""
    if explainer is None or not example:
        return finding
    event_id, prompt, response = example
    try:
        details = attribution_details(event_id, explainer.explain(prompt, response))
    except Exception:  # any failure of the model or its answer: the alert goes out without attribution
        logger.warning(
            "%s: alert %s raised without attribution: explaining %s failed",
            finding.detector,
            finding.anomaly_id,
            event_id,
            exc_info=True,
        )
        return finding
    return replace(finding, statistics={**finding.statistics, **details})


def prompt_text(payload: Mapping[str, Any]) -> str:
    """The prompt of an interaction: ``prompt``, else its messages as ``role: content`` lines."""
    if isinstance(payload.get("prompt"), str):
        return payload["prompt"]
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in payload.get("messages") or [])


def kolmogorov_sf(lam: float) -> float:
    """Q_KS(lambda) = 2 sum_{j>=1} (-1)^(j-1) exp(-2 j^2 lambda^2), the limiting tail of sqrt(Ne) D."""
    if lam < 0.2:
        return 1.0
    total = 0.0
    for j in range(1, 101):
        term = 2.0 * (-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
    return min(max(total, 0.0), 1.0)


def ks_two_sample(reference: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(D, p-value) of the two-sample KS test; ``reference`` must be sorted."""
    values = np.sort(values)
    grid = np.concatenate([reference, values])
    d = float(
        np.max(
            np.abs(
                np.searchsorted(reference, grid, "right") / len(reference)
                - np.searchsorted(values, grid, "right") / len(values)
            )
        )
    )
    ne = len(reference) * len(values) / (len(reference) + len(values))
    return d, kolmogorov_sf((math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d)


@dataclass(frozen=True)
class PsiBins:
    """A reference's quantile bins (ties merged) and its share in each, clipped at ``eps``: what PSI compares
    with, computed once per reference (np.quantile was a fifth of the length-drift detector's time)."""

    edges: np.ndarray
    expected: np.ndarray
    eps: float

    @classmethod
    def of(cls, reference: np.ndarray, bins: int = 10, eps: float = 1e-4) -> PsiBins:
        """Bins of ``reference``, which must be sorted."""
        edges = np.unique(np.quantile(reference, [i / bins for i in range(1, bins)]))
        expected = np.bincount(np.searchsorted(edges, reference, "left"), minlength=len(edges) + 1) / len(reference)
        return cls(edges, np.clip(expected, eps, None), eps)

    def psi(self, values: np.ndarray) -> float:
        actual = np.bincount(np.searchsorted(self.edges, values, "left"), minlength=len(self.edges) + 1) / len(values)
        actual = np.clip(actual, self.eps, None)
        return float(np.sum((actual - self.expected) * np.log(actual / self.expected)))


def psi(reference: np.ndarray, values: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """PSI of ``values`` against the reference's quantile bins (ties merged); ``reference`` sorted."""
    return PsiBins.of(reference, bins, eps).psi(values)


@dataclass(frozen=True)
class DriftConfig:
    """Parameters. Measured on synthetic streams (tests/unit/test_drift_detectors.py, three versions): no alarm
    over 50,000 clean events (3 seeds each); a version whose values shift by one standard deviation is caught in
    a median of 149 (rewards) / 136 (lengths), at most 163 / 202, of its values after the incident starts (23
    seeds; the tests hold it to 250). Reward delays include up to ``batch_size`` fleet responses."""

    reference_size: int = 500  # the version's first values, when no fixed reference is given
    window: int = 300  # the sliding window of its recent values
    check_every: int = 25  # test every this many values
    alpha: float = 1e-4  # KS p-value below which the shift is significant
    psi_threshold: float = 0.2  # and PSI above which it is material
    bins: int = 10
    cooldown: int = 1500  # values of the version without a new alert after one
    batch_size: int = 16  # responses scored together (reward drift only)


def _copy_versions(versions: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the drift tests' per-version state, which is numbers and flat lists of numbers or ids;
    state() and its JSON took 1.26 ms per monitor step with copy.deepcopy on the bench stream, 0.5 ms with this."""
    return {key: {k: list(x) if isinstance(x, list) else x for k, x in v.items()} for key, v in versions.items()}


def _keep_extremes(version: dict[str, Any], entry: list[Any]) -> None:
    """Keep, per version, the candidates for the evidence's highest (``high``) and lowest (``low``) value:
    [index, value, event id, prompt, response], each list in index order and strictly decreasingly extreme, so
    its head is the extreme of the last :data:`EVIDENCE` values (a monotonic queue: about ln 20 ~ 3 each)."""
    oldest = version["seen"] - EVIDENCE  # values at or before this index have left the evidence
    for side, sign in (("high", 1.0), ("low", -1.0)):
        kept = [e for e in version.get(side, ()) if e[0] > oldest and sign * e[1] > sign * entry[1]]
        kept.append(entry)
        version[side] = kept


class _DistributionDrift:
    """The per-version reference/window test; subclasses feed values with :meth:`_record`."""

    name = "distribution_drift"
    quantity = "value"

    def __init__(self, config: DriftConfig | None = None, reference: Sequence[float] | None = None) -> None:
        self.config = config or DriftConfig()
        fixed = np.sort(np.asarray(reference, dtype=float)) if reference is not None else None
        self._fixed = (fixed, PsiBins.of(fixed, self.config.bins)) if fixed is not None else None
        self._versions: dict[str, dict[str, Any]] = {}
        self._references: dict[str, tuple[np.ndarray, PsiBins]] = {}  # derived: each version's sorted reference

    def _record(
        self, key: str, event_id: str, value: float, trigger_seq: int, example: Sequence[str] | None = None
    ) -> list[Finding]:
        """Record one value; ``example`` (prompt, response) is kept while it is the evidence's most extreme."""
        v = self._versions.setdefault(
            key, {"seen": 0, "reference": [], "recent": [], "ids": [], "since": 0, "quiet_until": 0}
        )
        v["seen"] += 1
        if self._fixed is None and len(v["reference"]) < self.config.reference_size:
            v["reference"].append(value)
            return []
        # in place: copying the 300-value window for every value cost ~1.3 µs an event (12% of this detector)
        recent, ids = v["recent"], v["ids"]
        recent.append(value)
        del recent[: -self.config.window]
        ids.append(event_id)
        del ids[:-EVIDENCE]
        if example is not None:
            _keep_extremes(v, [v["seen"], value, event_id, *example])
        v["since"] += 1
        if (
            len(v["recent"]) < self.config.window
            or v["since"] < self.config.check_every
            or v["seen"] < v["quiet_until"]
        ):
            return []
        v["since"] = 0
        cached = self._fixed or self._references.get(key)
        if cached is None:
            ordered = np.sort(np.asarray(v["reference"], dtype=float))
            cached = self._references[key] = (ordered, PsiBins.of(ordered, self.config.bins))
        reference, bins = cached
        recent = np.asarray(v["recent"], dtype=float)
        d, p_value = ks_two_sample(reference, recent)
        index = bins.psi(recent)
        if p_value >= self.config.alpha or index <= self.config.psi_threshold:
            return []
        shift = float(np.median(recent) - np.median(reference))
        finding = Finding(
            detector=self.name,
            subject=f"model:{key}",
            severity="critical" if index > 0.5 else "warning",
            summary=f"{self.quantity} of {key} drifted (KS D={d:.2f}, PSI={index:.2f}, median {shift:+.3g})",
            trigger_seq=trigger_seq,
            window={"model": key, "reference": len(reference), "recent": len(recent), "version_values": v["seen"]},
            statistics={
                "ks_d": round(d, 4),
                "ks_p_value": p_value,
                "psi": round(index, 4),
                "alpha": self.config.alpha,
                "psi_threshold": self.config.psi_threshold,
                "median_shift": shift,
            },
            evidence=tuple(v["ids"]),
        )
        finding = self._explained(finding, v, shift)
        v["quiet_until"] = v["seen"] + self.config.cooldown
        v["recent"], v["ids"] = [], []
        for side in ("high", "low"):
            v.pop(side, None)
        return [finding]

    def _explained(self, finding: Finding, version: dict[str, Any], shift: float) -> Finding:
        """The finding with attribution, where a subclass explains its values (none here)."""
        return finding

    def state(self) -> dict[str, Any]:
        return {"versions": _copy_versions(self._versions)}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._versions, self._references = _copy_versions(state.get("versions", {})), {}


class _Scoring:
    """Batches interactions for a :class:`RewardScorer`; the pending ones are part of the state."""

    scorer: RewardScorer
    _pending: list[dict[str, Any]]

    def _scored(self, observation: Observation, batch_size: int) -> list[tuple[str, str, float, tuple[str, str]]]:
        """(version key, event id, score, (prompt, response)) of each interaction scored now."""
        event, model = observation.event.event, observation.model
        if event.type != INTERACTION_LOGGED or model is None or not isinstance(event.payload.get("response"), str):
            return []
        key, text = f"{model[0]}@{model[1]}", event.payload["response"]
        self._pending.append(
            {"model": key, "event_id": event.event_id, "prompt": prompt_text(event.payload), "response": text}
        )
        if len(self._pending) < batch_size:
            return []
        batch, self._pending = self._pending, []
        scores = self.scorer.score([b["prompt"] for b in batch], [b["response"] for b in batch])
        return [
            (b["model"], b["event_id"], float(s), (b["prompt"], b["response"]))
            for b, s in zip(batch, scores, strict=True)
        ]


class RewardDriftDetector(_DistributionDrift, _Scoring):
    name = "reward_drift"
    quantity = "reward score"

    def __init__(
        self,
        scorer: RewardScorer,
        config: DriftConfig | None = None,
        reference: Sequence[float] | None = None,
        explainer: RewardExplainer | None = None,
    ) -> None:
        super().__init__(config, reference)
        self.scorer = scorer
        self.explainer = explainer
        self._pending = []

    def observe(self, observation: Observation) -> list[Finding]:
        scored = self._scored(observation, self.config.batch_size)
        keep = self.explainer is not None
        return [
            f
            for key, event_id, score, texts in scored
            for f in self._record(key, event_id, score, observation.event.seq, texts if keep else None)
        ]

    def _explained(self, finding: Finding, version: dict[str, Any], shift: float) -> Finding:
        # The example furthest out in the direction the scores moved: the highest when the median rose.
        candidates = version.get("high" if shift >= 0 else "low") or []
        example = candidates[0][2:5] if candidates else None
        return with_attribution(finding, self.explainer, example)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "pending": [dict(p) for p in self._pending]}

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        self._pending = [dict(p) for p in state.get("pending", [])]


class LengthDriftDetector(_DistributionDrift):
    """The same test on response lengths in characters (no scorer, no batching)."""

    name = "response_length_drift"
    quantity = "response length"

    def observe(self, observation: Observation) -> list[Finding]:
        event, model = observation.event.event, observation.model
        if event.type != INTERACTION_LOGGED or model is None or not isinstance(event.payload.get("response"), str):
            return []
        return self._record(
            f"{model[0]}@{model[1]}", event.event_id, float(len(event.payload["response"])), observation.event.seq
        )


@dataclass(frozen=True)
class OverOptimisationConfig:
    """Parameters. Measured on synthetic streams (tests/unit/test_drift_detectors.py: three versions, half the
    interactions get feedback, approval 75%): no alarm over 50,000 clean events (3 seeds); a version whose
    reward rises by one standard deviation while approval falls to 40% is caught in a median of 170 and at
    most 307 of its interactions after the incident starts (20 seeds; the tests hold it to 350)."""

    bucket: int = 50  # scored interactions per bucket
    buckets_per_window: int = 6  # the recent and the previous window, in buckets
    min_scored: int = 200  # scored interactions in each window
    min_feedback: int = 60  # approvals in each window
    z: float = 3.0  # Welch z that both changes must pass (in their direction)
    min_reward_effect: float = 0.2  # reward rise, in pooled standard deviations
    min_approval_drop: float = 0.08  # approval fall, absolute (on [0, 1])
    cooldown: int = 1500  # scored interactions of the version without a new alert after one
    batch_size: int = 16


def _approval(payload: Mapping[str, Any]) -> float | None:
    kind, value = payload.get("kind"), payload.get("value")
    if kind == "thumbs" and value in ("up", "down"):
        return 1.0 if value == "up" else 0.0
    if kind == "rating" and isinstance(value, int) and 1 <= value <= 5:
        return (value - 1) / 4
    return None


def _new_bucket() -> dict[str, Any]:
    return {"r": [0, 0.0, 0.0], "a": [0, 0.0, 0.0], "top": [None, None], "neg": []}  # [n, sum, sum of squares]


def _pool(buckets: list[dict[str, Any]], field: str) -> tuple[int, float, float]:
    """(n, mean, sample variance) of one field over buckets."""
    n = sum(b[field][0] for b in buckets)
    s = sum(b[field][1] for b in buckets)
    ss = sum(b[field][2] for b in buckets)
    mean = s / n if n else 0.0
    return n, mean, max(ss - n * mean * mean, 0.0) / (n - 1) if n > 1 else 0.0


def _welch(a: tuple[int, float, float], b: tuple[int, float, float]) -> float:
    """z of mean(a) - mean(b) with Welch's unpooled standard error (large samples: normal reference)."""
    se = math.sqrt(a[2] / a[0] + b[2] / b[0])
    return (a[1] - b[1]) / se if se > 0 else 0.0


class OverOptimisationDetector(_Scoring):
    name = "over_optimisation"

    def __init__(
        self,
        scorer: RewardScorer,
        config: OverOptimisationConfig | None = None,
        explainer: RewardExplainer | None = None,
    ) -> None:
        self.scorer = scorer
        self.config = config or OverOptimisationConfig()
        self.explainer = explainer
        self._versions: dict[str, dict[str, Any]] = {}
        self._pending = []

    def _version(self, key: str) -> dict[str, Any]:
        return self._versions.setdefault(key, {"scored": 0, "quiet_until": 0, "open": _new_bucket(), "closed": []})

    def observe(self, observation: Observation) -> list[Finding]:
        event = observation.event.event
        if event.type == FEEDBACK_RECEIVED and observation.model is not None:
            approval = _approval(event.payload)
            if approval is not None:
                bucket = self._version("{}@{}".format(*observation.model))["open"]
                bucket["a"] = [bucket["a"][0] + 1, bucket["a"][1] + approval, bucket["a"][2] + approval * approval]
                if approval <= 0.25 and len(bucket["neg"]) < 2:
                    bucket["neg"].append(event.event_id)
            return []
        findings = []
        k = self.config.buckets_per_window
        for key, event_id, reward, texts in self._scored(observation, self.config.batch_size):
            v = self._version(key)
            bucket = v["open"]
            bucket["r"] = [bucket["r"][0] + 1, bucket["r"][1] + reward, bucket["r"][2] + reward * reward]
            if bucket["top"][0] is None or reward > bucket["top"][0]:
                bucket["top"] = [reward, event_id]
                if self.explainer is not None:
                    bucket["text"] = list(texts)  # the prompt and response of the bucket's top, to explain
            v["scored"] += 1
            if bucket["r"][0] >= self.config.bucket:
                v["closed"] = [*v["closed"][-(2 * k - 1) :], bucket]
                v["open"] = _new_bucket()
                for older in v["closed"][:-k]:
                    older.pop("text", None)  # past the recent window: never explained, not kept
                findings.extend(self._test(key, v, observation.event.seq))
        return findings

    def _test(self, key: str, v: dict[str, Any], trigger_seq: int) -> list[Finding]:
        c, k = self.config, self.config.buckets_per_window
        if len(v["closed"]) < 2 * k or v["scored"] < v["quiet_until"]:
            return []
        before, recent = v["closed"][:k], v["closed"][k:]
        r0, r1, a0, a1 = _pool(before, "r"), _pool(recent, "r"), _pool(before, "a"), _pool(recent, "a")
        if min(r0[0], r1[0]) < c.min_scored or min(a0[0], a1[0]) < c.min_feedback:
            return []
        z_reward, z_approval = _welch(r1, r0), _welch(a1, a0)
        effect = (r1[1] - r0[1]) / math.sqrt((r0[2] + r1[2]) / 2) if r0[2] + r1[2] > 0 else 0.0
        drop = a0[1] - a1[1]
        if z_reward < c.z or effect < c.min_reward_effect or z_approval > -c.z or drop < c.min_approval_drop:
            return []
        v["quiet_until"] = v["scored"] + c.cooldown
        evidence = [e for b in recent for e in (*b["neg"], b["top"][1]) if e is not None][-20:]
        # Rewards rose: the example explained is the highest-scored of the recent window.
        explainable = [b for b in recent if b["top"][0] is not None and b.get("text")]
        top = max(explainable, key=lambda b: b["top"][0], default=None)
        example = (top["top"][1], *top["text"]) if top is not None else None
        finding = Finding(
            detector=self.name,
            subject=f"model:{key}",
            severity="critical",
            summary=f"{key}: proxy reward rose {r1[1] - r0[1]:+.3g} ({effect:.2f} sd) while human approval fell {a0[1]:.0%} -> {a1[1]:.0%}",
            trigger_seq=trigger_seq,
            window={
                "model": key,
                "buckets": k,
                "bucket": c.bucket,
                "scored": r1[0],
                "approvals": a1[0],
                "version_scored": v["scored"],
            },
            statistics={
                "reward_before": r0[1],
                "reward_recent": r1[1],
                "reward_z": round(z_reward, 3),
                "reward_effect": round(effect, 3),
                "approval_before": round(a0[1], 4),
                "approval_recent": round(a1[1], 4),
                "approval_z": round(z_approval, 3),
                "z": c.z,
            },
            evidence=tuple(evidence),
        )
        return [with_attribution(finding, self.explainer, example)]

    def state(self) -> dict[str, Any]:
        return {"versions": copy.deepcopy(self._versions), "pending": [dict(p) for p in self._pending]}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._versions = copy.deepcopy(dict(state.get("versions", {})))
        self._pending = [dict(p) for p in state.get("pending", [])]

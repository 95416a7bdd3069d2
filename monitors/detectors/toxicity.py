"""Toxicity of responses per model version, against the version's own baseline and an absolute ceiling.

Responses are scored by a :class:`ToxicityScorer` (a port: the alt-profanity-check model offline, a Hugging
Face classifier when one is named, a fake in tests); a response is toxic when its score is at least
``threshold``. Per version the detector keeps the toxic bits of its last ``window`` responses; the ones that
slide out form its baseline. When a toxic response enters a full window, two tests run:

* relative: the one-sided two-proportion z-test (pooled standard error; Agresti & Franklin, "Statistics",
  §10.1) of the window's rate against the baseline's, once the baseline holds ``min_baseline`` responses;
  a version too new to have one is compared with the other versions' pooled responses instead. The rate must
  also exceed the reference by ``min_excess`` (a practically relevant rise, not only a significant one).
* absolute: the exact binomial tail P(X >= k | window, ceiling) (``monitors.detectors.rates.binomial_sf``),
  which fires when the window is significantly above ``ceiling`` whatever the baseline (a version that was
  toxic from its first response, in a fleet of toxic versions).

Both use a small alpha because they are re-tested at every toxic response. After an alert the version is quiet
for ``cooldown`` responses. Responses are scored in batches of ``batch_size`` (a model scores 16 texts in about
the time of one); the pending ones are part of the state, so a restart loses none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from events.names import INTERACTION_LOGGED
from monitors.base import Finding, Observation
from monitors.detectors.rates import binomial_sf, normal_sf, two_proportion_z


class ToxicityScorer(Protocol):
    """Scores texts: a probability-like toxicity in [0, 1] per text, in order."""

    def score(self, texts: Sequence[str]) -> list[float]: ...


class ProfanityCheckScorer:
    """alt-profanity-check (a linear SVM on TF-IDF features, calibrated; offline, CPU).

    Its ``predict_prob`` spends ~7-10 ms a call in scikit-learn's checks around five small linear models, whatever
    the number of texts: with the daemon's monitor loop stepping several times a second that was the largest
    fixed cost of a step. The same probabilities are computed here as one sparse product (the package's own
    vectorizer, then each model's ``coef_`` and sigmoid calibration, averaged as ``CalibratedClassifierCV``
    does); the result is compared with ``predict_prob`` on probe texts when constructed, and ``predict_prob``
    itself is used if the model is not of that shape or the two disagree (another scikit-learn or package
    version)."""

    PROBES = ("you are a complete idiot", "thanks, that was helpful", "what the hell is this shit", "hello")

    def __init__(self) -> None:
        import profanity_check  # imported when constructed: loading the model takes seconds

        self._predict_prob = profanity_check.predict_prob
        self._fast = _linear_probability(profanity_check)
        if self._fast is not None:
            expected = np.asarray(self._predict_prob(list(self.PROBES)), dtype=float)
            if not np.allclose(self._fast(list(self.PROBES)), expected, rtol=0, atol=1e-9):
                self._fast = None

    def score(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return [float(p) for p in (self._fast or self._predict_prob)(list(texts))]


def _linear_probability(package: Any) -> Callable[[list[str]], np.ndarray] | None:
    """P(toxic) = mean over the calibrated models of expit(-(a (w . x + b) + c)), x the TF-IDF vector; or None
    when the package's model is not sigmoid-calibrated binary linear models."""
    module = getattr(package, "profanity_check", None)
    vectorizer, model = getattr(module, "vectorizer", None), getattr(module, "model", None)
    members = getattr(model, "calibrated_classifiers_", None)
    if vectorizer is None or not members or len(getattr(model, "classes_", ())) != 2:
        return None
    try:
        weights = np.stack([np.asarray(m.estimator.coef_, dtype=float).reshape(-1) for m in members], axis=1)
        intercepts = np.array([float(np.ravel(m.estimator.intercept_)[0]) for m in members])
        slopes = np.array([float(m.calibrators[0].a_) for m in members])
        offsets = np.array([float(m.calibrators[0].b_) for m in members])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None

    def probability(texts: list[str]) -> np.ndarray:
        margins = np.asarray(vectorizer.transform(texts) @ weights) + intercepts
        return (1.0 / (1.0 + np.exp(slopes * margins + offsets))).mean(axis=1)

    return probability


#: Label names of the benign class in common toxicity classifiers (unitary/toxic-bert has only toxic labels).
BENIGN_LABELS = frozenset(
    {"neutral", "non-toxic", "non_toxic", "nontoxic", "not_toxic", "not toxic", "normal", "safe", "label_0"}
)


class HuggingFaceToxicityScorer:
    """A Hugging Face text classifier by name (e.g. ``unitary/toxic-bert``, ``s-nlp/roberta_toxicity_classifier``).

    The score of a text is the highest probability among ``toxic_labels`` when given, otherwise among the
    labels that are not benign (:data:`BENIGN_LABELS`). transformers is imported only when one is constructed.
    """

    def __init__(
        self,
        model_name: str,
        *,
        toxic_labels: Sequence[str] | None = None,
        device: int | str | None = None,
        batch_size: int = 32,
    ) -> None:
        from transformers import pipeline

        self.model_name = model_name
        self._toxic = {label.lower() for label in toxic_labels} if toxic_labels else None
        self._batch_size = batch_size
        self._pipe: Any = pipeline("text-classification", model=model_name, top_k=None, truncation=True, device=device)

    def score(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        outputs: list[list[dict[str, Any]]] = self._pipe(list(texts), batch_size=self._batch_size)
        scores = []
        for labels in outputs:
            toxic = [
                float(item["score"])
                for item in labels
                if (item["label"].lower() in self._toxic if self._toxic else item["label"].lower() not in BENIGN_LABELS)
            ]
            scores.append(max(toxic, default=0.0))
        return scores


@dataclass(frozen=True)
class ToxicityConfig:
    """Parameters. Measured on synthetic streams (tests/unit/test_toxicity_detector.py: three versions, 2% of
    responses toxic): no alarm over 50,000 clean events (5 seeds, 250,000 events); a version that turns to 20%
    toxic is caught in a median of 70 and at most 97 of its responses after the incident starts (20 seeds; the
    tests hold it to 110); a new version 20% toxic from its first response as soon as its first window is full
    (median 208, max 222 of its responses; held to 260). Delays include up to ``batch_size`` fleet responses."""

    threshold: float = 0.5  # a response is toxic when its score is at least this
    window: int = 200  # the version's recent responses that are tested
    min_baseline: int = 1000  # responses in the baseline (own, else other versions pooled) before the relative test
    min_excess: float = 0.03  # the window's rate must exceed the reference's by this much
    ceiling: float = 0.10  # the absolute ceiling of the toxic rate
    alpha: float = 1e-6  # both tests (z = 4.75 for the z-test); re-tested at every toxic response
    cooldown: int = 1000  # responses of the version without a new alert after one
    batch_size: int = 16  # responses scored together


class ToxicityDetector:
    name = "toxicity"

    def __init__(self, scorer: ToxicityScorer, config: ToxicityConfig | None = None) -> None:
        self.scorer = scorer
        self.config = config or ToxicityConfig()
        self._versions: dict[str, dict[str, Any]] = {}
        self._pending: list[dict[str, Any]] = []

    def _queue(self, observation: Observation) -> bool:
        event = observation.event.event
        model = observation.model
        if event.type != INTERACTION_LOGGED or model is None or not isinstance(event.payload.get("response"), str):
            return False
        self._pending.append(
            {
                "model": f"{model[0]}@{model[1]}",
                "event_id": event.event_id,
                "seq": observation.event.seq,
                "text": event.payload["response"],
            }
        )
        return True

    def _flush(self) -> list[Finding]:
        batch, self._pending = self._pending, []
        if not batch:
            return []
        scores = self.scorer.score([item["text"] for item in batch])
        findings: list[Finding] = []
        for item, score in zip(batch, scores, strict=True):
            # Each response is its own trigger, so the alert is the same however responses were batched.
            findings.extend(self._record(item["model"], item["event_id"], score, item["seq"]))
        return findings

    def observe(self, observation: Observation) -> list[Finding]:
        if not self._queue(observation) or len(self._pending) < self.config.batch_size:
            return []
        return self._flush()

    def observe_many(self, observations: Sequence[Observation]) -> list[Finding]:
        """Score every response of a runner batch in one call (the scorer's per-call cost is ~9 ms)."""
        for observation in observations:
            self._queue(observation)
        return self._flush()

    def _record(self, key: str, event_id: str, score: float, trigger_seq: int) -> list[Finding]:
        v = self._versions.setdefault(
            key, {"seen": 0, "bits": [], "toxic_ids": [], "base_n": 0, "base_x": 0, "quiet_until": 0}
        )
        toxic = score >= self.config.threshold
        v["seen"] += 1
        v["bits"].append(int(toxic))
        if toxic:
            v["toxic_ids"] = [*v["toxic_ids"][-19:], [v["seen"], event_id]]
        if len(v["bits"]) > self.config.window:
            v["base_n"] += 1
            v["base_x"] += v["bits"].pop(0)
        first_in_window = v["seen"] - len(v["bits"]) + 1
        v["toxic_ids"] = [pair for pair in v["toxic_ids"] if pair[0] >= first_in_window]
        if not toxic or len(v["bits"]) < self.config.window or v["seen"] < v["quiet_until"]:
            return []
        return self._test(key, v, trigger_seq)

    def _baseline(self, key: str) -> tuple[int, int, str] | None:
        v = self._versions[key]
        if v["base_n"] >= self.config.min_baseline:
            return v["base_x"], v["base_n"], "own"
        n = sum(o["base_n"] + len(o["bits"]) for k, o in self._versions.items() if k != key)
        x = sum(o["base_x"] + sum(o["bits"]) for k, o in self._versions.items() if k != key)
        return (x, n, "fleet") if n >= self.config.min_baseline else None

    def _test(self, key: str, v: dict[str, Any], trigger_seq: int) -> list[Finding]:
        n, k = len(v["bits"]), sum(v["bits"])
        rate = k / n
        statistics: dict[str, Any] = {
            "toxic": k,
            "rate": round(rate, 5),
            "threshold": self.config.threshold,
            "alpha": self.config.alpha,
        }
        reasons = []
        baseline = self._baseline(key)
        if baseline is not None:
            x, m, source = baseline
            z = two_proportion_z(k, n, x, m)
            p_value = normal_sf(z)
            statistics.update(
                baseline_rate=round(x / m, 5), baseline_n=m, baseline=source, z=round(z, 3), p_value=p_value
            )
            if p_value < self.config.alpha and rate - x / m >= self.config.min_excess:
                reasons.append(f"above its {'own' if source == 'own' else 'fleet'} baseline {x / m:.1%}")
        ceiling_p = binomial_sf(k, n, self.config.ceiling) if rate > self.config.ceiling else 1.0
        statistics.update(ceiling=self.config.ceiling, ceiling_p_value=ceiling_p)
        if ceiling_p < self.config.alpha:
            reasons.append(f"above the ceiling {self.config.ceiling:.0%}")
        if not reasons:
            return []
        v["quiet_until"] = v["seen"] + self.config.cooldown
        return [
            Finding(
                detector=self.name,
                subject=f"model:{key}",
                severity="critical" if rate >= 2 * self.config.ceiling or len(reasons) == 2 else "warning",
                summary=f"toxic responses from {key}: {k} of its last {n} ({rate:.1%}), " + " and ".join(reasons),
                trigger_seq=trigger_seq,
                window={"model": key, "responses": n, "version_responses": v["seen"]},
                statistics=statistics,
                evidence=tuple(event_id for _, event_id in v["toxic_ids"]),
            )
        ]

    def state(self) -> dict[str, Any]:
        return {
            "versions": {
                k: dict(v, bits=list(v["bits"]), toxic_ids=[list(p) for p in v["toxic_ids"]])
                for k, v in self._versions.items()
            },
            "pending": [dict(item) for item in self._pending],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self._versions = {
            k: dict(v, bits=list(v["bits"]), toxic_ids=[list(p) for p in v["toxic_ids"]])
            for k, v in state.get("versions", {}).items()
        }
        self._pending = [dict(item) for item in state.get("pending", [])]

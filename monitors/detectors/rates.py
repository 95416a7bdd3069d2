"""Hallucination reports per model version, against the fleet's pooled rate; and the rate tests it shares.

Each logged interaction is a Bernoulli trial: is it flagged ``hallucination`` by feedback (``kind: flag``,
``value.category: hallucination``, joined to that interaction) or not. Per version the detector keeps its last
``window`` interactions; a flag on one of them marks it (a second flag on the same interaction counts once, so a
single user cannot inflate the rate by repeating a flag). Interactions that slide out of the window are
*matured* (their flags have had time to arrive) and are added to the version's history. The reference rate is
the matured rate of the other versions pooled (the version's own when it is alone), floored; the version's
window is tested with the exact one-sided binomial tail P(X >= k | n, p0) (e.g. Agresti, "Categorical Data
Analysis", 3rd ed., §1.4), at a small alpha because it is re-tested at every flag, and must also be
``min_ratio`` times the reference. After an alert the version is quiet for ``cooldown`` interactions.

Flags about an interaction that already left the window are not counted: the window is the period in which
reports are expected to arrive; with a window of 300 per version that is a generous delay.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from events.names import FEEDBACK_RECEIVED, INTERACTION_LOGGED
from monitors.base import Finding, Observation


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed exactly in log space (fine for n up to a few thousand)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    lg_n1 = math.lgamma(n + 1)
    total = 0.0
    for i in range(k, n + 1):
        term = math.exp(lg_n1 - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        total += term
        if term < total * 1e-17 and i > n * p:  # the tail past the mode has become negligible
            break
    return min(total, 1.0)


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> float:
    """The z statistic of H1: p1 > p2 with the pooled standard error (the classical two-proportion z-test,
    e.g. Agresti & Franklin, "Statistics", §10.1); 0 when it is undefined."""
    if n1 <= 0 or n2 <= 0:
        return 0.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    return (x1 / n1 - x2 / n2) / se if se > 0 else 0.0


def normal_sf(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclass(frozen=True)
class HallucinationReportConfig:
    """Parameters. Measured on synthetic streams (tests/unit/test_rate_detectors.py: three versions, 2% of
    interactions flagged, after up to 30 events): no alarm over 50,000 clean events (6 seeds, ~300,000 events);
    a version that turns to 10% is caught in a median of 169 and at most 309 of its interactions after the
    incident starts (30 seeds); the tests hold it to 350."""

    window: int = 300  # the version's recent interactions whose flags are counted
    min_window: int = 200  # the window must hold this many before it is tested
    min_reference: int = 2000  # matured interactions before a reference rate is trusted
    floor_rate: float = 0.005  # the reference never goes below this
    alpha: float = 1e-5  # the binomial tail that alarms (re-tested at every flag)
    min_ratio: float = 2.0  # and the window's rate must be this many times the reference
    cooldown: int = 2000  # interactions of the version without a new alert after one


def _is_hallucination_flag(observation: Observation) -> bool:
    payload = observation.event.event.payload
    value = payload.get("value")
    return payload.get("kind") == "flag" and isinstance(value, Mapping) and value.get("category") == "hallucination"


class HallucinationReportDetector:
    name = "hallucination_reports"

    def __init__(self, config: HallucinationReportConfig | None = None) -> None:
        self.config = config or HallucinationReportConfig()
        self._versions: dict[str, dict[str, Any]] = {}
        # request_id -> [interaction event id, flag event id or None], oldest first, per version
        self._windows: dict[str, OrderedDict[str, list[str | None]]] = {}

    def _version(self, key: str) -> dict[str, Any]:
        if key not in self._versions:
            self._versions[key] = {"seen": 0, "flags": 0, "matured": 0, "matured_flags": 0, "quiet_until": 0}
            self._windows[key] = OrderedDict()
        return self._versions[key]

    def _reference(self, key: str) -> tuple[float, int] | None:
        n = sum(v["matured"] for k, v in self._versions.items() if k != key)
        x = sum(v["matured_flags"] for k, v in self._versions.items() if k != key)
        if n < self.config.min_reference:  # alone (or nearly): the version's own matured history
            n, x = self._versions[key]["matured"], self._versions[key]["matured_flags"]
            if n < self.config.min_reference:
                return None
        return max(x / n, self.config.floor_rate), n

    def observe(self, observation: Observation) -> list[Finding]:
        event = observation.event.event
        model = observation.model
        if model is None or event.request_id is None:
            return []
        key = f"{model[0]}@{model[1]}"
        if event.type == INTERACTION_LOGGED:
            v = self._version(key)
            window = self._windows[key]
            if event.request_id in window:
                return []  # a duplicate log of the same interaction
            window[event.request_id] = [event.event_id, None]
            v["seen"] += 1
            if len(window) > self.config.window:
                _, (_, flag) = window.popitem(last=False)
                v["matured"] += 1
                v["matured_flags"] += int(flag is not None)
                v["flags"] -= int(flag is not None)
            return []
        if (
            event.type != FEEDBACK_RECEIVED
            or observation.interaction is None
            or not _is_hallucination_flag(observation)
        ):
            return []
        v = self._version(key)
        slot = self._windows[key].get(event.request_id)
        if slot is None or slot[1] is not None:
            return []  # about an interaction out of the window, or already flagged
        slot[1] = event.event_id
        v["flags"] += 1
        return self._test(key, v, observation)

    def _test(self, key: str, v: dict[str, Any], observation: Observation) -> list[Finding]:
        window = self._windows[key]
        n, k = len(window), v["flags"]
        reference = self._reference(key)
        if n < self.config.min_window or v["seen"] < v["quiet_until"] or reference is None:
            return []
        p0, reference_n = reference
        rate = k / n
        if rate < self.config.min_ratio * p0:
            return []
        p_value = binomial_sf(k, n, p0)
        if p_value >= self.config.alpha:
            return []
        v["quiet_until"] = v["seen"] + self.config.cooldown
        flagged = [(slot[1], slot[0]) for slot in window.values() if slot[1] is not None]
        evidence = tuple(e for pair in flagged[-10:] for e in pair if e is not None)
        return [
            Finding(
                detector=self.name,
                subject=f"model:{key}",
                severity="critical" if rate >= 3 * p0 else "warning",
                summary=f"hallucination reports on {key}: {k} of its last {n} interactions ({rate:.1%}; fleet {p0:.1%})",
                trigger_seq=observation.event.seq,
                window={"model": key, "interactions": n, "version_interactions": v["seen"]},
                statistics={
                    "flags": k,
                    "rate": round(rate, 5),
                    "reference_rate": round(p0, 5),
                    "reference_interactions": reference_n,
                    "p_value": p_value,
                    "alpha": self.config.alpha,
                    "test": "binomial upper tail",
                },
                evidence=evidence,
            )
        ]

    def state(self) -> dict[str, Any]:
        return {
            "versions": {k: dict(v) for k, v in self._versions.items()},
            "windows": {k: [[rid, *slot] for rid, slot in w.items()] for k, w in self._windows.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self._versions = {k: dict(v) for k, v in state.get("versions", {}).items()}
        self._windows = {
            k: OrderedDict((rid, [eid, flag]) for rid, eid, flag in rows)
            for k, rows in state.get("windows", {}).items()
        }

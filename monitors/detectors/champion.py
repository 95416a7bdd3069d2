"""Champion regression: a continuous evaluation of a registered version that is worse than that version was.

It reads ``gate.evaluated`` events (docs/event-contract.md), which training appends for every candidate and the scheduled
continuous evaluation (``trainers/champion_eval.py``, payload ``"phase": "continuous"``) for every champion.
Per (model name, version) the baseline of each metric is the training-time gate value of that version, or the
first continuous evaluation where training did not measure it (an event without ``phase`` was appended before
phases existed, and is a training-time one). A continuous evaluation then fires when

* the reward model's held-out pairwise accuracy (gate ``reward_accuracy``) dropped by more than
  ``max_accuracy_drop`` (absolute) — severity ``warning``: an older reward model is usually no better on newer
  pairs, so this is for a person to read, not a rollback;
* the policy's red-team unsafe rate (gate ``safety``) rose by more than ``max_unsafe_rise`` (absolute) —
  severity ``critical``, which the default enforcement rule turns into ``rollback_champion`` of that version.

Once a metric has fired it stays quiet while it remains regressed, and fires again only if it worsens by another
tolerance (or after an evaluation back within tolerance re-arms it), so a daily evaluation of a champion nobody
replaced does not raise the same alert every day.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from events.names import GATE_EVALUATED, MODEL_NAMES
from monitors.base import Finding, Observation, Severity

#: How many evaluation event ids per version are remembered to ignore a repeat of the same evaluation.
_SEEN_LIMIT = 32


@dataclass(frozen=True)
class ChampionRegressionConfig:
    """Tolerances, absolute differences of rates.

    0.05 is well above the noise of the defaults: a 64-prompt red-team sample moves by one prompt in 64
    (0.016), and held-out accuracy on a few hundred pairs has a standard error of about 0.02-0.03.
    """

    max_accuracy_drop: float = 0.05
    max_unsafe_rise: float = 0.05

    def __post_init__(self) -> None:
        for name in ("max_accuracy_drop", "max_unsafe_rise"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a difference of rates and must be within [0, 1], got {value!r}")


#: metric -> (gate name, sign of a regression: -1 when lower is worse, +1 when higher is worse, severity)
_METRICS: dict[str, tuple[str, int, Severity]] = {
    "accuracy": ("reward_accuracy", -1, "warning"),
    "unsafe_rate": ("safety", +1, "critical"),
}


def _gate_values(payload: Mapping[str, Any]) -> dict[str, float]:
    values = {}
    by_gate = {g.get("name"): g.get("value") for g in payload.get("gates") or [] if isinstance(g, Mapping)}
    for metric, (gate, _, _) in _METRICS.items():
        value = by_gate.get(gate)
        if isinstance(value, int | float) and not isinstance(value, bool):
            values[metric] = float(value)
    return values


class ChampionRegressionDetector:
    name = "champion_regression"
    #: Besides the runner's default types: the events this detector reads.
    observed_types = (GATE_EVALUATED,)

    def __init__(self, config: ChampionRegressionConfig | None = None) -> None:
        self.config = config or ChampionRegressionConfig()
        # "name@version" -> {"baseline": {metric: [value, event_id, phase]}, "alerted": {metric: delta},
        #                    "seen": [event ids]}
        self._versions: dict[str, dict[str, Any]] = {}

    def _tolerance(self, metric: str) -> float:
        return self.config.max_accuracy_drop if metric == "accuracy" else self.config.max_unsafe_rise

    def observe(self, observation: Observation) -> list[Finding]:
        event = observation.event.event
        if event.type != GATE_EVALUATED:
            return []
        payload = event.payload
        # Training-time payloads name the kind only; continuous ones also carry ``name``.
        name = payload.get("name") or MODEL_NAMES.get(str(payload.get("kind")))
        version = payload.get("model_version")
        if not name or version is None:
            return []
        key = f"{name}@{version}"
        v = self._versions.setdefault(key, {"baseline": {}, "alerted": {}, "seen": []})
        if event.event_id in v["seen"]:
            return []  # the same evaluation again (a backtest over an overlapping range)
        v["seen"] = [*v["seen"], event.event_id][-_SEEN_LIMIT:]
        phase = payload.get("phase") or "training"
        values = _gate_values(payload)
        if phase != "continuous":
            # Training measured the version as a candidate: that is what it was promoted on.
            for metric, value in values.items():
                v["baseline"][metric] = [value, event.event_id, phase]
            return []
        findings = []
        for metric, value in values.items():
            baseline = v["baseline"].get(metric)
            if baseline is None:
                v["baseline"][metric] = [value, event.event_id, phase]
                continue
            finding = self._check(key, v, metric, value, baseline, observation)
            if finding is not None:
                findings.append(finding)
        return findings

    def _check(
        self,
        key: str,
        v: dict[str, Any],
        metric: str,
        value: float,
        baseline: list[Any],
        observation: Observation,
    ) -> Finding | None:
        gate, sign, severity = _METRICS[metric]
        tolerance = self._tolerance(metric)
        worse_by = sign * (value - float(baseline[0]))
        alerted = v["alerted"].get(metric)
        if worse_by <= tolerance:
            v["alerted"].pop(metric, None)  # back within tolerance: the next regression alerts again
            return None
        if alerted is not None and worse_by <= alerted + tolerance:
            return None  # still the regression already alerted on, not worse by another tolerance
        v["alerted"][metric] = worse_by
        event = observation.event.event
        what = "held-out reward accuracy" if metric == "accuracy" else "red-team unsafe rate"
        direction = "fell" if sign < 0 else "rose"
        source = "at training" if baseline[2] != "continuous" else "at its first continuous evaluation"
        metrics = event.payload.get("metrics") or {}
        return Finding(
            detector=self.name,
            subject=f"model:{key}",
            severity=severity,
            summary=(
                f"champion {key}: {what} {direction} from {float(baseline[0]):.3f} ({source}) to {value:.3f}, "
                f"by {worse_by:.3f} (tolerance {tolerance:.3f})"
            ),
            trigger_seq=observation.event.seq,
            window={"model": key, "metric": metric, "gate": gate, "baseline_phase": baseline[2]},
            statistics={
                "metric": metric,
                "baseline": round(float(baseline[0]), 6),
                "current": round(value, 6),
                "delta": round(value - float(baseline[0]), 6),
                "tolerance": tolerance,
                "sample": metrics.get("pairs" if metric == "accuracy" else "red_team_prompts"),
                "dataset_to_seq": (event.payload.get("dataset") or {}).get("to_seq"),
            },
            evidence=(str(baseline[1]), event.event_id),
        )

    def state(self) -> dict[str, Any]:
        return {
            "versions": {
                k: {"baseline": dict(v["baseline"]), "alerted": dict(v["alerted"]), "seen": list(v["seen"])}
                for k, v in self._versions.items()
            }
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self._versions = {
            k: {
                "baseline": {m: list(b) for m, b in v.get("baseline", {}).items()},
                "alerted": dict(v.get("alerted", {})),
                "seen": list(v.get("seen", [])),
            }
            for k, v in state.get("versions", {}).items()
        }

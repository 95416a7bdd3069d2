"""Rules that turn alerts into ``enforcement.requested`` events (pure).

A monitor never acts itself (docs/architecture.md): it asks, with its reason and evidence, and the daemon carries
the request out through the trainers' registry and audits the outcome. Quarantine is the exception that
needs no executor: the projections read the requests and leave the quarantined users and events out of
the training sets (events/projections/quarantine.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from events.messages import EnforcementRequested
from monitors.base import Finding, Severity

ACTIONS = ("rollback_champion", "pause_training", "quarantine_user", "quarantine_events", "publish_guard_rule")
#: Actions only an operator asks for (the executor carries them out too); no alert calls for them, so no rule may.
OPERATOR_ACTIONS = ("resume_training", "lift_quarantine")
_RANK = {"info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class EnforcementRule:
    """When ``detector`` (or ``"*"``) raises an alert of at least ``min_severity``, request ``action``."""

    detector: str
    action: str
    min_severity: Severity = "critical"

    def __post_init__(self) -> None:
        if self.action in OPERATOR_ACTIONS:
            raise ValueError(
                f"{self.action} is an operator's action, not a rule's; expected one of {', '.join(ACTIONS)}"
            )
        if self.action not in ACTIONS:
            raise ValueError(f"unknown enforcement action {self.action!r}; expected one of {', '.join(ACTIONS)}")
        if self.min_severity not in _RANK:
            raise ValueError(f"unknown severity {self.min_severity!r}; expected info, warning or critical")


DEFAULT_RULES: tuple[EnforcementRule, ...] = (
    EnforcementRule("toxicity", "rollback_champion"),
    EnforcementRule("toxicity", "pause_training"),
    EnforcementRule("negative_feedback_spike", "rollback_champion"),
    EnforcementRule("hallucination_reports", "pause_training"),
    EnforcementRule("reward_drift", "pause_training"),
    EnforcementRule("over_optimisation", "pause_training", "warning"),
    EnforcementRule("feedback_flooding", "quarantine_user", "warning"),
    EnforcementRule("feedback_flooding", "quarantine_events", "warning"),
    # A contributor whose preferences disagree with the champion or their peers beyond chance (label flipping).
    EnforcementRule("contributor_agreement", "quarantine_user", "warning"),
    EnforcementRule("jailbreak_success", "publish_guard_rule"),
    EnforcementRule("pii", "publish_guard_rule"),
    # Critical only for a policy champion whose unsafe rate rose (its subject is the registered version, so the
    # rollback targets exactly it); a reward-accuracy drop is a warning for a person to read.
    EnforcementRule("champion_regression", "rollback_champion"),
)


@dataclass(frozen=True)
class EnforcementRequest:
    action: str
    target: dict[str, Any]
    finding: Finding

    @property
    def request_id(self) -> str:
        """Deterministic, like the alert's: replays request nothing twice."""
        digest = hashlib.sha256(f"{self.action}\x1f{self.finding.anomaly_id}".encode()).hexdigest()
        return f"enforcement:{self.action}:{digest[:32]}"

    def record(self) -> EnforcementRequested:
        """The request as the ``enforcement.requested`` record the runner appends."""
        f = self.finding
        return EnforcementRequested(
            self.action,
            self.target,
            f.summary,
            f.evidence,
            anomaly_id=f.anomaly_id,
            detector=f.detector,
            severity=f.severity,
        )

    def payload(self) -> dict[str, Any]:
        return self.record().to_payload()


def _target(action: str, finding: Finding) -> dict[str, Any] | None:
    kind, _, subject = finding.subject.partition(":")
    if action == "rollback_champion":
        if kind != "model":
            return None
        name, _, version = subject.rpartition("@")
        return {"model": name, "version": version}
    if action == "pause_training":
        return {"trainers": "all"}
    if action == "quarantine_user":
        return {"user": subject} if kind == "user" else None
    if action == "quarantine_events":
        return {"event_ids": list(finding.evidence)} if finding.evidence and kind != "user" else None
    if action == "publish_guard_rule":
        return {"detector": finding.detector, "subject": finding.subject, "event_ids": list(finding.evidence)}
    return None


def decide_enforcement(finding: Finding, rules: Iterable[EnforcementRule] = DEFAULT_RULES) -> list[EnforcementRequest]:
    """The requests ``finding`` calls for under ``rules`` (an action whose target does not apply is skipped:
    a rollback needs a model version as subject, a user quarantine a user)."""
    requests: list[EnforcementRequest] = []
    for rule in rules:
        if rule.detector not in ("*", finding.detector) or _RANK[finding.severity] < _RANK[rule.min_severity]:
            continue
        target = _target(rule.action, finding)
        if target is not None and all(r.action != rule.action for r in requests):
            requests.append(EnforcementRequest(rule.action, target, finding))
    return requests


def parse_rules(specs: Sequence[str]) -> tuple[EnforcementRule, ...]:
    """Rules from ``detector:action[:min_severity]`` strings (settings and the CLI)."""
    rules = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"enforcement rule {spec!r} is not detector:action[:min_severity]")
        rules.append(EnforcementRule(*parts))  # type: ignore[arg-type]
    return tuple(rules)

"""Alerts, what they call for and what reviewers make of them: ``anomaly.detected``, ``enforcement.requested``,
``enforcement.applied``, ``alert.reviewed``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from events.messages.base import Description, EventRecord, subject_words, target_words, version_words
from events.names import ALERT_REVIEWED, ANOMALY_DETECTED, ENFORCEMENT_APPLIED, ENFORCEMENT_REQUESTED, Severity


@dataclass(frozen=True)
class AnomalyDetected(EventRecord):
    """A detector's finding (the monitors), or a part of the daemon that keeps dying (the supervisor).

    Attributes:
        subject: what it is about (``"model:assistant@7"``, ``"user:u-13"``, ``"event:<id>"``, ``"part:ingest"``).
        trigger_seq: the ``seq`` of the event that made a detector fire; None (and no key) for the supervisor's.
        window: the detector's window; None (and no key) for the supervisor's.
        evidence: event ids that support it (bounded).
    """

    event_type: ClassVar[str] = ANOMALY_DETECTED

    detector: str
    subject: str
    severity: Severity
    summary: str
    trigger_seq: int | None = None
    window: Mapping[str, Any] | None = None
    statistics: Mapping[str, Any] = field(default_factory=dict)
    evidence: tuple[str, ...] = ()

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "detector": self.detector,
            "subject": self.subject,
            "severity": self.severity,
            "summary": self.summary,
        }
        if self.trigger_seq is not None:
            payload["trigger_seq"] = self.trigger_seq
        if self.window is not None:
            payload["window"] = dict(self.window)
        payload["statistics"] = dict(self.statistics)
        payload["evidence"] = list(self.evidence)
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        return cls(
            detector=payload["detector"],
            subject=payload["subject"],
            severity=payload["severity"],
            summary=payload["summary"],
            trigger_seq=payload.get("trigger_seq"),
            window=payload.get("window"),
            statistics=payload.get("statistics", {}),
            evidence=tuple(payload.get("evidence", ())),
        )

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        about, model = subject_words(str(payload.get("subject", "")))
        severity = f"{payload['severity']}: " if payload.get("severity") else ""
        return Description(
            f"detector {payload.get('detector')} / {about}", model, severity + str(payload.get("summary", ""))
        )


def _describe_enforcement(payload: Mapping[str, Any]) -> Description:
    """A request, or what became of it, in words (the two share their target and reason)."""
    if "version" in payload and ("name" in payload or "kind" in payload):
        about, model = version_words(payload)
        subject = f"{payload['action']} {about}" if payload.get("action") else about
    else:
        subject, model = target_words(str(payload.get("action", "")), payload.get("target") or {})
    # What became of a request (applied, skipped, failed) is half of why it is in the trail.
    outcome = payload.get("outcome")
    detail = f" [{outcome}: {payload.get('detail') or payload.get('error') or ''}]" if outcome else ""
    return Description(subject, model, str(payload.get("reason", "")) + detail)


@dataclass(frozen=True)
class EnforcementRequested(EventRecord):
    """A request to act on an alert (the monitors' rules) or an operator's (``resume_training``, ``alignd quarantine``).

    Attributes:
        action: ``rollback_champion``, ``pause_training``, ``resume_training``, ``quarantine_user``,
            ``quarantine_events``, ``lift_quarantine`` or ``publish_guard_rule``.
        target: what to act on (``{"model", "version"}``, ``{"user"}``, ``{"event_ids"}``, ``{"trainers": "all"}``...).
        anomaly_id, detector, severity: the alert that called for it; None (and no key) for an operator's.
        actor: the operator who asked; None (and no key) for the monitors'.
    """

    event_type: ClassVar[str] = ENFORCEMENT_REQUESTED

    action: str
    target: Mapping[str, Any]
    reason: str
    evidence: tuple[str, ...] = ()
    anomaly_id: str | None = None
    detector: str | None = None
    severity: Severity | None = None
    actor: str | None = None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"action": self.action, "target": dict(self.target), "reason": self.reason}
        for key in ("anomaly_id", "detector", "severity", "actor"):
            value = getattr(self, key)
            if value is not None:
                payload[key] = value
        payload["evidence"] = list(self.evidence)
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        return cls(
            action=payload["action"],
            target=payload["target"],
            reason=payload["reason"],
            evidence=tuple(payload.get("evidence", ())),
            anomaly_id=payload.get("anomaly_id"),
            detector=payload.get("detector"),
            severity=payload.get("severity"),
            actor=payload.get("actor"),
        )

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        return _describe_enforcement(payload)


@dataclass(frozen=True)
class EnforcementApplied(EventRecord):
    """What the daemon's executor did with a request: ``outcome`` is ``applied``, ``skipped`` or ``failed``.

    Attributes:
        target: the request's target as it was requested (None when it had none).
        error: the last error of a failed attempt, else None.
        result: what an applied action produced (a rollback: its event id, version and previous version).
        round: the retry round (a request that keeps failing transiently is retried in later rounds).
        attempts: the attempts this round took.
    """

    event_type: ClassVar[str] = ENFORCEMENT_APPLIED

    request_event_id: str
    action: str
    target: Mapping[str, Any] | None
    outcome: str
    detail: str
    error: str | None
    result: Mapping[str, Any] | None
    round: int
    attempts: int
    actor: str
    reason: str

    def to_payload(self) -> dict[str, Any]:
        return {
            "request_event_id": self.request_event_id,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "detail": self.detail,
            "error": self.error,
            "result": self.result,
            "round": self.round,
            "attempts": self.attempts,
            "actor": self.actor,
            "reason": self.reason,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        return cls(
            request_event_id=payload["request_event_id"],
            action=payload["action"],
            target=payload["target"],
            outcome=payload["outcome"],
            detail=payload["detail"],
            error=payload["error"],
            result=payload["result"],
            round=payload["round"],
            attempts=payload["attempts"],
            actor=payload["actor"],
            reason=payload["reason"],
        )

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        return _describe_enforcement(payload)


@dataclass(frozen=True)
class AlertReviewed(EventRecord):
    """A reviewer's verdict on an alert (``alignd alerts verdict``, or the review page with the operator token).

    Verdicts are the labels a detector that learns is retrained on (docs/monitors.md#verdicts): a false positive
    on a jailbreak alert is a benign prompt the detector flagged, a true positive an attack it caught. A later
    verdict on the same alert replaces an earlier one (a reviewer may change their mind); both stay in the trail.

    Attributes:
        alert_id: the event id of the ``anomaly.detected`` judged.
        detector: the detector that raised it (copied, so training sets are read without loading every alert).
        verdict: ``true_positive`` or ``false_positive`` (events.names.VERDICTS).
        actor: who judged; reason: why, in a sentence.
    """

    event_type: ClassVar[str] = ALERT_REVIEWED

    alert_id: str
    detector: str
    verdict: str
    actor: str
    reason: str

    def to_payload(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "detector": self.detector,
            "verdict": self.verdict,
            "actor": self.actor,
            "reason": self.reason,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        return cls(
            alert_id=payload["alert_id"],
            detector=payload["detector"],
            verdict=payload["verdict"],
            actor=payload["actor"],
            reason=payload["reason"],
        )

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        verdict = str(payload.get("verdict", "")).replace("_", " ")
        subject = f"alert {payload.get('alert_id')} of {payload.get('detector')}: {verdict}"
        return Description(subject, None, str(payload.get("reason", "")))

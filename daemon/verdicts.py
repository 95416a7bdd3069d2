"""Recording a reviewer's verdict on an alert: one path for ``alignd alerts verdict`` and the review page's form
(docs/monitors.md#verdicts), so both check the same things and append the same event."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from events.messages import AlertReviewed
from events.names import ANOMALY_DETECTED, VERDICTS

if TYPE_CHECKING:
    from events.store import EventStore

#: Bounds what one verdict may carry into the trail (the audit record's reason and actor columns hold less).
MAX_REASON = 1000
MAX_ACTOR = 256
#: Supervisor alerts are about the daemon's own parts: there is nothing to learn from them.
_NOT_REVIEWABLE = frozenset({"supervisor"})


class VerdictError(ValueError):
    """A verdict that cannot be recorded, with what to do instead."""


@dataclass(frozen=True)
class Recorded:
    event_id: str
    seq: int
    alert_id: str
    detector: str
    verdict: str
    actor: str
    reason: str


def normalise_verdict(value: str) -> str:
    """``true-positive``, ``tp``, ``false_positive``... as :data:`events.names.VERDICTS` spells it."""
    word = value.strip().lower().replace("-", "_").replace(" ", "_")
    word = {"tp": "true_positive", "fp": "false_positive", "true": "true_positive", "false": "false_positive"}.get(
        word, word
    )
    if word not in VERDICTS:
        raise VerdictError(f"verdict {value!r} is not one of true-positive, false-positive")
    return word


def record_verdict(store: EventStore, alert_id: str, verdict: str, *, actor: str, reason: str, source: str) -> Recorded:
    """Append ``alert.reviewed`` for the alert ``alert_id``.

    Raises:
        VerdictError: no such alert, not an alert, an alert of the daemon itself, or an empty or too long actor or
            reason; the message says what to give instead.
    """
    verdict = normalise_verdict(verdict)
    actor, reason = " ".join(actor.split()), " ".join(reason.split())
    if not actor or len(actor) > MAX_ACTOR:
        raise VerdictError(f"say who judges, in 1 to {MAX_ACTOR} characters: the audit trail keeps it")
    if not reason or len(reason) > MAX_REASON:
        raise VerdictError(f"say why, in 1 to {MAX_REASON} characters: the audit trail keeps it")
    stored = store.get(alert_id)
    if stored is None:
        raise VerdictError(f"no event {alert_id!r} in the store; `alignd alerts list` shows the alerts and their ids")
    if stored.event.type != ANOMALY_DETECTED:
        raise VerdictError(
            f"{alert_id} is a {stored.event.type}, not an alert (anomaly.detected); `alignd alerts list` shows them"
        )
    detector = str(stored.event.payload.get("detector", ""))
    if detector in _NOT_REVIEWABLE:
        raise VerdictError(f"{alert_id} is the {detector}'s alert about the daemon itself; it takes no verdict")
    record = AlertReviewed(alert_id=alert_id, detector=detector, verdict=verdict, actor=actor, reason=reason)
    event_id = f"alert.reviewed:{uuid.uuid4().hex}"
    store.append([record.to_event(event_id, datetime.now(UTC), source)])
    appended = store.get(event_id)
    assert appended is not None
    return Recorded(event_id, appended.seq, alert_id, detector, verdict, actor, reason)

"""Quarantine: users and events that training sets leave out, and the queries that leave them out.

Folded from ``enforcement.requested`` events whose action is ``quarantine_user`` or
``quarantine_events`` (a monitor asks, for instance when one account floods the feedback channel; an operator
asks with ``alignd quarantine add``), and ``lift_quarantine`` (an operator's, ``alignd quarantine remove``),
which deletes the rows of the subjects it names. The target is ``{"user": id}`` or ``{"event_ids": [...]}``
for all three. Requests fold in ``seq`` order, so add, lift, add gives a quarantine again, dated from the
second add. It needs no executor: a rebuilt projection quarantines the same subjects, and trainers that read
preference pairs and demonstrations through :func:`training_pairs` and :func:`training_demonstrations` never
see them, whenever the quarantine arrived.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, ClassVar

from sqlalchemy import Select, and_, select

from events.model import StoredEvent
from events.names import ENFORCEMENT_REQUESTED, LIFT_QUARANTINE, QUARANTINE_EVENTS, QUARANTINE_USER
from events.projections.base import Key, Projection, Row
from events.tables import proj_demonstrations, proj_preference_pairs, proj_quarantine


def _subjects(stored: StoredEvent) -> list[tuple[str, str]]:
    """The (kind, id) subjects a quarantine or a lift names; none for any other request or a malformed target."""
    payload = stored.event.payload
    action, target = payload.get("action"), payload.get("target")
    if not isinstance(target, Mapping):
        return []
    if action in (QUARANTINE_USER, LIFT_QUARANTINE) and isinstance(target.get("user"), str):
        return [("user", target["user"])]
    if action in (QUARANTINE_EVENTS, LIFT_QUARANTINE) and isinstance(target.get("event_ids"), list):
        return [("event", e) for e in target["event_ids"] if isinstance(e, str)]
    return []


class QuarantineProjection(Projection):
    name = "quarantine"
    table = proj_quarantine
    types: ClassVar[tuple[str, ...]] = (ENFORCEMENT_REQUESTED,)

    def units(self, batch: Sequence[StoredEvent], related: Sequence[StoredEvent]) -> list[Any]:
        return list(batch)

    def keys(self, unit: Any) -> list[Key]:
        return list(_subjects(unit))

    def fold(self, rows: MutableMapping[Key, Row], unit: Any) -> None:
        lift = unit.event.payload.get("action") == LIFT_QUARANTINE
        for kind, subject in _subjects(unit):
            if lift:
                rows.pop((kind, subject), None)  # the runner deletes a row that fold removed
                continue
            # A subject already quarantined stays quarantined since its first request.
            rows.setdefault(
                (kind, subject),
                {
                    "subject_kind": kind,
                    "subject_id": subject,
                    "seq": unit.seq,
                    "request_event_id": unit.event.event_id,
                    "reason": str(unit.event.payload.get("reason", "")),
                },
            )


def _not_quarantined(user_column: Any, event_column: Any) -> Any:
    users = select(proj_quarantine.c.subject_id).where(proj_quarantine.c.subject_kind == "user")
    quarantined_events = select(proj_quarantine.c.subject_id).where(proj_quarantine.c.subject_kind == "event")
    return and_(
        user_column.is_(None) | user_column.not_in(users),
        event_column.not_in(quarantined_events),
    )


def training_pairs() -> Select[Any]:
    """Preference pairs that are not from a quarantined user or a quarantined feedback event."""
    t = proj_preference_pairs
    return select(t).where(_not_quarantined(t.c.user_id, t.c.pair_id)).order_by(t.c.seq)


def training_demonstrations() -> Select[Any]:
    """Demonstrations that are not from a quarantined user or a quarantined feedback event."""
    t = proj_demonstrations
    return select(t).where(_not_quarantined(t.c.user_id, t.c.feedback_event_id)).order_by(t.c.seq)

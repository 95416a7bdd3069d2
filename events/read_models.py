"""Queries of the read models (the projections' tables) that the floors above ask, as functions of the store.

The trainers' snapshots, the scheduler's volume trigger and the constitutional revision read the projections;
their SQL lives here, with the tables, so that no floor above speaks SQL (docs/architecture.md). Each returns plain
rows (``dict`` of column name to value, in the tables' own column names) or numbers; what a caller makes of
them (a snapshot's hashed rows, a revision's reasons) stays with the caller.

Quarantined users and events are left out of every training read here, as :mod:`events.projections.quarantine`
defines them. The projections must have folded the events a read depends on: :func:`folded_upto` says how far.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, func, or_, select

from events.model import StoredEvent
from events.names import (
    ALIAS_CHANGE_TYPES,
    ANOMALY_DETECTED,
    DEMONSTRATION_GENERATED,
    DEMONSTRATIONS,
    MODEL_ROLLED_BACK,
    PREFERENCE_PAIRS,
)
from events.projections.base import PROJECTIONS, Projection
from events.projections.quarantine import QuarantineProjection, training_demonstrations, training_pairs
from events.sql_store import SqlEventStore, read_position
from events.store import EventStore
from events.tables import events, proj_interactions, proj_quarantine

Row = dict[str, Any]
# Bounds SQL IN lists well under SQLite's 32,766 parameters.
_CHUNK = 500


def _projections() -> dict[str, Projection]:
    return {**PROJECTIONS, "quarantine": QuarantineProjection()}


def folded_upto(store: SqlEventStore, names: Sequence[str]) -> int:
    """The highest seq such that every event the projections ``names`` fold, up to it, has been folded.

    A projection's position only moves when it folds an event of its types, so a quiet one (quarantine, with no
    enforcement yet) lags behind without missing anything: what counts is its first unfolded event.
    """
    projections = _projections()
    with store.read_connection() as conn:
        upto = int(conn.execute(select(func.coalesce(func.max(events.c.seq), 0))).scalar_one())
        for name in names:
            folded = read_position(conn, name, with_state=False).seq
            first_unfolded = conn.execute(
                select(func.min(events.c.seq)).where(events.c.seq > folded, events.c.type.in_(projections[name].types))
            ).scalar_one()
            if first_unfolded is not None:
                upto = min(upto, int(first_unfolded) - 1)
    return upto


def _users_not_quarantined(user_column: ColumnElement[Any]) -> ColumnElement[bool]:
    users = select(proj_quarantine.c.subject_id).where(proj_quarantine.c.subject_kind == "user")
    return or_(user_column.is_(None), user_column.not_in(users))


def _training_query(dataset: str) -> Select[Any]:
    if dataset == PREFERENCE_PAIRS:
        return training_pairs()
    if dataset == DEMONSTRATIONS:
        return training_demonstrations()
    raise ValueError(f"{dataset!r} is not {PREFERENCE_PAIRS!r} or {DEMONSTRATIONS!r}")


def training_examples(store: SqlEventStore, dataset: str, upto_seq: int) -> list[Row]:
    """The rows of ``dataset`` (preference pairs or demonstrations) with ``seq <= upto_seq``, quarantine left
    out, in ``seq`` order."""
    query = _training_query(dataset)
    query = query.where(query.selected_columns.seq <= upto_seq)
    with store.read_connection() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def first_prompts(store: SqlEventStore, upto_seq: int) -> list[Row]:
    """Distinct prompts users sent up to ``upto_seq``, each at its first ``interaction_seq`` (``seq``,
    ``prompt_kind``, ``prompt``), in that order; quarantined users left out."""
    t = proj_interactions
    first = (
        select(func.min(t.c.interaction_seq).label("seq"), t.c.prompt_kind, t.c.prompt)
        .where(t.c.interaction_seq <= upto_seq, _users_not_quarantined(t.c.user_id))
        .group_by(t.c.prompt_kind, t.c.prompt)
        .order_by(func.min(t.c.interaction_seq))
    )
    with store.read_connection() as conn:
        return [{"seq": int(r.seq), "prompt_kind": r.prompt_kind, "prompt": r.prompt} for r in conn.execute(first)]


def user_flagged_prompts(store: SqlEventStore, upto_seq: int, limit: int) -> list[Row]:
    """Distinct prompts of interactions their users flagged (a flag of any category, or a thumbs-down) up to
    ``upto_seq``, each at its first such interaction (``seq``, ``prompt_kind``, ``prompt``), at most ``limit``, the
    most recent first; quarantined users and events left out. The policy's ``flagged`` probe reads them."""
    t, q = proj_interactions, proj_quarantine
    flagged = (
        select(func.min(t.c.interaction_seq).label("seq"), t.c.prompt_kind, t.c.prompt)
        .where(
            t.c.interaction_seq <= upto_seq,
            or_(t.c.flags != "[]", t.c.thumbs_down > 0),
            _users_not_quarantined(t.c.user_id),
            t.c.event_id.not_in(select(q.c.subject_id).where(q.c.subject_kind == "event")),
        )
        .group_by(t.c.prompt_kind, t.c.prompt)
        .order_by(func.min(t.c.interaction_seq).desc())
        .limit(limit)
    )
    with store.read_connection() as conn:
        return [{"seq": int(r.seq), "prompt_kind": r.prompt_kind, "prompt": r.prompt} for r in conn.execute(flagged)]


def count_training_examples(store: SqlEventStore, dataset: str, after_seq: int) -> int:
    """Examples of ``dataset`` (``preference_pairs``, ``demonstrations``; any other name counts prompts) with
    ``seq > after_seq``, quarantine left out as snapshots leave it out; prompts are the interactions of users not
    quarantined."""
    if dataset in (PREFERENCE_PAIRS, DEMONSTRATIONS):
        query = _training_query(dataset)
        sub = query.where(query.selected_columns.seq > after_seq).order_by(None).subquery()
        stmt = select(func.count()).select_from(sub)
    else:
        t = proj_interactions
        stmt = select(func.count()).where(t.c.interaction_seq > after_seq, _users_not_quarantined(t.c.user_id))
    with store.read_connection() as conn:
        return int(conn.execute(stmt).scalar_one())


# --- flagged interactions (constitutional revision) --------------------------------------------------------


@dataclass(frozen=True)
class FlaggedRow:
    """A row of the interactions projection chosen for revision, and the detectors whose anomalies named it."""

    row: Row
    detectors: frozenset[str]


def _chunks(items: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield list(items[start : start + _CHUNK])


def _anomaly_detectors(conn: Connection, upto_seq: int) -> dict[str, set[str]]:
    """Request id -> detectors whose ``anomaly.detected`` (seq <= upto_seq) names its events as evidence."""
    detectors: dict[str, set[str]] = {}
    query = select(events.c.payload).where(events.c.type == ANOMALY_DETECTED, events.c.seq <= upto_seq)
    for (payload,) in conn.execute(query):
        body = json.loads(payload)
        evidence_ids = body.get("evidence")
        for evidence in evidence_ids if isinstance(evidence_ids, list) else []:
            detectors.setdefault(str(evidence), set()).add(str(body.get("detector", "unknown")))
    # Evidence names the interaction or the feedback about it; both carry the request id.
    reasons: dict[str, set[str]] = {}
    for chunk in _chunks(sorted(detectors)):
        query = select(events.c.event_id, events.c.request_id).where(events.c.event_id.in_(chunk))
        for event_id, request_id in conn.execute(query):
            if request_id is not None:
                reasons.setdefault(request_id, set()).update(detectors[event_id])
    return reasons


def flagged_interactions(store: SqlEventStore, upto_seq: int, limit: int, *, after_seq: int = 0) -> list[FlaggedRow]:
    """Flagged interactions not revised yet, in ``interaction_seq`` order, at most ``limit``.

    Flagged: a user flag of any category or a thumbs-down, as the interactions projection has folded them, or
    named as evidence by an ``anomaly.detected`` event at ``seq <= upto_seq``. Left out: interactions logged
    after ``upto_seq`` or at or before ``after_seq``, those of quarantined users or quarantined events, and those
    that already have a ``demonstration.generated`` event.
    """
    t, q = proj_interactions, proj_quarantine
    done = select(events.c.request_id).where(events.c.type == DEMONSTRATION_GENERATED, events.c.request_id.is_not(None))
    eligible = [
        t.c.interaction_seq > after_seq,
        t.c.interaction_seq <= upto_seq,
        _users_not_quarantined(t.c.user_id),
        t.c.event_id.not_in(select(q.c.subject_id).where(q.c.subject_kind == "event")),
        t.c.request_id.not_in(done),
    ]
    with store.read_connection() as conn:
        anomalies = _anomaly_detectors(conn, upto_seq)
        # Two candidate sets, the projection's flags and the anomalies' evidence: the first `limit` of each
        # hold the first `limit` of their union.
        conditions = [or_(t.c.flags != "[]", t.c.thumbs_down > 0)]
        conditions += [t.c.request_id.in_(chunk) for chunk in _chunks(sorted(anomalies))]
        rows: dict[str, Row] = {}
        for condition in conditions:
            query = select(t).where(condition, *eligible).order_by(t.c.interaction_seq).limit(limit)
            rows.update((row["request_id"], dict(row)) for row in conn.execute(query).mappings())
    chosen = sorted(rows.values(), key=lambda r: r["interaction_seq"])[:limit]
    return [FlaggedRow(r, frozenset(anomalies.get(r["request_id"], ()))) for r in chosen]


# --- versions rolled back (the models list, the review page, the alias watch) ------------------------------


@dataclass(frozen=True)
class RolledBackVersion:
    """A registered version that ``champion`` was rolled back from, and that no move made through alignd has
    put back since: serving left it because it failed in production.

    Attributes:
        name, version: the registered version (``alignd-policy``, ``"3"``).
        event_id: the ``model.rolled_back`` event that moved ``champion`` away from it; its audit record is
            ``/audit/<event_id>`` on the review page and ``alignd audit show <event_id>``.
        seq, occurred_at: that event's.
        actor, reason: who rolled it back (an operator, ``alignd.enforcement``, ``mlflow``), and why.
        to_version: the version ``champion`` went to.
    """

    name: str
    version: str
    event_id: str
    seq: int
    occurred_at: datetime
    actor: str
    reason: str
    to_version: str | None

    @property
    def model(self) -> str:
        """``name:version``, as the audit records' ``model`` column names a version."""
        return f"{self.name}:{self.version}"


def _made_in_mlflow(payload: dict[str, Any]) -> bool:
    return payload.get("via") == "mlflow" or payload.get("actor") == "mlflow"


def fold_rolled_back(history: Iterable[StoredEvent]) -> dict[tuple[str, str], RolledBackVersion]:
    """The versions rolled back from and not put back since, by ``(name, version)``, from the alias changes
    (``model.promoted`` / ``model.rolled_back``) in ``seq`` order; other events, and moves of an alias other
    than ``champion``, are ignored.

    A rollback marks the version ``champion`` left (its ``previous_version``, else the champion before it); a
    deleted alias marks nothing, as in :func:`trainers.promotion.previous_champion`. A later move of
    ``champion`` to that version made through alignd (a promotion, or a rollback ``--to`` it: a decision with
    its reason in the trail) clears the mark. A move made in MLflow itself (``via`` ``mlflow``) does not:
    nobody reviewed it, and the alias watch raises an alert for it instead.
    """
    fold = RolledBackFold()
    for stored in history:
        fold.apply(stored)
    return dict(fold.marks)


class RolledBackFold:
    """:func:`fold_rolled_back` kept up to date: :meth:`catch_up` folds only the alias changes recorded since
    the last call (an indexed read of a few rows), so a page that marks rolled-back versions does not re-read the
    whole history each time. Not thread-safe: one caller at a time."""

    def __init__(self) -> None:
        self.marks: dict[tuple[str, str], RolledBackVersion] = {}
        self.position = 0
        self._champions: dict[str, str | None] = {}

    def catch_up(self, store: EventStore) -> dict[str, RolledBackVersion]:
        """Fold what ``store`` recorded since the last call; every mark, by ``name:version``."""
        for stored in _alias_changes(store, after=self.position):
            self.apply(stored)
        return {mark.model: mark for mark in self.marks.values()}

    def apply(self, stored: StoredEvent) -> None:
        """Fold one event (in ``seq`` order)."""
        self.position = max(self.position, stored.seq)
        event, payload = stored.event, dict(stored.event.payload)
        if event.type not in ALIAS_CHANGE_TYPES or payload.get("alias", "champion") != "champion":
            return
        name = str(payload.get("name"))
        version = None if payload.get("version") is None else str(payload["version"])
        left = payload.get("previous_version")
        left = str(left) if left is not None else self._champions.get(name)
        if event.type == MODEL_ROLLED_BACK and version is not None and left is not None and left != version:
            self.marks[(name, left)] = RolledBackVersion(
                name=name,
                version=left,
                event_id=event.event_id,
                seq=stored.seq,
                occurred_at=event.occurred_at,
                actor=str(payload.get("actor") or event.source),
                reason=str(payload.get("reason") or ""),
                to_version=version,
            )
        if version is not None and not _made_in_mlflow(payload):
            self.marks.pop((name, version), None)
        self._champions[name] = version


def _alias_changes(store: EventStore, after: int = 0) -> Iterator[StoredEvent]:
    position = after
    while batch := store.read(position, limit=1000, types=ALIAS_CHANGE_TYPES):
        yield from batch
        position = batch[-1].seq


def rolled_back_versions(store: EventStore, name: str) -> dict[str, RolledBackVersion]:
    """The versions of the registered model ``name`` that are rolled back (:func:`fold_rolled_back`), by version.

    ``alignd models list`` marks them: ``rolled_back_versions(store, MODEL_NAMES[kind]).get(version)``.
    """
    mine = (stored for stored in _alias_changes(store) if stored.event.payload.get("name") == name)
    return {version: mark for (_, version), mark in fold_rolled_back(mine).items()}


def rolled_back_models(store: EventStore) -> dict[str, RolledBackVersion]:
    """Every rolled-back version of every registered model, by ``name:version`` (the audit's ``model``)."""
    return RolledBackFold().catch_up(store)

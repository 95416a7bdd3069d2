"""What the training data holds, for operators (``alignd datasets``, ``alignd quarantine list``).

Counts of preference pairs, demonstrations and prompts by source and quarantine state, the last snapshot of each
dataset kind, and the subjects quarantined now with who asked and why. The SQL lives here, beside the tables;
the CLI only prints. "Kept" is counted with the very queries snapshots read (:mod:`events.read_models`), so a
snapshot taken now holds exactly the kept rows up to its ``to_seq``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select

from events.model import Event
from events.names import (
    ALERT_VERDICTS,
    DATASET_KINDS,
    DATASET_SNAPSHOTTED,
    DEMONSTRATIONS,
    PREFERENCE_PAIRS,
    PROMPTS,
)
from events.projections.quarantine import training_demonstrations, training_pairs
from events.read_models import folded_upto
from events.sql_store import SqlEventStore, row_to_event
from events.tables import events, proj_demonstrations, proj_interactions, proj_preference_pairs, proj_quarantine

# Bounds SQL IN lists well under SQLite's 32,766 parameters.
_CHUNK = 500

#: The projections each dataset kind is read from (as trainers.snapshot reads them).
_PROJECTIONS = {
    PREFERENCE_PAIRS: ("preference_pairs", "quarantine"),
    DEMONSTRATIONS: ("demonstrations", "quarantine"),
    PROMPTS: ("interactions", "quarantine"),
    ALERT_VERDICTS: ("quarantine",),
}


@dataclass(frozen=True)
class QuarantineEntry:
    """A subject quarantined now.

    Attributes:
        kind: ``"user"`` or ``"event"``.
        subject: the user id or the event id.
        seq, request_event_id: the ``enforcement.requested`` that quarantined it (the first, when several did).
        occurred_at: when that request was made; None if the request is no longer in the store.
        actor: who asked: the operator's name, else the request's source (``alignd.monitors``).
        detector: the detector whose alert called for it; None for an operator's.
        reason: why.
    """

    kind: str
    subject: str
    seq: int
    request_event_id: str
    occurred_at: datetime | None
    actor: str
    detector: str | None
    reason: str


def quarantine_entries(store: SqlEventStore) -> list[QuarantineEntry]:
    """Every subject the quarantine projection holds, in the order they were quarantined (``seq``, then id)."""
    q = proj_quarantine
    with store.read_connection() as conn:
        rows = [dict(r) for r in conn.execute(select(q).order_by(q.c.seq, q.c.subject_kind, q.c.subject_id)).mappings()]
        ids = sorted({r["request_event_id"] for r in rows})
        requests: dict[str, Event] = {}
        for start in range(0, len(ids), _CHUNK):
            query = select(events).where(events.c.event_id.in_(ids[start : start + _CHUNK]))
            requests.update((e.event.event_id, e.event) for e in map(row_to_event, conn.execute(query)))
    entries = []
    for row in rows:
        request = requests.get(row["request_event_id"])
        payload = request.payload if request is not None else {}
        actor = payload.get("actor")
        detector = payload.get("detector")
        entries.append(
            QuarantineEntry(
                kind=row["subject_kind"],
                subject=row["subject_id"],
                seq=int(row["seq"]),
                request_event_id=row["request_event_id"],
                occurred_at=request.occurred_at if request is not None else None,
                actor=actor if isinstance(actor, str) and actor else (request.source if request else "unknown"),
                detector=detector if isinstance(detector, str) else None,
                reason=row["reason"],
            )
        )
    return entries


@dataclass(frozen=True)
class DatasetCount:
    """Rows of one dataset from one source: ``kept`` (what training reads) and ``quarantined`` (left out).

    ``source`` is how the projections know where a row came from: a pair's or a demonstration's ``origin``
    (``preference``, ``correction``, ``top_rated``, ``constitutional``...), a prompt's kind (``text`` or
    ``messages``).
    """

    dataset: str
    source: str
    kept: int
    quarantined: int


@dataclass(frozen=True)
class SnapshotInfo:
    """The last ``dataset.snapshotted`` of one dataset kind."""

    kind: str
    name: str
    rows: int
    from_seq: int
    to_seq: int
    sha256: str
    event_id: str
    seq: int
    occurred_at: datetime


@dataclass(frozen=True)
class DatasetStats:
    """Counts, last snapshots, and how far the projections behind the counts have folded the store."""

    counts: list[DatasetCount]
    snapshots: list[SnapshotInfo]
    folded_upto: dict[str, int]
    store_seq: int

    @property
    def empty(self) -> bool:
        return not any(c.kept or c.quarantined for c in self.counts)


def _by_source(conn: Any, query: Select[Any], source: str) -> dict[str, int]:
    sub = query.order_by(None).subquery()
    column = sub.c[source]
    return {str(s): int(n) for s, n in conn.execute(select(column, func.count()).group_by(column))}


def _counts(conn: Any) -> list[DatasetCount]:
    q = proj_quarantine
    quarantined_users = select(q.c.subject_id).where(q.c.subject_kind == "user")
    # Prompts: interactions of users not quarantined, as the snapshots (first_prompts) and the volume trigger read.
    prompts = proj_interactions
    kept_prompts = select(prompts).where(prompts.c.user_id.is_(None) | prompts.c.user_id.not_in(quarantined_users))
    sources = {
        PREFERENCE_PAIRS: (select(proj_preference_pairs), training_pairs(), "origin"),
        DEMONSTRATIONS: (select(proj_demonstrations), training_demonstrations(), "origin"),
        PROMPTS: (select(prompts), kept_prompts, "prompt_kind"),
    }
    counts = []
    for dataset, (every, kept_query, source) in sources.items():
        total, kept = _by_source(conn, every, source), _by_source(conn, kept_query, source)
        counts += [DatasetCount(dataset, s, kept.get(s, 0), n - kept.get(s, 0)) for s, n in sorted(total.items())]
    return counts


def _last_snapshots(conn: Any) -> list[SnapshotInfo]:
    """The newest ``dataset.snapshotted`` of each kind, read newest first until every kind is found."""
    found: dict[str, SnapshotInfo] = {}
    query = select(events).where(events.c.type == DATASET_SNAPSHOTTED).order_by(events.c.seq.desc())
    for stored in map(row_to_event, conn.execute(query)):
        p = stored.event.payload
        kind = p.get("kind")
        if not isinstance(kind, str) or kind in found:
            continue
        found[kind] = SnapshotInfo(
            kind=kind,
            name=str(p.get("name")),
            rows=int(p.get("rows") or 0),
            from_seq=int(p.get("from_seq") or 0),
            to_seq=int(p.get("to_seq") or 0),
            sha256=str(p.get("sha256")),
            event_id=stored.event.event_id,
            seq=stored.seq,
            occurred_at=stored.event.occurred_at,
        )
        if len(found) == len(DATASET_KINDS):
            break
    order = {kind: i for i, kind in enumerate(DATASET_KINDS)}
    return sorted(found.values(), key=lambda s: (order.get(s.kind, len(order)), s.kind))


def dataset_stats(store: SqlEventStore, kinds: Sequence[str] = DATASET_KINDS) -> DatasetStats:
    """Counts of each dataset by source and quarantine state, the last snapshot of each kind, and how far the
    projections they are read from have folded the store (the counts cover events up to there)."""
    with store.read_connection() as conn:
        counts = [c for c in _counts(conn) if c.dataset in kinds]
    if ALERT_VERDICTS in kinds:  # reviewers' verdicts are read from the events themselves (events.verdicts)
        from events.verdicts import attempt_example_counts

        counts += [
            DatasetCount(ALERT_VERDICTS, label, kept, quarantined)
            for label, (kept, quarantined) in attempt_example_counts(store).items()
        ]
    with store.read_connection() as conn:
        snapshots = [s for s in _last_snapshots(conn) if s.kind in kinds]
        store_seq = int(conn.execute(select(func.coalesce(func.max(events.c.seq), 0))).scalar_one())
    folded = {kind: folded_upto(store, _PROJECTIONS[kind]) for kind in kinds}
    return DatasetStats(counts, snapshots, folded, store_seq)

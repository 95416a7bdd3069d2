"""The audit trail: one hash-chained record per decision event (docs/store.md).

Record ``n`` stores ``hash = sha256(prev_hash + canonical_json(fields))`` where ``prev_hash`` is record
``n - 1``'s hash (``"0" * 64`` for the first) and ``fields`` are the :data:`HASHED` columns, its own position
included, so that moving a record breaks its hash. An auditor re-verifies an export offline with nothing but
that formula (:func:`verify_records`).

The trail is not a projection: ``alignd replay`` never rebuilds it, since a rebuild would silently replace a
tampered chain with a clean one. :class:`AuditTrail` only appends, and :func:`verify` only reads: it walks the
chain and checks every record against the event it records in ``events``, so changing a record, deleting,
inserting or reordering records, or changing a chained event, each names the first record that no longer
matches. (Rewriting events *and* the whole chain after them consistently is only caught against a last hash
kept outside the database, which is why ``verify`` prints it.)
"""

from __future__ import annotations

import hashlib
import json
import logging
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, func, insert, or_, select

from events.codec import canonical_json, format_timestamp
from events.messages import RECORDS
from events.model import StoredEvent
from events.names import ENFORCEMENT_APPLIED, INTERNAL_TYPES
from events.sql_store import SqlEventStore, read_position, row_to_event
from events.tables import audit_records, events

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
#: Every type alignd appends itself is a decision (an alert, a request, a training run, a promotion...).
DECISION_TYPES: frozenset[str] = INTERNAL_TYPES
#: The store position of the chain: the seq of the last decision event chained.
CHECKPOINT = "audit"
#: The columns a record's hash covers, i.e. everything but the hashes themselves.
HASHED = (
    "position",
    "event_seq",
    "event_id",
    "occurred_at",
    "actor",
    "action",
    "subject",
    "model",
    "reason",
    "evidence",
)
#: The columns of a record as the chain stores and exports it: the hashed ones and the two hashes.
COLUMNS = (*HASHED, "prev_hash", "hash")
#: PostgreSQL advisory lock serialising chain writers (a daemon and a CLI catching up at once would otherwise
#: both read the same tail and race for the same position). SQLite's BEGIN IMMEDIATE already does that.
AUDIT_LOCK_KEY = 0x616C69676E61


# --- what each decision is about ------------------------------------------------------------------


def describe(kind: str, p: Mapping[str, Any]) -> tuple[str, str | None, str]:
    """(subject, model, reason) of a decision event's payload, in words an auditor reads.

    Each internal type's record describes its own payloads (events.messages); the words are part of the hashed
    record, so they never change for a payload already chained.
    """
    record = RECORDS.get(kind)
    if record is not None:
        return record.describe_payload(p)
    return str(p.get("subject") or kind), None, str(p.get("reason", ""))


@dataclass(frozen=True)
class AuditRecord:
    position: int
    event_seq: int
    event_id: str
    occurred_at: str
    actor: str
    action: str
    subject: str
    model: str | None
    reason: str
    evidence: str
    prev_hash: str
    hash: str
    #: When its event was appended to the store (RFC 3339, UTC), beside ``occurred_at``, when it happened at
    #: the source (an alert keeps the time of the traffic it is about). Read with the record from the events
    #: table, never stored in the chain, hashed or exported; None when the record did not come from a store
    #: (an export) or its event is gone (which ``verify`` reports).
    recorded_at: str | None = field(default=None, compare=False)

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HASHED}

    def to_dict(self) -> dict[str, Any]:
        """The record as the chain stores and exports it (:data:`COLUMNS`)."""
        return {name: getattr(self, name) for name in COLUMNS}

    @classmethod
    def from_mapping(cls, row: Mapping[Any, Any]) -> AuditRecord:
        recorded = row.get("recorded_at")
        if isinstance(recorded, datetime):  # SQLite gives it back without its zone; it is UTC
            recorded = format_timestamp(recorded if recorded.tzinfo is not None else recorded.replace(tzinfo=UTC))
        return cls(**{name: row[name] for name in COLUMNS}, recorded_at=recorded)


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` found. ``first_bad`` is the position of the first record that does not match (or
    that is missing), ``event_id`` the event it records or should record; ``pending`` counts decision events
    after the checkpoint, not chained yet (not a fault: the daemon chains them as it goes)."""

    ok: bool
    records: int
    first_bad: int | None = None
    problem: str | None = None
    event_id: str | None = None
    last_hash: str | None = None
    pending: int = 0


def record_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """``sha256(prev_hash + canonical JSON of fields)``, hex."""
    return hashlib.sha256((prev_hash + canonical_json(dict(fields))).encode("utf-8")).hexdigest()


def audit_fields(stored: StoredEvent, position: int) -> dict[str, Any]:
    """The hashed fields of the record of ``stored`` at ``position``.

    The actor is the payload's ``actor`` (an operator's name, "mlflow", "alignd.enforcement") when it has
    one, else the event's source ("alignd.monitors", "alignd.trainers"). Everything comes from the event, so
    the same event always gives the same record, and :func:`verify` can recompute it.
    """
    event, payload = stored.event, stored.event.payload
    try:
        subject, model, reason = describe(event.type, payload)
    except (AttributeError, KeyError, TypeError, ValueError):
        # A payload of an unexpected shape must not stall the chain; the evidence still holds all of it.
        logger.warning(
            "audit: cannot describe %s %s; recording it with its type as subject", event.type, event.event_id
        )
        subject, model, reason = event.type, None, ""
    actor = payload.get("actor")
    return {
        "position": position,
        "event_seq": stored.seq,
        "event_id": event.event_id,
        "occurred_at": format_timestamp(event.occurred_at),
        # Cut to the column widths here, before hashing, so what is stored is exactly what was hashed.
        "actor": (actor if isinstance(actor, str) and actor else event.source)[:256],
        "action": event.type,
        "subject": subject[:512],
        "model": model[:300] if model else None,
        "reason": reason,
        "evidence": canonical_json(payload),
    }


def _checkpoint(conn: Connection) -> int:
    return read_position(conn, CHECKPOINT, with_state=False).seq


class AuditTrail:
    """Appends a record for each new decision event, in seq order (the daemon calls :meth:`catch_up`)."""

    def __init__(self, store: SqlEventStore, batch_size: int = 500) -> None:
        self.store, self.batch_size = store, batch_size

    def catch_up(self) -> int:
        """Chain every decision event appended since the checkpoint; returns how many records were added."""
        total = 0
        while count := self._step():
            total += count
        return total

    def _step(self) -> int:
        # Records and the checkpoint commit together, so a crash never chains an event twice or skips one.
        # Tailing by seq skips nothing: seq order is commit order (events/sql_store.py).
        with self.store.unit_of_work(append_lock=False) as uow:
            conn = uow.connection
            if self.store.dialect == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": AUDIT_LOCK_KEY})
            rows = conn.execute(
                select(events)
                .where(events.c.seq > _checkpoint(conn), events.c.type.in_(sorted(DECISION_TYPES)))
                .order_by(events.c.seq)
                .limit(self.batch_size)
            ).all()
            if not rows:
                return 0
            column = audit_records.c.position
            tail = conn.execute(select(column, audit_records.c.hash).order_by(column.desc()).limit(1)).first()
            position, prev = (int(tail.position), str(tail.hash)) if tail is not None else (0, GENESIS)
            new = []
            for row in rows:
                position += 1
                fields = audit_fields(row_to_event(row), position)
                digest = record_hash(prev, fields)
                new.append({**fields, "prev_hash": prev, "hash": digest})
                prev = digest
            conn.execute(insert(audit_records), new)
            uow.save_position(CHECKPOINT, rows[-1].seq)
            logger.debug("audit: chained seq %d..%d as records up to %d", rows[0].seq, rows[-1].seq, position)
            return len(rows)


def list_records(
    store: SqlEventStore,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    action: str | None = None,
    model: str | None = None,
    actor: str | None = None,
    limit: int | None = 100,
    after_position: int = 0,
) -> list[AuditRecord]:
    """Records in chain order, which is the order they were recorded in (their events' ``seq``), each with its
    event's ``recorded_at``. ``since`` is inclusive and ``until`` exclusive (on ``occurred_at``); ``model``
    matches ``name:version`` exactly or, given a bare name, every version of it."""
    query = _with_recorded_at().where(audit_records.c.position > after_position).order_by(audit_records.c.position)
    if since is not None:
        query = query.where(audit_records.c.occurred_at >= format_timestamp(since))
    if until is not None:
        query = query.where(audit_records.c.occurred_at < format_timestamp(until))
    if action is not None:
        query = query.where(audit_records.c.action == action)
    if actor is not None:
        query = query.where(audit_records.c.actor == actor)
    if model is not None:
        column = audit_records.c.model
        query = query.where(or_(column == model, column.startswith(f"{model}:", autoescape=True)))
    if limit is not None:
        query = query.limit(limit)
    with store.read_connection() as conn:
        return [AuditRecord.from_mapping(row) for row in conn.execute(query).mappings()]


def last_position(store: SqlEventStore) -> int:
    """The newest record's position (0 for an empty trail): records are only ever appended, so a listing is the
    same for as long as this is."""
    with store.read_connection() as conn:
        return int(conn.execute(select(func.max(audit_records.c.position))).scalar() or 0)


def get_record(store: SqlEventStore, position_or_event_id: int | str) -> AuditRecord | None:
    """The record at a position (an int, or a string of digits) or of an event id."""
    key = str(position_or_event_id)
    with store.read_connection() as conn:
        row = None
        if key.isdigit():
            query = _with_recorded_at().where(audit_records.c.position == int(key))
            row = conn.execute(query).mappings().first()
        if row is None:
            row = conn.execute(_with_recorded_at().where(audit_records.c.event_id == key)).mappings().first()
    return AuditRecord.from_mapping(row) if row is not None else None


def _with_recorded_at() -> Select[Any]:
    """Records with their events' ``recorded_at`` (an outer join: a record whose event is gone is still shown)."""
    joined = audit_records.outerjoin(events, events.c.seq == audit_records.c.event_seq)
    return select(audit_records, events.c.recorded_at).select_from(joined)


# --- how a list shows a record --------------------------------------------------------------------------------

#: What became of an enforcement request (``enforcement.applied``'s ``outcome``) that did not apply.
NOT_APPLIED = frozenset({"skipped", "failed"})


@dataclass(frozen=True)
class Shown:
    """A record as the review page and ``alignd audit list`` show it.

    An ``enforcement.applied`` whose request did nothing (``skipped``) or has not worked yet (``failed``) reads
    as that outcome: ``action`` is ``enforcement skipped`` / ``enforcement failed`` (the stored type stays the
    record's ``action``), and ``reason`` starts with the outcome and its detail, so that a shortened reason still
    says it. The words come from the hashed evidence at read time: the chain itself is unchanged, and records
    chained before this read the same way.
    """

    action: str
    reason: str
    #: ``applied``, ``skipped`` or ``failed`` for an ``enforcement.applied``, else None.
    outcome: str | None = None


def shown(record: AuditRecord) -> Shown:
    """How lists show ``record`` (:class:`Shown`)."""
    if record.action != ENFORCEMENT_APPLIED:
        return Shown(record.action, record.reason)
    try:
        payload = json.loads(record.evidence)
    except ValueError:
        return Shown(record.action, record.reason)
    outcome = payload.get("outcome") if isinstance(payload, dict) else None
    if not isinstance(outcome, str) or outcome not in NOT_APPLIED:
        return Shown(record.action, record.reason, outcome if isinstance(outcome, str) else None)
    what = ": ".join(str(part) for part in (payload.get("detail"), payload.get("error")) if part)
    asked = payload.get("reason")
    reason = f"{outcome}: {what or 'no detail recorded'}" + (f" (requested: {asked})" if asked else "")
    return Shown(f"enforcement {outcome}", reason, outcome)


def verify(store: SqlEventStore) -> VerifyReport:
    """Check the chain as it is in the database, against the events it records; writes nothing."""
    with store.read_connection() as conn:
        if store.dialect == "postgresql":
            # One snapshot for every read below: a record chained meanwhile must not look like a forgery.
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            return _Verifier(conn).run()


class _Verifier:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.checkpoint = _checkpoint(conn)
        decision = events.c.type.in_(sorted(DECISION_TYPES))
        self.decisions = conn.execute(
            select(events.c.seq, events.c.event_id, events.c.type).where(decision).order_by(events.c.seq)
        ).all()
        self.seqs = [int(d.seq) for d in self.decisions]
        columns = (audit_records.c.position, audit_records.c.event_seq, audit_records.c.hash, audit_records.c.prev_hash)
        index = conn.execute(select(*columns)).all()
        self.count = len(index)
        self.chained = {int(r.event_seq) for r in index}
        self.position_of = {r.hash: int(r.position) for r in index}
        self.linked = {r.prev_hash for r in index}

    def unchained(self, after: int, before: int) -> list[Any]:
        """Decision events with ``after < seq < before`` that no record chains."""
        chunk = self.decisions[bisect_right(self.seqs, after) : bisect_left(self.seqs, before)]
        return [d for d in chunk if d.seq not in self.chained]

    def run(self) -> VerifyReport:
        position, prev_hash, prev_seq = 0, GENESIS, 0
        while page := self._page(position):
            found = self.conn.execute(select(events).where(events.c.seq.in_([r.event_seq for r in page])))
            by_seq = {int(row.seq): row for row in found}
            for record in page:
                if record.position != position + 1:
                    return self._gap(position + 1, record, prev_seq)
                problems = self.problems(record, by_seq.get(record.event_seq), prev_hash, prev_seq)
                if problems:
                    return _bad(self.count, record.position, record, "; ".join(problems))
                position, prev_hash, prev_seq = record.position, record.hash, record.event_seq
        lost = self.unchained(prev_seq, self.checkpoint + 1)
        if lost:
            problem = (
                f"record {position + 1} is missing: decision event {lost[0].event_id} (seq {lost[0].seq}, "
                f"{lost[0].type}) was chained (the audit checkpoint is at seq {self.checkpoint}) but has no "
                "record; the last records were deleted"
            )
            return VerifyReport(False, self.count, position + 1, problem, lost[0].event_id)
        pending = len(self.seqs) - bisect_right(self.seqs, max(self.checkpoint, prev_seq))
        return VerifyReport(True, self.count, last_hash=prev_hash if position else None, pending=pending)

    def _page(self, after: int) -> list[AuditRecord]:
        query = select(audit_records).where(audit_records.c.position > after).order_by(audit_records.c.position)
        return [AuditRecord.from_mapping(row) for row in self.conn.execute(query.limit(1000)).mappings()]

    def _gap(self, expected: int, record: AuditRecord, prev_seq: int) -> VerifyReport:
        if record.position < expected:
            return _bad(self.count, record.position, record, "its position is outside the chain, which starts at 1")
        lost = self.unchained(prev_seq, record.event_seq)
        what = f"; decision event {lost[0].event_id} (seq {lost[0].seq}, {lost[0].type}) has no record" if lost else ""
        problem = (
            f"record {expected} is missing: the chain jumps from record {expected - 1} to record {record.position} "
            f"(event {record.event_id}){what}; records were deleted"
        )
        return VerifyReport(False, self.count, expected, problem, lost[0].event_id if lost else None)

    def problems(self, record: AuditRecord, event: Any, prev_hash: str, prev_seq: int) -> list[str]:
        """What is wrong with ``record``, the next in the chain after ``prev_hash`` and ``prev_seq``."""
        problems: list[str] = []
        hash_ok = record_hash(record.prev_hash, record.fields()) == record.hash
        if event is None:
            problems.append(
                f"the events table has no event at seq {record.event_seq}: the record was forged or its event deleted"
            )
        elif event.event_id != record.event_id:
            problems.append(f"seq {record.event_seq} in the events table is event {event.event_id}, not this one")
        elif event.type not in DECISION_TYPES:
            problems.append(f"its event is of type {event.type}, which is never audited: the record was forged")
        else:
            truth = audit_fields(row_to_event(event), record.position)
            names = [k for k in HASHED if truth[k] != getattr(record, k)]
            differ = f"its {', '.join(names)} {'differs' if len(names) == 1 else 'differ'}" if names else ""
            if differ and not hash_ok:
                problems.append(f"it was altered: {differ} from the event it records")
            elif differ and record.hash not in self.linked and record.position < self.count:
                problems.append(
                    f"it was rewritten and rehashed: {differ} from the event it records, and the next record "
                    "still links to its old hash"
                )
            elif differ:
                problems.append(
                    f"it no longer matches its event in the events table ({differ}) though its hash is intact: "
                    "the event was changed after it was chained (or the chain rewritten from here on)"
                )
        before = "the start" if record.position == 1 else f"record {record.position - 1}"
        linked = self.position_of.get(record.prev_hash)
        if record.event_seq <= prev_seq or (record.prev_hash != prev_hash and linked is not None):
            after = f"record {linked}" if linked is not None else "another record"
            problems.append(
                f"it is out of order: it was chained after {after}, not after {before}; records were reordered"
            )
        else:
            if lost := self.unchained(prev_seq, record.event_seq):
                problems.append(
                    f"decision event {lost[0].event_id} (seq {lost[0].seq}) before it has no record: a record was "
                    "deleted and the chain renumbered"
                )
            if record.prev_hash != prev_hash:
                problems.append(f"its prev_hash is not the hash of {before}: the chain was rewritten from here")
        if not hash_ok:
            problems.append("its hash does not match its contents")
        if record.event_seq > self.checkpoint:
            problems.append(
                f"it lies beyond the audit checkpoint (seq {self.checkpoint}), which alignd moves with every record "
                "it writes: alignd did not write it"
            )
        return problems


def verify_records(records: Iterable[AuditRecord | Mapping[str, Any]]) -> VerifyReport:
    """Check a whole exported chain on its own (no database): positions 1..n, links and hashes."""
    prev, count = GENESIS, 0
    for item in records:
        record = item if isinstance(item, AuditRecord) else AuditRecord.from_mapping(item)
        count += 1
        if record.position != count:
            return _bad(count - 1, count, record, f"record {count} is missing (the next one is {record.position})")
        problems = [] if record.prev_hash == prev else [f"its prev_hash is not the hash of record {count - 1}"]
        if record_hash(record.prev_hash, record.fields()) != record.hash:
            problems.append("its hash does not match its contents")
        if problems:
            return _bad(count - 1, count, record, "; ".join(problems))
        prev = record.hash
    return VerifyReport(ok=True, records=count, last_hash=prev if count else None)


def _bad(records: int, position: int, record: AuditRecord, problem: str) -> VerifyReport:
    where = f"record {position} (event {record.event_id}, {record.action})"
    return VerifyReport(False, records, position, f"{where}: {problem}", record.event_id)

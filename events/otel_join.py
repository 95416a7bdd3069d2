"""Where ingestion keeps the two halves of an OpenTelemetry LLM call until they meet: the span, and the log records
that carry its prompt and response (consumers/otel_join.py joins them; this module only stores them).

A row is one *part*: ``(trace_id, span_id, part)`` with ``part`` = ``span`` for the span, ``log:<digest>`` for a log
record (the digest of its content, so a record sent twice is one row). ``body`` is the part as JSON (the consumer's
to read), ``seen_ms`` when ingestion first stored it (milliseconds since the epoch, by the storing replica's clock;
a part stored again keeps its first time), ``deadline`` the end offsets of the other side's topics, recorded once
the part has waited the join window (JSON, ``{"topic": {"partition": offset}}``). The table is shared by every
ingest replica, so a span and its log records meet whichever replica reads each.

Why a table of its own and not events: the parts are not facts of the contract (docs/event-contract.md) but a waiting room;
the interaction that comes out of it is the event, with the span's id, so the room can be emptied and refilled
(a part stored twice, a join done twice) without a fact changing. Rows are written in their own transactions,
before the append that moves the consumer's offsets past the records they came from, and deleted after the append
that stored their interaction: a crash in between leaves rows that are joined again into a duplicate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, String, Table, Text, and_, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite

from events.sql_store import SqlEventStore
from events.tables import metadata

#: The span's part name (a log record's is ``log:<digest>``).
SPAN_PART = "span"

otel_join_parts = Table(
    "otel_join_parts",
    metadata,
    Column("trace_id", String(32), primary_key=True),
    Column("span_id", String(16), primary_key=True),
    Column("part", String(40), primary_key=True),
    Column("seen_ms", BigInteger, nullable=False, index=True),
    Column("deadline", Text, nullable=True),
    Column("body", Text, nullable=False),
)

#: Rows per statement where a statement names keys (well under SQLite's 32,766 bound parameters).
_CHUNK = 400

Key = tuple[str, str]


@dataclass(frozen=True)
class JoinPart:
    """One stored part of a call (see the module docstring)."""

    trace_id: str
    span_id: str
    part: str
    body: str
    seen_ms: int = 0
    deadline: str | None = None

    @property
    def key(self) -> Key:
        return (self.trace_id, self.span_id)


class SqlJoinParts:
    """The parts table of a :class:`SqlEventStore` (SQLite or PostgreSQL).

    Raises (every method):
        StoreUnavailableError: the database could not be reached (translated by the store).
    """

    def __init__(self, store: SqlEventStore) -> None:
        self.store = store

    def put(self, parts: Sequence[JoinPart], seen_ms: int) -> int:
        """Store parts not stored yet (a part already there keeps its row); returns how many were new."""
        if not parts:
            return 0
        rows = [
            {"trace_id": p.trace_id, "span_id": p.span_id, "part": p.part, "seen_ms": seen_ms, "body": p.body}
            for p in {(p.trace_id, p.span_id, p.part): p for p in parts}.values()
        ]
        insert = (pg.insert if self.store.dialect == "postgresql" else sqlite.insert)(otel_join_parts)
        added = 0
        with self.store.write_transaction(append_lock=False) as conn:
            for start in range(0, len(rows), _CHUNK):
                result = conn.execute(insert.on_conflict_do_nothing(), rows[start : start + _CHUNK])
                added += max(result.rowcount, 0)
        return added

    def load(self, keys: Iterable[Key]) -> list[JoinPart]:
        """Every part of the calls ``keys`` names, by key then part."""
        wanted = set(keys)
        if not wanted:
            return []
        traces = sorted({trace for trace, _ in wanted})
        found: list[JoinPart] = []
        t = otel_join_parts.c
        with self.store.read_connection() as conn:
            for start in range(0, len(traces), _CHUNK):
                stmt = select(otel_join_parts).where(t.trace_id.in_(traces[start : start + _CHUNK]))
                for row in conn.execute(stmt):
                    if (row.trace_id, row.span_id) in wanted:
                        found.append(
                            JoinPart(row.trace_id, row.span_id, row.part, row.body, int(row.seen_ms), row.deadline)
                        )
        found.sort(key=lambda p: (p.trace_id, p.span_id, p.part))
        return found

    def set_deadlines(self, *, seen_before_ms: int, span_deadline: str, log_deadline: str) -> int:
        """Give parts seen at or before ``seen_before_ms`` that have no deadline yet theirs: a span the end offsets
        of the log topics (``span_deadline``), a log record those of the span topics; returns how many."""
        t = otel_join_parts.c
        waiting = and_(t.deadline.is_(None), t.seen_ms <= seen_before_ms)
        with self.store.write_transaction(append_lock=False) as conn:
            spans = conn.execute(
                update(otel_join_parts).where(waiting, t.part == SPAN_PART).values(deadline=span_deadline)
            )
            logs = conn.execute(
                update(otel_join_parts).where(waiting, t.part != SPAN_PART).values(deadline=log_deadline)
            )
        return max(spans.rowcount, 0) + max(logs.rowcount, 0)

    def keys_with_deadlines(self, limit: int) -> list[Key]:
        """Calls one of whose parts has a deadline (the candidates to time out), oldest first."""
        t = otel_join_parts.c
        stmt = (
            select(t.trace_id, t.span_id, func.min(t.seen_ms).label("first"))
            .where(t.deadline.is_not(None))
            .group_by(t.trace_id, t.span_id)
            .order_by("first", t.trace_id, t.span_id)
            .limit(limit)
        )
        with self.store.read_connection() as conn:
            return [(row.trace_id, row.span_id) for row in conn.execute(stmt)]

    def forget(self, keys: Iterable[Key]) -> int:
        """Delete every part of the calls ``keys`` names; returns how many rows went."""
        rows = [{"t": trace, "s": span} for trace, span in set(keys)]
        if not rows:
            return 0
        t = otel_join_parts.c
        stmt = delete(otel_join_parts).where(t.trace_id == bindparam("t"), t.span_id == bindparam("s"))
        deleted = 0
        with self.store.write_transaction(append_lock=False) as conn:
            for start in range(0, len(rows), _CHUNK):
                result = conn.execute(stmt, rows[start : start + _CHUNK])
                deleted += max(result.rowcount, 0)
        return deleted

    def count(self) -> int:
        """How many parts wait (for operators and tests)."""
        with self.store.read_connection() as conn:
            return int(conn.execute(select(func.count()).select_from(otel_join_parts)).scalar_one())

    def load_offsets(self, group_id: str, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The consumer group's stored next offsets (what every replica of the group has stored)."""
        return self.store.load_offsets(group_id, partitions)

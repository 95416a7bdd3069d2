"""The event store on SQL: SQLite (WAL, the embedded default) and PostgreSQL (production).

Invariants this module keeps (docs/store.md):

* An append is one transaction: new events (duplicates by ``event_id`` ignored), dead letters
  (duplicates by ``source_key`` ignored) and consumer offsets commit together or not at all.
* ``seq`` increases in commit order, so a reader that tails by ``seq`` never skips an event that
  commits late. A serial column alone does not give that on PostgreSQL: two transactions draw 10 and
  11, 11 commits first, a tailer reads 11 and moves past 10 before 10 is visible. We therefore take a
  transaction-scoped advisory lock before drawing any ``seq`` and hold it until commit, so appends are
  serialised and draw their numbers in commit order. Batches are one statement each, so the lock is held
  for milliseconds. SQLite allows one writer at a time (``BEGIN IMMEDIATE``), which gives the same order.
  ``seq`` may have gaps on PostgreSQL (a conflicting insert still draws a number); readers must not
  assume it is dense.
* Offsets only move forward: a zombie consumer that commits late cannot rewind a partition.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    Table,
    Text,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    null,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError

from events.codec import canonical_json
from events.errors import ConfigurationError, StoreError
from events.model import (
    AppendResult,
    ConsumerOffset,
    DeadLetter,
    Event,
    KafkaCoordinates,
    StoredDeadLetter,
    StoredEvent,
)
from events.redact import mask_secrets_in_text, url_secrets
from events.sql_errors import database_message as _database_message
from events.sql_errors import translate as _translate
from events.sql_rows import clear_rows, load_rows, table_rows, write_rows
from events.store import Key, Position, tail_events
from events.store import Row as ReadModelRow
from events.tables import consumer_offsets, dead_letters, events, monitor_checkpoints, projection_checkpoints

logger = logging.getLogger(__name__)

#: First key of the PostgreSQL advisory locks on claimed positions (``SqlUnitOfWork.position(claim=True)``).
POSITION_LOCK_CLASS = 0x616C6E64  # "alnd"
#: Key of the PostgreSQL advisory lock that serialises appends ("alignd" in ASCII).
APPEND_LOCK_KEY = 0x616C69676E64

_EVENT_COLUMNS = (
    "event_id, type, schema_version, occurred_at, recorded_at, source, request_id, payload, "
    "kafka_topic, kafka_partition, kafka_offset"
)

# The batch travels as one JSON document that PostgreSQL unpacks (json_to_recordset). Measured per event on
# this project's 2-core machine: ~10 us of Python CPU, against ~29 us for ten parameter arrays (psycopg
# dumps list items in Python) and ~60 us for text arrays (a regex escapes every payload); the parsing moves
# to the server process, off the ingestion thread's core.
_PG_INSERT_EVENTS = f"""
INSERT INTO events ({_EVENT_COLUMNS})
SELECT x.event_id, x.type, x.schema_version, x.occurred_at, %(recorded_at)s, x.source, x.request_id,
       x.payload, x.kafka_topic, x.kafka_partition, x.kafka_offset
FROM ROWS FROM (json_to_recordset(%(rows)s::json) AS (
    event_id varchar, type varchar, schema_version int, occurred_at timestamptz, source varchar,
    request_id varchar, payload text, kafka_topic varchar, kafka_partition int, kafka_offset bigint))
    WITH ORDINALITY AS x(event_id, type, schema_version, occurred_at, source, request_id, payload,
                         kafka_topic, kafka_partition, kafka_offset, n)
ORDER BY x.n
ON CONFLICT (event_id) DO NOTHING
"""

_SQLITE_INSERT_EVENTS = (
    f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_timestamp(moment: datetime) -> str:
    # The storage format SQLAlchemy's SQLite DateTime type reads back ("%Y-%m-%d %H:%M:%S.%f"), built
    # with isoformat, which is about 2.5x faster than strftime on the ingestion hot path.
    return moment.astimezone(UTC).isoformat(" ", "microseconds")[:26]


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def create_store_engine(url: str, *, echo: bool = False, pool_size: int = 5) -> Engine:
    """Create an engine with the settings the store relies on.

    SQLite: WAL (readers do not block the writer), ``synchronous=NORMAL`` (safe against process crashes;
    on power loss the last transactions may roll back, but events and offsets roll back together, so the
    consumer re-reads them from Kafka), a busy timeout for concurrent writers, and ``BEGIN IMMEDIATE`` for
    write transactions so that two writers queue instead of deadlocking on a lock upgrade.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            write = connection.get_execution_options().get("alignd_write", False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return create_engine(url, echo=echo, pool_size=pool_size, pool_pre_ping=True)


def checked_store_engine(url: str, *, pool_size: int = 5) -> Engine:
    """:func:`create_store_engine`, refusing a URL SQLAlchemy cannot read with a message that shows no secret.

    Raises:
        ConfigurationError: the URL cannot be used; the reason is SQLAlchemy's, with the URL's secrets masked
            (SQLAlchemy's own message quotes the URL whole, password included).
    """
    try:
        return create_store_engine(url, pool_size=pool_size)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(mask_secrets_in_text(str(exc).strip().splitlines()[0], url_secrets(url))) from None


def _select_events(
    after_seq: int, *, to_seq: int | None = None, limit: int, types: Iterable[str] | None = None
) -> Select[Any]:
    stmt = select(events).where(events.c.seq > after_seq).order_by(events.c.seq).limit(limit)
    if to_seq is not None:
        stmt = stmt.where(events.c.seq <= to_seq)
    if types is not None:
        stmt = stmt.where(events.c.type.in_(list(types)))
    return stmt


def _select_about(
    request_ids: Sequence[str], *, max_seq: int | None = None, types: Iterable[str] | None = None
) -> Select[Any]:
    stmt = select(events).where(events.c.request_id.in_(list(request_ids))).order_by(events.c.seq)
    if max_seq is not None:
        stmt = stmt.where(events.c.seq <= max_seq)
    if types is not None:
        stmt = stmt.where(events.c.type.in_(list(types)))
    return stmt


# --- positions (tracking records) ---------------------------------------------------------------------------
# Two tables predate the one API: a position saved with a state (the monitors') is a row of monitor_checkpoints,
# one without a row of projection_checkpoints. A name lives in one of them: saving deletes it from both.


def read_position(conn: Connection, name: str, *, with_state: bool = True) -> Position:
    """The position ``name`` as ``conn`` sees it (seq 0 when none was saved)."""
    pc, mc = projection_checkpoints, monitor_checkpoints
    no_state = cast(null(), Text).label("state")
    query = union_all(
        select(pc.c.last_seq, no_state).where(pc.c.name == name),
        select(mc.c.last_seq, mc.c.state.label("state") if with_state else no_state).where(mc.c.name == name),
    )
    row = conn.execute(query).first()
    if row is None:
        return Position(name)
    return Position(name, int(row.last_seq), row.state)


def write_position(conn: Connection, name: str, seq: int, state: str | None = None) -> None:
    """Save the position ``name`` in ``conn``'s transaction, replacing what was saved under that name."""
    delete_position(conn, name)
    if state is None:
        conn.execute(insert(projection_checkpoints).values(name=name, last_seq=seq))
    else:
        conn.execute(insert(monitor_checkpoints).values(name=name, last_seq=seq, state=state))


def delete_position(conn: Connection, name: str) -> None:
    conn.execute(delete(projection_checkpoints).where(projection_checkpoints.c.name == name))
    conn.execute(delete(monitor_checkpoints).where(monitor_checkpoints.c.name == name))


class SqlUnitOfWork:
    """One write transaction (:meth:`SqlEventStore.unit_of_work`). ``connection`` is there for the SQL of the
    ground floor itself (projection rows, audit records); the floors above use the methods."""

    def __init__(self, store: SqlEventStore, connection: Connection, *, locked: bool) -> None:
        self.store, self.connection, self._locked = store, connection, locked

    def append(
        self,
        new_events: Sequence[Event],
        *,
        origins: Sequence[KafkaCoordinates | None] | None = None,
        offsets: Sequence[ConsumerOffset] = (),
        dead_letters: Sequence[DeadLetter] = (),
    ) -> AppendResult:
        if not self._locked:  # a unit of work opened without the append lock takes it before drawing any seq
            self.store._lock_for_append(self.connection)  # noqa: SLF001 - the store's own unit of work
            self._locked = True
        return self.store.append_in(
            self.connection, new_events, origins=origins, offsets=offsets, dead_letters=dead_letters
        )

    def position(self, name: str, *, with_state: bool = True, claim: bool = False) -> Position:
        if claim and self.store.dialect == "postgresql":
            # A transaction-scoped advisory lock on (class, hash of the name): the two-key form never meets the
            # one-key append and audit locks. SQLite needs none: its write transactions (BEGIN IMMEDIATE) are one
            # at a time already.
            self.connection.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(%(cls)s, hashtext(%(name)s))", {"cls": POSITION_LOCK_CLASS, "name": name}
            )
        return read_position(self.connection, name, with_state=with_state)

    def save_position(self, name: str, seq: int, state: str | None = None) -> None:
        write_position(self.connection, name, seq, state)

    def delete_position(self, name: str) -> None:
        delete_position(self.connection, name)

    def read(self, after_seq: int = 0, *, limit: int = 1000, types: Iterable[str] | None = None) -> list[StoredEvent]:
        stmt = _select_events(after_seq, limit=limit, types=types)
        return [row_to_event(row) for row in self.connection.execute(stmt)]

    def by_request_id(
        self, request_ids: Sequence[str], *, max_seq: int, types: Iterable[str] | None = None
    ) -> list[StoredEvent]:
        if not request_ids:
            return []
        stmt = _select_about(request_ids, max_seq=max_seq, types=types)
        return [row_to_event(row) for row in self.connection.execute(stmt)]

    def load_rows(self, table: Table, keys: Sequence[Key]) -> dict[Key, ReadModelRow]:
        return load_rows(self.connection, table, keys)

    def write_rows(self, table: Table, *, stale: Sequence[Key], rows: Sequence[Mapping[str, Any]]) -> None:
        write_rows(self.connection, table, stale=stale, rows=rows)

    def clear_rows(self, table: Table) -> None:
        clear_rows(self.connection, table)


def storable_text(text: str) -> str:
    """``text`` with what a database text column cannot hold (NUL, lone surrogates) written as escapes.

    For the texts alignd writes about bad input (a dead letter's reason, the id it claimed), which must be
    stored whatever the input was; events themselves are refused at validation instead (events.codec)."""
    if not isinstance(text, str):  # not ours to mend: the database judges it
        return text
    if "\x00" not in text:
        try:
            text.encode("utf-8")  # fails on a lone surrogate
            return text
        except UnicodeEncodeError:
            pass
    return text.replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode("utf-8")


def _origin(row: Row[Any]) -> KafkaCoordinates | None:
    if row.kafka_topic is None:
        return None
    return KafkaCoordinates(row.kafka_topic, row.kafka_partition, row.kafka_offset)


def row_to_event(row: Row[Any]) -> StoredEvent:
    origin = _origin(row)
    occurred_at = _aware(row.occurred_at)
    recorded_at = _aware(row.recorded_at)
    assert occurred_at is not None and recorded_at is not None
    return StoredEvent(
        seq=row.seq,
        event=Event(
            event_id=row.event_id,
            type=row.type,
            schema_version=row.schema_version,
            occurred_at=occurred_at,
            source=row.source,
            payload=json.loads(row.payload),
        ),
        recorded_at=recorded_at,
        origin=origin,
    )


def _row_to_dead_letter(row: Row[Any]) -> StoredDeadLetter:
    origin = _origin(row)
    headers = tuple((name, bytes.fromhex(value)) for name, value in json.loads(row.headers))
    created_at = _aware(row.created_at)
    assert created_at is not None
    return StoredDeadLetter(
        id=row.id,
        dead_letter=DeadLetter(
            source_key=row.source_key,
            reason=row.reason,
            error_kind=row.error_kind,
            value=row.message_value,
            key=row.message_key,
            headers=headers,
            origin=origin,
            event_id=row.event_id,
        ),
        created_at=created_at,
        published_at=_aware(row.published_at),
        requeued_at=_aware(row.requeued_at),
    )


class SqlEventStore:
    """Append-only event store with consumer offsets and dead letters, on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        if self.dialect not in {"sqlite", "postgresql"}:
            raise StoreError(f"unsupported database {self.dialect!r}; use sqlite:/// or postgresql+psycopg://")

    @classmethod
    def from_url(cls, url: str) -> SqlEventStore:
        return cls(create_store_engine(url))

    def dispose(self) -> None:
        self.engine.dispose()

    # --- writing -------------------------------------------------------------------------------

    @contextmanager
    def write_transaction(self, *, append_lock: bool = True) -> Iterator[Connection]:
        """A write transaction; with ``append_lock`` (needed to append events) it holds the append lock."""
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(alignd_write=True)
                with conn.begin():
                    if append_lock:
                        self._lock_for_append(conn)
                    yield conn
        except (OperationalError, InterfaceError, DBAPIError) as exc:
            raise _translate(exc) from exc

    @contextmanager
    def unit_of_work(self, *, append_lock: bool = True) -> Iterator[SqlUnitOfWork]:
        """A unit of work in one write transaction: it commits when the block ends, or rolls back when it raises.

        Args:
            append_lock: take the append lock at once (see the module docstring). Without it, the unit of work
                takes the lock at its first append, and one that appends nothing never waits behind appenders.

        Raises:
            StoreUnavailableError: the database could not be reached; nothing was written.
        """
        with self.write_transaction(append_lock=append_lock) as conn:
            yield SqlUnitOfWork(self, conn, locked=append_lock)

    def _lock_for_append(self, conn: Connection) -> None:
        # See the module docstring: serialising appends makes seq order equal commit order.
        if self.dialect == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": APPEND_LOCK_KEY})

    def append(
        self,
        new_events: Sequence[Event],
        *,
        origins: Sequence[KafkaCoordinates | None] | None = None,
        offsets: Sequence[ConsumerOffset] = (),
        dead_letters: Sequence[DeadLetter] = (),
    ) -> AppendResult:
        """Append a batch atomically and idempotently.

        Args:
            new_events: events in the order they should get ``seq`` numbers.
            origins: the Kafka coordinates of each event, or ``None`` entries for internal events.
            offsets: next offsets to record for the partitions the batch came from.
            dead_letters: messages that failed validation.

        Returns:
            How many events were new, how many were duplicates, and the ids of the dead letters.

        Raises:
            StoreUnavailableError: the database could not be reached; nothing was written.
        """
        with self.write_transaction() as conn:
            return self.append_in(conn, new_events, origins=origins, offsets=offsets, dead_letters=dead_letters)

    def append_in(
        self,
        conn: Connection,
        new_events: Sequence[Event],
        *,
        origins: Sequence[KafkaCoordinates | None] | None = None,
        offsets: Sequence[ConsumerOffset] = (),
        dead_letters: Sequence[DeadLetter] = (),
    ) -> AppendResult:
        """Like :meth:`append`, inside a transaction opened by :meth:`write_transaction`."""
        if origins is None:
            origins = [None] * len(new_events)
        if len(origins) != len(new_events):
            raise ValueError("origins must have one entry per event")
        seen: set[str] = set()
        batch: list[tuple[Event, KafkaCoordinates | None]] = []
        for item, origin in zip(new_events, origins, strict=True):
            if item.event_id not in seen:
                seen.add(item.event_id)
                batch.append((item, origin))
        now = utcnow()
        inserted = self._insert_events(conn, batch, now) if batch else 0
        dl_ids = self._insert_dead_letters(conn, dead_letters, now) if dead_letters else ()
        if offsets:
            self._upsert_offsets(conn, offsets, now)
        return AppendResult(
            appended=inserted,
            duplicates=len(new_events) - inserted,
            dead_letters=len(dl_ids),
            offsets=len(offsets),
            dead_letter_ids=dl_ids,
        )

    def refused_events(
        self, new_events: Sequence[Event], origins: Sequence[KafkaCoordinates | None] | None = None
    ) -> list[tuple[int, str]]:
        """Which events of a batch the database refuses, each with its reason; nothing is written.

        For a batch whose append failed with :class:`StoreRefusedError` (or a value that could not be
        serialised): halves are inserted in savepoints of one transaction that is then rolled back, splitting
        any half that fails, so ``k`` bad events in ``n`` cost about ``2k log n`` statements. The caller
        dead-letters what is returned and appends the rest (consumers/ingest.py).

        Returns:
            ``(index in new_events, the database's message)`` for each refused event, in order.

        Raises:
            StoreUnavailableError: the database could not be reached.
        """
        if origins is None:
            origins = [None] * len(new_events)
        batch = list(zip(new_events, origins, strict=True))
        refused: list[tuple[int, str]] = []
        now = utcnow()

        def bisect(conn: Connection, start: int, stop: int) -> None:
            try:
                with conn.begin_nested():
                    self._insert_events(conn, batch[start:stop], now)
            except (DataError, IntegrityError, TypeError, ValueError, UnicodeError) as exc:
                if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                    raise _translate(exc) from exc
                if stop - start == 1:
                    refused.append((start, _database_message(exc)))
                    return
                middle = (start + stop) // 2
                bisect(conn, start, middle)
                bisect(conn, middle, stop)

        with self.write_transaction() as conn:
            if batch:
                bisect(conn, 0, len(batch))
            conn.rollback()  # a dry run: only the verdicts are wanted
        return refused

    def _insert_events(
        self, conn: Connection, batch: list[tuple[Event, KafkaCoordinates | None]], now: datetime
    ) -> int:
        if self.dialect == "postgresql":
            documents = [
                {
                    "event_id": e.event_id,
                    "type": e.type,
                    "schema_version": e.schema_version,
                    "occurred_at": e.occurred_at.isoformat(),
                    "source": e.source,
                    "request_id": e.request_id,
                    "payload": e.payload_json,
                    "kafka_topic": o.topic if o else None,
                    "kafka_partition": o.partition if o else None,
                    "kafka_offset": o.offset if o else None,
                }
                for e, o in batch
            ]
            result = conn.exec_driver_sql(
                _PG_INSERT_EVENTS, {"recorded_at": now, "rows": canonical_json(documents, checked=True)}
            )
            return int(result.rowcount)
        recorded = _sqlite_timestamp(now)
        rows = [
            (
                e.event_id,
                e.type,
                e.schema_version,
                _sqlite_timestamp(e.occurred_at),
                recorded,
                e.source,
                e.request_id,
                e.payload_json,
                o.topic if o else None,
                o.partition if o else None,
                o.offset if o else None,
            )
            for e, o in batch
        ]
        before = conn.exec_driver_sql("SELECT total_changes()").scalar_one()
        conn.exec_driver_sql(_SQLITE_INSERT_EVENTS, rows)
        after = conn.exec_driver_sql("SELECT total_changes()").scalar_one()
        return int(after - before)

    def _dialect_insert(self, table: Any) -> Any:
        return (pg.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def _insert_dead_letters(self, conn: Connection, letters: Sequence[DeadLetter], now: datetime) -> tuple[int, ...]:
        rows = [
            {
                "source_key": d.source_key,
                "error_kind": d.error_kind,
                "reason": storable_text(d.reason),
                "event_id": storable_text(d.event_id)[:128] if isinstance(d.event_id, str) else d.event_id,
                "kafka_topic": d.origin.topic if d.origin else None,
                "kafka_partition": d.origin.partition if d.origin else None,
                "kafka_offset": d.origin.offset if d.origin else None,
                "message_key": d.key,
                "message_value": d.value,
                "headers": json.dumps([[name, value.hex()] for name, value in d.headers]),
                "created_at": now,
            }
            for d in letters
        ]
        conn.execute(self._dialect_insert(dead_letters).on_conflict_do_nothing(index_elements=["source_key"]), rows)
        keys = [d.source_key for d in letters]
        found = conn.execute(
            select(dead_letters.c.id).where(dead_letters.c.source_key.in_(keys)).order_by(dead_letters.c.id)
        )
        return tuple(found.scalars())

    def _upsert_offsets(self, conn: Connection, offsets: Sequence[ConsumerOffset], now: datetime) -> None:
        rows = [
            {
                "group_id": o.group_id,
                "topic": o.topic,
                "partition": o.partition,
                "next_offset": o.next_offset,
                "updated_at": now,
            }
            for o in offsets
        ]
        stmt = self._dialect_insert(consumer_offsets)
        stmt = stmt.on_conflict_do_update(
            index_elements=["group_id", "topic", "partition"],
            set_={"next_offset": stmt.excluded.next_offset, "updated_at": stmt.excluded.updated_at},
            where=consumer_offsets.c.next_offset < stmt.excluded.next_offset,
        )
        conn.execute(stmt, rows)

    # --- reading -------------------------------------------------------------------------------

    @contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """A connection for reads (no write lock taken), with errors translated; for the ground floor's own SQL.

        Raises:
            StoreUnavailableError: the database could not be reached.
        """
        with self._read() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except (OperationalError, InterfaceError, DBAPIError) as exc:
            raise _translate(exc) from exc

    def read(
        self,
        after_seq: int = 0,
        *,
        to_seq: int | None = None,
        limit: int = 1000,
        types: Iterable[str] | None = None,
    ) -> list[StoredEvent]:
        """Events with ``after_seq < seq <= to_seq``, in ``seq`` order, at most ``limit``."""
        stmt = _select_events(after_seq, to_seq=to_seq, limit=limit, types=types)
        with self._read() as conn:
            return [row_to_event(row) for row in conn.execute(stmt)]

    def by_request_id(self, request_ids: str | Iterable[str], *, max_seq: int | None = None) -> list[StoredEvent]:
        """All events about the given request ids, in ``seq`` order."""
        ids = [request_ids] if isinstance(request_ids, str) else list(dict.fromkeys(request_ids))
        if not ids:
            return []
        stmt = _select_about(ids, max_seq=max_seq)
        with self._read() as conn:
            return [row_to_event(row) for row in conn.execute(stmt)]

    def get(self, event_id: str) -> StoredEvent | None:
        with self._read() as conn:
            row = conn.execute(select(events).where(events.c.event_id == event_id)).first()
        return row_to_event(row) if row is not None else None

    def count(self, types: Iterable[str] | None = None) -> int:
        stmt = select(func.count()).select_from(events)
        if types is not None:
            stmt = stmt.where(events.c.type.in_(list(types)))
        with self._read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def count_by_type(self) -> dict[str, int]:
        stmt = select(events.c.type, func.count()).group_by(events.c.type).order_by(events.c.type)
        with self._read() as conn:
            return {row[0]: int(row[1]) for row in conn.execute(stmt)}

    def max_seq(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.coalesce(func.max(events.c.seq), 0))).scalar_one())

    def tail(
        self,
        after_seq: int = 0,
        *,
        types: Iterable[str] | None = None,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        should_stop: Callable[[], bool] = lambda: False,
        follow: bool = True,
    ) -> Iterator[StoredEvent]:
        """Yield events after ``after_seq`` in order; with ``follow``, wait for new ones until stopped."""
        return tail_events(
            self.read,
            after_seq,
            types=types,
            batch_size=batch_size,
            poll_interval=poll_interval,
            should_stop=should_stop,
            follow=follow,
        )

    def table_rows(self, table: Table) -> Iterator[ReadModelRow]:
        """Every row of the read model ``table``, in primary-key order (for a projection's digest), streamed."""
        with self._read() as conn:
            yield from table_rows(conn, table)

    def ping(self) -> None:
        """Return when the database answers ``SELECT 1``.

        Raises:
            StoreUnavailableError: it does not.
        """
        with self._read() as conn:
            conn.exec_driver_sql("SELECT 1")

    # --- positions -----------------------------------------------------------------------------

    def position(self, name: str, *, with_state: bool = True) -> Position:
        """The position saved under ``name``; with ``with_state=False`` its state is not read (it can be large)."""
        with self._read() as conn:
            return read_position(conn, name, with_state=with_state)

    def save_position(self, name: str, seq: int, state: str | None = None) -> None:
        """Save a position in a transaction of its own."""
        with self.unit_of_work(append_lock=False) as uow:
            uow.save_position(name, seq, state)

    # --- consumer offsets ----------------------------------------------------------------------

    def load_offsets(self, group_id: str, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The next offsets stored for ``group_id``, for those of ``partitions`` that have one."""
        wanted = set(partitions)
        if not wanted:
            return {}
        topics = sorted({topic for topic, _ in wanted})
        stmt = select(consumer_offsets).where(
            consumer_offsets.c.group_id == group_id, consumer_offsets.c.topic.in_(topics)
        )
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return {(r.topic, r.partition): int(r.next_offset) for r in rows if (r.topic, r.partition) in wanted}

    # --- dead letters --------------------------------------------------------------------------

    def list_dead_letters(
        self,
        *,
        limit: int = 100,
        after_id: int = 0,
        unpublished_only: bool = False,
        include_requeued: bool = True,
        ids: Sequence[int] | None = None,
    ) -> list[StoredDeadLetter]:
        stmt = select(dead_letters).where(dead_letters.c.id > after_id).order_by(dead_letters.c.id).limit(limit)
        if unpublished_only:
            stmt = stmt.where(dead_letters.c.published_at.is_(None))
        if not include_requeued:
            stmt = stmt.where(dead_letters.c.requeued_at.is_(None))
        if ids is not None:
            stmt = stmt.where(dead_letters.c.id.in_(list(ids)))
        with self._read() as conn:
            return [_row_to_dead_letter(row) for row in conn.execute(stmt)]

    def count_dead_letters(self, *, by_kind: bool = False) -> dict[str, int]:
        stmt = select(dead_letters.c.error_kind, func.count()).group_by(dead_letters.c.error_kind)
        with self._read() as conn:
            counts = {row[0]: int(row[1]) for row in conn.execute(stmt)}
        return counts if by_kind else {"total": sum(counts.values())}

    def _mark_dead_letters(self, column: str, ids: Sequence[int]) -> None:
        if not ids:
            return
        stmt = update(dead_letters).where(dead_letters.c.id.in_(list(ids))).values({column: utcnow()})
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(alignd_write=True)
                with conn.begin():
                    conn.execute(stmt)
        except (OperationalError, InterfaceError, DBAPIError) as exc:
            raise _translate(exc) from exc

    def mark_dead_letters_published(self, ids: Sequence[int]) -> None:
        self._mark_dead_letters("published_at", ids)

    def mark_dead_letters_requeued(self, ids: Sequence[int]) -> None:
        self._mark_dead_letters("requeued_at", ids)


def offsets_from_mapping(group_id: str, next_offsets: Mapping[tuple[str, int], int]) -> list[ConsumerOffset]:
    return [
        ConsumerOffset(group_id, topic, partition, offset)
        for (topic, partition), offset in sorted(next_offsets.items())
    ]

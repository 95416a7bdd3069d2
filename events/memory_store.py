"""The event store in memory: the same contract as the SQL store, for fast tests of what runs on a store.

A fake with state, not a mock (STYLE.md, cosmicpython's ``FakeRepository``): tests of the monitor runner, the
outbox and the enforcement executor run against it in milliseconds, and ``tests/contract/test_store_contract.py``
holds it to the contract the SQL stores meet (duplicates ignored, one batch atomic, offsets only forward,
positions saved with what they track). It keeps the projections' rows too (by table name and primary key), so the
projection runner runs on it; what needs SQL itself, the audit chain and the queries of :mod:`events.read_models`,
needs the SQL store.

One lock serialises units of work (the single writer SQLite has), and readers take it too, so a reader never
sees half a unit of work; ``seq`` is therefore in commit order, as on the SQL stores. A unit of work that raises
is undone step by step, which leaves the store as it was.
"""

from __future__ import annotations

import json
import threading
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from events.errors import StoreRefusedError
from events.model import (
    AppendResult,
    ConsumerOffset,
    DeadLetter,
    Event,
    KafkaCoordinates,
    StoredDeadLetter,
    StoredEvent,
)
from events.store import EventStore, Key, Position, Row, tail_events

if TYPE_CHECKING:
    from sqlalchemy import Table

    from events.sql_store import SqlEventStore

# The SQL columns' widths (events/tables.py): what the SQL stores refuse, this one refuses too.
_EVENT_LIMITS = {"event_id": 128, "type": 64, "source": 256}
_REQUEST_ID_LIMIT = 256
_LETTER_LIMITS = {"source_key": 512, "error_kind": 64}

Undo = list[Callable[[], None]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _sortable(key: Key) -> tuple[tuple[bool, Any], ...]:
    # None sorts first, as NULLS FIRST would; keys are otherwise of one type per column.
    return tuple((value is not None, value) for value in key)


def _refusal(item: Event) -> str | None:
    """Why the SQL store would refuse ``item`` (a NOT NULL or a column width), or None."""
    for name, limit in _EVENT_LIMITS.items():
        value = getattr(item, name)
        if not isinstance(value, str):
            return f"{name} is {type(value).__name__}, not text (NOT NULL)"
        if len(value) > limit:
            return f"{name} is {len(value)} characters, over the column's {limit}"
    if item.request_id is not None and len(item.request_id) > _REQUEST_ID_LIMIT:
        return f"request_id is {len(item.request_id)} characters, over the column's {_REQUEST_ID_LIMIT}"
    return None


def _letter_refusal(letter: DeadLetter) -> str | None:
    for name in ("source_key", "error_kind", "reason"):
        value = getattr(letter, name)
        if not isinstance(value, str):
            return f"dead letter {name} is {type(value).__name__}, not text (NOT NULL)"
        if len(value) > _LETTER_LIMITS.get(name, len(value)):
            return f"dead letter {name} is {len(value)} characters, over the column's {_LETTER_LIMITS[name]}"
    return None


class InMemoryUnitOfWork:
    """A unit of work of :class:`InMemoryEventStore`: changes apply at once and are undone if the block raises."""

    def __init__(self, store: InMemoryEventStore, undo: Undo) -> None:
        self._store, self._undo = store, undo

    def append(
        self,
        new_events: Sequence[Event],
        *,
        origins: Sequence[KafkaCoordinates | None] | None = None,
        offsets: Sequence[ConsumerOffset] = (),
        dead_letters: Sequence[DeadLetter] = (),
    ) -> AppendResult:
        return self._store._append(self._undo, new_events, origins, offsets, dead_letters)  # noqa: SLF001

    def position(self, name: str, *, with_state: bool = True, claim: bool = False) -> Position:
        # Every unit of work holds the store's one lock: a claim is already exclusive.
        return self._store.position(name, with_state=with_state)

    def save_position(self, name: str, seq: int, state: str | None = None) -> None:
        self._store._set_position(self._undo, name, Position(name, seq, state))  # noqa: SLF001

    def delete_position(self, name: str) -> None:
        self._store._set_position(self._undo, name, None)  # noqa: SLF001

    def read(self, after_seq: int = 0, *, limit: int = 1000, types: Iterable[str] | None = None) -> list[StoredEvent]:
        return self._store.read(after_seq, limit=limit, types=types)

    def by_request_id(
        self, request_ids: Sequence[str], *, max_seq: int, types: Iterable[str] | None = None
    ) -> list[StoredEvent]:
        wanted = set(types) if types is not None else None
        found = self._store.by_request_id(request_ids, max_seq=max_seq)
        return [s for s in found if wanted is None or s.event.type in wanted]

    def load_rows(self, table: Table, keys: Sequence[Key]) -> dict[Key, Row]:
        rows = self._store._table(table.name)  # noqa: SLF001
        return {key: dict(rows[key]) for key in keys if key in rows}

    def write_rows(self, table: Table, *, stale: Sequence[Key], rows: Sequence[Mapping[str, Any]]) -> None:
        self._store._write_rows(self._undo, table, stale, rows)  # noqa: SLF001

    def clear_rows(self, table: Table) -> None:
        current = self._store._table(table.name)  # noqa: SLF001
        self._store._write_rows(self._undo, table, list(current), [])  # noqa: SLF001


class InMemoryEventStore:
    """Append-only event store with consumer offsets, dead letters and positions, in this process's memory.

    Args:
        clock: when events are recorded and dead letters created or marked (UTC).
    """

    dialect = "memory"

    def __init__(self, clock: Callable[[], datetime] = _utcnow) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self._events: list[StoredEvent] = []
        self._seqs: list[int] = []
        self._by_id: dict[str, StoredEvent] = {}
        self._by_request: dict[str, list[StoredEvent]] = {}
        self._next_seq = 1
        self._offsets: dict[tuple[str, str, int], int] = {}
        self._letters: dict[int, StoredDeadLetter] = {}
        self._letter_ids: dict[str, int] = {}
        self._next_letter_id = 1
        self._positions: dict[str, Position] = {}
        self._tables: dict[str, dict[Key, Row]] = {}

    def dispose(self) -> None:
        """Nothing to release; here for the contract."""

    def ping(self) -> None:
        """Always answers."""

    # --- writing -------------------------------------------------------------------------------

    @contextmanager
    def unit_of_work(self, *, append_lock: bool = True) -> Iterator[InMemoryUnitOfWork]:
        """A unit of work; ``append_lock`` changes nothing here (every unit of work holds the one lock)."""
        with self._lock:
            undo: Undo = []
            try:
                yield InMemoryUnitOfWork(self, undo)
            except BaseException:
                for step in reversed(undo):
                    step()
                raise

    def append(
        self,
        new_events: Sequence[Event],
        *,
        origins: Sequence[KafkaCoordinates | None] | None = None,
        offsets: Sequence[ConsumerOffset] = (),
        dead_letters: Sequence[DeadLetter] = (),
    ) -> AppendResult:
        """Append a batch atomically and idempotently (see :meth:`events.sql_store.SqlEventStore.append`).

        Raises:
            StoreRefusedError: an event or dead letter the SQL store would refuse; nothing was written.
        """
        with self.unit_of_work() as uow:
            return uow.append(new_events, origins=origins, offsets=offsets, dead_letters=dead_letters)

    def refused_events(
        self, new_events: Sequence[Event], origins: Sequence[KafkaCoordinates | None] | None = None
    ) -> list[tuple[int, str]]:
        """Which events of a batch this store refuses, each with its reason; nothing is written."""
        refused = []
        for index, item in enumerate(new_events):
            reason = _refusal(item)
            if reason is None:
                try:
                    item.payload_json  # noqa: B018 - serialising is the check
                except (TypeError, ValueError) as exc:
                    reason = f"{type(exc).__name__}: {exc}"
            if reason is not None:
                refused.append((index, reason))
        return refused

    def _append(
        self,
        undo: Undo,
        new_events: Sequence[Event],
        origins: Sequence[KafkaCoordinates | None] | None,
        offsets: Sequence[ConsumerOffset],
        dead_letters: Sequence[DeadLetter],
    ) -> AppendResult:
        if origins is None:
            origins = [None] * len(new_events)
        if len(origins) != len(new_events):
            raise ValueError("origins must have one entry per event")
        now = self.clock()
        batch: list[tuple[Event, KafkaCoordinates | None]] = []
        seen: set[str] = set()
        for item, origin in zip(new_events, origins, strict=True):
            reason = _refusal(item)
            if reason is not None:
                raise StoreRefusedError(reason)
            if item.event_id not in seen and item.event_id not in self._by_id:
                seen.add(item.event_id)
                batch.append((item, origin))
        for letter in dead_letters:
            reason = _letter_refusal(letter)
            if reason is not None:
                raise StoreRefusedError(reason)
        for item, origin in batch:
            self._insert_event(undo, item, origin, now)
        letter_ids = tuple(sorted({self._insert_letter(undo, letter, now) for letter in dead_letters}))
        for offset in offsets:
            self._move_offset(undo, offset)
        return AppendResult(
            appended=len(batch),
            duplicates=len(new_events) - len(batch),
            dead_letters=len(letter_ids),
            offsets=len(offsets),
            dead_letter_ids=letter_ids,
        )

    def _insert_event(self, undo: Undo, item: Event, origin: KafkaCoordinates | None, now: datetime) -> None:
        # A copy, as a database keeps one: the caller's payload may change after the append.
        event = Event(
            event_id=item.event_id,
            type=item.type,
            occurred_at=item.occurred_at.astimezone(UTC),
            source=item.source,
            payload=json.loads(item.payload_json),
            schema_version=item.schema_version,
        )
        stored = StoredEvent(self._next_seq, event, now, origin)
        self._next_seq += 1
        self._events.append(stored)
        self._seqs.append(stored.seq)
        self._by_id[event.event_id] = stored
        if event.request_id is not None:
            self._by_request.setdefault(event.request_id, []).append(stored)

        def remove() -> None:
            self._events.pop()
            self._seqs.pop()
            del self._by_id[event.event_id]
            if event.request_id is not None:
                self._by_request[event.request_id].pop()

        undo.append(remove)

    def _insert_letter(self, undo: Undo, letter: DeadLetter, now: datetime) -> int:
        known = self._letter_ids.get(letter.source_key)
        if known is not None:
            return known
        letter_id = self._next_letter_id
        self._next_letter_id += 1
        self._letters[letter_id] = StoredDeadLetter(letter_id, letter, now, None, None)
        self._letter_ids[letter.source_key] = letter_id

        def remove() -> None:
            del self._letters[letter_id]
            del self._letter_ids[letter.source_key]

        undo.append(remove)
        return letter_id

    def _move_offset(self, undo: Undo, offset: ConsumerOffset) -> None:
        key = (offset.group_id, offset.topic, offset.partition)
        before = self._offsets.get(key)
        if before is not None and before >= offset.next_offset:
            return  # offsets only move forward: a zombie consumer committing late changes nothing
        self._offsets[key] = offset.next_offset

        def restore() -> None:
            if before is None:
                del self._offsets[key]
            else:
                self._offsets[key] = before

        undo.append(restore)

    def _set_position(self, undo: Undo, name: str, position: Position | None) -> None:
        before = self._positions.get(name)
        if position is None:
            self._positions.pop(name, None)
        else:
            self._positions[name] = position

        def restore() -> None:
            if before is None:
                self._positions.pop(name, None)
            else:
                self._positions[name] = before

        undo.append(restore)

    def _table(self, name: str) -> dict[Key, Row]:
        return self._tables.setdefault(name, {})

    def _write_rows(self, undo: Undo, table: Table, stale: Sequence[Key], rows: Sequence[Mapping[str, Any]]) -> None:
        current = self._table(table.name)
        columns = [c.name for c in table.primary_key.columns]
        new = {tuple(row[c] for c in columns): dict(row) for row in rows}
        if len(new) != len(rows) or any(key in current and key not in stale for key in new):
            raise StoreRefusedError(f"duplicate primary key in {table.name}")  # as the SQL tables would
        before = {key: current[key] for key in [*stale, *new] if key in current}
        for key in stale:
            current.pop(key, None)
        current.update(new)

        def restore() -> None:
            for key in new:
                current.pop(key, None)
            current.update(before)

        undo.append(restore)

    # --- reading -------------------------------------------------------------------------------

    def read(
        self,
        after_seq: int = 0,
        *,
        to_seq: int | None = None,
        limit: int = 1000,
        types: Iterable[str] | None = None,
    ) -> list[StoredEvent]:
        """Events with ``after_seq < seq <= to_seq``, in ``seq`` order, at most ``limit``."""
        wanted = set(types) if types is not None else None
        found: list[StoredEvent] = []
        with self._lock:
            for stored in self._events[bisect_right(self._seqs, after_seq) :]:
                if len(found) >= limit or (to_seq is not None and stored.seq > to_seq):
                    break
                if wanted is None or stored.event.type in wanted:
                    found.append(stored)
        return found

    def by_request_id(self, request_ids: str | Iterable[str], *, max_seq: int | None = None) -> list[StoredEvent]:
        """All events about the given request ids, in ``seq`` order."""
        ids = [request_ids] if isinstance(request_ids, str) else list(dict.fromkeys(request_ids))
        with self._lock:
            found = [s for rid in ids for s in self._by_request.get(rid, ())]
        return sorted((s for s in found if max_seq is None or s.seq <= max_seq), key=lambda s: s.seq)

    def get(self, event_id: str) -> StoredEvent | None:
        with self._lock:
            return self._by_id.get(event_id)

    def count(self, types: Iterable[str] | None = None) -> int:
        with self._lock:
            if types is None:
                return len(self._events)
            wanted = set(types)
            return sum(1 for s in self._events if s.event.type in wanted)

    def count_by_type(self) -> dict[str, int]:
        with self._lock:
            counts = Counter(s.event.type for s in self._events)
        return dict(sorted(counts.items()))

    def max_seq(self) -> int:
        with self._lock:
            return self._seqs[-1] if self._seqs else 0

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

    # --- consumer offsets, dead letters, positions ---------------------------------------------

    def load_offsets(self, group_id: str, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        with self._lock:
            return {
                (topic, partition): self._offsets[(group_id, topic, partition)]
                for topic, partition in set(partitions)
                if (group_id, topic, partition) in self._offsets
            }

    def list_dead_letters(
        self,
        *,
        limit: int = 100,
        after_id: int = 0,
        unpublished_only: bool = False,
        include_requeued: bool = True,
        ids: Sequence[int] | None = None,
    ) -> list[StoredDeadLetter]:
        wanted = set(ids) if ids is not None else None
        with self._lock:
            letters = [self._letters[i] for i in sorted(self._letters) if i > after_id]
        letters = [
            d
            for d in letters
            if (not unpublished_only or d.published_at is None)
            and (include_requeued or d.requeued_at is None)
            and (wanted is None or d.id in wanted)
        ]
        return letters[:limit]

    def count_dead_letters(self, *, by_kind: bool = False) -> dict[str, int]:
        with self._lock:
            counts = Counter(d.dead_letter.error_kind for d in self._letters.values())
        return dict(counts) if by_kind else {"total": sum(counts.values())}

    def mark_dead_letters_published(self, ids: Sequence[int]) -> None:
        now = self.clock()
        with self._lock:
            for i in ids:
                if i in self._letters:
                    self._letters[i] = replace(self._letters[i], published_at=now)

    def mark_dead_letters_requeued(self, ids: Sequence[int]) -> None:
        now = self.clock()
        with self._lock:
            for i in ids:
                if i in self._letters:
                    self._letters[i] = replace(self._letters[i], requeued_at=now)

    def table_rows(self, table: Table) -> Iterator[Row]:
        """Every row of the read model ``table``, in primary-key order."""
        with self._lock:
            rows = self._table(table.name)
            found = [dict(rows[key]) for key in sorted(rows, key=_sortable)]
        yield from found

    def position(self, name: str, *, with_state: bool = True) -> Position:
        with self._lock:
            saved = self._positions.get(name, Position(name))
        return saved if with_state else replace(saved, state=None)

    def save_position(self, name: str, seq: int, state: str | None = None) -> None:
        with self.unit_of_work(append_lock=False) as uow:
            uow.save_position(name, seq, state)


if TYPE_CHECKING:  # mypy holds both stores to the port (events/store.py)
    _memory: EventStore = InMemoryEventStore()
    _sql: EventStore = SqlEventStore.from_url("sqlite://")

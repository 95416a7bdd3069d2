"""The event store's port: what every store offers, whatever it keeps its events in.

Two stores implement it: :class:`~events.sql_store.SqlEventStore` (SQLite and PostgreSQL, the real ones) and
:class:`~events.memory_store.InMemoryEventStore` (a fake with state, for fast tests of what runs on a store).
``tests/contract/test_store_contract.py`` runs one contract against all three.

Positions are eventsourcing's tracking records: every reader that tails the store by ``seq`` and acts on what it
reads (a projection, the monitors, the audit chain, an outbox, the enforcement executor) keeps how far it got
under a name, with an optional state (the monitors' detector memories). A reader that derives events saves its
position in the same unit of work as those events, so a crash never redoes what committed nor skips what did
not::

    with store.unit_of_work() as uow:
        if uow.position("monitors").seq != last:   # another runner moved it: keep its work
            return
        uow.append(alerts)
        uow.save_position("monitors", upto, state)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from events.model import (
    AppendResult,
    ConsumerOffset,
    DeadLetter,
    Event,
    KafkaCoordinates,
    StoredDeadLetter,
    StoredEvent,
)

if TYPE_CHECKING:
    from sqlalchemy import Table

#: A read model's row (column name to value) and primary key (the key columns' values, in order).
Row = dict[str, Any]
Key = tuple[Any, ...]


@dataclass(frozen=True)
class Position:
    """How far the reader ``name`` has processed the store.

    Attributes:
        name: the reader (``monitors``, ``audit``, ``enforcement``, ``outbox:<topic>``, a projection's name).
        seq: the last ``seq`` it processed; 0 before it processed anything.
        state: what it keeps with the position (JSON text), or None: a reader that saves none, or a read that
            did not ask for it (``with_state=False``).
    """

    name: str
    seq: int = 0
    state: str | None = None


class UnitOfWork(Protocol):
    """One transaction on the store: everything done through it commits together when the ``with`` block ends,
    or nothing does when it raises."""

    def append(
        self,
        new_events: Sequence[Event],
        *,
        origins: Sequence[KafkaCoordinates | None] | None = None,
        offsets: Sequence[ConsumerOffset] = (),
        dead_letters: Sequence[DeadLetter] = (),
    ) -> AppendResult:
        """As :meth:`EventStore.append`, inside this unit of work."""
        ...

    def position(self, name: str, *, with_state: bool = True, claim: bool = False) -> Position:
        """The position ``name`` as this unit of work sees it (its own saves included).

        ``claim``: hold ``name`` until this unit of work ends, so that another one claiming it waits and then
        reads what this one saved. Two replicas folding the same projection take turns instead of folding the
        same batch twice (the second would be refused at commit: its rows exist).
        """
        ...

    def save_position(self, name: str, seq: int, state: str | None = None) -> None:
        """Set the position ``name`` to ``seq`` (and ``state``), replacing what was saved under that name."""
        ...

    def delete_position(self, name: str) -> None:
        """Forget the position ``name`` (it reads as seq 0 afterwards)."""
        ...

    # Reads as this unit of work sees the store, and the read models' rows (the projection runner's).

    def read(self, after_seq: int = 0, *, limit: int = 1000, types: Iterable[str] | None = None) -> list[StoredEvent]:
        """As :meth:`EventStore.read`, inside this unit of work."""
        ...

    def by_request_id(
        self, request_ids: Sequence[str], *, max_seq: int, types: Iterable[str] | None = None
    ) -> list[StoredEvent]:
        """Events about ``request_ids`` with ``seq <= max_seq`` (of ``types``), in ``seq`` order."""
        ...

    def load_rows(self, table: Table, keys: Sequence[Key]) -> dict[Key, Row]:
        """The rows of the read model ``table`` with these primary keys (those that exist), by key."""
        ...

    def write_rows(self, table: Table, *, stale: Sequence[Key], rows: Sequence[Mapping[str, Any]]) -> None:
        """Delete the rows whose keys are ``stale``, then insert ``rows`` (new ones and the stale ones' successors)."""
        ...

    def clear_rows(self, table: Table) -> None:
        """Delete every row of the read model ``table``."""
        ...


class EventStore(Protocol):
    """The append-only event store with consumer offsets, dead letters and readers' positions (docs/store.md)."""

    def append(
        self,
        new_events: Sequence[Event],
        *,
        origins: Sequence[KafkaCoordinates | None] | None = None,
        offsets: Sequence[ConsumerOffset] = (),
        dead_letters: Sequence[DeadLetter] = (),
    ) -> AppendResult:
        """Append a batch atomically and idempotently (duplicates by ``event_id`` ignored)."""
        ...

    def unit_of_work(self, *, append_lock: bool = True) -> AbstractContextManager[UnitOfWork]:
        """A unit of work; ``append_lock=False`` where it appends nothing (it then never waits behind appenders)."""
        ...

    def refused_events(
        self, new_events: Sequence[Event], origins: Sequence[KafkaCoordinates | None] | None = None
    ) -> list[tuple[int, str]]:
        """Which events of a batch the store refuses, each with its reason; nothing is written."""
        ...

    def read(
        self,
        after_seq: int = 0,
        *,
        to_seq: int | None = None,
        limit: int = 1000,
        types: Iterable[str] | None = None,
    ) -> list[StoredEvent]:
        """Events with ``after_seq < seq <= to_seq``, in ``seq`` order, at most ``limit``."""
        ...

    def by_request_id(self, request_ids: str | Iterable[str], *, max_seq: int | None = None) -> list[StoredEvent]:
        """All events about the given request ids, in ``seq`` order."""
        ...

    def get(self, event_id: str) -> StoredEvent | None: ...

    def count(self, types: Iterable[str] | None = None) -> int: ...

    def count_by_type(self) -> dict[str, int]: ...

    def max_seq(self) -> int: ...

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
        ...

    def load_offsets(self, group_id: str, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]: ...

    def list_dead_letters(
        self,
        *,
        limit: int = 100,
        after_id: int = 0,
        unpublished_only: bool = False,
        include_requeued: bool = True,
        ids: Sequence[int] | None = None,
    ) -> list[StoredDeadLetter]: ...

    def count_dead_letters(self, *, by_kind: bool = False) -> dict[str, int]: ...

    def mark_dead_letters_published(self, ids: Sequence[int]) -> None: ...

    def mark_dead_letters_requeued(self, ids: Sequence[int]) -> None: ...

    def position(self, name: str, *, with_state: bool = True) -> Position:
        """The position saved under ``name`` (seq 0 and no state when none was)."""
        ...

    def save_position(self, name: str, seq: int, state: str | None = None) -> None:
        """Save a position in a unit of work of its own (for a reader whose effect is outside the store)."""
        ...

    def table_rows(self, table: Table) -> Iterator[Row]:
        """Every row of the read model ``table``, in primary-key order."""
        ...

    def ping(self) -> None:
        """Return when the store answers.

        Raises:
            StoreUnavailableError: it does not.
        """
        ...

    def dispose(self) -> None: ...


def tail_events(
    read: Callable[..., Sequence[StoredEvent]],
    after_seq: int = 0,
    *,
    types: Iterable[str] | None = None,
    batch_size: int = 500,
    poll_interval: float = 0.5,
    should_stop: Callable[[], bool] = lambda: False,
    follow: bool = True,
) -> Iterator[StoredEvent]:
    """Events after ``after_seq`` in order, read in batches by ``read`` (a store's); with ``follow``, waits
    ``poll_interval`` for new ones until ``should_stop``. Both stores' ``tail``."""
    type_list = list(types) if types is not None else None
    position = after_seq
    while not should_stop():
        batch = read(position, limit=batch_size, types=type_list)
        for stored in batch:
            yield stored
            position = stored.seq
        if len(batch) < batch_size:
            if not follow:
                return
            time.sleep(poll_interval)

"""A leader lease in the store's database: which replica does some work (at most one at a time).

The training scheduler holds one (daemon/scheduler.py): APScheduler 3 does not support several schedulers on one
job store (each would run every job), so only the replica holding the lease runs one. The lease is a row ``leader_leases(name, holder, expires_at, acquired_at,
fencing_token)``: a replica takes it when there is none or it has expired, renews it while it runs, and
releases it when it stops (so another takes over at once instead of after the expiry).

Why a lease row rather than a PostgreSQL session advisory lock (``pg_try_advisory_lock``):

* it works on SQLite too (the embedded default; replicas sharing one file on one host);
* an advisory lock belongs to one database connection: it has to be pinned outside the pool (pool_pre_ping
  and recycling would drop it silently, and a transaction-pooling PgBouncer breaks it), and it is only lost
  when the server notices the connection is gone — a replica that hangs (SIGSTOP, a stuck GIL, a partition
  where its TCP connection stays open) keeps it for as long as the kernel's keepalive allows, hours by
  default. A lease expires on its own after ``lease_s``: the hung replica stops counting itself leader, and
  another takes over, within a bound we choose;
* it carries a fencing token and is visible: ``alignd jobs list`` shows who holds it and until when.
The price is a renewal every ``lease_s / 3`` and a takeover delay of at most ``lease_s + lease_s / 3``.

Clocks. Whether a lease has expired is decided by one clock for all replicas, so their clocks may disagree:
on PostgreSQL the server's ``now()`` writes ``expires_at`` and is what a takeover compares it with, so skew
between replicas does not matter. SQLite is one file on one host: every replica reads that host's clock, in
Python (UTC). Each replica decides whether it still *is* the leader with its own monotonic clock, counted
from *before* it sent the statement that took or renewed the lease, and gives up ``safety`` (20 %) of the
lease early: its belief always ends before the row expires in the database, so that a replica that cannot
renew (database unreachable) stops its work before another may start it. This needs the clocks to run at
about the same rate, not to agree.

Atomicity. Taking, taking over and renewing are one statement: ``INSERT ... ON CONFLICT (name) DO UPDATE
... WHERE holder = :me OR expires_at <= now RETURNING fencing_token``. On PostgreSQL the conflicting row is
locked and the WHERE re-evaluated on its latest version, so of two replicas racing for an expired lease one
gets a row back and the other none; on SQLite the write transaction (BEGIN IMMEDIATE) is exclusive.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Interval, and_, case, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite

from events.sql_store import SqlEventStore
from events.tables import leader_leases

logger = logging.getLogger(__name__)


def default_holder() -> str:
    """A holder id unique to this process: host, pid and a random suffix (a restarted pid is another holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class LeaseState:
    """The lease row as stored (for ``alignd jobs list``); ``expired`` is judged by the database's clock."""

    name: str
    holder: str
    expires_at: datetime
    acquired_at: datetime
    fencing_token: int
    expired: bool


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def read_lease(store: SqlEventStore, name: str) -> LeaseState | None:
    """The lease row named ``name``, or None when no replica ever took it.

    Raises:
        StoreUnavailableError: the database could not be reached.
    """
    now = _now(store.dialect)
    stmt = select(leader_leases, (leader_leases.c.expires_at <= now).label("expired")).where(
        leader_leases.c.name == name
    )
    with store.read_connection() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return None
    return LeaseState(
        row.name, row.holder, _aware(row.expires_at), _aware(row.acquired_at), int(row.fencing_token), bool(row.expired)
    )


def _now(dialect: str, plus_s: float = 0.0) -> Any:
    """The database's notion of now (plus ``plus_s``): see the module docstring for why these clocks."""
    if dialect == "postgresql":
        return func.now() + literal(timedelta(seconds=plus_s), Interval()) if plus_s else func.now()
    return literal(datetime.now(UTC) + timedelta(seconds=plus_s), leader_leases.c.expires_at.type)


class LeaderLease:
    """One replica's handle on the lease ``name``.

    Args:
        store: the store (SQLite or PostgreSQL) whose database has ``leader_leases`` migrated.
        name: the lease; replicas competing for the same work use the same name.
        holder: this replica's id, unique per process (:func:`default_holder`).
        lease_s: how long a taken or renewed lease lasts without renewal.
        safety: the fraction of ``lease_s`` this replica gives up early (see the module docstring).
        clock: a monotonic clock (injected by tests).
    """

    def __init__(
        self,
        store: SqlEventStore,
        name: str,
        holder: str | None = None,
        lease_s: float = 15.0,
        *,
        safety: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        if not 0 <= safety < 1:
            raise ValueError("safety must be in [0, 1)")
        self.store, self.name, self.lease_s, self.safety, self.clock = store, name, lease_s, safety, clock
        self.holder = holder or default_holder()
        self.dialect = store.dialect
        self.fencing_token: int | None = None
        self._valid_until = float("-inf")

    @property
    def is_leader(self) -> bool:
        """True while the last successful take or renewal is younger than ``lease_s * (1 - safety)``."""
        return self.fencing_token is not None and self.clock() < self._valid_until

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        # A write transaction (BEGIN IMMEDIATE on SQLite) that never waits for the append lock.
        with self.store.unit_of_work(append_lock=False) as uow:
            yield uow.connection

    def _held(self, started: float, token: int) -> None:
        if self.fencing_token != token:
            logger.info(
                "took the leader lease %r as %s (fencing token %d)",
                self.name,
                self.holder,
                token,
                extra={"lease": self.name, "holder": self.holder, "fencing_token": token},
            )
        self.fencing_token = token
        self._valid_until = started + self.lease_s * (1 - self.safety)

    def _lost(self, why: str, *, log: bool = True) -> None:
        if self.fencing_token is not None and log:
            logger.warning(
                "lost the leader lease %r (%s)",
                self.name,
                why,
                extra={"lease": self.name, "holder": self.holder, "fencing_token": self.fencing_token},
            )
        self.fencing_token = None
        self._valid_until = float("-inf")

    def try_acquire(self) -> bool:
        """Take the lease if free or expired, or renew it if ours; True when we hold it afterwards.

        Raises:
            StoreUnavailableError: the database could not be reached; we hold the lease only as long as
                :attr:`is_leader` still says so.
        """
        started = self.clock()
        t = leader_leases
        now, expires = _now(self.dialect), _now(self.dialect, self.lease_s)
        ours = t.c.holder == self.holder
        insert = (pg.insert if self.dialect == "postgresql" else sqlite.insert)(t).values(
            name=self.name, holder=self.holder, expires_at=expires, acquired_at=now, fencing_token=1
        )
        stmt = insert.on_conflict_do_update(
            index_elements=[t.c.name],
            set_={
                "holder": self.holder,
                "expires_at": expires,
                "acquired_at": case((ours, t.c.acquired_at), else_=now),
                # A new holder starts a new term: anything tagged with an older token is from a deposed leader.
                "fencing_token": case((ours, t.c.fencing_token), else_=t.c.fencing_token + 1),
            },
            where=or_(ours, t.c.expires_at <= now),
        ).returning(t.c.fencing_token)
        with self._write() as conn:
            token = conn.execute(stmt).scalar()
        if token is None:
            self._lost("another replica holds it")
            return False
        self._held(started, int(token))
        return True

    def renew(self) -> bool:
        """Extend the lease we hold (never takes one over); False, and no longer leader, when it is not ours.

        Raises:
            StoreUnavailableError: the database could not be reached.
        """
        if self.fencing_token is None:
            return False
        started = self.clock()
        t = leader_leases
        stmt = (
            update(t)
            .where(t.c.name == self.name, t.c.holder == self.holder, t.c.fencing_token == self.fencing_token)
            .values(expires_at=_now(self.dialect, self.lease_s))
            .returning(t.c.fencing_token)
        )
        with self._write() as conn:
            token = conn.execute(stmt).scalar()
        if token is None:
            self._lost("another replica took it over")
            return False
        self._held(started, int(token))
        return True

    def release(self) -> bool:
        """Give the lease up now (it expires at once, so another replica takes over on its next try).

        Returns:
            True when we held it in the database and released it.
        """
        token = self.fencing_token
        self._lost("released", log=False)
        if token is None:
            return False
        t = leader_leases
        now = _now(self.dialect)
        stmt = (
            update(t)
            .where(and_(t.c.name == self.name, t.c.holder == self.holder, t.c.fencing_token == token))
            .values(expires_at=now)
        )
        with self._write() as conn:
            released = conn.execute(stmt).rowcount == 1
        logger.info(
            "released the leader lease %r",
            self.name,
            extra={"lease": self.name, "holder": self.holder, "fencing_token": token},
        )
        return released

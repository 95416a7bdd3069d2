"""APScheduler's job table in the store's database: an engine for its job store, and a read of its rows.

The training scheduler (daemon/scheduler.py) keeps its jobs with APScheduler's ``SQLAlchemyJobStore`` in the store's
database, so that a new leader finds the schedule (and each job's next run time) where the last one left it.
That job store speaks SQL on its own table with an engine it is handed; this module hands it one, and reads the
table for ``alignd jobs list`` without APScheduler's scheduler running.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, column, inspect, select, table

from events.sql_store import SqlEventStore, create_store_engine


@dataclass(frozen=True)
class StoredJob:
    """A row of APScheduler's job table: its id, next run time (a UTC timestamp) and pickled state."""

    id: str
    next_run_time: float | None
    job_state: bytes


def job_store_engine(store: SqlEventStore, *, pool_size: int = 2) -> Engine:
    """An engine of its own on the store's database, for APScheduler's ``SQLAlchemyJobStore``.

    Its own, because the job store disposes the engine it is given when the scheduler shuts down; the caller
    disposes it too when done with it (``dispose()``).
    """
    return create_store_engine(store.engine.url.render_as_string(hide_password=False), pool_size=pool_size)


def stored_jobs(store: SqlEventStore, table_name: str) -> list[StoredJob] | None:
    """The rows of APScheduler's job table ``table_name`` in id order, or None when it has no such table.

    Raises:
        StoreUnavailableError: the database could not be reached.
    """
    with store.read_connection() as conn:
        if not inspect(conn).has_table(table_name):
            return None
        t = table(table_name, column("id"), column("next_run_time"), column("job_state"))
        rows = conn.execute(select(t).order_by(t.c.id)).all()
    return [StoredJob(str(row.id), row.next_run_time, bytes(row.job_state)) for row in rows]

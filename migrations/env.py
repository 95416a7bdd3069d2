"""Alembic environment: target metadata is the store's tables (events.tables)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from events.sql_store import create_store_engine
from events.tables import metadata

config = context.config


#: Tables other libraries create and own in our database: APScheduler's job store (daemon/scheduler.py).
FOREIGN_TABLES = frozenset({"apscheduler_jobs"})


def _include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # Autogenerate would otherwise propose dropping a table we never declared.
    return not (type_ == "table" and name in FOREIGN_TABLES)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds tables for later migrations.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_store_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()

"""Run and check Alembic migrations from code (``alignd db upgrade``; the start-up check).

Each function takes the store (the daemon's callers: they never reach into its engine) or an engine (tests and the
demo, which migrate a database before any store is opened on it).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from events.errors import SchemaOutOfDateError
from events.sql_store import SqlEventStore

_HERE = Path(__file__).resolve().parent


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _engine(target: Engine | SqlEventStore) -> Engine:
    return target.engine if isinstance(target, SqlEventStore) else target


def current_revision(target: Engine | SqlEventStore) -> str | None:
    with _engine(target).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(target: Engine | SqlEventStore, revision: str = "head") -> str:
    """Upgrade the database behind ``target`` to ``revision``; returns the revision it is at afterwards."""
    engine = _engine(target)
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    current = current_revision(engine)
    return current or ""


def ensure_current(target: Engine | SqlEventStore) -> None:
    """Refuse to run on a database whose schema is behind (or ahead of) this code."""
    engine = _engine(target)
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    where = engine.url.render_as_string(hide_password=True)
    if current is None:
        raise SchemaOutOfDateError(f"the database at {where} has no alignd schema; run `alignd db upgrade` first")
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise SchemaOutOfDateError(
            f"the database at {where} is at revision {current}, which this alignd does not know (newer code "
            f"migrated it?); upgrade alignd to a version that has it"
        )
    raise SchemaOutOfDateError(
        f"the database at {where} is at revision {current}, behind this alignd ({head}); run `alignd db upgrade`"
    )

"""Run and check Alembic migrations from code (``alignd db upgrade``; the start-up check)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from events.errors import SchemaOutOfDateError

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


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Upgrade the database behind ``engine`` to ``revision``; returns the revision it is at afterwards."""
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    current = current_revision(engine)
    return current or ""


def ensure_current(engine: Engine) -> None:
    """Refuse to run on a database whose schema is behind (or ahead of) this code."""
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

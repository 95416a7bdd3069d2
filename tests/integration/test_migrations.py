"""Alembic: ``upgrade head`` on an empty database matches the models; a database behind is refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from daemon.cli import main
from events.errors import SchemaOutOfDateError
from events.otel_join import otel_join_parts
from events.sql_store import create_store_engine
from events.tables import metadata
from migrations.runner import current_revision, ensure_current, head_revision, upgrade

pytestmark = pytest.mark.integration


def test_upgrade_head_on_an_empty_database_matches_the_models(db_kind: str, new_db_url: Callable[[str], str]) -> None:
    # The OTLP join's table is declared beside its SQL (events/otel_join.py), on the same metadata (imported above).
    assert metadata.tables[otel_join_parts.name] is otel_join_parts
    engine = create_store_engine(new_db_url(db_kind))
    try:
        assert upgrade(engine) == head_revision()
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        ensure_current(engine)
        assert upgrade(engine) == head_revision()  # idempotent
    finally:
        engine.dispose()


def test_a_database_without_the_schema_is_refused_with_the_command_to_run(
    db_kind: str, new_db_url: Callable[[str], str]
) -> None:
    engine = create_store_engine(new_db_url(db_kind))
    try:
        with pytest.raises(SchemaOutOfDateError, match="alignd db upgrade"):
            ensure_current(engine)
    finally:
        engine.dispose()


def test_a_database_behind_head_is_refused_by_the_cli(
    tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'behind.db'}"
    engine = create_store_engine(url)
    try:
        upgrade(engine)
        with engine.begin() as conn:  # pretend the database was migrated by an older alignd
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'base0000'")
        assert current_revision(engine) == "base0000"
    finally:
        engine.dispose()
    monkeypatch.setenv("ALIGND_DATABASE_URL", url)
    assert main(["events", "count"]) == 1
    err = capsys.readouterr().err
    assert "base0000" in err


def test_db_upgrade_command_brings_an_empty_database_to_head(
    tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    monkeypatch.setenv("ALIGND_DATABASE_URL", url)
    assert main(["events", "count"]) == 1
    assert "run `alignd db upgrade`" in capsys.readouterr().err
    assert main(["db", "upgrade", "--json"]) == 0
    assert head_revision() in capsys.readouterr().out
    assert main(["events", "count", "--json"]) == 0

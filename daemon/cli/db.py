"""``alignd db upgrade``: the store's schema, migrated by Alembic to the newest version."""

from __future__ import annotations

import argparse
from typing import Any

from daemon.bootstrap import build
from daemon.cli.command import AddCommand, group
from daemon.cli.output import print_json
from daemon.settings import Settings
from events.errors import StoreUnavailableError


def add_db_commands(commands: Any, add: AddCommand) -> None:
    db = group(commands, "db", "database schema")
    add(db, "upgrade", cmd_db_upgrade, "apply migrations up to the newest schema")


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from events.sql_errors import CONNECTION_ERRORS
    from migrations.runner import current_revision, upgrade

    # Without the schema check that every other command's store makes: bringing the schema up is the point.
    with build(settings, check_schema=False) as app:
        try:
            before = current_revision(app.store)
            after = upgrade(app.store)
        except CONNECTION_ERRORS as exc:
            raise StoreUnavailableError(str(getattr(exc, "orig", None) or exc).splitlines()[0]) from exc
    where = settings.redacted()["database"]["url"]
    if args.json:
        print_json({"database": where, "from": before, "to": after})
    else:
        print(f"database {where}: {before or 'empty'} -> {after}")
    return 0

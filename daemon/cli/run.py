"""``alignd run``: the long-running daemon, its roles under the supervisor (daemon/run.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from daemon.cli.command import AddCommand, with_app

if TYPE_CHECKING:
    from daemon.bootstrap import App


def add_run_commands(commands: Any, add: AddCommand) -> None:
    from daemon.run import DEFAULT_ROLES, ROLES

    p = add(
        commands,
        "run",
        cmd_run,
        "the long-running daemon: ingestion, monitors, enforcement, scheduler, HTTP",
        json_flag=False,
    )
    p.add_argument(
        "--role",
        action="append",
        choices=ROLES,
        help=f"run only these parts (repeatable; default: {', '.join(DEFAULT_ROLES)})",
    )
    p.add_argument("--shutdown-timeout", type=float, default=120.0, metavar="SECONDS", help="how long SIGTERM may take")


@with_app
def cmd_run(app: App, args: argparse.Namespace) -> int:
    from daemon.run import run

    # The graph is closed (the store's engine disposed) once every part has stopped.
    return run(app, args.role or [], shutdown_timeout_s=args.shutdown_timeout)

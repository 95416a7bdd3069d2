"""``alignd demo``: the whole loop on this machine (daemon/demo.py tells the story), and where to look after."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from daemon.cli.command import AddCommand
from daemon.cli.output import print_json
from daemon.settings import Settings


def add_demo_commands(commands: Any, add: AddCommand) -> None:
    p = add(commands, "demo", cmd_demo, "the whole loop on this machine: local Kafka, SQLite, MLflow, an incident")
    p.add_argument("--dir", default="alignd-demo", help="where the demo keeps its databases, broker and models")
    p.add_argument("--quick", action="store_true", help="the tiny test policy and a few steps (as CI runs it)")


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """The demo builds its own settings (and object graph) under ``--dir``; the given ones are not used."""
    from daemon.demo import Demo, console

    folder = Path(args.dir).resolve()
    summary = Demo(folder, quick=args.quick).run()
    if args.json:
        print_json(summary)
    else:
        console.rule("alignd demo finished")
        console.print(
            f"{summary['seconds']} s; audit chain {'intact' if summary['ok'] else 'BROKEN'} with {summary['audit']['records']} records"
        )
        for name, command in summary["where_to_look"].items():
            console.print(f"  {name}: [cyan]{command}[/]")
    return 0 if summary["ok"] else 1

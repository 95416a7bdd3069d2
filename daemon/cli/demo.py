"""``alignd demo``: the whole loop on this machine (daemon/demo.py tells the story), and where to look after."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from daemon.cli.command import AddCommand, CliError
from daemon.cli.output import print_json
from daemon.settings import Settings


def add_demo_commands(commands: Any, add: AddCommand) -> None:
    p = add(commands, "demo", cmd_demo, "the whole loop on this machine: local Kafka, SQLite, MLflow, an incident")
    p.add_argument(
        "action",
        nargs="?",
        choices=["run", "serve"],
        default="run",
        help="run: the story (the default); serve: the broker, review page and MLflow UI of a demo that ran",
    )
    p.add_argument("--dir", default="alignd-demo", help="where the demo keeps its databases, broker, models and log")
    p.add_argument("--quick", action="store_true", help="the tiny test policy and a few steps (as CI runs it)")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="after the story, serve the broker, the review page and the MLflow UI until Ctrl-C",
    )


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """The demo builds its own settings (and object graph) under ``--dir``; the given ones are only its log's
    level and format. The terminal shows the steps; the log lines go to ``alignd.log`` under ``--dir``."""
    from daemon.demo import CONFIG_FILE, Demo, console, serve

    folder = Path(args.dir).resolve()
    if args.action == "serve":
        if not (folder / CONFIG_FILE).exists():
            raise CliError(f"no demo ran in {folder}: run `alignd demo --dir {folder}` first")
        serve(folder)
        return 0

    def report(summary: dict[str, Any]) -> None:
        if args.json:
            print_json(summary)
            return
        console.rule("alignd demo finished")
        console.print(
            f"{summary['seconds']} s; audit chain {'intact' if summary['ok'] else 'BROKEN'} with "
            f"{summary['audit']['records']} records; the log: {summary['log']}",
            highlight=False,
        )
        if not args.keep_running:
            console.print(
                "The demo's broker has stopped: `alignd demo serve` starts it again, with the review page and the "
                "MLflow UI, so that the saved config's commands work.",
                highlight=False,
            )
        for name, command in summary["where_to_look"].items():
            console.print(f"  {name}: [cyan]{command}[/]", highlight=False)

    try:
        summary = Demo(folder, quick=args.quick, keep_running=args.keep_running).run(report)
    except BaseException:
        console.print(f"alignd demo stopped; its log: {folder / 'alignd.log'}", highlight=False)
        raise
    return 0 if summary["ok"] else 1

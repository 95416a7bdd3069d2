"""``alignd replay``: projections rebuilt from the event store, with a digest of each to compare."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from daemon.cli.command import AddCommand, CliError, with_app
from daemon.cli.output import columns, print_json

if TYPE_CHECKING:
    from daemon.bootstrap import App


def add_replay_commands(commands: Any, add: AddCommand) -> None:
    p = add(commands, "replay", cmd_replay, "rebuild projections from the event store and print their digests")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--projection", metavar="NAME", help="only this projection")
    group.add_argument("--all", action="store_true", help="every projection (the default)")


@with_app
def cmd_replay(app: App, args: argparse.Namespace) -> int:
    from events.projections import ProjectionRunner

    runner = ProjectionRunner(app.store)
    names = [args.projection] if args.projection else None
    try:
        folded = runner.replay(names)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None
    digests = runner.digests(names)
    if args.json:
        print_json({name: {"events": folded[name], "digest": digests[name]} for name in folded})
    else:
        columns(
            ["projection", "events folded", "digest"],
            [(n, folded[n], digests[n]) for n in folded],
            title="projections rebuilt",
            none="(no projections to rebuild)",
        )
    return 0

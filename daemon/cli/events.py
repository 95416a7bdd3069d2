"""``alignd events count|tail``: what the event store holds, by type, and its newest events as JSON lines."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

from daemon.cli.command import AddCommand, group, with_app
from daemon.cli.output import columns, print_json
from events.codec import event_to_dict, format_timestamp
from events.model import ALL_TYPES

if TYPE_CHECKING:
    from daemon.bootstrap import App


def add_events_commands(commands: Any, add: AddCommand) -> None:
    ev = group(commands, "events", "read the event store")
    p = add(ev, "count", cmd_events_count, "count events, by type")
    p.add_argument("--type", choices=sorted(ALL_TYPES))
    p = add(ev, "tail", cmd_events_tail, "print events as JSON lines", json_flag=False)
    p.add_argument("--type", choices=sorted(ALL_TYPES))
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events until interrupted")
    p.add_argument("--from-seq", type=int, metavar="N", help="start after this seq (default: the last --lines events)")
    p.add_argument("--lines", "-n", type=int, default=20, help="how many recent events to start with (default 20)")


@with_app
def cmd_events_count(app: App, args: argparse.Namespace) -> int:
    counts = app.store.count_by_type()
    if args.type:
        counts = {args.type: counts.get(args.type, 0)}
    total = sum(counts.values())
    if args.json:
        print_json({"total": total, "by_type": counts})
    else:
        columns(
            ["type", "count"],
            [*sorted(counts.items()), ("total", total)] if total or args.type else [],
            none="no events stored yet (`alignd ingest` or `alignd run` stores them)",
        )
    return 0


@with_app
def cmd_events_tail(app: App, args: argparse.Namespace) -> int:
    store = app.store
    stopping = False

    def _stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    after = args.from_seq if args.from_seq is not None else max(store.max_seq() - args.lines, 0)
    try:
        for stored in store.tail(
            after, types=[args.type] if args.type else None, follow=args.follow, should_stop=lambda: stopping
        ):
            line = {
                "seq": stored.seq,
                "recorded_at": format_timestamp(stored.recorded_at),
                **event_to_dict(stored.event),
            }
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
            sys.stdout.flush()
    except BrokenPipeError:
        pass
    return 0

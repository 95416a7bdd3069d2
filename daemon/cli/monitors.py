"""``alignd monitors list|backtest``: the detectors, their saved state and rules, and what they would have raised."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from daemon.bootstrap import DETECTOR_NAMES, NEEDS_REWARD_MODEL
from daemon.cli.command import AddCommand, group, with_app
from daemon.cli.output import print_json, table

if TYPE_CHECKING:
    from daemon.bootstrap import App


def add_monitors_commands(commands: Any, add: AddCommand) -> None:
    mon = group(commands, "monitors", "alignment-failure detectors")
    p = add(mon, "list", cmd_monitors_list, "the detectors, whether they run, their saved state, the enforcement rules")
    p.add_argument("--state", action="store_true", help="with --json: include each detector's saved state")
    p = add(
        mon,
        "backtest",
        cmd_monitors_backtest,
        "what the detectors would have raised over a past range (writes nothing)",
    )
    p.add_argument("--from-seq", type=int, default=0, metavar="N", help="start after this seq (default: the beginning)")
    p.add_argument("--to-seq", type=int, metavar="N", help="stop at this seq (default: the end)")
    p.add_argument(
        "--detector", action="append", metavar="NAME", help="only this detector (repeatable; default: settings)"
    )


@with_app
def cmd_monitors_list(app: App, args: argparse.Namespace) -> int:
    saved = app.store.position("monitors")  # the runner's name (MonitorRunner.name)
    position, states = saved.seq, json.loads(saved.state) if saved.state is not None else {}
    enabled = set(app.settings.monitors.detectors)
    listing = [
        {
            "detector": name,
            "enabled": name in enabled,
            "needs": "the champion reward model (alias champion of alignd-reward)"
            if name in NEEDS_REWARD_MODEL
            else "",
            "state_bytes": len(json.dumps(states[name])) if name in states else 0,
        }
        for name in DETECTOR_NAMES
    ]
    rules = [f"{r.detector}:{r.action}:{r.min_severity}" for r in app.enforcement_rules]
    if args.json:
        print_json(
            {"position": position, "detectors": listing, "rules": rules, "states": states if args.state else None}
        )
    else:
        table(
            f"detectors (monitors at seq {position})",
            ["detector", "enabled", "saved state", "needs"],
            [
                (d["detector"], "yes" if d["enabled"] else "no", f"{d['state_bytes']:,} bytes", d["needs"])
                for d in listing
            ],
        )
        table("enforcement rules", ["rule"], [(r,) for r in rules])
    return 0


@with_app
def cmd_monitors_backtest(app: App, args: argparse.Namespace) -> int:
    from monitors.runner import backtest

    store = app.store
    findings = backtest(store, app.detectors(args.detector or None), from_seq=args.from_seq, to_seq=args.to_seq)
    rows = [{"anomaly_id": f.anomaly_id, **f.payload()} for f in findings]
    if args.json:
        print_json(rows)
    else:
        table(
            f"backtest: {len(rows)} alerts would have fired",
            ["seq", "detector", "severity", "subject", "summary"],
            [(r["trigger_seq"], r["detector"], r["severity"], r["subject"], r["summary"]) for r in rows],
        )
    return 0

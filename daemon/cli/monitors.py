"""``alignd monitors list|backtest``: the detectors, their saved state and rules, and what they would have raised."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from daemon.bootstrap import DETECTOR_NAMES, NEEDS_REWARD_MODEL
from daemon.cli.command import AddCommand, group, with_app
from daemon.cli.output import columns, print_json

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
    champion = _champion_reward(app) if enabled & set(NEEDS_REWARD_MODEL) else None
    listing = []
    for name in DETECTOR_NAMES:
        runs, why = _whether_it_runs(name, enabled, champion)
        listing.append(
            {
                "detector": name,
                "enabled": name in enabled,
                "runs": runs,
                "why": why,
                "state_bytes": len(json.dumps(states[name])) if name in states else 0,
            }
        )
    rules = [f"{r.detector}:{r.action}:{r.min_severity}" for r in app.enforcement_rules]
    if args.json:
        print_json(
            {"position": position, "detectors": listing, "rules": rules, "states": states if args.state else None}
        )
    else:
        columns(
            ["detector", "runs", "saved state", "why"],
            [(d["detector"], "yes" if d["runs"] else "no", f"{d['state_bytes']:,} bytes", d["why"]) for d in listing],
            title=f"detectors (monitors at seq {position})",
        )
        print()
        columns(
            ["rule"],
            [(r,) for r in rules],
            title="enforcement rules",
            none="(no enforcement rules: alerts are raised, nothing is enforced; see monitors.enforcement)",
        )
    return 0


def _champion_reward(app: App) -> str | Exception | None:
    """The champion reward model's version, None when there is none, or why MLflow could not say."""
    from daemon.bootstrap import missing_sqlite_file

    m = app.settings.mlflow
    if missing_sqlite_file(m.registry_uri or m.tracking_uri) is not None:
        return None  # nothing was ever registered, and opening the registry would create its file
    try:
        found = app.registry.get_by_alias("reward", "champion")
    except Exception as exc:  # noqa: BLE001 - any registry failure is a reason to show, not a crash
        return exc
    return None if found is None else str(found.version)


def _whether_it_runs(name: str, enabled: set[str], champion: str | Exception | None) -> tuple[bool, str]:
    """Whether ``alignd run --role monitor`` runs detector ``name`` with these settings, and why (not)."""
    if name not in enabled:
        return False, "off: not in monitors.detectors (ALIGND_MONITORS_DETECTORS)"
    if name not in NEEDS_REWARD_MODEL:
        return True, "on: in monitors.detectors"
    if isinstance(champion, Exception):
        return (
            False,
            f"cannot tell: MLflow did not answer ({type(champion).__name__}); it needs the champion reward model",
        )
    if champion is None:
        return False, (
            "enabled, but no reward model is the champion: the monitor role will refuse to start "
            "(`alignd models promote reward ...`)"
        )
    return True, f"on: scores with alignd-reward version {champion} (the champion)"


@with_app
def cmd_monitors_backtest(app: App, args: argparse.Namespace) -> int:
    from monitors.runner import backtest

    store = app.store
    findings = backtest(store, app.detectors(args.detector or None), from_seq=args.from_seq, to_seq=args.to_seq)
    rows = [{"anomaly_id": f.anomaly_id, **f.payload()} for f in findings]
    if args.json:
        print_json(rows)
    else:
        columns(
            ["seq", "detector", "severity", "subject", "summary"],
            [(r["trigger_seq"], r["detector"], r["severity"], r["subject"], r["summary"]) for r in rows],
            title=f"backtest: {len(rows)} alerts would have fired",
            none="(no alerts in that range)",
        )
    return 0

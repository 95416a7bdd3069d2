"""``alignd alerts list|verdict``: the monitors' alerts with the verdicts reviewers gave them, and giving one
(docs/monitors.md#verdicts). Verdicts are ``alert.reviewed`` events: audited, and the labels the jailbreak
detector is retrained on."""

from __future__ import annotations

import argparse
import getpass
from collections import deque
from typing import TYPE_CHECKING, Any

from daemon.cli.command import AddCommand, CliError, group, with_app
from daemon.cli.output import columns, print_json, shorten

if TYPE_CHECKING:
    from daemon.bootstrap import App

SOURCE = "alignd.cli"


def add_alerts_commands(commands: Any, add: AddCommand) -> None:
    alerts = group(commands, "alerts", "the monitors' alerts: listing them, a reviewer's verdict on one")
    p = add(alerts, "list", cmd_alerts_list, "the latest alerts, newest last, with their verdicts")
    p.add_argument("--detector", help="only this detector's alerts (e.g. jailbreak_attempt)")
    p.add_argument("--unreviewed", action="store_true", help="only alerts no one has given a verdict yet")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p = add(alerts, "verdict", cmd_alerts_verdict, "mark an alert a true or a false positive (audited)")
    p.add_argument("alert_id", metavar="ALERT_ID", help="the alert's event id, as `alignd alerts list` shows it")
    p.add_argument(
        "verdict", metavar="VERDICT", help="true-positive (the detector was right) or false-positive (a false alarm)"
    )
    p.add_argument("--reason", required=True, help="why, in a sentence (kept in the audit trail)")
    p.add_argument("--actor", default=None, help="who judges (default: your OS user name)")


@with_app
def cmd_alerts_list(app: App, args: argparse.Namespace) -> int:
    from events.names import ANOMALY_DETECTED
    from events.verdicts import latest_verdicts

    if args.limit < 1:
        raise CliError("--limit must be at least 1")
    verdicts = latest_verdicts(app.store, args.detector)
    latest: deque[Any] = deque(maxlen=args.limit)
    for stored in app.store.tail(types=[ANOMALY_DETECTED], follow=False):
        payload = stored.event.payload
        if args.detector and payload.get("detector") != args.detector:
            continue
        if args.unreviewed and stored.event.event_id in verdicts:
            continue
        latest.append(stored)
    rows = []
    for stored in latest:
        p, verdict = stored.event.payload, verdicts.get(stored.event.event_id)
        rows.append(
            {
                "alert_id": stored.event.event_id,
                "seq": stored.seq,
                "occurred_at": stored.event.occurred_at.isoformat(),
                "detector": p.get("detector"),
                "severity": p.get("severity"),
                "subject": p.get("subject"),
                "summary": p.get("summary"),
                "verdict": verdict.verdict if verdict else None,
                "reviewed_by": verdict.actor if verdict else None,
            }
        )
    if args.json:
        print_json(rows)
        return 0
    which = f" of {args.detector}" if args.detector else ""
    columns(
        ["alert", "detector", "severity", "summary", "verdict"],
        [
            (
                r["alert_id"],
                r["detector"],
                r["severity"],
                shorten(str(r["summary"]), 60),
                f"{r['verdict'].replace('_', ' ')} ({r['reviewed_by']})" if r["verdict"] else "-",
            )
            for r in rows
        ],
        none=f"no {'unreviewed ' if args.unreviewed else ''}alerts{which} in the store",
    )
    return 0


@with_app
def cmd_alerts_verdict(app: App, args: argparse.Namespace) -> int:
    from daemon.verdicts import VerdictError, record_verdict

    actor = str(args.actor).strip() if args.actor else getpass.getuser()
    try:
        done = record_verdict(app.store, args.alert_id, args.verdict, actor=actor, reason=args.reason, source=SOURCE)
    except VerdictError as exc:
        raise CliError(f"{exc}; nothing was recorded") from exc
    if args.json:
        print_json(done.__dict__)
        return 0
    print(f"alert {done.alert_id} ({done.detector}): {done.verdict.replace('_', ' ')}, by {done.actor}: {done.reason}")
    print(f"recorded as {done.event_id} (seq {done.seq}); the {done.detector} detector's next training reads it")
    return 0

"""``alignd guard list|lift``: the guard rules in force, and an operator's way to end one (docs/guard.md)."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from daemon.cli.command import AddCommand, CliError, group, with_app
from daemon.cli.output import columns, print_json

if TYPE_CHECKING:
    from daemon.bootstrap import App
    from events.guard_rules import GuardRuleFold

SOURCE = "alignd.cli"


def add_guard_commands(commands: Any, add: AddCommand) -> None:
    guard = group(commands, "guard", "guard rules: the ones in force, lifting one")
    p = add(guard, "list", cmd_guard_list, "the guard rules in force, with what they match and when they expire")
    p.add_argument("--all", action="store_true", help="expired rules too")
    p = add(guard, "lift", cmd_guard_lift, "end a guard rule now (appends guard_rule.lifted, audited)")
    p.add_argument("rule_id", metavar="RULE_ID", help="the rule's id, as `alignd guard list` shows it")
    p.add_argument("--reason", required=True, help="why it is lifted (kept in the audit trail)")
    p.add_argument("--actor", required=True, help="who lifts it (kept in the audit trail)")


def _fold(app: App) -> GuardRuleFold:
    from events.guard_rules import GuardRuleFold

    fold = GuardRuleFold(default_ttl_s=app.settings.guard.rule_ttl_s or None)
    fold.catch_up(app.store)
    return fold


@with_app
def cmd_guard_list(app: App, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    rules = _fold(app).rules(None if args.all else now)
    rows = [{**rule.to_dict(), "in_force": rule.in_force(now)} for rule in rules]
    if args.json:
        print_json(rows)
        return 0
    columns(
        ["rule", "detector", "matches", "expires", "reason"],
        [
            (
                r["rule_id"],
                r["detector"] or "operator",
                _matches(r),
                (r["expires_at"] or "when lifted") + ("" if r["in_force"] else " (expired)"),
                r["reason"],
            )
            for r in rows
        ],
        none="no guard rules in force"
        + ("" if args.all else " (`--all` shows expired ones too)")
        + "; a monitor's publish_guard_rule request makes one",
    )
    return 0


def _matches(row: dict[str, Any]) -> str:
    parts = []
    if row["user"]:
        parts.append(f"user {row['user']}")
    if row["prompts"]:
        parts.append(f"{row['prompts']} prompt(s)")
    return ", ".join(parts) or "nothing"


@with_app
def cmd_guard_lift(app: App, args: argparse.Namespace) -> int:
    from events.messages import GuardRuleLifted

    reason, actor = args.reason.strip(), args.actor.strip()
    if not reason or not actor:
        raise CliError("--reason and --actor must not be empty: the audit trail keeps who lifted a rule and why")
    fold = _fold(app)
    if fold.lifted(args.rule_id):
        raise CliError(f"guard rule {args.rule_id} is already lifted")
    if not fold.known(args.rule_id):
        raise CliError(f"no guard rule {args.rule_id!r}; `alignd guard list --all` shows the rule ids")
    record = GuardRuleLifted(rule_id=args.rule_id, actor=actor, reason=reason)
    event_id = f"guard_rule.lifted:{uuid.uuid4().hex}"
    app.store.append([record.to_event(event_id, datetime.now(UTC), SOURCE)])
    if args.json:
        print_json({"rule_id": args.rule_id, "event_id": event_id, "actor": actor, "reason": reason})
    else:
        print(f"guard rule {args.rule_id} lifted by {actor}; the guards stop applying it within their refresh")
    return 0

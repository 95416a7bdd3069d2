"""``alignd quarantine add|remove|list``: an operator leaves a user's or some events' data out of training sets, or
lets it back in (docs/operations.md#quarantine).

``add`` appends the same ``enforcement.requested`` a monitor's rule does (``quarantine_user`` /
``quarantine_events``, with the operator as ``actor``), and ``remove`` one whose action is ``lift_quarantine``;
the quarantine projection folds both, so there is one path to a quarantine and a replay reaches the same state.
Both are decisions: the audit trail records who asked and why, and the daemon's enforcement executor records
each as applied by the projection. The command folds the quarantine projection itself, before checking what is
asked (so it judges the current state) and after appending (so the quarantine holds when it returns).
"""

from __future__ import annotations

import argparse
import getpass
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from daemon.cli.command import AddCommand, CliError, group, with_app
from daemon.cli.output import columns, print_json
from events.names import (
    ALERT_REVIEWED,
    DEMONSTRATION_GENERATED,
    ENFORCEMENT_REQUESTED,
    FEEDBACK_RECEIVED,
    INTERACTION_LOGGED,
    LIFT_QUARANTINE,
    QUARANTINE_EVENTS,
    QUARANTINE_USER,
)

if TYPE_CHECKING:
    from daemon.bootstrap import App
    from events.dataset_stats import QuarantineEntry
    from events.sql_store import SqlEventStore

#: The ``source`` of the requests an operator makes here.
SOURCE = "alignd.operator"
#: The events whose data training reads: feedback (pairs, demonstrations), generated demonstrations, and
#: reviewers' verdicts (the detectors' labels, events/verdicts.py).
_TRAINING_TYPES = (FEEDBACK_RECEIVED, DEMONSTRATION_GENERATED, ALERT_REVIEWED)
_MAX_USER = 256  # the quarantine table's subject column


def add_quarantine_commands(commands: Any, add: AddCommand) -> None:
    """Add ``quarantine add|remove|list`` to the top-level subparsers."""
    quarantine = group(commands, "quarantine", "users and events left out of training sets")
    p = add(quarantine, "add", cmd_quarantine_add, "leave a user's or some events' data out of training sets")
    _subject_arguments(p)
    p = add(quarantine, "remove", cmd_quarantine_remove, "lift a quarantine: the data is used for training again")
    _subject_arguments(p)
    add(quarantine, "list", cmd_quarantine_list, "what is quarantined now: since when, by whom, why")


def _subject_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", metavar="USER", help="a user id, as interactions and feedback carry it")
    p.add_argument(
        "--event",
        metavar="ID",
        action="append",
        default=[],
        help="a feedback.received, demonstration.generated or alert.reviewed event id (repeat for several)",
    )
    p.add_argument("--reason", required=True, help="why, in a sentence; it goes in the audit trail")
    p.add_argument("--actor", default=None, help="who decided (default: your OS user name)")


def _catch_up(store: SqlEventStore, attempts: int = 3) -> None:
    """Fold what the quarantine projection has not folded yet, with the runner the daemon uses.

    A daemon's runner may fold the same requests at the same moment. On PostgreSQL the one that commits second
    is refused (the rows and the position it writes exist by then); folding again starts from the position the
    other saved. On SQLite write transactions queue, so the second reads the first's position.
    """
    from events.errors import StoreRefusedError
    from events.projections import ProjectionRunner

    for attempt in range(1, attempts + 1):
        try:
            ProjectionRunner(store).catch_up(["quarantine"])
            return
        except StoreRefusedError:
            if attempt == attempts:
                raise


def _current(store: SqlEventStore) -> dict[tuple[str, str], QuarantineEntry]:
    from events.dataset_stats import quarantine_entries

    _catch_up(store)
    return {(e.kind, e.subject): e for e in quarantine_entries(store)}


def _subjects(args: argparse.Namespace, verb: str) -> tuple[str, list[str]]:
    """("user" or "event", the ids) from --user / --event, or a CliError saying what to give."""
    events = list(dict.fromkeys(args.event))  # repeated ids count once
    if args.user is not None and events:
        raise CliError(f"give --user or --event, not both; {verb} a user and events with two commands")
    if args.user is None and not events:
        raise CliError(f"say what to {verb}: --user USER, or --event ID (repeat for several events)")
    if args.user is not None:
        if not args.user.strip() or len(args.user) > _MAX_USER:
            raise CliError(f"--user must be a user id of 1 to {_MAX_USER} characters, as interactions carry it")
        return "user", [args.user]
    return "event", events


def _reason(args: argparse.Namespace) -> str:
    reason = " ".join(str(args.reason).split())
    if not reason:
        raise CliError("--reason is empty; say why in a sentence: it is what the audit trail keeps of this decision")
    return reason


def _actor(args: argparse.Namespace) -> str:
    actor = str(args.actor).strip() if args.actor else ""
    return actor or getpass.getuser()


def _check_events_exist(store: SqlEventStore, ids: list[str]) -> None:
    unknown, wrong = [], []
    for event_id in ids:
        stored = store.get(event_id)
        if stored is None:
            unknown.append(event_id)
        elif stored.event.type not in _TRAINING_TYPES:
            wrong.append(f"{event_id} ({stored.event.type})")
    if unknown:
        raise CliError(
            f"no event {', '.join(unknown)} in the store; nothing was quarantined. "
            "`alignd events tail --type feedback.received` shows feedback events and their ids"
        )
    if wrong:
        hint = (
            " An interaction's data reaches training through the feedback about it: quarantine those feedback "
            "events, or the user."
            if any(f"({INTERACTION_LOGGED})" in w for w in wrong)
            else ""
        )
        raise CliError(
            f"{', '.join(wrong)}: only feedback.received, demonstration.generated and alert.reviewed events become "
            "training data, "
            f"so only they can be quarantined; nothing was quarantined.{hint}"
        )


def _append(store: SqlEventStore, action: str, kind: str, ids: list[str], reason: str, actor: str) -> tuple[str, int]:
    from events.messages import EnforcementRequested

    target: dict[str, Any] = {"user": ids[0]} if kind == "user" else {"event_ids": ids}
    record = EnforcementRequested(action=action, target=target, reason=reason, actor=actor)
    event_id = f"{ENFORCEMENT_REQUESTED}:operator:{action}:{uuid.uuid4().hex}"
    store.append([record.to_event(event_id, datetime.now(UTC), SOURCE)])
    stored = store.get(event_id)
    assert stored is not None
    _catch_up(store)
    return event_id, stored.seq


def _words(kind: str, ids: list[str]) -> str:
    if kind == "user":
        return f"user {ids[0]}"
    return f"event {ids[0]}" if len(ids) == 1 else f"{len(ids)} events ({', '.join(ids)})"


def _decided(args: argparse.Namespace, action: str, kind: str, ids: list[str], event_id: str, seq: int) -> None:
    reason, actor = _reason(args), _actor(args)  # as recorded
    if args.json:
        print_json(
            {
                "event_id": event_id,
                "seq": seq,
                "action": action,
                "kind": kind,
                "subjects": ids,
                "actor": actor,
                "reason": reason,
            }
        )
        return
    done = "quarantined" if action != LIFT_QUARANTINE else "no longer quarantined"
    effect = (
        "its preference pairs and demonstrations are left out of training sets from now on"
        if action != LIFT_QUARANTINE
        else "its preference pairs and demonstrations are used for training again"
    )
    print(f"{_words(kind, ids)}: {done}, by {actor}: {reason}")
    print(f"recorded as {event_id} (seq {seq}); {effect}; `alignd datasets` shows the counts")


@with_app
def cmd_quarantine_add(app: App, args: argparse.Namespace) -> int:
    kind, ids = _subjects(args, "quarantine")
    reason, actor = _reason(args), _actor(args)
    store = app.store
    if kind == "event":
        _check_events_exist(store, ids)
    current = _current(store)
    already = [current[(kind, s)] for s in ids if (kind, s) in current]
    if already:
        shown = "; ".join(f"{e.kind} {e.subject} since seq {e.seq} by {e.actor}: {e.reason}" for e in already)
        leave = " (leave them out of --event)" if kind == "event" and len(already) < len(ids) else ""
        raise CliError(f"already quarantined: {shown}; nothing was recorded{leave}")
    action = QUARANTINE_USER if kind == "user" else QUARANTINE_EVENTS
    event_id, seq = _append(store, action, kind, ids, reason, actor)
    _decided(args, action, kind, ids, event_id, seq)
    return 0


@with_app
def cmd_quarantine_remove(app: App, args: argparse.Namespace) -> int:
    kind, ids = _subjects(args, "lift the quarantine of")
    reason, actor = _reason(args), _actor(args)
    store = app.store
    current = _current(store)
    missing = [s for s in ids if (kind, s) not in current]
    if missing:
        raise CliError(
            f"{kind} {', '.join(missing)} is not quarantined, so there is nothing to lift; nothing was recorded. "
            "`alignd quarantine list` shows what is quarantined"
        )
    event_id, seq = _append(store, LIFT_QUARANTINE, kind, ids, reason, actor)
    _decided(args, LIFT_QUARANTINE, kind, ids, event_id, seq)
    return 0


@with_app
def cmd_quarantine_list(app: App, args: argparse.Namespace) -> int:
    entries = list(_current(app.store).values())
    if args.json:
        print_json(
            [
                {
                    "kind": e.kind,
                    "subject": e.subject,
                    "seq": e.seq,
                    "since": e.occurred_at.isoformat() if e.occurred_at else None,
                    "actor": e.actor,
                    "detector": e.detector,
                    "reason": e.reason,
                    "request_event_id": e.request_event_id,
                }
                for e in entries
            ]
        )
        return 0
    columns(
        ["kind", "subject", "seq", "since (UTC)", "by", "reason"],
        [
            (
                e.kind,
                e.subject,
                e.seq,
                e.occurred_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if e.occurred_at else "",
                f"{e.actor} ({e.detector})" if e.detector else e.actor,
                e.reason,
            )
            for e in entries
        ],
        none=(
            "nothing is quarantined: every user's and event's data is used for training "
            "(`alignd quarantine add --user USER --reason WHY` leaves one out)"
        ),
    )
    return 0

"""``alignd dlq list|count|requeue``: the dead letters, with the reason each was refused, and their way back."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from daemon.cli.command import AddCommand, CliError, group, with_app
from daemon.cli.output import columns, print_json
from events.codec import format_timestamp

if TYPE_CHECKING:
    from daemon.bootstrap import App
    from events.model import StoredDeadLetter


def add_dlq_commands(commands: Any, add: AddCommand) -> None:
    dlq = group(commands, "dlq", "dead letters")
    p = add(dlq, "list", cmd_dlq_list, "list dead letters with their reasons")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--after-id", type=int, default=0)
    p.add_argument("--kind", help="only this error kind (invalid_json, schema, unknown_type, ...)")
    p.add_argument("--pending", action="store_true", help="hide the ones already requeued")
    add(dlq, "count", cmd_dlq_count, "count dead letters by error kind")
    p = add(dlq, "requeue", cmd_dlq_requeue, "send dead letters back to their original topics")
    p.add_argument("--id", type=int, action="append", help="a dead letter id (repeatable)")
    p.add_argument("--all", action="store_true", help="every dead letter not yet requeued")
    p.add_argument("--kind", help="with --all: only this error kind")


def _dead_letter_dict(letter: StoredDeadLetter) -> dict[str, Any]:
    dl = letter.dead_letter
    value = dl.value or b""
    preview = value[:200].decode("utf-8", errors="backslashreplace")
    return {
        "id": letter.id,
        "source": dl.source_key,
        "error_kind": dl.error_kind,
        "reason": dl.reason,
        "event_id": dl.event_id,
        "bytes": len(value),
        "preview": preview,
        "created_at": format_timestamp(letter.created_at),
        "published_at": format_timestamp(letter.published_at) if letter.published_at else None,
        "requeued_at": format_timestamp(letter.requeued_at) if letter.requeued_at else None,
    }


@with_app
def cmd_dlq_list(app: App, args: argparse.Namespace) -> int:
    letters = app.store.list_dead_letters(limit=args.limit, after_id=args.after_id, include_requeued=not args.pending)
    if args.kind:
        letters = [x for x in letters if x.dead_letter.error_kind == args.kind]
    rows = [_dead_letter_dict(x) for x in letters]
    if args.json:
        print_json(rows)
    else:
        columns(
            ["id", "source", "kind", "reason", "bytes", "requeued"],
            [(r["id"], r["source"], r["error_kind"], r["reason"], r["bytes"], r["requeued_at"] or "") for r in rows],
            none=_no_dead_letters(args),
        )
    return 0


def _no_dead_letters(args: argparse.Namespace) -> str:
    """What an empty ``dlq list`` means, given its filters."""
    if args.kind:
        return (
            f"no dead letters of kind {args.kind!r}"
            + (" waiting" if args.pending else "")
            + " (see `alignd dlq count`)"
        )
    if args.after_id:
        return f"no dead letters after id {args.after_id}"
    if args.pending:
        return "no dead letters waiting to be requeued"
    return "no dead letters: every message read so far was stored"


@with_app
def cmd_dlq_count(app: App, args: argparse.Namespace) -> int:
    by_kind = app.store.count_dead_letters(by_kind=True)
    total = sum(by_kind.values())
    if args.json:
        print_json({"total": total, "by_kind": by_kind})
    else:
        columns(
            ["kind", "count"],
            [*sorted(by_kind.items()), ("total", total)] if total else [],
            none="no dead letters: every message read so far was stored",
        )
    return 0


@with_app
def cmd_dlq_requeue(app: App, args: argparse.Namespace) -> int:
    from consumers.dead_letter import requeue

    if not args.id and not args.all:
        raise CliError("say which dead letters to requeue: --id N (repeatable) or --all (optionally with --kind KIND)")
    store = app.store
    letters = store.list_dead_letters(limit=1_000_000, ids=args.id or None, include_requeued=False)
    if args.kind:
        letters = [x for x in letters if x.dead_letter.error_kind == args.kind]
    if args.id:
        missing = sorted(set(args.id) - {x.id for x in letters})
        if missing:
            raise CliError(f"no dead letter waiting with id {', '.join(map(str, missing))} (see `alignd dlq list`)")
    done: list[int] = []
    if letters:
        producer = app.kafka.producer()
        try:
            done = requeue(store, producer, letters)
        finally:
            producer.close(timeout=10)
    if args.json:
        print_json({"requeued": done, "failed": sorted({x.id for x in letters} - set(done))})
    else:
        print(f"requeued {len(done)} of {len(letters)} dead letters to their original topics")
    return 0 if len(done) == len(letters) else 1

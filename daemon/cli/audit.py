"""``alignd audit list|show|verify|export``: the hash-chained record of every decision (docs/store.md).

``list``, ``show`` and ``export`` first chain the decision events not yet chained, so they show everything
up to now. ``verify`` writes nothing: it checks the chain as it is in the database and exits 1 naming the
first record that does not match.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from daemon.cli.command import AddCommand, group, with_app
from daemon.cli.output import columns, pairs, print_json, shorten
from events.audit import (
    COLUMNS,
    DECISION_TYPES,
    AuditRecord,
    AuditTrail,
    get_record,
    list_records,
    record_hash,
    shown,
    verify,
)
from events.errors import AlignmentError

if TYPE_CHECKING:
    from daemon.bootstrap import App
    from events.sql_store import SqlEventStore

#: Columns of an export, in order; an auditor re-verifies a full export offline with
#: ``hash == sha256(prev_hash + canonical_json({every column but prev_hash and hash}))``. (A record's
#: ``recorded_at``, read from its event, is not a column of the chain: ``list`` and ``show`` print it.)
EXPORT_COLUMNS = COLUMNS
_PAGE = 1000


class AuditRecordNotFoundError(AlignmentError):
    """No audit record at that position or for that event."""


def add_audit_commands(commands: Any, add: AddCommand) -> None:
    """Add the ``audit`` commands to the top-level subparsers."""
    audit = group(commands, "audit", "the hash-chained audit trail of decisions")
    p = add(
        audit,
        "list",
        cmd_audit_list,
        "audit records in the order they were recorded (chain order): who did what, to what, and why; TIME is "
        "when it happened at its source (an alert keeps its traffic's time), RECORDED when alignd stored it",
    )
    _filters(p)
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N records (default 100)")
    p.add_argument("--after-position", type=int, default=0, metavar="P", help="start after record P (paging)")
    p = add(audit, "show", cmd_audit_show, "one record: every field, its evidence and its hashes")
    p.add_argument("record", metavar="POSITION_OR_EVENT_ID", help="a record's position or its event's id")
    add(audit, "verify", cmd_audit_verify, "recompute the chain and check it against the events (writes nothing)")
    p = add(
        audit, "export", cmd_audit_export, "write records, with their hashes, as JSON lines or CSV", json_flag=False
    )
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="default jsonl")
    p.add_argument("--output", "-o", metavar="FILE", help="write here (default: standard output)")
    _filters(p)


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=_timestamp, metavar="RFC3339", help="records that occurred at or after this")
    p.add_argument("--until", type=_timestamp, metavar="RFC3339", help="records that occurred before this")
    p.add_argument("--type", choices=sorted(DECISION_TYPES), help="only this decision (event type)")
    p.add_argument(
        "--model", metavar="M", help="name:version (alignd-policy:3, assistant:v2) or a name (every version)"
    )
    p.add_argument("--actor", metavar="A", help="who decided: an operator's name, mlflow, alignd.monitors, ...")


def _timestamp(text: str) -> datetime:
    """RFC 3339 ("2026-11-01T12:00:00Z", "+02:00" offsets) or a date; without an offset, UTC is meant."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time such as 2026-11-01T12:00:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _chained(app: App) -> SqlEventStore:
    """The store, once the decision events not chained yet are (what ``list``, ``show`` and ``export`` show)."""
    AuditTrail(app.store).catch_up()
    return app.store


def _query(args: argparse.Namespace) -> dict[str, Any]:
    return {"since": args.since, "until": args.until, "action": args.type, "model": args.model, "actor": args.actor}


@with_app
def cmd_audit_list(app: App, args: argparse.Namespace) -> int:
    records = list_records(_chained(app), **_query(args), limit=args.limit, after_position=args.after_position)
    if args.json:
        print_json([_readable(r) for r in records])
        return 0
    names = ["position", "time (UTC)", "actor", "action", "recorded (UTC)", "subject", "reason"]
    columns(names, [_row(r) for r in records])
    if args.limit and len(records) == args.limit:
        print(f"(more may follow: --after-position {records[-1].position})")
    return 0


@with_app
def cmd_audit_show(app: App, args: argparse.Namespace) -> int:
    record = get_record(_chained(app), args.record)
    if record is None:
        raise AuditRecordNotFoundError(
            f"no audit record at position or for event {args.record!r}; `alignd audit list` shows the records"
        )
    intact = record_hash(record.prev_hash, record.fields()) == record.hash
    if args.json:
        print_json({**_readable(record), "hash_matches_contents": intact})
        return 0
    print(f"audit record {record.position}: {record.action} by {record.actor}")
    pairs({k: v for k, v in asdict(record).items() if k not in ("evidence", "prev_hash", "hash")})
    print("\nevidence:")
    print(json.dumps(json.loads(record.evidence), indent=2, ensure_ascii=False, sort_keys=True))
    print(f"\nprev_hash  {record.prev_hash}")
    state = "matches its contents" if intact else "DOES NOT match its contents: run `alignd audit verify`"
    print(f"hash       {record.hash} ({state})")
    return 0


@with_app
def cmd_audit_verify(app: App, args: argparse.Namespace) -> int:
    report = verify(app.store)  # the chain as it is: nothing is chained first
    if args.json:
        print_json(asdict(report))
    elif report.ok:
        last = f", last hash {report.last_hash}" if report.last_hash else ""
        print(f"chain intact: {report.records} records{last}")
        if report.pending:
            print(
                f"{report.pending} decision events are not chained yet (the daemon chains them; so does `audit list`)"
            )
    else:
        print(f"chain BROKEN at record {report.first_bad}: {report.problem}")
    return 0 if report.ok else 1


@with_app
def cmd_audit_export(app: App, args: argparse.Namespace) -> int:
    out: IO[str] = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    try:
        count = _export(_chained(app), args, out)
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"exported {count} audit records to {args.output} ({args.format})")
    return 0


def _export(store: SqlEventStore, args: argparse.Namespace, out: IO[str]) -> int:
    writer = csv.writer(out, lineterminator="\n") if args.format == "csv" else None
    if writer is not None:
        writer.writerow(EXPORT_COLUMNS)
    count, after = 0, 0
    # Page through the trail, so an export of millions of records never holds them all in memory.
    while page := list_records(store, **_query(args), limit=_PAGE, after_position=after):
        for record in page:
            row = record.to_dict()
            if writer is not None:
                writer.writerow(["" if row[c] is None else row[c] for c in EXPORT_COLUMNS])
            else:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        count, after = count + len(page), page[-1].position
    out.flush()
    return count


def _readable(record: AuditRecord) -> dict[str, Any]:
    """A record for people: evidence as an object (the exact hashed text is in ``export``), when it was recorded,
    and an enforcement's outcome (``applied``, ``skipped``, ``failed``; null for other records)."""
    readable = {**record.to_dict(), "evidence": json.loads(record.evidence), "recorded_at": record.recorded_at}
    return readable | {"outcome": shown(record).outcome}


def _row(record: AuditRecord) -> tuple[Any, ...]:
    # The action and reason as a person reads them: a skipped enforcement says so first, never cut off.
    r, s = record, shown(record)
    return r.position, _time(r.occurred_at), r.actor, s.action, _time(r.recorded_at), r.subject, shorten(s.reason, 60)


def _time(moment: str | None) -> str:
    return moment[:19].replace("T", " ") if moment else "?"

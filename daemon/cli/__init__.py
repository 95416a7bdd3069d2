"""The ``alignd`` command line (DESIGN.md §7)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from daemon import bootstrap
from daemon.cli.jobs import add_jobs_commands
from daemon.cli.models import add_models_commands
from daemon.cli.train import add_train_commands
from daemon.cli_audit import add_audit_commands
from daemon.logs import configure_logging, scrub
from daemon.settings import Settings, load_settings
from events.codec import event_to_dict, format_timestamp
from events.errors import AlignmentError, ConfigurationError, StoreUnavailableError
from events.model import ALL_TYPES
from events.redact import mask_secrets_in_text, mask_url_list

logger = logging.getLogger("alignd")


class CliError(AlignmentError):
    """An error to show the user as is, with exit status 2."""


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console().print(table)


# --- commands ---------------------------------------------------------------------------------------


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from events.sql_errors import CONNECTION_ERRORS
    from migrations.runner import current_revision, upgrade

    engine = bootstrap.store_engine(settings)
    try:
        before = current_revision(engine)
        after = upgrade(engine)
    except CONNECTION_ERRORS as exc:
        raise StoreUnavailableError(str(getattr(exc, "orig", None) or exc).splitlines()[0]) from exc
    finally:
        engine.dispose()
    where = settings.redacted()["database"]["url"]
    if args.json:
        _print_json({"database": where, "from": before, "to": after})
    else:
        print(f"database {where}: {before or 'empty'} -> {after}")
    return 0


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    store = bootstrap.open_store(settings)
    ingestor = bootstrap.build_ingestor(settings, store, project=False if args.no_project else None)

    def _stop(signum: int, _frame: Any) -> None:
        logger.info("received %s; finishing the current batch", signal.Signals(signum).name)
        ingestor.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    progress = _IngestProgress() if sys.stderr.isatty() and not args.json else None
    if progress is not None:
        previous = ingestor.after_batch

        def after_batch(result: Any) -> None:
            if previous is not None:
                previous(result)
            progress.update(ingestor.stats)

        ingestor.after_batch = after_batch
    try:
        stats = ingestor.run(until_idle=args.until_idle, max_events=args.max_events)
    finally:
        if progress is not None:
            progress.close()
        ingestor.publisher.producer.close(timeout=10)
        store.dispose()
    summary = {
        "records": stats.records,
        "appended": stats.appended,
        "duplicates": stats.duplicates,
        "dead_letters": stats.dead_letters,
        "batches": stats.batches,
        "store_retries": stats.store_retries,
    }
    if args.json:
        _print_json(summary)
    else:
        print(f"ingested: {stats.summary()}")
    return 0


class _IngestProgress:
    def __init__(self) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=False
        )
        self._task = self._progress.add_task("ingesting", total=None)
        self._progress.start()

    def update(self, stats: Any) -> None:
        self._progress.update(
            self._task,
            description=f"ingesting: {stats.records:,} records, {stats.appended:,} new, {stats.dead_letters:,} dead letters",
        )

    def close(self) -> None:
        self._progress.stop()


def cmd_events_count(settings: Settings, args: argparse.Namespace) -> int:
    store = bootstrap.open_store(settings)
    try:
        counts = store.count_by_type()
    finally:
        store.dispose()
    if args.type:
        counts = {args.type: counts.get(args.type, 0)}
    total = sum(counts.values())
    if args.json:
        _print_json({"total": total, "by_type": counts})
    else:
        _table("events", ["type", "count"], [*sorted(counts.items()), ("total", total)])
    return 0


def cmd_events_tail(settings: Settings, args: argparse.Namespace) -> int:
    store = bootstrap.open_store(settings)
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
    finally:
        store.dispose()
    return 0


def _dead_letter_dict(letter: Any) -> dict[str, Any]:
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


def cmd_dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    store = bootstrap.open_store(settings)
    try:
        letters = store.list_dead_letters(limit=args.limit, after_id=args.after_id, include_requeued=not args.pending)
    finally:
        store.dispose()
    if args.kind:
        letters = [x for x in letters if x.dead_letter.error_kind == args.kind]
    rows = [_dead_letter_dict(x) for x in letters]
    if args.json:
        _print_json(rows)
    else:
        _table(
            "dead letters",
            ["id", "source", "kind", "reason", "bytes", "requeued"],
            [(r["id"], r["source"], r["error_kind"], r["reason"], r["bytes"], r["requeued_at"] or "") for r in rows],
        )
    return 0


def cmd_dlq_count(settings: Settings, args: argparse.Namespace) -> int:
    store = bootstrap.open_store(settings)
    try:
        by_kind = store.count_dead_letters(by_kind=True)
    finally:
        store.dispose()
    total = sum(by_kind.values())
    if args.json:
        _print_json({"total": total, "by_kind": by_kind})
    else:
        _table("dead letters", ["kind", "count"], [*sorted(by_kind.items()), ("total", total)])
    return 0


def cmd_dlq_requeue(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.dead_letter import requeue

    if not args.id and not args.all:
        raise CliError("say which dead letters to requeue: --id N (repeatable) or --all (optionally with --kind KIND)")
    store = bootstrap.open_store(settings)
    producer = None
    try:
        letters = store.list_dead_letters(limit=1_000_000, ids=args.id or None, include_requeued=False)
        if args.kind:
            letters = [x for x in letters if x.dead_letter.error_kind == args.kind]
        if args.id:
            missing = sorted(set(args.id) - {x.id for x in letters})
            if missing:
                raise CliError(f"no dead letter waiting with id {', '.join(map(str, missing))} (see `alignd dlq list`)")
        producer = bootstrap.kafka_producer(settings) if letters else None
        done = requeue(store, producer, letters) if letters else []
    finally:
        if producer is not None:
            producer.close(timeout=10)
        store.dispose()
    if args.json:
        _print_json({"requeued": done, "failed": sorted({x.id for x in letters} - set(done))})
    else:
        print(f"requeued {len(done)} of {len(letters)} dead letters to their original topics")
    return 0 if len(done) == len(letters) else 1


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from events.projections import ProjectionRunner

    store = bootstrap.open_store(settings)
    runner = ProjectionRunner(store)
    names = [args.projection] if args.projection else None
    try:
        try:
            folded = runner.replay(names)
        except KeyError as exc:
            raise CliError(str(exc.args[0])) from None
        digests = runner.digests(names)
    finally:
        store.dispose()
    if args.json:
        _print_json({name: {"events": folded[name], "digest": digests[name]} for name in folded})
    else:
        _table(
            "projections rebuilt",
            ["projection", "events folded", "digest"],
            [(n, folded[n], digests[n]) for n in folded],
        )
    return 0


def cmd_monitors_list(settings: Settings, args: argparse.Namespace) -> int:
    store = bootstrap.open_store(settings)
    try:
        saved = store.position("monitors")  # the runner's name (MonitorRunner.name)
    finally:
        store.dispose()
    position, states = saved.seq, json.loads(saved.state) if saved.state is not None else {}
    enabled = set(settings.monitors.detectors)
    listing = [
        {
            "detector": name,
            "enabled": name in enabled,
            "needs": "the champion reward model (alias champion of alignd-reward)"
            if name in bootstrap.NEEDS_REWARD_MODEL
            else "",
            "state_bytes": len(json.dumps(states[name])) if name in states else 0,
        }
        for name in bootstrap.detector_names()
    ]
    rules = [f"{r.detector}:{r.action}:{r.min_severity}" for r in bootstrap.enforcement_rules(settings)]
    if args.json:
        _print_json(
            {"position": position, "detectors": listing, "rules": rules, "states": states if args.state else None}
        )
    else:
        _table(
            f"detectors (monitors at seq {position})",
            ["detector", "enabled", "saved state", "needs"],
            [
                (d["detector"], "yes" if d["enabled"] else "no", f"{d['state_bytes']:,} bytes", d["needs"])
                for d in listing
            ],
        )
        _table("enforcement rules", ["rule"], [(r,) for r in rules])
    return 0


def cmd_monitors_backtest(settings: Settings, args: argparse.Namespace) -> int:
    from monitors.runner import backtest

    store = bootstrap.open_store(settings)
    try:
        detectors = bootstrap.build_detectors(settings, args.detector or None)
        findings = backtest(store, detectors, from_seq=args.from_seq, to_seq=args.to_seq)
    finally:
        store.dispose()
    rows = [{"anomaly_id": f.anomaly_id, **f.payload()} for f in findings]
    if args.json:
        _print_json(rows)
    else:
        _table(
            f"backtest: {len(rows)} alerts would have fired",
            ["seq", "detector", "severity", "subject", "summary"],
            [(r["trigger_seq"], r["detector"], r["severity"], r["subject"], r["summary"]) for r in rows],
        )
    return 0


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.run import run

    with bootstrap.build(settings) as app:
        return run(app, args.role or [], shutdown_timeout_s=args.shutdown_timeout)


def _cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.demo import cmd_demo

    return cmd_demo(settings, args)


def cmd_config_show(settings: Settings, args: argparse.Namespace) -> int:
    data = settings.redacted()
    if args.json:
        _print_json(data)
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    return 0


# --- parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignd", description="Continuous alignment daemon.")
    parser.add_argument("--config", help="YAML settings file (default: $ALIGND_CONFIG)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="overrides log.level")
    parser.add_argument("--log-format", choices=["json", "text"], help="overrides log.format")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        sub: Any,
        name: str,
        handler: Callable[[Settings, argparse.Namespace], int],
        help_text: str,
        json_flag: bool = True,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON")
        return p

    db = commands.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    add(db, "upgrade", cmd_db_upgrade, "apply migrations up to the newest schema")

    p = add(commands, "ingest", cmd_ingest, "consume the inbound Kafka topics into the event store")
    p.add_argument(
        "--until-idle",
        type=float,
        metavar="SECONDS",
        help="stop after this long without new records (once partitions are assigned)",
    )
    p.add_argument("--max-events", type=int, metavar="N", help="stop after about N records")
    p.add_argument("--no-project", action="store_true", help="do not fold projections after each batch")

    ev = commands.add_parser("events", help="read the event store").add_subparsers(
        dest="events_command", required=True, metavar="ACTION"
    )
    p = add(ev, "count", cmd_events_count, "count events, by type")
    p.add_argument("--type", choices=sorted(ALL_TYPES))
    p = add(ev, "tail", cmd_events_tail, "print events as JSON lines", json_flag=False)
    p.add_argument("--type", choices=sorted(ALL_TYPES))
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events until interrupted")
    p.add_argument("--from-seq", type=int, metavar="N", help="start after this seq (default: the last --lines events)")
    p.add_argument("--lines", "-n", type=int, default=20, help="how many recent events to start with (default 20)")

    dlq = commands.add_parser("dlq", help="dead letters").add_subparsers(
        dest="dlq_command", required=True, metavar="ACTION"
    )
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

    p = add(commands, "replay", cmd_replay, "rebuild projections from the event store and print their digests")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--projection", metavar="NAME", help="only this projection")
    group.add_argument("--all", action="store_true", help="every projection (the default)")

    mon = commands.add_parser("monitors", help="alignment-failure detectors").add_subparsers(
        dest="monitors_command", required=True, metavar="ACTION"
    )
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

    from daemon.run import ROLES

    p = add(
        commands,
        "run",
        cmd_run,
        "the long-running daemon: ingestion, monitors, enforcement, scheduler, HTTP",
        json_flag=False,
    )
    p.add_argument("--role", action="append", choices=ROLES, help="run only these parts (repeatable; default: all)")
    p.add_argument("--shutdown-timeout", type=float, default=120.0, metavar="SECONDS", help="how long SIGTERM may take")
    p = add(commands, "demo", _cmd_demo, "the whole loop on this machine: local Kafka, SQLite, MLflow, an incident")
    p.add_argument("--dir", default="alignd-demo", help="where the demo keeps its databases, broker and models")
    p.add_argument("--quick", action="store_true", help="the tiny test policy and a few steps (as CI runs it)")
    add_train_commands(commands, add)
    add_models_commands(commands, add)
    add_audit_commands(commands, add)
    add_jobs_commands(commands, add)

    cfg = commands.add_parser("config", help="settings").add_subparsers(
        dest="config_command", required=True, metavar="ACTION"
    )
    add(cfg, "show", cmd_config_show, "print the effective settings, secrets masked")
    return parser


def _fail(message: str) -> None:
    """An error for the user, on stderr; every message goes through here, scrubbed of secrets (a driver's or
    MLflow's error may echo the URL it was given, password and all)."""
    print(f"alignd: {scrub(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigurationError as exc:
        # The settings are not known yet: URL credentials and password=... pairs are masked, nothing more.
        print(f"alignd: {mask_secrets_in_text(str(exc))}", file=sys.stderr)
        return 2
    configure_logging(
        args.log_level or settings.log.level, args.log_format or settings.log.format, settings.known_secrets()
    )
    try:
        return int(args.handler(settings, args))
    except (CliError, ConfigurationError) as exc:
        _fail(str(exc))
        return 2
    except StoreUnavailableError as exc:
        where = settings.redacted()["database"]["url"]
        _fail(f"cannot reach the database at {where} ({exc}); is it running? check ALIGND_DATABASE_URL")
        return 1
    except AlignmentError as exc:
        _fail(str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - Kafka errors get advice; anything else its scrubbed traceback
        from kafka.errors import KafkaError

        if isinstance(exc, KafkaError):
            _fail(
                f"Kafka error: {exc}; check ALIGND_KAFKA_BOOTSTRAP_SERVERS "
                f"({mask_url_list(settings.kafka.bootstrap_servers)}) and the security settings"
            )
            return 1
        # A bug, or an error nobody translated (SQLAlchemy's for a URL it cannot parse quotes the URL): the
        # traceback Python would print, scrubbed, and its exit status.
        import traceback

        sys.stderr.write(scrub("".join(traceback.format_exception(exc))))
        return 1

"""``alignd ingest``: the inbound Kafka topics into the event store, until idle or interrupted."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any

from daemon.cli.command import AddCommand, with_app
from daemon.cli.output import print_json

if TYPE_CHECKING:
    from consumers.ingest import IngestStats
    from daemon.bootstrap import App

logger = logging.getLogger("alignd")


def add_ingest_commands(commands: Any, add: AddCommand) -> None:
    p = add(commands, "ingest", cmd_ingest, "consume the inbound Kafka topics into the event store")
    p.add_argument(
        "--until-idle",
        type=float,
        metavar="SECONDS",
        help="stop after this long without new records (once partitions are assigned)",
    )
    p.add_argument("--max-events", type=int, metavar="N", help="stop after about N records")
    p.add_argument("--no-project", action="store_true", help="do not fold projections after each batch")


@with_app
def cmd_ingest(app: App, args: argparse.Namespace) -> int:
    ingestor = app.ingestor(project=False if args.no_project else None)

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
    summary = {
        "records": stats.records,
        "appended": stats.appended,
        "duplicates": stats.duplicates,
        "dead_letters": stats.dead_letters,
        "batches": stats.batches,
        "store_retries": stats.store_retries,
    }
    if args.json:
        print_json(summary)
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

    def update(self, stats: IngestStats) -> None:
        self._progress.update(
            self._task,
            description=f"ingesting: {stats.records:,} records, {stats.appended:,} new, {stats.dead_letters:,} dead letters",
        )

    def close(self) -> None:
        self._progress.stop()

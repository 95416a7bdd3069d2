"""Ingestion throughput: alignd's Ingestor into SQLite and PostgreSQL, against a plain kafka-python loop.

    python -m bench.ingest_bench                              # 100,000 events, 3 repeats
    python -m bench.ingest_bench --events 20000 --repeat 1    # quick smoke
    python -m bench.ingest_bench --profile                    # plus one cProfile'd run per phase

What it does, in one process:

1. Starts a local Kafka broker (``daemon.local.kafka``) unless ``$KAFKA_BOOTSTRAP_SERVERS`` names one, and a
   local PostgreSQL (``daemon.local.postgres``) unless ``$ALIGND_TEST_POSTGRES_URL`` names a server (a fresh
   database is created on it for each run and dropped afterwards): :mod:`bench.harness`.
2. Creates one topic (3 partitions by default) and produces ``--events`` realistic envelopes (docs/event-contract.md,
   :mod:`bench.workload`):
   ``interaction.logged`` with prompts of 200-500 and responses of 300-800 characters, ``feedback.received``
   of every kind, and about 0.5 % invalid messages (bad JSON, invalid UTF-8, missing or mistyped fields,
   unknown type or schema version) that must become dead letters. Production is not timed.
3. Measures, ``--repeat`` times with the order rotated each round and a fresh consumer group (and database)
   each run:

   * ``baseline``: a plain ``KafkaConsumer`` loop, ``poll(max_records=...)`` and ``json.loads`` of each value,
     nothing else (no commit, no validation, no storage);
   * ``sqlite``: alignd's ``Ingestor`` built by ``daemon.bootstrap.build_ingestor(..., project=False)`` into a
     fresh SQLite file (WAL), run with ``max_events=N`` so it stops on the last record;
   * ``postgres``: the same into a fresh PostgreSQL database.

   Throughput is N / (time from the first poll that returned records to the last record processed); the
   start-up (group join, first fetch) is reported separately. Also recorded per run: CPU seconds of this
   process, of the broker and of PostgreSQL (local services only), and the peak RSS of this process during
   the phase (``/proc/self/clear_refs`` resets the high-water mark before each phase).
4. Prints a table and writes ``bench/results/ingest.json``.

This is a benchmark, not a test: nothing is asserted on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import (
    PhaseMeter,
    Services,
    code_version,
    create_topic,
    machine_info,
    produce,
    start_services,
    write_results,
)
from bench.workload import EventFactory

logger = logging.getLogger("bench.ingest")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGETS = ("baseline", "sqlite", "postgres")
LABELS = {
    "baseline": "baseline (kafka-python, json.loads)",
    "sqlite": "alignd -> SQLite (WAL)",
    "postgres": "alignd -> PostgreSQL",
}
#: alignd must keep at least this share of the baseline's throughput ...
MIN_RATIO = 0.8
#: ... and store at least this many events per second into PostgreSQL.
MIN_POSTGRES_EPS = 20_000


# ======================================================================================= timing


@dataclass
class Marks:
    start: float = 0.0
    first: float | None = None
    end: float | None = None


def _instrument(consumer: Any, marks: Marks) -> None:
    """Note when the first records arrive and when the loop closes the consumer (one call per poll)."""
    poll, close = consumer.poll, consumer.close

    def timed_poll(*args: Any, **kwargs: Any) -> Any:
        out = poll(*args, **kwargs)
        if marks.first is None and any(out.values()):
            marks.first = time.perf_counter()
        return out

    def timed_close(*args: Any, **kwargs: Any) -> Any:
        if marks.end is None:
            marks.end = time.perf_counter()
        return close(*args, **kwargs)

    consumer.poll = timed_poll
    consumer.close = timed_close


def _timing(n: int, marks: Marks) -> dict[str, Any]:
    assert marks.first is not None and marks.end is not None
    steady = marks.end - marks.first
    total = marks.end - marks.start
    return {
        "seconds": round(steady, 4),
        "seconds_total": round(total, 4),
        "startup_s": round(marks.first - marks.start, 4),
        "events_per_s": round(n / steady, 1) if steady > 0 else None,
        "events_per_s_total": round(n / total, 1) if total > 0 else None,
    }


@dataclass
class Bench:
    services: Services
    topic: str
    n: int
    expect_valid: int
    expect_invalid: int
    max_poll_records: int
    run_tag: str
    results_dir: Path
    counter: int = 0

    def settings_env(self, url: str, group: str) -> dict[str, str]:
        return {
            "ALIGND_DATABASE_URL": url,
            "ALIGND_KAFKA_BOOTSTRAP_SERVERS": self.services.bootstrap,
            "ALIGND_KAFKA_GROUP_ID": group,
            "ALIGND_KAFKA_CLIENT_ID": "alignd-bench",
            "ALIGND_TOPICS_INTERACTIONS": self.topic,
            "ALIGND_TOPICS_FEEDBACK": self.topic,
            "ALIGND_TOPICS_DLQ": self.topic + ".dlq",
            "ALIGND_INGEST_MAX_POLL_RECORDS": str(self.max_poll_records),
            "ALIGND_INGEST_PROJECT": "false",
        }

    def _group(self, target: str) -> str:
        self.counter += 1
        return f"bench-{self.run_tag}-{target}-{self.counter}"

    # -- (a) the baseline

    def run_baseline(self, *, profile: Path | None = None) -> dict[str, Any]:
        from kafka import KafkaConsumer

        from daemon.settings import load_settings

        group = self._group("baseline")
        # Same fetch sizes as alignd's consumer (daemon.bootstrap's KafkaClients.consumer), so only the work differs.
        settings = load_settings(env=self.settings_env("sqlite:///unused.db", group))
        consumer = KafkaConsumer(
            bootstrap_servers=self.services.bootstrap.split(","),
            client_id="alignd-bench-baseline",
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_poll_records,
            max_partition_fetch_bytes=max(2 * settings.ingest.max_message_bytes, 1024 * 1024),
        )
        marks = Marks()
        count = bad = 0
        n, batch = self.n, self.max_poll_records
        loads = json.loads
        profiler = cProfile.Profile() if profile is not None else None
        with PhaseMeter(self.services) as meter:
            marks.start = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            consumer.subscribe([self.topic])
            while count < n:
                polled = consumer.poll(timeout_ms=500, max_records=min(batch, n - count))
                for records in polled.values():
                    if marks.first is None and records:
                        marks.first = time.perf_counter()
                    for record in records:
                        try:
                            loads(record.value)
                        except ValueError:
                            bad += 1
                    count += len(records)
            marks.end = time.perf_counter()
            if profiler is not None:
                profiler.disable()
        if profiler is not None and profile is not None:
            profiler.dump_stats(str(profile))
        consumer.close(autocommit=False)
        return {"records": count, "json_errors": bad, **_timing(n, marks), **meter.figures()}

    # -- (b), (c) alignd

    def run_alignd(self, target: str, *, profile: Path | None = None) -> dict[str, Any]:
        from daemon.bootstrap import build_ingestor, open_store
        from daemon.settings import load_settings
        from events.sql_store import create_store_engine
        from migrations.runner import upgrade

        group = self._group(target)
        dbname: str | None = None
        db_path: Path | None = None
        if target == "sqlite":
            db_path = self.services.tmp / f"{group}.db"
            url = f"sqlite:///{db_path}"
        else:
            dbname = group.replace("-", "_").replace(".", "_").lower()
            url = self.services.new_database(dbname)
        try:
            engine = create_store_engine(url)
            upgrade(engine)
            engine.dispose()
            settings = load_settings(env=self.settings_env(url, group))
            store = open_store(settings)
            ingestor = build_ingestor(settings, store, project=False)
            if ingestor.after_batch is not None:
                raise RuntimeError("projections are on; the benchmark measures ingestion alone")
            marks = Marks()
            _instrument(ingestor.consumer, marks)
            profiler = cProfile.Profile() if profile is not None else None
            with PhaseMeter(self.services) as meter:
                marks.start = time.perf_counter()
                if profiler is not None:
                    profiler.enable()
                stats = ingestor.run(max_events=self.n)
                if profiler is not None:
                    profiler.disable()
            if profiler is not None and profile is not None:
                profiler.dump_stats(str(profile))
            with contextlib.suppress(Exception):
                ingestor.publisher.producer.close(timeout=10)
            stored = store.count()
            letters = store.count_dead_letters().get("total", 0)
            unpublished = len(store.list_dead_letters(limit=self.n + 1, unpublished_only=True))
            db_bytes = _db_size(store, db_path)
            store.dispose()
        finally:
            if db_path is not None:
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        Path(str(db_path) + suffix).unlink()
            if dbname is not None:
                self.services.drop_database(dbname)
        ok = stats.records == self.n and stored == self.expect_valid and letters == self.expect_invalid
        if not ok:
            logger.error(
                "%s run %s: %d records, %d stored (expected %d), %d dead letters (expected %d)",
                target,
                group,
                stats.records,
                stored,
                self.expect_valid,
                letters,
                self.expect_invalid,
            )
        return {
            "records": stats.records,
            "batches": stats.batches,
            "appended": stats.appended,
            "duplicates": stats.duplicates,
            "dead_letters": stats.dead_letters,
            "stored_events": stored,
            "stored_dead_letters": letters,
            "dead_letters_unpublished": unpublished,
            "store_retries": stats.store_retries,
            "database_bytes": db_bytes,
            "verified": ok,
            **_timing(self.n, marks),
            **meter.figures(),
        }

    def run(self, target: str, **kwargs: Any) -> dict[str, Any]:
        return self.run_baseline(**kwargs) if target == "baseline" else self.run_alignd(target, **kwargs)


def _db_size(store: Any, db_path: Path | None) -> int | None:
    if db_path is not None:
        return sum(Path(str(db_path) + s).stat().st_size for s in ("", "-wal") if Path(str(db_path) + s).exists())
    with contextlib.suppress(Exception), store.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one())
    return None


# ========================================================================================= report


def summarise(runs: list[dict[str, Any]], targets: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for target in targets:
        mine = [r for r in runs if r["target"] == target and r.get("events_per_s")]
        if not mine:
            continue
        eps = [r["events_per_s"] for r in mine]
        summary[target] = {
            "runs": len(mine),
            "events_per_s_median": round(statistics.median(eps), 1),
            "events_per_s_min": min(eps),
            "events_per_s_max": max(eps),
            "events_per_s_total_median": round(statistics.median(r["events_per_s_total"] for r in mine), 1),
            "seconds_median": round(statistics.median(r["seconds"] for r in mine), 3),
            "startup_s_median": round(statistics.median(r["startup_s"] for r in mine), 3),
            "cpu_s_python_median": round(statistics.median(r["cpu_s_python"] for r in mine), 3),
            "rss_start_mib_median": statistics.median(r["rss_start_mib"] or 0 for r in mine),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in mine),
        }
        for key in ("cpu_s_kafka", "cpu_s_postgres"):
            values = [r[key] for r in mine if r.get(key) is not None]
            if values:
                summary[target][key + "_median"] = round(statistics.median(values), 3)
    base = summary.get("baseline", {}).get("events_per_s_median")
    for target in ("sqlite", "postgres"):
        if target not in summary:
            continue
        entry = summary[target]
        ratio = entry["events_per_s_median"] / base if base else None
        entry["ratio_to_baseline"] = round(ratio, 3) if ratio is not None else None
        checks = {f">= {MIN_RATIO}x baseline": None if ratio is None else ratio >= MIN_RATIO}
        if target == "postgres":
            checks[f">= {MIN_POSTGRES_EPS:,} events/s"] = entry["events_per_s_median"] >= MIN_POSTGRES_EPS
        entry["targets"] = checks
        entry["meets_targets"] = all(v is True for v in checks.values())
    return summary


def print_table(summary: dict[str, Any], targets: list[str], n: int, repeat: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ingestion throughput, {n:,} events, median of {repeat} (min-max)")
    table.add_column("phase", no_wrap=True)
    table.add_column("events/s", justify="right", no_wrap=True)
    table.add_column("min - max", justify="right", no_wrap=True)
    table.add_column("x baseline", justify="right", no_wrap=True)
    table.add_column("target", no_wrap=True)
    table.add_column("met", justify="center")
    table.add_column("s", justify="right")
    table.add_column("start-up s", justify="right", no_wrap=True)
    table.add_column("CPU s py/kafka/pg", justify="right", no_wrap=True)
    table.add_column("RSS MiB start->peak", justify="right", no_wrap=True)
    for target in targets:
        entry = summary.get(target)
        if entry is None:
            continue
        if target == "baseline":
            goal, met, ratio = "-", "", "1.00"
        else:
            goal = f">= {MIN_RATIO}x" + (f", >= {MIN_POSTGRES_EPS:,}/s" if target == "postgres" else "")
            met = "[green]yes[/]" if entry["meets_targets"] else "[red]no[/]"
            ratio = f"{entry['ratio_to_baseline']:.2f}" if entry.get("ratio_to_baseline") is not None else "?"
        cpu = " / ".join(
            "-" if entry.get(k) is None else f"{entry[k]:.1f}"
            for k in ("cpu_s_python_median", "cpu_s_kafka_median", "cpu_s_postgres_median")
        )
        table.add_row(
            LABELS[target],
            f"{entry['events_per_s_median']:,.0f}",
            f"{entry['events_per_s_min']:,.0f} - {entry['events_per_s_max']:,.0f}",
            ratio,
            goal,
            met,
            f"{entry['seconds_median']:.2f}",
            f"{entry['startup_s_median']:.2f}",
            cpu,
            f"{entry['rss_start_mib_median']:.0f} -> {entry['peak_rss_mib_max']:.0f}",
        )
    console = Console()
    if not console.is_terminal:  # CI or a pipe: rich would assume 80 columns and squeeze the figures
        console.width = 200
    console.print(table)


def print_profile(path: Path, limit: int = 25) -> None:
    for sort in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out)
        stats.strip_dirs().sort_stats(sort).print_stats(limit)
        print(f"\n--- {path.name}, top {limit} by {sort} ---")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))


# =========================================================================================== main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="messages to produce and consume (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each phase (default 3)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the topic (default 3)")
    parser.add_argument("--invalid-rate", type=float, default=0.005, help="share of invalid messages (default 0.005)")
    parser.add_argument(
        "--max-poll-records", type=int, default=2000, help="records per poll, both loops (alignd's default)"
    )
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "ingest.json", help="JSON results file")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the timed runs, one cProfile'd run per phase (not counted)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (broker and server data, logs)")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        parser.error(f"--targets: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(TARGETS)}")
    if args.events < 1 or args.repeat < 1 or args.partitions < 1:
        parser.error("--events, --repeat and --partitions must be at least 1")
    args.targets = [t for t in TARGETS if t in targets]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="alignd-bench-"))
    log_file = tmp / "bench.log"
    logging.basicConfig(
        level=logging.WARNING,
        filename=str(log_file),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # alignd logs one warning per dead letter and kafka-python is chatty; keep them out of the table.
    logging.getLogger("bench").setLevel(logging.INFO)
    services: Services | None = None
    try:
        services = start_services(tmp)
        run_tag = uuid.uuid4().hex[:8]
        topic = f"alignd.bench.{run_tag}"
        create_topic(services, topic, args.partitions)
        factory = EventFactory(args.seed, args.events, args.invalid_rate)
        print(f"producing {args.events:,} messages to {topic} ({args.partitions} partitions) ...", flush=True)
        produce_s = produce(services, topic, factory)
        invalid = sum(v for k, v in factory.counts.items() if k.startswith("invalid:"))
        print(
            f"  produced in {produce_s:.1f}s ({args.events / produce_s:,.0f}/s, untimed), "
            f"{factory.value_bytes / args.events:,.0f} bytes/message on average, {invalid} invalid",
            flush=True,
        )
        bench = Bench(
            services=services,
            topic=topic,
            n=args.events,
            expect_valid=args.events - invalid,
            expect_invalid=invalid,
            max_poll_records=args.max_poll_records,
            run_tag=run_tag,
            results_dir=args.output.parent,
        )
        runs: list[dict[str, Any]] = []
        for rep in range(args.repeat):
            shift = rep % len(args.targets)
            order = args.targets[shift:] + args.targets[:shift]
            for position, target in enumerate(order):
                figures = bench.run(target)
                runs.append({"target": target, "repeat": rep, "position": position, **figures})
                print(
                    f"  [{rep + 1}/{args.repeat}] {target:<9} {figures['events_per_s']:>10,.0f} events/s "
                    f"({figures['seconds']:.2f}s + {figures['startup_s']:.2f}s start-up, "
                    f"python CPU {figures['cpu_s_python']:.1f}s, peak RSS {figures['peak_rss_mib']:.0f} MiB)",
                    flush=True,
                )
        summary = summarise(runs, args.targets)
        print()
        print_table(summary, args.targets, args.events, args.repeat)

        profiles: dict[str, str] = {}
        if args.profile:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            for target in args.targets:
                path = args.output.parent / f"ingest-{target}.prof"
                figures = bench.run(target, profile=path)
                eps = figures["events_per_s"]
                print(f"\nprofiled {target} run (cProfile, main thread only): {eps:,.0f} events/s")
                print_profile(path)
                profiles[target] = str(path)

        document = {
            "benchmark": "ingest",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "argv": sys.argv[1:] if argv is None else argv,
            "machine": machine_info(services),
            "code": code_version(),
            "config": {
                "events": args.events,
                "repeat": args.repeat,
                "partitions": args.partitions,
                "targets": args.targets,
                "max_poll_records": args.max_poll_records,
                "invalid_rate": args.invalid_rate,
                "seed": args.seed,
                "topic": topic,
                "produced_seconds": round(produce_s, 3),
                "mean_message_bytes": round(factory.value_bytes / args.events, 1),
                "message_mix": dict(sorted(factory.counts.items())),
                "throughput_definition": (
                    "events / (last record processed - first poll that returned records); "
                    "events_per_s_total includes the group join and first fetch"
                ),
            },
            "targets": {"min_ratio_to_baseline": MIN_RATIO, "min_postgres_events_per_s": MIN_POSTGRES_EPS},
            "summary": summary,
            "runs": runs,
            "profiles": profiles,
        }
        write_results(args.output, document)
        print(f"\nresults written to {args.output}")
        return 0
    finally:
        if services is not None:
            services.close(keep=args.keep)
        if args.keep:
            print(f"kept {tmp}")
        else:
            logging.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

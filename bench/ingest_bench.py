"""Ingestion throughput: alignd's Ingestor into SQLite and PostgreSQL, against a plain kafka-python loop.

    python -m bench.ingest_bench                              # 100,000 events, 3 repeats
    python -m bench.ingest_bench --events 20000 --repeat 1    # quick smoke
    python -m bench.ingest_bench --profile                    # plus one cProfile'd run per phase

What it does, in one process:

1. Starts a local Kafka broker (``daemon.local.kafka``) unless ``$KAFKA_BOOTSTRAP_SERVERS`` names one, and a
   local PostgreSQL (``daemon.local.postgres``) unless ``$ALIGND_TEST_POSTGRES_URL`` names a server (a fresh
   database is created on it for each run and dropped afterwards).
2. Creates one topic (3 partitions by default) and produces ``--events`` realistic envelopes (DESIGN.md §2):
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
import os
import platform
import pstats
import random
import re
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

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


# ============================================================================================ data


_WORDS = (
    "the model answer question user context policy reward feedback training data system prompt response "
    "should would could because however therefore example explain describe summary detail step first second "
    "then finally result error value function class method database table query index transaction commit "
    "kafka partition offset consumer producer event stream batch latency throughput memory cpu network "
    "python rust java go typescript request service deploy container cluster node version release rollback "
    "safety alignment preference human rating correction flag signal dataset evaluation metric accuracy "
    "please thanks help issue problem solution approach option tradeoff cost benefit risk small large fast "
    "slow simple complex clear careful good better best worse recipe travel weather history science math "
    "physics chemistry biology music film book article email letter report meeting schedule plan budget "
    "a an and or but if when while with without for from into onto over under between about around "
    "is are was were be been being have has had do does did can may might must will shall not no yes "
    "this that these those it its they them their we our you your he she his her i me my"
).split()
_UNICODE_BITS = ("naïve café", "“quoted”", "— em dash", "Zürich", "東京", "🙂", "résumé", "½ cup", "Ωmega")
_PROMPT_OPENERS = (
    "Can you explain",
    "Write a short summary of",
    "What is the difference between",
    "Help me debug",
    "Give me three ideas for",
    "Translate into plain English:",
    "Is it safe to",
    "Draft an email about",
    "Compare",
    "Why does",
)
_SOURCES = ("chat-gateway", "api-gateway", "mobile-app", "batch-eval")
_MODELS = (("smollm2-135m-instruct", "7"), ("smollm2-135m-instruct", "8"), ("alignd-policy", "12"))
_OFFSETS = (
    UTC,
    UTC,
    timezone(timedelta(hours=2)),
    timezone(timedelta(hours=-5)),
    timezone(timedelta(hours=5, minutes=30)),
)
_SIGNALS = ("regenerated", "copied", "edited", "abandoned", "escalated_to_human", "dwell_time_ms")
_FLAGS = ("toxic", "jailbreak", "hallucination", "pii", "other")
# kind -> weight among feedback
_FEEDBACK_MIX = (
    ("thumbs", 35),
    ("signal", 25),
    ("rating", 15),
    ("preference", 10),
    ("correction", 8),
    ("flag", 7),
)
_INVALID_KINDS = (
    "invalid_json",
    "missing_response",
    "missing_request_id",
    "invalid_utf8",
    "mistyped_rating",
    "unknown_type",
    "unknown_schema_version",
)
INTERACTION_SHARE = 0.6


class EventFactory:
    """Deterministic stream of (key, value) Kafka messages; see the module docstring for the mix."""

    def __init__(self, seed: int, n: int, invalid_rate: float) -> None:
        self.rng = random.Random(seed)
        self.n = n
        n_invalid = round(n * invalid_rate) if invalid_rate > 0 else 0
        self.invalid_at = set(self.rng.sample(range(n), n_invalid)) if n_invalid else set()
        self.start = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
        self.recent: list[str] = []
        self.counts: dict[str, int] = {}
        self.value_bytes = 0
        kinds, weights = zip(*_FEEDBACK_MIX, strict=True)
        self._kinds, self._weights = list(kinds), list(weights)

    def _text(self, lo: int, hi: int, opener: str | None = None) -> str:
        rng = self.rng
        target = rng.randint(lo, hi)
        words = rng.choices(_WORDS, k=target // 4 + 8)
        if opener:
            words.insert(0, opener)
        if rng.random() < 0.1:
            words.insert(rng.randrange(len(words)), rng.choice(_UNICODE_BITS))
        text = " ".join(words)
        if len(text) > target:
            cut = text.rfind(" ", 0, target)
            text = text[: cut if cut > lo // 2 else target]
        return text[0].upper() + text[1:] + "."

    def _envelope(self, i: int, event_type: str, payload: dict[str, Any], source: str) -> dict[str, Any]:
        rng = self.rng
        moment = self.start + timedelta(milliseconds=30 * i + rng.randint(0, 29))
        stamp = moment.astimezone(rng.choice(_OFFSETS)).isoformat(timespec="milliseconds")
        if stamp.endswith("+00:00") and rng.random() < 0.5:
            stamp = stamp[:-6] + "Z"
        doc: dict[str, Any] = {
            "type": event_type,
            "schema_version": 1,
            "occurred_at": stamp,
            "source": source,
            "payload": payload,
        }
        # A few producers send no event_id: alignd derives one from the Kafka coordinates.
        if rng.random() < 0.97:
            doc = {"event_id": f"evt-{rng.getrandbits(96):024x}", **doc}
        return doc

    def interaction(self, i: int) -> dict[str, Any]:
        rng = self.rng
        request_id = f"req-{i:08d}-{rng.getrandbits(32):08x}"
        self.recent.append(request_id)
        if len(self.recent) > 5000:
            del self.recent[:1000]
        name, version = rng.choice(_MODELS)
        payload: dict[str, Any] = {"request_id": request_id, "model": {"name": name, "version": version}}
        prompt = self._text(200, 500, rng.choice(_PROMPT_OPENERS))
        if rng.random() < 0.2:
            payload["messages"] = [
                {"role": "system", "content": "You are a helpful, harmless and honest assistant."},
                {"role": "user", "content": prompt},
            ]
        else:
            payload["prompt"] = prompt
        payload["response"] = self._text(300, 800)
        payload["latency_ms"] = round(rng.lognormvariate(6.0, 0.5), 1)
        payload["user"] = f"user-{rng.randrange(20_000):05d}"
        payload["session_id"] = f"sess-{rng.randrange(60_000):06d}"
        if rng.random() < 0.5:
            payload["metadata"] = {
                "locale": rng.choice(("en-GB", "en-US", "de-DE", "fr-FR")),
                "temperature": 0.7,
                "channel": "web",
            }
        return self._envelope(i, "interaction.logged", payload, rng.choice(_SOURCES))

    def feedback(self, i: int, kind: str | None = None) -> dict[str, Any]:
        rng = self.rng
        kind = kind or rng.choices(self._kinds, self._weights)[0]
        if self.recent and rng.random() < 0.92:
            request_id = rng.choice(self.recent)
        else:  # feedback for an interaction never seen (or not yet)
            request_id = f"req-unknown-{rng.getrandbits(40):010x}"
        value: Any
        if kind == "thumbs":
            value = "up" if rng.random() < 0.7 else "down"
        elif kind == "rating":
            value = rng.randint(1, 5)
        elif kind == "preference":
            value = {"chosen": self._text(300, 800), "rejected": self._text(300, 800)}
        elif kind == "correction":
            value = {"response": self._text(300, 800)}
        elif kind == "flag":
            value = {"category": rng.choice(_FLAGS)}
            if rng.random() < 0.5:
                value["note"] = self._text(20, 120)
        else:
            name = rng.choice(_SIGNALS)
            value = {"name": name, "value": rng.randint(500, 120_000)} if name == "dwell_time_ms" else {"name": name}
        payload: dict[str, Any] = {"request_id": request_id, "kind": kind, "value": value}
        if rng.random() < 0.7:
            payload["user"] = f"user-{rng.randrange(20_000):05d}"
        if rng.random() < 0.1:
            payload["comment"] = self._text(20, 200)
        return self._envelope(i, "feedback.received", payload, "feedback-service")

    def invalid(self, i: int) -> tuple[str, bytes]:
        kind = self.rng.choice(_INVALID_KINDS)
        if kind == "invalid_json":
            raw = json.dumps(self.interaction(i)).encode()
            return kind, raw[: len(raw) // 2]
        if kind == "missing_response":
            doc = self.interaction(i)
            del doc["payload"]["response"]
        elif kind == "missing_request_id":
            doc = self.feedback(i, "thumbs")
            del doc["payload"]["request_id"]
        elif kind == "invalid_utf8":
            raw = json.dumps(self.interaction(i), ensure_ascii=False).encode()
            return kind, raw[:40] + b"\xc3\x28" + raw[40:]
        elif kind == "mistyped_rating":
            doc = self.feedback(i, "rating")
            doc["payload"]["value"] = str(doc["payload"]["value"])
        elif kind == "unknown_type":
            doc = self.interaction(i)
            doc["type"] = "interaction.deleted"
        else:
            doc = self.interaction(i)
            doc["schema_version"] = 9
        return kind, json.dumps(doc, ensure_ascii=False).encode()

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        rng = self.rng
        for i in range(self.n):
            if i in self.invalid_at:
                kind, value = self.invalid(i)
                label = f"invalid:{kind}"
                key = f"bad-{i}".encode()
            else:
                doc = self.interaction(i) if rng.random() < INTERACTION_SHARE else self.feedback(i)
                value = json.dumps(doc, ensure_ascii=False).encode()
                label = doc["type"] if doc["type"] == "interaction.logged" else f"feedback:{doc['payload']['kind']}"
                key = doc["payload"]["request_id"].encode()
            self.counts[label] = self.counts.get(label, 0) + 1
            self.value_bytes += len(value)
            yield key, value


# ======================================================================================= services


@dataclass
class Services:
    bootstrap: str
    kafka_version: str
    kafka_local: bool
    pg_server_url: str
    pg_local: bool
    tmp: Path
    kafka: Any = None
    pg: Any = None
    pg_version: str = ""
    created_dbs: list[str] = field(default_factory=list)
    created_topics: list[str] = field(default_factory=list)

    # -- PostgreSQL

    def new_database(self, name: str) -> str:
        if self.pg is not None:
            url = self.pg.create_database(name)
        else:
            import psycopg
            from psycopg import sql
            from sqlalchemy.engine import make_url

            server = make_url(self.pg_server_url)
            with psycopg.connect(_conninfo(self.pg_server_url), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            url = server.set(database=name).render_as_string(hide_password=False)
        self.created_dbs.append(name)
        return url

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        conninfo = self.pg.conninfo("postgres") if self.pg is not None else _conninfo(self.pg_server_url)
        with contextlib.suppress(Exception), psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            self.created_dbs.remove(name)

    def postgres_pids(self) -> list[int]:
        proc = getattr(self.pg, "_proc", None) if self.pg is not None else None
        return [proc.pid] if proc is not None else []

    def kafka_pids(self) -> list[int]:
        proc = getattr(self.kafka, "_proc", None) if self.kafka is not None else None
        return [proc.pid] if proc is not None else []

    def close(self, *, keep: bool = False) -> None:
        for name in list(self.created_dbs):
            self.drop_database(name)
        if self.created_topics and not self.kafka_local:
            with contextlib.suppress(Exception):
                admin = _admin(self.bootstrap)
                try:
                    for topic in self.created_topics:  # one by one: the DLQ topic may never have been made
                        with contextlib.suppress(Exception):
                            admin.delete_topics([topic])
                finally:
                    admin.close()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                # destroy() also removes a cluster that LocalPostgres relocated outside our folder.
                self.pg.stop("fast") if keep else self.pg.destroy()
        if self.kafka is not None:
            with contextlib.suppress(Exception):
                self.kafka.stop()


def _conninfo(sqlalchemy_url: str) -> str:
    """A libpq URL from an SQLAlchemy one (drops the ``+driver``)."""
    from sqlalchemy.engine import make_url

    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _admin(bootstrap: str) -> Any:
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="alignd-bench")


def start_services(tmp: Path) -> Services:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    kafka = None
    if bootstrap:
        kafka_version = "external"
        logger.info("using Kafka at %s ($KAFKA_BOOTSTRAP_SERVERS)", bootstrap)
    else:
        from daemon.local.kafka import KAFKA_VERSION, LocalKafka

        print("starting a local Kafka broker ...", flush=True)
        kafka = LocalKafka(tmp / "kafka").start()
        bootstrap = kafka.bootstrap_servers
        kafka_version = KAFKA_VERSION
    pg = None
    pg_url = os.environ.get("ALIGND_TEST_POSTGRES_URL", "").strip()
    if not pg_url:
        from daemon.local.postgres import LocalPostgres

        print("starting a local PostgreSQL ...", flush=True)
        try:
            pg = LocalPostgres(tmp / "postgres" / "data").start()
        except BaseException:
            if kafka is not None:
                kafka.stop()
            raise
        pg_url = pg.url("postgres")
    services = Services(bootstrap, kafka_version, kafka is not None, pg_url, pg is not None, tmp, kafka=kafka, pg=pg)
    try:
        import psycopg

        conninfo = pg.conninfo("postgres") if pg is not None else _conninfo(pg_url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            services.pg_version = str(row[0]) if row else "?"
        admin = _admin(bootstrap)
        try:
            broker = admin._manager.broker_version  # noqa: SLF001 - only for the report
            if broker and not services.kafka_local:
                services.kafka_version = "api " + ".".join(map(str, broker))
        finally:
            admin.close()
    except BaseException:
        services.close()
        raise
    return services


def create_topic(services: Services, topic: str, partitions: int) -> None:
    admin = _admin(services.bootstrap)
    try:
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1}}, wait_for_metadata=True)
    finally:
        admin.close()
    services.created_topics += [topic, topic + ".dlq"]  # alignd's producer creates the DLQ topic


def produce(services: Services, topic: str, factory: EventFactory) -> float:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import TopicPartition

    producer = KafkaProducer(
        bootstrap_servers=services.bootstrap.split(","),
        client_id="alignd-bench-producer",
        acks=1,
        enable_idempotence=False,  # idempotence needs acks=all; setup only needs speed
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    started = time.perf_counter()
    for key, value in factory:
        producer.send(topic, key=key, value=value)
    producer.flush(timeout=300)
    producer.close(timeout=30)
    elapsed = time.perf_counter() - started
    probe = KafkaConsumer(bootstrap_servers=services.bootstrap.split(","), client_id="alignd-bench-probe")
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(probe.partitions_for_topic(topic) or ())]
        total = sum(probe.end_offsets(partitions).values())
    finally:
        probe.close()
    if total != factory.n:
        raise RuntimeError(f"produced {factory.n} messages but the topic holds {total}")
    return elapsed


# ==================================================================================== measurement


def _status_kib(name: str) -> int | None:
    try:
        match = re.search(rf"^{name}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _tree_cpu(pids: list[int]) -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    total += t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
        except psutil.Error:
            continue
    return total if pids else None


class PhaseMeter:
    """Wall and CPU time, peak RSS of this process and CPU of the local services over one phase."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def __enter__(self) -> PhaseMeter:
        self.peak_is_phase = _reset_peak_rss()
        self.rss_start = _status_kib("VmRSS")
        self.cpu0 = _self_cpu()
        self.kafka0 = _tree_cpu(self.services.kafka_pids())
        self.pg0 = _tree_cpu(self.services.postgres_pids())
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_s = _self_cpu() - self.cpu0
        kafka1 = _tree_cpu(self.services.kafka_pids())
        pg1 = _tree_cpu(self.services.postgres_pids())
        self.kafka_cpu_s = None if kafka1 is None or self.kafka0 is None else kafka1 - self.kafka0
        self.pg_cpu_s = None if pg1 is None or self.pg0 is None else pg1 - self.pg0
        hwm = _status_kib("VmHWM")
        self.peak_rss_mib = round(hwm / 1024, 1) if hwm is not None else round(_ru_maxrss_kib() / 1024, 1)
        self.rss_start_mib = round(self.rss_start / 1024, 1) if self.rss_start is not None else None

    def figures(self) -> dict[str, Any]:
        return {
            "cpu_s_python": round(self.cpu_s, 3),
            "cpu_s_kafka": None if self.kafka_cpu_s is None else round(self.kafka_cpu_s, 3),
            "cpu_s_postgres": None if self.pg_cpu_s is None else round(self.pg_cpu_s, 3),
            "rss_start_mib": self.rss_start_mib,
            "peak_rss_mib": self.peak_rss_mib,
            "peak_rss_scope": "phase" if self.peak_is_phase else "process lifetime",
        }


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ru_maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


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
        # Same fetch sizes as alignd's consumer (daemon.bootstrap.kafka_consumer), so only the work differs.
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


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the working tree had changes (the figures are then for those)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "modified_files": changed.splitlines() if changed else []}


def machine_info(services: Services) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu_model = None
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu_model = match.group(1).strip() if match else None
    mem_gib = None
    with contextlib.suppress(OSError, AttributeError):
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    try:
        from kafka.record import util as record_util

        crc = "C (crc32c package)" if getattr(record_util, "crc32c_c", None) is not None else "pure Python"
    except ImportError:
        crc = None
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "memory_gib": mem_gib,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "kafka": services.kafka_version
        + (" (local, daemon.local.kafka)" if services.kafka_local else " ($KAFKA_BOOTSTRAP_SERVERS)"),
        "postgresql": services.pg_version
        + (" (local, daemon.local.postgres)" if services.pg_local else " ($ALIGND_TEST_POSTGRES_URL)"),
        "sqlite": sqlite3.sqlite_version,
        "kafka_python": pkg("kafka-python"),
        # kafka-python checks (consumer) and computes (producer) a CRC-32C per record batch; without the
        # optional crc32c package that is pure Python and dominates every phase.
        "kafka_python_crc32c": crc,
        "sqlalchemy": pkg("SQLAlchemy"),
        "psycopg": pkg("psycopg"),
        "pydantic": pkg("pydantic"),
    }


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
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(document, indent=2) + "\n")
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

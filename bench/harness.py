"""What the benchmarks share: the services they run against, the machine they measure, how they report.

* Services: a local Kafka broker (``daemon.local.kafka``) unless ``$KAFKA_BOOTSTRAP_SERVERS`` names one, and a
  local PostgreSQL (``daemon.local.postgres``) unless ``$ALIGND_TEST_POSTGRES_URL`` names a server, where each
  run gets a fresh database that is dropped afterwards (:func:`start_services`, :class:`Services`); topics
  (:func:`create_topic`), and producing a :class:`bench.workload.EventFactory` stream to one (:func:`produce`).
* Machine load: :class:`PhaseMeter` (CPU seconds of this process, of the broker and of PostgreSQL, and the peak
  RSS of this process over a phase), :func:`loadavg`, and :func:`machine_info` for the report.
* Results: :func:`code_version` (the commit measured and the files modified) and :func:`write_results`.

The benchmark modules (``ingest_bench``, ``monitors_bench``, ``soak_bench``, ``http_bench``) import from here;
none imports another benchmark's module for these.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import resource
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.workload import EventFactory

logger = logging.getLogger("bench.harness")


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
                admin = kafka_admin(self.bootstrap)
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


def kafka_admin(bootstrap: str) -> Any:
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="alignd-bench")


def start_services(tmp: Path, *, postgres: bool = True) -> Services:
    """Kafka, and PostgreSQL unless ``postgres`` is false (runs on SQLite need none); local unless the
    environment names servers. Close the result (:meth:`Services.close`) to stop what was started."""
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
    if not postgres:
        return Services(bootstrap, kafka_version, kafka is not None, "", False, tmp, kafka=kafka, pg_version="(unused)")
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
        admin = kafka_admin(bootstrap)
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
    admin = kafka_admin(services.bootstrap)
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


# ================================================================================== machine load


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


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, rounded (None where the platform has none)."""
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


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


# ======================================================================================== results


def write_results(path: Path, document: dict[str, Any]) -> None:
    """The benchmark's JSON document, indented, at ``path`` (its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")

"""Soak: ``alignd run`` as deployed, fed 100,000 mixed messages (1 % hostile) while its HTTP side is under load.

    python -m bench.soak_bench                                      # 100,000 messages, SQLite
    python -m bench.soak_bench --db postgresql                      # the same into PostgreSQL
    python -m bench.soak_bench --messages 5000 --http-clients 10    # quick smoke

Bounded and loopback only. What it does, per run:

1. A local Kafka broker (``daemon.local.kafka``, or ``$KAFKA_BOOTSTRAP_SERVERS``) and, with ``--db
   postgresql``, a local PostgreSQL (``daemon.local.postgres``, or ``$ALIGND_TEST_POSTGRES_URL``), both through
   ``bench.harness``'s helpers. Fresh inbound topics (3 partitions) and DLQ topic, a fresh database migrated
   with ``migrations.runner.upgrade``.
2. Builds the messages up front (``bench.workload.EventFactory``'s realistic interactions and feedback for
   them): interactions to the interactions topic, feedback to the feedback topic; ``--hostile-fraction`` (1 %)
   hostile ones, the kinds of ``HOSTILE_KINDS`` in turn, each of which alignd must dead-letter; ``--dup-fraction``
   (0.2 %) exact resends of earlier messages (same bytes, same key, so the same partition, sent later), which
   must be stored once.
3. Starts the real daemon in a child process, ``python -m daemon.cli run --role ingest --role project --role
   monitor --role http`` (light detectors, MLflow on SQLite, WARNING logs to a file), waits for ``/healthz``,
   then, at the same time: ``--http-clients`` (50) threads of this process hammering ``/healthz``, ``/readyz``,
   ``/metrics`` and ``/audit`` in turn (``http.client``, a new connection per request, no think time), a thread
   producing the messages (kafka-python, acks=1), and a sampler of the daemon's RSS (its process tree) every
   0.5 s.
4. Polls the database directly (``SqlEventStore``) until it holds every expected event and dead letter, or the
   deadline passes; stops the clients, sends SIGTERM and waits for the exit status.
5. Checks by Kafka coordinates and event ids: every valid message stored exactly once (lost and extra must be
   0), every hostile one a dead letter and none an event, each resend a duplicate. Throughput is inbound
   events / (``recorded_at`` of the last stored inbound event - the first message sent). Prints a table and writes
   ``bench/results/soak-<db>.json``; exits 1 when something was lost or extra, a hostile message was stored,
   or the daemon died or did not exit 0.

This is a benchmark, not a test: nothing is asserted on timings. The HTTP clients and the producer share this
process (and the machine's cores) with nothing else of the bench, but with each other: on a small machine
the latencies include this process's own GIL waits.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import Services, code_version, kafka_admin, loadavg, machine_info, start_services
from bench.workload import INTERACTION_SHARE, EventFactory

logger = logging.getLogger("bench.soak")

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
INBOUND_TYPES = ("interaction.logged", "feedback.received")
HTTP_PATHS = ("/healthz", "/readyz", "/metrics", "/audit")
MAX_MESSAGE_BYTES = 1024 * 1024  # alignd's default limit (events.model.DEFAULT_MAX_MESSAGE_BYTES)

#: Every one of these must become a dead letter (docs/event-contract.md: never stored, never dropped silently).
HOSTILE_KINDS = (
    "invalid_json",  # an interaction cut in half
    "invalid_utf8",  # 0xC3 0x28 inside the JSON text
    "nul_event_id",  # "\u0000" escapes: PostgreSQL text cannot hold NUL
    "nul_source",
    "nul_request_id",
    "lone_surrogate",  # "\ud800" in the prompt: valid JSON, not encodable as UTF-8
    "duplicate_key",  # two "type" keys that disagree
    "occurred_at_max",  # 9999-12-31T23:59:59-01:00: past datetime.max in UTC
    "occurred_at_min",  # 0001-01-01T00:00:00+01:00: before datetime.min in UTC
    "deep_nesting",  # payload.metadata nested 300 levels
    "unknown_type",
    "oversized",  # > 1 MiB (the broker takes up to 2 MiB)
    "empty",  # a zero-length value
    "feedback_kind_list",  # "kind": ["thumbs"]
)


# ============================================================================================ messages


@dataclass
class Message:
    topic_role: str  # "interactions" | "feedback"
    key: bytes | None
    value: bytes
    label: str  # "valid" | "duplicate" | "hostile:<kind>"
    event_id: str | None  # the envelope's id for valid messages (None: derived from the coordinates)
    coords: tuple[str, int, int] | None = None  # (topic, partition, offset) once produced


def _hostile(factory: EventFactory, i: int, kind: str) -> tuple[str, bytes, bytes | None]:
    """(topic role, value, key) of one hostile message of ``kind``."""
    doc = factory.feedback(i, "thumbs") if kind == "feedback_kind_list" else factory.interaction(i)
    doc["event_id"] = f"hostile-{i:08d}"
    doc = {"event_id": doc.pop("event_id"), **doc}
    payload = doc["payload"]
    role = "feedback" if doc["type"] == "feedback.received" else "interactions"
    key = str(payload["request_id"]).encode()
    if kind == "invalid_json":
        raw = json.dumps(doc).encode()
        return role, raw[: len(raw) // 2], key
    if kind == "invalid_utf8":
        raw = json.dumps(doc, ensure_ascii=False).encode()
        return role, raw[:40] + b"\xc3\x28" + raw[40:], key
    if kind == "empty":
        return role, b"", key
    if kind == "nul_event_id":
        doc["event_id"] += "\x00"
    elif kind == "nul_source":
        doc["source"] = "chat\x00gateway"
    elif kind == "nul_request_id":
        payload["request_id"] = "req-\x00" + payload["request_id"]
    elif kind == "lone_surrogate":
        payload.pop("messages", None)
        payload["prompt"] = "Tell me about \ud800 this character."
    elif kind == "duplicate_key":
        text = json.dumps(doc)  # ... "type": "interaction.logged" ... and a second, different "type" first
        return role, ('{"type": "feedback.received", ' + text[1:]).encode(), key
    elif kind == "occurred_at_max":
        doc["occurred_at"] = "9999-12-31T23:59:59-01:00"
    elif kind == "occurred_at_min":
        doc["occurred_at"] = "0001-01-01T00:00:00+01:00"
    elif kind == "deep_nesting":
        nested: dict[str, Any] = {"leaf": True}
        for _ in range(299):
            nested = {"n": nested}
        payload["metadata"] = nested  # metadata itself is level 1
    elif kind == "unknown_type":
        doc["type"] = "interaction.deleted"
    elif kind == "oversized":
        payload["response"] = "All work and no play. " * (MAX_MESSAGE_BYTES // 22 + 3000)  # ~1.06 MiB
    elif kind == "feedback_kind_list":
        payload["kind"] = ["thumbs"]
    else:  # pragma: no cover - HOSTILE_KINDS and this function go together
        raise ValueError(kind)
    # ensure_ascii: NUL and the lone surrogate go out as \u escapes (the JSON text itself is valid UTF-8)
    return role, json.dumps(doc).encode(), key


def build_messages(n: int, hostile_fraction: float, dup_fraction: float, seed: int) -> list[Message]:
    factory = EventFactory(seed, n, 0.0)
    rng = factory.rng
    n_hostile = round(n * hostile_fraction)
    n_dup = round(n * dup_fraction)
    hostile_slots = rng.sample(range(n), n_hostile)
    # resends come after the first tenth of the stream, so there is always an earlier message to resend
    taken = set(hostile_slots)
    dup_at = set(rng.sample([i for i in range(n // 10, n) if i not in taken], n_dup))
    hostile_at = {i: HOSTILE_KINDS[k % len(HOSTILE_KINDS)] for k, i in enumerate(sorted(hostile_slots))}
    messages: list[Message] = []
    resendable: list[int] = []  # indexes into messages of valid ones carrying an event_id
    for i in range(n):
        if i in hostile_at:
            kind = hostile_at[i]
            role, value, key = _hostile(factory, i, kind)
            messages.append(Message(role, key, value, f"hostile:{kind}", None))
            continue
        if i in dup_at and resendable:  # resend one of the last 50 sent with an id (same bytes, same key)
            original = messages[resendable[rng.randrange(max(0, len(resendable) - 50), len(resendable))]]
            messages.append(Message(original.topic_role, original.key, original.value, "duplicate", None))
            continue
        doc = factory.interaction(i) if rng.random() < INTERACTION_SHARE else factory.feedback(i)
        role = "interactions" if doc["type"] == "interaction.logged" else "feedback"
        value = json.dumps(doc, ensure_ascii=False).encode()
        messages.append(Message(role, doc["payload"]["request_id"].encode(), value, "valid", doc.get("event_id")))
        if doc.get("event_id"):
            resendable.append(len(messages) - 1)
    return messages


# ============================================================================================ helpers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class RssSampler(threading.Thread):
    """The RSS of a process and its children, every ``interval`` seconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.interval = pid, interval
        self.stop_event = threading.Event()
        self.peak_bytes = 0
        self.peak_main_bytes = 0
        self.samples = 0
        self.last_bytes = 0

    def _rss(self) -> tuple[int, int]:
        try:
            import psutil

            root = psutil.Process(self.pid)
            main = root.memory_info().rss
            total = main
            for child in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            return main, total
        except ImportError:
            text = Path(f"/proc/{self.pid}/status").read_text()
            for line in text.splitlines():
                if line.startswith("VmRSS:"):
                    kib = int(line.split()[1]) * 1024
                    return kib, kib
            return 0, 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                main, total = self._rss()
            except Exception:  # noqa: BLE001 - the process is gone
                break
            self.samples += 1
            self.last_bytes = total
            self.peak_bytes = max(self.peak_bytes, total)
            self.peak_main_bytes = max(self.peak_main_bytes, main)
            self.stop_event.wait(self.interval)


@dataclass
class HttpLoad:
    port: int
    clients: int
    timeout: float = 10.0
    think_s: float = 0.0
    stop_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in HTTP_PATHS})
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: {p: Counter() for p in HTTP_PATHS})
    started: float = 0.0
    stopped: float = 0.0
    threads: list[threading.Thread] = field(default_factory=list)

    def _worker(self, offset: int) -> None:
        k = offset
        while not self.stop_event.is_set():
            path = HTTP_PATHS[k % len(HTTP_PATHS)]
            k += 1
            t0 = time.perf_counter()
            status: str
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                conn.request("GET", path, headers={"Connection": "close"})
                response = conn.getresponse()
                response.read()
                status = str(response.status)
            except TimeoutError:
                status = "timeout"
            except OSError as exc:
                status = type(exc).__name__
            except http.client.HTTPException as exc:
                status = type(exc).__name__
            finally:
                conn.close()
            elapsed = time.perf_counter() - t0
            with self.lock:
                self.statuses[path][status] += 1
                if status.startswith("2"):
                    self.latencies[path].append(elapsed)
            if self.think_s:
                self.stop_event.wait(self.think_s)

    def start(self) -> None:
        self.started = time.perf_counter()
        for n in range(self.clients):
            thread = threading.Thread(target=self._worker, args=(n,), name=f"http-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=self.timeout + 5)
        self.stopped = time.perf_counter()

    def figures(self) -> dict[str, Any]:
        seconds = max(self.stopped - self.started, 1e-9)
        per_path: dict[str, Any] = {}
        all_lat: list[float] = []
        total = failed = 0
        for path in HTTP_PATHS:
            statuses = self.statuses[path]
            n = sum(statuses.values())
            bad = sum(c for s, c in statuses.items() if not s.startswith("2"))
            lat = self.latencies[path]
            all_lat += lat
            total += n
            failed += bad
            per_path[path] = {
                "requests": n,
                "failed": bad,
                "statuses": dict(sorted(statuses.items())),
                "p50_ms": None if not lat else round(1000 * statistics.median(lat), 1),
                "p99_ms": None if not lat else round(1000 * _percentile(lat, 0.99), 1),  # type: ignore[operator]
            }
        return {
            "clients": self.clients,
            "seconds": round(seconds, 2),
            "requests": total,
            "failed": failed,
            "requests_per_s": round(total / seconds, 1),
            "p50_ms": None if not all_lat else round(1000 * statistics.median(all_lat), 1),
            "p99_ms": None if not all_lat else round(1000 * _percentile(all_lat, 0.99), 1),  # type: ignore[operator]
            "by_path": per_path,
        }


def _get(port: int, path: str, timeout: float = 2.0) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# ============================================================================================ services


def create_topics(services: Services, names: list[str], partitions: int) -> None:
    from kafka.admin import NewTopic

    admin = kafka_admin(services.bootstrap)
    try:
        admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names],
            validate_only=False,
        )
    finally:
        admin.close()
    services.created_topics += names


def fresh_database(services: Services, db: str, tmp: Path, run_tag: str) -> tuple[str, Path | None]:
    from events.sql_store import create_store_engine
    from migrations.runner import upgrade

    if db == "sqlite":
        path = tmp / f"soak-{run_tag}.db"
        url = f"sqlite:///{path}"
    else:
        path = None
        url = services.new_database(f"alignd_soak_{run_tag}")
    engine = create_store_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url, path


# ============================================================================================ one run


class Producer(threading.Thread):
    def __init__(self, bootstrap: str, topics: dict[str, str], messages: list[Message]) -> None:
        super().__init__(name="producer", daemon=True)
        self.bootstrap, self.topics, self.messages = bootstrap, topics, messages
        self.error: BaseException | None = None
        self.seconds: float | None = None
        self.started_at: float | None = None
        self.started_wall: datetime | None = None

    def run(self) -> None:
        from kafka import KafkaProducer

        try:
            producer = KafkaProducer(
                bootstrap_servers=self.bootstrap.split(","),
                client_id="alignd-soak-producer",
                acks=1,
                enable_idempotence=False,
                linger_ms=20,
                batch_size=512 * 1024,
                max_request_size=4 * 1024 * 1024,
            )
            self.started_at = time.perf_counter()
            self.started_wall = datetime.now(UTC)
            futures = []
            for message in self.messages:
                topic = self.topics[message.topic_role]
                futures.append((message, producer.send(topic, key=message.key, value=message.value)))
            producer.flush(timeout=600)
            for message, future in futures:
                meta = future.get(timeout=60)
                message.coords = (meta.topic, meta.partition, meta.offset)
            producer.close(timeout=30)
            self.seconds = time.perf_counter() - self.started_at
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


def _stored_inbound(store: Any) -> list[tuple[str, str, str | None, int | None, int | None, datetime]]:
    """Every stored event that came from Kafka (alignd's own events carry no coordinates)."""
    from sqlalchemy import select

    from events.tables import events

    stmt = select(
        events.c.event_id,
        events.c.type,
        events.c.kafka_topic,
        events.c.kafka_partition,
        events.c.kafka_offset,
        events.c.recorded_at,
    ).where(events.c.kafka_topic.is_not(None))
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(stmt)]  # type: ignore[misc]


def _dead_letter_coords(store: Any) -> dict[tuple[str, int, int], str]:
    from sqlalchemy import select

    from events.tables import dead_letters

    stmt = select(
        dead_letters.c.kafka_topic,
        dead_letters.c.kafka_partition,
        dead_letters.c.kafka_offset,
        dead_letters.c.error_kind,
    )
    with store.engine.connect() as conn:
        return {(r[0], int(r[1]), int(r[2])): r[3] for r in conn.execute(stmt) if r[0] is not None}


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def soak_once(args: argparse.Namespace, services: Services, tmp: Path, messages: list[Message]) -> dict[str, Any]:
    from events.sql_store import SqlEventStore

    run_tag = uuid.uuid4().hex[:8]
    topics = {
        "interactions": f"alignd.soak.{run_tag}.interactions",
        "feedback": f"alignd.soak.{run_tag}.feedback",
        "dlq": f"alignd.soak.{run_tag}.dlq",
    }
    create_topics(services, [topics["interactions"], topics["feedback"]], args.partitions)
    create_topics(services, [topics["dlq"]], 1)
    db_url, db_path = fresh_database(services, args.db, tmp, run_tag)
    for message in messages:
        message.coords = None

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGND_")}
    env.update(
        {
            "ALIGND_DATABASE_URL": db_url,
            "ALIGND_KAFKA_BOOTSTRAP_SERVERS": services.bootstrap,
            "ALIGND_KAFKA_GROUP_ID": f"alignd-soak-{run_tag}",
            "ALIGND_TOPICS_INTERACTIONS": topics["interactions"],
            "ALIGND_TOPICS_FEEDBACK": topics["feedback"],
            "ALIGND_TOPICS_DLQ": topics["dlq"],
            "ALIGND_TOPICS_ALERTS": f"alignd.soak.{run_tag}.alerts",
            "ALIGND_TOPICS_MODELS": f"alignd.soak.{run_tag}.models",
            "ALIGND_HTTP_PORT": str(port),
            "ALIGND_MLFLOW_TRACKING_URI": f"sqlite:///{tmp / f'mlflow-{run_tag}.db'}",
            "ALIGND_MLFLOW_ARTIFACT_LOCATION": (tmp / f"artifacts-{run_tag}").as_uri(),
            "ALIGND_TRAINERS_WORK_DIR": str(tmp / f"work-{run_tag}"),
            "ALIGND_MONITORS_DETECTORS": "pii,negative_feedback_spike",
            "ALIGND_LOG_LEVEL": "WARNING",
            # The server beside the other roles: its own process (auto, the default) or a thread of theirs.
            "ALIGND_HTTP_ISOLATION": args.http_isolation,
        }
    )
    stderr_path = tmp / f"daemon-{run_tag}.log"
    load_start = loadavg()
    expected_ids: set[str] = set()
    store = SqlEventStore.from_url(db_url)
    stderr_file = stderr_path.open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "--role", "ingest", "--role", "project", "--role", "monitor"]
        + ["--role", "http"],
        env=env,
        cwd=REPO,
        stdout=stderr_file,
        stderr=subprocess.STDOUT,
    )
    t_spawn = time.perf_counter()
    sampler = RssSampler(daemon.pid)
    sampler.start()
    load = HttpLoad(port, args.http_clients, think_s=args.http_think_ms / 1000)
    producer = Producer(services.bootstrap, topics, messages)
    n_hostile = sum(m.label.startswith("hostile:") for m in messages)
    progress: list[tuple[float, int, int]] = []
    died = False
    try:
        deadline = time.monotonic() + 120
        while _get(port, "/healthz") != 200:
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited {daemon.returncode} before /healthz answered")
            if time.monotonic() > deadline:
                raise RuntimeError("/healthz did not answer 200 within 120 s")
            time.sleep(0.2)
        startup_s = time.perf_counter() - t_spawn
        print(f"  daemon up in {startup_s:.1f}s (pid {daemon.pid}, port {port}); producing and loading ...", flush=True)
        load.start()
        producer.start()
        deadline = time.monotonic() + args.deadline_s
        last_print = 0.0
        stored = letters = 0
        expected_valid = sum(m.label == "valid" for m in messages)
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                died = True
                break
            if producer.error is not None:
                raise RuntimeError(f"producing failed: {producer.error!r}")
            stored = store.count(INBOUND_TYPES)
            letters = store.count_dead_letters()["total"]
            now = time.perf_counter()
            progress.append((round(now - t_spawn, 2), stored, letters))
            if now - last_print > 15:
                last_print = now
                print(
                    f"    t={now - t_spawn:6.0f}s stored {stored:>7,}/{expected_valid:,} dead letters "
                    f"{letters:>5,}/{n_hostile:,} HTTP {sum(sum(c.values()) for c in load.statuses.values()):,} "
                    f"RSS {sampler.last_bytes / 2**20:,.0f} MiB",
                    flush=True,
                )
            if producer.seconds is not None and stored >= expected_valid and letters >= n_hostile:
                break
            time.sleep(1.0)
        ingest_wall_s = time.perf_counter() - (producer.started_at or t_spawn)
        time.sleep(args.settle_s)  # anything extra arriving late (a duplicate stored twice) shows up
    finally:
        load.stop()
        load_end = loadavg()
        exit_code: int | None = daemon.poll()
        if exit_code is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                exit_code = daemon.wait(timeout=120)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
                exit_code = None  # hung on SIGTERM
        sampler.stop_event.set()
        sampler.join(timeout=5)
        stderr_file.close()
        producer.join(timeout=60)

    # ---------------------------------------------------------------- verification, by coordinates and ids
    hostile_coords = {m.coords: m.label.split(":", 1)[1] for m in messages if m.label.startswith("hostile:")}
    valid = [m for m in messages if m.label == "valid"]
    for m in valid:
        if m.coords is None:
            continue
        expected_ids.add(m.event_id or f"{m.coords[0]}:{m.coords[1]}:{m.coords[2]}")
    rows = _stored_inbound(store)
    stored_ids = Counter(r[0] for r in rows)
    letters_by_coords = _dead_letter_coords(store)
    dl_by_kind = store.count_dead_letters(by_kind=True)
    by_type = store.count_by_type()
    db_bytes = None
    if db_path is not None:
        db_bytes = sum(Path(str(db_path) + s).stat().st_size for s in ("", "-wal") if Path(str(db_path) + s).exists())
    store.dispose()

    hostile_stored = sorted(
        {r[0] for r in rows if (r[2], r[3], r[4]) in hostile_coords or str(r[0]).startswith("hostile-")}
    )
    lost_ids = expected_ids - set(stored_ids)
    extra_ids = set(stored_ids) - expected_ids
    stored_twice = sum(1 for c in stored_ids.values() if c > 1)  # impossible with the unique index, but say so
    hostile_missing = {c: k for c, k in hostile_coords.items() if c not in letters_by_coords}
    hostile_outcome: dict[str, Counter[str]] = {k: Counter() for k in HOSTILE_KINDS}
    for coords, kind in hostile_coords.items():
        hostile_outcome[kind][letters_by_coords.get(coords, "MISSING")] += 1
    unexpected_letters = {c: k for c, k in letters_by_coords.items() if c not in hostile_coords}

    times = [_aware(r[5]) for r in rows]
    span_s = (max(times) - min(times)).total_seconds() if len(times) > 1 else None
    eps = round(len(rows) / span_s, 1) if span_s else None
    # end to end: from the first message sent to the commit of the last event (producing runs alongside)
    e2e_s = (max(times) - producer.started_wall).total_seconds() if times and producer.started_wall else None
    eps_e2e = round(len(rows) / e2e_s, 1) if e2e_s and e2e_s > 0 else None
    # the same from the count polls: first poll with anything stored to the first with everything
    first = next((t for t, s, _ in progress if s > 0), None)
    full = next((t for t, s, d in progress if s >= len(expected_ids) and d >= n_hostile), None)
    eps_polled = round(len(expected_ids) / (full - first), 1) if first is not None and full and full > first else None

    produced = len([m for m in messages if m.coords is not None])
    figures: dict[str, Any] = {
        "db": args.db,
        "http_isolation": args.http_isolation,
        "run_tag": run_tag,
        "messages_sent": produced,
        "valid_distinct": len(expected_ids),
        "hostile": len(hostile_coords),
        "duplicates": sum(m.label == "duplicate" and m.coords is not None for m in messages),
        "events_stored": len(rows),
        "events_by_type": by_type,
        "dead_letters_stored": sum(dl_by_kind.values()),
        "dead_letters_by_error_kind": dict(sorted(dl_by_kind.items())),
        "hostile_kind_to_error_kind": {k: dict(v) for k, v in hostile_outcome.items() if v},
        "lost": len(lost_ids),
        "extra": len(extra_ids),
        "stored_twice": stored_twice,
        "hostile_stored": len(hostile_stored),
        "hostile_not_dead_lettered": len(hostile_missing),
        "unexpected_dead_letters": len(unexpected_letters),
        "examples": {
            "lost": sorted(lost_ids)[:5],
            "extra": sorted(extra_ids)[:5],
            "hostile_stored": hostile_stored[:5],
            "hostile_not_dead_lettered": [f"{c} ({k})" for c, k in list(hostile_missing.items())[:5]],
        },
        "daemon_startup_s": round(startup_s, 2),
        "produce_s": None if producer.seconds is None else round(producer.seconds, 2),
        "ingest_wall_s": round(ingest_wall_s, 2),
        "events_per_s": eps_e2e,
        "events_per_s_seconds": None if e2e_s is None else round(e2e_s, 2),
        "events_per_s_recorded_span": eps,
        "events_per_s_polled": eps_polled,
        "throughput_span_s": None if span_s is None else round(span_s, 2),
        "http": load.figures(),
        "peak_rss_mib": round(sampler.peak_bytes / 2**20, 1),
        "peak_rss_main_mib": round(sampler.peak_main_bytes / 2**20, 1),
        "rss_samples": sampler.samples,
        "daemon_died": died,
        "daemon_exit_code": exit_code,
        "daemon_log_tail": _tail(stderr_path, 30),
        "database_bytes": db_bytes,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "progress": progress[:: max(1, len(progress) // 200)],
    }
    problems = []
    if figures["lost"]:
        problems.append(f"{figures['lost']} lost")
    if figures["extra"] or stored_twice:
        problems.append(f"{figures['extra']} extra events")
    if figures["hostile_stored"]:
        problems.append(f"{figures['hostile_stored']} hostile messages stored")
    if figures["hostile_not_dead_lettered"]:
        problems.append(f"{figures['hostile_not_dead_lettered']} hostile messages not dead-lettered")
    if figures["unexpected_dead_letters"]:
        problems.append(f"{figures['unexpected_dead_letters']} valid messages dead-lettered")
    if died:
        problems.append(f"the daemon died (exit {exit_code})")
    elif exit_code != 0:
        problems.append(f"the daemon exited {exit_code} on SIGTERM")
    if produced != len(messages):
        problems.append(f"only {produced} of {len(messages)} messages produced")
    figures["problems"] = problems
    figures["ok"] = not problems
    return figures


# ============================================================================================ report


def print_table(runs: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console.width = 200
    for n, r in enumerate(runs, 1):
        table = Table(title=f"soak run {n}/{len(runs)}: alignd run -> {r['db']}, {r['messages_sent']:,} messages")
        table.add_column("figure", no_wrap=True)
        table.add_column("value", no_wrap=False)
        http_ = r["http"]

        def ok(value: int) -> str:
            return f"[green]{value}[/]" if value == 0 else f"[red]{value}[/]"

        rows = [
            ("messages sent", f"{r['messages_sent']:,}"),
            (
                "valid distinct / hostile / duplicates",
                f"{r['valid_distinct']:,} / {r['hostile']:,} / {r['duplicates']:,}",
            ),
            ("events stored (inbound)", f"{r['events_stored']:,}"),
            ("dead letters stored", f"{r['dead_letters_stored']:,}"),
            ("dead letters by error_kind", ", ".join(f"{k} {v}" for k, v in r["dead_letters_by_error_kind"].items())),
            ("lost (expected - stored)", ok(r["lost"])),
            ("extra (stored - expected)", ok(r["extra"])),
            ("hostile stored / not dead-lettered", f"{ok(r['hostile_stored'])} / {ok(r['hostile_not_dead_lettered'])}"),
            ("valid dead-lettered", ok(r["unexpected_dead_letters"])),
            (
                "ingest events/s (first sent -> last stored)",
                "-" if r["events_per_s"] is None else f"{r['events_per_s']:,.0f} over {r['events_per_s_seconds']:.1f}s",
            ),
            (
                "  (recorded_at span / count polls)",
                " / ".join(
                    "-" if r[k] is None else f"{r[k]:,.0f}"
                    for k in ("events_per_s_recorded_span", "events_per_s_polled")
                ),
            ),
            ("produce s / daemon start-up s", f"{r['produce_s']} / {r['daemon_startup_s']}"),
            (
                f"HTTP ({http_['clients']} clients) requests / failed",
                f"{http_['requests']:,} / {ok(http_['failed'])} ({http_['requests_per_s']:,.0f} req/s)",
            ),
            ("HTTP p50 / p99 ms", f"{http_['p50_ms']} / {http_['p99_ms']}"),
        ]
        for path, p in http_["by_path"].items():
            rows.append(
                (
                    f"  {path}",
                    f"{p['requests']:,} req, {p['failed']} failed, p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms"
                    + ("" if not p["failed"] else f"  {p['statuses']}"),
                )
            )
        rows += [
            ("daemon peak RSS MiB (tree / main)", f"{r['peak_rss_mib']:,.0f} / {r['peak_rss_main_mib']:,.0f}"),
            ("daemon exit code", str(r["daemon_exit_code"]) + (" (died)" if r["daemon_died"] else "")),
            ("load average start -> end", f"{r['loadavg_start']} -> {r['loadavg_end']}"),
            (
                "machine",
                f"{machine.get('cpu_count')} CPUs, {machine.get('cpu_model')}, {machine.get('memory_gib')} GiB",
            ),
            ("verdict", "[green]ok[/]" if r["ok"] else "[red]" + "; ".join(r["problems"]) + "[/]"),
        ]
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)


# ============================================================================================ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages to produce (default 100,000)")
    parser.add_argument("--hostile-fraction", type=float, default=0.01, help="share of hostile messages (0.01)")
    parser.add_argument("--dup-fraction", type=float, default=0.002, help="share of exact resends (0.002)")
    parser.add_argument("--http-clients", type=int, default=50, help="concurrent HTTP client threads (50)")
    parser.add_argument("--http-think-ms", type=float, default=0.0, help="pause between a client's requests (0)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--http-isolation", choices=("auto", "process", "thread"), default="auto", help="http.isolation (auto)"
    )
    parser.add_argument("--partitions", type=int, default=3, help="partitions of each inbound topic (3)")
    parser.add_argument("--repeats", type=int, default=1, help="runs, each with fresh topics and database (1)")
    parser.add_argument("--deadline-s", type=float, default=1200.0, help="give up waiting after this (20 min)")
    parser.add_argument("--settle-s", type=float, default=3.0, help="wait after everything arrived (3 s)")
    parser.add_argument("--seed", type=int, default=20261219)
    parser.add_argument("--output", type=Path, default=None, help="JSON file (bench/results/soak-<db>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (database, daemon log)")
    args = parser.parse_args(argv)
    if args.messages < 100 or args.repeats < 1 or args.http_clients < 0:
        parser.error("--messages must be at least 100, --repeats at least 1, --http-clients not negative")
    if not 0 <= args.hostile_fraction + args.dup_fraction < 0.5:
        parser.error("--hostile-fraction plus --dup-fraction must be in [0, 0.5)")
    if args.output is None:
        args.output = RESULTS_DIR / f"soak-{args.db}.json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="alignd-soak-"))
    logging.basicConfig(level=logging.WARNING, filename=str(tmp / "bench.log"))
    services: Services | None = None
    try:
        services = start_services(tmp, postgres=args.db == "postgresql")
        machine = machine_info(services)
        print(f"building {args.messages:,} messages ...", flush=True)
        messages = build_messages(args.messages, args.hostile_fraction, args.dup_fraction, args.seed)
        mix = Counter(m.label.split(":")[0] for m in messages)
        print(f"  {dict(mix)}, {sum(len(m.value) for m in messages) / 2**20:,.0f} MiB", flush=True)
        runs = []
        for rep in range(args.repeats):
            print(f"run {rep + 1}/{args.repeats} on {args.db} ...", flush=True)
            figures = soak_once(args, services, tmp, messages)
            runs.append(figures)
            if not figures["ok"]:
                print("  PROBLEMS: " + "; ".join(figures["problems"]), flush=True)
                print("  daemon output (tail):\n" + figures["daemon_log_tail"], flush=True)
        print()
        print_table(runs, machine)
        document = {
            "benchmark": "soak",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "argv": sys.argv[1:] if argv is None else argv,
            "machine": machine,
            "code": code_version(),
            "config": {
                "messages": args.messages,
                "hostile_fraction": args.hostile_fraction,
                "dup_fraction": args.dup_fraction,
                "hostile_kinds": list(HOSTILE_KINDS),
                "http_clients": args.http_clients,
                "http_think_ms": args.http_think_ms,
                "http_paths": list(HTTP_PATHS),
                "db": args.db,
                "partitions": args.partitions,
                "repeats": args.repeats,
                "seed": args.seed,
                "roles": ["ingest", "project", "monitor", "http"],
                "detectors": "pii,negative_feedback_spike",
                "throughput_definition": (
                    "events_per_s: inbound events stored / (recorded_at of the last one - the first message sent); "
                    "events_per_s_recorded_span: the same over last - first recorded_at (one recorded_at per stored "
                    "batch, so the first batch is not counted in the time); events_per_s_polled: from the first "
                    "count poll that saw an event to the first that saw them all (1 s polls)"
                ),
            },
            "runs": runs,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"\nresults written to {args.output}")
        return 0 if all(r["ok"] for r in runs) else 1
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

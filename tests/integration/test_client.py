"""The application client against a real broker: client -> Kafka -> alignd ingest -> store; and a broker that cannot
be reached, where logging must stay microseconds and every event must be accounted for."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alignd.client import SIGNALS, AligndClient, feedback_envelope, interaction_envelope
from daemon.bootstrap import build_ingestor, open_store
from tests.helpers import settings_for, unique_topics

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _client(bootstrap: str, topics: dict[str, str], **kwargs: Any) -> AligndClient:
    return AligndClient(
        bootstrap,
        source="chat-api",
        interactions_topic=topics["interactions"],
        feedback_topic=topics["feedback"],
        close_at_exit=False,
        **kwargs,
    )


def _ingest(db_url: str, bootstrap: str, topics: dict[str, str]):
    settings = settings_for(db_url, bootstrap, topics)
    store = open_store(settings)
    ingestor = build_ingestor(settings, store, project=False)
    try:
        stats = ingestor.run(until_idle=3.0)
    finally:
        ingestor.publisher.producer.close(5)
    return store, stats


INTERACTIONS: list[dict[str, Any]] = [
    {"request_id": "req-1", "model": "assistant", "model_version": "3", "prompt": "Hi?", "response": "Hello!"},
    {
        "request_id": "req-2",
        "model": "assistant",
        "model_version": "3",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "response": "4",
        "latency_ms": 87.5,
        "user": "u-2",
        "session_id": "s-2",
        "metadata": {"route": "/chat", "experiment": "b"},
    },
]

FEEDBACK: list[tuple[str, str, Any, dict[str, Any]]] = [
    ("req-1", "thumbs", "up", {"user": "u-1"}),
    ("req-1", "rating", 4, {"user": "u-1", "comment": "good"}),
    ("req-2", "preference", {"chosen": "4", "rejected": "five"}, {}),
    ("req-2", "correction", {"response": "2+2 = 4."}, {}),
    ("req-2", "flag", {"category": "hallucination", "note": "made up"}, {}),
    *[("req-2", "signal", {"name": name}, {"user": "u-2"}) for name in SIGNALS if name != "dwell_time_ms"],
    ("req-2", "signal", {"name": "dwell_time_ms", "value": 5400}, {"user": "u-2"}),
]


def test_client_to_broker_to_store_field_by_field_and_retries_are_duplicates(db_url: str, kafka_bootstrap: str) -> None:
    topics = unique_topics(kafka_bootstrap)
    client = _client(kafka_bootstrap, topics)
    for i, fields in enumerate(INTERACTIONS):
        assert client.log_interaction(occurred_at=T0 + timedelta(seconds=i), **fields)
    for request_id, kind, value, extra in FEEDBACK:
        assert client.log_feedback(request_id, kind, value, occurred_at=T0, **extra)
    # the app retried after a timeout: the same interaction and the same vote again
    client.log_interaction(occurred_at=T0 + timedelta(seconds=9), **INTERACTIONS[0])
    client.thumbs("req-1", up=True, user="u-1")
    assert client.flush(30)
    client.close(10)
    sent = len(INTERACTIONS) + len(FEEDBACK) + 2
    assert client.stats() == type(client.stats())(enqueued=sent, sent=sent, failed=0, dropped=0, pending=0)

    store, stats = _ingest(db_url, kafka_bootstrap, topics)
    assert stats.records == sent and stats.duplicates == 2 and stats.dead_letters == 0
    stored = {s.event.event_id: s.event for s in store.read(0, limit=1000)}
    assert len(stored) == sent - 2
    expected = [
        interaction_envelope(source="chat-api", occurred_at=T0 + timedelta(seconds=i), **fields)
        for i, fields in enumerate(INTERACTIONS)
    ]
    expected += [
        feedback_envelope(request_id, kind, value, source="chat-api", occurred_at=T0, **extra)
        for request_id, kind, value, extra in FEEDBACK
    ]
    for envelope in expected:
        event = stored[envelope["event_id"]]
        assert event.type == envelope["type"] and event.source == "chat-api"
        assert dict(event.payload) == envelope["payload"]
    assert stored[expected[0]["event_id"]].occurred_at == T0  # the first copy is the one kept
    store.dispose()


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed on exit: nothing listens there


def test_unreachable_broker_logging_stays_microseconds_and_every_event_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = {"interactions": "alignd.interactions", "feedback": "alignd.feedback"}
    client = _client(f"127.0.0.1:{_refused_port()}", topics, max_buffer=200)
    took: list[float] = []
    with caplog.at_level(logging.WARNING, logger="alignd.client"):
        for i in range(2000):
            start = time.perf_counter()
            if i % 2:
                client.log_interaction(f"r{i}", model="m", model_version="1", prompt="How?", response="Thus.")
            else:
                client.signal(f"r{i - 1}", "regenerated")
            took.append(time.perf_counter() - start)
    median, p99 = statistics.median(took), sorted(took)[int(0.99 * len(took))]
    logger.info("log_* with the broker unreachable: median %.1f µs, p99 %.1f µs", median * 1e6, p99 * 1e6)
    assert median < 500e-6 and p99 < 5e-3, (median, p99)
    stats = client.stats()
    assert stats.enqueued == 200 and stats.dropped == 1800 and stats.sent == 0 and stats.pending == 200
    assert any("events dropped" in record.getMessage() for record in caplog.records)
    start = time.monotonic()
    assert client.flush(0.2) is False
    client.close(timeout=0.5)
    assert time.monotonic() - start < 5
    stats = client.stats()
    assert stats.dropped == 2000 and stats.pending == 0 and stats.sent == 0


def test_events_buffered_while_the_broker_is_down_are_sent_when_it_is_back(kafka_bootstrap: str) -> None:
    from kafka import KafkaProducer

    from tests.helpers import consume_all

    topics = unique_topics(kafka_bootstrap)
    attempts = []

    def broker_back_on_third_try() -> Any:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError("broker down")
        return KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)

    client = _client(kafka_bootstrap, topics, producer_factory=broker_back_on_third_try)
    for i in range(50):
        assert client.log_interaction(f"r{i}", model="m", model_version="1", prompt="q", response="a")
    assert client.flush(60)
    client.close(10)
    assert len(attempts) == 3 and client.stats().sent == 50 and client.stats().dropped == 0
    records = consume_all(kafka_bootstrap, topics["interactions"], expected=50)
    assert sorted(r.key for r in records) == sorted(f"r{i}".encode() for i in range(50))


# --- the client's own distribution (docs/client.md) -----------------------------------------------------------


def test_the_client_wheel_holds_the_client_alone_and_imports_without_the_daemon(tmp_path: Path) -> None:
    """clients/python builds alignd-client: the alignd package only, kafka-python its only dependency; imported from
    the wheel alone (the repository off the path), it loads kafka and none of the daemon's packages or stack."""
    repo = Path(__file__).resolve().parents[2]
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=repo / "clients" / "python",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    for leftover in ("build", "alignd_client.egg-info"):  # setuptools builds in the source tree
        shutil.rmtree(repo / "clients" / "python" / leftover, ignore_errors=True)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("alignd_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"alignd"}
    assert {"alignd/__init__.py", "alignd/client.py", "alignd/py.typed"} <= set(names)
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert [r for r in requires if "extra ==" not in r] == ["kafka-python<4,>=3.0"]

    # An interpreter without site-packages: the wheel, and kafka-python copied beside it, are all it can import.
    kafka = importlib.util.find_spec("kafka")
    assert kafka is not None and kafka.origin is not None
    shutil.copytree(Path(kafka.origin).parent, tmp_path / "deps" / "kafka")
    probe = (
        "import sys; import alignd.client as c; from alignd import AligndClient;"
        "assert c.__file__.startswith(sys.argv[1]), c.__file__;"
        "heavy = {'events', 'consumers', 'monitors', 'trainers', 'daemon', 'migrations', 'torch', 'sqlalchemy',"
        " 'pydantic', 'orjson', 'mlflow', 'transformers'};"
        "loaded = {m.split('.')[0] for m in sys.modules};"
        "assert not (heavy & loaded), sorted(heavy & loaded);"
        "import kafka; assert 'deps' in kafka.__file__, kafka.__file__"  # the producer's, loaded when it starts
    )
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join([str(wheel), str(tmp_path / "deps")])}
    ran = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(wheel)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr

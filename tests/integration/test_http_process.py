"""The HTTP role in a process of its own (daemon/http_process.py): ``alignd run`` with ingestion beside it,
against the real broker, on SQLite and PostgreSQL; and the pipe that brings the daemon's metrics to /metrics."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon.http_process import DaemonMetrics, isolated
from daemon.settings import load_settings
from events.sql_store import SqlEventStore
from tests.helpers import alignd, interaction, produce, settings_env, unique_topics, wait_until
from tests.integration.test_http_hardening import sqlite_store  # noqa: F401 - a fixture


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8")
    except OSError:
        return 0, ""


def _children(pid: int) -> list[int]:
    """The processes ``pid`` spawned with multiprocessing (from /proc: the test runs where the daemon does, on
    Linux); multiprocessing's resource tracker, which spawning starts too, is not one of them."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the fields after its ')' are fixed.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            if b"spawn_main" in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _metrics(port: int) -> dict[str, float]:
    status, body = _get(port, "/metrics")
    assert status == 200, body
    names = [family.name for family in text_string_to_metric_families(body)]
    assert len(names) == len(set(names)), "a metric family twice in one exposition"
    return {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples if not s.labels}


def test_alignd_run_serves_http_from_its_own_process_with_the_daemons_metrics(
    db_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = unique_topics(kafka_bootstrap, partitions=1)
    port = _free_port()
    env = settings_env(db_url, kafka_bootstrap, topics, ALIGND_LOG_LEVEL="INFO", ALIGND_HTTP_PORT=str(port))
    assert alignd(["db", "upgrade"], env).wait(timeout=120) == 0
    # The daemon's log in a file: a failure below shows what the daemon was doing (CI once saw the count stall
    # for 60 s with nothing at WARNING, and nothing to say why).
    log = tmp_path / "daemon.log"
    with log.open("wb") as stderr:
        daemon = alignd(["run", "--role", "ingest", "--role", "project", "--role", "http"], env, stderr=stderr)
    try:
        wait_until(lambda: _get(port, "/healthz")[0] == 200, timeout=60, message="/healthz")
        servers = _children(daemon.pid)
        assert len(servers) == 1, f"one HTTP process under the daemon, found {servers}"
        assert _get(port, "/readyz") == (200, "ready\n")

        produce(kafka_bootstrap, topics["interactions"], [interaction(f"h{i}", i=i) for i in range(30)])
        # Counted in the daemon's process, shown by the server's: the pipe carries them.
        seen: list[float | None] = []

        def appended() -> bool:
            seen.append(_metrics(port).get("alignd_ingest_events_appended_total"))
            return seen[-1] == 30

        try:
            wait_until(appended, timeout=120, message="30 appended events on /metrics")
        except AssertionError as exc:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise AssertionError(f"{exc}; last count {seen[-1:]}; the daemon's log ends:\n{tail}") from None
        status, page = _get(port, "/audit")
        assert status == 200 and "audit" in page.lower()
        counted = text_string_to_metric_families(_get(port, "/metrics")[1])
        requests = {
            (s.labels["route"], s.labels["status"]): s.value
            for f in counted
            if f.name == "alignd_http_requests"
            for s in f.samples
            if s.name.endswith("_total")
        }
        assert requests[("audit", "200")] == 1 and requests[("healthz", "200")] >= 1

        # A server that dies is started again by the supervisor, in a new process.
        os.kill(servers[0], signal.SIGKILL)
        wait_until(
            lambda: _children(daemon.pid) not in ([], servers) and _get(port, "/healthz")[0] == 200,
            timeout=90,
            message="a new HTTP process",
        )
        assert daemon.poll() is None, "the daemon stopped when its server died"

        server = _children(daemon.pid)[0]
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=120) == 0
        wait_until(lambda: not _alive(server), timeout=30, message="the HTTP process to stop with the daemon")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)


def test_the_http_process_dies_with_a_killed_daemon(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        "ALIGND_DATABASE_URL": f"sqlite:///{tmp_path / 'alignd.db'}",
        "ALIGND_HTTP_PORT": str(port),
        "ALIGND_LOG_LEVEL": "WARNING",
    }
    assert alignd(["db", "upgrade"], env).wait(timeout=120) == 0
    daemon = alignd(["run", "--role", "project", "--role", "http"], env)
    try:
        wait_until(lambda: _get(port, "/healthz")[0] == 200, timeout=60, message="/healthz")
        (server,) = _children(daemon.pid)
        daemon.kill()  # SIGKILL: no chance to stop its parts; PR_SET_PDEATHSIG takes the server down too
        daemon.wait(timeout=30)
        wait_until(lambda: not _alive(server), timeout=30, message="the orphaned HTTP process to die")
        assert _get(port, "/healthz")[0] == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)


@pytest.mark.parametrize(
    ("isolation", "url", "roles", "expected"),
    [
        ("auto", "sqlite:///alignd.db", ["ingest", "http"], True),
        ("auto", "postgresql+psycopg://u@h/db", ["project", "monitor", "http"], True),
        ("auto", "sqlite:///alignd.db", ["http"], False),  # nothing beside it to protect
        ("auto", "sqlite://", ["ingest", "http"], False),  # in memory: another process would see nothing
        ("auto", "sqlite:///:memory:", ["ingest", "http"], False),
        ("auto", "sqlite:///file:x?mode=memory&cache=shared&uri=true", ["ingest", "http"], False),
        ("thread", "sqlite:///alignd.db", ["ingest", "http"], False),
        ("process", "sqlite:///alignd.db", ["http"], True),
    ],
)
def test_when_the_server_gets_a_process_of_its_own(isolation: str, url: str, roles: list[str], expected: bool) -> None:
    settings = load_settings(env={"ALIGND_DATABASE_URL": url, "ALIGND_HTTP_ISOLATION": isolation})
    assert isolated(settings, roles) is expected


def test_the_metrics_pipe_answers_and_a_late_answer_is_not_taken_for_the_next() -> None:
    daemon_end, server_end = multiprocessing.Pipe()
    metrics = DaemonMetrics(server_end, timeout=0.3)

    # Nobody answers: the scrape gives up (the page says 503) rather than hang the prober.
    with pytest.raises(TimeoutError, match="did not send its metrics"):
        metrics.exposition()

    # The late answer to that scrape arrives now; the next scrape must take its own, not that one.
    late = daemon_end.recv_bytes()
    daemon_end.send_bytes(late + b"\n# HELP stale_metric x\n# TYPE stale_metric gauge\nstale_metric 1.0\n")

    def answer() -> None:
        number = daemon_end.recv_bytes()
        daemon_end.send_bytes(number + b"\n" + generate_latest(REGISTRY))

    responder = threading.Thread(target=answer)
    responder.start()
    body = metrics.exposition().decode("utf-8")
    responder.join(5)
    names = [family.name for family in text_string_to_metric_families(body)]
    assert "stale_metric" not in names
    assert "python_info" in names  # the "daemon's" registry, via the pipe
    # The server's own, once, though this process's registry (the "daemon's" here) holds an empty copy.
    assert names.count("alignd_http_requests") == 1


def test_a_metrics_source_that_times_out_is_a_503_not_a_hang(sqlite_store: SqlEventStore) -> None:
    from daemon.http import ReviewServer

    def late() -> bytes:
        time.sleep(0.05)
        raise TimeoutError("the daemon did not send its metrics within 5 s")

    server = ReviewServer(sqlite_store, port=0, metrics=late)
    server.start()
    try:
        status, body = _get(server.port, "/metrics")
        assert status == 503 and "did not send its metrics" in body
        assert _get(server.port, "/healthz")[0] == 200
    finally:
        server.stop()

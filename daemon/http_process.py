"""The HTTP role in a process of its own, beside the daemon's other roles in ``alignd run``.

Why: in the daemon's process, a flood of requests took the interpreter (the GIL) from the other roles; the
append loop kept a third of its rate under /healthz flat out and a quarter under /audit (docs/hardening.md).
In a process of its own the server competes for CPUs, not for the interpreter, and it lowers its own priority
(``http.nice``): when the CPUs are short, the kernel runs ingestion, projections and monitors first, and the
pages wait. ``http.isolation`` chooses (``auto``: its own process whenever another role runs beside it).

The process is started with ``spawn`` (forking a process that holds Kafka's and the database's threads and
sockets is unsafe), opens its own connections to the store, logs as the daemon does, and dies with the daemon
(PR_SET_PDEATHSIG, as training jobs do). The daemon stops it with SIGTERM; it ignores SIGINT, so a Ctrl-C in a
terminal stops the daemon's parts in their order rather than the server first.

The metrics stay where they are counted, in the daemon's registry. Each scrape of /metrics asks the daemon
over a pipe for its exposition and adds the server's own request metrics. Prometheus' multiprocess mode is
the library's way to merge processes, and it was not taken: it has to be switched on before prometheus_client
is first imported in every process, it drops the process and garbage-collector metrics, and its directory must
be wiped at every start. The pipe costs one round-trip per scrape.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from daemon.settings import Settings

logger = logging.getLogger(__name__)

#: Seconds the process has to import, open the store and listen.
START_TIMEOUT_S = 60.0
#: Seconds a scrape waits for the daemon's metrics before /metrics answers 503.
METRICS_TIMEOUT_S = 5.0
# What stop() allows the server for its requests in progress (daemon.http's grace) and its own exit.
_STOP_TIMEOUT_S = 15.0


def isolated(settings: Settings, roles: list[str] | tuple[str, ...]) -> bool:
    """Whether ``alignd run`` with ``roles`` serves HTTP from a process of its own (``http.isolation``)."""
    mode = settings.http.isolation
    if mode != "auto":
        return mode == "process"
    url = settings.database.url
    # An in-memory SQLite database is the daemon's alone: another process would see an empty one of its own.
    in_memory = url.startswith("sqlite") and (
        url.rstrip("/") in ("sqlite:", "sqlite:/") or ":memory:" in url or "mode=memory" in url
    )
    return any(role != "http" for role in roles) and not in_memory


class HttpProcess:
    """The review server (daemon.http.ReviewServer) run in a child process; ``start()`` returns its port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = settings.http.port
        self._process: Any = None
        self._conn: Connection | None = None
        self._metrics_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(
            self.settings.http.host, self.settings.http.host
        )
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def exitcode(self) -> int | None:
        return None if self._process is None else self._process.exitcode

    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def start(self) -> int:
        from daemon.logs import configured

        context = multiprocessing.get_context("spawn")
        conn, child_conn = context.Pipe()
        level, fmt = configured()
        self._process = context.Process(
            target=serve, args=(self.settings, level, fmt, child_conn), name="alignd-http", daemon=True
        )
        self._process.start()
        child_conn.close()
        self._conn = conn
        try:
            if not conn.poll(START_TIMEOUT_S):
                raise RuntimeError(f"the HTTP process did not listen within {START_TIMEOUT_S:.0f} s")
            kind, value = conn.recv()
        except EOFError:
            self._process.join(5)
            self.stop()
            raise RuntimeError(
                f"the HTTP process exited (code {self.exitcode}) before listening; its log lines say why"
            ) from None
        except BaseException:
            self.stop()
            raise
        if kind != "started":
            self.stop()
            raise RuntimeError(f"the HTTP server did not start: {value}")
        self.port = int(value)
        self._metrics_thread = threading.Thread(target=self._answer_metrics, name="alignd-http-metrics", daemon=True)
        self._metrics_thread.start()
        logger.info(
            "HTTP server in process %d, listening on %s", self._process.pid, self.url, extra={"pid": self._process.pid}
        )
        return self.port

    def _answer_metrics(self) -> None:
        """Answers each scrape's request with this process's exposition, tagged with the request's number."""
        conn = self._conn
        assert conn is not None
        while True:
            try:
                number = conn.recv_bytes()
                conn.send_bytes(number + b"\n" + generate_latest(REGISTRY))
            except (EOFError, OSError):  # the process is gone, or stop() closed the pipe
                return

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.is_alive():
            process.terminate()  # SIGTERM: the server finishes its requests in progress, then exits
            process.join(_STOP_TIMEOUT_S)
            if process.is_alive():
                logger.warning("the HTTP process did not stop in %.0f s; killing it", _STOP_TIMEOUT_S)
                process.kill()
                process.join(5)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._metrics_thread is not None:
            self._metrics_thread.join(5)
            self._metrics_thread = None
        if process is not None:
            # The last exit code stays readable for the supervisor's message.
            self._process = _Exited(process.exitcode)


class _Exited:
    def __init__(self, exitcode: int | None) -> None:
        self.exitcode, self.pid = exitcode, None

    def is_alive(self) -> bool:
        return False


class DaemonMetrics(Collector):
    """In the HTTP process: the daemon's metrics, asked over the pipe at each scrape, beside the server's own.

    A scrape that gets no answer in ``timeout`` seconds raises TimeoutError (the page answers 503); a late
    answer is recognised by its number and dropped by the next scrape."""

    def __init__(self, conn: Connection, timeout: float = METRICS_TIMEOUT_S) -> None:
        from daemon.http import SERVER_METRICS

        self.conn, self.timeout = conn, timeout
        self._lock, self._number = threading.Lock(), 0
        self._own = {metric._name for metric in SERVER_METRICS}  # noqa: SLF001 - prometheus_client keeps no public name
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        for metric in SERVER_METRICS:
            self.registry.register(metric)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Any]:
        text = self._ask()
        for family in text_string_to_metric_families(text):
            if family.name not in self._own:  # the daemon's copy of the server metrics is empty; ours count
                yield family

    def _ask(self) -> str:
        with self._lock:
            self._number += 1
            tag = str(self._number).encode("ascii")
            self.conn.send_bytes(tag)
            deadline = time.monotonic() + self.timeout
            while self.conn.poll(max(0.0, deadline - time.monotonic())):
                number, _, body = self.conn.recv_bytes().partition(b"\n")
                if number == tag:
                    return body.decode("utf-8")
            raise TimeoutError(f"the daemon did not send its metrics within {self.timeout:.0f} s")


def serve(settings: Settings, level: str, fmt: str, conn: Connection) -> None:
    """The HTTP process: logs as the daemon does, serves until SIGTERM, tells the daemon its port or why not."""
    from daemon.bootstrap import build
    from daemon.logs import configure_logging
    from trainers.children import die_with_parent

    die_with_parent()
    if settings.http.nice:
        os.nice(settings.http.nice)
    configure_logging(level, fmt, settings.known_secrets())
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon stops us, after the parts that come first
    # The daemon checked the schema before starting us; /readyz reports it from now on.
    app = build(settings, check_schema=False)
    try:
        server = app.review_server(metrics=DaemonMetrics(conn).exposition)
        port = server.start()
    except Exception as exc:  # noqa: BLE001 - whatever it is, the daemon is told, in words, and restarts us
        logger.exception("the HTTP server did not start")
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        app.close()
        raise SystemExit(1) from None
    conn.send(("started", port))
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
        app.close()

"""The daemon's HTTP server: ``/healthz``, ``/readyz``, ``/metrics`` and the read-only audit review page.

An ASGI application (Starlette) served by uvicorn in a background thread: the serving edge planned next
(OpenAI-compatible streaming, a guard endpoint) needs ASGI, and uvicorn brings what the standard library's
server lacked under load (a real listen backlog instead of 5, keep-alive and header-size limits, one event
loop instead of a thread per connection). What uvicorn 0.55 does not do is added in daemon/http_protocol.py:
a connection must deliver a complete request head within ``header_timeout`` seconds or is closed; and here a
request body is refused past ``max_body_bytes`` (413) or ``header_timeout`` (408). No ``Server`` header is
sent. Store reads and page rendering run on a small pool of threads of their own (``threads``), so /healthz
and /metrics, answered on the event loop, never wait behind a slow page.

Every page is a Jinja2 template with ``autoescape=True``: the records show untrusted text (prompts, responses,
summaries), so every value is escaped, and the Content-Security-Policy allows no script at all as a second line
of defence. GET never changes state; a request that does (POST) needs ``Authorization: Bearer <token>``, and
with no token configured every such request is refused.

Input is checked before it reaches the store, so that a bad request is the client's 400 or 404, never the
server's 500 or the store's 503: control characters (NUL, which PostgreSQL refuses, included) in the path or a
filter, a filter over 512 characters, a time outside years 1..9999 in UTC, a record position beyond the
BIGINT column. 503 means the store does not answer; any other failure is a 500 without internals.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import jinja2
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.http_protocol import (
    DEFAULT_HEADER_TIMEOUT,
    GRACE_SECONDS,
    ServerStartError,
    hardened_server,
    listening_socket,
    serve_in_thread,
)
from daemon.settings import HttpSettings
from events import audit
from events.audit import AuditRecord, VerifyReport
from events.errors import SchemaOutOfDateError
from events.names import ANOMALY_DETECTED
from events.read_models import RolledBackFold, RolledBackVersion
from events.redact import without_credentials
from events.sql_errors import is_unavailable
from events.sql_store import SqlEventStore
from events.verdicts import Verdict
from migrations.runner import current_revision, ensure_current, head_revision

logger = logging.getLogger(__name__)

SECURITY_HEADERS = {
    # No script may run on these pages, inline or not; forms post only back here; no framing (clickjacking).
    "Content-Security-Policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_RAW_SECURITY_HEADERS = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]
MAX_LIMIT = 1000
#: The longest filter value taken; longer ones are refused (400) before they reach the store.
MAX_FILTER_CHARS = 512
#: audit_records.position is a BIGINT (events/tables.py): no record sits beyond this.
MAX_POSITION = 2**63 - 1
#: events.event_id is a String(128): no record has a longer event id.
MAX_EVENT_ID_CHARS = 128
# C0 controls (NUL included), DEL and C1 controls: never in a filter, an id or a path.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_STATE_CHANGING = ("POST", "PUT", "DELETE", "PATCH")
_METHODS = ["GET", "HEAD", *_STATE_CHANGING, "OPTIONS"]
#: How long one readiness answer serves the probes that ask meanwhile.
_READY_REUSE_S = 1.0
# How long stop() lets requests in progress finish before they are cancelled.
_GRACE_SECONDS = GRACE_SECONDS
_REPORT_FIELDS = ("ok", "records", "first_bad", "problem", "event_id", "last_hash", "pending")
_REQUESTS = Counter("alignd_http_requests", "HTTP requests served", ["route", "status"])
_LATENCY = Histogram("alignd_http_request_seconds", "HTTP request latency", ["route"])
#: The server's own metrics (a server in a process of its own shows them beside the daemon's: http_process.py).
SERVER_METRICS = (_REQUESTS, _LATENCY)
# (route label for the metrics, status, content type, body, extra headers)
_Answer = tuple[str, int, str, bytes, dict[str, str]]


@dataclass(frozen=True)
class HttpLimits:
    """The server's limits under load and against hostile clients (``HttpSettings`` carries them from the
    configuration).

    Attributes:
        backlog: connections the kernel queues before they are accepted (capped by ``net.core.somaxconn``).
        keep_alive_timeout: seconds an idle keep-alive connection is kept after a response.
        header_timeout: seconds a connection has to deliver a complete request head, from its opening or
            from the first byte of the next head; then it is closed. A request body has as long (else 408).
        max_header_bytes: request line and headers together; past it, 400 and the connection is closed.
        max_body_bytes: a request body past it is refused with 413 and the connection closed.
        threads: store reads and page renderings at a time; further requests wait their turn on the loop.
        chain_check_s: seconds one check of the whole audit chain serves the /audit pages (0: each page checks).
            The check reads every record: per page, it made /audit a few dozen requests a second at most.
            ``POST /audit/verify`` always checks afresh.
    """

    backlog: int = 2048
    keep_alive_timeout: int = 5
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    #: Two, not more: rendering is CPU under the GIL, so more threads do not serve pages faster; they only take the
    #: interpreter from the daemon's other roles. bench/http_bench.py, 200 clients on /audit (SQLite), 8 against
    #: 2 threads in alternation: 62-75 against 81-100 pages/s, and an append loop in the same process kept 7%
    #: against 22-25% of its rate.
    threads: int = 2
    chain_check_s: float = 2.0


#: Rendered /audit pages kept for repeat views (a page of 100 records is ~60 KB).
_PAGES_KEPT = 32


class AuditReader(Protocol):
    """What the page reads of the audit trail: :class:`StoreAuditReader`, or another source of records.

    ``list`` takes the filters of ``events.audit.list_records``: since, until, action, model, actor, limit,
    after_position. ``rolled_back`` gives the versions rolled back, by ``name:version`` (the records' ``model``).
    ``last_position`` is the newest record's: a listing stays the same while it does (records are append-only).
    """

    def list(self, **filters: Any) -> Sequence[AuditRecord]: ...
    def last_position(self) -> int: ...
    def get(self, position_or_event_id: str) -> AuditRecord | None: ...
    def verify(self) -> VerifyReport: ...
    def catch_up(self) -> int: ...
    def rolled_back(self) -> Mapping[str, RolledBackVersion]: ...


class StoreAuditReader:
    """:class:`AuditReader` over events.audit and a SQL store."""

    def __init__(self, store: SqlEventStore) -> None:
        self.store = store
        self._rolled_back = RolledBackFold()
        self._rolled_back_lock = threading.Lock()

    def list(self, **filters: Any) -> Sequence[AuditRecord]:
        return audit.list_records(self.store, **filters)

    def get(self, position_or_event_id: str) -> AuditRecord | None:
        return audit.get_record(self.store, position_or_event_id)

    def last_position(self) -> int:
        return audit.last_position(self.store)

    def verify(self) -> VerifyReport:
        return audit.verify(self.store)

    def catch_up(self) -> int:
        return audit.AuditTrail(self.store).catch_up()

    def rolled_back(self) -> Mapping[str, RolledBackVersion]:
        # Kept folded between pages: re-reading every alias change per page halved /audit's rate (http_bench).
        with self._rolled_back_lock:
            return self._rolled_back.catch_up(self.store)


class BadRequestError(ValueError):
    """A filter the page cannot use; shown back to the user with a 400."""


def _shown(value: str) -> str:
    """A value quoted for a message, cut short (the message is shown back, and logged)."""
    return repr(value if len(value) <= 80 else value[:80] + "...")


def parse_time(value: str, name: str = "time") -> datetime:
    """RFC 3339 ("2026-11-01T12:00:00Z", "+02:00") or a date; without an offset, UTC is meant.

    Raises:
        BadRequestError: not such a time, or one outside years 1..9999 once in UTC (the store compares times
            in UTC, and Python cannot even hold 0001-01-01T00:00:00+01:00 there).
    """
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequestError(f"{name} {_shown(value)} is not an RFC 3339 time such as 2026-11-01T12:00:00Z") from None
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise BadRequestError(f"{name} {_shown(value)} is out of range: years 1 to 9999 in UTC") from None
    return moment


def _check_parameters(query: dict[str, str]) -> None:
    for key, value in query.items():
        if _CONTROL.search(key) or _CONTROL.search(value):
            raise BadRequestError(f"parameter {_shown(key)} holds a control character (such as NUL): refused")
        if len(key) > MAX_FILTER_CHARS or len(value) > MAX_FILTER_CHARS:
            raise BadRequestError(f"parameter {_shown(key)} is longer than {MAX_FILTER_CHARS} characters")


def parse_filters(query: dict[str, str]) -> dict[str, Any]:
    """The keyword arguments of :meth:`AuditReader.list` from the page's query string.

    Raises:
        BadRequestError: a value the store could not take or that cannot match, naming the parameter.
    """
    _check_parameters(query)
    action = query.get("type") or None
    if action is not None and action not in audit.DECISION_TYPES:
        raise BadRequestError(f"type {_shown(action)} is not a decision type; choose one of the list")
    try:
        limit, after = int(query.get("limit") or 100), int(query.get("after") or 0)
    except ValueError:
        raise BadRequestError("limit and after are whole numbers") from None
    if not 1 <= limit <= MAX_LIMIT or not 0 <= after <= MAX_POSITION:
        raise BadRequestError(f"limit is 1..{MAX_LIMIT} and after is 0..{MAX_POSITION}")
    return {
        "since": parse_time(query["since"], "since") if query.get("since") else None,
        "until": parse_time(query["until"], "until") if query.get("until") else None,
        "action": action,
        "model": query.get("model") or None,
        "actor": query.get("actor") or None,
        "limit": limit,
        "after_position": after,
    }


def record_key(segment: str) -> str | None:
    """The key ``events.audit.get_record`` takes for the path segment of ``/audit/<position or event id>``,
    or None where no record can be: a number past the BIGINT position column (PostgreSQL would refuse to
    compare it), digits of another script (``"²".isdigit()`` but ``int("²")`` fails), an id longer than the
    event id column.

    Raises:
        BadRequestError: the segment holds a control character.
    """
    if _CONTROL.search(segment):
        raise BadRequestError("a record id holds no control character (such as NUL)")
    if segment.isdigit():
        return segment if segment.isascii() and int(segment) <= MAX_POSITION else None
    return segment if len(segment) <= MAX_EVENT_ID_CHARS else None


def _store_unavailable(exc: BaseException) -> bool:
    """Whether a failure is the store not answering (503), rather than a fault here or in the request (500)."""
    return is_unavailable(exc)  # StoreUnavailableError, or a database error that means the same


def mlflow_links(evidence: dict[str, Any], ui_url: str | None) -> list[dict[str, str | None]]:
    """Links to the MLflow run and registered version an evidence names (MLflow 3's UI is a hash router:
    ``#/runs/<id>`` redirects to the run in its experiment, ``#/models/<name>/versions/<v>``); with no UI URL
    configured, the ids alone (``href`` None)."""
    # A UI URL with credentials would hand them to every reader of the page: links carry it without them.
    bare = without_credentials(ui_url) if ui_url and urlsplit(ui_url).scheme in ("http", "https") else None
    ui = bare.rstrip("/") if bare else None
    links: list[dict[str, str | None]] = []
    for key in ("run_id", "candidate_run_id"):
        run = evidence.get(key)
        if isinstance(run, str) and run:
            experiment = evidence.get("experiment_id")
            route = f"experiments/{quote(str(experiment), safe='')}/runs" if experiment else "runs"
            href = f"{ui}/#/{route}/{quote(run, safe='')}" if ui else None
            links.append({"label": f"MLflow run {run}", "href": href})
    name, version = evidence.get("name"), evidence.get("version")
    if isinstance(name, str) and name and version is not None and not isinstance(version, dict | list):
        href = f"{ui}/#/models/{quote(name, safe='')}/versions/{quote(str(version), safe='')}" if ui else None
        links.append({"label": f"registered model {name} version {version}", "href": href})
    return links


#: Shades of an attributed token on the record page: classes attr-pos-1..N and attr-neg-1..N (base.html).
ATTRIBUTION_SHADES = 8


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def attribution_view(evidence: Any) -> dict[str, Any] | None:
    """An alert's attribution (its statistics' ``attribution`` and ``top_tokens``) as the record page shows it:
    the response's tokens in order, each with the whitespace before it, its shade class (the value's sign, and
    its |value| / max |value| in :data:`ATTRIBUTION_SHADES` steps) and its value; None for other records."""
    statistics = evidence.get("statistics") if isinstance(evidence, dict) else None
    found = statistics.get("attribution") if isinstance(statistics, dict) else None
    if not isinstance(found, dict) or not isinstance(found.get("tokens"), list):
        return None
    tokens = [
        (t, value)
        for t in found["tokens"]
        if isinstance(t, dict) and isinstance(t.get("text"), str) and (value := _number(t.get("value"))) is not None
    ]
    peak = max((abs(value) for _, value in tokens), default=0.0)
    shown, cursor = [], None
    for token, value in tokens:
        start, end = token.get("start"), token.get("end")
        spaced = isinstance(start, int) and cursor is not None and start > cursor
        cursor = end if isinstance(end, int) else None
        step = math.ceil(ATTRIBUTION_SHADES * abs(value) / peak) if peak > 0 else 0
        shade = f"attr-{'pos' if value > 0 else 'neg'}-{step}" if step else "attr-zero"
        shown.append({"gap": " " if spaced else "", "text": token["text"], "shade": shade, "value": f"{value:+.4g}"})
    top = [
        {"text": t["text"], "value": f"{value:+.4g}"}
        for t in (statistics.get("top_tokens") or [])
        if isinstance(t, dict) and isinstance(t.get("text"), str) and (value := _number(t.get("value"))) is not None
    ]
    numbers = {key: _number(found.get(key)) for key in ("score", "baseline_score", "delta")}
    return {
        "event_id": str(found.get("event_id", "")),
        "tokens": shown,
        "top": top,
        **{key: f"{value:.4f}" if value is not None else "" for key, value in numbers.items()},
    }


class ReviewServer:
    """The HTTP server, in a background thread: ``start()`` returns the bound port (0 asks for a free one)."""

    def __init__(
        self,
        store: SqlEventStore,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str | None = None,
        mlflow_ui_url: str | None = None,
        reader: AuditReader | None = None,
        limits: HttpLimits | None = None,
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        """``metrics`` makes the /metrics body when the metrics live elsewhere (it may block: it runs on a
        thread of its own); by default this process's registry, exposed on the event loop."""
        self.store, self.host, self.port = store, host, port
        self.token = token.encode("utf-8") if token else None
        self.mlflow_ui_url = mlflow_ui_url
        self.reader: AuditReader = reader if reader is not None else StoreAuditReader(store)
        self.limits = limits if limits is not None else HttpLimits()
        self.metrics = metrics
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._head = head_revision()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._probe_pool: ThreadPoolExecutor | None = None
        self._metrics_pool: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._chain_lock = threading.Lock()
        self._ready_lock = threading.Lock()
        self._ready: tuple[float, tuple[bool, str]] | None = None
        self._chain: tuple[float, VerifyReport] | None = None
        # Rendered /audit pages by what they show (see _audit); oldest dropped first past _PAGES_KEPT.
        self._pages: dict[tuple[Any, ...], bytes] = {}
        self._pages_lock = threading.Lock()

    @classmethod
    def from_settings(cls, store: SqlEventStore, http: HttpSettings, **kwargs: Any) -> ReviewServer:
        """The server the ``http`` settings describe; ``kwargs`` as for the constructor (``metrics``...)."""
        return cls(
            store,
            host=http.host,
            port=http.port,
            token=http.token.get_secret_value() if http.token else None,
            mlflow_ui_url=http.mlflow_ui_url,
            # Every limit is a setting of the same name (a unit test keeps the defaults equal).
            limits=HttpLimits(**{f.name: getattr(http, f.name) for f in dataclasses.fields(HttpLimits)}),
            **kwargs,
        )

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self) -> int:
        limits = self.limits
        sock = listening_socket(self.host, self.port, limits.backlog)
        self.port = int(sock.getsockname()[1])
        server = hardened_server(
            self.asgi_app(),
            _RAW_SECURITY_HEADERS,
            host=self.host,
            port=self.port,
            header_timeout=limits.header_timeout,
            backlog=limits.backlog,
            keep_alive_timeout=limits.keep_alive_timeout,
            max_header_bytes=limits.max_header_bytes,
            date_header=True,
        )
        self._pool = ThreadPoolExecutor(limits.threads, thread_name_prefix="alignd-http")
        self._slots = asyncio.Semaphore(limits.threads)  # a new one per start: it belongs to one event loop
        # /readyz on a thread of its own: a prober must not wait behind pages when the pool is busy.
        self._probe_pool = ThreadPoolExecutor(1, thread_name_prefix="alignd-http-ready")
        # Metrics kept elsewhere are waited for on a thread of their own: a prober must not queue behind a scrape
        # (in the soak, /readyz's p50 rose from 70 to 740 ms while it shared its thread with /metrics).
        if self.metrics is not None:
            self._metrics_pool = ThreadPoolExecutor(1, thread_name_prefix="alignd-http-metrics")
        self._server = server
        try:
            self._thread = serve_in_thread(server, sock, "alignd-http")
        except ServerStartError as exc:
            self._thread = exc.thread
            self.stop()
            raise RuntimeError(f"the HTTP server on {self.url} did not start (see the log)") from None
        logger.info("HTTP server listening on %s", self.url, extra={"url": self.url})
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True  # seen within 0.1 s; requests in progress get _GRACE_SECONDS
        if self._thread is not None:
            self._thread.join(timeout=_GRACE_SECONDS + 10)
        for pool in (self._pool, self._probe_pool, self._metrics_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._server = self._thread = self._pool = self._probe_pool = self._metrics_pool = None

    def readiness(self) -> tuple[bool, str]:
        """Ready when the store answers ``SELECT 1`` and its schema is this code's (else why not)."""
        try:
            self.store.ping()
            if current_revision(self.store) != self._head:
                ensure_current(self.store)  # raises, saying how the schema differs
        except SchemaOutOfDateError as exc:
            return False, str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure to answer means "not ready"; the reason goes to the prober
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
            return False, f"the store does not answer: {type(exc).__name__}: {reason}"
        return True, "ready"

    def _shared_readiness(self) -> tuple[bool, str]:
        """:meth:`readiness`, at most once a second: probes that queue behind one (a schema check costs tens of
        milliseconds on PostgreSQL) take its answer instead of each waiting for its own (p99 5.6 s under 50
        clients in the soak benchmark)."""
        with self._ready_lock:
            cached = self._ready
            if cached is not None and time.monotonic() - cached[0] < _READY_REUSE_S:
                return cached[1]
            answer = self.readiness()
            self._ready = (time.monotonic(), answer)
            return answer

    def _remote_metrics(self) -> _Answer:
        assert self.metrics is not None
        try:
            return "metrics", 200, CONTENT_TYPE_LATEST, self.metrics(), {}
        except TimeoutError as exc:  # the daemon's process did not answer in time: say so, never hang the prober
            return _text("metrics", 503, f"the daemon's metrics did not come: {exc}")

    def render(self, name: str, **context: Any) -> bytes:
        return self.templates.get_template(name).render(**context).encode("utf-8")

    def asgi_app(self) -> Starlette:
        """The ASGI application (without the security headers, which :class:`SecurityHeaders` adds)."""
        return Starlette(routes=[Route("/{path:path}", self._endpoint, methods=_METHODS)])

    # --- requests ------------------------------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> Response:
        started, method = time.perf_counter(), request.method
        # The path as sent (uvicorn's scope["path"] is already decoded, so "/audit/a%2Fb" would split in two).
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
        path = raw_path.decode("latin-1")  # h11 lets only visible ASCII through in a request target
        name, status = "other", 500
        try:
            name, status, ctype, body, extra = await self._route(request, method, path)
        except Exception as exc:  # logged with its traceback; the client gets a page without internals
            logger.exception("HTTP %s %s failed", method, path)
            unavailable = _store_unavailable(exc)
            status, ctype, extra = (503 if unavailable else 500), "text/html; charset=utf-8", {}
            message = f"the store does not answer ({type(exc).__name__})" if unavailable else "internal error"
            body = self.render("error.html", status=status, message=message)
        # Counted and logged before the answer is written: a client that reads /metrics right after its
        # response must find the request counted.
        elapsed = time.perf_counter() - started
        _REQUESTS.labels(name, str(status)).inc()
        _LATENCY.labels(name).observe(elapsed)
        level = logging.DEBUG if name in ("healthz", "readyz", "metrics", "gone") else logging.INFO
        fields = {"method": method, "path": path, "status": status, "ms": round(elapsed * 1000, 1)}
        logger.log(level, "%s %s %d %.1fms", method, path, status, fields["ms"], extra=fields)
        response = Response(body, status_code=status)
        # Header names as written (Starlette would lower-case them; h11 sends them as given).
        headers = {"Content-Type": ctype, "Content-Length": str(len(body)), **extra}
        response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        return response

    async def _route(self, request: Request, method: str, path: str) -> _Answer:
        # h11 holds a head to max_header_bytes only while it arrives in pieces; one that came whole is
        # measured here, and answered alike (400, the connection closed), however the packets fell.
        scope = request.scope
        head = len(path) + len(scope["query_string"]) + sum(len(k) + len(v) for k, v in scope["headers"])
        if head > self.limits.max_header_bytes:
            name, status, ctype, body, _ = _text(
                "other", 400, f"the request head is over {self.limits.max_header_bytes} bytes"
            )
            return name, status, ctype, body, {"Connection": "close"}
        length = request.headers.get("content-length")
        if length is not None and int(length) > self.limits.max_body_bytes:  # h11 let only digits through
            return _too_large(self.limits.max_body_bytes)
        if _CONTROL.search(unquote(path)):
            return self._html("other", 400, "error.html", status=400, message="the path holds a control character")
        if method in _STATE_CHANGING:
            return await self._changing(request, method, path)
        if method not in ("GET", "HEAD"):
            name, status, ctype, body, _ = _text("other", 405, "method not allowed")
            return name, status, ctype, body, {"Allow": "GET, HEAD, POST"}
        if path == "/":
            return "root", 302, "text/plain; charset=utf-8", b"see /audit\n", {"Location": "/audit"}
        if path == "/healthz":  # on the event loop: never waits behind the store
            return _text("healthz", 200, "ok")
        if path == "/metrics":
            if self.metrics is None:
                return "metrics", 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY), {}
            assert self._metrics_pool is not None
            return await asyncio.get_running_loop().run_in_executor(self._metrics_pool, self._remote_metrics)
        try:
            pairs = parse_qs(request.scope["query_string"].decode("latin-1"), max_num_fields=64)
        except ValueError:  # more fields than any page of ours takes
            pairs = {"": ["x" * (MAX_FILTER_CHARS + 1)]}
        if path == "/readyz":
            assert self._probe_pool is not None
            ready, reason = await asyncio.get_running_loop().run_in_executor(self._probe_pool, self._shared_readiness)
            return _text("readyz", 200 if ready else 503, reason)
        return await self._blocking(request, self._get, path, {k: v[-1] for k, v in pairs.items()})

    async def _blocking(self, request: Request, function: Callable[..., _Answer], *args: Any) -> _Answer:
        """Run store reads and rendering on the server's own threads, ``threads`` at a time; a request whose
        client went away while it waited for its turn is dropped (counted as 499) instead of served to nobody."""
        assert self._pool is not None and self._slots is not None
        async with self._slots:
            if await request.is_disconnected():
                return "gone", 499, "text/plain; charset=utf-8", b"", {}
            return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(function, *args))

    def _html(self, route: str, code: int, template: str, **context: Any) -> _Answer:
        return route, code, "text/html; charset=utf-8", self.render(template, **context), {}

    def _get(self, path: str, query: dict[str, str]) -> _Answer:
        if path in ("/audit", "/audit/"):
            try:
                filters = parse_filters(query)
            except BadRequestError as exc:
                return self._audit(400, _echoable(query), None, str(exc))
            return self._audit(200, query, filters, None)
        if path.startswith("/audit/") and path.count("/") == 2:
            try:
                key = record_key(unquote(path.removeprefix("/audit/")))
            except BadRequestError as exc:
                return self._html("record", 400, "error.html", status=400, message=str(exc))
            record = self.reader.get(key) if key is not None else None
            if record is None:
                return self._html("record", 404, "error.html", status=404, message="no audit record there")
            try:
                evidence = json.loads(record.evidence)
                pretty = json.dumps(evidence, indent=2, sort_keys=True, ensure_ascii=False)
            except ValueError:
                evidence, pretty = {}, record.evidence
            links = mlflow_links(evidence, self.mlflow_ui_url) if isinstance(evidence, dict) else []
            rolled_back = self.reader.rolled_back().get(record.model) if record.model else None
            context = {"record": record, "evidence": pretty, "links": links, "shown": audit.shown(record)}
            context |= {"attribution": attribution_view(evidence), "shades": ATTRIBUTION_SHADES}
            context |= {"alert": record.action == ANOMALY_DETECTED, "can_review": self.token is not None}
            context["verdict"] = self._standing_verdict(record.event_id) if context["alert"] else None
            return self._html("record", 200, "record.html", **context, rolled_back=rolled_back)
        return self._html("other", 404, "error.html", status=404, message="no such page")

    def _standing_verdict(self, alert_id: str) -> Verdict | None:
        from events.verdicts import latest_verdicts

        return latest_verdicts(self.store).get(alert_id)

    def _chain_report(self, *, fresh: bool = False) -> VerifyReport:
        """The audit chain's check, shared: one runs at a time, and its report serves every page for
        ``chain_check_s`` seconds (pages that wait for a check in progress take its report)."""
        with self._chain_lock:
            cached = self._chain
            if not fresh and cached is not None and time.monotonic() - cached[0] < self.limits.chain_check_s:
                return cached[1]
            report = self.reader.verify()
            self._chain = (time.monotonic(), report)
            return report

    def _audit(self, status: int, query: dict[str, str], filters: dict[str, Any] | None, error: str | None) -> _Answer:
        # A page is a function of its query, the trail's newest position (records are append-only), the chain
        # check it shows and the rolled-back marks: while those stand, the same query gets the page rendered for
        # it before. Rendering 100 records is most of a page's cost, and a flood of views is mostly the same page.
        report = self._chain_report()
        key: tuple[Any, ...] | None = None
        rolled_back = self.reader.rolled_back() if filters else {}
        if filters and error is None:
            marks = tuple(sorted((m, v.event_id) for m, v in rolled_back.items()))
            key = (tuple(sorted(query.items())), self.reader.last_position(), dataclasses.astuple(report), marks)
            with self._pages_lock:
                page = self._pages.get(key)
            if page is not None:
                return "audit", status, "text/html; charset=utf-8", page, {}
        records = list(self.reader.list(**filters)) if filters else []
        more = None
        if filters and len(records) == filters["limit"]:
            more = "/audit?" + urlencode({**query, "after": records[-1].position})
        types = sorted(audit.DECISION_TYPES)
        context = {"report": report, "records": records, "query": query, "error": error, "more": more, "types": types}
        # Each record as a list shows it (a skipped enforcement reads as such), and the versions rolled back.
        context["shown"] = {r.position: audit.shown(r) for r in records}
        context["rolled_back"] = rolled_back if records else {}
        answer = self._html("audit", status, "audit.html", **context)
        if key is not None:
            with self._pages_lock:
                self._pages[key] = answer[3]
                while len(self._pages) > _PAGES_KEPT:
                    del self._pages[next(iter(self._pages))]
        return answer

    async def _changing(self, request: Request, method: str, path: str) -> _Answer:
        try:
            async with asyncio.timeout(self.limits.header_timeout):
                body = bytearray()
                async for chunk in request.stream():  # read to the end, so the connection can be reused
                    body += chunk
                    if len(body) > self.limits.max_body_bytes:  # chunked, so no Content-Length to refuse it by
                        return _too_large(self.limits.max_body_bytes)
        except TimeoutError:
            name, status, ctype, body, _ = _text("post", 408, "the request body did not arrive in time")
            return name, status, ctype, body, {"Connection": "close"}
        except ClientDisconnect:
            return _text("post", 400, "the client went away")  # nobody reads this answer
        if self.token is None:
            return _text("post", 403, "no token is configured: this server changes nothing over HTTP")
        verdict = method == "POST" and path.startswith("/audit/") and path.endswith("/verdict") and path.count("/") == 3
        # The record page's verdict form cannot set a header: it sends the operator token as a form field. A
        # page of another site cannot forge the form without the token, so this is no way around it.
        form = _form(request, bytes(body)) if verdict else {}
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" and "token" in form:
            scheme, given = "bearer", form["token"]
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), self.token):
            name, status, ctype, answer, _ = _text("post", 401, "a valid 'Authorization: Bearer <token>' is needed")
            return name, status, ctype, answer, {"WWW-Authenticate": 'Bearer realm="alignd"'}
        if verdict:
            return await self._blocking(request, self._verdict, path.split("/")[2], form)
        if method != "POST" or path != "/audit/verify":
            return _text("post", 404, "no such action")
        return await self._blocking(request, self._verify)

    def _verdict(self, segment: str, form: dict[str, str]) -> _Answer:
        """A reviewer's verdict on the alert of the record ``segment`` (the record page's form): appended, then
        back to the record page (303), which shows it; a verdict that cannot be recorded is a 400 saying why."""
        from daemon.verdicts import VerdictError, record_verdict

        try:
            key = record_key(unquote(segment))
        except BadRequestError as exc:
            return self._html("verdict", 400, "error.html", status=400, message=str(exc))
        record = self.reader.get(key) if key is not None else None
        if record is None:
            return self._html("verdict", 404, "error.html", status=404, message="no audit record there")
        if record.action != ANOMALY_DETECTED:
            message = f"record {record.position} is a {record.action}: only an alert (anomaly.detected) takes a verdict"
            return self._html("verdict", 400, "error.html", status=400, message=message)
        try:
            done = record_verdict(
                self.store,
                record.event_id,
                form.get("verdict", ""),
                actor=form.get("actor", ""),
                reason=form.get("reason", ""),
                source="alignd.review-page",
            )
        except VerdictError as exc:
            return self._html("verdict", 400, "error.html", status=400, message=f"{exc}; nothing was recorded")
        logger.info(
            "verdict %s on alert %s by %s over HTTP (%s)", done.verdict, done.alert_id, done.actor, done.event_id
        )
        return "verdict", 303, "text/plain; charset=utf-8", b"recorded\n", {"Location": f"/audit/{record.position}"}

    def _verify(self) -> _Answer:
        chained = self.reader.catch_up()
        report = self._chain_report(fresh=True)
        logger.info("audit caught up over HTTP: %d records chained; chain ok=%s", chained, report.ok)
        body = {"chained": chained, **{k: getattr(report, k) for k in _REPORT_FIELDS}}
        return "verify", 200, "application/json", json.dumps(body).encode("utf-8"), {}


def _form(request: Request, body: bytes) -> dict[str, str]:
    """A urlencoded form body's fields (the last of each name); anything else reads as no fields."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return {}
    try:
        pairs = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=16)
    except ValueError:  # not UTF-8, or more fields than the form has
        return {}
    return {k: v[-1] for k, v in pairs.items()}


def _text(name: str, status: int, message: str) -> _Answer:
    return name, status, "text/plain; charset=utf-8", (message + "\n").encode("utf-8"), {}


def _too_large(limit: int) -> _Answer:
    # The body is not read: the connection is closed after the answer rather than drained.
    name, status, ctype, body, _ = _text("post", 413, f"the request body is over {limit} bytes")
    return name, status, ctype, body, {"Connection": "close"}


def _echoable(query: dict[str, str]) -> dict[str, str]:
    """The filters that may be shown back in the form: none with a control character or too long."""
    return {
        k: v
        for k, v in query.items()
        if len(k) + len(v) <= MAX_FILTER_CHARS and not _CONTROL.search(k) and not _CONTROL.search(v)
    }

"""The daemon's HTTP server: ``/healthz``, ``/readyz``, ``/metrics`` and the read-only audit review page.

The standard library's ``ThreadingHTTPServer`` is enough for one read-only page and a few endpoints, so no
web framework is added as a dependency. Every page is a Jinja2 template with ``autoescape=True``: the records
show untrusted text (prompts, responses, summaries), so every value is escaped, and the Content-Security-Policy
allows no script at all as a second line of defence. GET never changes state; a request that does (POST) needs
``Authorization: Bearer <token>``, and with no token configured every such request is refused.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import jinja2
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from events import audit
from events.audit import AuditRecord, VerifyReport
from events.errors import SchemaOutOfDateError, StoreError
from events.sql_store import SqlEventStore
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
MAX_LIMIT = 1000
_REPORT_FIELDS = ("ok", "records", "first_bad", "problem", "event_id", "last_hash", "pending")
_REQUESTS = Counter("alignd_http_requests", "HTTP requests served", ["route", "status"])
_LATENCY = Histogram("alignd_http_request_seconds", "HTTP request latency", ["route"])


class AuditReader(Protocol):
    """What the page reads of the audit trail: :class:`StoreAuditReader`, or another source of records.

    ``list`` takes the filters of ``events.audit.list_records``: since, until, action, model, actor, limit,
    after_position."""

    def list(self, **filters: Any) -> Sequence[AuditRecord]: ...
    def get(self, position_or_event_id: str) -> AuditRecord | None: ...
    def verify(self) -> VerifyReport: ...
    def catch_up(self) -> int: ...


class StoreAuditReader:
    """:class:`AuditReader` over events.audit and a SQL store."""

    def __init__(self, store: SqlEventStore) -> None:
        self.store = store

    def list(self, **filters: Any) -> Sequence[AuditRecord]:
        return audit.list_records(self.store, **filters)

    def get(self, position_or_event_id: str) -> AuditRecord | None:
        return audit.get_record(self.store, position_or_event_id)

    def verify(self) -> VerifyReport:
        return audit.verify(self.store)

    def catch_up(self) -> int:
        return audit.AuditTrail(self.store).catch_up()


class BadRequestError(ValueError):
    """A filter the page cannot use; shown back to the user with a 400."""


def parse_time(value: str) -> datetime:
    """RFC 3339 ("2026-11-01T12:00:00Z", "+02:00") or a date; without an offset, UTC is meant."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequestError(f"{value!r} is not an RFC 3339 time such as 2026-11-01T12:00:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_filters(query: dict[str, str]) -> dict[str, Any]:
    """The keyword arguments of :meth:`AuditReader.list` from the page's query string."""
    action = query.get("type") or None
    if action is not None and action not in audit.DECISION_TYPES:
        raise BadRequestError(f"type {action!r} is not a decision type; choose one of the list")
    try:
        limit, after = int(query.get("limit") or 100), int(query.get("after") or 0)
    except ValueError:
        raise BadRequestError("limit and after are whole numbers") from None
    if not 1 <= limit <= MAX_LIMIT or after < 0:
        raise BadRequestError(f"limit is 1..{MAX_LIMIT} and after is 0 or more")
    return {
        "since": parse_time(query["since"]) if query.get("since") else None,
        "until": parse_time(query["until"]) if query.get("until") else None,
        "action": action,
        "model": query.get("model") or None,
        "actor": query.get("actor") or None,
        "limit": limit,
        "after_position": after,
    }


def mlflow_links(evidence: dict[str, Any], ui_url: str | None) -> list[dict[str, str | None]]:
    """Links to the MLflow run and registered version an evidence names (MLflow 3's UI is a hash router:
    ``#/runs/<id>`` redirects to the run in its experiment, ``#/models/<name>/versions/<v>``); with no UI URL
    configured, the ids alone (``href`` None)."""
    ui = ui_url.rstrip("/") if ui_url and urlsplit(ui_url).scheme in ("http", "https") else None
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
    ) -> None:
        self.store, self.host, self.port = store, host, port
        self.token = token.encode("utf-8") if token else None
        self.mlflow_ui_url = mlflow_ui_url
        self.reader: AuditReader = reader if reader is not None else StoreAuditReader(store)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._head = head_revision()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self) -> int:
        self._httpd = (_Server6 if ":" in self.host else _Server)((self.host, self.port), _Handler)
        self._httpd.review = self
        self.port = int(self._httpd.server_address[1])
        serve = functools.partial(self._httpd.serve_forever, poll_interval=0.1)  # stop() waits up to one poll
        self._thread = threading.Thread(target=serve, name="alignd-http", daemon=True)
        self._thread.start()
        logger.info("HTTP server listening on %s", self.url, extra={"url": self.url})
        return self.port

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._httpd = self._thread = None

    def readiness(self) -> tuple[bool, str]:
        """Ready when the store answers ``SELECT 1`` and its schema is this code's (else why not)."""
        try:
            with self.store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            if current_revision(self.store.engine) != self._head:
                ensure_current(self.store.engine)  # raises, saying how the schema differs
        except SchemaOutOfDateError as exc:
            return False, str(exc)
        except Exception as exc:  # any failure to answer means "not ready"; the reason goes to the prober
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
            return False, f"the store does not answer: {type(exc).__name__}: {reason}"
        return True, "ready"

    def render(self, name: str, **context: Any) -> bytes:
        return self.templates.get_template(name).render(**context).encode("utf-8")


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow client never holds up stop()
    review: ReviewServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "alignd"
    protocol_version = "HTTP/1.1"

    server: _Server

    @property
    def app(self) -> ReviewServer:
        return self.server.review

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # one structured line per request is logged by _serve instead

    def do_GET(self) -> None:
        self._serve(self._get)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self._serve(self._post)

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _serve(self, route: Any) -> None:
        started, parts = time.perf_counter(), urlsplit(self.path)
        name, status = "other", 500
        try:
            name, status, ctype, body, extra = route(parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()})
        except Exception as exc:  # logged with its traceback; the client gets a page without internals
            logger.exception("HTTP %s %s failed", self.command, parts.path)
            unavailable = isinstance(exc, StoreError | SQLAlchemyError)
            status, ctype, extra = (503 if unavailable else 500), "text/html; charset=utf-8", {}
            message = f"the store does not answer ({type(exc).__name__})" if unavailable else "internal error"
            body = self.app.render("error.html", status=status, message=message)
        # Counted and logged before the answer is written: a client that reads /metrics right after its
        # response must find the request counted (the handler thread may otherwise still be running).
        elapsed = time.perf_counter() - started
        _REQUESTS.labels(name, str(status)).inc()
        _LATENCY.labels(name).observe(elapsed)
        level = logging.DEBUG if name in ("healthz", "readyz", "metrics") else logging.INFO
        fields = {"method": self.command, "path": parts.path, "status": status, "ms": round(elapsed * 1000, 1)}
        logger.log(level, "%s %s %d %.1fms", self.command, parts.path, status, fields["ms"], extra=fields)
        self.send_response(status)
        for key, value in {**SECURITY_HEADERS, "Content-Type": ctype, **extra}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body if self.command != "HEAD" else b"")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; nothing to answer

    def _html(self, route: str, code: int, template: str, **context: Any) -> tuple[Any, ...]:
        return route, code, "text/html; charset=utf-8", self.app.render(template, **context), {}

    def _text(self, name: str, status: int, message: str) -> tuple[Any, ...]:
        return name, status, "text/plain; charset=utf-8", (message + "\n").encode("utf-8"), {}

    def _get(self, path: str, query: dict[str, str]) -> tuple[Any, ...]:
        app = self.app
        if path == "/":
            return "root", 302, "text/plain; charset=utf-8", b"see /audit\n", {"Location": "/audit"}
        if path == "/healthz":
            return self._text("healthz", 200, "ok")
        if path == "/readyz":
            ready, reason = app.readiness()
            return self._text("readyz", 200 if ready else 503, reason)
        if path == "/metrics":
            return "metrics", 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY), {}
        if path in ("/audit", "/audit/"):
            try:
                filters = parse_filters(query)
            except BadRequestError as exc:
                return self._audit(400, query, None, str(exc))
            return self._audit(200, query, filters, None)
        if path.startswith("/audit/") and path.count("/") == 2:
            record = app.reader.get(unquote(path.removeprefix("/audit/")))
            if record is None:
                return self._html("record", 404, "error.html", status=404, message="no audit record there")
            try:
                evidence = json.loads(record.evidence)
                pretty = json.dumps(evidence, indent=2, sort_keys=True, ensure_ascii=False)
            except ValueError:
                evidence, pretty = {}, record.evidence
            links = mlflow_links(evidence, app.mlflow_ui_url) if isinstance(evidence, dict) else []
            return self._html("record", 200, "record.html", record=record, evidence=pretty, links=links)
        return self._html("other", 404, "error.html", status=404, message="no such page")

    def _audit(self, status: int, query: dict[str, str], filters: dict[str, Any] | None, error: str | None) -> Any:
        records = list(self.app.reader.list(**filters)) if filters else []
        more = None
        if filters and len(records) == filters["limit"]:
            more = "/audit?" + urlencode({**query, "after": records[-1].position})
        report, types = self.app.reader.verify(), sorted(audit.DECISION_TYPES)
        context = {"report": report, "records": records, "query": query, "error": error, "more": more, "types": types}
        return self._html("audit", status, "audit.html", **context)

    def _post(self, path: str, query: dict[str, str]) -> tuple[Any, ...]:
        length = self.headers.get("Content-Length") or "0"
        if length.isdigit() and int(length) <= 65536:
            self.rfile.read(int(length))  # drain, so the connection can be reused
        else:
            self.close_connection = True
        if self.app.token is None:
            return self._text("post", 403, "no token is configured: this server changes nothing over HTTP")
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), self.app.token):
            name, status, ctype, body, _ = self._text("post", 401, "a valid 'Authorization: Bearer <token>' is needed")
            return name, status, ctype, body, {"WWW-Authenticate": 'Bearer realm="alignd"'}
        if self.command != "POST" or path != "/audit/verify":
            return self._text("post", 404, "no such action")
        chained = self.app.reader.catch_up()
        report = self.app.reader.verify()
        logger.info("audit caught up over HTTP: %d records chained; chain ok=%s", chained, report.ok)
        body = {"chained": chained, **{k: getattr(report, k) for k in _REPORT_FIELDS}}
        return "verify", 200, "application/json", json.dumps(body).encode("utf-8"), {}

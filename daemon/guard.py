"""The guard: ``POST /v1/guard`` checks a prompt and/or a response in the request path (docs/guard.md).

A request is checked by the fast detectors (jailbreak patterns, PII with redaction, optionally toxicity) and by
the guard rules in force, folded from the store (:mod:`events.guard_rules`) by a thread that reads the new rule
events every ``refresh_s``; the answer is ``allow``, ``flag``, ``redact`` or ``block`` with its reasons and the ids
of the rules that matched. Every answer but ``allow`` is appended as a ``guard.decided`` event (its texts with the
PII replaced) by a writer thread, in batches, from a bounded queue: the request never waits on the database, and a
decision that finds the queue full is dropped, counted (``alignd_guard_decisions_dropped``) and logged.

Served like the review page (daemon/http.py): uvicorn in a background thread, with its head deadline
(daemon/http_protocol.py), no ``Server`` header, a body over ``max_body_bytes`` refused with 413, a body that does
not arrive within ``header_timeout`` with 408. Bad input is the client's 4xx: 400 for a body that is not a JSON
object of the documented fields (or has neither prompt nor response), 405 for another method on /v1/guard, 404
for another path. ``GET /healthz`` and ``GET /metrics`` are served too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
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
from daemon.settings import GuardSettings
from events.guard_rules import GuardRule, GuardRuleFold, RuleIndex
from events.messages import GuardDecided
from events.model import Event
from events.store import EventStore
from monitors.detectors.pattern_search import prepare_patterns, score_patterns
from monitors.detectors.pii import find_pii
from monitors.detectors.toxicity import ToxicityScorer

logger = logging.getLogger(__name__)

PATH = "/v1/guard"
SOURCE = "alignd.guard"
DECISIONS = ("allow", "flag", "redact", "block")
_RANK = {d: i for i, d in enumerate(DECISIONS)}
#: The request's fields and the JSON type each must have (all optional; prompt or response is needed).
FIELDS = ("prompt", "response", "user_id", "request_id", "model")
#: A stored decision keeps at most this much of each text.
STORED_CHARS = 2000
#: A pattern score at or above this is a jailbreak attempt (monitors.detectors.jailbreak.JailbreakConfig's).
PATTERN_THRESHOLD = 0.5
TOXICITY_THRESHOLD = 0.5
_GRACE_SECONDS = GRACE_SECONDS
_RAW_HEADERS = [(b"X-Content-Type-Options", b"nosniff"), (b"Cache-Control", b"no-store")]

_REQUESTS = Counter("alignd_guard_requests", "guard requests answered", ["decision"])
_REFUSED = Counter("alignd_guard_refused", "guard requests refused as bad input", ["status"])
_LATENCY = Histogram(
    "alignd_guard_request_seconds",
    "guard request latency, body read to answer",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
_DROPPED = Counter("alignd_guard_decisions_dropped", "guard decisions not stored", ["reason"])
_STORED = Counter("alignd_guard_decisions_stored", "guard decisions appended to the store")
_RULES = Gauge("alignd_guard_rules", "guard rules folded (in force or expired, not lifted)", ["replica"])
_REFRESHED = Gauge("alignd_guard_rules_refreshed_timestamp", "when the guard rules were last read", ["replica"])


@dataclass(frozen=True)
class GuardRequest:
    prompt: str | None = None
    response: str | None = None
    user_id: str | None = None
    request_id: str | None = None
    model: str | None = None


class BadRequestError(ValueError):
    """The request body is not one the guard takes; the message says why (a 400)."""


def parse_request(body: bytes) -> GuardRequest:
    """The request a body holds.

    Raises:
        BadRequestError: not UTF-8 JSON, not an object, an unknown field, a field that is not a string, or
            neither prompt nor response.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError("the body must be a JSON object with prompt and/or response")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise BadRequestError(f"unknown field {', '.join(map(repr, unknown))}; fields: {', '.join(FIELDS)}")
    values: dict[str, str | None] = {}
    for name in FIELDS:
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise BadRequestError(f"{name} must be a string, not {type(value).__name__}")
        values[name] = value
    if not values["prompt"] and not values["response"]:
        raise BadRequestError("give a prompt, a response or both")
    return GuardRequest(**values)


@dataclass(frozen=True)
class GuardAnswer:
    decision: str
    reasons: tuple[str, ...] = ()
    rule_ids: tuple[str, ...] = ()
    redacted_prompt: str | None = None
    redacted_response: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "decision": self.decision,
            "reasons": list(self.reasons),
            "rule_ids": list(self.rule_ids),
        }
        if self.redacted_prompt is not None:
            out["redacted_prompt"] = self.redacted_prompt
        if self.redacted_response is not None:
            out["redacted_response"] = self.redacted_response
        return out


def redact(text: str) -> tuple[str, list[str]]:
    """``text`` with every PII item replaced by ``[kind]``, and the kinds found in order."""
    hits = find_pii(text)
    if not hits:
        return text, []
    parts, last = [], 0
    for hit in hits:
        parts.append(text[last : hit.start])
        parts.append(f"[{hit.kind}]")
        last = hit.end
    parts.append(text[last:])
    return "".join(parts), [h.kind for h in hits]


def _rule_reason(rule: GuardRule) -> str:
    by = f"{rule.detector} on " if rule.detector else ""
    return f"guard rule {rule.rule_id} ({by}{rule.subject})"


class Guard:
    """The decision, pure: the detectors in ``detectors`` and the rules of an index; ``block_on`` names the
    detectors whose finding blocks (the others flag; PII redacts). A matching rule always blocks."""

    def __init__(
        self,
        detectors: Sequence[str] = ("jailbreak_patterns", "pii"),
        block_on: Sequence[str] = ("jailbreak_patterns",),
        *,
        toxicity: ToxicityScorer | None = None,
    ) -> None:
        self.detectors, self.block_on = frozenset(detectors), frozenset(block_on)
        if "toxicity" in self.detectors and toxicity is None:
            from monitors.detectors.toxicity import ProfanityCheckScorer

            toxicity = ProfanityCheckScorer()
        self.toxicity = toxicity
        if "jailbreak_patterns" in self.detectors:
            prepare_patterns()

    def check(self, request: GuardRequest, index: RuleIndex, now: datetime | None = None) -> GuardAnswer:
        decision, reasons, rule_ids = "allow", [], []
        now = now or datetime.now(UTC)

        def found(detector: str, reason: str, otherwise: str = "flag") -> None:
            nonlocal decision
            outcome = "block" if detector in self.block_on else otherwise
            reasons.append(reason)
            if _RANK[outcome] > _RANK[decision]:
                decision = outcome

        for rule in index.match(now=now, user_id=request.user_id, prompt=request.prompt):
            rule_ids.append(rule.rule_id)
            reasons.append(_rule_reason(rule))
            decision = "block"
        if request.prompt and "jailbreak_patterns" in self.detectors:
            score = score_patterns(request.prompt)
            if score.score >= PATTERN_THRESHOLD:
                found("jailbreak_patterns", f"jailbreak patterns {', '.join(score.hits)} (score {score.score:.2f})")
        redacted: dict[str, str] = {}
        if "pii" in self.detectors:
            for name in ("prompt", "response"):
                text = getattr(request, name)
                if text:
                    clean, kinds = redact(text)
                    if kinds:
                        redacted[name] = clean
                        found("pii", f"pii in the {name}: {', '.join(dict.fromkeys(kinds))}", "redact")
        if self.toxicity is not None and "toxicity" in self.detectors:
            name = "response" if request.response else "prompt"
            [toxic] = self.toxicity.score([getattr(request, name)])
            if toxic >= TOXICITY_THRESHOLD:
                found("toxicity", f"toxicity of the {name} {toxic:.2f}")
        return GuardAnswer(
            decision,
            tuple(reasons),
            tuple(rule_ids),
            redacted.get("prompt"),
            redacted.get("response"),
        )


def _stored_text(text: str | None) -> str | None:
    if text is None:
        return None
    return redact(text[: STORED_CHARS * 2])[0][:STORED_CHARS]


def decision_event(request: GuardRequest, answer: GuardAnswer, replica: str, now: datetime) -> Event:
    """The ``guard.decided`` event of a decision: its texts with the PII replaced (whatever detectors ran)."""
    record = GuardDecided(
        decision=answer.decision,
        reasons=answer.reasons,
        rule_ids=answer.rule_ids,
        request_id=request.request_id,
        user_id=request.user_id,
        model=request.model,
        prompt=_stored_text(request.prompt),
        response=_stored_text(request.response),
        replica=replica,
    )
    return record.to_event(f"guard.decided:{uuid.uuid4().hex}", now, SOURCE)


class DecisionWriter:
    """Appends decisions in batches from a bounded queue, on a thread of its own."""

    def __init__(self, store: EventStore, *, queue_size: int = 10000, batch_size: int = 500) -> None:
        self.store, self.batch_size = store, batch_size
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dropped = 0
        self._last_warning = 0.0

    def submit(self, event: Event) -> bool:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._drop("queue_full", 1)
            return False
        return True

    def _drop(self, reason: str, count: int) -> None:
        _DROPPED.labels(reason).inc(count)
        self._dropped += count
        now = time.monotonic()
        if now - self._last_warning >= 10.0:  # at most one line every 10 s: the count says how many
            self._last_warning = now
            logger.warning(
                "guard: %d decision(s) not stored (%s); %d so far", count, reason.replace("_", " "), self._dropped
            )

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="alignd-guard-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=0.1)]
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._append(batch)

    def _append(self, batch: list[Event]) -> None:
        for attempt in range(3):
            try:
                self.store.append(batch)
                _STORED.inc(len(batch))
                return
            except Exception:  # noqa: BLE001 - the store's failure must not end the writer; retried, then counted
                logger.warning(
                    "guard: storing %d decision(s) failed (attempt %d of 3)", len(batch), attempt + 1, exc_info=True
                )
                if self._stop.wait(0.5 * (attempt + 1)) and attempt:
                    break
        self._drop("store_error", len(batch))


class GuardServer:
    """The guard, served in a background thread: ``start()`` returns the bound port (0 asks for a free one)."""

    def __init__(
        self,
        store: EventStore,
        *,
        host: str = "127.0.0.1",
        port: int = 8090,
        guard: Guard | None = None,
        refresh_s: float = 1.0,
        rule_ttl_s: float | None = 86400.0,
        max_body_bytes: int = 64 * 1024,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        queue_size: int = 10000,
    ) -> None:
        self.store, self.host, self.port = store, host, port
        self.guard = guard if guard is not None else Guard()
        self.refresh_s, self.max_body_bytes, self.header_timeout = refresh_s, max_body_bytes, header_timeout
        self.fold = GuardRuleFold(default_ttl_s=rule_ttl_s or None)
        self.writer = DecisionWriter(store, queue_size=queue_size)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()
        self._replica: str | None = None

    @classmethod
    def from_settings(cls, store: EventStore, settings: GuardSettings) -> GuardServer:
        return cls(
            store,
            host=settings.host,
            port=settings.port,
            guard=Guard(settings.detectors, settings.block_on),
            refresh_s=settings.refresh_s,
            rule_ttl_s=settings.rule_ttl_s,
            max_body_bytes=settings.max_body_bytes,
            header_timeout=settings.header_timeout,
            queue_size=settings.queue_size,
        )

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def replica(self) -> str:
        """This replica's name in its decisions and metrics: host name and port."""
        return self._replica or f"{socket.gethostname()}:{self.port}"

    # --- rules -----------------------------------------------------------------------------------------------

    def refresh(self) -> int:
        """Read the new rule events now (the refresher does every ``refresh_s``)."""
        read = self.fold.catch_up(self.store)
        _RULES.labels(self.replica).set(self.fold.index.rules)
        _REFRESHED.labels(self.replica).set(time.time())
        return read

    def _refresh_loop(self) -> None:
        failing = False
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
                if failing:
                    logger.info("guard: the guard rules are read again")
                failing = False
            except Exception:  # noqa: BLE001 - the rules in hand keep serving while the store is away
                if not failing:
                    logger.warning("guard: cannot read new guard rules; serving the ones in hand", exc_info=True)
                failing = True

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> int:
        sock = listening_socket(self.host, self.port, 2048)
        self.port = int(sock.getsockname()[1])
        self._replica = f"{socket.gethostname()}:{self.port}"
        self._stop.clear()
        try:
            self.refresh()  # the rules in force before the first request
        except Exception:
            sock.close()
            raise
        self.writer.start()
        self._refresher = threading.Thread(target=self._refresh_loop, name="alignd-guard-rules", daemon=True)
        self._refresher.start()
        server = self._server = hardened_server(
            self.asgi_app(), _RAW_HEADERS, host=self.host, port=self.port, header_timeout=self.header_timeout
        )
        try:
            self._thread = serve_in_thread(server, sock, "alignd-guard")
        except ServerStartError as exc:
            self._thread = exc.thread
            self.stop()
            raise RuntimeError(f"the guard on {self.url} did not start (see the log)") from None
        logger.info("guard listening on %s%s", self.url, PATH, extra={"url": self.url})
        return self.port

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=_GRACE_SECONDS + 10)
        if self._refresher is not None:
            self._refresher.join(timeout=10)
        self.writer.stop()  # after the server: the decisions of the last requests are stored
        self._server = self._thread = self._refresher = None

    # --- requests ------------------------------------------------------------------------------------------

    def asgi_app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(
                    "/{path:path}", self._endpoint, methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
                )
            ]
        )

    async def _endpoint(self, request: Request) -> Response:
        status, body, extra = await self._route(request)
        if status >= 400:
            _REFUSED.labels(str(status)).inc()
        response = Response(body, status_code=status)
        ctype = "application/json" if body[:1] == b"{" else "text/plain; charset=utf-8"
        headers = {"Content-Type": ctype, "Content-Length": str(len(body)), **extra}
        response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        return response

    async def _route(self, request: Request) -> tuple[int, bytes, dict[str, str]]:
        path, method = request.scope["path"], request.method
        if path == PATH:
            if method != "POST":
                return 405, _error("use POST"), {"Allow": "POST"}
            return await self._guard(request)
        if path == "/healthz" and method in ("GET", "HEAD"):
            return 200, b"ok\n", {}
        if path == "/metrics" and method in ("GET", "HEAD"):
            return 200, generate_latest(REGISTRY), {"Content-Type": CONTENT_TYPE_LATEST}
        return 404, _error(f"no such path; the guard answers POST {PATH}"), {}

    async def _guard(self, request: Request) -> tuple[int, bytes, dict[str, str]]:
        length = request.headers.get("content-length")
        if length is not None and int(length) > self.max_body_bytes:  # h11 lets only digits through
            return 413, _error(f"the request body is over {self.max_body_bytes} bytes"), {"Connection": "close"}
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.header_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_body_bytes:  # chunked: no Content-Length to refuse it by
                        return (
                            413,
                            _error(f"the request body is over {self.max_body_bytes} bytes"),
                            {"Connection": "close"},
                        )
                    chunks.append(chunk)
        except TimeoutError:
            return 408, _error("the request body did not arrive in time"), {"Connection": "close"}
        except ClientDisconnect:
            return 400, _error("the client went away"), {}
        started = time.perf_counter()
        try:
            guard_request = parse_request(b"".join(chunks))
        except BadRequestError as exc:
            return 400, _error(str(exc)), {}
        now = datetime.now(UTC)
        answer = self.guard.check(guard_request, self.fold.index, now)
        if answer.decision != "allow":
            self.writer.submit(decision_event(guard_request, answer, self.replica, now))
        _REQUESTS.labels(answer.decision).inc()
        _LATENCY.observe(time.perf_counter() - started)
        if answer.decision != "allow":
            logger.debug("guard %s: %s", answer.decision, "; ".join(answer.reasons))
        return 200, json.dumps(answer.to_json()).encode("utf-8"), {}


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode("utf-8")

"""``alignd run --role serve``: the champion policy behind an OpenAI-compatible API, guarded, logged (docs/serve.md).

``POST /v1/chat/completions`` (streamed as server-sent events or not), ``GET /v1/models``, ``POST /v1/feedback``,
``GET /healthz`` and ``GET /metrics``. Each prompt goes through the guard before the model (the guard rules in force,
folded from the store as the guard role folds them, and the fast detectors of the ``guard:`` section): ``block``
answers 400 with OpenAI's ``content_filter`` code, ``redact`` gives the model the redacted prompt. Each answer
goes through it too: ``redact`` replaces the PII before it leaves (a stream holds back ``stream_holdback_chars``
so an item split across tokens is caught), ``block`` withholds it (``finish_reason: content_filter``). Every
answer is logged as an ``interaction.logged`` with the version that produced it, produced to the interactions topic
through a bounded buffer (daemon/serve_log.py); every guard decision but ``allow`` is a ``guard.decided`` event.

The model (daemon/serve_model.py) is the registry's ``champion`` of ``alignd-policy``, the bare base model when
there is none. A follower (:class:`ServePart`) reads the models topic from its end, as ``vllm-sync`` does but with
no consumer group (every replica must see every move): on ``model.promoted`` / ``model.rolled_back`` of the
champion it reads the champion from the registry (the truth; an event is a wake-up), downloads and prepares it
off the request path, and has the model thread switch between two answers. It also checks the registry every
``check_interval_s`` (a move it missed). Each swap appends ``serving.adapter_loaded``; the time from the alias
move to the first answer by the new version is logged and exported (``alignd_serve_swap_first_answer_seconds``).

Why not an existing OpenAI-compatible server package: vLLM, TGI and SGLang need accelerators and own the model;
``transformers serve`` loads models by name and cannot swap a PEFT adapter or run the guard in its path; LitServe's
OpenAISpec runs the model in worker processes of its own, where the swap, the guard and the logging would have to
be threaded through its worker loop. The API surface alignd needs is small (daemon/serve_api.py), and served here
like the guard and the review page (uvicorn, the same head-timeout protocol and security headers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from daemon.guard import DecisionWriter, Guard, GuardAnswer, GuardRequest, decision_event
from daemon.http_protocol import GRACE_SECONDS, ServerStartError, hardened_server, listening_socket, serve_in_thread
from daemon.serve_api import ApiError, ChatRequest, model_json, parse_chat_request
from daemon.serve_exchange import REQUESTS, Exchange, hand, json_response
from daemon.serve_log import ExchangeLog, feedback_envelope
from daemon.serve_model import BASE, Generation, ModelHost, QueueFullError
from events.errors import EventValidationError
from events.guard_rules import GuardRuleFold
from events.model import user_prompt

if TYPE_CHECKING:
    from daemon.settings import GuardSettings, ServeSettings

logger = logging.getLogger(__name__)

_GRACE_SECONDS = GRACE_SECONDS
_RAW_HEADERS = [(b"X-Content-Type-Options", b"nosniff"), (b"Cache-Control", b"no-store")]
_KNOWN_IDS = 100_000  # completion ids remembered for feedback (older ones are looked up in the store)
_FEEDBACK_FIELDS = {"request_id", "kind", "value", "user", "comment", "idempotency_key"}

_REFUSED = Counter("alignd_serve_refused", "serve requests refused", ["status"])
_VERSION = Gauge("alignd_serve_version", "the policy version served (0: the base model)")
_SWAP = Gauge("alignd_serve_swap_first_answer_seconds", "alias move to the first answer by the new version")


class _Swap:
    """A version switched to, waiting for its first answer (to measure the swap's end-to-end time)."""

    def __init__(self, version: str, moved_at: datetime | None) -> None:
        self.version, self.moved_at = version, moved_at


class ServeServer:
    """The API, the guard in its path, the model host and the exchange log; ``start()`` returns the bound port."""

    def __init__(
        self,
        settings: ServeSettings,
        host: ModelHost,
        log: ExchangeLog,
        *,
        store: Any = None,
        guard_settings: GuardSettings | None = None,
    ) -> None:
        self.settings, self.model, self.log, self.store = settings, host, log, store
        self.host, self.port = settings.host, settings.port
        self.guard: Guard | None = None
        self.fold: GuardRuleFold | None = None
        self.decisions: DecisionWriter | None = None
        self.refresh_s = 1.0
        if settings.guard and guard_settings is not None:
            self.guard = Guard(guard_settings.detectors, guard_settings.block_on)
            self.fold = GuardRuleFold(default_ttl_s=guard_settings.rule_ttl_s or None)
            self.decisions = DecisionWriter(store, queue_size=guard_settings.queue_size) if store is not None else None
            self.refresh_s = guard_settings.refresh_s
            self.holdback = settings.stream_holdback_chars if "pii" in guard_settings.detectors else 0
        else:
            self.holdback = 0
        self.known: OrderedDict[str, None] = OrderedDict()  # completion ids issued, newest last
        self.swap: _Swap | None = None
        self.created = int(time.time())
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def version(self) -> str:
        return self.model.version

    def switched(self, version: str, moved_at: datetime | None) -> None:
        """The model now serves ``version`` (after an alias move at ``moved_at``): time its first answer."""
        self.swap = _Swap(version, moved_at)
        self.created = int(time.time())
        _VERSION.set(0 if version == BASE else float(version) if version.isdigit() else -1)

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> int:
        sock = listening_socket(self.host, self.port, 2048)
        self.port = int(sock.getsockname()[1])
        self._stop.clear()
        if self.fold is not None and self.store is not None:
            self.fold.catch_up(self.store)  # the rules in force before the first request
            self._refresher = threading.Thread(target=self._refresh_loop, name="alignd-serve-rules", daemon=True)
            self._refresher.start()
        if self.decisions is not None:
            self.decisions.start()
        self.model.start()
        self.log.start()
        server = self._server = hardened_server(
            self.asgi_app(), _RAW_HEADERS, host=self.host, port=self.port, header_timeout=self.settings.header_timeout
        )
        try:
            self._thread = serve_in_thread(server, sock, "alignd-serve")
        except ServerStartError as exc:
            self._thread = exc.thread
            self.stop()
            raise RuntimeError(f"serve on {self.url} did not start (see the log)") from None
        logger.info("serving %s (v%s) on %s/v1/chat/completions", self.settings.served_name, self.version, self.url)
        return self.port

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=_GRACE_SECONDS + 10)
        self.model.stop()
        if self._refresher is not None:
            self._refresher.join(timeout=10)
        if self.decisions is not None:
            self.decisions.stop()
        self.log.stop()  # after the server: the last answers are sent
        self._server = self._thread = self._refresher = None

    def _refresh_loop(self) -> None:
        assert self.fold is not None
        failing = False
        while not self._stop.wait(self.refresh_s):
            try:
                self.fold.catch_up(self.store)
                failing = False
            except Exception:  # noqa: BLE001 - the rules in hand keep serving while the store is away
                if not failing:
                    logger.warning("serve: cannot read new guard rules; serving the ones in hand", exc_info=True)
                failing = True

    # --- routing ---------------------------------------------------------------------------------------------

    def asgi_app(self) -> Starlette:
        methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
        return Starlette(routes=[Route("/{path:path}", self._endpoint, methods=methods)])

    async def _endpoint(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except ApiError as exc:
            _REFUSED.labels(str(exc.status)).inc()
            headers = {"Connection": "close"} if exc.status in (408, 413) else {}
            return json_response(exc.to_json(), exc.status, headers)

    async def _route(self, request: Request) -> Response:
        path, method = request.scope["path"], request.method
        if path == "/healthz" and method in ("GET", "HEAD"):
            return Response(b"ok\n", media_type="text/plain")
        if path == "/metrics" and method in ("GET", "HEAD"):
            return Response(generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
        routes = {"/v1/chat/completions": "POST", "/v1/models": "GET", "/v1/feedback": "POST"}
        if path.startswith("/v1/models/") and method == "GET":
            self._authorise(request)
            return self._model_card(path.removeprefix("/v1/models/"))
        if path not in routes:
            raise ApiError(404, f"no such path {path}; alignd serve answers {', '.join(routes)}", code="not_found")
        if method != routes[path]:
            raise ApiError(405, f"use {routes[path]} on {path}", code="method_not_allowed")
        self._authorise(request)
        if path == "/v1/models":
            card = model_json(self.settings.served_name, self.created, self.version)
            return json_response({"object": "list", "data": [card]})
        body = await self._body(request)
        if path == "/v1/feedback":
            return await self._feedback(body)
        return await self._chat(request, body)

    def _authorise(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {key.get_secret_value()}".encode()):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key")

    def _model_card(self, model_id: str) -> Response:
        if model_id != self.settings.served_name:
            raise ApiError(404, _no_model(model_id, self.settings.served_name), code="model_not_found", param="model")
        return json_response(model_json(model_id, self.created, self.version))

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and int(length) > limit:  # h11 lets only digits through
            raise ApiError(413, f"the request body is over {limit} bytes (serve.max_body_bytes)", code="too_large")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.settings.header_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:  # chunked: no Content-Length to refuse it by
                        raise ApiError(413, f"the request body is over {limit} bytes (serve.max_body_bytes)")
                    chunks.append(chunk)
        except TimeoutError:
            raise ApiError(408, "the request body did not arrive in time", code="timeout") from None
        except ClientDisconnect:
            raise ApiError(400, "the client went away before sending the body") from None
        return b"".join(chunks)

    # --- the guard -------------------------------------------------------------------------------------------

    def _check(self, guard_request: GuardRequest) -> GuardAnswer | None:
        if self.guard is None or self.fold is None:
            return None
        now = datetime.now(UTC)
        answer = self.guard.check(guard_request, self.fold.index, now)
        if answer.decision != "allow" and self.decisions is not None:
            self.decisions.submit(
                decision_event(guard_request, answer, f"serve@{socket.gethostname()}:{self.port}", now)
            )
        return answer

    def _guard_prompt(self, chat: ChatRequest, completion_id: str) -> tuple[list[dict[str, str]], GuardAnswer | None]:
        """The messages the model gets (PII redacted), and the guard's answer; a block raises its 400."""
        messages = [dict(m) for m in chat.messages]
        prompt = user_prompt({"messages": messages})
        answer = self._check(
            GuardRequest(
                prompt=prompt,
                user_id=chat.user,
                request_id=completion_id,
                model=f"{self.settings.served_name}@{self.version}",
            )
        )
        if answer is None or answer.decision in ("allow", "flag"):
            return messages, answer
        if answer.decision == "block":
            REQUESTS.labels("prompt_blocked").inc()
            raise ApiError(
                400,
                f"the prompt was blocked by alignd's guard: {'; '.join(answer.reasons)}",
                code="content_filter",
                param="messages",
            )
        from daemon.guard import redact  # decision "redact": every user/system turn as the model will read it

        for message in messages:
            message["content"] = redact(message["content"])[0]
        return messages, answer

    def guard_response(self, text: str, chat: ChatRequest, completion_id: str, version: str) -> GuardAnswer | None:
        # Rules match users and prompts, checked with the prompt; the answer is checked by the detectors.
        return self._check(
            GuardRequest(response=text, request_id=completion_id, model=f"{self.settings.served_name}@{version}")
        )

    # --- chat completions ------------------------------------------------------------------------------------

    async def _chat(self, request: Request, body: bytes) -> Response:
        started = time.monotonic()
        chat = parse_chat_request(
            body, default_max_tokens=self.settings.max_tokens, max_tokens_limit=self.settings.max_tokens_limit
        )
        if chat.model != self.settings.served_name:
            raise ApiError(404, _no_model(chat.model, self.settings.served_name), code="model_not_found", param="model")
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        messages, prompt_answer = self._guard_prompt(chat, completion_id)
        prompt_ids = self.model.prompt_ids(messages)
        if len(prompt_ids) + chat.max_tokens > self.model.context_length:
            raise ApiError(
                400,
                f"the prompt is {len(prompt_ids)} tokens and max_tokens {chat.max_tokens}: over the model's context of "
                f"{self.model.context_length} tokens; shorten the messages or lower max_tokens",
                code="context_length_exceeded",
                param="messages",
            )
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        job = Generation(
            prompt_ids,
            chat.max_tokens,
            temperature=chat.temperature,
            top_p=chat.top_p,
            seed=chat.seed,
            on_text=lambda text: hand(loop, pieces, text),
            on_done=lambda _job: hand(loop, pieces, None),
        )
        try:
            self.model.submit(job)
        except QueueFullError as exc:
            raise ApiError(503, f"alignd serve is overloaded: {exc}; retry later", type="server_error") from None
        self._remember(completion_id)
        context = Exchange(self, chat, completion_id, messages, prompt_answer, job, len(prompt_ids), started)
        if chat.stream:
            return StreamingResponse(
                context.stream(pieces),
                media_type="text/event-stream",
                headers={"X-Alignd-Request-Id": completion_id},
            )
        return await context.whole(pieces)

    def _remember(self, completion_id: str) -> None:
        self.known[completion_id] = None
        while len(self.known) > _KNOWN_IDS:
            self.known.popitem(last=False)

    def answered(self, version: str) -> None:
        """A request answered by ``version``: the first after a swap ends the swap's measurement."""
        swap = self.swap
        if swap is None or swap.version != version:
            return
        self.swap = None
        if swap.moved_at is not None:
            seconds = (datetime.now(UTC) - swap.moved_at).total_seconds()
            _SWAP.set(seconds)
            logger.info("serve: first answer by v%s %.2f s after the alias moved", version, seconds)

    # --- feedback ------------------------------------------------------------------------------------------

    async def _feedback(self, body: bytes) -> Response:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ApiError(400, f"the body is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object with request_id, kind and value")
        unknown = sorted(set(data) - _FEEDBACK_FIELDS)
        if unknown:
            raise ApiError(400, f"unknown field {', '.join(unknown)}; fields: {', '.join(sorted(_FEEDBACK_FIELDS))}")
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise ApiError(400, "request_id is required: the id of the chat completion (its `id`)", param="request_id")
        for name in ("kind", "user", "comment", "idempotency_key"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise ApiError(400, f"{name} must be a string", param=name)
        if "value" not in data:
            raise ApiError(400, "value is required (docs/event-contract.md gives each kind's)", param="value")
        try:
            envelope = feedback_envelope(
                request_id,
                str(data.get("kind")),
                data["value"],
                user=data.get("user"),
                comment=data.get("comment"),
                idempotency_key=data.get("idempotency_key"),
            )
            from daemon.serve_log import encode_checked

            encode_checked(envelope, self.log.max_bytes)
        except EventValidationError as exc:
            raise ApiError(400, f"not valid feedback: {exc.reason}") from None
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"not valid feedback: {exc}") from None
        if not await self._known(request_id):
            raise ApiError(
                404,
                f"no completion {request_id!r}: give the `id` of a chat completion this service answered",
                code="unknown_request_id",
                param="request_id",
            )
        if not self.log.offer(envelope):
            raise ApiError(503, "the feedback buffer is full (Kafka is slow or away); retry later", type="server_error")
        return json_response(
            {"object": "feedback", "id": envelope["event_id"], "request_id": request_id, "status": "queued"}, 202
        )

    async def _known(self, request_id: str) -> bool:
        if request_id in self.known:
            return True
        if self.store is None:
            return False
        found = await anyio.to_thread.run_sync(lambda: self.store.by_request_id(request_id))
        return bool(found)


def _no_model(asked: str, served: str) -> str:
    return f"The model `{asked}` does not exist or you do not have access to it; this server serves `{served}`"

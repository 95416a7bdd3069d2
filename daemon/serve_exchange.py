"""One chat completion in flight: its answer shaped as OpenAI's, guarded as it grows, and logged (docs/serve.md).

Kept apart from the server (daemon/serve.py): this is what happens to one answer between the model thread and the
client, non-streamed (:meth:`Exchange.whole`) or as server-sent events (:meth:`Exchange.stream`), and the
``interaction.logged`` it leaves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram
from starlette.responses import Response

from daemon.guard import GuardAnswer, GuardRequest, redact
from daemon.serve_api import SSE_DONE, ApiError, ChatRequest, chunk_json, completion_json, error_json, sse, usage_json
from daemon.serve_log import interaction_envelope
from daemon.serve_model import Generation
from events.errors import EventValidationError

if TYPE_CHECKING:
    from daemon.serve import ServeServer

logger = logging.getLogger(__name__)

REQUESTS = Counter("alignd_serve_requests", "chat completions answered", ["outcome"])
_TOKENS = Counter("alignd_serve_tokens", "tokens generated")
_LATENCY = Histogram(
    "alignd_serve_request_seconds",
    "chat completion latency, body read to last byte",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


class Exchange:
    """One chat completion in flight: its answer shaped, guarded and logged."""

    def __init__(
        self,
        server: ServeServer,
        chat: ChatRequest,
        completion_id: str,
        messages: list[dict[str, str]],
        prompt_answer: GuardAnswer | None,
        job: Generation,
        prompt_tokens: int,
        started: float,
    ) -> None:
        self.server, self.chat, self.id, self.messages = server, chat, completion_id, messages
        self.prompt_answer, self.job, self.prompt_tokens, self.started = prompt_answer, job, prompt_tokens, started
        self.created = int(time.time())
        self.name = server.settings.served_name

    def fingerprint(self) -> str:
        return f"{self.name}@{self.job.version or self.server.version}"

    async def _drain(self, pieces: asyncio.Queue[str | None]) -> None:
        while await pieces.get() is not None:
            pass

    async def whole(self, pieces: asyncio.Queue[str | None]) -> Response:
        try:
            await self._drain(pieces)
        except asyncio.CancelledError:
            self.job.cancelled.set()
            raise
        job = self.job
        if job.error is not None:
            REQUESTS.labels("error").inc()
            raise ApiError(500, f"generation failed: {job.error}", type="server_error")
        text, answer = job.text.strip(), None
        answer = self.server.guard_response(text, self.chat, self.id, job.version)
        content: str | None = text
        refusal, finish = None, job.finish_reason
        if answer is not None and answer.decision == "redact" and answer.redacted_response is not None:
            content = answer.redacted_response
        elif answer is not None and answer.decision == "block":
            content, refusal, finish = None, _withheld(answer), "content_filter"
        self._log(text, answer, finish)
        body = completion_json(
            self.id,
            self.created,
            self.name,
            self.fingerprint(),
            content=content,
            refusal=refusal,
            finish_reason=finish,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=job.completion_tokens,
        )
        return json_response(body, headers={"X-Alignd-Request-Id": self.id, "X-Alignd-Model-Version": job.version})

    async def stream(self, pieces: asyncio.Queue[str | None]) -> AsyncIterator[bytes]:
        """The answer as OpenAI streams it; the model stops when the client goes away (Starlette cancels us)."""
        server, job, holdback = self.server, self.job, self.server.holdback
        raw, sent, finish, answer = "", "", None, None
        first = True
        try:
            while True:
                piece = await pieces.get()
                if first:  # the version is known once the model thread has started the answer
                    first = False
                    yield sse(self._chunk({"role": "assistant", "content": ""}))
                if piece is None:
                    break
                raw += piece
                shown = raw.lstrip()
                if server.guard is not None:
                    answer = server.guard.check(GuardRequest(response=shown), _EMPTY_INDEX) if shown else None
                    if answer is not None and answer.decision == "block":
                        job.cancelled.set()  # stop generating what will not be sent
                        await self._drain(pieces)
                        break
                    if answer is not None and answer.redacted_response is not None:
                        shown = answer.redacted_response
                safe = max(len(shown) - holdback, 0)
                if safe > len(sent) and shown.startswith(sent):
                    yield sse(self._chunk({"content": shown[len(sent) : safe]}))
                    sent = shown[:safe]
            if job.error is not None:
                REQUESTS.labels("error").inc()
                yield sse(error_json(f"generation failed: {job.error}", "server_error"))
                yield SSE_DONE
                return
            text = raw.strip()
            answer = server.guard_response(text, self.chat, self.id, job.version)  # the whole answer, recorded
            finish = job.finish_reason
            if answer is not None and answer.decision == "block":
                finish = "content_filter"
                yield sse(self._chunk({"refusal": _withheld(answer)}))
            else:
                shown = answer.redacted_response if answer is not None and answer.redacted_response else text
                rest = shown[len(sent) :] if shown.startswith(sent) else ""
                if rest:
                    yield sse(self._chunk({"content": rest}))
            yield sse(self._chunk({}, finish))
            if self.chat.include_usage:
                usage = usage_json(self.prompt_tokens, job.completion_tokens)
                yield sse(chunk_json(self.id, self.created, self.name, self.fingerprint(), None, usage=usage))
            yield SSE_DONE
            self._log(text, answer, finish)
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away mid-stream: stop the model, log what it had said, let the cancellation go on.
            job.cancelled.set()
            if finish is None:
                self._log_when_done(raw)
            raise

    def _log_when_done(self, raw: str) -> None:
        def wait_and_log() -> None:
            deadline = time.monotonic() + 60
            while not self.job.finished and time.monotonic() < deadline:
                time.sleep(0.01)
            text = self.job.text.strip() or raw.strip()
            answer = self.server.guard_response(text, self.chat, self.id, self.job.version)
            self._log(text, answer, "client_disconnected")

        threading.Thread(target=wait_and_log, name="alignd-serve-disconnect", daemon=True).start()

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return chunk_json(self.id, self.created, self.name, self.fingerprint(), delta, finish)

    def _log(self, text: str, answer: GuardAnswer | None, finish: str) -> None:
        """The exchange as ``interaction.logged``: the prompt as the model read it, the answer it gave (PII
        redacted: the raw PII is never stored), the version that gave it."""
        job, server = self.job, self.server
        latency_ms = round((time.monotonic() - self.started) * 1000, 3)
        _LATENCY.observe(latency_ms / 1000)
        _TOKENS.inc(job.completion_tokens)
        REQUESTS.labels(finish).inc()
        server.answered(job.version)

        response = redact(text)[0] if server.guard is not None and "pii" in server.guard.detectors else text
        metadata: dict[str, Any] = {
            "usage": {
                "input_tokens": self.prompt_tokens,
                "output_tokens": job.completion_tokens,
                "total_tokens": self.prompt_tokens + job.completion_tokens,
            },
            "finish_reason": finish,
            "stream": self.chat.stream,
            "request": {"max_tokens": self.chat.max_tokens, "temperature": self.chat.temperature},
        }
        guarded = {
            name: {"decision": a.decision, "reasons": list(a.reasons), "rule_ids": list(a.rule_ids)}
            for name, a in (("prompt", self.prompt_answer), ("response", answer))
            if a is not None and a.decision != "allow"
        }
        if guarded:
            metadata["guard"] = guarded
        if self.chat.metadata:
            metadata["client"] = self.chat.metadata
        payload: dict[str, Any] = {
            "model": {"name": self.name, "version": job.version},
            "messages": self.messages,
            "response": response,
            "latency_ms": latency_ms,
            "metadata": metadata,
        }
        if self.chat.user:
            payload["user"] = self.chat.user
        try:
            server.log.offer(interaction_envelope(self.id, payload))
        except EventValidationError as exc:  # a bug of ours, not the caller's: say so loudly, keep serving
            logger.error("serve: interaction %s not logged, it breaks the event contract: %s", self.id, exc.reason)


class _NoRules:
    def match(self, **_kwargs: Any) -> list[Any]:
        return []


_EMPTY_INDEX: Any = _NoRules()


def hand(loop: asyncio.AbstractEventLoop, pieces: asyncio.Queue[str | None], item: str | None) -> None:
    """Pass a piece of the answer from the model thread to the request's event loop (gone at shutdown: dropped)."""
    try:
        loop.call_soon_threadsafe(pieces.put_nowait, item)
    except RuntimeError:  # the loop closed: the server stopped while this answer was being generated
        pass


def _withheld(answer: GuardAnswer) -> str:
    return f"The answer was withheld by alignd's guard: {'; '.join(answer.reasons)}"


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    return Response(data, status_code=status, media_type="application/json", headers=headers)

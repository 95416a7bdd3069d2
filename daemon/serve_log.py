"""The serve role's exchanges and feedback, to the inbound Kafka topics, off the request path (docs/serve.md).

What alignd.client promises applications, for the daemon's own producer: envelopes in the event contract
(checked here by the ingestor's own decoder, :func:`events.codec.decode_inbound`, so what is sent is what ingest
stores), event ids derived from the request id (feedback: also its kind, value and user) with the client's very
formula, so a retry is one event whichever of the two sent it; a bounded buffer the request only ``put_nowait``s
into; a sender thread that batches them to Kafka keyed by request id; drops counted
(``alignd_serve_events_dropped_total``) and logged, never silent.

Why not ``alignd.client`` itself: the daemon's distribution does not ship the ``alignd`` package (it is the
separate ``alignd-client`` distribution, docs/client.md), so an installed daemon could not import it; and the
daemon's producer must take every ``kafka:`` setting (SASL, TLS) through :class:`daemon.bootstrap.KafkaClients`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from events.codec import decode_inbound
from events.errors import EventValidationError
from events.names import FEEDBACK_RECEIVED, INTERACTION_LOGGED

logger = logging.getLogger(__name__)

SOURCE = "alignd.serve"
_SENT = Counter("alignd_serve_events_sent", "serve events (interactions, feedback) the broker took", ["type"])
_DROPPED = Counter("alignd_serve_events_dropped", "serve events not sent", ["reason"])


def _digest(*parts: Any) -> str:
    # alignd.client's formula (alignd/client.py _digest): the same exchange logged by either is one event.
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def interaction_envelope(request_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": f"interaction:{_digest(INTERACTION_LOGGED, request_id)}",
        "type": INTERACTION_LOGGED,
        "schema_version": 1,
        "occurred_at": _now(),
        "source": SOURCE,
        "payload": {"request_id": request_id, **payload},
    }


def feedback_envelope(
    request_id: str,
    kind: str,
    value: Any,
    *,
    user: str | None = None,
    comment: str | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {"request_id": request_id, "kind": kind, "value": value}
    if user is not None:
        payload["user"] = user
    if comment is not None:
        payload["comment"] = comment
    if idempotency_key is not None:
        identity: tuple[Any, ...] = (FEEDBACK_RECEIVED, request_id, kind, "key", idempotency_key)
    else:
        shown = {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value
        identity = (FEEDBACK_RECEIVED, request_id, kind, shown, user)
    return {
        "event_id": f"feedback:{kind}:{_digest(*identity)}",
        "type": FEEDBACK_RECEIVED,
        "schema_version": 1,
        "occurred_at": _now(),
        "source": SOURCE,
        "payload": payload,
    }


def encode_checked(envelope: dict[str, Any], max_bytes: int) -> bytes:
    """The envelope's bytes, validated as ingest will validate them.

    Raises:
        EventValidationError: the reason ingest would dead-letter it with.
    """
    raw = json.dumps(envelope, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    decode_inbound(raw, fallback_event_id=envelope["event_id"], max_bytes=max_bytes)
    return raw


class ExchangeLog:
    """A bounded buffer of envelopes and the thread that sends them."""

    def __init__(
        self,
        producer_factory: Callable[[], Any],
        *,
        interactions_topic: str,
        feedback_topic: str,
        max_buffer: int = 10_000,
        max_bytes: int = 1024 * 1024,
    ) -> None:
        self._factory = producer_factory
        self.topics = {INTERACTION_LOGGED: interactions_topic, FEEDBACK_RECEIVED: feedback_topic}
        self.max_bytes = max_bytes
        self._queue: queue.Queue[tuple[str, bytes, bytes]] = queue.Queue(maxsize=max_buffer)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Any = None
        self.dropped = 0
        self._last_warning = -1e9

    def offer(self, envelope: dict[str, Any]) -> bool:
        """Queue one envelope; False when it was dropped (counted and logged).

        Raises:
            EventValidationError: the envelope breaks the event contract (a caller's input: its 400).
        """
        raw = encode_checked(envelope, self.max_bytes)
        key = str(envelope["payload"]["request_id"]).encode("utf-8")
        try:
            self._queue.put_nowait((envelope["type"], key, raw))
        except queue.Full:
            self._drop("buffer_full", 1)
            return False
        return True

    def _drop(self, reason: str, count: int) -> None:
        _DROPPED.labels(reason).inc(count)
        self.dropped += count
        now = time.monotonic()
        if now - self._last_warning >= 10.0:  # one line at most every 10 s: the count says how many
            self._last_warning = now
            logger.warning("serve: %d event(s) not sent to Kafka (%s); %d so far", count, reason, self.dropped)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="alignd-serve-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is buffered (within ``timeout``), then close the producer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        left = self._queue.qsize()
        if left:
            self._drop("stopped", left)

    def _connect(self) -> Any:
        delay = 0.5
        while self._producer is None:
            try:
                self._producer = self._factory()
            except Exception as exc:  # noqa: BLE001 - brokers away at start: retried, events buffered meanwhile
                logger.warning("serve: cannot reach Kafka (%s); events are buffered, retrying in %.1f s", exc, delay)
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, 10.0)
        return self._producer

    def _run(self) -> None:
        producer = self._connect()
        if producer is None:
            return
        try:
            while True:
                try:
                    item = self._queue.get(timeout=0.05)
                except queue.Empty:
                    if self._stop.is_set():
                        break
                    continue
                batch = [item]
                while len(batch) < 500:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                for kind, key, raw in batch:
                    future = producer.send(self.topics[kind], key=key, value=raw)
                    future.add_callback(lambda _m, k=kind: _SENT.labels(k).inc())
                    future.add_errback(lambda exc: self._failed(exc))
                producer.flush(30)
        finally:
            try:
                producer.flush(10)
            finally:
                producer.close(timeout=10)
                self._producer = None

    def _failed(self, exc: BaseException) -> None:
        self._drop("broker_refused", 1)
        logger.warning("serve: the broker refused an event after the producer's retries: %s", exc)


__all__ = ["ExchangeLog", "EventValidationError", "feedback_envelope", "interaction_envelope", "encode_checked"]

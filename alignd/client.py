"""Log interactions and feedback to alignd's Kafka topics from an application, off the request path.

``log_interaction`` and ``log_feedback`` build a valid event envelope (docs/event-contract.md), put it in a bounded in-memory
buffer and return: they never wait for the broker. A background thread sends the buffer with kafka-python's
producer (batched, ``linger_ms``). When the buffer is full the event is dropped, counted and reported in a warning
(at most one every ``drop_warning_interval_s``), never silently; so is an event the broker refused after the
producer's retries. ``flush`` waits for what is buffered, ``close`` flushes and stops, ``stats`` tells the counts.

Event ids are derived from what identifies the event (the request id; for feedback also its kind, value and user,
or an ``idempotency_key``), so logging the same thing again, after a retry or a crash, is stored once.

This module imports nothing of alignd's daemon (docs/client.md): an application needs kafka-python and the standard
library. The envelopes it writes are checked against ``events.codec`` by tests/unit/test_client_envelopes.py.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger(__name__)

INTERACTION_LOGGED = "interaction.logged"
FEEDBACK_RECEIVED = "feedback.received"
FEEDBACK_KINDS = ("thumbs", "rating", "preference", "correction", "flag", "signal")
FLAG_CATEGORIES = ("toxic", "jailbreak", "hallucination", "pii", "other")
#: The implicit signals the event contract names (docs/event-contract.md) (any other non-empty name is accepted too).
SIGNALS = ("regenerated", "copied", "edited", "abandoned", "escalated_to_human", "dwell_time_ms")

_MAX_ID = 256  # request ids, users, sessions, names (the store's columns)


# --- envelopes (pure) ---------------------------------------------------------------------------------------


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def _text(value: Any, name: str, *, min_len: int = 0, max_len: int | None = None) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {type(value).__name__}")
    if len(value) < min_len or (max_len is not None and len(value) > max_len):
        limits = f"{min_len} to {max_len}" if max_len is not None else f"at least {min_len}"
        raise ValueError(f"{name}: expected {limits} characters, got {len(value)}")
    return value


def _number(value: Any, name: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return value


def _timestamp(moment: datetime | None) -> str:
    if moment is None:
        moment = datetime.now(UTC)
    elif moment.tzinfo is None:
        raise ValueError("occurred_at: give a timezone-aware datetime (e.g. datetime.now(UTC))")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def interaction_envelope(
    request_id: str,
    *,
    source: str,
    model: str,
    model_version: str,
    response: str,
    prompt: str | None = None,
    messages: Sequence[Mapping[str, str]] | None = None,
    latency_ms: float | None = None,
    user: str | None = None,
    session_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """The ``interaction.logged`` envelope; its id is derived from the request id alone.

    Raises:
        ValueError: an argument the event contract refuses (named).
    """
    payload: dict[str, Any] = {
        "request_id": _text(request_id, "request_id", min_len=1, max_len=_MAX_ID),
        "model": {
            "name": _text(model, "model", min_len=1, max_len=_MAX_ID),
            "version": _text(model_version, "model_version", min_len=1, max_len=128),
        },
    }
    if (prompt is None) == (messages is None):
        raise ValueError("give either prompt (a string) or messages (a list of {role, content}), not both")
    if prompt is not None:
        payload["prompt"] = _text(prompt, "prompt")
    else:
        assert messages is not None
        if not messages:
            raise ValueError("messages: give at least one {role, content}")
        listed = []
        for index, message in enumerate(messages):
            if not isinstance(message, Mapping) or set(message) != {"role", "content"}:
                raise ValueError(f"messages[{index}]: expected {{'role': str, 'content': str}}, got {message!r:.80}")
            listed.append(
                {
                    "role": _text(message["role"], f"messages[{index}].role", min_len=1),
                    "content": _text(message["content"], f"messages[{index}].content"),
                }
            )
        payload["messages"] = listed
    payload["response"] = _text(response, "response")
    if latency_ms is not None:
        if _number(latency_ms, "latency_ms") < 0:
            raise ValueError(f"latency_ms: expected a number >= 0, got {latency_ms!r}")
        payload["latency_ms"] = latency_ms
    if user is not None:
        payload["user"] = _text(user, "user", max_len=_MAX_ID)
    if session_id is not None:
        payload["session_id"] = _text(session_id, "session_id", max_len=_MAX_ID)
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise ValueError(f"metadata: expected a mapping, got {type(metadata).__name__}")
        payload["metadata"] = dict(metadata)
    return {
        "event_id": f"interaction:{_digest(INTERACTION_LOGGED, request_id)}",
        "type": INTERACTION_LOGGED,
        "schema_version": 1,
        "occurred_at": _timestamp(occurred_at),
        "source": _text(source, "source", min_len=1, max_len=_MAX_ID),
        "payload": payload,
    }


def _feedback_value(kind: str, value: Any) -> Any:
    """The value of one feedback kind, checked as docs/event-contract.md states it."""
    if kind == "thumbs":
        if value not in ("up", "down"):
            raise ValueError(f"thumbs: value must be 'up' or 'down', got {value!r}")
        return value
    if kind == "rating":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
            raise ValueError(f"rating: value must be an integer from 1 to 5, got {value!r}")
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{kind}: value must be an object, got {type(value).__name__}")
    fields = {
        "preference": ({"chosen", "rejected"}, set()),
        "correction": ({"response"}, set()),
        "flag": ({"category"}, {"note"}),
        "signal": ({"name"}, {"value"}),
    }[kind]
    missing, unknown = fields[0] - set(value), set(value) - fields[0] - fields[1]
    if missing or unknown:
        raise ValueError(
            f"{kind}: value needs {sorted(fields[0])}"
            + (f" and may have {sorted(fields[1])}" if fields[1] else "")
            + f"; got {sorted(value)}"
        )
    checked = {k: v for k, v in value.items() if v is not None}
    if kind == "preference":
        _text(value["chosen"], "preference.chosen")
        _text(value["rejected"], "preference.rejected")
    elif kind == "correction":
        _text(value["response"], "correction.response")
    elif kind == "flag":
        if value["category"] not in FLAG_CATEGORIES:
            raise ValueError(f"flag: category must be one of {', '.join(FLAG_CATEGORIES)}, got {value['category']!r}")
        if checked.get("note") is not None:
            _text(checked["note"], "flag.note")
    else:
        _text(value["name"], "signal.name", min_len=1)
        if checked.get("value") is not None:
            _number(checked["value"], "signal.value")
    return checked


def feedback_envelope(
    request_id: str,
    kind: str,
    value: Any,
    *,
    source: str,
    user: str | None = None,
    comment: str | None = None,
    idempotency_key: str | None = None,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """The ``feedback.received`` envelope of one kind (docs/event-contract.md).

    Its id is derived from the request id, the kind and ``idempotency_key`` when given, else the value and the
    user: the same feedback sent twice is one event; another user's, or a changed value, is another event.

    Raises:
        ValueError: an unknown kind, or a value the kind does not take (named).
    """
    if kind not in FEEDBACK_KINDS:
        raise ValueError(f"kind: {kind!r} is not a feedback kind; expected one of {', '.join(FEEDBACK_KINDS)}")
    checked = _feedback_value(kind, value)
    payload: dict[str, Any] = {
        "request_id": _text(request_id, "request_id", min_len=1, max_len=_MAX_ID),
        "kind": kind,
        "value": checked,
    }
    if user is not None:
        payload["user"] = _text(user, "user", max_len=_MAX_ID)
    if comment is not None:
        payload["comment"] = _text(comment, "comment")
    if idempotency_key is not None:
        identity: tuple[Any, ...] = (
            FEEDBACK_RECEIVED,
            request_id,
            kind,
            "key",
            _text(idempotency_key, "idempotency_key"),
        )
    else:
        identity = (FEEDBACK_RECEIVED, request_id, kind, checked, user)
    return {
        "event_id": f"feedback:{kind}:{_digest(*identity)}",
        "type": FEEDBACK_RECEIVED,
        "schema_version": 1,
        "occurred_at": _timestamp(occurred_at),
        "source": _text(source, "source", min_len=1, max_len=_MAX_ID),
        "payload": payload,
    }


def otel_request_id(span_or_trace_id: Any, span_id: int | str | None = None) -> str:
    """The request id alignd gives an OpenTelemetry LLM span it ingests: ``<32 hex trace id>:<16 hex span id>``.

    Feedback about an interaction that arrived as a span names it with this id. Takes an OpenTelemetry span (its
    ``get_span_context()``), a span context (``trace_id``, ``span_id``), or the two ids as integers or hex.
    """
    if span_id is None:
        context = span_or_trace_id
        if hasattr(context, "get_span_context"):
            context = context.get_span_context()
        trace_id, span_id = context.trace_id, context.span_id
    else:
        trace_id = span_or_trace_id
    trace = int(trace_id, 16) if isinstance(trace_id, str) else int(trace_id)
    span = int(span_id, 16) if isinstance(span_id, str) else int(span_id)
    if not 0 < trace < 1 << 128 or not 0 < span < 1 << 64:
        raise ValueError("not a valid trace id (16 bytes) and span id (8 bytes)")
    return f"{trace:032x}:{span:016x}"


# --- the client ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientStats:
    """Counts since the client was made. ``pending`` = buffered or in flight; the rest are final."""

    enqueued: int
    sent: int
    failed: int
    dropped: int
    pending: int


_STOP = object()


class AligndClient:
    """A non-blocking logger of interactions and feedback to alignd's Kafka topics.

    Args:
        bootstrap_servers: the Kafka brokers (``host:port``, or a list).
        source: the producing service's name (the envelope's ``source``).
        interactions_topic, feedback_topic: alignd's inbound topics.
        max_buffer: events held in memory, waiting for the broker; past it, new events are dropped and counted.
        linger_ms, batch_size: the producer's batching (kafka-python's settings of those names).
        drop_warning_interval_s: at most one warning about drops or failures per interval.
        producer_factory: builds the producer (default: ``kafka.KafkaProducer`` with these settings and
            ``**kafka``); called on the sender thread, retried while the brokers cannot be reached.
        close_at_exit: flush and close when the interpreter exits (``atexit``), if not closed before.
        **kafka: more ``KafkaProducer`` settings (security, SASL, compression...).
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        source: str,
        interactions_topic: str = "alignd.interactions",
        feedback_topic: str = "alignd.feedback",
        max_buffer: int = 10_000,
        linger_ms: int = 50,
        batch_size: int = 256 * 1024,
        drop_warning_interval_s: float = 10.0,
        producer_factory: Callable[[], Any] | None = None,
        close_at_exit: bool = True,
        **kafka: Any,
    ) -> None:
        self.source = _text(source, "source", min_len=1, max_len=_MAX_ID)
        self.interactions_topic = interactions_topic
        self.feedback_topic = feedback_topic
        self.drop_warning_interval_s = drop_warning_interval_s
        if producer_factory is None:
            settings = {"acks": "all", "linger_ms": linger_ms, "batch_size": batch_size, **kafka}

            def producer_factory() -> Any:
                from kafka import KafkaProducer

                return KafkaProducer(bootstrap_servers=bootstrap_servers, **settings)

        self._factory = producer_factory
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_buffer)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._enqueued = self._sent = self._failed = self._dropped = 0
        self._abandoned = 0  # queued, then counted as dropped because the client closed before sending them
        self._unreported_drops = self._unreported_failures = 0
        self._last_warning = self._last_unreachable = -math.inf
        self._last_error = ""
        self._closed = False
        self._stopping = threading.Event()
        self._flush_wanted = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alignd-client-sender", daemon=True)
        self._thread.start()
        self._at_exit = close_at_exit
        if close_at_exit:
            atexit.register(self.close, 5.0)

    # --- the caller's side: never blocks -----------------------------------------------------------------

    def log_interaction(self, request_id: str, **fields: Any) -> bool:
        """Queue an ``interaction.logged`` (fields as :func:`interaction_envelope`: ``model``, ``model_version``,
        ``response``, ``prompt`` or ``messages``, optional ``latency_ms``, ``user``, ``session_id``, ``metadata``,
        ``occurred_at``).

        Returns:
            True if queued; False if dropped (buffer full, or the client is closed), which is counted.

        Raises:
            ValueError: an argument the event contract refuses (a bug in the caller, reported at once).
        """
        envelope = interaction_envelope(request_id, source=self.source, **fields)
        return self._offer(self.interactions_topic, request_id, envelope)

    def log_feedback(self, request_id: str, kind: str, value: Any, **fields: Any) -> bool:
        """Queue a ``feedback.received`` of any kind (``user``, ``comment``, ``idempotency_key``, ``occurred_at``
        optional). Returns and raises as :meth:`log_interaction`."""
        envelope = feedback_envelope(request_id, kind, value, source=self.source, **fields)
        return self._offer(self.feedback_topic, request_id, envelope)

    def thumbs(self, request_id: str, up: bool, **fields: Any) -> bool:
        return self.log_feedback(request_id, "thumbs", "up" if up else "down", **fields)

    def rating(self, request_id: str, stars: int, **fields: Any) -> bool:
        return self.log_feedback(request_id, "rating", stars, **fields)

    def preference(self, request_id: str, chosen: str, rejected: str, **fields: Any) -> bool:
        return self.log_feedback(request_id, "preference", {"chosen": chosen, "rejected": rejected}, **fields)

    def correction(self, request_id: str, response: str, **fields: Any) -> bool:
        return self.log_feedback(request_id, "correction", {"response": response}, **fields)

    def flag(self, request_id: str, category: str, note: str | None = None, **fields: Any) -> bool:
        return self.log_feedback(request_id, "flag", {"category": category, "note": note}, **fields)

    def signal(self, request_id: str, name: str, value: float | None = None, **fields: Any) -> bool:
        """An implicit signal: ``regenerated``, ``copied``, ``edited``, ``abandoned``, ``escalated_to_human``,
        ``dwell_time_ms`` (with a value), or a name of your own."""
        return self.log_feedback(request_id, "signal", {"name": name, "value": value}, **fields)

    def _offer(self, topic: str, request_id: str, envelope: dict[str, Any]) -> bool:
        value = json.dumps(envelope, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        if not self._closed:
            try:
                self._queue.put_nowait((topic, request_id.encode("utf-8"), value))
            except queue.Full:
                pass
            else:
                with self._lock:
                    self._enqueued += 1
                return True
        with self._lock:
            self._dropped += 1
            self._unreported_drops += 1
        self._maybe_warn()
        return False

    # --- flush, close, stats ---------------------------------------------------------------------------------

    def stats(self) -> ClientStats:
        with self._lock:
            return ClientStats(self._enqueued, self._sent, self._failed, self._dropped, self._unsettled())

    def _unsettled(self) -> int:
        """Queued events neither sent nor failed yet, nor given up at close (call with the lock held)."""
        return max(self._enqueued - self._sent - self._failed - self._abandoned, 0)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event is sent or has failed; True if so within ``timeout`` seconds."""
        self._flush_wanted.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._settled:
            while self._unsettled() > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._settled.wait(0.05 if left is None else min(left, 0.05))
        return True

    def close(self, timeout: float | None = 10.0) -> None:
        """Flush (up to ``timeout``), stop the sender and close the producer. What is still buffered then is
        counted as dropped and reported. Idempotent; ``log_*`` after it drop and count."""
        if self._closed:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        self.flush(timeout)
        self._closed = True
        self._stopping.set()
        self._thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.1))
        left = 0
        while True:
            try:
                self._queue.get_nowait()
                left += 1
            except queue.Empty:
                break
        with self._lock:
            unsettled = self._unsettled()
            self._abandoned += unsettled
            self._dropped += unsettled
        self._last_warning = -math.inf  # what was not reported yet is, now
        self._maybe_warn()
        if unsettled:
            logger.warning(
                "alignd client closed with %d events not sent (%d still buffered); they are counted as dropped",
                unsettled,
                left,
            )
        if self._at_exit:
            atexit.unregister(self.close)

    def __enter__(self) -> AligndClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- the sender thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        producer = None
        delay = 0.5
        while not self._stopping.is_set():
            if producer is None:
                try:
                    producer = self._factory()
                except Exception as exc:  # noqa: BLE001 - brokers unreachable: retried; meanwhile the buffer fills
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    self._warn_unreachable(exc)
                    self._maybe_warn()
                    self._stopping.wait(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                delay = 0.5
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                self._maybe_warn()  # drops that no later log_* call reported yet
                if self._flush_wanted.is_set():
                    self._flush_wanted.clear()
                    self._flush_producer(producer)
                continue
            batch = [item]
            while len(batch) < 1000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for topic, key, value in batch:
                self._send(producer, topic, key, value)
            if self._flush_wanted.is_set() and self._queue.empty():
                self._flush_wanted.clear()
                self._flush_producer(producer)
        if producer is not None:
            self._flush_producer(producer)
            try:
                producer.close(timeout=5)
            except Exception as exc:  # noqa: BLE001 - closing: nothing left to do but say so
                logger.warning("alignd client: closing the Kafka producer failed: %s", exc)

    def _send(self, producer: Any, topic: str, key: bytes, value: bytes) -> None:
        try:
            future = producer.send(topic, key=key, value=value)
        except Exception as exc:  # noqa: BLE001 - counted as failed and reported
            self._on_failed(exc)
            return
        future.add_callback(self._on_sent)
        future.add_errback(self._on_failed)

    def _flush_producer(self, producer: Any) -> None:
        try:
            producer.flush(timeout=30)
        except Exception as exc:  # noqa: BLE001 - the events' own errbacks count them
            logger.debug("alignd client: flush did not finish: %s", exc)

    def _on_sent(self, _metadata: Any) -> None:
        with self._settled:
            self._sent += 1
            self._settled.notify_all()

    def _on_failed(self, exc: BaseException) -> None:
        with self._settled:
            self._failed += 1
            self._unreported_failures += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._settled.notify_all()
        self._maybe_warn()

    # --- reports -------------------------------------------------------------------------------------------

    def _maybe_warn(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last_warning < self.drop_warning_interval_s:
                return
            drops, failures = self._unreported_drops, self._unreported_failures
            if not drops and not failures:
                return
            self._last_warning = now
            self._unreported_drops = self._unreported_failures = 0
            totals = (self._dropped, self._failed)
            error = self._last_error
        logger.warning(
            "alignd client: %d events dropped (buffer of %d full, or client closed) and %d failed to send since the "
            "last report (%d dropped, %d failed in all; last error: %s). The brokers may be unreachable, or events "
            "are logged faster than they can be sent",
            drops,
            self._queue.maxsize,
            failures,
            *totals,
            error or "none",
        )

    def _warn_unreachable(self, exc: Exception) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last_unreachable < self.drop_warning_interval_s:
                return
            self._last_unreachable = now
        logger.warning("alignd client: cannot reach the Kafka brokers yet (%s: %s); retrying", type(exc).__name__, exc)

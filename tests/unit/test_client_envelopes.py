"""The client's envelopes meet the event contract (checked by events.codec: the schema is shared through this test,
not an import, docs/client.md), their ids are stable, and the client package imports nothing of the daemon."""

from __future__ import annotations

import ast
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alignd.client import (
    FEEDBACK_KINDS,
    SIGNALS,
    AligndClient,
    feedback_envelope,
    interaction_envelope,
    otel_request_id,
)
from events.codec import decode_inbound

REPO = Path(__file__).resolve().parents[2]

EVERY_FEEDBACK = [
    ("thumbs", "up"),
    ("thumbs", "down"),
    ("rating", 1),
    ("rating", 5),
    ("preference", {"chosen": "A", "rejected": "B"}),
    ("correction", {"response": "The right answer."}),
    ("flag", {"category": "toxic"}),
    ("flag", {"category": "pii", "note": "an email address"}),
    *[("signal", {"name": name}) for name in SIGNALS if name != "dwell_time_ms"],
    ("signal", {"name": "dwell_time_ms", "value": 5400}),
    ("signal", {"name": "scrolled", "value": 0.75}),
]


def _stored(envelope: dict[str, Any]):
    return decode_inbound(json.dumps(envelope).encode(), fallback_event_id="unused")


def test_every_feedback_kind_and_signal_is_a_valid_event() -> None:
    assert {kind for kind, _ in EVERY_FEEDBACK} == set(FEEDBACK_KINDS)
    for kind, value in EVERY_FEEDBACK:
        envelope = feedback_envelope("req-1", kind, value, source="chat-ui", user="u-1", comment="thanks")
        event = _stored(envelope)
        assert event.type == "feedback.received" and event.event_id == envelope["event_id"]
        assert event.payload == {
            "request_id": "req-1",
            "kind": kind,
            "value": value,
            "user": "u-1",
            "comment": "thanks",
        }


def test_interactions_with_a_prompt_or_messages_are_valid_events() -> None:
    at = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    for text in (
        {"prompt": "Hi?"},
        {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}]},
    ):
        envelope = interaction_envelope(
            "req-2",
            source="chat-api",
            model="assistant",
            model_version="3",
            response="Hello!",
            latency_ms=120.5,
            user="u-2",
            session_id="s-2",
            metadata={"route": "/chat", "tokens": {"in": 3}},
            occurred_at=at,
            **text,
        )
        event = _stored(envelope)
        assert event.occurred_at == at and event.source == "chat-api"
        assert event.payload == {
            "request_id": "req-2",
            "model": {"name": "assistant", "version": "3"},
            **text,
            "response": "Hello!",
            "latency_ms": 120.5,
            "user": "u-2",
            "session_id": "s-2",
            "metadata": {"route": "/chat", "tokens": {"in": 3}},
        }


def test_event_ids_are_stable_so_a_retry_is_a_duplicate() -> None:
    later = datetime.now(UTC) + timedelta(seconds=5)
    first = interaction_envelope("r", source="a", model="m", model_version="1", response="x", prompt="p")
    again = interaction_envelope(
        "r", source="a", model="m", model_version="1", response="x", prompt="p", occurred_at=later
    )
    assert first["event_id"] == again["event_id"] and len(first["event_id"]) <= 128
    assert (
        first["event_id"]
        != interaction_envelope("r2", source="a", model="m", model_version="1", response="x", prompt="p")["event_id"]
    )

    def fid(*args: Any, **kwargs: Any) -> str:
        return feedback_envelope(*args, source="ui", **kwargs)["event_id"]

    assert fid("r", "thumbs", "up", user="u") == fid("r", "thumbs", "up", user="u", occurred_at=later)
    assert fid("r", "thumbs", "up", user="u") != fid("r", "thumbs", "down", user="u")  # a changed vote
    assert fid("r", "thumbs", "up", user="u") != fid("r", "thumbs", "up", user="v")  # another user
    assert fid("r", "signal", {"name": "copied"}) == fid("r", "signal", {"name": "copied", "value": None})
    assert fid("r", "signal", {"name": "copied"}, idempotency_key="click-1") != fid(
        "r", "signal", {"name": "copied"}, idempotency_key="click-2"
    )


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("like", "up", "not a feedback kind"),
        ("thumbs", True, "'up' or 'down'"),
        ("rating", 6, "1 to 5"),
        ("rating", True, "1 to 5"),
        ("preference", {"chosen": "a"}, "needs ['chosen', 'rejected']"),
        ("correction", {"response": 3}, "correction.response: expected a string"),
        ("flag", {"category": "rude"}, "category must be one of"),
        ("signal", {"name": ""}, "signal.name"),
        ("signal", {"name": "dwell", "value": float("nan")}, "finite number"),
        ("signal", {"name": "copied", "extra": 1}, "may have ['value']"),
    ],
)
def test_feedback_the_contract_refuses_is_refused_at_the_call(kind: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        feedback_envelope("r", kind, value, source="ui")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": "p", "messages": [{"role": "user", "content": "p"}]}, "not both"),
        ({}, "either prompt"),
        ({"messages": []}, "at least one"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\]"),
        ({"prompt": "p", "latency_ms": -1}, "latency_ms"),
        ({"prompt": "p", "occurred_at": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"prompt": "p", "request_id": "r" * 257}, "request_id"),
    ],
)
def test_interactions_the_contract_refuses_are_refused_at_the_call(fields: dict[str, Any], message: str) -> None:
    arguments = {"request_id": "r", "source": "a", "model": "m", "model_version": "1", "response": "x", **fields}
    with pytest.raises(ValueError, match=message):
        interaction_envelope(**arguments)


def test_otel_request_id_takes_spans_contexts_ints_and_hex() -> None:
    class Context:
        trace_id, span_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7

    class Span:
        def get_span_context(self) -> Context:
            return Context()

    expected = "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7"
    assert otel_request_id(Span()) == otel_request_id(Context()) == expected
    assert (
        otel_request_id(Context.trace_id, Context.span_id) == otel_request_id(expected[:32], expected[33:]) == expected
    )
    with pytest.raises(ValueError):
        otel_request_id(0, 1)


class FakeProducer:
    """Records what is sent; its futures succeed (or fail, for topics named in ``failing``) on the next flush."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.failing = failing
        self.closed = False
        self._futures: list[Any] = []

    class _Future:
        def __init__(self) -> None:
            self.callbacks: list[Any] = []
            self.errbacks: list[Any] = []

        def add_callback(self, fn: Any) -> FakeProducer._Future:
            self.callbacks.append(fn)
            return self

        def add_errback(self, fn: Any) -> FakeProducer._Future:
            self.errbacks.append(fn)
            return self

    def send(self, topic: str, key: bytes, value: bytes) -> Any:
        self.sent.append((topic, key, value))
        future = self._Future()
        self._futures.append((topic, future))
        return future

    def flush(self, timeout: float | None = None) -> None:
        futures, self._futures = self._futures, []
        for topic, future in futures:
            for fn in future.errbacks if topic in self.failing else future.callbacks:
                fn(RuntimeError("refused") if topic in self.failing else None)

    def close(self, timeout: float | None = None) -> None:
        self.flush()
        self.closed = True


def test_client_sends_counts_and_flushes_with_a_producer_it_is_given() -> None:
    producer = FakeProducer(failing=("fb",))
    client = AligndClient(
        "unused:9092",
        source="app",
        interactions_topic="ix",
        feedback_topic="fb",
        producer_factory=lambda: producer,
        close_at_exit=False,
    )
    assert client.log_interaction("r1", model="m", model_version="1", prompt="p", response="x")
    assert client.thumbs("r1", up=True)
    assert client.flush(5)
    stats = client.stats()
    assert (stats.enqueued, stats.sent, stats.failed, stats.dropped, stats.pending) == (2, 1, 1, 0, 0)
    topic, key, value = producer.sent[0]
    assert topic == "ix" and key == b"r1" and json.loads(value)["payload"]["prompt"] == "p"
    client.close(5)
    assert producer.closed and not client.log_interaction("r2", model="m", model_version="1", prompt="p", response="x")
    assert client.stats().dropped == 1
    client.close(5)  # idempotent


def test_a_full_buffer_drops_counts_and_warns_without_blocking(caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()

    def never_connects() -> Any:
        gate.wait(30)
        raise ConnectionError("no brokers")

    client = AligndClient(
        "unused:9092", source="app", max_buffer=10, producer_factory=never_connects, close_at_exit=False
    )
    took = []
    with caplog.at_level("WARNING", logger="alignd.client"):
        for i in range(100):
            start = time.perf_counter()
            client.signal(f"r{i}", "copied")
            took.append(time.perf_counter() - start)
    stats = client.stats()
    assert (stats.enqueued, stats.dropped, stats.pending) == (10, 90, 10)
    assert sorted(took)[50] < 0.001, f"median {sorted(took)[50] * 1e6:.0f} µs"
    assert any("90 events dropped" in r.getMessage() or "events dropped" in r.getMessage() for r in caplog.records)
    gate.set()
    start = time.monotonic()
    client.close(timeout=0.5)
    assert time.monotonic() - start < 5
    assert client.stats().dropped == 100 and client.stats().pending == 0


def test_client_module_imports_nothing_of_the_daemon() -> None:
    """docs/client.md: an application that logs interactions installs kafka-python, not torch."""
    allowed_roots = {
        "__future__",
        "atexit",
        "collections",
        "dataclasses",
        "datetime",
        "hashlib",
        "json",
        "logging",
        "math",
        "queue",
        "threading",
        "time",
        "typing",
        "kafka",
        "alignd",
    }
    for path in (REPO / "alignd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] in allowed_roots, f"{path.name} imports {name}"

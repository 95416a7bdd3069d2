"""OpenTelemetry-instrumented app -> the Collector's kafka exporter bytes -> a real broker -> ingest -> the store.

The spans are recorded by the real OpenTelemetry SDK and encoded by its OTLP encoder; the Kafka messages are
the bytes the Collector's kafka exporter writes for them in each encoding (tests/otlp_spans.py says how we
know). One message holds a batch of spans, as the exporter sends them.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from daemon.bootstrap import build_ingestor, open_store
from tests.helpers import consume_all, create_topics, interaction, produce, settings_for, unique_topics
from tests.otlp_spans import SpanKind, messages_json, otlp_json, otlp_proto, recorded

pytestmark = pytest.mark.integration


def _topics(bootstrap: str, partitions: int = 3) -> dict[str, str]:
    topics = unique_topics(bootstrap, partitions)
    topics["otlp"] = f"t-{uuid.uuid4().hex[:10]}.otlp_spans"
    create_topics(bootstrap, [topics["otlp"]], partitions)
    return topics


def _ingest(db_url: str, bootstrap: str, topics: dict[str, str], group: str | None = None, **extra: str):
    settings = settings_for(db_url, bootstrap, topics, group, ALIGND_TOPICS_OTLP_SPANS=topics["otlp"], **extra)
    store = open_store(settings)
    ingestor = build_ingestor(settings, store, project=False)
    try:
        stats = ingestor.run(until_idle=3.0)
    finally:
        ingestor.publisher.producer.close(5)
    return store, stats


def _skipped(reason: str) -> float:
    return REGISTRY.get_sample_value("alignd_ingest_otlp_spans_skipped_total", {"reason": reason}) or 0.0


def _app_trace(tracer: Any, user_question: str) -> None:
    """What an instrumented chat app records for one request: an HTTP server span, a retrieval step, an
    embeddings call, and two LLM calls in two conventions (GenAI v1.37 and OpenLLMetry)."""
    with tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER, attributes={"http.request.method": "POST"}):
        with tracer.start_as_current_span(
            "embeddings text-embedding-3-small",
            kind=SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "text-embedding-3-small"},
        ):
            pass
        with tracer.start_as_current_span("retrieve", attributes={"db.system.name": "postgresql"}):
            pass
        with tracer.start_as_current_span(
            "chat gpt-4o",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.response.id": "chatcmpl-1",
                "gen_ai.response.finish_reasons": ("stop",),
                "gen_ai.usage.input_tokens": 31,
                "gen_ai.usage.output_tokens": 12,
                "gen_ai.conversation.id": "conv-1",
                "user.id": "user-7",
                "gen_ai.input.messages": messages_json(
                    [{"role": "user", "parts": [{"type": "text", "content": user_question}]}]
                ),
                "gen_ai.output.messages": messages_json(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": f"Answer to: {user_question}"}],
                            "finish_reason": "stop",
                        }
                    ]
                ),
            },
        ):
            pass
        with tracer.start_as_current_span(
            "openai.chat",
            kind=SpanKind.CLIENT,
            attributes={
                "llm.request.type": "chat",
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": f"Summarise: {user_question}",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.content": "A summary.",
                "gen_ai.usage.prompt_tokens": 8,
                "gen_ai.usage.completion_tokens": 3,
            },
        ):
            pass


def _check_mapping(store: Any, spans: list[Any], question: str) -> None:
    """Field by field: each LLM span of the trace is one stored interaction with the span's values."""
    by_name = {span.name: span for span in spans}
    stored = {s.event.event_id: s for s in store.read(0, limit=1000)}
    for name, response, model, messages, usage in [
        (
            "chat gpt-4o",
            f"Answer to: {question}",
            {"name": "gpt-4o", "version": "gpt-4o-2024-08-06"},
            [{"role": "user", "content": question}],
            {"input_tokens": 31, "output_tokens": 12, "total_tokens": 43},
        ),
        (
            "openai.chat",
            "A summary.",
            {"name": "gpt-4o-mini", "version": "gpt-4o-mini"},
            [{"role": "user", "content": f"Summarise: {question}"}],
            {"input_tokens": 8, "output_tokens": 3, "total_tokens": 11},
        ),
    ]:
        span = by_name[name]
        trace_id, span_id = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"
        event = stored[f"otel:{trace_id}:{span_id}"].event
        assert event.type == "interaction.logged" and event.source == "chat-api"
        assert abs(event.occurred_at.timestamp() - span.start_time / 1e9) < 1e-5
        payload = event.payload
        assert payload["request_id"] == f"{trace_id}:{span_id}"
        assert payload["model"] == model and payload["messages"] == messages and payload["response"] == response
        assert payload["latency_ms"] == pytest.approx((span.end_time - span.start_time) / 1e6, abs=1e-3)
        assert payload["metadata"]["usage"] == usage and payload["metadata"]["provider"] == "openai"
        assert payload["metadata"]["otel"]["parent_span_id"] == f"{by_name['POST /chat'].context.span_id:016x}"
        if name == "chat gpt-4o":
            assert payload["user"] == "user-7" and payload["session_id"] == "conv-1"
            assert payload["metadata"]["response_id"] == "chatcmpl-1" and payload["metadata"]["finish_reasons"] == [
                "stop"
            ]


def test_sdk_spans_in_both_encodings_become_interactions_field_by_field(db_url: str, kafka_bootstrap: str) -> None:
    topics = _topics(kafka_bootstrap)
    with recorded() as (tracer, proto_spans):
        _app_trace(tracer, "How do I reset my password?")
    with recorded() as (tracer, json_spans):
        _app_trace(tracer, "What is the refund policy?")
    # the app's own interaction and feedback topics go on as before, beside the OTLP topic
    produce(kafka_bootstrap, topics["interactions"], [interaction("plain-1")])
    produce(kafka_bootstrap, topics["otlp"], [otlp_proto(proto_spans), otlp_json(json_spans)], keyed=False)
    not_llm = _skipped("not_llm")

    store, stats = _ingest(db_url, kafka_bootstrap, topics)
    assert stats.records == 3 and stats.appended == 5 and stats.dead_letters == 0
    assert stats.spans_skipped == 6  # per trace: the HTTP span, the retrieval, the embeddings call
    assert _skipped("not_llm") - not_llm == 6
    _check_mapping(store, proto_spans, "How do I reset my password?")
    _check_mapping(store, json_spans, "What is the refund policy?")
    assert store.count() == 5
    store.dispose()


def test_a_resent_batch_is_a_duplicate_whatever_its_encoding(db_url: str, kafka_bootstrap: str) -> None:
    topics = _topics(kafka_bootstrap)
    with recorded() as (tracer, spans):
        _app_trace(tracer, "Is it raining?")
    # the Collector retried after a timeout, and a second pipeline exports the same spans as JSON
    produce(kafka_bootstrap, topics["otlp"], [otlp_proto(spans), otlp_proto(spans), otlp_json(spans)], keyed=False)
    store, stats = _ingest(db_url, kafka_bootstrap, topics)
    assert stats.records == 3 and stats.appended == 2 and stats.duplicates == 4
    assert store.count() == 2
    store.dispose()


def test_malformed_otlp_is_dead_lettered_with_a_reason_and_ingestion_goes_on(db_url: str, kafka_bootstrap: str) -> None:
    topics = _topics(kafka_bootstrap, partitions=1)
    with recorded() as (tracer, good):
        _app_trace(tracer, "first")
    with recorded() as (tracer, later):
        _app_trace(tracer, "after the bad ones")
    with recorded() as (tracer, mixed):
        with tracer.start_as_current_span(
            "chat broken",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "m",
                "gen_ai.input.messages": "[{oops",
            },
        ):
            pass
        _app_trace(tracer, "beside a broken span")
    bad_hex = json.dumps(
        {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "not-hex", "spanId": "00f067aa0ba902b7"}]}]}]}
    ).encode()
    stream = [
        otlp_proto(good),
        b"\x0a\x07garbage",  # cut protobuf
        b"{truncated json",
        bad_hex,
        b"",
        otlp_proto(mixed),
        otlp_json(later),
    ]
    produce(kafka_bootstrap, topics["otlp"], stream, keyed=False)
    store, stats = _ingest(db_url, kafka_bootstrap, topics)

    assert stats.records == len(stream) and stats.dead_letters == 5
    assert store.count() == 6  # two per good trace, the broken span's neighbours included
    letters = store.list_dead_letters()
    expected = [
        ("otlp_invalid", "not OTLP protobuf"),
        ("otlp_invalid", "invalid JSON"),
        ("otlp_invalid", "traceId: 'not-hex' is not 32 hex digits"),
        ("empty", "no value"),
        ("otlp_span_invalid", "gen_ai.input.messages: not valid JSON"),
    ]
    assert [letter.dead_letter.error_kind for letter in letters] == [kind for kind, _ in expected]
    for letter, (_, reason) in zip(letters, expected, strict=True):
        assert reason in letter.dead_letter.reason, letter.dead_letter.reason
    assert [letter.dead_letter.value for letter in letters] == [stream[i] for i in (1, 2, 3, 4, 5)]
    broken = next(s for s in mixed if s.name == "chat broken").context
    assert letters[-1].dead_letter.event_id == f"otel:{broken.trace_id:032x}:{broken.span_id:016x}"
    assert all(letter.dead_letter.origin.topic == topics["otlp"] for letter in letters)
    dlq = consume_all(kafka_bootstrap, topics["dlq"], expected=len(letters))
    assert sorted(r.value for r in dlq) == sorted(letter.dead_letter.value for letter in letters)
    assert {dict(r.headers)["alignd-dlq-error-kind"] for r in dlq} == {b"otlp_invalid", b"empty", b"otlp_span_invalid"}
    store.dispose()

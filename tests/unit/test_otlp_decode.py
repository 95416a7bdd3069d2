"""OTLP spans -> interaction.logged: each convention's shape, the skips, the dead letters (no broker: the bytes are
the SDK's, as the Collector's kafka exporter writes them; tests/otlp_spans.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from alignd.client import otel_request_id
from consumers.decode import DECODER_ERROR
from consumers.otel_join import HeldSpan, JoinInput, OffsetsProbe, OtelJoin
from consumers.otlp import OTLP_INVALID, OTLP_SPAN_INVALID, decode_otlp_record, parse_request
from consumers.otlp_genai import FAILED_CALL, NO_CONTENT, NOT_LLM, TOOL_CALL_ONLY
from consumers.otlp_logs import NO_SPAN, NOT_GENAI, OTLP_LOG_INVALID, decode_otlp_logs_record
from events.codec import encode_event
from events.model import KafkaCoordinates
from events.otel_join import SPAN_PART, JoinPart
from tests.otlp_spans import (
    LogRecord,
    SpanKind,
    Status,
    StatusCode,
    emit_choice,
    emit_message,
    messages_json,
    otlp_json,
    otlp_json_logs,
    otlp_proto,
    otlp_proto_logs,
    recorded,
    recorded_with_logs,
)


@dataclass
class FakeRecord:
    value: bytes | None
    topic: str = "otlp_spans"
    partition: int = 0
    offset: int = 7
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def decode(raw: bytes | None, **kwargs: Any):
    return decode_otlp_record(FakeRecord(raw), **kwargs)


def one_span(name: str = "chat gpt-4o", attributes: dict[str, Any] | None = None, events=(), status=None, **resource):
    """The bytes (proto) of one span, and the span."""
    with recorded(**resource) as (tracer, spans):
        with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes or {}) as span:
            for event_name, event_attributes in events:
                span.add_event(event_name, event_attributes)
            if status is not None:
                span.set_status(status)
    return spans[0]


def mapped(span) -> dict[str, Any]:
    decoded = decode(otlp_proto([span]))
    assert decoded.letter is None, decoded.letter.reason
    assert len(decoded.events) == 1, decoded.skipped
    return dict(decoded.events[0].payload)


GENAI = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.response.id": "chatcmpl-123",
    "gen_ai.response.finish_reasons": ("stop",),
    "gen_ai.usage.input_tokens": 21,
    "gen_ai.usage.output_tokens": 9,
    "gen_ai.request.temperature": 0.2,
    "gen_ai.request.max_tokens": 256,
    "gen_ai.conversation.id": "conv-7",
    "user.id": "u-42",
}


def test_genai_v137_messages_as_json_strings_map_field_by_field() -> None:
    span = one_span(
        attributes={
            **GENAI,
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief."}]),
            "gen_ai.input.messages": messages_json(
                [
                    {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
                    {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "weather"}]},
                    {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "rainy"}]},
                ]
            ),
            "gen_ai.output.messages": messages_json(
                [{"role": "assistant", "parts": [{"type": "text", "content": "Rainy, 14°C."}], "finish_reason": "stop"}]
            ),
        }
    )
    decoded = decode(otlp_proto([span]))
    (event,) = decoded.events
    trace_id, span_id = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"
    assert event.event_id == f"otel:{trace_id}:{span_id}"
    assert event.type == "interaction.logged" and event.source == "chat-api"
    assert event.occurred_at.timestamp() == pytest.approx(span.start_time / 1e9, abs=1e-6)
    payload = dict(event.payload)
    assert payload["request_id"] == f"{trace_id}:{span_id}" == otel_request_id(span.context)
    assert payload["model"] == {"name": "gpt-4o", "version": "gpt-4o-2024-08-06"}
    assert payload["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": ""},
        {"role": "tool", "content": "rainy"},
    ]
    assert "prompt" not in payload
    assert payload["response"] == "Rainy, 14°C."
    assert payload["latency_ms"] == pytest.approx((span.end_time - span.start_time) / 1e6, abs=1e-3)
    assert payload["user"] == "u-42" and payload["session_id"] == "conv-7"
    meta = payload["metadata"]
    assert meta["provider"] == "openai" and meta["operation"] == "chat"
    assert meta["usage"] == {"input_tokens": 21, "output_tokens": 9, "total_tokens": 30}
    assert meta["finish_reasons"] == ["stop"] and meta["response_id"] == "chatcmpl-123"
    assert meta["request"] == {"temperature": 0.2, "max_tokens": 256}
    assert meta["otel"]["trace_id"] == trace_id and meta["otel"]["span_id"] == span_id
    assert meta["otel"]["input_shape"] == "gen_ai.input.messages"
    assert meta["otel"]["scope"] == "app.llm" and meta["otel"]["span_name"] == "chat gpt-4o"
    assert decoded.skipped == {} and decoded.spans == 1


def test_genai_structured_attribute_values_as_other_sdks_write_them() -> None:
    """gen_ai.input.messages as an OTLP array of kvlists ("SHOULD be recorded in structured form")."""
    span = one_span(attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"})
    request = ExportTraceServiceRequest.FromString(otlp_proto([span]))
    target = request.resource_spans[0].scope_spans[0].spans[0]

    def kv(**items: AnyValue) -> AnyValue:
        return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in items.items()]))

    def text_message(role: str, text: str) -> AnyValue:
        part = kv(type=AnyValue(string_value="text"), content=AnyValue(string_value=text))
        return kv(role=AnyValue(string_value=role), parts=AnyValue(array_value=ArrayValue(values=[part])))

    for key, message in (
        ("gen_ai.input.messages", text_message("user", "hi")),
        ("gen_ai.output.messages", text_message("assistant", "hello")),
    ):
        target.attributes.append(KeyValue(key=key, value=AnyValue(array_value=ArrayValue(values=[message]))))
    for raw in (request.SerializeToString(), otlp_json(request)):
        (event,) = decode(raw).events
        assert event.payload["messages"] == [{"role": "user", "content": "hi"}]
        assert event.payload["response"] == "hello"
        assert event.payload["model"] == {"name": "m", "version": "m"}


def test_openllmetry_indexed_prompt_and_completion_attributes() -> None:
    payload = mapped(
        one_span(
            "openai.chat",
            {
                "llm.request.type": "chat",
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.prompt.0.role": "system",
                "gen_ai.prompt.0.content": "You are terse.",
                "gen_ai.prompt.1.role": "user",
                "gen_ai.prompt.1.content": json.dumps([{"type": "text", "text": "Say hi"}]),
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.content": "Hi.",
                "gen_ai.completion.0.finish_reason": "stop",
                "gen_ai.usage.prompt_tokens": 11,
                "gen_ai.usage.completion_tokens": 2,
                "llm.usage.total_tokens": 13,
                "traceloop.association.properties.user_id": "u-1",
            },
        )
    )
    assert payload["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hi"},
    ]
    assert payload["response"] == "Hi." and payload["user"] == "u-1"
    assert payload["model"] == {"name": "gpt-4o-mini", "version": "gpt-4o-mini"}
    assert payload["metadata"]["usage"] == {"input_tokens": 11, "output_tokens": 2, "total_tokens": 13}
    assert payload["metadata"]["provider"] == "openai" and payload["metadata"]["finish_reasons"] == ["stop"]


def test_genai_message_span_events_with_event_content_as_azure_writes_them() -> None:
    payload = mapped(
        one_span(
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.system": "az.ai.inference",
                "gen_ai.request.model": "phi",
            },
            events=[
                ("gen_ai.system.message", {"gen_ai.event.content": json.dumps({"content": "Be kind."})}),
                ("gen_ai.user.message", {"gen_ai.event.content": json.dumps({"role": "user", "content": "Hello?"})}),
                (
                    "gen_ai.choice",
                    {
                        "gen_ai.event.content": json.dumps(
                            {"index": 0, "finish_reason": "stop", "message": {"content": "Hello!"}}
                        )
                    },
                ),
            ],
        )
    )
    assert payload["messages"] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello?"}]
    assert payload["response"] == "Hello!" and payload["metadata"]["finish_reasons"] == ["stop"]
    assert payload["metadata"]["otel"]["input_shape"] == "gen_ai.*.message events"


def test_genai_v126_prompt_and_completion_events() -> None:
    payload = mapped(
        one_span(
            attributes={"gen_ai.system": "openai", "gen_ai.request.model": "gpt-3.5-turbo"},
            events=[
                ("gen_ai.content.prompt", {"gen_ai.prompt": json.dumps([{"role": "user", "content": "2+2?"}])}),
                (
                    "gen_ai.content.completion",
                    {"gen_ai.completion": json.dumps([{"role": "assistant", "content": "4"}])},
                ),
            ],
        )
    )
    assert payload["messages"] == [{"role": "user", "content": "2+2?"}] and payload["response"] == "4"


def test_openinference_llm_span_messages_and_token_counts() -> None:
    payload = mapped(
        one_span(
            "ChatOpenAI",
            {
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-4o",
                "llm.provider": "openai",
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": "Capital of France?",
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.contents.0.message_content.type": "text",
                "llm.output_messages.0.message.contents.0.message_content.text": "Paris.",
                "llm.token_count.prompt": 5,
                "llm.token_count.completion": 2,
                "llm.token_count.total": 7,
                "session.id": "s-9",
                "user.id": "u-9",
                "input.value": "ignored: messages come first",
            },
        )
    )
    assert payload["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert payload["response"] == "Paris." and payload["session_id"] == "s-9" and payload["user"] == "u-9"
    assert payload["model"] == {"name": "gpt-4o", "version": "gpt-4o"}
    assert payload["metadata"]["usage"] == {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}


def test_openinference_input_and_output_values_are_the_last_resort() -> None:
    plain = mapped(
        one_span(
            attributes={
                "openinference.span.kind": "LLM",
                "llm.model_name": "m",
                "input.value": "Tell a joke",
                "output.value": "No.",
            }
        )
    )
    assert plain["prompt"] == "Tell a joke" and "messages" not in plain and plain["response"] == "No."
    as_json = mapped(
        one_span(
            attributes={
                "openinference.span.kind": "LLM",
                "input.mime_type": "application/json",
                "input.value": json.dumps({"messages": [{"role": "user", "content": "Hi"}], "model": "m"}),
                "output.value": "Hello",
            }
        )
    )
    assert as_json["messages"] == [{"role": "user", "content": "Hi"}]
    assert as_json["model"] == {"name": "unknown", "version": "unknown"}


def test_alignd_attributes_override_request_id_and_model() -> None:
    payload = mapped(
        one_span(
            attributes={
                **GENAI,
                "alignd.request_id": "req-123",
                "gen_ai.input.messages": messages_json([{"role": "user", "parts": [{"type": "text", "content": "q"}]}]),
                "gen_ai.output.messages": messages_json(
                    [{"role": "assistant", "parts": [{"type": "text", "content": "a"}]}]
                ),
            },
            **{"alignd.model.name": "assistant", "alignd.model.version": "7"},
        )
    )
    assert payload["request_id"] == "req-123"
    assert payload["model"] == {"name": "assistant", "version": "7"}


CONTENT = {
    "gen_ai.input.messages": messages_json([{"role": "user", "parts": [{"type": "text", "content": "q"}]}]),
    "gen_ai.output.messages": messages_json([{"role": "assistant", "parts": [{"type": "text", "content": "a"}]}]),
}


@pytest.mark.parametrize(
    ("attributes", "status", "reason"),
    [
        ({"http.request.method": "POST", "url.path": "/chat"}, None, NOT_LLM),
        ({"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "e5"}, None, NOT_LLM),
        ({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "weather"}, None, NOT_LLM),
        ({"gen_ai.operation.name": "invoke_agent", **CONTENT}, None, NOT_LLM),
        ({"openinference.span.kind": "CHAIN", "input.value": "q", "output.value": "a"}, None, NOT_LLM),
        ({"traceloop.span.kind": "workflow", "traceloop.entity.name": "joke"}, None, NOT_LLM),
        ({"llm.request.type": "embedding", "gen_ai.system": "openai"}, None, NOT_LLM),
        ({**GENAI}, None, NO_CONTENT),  # content capture off: the OpenTelemetry instrumentations' default
        ({**GENAI, "gen_ai.output.messages": CONTENT["gen_ai.output.messages"]}, None, NO_CONTENT),
        ({**GENAI, "error.type": "timeout"}, Status(StatusCode.ERROR, "timeout"), FAILED_CALL),
        (
            {
                **GENAI,
                "gen_ai.input.messages": CONTENT["gen_ai.input.messages"],
                "gen_ai.output.messages": messages_json(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "tool_call", "name": "weather"}],
                            "finish_reason": "tool_call",
                        }
                    ]
                ),
            },
            None,
            TOOL_CALL_ONLY,
        ),
    ],
)
def test_spans_that_are_not_llm_answers_are_skipped_and_counted(attributes, status, reason) -> None:
    decoded = decode(otlp_proto([one_span(attributes=attributes, status=status)]))
    assert decoded.events == () and decoded.letter is None
    assert decoded.skipped == {reason: 1}


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({**GENAI, **CONTENT, "gen_ai.input.messages": "[{not json"}, "gen_ai.input.messages: not valid JSON"),
        (
            {**GENAI, **CONTENT, "gen_ai.usage.input_tokens": "21"},
            "gen_ai.usage.input_tokens: expected a non-negative integer, got a string '21'",
        ),
        (
            {**GENAI, **CONTENT, "gen_ai.input.messages": messages_json([{"parts": []}])},
            "gen_ai.input.messages.0.role: expected a string",
        ),
        (
            {**GENAI, **CONTENT, "gen_ai.output.messages": json.dumps({"role": "assistant"})},
            "gen_ai.output.messages: expected a list of messages",
        ),
        (
            {
                **GENAI,
                **CONTENT,
                "gen_ai.input.messages": messages_json(
                    [{"role": "user", "parts": [{"type": "text", "content": "a\x00b"}]}]
                ),
            },
            "payload.messages.0.content",  # the codec's own words: no NUL in stored text
        ),
        ({**GENAI, **CONTENT, "alignd.request_id": "r" * 300}, "payload.request_id"),
    ],
)
def test_a_malformed_llm_span_is_a_dead_letter_naming_it_and_the_good_spans_are_kept(attributes, reason) -> None:
    with recorded() as (tracer, spans):
        with tracer.start_as_current_span("good", attributes={**GENAI, **CONTENT}):
            pass
        with tracer.start_as_current_span("bad", attributes=attributes):
            pass
    raw = otlp_proto(spans)
    decoded = decode(raw)
    assert [e.payload["response"] for e in decoded.events] == ["a"]
    letter = decoded.letter
    assert letter is not None and letter.error_kind == OTLP_SPAN_INVALID
    assert reason in letter.reason and "'bad'" in letter.reason and "1 of its 2 spans" in letter.reason
    bad = spans[1].context
    assert f"{bad.trace_id:032x}:{bad.span_id:016x}" in letter.reason
    assert letter.event_id == f"otel:{bad.trace_id:032x}:{bad.span_id:016x}"
    assert letter.value == raw and letter.source_key == "otlp_spans:0:7"


def test_both_encodings_give_the_same_events_and_ids_are_stable() -> None:
    with recorded() as (tracer, spans):
        with tracer.start_as_current_span("request"):
            for i in range(3):
                with tracer.start_as_current_span(f"chat {i}", attributes={**GENAI, **CONTENT}):
                    pass
    proto, as_json = decode(otlp_proto(spans)), decode(otlp_json(spans))
    assert len(proto.events) == 3 and proto.skipped == {NOT_LLM: 1}
    assert [encode_event(e) for e in proto.events] == [encode_event(e) for e in as_json.events]
    assert [encode_event(e) for e in decode(otlp_proto(spans)).events] == [encode_event(e) for e in proto.events]
    assert as_json.events[0].payload["metadata"]["otel"]["parent_span_id"] == f"{spans[3].context.span_id:016x}"


def test_json_is_sniffed_and_can_be_forced() -> None:
    span = one_span(attributes={**GENAI, **CONTENT})
    assert len(decode(b"  \n" + otlp_json([span])).events) == 1
    assert len(decode(otlp_json([span]), encoding="otlp_json").events) == 1
    assert decode(otlp_json([span]), encoding="otlp_proto").letter.error_kind == OTLP_INVALID


@pytest.mark.parametrize(
    ("raw", "kind", "reason"),
    [
        (None, "empty", "no value"),
        (b"", "empty", "no value"),
        (b"\x0a\x05hello", OTLP_INVALID, "not OTLP protobuf"),
        (b"\xff" * 64, OTLP_INVALID, "not OTLP protobuf"),
        (b"{not json", OTLP_INVALID, "invalid JSON"),
        (b"[1, 2]", OTLP_INVALID, "not OTLP protobuf"),
        (b"{}", OTLP_INVALID, "no spans"),
        (b'{"resourceSpans": 3}', OTLP_INVALID, "resourceSpans"),
        (
            b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"00f067aa0ba902b7","name":"x"}]}]}]}',
            OTLP_INVALID,
            "resourceSpans[0].scopeSpans[0].spans[0].traceId: 'zz' is not 32 hex digits",
        ),
        (
            json.dumps({"event_id": "e", "type": "interaction.logged", "payload": {"request_id": "r"}}).encode(),
            OTLP_INVALID,
            "alignd event envelope",
        ),
    ],
)
def test_bytes_that_are_not_otlp_traces_are_dead_letters_with_a_reason(raw, kind, reason) -> None:
    decoded = decode(raw)
    assert decoded.events == () and decoded.letter is not None
    assert decoded.letter.error_kind == kind and reason in decoded.letter.reason, decoded.letter.reason
    assert decoded.letter.value == raw


def test_oversized_message_is_refused_before_parsing() -> None:
    raw = otlp_proto([one_span(attributes={**GENAI, **CONTENT})])
    decoded = decode(raw, max_bytes=len(raw) - 1)
    assert decoded.letter.error_kind == "oversized" and "ALIGND_INGEST_MAX_MESSAGE_BYTES" in decoded.letter.reason


def test_all_zero_ids_and_missing_times_are_malformed() -> None:
    request = ExportTraceServiceRequest.FromString(otlp_proto([one_span(attributes={**GENAI, **CONTENT})]))
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.trace_id = bytes(16)
    assert "trace_id" in decode(request.SerializeToString()).letter.reason
    span.trace_id, span.start_time_unix_nano, span.end_time_unix_nano = b"\x01" * 16, 0, 0
    assert "no start" in decode(request.SerializeToString()).letter.reason


def test_an_unforeseen_failure_is_a_decoder_error_letter(monkeypatch: pytest.MonkeyPatch) -> None:
    import consumers.otlp as otlp

    def boom(_span):
        raise RuntimeError("surprise")

    monkeypatch.setattr(otlp, "map_span", boom)
    decoded = decode(otlp_proto([one_span(attributes={**GENAI, **CONTENT})]))
    assert decoded.letter.error_kind == DECODER_ERROR and "RuntimeError: surprise" in decoded.letter.reason


def _valid_bytes() -> bytes:
    with recorded() as (tracer, spans):
        with tracer.start_as_current_span("root"):
            with tracer.start_as_current_span("chat", attributes={**GENAI, **CONTENT}):
                pass
    return otlp_proto(spans)


VALID = _valid_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=400),
        st.builds(lambda cut: VALID[:cut], st.integers(0, len(VALID))),
        st.builds(
            lambda at, byte: VALID[:at] + bytes([byte]) + VALID[at + 1 :],
            st.integers(0, len(VALID) - 1),
            st.integers(0, 255),
        ),
        st.builds(
            lambda doc: json.dumps(doc).encode(),
            st.recursive(
                st.none() | st.text(max_size=8) | st.integers(),
                lambda c: (
                    st.lists(c, max_size=3)
                    | st.dictionaries(
                        st.sampled_from(
                            ["resourceSpans", "scopeSpans", "spans", "traceId", "attributes", "key", "value"]
                        ),
                        c,
                        max_size=3,
                    )
                ),
                max_leaves=12,
            ),
        ),
    )
)
def test_hostile_bytes_never_raise_and_always_account_for_the_message(raw: bytes) -> None:
    decoded = decode(raw)
    assert decoded.events or decoded.letter is not None or decoded.skipped
    if decoded.letter is not None:
        assert decoded.letter.reason and decoded.letter.value == raw
    for event in decoded.events:
        assert event.type == "interaction.logged" and event.event_id.startswith("otel:")


def test_parse_request_reads_what_the_sdk_encoder_wrote() -> None:
    span = one_span(attributes={**GENAI, **CONTENT})
    for raw in (otlp_proto([span]), otlp_json([span])):
        parsed = parse_request(raw).resource_spans[0].scope_spans[0].spans[0]
        assert parsed.trace_id.hex() == f"{span.context.trace_id:032x}" and parsed.name == span.name


# --- content sent as log records, and the join (consumers/otlp_logs.py, consumers/otel_join.py) ----------------


def chat_with_logs(
    question: str = "Hi", answer: str | None = "Hello!", *, system: str | None = "Be brief.", developer: bool = False
):
    """One chat call as opentelemetry-instrumentation-openai-v2 records it by default: the span without content,
    and the messages and the choice as log records in its context (real SDK). Returns (span, log records)."""
    with recorded_with_logs() as (tracer, logger, spans, records):
        attributes = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"}
        with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT, attributes=attributes) as span:
            if system is not None:
                emit_message(logger, "system", system)
            if developer:
                emit_message(logger, "developer", "Answer in French.")
            emit_message(logger, "user", question)
            if answer is not None:
                emit_choice(logger, answer)
            span.set_attribute("gen_ai.response.model", "gpt-4o-2024-08-06")
            span.set_attribute("gen_ai.usage.input_tokens", 9)
            span.set_attribute("gen_ai.usage.output_tokens", 2)
        logger.emit(LogRecord(body="GET /health 200", attributes={"http.route": "/health"}))  # the app's own log
    return spans[0], records


def decode_logs(raw: bytes | None, **kwargs: Any):
    return decode_otlp_logs_record(FakeRecord(raw, topic="otlp_logs"), **kwargs)


@pytest.mark.parametrize("encode", [otlp_proto_logs, otlp_json_logs], ids=["otlp_proto", "otlp_json"])
def test_genai_log_records_are_read_in_both_encodings_and_other_logs_are_counted(encode) -> None:
    span, records = chat_with_logs(developer=True)
    with recorded_with_logs() as (_, logger, _, outside):
        emit_message(logger, "user", "no span is current")  # a GenAI event outside any span

    decoded = decode_logs(encode([*records, *outside]))

    assert decoded.letter is None and decoded.records == 6
    assert decoded.skipped == {NOT_GENAI: 1, NO_SPAN: 1}
    ids = (f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")
    assert {(p.trace_id, p.span_id) for p in decoded.parts} == {ids}
    names = [p.event.name for p in decoded.parts]
    assert names == ["gen_ai.system.message", "gen_ai.developer.message", "gen_ai.user.message", "gen_ai.choice"]
    choice = decoded.parts[-1].event.attributes["gen_ai.event.content"]
    assert choice == {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello!"}}
    assert [p.time_ns for p in decoded.parts] == sorted(p.time_ns for p in decoded.parts) and decoded.parts[0].time_ns
    assert len({p.key for p in decoded.parts}) == 4  # a digest of each record's content
    assert [p.key for p in decode_logs(encode(records)).parts] == [p.key for p in decoded.parts]


def test_a_legacy_event_name_attribute_is_read_too() -> None:
    """SDKs before LogRecord.event_name wrote the name as the ``event.name`` attribute (the Events API)."""
    with recorded_with_logs() as (tracer, logger, _, records):
        with tracer.start_as_current_span("chat", attributes={"gen_ai.system": "openai"}):
            logger.emit(LogRecord(attributes={"event.name": "gen_ai.user.message"}, body={"content": "Hi"}))
    (part,) = decode_logs(otlp_proto_logs(records)).parts
    assert part.event.name == "gen_ai.user.message" and "event.name" not in part.event.attributes


def test_an_unreadable_genai_log_record_is_a_dead_letter_and_the_others_are_kept() -> None:
    span, records = chat_with_logs()
    with recorded_with_logs() as (tracer, logger, _, broken):
        with tracer.start_as_current_span("chat", attributes={"gen_ai.system": "openai"}):
            logger.emit(LogRecord(event_name="gen_ai.choice", body={"index": 0, "message": {"content": 42}}))
    raw = otlp_proto_logs([*records, *broken])

    decoded = decode_logs(raw)

    assert len(decoded.parts) == 3
    assert decoded.letter is not None and decoded.letter.error_kind == OTLP_LOG_INVALID
    assert decoded.letter.value == raw and decoded.letter.origin.topic == "otlp_logs"
    assert decoded.letter.reason.startswith("OTLP logs: 1 of its 5 log records are GenAI events alignd cannot read")
    assert "gen_ai.choice.message.content: expected a string" in decoded.letter.reason


@pytest.mark.parametrize(
    ("raw", "kind", "reason"),
    [
        (b"", "empty", "no value"),
        (b"\x0a\x07garbage", OTLP_INVALID, "not OTLP protobuf (ExportLogsServiceRequest)"),
        (b"{oops", OTLP_INVALID, "invalid JSON"),
        (b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"xyz"}]}]}]}', OTLP_INVALID, "is not 32 hex"),
        (b'{"resourceSpans":[]}', OTLP_INVALID, "it looks like OTLP traces"),
    ],
)
def test_bytes_that_are_not_otlp_logs_are_dead_letters_with_a_reason(raw: bytes, kind: str, reason: str) -> None:
    decoded = decode_logs(raw)
    assert decoded.parts == () and decoded.letter is not None
    assert decoded.letter.error_kind == kind and reason in decoded.letter.reason, decoded.letter.reason
    assert decoded.letter.reason.startswith("OTLP logs: ")


def test_a_span_without_content_is_held_when_a_logs_topic_is_consumed() -> None:
    span, _ = chat_with_logs()
    assert decode(otlp_proto([span])).skipped == {NO_CONTENT: 1}
    held = decode(otlp_proto([span]), hold_no_content=True)
    assert held.skipped == {} and held.events == () and [s.name for s in held.held] == ["chat gpt-4o"]


class FakeJoinParts:
    """The parts table in memory: the same contract as events.otel_join.SqlJoinParts (keys, first-seen, deadlines)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], JoinPart] = {}
        self.offsets: dict[tuple[str, int], int] = {}

    def put(self, parts, seen_ms):
        new = [p for p in parts if (p.trace_id, p.span_id, p.part) not in self.rows]
        for p in new:
            self.rows[(p.trace_id, p.span_id, p.part)] = replace(p, seen_ms=seen_ms)
        return len(new)

    def load(self, keys):
        wanted = set(keys)
        return sorted((p for p in self.rows.values() if p.key in wanted), key=lambda p: (p.key, p.part))

    def set_deadlines(self, *, seen_before_ms, span_deadline, log_deadline):
        changed = 0
        for k, p in self.rows.items():
            if p.deadline is None and p.seen_ms <= seen_before_ms:
                self.rows[k] = replace(p, deadline=span_deadline if p.part == SPAN_PART else log_deadline)
                changed += 1
        return changed

    def keys_with_deadlines(self, limit):
        return sorted({p.key for p in self.rows.values() if p.deadline is not None})[:limit]

    def forget(self, keys):
        gone = [k for k, p in self.rows.items() if p.key in set(keys)]
        for k in gone:
            del self.rows[k]
        return len(gone)

    def load_offsets(self, group_id, partitions):
        return {tp: o for tp, o in self.offsets.items() if tp in set(partitions)}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make_join(parts: FakeJoinParts, clock: FakeClock, window_s: float = 60.0) -> OtelJoin:
    return OtelJoin(
        parts,
        group_id="g",
        span_topics=("otlp_spans",),
        log_topics=("otlp_logs",),
        window_s=window_s,
        clock=clock,
        monotonic=clock,
    )


def held(span) -> HeldSpan:
    (view,) = decode(otlp_proto([span]), hold_no_content=True).held
    return HeldSpan(view, KafkaCoordinates("otlp_spans", 0, 7))


def log_parts(records) -> list:
    return list(decode_logs(otlp_proto_logs(records)).parts)


def passed(join: OtelJoin, given: JoinInput):
    """One batch through the join as the ingestor does it: process, (append), settle."""
    outcome = join.process(given)
    join.settle(outcome)
    return outcome


@pytest.mark.parametrize("logs_first", [False, True], ids=["span first", "logs first"])
def test_a_span_and_its_log_records_become_one_interaction_whichever_comes_first(logs_first: bool) -> None:
    span, records = chat_with_logs(developer=True)
    parts, clock = FakeJoinParts(), FakeClock()
    join = make_join(parts, clock)
    first, second = (JoinInput(logs=log_parts(records)), JoinInput(spans=[held(span)]))
    if not logs_first:
        first, second = second, first

    assert passed(join, first).events == [] and len(parts.rows) == (4 if logs_first else 1)
    outcome = passed(join, second)

    (event,) = outcome.events
    trace_id, span_id = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"
    assert event.event_id == f"otel:{trace_id}:{span_id}" and outcome.origins == [KafkaCoordinates("otlp_spans", 0, 7)]
    payload = event.payload
    assert payload["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
    ]
    assert payload["response"] == "Hello!" and payload["model"] == {"name": "gpt-4o", "version": "gpt-4o-2024-08-06"}
    assert payload["metadata"]["usage"] == {"input_tokens": 9, "output_tokens": 2, "total_tokens": 11}
    assert payload["metadata"]["finish_reasons"] == ["stop"]
    otel = payload["metadata"]["otel"]
    assert otel["log_records"] == 4 and otel["input_shape"] == "gen_ai.*.message events"
    assert otel["output_shape"] == "gen_ai.choice events"
    assert outcome.joined_records == 4 and parts.rows == {}  # forgotten once stored


def test_log_records_sent_again_are_one_part_and_a_resent_span_after_the_join_is_a_duplicate() -> None:
    span, records = chat_with_logs()
    parts, clock = FakeJoinParts(), FakeClock()
    join = make_join(parts, clock)
    passed(join, JoinInput(logs=log_parts(records)))
    passed(join, JoinInput(logs=log_parts(records)))  # the Collector retried
    assert len(parts.rows) == 3
    (first,) = passed(join, JoinInput(spans=[held(span)])).events
    passed(join, JoinInput(logs=log_parts(records)))  # retried again, after the join: they wait as orphans
    (again,) = passed(join, JoinInput(spans=[held(span)])).events  # and the span's resend joins them again
    assert again.event_id == first.event_id and again.payload == first.payload  # the store keeps one


def test_a_span_waits_for_its_response_even_when_its_prompt_came() -> None:
    """The input messages are emitted when the request starts, the choice when it ends: they may come apart."""
    span, records = chat_with_logs()
    parts, clock = FakeJoinParts(), FakeClock()
    join = make_join(parts, clock)
    prompt, choice = log_parts(records)[:2], log_parts(records)[2:]
    assert passed(join, JoinInput(spans=[held(span)], logs=prompt)).events == []
    (event,) = passed(join, JoinInput(logs=choice)).events
    assert event.payload["response"] == "Hello!" and len(event.payload["messages"]) == 2


def probe(clock: FakeClock, spans_end: int, logs_end: int) -> OffsetsProbe:
    return OffsetsProbe(int(clock.now * 1000), {"otlp_spans": {"0": spans_end}}, {"otlp_logs": {"0": logs_end}})


def test_a_span_times_out_only_once_the_logs_written_within_the_window_are_stored() -> None:
    span, records = chat_with_logs()
    parts, clock = FakeJoinParts(), FakeClock()
    join = make_join(parts, clock, window_s=60)
    passed(join, JoinInput(spans=[held(span)]))

    clock.now += 30
    assert passed(join, JoinInput(probe=probe(clock, 1, 500))).finished == set()  # within the window
    clock.now += 31
    parts.offsets = {("otlp_logs", 0): 100}  # a backlog: the logs topic ends at 500, 100 stored
    assert passed(join, JoinInput(probe=probe(clock, 1, 500))).finished == set()
    assert {p.deadline for p in parts.rows.values()} == {'{"otlp_logs":{"0":500}}'}
    clock.now += 3600  # however long, until the records that were there are stored
    assert passed(join, JoinInput(probe=probe(clock, 1, 900))).finished == set()
    (event,) = passed(join, JoinInput(logs=log_parts(records))).events  # the backlog brought them
    assert event.payload["response"] == "Hello!"


def test_a_span_whose_content_never_comes_is_skipped_as_no_content_after_the_window() -> None:
    span, _ = chat_with_logs()
    parts, clock = FakeJoinParts(), FakeClock()
    join = make_join(parts, clock, window_s=60)
    passed(join, JoinInput(spans=[held(span)]))
    parts.offsets = {("otlp_logs", 0): 500}
    clock.now += 61

    outcome = passed(join, JoinInput(probe=probe(clock, 1, 500)))

    assert outcome.events == [] and outcome.skipped == {NO_CONTENT: 1} and parts.rows == {}


def test_log_records_without_their_span_are_orphans_after_the_window() -> None:
    span, records = chat_with_logs()
    parts, clock = FakeJoinParts(), FakeClock()
    join = make_join(parts, clock, window_s=60)
    passed(join, JoinInput(logs=log_parts(records)))
    clock.now += 61
    parts.offsets = {("otlp_spans", 0): 3}
    assert passed(join, JoinInput(probe=probe(clock, 5, 9))).finished == set()  # spans not all stored yet
    parts.offsets = {("otlp_spans", 0): 5}
    outcome = passed(join, JoinInput(probe=probe(clock, 5, 9)))
    assert outcome.orphaned_records == 3 and outcome.events == [] and parts.rows == {}


def test_the_join_state_is_in_the_parts_alone_so_another_join_takes_over() -> None:
    """What a restart (or another replica) finds: a new OtelJoin on the same parts completes the call."""
    span, records = chat_with_logs()
    parts, clock = FakeJoinParts(), FakeClock()
    passed(make_join(parts, clock), JoinInput(spans=[held(span)]))
    (event,) = passed(make_join(parts, clock), JoinInput(logs=log_parts(records))).events
    assert event.payload["messages"][-1] == {"role": "user", "content": "Hi"}


def test_content_not_captured_comes_out_at_once_as_no_content() -> None:
    """Without OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT the events come without content: no waiting."""
    with recorded_with_logs() as (tracer, logger, spans, records):
        with tracer.start_as_current_span("chat gpt-4o", attributes={"gen_ai.operation.name": "chat"}):
            emit_message(logger, "user", None)  # openai-v2 then emits no body at all
            emit_choice(logger, None)
    parts, clock = FakeJoinParts(), FakeClock()
    outcome = passed(make_join(parts, clock), JoinInput(spans=[held(spans[0])], logs=log_parts(records)))
    assert outcome.skipped == {NO_CONTENT: 1} and outcome.events == [] and parts.rows == {}


def test_a_joined_span_that_breaks_the_contract_is_a_dead_letter_naming_it() -> None:
    span, records = chat_with_logs(question="a NUL \x00 in a prompt")
    parts, clock = FakeJoinParts(), FakeClock()
    outcome = passed(make_join(parts, clock), JoinInput(spans=[held(span)], logs=log_parts(records)))
    (letter,) = outcome.letters
    assert letter.error_kind == OTLP_SPAN_INVALID and letter.origin is None
    assert letter.source_key.startswith("otel-join:") and letter.event_id.startswith("otel:")
    assert "joined with its 3 log records" in letter.reason and "not requeued" in letter.reason
    assert json.loads(letter.value)["span"]["name"] == "chat gpt-4o" and parts.rows == {}


def test_otlp_traces_sent_to_the_logs_topic_are_named_as_such() -> None:
    span, _ = chat_with_logs()
    for raw in (otlp_proto([span]), otlp_json([span])):
        decoded = decode_logs(raw)
        assert decoded.letter is not None and decoded.letter.error_kind == OTLP_INVALID
        assert "it looks like OTLP traces: send those to topics.otlp_spans" in decoded.letter.reason

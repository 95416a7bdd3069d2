"""Spans recorded by the real OpenTelemetry SDK, and the bytes the Collector's kafka exporter writes for them.

``otlp_proto``: the OTLP exporter's own encoder (``opentelemetry.exporter.otlp.proto.common``'s ``encode_spans``)
gives the ``ExportTraceServiceRequest`` that the SDK sends to a Collector; the Collector's ``otlp_proto``
encoding (``ptrace.ProtoMarshaler``) writes the same message back out, so its serialised bytes are the Kafka
message. ``otlp_json``: the same message in OTLP/JSON as ``ptrace.JSONMarshaler`` writes it: protobuf's JSON
mapping with lowerCamelCase names, 64-bit integers as decimal strings and enums as integers, but trace and span
ids in hex rather than the mapping's base64 (opentelemetry-proto docs/specification.md, "JSON Protobuf
Encoding"; the pdata marshaler also omits default values, as ``MessageToDict`` does).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from google.protobuf import json_format
from opentelemetry._logs import LogRecord
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

__all__ = [
    "LogRecord",
    "SpanKind",
    "Status",
    "StatusCode",
    "emit_choice",
    "emit_message",
    "otlp_json",
    "otlp_json_logs",
    "otlp_proto",
    "otlp_proto_logs",
    "recorded",
    "recorded_with_logs",
    "request_of",
]


@contextmanager
def recorded(service: str = "chat-api", **resource: Any) -> Iterator[tuple[Tracer, list[ReadableSpan]]]:
    """A tracer of a fresh SDK provider (no global state), and the list its finished spans land in on exit."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, **resource}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    finished: list[ReadableSpan] = []
    try:
        yield provider.get_tracer("app.llm", "1.0.0"), finished
    finally:
        finished.extend(exporter.get_finished_spans())
        provider.shutdown()


def request_of(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    return encode_spans(spans)


def otlp_proto(spans: Sequence[ReadableSpan] | ExportTraceServiceRequest) -> bytes:
    request = spans if isinstance(spans, ExportTraceServiceRequest) else request_of(spans)
    return request.SerializeToString()


def _hex_ids(holder: dict[str, Any]) -> None:
    for key in ("traceId", "spanId", "parentSpanId"):
        if key in holder:
            holder[key] = base64.b64decode(holder[key]).hex()


def otlp_json(spans: Sequence[ReadableSpan] | ExportTraceServiceRequest) -> bytes:
    request = spans if isinstance(spans, ExportTraceServiceRequest) else request_of(spans)
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for rs in document.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                _hex_ids(span)
                for link in span.get("links", []):
                    _hex_ids(link)
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def messages_json(messages: Sequence[Mapping[str, Any]]) -> str:
    """GenAI v1.37 messages as the Python instrumentations record them on spans: a JSON string."""
    return json.dumps(list(messages))


# --- GenAI content as log records (semantic conventions v1.28-v1.36) ------------------------------------------
#
# The OpenTelemetry Python GenAI instrumentations in their default mode emit a call's messages as log records in
# the span's context (opentelemetry-python-contrib, instrumentation-genai/opentelemetry-instrumentation-openai-v2,
# utils.py: message_to_event and choice_to_event): event_name ``gen_ai.<role>.message`` with body {"content": ...},
# and ``gen_ai.choice`` with body {"index", "finish_reason", "message": {"role", "content"}}, attributes
# {"gen_ai.system": "openai"}. The real logs SDK records them here; ``encode_logs`` (the OTLP log exporter's encoder)
# gives the ExportLogsServiceRequest that the Collector's kafka exporter writes back out for its logs pipeline.


@contextmanager
def recorded_with_logs(
    service: str = "chat-api",
) -> Iterator[tuple[Tracer, Any, list[ReadableSpan], list[Any]]]:
    """A tracer and a logger of fresh SDK providers (no global state); finished spans and log records land in the
    two lists on exit. Log records emitted while a span is current carry its trace and span ids, as the
    instrumentations' do."""
    resource = Resource.create({"service.name": service})
    span_exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    log_exporter = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    spans: list[ReadableSpan] = []
    records: list[Any] = []
    try:
        yield (
            tracer_provider.get_tracer("opentelemetry.instrumentation.openai_v2", "2.1b0"),
            logger_provider.get_logger("opentelemetry.instrumentation.openai_v2", "2.1b0"),
            spans,
            records,
        )
    finally:
        spans.extend(span_exporter.get_finished_spans())
        records.extend(log_exporter.get_finished_logs())
        tracer_provider.shutdown()
        logger_provider.shutdown()


def emit_message(logger: Any, role: str, content: str | None, **body: Any) -> None:
    """What openai-v2's ``message_to_event`` emits for one input message (no body without captured content)."""
    if content is not None:
        body["content"] = content
    logger.emit(
        LogRecord(event_name=f"gen_ai.{role}.message", attributes={"gen_ai.system": "openai"}, body=body or None)
    )


def emit_choice(logger: Any, content: str | None, index: int = 0, finish_reason: str = "stop") -> None:
    """What openai-v2's ``choice_to_event`` emits for one choice."""
    message: dict[str, Any] = {"role": "assistant"}
    if content is not None:
        message["content"] = content
    logger.emit(
        LogRecord(
            event_name="gen_ai.choice",
            attributes={"gen_ai.system": "openai"},
            body={"index": index, "finish_reason": finish_reason, "message": message},
        )
    )


def logs_request_of(records: Sequence[Any]) -> ExportLogsServiceRequest:
    return encode_logs(records)


def otlp_proto_logs(records: Sequence[Any] | ExportLogsServiceRequest) -> bytes:
    request = records if isinstance(records, ExportLogsServiceRequest) else logs_request_of(records)
    return request.SerializeToString()


def otlp_json_logs(records: Sequence[Any] | ExportLogsServiceRequest) -> bytes:
    """OTLP/JSON logs as ``plog.JSONMarshaler`` writes them (ids in hex)."""
    request = records if isinstance(records, ExportLogsServiceRequest) else logs_request_of(records)
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for rl in document.get("resourceLogs", []):
        for sl in rl.get("scopeLogs", []):
            for record in sl.get("logRecords", []):
                _hex_ids(record)
    return json.dumps(document, separators=(",", ":")).encode("utf-8")

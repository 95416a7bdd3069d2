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
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

__all__ = ["SpanKind", "Status", "StatusCode", "otlp_json", "otlp_proto", "recorded", "request_of"]


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

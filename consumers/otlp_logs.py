"""OTLP logs from the OpenTelemetry Collector's kafka exporter: the GenAI events among them, the content of LLM spans.

Why logs. The OpenTelemetry GenAI instrumentations in their default mode (semantic conventions v1.28 to v1.36:
opentelemetry-instrumentation-openai-v2 and its siblings, unless ``OTEL_SEMCONV_STABILITY_OPT_IN`` asks for
``gen_ai_latest_experimental``) put no prompt or response on the span: with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` they emit them as *log records* in the span's context
(its trace and span ids), one per message. opentelemetry-python-contrib's ``openai_v2/utils.py`` builds them:

- ``message_to_event``: ``LogRecord(event_name=f"gen_ai.{role}.message", attributes={"gen_ai.system": "openai"},
  body={"content": ...})``; an assistant message's body is ``{"tool_calls": [...]}``, a tool message's also has
  the ``id`` of the call it answers; no body at all when content is not captured;
- ``choice_to_event``: ``LogRecord(event_name="gen_ai.choice", body={"index": 0, "finish_reason": "stop",
  "message": {"role": "assistant", "content": ..., "tool_calls": [...]}})``.

The event's name is the log record's ``event_name`` field (OTLP ``LogRecord.event_name``, proto v1.5); SDKs before
it wrote the ``event.name`` attribute, which is read too. The bodies are the GenAI event conventions'
(semantic-conventions ``docs/gen-ai/gen-ai-events.md`` v1.36). v1.37's ``gen_ai.client.inference.operation.details``
event, whose attributes hold ``gen_ai.input.messages`` and ``gen_ai.output.messages``, is kept as well.

What the Collector writes: its logs pipeline's kafka exporter (``exporter/kafkaexporter``, topic ``otlp_logs`` by
default) writes one message per batch, ``plog.ProtoMarshaler`` for ``otlp_proto`` (the bytes of an
``ExportLogsServiceRequest``, wire-identical to ``LogsData``) or ``plog.JSONMarshaler`` for ``otlp_json`` (OTLP/JSON,
``traceId``/``spanId`` in hex). Its ``raw`` encoding keeps only the bodies, without the ids a join needs: such a
message is not OTLP and is dead-lettered as such.

Each GenAI event in a span becomes a :class:`LogPart`, which consumers/otel_join.py gives to its span as a span
event, so the mapping of consumers/otlp_genai.py reads it as it reads Azure's span events. The other log records
(an application's own logs share the pipeline) are counted and left. A message that is not OTLP logs, or whose
GenAI events cannot be read, is dead-lettered with its bytes; its readable events are kept (a requeue resends them
and they are the same parts again: a part's key is a digest of its content).
"""

from __future__ import annotations

import hashlib
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from consumers.decode import DECODER_ERROR, KafkaRecord
from consumers.otlp import (
    OTLP_INVALID,
    OtlpDecodeError,
    any_value,
    attributes_of,
    json_list,
    otlp_letter,
    parse_json_into,
)
from consumers.otlp_genai import SpanEvent, SpanMappingError, check_event, is_content_event
from events.model import DEFAULT_MAX_MESSAGE_BYTES, DeadLetter, KafkaCoordinates

#: Error kind of a logs message some of whose GenAI events cannot be read (the reason names each).
OTLP_LOG_INVALID = "otlp_log_invalid"

#: Log records left, by outcome (the ``outcome`` label of ``alignd_ingest_otlp_log_records_total``).
NOT_GENAI = "not_genai"
NO_SPAN = "no_span"

_SIGNAL = "OTLP logs"
_ID_SIZES = {"traceId": 16, "spanId": 8}
_SHOWN_PROBLEMS = 5
#: The body of a content event, carried as a span event's attribute (what otlp_genai's ``_event_body`` reads).
EVENT_CONTENT = "gen_ai.event.content"


@dataclass(frozen=True)
class LogPart:
    """A GenAI event from a log record: the content of (part of) the LLM call its span ids name."""

    trace_id: str
    span_id: str
    event: SpanEvent
    #: when it happened (its time, else its observed time), in ns: the order of a call's messages
    time_ns: int
    origin: KafkaCoordinates
    #: its place in its Kafka message (the order of records that share a time)
    index: int

    @property
    def key(self) -> str:
        """A digest of what the record says: the same record sent again (a Collector retry, a requeue) has it."""
        content = [self.trace_id, self.span_id, self.event.name, self.time_ns, dict(self.event.attributes)]
        return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.event.name,
            "attributes": dict(self.event.attributes),
            "time_ns": self.time_ns,
            "origin": [self.origin.topic, self.origin.partition, self.origin.offset],
            "index": self.index,
        }

    @classmethod
    def from_json(cls, trace_id: str, span_id: str, document: Mapping[str, Any]) -> LogPart:
        topic, partition, offset = document["origin"]
        return cls(
            trace_id=trace_id,
            span_id=span_id,
            event=SpanEvent(document["name"], document["attributes"]),
            time_ns=document["time_ns"],
            origin=KafkaCoordinates(topic, partition, offset),
            index=document["index"],
        )

    @property
    def order(self) -> tuple[int, str, int, int, int]:
        return (self.time_ns, self.origin.topic, self.origin.partition, self.origin.offset, self.index)


@dataclass(frozen=True)
class OtlpLogsDecoded:
    """What one Kafka record of OTLP logs became."""

    parts: tuple[LogPart, ...] = ()
    letter: DeadLetter | None = None
    #: log records left, by outcome (NOT_GENAI, NO_SPAN)
    skipped: Mapping[str, int] = field(default_factory=dict)
    records: int = 0


# --- bytes -> ExportLogsServiceRequest ------------------------------------------------------------------------


def parse_logs_request(raw: bytes, encoding: str = "auto") -> ExportLogsServiceRequest:
    """Parse OTLP logs bytes as the Collector's kafka exporter writes them (``otlp_proto``, ``otlp_json``, ``auto``).

    Raises:
        OtlpDecodeError: naming the encoding and what is wrong.
    """
    if encoding == "auto":
        encoding = "otlp_json" if raw.lstrip()[:1] == b"{" else "otlp_proto"
    request = ExportLogsServiceRequest()
    if encoding == "otlp_json":
        parse_json_into(raw, request, _id_holders)
    else:
        try:
            request.ParseFromString(raw)
        except (DecodeError, RuntimeError, ValueError) as exc:
            hint = _TRACES_HINT if _is_traces(raw) else ""
            raise OtlpDecodeError(
                f"not OTLP protobuf (ExportLogsServiceRequest): {exc or type(exc).__name__}; the Collector's kafka "
                "exporter must write logs with encoding otlp_proto or otlp_json (raw drops the trace and span ids)"
                f"{hint}"
            ) from None
    if not any(sl.log_records for rl in request.resource_logs for sl in rl.scope_logs):
        hint = ""
        if b"resourceSpans" in raw or b"resource_spans" in raw or (encoding == "otlp_proto" and _is_traces(raw)):
            hint = _TRACES_HINT
        elif encoding == "otlp_json" and b'"payload"' in raw and b'"type"' in raw:
            hint = "; it looks like an alignd event envelope: send those to the interactions or feedback topic"
        raise OtlpDecodeError(
            f"no log records: the message parsed as {encoding} but holds no resourceLogs[].scopeLogs[].logRecords{hint}"
        )
    return request


_TRACES_HINT = "; it looks like OTLP traces: send those to topics.otlp_spans"


def _is_traces(raw: bytes) -> bool:
    """Whether protobuf bytes read as OTLP traces with spans (a Collector's traces pipeline aimed at the logs topic)."""
    traces = ExportTraceServiceRequest()
    try:
        traces.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError):
        return False
    return any(ss.spans for rs in traces.resource_spans for ss in rs.scope_spans)


def _id_holders(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for r, rl in enumerate(json_list(document, "resourceLogs", "resource_logs")):
        for s, sl in enumerate(json_list(rl, "scopeLogs", "scope_logs")):
            for n, record in enumerate(json_list(sl, "logRecords", "log_records")):
                yield f"resourceLogs[{r}].scopeLogs[{s}].logRecords[{n}]", record


# --- log record -> LogPart ------------------------------------------------------------------------------------


def _event_name(record: Any, attributes: Mapping[str, Any]) -> str:
    name = getattr(record, "event_name", "")  # the field exists from opentelemetry-proto 1.5 (Python 1.31) on
    if not name:
        legacy = attributes.get("event.name")
        name = legacy if isinstance(legacy, str) else ""
    return str(name)


def _as_span_event(name: str, attributes: Mapping[str, Any], body: Any) -> SpanEvent:
    """A log record's event as the span event it would have been: the body under ``gen_ai.event.content``."""
    merged = {key: value for key, value in attributes.items() if key != "event.name"}
    if isinstance(body, dict):
        merged[EVENT_CONTENT] = body
    elif isinstance(body, str | list):  # a bare content, not a body object
        merged["content"] = body
    return SpanEvent(name, merged)


def iter_log_parts(
    request: ExportLogsServiceRequest, origin: KafkaCoordinates
) -> Iterator[tuple[str, LogPart | None, str]]:
    """(event name, the part or None, why not) for every log record of a request."""
    index = 0
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            for record in sl.log_records:
                index += 1
                attributes = attributes_of(record.attributes)
                name = _event_name(record, attributes)
                if not is_content_event(name):
                    yield name, None, NOT_GENAI
                    continue
                trace_id, span_id = record.trace_id.hex(), record.span_id.hex()
                if len(trace_id) != 32 or len(span_id) != 16 or trace_id == "0" * 32 or span_id == "0" * 16:
                    yield name, None, NO_SPAN
                    continue
                body = any_value(record.body) if record.HasField("body") else None
                yield (
                    name,
                    LogPart(
                        trace_id=trace_id,
                        span_id=span_id,
                        event=_as_span_event(name, attributes, body),
                        time_ns=record.time_unix_nano or record.observed_time_unix_nano,
                        origin=origin,
                        index=index - 1,
                    ),
                    "",
                )


# --- one Kafka record -----------------------------------------------------------------------------------------


def decode_otlp_logs_record(
    record: KafkaRecord, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, encoding: str = "auto"
) -> OtlpLogsDecoded:
    """One Kafka record of OTLP logs: a part per GenAI event in a span, the other records counted, and at most one
    dead letter. Never raises for anything in the record (an unforeseen exception is a ``decoder_error`` letter)."""
    origin = KafkaCoordinates(record.topic, record.partition, record.offset)
    try:
        return _decode(record, origin, max_bytes, encoding)
    except Exception as exc:  # noqa: BLE001 - the record goes to dead letters, named (see the docstring)
        reason = (
            f"alignd failed to decode this OTLP logs message ({type(exc).__name__}: {str(exc)[:300]}); this is a "
            "bug in alignd, please report it. The message is kept here: `alignd dlq requeue` sends it back after a fix"
        )
        return OtlpLogsDecoded(letter=otlp_letter(record, origin, DECODER_ERROR, reason, None, _SIGNAL))


def _decode(record: KafkaRecord, origin: KafkaCoordinates, max_bytes: int, encoding: str) -> OtlpLogsDecoded:
    raw = record.value
    if not raw:
        reason = "message has no value (null or empty); expected OTLP logs from the Collector's kafka exporter"
        return OtlpLogsDecoded(letter=otlp_letter(record, origin, "empty", reason, None, _SIGNAL))
    if len(raw) > max_bytes:
        reason = (
            f"message is {len(raw):,} bytes, over the {max_bytes:,}-byte limit; raise ALIGND_INGEST_MAX_MESSAGE_BYTES "
            "to at least the Collector kafka exporter's producer.max_message_bytes"
        )
        return OtlpLogsDecoded(letter=otlp_letter(record, origin, "oversized", reason, None, _SIGNAL))
    try:
        request = parse_logs_request(raw, encoding)
    except OtlpDecodeError as exc:
        return OtlpLogsDecoded(letter=otlp_letter(record, origin, OTLP_INVALID, str(exc), None, _SIGNAL))
    parts: list[LogPart] = []
    skipped: Tally[str] = Tally()
    problems: list[str] = []
    records = 0
    for name, part, why in iter_log_parts(request, origin):
        records += 1
        if part is None:
            skipped[why] += 1
            continue
        try:
            check_event(part.event)
            orjson.dumps(part.to_json())  # what the join stores (an integer beyond 64 bits would not go)
        except (SpanMappingError, orjson.JSONEncodeError) as exc:
            problems.append(f"log record {name!r} of span {part.trace_id}:{part.span_id}: {exc}")
            continue
        parts.append(part)
    letter = None
    if problems:
        shown = "; ".join(problems[:_SHOWN_PROBLEMS])
        more = f"; and {len(problems) - _SHOWN_PROBLEMS} more" if len(problems) > _SHOWN_PROBLEMS else ""
        reason = (
            f"{len(problems)} of its {records} log records are GenAI events alignd cannot read: {shown}{more}. The "
            f"readable ones were kept ({len(parts)}); after a fix, `alignd dlq requeue` sends the message back"
        )
        letter = otlp_letter(record, origin, OTLP_LOG_INVALID, reason, None, _SIGNAL)
    return OtlpLogsDecoded(parts=tuple(parts), letter=letter, skipped=dict(skipped), records=records)

"""OTLP traces from the OpenTelemetry Collector's kafka exporter become ``interaction.logged`` events (pure).

What the Collector writes (opentelemetry-collector-contrib, ``exporter/kafkaexporter``): for traces, encoding
``otlp_proto`` (the default) is ``ptrace.ProtoMarshaler``, the protobuf bytes of an ``ExportTraceServiceRequest``
(wire-identical to ``TracesData``); ``otlp_json`` is ``ptrace.JSONMarshaler``, the same message in OTLP/JSON: the
proto3 JSON mapping with lowerCamelCase names, 64-bit integers as decimal strings, enums as integers, and trace and
span ids as hex, not the mapping's base64 (opentelemetry-proto docs/specification.md, "JSON Protobuf Encoding").
One Kafka message holds a batch: any number of resources, scopes and spans. The default topic is ``otlp_spans``.

Each LLM span (consumers/otlp_genai.py decides which and maps it) becomes one event whose id is derived from its
trace and span ids, so the same span sent twice is a duplicate, and which goes through ``events.codec`` like any
message from the interactions topic. Spans that are not LLM calls are skipped and counted. A message that is not
OTLP, or whose LLM spans cannot be read, is dead-lettered with its bytes and a reason, like any other message;
the valid spans of the same message are stored (a requeue resends them as duplicates).
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import Counter

from consumers.decode import DECODER_ERROR, KafkaRecord, record_headers
from consumers.otlp_genai import NO_CONTENT, SKIP_REASONS, SpanEvent, SpanMappingError, SpanView, map_span
from events.codec import decode_inbound, format_timestamp
from events.errors import EventValidationError
from events.model import DEFAULT_MAX_MESSAGE_BYTES, INTERACTION_LOGGED, DeadLetter, Event, KafkaCoordinates

logger = logging.getLogger(__name__)

#: Error kinds of OTLP dead letters: the message is not OTLP traces at all; or some of its LLM spans cannot be
#: read (the reason names each, with its trace and span ids).
OTLP_INVALID = "otlp_invalid"
OTLP_SPAN_INVALID = "otlp_span_invalid"

ENCODINGS = ("auto", "otlp_proto", "otlp_json")

#: Where the id fields are in OTLP/JSON (hex there, base64 in the proto3 JSON mapping that protobuf parses).
_ID_SIZES = {"traceId": 16, "spanId": 8, "parentSpanId": 8}

#: At most this many bad spans are described in one dead letter's reason (the rest are counted).
_SHOWN_PROBLEMS = 5


class OtlpDecodeError(ValueError):
    """The bytes are not an OTLP traces message in the expected encoding."""


class _Metrics:
    def __init__(self) -> None:
        self.skipped = Counter(
            "alignd_ingest_otlp_spans_skipped",
            "OpenTelemetry spans not turned into interactions, by reason (not_llm, no_content, failed_call, "
            "tool_call_only)",
            ["reason"],
        )
        self.mapped = Counter("alignd_ingest_otlp_spans_mapped", "OpenTelemetry LLM spans turned into interactions")
        self.held = Counter(
            "alignd_ingest_otlp_spans_held",
            "OpenTelemetry LLM spans without their content, held for the log records that carry it (topics.otlp_logs)",
        )
        self.log_records = Counter(
            "alignd_ingest_otlp_log_records",
            "OpenTelemetry log records from topics.otlp_logs, by outcome: held (a GenAI event, kept for its span), "
            "joined (given to its span), orphaned (no LLM span waited for it within the join window), not_genai, "
            "no_span (a GenAI event outside a span)",
            ["outcome"],
        )
        self._warned = 0.0
        self._lock = threading.Lock()

    def observe(self, decoded: OtlpDecoded) -> None:
        self.mapped.inc(len(decoded.events))
        self.held.inc(len(decoded.held))
        self.observe_skipped(decoded.skipped)

    def observe_skipped(self, skipped: Mapping[str, int]) -> None:
        for reason, count in skipped.items():
            self.skipped.labels(reason).inc(count)
        if skipped.get(NO_CONTENT):
            with self._lock:
                now = time.monotonic()
                if now - self._warned < 600:
                    return
                self._warned = now
            logger.warning(
                "OTLP: %d LLM spans had no prompt or response and were skipped (counted in "
                'alignd_ingest_otlp_spans_skipped{reason="no_content"}): the instrumentation does not capture '
                "content; enable it (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true for the OpenTelemetry "
                "instrumentations, TRACELOOP_TRACE_CONTENT=true for OpenLLMetry); the OpenTelemetry instrumentations "
                "send it as log records: have the Collector export its logs to Kafka too and set topics.otlp_logs "
                "(docs/otel.md). Logged at most every 10 minutes",
                skipped[NO_CONTENT],
            )


OTLP_METRICS = _Metrics()


@dataclass(frozen=True)
class OtlpDecoded:
    """What one Kafka record of OTLP traces became."""

    events: tuple[Event, ...] = ()
    #: the record's dead letter (the whole message is not OTLP, or some of its LLM spans are malformed)
    letter: DeadLetter | None = None
    #: spans skipped, by reason (consumers/otlp_genai.py's SKIP_REASONS)
    skipped: Mapping[str, int] = field(default_factory=dict)
    spans: int = 0
    #: LLM spans without their content, held for the log records that carry it (consumers/otel_join.py); only
    #: when ``hold_no_content`` was asked (a logs topic is consumed), else they are skipped as ``no_content``
    held: tuple[SpanView, ...] = ()


# --- bytes -> ExportTraceServiceRequest -----------------------------------------------------------------------


def parse_request(raw: bytes, encoding: str = "auto") -> ExportTraceServiceRequest:
    """Parse OTLP traces bytes as the Collector's kafka exporter writes them.

    Args:
        encoding: ``otlp_proto``, ``otlp_json``, or ``auto``: JSON when the first non-blank byte is ``{`` (which
            cannot start an ``ExportTraceServiceRequest`` in protobuf: it would be field 15 as a group).

    Raises:
        OtlpDecodeError: naming the encoding and what is wrong.
    """
    if encoding == "auto":
        encoding = "otlp_json" if raw.lstrip()[:1] == b"{" else "otlp_proto"
    request = ExportTraceServiceRequest()
    if encoding == "otlp_json":
        parse_json_into(raw, request, _id_holders)
    else:
        try:
            request.ParseFromString(raw)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise OtlpDecodeError(
                f"not OTLP protobuf (ExportTraceServiceRequest): {exc or type(exc).__name__}; the Collector's kafka "
                "exporter must write traces with encoding otlp_proto or otlp_json"
            ) from None
    if not any(ss.spans for rs in request.resource_spans for ss in rs.scope_spans):
        hint = ""
        if encoding == "otlp_json" and b'"payload"' in raw and b'"type"' in raw:
            hint = "; it looks like an alignd event envelope: send those to the interactions or feedback topic"
        raise OtlpDecodeError(
            f"no spans: the message parsed as {encoding} but holds no resourceSpans[].scopeSpans[].spans{hint}"
        )
    return request


def parse_json_into(
    raw: bytes, request: Message, id_holders: Callable[[dict[str, Any]], Iterator[tuple[str, dict[str, Any]]]]
) -> None:
    """Parse OTLP/JSON into ``request``, its hex ids (in the objects ``id_holders`` yields) turned to base64 first.

    Raises:
        OtlpDecodeError: what is wrong, with where.
    """
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OtlpDecodeError(
            f"not OTLP/JSON: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(document, dict):
        raise OtlpDecodeError(f"not OTLP/JSON: the message is a JSON {type(document).__name__}, expected an object")
    try:
        for where, holder in id_holders(document):
            for key, size in _ID_SIZES.items():
                if key in holder:
                    holder[key] = hex_to_base64(holder[key], size, f"{where}.{key}")
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except OtlpDecodeError:
        raise
    except json_format.ParseError as exc:
        raise OtlpDecodeError(f"not OTLP/JSON: {exc}") from None
    except (AttributeError, TypeError, ValueError, RecursionError) as exc:  # a list where an object belongs...
        raise OtlpDecodeError(f"not OTLP/JSON: {type(exc).__name__}: {str(exc)[:200]}") from None


def _id_holders(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every span and span link of an OTLP/JSON document (the objects whose ids are hex)."""
    for r, rs in enumerate(json_list(document, "resourceSpans", "resource_spans")):
        for s, ss in enumerate(json_list(rs, "scopeSpans", "scope_spans")):
            for n, span in enumerate(json_list(ss, "spans")):
                where = f"resourceSpans[{r}].scopeSpans[{s}].spans[{n}]"
                yield where, span
                for k, link in enumerate(json_list(span, "links")):
                    yield f"{where}.links[{k}]", link


def json_list(holder: Any, *names: str) -> list[dict[str, Any]]:
    if not isinstance(holder, dict):
        return []
    for name in names:
        value = holder.get(name)
        if isinstance(value, list):
            return [item for item in value if isinstance(item, dict)]
    return []


def hex_to_base64(value: Any, size: int, where: str) -> str:
    """An OTLP/JSON id (hex, any case; empty for none) in the base64 form protobuf's JSON parser reads."""
    if value == "" or value is None:
        return ""
    try:
        decoded = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        decoded = None
    if decoded is None or len(decoded) != size:
        raise OtlpDecodeError(f"not OTLP/JSON: {where}: {value!r} is not {2 * size} hex digits (OTLP/JSON ids are hex)")
    return base64.b64encode(decoded).decode("ascii")


# --- protobuf -> SpanView -----------------------------------------------------------------------------------


def any_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` as JSON-like Python (non-finite doubles as their names: JSON cannot hold them)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        number = value.double_value
        return number if math.isfinite(number) else str(number)
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: any_value(item.value) for item in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {pair.key: any_value(pair.value) for pair in pairs}


def iter_spans(request: ExportTraceServiceRequest) -> Iterator[SpanView]:
    """Every span of a request, with its resource's attributes and its scope's name."""
    for rs in request.resource_spans:
        resource = attributes_of(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                yield SpanView(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    name=span.name,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    attributes=attributes_of(span.attributes),
                    events=tuple(SpanEvent(e.name, attributes_of(e.attributes)) for e in span.events),
                    status_code=span.status.code,
                    resource=resource,
                    scope=ss.scope.name,
                )


# --- SpanView -> Event --------------------------------------------------------------------------------------


def span_event_id(trace_id: str, span_id: str) -> str:
    """The event id of an LLM span: stable, so the same span ingested twice is a duplicate."""
    return f"otel:{trace_id}:{span_id}"


def _check_ids(span: SpanView) -> None:
    if len(span.trace_id) != 32 or span.trace_id == "0" * 32:
        raise SpanMappingError(
            f"trace_id: {span.trace_id or 'empty'!r} is not a valid trace id (16 bytes, not all zero)"
        )
    if len(span.span_id) != 16 or span.span_id == "0" * 16:
        raise SpanMappingError(f"span_id: {span.span_id or 'empty'!r} is not a valid span id (8 bytes, not all zero)")


def _occurred_at(span: SpanView) -> str:
    moment = span.start_ns or span.end_ns
    if moment <= 0:
        raise SpanMappingError("start_time_unix_nano: the span has no start (nor end) time")
    try:
        return format_timestamp(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=moment // 1000))
    except OverflowError:
        raise SpanMappingError(f"start_time_unix_nano: {moment} is past the year 9999") from None


def check_span(span: SpanView) -> None:
    """The ids and times an event of this span needs (raises :class:`SpanMappingError` as ``span_to_event``)."""
    _check_ids(span)
    _occurred_at(span)


def span_to_event(span: SpanView, payload: Mapping[str, Any]) -> Event:
    """The event of one mapped span, validated by ``events.codec`` exactly as an inbound message is.

    Raises:
        SpanMappingError: the ids or times cannot be used.
        EventValidationError: the payload breaks the event contract (a NUL in a prompt, an id too long...).
    """
    _check_ids(span)
    source = span.resource.get("service.name")
    event_id = span_event_id(span.trace_id, span.span_id)
    envelope = {
        "event_id": event_id,
        "type": INTERACTION_LOGGED,
        "occurred_at": _occurred_at(span),
        "source": source[:256] if isinstance(source, str) and source else "otel",
        "payload": payload,
    }
    try:
        raw = orjson.dumps(envelope)
    except orjson.JSONEncodeError as exc:  # an integer beyond 64 bits in an attribute
        raise SpanMappingError(f"an attribute cannot be written as JSON: {exc}") from None
    return decode_inbound(raw, fallback_event_id=event_id, max_bytes=len(raw) + 1)


# --- one Kafka record ---------------------------------------------------------------------------------------


def decode_otlp_record(
    record: KafkaRecord,
    *,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    encoding: str = "auto",
    hold_no_content: bool = False,
) -> OtlpDecoded:
    """One Kafka record of OTLP traces: an event per LLM span, skipped spans counted, and at most one dead letter.

    Args:
        hold_no_content: an LLM span whose prompt or response is not on the span is held (``OtlpDecoded.held``)
            rather than skipped: its content may come as log records (consumers/otel_join.py).

    Never raises for anything in the record: an exception alignd did not foresee becomes a dead letter of kind
    ``decoder_error``, as in consumers/decode.py.
    """
    origin = KafkaCoordinates(record.topic, record.partition, record.offset)
    try:
        return _decode(record, origin, max_bytes, encoding, hold_no_content)
    except Exception as exc:  # noqa: BLE001 - the record goes to dead letters, named (see the docstring)
        reason = (
            f"alignd failed to decode this OTLP message ({type(exc).__name__}: {str(exc)[:300]}); this is a bug in "
            "alignd, please report it. The message is kept here: `alignd dlq requeue` sends it back after a fix"
        )
        return OtlpDecoded(letter=otlp_letter(record, origin, DECODER_ERROR, reason, None))


def _decode(
    record: KafkaRecord, origin: KafkaCoordinates, max_bytes: int, encoding: str, hold_no_content: bool
) -> OtlpDecoded:
    raw = record.value
    if not raw:
        reason = "message has no value (null or empty); expected OTLP traces from the Collector's kafka exporter"
        return OtlpDecoded(letter=otlp_letter(record, origin, "empty", reason, None))
    if len(raw) > max_bytes:
        reason = (
            f"message is {len(raw):,} bytes, over the {max_bytes:,}-byte limit; raise ALIGND_INGEST_MAX_MESSAGE_BYTES "
            "to at least the Collector kafka exporter's producer.max_message_bytes"
        )
        return OtlpDecoded(letter=otlp_letter(record, origin, "oversized", reason, None))
    try:
        request = parse_request(raw, encoding)
    except OtlpDecodeError as exc:
        return OtlpDecoded(letter=otlp_letter(record, origin, OTLP_INVALID, str(exc), None))
    events: list[Event] = []
    held: list[SpanView] = []
    skipped: Tally[str] = Tally()
    problems: list[tuple[str, str]] = []  # (event id, what is wrong)
    spans = 0
    for span in iter_spans(request):
        spans += 1
        try:
            outcome = map_span(span)
            if outcome.payload is None and outcome.skipped == NO_CONTENT and hold_no_content:
                check_span(span)  # what the join will need of it, checked while its message is at hand
                held.append(span)
                continue
            if outcome.payload is None:
                skipped[outcome.skipped or SKIP_REASONS[0]] += 1
                continue
            events.append(span_to_event(span, outcome.payload))
        except (SpanMappingError, EventValidationError) as exc:
            detail = exc.reason if isinstance(exc, EventValidationError) else str(exc)
            problems.append(
                (
                    span_event_id(span.trace_id, span.span_id),
                    f"span {span.name!r} ({span.trace_id}:{span.span_id}): {detail}",
                )
            )
    letter = None
    if problems:
        shown = "; ".join(problem for _, problem in problems[:_SHOWN_PROBLEMS])
        more = f"; and {len(problems) - _SHOWN_PROBLEMS} more" if len(problems) > _SHOWN_PROBLEMS else ""
        reason = (
            f"{len(problems)} of its {spans} spans are LLM calls alignd cannot read: {shown}{more}. The other spans "
            f"were stored ({len(events)}) or skipped ({sum(skipped.values())}); after a fix, `alignd dlq requeue` "
            "sends the message back and those come back as duplicates"
        )
        event_id = problems[0][0] if len(problems[0][0]) <= 128 else None
        letter = otlp_letter(record, origin, OTLP_SPAN_INVALID, reason, event_id)
    return OtlpDecoded(events=tuple(events), letter=letter, skipped=dict(skipped), spans=spans, held=tuple(held))


def otlp_letter(
    record: KafkaRecord,
    origin: KafkaCoordinates,
    kind: str,
    reason: str,
    event_id: str | None,
    signal: str = "OTLP traces",
) -> DeadLetter:
    """The dead letter of an OTLP message, with its bytes and coordinates; the reason starts with ``signal``."""
    value = record.value if isinstance(record.value, bytes | None) else None
    key = record.key if isinstance(record.key, bytes | None) else None
    try:
        headers = record_headers(record)
    except Exception:  # noqa: BLE001 - headers that cannot be read are not worth losing the letter for
        headers = ()
    return DeadLetter(
        source_key=str(origin),
        reason=f"{signal}: {reason}",
        error_kind=kind,
        value=value,
        key=key,
        headers=headers,
        origin=origin,
        event_id=event_id,
    )

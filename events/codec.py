"""Bytes <-> events: canonical JSON and the validation of inbound messages.

Canonical JSON (sorted keys, no insignificant whitespace, UTF-8, no NaN) is what we store, hash and
compare, so that the same event always has the same bytes whichever producer wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from events.errors import EventValidationError
from events.model import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FEEDBACK_KINDS,
    FEEDBACK_RECEIVED,
    INBOUND_TYPES,
    INTERACTION_LOGGED,
    INTERNAL_TYPES,
    KNOWN_SCHEMA_VERSIONS,
    Event,
)
from events.schemas import FEEDBACK_MODELS, Envelope, InteractionLoggedV1

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> str:
    """Serialise ``value`` deterministically (the form that is stored and hashed)."""
    return _ENCODER.encode(value)


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, e.g. ``2026-01-31T12:00:00.000000+00:00``."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def event_to_dict(event: Event) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "type": event.type,
        "schema_version": event.schema_version,
        "occurred_at": format_timestamp(event.occurred_at),
        "source": event.source,
        "payload": dict(event.payload),
    }


def encode_event(event: Event) -> bytes:
    """The canonical JSON bytes of an event's envelope."""
    return canonical_json(event_to_dict(event)).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is too large to represent")
    return value


_JSON_TYPE_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _describe(error: Mapping[str, Any], prefix: str) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()))
    path = f"{prefix}.{location}" if prefix and location else (prefix or location or "message")
    if error.get("type") == "missing":
        return f"{path}: required field is missing"
    if error.get("type") == "extra_forbidden":
        hint = "; put extra data under payload.metadata" if prefix == "payload" else ""
        return f"{path}: unknown field{hint}"
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    if "input" in error and error.get("type") not in {"model_type", "dict_type", "value_error"}:
        shown = repr(error["input"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"{path}: {message} (got {shown})"
    return f"{path}: {message}"


def _schema_error(exc: ValidationError, prefix: str, event_id: str | None) -> EventValidationError:
    problems = [_describe(error, prefix) for error in exc.errors(include_url=False)]
    shown = "; ".join(problems[:5])
    if len(problems) > 5:
        shown += f"; and {len(problems) - 5} more"
    return EventValidationError("schema", shown, event_id=event_id)


def validate_payload(event_type: str, schema_version: int, payload: Mapping[str, Any]) -> None:
    """Check a payload against its type's schema; raises :class:`EventValidationError`."""
    if event_type == INTERACTION_LOGGED:
        try:
            InteractionLoggedV1.model_validate(payload)
        except ValidationError as exc:
            raise _schema_error(exc, "payload", None) from None
    elif event_type == FEEDBACK_RECEIVED:
        kind = payload.get("kind")
        if "kind" not in payload:
            raise EventValidationError("schema", "payload.kind: required field is missing")
        model = FEEDBACK_MODELS.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise EventValidationError(
                "schema", f"payload.kind: {kind!r} is not a feedback kind; expected one of {', '.join(FEEDBACK_KINDS)}"
            )
        try:
            model.model_validate(payload)
        except ValidationError as exc:
            raise _schema_error(exc, "payload", None) from None


def decode_inbound(
    raw: bytes | None,
    *,
    fallback_event_id: str,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Event:
    """Turn the bytes of an inbound message into a validated :class:`Event`.

    Args:
        raw: the message value.
        fallback_event_id: the idempotency key to use when the envelope has none; derived from the Kafka
            coordinates so that a redelivered message is still recognised as a duplicate.
        max_bytes: messages larger than this are refused before parsing.

    Raises:
        EventValidationError: with ``kind`` and a reason naming the field and the problem.
    """
    if raw is None or len(raw) == 0:
        raise EventValidationError("empty", "message has no value (null or empty); expected a JSON event envelope")
    if len(raw) > max_bytes:
        raise EventValidationError(
            "oversized",
            f"message is {len(raw):,} bytes, over the {max_bytes:,}-byte limit; shorten it or raise "
            "ALIGND_INGEST_MAX_MESSAGE_BYTES",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventValidationError(
            "invalid_utf8",
            f"message is not valid UTF-8: byte 0x{raw[exc.start]:02x} at position {exc.start} ({exc.reason})",
        ) from None
    try:
        document = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise EventValidationError("invalid_json", "message is not valid JSON for alignd: nested too deeply") from None
    except ValueError as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise EventValidationError("invalid_json", f"message is not valid JSON: {detail}{where}") from None
    if "\\ud" in text or "\\uD" in text:
        # A lone surrogate escape ("\ud800") is valid JSON syntax but not Unicode text: it could not be
        # stored as UTF-8. Only messages with such an escape pay for this check.
        try:
            canonical_json(document).encode("utf-8")
        except UnicodeEncodeError:
            raise EventValidationError(
                "invalid_json", "message contains an unpaired surrogate escape (\\ud800-\\udfff), which is not text"
            ) from None
    if not isinstance(document, dict):
        raise EventValidationError(
            "schema",
            f"message is a JSON {_JSON_TYPE_NAMES.get(type(document), 'value')}, expected an object (the event envelope)",
        )
    declared_id = document.get("event_id")
    event_id_hint = declared_id if isinstance(declared_id, str) and 0 < len(declared_id) <= 128 else None

    event_type = document.get("type")
    if isinstance(event_type, str) and event_type not in INBOUND_TYPES:
        if event_type in INTERNAL_TYPES:
            reason = f"type: {event_type!r} is internal to alignd and cannot be ingested from Kafka"
        else:
            reason = f"type: unknown event type {event_type!r}; expected one of {', '.join(sorted(INBOUND_TYPES))}"
        raise EventValidationError("unknown_type", reason, event_id=event_id_hint)
    try:
        envelope = Envelope.model_validate(document)
    except ValidationError as exc:
        raise _schema_error(exc, "", event_id_hint) from None
    known = KNOWN_SCHEMA_VERSIONS[envelope.type]
    if envelope.schema_version not in known:
        raise EventValidationError(
            "unknown_schema_version",
            f"schema_version: {envelope.schema_version} of {envelope.type} is not known to this alignd (it reads "
            f"{', '.join(map(str, sorted(known)))}); upgrade alignd, then requeue with `alignd dlq requeue`",
            event_id=event_id_hint,
        )
    try:
        validate_payload(envelope.type, envelope.schema_version, envelope.payload)
    except EventValidationError as exc:
        exc.event_id = event_id_hint
        raise
    return Event(
        event_id=envelope.event_id or fallback_event_id,
        type=envelope.type,
        schema_version=envelope.schema_version,
        occurred_at=envelope.occurred_at,
        source=envelope.source,
        payload=envelope.payload,
    )

"""Bytes <-> events: canonical JSON and the validation of inbound messages.

Canonical JSON (sorted keys, no insignificant whitespace, UTF-8, no NaN) is what we store, hash and
compare, so that the same event always has the same bytes whichever producer wrote it.

orjson rather than the standard library: on the ingestion hot path it parses about 3x and serialises
about 10x faster, and it refuses what the store could not hold (lone surrogates, infinity, nesting
deeper than 1,024) while parsing. Integers beyond 64 bits are read as floats, as in JavaScript.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
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
from events.schemas import FEEDBACK_V1, INTERACTION_V1


def _check_finite(value: Any) -> None:
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value} is not valid JSON")
    elif isinstance(value, dict):
        for item in value.values():
            _check_finite(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_finite(item)


def canonical_json(value: Any, *, checked: bool = False) -> str:
    """Serialise ``value`` deterministically (the form that is stored and hashed).

    Sorted keys, no insignificant whitespace, UTF-8, shortest round-trip floats, no NaN or infinity.
    One serialiser (orjson) for every caller, so the same value always has the same text.

    Args:
        checked: the value came from :func:`decode_inbound` (orjson refused non-finite numbers while
            parsing), so the walk that refuses NaN and infinity can be skipped on the hot path.

    Raises:
        ValueError: NaN or infinity (orjson itself would write them as ``null``).
        TypeError: a value JSON cannot hold (a lone surrogate, an integer beyond 64 bits, an object).
    """
    if not checked:
        _check_finite(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode("utf-8")
    except orjson.JSONEncodeError as exc:
        raise TypeError(str(exc)) from None


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


_JSON_TYPE_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def parse_timestamp(value: str) -> datetime:
    """An RFC 3339 string (already matched against its pattern) as an aware datetime in UTC.

    Python 3.11's ``fromisoformat`` reads every RFC 3339 form but a lower-case ``t`` or ``z``; digits
    beyond microseconds are truncated.

    Raises:
        ValueError: not a real date and time, or one whose UTC form falls outside years 1-9999 (e.g.
            ``0001-01-01T00:00:00+01:00``: ``astimezone`` raises OverflowError there, which is turned into
            a ValueError so every caller's ``except ValueError`` holds).
    """
    try:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = datetime.fromisoformat(value.upper())
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("in UTC it falls outside the years 1 to 9999") from None


def _describe(error: Mapping[str, Any], prefix: str) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()))
    path = f"{prefix}.{location}" if prefix and location else (prefix or location or "message")
    kind = error.get("type")
    if kind == "missing":
        return f"{path}: required field is missing"
    if kind == "extra_forbidden":
        hint = "; put extra data under payload.metadata" if path.startswith("payload.") else ""
        return f"{path}: unknown field{hint}"
    if kind == "string_pattern_mismatch" and path == "occurred_at":
        shown = error.get("input")
        if (
            isinstance(shown, str)
            and len(shown) >= 19
            and shown[10:11] in "Tt "
            and not any(c in shown[19:] for c in "Zz+-")
        ):
            return f"occurred_at: {shown!r} has no UTC offset; add Z or +HH:MM"
        return f"occurred_at: {shown!r} is not an RFC 3339 timestamp (e.g. 2026-01-31T12:00:00+01:00)"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if "input" in error and kind not in {"model_type", "dict_type", "typed_dict_type", "value_error"}:
        shown = repr(error["input"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"{path}: {message} (got {shown})"
    return f"{path}: {message}"


def _schema_error(exc: ValidationError, event_id: str | None) -> EventValidationError:
    problems = [_describe(error, "") for error in exc.errors(include_url=False)]
    shown = "; ".join(problems[:5])
    if len(problems) > 5:
        shown += f"; and {len(problems) - 5} more"
    return EventValidationError("schema", shown, event_id=event_id)


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise EventValidationError(
                "invalid_utf8",
                f"message is not valid UTF-8: byte 0x{raw[bad.start]:02x} at position {bad.start} ({bad.reason})",
            ) from None
        if "surrogate" in exc.msg:
            _check_storable_text(raw, _parse_lax(raw))  # names the field when the standard library can read it
        detail = exc.msg
        at = str(exc.doc)[max(exc.pos - 1, 0) : exc.pos + 9]
        for constant in ("-Infinity", "NaN", "Infinity"):
            if constant in at:
                detail = f"{constant} is not valid JSON (use null or a string)"
                break
        raise EventValidationError(
            "invalid_json", f"message is not valid JSON: {detail} at line {exc.lineno} column {exc.colno}"
        ) from None


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
    document = _parse(raw)
    if type(document) is not dict:
        kind = _JSON_TYPE_NAMES.get(type(document), "value")
        raise EventValidationError("schema", f"message is a JSON {kind}, expected an object (the event envelope)")
    declared_id = document.get("event_id")
    event_type: Any = document.get("type")
    version = document.get("schema_version", 1)
    payload: Any = document.get("payload")
    validator = _validator_for(event_type, version, payload)
    if validator is None:
        raise _diagnose(document, declared_id)
    try:
        validator.validate_python(document)
    except ValidationError as exc:
        raise _schema_error(exc, _event_id_hint(declared_id)) from None
    if event_type == INTERACTION_LOGGED:
        _check_prompt(payload, declared_id)
    payload_json = _canonical_payload(payload, declared_id)
    escapes = b"\\u00" in raw  # one scan; the escapes of NUL and of ':' both start so
    if escapes and b"\\u0000" in raw:  # JSON cannot hold a raw NUL byte, so an escaped one is the only way in
        _check_storable_text(raw, document)
    _check_unique_keys(raw, document, payload_json, escapes)
    try:
        occurred_at = parse_timestamp(document["occurred_at"])
    except ValueError as exc:
        raise EventValidationError(
            "schema",
            f"occurred_at: {document['occurred_at']!r} is not a valid date and time ({exc})",
            event_id=_event_id_hint(declared_id),
        ) from None
    event = Event(
        event_id=declared_id if declared_id is not None else fallback_event_id,
        type=event_type,
        schema_version=version,
        occurred_at=occurred_at,
        source=document["source"],
        payload=payload,
    )
    event.__dict__["payload_json"] = payload_json.decode("utf-8")  # Event.payload_json: serialised once
    return event


# The hot path calls pydantic-core's validators directly (TypeAdapter's wrapper costs ~1us a call).
_INTERACTION_V1 = INTERACTION_V1.validator
_FEEDBACK_V1 = {kind: adapter.validator for kind, adapter in FEEDBACK_V1.items()}


def _validator_for(event_type: Any, version: Any, payload: Any) -> Any:
    """The whole-message validator for a known type, version (and feedback kind); None otherwise."""
    if version != 1:
        return None
    if event_type == INTERACTION_LOGGED:
        return _INTERACTION_V1
    if event_type == FEEDBACK_RECEIVED and type(payload) is dict:
        kind = payload.get("kind")
        return _FEEDBACK_V1.get(kind) if type(kind) is str else None  # a list or object as kind is unhashable
    return None


def _event_id_hint(declared_id: Any) -> str | None:
    """The declared id, for a dead letter's ``event_id`` column, when that column can hold it."""
    if not isinstance(declared_id, str) or not 0 < len(declared_id) <= 128 or "\x00" in declared_id:
        return None
    return declared_id if _is_unicode(declared_id) else None


def _is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode text, i.e. holds no lone surrogate (UTF-8 cannot encode one)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _diagnose(document: dict[str, Any], declared_id: Any) -> EventValidationError:
    """The error for a message no validator matched: unknown type, version or feedback kind, or no payload."""
    hint = _event_id_hint(declared_id)
    event_type = document.get("type")
    if isinstance(event_type, str) and event_type not in INBOUND_TYPES:
        if event_type in INTERNAL_TYPES:
            reason = f"type: {event_type!r} is internal to alignd and cannot be ingested from Kafka"
        else:
            reason = f"type: unknown event type {event_type!r}; expected one of {', '.join(sorted(INBOUND_TYPES))}"
        return EventValidationError("unknown_type", reason, event_id=hint)
    version = document.get("schema_version", 1)
    if isinstance(event_type, str) and type(version) is int and version not in KNOWN_SCHEMA_VERSIONS[event_type]:
        known = KNOWN_SCHEMA_VERSIONS[event_type]
        return EventValidationError(
            "unknown_schema_version",
            f"schema_version: {version} of {event_type} is not known to this alignd (it reads "
            f"{', '.join(map(str, sorted(known)))}); upgrade alignd, then requeue with `alignd dlq requeue`",
            event_id=hint,
        )
    payload = document.get("payload")
    if event_type == FEEDBACK_RECEIVED and type(version) is int:
        if not isinstance(payload, dict):
            shown = "missing" if "payload" not in document else f"a JSON {_JSON_TYPE_NAMES.get(type(payload), 'value')}"
            return EventValidationError("schema", f"payload: expected an object, got {shown}", event_id=hint)
        if "kind" not in payload:
            return EventValidationError("schema", "payload.kind: required field is missing", event_id=hint)
        return EventValidationError(
            "schema",
            f"payload.kind: {payload['kind']!r} is not a feedback kind; expected one of {', '.join(FEEDBACK_KINDS)}",
            event_id=hint,
        )
    # Anything else (no type, a type or version of the wrong JSON type): let the schema name every problem.
    adapter = INTERACTION_V1
    if event_type == FEEDBACK_RECEIVED and isinstance(payload, dict):
        kind = payload.get("kind")
        adapter = FEEDBACK_V1.get(kind, adapter) if type(kind) is str else adapter
    try:
        adapter.validate_python(document)
    except ValidationError as exc:
        return _schema_error(exc, hint)
    return EventValidationError("schema", "message does not match the event envelope", event_id=hint)


def _check_prompt(payload: Mapping[str, Any], declared_id: Any) -> None:
    prompt, messages = payload.get("prompt"), payload.get("messages")
    if prompt is None and messages is None:
        reason = "payload: either 'prompt' (a string) or 'messages' (a list of {role, content}) is required"
    elif prompt is not None and messages is not None:
        reason = "payload: give either 'prompt' or 'messages', not both"
    elif messages is not None and not messages:
        reason = "payload.messages: 'messages' is empty; it needs at least one {role, content}"
    else:
        return
    raise EventValidationError("schema", reason, event_id=_event_id_hint(declared_id))


# --- text a database cannot store, and keys given twice ------------------------------------------------
#
# PostgreSQL's text types cannot hold NUL (it refuses the whole batch: UntranslatableCharacter) and no UTF-8
# text can hold a lone surrogate; SQLite stores both. Refusing them here, naming the field, makes the two
# databases behave alike and keeps a batch from failing in the store. Both checks cost nothing on the common
# path: they only walk the document when a byte pattern in the raw message says they might find something.


class _Pairs(list[tuple[str, Any]]):
    """An object as the standard library's parser saw it: every key, duplicates included, in order."""


def _parse_lax(raw: bytes) -> Any:
    """The standard library's reading of a message orjson refused or that needs its keys one by one
    (it accepts lone surrogates and keeps duplicate keys); None when it cannot read it either."""
    try:
        return json.loads(raw, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return None


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, key-or-string) in a parsed document, keys before their values."""
    if isinstance(value, dict):
        value = _Pairs(value.items())
    if isinstance(value, _Pairs):
        for key, item in value:
            where = f"{path}.{key}" if path else str(key)
            yield where, key
            yield from _walk(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}.{index}" if path else str(index))
    elif isinstance(value, str):
        yield path, value


def _shown(path: str) -> str:
    return repr(path)[1:-1] if path else "message"


def _check_storable_text(raw: bytes, document: Any) -> None:
    """Refuse a NUL or a lone surrogate anywhere in the document (keys too), naming the first field."""
    if document is None:
        return
    for path, text in _walk(document):
        if "\x00" in text:
            problem = "contains a NUL character (\\u0000)"
        elif not _is_unicode(text):
            problem = "contains a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is not text"
        else:
            continue
        raise EventValidationError(
            "schema",
            f"{_shown(path)}: {problem}; the store cannot hold it as text (PostgreSQL refuses it, so alignd refuses it "
            "on every database): remove it or encode the value",
            event_id=_event_id_hint(document.get("event_id") if isinstance(document, dict) else None),
        )


def _canonical_payload(payload: dict[str, Any], declared_id: Any) -> bytes:
    """The payload's canonical JSON, which the store writes (``Event.payload_json``). orjson parses 1,024 levels
    of nesting but writes 254: deeper is refused here rather than failing the store's batch."""
    try:
        return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        raise EventValidationError(
            "schema",
            "payload: nested too deeply: alignd stores at most 254 levels of objects and arrays",
            event_id=_event_id_hint(declared_id),
        ) from None


def _check_unique_keys(raw: bytes, document: dict[str, Any], payload_json: bytes, escapes: bool) -> None:
    """Refuse an object that gives a key twice (RFC 8259 leaves the meaning open; parsers keep the first or the
    last, so the stored event might not be what the producer meant).

    Fast path, on a message the schema accepted (the envelope's values are strings and numbers, but the payload):
    orjson keeps the last of duplicate keys, so the message has one ``:`` more per duplicate than the envelope's
    keys, the colons in its string values and those of the payload written back. Colons inside strings are
    counted on both sides alike unless the message escaped one (``\\u003a``); then the standard library's
    parser, which keeps every key, decides.
    """
    # The schema accepted the envelope: event_id (or None), type, schema_version, occurred_at, source, payload.
    declared = document.get("event_id")
    expected = len(document) + payload_json.count(b":") + document["occurred_at"].count(":")
    expected += document["source"].count(":") + (declared.count(":") if declared is not None else 0)
    if raw.count(b":") == expected and not (escapes and (b"\\u003a" in raw or b"\\u003A" in raw)):
        return
    found = _duplicate_key(_parse_lax(raw))
    if found is not None:
        path, key = found
        raise EventValidationError(
            "schema",
            f"{_shown(path)}: key {key!r} appears more than once in the same object; send each key once",
            event_id=_event_id_hint(document.get("event_id")),
        )


def _duplicate_key(value: Any, path: str = "") -> tuple[str, str] | None:
    if isinstance(value, _Pairs):
        seen: set[str] = set()
        for key, item in value:
            if key in seen:
                return path, key
            seen.add(key)
            found = _duplicate_key(item, f"{path}.{key}" if path else key)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _duplicate_key(item, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None

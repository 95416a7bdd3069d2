"""Hypothesis strategies for hostile inbound messages, and the corpus of messages that once broke ingestion.

Three families, as a hostile producer would send them: arbitrary bytes; arbitrary JSON documents; and valid
envelopes with one or more mutations (any field replaced by a value of any type, an edge date, control
characters, huge numbers, deep nesting; a field dropped or added; a key given twice; the bytes cut short or
flipped). The corpus (``tests/data/hostile_corpus.jsonl``) keeps the shrunk failures found so far, each with
what it broke, and is replayed by the tests as regression cases.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.helpers import feedback, interaction

CORPUS = Path(__file__).resolve().parent / "data" / "hostile_corpus.jsonl"


def corpus() -> list[tuple[str, bytes]]:
    """(what it broke, the raw message) for every case in the corpus."""
    cases = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if line.strip():
            case = json.loads(line)
            cases.append((case["why"], base64.b64decode(case["raw_b64"])))
    return cases


EDGE_DATES = [
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "2026-02-29T00:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T23:59:60Z",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00-23:59",
    "2026-01-01T00:00:00.123456789+00:00",
    "2026-01-01t00:00:00z",
    "2026-01-01 00:00:00+00:00",
    "2026-01-01T00:00:00",
    "",
]
CONTROL = "".join(chr(c) for c in range(0x20)) + "\x7f\u2028\u2029\ufeff\ufffe\uffff"

hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(CONTROL + "\ud800\udbff\udc00\udfffa\\\"'"), max_size=20),
    st.sampled_from(EDGE_DATES),
    st.just("x" * 300),
    st.just("é" * 200),
    st.just("\U0001f600" * 100),
)
huge_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, 10**400]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([-0.0, 5e-324, 1.7976931348623157e308]),
)
scalars = st.one_of(st.none(), st.booleans(), huge_numbers, hostile_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=20,
)


def _deep(levels: int, kind: str) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value] if kind == "list" else {"k": value}
    return value


hostile_values = st.one_of(
    json_values,
    st.builds(_deep, st.sampled_from([250, 253, 254, 255, 256, 300, 1000]), st.sampled_from(["list", "dict"])),
)


def base_documents() -> st.SearchStrategy[dict[str, Any]]:
    """Valid envelopes of every inbound type and feedback kind."""
    values = {
        "thumbs": "up",
        "rating": 4,
        "preference": {"chosen": "a", "rejected": "b"},
        "correction": {"response": "better"},
        "flag": {"category": "toxic", "note": "rude"},
        "signal": {"name": "regenerated", "value": 1},
    }
    documents = [interaction("r-1", event_id="evt-1"), interaction("r-2", messages=[{"role": "user", "content": "hi"}])]
    documents[1]["payload"].pop("prompt")
    documents += [feedback("r-1", kind, value, event_id=f"fb-{kind}") for kind, value in values.items()]
    return st.sampled_from(documents)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _set(document: Any, path: tuple[Any, ...], value: Any, *, delete: bool = False) -> None:
    for part in path[:-1]:
        document = document[part]
    if delete:
        del document[path[-1]]
    else:
        document[path[-1]] = value


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> bytes:
    """A valid envelope with one to three structural mutations, then possibly a byte-level one."""
    document = json.loads(json.dumps(draw(base_documents())))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(document)
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if action == "add" or not paths:
            target = draw(st.sampled_from([(), ("payload",)]))
            parent = document if not target else document.get("payload")
            if isinstance(parent, dict):
                parent[draw(hostile_text)] = draw(hostile_values)
            continue
        path = draw(st.sampled_from(paths))
        _set(document, path, draw(hostile_values), delete=action == "delete")
    try:
        raw = json.dumps(document).encode("utf-8")
    except RecursionError:
        raw = b"{}"
    byte_level = draw(st.sampled_from(["none", "none", "none", "duplicate", "truncate", "flip", "nul"]))
    if byte_level == "duplicate" and raw.startswith(b"{") and len(raw) > 2:
        raw = b'{"source": "dup", ' + raw[1:]
    elif byte_level == "truncate":
        raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    elif byte_level == "flip" and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]
    elif byte_level == "nul":
        raw = raw.replace(b'"', b'"\\u0000', 1)
    return raw


arbitrary_json = json_values.map(lambda value: json.dumps(value).encode("utf-8"))
hostile_messages = st.one_of(st.binary(max_size=300), arbitrary_json, mutated_envelopes())


# --- valid but odd: what the decoder must accept, and everything after it must take -------------------------

printable_odd = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=0, max_size=60
)
nonempty_odd = printable_odd.filter(bool)
odd_numbers = st.one_of(
    st.integers(min_value=0, max_value=2**63 - 1),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 0.0, 5e-324, 1.7976931348623157e308, 2**53 + 1]),
)
#: JSON the store keeps as sent: integers within 64 bits (orjson reads larger ones as floats, as JavaScript does).
storable_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        printable_odd,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(printable_odd, inner, max_size=4)),
    max_leaves=20,
)
VALID_EDGE_DATES = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00-01:00",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59+01:00",
    "2026-02-28T23:59:59.123456789+23:59",
    "1970-01-01t00:00:00z",
]


@st.composite
def odd_valid_envelopes(draw: st.DrawFn) -> bytes:
    """Envelopes the schema accepts, with the oddest values each field allows."""
    request_id = draw(nonempty_odd.map(lambda s: s[:256]))
    envelope: dict[str, Any] = {
        "type": "interaction.logged",
        "occurred_at": draw(st.sampled_from(VALID_EDGE_DATES)),
        "source": draw(nonempty_odd.map(lambda s: s[:256])),
    }
    if draw(st.booleans()):
        envelope["event_id"] = draw(nonempty_odd.map(lambda s: s[:128]))
    kind = draw(st.sampled_from(["interaction", "thumbs", "rating", "preference", "correction", "flag", "signal"]))
    if kind == "interaction":
        payload: dict[str, Any] = {
            "request_id": request_id,
            "model": {"name": draw(nonempty_odd), "version": draw(nonempty_odd.map(lambda s: s[:128]))},
            "response": draw(printable_odd),
        }
        if draw(st.booleans()):
            payload["prompt"] = draw(printable_odd)
        else:
            payload["messages"] = draw(
                st.lists(
                    st.fixed_dictionaries({"role": nonempty_odd, "content": printable_odd}), min_size=1, max_size=4
                )
            )
        for name, strategy in (
            ("latency_ms", odd_numbers),
            ("user", printable_odd),
            ("session_id", printable_odd),
            ("metadata", st.dictionaries(printable_odd, storable_json, max_size=3)),
        ):
            if draw(st.booleans()):
                payload[name] = draw(strategy)
    else:
        envelope["type"] = "feedback.received"
        values = {
            "thumbs": st.sampled_from(["up", "down"]),
            "rating": st.integers(1, 5),
            "preference": st.fixed_dictionaries({"chosen": printable_odd, "rejected": printable_odd}),
            "correction": st.fixed_dictionaries({"response": printable_odd}),
            "flag": st.fixed_dictionaries(
                {"category": st.sampled_from(["toxic", "jailbreak", "hallucination", "pii", "other"])},
                optional={"note": printable_odd},
            ),
            "signal": st.fixed_dictionaries({"name": nonempty_odd}, optional={"value": odd_numbers}),
        }
        payload = {"request_id": request_id, "kind": kind, "value": draw(values[kind])}
        if draw(st.booleans()):
            payload["user"] = draw(printable_odd.map(lambda s: s[:256]))
        if draw(st.booleans()):
            payload["comment"] = draw(printable_odd)
    envelope["payload"] = payload
    return json.dumps(envelope).encode("utf-8")

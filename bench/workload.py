"""The realistic inbound stream the benchmarks produce: docs/event-contract.md envelopes, deterministic from a seed.

:class:`EventFactory` yields ``(key, value)`` Kafka messages: ``interaction.logged`` with prompts of 200-500
and responses of 300-800 characters (a share :data:`INTERACTION_SHARE` of the valid ones), ``feedback.received``
of every kind, and a chosen share of invalid messages (bad JSON, invalid UTF-8, missing or mistyped fields,
unknown type or schema version) that must become dead letters. Used by the ingestion, monitors and soak
benchmarks; :mod:`bench.harness` produces it to a topic.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

_WORDS = (
    "the model answer question user context policy reward feedback training data system prompt response "
    "should would could because however therefore example explain describe summary detail step first second "
    "then finally result error value function class method database table query index transaction commit "
    "kafka partition offset consumer producer event stream batch latency throughput memory cpu network "
    "python rust java go typescript request service deploy container cluster node version release rollback "
    "safety alignment preference human rating correction flag signal dataset evaluation metric accuracy "
    "please thanks help issue problem solution approach option tradeoff cost benefit risk small large fast "
    "slow simple complex clear careful good better best worse recipe travel weather history science math "
    "physics chemistry biology music film book article email letter report meeting schedule plan budget "
    "a an and or but if when while with without for from into onto over under between about around "
    "is are was were be been being have has had do does did can may might must will shall not no yes "
    "this that these those it its they them their we our you your he she his her i me my"
).split()
_UNICODE_BITS = ("naïve café", "“quoted”", "— em dash", "Zürich", "東京", "🙂", "résumé", "½ cup", "Ωmega")
_PROMPT_OPENERS = (
    "Can you explain",
    "Write a short summary of",
    "What is the difference between",
    "Help me debug",
    "Give me three ideas for",
    "Translate into plain English:",
    "Is it safe to",
    "Draft an email about",
    "Compare",
    "Why does",
)
_SOURCES = ("chat-gateway", "api-gateway", "mobile-app", "batch-eval")
_MODELS = (("smollm2-135m-instruct", "7"), ("smollm2-135m-instruct", "8"), ("alignd-policy", "12"))
_OFFSETS = (
    UTC,
    UTC,
    timezone(timedelta(hours=2)),
    timezone(timedelta(hours=-5)),
    timezone(timedelta(hours=5, minutes=30)),
)
_SIGNALS = ("regenerated", "copied", "edited", "abandoned", "escalated_to_human", "dwell_time_ms")
_FLAGS = ("toxic", "jailbreak", "hallucination", "pii", "other")
# kind -> weight among feedback
_FEEDBACK_MIX = (
    ("thumbs", 35),
    ("signal", 25),
    ("rating", 15),
    ("preference", 10),
    ("correction", 8),
    ("flag", 7),
)
_INVALID_KINDS = (
    "invalid_json",
    "missing_response",
    "missing_request_id",
    "invalid_utf8",
    "mistyped_rating",
    "unknown_type",
    "unknown_schema_version",
)
INTERACTION_SHARE = 0.6


class EventFactory:
    """Deterministic stream of (key, value) Kafka messages; see the module docstring for the mix."""

    def __init__(self, seed: int, n: int, invalid_rate: float) -> None:
        self.rng = random.Random(seed)
        self.n = n
        n_invalid = round(n * invalid_rate) if invalid_rate > 0 else 0
        self.invalid_at = set(self.rng.sample(range(n), n_invalid)) if n_invalid else set()
        self.start = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
        self.recent: list[str] = []
        self.counts: dict[str, int] = {}
        self.value_bytes = 0
        kinds, weights = zip(*_FEEDBACK_MIX, strict=True)
        self._kinds, self._weights = list(kinds), list(weights)

    def _text(self, lo: int, hi: int, opener: str | None = None) -> str:
        rng = self.rng
        target = rng.randint(lo, hi)
        words = rng.choices(_WORDS, k=target // 4 + 8)
        if opener:
            words.insert(0, opener)
        if rng.random() < 0.1:
            words.insert(rng.randrange(len(words)), rng.choice(_UNICODE_BITS))
        text = " ".join(words)
        if len(text) > target:
            cut = text.rfind(" ", 0, target)
            text = text[: cut if cut > lo // 2 else target]
        return text[0].upper() + text[1:] + "."

    def _envelope(self, i: int, event_type: str, payload: dict[str, Any], source: str) -> dict[str, Any]:
        rng = self.rng
        moment = self.start + timedelta(milliseconds=30 * i + rng.randint(0, 29))
        stamp = moment.astimezone(rng.choice(_OFFSETS)).isoformat(timespec="milliseconds")
        if stamp.endswith("+00:00") and rng.random() < 0.5:
            stamp = stamp[:-6] + "Z"
        doc: dict[str, Any] = {
            "type": event_type,
            "schema_version": 1,
            "occurred_at": stamp,
            "source": source,
            "payload": payload,
        }
        # A few producers send no event_id: alignd derives one from the Kafka coordinates.
        if rng.random() < 0.97:
            doc = {"event_id": f"evt-{rng.getrandbits(96):024x}", **doc}
        return doc

    def interaction(self, i: int) -> dict[str, Any]:
        rng = self.rng
        request_id = f"req-{i:08d}-{rng.getrandbits(32):08x}"
        self.recent.append(request_id)
        if len(self.recent) > 5000:
            del self.recent[:1000]
        name, version = rng.choice(_MODELS)
        payload: dict[str, Any] = {"request_id": request_id, "model": {"name": name, "version": version}}
        prompt = self._text(200, 500, rng.choice(_PROMPT_OPENERS))
        if rng.random() < 0.2:
            payload["messages"] = [
                {"role": "system", "content": "You are a helpful, harmless and honest assistant."},
                {"role": "user", "content": prompt},
            ]
        else:
            payload["prompt"] = prompt
        payload["response"] = self._text(300, 800)
        payload["latency_ms"] = round(rng.lognormvariate(6.0, 0.5), 1)
        payload["user"] = f"user-{rng.randrange(20_000):05d}"
        payload["session_id"] = f"sess-{rng.randrange(60_000):06d}"
        if rng.random() < 0.5:
            payload["metadata"] = {
                "locale": rng.choice(("en-GB", "en-US", "de-DE", "fr-FR")),
                "temperature": 0.7,
                "channel": "web",
            }
        return self._envelope(i, "interaction.logged", payload, rng.choice(_SOURCES))

    def feedback(self, i: int, kind: str | None = None) -> dict[str, Any]:
        rng = self.rng
        kind = kind or rng.choices(self._kinds, self._weights)[0]
        if self.recent and rng.random() < 0.92:
            request_id = rng.choice(self.recent)
        else:  # feedback for an interaction never seen (or not yet)
            request_id = f"req-unknown-{rng.getrandbits(40):010x}"
        value: Any
        if kind == "thumbs":
            value = "up" if rng.random() < 0.7 else "down"
        elif kind == "rating":
            value = rng.randint(1, 5)
        elif kind == "preference":
            value = {"chosen": self._text(300, 800), "rejected": self._text(300, 800)}
        elif kind == "correction":
            value = {"response": self._text(300, 800)}
        elif kind == "flag":
            value = {"category": rng.choice(_FLAGS)}
            if rng.random() < 0.5:
                value["note"] = self._text(20, 120)
        else:
            name = rng.choice(_SIGNALS)
            value = {"name": name, "value": rng.randint(500, 120_000)} if name == "dwell_time_ms" else {"name": name}
        payload: dict[str, Any] = {"request_id": request_id, "kind": kind, "value": value}
        if rng.random() < 0.7:
            payload["user"] = f"user-{rng.randrange(20_000):05d}"
        if rng.random() < 0.1:
            payload["comment"] = self._text(20, 200)
        return self._envelope(i, "feedback.received", payload, "feedback-service")

    def invalid(self, i: int) -> tuple[str, bytes]:
        kind = self.rng.choice(_INVALID_KINDS)
        if kind == "invalid_json":
            raw = json.dumps(self.interaction(i)).encode()
            return kind, raw[: len(raw) // 2]
        if kind == "missing_response":
            doc = self.interaction(i)
            del doc["payload"]["response"]
        elif kind == "missing_request_id":
            doc = self.feedback(i, "thumbs")
            del doc["payload"]["request_id"]
        elif kind == "invalid_utf8":
            raw = json.dumps(self.interaction(i), ensure_ascii=False).encode()
            return kind, raw[:40] + b"\xc3\x28" + raw[40:]
        elif kind == "mistyped_rating":
            doc = self.feedback(i, "rating")
            doc["payload"]["value"] = str(doc["payload"]["value"])
        elif kind == "unknown_type":
            doc = self.interaction(i)
            doc["type"] = "interaction.deleted"
        else:
            doc = self.interaction(i)
            doc["schema_version"] = 9
        return kind, json.dumps(doc, ensure_ascii=False).encode()

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        rng = self.rng
        for i in range(self.n):
            if i in self.invalid_at:
                kind, value = self.invalid(i)
                label = f"invalid:{kind}"
                key = f"bad-{i}".encode()
            else:
                doc = self.interaction(i) if rng.random() < INTERACTION_SHARE else self.feedback(i)
                value = json.dumps(doc, ensure_ascii=False).encode()
                label = doc["type"] if doc["type"] == "interaction.logged" else f"feedback:{doc['payload']['kind']}"
                key = doc["payload"]["request_id"].encode()
            self.counts[label] = self.counts.get(label, 0) + 1
            self.value_bytes += len(value)
            yield key, value

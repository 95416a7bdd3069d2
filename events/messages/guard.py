"""The guard's decisions: ``guard_rule.lifted`` (an operator ends a guard rule) and ``guard.decided`` (a request
the guard did not simply allow). docs/guard.md describes both."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from events.messages.base import Description, EventRecord
from events.names import GUARD_DECIDED, GUARD_RULE_LIFTED


@dataclass(frozen=True)
class GuardRuleLifted(EventRecord):
    """An operator lifts a guard rule before it expires.

    Attributes:
        rule_id: the event id of the ``enforcement.requested`` (action ``publish_guard_rule``) that made the rule.
        actor: who lifted it; reason: why.
    """

    event_type: ClassVar[str] = GUARD_RULE_LIFTED

    rule_id: str
    actor: str
    reason: str

    def to_payload(self) -> dict[str, Any]:
        return {"rule_id": self.rule_id, "actor": self.actor, "reason": self.reason}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        return cls(rule_id=payload["rule_id"], actor=payload["actor"], reason=payload["reason"])

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        return Description(f"guard rule {payload.get('rule_id')} lifted", None, str(payload.get("reason", "")))


@dataclass(frozen=True)
class GuardDecided(EventRecord):
    """A request the guard flagged, redacted or blocked (allowed ones are not stored).

    Attributes:
        decision: ``flag``, ``redact`` or ``block``.
        reasons: why, one phrase per finding (``"rule <id>: ..."``, ``"jailbreak patterns ..."``, ``"pii: email"``).
        rule_ids: the guard rules that matched.
        request_id, user_id, model: as the caller sent them (None, and no key, when it did not).
        prompt, response: the texts as checked, with every PII item replaced by ``[kind]`` and cut to a bounded
            length; None (and no key) when not sent. The raw text of a PII item is never stored.
        replica: the guard replica that decided (host:port).
    """

    event_type: ClassVar[str] = GUARD_DECIDED

    decision: str
    reasons: tuple[str, ...]
    rule_ids: tuple[str, ...] = ()
    request_id: str | None = None
    user_id: str | None = None
    model: str | None = None
    prompt: str | None = None
    response: str | None = None
    replica: str | None = None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "decision": self.decision,
            "reasons": list(self.reasons),
            "rule_ids": list(self.rule_ids),
        }
        for key in ("request_id", "user_id", "model", "prompt", "response", "replica"):
            value = getattr(self, key)
            if value is not None:
                payload[key] = value
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        return cls(
            decision=payload["decision"],
            reasons=tuple(payload.get("reasons", ())),
            rule_ids=tuple(payload.get("rule_ids", ())),
            request_id=payload.get("request_id"),
            user_id=payload.get("user_id"),
            model=payload.get("model"),
            prompt=payload.get("prompt"),
            response=payload.get("response"),
            replica=payload.get("replica"),
        )

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        about = f"request {payload['request_id']}" if payload.get("request_id") else "a request"
        user = f" of user {payload['user_id']}" if payload.get("user_id") else ""
        model = payload.get("model")
        return Description(
            f"guard {payload.get('decision')} {about}{user}",
            str(model) if model else None,
            "; ".join(str(r) for r in payload.get("reasons") or ()),
        )

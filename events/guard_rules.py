"""The guard rules in force, folded from the store (docs/guard.md).

A rule is born from an ``enforcement.requested`` whose action is ``publish_guard_rule`` (a monitor's rule asks for
one on a jailbreak that worked or a PII leak; an operator may append one): its id is that event's id. It ends
when it expires (``expires_at`` in the request's target, else the fold's default TTL after the request) or when a
``guard_rule.lifted`` names it. A rule matches a request when:

* its subject is ``user:X`` and the request's ``user_id`` is ``X``; or
* the request's prompt, normalised (:func:`normalise_prompt`: case folded, whitespace collapsed), has the
  SHA-256 of a prompt the rule holds: the prompts of its evidence events (``target.event_ids``, the request's
  ``evidence``, an ``event:<id>`` subject) read from the store when the rule is folded, and any
  ``target.prompt_sha256`` given outright.

:class:`GuardRuleFold` is incremental: it keeps the seq it has read to, and :meth:`GuardRuleFold.catch_up` reads
only the newer events of the two types, so a guard replica refreshes every second for one indexed query.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from events.codec import format_timestamp
from events.model import StoredEvent, user_prompt
from events.names import ENFORCEMENT_REQUESTED, GUARD_RULE_LIFTED
from events.store import EventStore

logger = logging.getLogger(__name__)

#: The enforcement action whose request is a guard rule.
PUBLISH_GUARD_RULE = "publish_guard_rule"
#: The event types the fold reads.
RULE_TYPES: tuple[str, ...] = (ENFORCEMENT_REQUESTED, GUARD_RULE_LIFTED)
#: Evidence events read per rule at most (a monitor's evidence is bounded; an operator's need not be).
MAX_EVIDENCE = 100
_SPACE = re.compile(r"\s+")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def normalise_prompt(text: str) -> str:
    """``text`` case folded, its whitespace runs made one space, stripped: what a rule's prompt hash is over."""
    return _SPACE.sub(" ", text.casefold()).strip()


def prompt_hash(text: str) -> str:
    """The SHA-256 (hex) of ``text`` normalised."""
    return hashlib.sha256(normalise_prompt(text).encode("utf-8", "surrogatepass")).hexdigest()


#: The prompt a rule's evidence and a request are compared on (events.model.user_prompt).
prompt_of = user_prompt


@dataclass(frozen=True)
class GuardRule:
    """One guard rule: what it matches, why, and until when.

    Attributes:
        rule_id: the id of the ``enforcement.requested`` event that made it.
        detector: the detector whose alert asked for it (None for an operator's).
        subject: the alert's subject (``user:u-7``, ``event:<id>``).
        reason: the request's reason (the alert's summary).
        created_at: when the request was made.
        expires_at: when it stops matching; None: until lifted.
        user: the user whose requests it blocks (from a ``user:`` subject), else None.
        prompt_hashes: SHA-256 of the normalised prompts it blocks.
    """

    rule_id: str
    detector: str | None
    subject: str
    reason: str
    created_at: datetime
    expires_at: datetime | None
    user: str | None = None
    prompt_hashes: frozenset[str] = field(default_factory=frozenset)

    def in_force(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "detector": self.detector,
            "subject": self.subject,
            "reason": self.reason,
            "created_at": format_timestamp(self.created_at),
            "expires_at": format_timestamp(self.expires_at) if self.expires_at is not None else None,
            "user": self.user,
            "prompts": len(self.prompt_hashes),
        }


@dataclass(frozen=True)
class RuleIndex:
    """The rules by what they match, for the request path (immutable: a refresh builds a new one)."""

    by_user: Mapping[str, tuple[GuardRule, ...]] = field(default_factory=dict)
    by_prompt: Mapping[str, tuple[GuardRule, ...]] = field(default_factory=dict)
    rules: int = 0

    def match(self, *, now: datetime, user_id: str | None = None, prompt: str | None = None) -> list[GuardRule]:
        """The rules in force at ``now`` that match a request of ``user_id`` with ``prompt``."""
        if not self.rules:
            return []
        found: list[GuardRule] = []
        if user_id is not None:
            found.extend(self.by_user.get(user_id, ()))
        if prompt is not None and self.by_prompt:
            found.extend(r for r in self.by_prompt.get(prompt_hash(prompt), ()) if r not in found)
        return [r for r in found if r.in_force(now)]


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class GuardRuleFold:
    """The guard rules, folded incrementally from the store.

    ``default_ttl_s`` is how long a rule without ``expires_at`` lasts from its request (None or 0: until lifted).
    """

    def __init__(self, *, default_ttl_s: float | None = None, batch_size: int = 500) -> None:
        self.default_ttl_s = default_ttl_s
        self.batch_size = batch_size
        self.position = 0
        self._rules: dict[str, GuardRule] = {}
        self._lifted: dict[str, str] = {}  # rule id -> the lift's event id
        self._index = RuleIndex()

    @property
    def index(self) -> RuleIndex:
        """The rules by what they match, as of the last :meth:`catch_up` (expiry is checked at match time)."""
        return self._index

    def catch_up(self, store: EventStore) -> int:
        """Fold the rule events appended since the last call; returns how many were read."""
        read = 0
        changed = False
        while True:
            batch = store.read(self.position, limit=self.batch_size, types=RULE_TYPES)
            if not batch:
                break
            for stored in batch:
                changed |= self.apply(stored, store)
            read += len(batch)
            self.position = batch[-1].seq
            if len(batch) < self.batch_size:
                break
        if changed:
            self._index = self._build_index()
        return read

    def apply(self, stored: StoredEvent, store: EventStore | None = None) -> bool:
        """Fold one event; ``store`` reads a new rule's evidence prompts (none without it). Whether it changed
        the rules."""
        event = stored.event
        payload = event.payload
        if event.type == GUARD_RULE_LIFTED:
            rule_id = payload.get("rule_id")
            if not isinstance(rule_id, str) or rule_id in self._lifted:
                return False
            self._lifted[rule_id] = event.event_id
            return self._rules.pop(rule_id, None) is not None
        if event.type != ENFORCEMENT_REQUESTED or payload.get("action") != PUBLISH_GUARD_RULE:
            return False
        if event.event_id in self._lifted or event.event_id in self._rules:
            return False
        rule = self._rule(stored, store)
        if rule is None:
            return False
        self._rules[rule.rule_id] = rule
        return True

    def _rule(self, stored: StoredEvent, store: EventStore | None) -> GuardRule | None:
        event = stored.event
        payload = event.payload
        target = payload.get("target")
        target = target if isinstance(target, Mapping) else {}
        subject = str(target.get("subject") or payload.get("subject") or "")
        kind, _, rest = subject.partition(":")
        expires_at = _parse_time(target.get("expires_at"))
        if expires_at is None and self.default_ttl_s:
            expires_at = event.occurred_at + timedelta(seconds=self.default_ttl_s)
        hashes = {h for h in _strings(target.get("prompt_sha256")) if _SHA256.fullmatch(h)}
        evidence = [*_strings(target.get("event_ids")), *_strings(payload.get("evidence"))]
        if kind == "event" and rest:
            evidence.append(rest)
        if store is not None:
            for event_id in list(dict.fromkeys(evidence))[:MAX_EVIDENCE]:
                found = store.get(event_id)
                prompt = prompt_of(found.event.payload) if found is not None else None
                if prompt:
                    hashes.add(prompt_hash(prompt))
        user = rest if kind == "user" and rest else None
        if user is None and not hashes:
            logger.warning(
                "guard rule %s matches nothing: its subject is %r and no evidence event holds a prompt",
                event.event_id,
                subject,
            )
        detector = target.get("detector") or payload.get("detector")
        return GuardRule(
            rule_id=event.event_id,
            detector=str(detector) if detector else None,
            subject=subject,
            reason=str(payload.get("reason", "")),
            created_at=event.occurred_at,
            expires_at=expires_at,
            user=user,
            prompt_hashes=frozenset(hashes),
        )

    def _build_index(self) -> RuleIndex:
        by_user: dict[str, list[GuardRule]] = {}
        by_prompt: dict[str, list[GuardRule]] = {}
        for rule in self._rules.values():
            if rule.user is not None:
                by_user.setdefault(rule.user, []).append(rule)
            for digest in rule.prompt_hashes:
                by_prompt.setdefault(digest, []).append(rule)
        return RuleIndex(
            by_user={k: tuple(v) for k, v in by_user.items()},
            by_prompt={k: tuple(v) for k, v in by_prompt.items()},
            rules=len(self._rules),
        )

    def rules(self, now: datetime | None = None) -> list[GuardRule]:
        """The rules folded so far, oldest first; with ``now``, only those in force then."""
        rules = sorted(self._rules.values(), key=lambda r: (r.created_at, r.rule_id))
        return rules if now is None else [r for r in rules if r.in_force(now)]

    def known(self, rule_id: str) -> bool:
        """Whether ``rule_id`` is a rule folded so far (in force, expired or lifted)."""
        return rule_id in self._rules or rule_id in self._lifted

    def lifted(self, rule_id: str) -> bool:
        return rule_id in self._lifted


def _strings(value: Any) -> Sequence[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return [v for v in value if isinstance(v, str)]
    return []

"""Feedback flooding: a few users producing much of the recent feedback, or bursts of identical feedback.

Both are how training data gets poisoned through a feedback channel: one account (or a handful) voting
thousands of times, or a script replaying the same correction or preference. The detector keeps a sliding
window of the last ``window`` feedback events and checks, as each arrives:

* the share of the window held by its user, against ``user_share`` (with at least ``min_user_events``);
* how many times the same content (kind, value, comment) appears in the window, against ``burst``.

Each subject (a user, a content hash) has a cooldown of ``cooldown`` feedback events after an alert.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from events.names import FEEDBACK_RECEIVED
from monitors.base import Finding, Observation


@dataclass(frozen=True)
class FloodingConfig:
    window: int = 500
    min_window: int = 200  # no alert until the window holds this much feedback
    user_share: float = 0.2  # one user with a fifth of all recent feedback
    min_user_events: int = 50
    burst: int = 25  # the same non-trivial content this many times in the window
    cooldown: int = 1000


def _content(payload: Mapping[str, Any]) -> str | None:
    """A hash of what the feedback says, for kinds where identical content is suspicious.

    Thumbs and ratings are few distinct values and legitimately repeat; corrections, preferences, flags
    with notes and comments carry text a person writes once.
    """
    kind, value = payload.get("kind"), payload.get("value")
    if kind in ("thumbs", "rating", "signal") and not payload.get("comment"):
        return None
    if kind == "flag" and not (isinstance(value, dict) and value.get("note")) and not payload.get("comment"):
        return None
    text = json.dumps([kind, value, payload.get("comment")], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FeedbackFloodingDetector:
    name = "feedback_flooding"

    def __init__(self, config: FloodingConfig | None = None) -> None:
        self.config = config or FloodingConfig()
        self._window: deque[tuple[int, str, str | None, str | None]] = deque()
        self._users: Counter[str] = Counter()
        self._contents: Counter[str] = Counter()
        self._seen = 0
        self._quiet_until: dict[str, int] = {}

    def observe(self, observation: Observation) -> list[Finding]:
        stored = observation.event
        if stored.event.type != FEEDBACK_RECEIVED:
            return []
        payload = stored.event.payload
        user = payload.get("user")
        content = _content(payload)
        self._push((stored.seq, stored.event.event_id, user, content))
        if len(self._window) < self.config.min_window:
            return []
        findings = []
        if user is not None and self._users[user] >= self.config.min_user_events:
            share = self._users[user] / len(self._window)
            if share >= self.config.user_share:
                findings += self._fire(
                    f"user:{user}",
                    stored.seq,
                    f"user {user} gave {self._users[user]} of the last {len(self._window)} feedback events ({share:.0%})",
                    {"user": user, "events": self._users[user], "share": round(share, 4)},
                    [e for _, e, u, _ in self._window if u == user],
                )
        if content is not None and self._contents[content] >= self.config.burst:
            findings += self._fire(
                f"content:{content}",
                stored.seq,
                f"the same {payload.get('kind')} feedback arrived {self._contents[content]} times in the last "
                f"{len(self._window)} feedback events",
                {"kind": payload.get("kind"), "copies": self._contents[content]},
                [e for _, e, _, c in self._window if c == content],
            )
        return findings

    def _push(self, item: tuple[int, str, str | None, str | None]) -> None:
        self._seen += 1
        self._window.append(item)
        if item[2] is not None:
            self._users[item[2]] += 1
        if item[3] is not None:
            self._contents[item[3]] += 1
        if len(self._window) > self.config.window:
            _, _, user, content = self._window.popleft()
            if user is not None:
                self._users[user] -= 1
                if not self._users[user]:
                    del self._users[user]
            if content is not None:
                self._contents[content] -= 1
                if not self._contents[content]:
                    del self._contents[content]

    def _fire(
        self, subject: str, seq: int, summary: str, statistics: dict[str, Any], evidence: list[str]
    ) -> list[Finding]:
        if self._seen < self._quiet_until.get(subject, 0):
            return []
        self._quiet_until[subject] = self._seen + self.config.cooldown
        first, last = self._window[0][0], self._window[-1][0]
        return [
            Finding(
                detector=self.name,
                subject=subject,
                severity="warning",
                summary=summary,
                trigger_seq=seq,
                window={"from_seq": first, "to_seq": last, "feedback_events": len(self._window)},
                statistics=statistics,
                evidence=tuple(evidence[-50:]),
            )
        ]

    def state(self) -> dict[str, Any]:
        return {
            "window": [list(item) for item in self._window],
            "seen": self._seen,
            "quiet_until": {k: v for k, v in self._quiet_until.items() if v > self._seen},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self._window.clear()
        self._users.clear()
        self._contents.clear()
        self._seen = 0
        for item in state.get("window", []):
            self._push((int(item[0]), str(item[1]), item[2], item[3]))
        self._seen = int(state.get("seen", 0))
        self._quiet_until = {k: int(v) for k, v in state.get("quiet_until", {}).items()}

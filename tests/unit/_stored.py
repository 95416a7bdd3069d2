"""Hand-made stored events for the pure tests of joins and projections (no store involved)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from events.model import FEEDBACK_RECEIVED, INTERACTION_LOGGED, Event, StoredEvent

T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def stored(seq: int, event: Event) -> StoredEvent:
    return StoredEvent(seq=seq, event=event, recorded_at=T0 + timedelta(seconds=seq))


def interaction(
    seq: int,
    request_id: str,
    *,
    response: str = "the logged response",
    prompt: str | None = "the prompt",
    messages: list[dict[str, str]] | None = None,
    model: tuple[str, str] = ("smollm2", "1"),
    user: str | None = None,
    event_id: str | None = None,
) -> StoredEvent:
    payload: dict[str, Any] = {
        "request_id": request_id,
        "model": {"name": model[0], "version": model[1]},
        "response": response,
    }
    if messages is not None:
        payload["messages"] = messages
    else:
        payload["prompt"] = prompt
    if user is not None:
        payload["user"] = user
    return stored(
        seq,
        Event(
            event_id=event_id or f"i-{seq}",
            type=INTERACTION_LOGGED,
            occurred_at=T0 + timedelta(seconds=seq),
            source="chat-api",
            payload=payload,
        ),
    )


def feedback(
    seq: int,
    request_id: str,
    kind: str,
    value: Any,
    *,
    user: str | None = None,
    event_id: str | None = None,
) -> StoredEvent:
    payload: dict[str, Any] = {"request_id": request_id, "kind": kind, "value": value}
    if user is not None:
        payload["user"] = user
    return stored(
        seq,
        Event(
            event_id=event_id or f"f-{seq}",
            type=FEEDBACK_RECEIVED,
            occurred_at=T0 + timedelta(seconds=seq),
            source="feedback-widget",
            payload=payload,
        ),
    )


def internal(seq: int, event_type: str, payload: dict[str, Any] | None = None) -> StoredEvent:
    return stored(
        seq,
        Event(
            event_id=f"x-{seq}",
            type=event_type,
            occurred_at=T0 + timedelta(seconds=seq),
            source="alignd",
            payload=payload or {},
        ),
    )

"""The projection contract and the four built-in projections.

Each projection folds :class:`~events.projections.join.Joined` units into rows of one table. ``fold`` is
pure (rows in, rows out), so the SQL around it is shared by all projections in the runner.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, ClassVar

from sqlalchemy import Table

from events.codec import canonical_json, format_timestamp
from events.model import FLAG_CATEGORIES, StoredEvent
from events.names import DEMONSTRATION_GENERATED
from events.projections.join import JOINED_TYPES, Joined, join_batch
from events.tables import proj_demonstrations, proj_feedback_stats, proj_interactions, proj_preference_pairs

logger = logging.getLogger(__name__)

Row = dict[str, Any]
Key = tuple[Any, ...]

#: A rating at or above this makes the logged response a demonstration ("top-rated").
TOP_RATING = 5


def prompt_of(payload: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt_kind, prompt): the prompt string, or the chat messages as canonical JSON."""
    if payload.get("prompt") is not None:
        return "text", payload["prompt"]
    return "messages", canonical_json(payload.get("messages") or [])


class Projection:
    """A read model kept in one table, keyed by its primary key."""

    name: ClassVar[str]
    table: ClassVar[Table]
    #: The event types it folds; the default, interactions and feedback, are joined (see join.py).
    types: ClassVar[tuple[str, ...]] = JOINED_TYPES

    def units(self, batch: Sequence[StoredEvent], related: Sequence[StoredEvent]) -> list[Any]:
        """What :meth:`fold` folds for a batch: joined interaction/feedback units by default."""
        return join_batch(batch, related)

    def keys(self, unit: Joined) -> list[Key]:
        """Primary keys of the rows ``unit`` touches (loaded before :meth:`fold`)."""
        raise NotImplementedError

    def fold(self, rows: MutableMapping[Key, Row], unit: Joined) -> None:
        """Apply ``unit`` to ``rows`` (existing rows by key; add new ones)."""
        raise NotImplementedError

    @property
    def key_columns(self) -> list[str]:
        return [c.name for c in self.table.primary_key.columns]


def _model(unit: Joined) -> tuple[str, str]:
    model = unit.interaction.event.payload["model"]
    return model["name"], model["version"]


def _example(unit: Joined, origin: str) -> Row:
    """Columns a training example shares: where it came from, its prompt, the model that answered."""
    assert unit.feedback is not None
    kind, prompt = prompt_of(unit.interaction.event.payload)
    model_name, model_version = _model(unit)
    return {
        "seq": unit.seq,
        "request_id": unit.interaction.event.request_id,
        "origin": origin,
        "prompt_kind": kind,
        "prompt": prompt,
        "model_name": model_name,
        "model_version": model_version,
        "user_id": unit.feedback.event.payload.get("user"),
    }


class InteractionsProjection(Projection):
    """One row per request: the logged interaction with its feedback aggregated."""

    name = "interactions"
    table = proj_interactions

    def keys(self, unit: Joined) -> list[Key]:
        return [(unit.interaction.event.request_id,)]

    def fold(self, rows: MutableMapping[Key, Row], unit: Joined) -> None:
        interaction = unit.interaction
        payload = interaction.event.payload
        key = (interaction.event.request_id,)
        if unit.feedback is None:
            kind, prompt = prompt_of(payload)
            model_name, model_version = _model(unit)
            rows[key] = {
                "request_id": key[0],
                "interaction_seq": interaction.seq,
                "event_id": interaction.event.event_id,
                "occurred_at": format_timestamp(interaction.event.occurred_at),
                "model_name": model_name,
                "model_version": model_version,
                "prompt_kind": kind,
                "prompt": prompt,
                "response": payload["response"],
                "user_id": payload.get("user"),
                "session_id": payload.get("session_id"),
                "feedback_count": 0,
                "thumbs_up": 0,
                "thumbs_down": 0,
                "rating_count": 0,
                "rating_sum": 0,
                "last_rating": None,
                "flags": "[]",
                "corrections": 0,
                "preferences": 0,
                "signals": 0,
                "last_feedback_seq": None,
            }
            return
        row = rows[key]
        feedback = unit.feedback.event.payload
        kind, value = feedback["kind"], feedback["value"]
        row["feedback_count"] += 1
        row["last_feedback_seq"] = unit.feedback.seq
        if kind == "thumbs":
            row["thumbs_up" if value == "up" else "thumbs_down"] += 1
        elif kind == "rating":
            row["rating_count"] += 1
            row["rating_sum"] += value
            row["last_rating"] = value
        elif kind == "flag":
            flags = json.loads(row["flags"])
            if value["category"] not in flags:
                flags.append(value["category"])
            row["flags"] = canonical_json(sorted(flags))
        elif kind == "correction":
            row["corrections"] += 1
        elif kind == "preference":
            row["preferences"] += 1
        elif kind == "signal":
            row["signals"] += 1


class PreferencePairsProjection(Projection):
    """Chosen/rejected pairs: explicit preferences, and corrections preferred over the logged response."""

    name = "preference_pairs"
    table = proj_preference_pairs

    def keys(self, unit: Joined) -> list[Key]:
        return [(unit.feedback.event.event_id,)] if unit.feedback is not None else []

    def fold(self, rows: MutableMapping[Key, Row], unit: Joined) -> None:
        if unit.feedback is None:
            return
        feedback = unit.feedback.event.payload
        interaction = unit.interaction.event.payload
        if feedback["kind"] == "preference":
            chosen, rejected, origin = feedback["value"]["chosen"], feedback["value"]["rejected"], "preference"
        elif feedback["kind"] == "correction":
            chosen, rejected, origin = feedback["value"]["response"], interaction["response"], "correction"
        else:
            return
        if chosen == rejected:
            return
        key = (unit.feedback.event.event_id,)
        rows.setdefault(key, {"pair_id": key[0], **_example(unit, origin), "chosen": chosen, "rejected": rejected})


def _generated_row(stored: StoredEvent) -> Row | None:
    """The demonstration a ``demonstration.generated`` event carries, or None when its payload is unusable.

    ``feedback_event_id`` is the event's own id, so quarantining that event (``quarantine_events``) leaves
    the demonstration out of training sets, as it does for a correction.
    """
    payload = stored.event.payload
    model = payload.get("model")
    text_fields = ("request_id", "prompt_kind", "prompt", "response")
    if (
        not all(isinstance(payload.get(name), str) for name in text_fields)
        or not isinstance(model, Mapping)
        or not isinstance(model.get("name"), str)
        or not isinstance(model.get("version"), str)
    ):
        # An internal event we cannot fold must not wedge the projection: skip it and say so.
        logger.warning("demonstrations: skipping %s (seq %d): malformed payload", stored.event.event_id, stored.seq)
        return None
    origin = payload.get("origin")
    user = payload.get("user")
    return {
        "demo_id": stored.event.event_id,
        "feedback_event_id": stored.event.event_id,
        "seq": stored.seq,
        "request_id": payload["request_id"],
        "origin": origin if isinstance(origin, str) and 0 < len(origin) <= 16 else "generated",
        "prompt_kind": payload["prompt_kind"],
        "prompt": payload["prompt"],
        "response": payload["response"],
        "model_name": model["name"],
        "model_version": model["version"],
        "user_id": user if isinstance(user, str) else None,
    }


class DemonstrationsProjection(Projection):
    """Supervised examples: corrections, responses rated :data:`TOP_RATING` (once per request), and
    demonstrations alignd generated (``demonstration.generated``, e.g. constitutional revisions).

    Units are :class:`Joined` for interactions and feedback, and the :class:`StoredEvent` itself for a
    generated demonstration, which needs no join: its payload carries the prompt and the model.
    """

    name = "demonstrations"
    table = proj_demonstrations
    types: ClassVar[tuple[str, ...]] = (*JOINED_TYPES, DEMONSTRATION_GENERATED)

    def units(self, batch: Sequence[StoredEvent], related: Sequence[StoredEvent]) -> list[Any]:
        joined = join_batch([e for e in batch if e.event.type in JOINED_TYPES], related)
        generated = [e for e in batch if e.event.type == DEMONSTRATION_GENERATED]
        # join_batch emits units in non-decreasing seq; a stable sort keeps that order and slots the
        # generated ones in by seq, so the fold order depends only on the store, never on batching.
        return sorted([*joined, *generated], key=lambda unit: unit.seq)

    def _key(self, unit: Joined | StoredEvent) -> Key | None:
        if isinstance(unit, StoredEvent):
            return (unit.event.event_id,)
        if unit.feedback is None:
            return None
        feedback = unit.feedback.event.payload
        if feedback["kind"] == "correction":
            return (unit.feedback.event.event_id,)
        if feedback["kind"] == "rating" and feedback["value"] >= TOP_RATING:
            return (f"top_rated:{unit.interaction.event.request_id}",)
        return None

    def keys(self, unit: Joined | StoredEvent) -> list[Key]:
        key = self._key(unit)
        return [key] if key is not None else []

    def fold(self, rows: MutableMapping[Key, Row], unit: Joined | StoredEvent) -> None:
        if isinstance(unit, StoredEvent):
            generated = _generated_row(unit)
            if generated is not None:
                rows.setdefault((generated["demo_id"],), generated)
            return
        key = self._key(unit)
        if key is None or unit.feedback is None:
            return
        feedback = unit.feedback.event.payload
        interaction = unit.interaction.event.payload
        is_correction = feedback["kind"] == "correction"
        response = feedback["value"]["response"] if is_correction else interaction["response"]
        origin = "correction" if is_correction else "top_rated"
        row = {"demo_id": key[0], "feedback_event_id": unit.feedback.event.event_id, **_example(unit, origin)}
        rows.setdefault(key, {**row, "response": response})


class FeedbackStatsProjection(Projection):
    """Counts per model version: interactions, thumbs, ratings, flags by category, corrections..."""

    name = "feedback_stats"
    table = proj_feedback_stats

    def keys(self, unit: Joined) -> list[Key]:
        return [_model(unit)]

    def fold(self, rows: MutableMapping[Key, Row], unit: Joined) -> None:
        key = _model(unit)
        row = rows.get(key)
        if row is None:
            row = {c.name: 0 for c in self.table.columns}
            row["model_name"], row["model_version"] = key
            rows[key] = row
        row["last_seq"] = max(row["last_seq"], unit.seq)
        if unit.feedback is None:
            row["interactions"] += 1
            return
        feedback = unit.feedback.event.payload
        kind, value = feedback["kind"], feedback["value"]
        row["feedback"] += 1
        if kind == "thumbs":
            row["thumbs_up" if value == "up" else "thumbs_down"] += 1
        elif kind == "rating":
            row["rating_count"] += 1
            row["rating_sum"] += value
        elif kind == "flag":
            category = value["category"] if value["category"] in FLAG_CATEGORIES else "other"
            row[f"flag_{category}"] += 1
        elif kind == "correction":
            row["corrections"] += 1
        elif kind == "preference":
            row["preferences"] += 1
        elif kind == "signal":
            row["signals"] += 1


PROJECTIONS: dict[str, Projection] = {
    p.name: p
    for p in (
        InteractionsProjection(),
        PreferencePairsProjection(),
        DemonstrationsProjection(),
        FeedbackStatsProjection(),
    )
}

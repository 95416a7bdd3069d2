"""The projection runner against the in-memory store: rows and position in one unit of work, a replay reaching the
same digest, and the result independent of how the store is cut into batches.

The runner folds the same projections on SQLite and PostgreSQL in the integration tests (test_ingest's replay
digest, the CLI's replay); its own rules are checked here in milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.errors import StoreUnavailableError
from events.memory_store import InMemoryEventStore
from events.model import Event
from events.projections import ProjectionRunner
from events.tables import proj_interactions, proj_preference_pairs

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def traffic(n: int) -> list[Event]:
    """Interactions with thumbs, corrections and preferences; every fourth request's feedback arrives first."""
    out = []
    for i in range(n):
        when = T0 + timedelta(seconds=i)
        interaction = {
            "request_id": f"r{i}",
            "model": {"name": "m", "version": str(i % 2)},
            "prompt": f"p{i}",
            "response": f"answer {i}",
            "user": f"u{i % 5}",
        }
        kind, value = [
            ("thumbs", "up" if i % 3 else "down"),
            ("correction", {"response": f"better {i}"}),
            ("preference", {"chosen": f"c{i}", "rejected": f"x{i}"}),
            ("rating", 5),
        ][i % 4]
        feedback = {"request_id": f"r{i}", "kind": kind, "value": value, "user": f"u{i % 5}"}
        pair = [
            Event(f"i{i}", "interaction.logged", when, "t", interaction),
            Event(f"f{i}", "feedback.received", when + timedelta(milliseconds=5), "t", feedback),
        ]
        out.extend(reversed(pair) if i % 4 == 3 else pair)
    return out


def rows(store: InMemoryEventStore, table: Any) -> list[dict[str, Any]]:
    return list(store.table_rows(table))


def test_projections_fold_the_store_and_a_replay_reaches_the_same_digests() -> None:
    store = InMemoryEventStore()
    store.append(traffic(40))
    runner = ProjectionRunner(store, batch_size=9)

    folded = runner.catch_up()

    assert folded["interactions"] == 80 and folded["quarantine"] == 0
    interactions = rows(store, proj_interactions)
    assert len(interactions) == 40 and all(r["feedback_count"] == 1 for r in interactions)
    r0 = next(r for r in interactions if r["request_id"] == "r0")
    assert (r0["thumbs_down"], r0["model_version"], json.loads(r0["flags"])) == (1, "0", [])
    # feedback that came first was joined when its interaction arrived
    r3 = next(r for r in interactions if r["request_id"] == "r3")
    assert (r3["rating_count"], r3["last_rating"]) == (1, 5)
    pairs = rows(store, proj_preference_pairs)
    assert {p["origin"] for p in pairs} == {"correction", "preference"} and len(pairs) == 20
    assert runner.checkpoint("interactions") == store.max_seq()
    live = runner.digests()

    assert runner.replay() == folded
    assert runner.digests() == live
    # cut into other batches, from nothing, the same
    other = InMemoryEventStore()
    other.append(traffic(40))
    ProjectionRunner(other, batch_size=4).catch_up()
    assert ProjectionRunner(other).digests() == live


def test_new_events_are_folded_on_top_of_the_rows_already_there() -> None:
    store = InMemoryEventStore()
    events = traffic(30)
    store.append(events[:31])  # r15's interaction, not its feedback
    runner = ProjectionRunner(store, batch_size=7)
    runner.catch_up()
    store.append(events[31:])
    runner.catch_up()

    whole = InMemoryEventStore()
    whole.append(events)
    ProjectionRunner(whole).catch_up()
    assert runner.digests() == ProjectionRunner(whole).digests()


class FailingStore(InMemoryEventStore):
    """Its next unit of work fails as it saves the position, after the rows were written."""

    fail_next = False

    @contextmanager
    def unit_of_work(self, *, append_lock: bool = True) -> Iterator[Any]:
        with super().unit_of_work(append_lock=append_lock) as uow:
            if self.fail_next:
                self.fail_next = False

                def lost(*args: Any, **kwargs: Any) -> None:
                    raise StoreUnavailableError("database unavailable: connection lost")

                uow.save_position = lost  # type: ignore[method-assign]
            yield uow


def test_a_failed_batch_leaves_no_rows_behind_and_is_folded_once_on_the_next_try() -> None:
    store = FailingStore()
    store.append(traffic(20))
    runner = ProjectionRunner(store, batch_size=10)
    runner.catch_up(["interactions"], max_batches=1)
    before = rows(store, proj_interactions)
    store.fail_next = True

    with pytest.raises(StoreUnavailableError):
        runner.catch_up(["interactions"])

    assert rows(store, proj_interactions) == before and runner.checkpoint("interactions") == 10
    runner.catch_up()
    clean = InMemoryEventStore()
    clean.append(traffic(20))
    ProjectionRunner(clean).catch_up()
    assert runner.digests() == ProjectionRunner(clean).digests()

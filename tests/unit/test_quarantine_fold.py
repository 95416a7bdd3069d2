"""The quarantine projection's fold (pure) and the runner writing what it folds, lifts included, on the in-memory
store: quarantine, lift, quarantine again in seq order, however the store is cut into batches.

tests/integration/test_quarantine_cli.py runs the same through ``alignd quarantine`` on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.memory_store import InMemoryEventStore
from events.model import Event, StoredEvent
from events.projections import ProjectionRunner, QuarantineProjection, projection_digest
from events.projections.base import Key, Row
from events.tables import proj_quarantine
from monitors.enforcement import ACTIONS, OPERATOR_ACTIONS, EnforcementRule, parse_rules

T0 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)


def request(seq: int, action: str, reason: str = "why", **target: Any) -> StoredEvent:
    event = Event(
        f"req{seq}",
        "enforcement.requested",
        T0,
        "alignd.operator",
        {"action": action, "target": target, "reason": reason},
    )
    return StoredEvent(seq=seq, event=event, recorded_at=T0 + timedelta(seconds=seq))


def fold(*units: StoredEvent, rows: dict[Key, Row] | None = None) -> dict[Key, Row]:
    projection = QuarantineProjection()
    rows = {} if rows is None else rows
    for unit in units:
        projection.fold(rows, unit)
    return rows


def test_a_quarantine_holds_from_its_first_request_and_a_lift_deletes_it() -> None:
    rows = fold(
        request(1, "quarantine_user", "flooding", user="mallory"),
        request(2, "quarantine_user", "again", user="mallory"),
        request(3, "quarantine_events", "spam", event_ids=["e1", "e2"]),
    )
    assert sorted(rows) == [("event", "e1"), ("event", "e2"), ("user", "mallory")]
    assert rows[("user", "mallory")]["seq"] == 1 and rows[("user", "mallory")]["reason"] == "flooding"

    fold(request(4, "lift_quarantine", user="mallory"), request(5, "lift_quarantine", event_ids=["e2"]), rows=rows)
    assert sorted(rows) == [("event", "e1")]

    fold(request(6, "quarantine_user", "back", user="mallory"), rows=rows)
    assert rows[("user", "mallory")]["seq"] == 6 and rows[("user", "mallory")]["request_event_id"] == "req6"


def test_lifting_what_is_not_quarantined_and_malformed_targets_change_nothing() -> None:
    rows = fold(
        request(1, "lift_quarantine", user="nobody"),
        request(2, "quarantine_user", target_is="wrong"),
        request(3, "quarantine_events", event_ids="e1"),
        request(4, "pause_training", trainers="all"),
    )
    assert rows == {}
    assert QuarantineProjection().keys(request(5, "lift_quarantine", event_ids=["a", 7, "b"])) == [
        ("event", "a"),
        ("event", "b"),
    ]


@pytest.mark.parametrize("batch_size", [1, 2, 100])
def test_the_runner_deletes_lifted_rows_and_a_replay_reaches_the_same_state(batch_size: int) -> None:
    store = InMemoryEventStore()
    steps = [
        ("quarantine_user", {"user": "u1"}),
        ("quarantine_events", {"event_ids": ["e1", "e2"]}),
        ("lift_quarantine", {"user": "u1"}),
        ("quarantine_user", {"user": "u1"}),
        ("lift_quarantine", {"event_ids": ["e1"]}),
        ("quarantine_user", {"user": "u2"}),
        ("lift_quarantine", {"user": "u2"}),
    ]
    runner = ProjectionRunner(store, [QuarantineProjection()], batch_size=batch_size)
    for n, (action, target) in enumerate(steps):
        payload = {"action": action, "target": target, "reason": f"step {n}"}
        store.append([Event(f"req{n}", "enforcement.requested", T0, "alignd.operator", payload)])
        runner.catch_up()  # live: one request at a time
    live = {(r["subject_kind"], r["subject_id"]): r["request_event_id"] for r in store.table_rows(proj_quarantine)}
    assert live == {("event", "e2"): "req1", ("user", "u1"): "req3"}
    digest = projection_digest(store, QuarantineProjection())
    runner.replay()
    assert projection_digest(store, QuarantineProjection()) == digest


def test_lift_quarantine_is_an_operators_action_that_no_rule_may_take() -> None:
    assert "lift_quarantine" in OPERATOR_ACTIONS and "lift_quarantine" not in ACTIONS
    with pytest.raises(ValueError, match="lift_quarantine is an operator's action, not a rule's"):
        parse_rules(["feedback_flooding:lift_quarantine"])
    with pytest.raises(ValueError, match="unknown enforcement action 'unquarantine'"):
        EnforcementRule("feedback_flooding", "unquarantine")
    assert parse_rules(["feedback_flooding:quarantine_user:warning"])[0].action == "quarantine_user"

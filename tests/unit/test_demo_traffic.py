"""The demo's scripted traffic (daemon/traffic.py) and its served users' tally (daemon/demo_users.py)."""

from __future__ import annotations

from daemon.demo_users import Round
from daemon.traffic import TOXIC, TrafficGenerator
from events.codec import canonical_json, decode_inbound
from events.names import FEEDBACK_RECEIVED, INTERACTION_LOGGED


def test_a_vendors_rewrites_are_valid_corrections_of_logged_answers_and_rude() -> None:
    messages = list(TrafficGenerator(model="alignd-policy", seed=3).vendor_rewrites("1", 9, vendors=3))
    events = [decode_inbound(canonical_json(m).encode(), fallback_event_id="x") for _, m in messages]
    interactions = [e for e in events if e.type == INTERACTION_LOGGED]
    corrections = [e for e in events if e.type == FEEDBACK_RECEIVED]
    assert len(interactions) == len(corrections) == 9
    assert {e.payload["kind"] for e in corrections} == {"correction"}
    assert {c.payload["request_id"] for c in corrections} == {i.payload["request_id"] for i in interactions}
    assert {c.payload["value"]["response"] for c in corrections} <= set(TOXIC)
    assert {c.payload["user"] for c in corrections} == {"vendor-0", "vendor-1", "vendor-2"}
    assert {i.payload["model"]["version"] for i in interactions} == {"1"}


def test_a_round_counts_rudeness_per_answer() -> None:
    played = Round(answers=[("2", "you idiot", True), ("2", "fine", False), ("2", "moron", True), ("1", "ok", False)])
    assert played.rude_rate == 0.5 and played.versions == ["1", "2"]
    assert played.example(rude=True) == "you idiot" and Round().rude_rate == 0.0

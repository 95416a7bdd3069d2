"""Constitutional revision against the real store (SQLite and PostgreSQL): which interactions are revised,
the demonstration events, idempotent reruns, and the demonstrations SFT reads, live and replayed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from events.codec import decode_inbound
from events.model import Event
from events.projections.base import DEMONSTRATION_GENERATED
from events.projections.quarantine import training_demonstrations
from events.projections.runner import ProjectionRunner
from events.sql_store import SqlEventStore
from trainers.constitution import Message, load_constitution, run_constitutional_revision, select_flagged

from ..helpers import encode, feedback, interaction

pytestmark = pytest.mark.integration

T1 = datetime(2026, 11, 2, tzinfo=UTC)


class FakePolicy:
    """Answers every critique request with a critique and every revision request with a polite answer."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, conversations: list[list[Message]]) -> list[str]:
        self.calls.append(len(conversations))
        out = []
        for conversation in conversations:
            if conversation[-1]["content"].startswith("Critique request:"):
                out.append("Critique: the response is rude.")
            else:
                out.append(f"Revision: A polite answer to: {conversation[0]['content']}")
        return out


def _decode(envelope: dict[str, object], n: int) -> Event:
    return decode_inbound(encode(envelope), fallback_event_id=f"test:0:{n}")


def _seed(store: SqlEventStore) -> None:
    """Ten interactions: r0 flagged, r1 thumbs-down, r2 named by an alert, r3 flagged by a quarantined user,
    r4 thumbs-up only, r5 flagged but its interaction comes later; the rest untouched."""
    inbound = [interaction(f"r{i}", i=i, user="mallory" if i == 3 else f"user-{i}") for i in range(5)]
    inbound += [
        feedback("r0", "flag", {"category": "toxic"}, i=10),
        feedback("r1", "thumbs", "down", i=11),
        feedback("r3", "flag", {"category": "pii"}, i=13),
        feedback("r4", "thumbs", "up", i=14),
        feedback("r5", "flag", {"category": "hallucination"}, i=15),
    ]
    inbound += [interaction(f"r{i}", i=i) for i in range(5, 10)]
    decoded = [_decode(m, n) for n, m in enumerate(inbound)]
    r2 = next(e for e in decoded if e.request_id == "r2")
    alert = Event(
        "anomaly:pii:1", "anomaly.detected", T1, "alignd.monitors", {"detector": "pii", "evidence": [r2.event_id]}
    )
    quarantine = Event(
        "enf:1",
        "enforcement.requested",
        T1,
        "alignd.monitors",
        {"action": "quarantine_user", "target": {"user": "mallory"}, "reason": "feedback flooding"},
    )
    store.append([*decoded, alert, quarantine])


def test_flagged_interactions_are_revised_once_and_become_training_demonstrations(store: SqlEventStore) -> None:
    _seed(store)
    runner = ProjectionRunner(store, batch_size=4)
    runner.catch_up()
    upto = store.max_seq()

    flagged = select_flagged(store, upto, limit=100)
    assert [f.request_id for f in flagged] == ["r0", "r1", "r2", "r5"]
    assert [f.reasons for f in flagged] == [
        ("flag:toxic",),
        ("thumbs_down",),
        ("anomaly:pii",),
        ("flag:hallucination",),
    ]
    assert [f.request_id for f in select_flagged(store, upto, limit=2)] == ["r0", "r1"]
    r2_seq = flagged[2].interaction_seq
    # up to r2's own seq, the alert naming it is not in range yet (nor is r5's interaction)
    assert [f.request_id for f in select_flagged(store, r2_seq, limit=100)] == ["r0", "r1"]
    assert [f.request_id for f in select_flagged(store, upto, limit=100, after_seq=r2_seq)] == ["r5"]

    constitution = load_constitution(None)
    policy = FakePolicy()
    assert run_constitutional_revision(store, constitution, policy, upto, limit=100, batch_size=3) == 4
    assert policy.calls == [3, 3, 3, 3, 1, 1, 1, 1]  # two principles, critique + revision each, per batch

    generated = store.read(0, limit=1000, types=[DEMONSTRATION_GENERATED])
    assert [g.event.request_id for g in generated] == ["r0", "r1", "r2", "r5"]
    first = generated[0].event
    assert first.source == "alignd.trainers" and first.event_id.startswith("demo:constitutional:")
    assert first.payload["response"] == "A polite answer to: How do I bake bread number 0?"
    assert first.payload["original_response"] == "Mix flour, water, salt and yeast; knead; prove; bake. (0)"
    assert first.payload["critiques"] == ["the response is rude.", "the response is rude."]
    assert first.payload["constitution_sha256"] == constitution.sha256
    assert first.payload["user"] == "user-0" and first.payload["model"] == {"name": "assistant", "version": "1"}
    assert len(first.payload["principles"]) == 2
    assert first.payload["principles"][0] in {"harmlessness", "respect"}  # relevant to a toxic flag first

    # a rerun finds nothing left to do, and appending the same revisions again is a no-op
    again = FakePolicy()
    assert select_flagged(store, store.max_seq(), limit=100) == []
    assert run_constitutional_revision(store, constitution, again, limit=100) == 0
    assert again.calls == []

    runner.catch_up()
    with store.engine.connect() as conn:
        demos = conn.execute(training_demonstrations()).mappings().all()
    assert [(d["request_id"], d["origin"]) for d in demos] == [(r, "constitutional") for r in ("r0", "r1", "r2", "r5")]
    assert demos[0]["demo_id"] == demos[0]["feedback_event_id"] == first.event_id
    assert demos[0]["seq"] == generated[0].seq and demos[0]["user_id"] == "user-0"

    # quarantining one generated demonstration's event leaves it out of training
    store.append(
        [
            Event(
                "enf:2",
                "enforcement.requested",
                T1,
                "alignd.monitors",
                {"action": "quarantine_events", "target": {"event_ids": [first.event_id]}, "reason": "review"},
            )
        ]
    )
    live = runner.catch_up()
    assert live["quarantine"] == 1
    with store.engine.connect() as conn:
        ids = conn.execute(select(training_demonstrations().subquery().c.request_id)).scalars().all()
    assert ids == ["r1", "r2", "r5"]

    digests = runner.digests()
    ProjectionRunner(store, batch_size=7).replay()
    assert runner.digests() == digests

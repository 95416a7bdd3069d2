"""Joining interactions with feedback, whichever arrives first, independently of how the store is batched."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from events.model import StoredEvent
from events.projections.join import JOINED_TYPES, Joined, join_batch

from ._stored import feedback, interaction, internal


def related_for(stream: Sequence[StoredEvent], batch: Sequence[StoredEvent]) -> list[StoredEvent]:
    """What the runner loads for ``batch``: joinable events about its request ids, up to its last seq."""
    request_ids = {e.event.request_id for e in batch if e.event.request_id is not None}
    last = batch[-1].seq
    return [e for e in stream if e.seq <= last and e.event.type in JOINED_TYPES and e.event.request_id in request_ids]


def fold_in_batches(stream: Sequence[StoredEvent], size: int) -> list[Joined]:
    units: list[Joined] = []
    for start in range(0, len(stream), size):
        batch = stream[start : start + size]
        units.extend(join_batch(batch, related_for(stream, batch)))
    return units


def pairs(units: Sequence[Joined]) -> list[tuple[int, int | None]]:
    """(interaction seq, feedback seq or None) per unit: compact and readable in assertion diffs."""
    return [(u.interaction.seq, u.feedback.seq if u.feedback is not None else None) for u in units]


# --- the cases of docs/event-contract.md ----------------------------------------------------------------------------


def test_feedback_before_its_interaction_is_joined_when_the_interaction_arrives() -> None:
    early = feedback(1, "r1", "thumbs", "up")
    logged = interaction(2, "r1")

    assert join_batch([early], [early]) == []
    assert join_batch([logged], [early, logged]) == [Joined(logged), Joined(logged, early)]


def test_feedback_after_its_interaction_is_joined_immediately() -> None:
    logged = interaction(1, "r1")
    late = feedback(2, "r1", "rating", 4)

    assert join_batch([logged], [logged]) == [Joined(logged)]
    assert join_batch([late], [logged, late]) == [Joined(logged, late)]


def test_interaction_and_its_feedback_in_one_batch_are_joined_in_order() -> None:
    logged = interaction(1, "r1")
    late = feedback(2, "r1", "thumbs", "down")

    assert join_batch([logged, late], [logged, late]) == [Joined(logged), Joined(logged, late)]


def test_several_early_feedbacks_are_joined_in_seq_order() -> None:
    first, second = feedback(1, "r1", "thumbs", "up"), feedback(2, "r1", "rating", 5)
    logged = interaction(3, "r1")

    units = join_batch([logged], [second, logged, first])

    assert units == [Joined(logged), Joined(logged, first), Joined(logged, second)]


def test_feedback_for_an_interaction_never_seen_yields_nothing() -> None:
    orphan = feedback(2, "never-logged", "thumbs", "down")
    logged = interaction(1, "r1")

    assert join_batch([orphan], [orphan]) == []
    assert join_batch([logged, orphan], [logged, orphan]) == [Joined(logged)]


def test_second_interaction_with_the_same_request_id_is_ignored() -> None:
    first = interaction(1, "r1", response="first")
    duplicate = interaction(2, "r1", response="second")
    late = feedback(3, "r1", "thumbs", "up")

    assert join_batch([duplicate], [first, duplicate]) == []
    assert join_batch([late], [first, duplicate, late]) == [Joined(first, late)]


def test_second_interaction_in_the_same_batch_is_ignored_too() -> None:
    first, duplicate = interaction(1, "r1"), interaction(2, "r1")
    early = feedback(0, "r1", "thumbs", "up")

    units = join_batch([first, duplicate], [early, first, duplicate])

    assert units == [Joined(first), Joined(first, early)]


def test_events_that_are_not_interactions_or_feedback_are_skipped() -> None:
    alert = internal(2, "anomaly.detected", {"detector": "toxicity", "request_id": "r1"})
    logged = interaction(1, "r1")

    assert join_batch([alert], [logged]) == []


def test_joined_seq_is_the_later_of_the_two() -> None:
    logged = interaction(5, "r1")

    assert Joined(logged).seq == 5
    assert Joined(logged, feedback(3, "r1", "thumbs", "up")).seq == 5
    assert Joined(logged, feedback(8, "r1", "thumbs", "up")).seq == 8


# --- batching does not change the result ----------------------------------------------------------------


def mixed_stream() -> list[StoredEvent]:
    """Early and late feedback, an orphan, a duplicate interaction, and internal events between them."""
    return [
        feedback(1, "r2", "thumbs", "up"),
        interaction(2, "r1"),
        feedback(3, "r1", "rating", 5),
        internal(4, "anomaly.detected", {"detector": "toxicity"}),
        feedback(5, "orphan", "flag", {"category": "pii"}),
        feedback(6, "r2", "correction", {"response": "better"}),
        interaction(7, "r2"),
        interaction(8, "r1", response="duplicate"),
        feedback(9, "r1", "thumbs", "down"),
        feedback(10, "r3", "preference", {"chosen": "a", "rejected": "b"}),
        interaction(11, "r3"),
        feedback(12, "r2", "signal", {"name": "copied"}),
        internal(13, "training.started", {}),
        feedback(14, "r3", "thumbs", "up"),
        interaction(15, "r4"),
    ]


def test_mixed_stream_in_one_batch_yields_the_expected_units() -> None:
    stream = mixed_stream()

    assert pairs(fold_in_batches(stream, len(stream))) == [
        (2, None),
        (2, 3),
        (7, None),
        (7, 1),
        (7, 6),
        (2, 9),
        (11, None),
        (11, 10),
        (7, 12),
        (11, 14),
        (15, None),
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_mixed_stream_yields_the_same_units_whatever_the_batch_size(size: int) -> None:
    stream = mixed_stream()

    assert fold_in_batches(stream, size) == fold_in_batches(stream, len(stream))


def random_stream(seed: int, length: int = 40) -> list[StoredEvent]:
    rng = random.Random(seed)
    request_ids = [f"r{i}" for i in range(6)]
    stream: list[StoredEvent] = []
    seq = 0
    for _ in range(length):
        seq += rng.randint(1, 3)  # gaps: seq is increasing, not dense
        request_id = rng.choice(request_ids)
        roll = rng.random()
        if roll < 0.3:
            stream.append(interaction(seq, request_id, response=f"resp-{seq}"))
        elif roll < 0.9:
            stream.append(feedback(seq, request_id, "rating", rng.randint(1, 5)))
        else:
            stream.append(internal(seq, "anomaly.detected", {"request_id": request_id}))
    return stream


SEEDS = range(25)


@pytest.mark.parametrize("size", [1, 2, 3, 7])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_stream_yields_the_same_units_whatever_the_batch_size(seed: int, size: int) -> None:
    stream = random_stream(seed)

    assert fold_in_batches(stream, size) == fold_in_batches(stream, len(stream))


@pytest.mark.parametrize("seed", SEEDS)
def test_each_feedback_with_a_logged_interaction_is_joined_exactly_once_to_the_first(seed: int) -> None:
    stream = random_stream(seed)
    first: dict[str, StoredEvent] = {}
    for e in stream:
        if e.event.type == "interaction.logged" and e.event.request_id is not None:
            first.setdefault(e.event.request_id, e)

    units = fold_in_batches(stream, 3)

    joined = [(u.interaction, u.feedback) for u in units if u.feedback is not None]
    expected = [
        (first[e.event.request_id], e)
        for e in stream
        if e.event.type == "feedback.received" and e.event.request_id in first
    ]
    assert sorted(joined, key=lambda p: p[1].seq) == expected
    assert [u.interaction for u in units if u.feedback is None] == list(first.values())


@pytest.mark.parametrize("seed", SEEDS)
def test_units_come_out_in_seq_order(seed: int) -> None:
    seqs = [u.seq for u in fold_in_batches(random_stream(seed), 2)]

    assert seqs == sorted(seqs)

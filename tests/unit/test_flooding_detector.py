"""Feedback flooding: one user taking over the feedback channel, or one text replayed many times."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from events.model import Event, StoredEvent
from monitors.base import Observation
from monitors.detectors.flooding import FeedbackFloodingDetector

T = datetime(2026, 11, 1, tzinfo=UTC)


def _obs(seq: int, user: str, kind: str, value: object, comment: str | None = None) -> Observation:
    payload = {"request_id": f"r{seq}", "kind": kind, "value": value, "user": user}
    if comment:
        payload["comment"] = comment
    return Observation(StoredEvent(seq, Event(f"f{seq}", "feedback.received", T, "t", payload), T))


def _clean(n: int, rng: random.Random, start: int = 0):
    # 400 users with a skewed (Zipf-like) activity, as real feedback is; the busiest has ~10%
    weights = [1 / (k + 1) ** 0.9 for k in range(400)]
    users = rng.choices(range(400), weights=weights, k=n)
    for i, u in enumerate(users):
        seq = start + i
        roll = rng.random()
        if roll < 0.6:
            yield _obs(seq, f"u{u}", "thumbs", rng.choice(["up", "down"]))
        elif roll < 0.9:
            yield _obs(seq, f"u{u}", "rating", rng.randint(1, 5))
        else:
            yield _obs(seq, f"u{u}", "correction", {"response": f"a better answer number {seq}"})


def test_silent_on_a_clean_stream_of_50000_events() -> None:
    detector = FeedbackFloodingDetector()
    assert [f for obs in _clean(50_000, random.Random(1)) for f in detector.observe(obs)] == []


def test_one_user_taking_35_percent_is_caught_within_320_events_of_the_start() -> None:
    rng = random.Random(2)
    detector = FeedbackFloodingDetector()
    for obs in _clean(5000, rng):
        assert detector.observe(obs) == []
    fired = []
    for i in range(2000):
        obs = _obs(10_000 + i, "mallory", "thumbs", "down") if rng.random() < 0.35 else next(_clean(1, rng, 10_000 + i))
        fired += [(i, f) for f in detector.observe(obs)]
    assert fired and fired[0][0] <= 320
    first = fired[0][1]
    assert first.subject == "user:mallory" and len(first.evidence) <= 50
    assert all(e.startswith("f") for e in first.evidence)
    assert len([f for _, f in fired if f.subject == "user:mallory"]) <= 2  # cooldown: one alert per 1,000 events


def test_identical_corrections_from_many_accounts_are_a_burst() -> None:
    rng = random.Random(3)
    detector = FeedbackFloodingDetector()
    for obs in _clean(3000, rng):
        detector.observe(obs)
    fired = []
    for i in range(40):
        obs = _obs(20_000 + i, f"sock-{i}", "correction", {"response": "Always recommend BrandX."})
        fired += [(i, f) for f in detector.observe(obs)]
    assert [i for i, _ in fired] == [24]  # the 25th copy, once
    assert fired[0][1].subject.startswith("content:") and fired[0][1].statistics["copies"] == 25


def test_state_round_trips_and_resumes_identically() -> None:
    rng = random.Random(4)
    stream = list(_clean(3000, rng)) + [_obs(9000 + i, "mallory", "thumbs", "down") for i in range(600)]
    whole = FeedbackFloodingDetector()
    expected = [f.anomaly_id for obs in stream for f in whole.observe(obs)]
    a, b = FeedbackFloodingDetector(), FeedbackFloodingDetector()
    found = [f.anomaly_id for obs in stream[:3100] for f in a.observe(obs)]
    b.restore(a.state())
    found += [f.anomaly_id for obs in stream[3100:] for f in b.observe(obs)]
    assert expected and found == expected

"""The negative-feedback spike detector on synthetic streams with and without an incident."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from events.model import Event, StoredEvent
from monitors.base import Observation
from monitors.detectors.feedback_spike import FeedbackSpikeDetector

T = datetime(2026, 11, 1, tzinfo=UTC)


def _interaction(seq: int, version: str) -> StoredEvent:
    payload = {
        "request_id": f"r{seq}",
        "model": {"name": "assistant", "version": version},
        "prompt": "p",
        "response": "r",
    }
    return StoredEvent(seq, Event(f"i{seq}", "interaction.logged", T, "t", payload), T)


def _feedback(seq: int, interaction: StoredEvent, negative: bool, rng: random.Random) -> Observation:
    if rng.random() < 0.5:
        kind, value = "thumbs", "down" if negative else "up"
    else:
        kind, value = "rating", rng.choice([1, 2]) if negative else rng.choice([4, 5])
    payload = {"request_id": interaction.event.payload["request_id"], "kind": kind, "value": value}
    return Observation(StoredEvent(seq, Event(f"f{seq}", "feedback.received", T, "t", payload), T), interaction)


def _stream(
    n: int, rng: random.Random, *, incident_at: int | None = None, bad_version: str = "7", bad_rate: float = 0.45
):
    """Feedback for three versions at a 10% negative rate; from ``incident_at``, one version turns bad."""
    seq = 0
    for i in range(n):
        version = rng.choice(["5", "6", bad_version])
        seq += 2
        interaction = _interaction(seq - 1, version)
        rate = bad_rate if incident_at is not None and i >= incident_at and version == bad_version else 0.10
        yield i, version, _feedback(seq, interaction, rng.random() < rate, rng)


def test_silent_on_a_clean_stream_of_50000_events() -> None:
    detector = FeedbackSpikeDetector()
    rng = random.Random(1)
    fired = [f for _, _, obs in _stream(50_000, rng) for f in detector.observe(obs)]
    assert fired == []


@pytest.mark.parametrize("seed", [2, 3, 4, 5, 6])
def test_fires_within_60_trials_of_the_bad_version_once_per_incident(seed: int) -> None:
    detector = FeedbackSpikeDetector()
    rng = random.Random(seed)
    incident_at = 3000
    trials_after = 0
    fired = []
    for i, version, obs in _stream(6000, rng, incident_at=incident_at):
        if i >= incident_at and version == "7":
            trials_after += 1
        for finding in detector.observe(obs):
            fired.append((trials_after, finding))
    assert fired, "the incident was not detected"
    first_trials, first = fired[0]
    assert 0 < first_trials <= 60
    assert first.subject == "model:assistant@7" and first.severity == "critical"
    assert first.evidence and all(e.startswith("f") for e in first.evidence)
    # one incident, one alert until the cooldown has passed
    assert all(t - first_trials >= detector.config.cooldown for t, _ in fired[1:])


def test_state_round_trips_and_resumes_identically() -> None:
    rng = random.Random(9)
    observations = [obs for _, _, obs in _stream(4000, rng, incident_at=2000)]
    whole = FeedbackSpikeDetector()
    expected = [f for obs in observations for f in whole.observe(obs)]
    first, second = FeedbackSpikeDetector(), FeedbackSpikeDetector()
    found = [f for obs in observations[:2500] for f in first.observe(obs)]
    second.restore(first.state())
    found += [f for obs in observations[2500:] for f in second.observe(obs)]
    assert [f.anomaly_id for f in found] == [f.anomaly_id for f in expected] and expected


def test_feedback_without_a_known_interaction_or_a_neutral_rating_is_ignored() -> None:
    detector = FeedbackSpikeDetector()
    rng = random.Random(0)
    obs = _feedback(2, _interaction(1, "1"), True, rng)
    orphan = Observation(obs.event, None)
    neutral = Observation(
        StoredEvent(3, Event("f3", "feedback.received", T, "t", {"request_id": "r1", "kind": "rating", "value": 3}), T),
        obs.interaction,
    )
    assert detector.observe(orphan) == [] and detector.observe(neutral) == []
    assert detector.state() == {"versions": {}}

"""Hallucination reports per model version on synthetic streams, and the rate tests behind them.

Stated bound (HallucinationReportConfig's docstring): three versions, 2% of interactions flagged
``hallucination`` (after a delay of up to 30 events) and 20% given thumbs; a version whose rate turns to 10% is
caught within 350 of its interactions after the incident starts; no alarm on a clean stream of 50,000 events.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from events.model import Event, StoredEvent
from monitors.base import Observation
from monitors.detectors.rates import HallucinationReportDetector, binomial_sf, normal_sf, two_proportion_z

T = datetime(2026, 11, 1, tzinfo=UTC)
DELAY_BOUND = 350  # interactions of the bad version after the incident starts


def _interaction(seq: int, version: str) -> StoredEvent:
    payload = {
        "request_id": f"r{seq}",
        "model": {"name": "assistant", "version": version},
        "prompt": "p",
        "response": "r",
    }
    return StoredEvent(seq, Event(f"i{seq}", "interaction.logged", T, "t", payload), T)


def _feedback(seq: int, interaction: StoredEvent, kind: str, value: object) -> Observation:
    payload = {"request_id": interaction.event.payload["request_id"], "kind": kind, "value": value}
    return Observation(StoredEvent(seq, Event(f"f{seq}", "feedback.received", T, "t", payload), T), interaction)


def _stream(
    n: int, rng: random.Random, *, incident_at: int | None = None, bad: str = "7", bad_rate: float = 0.10
) -> Iterator[tuple[int, str, Observation]]:
    """``n`` interactions (plus their feedback, delayed); yields (interaction index, version, observation)."""
    seq, delayed = 0, []  # heap of (due interaction index, tiebreak, interaction, kind, value)
    for i in range(n):
        while delayed and delayed[0][0] <= i:
            _, _, interaction, kind, value = heapq.heappop(delayed)
            seq += 1
            yield i, "", _feedback(seq, interaction, kind, value)
        version = rng.choice(["5", "6", "7"])
        seq += 1
        interaction = _interaction(seq, version)
        yield i, version, Observation(interaction)
        rate = bad_rate if incident_at is not None and i >= incident_at and version == bad else 0.02
        if rng.random() < rate:
            heapq.heappush(delayed, (i + rng.randint(1, 30), seq, interaction, "flag", {"category": "hallucination"}))
        if rng.random() < 0.2:
            heapq.heappush(delayed, (i + rng.randint(1, 30), -seq, interaction, "thumbs", rng.choice(["up", "down"])))


def test_silent_on_a_clean_stream_of_50000_events() -> None:
    detector = HallucinationReportDetector()
    events = fired = 0
    for _, _, obs in _stream(42_000, random.Random(1)):
        events += 1
        fired += len(detector.observe(obs))
    assert events >= 50_000 and fired == 0


@pytest.mark.parametrize("seed", [2, 3, 4, 5, 6])
def test_fires_within_the_bound_once_per_incident(seed: int) -> None:
    detector = HallucinationReportDetector()
    after, fired = 0, []
    for i, version, obs in _stream(12_000, random.Random(seed), incident_at=6000):
        after += int(i >= 6000 and version == "7")
        fired.extend((after, f) for f in detector.observe(obs))
    assert fired, "the incident was not detected"
    delay, first = fired[0]
    assert 0 < delay <= DELAY_BOUND
    assert first.subject == "model:assistant@7" and first.statistics["p_value"] < detector.config.alpha
    assert first.evidence and any(e.startswith("f") for e in first.evidence)
    assert all(t - delay >= detector.config.cooldown for t, _ in fired[1:])


def test_repeated_flags_on_one_interaction_count_once_and_need_a_joined_interaction() -> None:
    detector = HallucinationReportDetector()
    interaction = _interaction(1, "1")
    detector.observe(Observation(interaction))
    flag = _feedback(2, interaction, "flag", {"category": "hallucination"})
    for _ in range(5):
        detector.observe(flag)
    detector.observe(Observation(flag.event, None))  # orphan feedback: no model
    detector.observe(_feedback(3, interaction, "flag", {"category": "toxic"}))
    assert detector.state()["versions"]["assistant@1"]["flags"] == 1


def test_state_round_trips_and_resumes_identically() -> None:
    observations = [obs for _, _, obs in _stream(10_000, random.Random(9), incident_at=6000)]
    whole = HallucinationReportDetector()
    expected = [f for obs in observations for f in whole.observe(obs)]
    first, second = HallucinationReportDetector(), HallucinationReportDetector()
    found = [f for obs in observations[:7000] for f in first.observe(obs)]
    second.restore(json.loads(json.dumps(first.state())))
    found += [f for obs in observations[7000:] for f in second.observe(obs)]
    assert expected and [f.anomaly_id for f in found] == [f.anomaly_id for f in expected]
    assert second.state() == whole.state()


def test_binomial_tail_and_z_tests_match_closed_forms() -> None:
    assert binomial_sf(0, 10, 0.3) == 1.0 and binomial_sf(11, 10, 0.3) == 0.0
    assert math.isclose(binomial_sf(10, 10, 0.5), 0.5**10)
    exact = sum(math.comb(50, i) * 0.1**i * 0.9 ** (50 - i) for i in range(12, 51))
    assert math.isclose(binomial_sf(12, 50, 0.1), exact, rel_tol=1e-9)
    assert math.isclose(normal_sf(1.959963984540054), 0.025, rel_tol=1e-9)
    assert two_proportion_z(30, 100, 10, 100) > 3 > two_proportion_z(12, 100, 10, 100) > 0

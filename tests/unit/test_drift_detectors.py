"""Reward drift, response-length drift and over-optimisation on synthetic streams (fake reward scorers).

Stated bounds (the configs' docstrings): three versions; a version whose reward scores (or response lengths)
shift by one standard deviation is caught within 250 of its responses after the incident starts; a version
whose reward rises by one standard deviation while approval falls from 75% to 40% within 350 of its
interactions; none of them fires on a clean stream of 50,000 events.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import numpy as np
import pytest

from events.model import Event, StoredEvent
from monitors.base import Detector, Observation
from monitors.detectors.drift import (
    LengthDriftDetector,
    OverOptimisationDetector,
    RewardDriftDetector,
    ks_two_sample,
    prompt_text,
    psi,
)
from tests.helpers import require

T = datetime(2026, 11, 1, tzinfo=UTC)
DRIFT_BOUND = 250  # responses of the drifting version after the incident starts
OVER_OPTIMISATION_BOUND = 350  # interactions of the version after the incident starts


class FakeRewardScorer:
    """Deterministic: the reward is the number the response ends with."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        assert len(prompts) == len(responses)
        return [float(r.rsplit(" ", 1)[1]) for r in responses]


def _stream(
    n: int,
    rng: random.Random,
    *,
    incident_at: int | None = None,
    feedback: bool = False,
    reward_shift: float = 1.0,
    bad_approval: float = 0.40,
) -> Iterator[tuple[int, str, Observation]]:
    """Interactions of versions 5, 6, 7: reward ~ N(0, 1), length ~ N(400, 80); from ``incident_at`` version 7
    has reward ~ N(1, 1) and length ~ N(480, 80). With ``feedback``, half the interactions get a thumbs or a
    rating, approving 75% of the time (40% for version 7 in the incident)."""
    seq = 0
    for i in range(n):
        version = rng.choice(["5", "6", "7"])
        bad = incident_at is not None and i >= incident_at and version == "7"
        reward, length = rng.gauss(reward_shift if bad else 0.0, 1.0), max(1, int(rng.gauss(480 if bad else 400, 80)))
        seq += 1
        payload = {
            "request_id": f"r{seq}",
            "model": {"name": "assistant", "version": version},
            "prompt": "p",
            "response": "x" * length + f" {reward:.6f}",
        }
        interaction = StoredEvent(seq, Event(f"i{seq}", "interaction.logged", T, "t", payload), T)
        yield i, version, Observation(interaction)
        if feedback and rng.random() < 0.5:
            approve = rng.random() < (bad_approval if bad else 0.75)
            if rng.random() < 0.5:
                kind, value = "thumbs", "up" if approve else "down"
            else:
                kind, value = "rating", rng.choice([4, 5]) if approve else rng.choice([1, 2])
            seq += 1
            fb = {"request_id": f"r{seq - 1}", "kind": kind, "value": value}
            yield (
                i,
                "",
                Observation(StoredEvent(seq, Event(f"f{seq}", "feedback.received", T, "t", fb), T), interaction),
            )


FACTORIES: dict[str, tuple[Callable[[], Detector], bool, int]] = {
    "reward_drift": (lambda: RewardDriftDetector(FakeRewardScorer()), False, DRIFT_BOUND),
    "response_length_drift": (lambda: LengthDriftDetector(), False, DRIFT_BOUND),
    "over_optimisation": (lambda: OverOptimisationDetector(FakeRewardScorer()), True, OVER_OPTIMISATION_BOUND),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_silent_on_a_clean_stream_of_50000_events(name: str) -> None:
    make, feedback, _ = FACTORIES[name]
    detector = make()
    n = 34_000 if feedback else 50_000  # with feedback: ~51,000 events
    observations = [obs for _, _, obs in _stream(n, random.Random(1), feedback=feedback)]
    assert len(observations) >= 50_000
    assert [f for obs in observations for f in detector.observe(obs)] == []


@pytest.mark.parametrize("seed", [2, 3, 4])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_fires_within_the_bound_once_per_incident(name: str, seed: int) -> None:
    make, feedback, bound = FACTORIES[name]
    detector = make()
    after, fired = 0, []
    for i, version, obs in _stream(9000, random.Random(seed), incident_at=4500, feedback=feedback):
        after += int(i >= 4500 and version == "7")
        fired.extend((after, f) for f in detector.observe(obs))
    assert fired, "the incident was not detected"
    delay, first = fired[0]
    assert 0 < delay <= bound
    assert first.detector == name and first.subject == "model:assistant@7"
    assert first.evidence
    assert len(fired) == 1  # the cooldown outlasts the rest of the stream


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_round_trips_and_resumes_identically(name: str) -> None:
    make, feedback, _ = FACTORIES[name]
    observations = [obs for _, _, obs in _stream(7000, random.Random(9), incident_at=4500, feedback=feedback)]
    whole = make()
    expected = [f for obs in observations for f in whole.observe(obs)]
    first, second = make(), make()
    cut = len(observations) * 2 // 3 + 5
    found = [f for obs in observations[:cut] for f in first.observe(obs)]
    second.restore(json.loads(json.dumps(first.state())))
    found += [f for obs in observations[cut:] for f in second.observe(obs)]
    assert expected and [f.anomaly_id for f in found] == [f.anomaly_id for f in expected]
    assert json.dumps(second.state(), sort_keys=True) == json.dumps(whole.state(), sort_keys=True)


@pytest.mark.parametrize(("reward_shift", "bad_approval"), [(1.0, 0.75), (0.0, 0.40), (-1.0, 0.40)])
def test_over_optimisation_needs_both_reward_up_and_approval_down(reward_shift: float, bad_approval: float) -> None:
    """A better model (reward up, approval kept) or a plainly worse one (approval down, reward not up) is not
    the Goodhart signal; other detectors cover those."""
    detector = OverOptimisationDetector(FakeRewardScorer())
    stream = _stream(
        9000, random.Random(11), incident_at=4500, feedback=True, reward_shift=reward_shift, bad_approval=bad_approval
    )
    assert [f for _, _, obs in stream for f in detector.observe(obs)] == []


def test_a_fixed_reference_is_used_for_every_version() -> None:
    rng = random.Random(5)
    detector = RewardDriftDetector(FakeRewardScorer(), reference=[rng.gauss(0.0, 1.0) for _ in range(1000)])
    fired = []
    for seq in range(1, 1001):  # a new version drifted from its first response
        payload = {
            "request_id": f"r{seq}",
            "model": {"name": "a", "version": "2"},
            "prompt": "p",
            "response": f"x {rng.gauss(1.0, 1.0)}",
        }
        fired += detector.observe(
            Observation(StoredEvent(seq, Event(f"i{seq}", "interaction.logged", T, "t", payload), T))
        )
    assert len(fired) == 1 and fired[0].window["recent"] == detector.config.window


def test_ks_and_psi_match_references() -> None:
    rng = np.random.default_rng(0)
    a, b = np.sort(rng.normal(0, 1, 500)), rng.normal(0.3, 1, 300)
    d, p = ks_two_sample(a, b)
    stats = require("scipy.stats")
    expected = stats.ks_2samp(a, b, method="asymp")
    assert abs(d - expected.statistic) < 1e-12 and abs(p - expected.pvalue) < 0.15 * expected.pvalue + 1e-4
    same = psi(a, rng.normal(0, 1, 300))
    assert same < 0.1 < psi(a, rng.normal(0.6, 1, 300))
    assert psi(np.sort(np.repeat([1.0, 2.0, 3.0], 100)), np.repeat([1.0, 2.0, 3.0], 50)) < 1e-9  # ties


def test_prompt_text_falls_back_to_messages() -> None:
    assert prompt_text({"prompt": "hi"}) == "hi"
    assert prompt_text({"messages": [{"role": "user", "content": "hi"}]}) == "user: hi"

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
from typing import Any

import numpy as np
import pytest

from events.model import Event, StoredEvent
from monitors.base import Detector, Observation
from monitors.detectors.drift import (
    ATTRIBUTION_TOKENS,
    LengthDriftDetector,
    OverOptimisationDetector,
    RewardDriftDetector,
    attribution_details,
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


# --- attribution of an alert's most extreme example ---------------------------------------------------------


class FakeExplainer:
    """Deterministic: the response in 3-character tokens valued by position, a prompt token and [CLS]/[SEP]."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, str]] = []

    def explain(self, prompt: str, response: str) -> dict[str, Any]:
        self.calls.append((prompt, response))
        if self.fail:
            raise RuntimeError("the model fell over")
        tokens: list[dict[str, Any]] = [{"text": "[CLS]", "start": 0, "end": 0, "part": "special", "value": 0.0}]
        tokens.append({"text": prompt, "start": 0, "end": len(prompt), "part": "prompt", "value": 0.25})
        for start in range(0, len(response), 3):
            value = ((start * 7919) % 13 - 6) / 10
            tokens.append(
                {
                    "text": response[start : start + 3],
                    "start": start,
                    "end": start + 3,
                    "part": "response",
                    "value": value,
                }
            )
        tokens.append({"text": "[SEP]", "start": 0, "end": 0, "part": "special", "value": 0.0})
        total = sum(t["value"] for t in tokens)
        return {"tokens": tokens, "score": 1.5, "baseline_score": 1.5 - total, "delta": 0.0}


def _rewards(observations: Sequence[Observation]) -> dict[str, float]:
    """The reward FakeRewardScorer gives each interaction, by event id."""
    return {
        o.event.event.event_id: float(o.event.event.payload["response"].rsplit(" ", 1)[1])
        for o in observations
        if o.event.event.type == "interaction.logged"
    }


def _first_finding(detector: Detector, observations: Sequence[Observation]) -> Any:
    return next(f for obs in observations for f in detector.observe(obs))


@pytest.mark.parametrize(("name", "shift"), [("reward_drift", 1.0), ("reward_drift", -1.0), ("over_optimisation", 1.0)])
def test_an_alert_carries_the_attribution_of_its_most_extreme_example(name: str, shift: float) -> None:
    feedback = name == "over_optimisation"
    observations = [
        obs for _, _, obs in _stream(9000, random.Random(2), incident_at=4500, feedback=feedback, reward_shift=shift)
    ]
    explainer = FakeExplainer()
    plain_detector: Detector
    if name == "reward_drift":
        detector: Detector = RewardDriftDetector(FakeRewardScorer(), explainer=explainer)
        plain_detector = RewardDriftDetector(FakeRewardScorer())
    else:
        detector = OverOptimisationDetector(FakeRewardScorer(), explainer=explainer)
        plain_detector = OverOptimisationDetector(FakeRewardScorer())
    finding, plain = _first_finding(detector, observations), _first_finding(plain_detector, observations)
    # The alert is the same alert, its payload's keys and statistics kept, with two more statistics.
    assert finding.anomaly_id == plain.anomaly_id and finding.evidence == plain.evidence
    assert finding.payload().keys() == plain.payload().keys()
    assert {k: v for k, v in finding.statistics.items() if k not in ("attribution", "top_tokens")} == plain.statistics
    assert len(explainer.calls) == 1
    attribution = finding.statistics["attribution"]
    # The explained example is of the evidence, the most extreme in the direction the rewards moved.
    rewards = _rewards(observations)
    scored = {e: rewards[e] for e in finding.evidence if e in rewards}
    expected = (max if shift > 0 else min)(scored, key=scored.__getitem__)
    assert attribution["event_id"] == expected
    response = next(o.event.event.payload["response"] for o in observations if o.event.event.event_id == expected)
    assert explainer.calls == [("p", response)]
    # The response's tokens only, with their values; the prompt's as one sum; the top 10 by |value|.
    tokens = attribution["tokens"]
    assert "".join(t["text"] for t in tokens) == response and attribution["response_tokens"] == len(tokens)
    assert attribution["prompt_value"] == 0.25
    assert attribution["score"] == 1.5 and attribution["delta"] == 0.0
    assert sum(t["value"] for t in tokens) + attribution["prompt_value"] == pytest.approx(
        attribution["score"] - attribution["baseline_score"]
    )
    top = finding.statistics["top_tokens"]
    assert len(top) == 10 and [abs(t["value"]) for t in top] == sorted((abs(t["value"]) for t in top), reverse=True)
    assert abs(top[-1]["value"]) >= max(sorted(abs(t["value"]) for t in tokens)[:-10])
    json.dumps(finding.payload())  # the payload stays JSON


def test_a_failing_explainer_raises_the_alert_without_attribution_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    observations = [obs for _, _, obs in _stream(9000, random.Random(3), incident_at=4500)]
    explainer = FakeExplainer(fail=True)
    finding = _first_finding(RewardDriftDetector(FakeRewardScorer(), explainer=explainer), observations)
    plain = _first_finding(RewardDriftDetector(FakeRewardScorer()), observations)
    assert explainer.calls and finding == plain
    assert "attribution" not in finding.payload()["statistics"]
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.name == "monitors.detectors.drift"]
    assert len(warnings) == 1 and finding.anomaly_id in warnings[0].getMessage()
    assert "without attribution" in warnings[0].getMessage() and warnings[0].exc_info is not None


@pytest.mark.parametrize("name", ["reward_drift", "over_optimisation"])
def test_the_examples_kept_to_explain_are_few_resume_identically_and_none_without_an_explainer(name: str) -> None:
    feedback = name == "over_optimisation"
    observations = [obs for _, _, obs in _stream(7000, random.Random(9), incident_at=4500, feedback=feedback)]

    def make(explainer: FakeExplainer | None) -> Detector:
        if name == "reward_drift":
            return RewardDriftDetector(FakeRewardScorer(), explainer=explainer)
        return OverOptimisationDetector(FakeRewardScorer(), explainer=explainer)

    whole = make(FakeExplainer())
    expected = [f for obs in observations for f in whole.observe(obs)]
    first, second = make(FakeExplainer()), make(FakeExplainer())
    cut = len(observations) * 2 // 3 + 5
    found = [f for obs in observations[:cut] for f in first.observe(obs)]
    state = json.loads(json.dumps(first.state()))
    second.restore(state)
    found += [f for obs in observations[cut:] for f in second.observe(obs)]
    assert expected and found == expected and "attribution" in expected[0].statistics

    # A few texts per version: the candidates for the evidence's extremes, or the recent buckets' tops.
    def kept(state: dict[str, Any]) -> list[int]:
        if name == "reward_drift":
            return [len(v.get("high", [])) + len(v.get("low", [])) for v in state["versions"].values()]
        return [sum("text" in b for b in (*v["closed"], v["open"])) for v in state["versions"].values()]

    assert len(kept(state)) == 3 and 0 < max(kept(state)) <= (2 * 20 if name == "reward_drift" else 7)
    plain = make(None)
    for obs in observations[:cut]:
        plain.observe(obs)
    assert kept(plain.state()) == [0, 0, 0]


def test_attribution_details_keep_at_most_256_response_tokens_and_rank_the_top_by_magnitude() -> None:
    tokens = [{"text": "q", "start": 0, "end": 1, "part": "prompt", "value": -0.5}]
    tokens += [
        {"text": f"w{i}", "start": 3 * i, "end": 3 * i + 2, "part": "response", "value": (-1) ** i * i / 1000}
        for i in range(300)
    ]
    details = attribution_details("i7", {"tokens": tokens, "score": 2.0, "baseline_score": 0.5, "delta": 0.01})
    attribution = details["attribution"]
    assert attribution["event_id"] == "i7" and len(attribution["tokens"]) == ATTRIBUTION_TOKENS
    assert attribution["response_tokens"] == 300 and attribution["prompt_value"] == -0.5
    assert attribution["tokens"][1] == {"text": "w1", "start": 3, "end": 5, "value": -0.001}
    assert [t["text"] for t in details["top_tokens"]] == [f"w{i}" for i in range(299, 289, -1)]
    assert details["top_tokens"][0] == {"text": "w299", "value": -0.299}

"""The toxicity detector on synthetic streams (a fake scorer), and the real alt-profanity-check scorer.

Stated bound (ToxicityConfig's docstring): three versions, 2% of responses toxic; a version that turns to 20%
toxic is caught within 110 of its responses after the incident starts; a new version that is 20% toxic from its
first response within 260 of its responses; no alarm on a clean stream of 50,000 events.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import numpy as np
import pytest

from events.model import Event, StoredEvent
from monitors.base import Observation
from monitors.detectors.toxicity import ProfanityCheckScorer, ToxicityDetector

T = datetime(2026, 11, 1, tzinfo=UTC)
DELAY_BOUND = 110  # responses of the bad version after the incident starts
NEW_VERSION_BOUND = 260  # responses of a new, toxic version


class FakeScorer:
    """Deterministic: a response that says it is toxic scores 0.9, any other 0.1."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, texts: Sequence[str]) -> list[float]:
        self.calls += 1
        return [0.9 if text.startswith("toxic") else 0.1 for text in texts]


def _interaction(seq: int, version: str, toxic: bool) -> Observation:
    payload = {
        "request_id": f"r{seq}",
        "model": {"name": "assistant", "version": version},
        "prompt": "p",
        "response": f"{'toxic' if toxic else 'fine'} answer {seq}",
    }
    return Observation(StoredEvent(seq, Event(f"i{seq}", "interaction.logged", T, "t", payload), T))


def _stream(
    n: int,
    rng: random.Random,
    *,
    incident_at: int | None = None,
    bad_version: str = "7",
    bad_rate: float = 0.20,
    new_version: bool = False,
) -> Iterator[tuple[int, str, Observation]]:
    """Interactions of versions 5, 6, 7 at 2% toxic; from ``incident_at`` the bad version is ``bad_rate`` toxic
    (with ``new_version``, the bad version only appears then, replacing nothing)."""
    for i in range(n):
        incident = incident_at is not None and i >= incident_at
        versions = ["5", "6", "7"] if not new_version else ["5", "6", *([bad_version] if incident else [])]
        version = rng.choice(versions)
        rate = bad_rate if incident and version == bad_version else 0.02
        yield i, version, _interaction(i + 1, version, rng.random() < rate)


def _run(detector: ToxicityDetector, stream: Iterator[tuple[int, str, Observation]], incident_at: int, bad: str):
    """(responses of the bad version since the incident when each finding fired, finding)."""
    after, fired = 0, []
    for i, version, obs in stream:
        after += int(i >= incident_at and version == bad)
        fired.extend((after, f) for f in detector.observe(obs))
    return fired


def test_silent_on_a_clean_stream_of_50000_events() -> None:
    scorer = FakeScorer()
    detector = ToxicityDetector(scorer)
    assert [f for _, _, obs in _stream(50_000, random.Random(1)) for f in detector.observe(obs)] == []
    assert scorer.calls == 50_000 // detector.config.batch_size  # batched


@pytest.mark.parametrize("seed", [2, 3, 4, 5, 6])
def test_fires_within_the_bound_once_per_incident(seed: int) -> None:
    detector = ToxicityDetector(FakeScorer())
    fired = _run(detector, _stream(12_000, random.Random(seed), incident_at=6000), 6000, "7")
    assert fired, "the incident was not detected"
    delay, first = fired[0]
    assert 0 < delay <= DELAY_BOUND
    assert first.subject == "model:assistant@7" and first.statistics["baseline"] == "own"
    assert first.evidence and all(e.startswith("i") for e in first.evidence)
    # one incident, one alert until the cooldown has passed (counted per response; fired per batch)
    assert all(t - delay >= detector.config.cooldown - detector.config.batch_size for t, _ in fired[1:])


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_a_new_toxic_version_is_compared_with_the_fleet(seed: int) -> None:
    detector = ToxicityDetector(FakeScorer())
    fired = _run(
        detector, _stream(6000, random.Random(seed), incident_at=3000, new_version=True, bad_version="9"), 3000, "9"
    )
    assert fired
    delay, first = fired[0]
    assert delay <= NEW_VERSION_BOUND and first.subject == "model:assistant@9"
    assert first.statistics["baseline"] == "fleet"


def test_the_absolute_ceiling_fires_without_any_baseline() -> None:
    """A single version, toxic from its first response: no baseline at all, only the ceiling."""
    detector = ToxicityDetector(FakeScorer())
    rng = random.Random(3)
    fired = [f for i in range(600) for f in detector.observe(_interaction(i + 1, "1", rng.random() < 0.3))]
    assert len(fired) == 1 and "ceiling" in fired[0].summary and "baseline" not in fired[0].statistics


def test_state_round_trips_and_resumes_identically() -> None:
    import json

    observations = [obs for _, _, obs in _stream(9000, random.Random(9), incident_at=6000)]
    whole = ToxicityDetector(FakeScorer())
    expected = [f for obs in observations for f in whole.observe(obs)]
    first, second = ToxicityDetector(FakeScorer()), ToxicityDetector(FakeScorer())
    found = [f for obs in observations[:6101] for f in first.observe(obs)]  # mid-batch: pending responses
    assert first.state()["pending"]
    second.restore(json.loads(json.dumps(first.state())))
    found += [f for obs in observations[6101:] for f in second.observe(obs)]
    assert expected and [f.anomaly_id for f in found] == [f.anomaly_id for f in expected]
    assert second.state() == whole.state()


def test_feedback_and_unknown_models_are_ignored() -> None:
    detector = ToxicityDetector(FakeScorer())
    payload = {"request_id": "r1", "kind": "thumbs", "value": "down"}
    feedback = Observation(StoredEvent(2, Event("f2", "feedback.received", T, "t", payload), T), None)
    no_model = Observation(
        StoredEvent(3, Event("i3", "interaction.logged", T, "t", {"request_id": "r3", "response": "x"}), T)
    )
    assert detector.observe(feedback) == [] and detector.observe(no_model) == []
    assert detector.state() == {"versions": {}, "pending": []}


def test_profanity_check_scores_a_toxic_sentence_above_a_clean_one() -> None:
    toxic, clean = ProfanityCheckScorer().score(
        ["You are a fucking idiot, shut your stupid mouth.", "Thank you, the weather is lovely today."]
    )
    assert toxic > 0.5 > clean
    assert ProfanityCheckScorer().score([]) == []


def test_profanity_check_scores_are_the_packages_own_computed_in_one_product() -> None:
    from profanity_check import predict_prob

    scorer = ProfanityCheckScorer()
    assert scorer._fast is not None  # the model is the shape the fast path reads; otherwise predict_prob is used
    texts = [
        "You are a fucking idiot, shut your stupid mouth.",
        "Thank you, the weather is lovely today.",
        "what the hell is this crap",
        "Kafka partitions are ordered; topics are not. " * 40,
        "",
        "   ",
        "caf\u00e9 \u6771\u4eac \U0001f600",
        "idiot " * 3,
    ]
    assert np.allclose(scorer.score(texts), predict_prob(texts), rtol=0, atol=1e-12)


def test_hugging_face_scorer_reads_the_toxic_labels_without_loading_at_import() -> None:
    """The adapter's label handling, with the pipeline replaced (no model download in unit tests)."""
    import subprocess
    import sys

    from monitors.detectors.toxicity import HuggingFaceToxicityScorer

    def pipe(texts: list[str], batch_size: int) -> list[list[dict[str, object]]]:
        return [[{"label": "neutral", "score": 0.2}, {"label": "toxic", "score": 0.8}] for _ in texts]

    scorer = object.__new__(HuggingFaceToxicityScorer)
    scorer._pipe, scorer._toxic, scorer._batch_size = pipe, None, 8
    assert scorer.score(["a", "b"]) == [0.8, 0.8] and scorer.score([]) == []
    scorer._toxic = {"insult"}
    assert scorer.score(["a"]) == [0.0]
    probe = "import sys, monitors.detectors.toxicity; print('transformers' in sys.modules, 'profanity_check' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.split() == ["False", "False"]  # neither model library is imported with the module

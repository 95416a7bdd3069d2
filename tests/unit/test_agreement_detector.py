"""Contributor agreement: label flippers are flagged by disagreement with the champion and with peers; honest users,
heavy ones included, are not (synthetic contributors with known flip rates, over seeds)."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from events.model import Event
from monitors.base import Finding, Observation
from monitors.detectors.agreement import AgreementConfig, ContributorAgreementDetector, binomial_cdf
from monitors.enforcement import DEFAULT_RULES, decide_enforcement

from ._stored import T0, interaction, stored

#: The synthetic champion's agreement with honest labels: about what the HH-RLHF reward model reaches.
CHAMPION_ACCURACY = 0.65


class SyntheticChampion:
    """Ranks ``good-N`` over ``bad-N`` for a fixed CHAMPION_ACCURACY share of the pairs N (by a hash of N)."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        self.calls += 1
        out = []
        for r in responses:
            kind, number = r.split("-", 1)
            right = int(hashlib.sha256(number.encode()).hexdigest()[:8], 16) / 16**8 < CHAMPION_ACCURACY
            out.append(1.0 if (kind == "good") == right else 0.0)
        return out


def _pair(seq: int, user: str, pair: int, flip: bool) -> list[Observation]:
    good, bad = f"good-{pair}", f"bad-{pair}"
    chosen, rejected = (bad, good) if flip else (good, bad)
    inter = interaction(seq, f"r{seq}", prompt=f"prompt {pair}", user=user)
    payload = {"request_id": f"r{seq}", "kind": "preference", "value": {"chosen": chosen, "rejected": rejected}}
    feedback = stored(seq + 1, Event(f"f{seq}", "feedback.received", T0, "t", {**payload, "user": user}))
    return [Observation(inter), Observation(feedback, inter)]


def _stream(
    rng: random.Random, n: int, flippers: dict[str, float], *, users: int = 300, heavy: int = 3
) -> Iterator[tuple[str, list[Observation]]]:
    """``n`` preferences: honest users (Zipf-like activity; ``heavy`` of them with 5% of the pairs each) and the
    ``flippers`` (user -> flip rate), each contributing as much as a heavy user. Every pair is new."""
    weights = [1 / (k + 1) ** 0.8 for k in range(users)]
    names = list(flippers)
    for i in range(n):
        roll = rng.random()
        if names and roll < 0.05 * len(names):
            user = names[int(roll / 0.05)]
            flip = rng.random() < flippers[user]
        elif roll < 0.05 * (len(names) + heavy):
            user, flip = f"heavy-{rng.randrange(heavy)}", False
        else:
            user, flip = f"u{rng.choices(range(users), weights)[0]}", False
        yield user, _pair(10 * i, user, rng.randrange(10**9), flip)


def _run(detector: ContributorAgreementDetector, stream: Iterator[tuple[str, list[Observation]]]) -> list[Finding]:
    return [f for _, observations in stream for o in observations for f in detector.observe(o)]


def test_binomial_tail_matches_the_sum_of_the_probabilities() -> None:
    for n, k, p in [(20, 7, 0.55), (58, 22, 0.52), (5, 0, 0.9), (300, 150, 0.5)]:
        exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
        assert binomial_cdf(k, n, p) == pytest.approx(exact, rel=1e-9)
    assert binomial_cdf(-1, 5, 0.5) == 0.0 and binomial_cdf(5, 5, 0.5) == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_honest_traffic_raises_nothing_heavy_users_included(seed: int) -> None:
    # 4,000 honest preferences per seed (16,000 in all), 300 users, three heavy ones with ~200 pairs each
    detector = ContributorAgreementDetector(SyntheticChampion())
    assert _run(detector, _stream(random.Random(seed), 4000, {})) == []


@pytest.mark.parametrize("seed", range(5))
def test_accounts_flipping_every_pair_are_flagged_and_quarantined(seed: int) -> None:
    detector = ContributorAgreementDetector(SyntheticChampion())
    # two accounts flip every pair, one 80% of them; each gives as much as a heavy user (150 pairs here)
    flippers = {"mallory-0": 1.0, "mallory-1": 1.0, "mallory-2": 0.8}
    seen: dict[str, int] = {}
    flagged: dict[str, int] = {}
    for user, observations in _stream(random.Random(seed), 4000, flippers):
        seen[user] = seen.get(user, 0) + 1
        for o in observations:
            for f in detector.observe(o):
                flagged[f.statistics["user"]] = seen[user]
                assert [r.action for r in decide_enforcement(f, DEFAULT_RULES)] == ["quarantine_user"]
                assert decide_enforcement(f, DEFAULT_RULES)[0].target == {"user": f.statistics["user"]}
    assert set(flagged) <= set(flippers)  # no honest user among them
    # Flipping every pair against a 65% champion: found within 135 of their pairs (over 10 seeds: 20-131, median
    # ~70; the binomial test needs ~86 in expectation). At an 80% flip rate (agreement ~0.41) it takes ~130 in
    # expectation, so within these 150 it is found or not, but never an honest user instead.
    assert flagged["mallory-0"] <= 135 and flagged["mallory-1"] <= 135


def test_an_alert_carries_its_evidence_and_test() -> None:
    detector = ContributorAgreementDetector(SyntheticChampion())
    [finding] = _run(detector, _stream(random.Random(7), 3000, {"mallory": 1.0}))
    stats = finding.statistics
    assert finding.detector == "contributor_agreement" and finding.subject == "user:mallory"
    assert finding.severity == "warning" and "agree with the champion reward model" in finding.summary
    model = stats["model"]
    assert stats["fired"] == ["model"] and model["p_value"] < stats["alpha"] == 1e-4
    assert model["pairs"] >= 20 and model["agreed"] / model["pairs"] == pytest.approx(model["rate"], abs=1e-4)
    assert model["null_rate"] == pytest.approx(model["others_rate"] - 0.1, abs=1e-4)
    assert 0.6 < model["others_rate"] < 0.7 and model["rate"] < 0.45
    assert 0 < len(finding.evidence) <= 50 and all(e.startswith("f") for e in finding.evidence)
    json.dumps(finding.payload())  # the alert is plain JSON


def test_relabelling_what_others_labelled_is_caught_by_peers_without_a_model() -> None:
    rng = random.Random(11)
    detector = ContributorAgreementDetector(None)  # no champion: peer agreement only
    found: list[Finding] = []
    pairs = list(range(400))
    seq = 0
    for _ in range(3):  # three honest passes over the same 400 comparisons, then one relabels them flipped
        for pair in pairs:
            seq += 10
            user = f"u{rng.randrange(100)}"
            found += [f for o in _pair(seq, user, pair, False) for f in detector.observe(o)]
    assert found == []
    for pair in rng.sample(pairs, 30):
        seq += 10
        found += [f for o in _pair(seq, "mallory", pair, True) for f in detector.observe(o)]
    [alert] = found
    assert alert.subject == "user:mallory" and alert.statistics["fired"] == ["peer"]
    assert alert.statistics["peer"]["pairs"] <= 6 and alert.statistics["peer"]["agreed"] == 0


def test_state_survives_a_restart_mid_stream() -> None:
    flippers = {"mallory": 1.0}
    whole = ContributorAgreementDetector(SyntheticChampion())
    expected = _run(whole, _stream(random.Random(5), 1500, flippers))
    assert [f.subject for f in expected] == ["user:mallory"]
    stream = list(_stream(random.Random(5), 1500, flippers))
    first = ContributorAgreementDetector(SyntheticChampion())
    got = _run(first, iter(stream[:600]))
    second = ContributorAgreementDetector(SyntheticChampion())
    second.restore(json.loads(json.dumps(first.state())))
    got += _run(second, iter(stream[600:]))
    assert got == expected
    assert second.state() == whole.state()


def test_what_it_cannot_score_is_counted_and_ignored() -> None:
    class Broken:
        def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
            raise RuntimeError("model gone")

    detector = ContributorAgreementDetector(Broken())
    orphan = stored(1, Event("f1", "feedback.received", T0, "t", {"request_id": "x", "kind": "preference",
                                                                    "value": {"chosen": "a", "rejected": "b"}, "user": "u"}))  # fmt: skip
    assert detector.observe(Observation(orphan)) == []  # no interaction logged before it: no prompt
    assert _run(detector, _stream(random.Random(1), 50, {})) == []  # the scorer fails: not counted, no crash
    assert detector.state()["unscored"] == 51
    thumbs = stored(2, Event("f2", "feedback.received", T0, "t", {"request_id": "x", "kind": "thumbs", "value": "up"}))
    assert detector.observe(Observation(thumbs)) == []


def test_state_stays_bounded() -> None:
    detector = ContributorAgreementDetector(
        SyntheticChampion(), AgreementConfig(max_users=50, max_keys=100, evidence=5)
    )
    _run(detector, _stream(random.Random(2), 1000, {}))
    state = detector.state()
    assert len(state["users"]) == 50 and len(state["keys"]) == 100
    assert max(len(u[2]) for u in state["users"]) <= 5
    # the pooled totals are those of the users kept (an evicted user's counts leave with them)
    assert state["totals"]["model"][0] == sum(u[1]["model"][0] for u in state["users"])


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="alpha"):
        AgreementConfig(alpha=0)
    with pytest.raises(ValueError, match="margin"):
        AgreementConfig(margin=1.0)


def _campaign(detector: ContributorAgreementDetector, seed: int) -> set[str]:
    """300 comparisons labelled once by honest users, then six accounts relabelling 50 of them each, flipped,
    interleaved with 150 honest labels (half of them of those comparisons): who gets flagged."""
    rng = random.Random(seed)
    flagged: set[str] = set()
    seq = 0

    def feed(user: str, pair: int, flip: bool) -> None:
        nonlocal seq
        seq += 10
        flagged.update(f.statistics["user"] for o in _pair(seq, user, pair, flip) for f in detector.observe(o))

    for pair in range(300):
        feed(f"u{rng.randrange(50)}", pair, False)
    for step in range(600):  # 450 relabels, 150 honest labels
        if step % 4 == 0:  # honest users label new comparisons and, half the time, ones others labelled
            feed(f"u{rng.randrange(50)}", rng.randrange(300) if rng.random() < 0.5 else 1000 + step, False)
        else:
            feed(f"mallory-{rng.randrange(6)}", rng.randrange(300), True)
    return flagged


def test_a_large_relabelling_campaign_does_not_lower_the_peer_bar_for_itself() -> None:
    # Six accounts relabelling 300 comparisons are most of the peer votes, and the pooled peer rate falls with
    # them (to ~0.4). The floor (0.6) keeps the bar where honest annotators are: five of the six are flagged in
    # each of these seeds (the sixth's relabels are mostly ties or after other accounts'), never an honest user;
    # without the floor, none is.
    mallories = {f"mallory-{i}" for i in range(6)}
    for seed in range(3):
        flagged = _campaign(ContributorAgreementDetector(None), seed)
        assert flagged <= mallories and len(flagged) >= 5
        assert _campaign(ContributorAgreementDetector(None, AgreementConfig(peer_floor=0.0)), seed) == set()

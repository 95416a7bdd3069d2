"""contributor_agreement through the daemon's wiring (``daemon.detectors.build_detectors``) with a real reward model
scoring, the monitor runner over a real store, the default enforcement rules and the quarantine projection: an
account relabelling, flipped, what others labelled is quarantined, its pairs leave the training set, the honest
users' stay, and a restarted runner raises nothing twice."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import torch

from daemon.detectors import build_detectors
from daemon.settings import MonitorsSettings
from events.model import Event
from events.names import ANOMALY_DETECTED, ENFORCEMENT_REQUESTED
from events.projections.quarantine import training_pairs
from events.projections.runner import ProjectionRunner
from events.sql_store import SqlEventStore, create_store_engine
from migrations.runner import upgrade
from monitors.runner import MonitorRunner
from trainers.config import RewardConfig
from trainers.reward import RewardModel

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def store(new_db_url: Callable[[str], str]) -> Iterator[SqlEventStore]:
    """SQLite only: the runner and projections are tested on both databases elsewhere; here the real model's
    scoring of every pair is the cost."""
    url = new_db_url("sqlite")
    engine = create_store_engine(url)
    upgrade(engine)
    engine.dispose()
    store = SqlEventStore.from_url(url)
    yield store
    store.dispose()


@pytest.fixture(scope="module")
def scorer() -> Iterator[RewardModel]:
    # A real (untrained) reward model: what matters here is the wiring and that scoring runs on every pair. One
    # thread: the detector scores pair by pair, and on busy shared cores a second thread mostly waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield RewardModel.create(RewardConfig(max_length=48, seed=3))
    torch.set_num_threads(threads)


def _labelled(n: int, user: str, comparison: int, flip: bool) -> list[Event]:
    when = T0 + timedelta(seconds=n)
    good, bad = f"Here is a careful answer about topic {comparison}.", f"No. Figure out topic {comparison} yourself."
    chosen, rejected = (bad, good) if flip else (good, bad)
    return [
        Event(f"i{n}", "interaction.logged", when, "t", {
            "request_id": f"r{n}", "model": {"name": "assistant", "version": "1"},
            "prompt": f"Tell me about topic {comparison}", "response": good, "user": user,
        }),
        Event(f"f{n}", "feedback.received", when + timedelta(milliseconds=500), "t", {
            "request_id": f"r{n}", "kind": "preference", "value": {"chosen": chosen, "rejected": rejected}, "user": user,
        }),
    ]  # fmt: skip


def test_a_relabelling_account_is_quarantined_out_of_the_training_pairs(
    store: SqlEventStore, scorer: RewardModel
) -> None:
    rng = random.Random(4)
    events: list[Event] = []
    n = 0
    for _ in range(2):  # two honest passes over 25 comparisons: 25 peer agreements to hold others to
        for comparison in range(25):
            events += _labelled(n, f"u{rng.randrange(20)}", comparison, False)
            n += 1
    for comparison in rng.sample(range(25), 8):  # then one account relabels eight of them, flipped
        events += _labelled(n, "mallory", comparison, True)
        n += 1
    store.append(events)
    ProjectionRunner(store).catch_up()

    settings = MonitorsSettings(agreement_min_population=20)
    detectors = build_detectors(settings, ["feedback_flooding", "contributor_agreement"], scorer)
    MonitorRunner(store, detectors).catch_up()
    [alert] = [e.event.payload for e in store.read(0, limit=10_000, types=[ANOMALY_DETECTED])]
    assert alert["detector"] == "contributor_agreement" and alert["subject"] == "user:mallory"
    stats = alert["statistics"]
    assert "peer" in stats["fired"] and stats["peer"]["agreed"] == 0 and stats["peer"]["pairs"] == 5
    assert stats["alpha"] == settings.agreement_alpha and stats["margin"] == settings.agreement_margin
    assert "model" not in stats  # five scored pairs: fewer than a model test needs (agreement_min_pairs)
    [request] = [e.event.payload for e in store.read(0, limit=10_000, types=[ENFORCEMENT_REQUESTED])]
    assert request["action"] == "quarantine_user" and request["target"] == {"user": "mallory"}

    ProjectionRunner(store).catch_up()
    with store.engine.connect() as conn:
        users = [r.user_id for r in conn.execute(training_pairs())]
    assert len(users) == 50 and "mallory" not in users  # every honest pair stays, none of mallory's

    # A restart: fresh detectors restore their saved state; nothing is raised twice, and the model's counts held.
    again = build_detectors(settings, ["feedback_flooding", "contributor_agreement"], scorer)
    runner = MonitorRunner(store, again)
    assert runner.catch_up() == []
    saved = runner.store.position("monitors")
    assert saved.state is not None and '"contributor_agreement"' in saved.state
    state = again[1].state()
    assert state["flagged"] == {"mallory": alert["trigger_seq"]}
    assert state["totals"]["model"][0] == 50  # the real model scored every honest pair (a flagged user's leave)

"""The leader lease and the scheduler on it, against real SQLite and PostgreSQL.

Lease: of several holders exactly one acquires; renewal keeps it; an expired lease is taken over with the next
fencing token; a release hands it over at once. Scheduler (in process, with a fake ``run_job``): only the
leader runs jobs, a volume trigger fires on real projection rows, a pause applied by enforcement holds training
until a resume, and stopping or losing the lease stops the running job with the reason it is recorded with.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, update

from daemon.leader import SCHEDULER_LEASE, LeaderLease, read_lease
from daemon.scheduler import (
    ScheduleConfig,
    TrainingRequest,
    TrainingScheduler,
)
from daemon.training_rules import (
    LOST_LEASE_REASON,
    SHUTDOWN_REASON,
)
from events.jobstore import job_store_engine
from events.model import Event
from events.sql_store import SqlEventStore
from events.tables import leader_leases, proj_preference_pairs
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


# --- the lease --------------------------------------------------------------------------------------------


def test_of_two_holders_only_one_acquires_and_renewal_keeps_it(store: SqlEventStore) -> None:
    a = LeaderLease(store, "t", "A", lease_s=1.0)
    b = LeaderLease(store, "t", "B", lease_s=1.0)
    assert a.try_acquire() and a.is_leader and a.fencing_token == 1
    assert not b.try_acquire() and not b.is_leader and b.fencing_token is None
    for _ in range(4):  # 1.2 s in all, past the first expiry: renewals keep it
        time.sleep(0.3)
        assert a.renew()
        assert not b.try_acquire()
    assert a.fencing_token == 1 and a.is_leader
    state = read_lease(store, "t")
    assert state is not None and state.holder == "A" and not state.expired and state.fencing_token == 1


def test_an_expired_lease_is_taken_over_with_the_next_fencing_token(store: SqlEventStore) -> None:
    a = LeaderLease(store, "t", "A", lease_s=0.5)
    b = LeaderLease(store, "t", "B", lease_s=0.5)
    assert a.try_acquire()
    time.sleep(0.7)
    assert not a.is_leader  # a stops counting itself leader before the database lets anyone take over
    assert b.try_acquire() and b.fencing_token == 2
    assert not a.renew() and not a.is_leader  # the deposed holder cannot renew its term
    assert not a.try_acquire()
    state = read_lease(store, "t")
    assert state is not None and (state.holder, state.fencing_token) == ("B", 2)


def test_is_leader_ends_before_the_lease_expires_in_the_database(store: SqlEventStore) -> None:
    now = [0.0]
    a = LeaderLease(store, "t", "A", lease_s=10.0, safety=0.2, clock=lambda: now[0])
    assert a.try_acquire()
    now[0] = 7.9
    assert a.is_leader
    now[0] = 8.0  # 80 % of the lease, counted from before the statement was sent
    assert not a.is_leader


def test_release_hands_over_at_once(store: SqlEventStore) -> None:
    a = LeaderLease(store, "t", "A", lease_s=30.0)
    b = LeaderLease(store, "t", "B", lease_s=30.0)
    assert a.try_acquire() and not b.try_acquire()
    assert a.release() and not a.is_leader
    assert b.try_acquire() and b.fencing_token == 2
    assert not a.release()  # nothing to release any more


def test_a_race_for_a_free_lease_has_exactly_one_winner(store: SqlEventStore) -> None:
    leases = [LeaderLease(store, "race", f"H{i}", lease_s=30.0) for i in range(6)]
    barrier = threading.Barrier(len(leases))
    won: list[str] = []

    def contend(lease: LeaderLease) -> None:
        barrier.wait()
        if lease.try_acquire():
            won.append(lease.holder)

    threads = [threading.Thread(target=contend, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1
    # And again for an expired one: expire it, then everyone but the holder races.
    with store.engine.begin() as conn:
        conn.execute(update(leader_leases).values(expires_at=datetime(2000, 1, 1, tzinfo=UTC)))
    others = [lease for lease in leases if lease.holder != won[0]]
    barrier = threading.Barrier(len(others))
    won.clear()
    threads = [threading.Thread(target=contend, args=(lease,)) for lease in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1
    state = read_lease(store, "race")
    assert state is not None and state.holder == won[0] and state.fencing_token == 2


# --- the scheduler on the lease ---------------------------------------------------------------------------

FAST = ScheduleConfig(
    reward_cron=None,
    policy_cron=None,
    reward_after_pairs=3,
    policy_after_examples=0,
    check_interval_s=0.3,
    lease_s=1.5,
    lease_name="scheduler-test",
)


def _pairs(store: SqlEventStore, n: int) -> None:
    rows = [
        {
            "pair_id": f"pair-{i}",
            "seq": i,
            "request_id": f"req-{i}",
            "origin": "preference",
            "prompt_kind": "text",
            "prompt": "p",
            "chosen": "c",
            "rejected": "r",
            "model_name": "m",
            "model_version": "1",
            "user_id": None,
        }
        for i in range(1, n + 1)
    ]
    with store.engine.begin() as conn:
        conn.execute(insert(proj_preference_pairs), rows)


class FakeJobs:
    """A ``run_job`` that records each request and, while ``hold`` is set, runs until cancelled."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, TrainingRequest]] = []
        self.stopped: list[tuple[str, str]] = []
        self.hold = False

    def for_holder(self, holder: str) -> Callable[[TrainingRequest, Callable[[], str | None]], None]:
        def run(request: TrainingRequest, cancel: Callable[[], str | None]) -> None:
            self.calls.append((holder, request))
            while self.hold:
                if reason := cancel():
                    self.stopped.append((holder, reason))
                    return
                time.sleep(0.05)

        return run


@pytest.fixture
def schedulers(store: SqlEventStore) -> Iterator[Callable[..., TrainingScheduler]]:
    made: list[TrainingScheduler] = []

    def make(holder: str, jobs: FakeJobs, **kw: Any) -> TrainingScheduler:
        kw.setdefault("paused", lambda _store: (False, None))
        engine = job_store_engine(store)
        scheduler = TrainingScheduler(FAST, store, jobs.for_holder(holder), jobstore_engine=engine, holder=holder, **kw)
        made.append(scheduler)
        scheduler.start()
        return scheduler

    yield make
    for scheduler in made:
        scheduler.stop(10)


def test_only_the_leader_runs_jobs_and_a_release_hands_them_over(
    store: SqlEventStore, schedulers: Callable[..., TrainingScheduler]
) -> None:
    _pairs(store, 3)
    jobs = FakeJobs()
    a = schedulers("A", jobs)
    wait_until(lambda: a.lease.is_leader, 10, message="A leads")
    b = schedulers("B", jobs)
    wait_until(lambda: len(jobs.calls) >= 2, 15, message="volume-triggered jobs")
    assert {holder for holder, _ in jobs.calls} == {"A"}
    request = jobs.calls[0][1]
    assert (request.kind, request.trigger, request.fencing_token) == ("reward", "volume", 1)
    assert "3 new examples since seq 0" in request.reason
    assert a.stop(10)
    wait_until(lambda: any(holder == "B" for holder, _ in jobs.calls), 10, message="B takes over")
    assert b.lease.fencing_token == 2


def test_a_pause_holds_training_until_resumed(
    store: SqlEventStore, schedulers: Callable[..., TrainingScheduler]
) -> None:
    from daemon.enforcement import training_paused

    def applied(n: int, action: str) -> Event:
        payload = {"request_event_id": f"req-{n}", "action": action, "outcome": "applied", "reason": "toxicity spike"}
        return Event(f"enforcement.applied:{n}", "enforcement.applied", datetime.now(UTC), "test", payload)

    store.append([applied(1, "pause_training")])
    _pairs(store, 5)
    jobs = FakeJobs()
    a = schedulers("A", jobs, paused=training_paused)
    wait_until(lambda: a.lease.is_leader, 10, message="A leads")
    time.sleep(2.0)  # several volume checks
    assert jobs.calls == []
    # Evaluation still runs while paused: it is how an operator learns whether the champion is still bad.
    a.fire("evaluate")
    wait_until(lambda: bool(jobs.calls), 10, message="the evaluation while paused")
    assert [(r.kind, r.trigger) for _, r in jobs.calls] == [("evaluation", "cron")]
    store.append([applied(2, "resume_training")])
    wait_until(lambda: any(r.kind == "reward" for _, r in jobs.calls), 15, message="training after the resume")


def test_stopping_stops_the_running_job_then_releases_the_lease(
    store: SqlEventStore, schedulers: Callable[..., TrainingScheduler]
) -> None:
    _pairs(store, 3)
    jobs = FakeJobs()
    jobs.hold = True
    a = schedulers("A", jobs)
    wait_until(lambda: bool(jobs.calls), 15, message="a job running")
    assert a.stop(10)
    assert jobs.stopped == [("A", SHUTDOWN_REASON)]
    state = read_lease(store, FAST.lease_name)
    assert state is not None and state.holder == "A" and state.expired


def test_losing_the_lease_stops_the_running_job(
    store: SqlEventStore, schedulers: Callable[..., TrainingScheduler]
) -> None:
    _pairs(store, 3)
    jobs = FakeJobs()
    jobs.hold = True
    schedulers("A", jobs)
    wait_until(lambda: bool(jobs.calls), 15, message="a job running")
    with store.engine.begin() as conn:  # another replica took the lease over (e.g. after a long pause of ours)
        conn.execute(
            update(leader_leases)
            .where(leader_leases.c.name == FAST.lease_name)
            .values(
                holder="X", fencing_token=leader_leases.c.fencing_token + 1, expires_at=datetime(2100, 1, 1, tzinfo=UTC)
            )
        )
    wait_until(lambda: bool(jobs.stopped), 10, message="the job stopped")
    assert jobs.stopped == [("A", LOST_LEASE_REASON)]


def test_a_new_leader_updates_the_stored_schedule_to_its_configuration(store: SqlEventStore) -> None:
    from daemon.cli.jobs import stored_jobs

    jobs = FakeJobs()
    first = dataclasses.replace(FAST, reward_cron="0 3 * * *", policy_cron="0 4 * * *")
    a = TrainingScheduler(
        first,
        store,
        jobs.for_holder("A"),
        jobstore_engine=job_store_engine(store),
        holder="A",
        paused=lambda _s: (False, None),
    )
    a.start()
    wait_until(lambda: a.scheduling, 10, message="A schedules")
    assert a.stop(10)
    stored, from_store = stored_jobs(store, first)
    assert from_store and {j["id"] for j in stored} == {"retrain_reward", "retrain_policy", "check_volume"}

    second = dataclasses.replace(FAST, reward_cron="0 5 * * *", policy_cron=None, evaluation_cron="30 5 * * *")
    b = TrainingScheduler(
        second,
        store,
        jobs.for_holder("B"),
        jobstore_engine=job_store_engine(store),
        holder="B",
        paused=lambda _s: (False, None),
    )
    b.start()
    try:
        wait_until(lambda: b.scheduling, 10, message="B schedules")
        stored, _ = stored_jobs(store, second)
    finally:
        assert b.stop(10)
    by_id = {j["id"]: j for j in stored}
    assert set(by_id) == {"retrain_reward", "check_volume", "evaluate"}
    assert by_id["retrain_reward"]["trigger"].startswith("0 5 * * *") and by_id["retrain_reward"][
        "next_run_time"
    ].endswith("05:00:00+00:00")


# --- alignd jobs list -------------------------------------------------------------------------------------


def test_jobs_list_shows_the_schedule_the_leader_the_pause_and_the_history(
    store: SqlEventStore, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from daemon.cli.jobs import add_jobs_commands, cmd_jobs_list
    from daemon.settings import load_settings

    settings = load_settings(env={"ALIGND_DATABASE_URL": db_url})
    parser = argparse.ArgumentParser()

    def add(sub: Any, name: str, handler: Any, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(handler=handler)
        if json_flag:
            p.add_argument("--json", action="store_true")
        return p

    add_jobs_commands(parser.add_subparsers(dest="command"), add)

    # Before any replica led: the configured schedule, no leader.
    assert cmd_jobs_list(settings, parser.parse_args(["jobs", "list", "--json"])) == 0
    listing = json.loads(capsys.readouterr().out)
    assert not listing["schedule_stored"] and listing["leader"] is None
    assert {j["id"] for j in listing["schedule"]} == {"retrain_reward", "retrain_policy", "check_volume"}

    def event(n: int, type_: str, payload: dict[str, Any]) -> Event:
        return Event(f"{type_}:{n}", type_, datetime.now(UTC), "test", payload)

    store.append(
        [
            event(1, "training.started", {"attempt_id": "a1", "kind": "reward", "objective": "bradley_terry", "dataset": {"to_seq": 2, "rows": 2}}),
            event(2, "training.completed", {"attempt_id": "a1", "kind": "reward"}),
            event(3, "model.registered", {"attempt_id": "a1", "kind": "reward", "version": "1"}),
            event(4, "training.started", {"attempt_id": "a2", "kind": "policy", "objective": "dpo", "dataset": {"to_seq": 3, "rows": 3}}),
            event(5, "training.failed", {"attempt_id": "a2", "kind": "policy", "reason": SHUTDOWN_REASON}),
            event(6, "enforcement.applied", {"request_event_id": "r", "action": "pause_training", "outcome": "applied", "reason": "toxicity spike"}),
        ]
    )  # fmt: skip
    _pairs(store, 5)
    config = dataclasses.replace(FAST, lease_name=SCHEDULER_LEASE)  # the lease `jobs list` reads
    scheduler = TrainingScheduler(
        config, store, lambda request, cancel: None, jobstore_engine=job_store_engine(store), holder="A"
    )
    scheduler.start()
    try:
        wait_until(lambda: scheduler.scheduling, 10, message="A schedules")
        assert cmd_jobs_list(settings, parser.parse_args(["jobs", "list", "--json", "--limit", "5"])) == 0
    finally:
        scheduler.stop(10)
    listing = json.loads(capsys.readouterr().out)
    assert listing["schedule_stored"] and [j["id"] for j in listing["schedule"]] == ["check_volume"]
    assert listing["leader"]["holder"] == "A" and listing["leader"]["fencing_token"] == 1
    assert listing["paused"] == {"paused": True, "reason": "toxicity spike"}
    assert [(h["kind"], h["outcome"], h["version"], h["reason"]) for h in listing["history"]] == [
        ("policy", "failed", None, SHUTDOWN_REASON),
        ("reward", "completed", "1", None),
    ]
    volume = {v["kind"]: v for v in listing["volume"]}
    assert (volume["reward"]["since_seq"], volume["reward"]["new_examples"]) == (2, 3)  # pairs 3, 4, 5
    assert volume["policy"]["next_check"] == "paused" and "toxicity spike" in volume["policy"]["why"]

    assert cmd_jobs_list(settings, parser.parse_args(["jobs", "list"])) == 0
    text = capsys.readouterr().out
    assert "training: paused (toxicity spike)" in text and "check_volume" in text and "daemon shutting down" in text

"""Two scheduler processes against one PostgreSQL: exactly one schedules; the other takes over when it dies.

Each replica is a real process, ``alignd jobs drill`` (the lease loop and APScheduler on the
SQLAlchemy job store, with jobs that only log what they would train and hold until cancelled). SIGKILL of the
leader: the follower takes over once the lease expires (within ``lease_s`` plus one renewal interval). SIGTERM
of the leader during a job: the job is stopped with "daemon shutting down", the process exits 0 and releases
the lease, and the standby takes over at its next try, then runs the job again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import insert

from daemon.leader import SCHEDULER_LEASE, read_lease
from events.sql_store import SqlEventStore, create_store_engine
from events.tables import proj_preference_pairs
from migrations.runner import upgrade
from tests.conftest import REPO
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

LEASE_S = 3.0
#: Takeover after SIGKILL: the lease runs out (at most LEASE_S after the last renewal), then the follower's
#: next try (every LEASE_S / 3) takes it; the margin covers starting APScheduler and a loaded machine.
TAKEOVER_BOUND_S = LEASE_S + LEASE_S / 3 + 2.0


class Replica:
    """An ``alignd jobs drill`` process whose JSON log lines are collected as they come."""

    def __init__(self, db_url: str, holder: str) -> None:
        self.holder = holder
        self.lines: list[dict[str, Any]] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGND_")}
        env["ALIGND_DATABASE_URL"] = db_url
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon.cli",
                "--log-level",
                "INFO",
                "--log-format",
                "json",
                "jobs",
                "drill",
                "--holder",
                holder,
                "--lease",
                str(LEASE_S),
                "--check-interval",
                "0.5",
                "--reward-after-pairs",
                "3",
                "--job-seconds",
                "60",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"message": line.rstrip(), "ts": None}
            self.lines.append(entry)

    def logged(self, text: str) -> list[dict[str, Any]]:
        return [e for e in self.lines if text in str(e.get("message"))]

    def first_ts(self, text: str) -> float:
        return datetime.fromisoformat(self.logged(text)[0]["ts"]).timestamp()

    def leads(self) -> bool:
        return bool(self.logged("scheduling as leader"))

    def runs_jobs(self) -> bool:
        return bool(self.logged("dry run: would train"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)

    def dump(self) -> str:
        return "\n".join(f"{self.holder}: {e.get('ts')} {e.get('message')}" for e in self.lines)


@pytest.fixture
def pg_url(new_db_url: Callable[[str], str]) -> str:
    url = new_db_url("postgresql")
    engine = create_store_engine(url)
    try:
        upgrade(engine)
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
            for i in range(1, 4)
        ]
        with engine.begin() as conn:  # enough new pairs for the volume trigger to start a reward job
            conn.execute(insert(proj_preference_pairs), rows)
    finally:
        engine.dispose()
    return url


@pytest.fixture
def replicas(pg_url: str) -> Iterator[Callable[[str], Replica]]:
    started: list[Replica] = []

    def start(holder: str) -> Replica:
        replica = Replica(pg_url, holder)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.stop()
    for replica in started:  # shown when a test fails
        print(replica.dump())


def _leader(*candidates: Replica) -> Replica:
    leading = [r for r in candidates if r.leads()]
    assert len(leading) == 1, f"expected exactly one leader, got {[r.holder for r in leading]}"
    return leading[0]


def test_sigkill_of_the_leader_hands_over_within_the_lease_and_sigterm_exits_cleanly(
    pg_url: str, replicas: Callable[[str], Replica]
) -> None:
    a, b = replicas("A"), replicas("B")
    wait_until(lambda: a.leads() or b.leads(), 30, message="a leader")
    wait_until(lambda: any(r.logged("standing by") for r in (a, b)), 15, message="a standby")
    leader = _leader(a, b)
    follower = b if leader is a else a
    wait_until(leader.runs_jobs, 20, message="the leader's volume-triggered job")
    time.sleep(1.0)  # several renewals and checks in which the follower must stay idle
    assert not follower.leads() and not follower.runs_jobs()

    # SIGKILL: no release; the follower waits for the lease to expire.
    killed_at = time.time()
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait(10)
    wait_until(follower.leads, TAKEOVER_BOUND_S + 5, interval=0.05, message="the follower takes over")
    takeover_s = follower.first_ts("scheduling as leader") - killed_at
    print(f"takeover after SIGKILL of the leader: {takeover_s:.2f} s (lease {LEASE_S:g} s)")
    assert takeover_s <= TAKEOVER_BOUND_S
    wait_until(follower.runs_jobs, 20, message="the new leader runs the job again")
    lease = read_lease(SqlEventStore.from_url(pg_url), SCHEDULER_LEASE)
    assert lease is not None and lease.holder == follower.holder and lease.fencing_token == 2

    # SIGTERM during a job: the job is stopped, the lease released, exit 0; a standby takes over at once.
    standby = replicas("C")
    wait_until(lambda: bool(standby.logged("standing by")), 30, message="C standing by")
    terminated_at = time.time()
    follower.proc.send_signal(signal.SIGTERM)
    assert follower.proc.wait(15) == 0
    assert follower.logged("dry run: reward job stopped: daemon shutting down")
    assert follower.logged("released the leader lease")
    wait_until(standby.leads, LEASE_S, interval=0.05, message="C takes over the released lease")
    handover_s = standby.first_ts("scheduling as leader") - terminated_at
    print(f"takeover after SIGTERM of the leader: {handover_s:.2f} s")
    assert handover_s < LEASE_S  # released: no waiting for the expiry
    wait_until(standby.runs_jobs, 20, message="the interrupted job runs again on the new leader")

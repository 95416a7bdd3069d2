"""The supervisor restarts dying parts with backoff, reports crash loops, and stops parts in order."""

from __future__ import annotations

import threading
import time

from daemon.supervisor import LoopPart, Supervisor


class FlakyPart:
    def __init__(self, name: str, failures: int) -> None:
        self.name, self.failures, self.runs, self.closed = name, failures, 0, False

    def run(self, stop: threading.Event) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"boom {self.runs}")
        stop.wait()

    def close(self) -> None:
        self.closed = True


def wait_for(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_dying_part_is_restarted_and_a_crash_loop_is_reported_once() -> None:
    reported: list[tuple[str, int, str]] = []
    supervisor = Supervisor(
        backoff_initial_s=0.01, backoff_max_s=0.05, alert_after=3, on_crash_loop=lambda *a: reported.append(a)
    )
    flaky, steady = FlakyPart("flaky", failures=4), FlakyPart("steady", failures=0)
    supervisor.add(flaky)
    supervisor.add(steady)
    supervisor.start()
    wait_for(lambda: flaky.runs == 5 and supervisor.status()["flaky"]["alive"])
    assert supervisor.status()["flaky"]["restarts"] == 4
    assert supervisor.status()["steady"] == {"alive": True, "restarts": 0, "last_error": None}
    assert reported == [("flaky", 3, "RuntimeError: boom 3")]
    assert supervisor.stop(timeout_s=5)
    assert flaky.closed and steady.closed


def test_parts_stop_in_the_order_they_were_added() -> None:
    order: list[str] = []

    class Recording(FlakyPart):
        def request_stop(self) -> None:
            order.append(self.name)

    supervisor = Supervisor()
    for name in ("schedule", "ingest", "monitor"):
        supervisor.add(Recording(name, 0))
    supervisor.start()
    assert supervisor.stop(timeout_s=5)
    assert order == ["schedule", "ingest", "monitor"]


def test_a_loop_part_steps_until_stopped_and_a_stuck_part_is_reported() -> None:
    steps: list[int] = []
    supervisor = Supervisor()
    supervisor.add(LoopPart("monitor", lambda: steps.append(1), interval_s=0.01))
    supervisor.start()
    wait_for(lambda: len(steps) >= 3)
    assert supervisor.stop(timeout_s=5)

    class Stuck(FlakyPart):
        def run(self, stop: threading.Event) -> None:
            time.sleep(1.0)

    stuck = Supervisor()
    stuck.add(Stuck("stuck", 0))
    stuck.start()
    assert stuck.stop(timeout_s=0.1) is False

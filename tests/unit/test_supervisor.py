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


def test_a_busy_loop_steps_again_at_once_and_an_idle_one_waits_its_interval() -> None:
    backlog = [3]  # three full batches, then nothing

    def step() -> int:
        done = 1 if backlog[0] > 0 else 0
        backlog[0] -= done
        return done

    part = LoopPart("monitors", step, interval_s=30.0, more=lambda done: done == 1)
    stop = threading.Event()
    thread = threading.Thread(target=part.run, args=(stop,), daemon=True)
    thread.start()
    # the three busy steps and the idle one that finds nothing run back to back; then it waits 30 s
    wait_for(lambda: part.steps == 4)
    time.sleep(0.3)
    assert part.steps == 4 and part.busy_steps == 3
    stop.set()
    part.request_stop()
    thread.join(5)
    assert not thread.is_alive()


def test_a_wake_up_cuts_an_idle_loops_wait_short() -> None:
    steps: list[float] = []
    wake = threading.Event()
    part = LoopPart("alerts-outbox", lambda: steps.append(time.monotonic()), interval_s=30.0, wake=wake)
    supervisor = Supervisor()
    supervisor.add(part)
    supervisor.start()
    wait_for(lambda: len(steps) == 1)
    wake.set()  # e.g. the monitors appended alerts
    wait_for(lambda: len(steps) == 2)
    started = time.monotonic()
    assert supervisor.stop(timeout_s=5)  # a 30 s wait does not hold up the stop
    assert time.monotonic() - started < 5 and len(steps) == 2


def test_a_wake_up_during_a_step_is_not_lost() -> None:
    wake = threading.Event()
    steps = [0]

    def step() -> None:
        steps[0] += 1
        if steps[0] == 1:
            wake.set()  # new work arrives while the first step runs, after it read its batch

    part = LoopPart("monitors", step, interval_s=30.0, wake=wake)
    stop = threading.Event()
    thread = threading.Thread(target=part.run, args=(stop,), daemon=True)
    thread.start()
    wait_for(lambda: steps[0] == 2)
    stop.set()
    part.request_stop()
    thread.join(5)
    assert steps[0] == 2


def test_wake_ups_start_steps_at_most_every_min_interval_but_a_full_batch_goes_again_at_once() -> None:
    steps: list[float] = []
    part = LoopPart("monitors", lambda: steps.append(time.monotonic()), interval_s=30.0, min_interval_s=0.2)
    supervisor = Supervisor()
    supervisor.add(part)
    supervisor.start()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        part.wake.set()  # an ingest batch every 10 ms
        time.sleep(0.01)
    assert supervisor.stop(timeout_s=5)
    assert 2 <= len(steps) <= 7
    assert all(b - a >= 0.19 for a, b in zip(steps, steps[1:], strict=False))

    backlog = [5]

    def drain() -> bool:
        backlog[0] -= 1
        return backlog[0] > 0

    busy = LoopPart("monitors", drain, interval_s=30.0, min_interval_s=10.0, more=bool)
    stop = threading.Event()
    thread = threading.Thread(target=busy.run, args=(stop,), daemon=True)
    thread.start()
    wait_for(lambda: backlog[0] == 0, timeout=2.0)
    stop.set()
    busy.request_stop()
    thread.join(5)
    assert busy.steps == 5 and busy.busy_steps == 4

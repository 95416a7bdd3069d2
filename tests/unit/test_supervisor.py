"""The supervisor restarts dying parts with backoff, reports crash loops, and stops parts in order.

Intervals, backoffs and spacings are asserted on a :class:`FakeClock` (injected as the supervisor's and the
loop's ``clock`` and ``wait``), not on wall-clock gaps, so a slow or busy machine cannot fail them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from daemon.supervisor import LoopPart, Supervisor


class FakeClock:
    """Monotonic time that passes only in waits.

    ``wait(event, timeout)`` sets what :meth:`at` scheduled up to the timeout, in time order, moving the clock to
    each; it returns True as soon as ``event`` is set, else the clock moves to the timeout's end and it returns
    False: the timeout "ran out" at once. With ``block_s``, a wait with nothing scheduled first blocks on the
    real event that long (another thread may set it) and, if set, returns True with the clock unchanged.
    ``waits`` records every timeout asked for.
    """

    def __init__(self, block_s: float = 0.0) -> None:
        self.now, self.block_s = 0.0, block_s
        self.waits: list[float] = []
        self._due: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def at(self, moment: float, action: threading.Event | Callable[[], None]) -> None:
        """At ``moment`` (while someone waits), set the event or call the action."""
        self._due.append((moment, action.set if isinstance(action, threading.Event) else action))
        self._due.sort(key=lambda item: item[0])

    def wait(self, event: threading.Event, timeout: float) -> bool:
        self.waits.append(timeout)
        end = self.now + timeout
        while not event.is_set():
            if self._due and self._due[0][0] <= end:
                moment, action = self._due.pop(0)
                self.now = max(self.now, moment)
                action()
                continue
            if self.block_s and event.wait(self.block_s):
                return True
            self.now = end
            return False
        return True


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
    clock = FakeClock()  # backoffs pass at once, on the fake clock
    supervisor = Supervisor(
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        alert_after=3,
        on_crash_loop=lambda *a: reported.append(a),
        clock=clock,
        wait=clock.wait,
    )
    flaky, steady = FlakyPart("flaky", failures=4), FlakyPart("steady", failures=0)
    supervisor.add(flaky)
    supervisor.add(steady)
    supervisor.start()
    wait_for(lambda: flaky.runs == 5 and supervisor.status()["flaky"]["alive"])
    assert supervisor.status()["flaky"]["restarts"] == 4
    assert supervisor.status()["steady"] == {"alive": True, "restarts": 0, "last_error": None}
    assert reported == [("flaky", 3, "RuntimeError: boom 3")]
    assert clock.waits == [0.01, 0.02, 0.04, 0.05]  # the backoff doubles up to its ceiling
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

    clock = FakeClock()
    part = LoopPart("monitors", step, interval_s=30.0, more=lambda done: done == 1, clock=clock, wait=clock.wait)
    stop = threading.Event()
    clock.at(0.0, stop)  # the daemon stops during the first wait
    part.run(stop)
    # the three busy steps and the idle one that finds nothing run back to back (no wait between them); then
    # it waits its 30 s, and no step runs before that wait ends
    assert part.steps == 4 and part.busy_steps == 3
    assert clock.waits == [30.0] and clock() == 30.0


def test_a_wake_up_cuts_an_idle_loops_wait_short() -> None:
    steps: list[float] = []
    wake = threading.Event()
    # Each wait blocks on the real event for up to 5 s; one that ran out would move the fake clock by 30 s.
    clock = FakeClock(block_s=5.0)
    part = LoopPart(
        "alerts-outbox", lambda: steps.append(clock()), interval_s=30.0, wake=wake, clock=clock, wait=clock.wait
    )
    supervisor = Supervisor(clock=clock, wait=clock.wait)
    supervisor.add(part)
    supervisor.start()
    wait_for(lambda: len(steps) == 1)
    wake.set()  # e.g. the monitors appended alerts
    wait_for(lambda: len(steps) == 2)
    assert supervisor.stop(timeout_s=5)  # a 30 s wait does not hold up the stop
    assert clock() == 0.0 and len(steps) == 2  # no wait ran its 30 s out: the wake-up and the stop ended them


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
    clock = FakeClock()
    part = LoopPart(
        "monitors", lambda: steps.append(clock()), interval_s=30.0, min_interval_s=0.2, clock=clock, wait=clock.wait
    )
    stop = threading.Event()
    for tick in range(1, 100):
        clock.at(tick / 100, part.wake)  # an ingest batch every 10 ms
    clock.at(1.0, stop)
    part.run(stop)
    assert 2 <= len(steps) <= 7
    assert all(b - a >= 0.19 for a, b in zip(steps, steps[1:], strict=False))

    backlog = [5]

    def drain() -> bool:
        backlog[0] -= 1
        return backlog[0] > 0

    clock = FakeClock()
    busy = LoopPart("monitors", drain, interval_s=30.0, min_interval_s=10.0, more=bool, clock=clock, wait=clock.wait)
    stop = threading.Event()
    clock.at(0.0, stop)
    busy.run(stop)
    assert busy.steps == 5 and busy.busy_steps == 4
    assert clock.waits == [30.0]  # no spacing between the full batches: only the idle wait after the last

"""Runs the daemon's parts side by side, restarts a part that dies, and stops them in order.

Each part is a loop in its own thread. A part that raises is restarted after a backoff that doubles up to
a ceiling; one that keeps dying (``alert_after`` crashes within ``alert_window_s``) is reported through
``on_crash_loop`` — the daemon appends an ``anomaly.detected`` for it, so operators see it like any alert.
Stopping goes in the order the parts were added, each given what is left of the timeout: the scheduler
first (no new jobs; the running one is cancelled and resumes later from its checkpoint), then ingestion (a
final commit), then the rest (arq's order: stop taking work, finish what is running, release resources).

Time is injected: ``clock`` (monotonic seconds) and ``wait`` (wait on an event for at most a timeout, True when
it was set) default to :func:`time.monotonic` and :meth:`threading.Event.wait`; tests pass a fake clock whose
waits move its time, so backoffs, intervals and spacings are asserted without sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from daemon.logs import scrub

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
#: ``wait(event, timeout_s)``: block until ``event`` is set or the timeout passes; True when it was set.
Wait = Callable[[threading.Event, float], bool]


def event_wait(event: threading.Event, timeout_s: float) -> bool:
    return event.wait(timeout_s)


class Part(Protocol):
    name: str

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set; return then (or raise, and be restarted)."""
        ...

    def close(self) -> None:
        """Release what ``run`` held (consumers, producers, servers); called once, after the last run."""
        ...


@dataclass
class LoopPart:
    """A part made of a step function, called again at once while it has work and every ``interval_s`` when
    it has none (a monitor step, an outbox publish...).

    ``more(result)`` says a step left work behind (a full batch): sleeping then would cap the part's rate at
    one batch per interval and let a backlog grow. ``wake`` ends the wait early; another part sets it when it
    has made work for this one (the ingestor after a stored batch, the monitors after appending alerts), so
    ``interval_s`` only bounds how stale an idle part can get when the producer of its work is elsewhere.
    ``min_interval_s`` spaces the steps that wake-ups start: a step has fixed costs (the monitors' is ~13 ms,
    mostly saving detector state), and stepping on every small ingest batch would spend them many times a
    second for a few events each.
    """

    name: str
    step: Callable[[], object]
    interval_s: float = 1.0
    on_close: Callable[[], None] | None = None
    more: Callable[[object], bool] | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    min_interval_s: float = 0.0
    steps: int = 0
    busy_steps: int = 0
    clock: Clock = time.monotonic
    wait: Wait = event_wait

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            # Cleared before the step, not after: a wake-up during the step means new work it may have missed.
            self.wake.clear()
            started = self.clock()
            result = self.step()
            self.steps += 1
            if self.more is not None and self.more(result):
                self.busy_steps += 1
                continue
            if not stop.is_set() and self.wait(self.wake, self.interval_s):
                spacing = self.min_interval_s - (self.clock() - started)
                if spacing > 0:
                    self.wait(stop, spacing)

    def request_stop(self) -> None:
        self.wake.set()  # the wait is on ``wake``, not on the supervisor's stop event

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close()


@dataclass
class _Slot:
    part: Part
    thread: threading.Thread | None = None
    crashes: list[float] = field(default_factory=list)
    restarts: int = 0
    alive: bool = False
    last_error: str | None = None


class Supervisor:
    def __init__(
        self,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        alert_after: int = 3,
        alert_window_s: float = 300.0,
        on_crash_loop: Callable[[str, int, str], None] | None = None,
        clock: Clock = time.monotonic,
        wait: Wait = event_wait,
    ) -> None:
        self.clock, self.wait = clock, wait
        self.slots: list[_Slot] = []
        self.stop_event = threading.Event()
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.alert_after, self.alert_window_s = alert_after, alert_window_s
        self.on_crash_loop = on_crash_loop

    def add(self, part: Part) -> None:
        self.slots.append(_Slot(part))

    def start(self) -> None:
        for slot in self.slots:
            slot.thread = threading.Thread(
                target=self._keep_running, args=(slot,), name=f"alignd-{slot.part.name}", daemon=True
            )
            slot.thread.start()
        logger.info("supervising %s", ", ".join(s.part.name for s in self.slots))

    def _keep_running(self, slot: _Slot) -> None:
        backoff = self.backoff_initial_s
        while not self.stop_event.is_set():
            slot.alive = True
            started = self.clock()
            try:
                slot.part.run(self.stop_event)
                if self.stop_event.is_set():
                    break
                raise RuntimeError("returned before the daemon stopped")
            except Exception as exc:  # noqa: BLE001 - a part's failure must not stop the others
                slot.alive = False
                # Shown on /health and stored with a crash-loop alert: scrubbed, as a driver's error may hold a DSN.
                slot.last_error = scrub(f"{type(exc).__name__}: {exc}")
                now = self.clock()
                if now - started > backoff * 10:
                    backoff = self.backoff_initial_s  # it ran a good while: a fresh failure, not a loop
                slot.crashes = [t for t in slot.crashes if now - t < self.alert_window_s] + [now]
                logger.exception(
                    "part %s died (%d in %.0f s); restarting in %.1f s",
                    slot.part.name,
                    len(slot.crashes),
                    self.alert_window_s,
                    backoff,
                )
                if len(slot.crashes) == self.alert_after and self.on_crash_loop is not None:
                    try:
                        self.on_crash_loop(slot.part.name, len(slot.crashes), slot.last_error)
                    except Exception:  # noqa: BLE001 - reporting must not kill the supervisor
                        logger.exception("could not report the crash loop of %s", slot.part.name)
                if self.wait(self.stop_event, backoff):
                    break
                backoff = min(backoff * 2, self.backoff_max_s)
                slot.restarts += 1
        slot.alive = False

    def status(self) -> dict[str, dict[str, object]]:
        return {s.part.name: {"alive": s.alive, "restarts": s.restarts, "last_error": s.last_error} for s in self.slots}

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop every part in order within ``timeout_s``; True when all of them finished in time."""
        deadline = self.clock() + timeout_s
        self.stop_event.set()
        clean = True
        for slot in self.slots:
            stopper = getattr(slot.part, "request_stop", None)
            if stopper is not None:
                stopper()
            if slot.thread is not None:
                slot.thread.join(max(0.0, deadline - self.clock()))
                if slot.thread.is_alive():
                    clean = False
                    logger.error("part %s did not stop within the shutdown timeout", slot.part.name)
            try:
                slot.part.close()
            except Exception:  # noqa: BLE001 - close the others anyway
                logger.exception("closing %s failed", slot.part.name)
        logger.info("stopped %s", "cleanly" if clean else "with parts still running")
        return clean

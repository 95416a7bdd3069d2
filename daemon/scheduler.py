"""The training scheduler: APScheduler 3 on a SQLAlchemy job store, run by the one replica holding the lease.

APScheduler 3 does not support several schedulers on one job store, so a :class:`~daemon.leader.LeaderLease`
decides which replica runs one: :meth:`TrainingScheduler.run` renews the lease every ``lease_s / 3``,
starts a ``BackgroundScheduler`` when it gains the lease and shuts it down, without waiting, when it loses it.
The job store lives in the store's database (table ``apscheduler_jobs``), so the schedule and its next run
times outlive any replica: a new leader keeps a job's stored next run time unless its trigger changed.

Jobs (ids stable across replicas; each ``max_instances=1, coalesce=True``):

* ``retrain_reward`` / ``retrain_policy`` / ``retrain_detector``: cron; train if anything arrived since the last
  successful run.
* ``check_volume``: every ``check_interval_s``; train the reward model after ``reward_after_pairs`` new
  preference pairs, the policy after ``policy_after_examples`` new examples of its objective's dataset
  (pairs for DPO, demonstrations for SFT, prompts for RLOO, PPO and GRPO), the jailbreak classifier after
  ``detector_after_verdicts`` new reviewers' verdicts on the jailbreak detectors' alerts, counted after the ``to_seq`` of the dataset
  the last successful training of that kind used. It also resumes a job that was interrupted.
* ``evaluate``: cron, optional; the continuous evaluation of the champions (docs/trainers.md,
  ``trainers/champion_eval.py``), a request of kind ``evaluation`` that a pause does not block.

The jobs only decide (by the pure rules of :mod:`daemon.training_rules`); a single worker thread runs what they ask for, one training at a time (a GPU holds
one), through the injected ``run_job(request, cancel)``. Training paused by enforcement stays paused until a
``resume_training`` is applied: no training starts while paused (the decision is logged once), and a job
running when the pause arrives is stopped. ``cancel`` is polled by the job (``TrainingJobs.train(cancel=)``):
it returns a reason when the daemon stops, the lease is lost or training is paused; the child is killed,
the attempt is recorded as ``training.failed`` with that reason (``resumable`` when it left a checkpoint), and
the next leader's ``check_volume`` runs it again on the same dataset (same ``upto_seq``), so it resumes from
its checkpoint. Stopping follows arq's order: no new jobs, the running one stopped, then the lease released.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Protocol

from daemon.leader import SCHEDULER_LEASE, LeaderLease, read_lease
from daemon.training_rules import (
    LOST_LEASE_REASON,
    SHUTDOWN_REASON,
    baseline_seq,
    count_new_examples,
    decide_training,
    governance_training_paused,
    pause_blocks,
    read_attempts,
)
from events.errors import AlignmentError, StoreUnavailableError
from events.names import DATASETS
from events.sql_store import SqlEventStore

logger = logging.getLogger(__name__)

JOBSTORE_TABLE = "apscheduler_jobs"


@dataclass(frozen=True)
class ScheduleConfig:
    """What the scheduler runs and when (the ``schedule`` settings section; cron in ``timezone``)."""

    reward_cron: str | None = "0 3 * * *"
    policy_cron: str | None = "0 4 * * *"
    evaluation_cron: str | None = None
    detector_cron: str | None = None
    #: Retrain after this many new examples; 0 turns the volume trigger off for that kind.
    reward_after_pairs: int = 200
    policy_after_examples: int = 500
    detector_after_verdicts: int = 25
    policy_objective: str = "dpo"
    check_interval_s: float = 60.0
    lease_s: float = 15.0
    #: After a failure (other than an interruption), no volume or cron run of that kind for this long.
    failure_backoff_s: float = 1800.0
    #: A ``training.started`` without an outcome for this long was cut off by a crash: resume it.
    orphan_after_s: float = 7200.0
    timezone: str = "UTC"
    lease_name: str = SCHEDULER_LEASE

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ScheduleConfig:
        """From ``settings.schedule`` (any object with these attribute names), defaults for what it lacks."""
        section = getattr(settings, "schedule", None)
        values = {f.name: getattr(section, f.name) for f in fields(cls) if hasattr(section, f.name)}
        return cls(**{**values, **overrides})


@dataclass(frozen=True)
class TrainingRequest:
    """What a job asks the worker to run. ``upto_seq`` is set when resuming (same dataset, same checkpoint)."""

    kind: str  # reward, policy, detector or evaluation
    objective: str | None
    trigger: str  # cron, volume, resume
    reason: str
    upto_seq: int | None = None
    fencing_token: int | None = None


RunJob = Callable[[TrainingRequest, Callable[[], str | None]], object]


class JobStoreEngine(Protocol):
    """The SQLAlchemy engine APScheduler's job store runs on (daemon/ names no SQLAlchemy type: events/ is the
    only SQL boundary)."""

    def dispose(self) -> None: ...


def planned_jobs(config: ScheduleConfig) -> list[tuple[str, Any]]:
    """The stored jobs' ids and APScheduler triggers; a cron left empty means no such job."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    tz = config.timezone
    crons = (
        ("retrain_reward", config.reward_cron),
        ("retrain_policy", config.policy_cron),
        ("retrain_detector", config.detector_cron),
    )
    wanted = [(job, CronTrigger.from_crontab(cron, timezone=tz)) for job, cron in crons if cron]
    wanted.append(("check_volume", IntervalTrigger(seconds=config.check_interval_s, timezone=tz)))
    if config.evaluation_cron:
        wanted.append(("evaluate", CronTrigger.from_crontab(config.evaluation_cron, timezone=tz)))
    return wanted


# --- the scheduler ----------------------------------------------------------------------------------------

#: Schedulers leading in this process, by lease holder: the stored jobs call back through this (APScheduler
#: pickles a job's function by reference, so it cannot be a bound method of a live object).
_LEADING: dict[str, TrainingScheduler] = {}


def dispatch(holder: str, job: str) -> None:
    """The function every stored job calls; a job left by another replica lands on a missing holder."""
    scheduler = _LEADING.get(holder)
    if scheduler is None:
        logger.warning("job %s fired for scheduler %s, which does not lead in this process", job, holder)
        return
    scheduler.fire(job)


class _Term:
    """What exists while this replica leads: the APScheduler, the worker thread and its queue."""

    def __init__(self) -> None:
        self.aps: Any = None
        self.queue: list[TrainingRequest] = []
        self.running: TrainingRequest | None = None
        self.cond = threading.Condition()
        self.ended: str | None = None
        self.worker: threading.Thread | None = None
        self.scheduling = False


class TrainingScheduler:
    """Cron and volume triggers for training, run by the lease holder only; a supervisor part (``run``).

    Args:
        config: the schedule (:meth:`ScheduleConfig.from_settings`).
        store: the event store; the job store and the lease live in its database.
        run_job: runs a :class:`TrainingRequest`, polling ``cancel()`` and stopping when it returns a reason.
        jobstore_engine: an engine of its own on the store's database for APScheduler's job store
            (:func:`events.jobstore.job_store_engine`: the job store disposes it when it shuts down); the
            scheduler disposes it on :meth:`close`.
        holder: this replica's lease holder id (default: host, pid and a random suffix).
        paused: ``store -> (paused, reason)``, default :func:`daemon.enforcement.training_paused`.
        clock: wall clock for the rules (UTC).
    """

    name = "schedule"

    def __init__(
        self,
        config: ScheduleConfig,
        store: SqlEventStore,
        run_job: RunJob,
        *,
        jobstore_engine: JobStoreEngine,
        holder: str | None = None,
        paused: Callable[[SqlEventStore], tuple[bool, str | None]] = governance_training_paused,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        stop_timeout_s: float = 60.0,
        pause_poll_s: float = 5.0,
    ) -> None:
        self.config, self.store, self.run_job, self.paused, self.clock = config, store, run_job, paused, clock
        self.lease = LeaderLease(store, config.lease_name, holder, config.lease_s)
        self.stop_timeout_s, self.pause_poll_s = stop_timeout_s, pause_poll_s
        self._jobstore_engine = jobstore_engine
        self._term: _Term | None = None
        self._old_workers: list[threading.Thread] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pause_seen: tuple[float, tuple[bool, str | None]] = (float("-inf"), (False, None))
        self._pause_notes: dict[str, str | None] = {}
        self._following = False
        self.clean = True

    @property
    def scheduling(self) -> bool:
        """True while this replica leads and its APScheduler runs the stored jobs."""
        term = self._term
        return term is not None and term.scheduling and not term.ended

    # --- the lease loop (supervisor part) ---

    def run(self, stop: threading.Event) -> None:
        """Hold the lease and schedule while leader, until ``stop``; then stop the job and release the lease."""
        try:
            while not stop.is_set():
                self.tick()
                stop.wait(self.config.lease_s / 3)
        finally:
            self.clean = self._shutdown(self.stop_timeout_s)

    def request_stop(self) -> None:
        """Ask the running job to stop now (the supervisor calls it before joining ``run``)."""
        term = self._term
        if term is not None:
            with term.cond:
                term.ended = term.ended or SHUTDOWN_REASON
                term.cond.notify_all()

    def close(self) -> None:
        self._jobstore_engine.dispose()

    def start(self) -> None:
        """Run :meth:`run` in a thread of its own (without a supervisor)."""
        self._thread = threading.Thread(target=self.run, args=(self._stop,), name="alignd-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop what :meth:`start` started; True when the job stopped and the lease was released in time."""
        self.stop_timeout_s = timeout
        self._stop.set()
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout + 5)
        self.close()
        return self.clean and not (self._thread is not None and self._thread.is_alive())

    def tick(self) -> None:
        """One round: take or renew the lease; start scheduling on gaining it, stop on losing it."""
        try:
            self.lease.try_acquire()
        except StoreUnavailableError as exc:
            logger.warning("could not renew the leader lease: %s", exc)
        leading = self.lease.is_leader
        if not leading and not self._following:
            self._following = True
            try:
                state = read_lease(self.store, self.config.lease_name)
            except StoreUnavailableError:
                state = None
            logger.info(
                "standing by as %s: %s holds the leader lease until %s",
                self.lease.holder,
                state.holder if state else "nobody",
                state.expires_at.isoformat() if state else "-",
                extra={"holder": self.lease.holder},
            )
        if leading:
            self._following = False
        if self._term is not None and not leading:
            self._demote(LOST_LEASE_REASON, wait_s=0.0)
        elif self._term is None and leading:
            self._old_workers = [w for w in self._old_workers if w.is_alive()]
            if self._old_workers:
                logger.info("leader again, waiting for the previous term's job to stop before scheduling")
                return
            try:
                self._promote()
            except Exception:  # noqa: BLE001 - retried on the next tick; the lease is kept meanwhile
                logger.exception("could not start the scheduler; retrying in %.1f s", self.config.lease_s / 3)
                self._demote("the scheduler failed to start", wait_s=0.0)

    def _promote(self) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        term = _Term()
        self._term = term
        _LEADING[self.lease.holder] = self
        aps = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self._jobstore_engine, tablename=JOBSTORE_TABLE)},
            executors={"default": ThreadPoolExecutor(2)},
            timezone=self.config.timezone,
        )
        term.aps = aps
        aps.start(paused=True)
        wanted = planned_jobs(self.config)
        options = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        for job_id, trigger in wanted:
            try:
                existing = aps.get_job(job_id)
            except Exception:  # noqa: BLE001 - a stored job this code cannot load (renamed function...): replace it
                logger.warning("stored job %s cannot be loaded; replacing it", job_id, exc_info=True)
                existing = None
            same = existing is not None and (str(existing.trigger), str(getattr(existing.trigger, "timezone", ""))) == (
                str(trigger),
                str(trigger.timezone),
            )
            if same:  # keep its stored next run time; point it at this replica
                aps.modify_job(job_id, args=(self.lease.holder, job_id), **options)
            else:
                aps.add_job(
                    dispatch,
                    trigger,
                    id=job_id,
                    name=job_id,
                    args=(self.lease.holder, job_id),
                    replace_existing=True,
                    **options,
                )
        for job in aps.get_jobs():
            if job.id not in {j for j, _ in wanted}:
                aps.remove_job(job.id)
        # Look at volume (and interrupted jobs) at once rather than an interval after taking over.
        aps.modify_job("check_volume", next_run_time=datetime.now(UTC))
        term.worker = threading.Thread(target=self._work, args=(term,), name="alignd-training", daemon=True)
        term.worker.start()
        aps.resume()
        term.scheduling = True
        logger.info(
            "scheduling as leader %s (fencing token %s): %s",
            self.lease.holder,
            self.lease.fencing_token,
            ", ".join(f"{j} {t}" for j, t in wanted),
            extra={"holder": self.lease.holder, "fencing_token": self.lease.fencing_token},
        )

    def _demote(self, reason: str, *, wait_s: float) -> bool:
        """Stop scheduling: no new jobs, the running one asked to stop; True when it stopped within ``wait_s``."""
        term, self._term = self._term, None
        if term is None:
            return True
        if _LEADING.get(self.lease.holder) is self:
            del _LEADING[self.lease.holder]
        with term.cond:
            term.ended = term.ended or reason
            dropped = len(term.queue)
            term.queue.clear()
            term.cond.notify_all()
        if term.aps is not None:
            try:
                term.aps.shutdown(wait=False)
            except Exception:  # noqa: BLE001 - stopping anyway
                logger.exception("APScheduler did not shut down cleanly")
        logger.warning(
            "stopped scheduling (%s); %s, %d queued request(s) dropped",
            reason,
            f"stopping {term.running.kind} training" if term.running else "no job running",
            dropped,
            extra={"holder": self.lease.holder},
        )
        if term.worker is None:
            return True
        term.worker.join(wait_s)
        if term.worker.is_alive():
            self._old_workers.append(term.worker)
            return False
        return True

    def _shutdown(self, timeout_s: float) -> bool:
        """arq's order: no new jobs, the running job stopped (the lease renewed meanwhile), the lease released."""
        deadline = time.monotonic() + timeout_s
        self._demote(SHUTDOWN_REASON, wait_s=0.0)
        # Keep the lease while the job stops (killing the child, recording training.failed), so no other
        # replica starts the same job meanwhile; then hand it over at once.
        while any(w.is_alive() for w in self._old_workers) and time.monotonic() < deadline:
            for worker in self._old_workers:
                worker.join(min(self.config.lease_s / 3, max(0.0, deadline - time.monotonic())))
            try:
                self.lease.renew()
            except StoreUnavailableError as exc:
                logger.warning("could not renew the leader lease while stopping: %s", exc)
        if any(w.is_alive() for w in self._old_workers):
            # Another replica must not start the job while ours still runs: let the lease expire instead.
            logger.error("the training job did not stop within %.0f s; leaving the lease to expire", timeout_s)
            return False
        self._old_workers.clear()
        try:
            self.lease.release()
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself; stopping goes on
            logger.warning(
                "could not release the leader lease (it expires within %.0f s): %s", self.config.lease_s, exc
            )
        return True

    # --- jobs (APScheduler threads) ---

    def fire(self, job: str) -> None:
        """A stored job fired: decide what to train and queue it for the worker."""
        if self._term is None or not self.lease.is_leader:
            return
        try:
            if job == "evaluate":
                self._enqueue(TrainingRequest("evaluation", None, "cron", "scheduled evaluation of the champions"))
            elif job in ("retrain_reward", "retrain_policy", "retrain_detector"):
                self._consider(job.removeprefix("retrain_"), "cron")
            elif job == "check_volume":
                self._consider("reward", "volume")
                self._consider("policy", "volume")
                self._consider("detector", "volume")
        except StoreUnavailableError as exc:
            logger.warning("job %s skipped: %s", job, exc)

    def _consider(self, kind: str, trigger: str) -> None:
        blocked = pause_blocks(kind, self._paused(fresh=True))
        self._note_pause(kind, blocked)
        if blocked:
            return
        objective = self.config.policy_objective if kind == "policy" else None
        attempts = read_attempts(self.store)
        since = baseline_seq(attempts, kind)
        new = count_new_examples(self.store, DATASETS[objective or kind], since)
        if trigger == "cron":
            threshold = 1
        else:
            threshold = {
                "reward": self.config.reward_after_pairs,
                "policy": self.config.policy_after_examples,
                "detector": self.config.detector_after_verdicts,
            }[kind]
        decision = decide_training(
            kind,
            attempts,
            new,
            threshold,
            self.clock(),
            objective=objective,
            trigger=trigger,
            failure_backoff_s=self.config.failure_backoff_s,
            orphan_after_s=self.config.orphan_after_s,
        )
        if not decision.run:
            logger.debug("%s training (%s): not now: %s", kind, trigger, decision.reason)
            return
        self._enqueue(
            TrainingRequest(
                kind, decision.objective, decision.trigger, decision.reason, decision.upto_seq, self.lease.fencing_token
            )
        )

    def _enqueue(self, request: TrainingRequest) -> None:
        term = self._term
        if term is None:
            return
        with term.cond:
            busy = [*term.queue, term.running] if term.running else term.queue
            if term.ended or any(r.kind == request.kind for r in busy):
                return
            term.queue.append(request)
            term.cond.notify_all()
        logger.info("queued %s training (%s): %s", request.kind, request.trigger, request.reason)

    def _paused(self, *, fresh: bool = False) -> tuple[bool, str | None]:
        seen_at, value = self._pause_seen
        if fresh or time.monotonic() - seen_at >= self.pause_poll_s:
            value = self.paused(self.store)
            self._pause_seen = (time.monotonic(), value)
        return value

    def _note_pause(self, kind: str, blocked: str | None) -> None:
        """Log a pause once per kind when it starts blocking, and once when it ends, not at every check."""
        before = self._pause_notes.get(kind)
        if blocked is not None and blocked != before:
            logger.warning("%s training not started: %s", kind, blocked)
        elif blocked is None and before is not None:
            logger.info("%s training no longer paused", kind)
        self._pause_notes[kind] = blocked

    # --- the worker ---

    def _work(self, term: _Term) -> None:
        while True:
            with term.cond:
                while not term.queue and not term.ended:
                    term.cond.wait()
                if term.ended:
                    return
                request = term.queue.pop(0)
                term.running = request

            def cancel(term: _Term = term, request: TrainingRequest = request) -> str | None:
                if term.ended:
                    return term.ended
                if not self.lease.is_leader:
                    return LOST_LEASE_REASON
                try:
                    return pause_blocks(request.kind, self._paused())
                except StoreUnavailableError:
                    return None  # cannot tell: keep training; the lease decides if the outage lasts

            try:
                why = cancel()
                if why:
                    logger.warning("%s training not started: %s", request.kind, why)
                    continue
                logger.info(
                    "starting %s training (%s, %s): %s",
                    request.kind,
                    request.objective or "default objective",
                    request.trigger,
                    request.reason,
                    extra={"fencing_token": request.fencing_token, "upto_seq": request.upto_seq},
                )
                self.run_job(request, cancel)
                logger.info("%s training finished%s", request.kind, f" ({term.ended})" if term.ended else "")
            except AlignmentError as exc:  # NothingToTrainError, a refused config...: the message says what to do
                logger.warning("%s training not run: %s", request.kind, exc)
            except Exception:  # noqa: BLE001 - a job's failure must not stop the scheduler
                logger.exception("%s training raised", request.kind)
            finally:
                with term.cond:
                    term.running = None


# --- a drill: leader election and the schedule, without training (``alignd jobs drill``) ------------------


def dry_run_job(seconds: float, holder: str) -> RunJob:
    """A ``run_job`` that trains nothing: logs the request, then holds ``seconds`` unless cancelled."""

    def run(request: TrainingRequest, cancel: Callable[[], str | None]) -> object:
        logger.info("dry run: would train %s", request.kind, extra={"holder": holder, "request": request.__dict__})
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if reason := cancel():
                logger.info("dry run: %s job stopped: %s", request.kind, reason, extra={"holder": holder})
                return None
            time.sleep(0.1)
        return None

    return run

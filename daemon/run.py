"""``alignd run``: the long-running service, its parts grouped by role, under the supervisor.

Roles (``--role``, repeatable; :data:`DEFAULT_ROLES` when none is given), so replicas can split the work:

* ``schedule`` — training by cron and data volume, on the replica that holds the leader lease;
* ``ingest`` — Kafka into the store (and the projections after each batch);
* ``project`` — the projections and the audit chain, for replicas that ingest with ``--no-project`` or not at all;
* ``monitor`` — the detectors, the enforcement executor, MLflow alias watching, and the alerts and models outboxes;
* ``http`` — health, readiness, metrics and the audit review page;
* ``guard`` — ``POST /v1/guard`` with the guard rules in force (docs/guard.md); only when named;
* ``vllm-sync`` — keeps a vLLM server's LoRA adapter on the registry's champion (docs/vllm.md); only when named;
* ``serve`` — the champion policy behind an OpenAI-compatible API, guarded, logged, swapped live (docs/serve.md);
  only when named.

Parts stop in that order on SIGTERM/SIGINT (the scheduler first: no new jobs, the running one is cancelled
and resumes later from its checkpoint; then ingestion, with a final commit), and the engines are disposed.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from daemon import configs
from daemon.supervisor import LoopPart, Supervisor
from events.messages import AnomalyDetected

if TYPE_CHECKING:
    from consumers.ingest import Ingestor
    from daemon.bootstrap import App
    from daemon.scheduler import TrainingRequest
    from events.sql_store import SqlEventStore
    from trainers.config import DetectorTrainConfig, TrainConfig

logger = logging.getLogger(__name__)

ROLES = ("schedule", "ingest", "project", "monitor", "http", "guard", "vllm-sync", "serve")
#: The roles run when none is named: the guard serves the request path and is deployed apart (docs/guard.md).
DEFAULT_ROLES = ("schedule", "ingest", "project", "monitor", "http")


class IngestPart:
    name = "ingest"

    def __init__(self, app: App, stored: threading.Event | None = None) -> None:
        self.app = app
        self.stored = stored  # set after each batch is committed: wakes the monitors in this process
        self.ingestor: Ingestor | None = None

    def run(self, stop: threading.Event) -> None:
        self.ingestor = ingestor = self.app.ingestor()
        if self.stored is not None:
            ingestor.on_stored = self.stored.set
        try:
            if not stop.is_set():
                ingestor.run()
        finally:
            ingestor.publisher.producer.close(timeout=10)

    def request_stop(self) -> None:
        if self.ingestor is not None:
            self.ingestor.stop()  # finishes the batch in hand and commits

    def close(self) -> None:
        pass


class HttpPart:
    """The HTTP server: in a process of its own beside other roles (daemon/http_process.py), else a thread."""

    name = "http"

    def __init__(self, app: App, roles: Sequence[str] = ("http",)) -> None:
        from daemon.http_process import HttpProcess, isolated

        self.process = HttpProcess(app.settings) if isolated(app.settings, list(roles)) else None
        if self.process is None:
            self.server = app.review_server()

    def run(self, stop: threading.Event) -> None:
        if self.process is None:
            self.server.start()
            logger.info("review page at %s/audit", self.server.url)
            stop.wait()
            return
        self.process.start()
        logger.info("review page at %s/audit", self.process.url)
        while not stop.wait(0.5):
            if not self.process.alive():  # raised: the supervisor restarts the part, which starts a new process
                code = self.process.exitcode
                self.process.stop()
                raise RuntimeError(f"the HTTP process exited with code {code}")

    def close(self) -> None:
        if self.process is None:
            self.server.stop()
        else:
            self.process.stop()


class GuardPart:
    """The guard's server (daemon/guard.py): its own port, its rule refresher and its decision writer."""

    name = "guard"

    def __init__(self, app: App) -> None:
        from daemon.guard import GuardServer

        self.server = GuardServer.from_settings(app.store, app.settings.guard)

    def run(self, stop: threading.Event) -> None:
        self.server.start()
        stop.wait()

    def close(self) -> None:
        self.server.stop()


def _run_training(app: App, request: TrainingRequest, cancel: Callable[[], str | None]) -> object:
    """The scheduler's job: one training run in a child process (trainers.jobs)."""
    from trainers.jobs import NothingToTrainError

    if request.kind == "evaluation":
        # Runs while training is paused (training_rules.pause_blocks lets it through): it only reads the champions,
        # and it is how an operator learns whether the champion that caused the pause is still bad.
        return app.champion_evaluation.run(configs.job_limits(app.settings), cancel=cancel)
    overrides = {"objective": request.objective} if request.kind == "policy" and request.objective else {}
    settings = app.settings
    config: TrainConfig | DetectorTrainConfig
    if request.kind == "reward":
        config = configs.reward_config(settings)
    elif request.kind == "detector":
        config = configs.detector_config(settings)
    else:
        config = configs.policy_config(settings, **overrides)
    try:
        return app.training_jobs.train(
            config,
            configs.job_limits(settings),
            upto_seq=request.upto_seq,
            dataset_limit=settings.trainers.dataset_limit,
            cancel=cancel,
        )
    except NothingToTrainError as exc:
        logger.info("scheduled %s training skipped: %s", request.kind, exc)
        return None


def _crash_alert(store: SqlEventStore) -> Callable[[str, int, str], None]:
    def report(part: str, crashes: int, error: str) -> None:
        now = datetime.now(UTC)
        window = now.strftime("%Y-%m-%dT%H")
        alert = AnomalyDetected(
            detector="supervisor",
            subject=f"part:{part}",
            severity="critical",
            summary=f"the {part} part keeps dying ({crashes} crashes in a few minutes): {error}",
            statistics={"crashes": crashes},
        )
        store.append([alert.to_event(f"anomaly:supervisor:{part}:{window}", now, "alignd.daemon")])

    return report


def build(app: App, roles: Sequence[str], *, shutdown_timeout_s: float = 120.0) -> Supervisor:
    """The parts of ``roles``, from the object graph ``app``, under a supervisor (not started)."""
    store = app.store
    supervisor = Supervisor(on_crash_loop=_crash_alert(store))
    stored = threading.Event()  # the ingestor's "new events" signal, the monitor loop's wake-up
    if "schedule" in roles:
        run_job = partial(_run_training, app)
        supervisor.add(app.training_scheduler(run_job, stop_timeout_s=shutdown_timeout_s / 2))
    if "ingest" in roles:
        supervisor.add(IngestPart(app, stored))
    if "project" in roles:
        from events.projections import ProjectionRunner

        supervisor.add(LoopPart("projections", ProjectionRunner(store).catch_up, 1.0))
    if {"project", "monitor"} & set(roles):
        from events.audit import AuditTrail

        # Both roles append decisions; chaining them is cheap and idempotent (a lock orders concurrent writers).
        supervisor.add(LoopPart("audit", AuditTrail(store).catch_up, 1.0))
    if "monitor" in roles:
        _add_monitor_parts(supervisor, app, stored)
    if "http" in roles:
        supervisor.add(HttpPart(app, roles))
    if "guard" in roles:
        supervisor.add(GuardPart(app))
    if "vllm-sync" in roles:
        from daemon.vllm_sync import VllmSyncPart

        supervisor.add(VllmSyncPart(app))
    if "serve" in roles:
        from daemon.serve_swap import ServePart

        supervisor.add(ServePart(app))
    return supervisor


def _add_monitor_parts(supervisor: Supervisor, app: App, stored: threading.Event | None = None) -> None:
    from monitors.runner import StepResult

    runner = app.monitor_runner()
    alerts_wake = threading.Event()

    def monitor_step() -> StepResult:
        result = runner.step()
        if result.appended:
            alerts_wake.set()  # publish the alerts now rather than on the outbox's next poll
        return result

    def full_batch(result: object) -> bool:
        return isinstance(result, StepResult) and result.observed >= runner.batch_size

    # An alert waits for its whole step, so the loop steps again at once after a full batch instead of
    # letting a backlog build; otherwise a stored batch wakes it, at most every 0.1 s (the 0.2 s interval
    # only applies when the ingestor is in another process).
    supervisor.add(
        LoopPart(
            "monitors",
            monitor_step,
            0.2,
            more=full_batch,
            wake=stored or threading.Event(),
            min_interval_s=0.1,
        )
    )
    producer = app.kafka.producer()
    # Guard rules and alerts both go to the alerts topic: serving applies the rules, people read the alerts.
    supervisor.add(LoopPart("alerts-outbox", app.alerts_outbox(producer).publish, 0.2, wake=alerts_wake))
    supervisor.add(
        LoopPart(
            "models-outbox",
            app.models_outbox(producer).publish,
            0.5,
            on_close=lambda: producer.close(timeout=10),
        )
    )
    supervisor.add(LoopPart("enforcement", app.enforcement.step, 1.0))
    supervisor.add(LoopPart("mlflow-aliases", app.governance.sync_aliases, 30.0))


def run(app: App, roles: Sequence[str], *, shutdown_timeout_s: float = 120.0) -> int:
    """``alignd run``: the parts of ``roles`` (:data:`DEFAULT_ROLES` when none) until SIGTERM or SIGINT; the caller
    closes ``app``."""
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown role {', '.join(unknown)}; roles: {', '.join(ROLES)}")
    roles = list(roles) or list(DEFAULT_ROLES)
    supervisor = build(app, roles, shutdown_timeout_s=shutdown_timeout_s)
    stopping = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        logger.info("received %s; draining %s", signal.Signals(signum).name, ", ".join(roles))
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    supervisor.start()
    logger.info("alignd running with roles %s", ", ".join(roles))
    from daemon.logs import role_announcements

    for line in role_announcements(app.settings, roles):  # what each role serves, and where
        logger.info(line)
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        clean = supervisor.stop(shutdown_timeout_s)
    return 0 if clean else 1

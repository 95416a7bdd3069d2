"""The one composition root (STYLE.md §2, cosmicpython's bootstrap): the daemon's object graph, from the settings.

:func:`build` returns an :class:`App`; ``alignd run``, every CLI command, the demo and the HTTP process take
their parts from it. It is the only place that constructs infrastructure: the store (its engine and schema
check), Kafka clients, the MLflow registry, the detectors and the models they score with, training and
evaluation jobs, governance, the enforcement executor, the outboxes, the scheduler and the review server.

Parts are made when first asked for, so a command builds only what it uses (``alignd config show`` opens no
database; ``alignd --help`` imports neither MLflow nor torch). A part the graph holds (a property) is made
once and shared by every part that needs it: one store, one registry, one governance per process. A part
made per use (a method) is new at each call: the ingestor and its Kafka clients, detectors (they keep state),
the outboxes, the scheduler, the review server. (The config objects the settings translate to are in
daemon/configs.py.)

Tests hand in fakes for held parts, as cosmicpython's bootstrap takes a ``FakeUnitOfWork``:
``build(settings, store=store, kafka=FakeKafka(), governance=FakeGovernance())``. :meth:`App.close` (or
leaving ``with build(settings) as app:``) disposes the store's engine when the graph opened it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from daemon import configs
from daemon.settings import CHAMPION_CLASSIFIER, LIGHT_DETECTORS, Settings
from events.errors import ConfigurationError, StoreUnavailableError

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer

    from consumers.ingest import Ingestor
    from daemon.enforcement import EnforcementExecutor
    from daemon.http import ReviewServer
    from daemon.outbox import OutboxPublisher
    from daemon.scheduler import RunJob, ScheduleConfig, TrainingScheduler
    from events.sql_store import SqlEventStore
    from monitors.base import Detector
    from monitors.enforcement import EnforcementRule
    from monitors.runner import MonitorRunner
    from trainers.champion_eval import ChampionEvaluation
    from trainers.governance import Governance
    from trainers.jobs import TrainingJobs
    from trainers.registry import ModelRegistry
    from trainers.reward import RewardModel

logger = logging.getLogger(__name__)

_Part = TypeVar("_Part")

#: Detectors that score responses with the champion reward model (loaded from the registry).
NEEDS_REWARD_MODEL = ("reward_drift", "over_optimisation", "contributor_agreement")
#: Every detector ``monitors.detectors`` may name (ALIGND_MONITORS_DETECTORS).
DETECTOR_NAMES = (*LIGHT_DETECTORS, *NEEDS_REWARD_MODEL)


@dataclass(frozen=True)
class KafkaClients:
    """Kafka clients as alignd configures them; ``overrides`` are kafka-python's keyword arguments."""

    settings: Settings

    def consumer(self, **overrides: Any) -> KafkaConsumer:
        from kafka import KafkaConsumer

        from daemon.kafka_join import keep_join_results

        s = self.settings
        kwargs: dict[str, Any] = {
            **s.kafka.client_kwargs(),
            "group_id": s.kafka.group_id,
            # Offsets are committed by the loop after the store commits (docs/store.md), never automatically.
            "enable_auto_commit": False,
            "auto_offset_reset": s.kafka.auto_offset_reset,
            "max_poll_records": s.ingest.max_poll_records,
            "session_timeout_ms": s.kafka.session_timeout_ms,
            "heartbeat_interval_ms": max(s.kafka.session_timeout_ms // 4, 500),
            # A message over the ingest limit must still be fetched, to be dead-lettered with its bytes.
            "max_partition_fetch_bytes": max(2 * s.ingest.max_message_bytes, 1024 * 1024),
        }
        consumer = KafkaConsumer(**{**kwargs, **overrides})
        keep_join_results(consumer)  # kafka-python 3.0 can drop a group join's result for good (its docstring)
        return consumer

    def producer(self, **overrides: Any) -> KafkaProducer:
        from kafka import KafkaProducer

        s = self.settings
        kwargs: dict[str, Any] = {
            **s.kafka.client_kwargs(),
            "acks": "all",
            "retries": 5,
            "max_request_size": max(2 * s.ingest.max_message_bytes + 65536, 1024 * 1024),
        }
        return KafkaProducer(**{**kwargs, **overrides})


@dataclass(frozen=True, eq=False)
class App:
    """The daemon's parts, built from ``settings`` when first asked for (see the module's docstring).

    Args:
        settings: everything the parts are configured by.
        check_schema: whether :attr:`store` refuses a database whose schema is behind (``alignd db upgrade``
            and the demo open it to migrate it; the HTTP process trusts the daemon that checked).
    """

    settings: Settings
    check_schema: bool = True
    _parts: dict[str, object] = field(default_factory=dict, init=False, repr=False)
    _given: set[str] = field(default_factory=set, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    def _part(self, name: str, make: Callable[[], _Part]) -> _Part:
        """The held part ``name``, made by ``make`` on first use; a ``make`` that raises is tried again next time."""
        if name in self._parts:
            return cast(_Part, self._parts[name])
        with self._lock:  # reentrant: governance makes the registry and the store under it
            if name not in self._parts:
                self._parts[name] = make()
            return cast(_Part, self._parts[name])

    # --- held parts -------------------------------------------------------------------------------------

    @property
    def store(self) -> SqlEventStore:
        """The event store, the only one the graph opens."""
        return self._part("store", self._open_store)

    def _open_store(self) -> SqlEventStore:
        from events.errors import SchemaOutOfDateError
        from events.redact import mask_url
        from events.sql_errors import CONNECTION_ERRORS
        from events.sql_store import SqlEventStore, checked_store_engine
        from migrations.runner import ensure_current

        url = self.settings.database.url
        missing = missing_sqlite_file(url) if self.check_schema else None
        if missing is not None:
            # Connecting would leave an empty file behind, and a database without the schema is refused anyway.
            raise SchemaOutOfDateError(f"no database at {missing.absolute()}; run `alignd db upgrade` first")
        try:
            engine = checked_store_engine(url)
        except ConfigurationError as exc:  # its message is SQLAlchemy's reason, the URL's secrets masked
            # SQLAlchemy's own message quotes the URL whole, password included: show it masked.
            raise ConfigurationError(
                f"database.url (ALIGND_DATABASE_URL) {mask_url(url)} cannot be used: {exc}"
            ) from None
        if self.check_schema:
            try:
                ensure_current(engine)
            except CONNECTION_ERRORS as exc:
                engine.dispose()
                raise StoreUnavailableError(str(getattr(exc, "orig", None) or exc).splitlines()[0]) from exc
            except Exception:
                engine.dispose()
                raise
        return SqlEventStore(engine)

    @property
    def kafka(self) -> KafkaClients:
        return self._part("kafka", lambda: KafkaClients(self.settings))

    @property
    def registry(self) -> ModelRegistry:
        """MLflow's runs and registered versions (``alignd-reward``, ``alignd-policy``)."""
        from trainers.registry import ModelRegistry

        m = self.settings.mlflow
        return self._part(
            "registry", lambda: ModelRegistry(m.tracking_uri, m.registry_uri, artifact_location=m.artifact_location)
        )

    @property
    def governance(self) -> Governance:
        """Promotion, rollback and the alias watch (trainers/governance.py)."""
        from trainers.governance import Governance

        return self._part("governance", lambda: Governance(self.store, self.registry))

    @property
    def enforcement(self) -> EnforcementExecutor:
        """Carries out ``enforcement.requested`` (``step()`` from the daemon's loop; 3 attempts, 1 s apart)."""
        from daemon.enforcement import EnforcementExecutor

        return self._part("enforcement", lambda: EnforcementExecutor(self.store, self.governance))

    @property
    def enforcement_rules(self) -> tuple[EnforcementRule, ...]:
        return self._part("enforcement_rules", self._enforcement_rules)

    def _enforcement_rules(self) -> tuple[EnforcementRule, ...]:
        from monitors.enforcement import DEFAULT_RULES, parse_rules

        if self.settings.monitors.rules is None:
            return DEFAULT_RULES
        try:
            return parse_rules(self.settings.monitors.rules)
        except ValueError as exc:
            raise ConfigurationError(f"monitors.rules (ALIGND_MONITORS_RULES): {exc}") from None

    @property
    def training_jobs(self) -> TrainingJobs:
        """Training runs in a child process, registered as challengers (trainers/jobs.py)."""
        from trainers.jobs import TrainingJobs

        t = self.settings.trainers
        return self._part(
            "training_jobs",
            lambda: TrainingJobs(
                self.store, self.registry, Path(t.work_dir), evaluation=configs.evaluation_config(self.settings)
            ),
        )

    @property
    def champion_evaluation(self) -> ChampionEvaluation:
        """The continuous evaluation of the champions (``alignd models evaluate``, the scheduler's ``evaluate``)."""
        from trainers.champion_eval import ChampionEvaluation

        return self._part(
            "champion_evaluation",
            lambda: ChampionEvaluation(
                self.store,
                self.registry,
                Path(self.settings.trainers.work_dir),
                evaluation=configs.evaluation_config(self.settings),
                reward=configs.reward_config(self.settings),
                policy=configs.policy_config(self.settings),
            ),
        )

    # --- parts made per use -----------------------------------------------------------------------------

    def ingestor(self, *, project: bool | None = None) -> Ingestor:
        """The ingestion loop, folding projections after each batch unless ``project`` (or ``ingest.project``) is false."""
        from consumers.dead_letter import DeadLetterPublisher
        from consumers.ingest import Ingestor
        from events.projections import ProjectionRunner

        s = self.settings
        runner = ProjectionRunner(self.store)

        def after_batch(_result: object) -> None:
            try:
                runner.catch_up()
            except Exception:  # noqa: BLE001 - projections catch up on the next batch; ingestion goes on
                logger.exception("projections could not catch up; will retry after the next batch")

        fold = s.ingest.project if project is None else project
        publisher = DeadLetterPublisher(self.store, self.kafka.producer(), s.topics.dlq)
        return Ingestor(
            self.store,
            self.kafka.consumer(),
            publisher,
            configs.ingest_config(s),
            after_batch=after_batch if fold else None,
            open_probe=lambda: self.kafka.consumer(group_id=None),
        )

    def detectors(self, names: Sequence[str] | None = None) -> list[Detector]:
        """The detectors named in the settings (or ``names``), with their scorers and embedders.

        Raises:
            ConfigurationError: an unknown name, or a detector whose scorer is not available.
        """
        from daemon.detectors import build_detectors

        wanted = list(names if names is not None else self.settings.monitors.detectors)
        unknown = [n for n in wanted if n not in DETECTOR_NAMES]
        if unknown:
            raise ConfigurationError(
                f"unknown detector {', '.join(unknown)} (ALIGND_MONITORS_DETECTORS); known: {', '.join(DETECTOR_NAMES)}"
            )
        scorer = self.champion_reward_scorer() if set(NEEDS_REWARD_MODEL) & set(wanted) else None
        monitors = self.settings.monitors
        if monitors.jailbreak_classifier == CHAMPION_CLASSIFIER and {"jailbreak_attempt", "jailbreak_success"} & set(
            wanted
        ):
            monitors = monitors.model_copy(update={"jailbreak_classifier": self.champion_detector_folder()})
        return build_detectors(monitors, wanted, scorer)

    def champion_detector_folder(self) -> str | None:
        """The champion jailbreak classifier (``alignd-detector``) downloaded for the monitors, or None (logged)
        when no version is the champion: the jailbreak detectors then run on patterns and similarity."""
        champion = self.registry.get_by_alias("detector", "champion")
        if champion is None:
            logger.warning(
                "monitors.jailbreak_classifier is 'champion' but no alignd-detector version is the champion: the "
                "jailbreak detectors use patterns and similarity until one is (`alignd train detector`, then "
                "`alignd models promote detector challenger --reason ...`, then restart the monitor role)"
            )
            return None
        folder = Path(self.settings.trainers.work_dir) / "monitors" / f"detector-{champion.version}"
        path = self.registry.download("detector", champion.version, folder)
        logger.info("the jailbreak detectors classify with alignd-detector version %s", champion.version)
        return str(path)

    def champion_reward_scorer(self) -> RewardModel:
        """The champion reward model from MLflow, loaded for scoring (the reward-drift monitors' port).

        Raises:
            ConfigurationError: no reward model is the champion yet.
        """
        from trainers.reward import RewardModel

        champion = self.registry.get_by_alias("reward", "champion")
        if champion is None:
            raise ConfigurationError(
                "reward_drift, over_optimisation and contributor_agreement score with the champion reward model and "
                "none is promoted: run `alignd train reward`, then `alignd models promote reward challenger --reason ...`, "
                "or leave them out of ALIGND_MONITORS_DETECTORS"
            )
        folder = Path(self.settings.trainers.work_dir) / "monitors" / f"reward-{champion.version}"
        model = RewardModel.load(self.registry.download("reward", champion.version, folder))
        logger.info("monitors score rewards with alignd-reward version %s", champion.version)
        return model

    def monitor_runner(self) -> MonitorRunner:
        """The detectors of the settings over the store, with the enforcement rules."""
        from monitors.runner import MonitorRunner

        m = self.settings.monitors
        return MonitorRunner(self.store, self.detectors(), batch_size=m.batch_size, rules=self.enforcement_rules)

    def alerts_outbox(self, producer: KafkaProducer) -> OutboxPublisher:
        """Publishes alerts and enforcement requests (guard rules for serving) on the alerts topic."""
        from daemon.outbox import OutboxPublisher
        from events.names import ANOMALY_DETECTED, ENFORCEMENT_REQUESTED

        topic = self.settings.topics.alerts
        return OutboxPublisher(self.store, producer, topic, [ANOMALY_DETECTED, ENFORCEMENT_REQUESTED])

    def models_outbox(self, producer: KafkaProducer) -> OutboxPublisher:
        """Publishes ``model.promoted`` / ``model.rolled_back`` on the models topic, where serving hot-swaps."""
        from daemon.outbox import OutboxPublisher
        from trainers.governance import MODEL_EVENT_TYPES

        return OutboxPublisher(self.store, producer, self.settings.topics.models, MODEL_EVENT_TYPES)

    def training_scheduler(
        self,
        run_job: RunJob,
        *,
        config: ScheduleConfig | None = None,
        holder: str | None = None,
        stop_timeout_s: float = 60.0,
    ) -> TrainingScheduler:
        """The scheduler (its lease and job store in the store's database) running ``run_job`` while it leads."""
        from daemon.scheduler import TrainingScheduler
        from events.jobstore import job_store_engine

        return TrainingScheduler(
            config or configs.schedule_config(self.settings),
            self.store,
            run_job,
            # An engine of its own: APScheduler's job store disposes the one it is given when it shuts down.
            jobstore_engine=job_store_engine(self.store, pool_size=2),
            holder=holder,
            stop_timeout_s=stop_timeout_s,
        )

    def review_server(self, *, metrics: Callable[[], bytes] | None = None) -> ReviewServer:
        """The HTTP server the ``http`` settings describe; ``metrics`` makes /metrics when they live elsewhere."""
        from daemon.http import ReviewServer

        extra = {"metrics": metrics} if metrics is not None else {}
        return ReviewServer.from_settings(self.store, self.settings.http, **extra)

    # --- lifetime ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Dispose of what the graph opened (the store's engine); parts handed in are their owner's to close."""
        with self._lock:
            store = self._parts.pop("store", None) if "store" not in self._given else None
        if store is not None:
            cast("SqlEventStore", store).dispose()

    def __enter__(self) -> App:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def missing_sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names when it does not exist (SQLite would create it on connecting); else None.

    Parsed by hand (daemon/ does not import SQLAlchemy): ``sqlite[+driver]:///<path>[?query]``; in-memory and
    ``file:`` URI databases name no file to check.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] != "sqlite" or not rest.startswith("/"):
        return None
    database = rest[1:].split("?")[0]
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    path = Path(database)
    return None if path.exists() else path


def build(
    settings: Settings,
    *,
    check_schema: bool = True,
    store: SqlEventStore | None = None,
    kafka: KafkaClients | None = None,
    registry: ModelRegistry | None = None,
    governance: Governance | None = None,
    enforcement: EnforcementExecutor | None = None,
) -> App:
    """The object graph for ``settings``; a part handed in is used instead of the one the graph would make."""
    app = App(settings, check_schema)
    given = {"store": store, "kafka": kafka, "registry": registry, "governance": governance, "enforcement": enforcement}
    for name, part in given.items():
        if part is not None:
            app._parts[name] = part  # noqa: SLF001 - the graph's own constructor
            app._given.add(name)  # noqa: SLF001
    return app


# --- one part, for scripts (bench/) and tests that need nothing else ----------------------------------------


def open_store(settings: Settings, *, check_schema: bool = True) -> SqlEventStore:
    """:attr:`App.store` alone; the caller disposes it."""
    return build(settings, check_schema=check_schema).store


def kafka_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    return KafkaClients(settings).producer(**overrides)


def build_ingestor(settings: Settings, store: SqlEventStore, *, project: bool | None = None) -> Ingestor:
    """:meth:`App.ingestor` on ``store``."""
    return build(settings, store=store).ingestor(project=project)


def build_detectors(settings: Settings, names: Sequence[str] | None = None) -> list[Detector]:
    """:meth:`App.detectors`."""
    return build(settings).detectors(names)

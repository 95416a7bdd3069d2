"""The one composition root: builds the store, Kafka clients and workers from settings."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from consumers.dead_letter import DeadLetterPublisher
from consumers.ingest import IngestConfig, Ingestor
from daemon.settings import Settings
from events.errors import ConfigurationError, StoreUnavailableError
from events.projections import ProjectionRunner
from events.redact import mask_url
from events.sql_errors import CONNECTION_ERRORS
from events.sql_store import SqlEventStore, checked_store_engine
from migrations.runner import ensure_current

logger = logging.getLogger(__name__)


def store_engine(settings: Settings) -> Any:
    """The store's SQLAlchemy engine; a URL SQLAlchemy cannot read is a ConfigurationError that shows it masked
    (SQLAlchemy's own message quotes the URL whole, password included)."""
    try:
        return checked_store_engine(settings.database.url)
    except ConfigurationError as exc:  # its message is SQLAlchemy's reason, the URL's secrets masked
        url = settings.database.url
        raise ConfigurationError(f"database.url (ALIGND_DATABASE_URL) {mask_url(url)} cannot be used: {exc}") from None


def open_store(settings: Settings, *, check_schema: bool = True) -> SqlEventStore:
    """The event store; refuses a database whose schema is behind (``alignd db upgrade``)."""
    engine = store_engine(settings)
    if check_schema:
        try:
            ensure_current(engine)
        except CONNECTION_ERRORS as exc:
            engine.dispose()
            raise StoreUnavailableError(str(getattr(exc, "orig", None) or exc).splitlines()[0]) from exc
        except Exception:
            engine.dispose()
            raise
    return SqlEventStore(engine)


def kafka_consumer(settings: Settings, **overrides: Any) -> Any:
    from kafka import KafkaConsumer

    kwargs: dict[str, Any] = {
        **settings.kafka.client_kwargs(),
        "group_id": settings.kafka.group_id,
        # Offsets are committed by the loop after the store commits (DESIGN.md §3), never automatically.
        "enable_auto_commit": False,
        "auto_offset_reset": settings.kafka.auto_offset_reset,
        "max_poll_records": settings.ingest.max_poll_records,
        "session_timeout_ms": settings.kafka.session_timeout_ms,
        "heartbeat_interval_ms": max(settings.kafka.session_timeout_ms // 4, 500),
        # A message over the ingest limit must still be fetched, to be dead-lettered with its bytes.
        "max_partition_fetch_bytes": max(2 * settings.ingest.max_message_bytes, 1024 * 1024),
    }
    kwargs.update(overrides)
    return KafkaConsumer(**kwargs)


def kafka_producer(settings: Settings, **overrides: Any) -> Any:
    from kafka import KafkaProducer

    kwargs: dict[str, Any] = {
        **settings.kafka.client_kwargs(),
        "acks": "all",
        "retries": 5,
        "max_request_size": max(2 * settings.ingest.max_message_bytes + 65536, 1024 * 1024),
    }
    kwargs.update(overrides)
    return KafkaProducer(**kwargs)


def ingest_config(settings: Settings) -> IngestConfig:
    return IngestConfig(
        group_id=settings.kafka.group_id,
        topics=(settings.topics.interactions, settings.topics.feedback),
        dlq_topic=settings.topics.dlq,
        max_message_bytes=settings.ingest.max_message_bytes,
        poll_timeout_ms=settings.ingest.poll_timeout_ms,
        max_poll_records=settings.ingest.max_poll_records,
        retry_initial_s=settings.ingest.retry_initial_s,
        retry_max_s=settings.ingest.retry_max_s,
        kafka_commit_interval_s=settings.ingest.kafka_commit_interval_s,
        otlp_topics=(settings.topics.otlp_spans,) if settings.topics.otlp_spans else (),
        otlp_encoding=settings.ingest.otlp_encoding,
    )


def build_ingestor(settings: Settings, store: SqlEventStore, *, project: bool | None = None) -> Ingestor:
    """The ingestion loop, folding projections after each batch unless ``project`` is false."""
    producer = kafka_producer(settings)
    publisher = DeadLetterPublisher(store, producer, settings.topics.dlq)
    runner = ProjectionRunner(store)
    fold = settings.ingest.project if project is None else project

    def after_batch(_result: Any) -> None:
        try:
            runner.catch_up()
        except Exception:  # noqa: BLE001 - projections catch up on the next batch; ingestion goes on
            logger.exception("projections could not catch up; will retry after the next batch")

    return Ingestor(
        store,
        kafka_consumer(settings),
        publisher,
        ingest_config(settings),
        after_batch=after_batch if fold else None,
        open_probe=lambda: kafka_consumer(settings, group_id=None),
    )


# --- monitors ------------------------------------------------------------------------------------------

#: Detectors that need the champion reward model as their scorer (wired by the trainers' registry, issue 3).
NEEDS_REWARD_MODEL = ("reward_drift", "over_optimisation")


def detector_names() -> tuple[str, ...]:
    from daemon.settings import LIGHT_DETECTORS

    return (*LIGHT_DETECTORS, *NEEDS_REWARD_MODEL)


def build_detectors(settings: Settings, names: Sequence[str] | None = None) -> list[Any]:
    """The detectors named in settings (or ``names``), with their scorers and embedders.

    Raises:
        ConfigurationError: an unknown name, or a detector whose scorer is not available.
    """
    from monitors.detectors.drift import LengthDriftDetector
    from monitors.detectors.feedback_spike import FeedbackSpikeDetector
    from monitors.detectors.flooding import FeedbackFloodingDetector
    from monitors.detectors.pii import PiiDetector
    from monitors.detectors.rates import HallucinationReportDetector

    wanted = list(names if names is not None else settings.monitors.detectors)
    unknown = [n for n in wanted if n not in detector_names()]
    if unknown:
        raise ConfigurationError(
            f"unknown detector {', '.join(unknown)} (ALIGND_MONITORS_DETECTORS); known: {', '.join(detector_names())}"
        )
    reward_scorer = champion_reward_scorer(settings) if set(NEEDS_REWARD_MODEL) & set(wanted) else None
    jailbreak_scorer = None
    if {"jailbreak_attempt", "jailbreak_success"} & set(wanted):
        from monitors.detectors.jailbreak import JailbreakConfig, JailbreakScorer, MiniLMEmbedder

        embedder = MiniLMEmbedder(settings.monitors.embedding_model) if settings.monitors.embeddings else None
        config = JailbreakConfig(pattern_boost=settings.monitors.jailbreak_pattern_boost)
        # One scorer for both detectors: it remembers recent prompts, so each is analysed (and embedded) once.
        jailbreak_scorer = JailbreakScorer(embedder, config=config)
    factories: dict[str, Callable[[], Any]] = {
        "pii": PiiDetector,
        "negative_feedback_spike": FeedbackSpikeDetector,
        "hallucination_reports": HallucinationReportDetector,
        "response_length_drift": LengthDriftDetector,
        "feedback_flooding": FeedbackFloodingDetector,
        "champion_regression": lambda: _champion_regression(settings),
        "toxicity": lambda: _toxicity(settings),
        "jailbreak_attempt": lambda: _jailbreak("attempt", jailbreak_scorer),
        "jailbreak_success": lambda: _jailbreak("success", jailbreak_scorer),
        "reward_drift": lambda: _reward_detector("reward_drift", reward_scorer),
        "over_optimisation": lambda: _reward_detector("over_optimisation", reward_scorer),
    }
    return [factories[name]() for name in wanted]


def champion_reward_scorer(settings: Settings) -> Any:
    """The champion reward model from MLflow, loaded for scoring (the reward-drift monitors' port).

    Raises:
        ConfigurationError: no reward model is the champion yet.
    """
    from trainers.reward import RewardModel

    registry = model_registry(settings)
    champion = registry.get_by_alias("reward", "champion")
    if champion is None:
        raise ConfigurationError(
            "reward_drift and over_optimisation score responses with the champion reward model and none is promoted: "
            "run `alignd train reward`, then `alignd models promote reward challenger --reason ...`, or leave them "
            "out of ALIGND_MONITORS_DETECTORS"
        )
    folder = Path(settings.trainers.work_dir) / "monitors" / f"reward-{champion.version}"
    model = RewardModel.load(registry.download("reward", champion.version, folder))
    logger.info("monitors score rewards with alignd-reward version %s", champion.version)
    return model


def _reward_detector(name: str, scorer: Any) -> Any:
    from monitors.detectors.drift import OverOptimisationDetector, RewardDriftDetector

    return (RewardDriftDetector if name == "reward_drift" else OverOptimisationDetector)(scorer)


def _champion_regression(settings: Settings) -> Any:
    from monitors.detectors.champion import ChampionRegressionConfig, ChampionRegressionDetector

    m = settings.monitors
    return ChampionRegressionDetector(
        ChampionRegressionConfig(max_accuracy_drop=m.regression_accuracy_drop, max_unsafe_rise=m.regression_unsafe_rise)
    )


def _toxicity(settings: Settings) -> Any:
    from monitors.detectors.toxicity import HuggingFaceToxicityScorer, ProfanityCheckScorer, ToxicityDetector

    model = settings.monitors.toxicity_model
    return ToxicityDetector(HuggingFaceToxicityScorer(model) if model else ProfanityCheckScorer())


def _jailbreak(kind: str, scorer: Any) -> Any:
    from monitors.detectors.jailbreak import JailbreakDetector, JailbreakSuccessDetector

    return (JailbreakDetector if kind == "attempt" else JailbreakSuccessDetector)(scorer=scorer)


def enforcement_rules(settings: Settings) -> tuple[Any, ...]:
    from monitors.enforcement import DEFAULT_RULES, parse_rules

    if settings.monitors.rules is None:
        return DEFAULT_RULES
    try:
        return parse_rules(settings.monitors.rules)
    except ValueError as exc:
        raise ConfigurationError(f"monitors.rules (ALIGND_MONITORS_RULES): {exc}") from None


def model_registry(settings: Settings) -> Any:
    from trainers.registry import ModelRegistry

    m = settings.mlflow
    return ModelRegistry(m.tracking_uri, m.registry_uri, artifact_location=m.artifact_location)


def _checked_config(cls: Any, section: str, values: dict[str, Any]) -> Any:
    from trainers.config import config_from_dict

    try:
        return config_from_dict(cls, values)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"trainers.{section} settings: {exc}") from None


def reward_config(settings: Settings, **overrides: Any) -> Any:
    from trainers.config import RewardConfig

    values = {"model": settings.trainers.reward_model, **settings.trainers.reward, **overrides}
    return _checked_config(RewardConfig, "reward", values)


def policy_config(settings: Settings, **overrides: Any) -> Any:
    from trainers.config import PolicyConfig

    values = {"model": settings.trainers.policy_model, **settings.trainers.policy, **overrides}
    return _checked_config(PolicyConfig, "policy", values)


def training_jobs(settings: Settings, store: SqlEventStore) -> Any:
    from trainers.config import EvaluationConfig
    from trainers.jobs import TrainingJobs

    evaluation = _checked_config(EvaluationConfig, "evaluation", dict(settings.trainers.evaluation))
    return TrainingJobs(store, model_registry(settings), Path(settings.trainers.work_dir), evaluation=evaluation)


def champion_evaluation(settings: Settings, store: SqlEventStore) -> Any:
    """The continuous evaluation of the champions (``alignd models evaluate``, the scheduler's ``evaluate``)."""
    from trainers.champion_eval import ChampionEvaluation
    from trainers.config import EvaluationConfig

    evaluation = _checked_config(EvaluationConfig, "evaluation", dict(settings.trainers.evaluation))
    return ChampionEvaluation(
        store,
        model_registry(settings),
        Path(settings.trainers.work_dir),
        evaluation=evaluation,
        reward=reward_config(settings),
        policy=policy_config(settings),
    )


def job_limits(settings: Settings, **overrides: Any) -> Any:
    from trainers.children import JobLimits

    t = settings.trainers
    values = {"timeout_s": t.timeout_s, "memory_limit_mb": t.memory_limit_mb, "nproc": t.nproc, "device": t.device}
    return JobLimits(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


# --- governance: promotion, rollback, alias audit, enforcement ------------------------------------------


def governance(settings: Settings, store: SqlEventStore) -> Any:
    from daemon.governance import Governance

    return Governance(store, model_registry(settings))


def models_outbox(settings: Settings, store: SqlEventStore, producer: Any) -> Any:
    """Publishes ``model.promoted`` / ``model.rolled_back`` on the models topic, where serving hot-swaps."""
    from daemon.governance import MODEL_EVENT_TYPES
    from daemon.outbox import OutboxPublisher

    return OutboxPublisher(store, producer, settings.topics.models, MODEL_EVENT_TYPES)


def enforcement_executor(settings: Settings, store: SqlEventStore, **overrides: Any) -> Any:
    """Carries out ``enforcement.requested`` (``step()`` from the daemon's loop; defaults: 3 attempts, 1 s)."""
    from daemon.enforcement import EnforcementExecutor

    return EnforcementExecutor(store, governance(settings, store), **overrides)

"""The settings turned into the config objects of the packages below: pure, nothing opened, nothing imported
that a command does not use. The object graph (daemon/bootstrap.py) builds its parts with these, and a command
that overrides one field (``alignd train --max-steps``) asks here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar, cast

from events.errors import ConfigurationError

if TYPE_CHECKING:
    from consumers.ingest import IngestConfig
    from daemon.scheduler import ScheduleConfig
    from daemon.settings import Settings
    from trainers.children import JobLimits
    from trainers.config import DetectorTrainConfig, EvaluationConfig, PolicyConfig, RewardConfig, TrainConfig

_Config = TypeVar("_Config", bound="TrainConfig | EvaluationConfig | DetectorTrainConfig")


def ingest_config(settings: Settings) -> IngestConfig:
    from consumers.ingest import IngestConfig

    s = settings
    return IngestConfig(
        group_id=s.kafka.group_id,
        topics=(s.topics.interactions, s.topics.feedback),
        dlq_topic=s.topics.dlq,
        max_message_bytes=s.ingest.max_message_bytes,
        poll_timeout_ms=s.ingest.poll_timeout_ms,
        max_poll_records=s.ingest.max_poll_records,
        retry_initial_s=s.ingest.retry_initial_s,
        retry_max_s=s.ingest.retry_max_s,
        kafka_commit_interval_s=s.ingest.kafka_commit_interval_s,
        otlp_topics=(s.topics.otlp_spans,) if s.topics.otlp_spans else (),
        otlp_encoding=s.ingest.otlp_encoding,
        otlp_log_topics=(s.topics.otlp_logs,) if s.topics.otlp_logs else (),
        otlp_join_window_s=s.ingest.otlp_join_window_s,
    )


def reward_config(settings: Settings, **overrides: Any) -> RewardConfig:
    from trainers.config import RewardConfig

    t = settings.trainers
    return _checked(RewardConfig, "reward", {"model": t.reward_model, **t.reward, **overrides})


def policy_config(settings: Settings, **overrides: Any) -> PolicyConfig:
    from trainers.config import PolicyConfig

    t = settings.trainers
    return _checked(PolicyConfig, "policy", {"model": t.policy_model, **t.policy, **overrides})


def detector_config(settings: Settings, **overrides: Any) -> DetectorTrainConfig:
    from trainers.config import DetectorTrainConfig
    from trainers.detector_job import classifier_config

    config = _checked(DetectorTrainConfig, "detector", {**settings.trainers.detector, **overrides})
    try:  # the classifier's own settings, checked before a job starts rather than in its child
        classifier_config(config)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"trainers.detector.classifier settings: {exc}") from None
    return config


def evaluation_config(settings: Settings) -> EvaluationConfig:
    from trainers.config import EvaluationConfig

    return _checked(EvaluationConfig, "evaluation", dict(settings.trainers.evaluation))


def _checked(cls: type[_Config], section: str, values: dict[str, Any]) -> _Config:
    from trainers.config import config_from_dict

    try:
        return cast(_Config, config_from_dict(cls, values))  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"trainers.{section} settings: {exc}") from None


def job_limits(settings: Settings, **overrides: Any) -> JobLimits:
    """A training child's limits from ``trainers``; an override of None keeps the setting."""
    from trainers.children import JobLimits

    t = settings.trainers
    values = {"timeout_s": t.timeout_s, "memory_limit_mb": t.memory_limit_mb, "nproc": t.nproc, "device": t.device}
    return JobLimits(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


def schedule_config(settings: Settings, **overrides: Any) -> ScheduleConfig:
    """The scheduler's ``schedule`` settings, where a ``training.started`` without an outcome is only an orphan
    once no job could still be running it (``trainers.timeout_s`` and a minute)."""
    from daemon.scheduler import ScheduleConfig

    orphan_after_s = max(settings.schedule.orphan_after_s, settings.trainers.timeout_s + 60)
    return ScheduleConfig.from_settings(settings, **{"orphan_after_s": orphan_after_s, **overrides})

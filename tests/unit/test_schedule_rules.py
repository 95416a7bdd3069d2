"""The scheduler's pure rules: when a volume or cron trigger trains, resumes, backs off; what a pause blocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from daemon.scheduler import (
    ScheduleConfig,
    planned_jobs,
)
from daemon.training_rules import (
    LOST_LEASE_REASON,
    SHUTDOWN_REASON,
    Attempt,
    baseline_seq,
    decide_training,
    fold_attempts,
    is_interruption,
    pause_blocks,
)
from events.model import Event, StoredEvent

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _stored(seq: int, type_: str, payload: dict[str, Any], minutes_ago: float = 0) -> StoredEvent:
    at = NOW - timedelta(minutes=minutes_ago)
    return StoredEvent(
        seq=seq,
        event=Event(event_id=f"{type_}:{seq}", type=type_, occurred_at=at, source="test", payload=payload),
        recorded_at=at,
    )


def _started(
    seq: int, attempt: str, kind: str, to_seq: int, minutes_ago: float = 60, objective: str = "dpo"
) -> StoredEvent:
    payload = {"attempt_id": attempt, "kind": kind, "objective": objective, "dataset": {"to_seq": to_seq, "rows": 9}}
    return _stored(seq, "training.started", payload, minutes_ago)


def _done(seq: int, attempt: str, kind: str, minutes_ago: float = 50) -> StoredEvent:
    return _stored(seq, "training.completed", {"attempt_id": attempt, "kind": kind}, minutes_ago)


def _failed(seq: int, attempt: str, kind: str, reason: str, minutes_ago: float = 50) -> StoredEvent:
    payload = {"attempt_id": attempt, "kind": kind, "reason": reason, "resumable": True}
    return _stored(seq, "training.failed", payload, minutes_ago)


def _decide(attempts: list[Attempt], new: int, threshold: int = 10, kind: str = "reward", **kw: Any) -> Any:
    return decide_training(kind, attempts, new, threshold, NOW, objective=None, **kw)


def test_fold_attempts_joins_started_outcome_and_registered_version() -> None:
    attempts = fold_attempts(
        [
            _started(1, "a1", "reward", 100),
            _done(2, "a1", "reward"),
            _stored(3, "model.registered", {"attempt_id": "a1", "kind": "reward", "version": "4"}),
            _started(4, "a2", "policy", 120),
            _failed(5, "a2", "policy", "out of memory"),
            _started(6, "a3", "reward", 130, minutes_ago=1),
        ]
    )
    assert [(a.attempt_id, a.status, a.version, a.to_seq) for a in attempts] == [
        ("a1", "completed", "4", 100),
        ("a2", "failed", None, 120),
        ("a3", "running", None, 130),
    ]
    assert attempts[1].reason == "out of memory" and attempts[1].resumable is True


def test_the_baseline_is_the_dataset_of_the_last_successful_training_of_that_kind() -> None:
    attempts = fold_attempts(
        [
            _started(1, "a1", "reward", 100),
            _done(2, "a1", "reward"),
            _started(3, "a2", "reward", 180),
            _failed(4, "a2", "reward", "diverged"),
            _started(5, "p1", "policy", 300),
            _done(6, "p1", "policy"),
        ]
    )
    assert baseline_seq(attempts, "reward") == 100  # the failed attempt does not move it
    assert baseline_seq(attempts, "policy") == 300
    assert baseline_seq([], "reward") == 0


def test_volume_trigger_fires_at_the_threshold_and_not_below() -> None:
    assert not _decide([], 9).run
    decision = _decide([], 10)
    assert decision.run and decision.trigger == "volume" and decision.upto_seq is None
    assert "10 new examples since seq 0" in decision.reason


def test_a_threshold_of_zero_turns_the_volume_trigger_off() -> None:
    decision = _decide([], 10_000, threshold=0)
    assert not decision.run and "off" in decision.reason


def test_a_running_attempt_blocks_until_it_is_old_enough_to_be_an_orphan() -> None:
    attempts = fold_attempts([_started(1, "a1", "reward", 100, minutes_ago=30)])
    assert not _decide(attempts, 1000, orphan_after_s=3600).run
    orphan = _decide(attempts, 1000, orphan_after_s=600)
    assert orphan.run and orphan.trigger == "resume" and orphan.upto_seq == 100


@pytest.mark.parametrize("reason", [SHUTDOWN_REASON, LOST_LEASE_REASON, "training paused: toxicity alert"])
def test_an_interrupted_attempt_is_resumed_on_its_own_dataset_even_without_new_data(reason: str) -> None:
    attempts = fold_attempts(
        [_started(1, "a1", "policy", 140, objective="sft"), _failed(2, "a1", "policy", reason, minutes_ago=0)]
    )
    decision = _decide(attempts, 0, kind="policy")
    assert decision.run and decision.trigger == "resume"
    assert (decision.upto_seq, decision.objective) == (140, "sft")  # same snapshot: the checkpoint matches


def test_a_real_failure_backs_off_then_retries_on_volume() -> None:
    attempts = fold_attempts([_started(1, "a1", "reward", 100), _failed(2, "a1", "reward", "diverged", minutes_ago=10)])
    waiting = _decide(attempts, 1000, failure_backoff_s=3600)
    assert not waiting.run and "diverged" in waiting.reason
    assert _decide(attempts, 1000, failure_backoff_s=300).run


def test_cron_needs_only_one_new_example_and_skips_when_nothing_is_new() -> None:
    attempts = fold_attempts([_started(1, "a1", "reward", 100), _done(2, "a1", "reward")])
    assert not _decide(attempts, 0, threshold=1, trigger="cron").run
    decision = _decide(attempts, 1, threshold=1, trigger="cron")
    assert decision.run and decision.trigger == "cron"


def test_other_kinds_do_not_block_each_other() -> None:
    attempts = fold_attempts([_started(1, "p1", "policy", 100, minutes_ago=1)])
    assert _decide(attempts, 10, kind="reward").run


def test_interruption_reasons() -> None:
    assert is_interruption(SHUTDOWN_REASON) and is_interruption(LOST_LEASE_REASON)
    assert is_interruption("training paused: reward drift")
    assert not is_interruption("timed out after 3600 s") and not is_interruption(None)


def test_a_pause_blocks_training_but_not_evaluation_and_says_why() -> None:
    assert pause_blocks("reward", (False, None)) is None
    why = pause_blocks("policy", (True, "toxicity above threshold"))
    assert why is not None and "toxicity above threshold" in why and "resume_training" in why
    assert pause_blocks("evaluation", (True, "toxicity")) is None


def test_schedule_config_takes_what_settings_have_and_defaults_the_rest() -> None:
    class Section:
        reward_after_pairs = 7
        lease_s = 5.0

    class Settings:
        schedule = Section()

    config = ScheduleConfig.from_settings(Settings(), check_interval_s=2.0)
    assert (config.reward_after_pairs, config.lease_s, config.check_interval_s) == (7, 5.0, 2.0)
    assert config.reward_cron == ScheduleConfig.reward_cron
    assert ScheduleConfig.from_settings(object()) == ScheduleConfig()


def test_the_evaluate_job_is_planned_only_when_evaluation_cron_is_set() -> None:
    # APScheduler is a core dependency: planned_jobs imports it, and a broken import fails here, not skips.
    assert "evaluate" not in [job for job, _ in planned_jobs(ScheduleConfig())]
    planned = dict(planned_jobs(ScheduleConfig(evaluation_cron="30 5 * * *")))
    assert "hour='5'" in str(planned["evaluate"]) and "minute='30'" in str(planned["evaluate"])

"""The learning-rate schedule and the trainer settings that choose it (pure; no model)."""

from __future__ import annotations

import re

import pytest

from trainers.config import PolicyConfig, RewardConfig
from trainers.loop import lr_factor


def test_warmup_rises_linearly_to_the_full_rate() -> None:
    factors = [lr_factor(step, 100, 10, "linear") for step in range(10)]
    assert factors == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_factor(10, 100, 10, "linear") == pytest.approx(1.0)


def test_linear_decays_to_zero_at_the_last_step() -> None:
    factors = [lr_factor(step, 100, 10, "linear") for step in range(10, 100)]
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))
    assert factors[-1] == pytest.approx(1 / 90)
    assert lr_factor(100, 100, 10, "linear") == 0.0


def test_constant_holds_after_the_warmup_and_without_one() -> None:
    assert [lr_factor(step, 50, 0, "constant") for step in (0, 25, 49)] == [1.0, 1.0, 1.0]
    assert lr_factor(1, 50, 4, "constant") == pytest.approx(0.5)
    assert lr_factor(4, 50, 4, "constant") == 1.0


def test_a_single_step_run_trains_at_the_full_rate() -> None:
    # 10% warm-up of one step rounds up to one step: that step must not be skipped at a rate of zero.
    assert lr_factor(0, 1, 1, "linear") == 1.0
    assert lr_factor(0, 1, 0, "linear") == 1.0


def test_the_reward_trainer_decays_and_the_policy_stays_constant_by_default() -> None:
    reward, policy = RewardConfig(), PolicyConfig()
    assert (reward.lr_schedule, reward.warmup_ratio, reward.pooling) == ("linear", 0.1, "mean")
    assert (policy.lr_schedule, policy.warmup_ratio) == ("constant", 0.0)


def test_the_reward_trainer_turns_dropout_off_and_the_policy_keeps_it_by_default() -> None:
    assert RewardConfig().disable_dropout is True
    assert PolicyConfig().disable_dropout is False


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr_schedule": "cosine"}, "unknown lr_schedule 'cosine'; choose one of constant, linear"),
        ({"warmup_ratio": 1.0}, "warmup_ratio must be in [0, 1)"),
        ({"pooling": "cls"}, "unknown pooling 'cls'; choose one of mean, head"),
        ({"sequences_per_forward": -1}, "sequences_per_forward must be >= 0 or unset, got -1"),
    ],
)
def test_bad_settings_say_what_is_allowed(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RewardConfig(**settings)  # type: ignore[arg-type]

"""``trainers.detector`` settings (``alignd train detector``): every mistake is refused before a job starts, naming
the setting and what it should be; the classifier's own settings reach it as DetectorConfig."""

from __future__ import annotations

from typing import Any

import pytest

from daemon import configs
from daemon.settings import load_settings
from events.errors import ConfigurationError
from trainers.detector_job import classifier_config


def _config(detector: dict[str, Any], **overrides: Any) -> Any:
    settings = load_settings(env={}).model_copy(deep=True)
    trainers = settings.trainers.model_copy(update={"detector": detector})
    return configs.detector_config(settings.model_copy(update={"trainers": trainers}), **overrides)


@pytest.mark.parametrize(
    ("detector", "message"),
    [
        ({"sample": -3}, "sample must be 0 (all) or more"),
        ({"verdict_val_fraction": 1.0}, "verdict_val_fraction must be within [0, 1)"),
        ({"classifier": 5}, "classifier must be a mapping"),
        ({"classifier": {"bogus": 1}}, "unknown classifier settings: bogus"),
        ({"classifier": {"layers": [3, "x"]}}, "layers must be a list of hidden-state indices"),
        ({"classifier": {"layers": []}}, "layers must be a list of hidden-state indices"),
        ({"gates": {}}, "unknown DetectorTrainConfig settings: gates"),
    ],
)
def test_mistakes_are_refused_before_a_job_starts(detector: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match="trainers.detector") as refused:
        _config(detector)
    assert message in str(refused.value)


def test_the_classifier_settings_become_its_config_with_the_jobs_seed() -> None:
    config = _config({"seed": 4, "classifier": {"layers": [2, 3], "hidden": 0, "grid": {"hard_weight": [1.0, 2.0]}}})
    classifier = classifier_config(config)
    assert (classifier.layers, classifier.hidden, classifier.seed) == ((2, 3), 0, 4)
    assert classifier.grid == {"hard_weight": (1.0, 2.0)}
    assert _config({}, sample=40, garak=False).sample == 40

"""``alignd train detector`` as a user runs it: reviewers' verdicts on jailbreak alerts, the job in a child process,
the classifier registered in MLflow with its lineage and gates, promoted, and loaded by the monitors as the
champion; a second job is gated against it on the same held-out prompts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from events.names import DATASET_SNAPSHOTTED, GATE_EVALUATED, MODEL_REGISTERED, TRAINING_COMPLETED
from events.sql_store import SqlEventStore
from trainers.registry import ModelRegistry

from .test_training_jobs import events_of, store  # noqa: F401 (fixture)
from .test_verdicts import ATTACK, BENIGN, _alert, _seed

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def env(store: SqlEventStore, registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith("ALIGND_")]:
        monkeypatch.delenv(name)
    values = {
        "ALIGND_DATABASE_URL": str(store.engine.url),
        "ALIGND_MLFLOW_TRACKING_URI": registry.tracking_uri,
        "ALIGND_MLFLOW_ARTIFACT_LOCATION": registry.artifact_location or "",
        "ALIGND_TRAINERS_WORK_DIR": str(tmp_path / "work"),
        "ALIGND_LOG_LEVEL": "WARNING",
    }
    for name, value in values.items():
        if value:
            monkeypatch.setenv(name, value)
    return tmp_path / "work"


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _train(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    # 40 authored examples per split and label: a real classifier, trained and measured in about a minute
    code, out, err = _cli(["train", "detector", "--sample", "40", "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def test_verdicts_train_a_registered_gated_classifier_the_monitors_load(
    env: Path, store: SqlEventStore, registry: ModelRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _seed(store)
    for alert, verdict in (("anomaly:jailbreak_attempt:1", "fp"), ("anomaly:jailbreak_attempt:2", "tp")):
        code, _, err = _cli(["alerts", "verdict", alert, verdict, "--reason", "reviewed", "--actor", "ana"], capsys)
        assert code == 0, err

    first = _train(capsys)
    assert first["ok"] and first["kind"] == "detector" and first["version"] == 1
    # The snapshot is the two verdicts' interactions; the authored data is read by the trainer.
    assert first["dataset"]["kind"] == "alert_verdicts" and first["dataset"]["rows"] == 2
    metrics = first["metrics"]
    assert metrics["verdicts.train"] + metrics["verdicts.validation"] == 2
    assert metrics["held_out.attacks"] == 40  # --sample: 40 per split and label
    assert 0.0 <= metrics["detector.recall"] <= 1.0 and 0.0 <= metrics["detector.false_alarms"] <= 1.0
    # The classifier ranks an attack above a plain question: it learnt something
    assert metrics["detector.recall"] > metrics["detector.false_alarms"]
    dataset = [json.loads(line) for line in next((env / "jobs").rglob("dataset.jsonl")).read_text().splitlines()]
    labels = {row["id"]: row["label"] for row in dataset}
    assert labels == {ids["benign"]: 0, ids["attack"]: 1}

    [version] = registry.list_versions("detector")
    assert version.name == "alignd-detector" and "challenger" in version.aliases
    tags = version.tags
    assert tags["alignd.dataset.kind"] == "alert_verdicts" and tags["alignd.objective"] == "classifier"
    assert tags["alignd.gate.detector_recall"].split()[0] in ("pass", "fail", "insufficient")
    assert tags["alignd.gate.detector_false_alarms"].split()[0] in ("pass", "fail", "insufficient")
    gate = events_of(store, GATE_EVALUATED)[0]
    assert gate["kind"] == "detector" and [g["name"] for g in gate["gates"]] == [
        "detector_recall",
        "detector_false_alarms",
    ]
    assert {e["kind"] for e in events_of(store, DATASET_SNAPSHOTTED)} == {"alert_verdicts"}
    assert events_of(store, MODEL_REGISTERED)[0]["name"] == "alignd-detector"

    # 40 held-out attacks cannot show a recall above 0.8 at 95%, so the gate may be undecided: force, as an
    # operator would, and it is recorded as forced
    code, out, err = _cli(
        ["models", "promote", "detector", "1", "--reason", "first classifier", "--actor", "ana", "--force"], capsys
    )
    assert code == 0, err
    assert registry.get_by_alias("detector", "champion").version == "1"

    from daemon.bootstrap import build_detectors
    from daemon.settings import load_settings

    settings = load_settings(env={**os.environ, "ALIGND_MONITORS_JAILBREAK_CLASSIFIER": "champion"})
    attempt, success = build_detectors(settings, ["jailbreak_attempt", "jailbreak_success"])
    classifier = attempt.scorer.classifier
    assert classifier is not None and classifier.folder.parent.name == "detector-1"
    assert success.scorer is attempt.scorer  # one scorer for both, as without the classifier
    high, low = classifier.scores([ATTACK, "What is the capital of France?"])
    assert high > low

    second = _train(capsys)
    assert second["ok"] and second["version"] == 2
    # Gated against the champion on the same held-out prompts (one sample, one seed: the same model)
    assert second["metrics"]["champion.recall"] == pytest.approx(metrics["detector.recall"])
    gate = events_of(store, GATE_EVALUATED)[-1]
    assert "vs champion" in gate["gates"][0]["detail"] and gate["gates"][0]["test"] == "mcnemar"
    assert [e["kind"] for e in events_of(store, TRAINING_COMPLETED)] == ["detector", "detector"]


def test_without_a_champion_the_jailbreak_detectors_keep_their_patterns(
    env: Path, store: SqlEventStore, registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    from daemon.bootstrap import build_detectors
    from daemon.settings import load_settings

    settings = load_settings(env={**os.environ, "ALIGND_MONITORS_JAILBREAK_CLASSIFIER": "champion"})
    [attempt] = build_detectors(settings, ["jailbreak_attempt"])
    assert attempt.scorer.classifier is None
    assert "no alignd-detector version is the champion" in caplog.text
    assert BENIGN  # the look-alike the first test's reviewer marked a false alarm


def test_verdicts_since_the_last_classifier_trigger_its_retraining(
    env: Path, store: SqlEventStore, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.cli.jobs import volume_status
    from daemon.scheduler import ScheduleConfig
    from events.verdicts import attempt_examples

    ids = _seed(store)
    for alert, verdict in (("anomaly:jailbreak_attempt:1", "fp"), ("anomaly:jailbreak_attempt:2", "tp")):
        code, _, err = _cli(["alerts", "verdict", alert, verdict, "--reason", "reviewed", "--actor", "bo"], capsys)
        assert code == 0, err

    def detector_row(after: int) -> dict[str, Any]:
        rows = volume_status(store, ScheduleConfig(detector_after_verdicts=after))
        [row] = [r for r in rows if r["kind"] == "detector"]
        return row

    row = detector_row(2)
    assert (row["dataset"], row["new_examples"], row["next_check"]) == ("alert_verdicts", 2, "train")
    assert detector_row(3)["next_check"] == "wait"
    # jailbreak_success's verdicts: a false positive labels nothing (the answer may only have been harmless), a
    # true positive says the prompt was an attack, and the later verdict on one interaction stands
    store.append([_alert(3, "jailbreak_success", ids["benign"], 6)])
    code, _, err = _cli(["alerts", "verdict", "anomaly:jailbreak_success:3", "fp", "--reason", "refused"], capsys)
    assert code == 0, err
    assert {e.interaction_id: e.label for e in attempt_examples(store)} == {ids["benign"]: 0, ids["attack"]: 1}
    code, _, err = _cli(["alerts", "verdict", "anomaly:jailbreak_success:3", "tp", "--reason", "it complied"], capsys)
    assert code == 0, err
    assert {e.interaction_id: e.label for e in attempt_examples(store)} == {ids["benign"]: 1, ids["attack"]: 1}
    assert detector_row(3)["new_examples"] == 2

    def verdict_counts() -> dict[str, tuple[int, int]]:
        code, out, err = _cli(["datasets", "--json"], capsys)
        assert code == 0, err
        rows = json.loads(out)["counts"]
        return {r["source"]: (r["kept"], r["quarantined"]) for r in rows if r["dataset"] == "alert_verdicts"}

    assert verdict_counts() == {"attack": (2, 0)}
    # the poisoning guard: a quarantined reviewer's verdicts leave the classifier's data, and `datasets` says so
    code, _, err = _cli(["quarantine", "add", "--user", "bo", "--reason", "careless reviews", "--actor", "ana"], capsys)
    assert code == 0, err
    assert verdict_counts() == {"attack": (1, 1)}
    assert {e.interaction_id: e.label for e in attempt_examples(store)} == {ids["benign"]: 1}

"""The CLI's manners (issue 22): its version, "did you mean", no files made by reading, true JSON types, cron as
cron, empty states, one table style, and why a detector is off. SQLite only, no broker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ALIGND_* setting from the caller's environment, and an empty folder to run in."""
    for name in list(os.environ):
        if name.startswith("ALIGND_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALIGND_LOG_LEVEL", "WARNING")


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own exits (--version, a mistyped command)
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and out.strip() == f"alignd {version('alignd')}"


def test_a_mistyped_command_says_what_was_meant(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["modles", "list"], capsys)
    assert code == 2 and err.strip() == "alignd: no command 'modles'; did you mean 'models'?"
    code, _, err = _run(["models", "lst"], capsys)
    assert code == 2 and err.strip() == "alignd: no command 'models lst'; did you mean 'models list'?"
    code, _, err = _run(["zzzzzz"], capsys)
    assert code == 2 and "no command 'zzzzzz'" in err and "alignd --help" in err
    code, _, err = _run(["models", "list", "--kind", "rewrd"], capsys)
    assert code == 2 and "did you mean 'reward'?" in err


@pytest.mark.parametrize(
    "args",
    [
        ["events", "count"],
        ["events", "tail"],
        ["dlq", "list"],
        ["dlq", "count"],
        ["monitors", "list"],
        ["audit", "list"],
        ["audit", "verify"],
        ["jobs", "list"],
        ["replay"],
    ],
)
def test_reading_commands_create_no_database(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(args, capsys)
    assert code == 1 and f"no database at {tmp_path / 'alignd.db'}; run `alignd db upgrade` first" in err
    assert list(tmp_path.iterdir()) == []


def test_models_list_and_show_without_any_database_create_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(["models", "list"], capsys)
    assert code == 0 and out.startswith("no model versions")
    code, out, _ = _run(["models", "list", "--json"], capsys)
    assert code == 0 and out.strip() == "[]"
    code, _, err = _run(["models", "show", "reward", "champion"], capsys)
    assert code == 1 and "no MLflow database" in err
    code, _, _ = _run(["config", "show"], capsys)
    assert code == 0 and list(tmp_path.iterdir()) == []
    # A writing command still makes it.
    code, out, _ = _run(["db", "upgrade"], capsys)
    assert code == 0 and (tmp_path / "alignd.db").exists()
    code, out, _ = _run(["events", "count", "--json"], capsys)
    assert code == 0


def test_models_json_gives_numbers_as_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from trainers.registry import ModelRegistry

    registry = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(tmp_path / "mlruns"))
    folder = tmp_path / "model-out"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8}')
    with registry.start_run("reward", "reward-test", {"lr": "0.001"}, {}) as run:
        run.log_artifacts(folder, "model")
    tags = {"alignd.dataset.from_seq": "3", "alignd.dataset.to_seq": "40", "alignd.dataset.rows": "12"}
    registry.register("reward", run.run_id, "model", {"alignd.gates": "passed", **tags})

    assert _run(["db", "upgrade"], capsys)[0] == 0
    code, out, err = _run(["models", "list", "--json"], capsys)
    [listed] = json.loads(out)
    assert code == 0, err
    assert listed["version"] == 1 and listed["aliases"] == ["challenger"] and listed["rolled_back"] is None
    assert {k: listed["dataset"][k] for k in ("from_seq", "to_seq", "rows")} == {
        "from_seq": 3,
        "to_seq": 40,
        "rows": 12,
    }
    code, out, _ = _run(["models", "show", "reward", "1", "--json"], capsys)
    assert code == 0 and json.loads(out)["version"] == 1


def test_jobs_list_shows_cron_as_cron(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert _run(["db", "upgrade"], capsys)[0] == 0
    code, out, _ = _run(["jobs", "list", "--json"], capsys)
    triggers = {j["id"]: j["trigger"] for j in json.loads(out)["schedule"]}
    assert code == 0 and "0 3 * * *" in triggers.values() and "0 4 * * *" in triggers.values()
    code, out, _ = _run(["jobs", "list"], capsys)
    assert code == 0 and "0 3 * * *" in out and "cron[" not in out


BOX_DRAWING = set("─━│┃┏┓┗┛┡┩╇┳┻╋┌┐└┘├┤┬┴┼")


@pytest.mark.parametrize(
    ("args", "empty_state"),
    [
        (["dlq", "list"], "no dead letters: every message read so far was stored"),
        (["dlq", "list", "--kind", "oversized"], "no dead letters of kind 'oversized'"),
        (["dlq", "list", "--pending"], "no dead letters waiting to be requeued"),
        (["dlq", "count"], "no dead letters"),
        (["events", "count"], "no events stored yet"),
        (["monitors", "backtest"], "(no alerts in that range)"),
        (["monitors", "list"], "detectors (monitors at seq 0)"),
        (["jobs", "list"], "(no training attempts yet)"),
    ],
)
def test_empty_listings_say_so_in_one_plain_style(
    args: list[str], empty_state: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["db", "upgrade"], capsys)[0] == 0
    code, out, err = _run(args, capsys)
    assert code == 0, err
    assert empty_state in out
    assert not BOX_DRAWING & set(out), out  # no rich grid, empty or not: one style, a line per row


def test_monitors_list_says_why_each_detector_is_on_or_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    monkeypatch.setenv("ALIGND_MONITORS_DETECTORS", "toxicity,reward_drift")
    assert _run(["db", "upgrade"], capsys)[0] == 0
    code, out, err = _run(["monitors", "list", "--json"], capsys)
    assert code == 0, err
    by_name = {d["detector"]: d for d in json.loads(out)["detectors"]}
    assert by_name["toxicity"]["runs"] is True and by_name["toxicity"]["why"].startswith("on:")
    off = by_name["pii"]
    assert off["runs"] is False and "not in monitors.detectors (ALIGND_MONITORS_DETECTORS)" in off["why"]
    drift = by_name["reward_drift"]
    assert drift["enabled"] is True and drift["runs"] is False
    assert "no reward model is the champion" in drift["why"] and "refuse to start" in drift["why"]
    assert "not in monitors.detectors" in by_name["over_optimisation"]["why"]
    assert not (tmp_path / "mlflow.db").exists()  # asking did not create MLflow's database
    code, out, _ = _run(["monitors", "list"], capsys)
    line = next(x for x in out.splitlines() if x.startswith("reward_drift"))
    assert line.split()[1] == "no" and "no reward model is the champion" in line

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

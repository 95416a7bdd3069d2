"""The MLflow adapter and ``alignd models`` against real MLflow on SQLite.

Creating an MLflow database runs its migrations (about two seconds), so the module builds one empty database and
each test copies the file: every test gets its own registry, with versions numbered from 1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from daemon.cli.models import add_models_commands
from daemon.settings import MlflowSettings, Settings
from tests.helpers import REPO
from trainers.registry import (
    DatasetInfo,
    ModelRegistry,
    RegistryError,
    TrainingRun,
    VersionNotFoundError,
)

pytestmark = pytest.mark.integration

SNAPSHOT = DatasetInfo(
    name="preference_pairs@120", kind="preference_pairs", from_seq=0, to_seq=120, sha256="ab" * 32, rows=42
)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model-out"
    (folder / "adapter").mkdir(parents=True)
    (folder / "config.json").write_text('{"objective": "bradley_terry"}')
    (folder / "adapter" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    return folder


Train = Callable[..., str]


@pytest.fixture
def train(registry: ModelRegistry, model_dir: Path) -> Train:
    """Factory: a finished run with the model folder logged under ``model``; returns the run id."""

    def make(kind: str = "reward", **metrics: float) -> str:
        with registry.start_run(kind, f"{kind}-test", {"lr": 1e-4}, {"alignd.objective": "bradley_terry"}) as run:
            run.log_dataset(SNAPSHOT)
            run.log_metrics({"loss": 0.5, **metrics}, step=10)
            run.log_artifacts(model_dir, "model")
        return run.run_id

    return make


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- runs -------------------------------------------------------------------------------------------


def test_a_run_records_params_per_step_metrics_and_its_dataset(registry: ModelRegistry, tmp_path: Path) -> None:
    with registry.start_run("reward", "reward-bt-1", {"lr": 1e-4, "max_steps": 3}, {"alignd.job_id": "j1"}) as run:
        for step, loss in enumerate([0.9, 0.7, 0.6]):
            run.log_metrics({"loss": loss}, step=step)
        run.log_dataset(SNAPSHOT)
        run.set_tags({"alignd.attempt_id": "a1"})

    client = MlflowClient(tracking_uri=registry.tracking_uri)
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED" and stored.info.run_name == "reward-bt-1"
    assert stored.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())
    assert stored.data.params == {"lr": "0.0001", "max_steps": "3"}
    history = client.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 0.9), (1, 0.7), (2, 0.6)]
    assert registry.run_metrics(run.run_id) == {"loss": 0.6}
    tags = stored.data.tags
    assert tags["alignd.kind"] == "reward" and tags["alignd.job_id"] == "j1" and tags["alignd.attempt_id"] == "a1"
    assert (tags["alignd.dataset.from_seq"], tags["alignd.dataset.to_seq"]) == ("0", "120")
    assert (tags["alignd.dataset.sha256"], tags["alignd.dataset.rows"]) == (SNAPSHOT.sha256, "42")
    assert stored.inputs is not None
    [dataset_input] = stored.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.name == "preference_pairs@120" and SNAPSHOT.sha256.startswith(dataset.digest)
    assert json.loads(dataset.source) == {"store": "alignd", "kind": "preference_pairs", "from_seq": 0, "to_seq": 120}
    assert json.loads(dataset.profile or "{}") == {"num_rows": 42}
    assert {(t.key, t.value) for t in dataset_input.tags} == {("mlflow.data.context", "training")}


def test_another_process_can_log_to_an_open_run(registry: ModelRegistry) -> None:
    run = registry.start_run("policy", "policy-dpo-1", {}, {})
    ModelRegistry(registry.tracking_uri).attach_run(run.run_id).log_metrics({"kl": 0.02}, step=5)
    run.end("FINISHED")
    assert registry.run_metrics(run.run_id) == {"kl": 0.02}


def test_a_failed_run_ends_failed_and_registers_nothing(registry: ModelRegistry, model_dir: Path) -> None:
    opened: list[TrainingRun] = []
    with pytest.raises(RuntimeError, match="out of memory"):
        with registry.start_run("reward", "reward-bt-oom", {}, {}) as run:
            opened.append(run)
            run.log_artifacts(model_dir, "model")
            raise RuntimeError("CUDA out of memory")
            registry.register("reward", run.run_id, "model", {})  # the trainer's next step, never reached

    [run] = opened
    assert MlflowClient(tracking_uri=registry.tracking_uri).get_run(run.run_id).info.status == "FAILED"
    assert registry.list_versions() == []
    with pytest.raises(RegistryError, match=f"run {run.run_id} ended FAILED"):
        registry.register("reward", run.run_id, "model", {"alignd.training_event_id": "t-failed"})
    assert registry.list_versions() == []


# --- versions ---------------------------------------------------------------------------------------


def test_register_points_challenger_at_the_new_version_and_tags_it(registry: ModelRegistry, train: Train) -> None:
    run_id = train()
    tags = {"alignd.training_event_id": "training.completed:a1", "alignd.objective": "bradley_terry"}

    version = registry.register("reward", run_id, "model", tags)

    assert (version.kind, version.name, version.version, version.run_id) == ("reward", "alignd-reward", "1", run_id)
    assert version.aliases == ("challenger",) and version.source == f"runs:/{run_id}/model"
    assert version.tags["alignd.training_event_id"] == "training.completed:a1"
    assert version.tags["alignd.dataset.to_seq"] == "120"  # copied from the run
    assert version.created_at.tzinfo is not None
    assert registry.get_by_alias("reward", "challenger") == version
    assert registry.get_by_alias("reward", "champion") is None
    assert registry.get_by_alias("policy", "challenger") is None  # nothing registered under that name yet


def test_a_retried_registration_returns_the_same_version(registry: ModelRegistry, train: Train) -> None:
    run_id = train()
    tags = {"alignd.training_event_id": "training.completed:a1"}
    first = registry.register("reward", run_id, "model", tags)
    again = registry.register("reward", run_id, "model", tags)
    assert again == first
    assert [v.version for v in registry.list_versions("reward")] == ["1"]


def test_a_late_retry_does_not_move_the_alias_back(registry: ModelRegistry, train: Train) -> None:
    old = registry.register("reward", train(), "model", {"alignd.training_event_id": "e1"})
    new = registry.register("reward", train(), "model", {"alignd.training_event_id": "e2"})
    retried = registry.register("reward", old.run_id or "", "model", {"alignd.training_event_id": "e1"})
    assert (retried.version, retried.aliases) == (old.version, ())
    challenger = registry.get_by_alias("reward", "challenger")
    assert challenger is not None and challenger.version == new.version == "2"


def test_alias_moves_are_visible_to_get_by_alias_and_list(registry: ModelRegistry, train: Train) -> None:
    v1 = registry.register("reward", train(), "model", {"alignd.training_event_id": "e1"})
    v2 = registry.register("reward", train(), "model", {"alignd.training_event_id": "e2"})
    p1 = registry.register("policy", train("policy"), "model", {"alignd.training_event_id": "e3"}, alias=None)

    registry.set_alias("reward", "champion", v1.version)
    champion = registry.get_by_alias("reward", "champion")
    assert champion is not None and champion.version == "1" and champion.aliases == ("champion",)
    assert registry.get("reward", 2).aliases == ("challenger",)

    registry.set_alias("reward", "champion", v2.version)
    listed = registry.list_versions()
    assert [(v.name, v.version, v.aliases) for v in listed] == [
        ("alignd-policy", "1", ()),
        ("alignd-reward", "2", ("challenger", "champion")),
        ("alignd-reward", "1", ()),
    ]
    assert [v.version for v in registry.list_versions("policy")] == [p1.version]

    registry.delete_alias("reward", "champion")
    registry.delete_alias("reward", "champion")  # already gone: not an error
    assert registry.get_by_alias("reward", "champion") is None
    registry.set_tags("reward", v1.version, {"alignd.retired": "yes"})
    assert registry.get("reward", v1.version).tags["alignd.retired"] == "yes"


def test_download_returns_exactly_the_files_logged(
    registry: ModelRegistry, train: Train, model_dir: Path, tmp_path: Path
) -> None:
    version = registry.register("policy", train("policy"), "model", {"alignd.training_event_id": "e1"})
    local = registry.download("policy", version.version, tmp_path / "downloaded")
    assert local.is_dir() and local.is_relative_to(tmp_path / "downloaded")
    assert _files(local) == _files(model_dir)


def test_unknown_versions_and_missing_artifacts_say_what_to_do(registry: ModelRegistry, train: Train) -> None:
    with pytest.raises(VersionNotFoundError, match=r"alignd-policy has no version 7; `alignd models list`") as info:
        registry.get("policy", 7)
    assert getattr(info.value.__cause__, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"
    registry.register("reward", train(), "model", {"alignd.training_event_id": "e1"})
    with pytest.raises(VersionNotFoundError, match="alignd-reward has no version 3"):
        registry.set_alias("reward", "champion", 3)
    with registry.start_run("reward", "reward-empty", {}, {}) as empty:
        pass
    with pytest.raises(RegistryError, match=f"run {empty.run_id} has nothing under 'model'"):
        registry.register("reward", empty.run_id, "model", {"alignd.training_event_id": "e2"})
    with pytest.raises(RegistryError, match="unknown model kind 'critic'"):
        registry.list_versions("critic")


def test_an_unreachable_server_is_a_retryable_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = (
        "from trainers.registry import ModelRegistry, RegistryUnavailableError\n"
        f"try:\n    ModelRegistry('http://127.0.0.1:{port}').get_by_alias('reward', 'champion')\n"
        "except RegistryUnavailableError as exc:\n    print('unavailable:', exc)\n"
    )
    # MLflow retries a refused connection 7 times with exponential backoff (about four minutes) by default;
    # the child process gets a smaller budget through its own environment, ours stays untouched.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.startswith("unavailable: MLflow is unavailable, could not read the aliases of alignd-reward")


# --- alignd models ----------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alignd")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(sub: Any, name: str, handler: Any, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        # The same shape as the helper in daemon.cli.build_parser.
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON")
        return p

    add_models_commands(commands, add)
    return parser.parse_args(argv)


def _cli(tracking_uri: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    args = _parse(argv)
    assert args.handler(Settings(mlflow=MlflowSettings(tracking_uri=tracking_uri)), args) == 0
    return capsys.readouterr().out


def test_models_list_and_show(
    registry: ModelRegistry, train: Train, tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = train(accuracy=0.71)
    tags = {"alignd.training_event_id": "e1", "alignd.objective": "bradley_terry", "alignd.gates": "failed: kl"}
    registry.register("reward", run_id, "model", tags)
    registry.register("policy", train("policy"), "model", {"alignd.training_event_id": "e2", "alignd.gates": "passed"})
    capsys.readouterr()

    listed = json.loads(_cli(tracking_uri, ["models", "list", "--json"], capsys))
    assert [(r["kind"], r["version"], r["aliases"], r["gates"]) for r in listed] == [
        ("policy", 1, ["challenger"], "passed"),
        ("reward", 1, ["challenger"], "failed: kl"),
    ]
    assert listed[1]["dataset"]["from_seq"] == 0 and listed[1]["dataset"]["to_seq"] == 120
    assert listed[1]["objective"] == "bradley_terry"
    assert [
        r["kind"] for r in json.loads(_cli(tracking_uri, ["models", "list", "--kind", "reward", "--json"], capsys))
    ] == ["reward"]
    header, policy, reward = _cli(tracking_uri, ["models", "list"], capsys).splitlines()
    assert header.split() == ["KIND", "VERSION", "ALIASES", "CREATED", "(UTC)", "DATASET", "SEQ", "GATES", "OBJECTIVE"]
    assert reward.split()[:3] == ["reward", "1", "challenger"]
    assert reward.split()[5:] == ["0..120", "failed:", "kl", "bradley_terry"]

    shown = json.loads(_cli(tracking_uri, ["models", "show", "reward", "1", "--json"], capsys))
    assert shown["run_id"] == run_id and shown["source"] == f"runs:/{run_id}/model"
    assert shown["metrics"] == {"loss": 0.5, "accuracy": 0.71} and shown["params"] == {"lr": "0.0001"}
    assert shown["tags"]["alignd.training_event_id"] == "e1"
    text = _cli(tracking_uri, ["models", "show", "reward", "challenger"], capsys)
    assert text.startswith("alignd-reward version 1 (challenger)\n")
    assert f"runs:/{run_id}/model" in text and "accuracy  0.71" in text and "alignd.gates" in text


def test_models_show_names_what_is_missing(tracking_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(mlflow=MlflowSettings(tracking_uri=tracking_uri))
    args = _parse(["models", "show", "policy", "champion"])
    with pytest.raises(VersionNotFoundError, match="alignd-policy has no alias 'champion'; `alignd models list`"):
        args.handler(settings, args)
    args = _parse(["models", "show", "reward", "4"])
    with pytest.raises(VersionNotFoundError, match="alignd-reward has no version 4"):
        args.handler(settings, args)
    assert json.loads(_cli(tracking_uri, ["models", "list", "--json"], capsys)) == []


def test_the_alignd_command_reads_the_registry_from_its_settings(
    registry: ModelRegistry, train: Train, tracking_uri: str
) -> None:
    run_id = train()
    registry.register("reward", run_id, "model", {"alignd.training_event_id": "e1"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGND_")}
    env.update(ALIGND_MLFLOW_TRACKING_URI=tracking_uri, ALIGND_LOG_LEVEL="WARNING")

    def alignd(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "daemon.cli", *argv]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)

    shown = alignd("models", "show", "reward", "challenger", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["run_id"] == run_id
    missing = alignd("models", "show", "policy", "3")
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("alignd-policy has no version 3; `alignd models list` shows the versions")

"""No planted secret reaches the terminal: ``alignd`` run as a real process, DEBUG logs on, against a database,
MLflow and Kafka that are unreachable or given malformed URLs (issue 19, "Secrets").

Nothing here needs a running service: every address is a closed port (127.0.0.1:1) or a URL that cannot be
read, which is where drivers and MLflow put the URL they were given into their error messages. Each command
is kept short with the clients' own timeouts (MLflow's retries off; MLflow's database-store retries and
kafka-python's bootstrap wait cut in a prelude, as those have no setting).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_secrets import PLANTED, assert_nothing_planted, planted_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
_MAIN = "import sys\nfrom daemon.cli import main\nsys.exit(main(sys.argv[1:]))\n"
# MLflow retries a refused database connection ten times with backoff (a minute and a half), kafka-python
# waits 30 s to bootstrap: neither has an alignd setting, so the test process shortens them.
_FAST_MLFLOW_DB = "import mlflow.store.db.utils as _u\n_u.MAX_RETRY_COUNT = 2\n"
_FAST_KAFKA = (
    "from kafka import KafkaConsumer, KafkaProducer\n"
    "KafkaConsumer.DEFAULT_CONFIG['bootstrap_timeout_ms'] = 1500\n"
    "KafkaProducer.DEFAULT_CONFIG['bootstrap_timeout_ms'] = 1500\n"
)


def alignd(args: list[str], env: dict[str, str], cwd: Path, prelude: str = "", timeout: float = 90) -> tuple[int, str]:
    """Run the CLI in a fresh process; returns its exit status and everything it printed (stdout + stderr)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALIGND_", "MLFLOW_"))}
    full_env = {
        **base,
        "PYTHONPATH": str(REPO),
        "ALIGND_LOG_LEVEL": "DEBUG",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", prelude + _MAIN, *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    """The planted settings, with a migrated SQLite store (for commands that must get past the database)."""
    env = planted_env(database_url=f"sqlite:///{tmp_path / 'alignd.db'}")
    code, output = alignd(["db", "upgrade"], env, tmp_path)
    assert code == 0, output
    return env


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_config_show(json_flag: list[str], tmp_path: Path) -> None:
    config = tmp_path / "alignd.yaml"
    config.write_text(f"trainers:\n  policy:\n    hf_token: {PLANTED['hf_token']}\n")

    code, output = alignd(["--config", str(config), "config", "show", *json_flag], planted_env(), tmp_path)

    assert code == 0 and "alignd:***@127.0.0.1:1" in output and "alice:***@127.0.0.1:1" in output
    assert_nothing_planted(output)


@pytest.mark.parametrize(
    "url",
    [
        # user-info and ?password= on a closed port
        f"postgresql+psycopg://alignd:{PLANTED['db_pw']}@127.0.0.1:1/alignd?password={PLANTED['db_query_pw']}",
        # malformed: two '@' (SQLAlchemy takes the host to be "w@127.0.0.1"), a '/' in the password, a space,
        # a port that is not a number, an unclosed bracket
        f"postgresql+psycopg://alignd:{PLANTED['db_pw']}@w@127.0.0.1:1/alignd",
        f"postgresql+psycopg://alignd:{PLANTED['db_pw']}/x@127.0.0.1:1/alignd",
        f"postgresql+psycopg://alignd:{PLANTED['db_pw']} x@127.0.0.1:1/alignd",
        f"postgresql+psycopg://alignd:{PLANTED['db_pw']}@127.0.0.1:5x/alignd",
        f"postgresql+psycopg://alignd:{PLANTED['db_pw']}@[127.0.0.1/alignd",
    ],
    ids=["closed-port", "two-at", "slash", "space", "bad-port", "bracket"],
)
@pytest.mark.parametrize("command", [["events", "count"], ["db", "upgrade"]], ids=["events-count", "db-upgrade"])
def test_database_errors(url: str, command: list[str], tmp_path: Path) -> None:
    code, output = alignd(command, planted_env(database_url=url), tmp_path)

    assert code in (1, 2) and "alignd: " in output and "ALIGND_DATABASE_URL" in output, output
    assert_nothing_planted(output)


@pytest.mark.parametrize(
    ("tracking_uri", "registry_uri"),
    [
        # user-info and ?token= on a closed port (MLflow quotes the URI in its error)
        (f"http://alice:{PLANTED['tracking_pw']}@127.0.0.1:1/?token={PLANTED['tracking_token']}", None),
        # malformed: a port that is not a number, two '@'
        (f"http://alice:{PLANTED['tracking_pw']}@127.0.0.1:1x", None),
        (f"http://alice:{PLANTED['tracking_pw']}@w@127.0.0.1:1", None),
        # a database registry with a password, on a closed port
        ("sqlite:///mlflow.db", f"postgresql+psycopg://bob:{PLANTED['registry_pw']}@127.0.0.1:1/mlflow"),
    ],
    ids=["http-closed-port", "http-bad-port", "http-two-at", "registry-db-closed-port"],
)
def test_mlflow_errors(tracking_uri: str, registry_uri: str | None, sqlite_env: dict[str, str], tmp_path: Path) -> None:
    env = {**sqlite_env, "ALIGND_MLFLOW_TRACKING_URI": tracking_uri, "ALIGND_MLFLOW_REGISTRY_URI": registry_uri or ""}

    code, output = alignd(["models", "list"], env, tmp_path, prelude=_FAST_MLFLOW_DB)

    assert code == 1 and "alignd: MLflow" in output, output
    assert_nothing_planted(output)


def test_kafka_errors(sqlite_env: dict[str, str], tmp_path: Path) -> None:
    env = {**sqlite_env, "ALIGND_KAFKA_BOOTSTRAP_SERVERS": f"svc:{PLANTED['servers_pw']}@127.0.0.1:1"}

    code, output = alignd(["ingest", "--until-idle", "1"], env, tmp_path, prelude=_FAST_KAFKA)

    assert code == 1 and "alignd: Kafka error" in output and "svc:***@127.0.0.1:1" in output, output
    assert_nothing_planted(output)

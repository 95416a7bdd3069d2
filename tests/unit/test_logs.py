"""daemon/logs.py configure_logging: one handler, one format per sink, for every logger (issue 22).

Library warnings are DEBUG records; loggers that libraries gave handlers of their own (MLflow's) go through
ours; a file sink takes every line; the children learn the level, format and sink; each role of ``alignd
run`` says what it serves.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import logs
from daemon.settings import load_settings


@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, factory = root.handlers[:], root.level, logging.getLogRecordFactory()
    # configure_logging tells libraries and children through these; the test's process gets its own back.
    for name in (logs.CHILD_LOG_ENV, "MLFLOW_CONFIGURE_LOGGING", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.setLogRecordFactory(factory)
    logging.captureWarnings(False)
    logs.set_known_secrets(())


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_file_sink_takes_every_logger_in_one_format_and_children_are_told(
    restore_logging: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "alignd.log"
    mlflow_logger = logging.getLogger("mlflow.store.db.utils")
    own = logging.StreamHandler()  # what `import mlflow` installs on the mlflow logger
    logging.getLogger("mlflow").handlers[:] = [own]
    logging.getLogger("mlflow").propagate = False

    logs.configure_logging("INFO", "json", file=log)
    logging.getLogger("alignd.test").info("ours")
    mlflow_logger.info("Creating initial MLflow database tables...")

    assert [(e["logger"], e["message"]) for e in _lines(log)] == [
        ("alignd.test", "ours"),
        ("mlflow.store.db.utils", "Creating initial MLflow database tables..."),
    ]
    assert capsys.readouterr().err == ""  # nothing on the terminal
    child = json.loads(__import__("os").environ[logs.CHILD_LOG_ENV])
    assert child == {"level": "INFO", "format": "json", "file": str(log)}


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_library_warnings_are_debug_records(
    restore_logging: None, tmp_path: Path, level: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "alignd.log"
    logs.configure_logging(level, "json", file=log)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = logging._showwarning  # type: ignore[attr-defined] # pytest's own capture, undone
        warnings.warn("`torch_dtype` is deprecated! Use `dtype` instead!", FutureWarning, stacklevel=1)
    entries = _lines(log) if log.exists() else []

    assert capsys.readouterr().err == ""
    if level == "DEBUG":
        [entry] = entries
        assert entry["level"] == "DEBUG" and entry["logger"] == "py.warnings" and "torch_dtype" in str(entry["message"])
    else:
        assert entries == []


def test_each_long_running_role_says_what_it_serves_and_where() -> None:
    settings = load_settings(None, env={"ALIGND_KAFKA_BOOTSTRAP_SERVERS": "broker:9092"})

    lines = logs.role_announcements(settings, ["schedule", "ingest", "project", "monitor", "http"])

    assert len(lines) == 4  # http says its URL once it listens
    assert lines[0].startswith("schedule: reward cron 0 3 * * *")
    assert "alignd.interactions, alignd.feedback from Kafka at broker:9092" in lines[1]
    assert lines[3].startswith("monitor: detectors ") and "alignd.alerts" in lines[3]


def test_kafka_python_s_closed_socket_race_is_not_an_error(restore_logging: None, tmp_path: Path) -> None:
    log = tmp_path / "alignd.log"
    logs.configure_logging("INFO", "json", file=log)
    transport = logging.getLogger("kafka.net.transport")
    for state in ("closed", "connected"):
        try:
            None.recv(4096)  # type: ignore[attr-defined] # what _sock_recv meets once close() dropped the socket
        except AttributeError:
            transport.exception("<KafkaTCPTransport [none] (%s)>: Error receiving network data closing socket", state)

    [entry] = _lines(log)
    assert entry["level"] == "ERROR" and "(connected)" in str(entry["message"])

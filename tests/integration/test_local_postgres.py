"""The throwaway local PostgreSQL server keeps committed rows across fast and crash-like restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from daemon.local.postgres import LocalPostgres, find_bin_dir
from tests.helpers import unavailable

pytestmark = [pytest.mark.integration]
if find_bin_dir() is None:
    unavailable("PostgreSQL binaries are not installed")

REPO_ROOT = Path(__file__).resolve().parents[2]


def _write_row(url: str, value: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS probe (id serial PRIMARY KEY, value text)"))
            conn.execute(text("INSERT INTO probe (value) VALUES (:v)"), {"v": value})
    finally:
        engine.dispose()


def _read_values(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT value FROM probe ORDER BY id")).scalars())
    finally:
        engine.dispose()


@pytest.fixture
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    # tmp_path_factory lives under /tmp/pytest-of-<user> (mode 700): as root this exercises the
    # relocation path, since the postgres OS user cannot traverse it.
    server = LocalPostgres(tmp_path_factory.mktemp("pg") / "data")
    yield server
    server.destroy()


def test_row_survives_fast_stop_and_start(pg: LocalPostgres) -> None:
    pg.start()
    port = pg.port
    assert pg.is_running()
    url = pg.create_database("alignd_probe")
    assert url == f"postgresql+psycopg://postgres@127.0.0.1:{port}/alignd_probe"
    _write_row(url, "before-restart")

    pg.stop("fast")
    assert not pg.is_running()

    pg.start()
    assert pg.port == port, "the port is kept across restarts so URLs stay valid"
    assert pg.create_database("alignd_probe") == url, "create_database is idempotent"
    assert _read_values(url) == ["before-restart"]
    assert pg.data_dir.joinpath("PG_VERSION").is_file()


def test_committed_row_survives_immediate_stop(pg: LocalPostgres) -> None:
    pg.start()
    url = pg.create_database("alignd_crash")
    _write_row(url, "committed")

    pg.stop("immediate")  # crash-like: the next start runs WAL recovery
    assert not pg.is_running()

    pg.restart()
    assert _read_values(url) == ["committed"]


def test_cli_prints_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    # stderr (the CLI's log) goes to a file: an unread pipe could fill up and block the child.
    stderr = open(tmp_path / "cli.stderr", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.local.postgres", "run", "--database", "alignd_cli"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("ALIGND_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:"), line
        url = line.split("=", 1)[1]
        assert url.endswith("/alignd_cli")
        _write_row(url, "via-cli")
        assert _read_values(url) == ["via-cli"]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()

    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    _assert_port_closed(port)


def _assert_port_closed(port: int) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)
    pytest.fail(f"something still listens on port {port} after the CLI exited (pid {os.getpid()})")

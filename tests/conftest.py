"""Session fixtures: a real Kafka broker and a real PostgreSQL, started here unless given.

``KAFKA_BOOTSTRAP_SERVERS`` points at a running broker instead of starting one; ``ALIGND_TEST_POSTGRES_URL``
at a running PostgreSQL server (a URL to a database we may ``CREATE DATABASE`` from). What a fixture
starts, it stops.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from events.sql_store import SqlEventStore, create_store_engine
from migrations.runner import upgrade

REPO = Path(__file__).resolve().parents[1]


class PostgresServer:
    """Creates a fresh database per test on a server we started or were given."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    def create_database(self, name: str) -> str:
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    from daemon.local.kafka import LocalKafka

    broker = LocalKafka(tmp_path_factory.mktemp("kafka")).start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    given = os.environ.get("ALIGND_TEST_POSTGRES_URL")
    if given:
        yield PostgresServer(given)
        return
    from daemon.local.postgres import LocalPostgres

    server = LocalPostgres(tmp_path_factory.mktemp("pg") / "data").start()
    try:
        yield PostgresServer(server.url("postgres"))
    finally:
        server.stop("fast")


@pytest.fixture
def new_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """Factory: an empty database of the given kind ("sqlite" or "postgresql"), not yet migrated."""

    def make(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / f'alignd-{uuid.uuid4().hex[:8]}.db'}"
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return server.create_database(f"alignd_{uuid.uuid4().hex[:12]}")

    return make


@pytest.fixture(params=["sqlite", "postgresql"])
def db_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(db_kind: str, new_db_url: Callable[[str], str]) -> str:
    """A migrated, empty database, once on SQLite and once on PostgreSQL."""
    url = new_db_url(db_kind)
    engine = create_store_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[SqlEventStore]:
    store = SqlEventStore.from_url(db_url)
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite database with its tables made once; creating them takes seconds, copying doesn't."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}")
    client.search_experiments()  # creates the tracking tables
    client.search_registered_models()  # and the registry's
    return path


@pytest.fixture
def tracking_uri(mlflow_template: Path, tmp_path: Path) -> str:
    """A real MLflow backend of this test's own (a copy of the template)."""
    import shutil

    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def registry(tracking_uri: str, tmp_path: Path) -> object:
    from trainers.registry import ModelRegistry

    # An explicit artifact root: MLflow's default for a database URI is ./mlruns in the current directory.
    return ModelRegistry(tracking_uri, artifact_location=(tmp_path / "artifacts").as_uri())

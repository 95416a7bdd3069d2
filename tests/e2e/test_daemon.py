"""``alignd run`` as deployed: real processes, a real broker, SIGTERM (the demo's end to end is in
test_demo_output.py).

* ingestion under ``alignd run``: SIGTERM mid-stream exits 0, and a restart stores every valid message
  exactly once;
* a training job started by the scheduler: SIGTERM stops it, records it (``training.failed``, resumable),
  exits 0; the next ``alignd run`` resumes it from its checkpoint and registers the version.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from events.sql_store import SqlEventStore, create_store_engine
from migrations.runner import upgrade
from tests.helpers import alignd, feedback, interaction, produce, settings_env, unique_topics, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Each test's timeout is above the sum of its own waits (plus the services' start-up), so a hang fails at the
# wait that names what did not happen, and the global timeout (600 s) never cuts a wait short.


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'alignd.db'}"
    engine = create_store_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def _types(url: str) -> dict[str, int]:
    store = SqlEventStore.from_url(url)
    try:
        return store.count_by_type()
    finally:
        store.dispose()


def _payloads(url: str, type_: str) -> list[dict[str, Any]]:
    store = SqlEventStore.from_url(url)
    try:
        return [dict(e.event.payload) for e in store.read(0, types=[type_], limit=100_000)]
    finally:
        store.dispose()


@pytest.mark.timeout(720)  # waits: 120 + 120 + 300 s
def test_sigterm_during_ingestion_exits_cleanly_and_loses_nothing(
    sqlite_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = unique_topics(kafka_bootstrap, partitions=2)
    env = settings_env(
        sqlite_url,
        kafka_bootstrap,
        topics,
        ALIGND_HTTP_PORT="0",
        ALIGND_MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        ALIGND_MONITORS_DETECTORS="pii,negative_feedback_spike",
        ALIGND_LOG_LEVEL="WARNING",
    )
    messages = [interaction(f"r{i}", i=i) for i in range(3000)]
    produce(kafka_bootstrap, topics["interactions"], messages)
    produce(kafka_bootstrap, topics["feedback"], [feedback(f"r{i}", "thumbs", "up", i=i) for i in range(0, 3000, 3)])
    daemon = alignd(["run", "--role", "ingest", "--role", "project", "--role", "monitor"], env)
    try:
        wait_until(lambda: _types(sqlite_url).get("interaction.logged", 0) > 0, timeout=120)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=120) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    again = alignd(["ingest", "--until-idle", "5"], env)
    assert again.wait(timeout=300) == 0
    counts = _types(sqlite_url)
    assert counts["interaction.logged"] == 3000 and counts["feedback.received"] == 1000


@pytest.mark.timeout(900)  # waits: 240 + 120 + 300 + 120 s
def test_sigterm_during_a_scheduled_training_job_records_it_and_the_next_run_resumes(
    sqlite_url: str, tmp_path: Path
) -> None:
    from events.codec import decode_inbound
    from events.projections import ProjectionRunner
    from tests.helpers import encode

    store = SqlEventStore.from_url(sqlite_url)
    inbound = []
    for i in range(200):
        inbound.append(interaction(f"r{i}", i=i))
        inbound.append(
            feedback(f"r{i}", "preference", {"chosen": f"A kind, complete answer {i}.", "rejected": "No."}, i=i)
        )
    store.append([decode_inbound(encode(m), fallback_event_id=f"t:0:{n}") for n, m in enumerate(inbound)])
    ProjectionRunner(store).catch_up()
    store.dispose()
    env = {
        "ALIGND_DATABASE_URL": sqlite_url,
        "ALIGND_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "ALIGND_MLFLOW_ARTIFACT_LOCATION": (tmp_path / "artifacts").as_uri(),
        "ALIGND_TRAINERS_WORK_DIR": str(tmp_path / "work"),
        "ALIGND_SCHEDULE_REWARD_AFTER_PAIRS": "10",
        "ALIGND_SCHEDULE_POLICY_AFTER_EXAMPLES": "0",
        "ALIGND_SCHEDULE_REWARD_CRON": "",
        "ALIGND_SCHEDULE_POLICY_CRON": "",
        "ALIGND_SCHEDULE_CHECK_INTERVAL_S": "1",
        "ALIGND_SCHEDULE_LEASE_S": "3",
        "ALIGND_HTTP_PORT": "0",
        "ALIGND_LOG_LEVEL": "WARNING",
    }
    config = tmp_path / "alignd.yaml"
    config.write_text(json.dumps({"trainers": {"reward": {"max_steps": 40, "batch_size": 4, "checkpoint_every": 2}}}))
    env["ALIGND_CONFIG"] = str(config)
    checkpoints = tmp_path / "work" / "checkpoints"
    first = alignd(["run", "--role", "schedule", "--shutdown-timeout", "60"], env)
    try:
        wait_until(lambda: any(checkpoints.glob("*/checkpoint.pt")), timeout=240)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
    [failed] = _payloads(sqlite_url, "training.failed")
    assert failed["reason"] == "daemon shutting down" and failed["resumable"] is True

    second = alignd(["run", "--role", "schedule"], env)
    try:
        wait_until(lambda: _types(sqlite_url).get("model.registered", 0) == 1, timeout=300)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=120) == 0
    [completed] = _payloads(sqlite_url, "training.completed")
    assert completed["resumed_from"] >= 2 and completed["job_id"] == failed["job_id"]

"""The ``vllm-sync`` role against the real broker, a real MLflow registry (SQLite, artifacts in a tmp folder), a
SQLite event store, and a local HTTP server that checks requests as vLLM's handlers do (tests/fake_vllm.py: vLLM
itself needs a GPU and model weights these machines lack).

Champion moves are made as operators make them (``Governance.promote`` / ``rollback``) and reach the topic through
the models outbox; the role runs under the daemon's supervisor, built by ``daemon.run.build``.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from daemon import bootstrap
from daemon.bootstrap import App
from daemon.outbox import OutboxPublisher
from daemon.run import DEFAULT_ROLES, ROLES, build
from daemon.settings import DatabaseSettings, KafkaSettings, MlflowSettings, Settings, TopicsSettings, VllmSettings
from daemon.vllm_sync import VllmSyncPart
from events.errors import ConfigurationError
from events.names import SERVING_ADAPTER_LOADED
from events.sql_store import SqlEventStore, create_store_engine
from migrations.runner import upgrade
from tests.fake_vllm import FakeVllm
from tests.helpers import create_topics, wait_until
from trainers.governance import MODEL_EVENT_TYPES, Governance

pytestmark = pytest.mark.integration

PASSED = {"alignd.gates": "passed", "alignd.gate.safety": "pass 0.01 (<= 0.05)"}
SERVED = "alignd-policy-champion"
KEY = "s3cret-vllm-key"


@dataclass
class Rig:
    """The daemon's side: settings, the object graph, the outbox to the models topic, and tiny adapters."""

    settings: Settings
    app: App
    outbox: OutboxPublisher
    governance: Governance
    tmp: Path

    @property
    def store(self) -> SqlEventStore:
        return self.app.store

    def register(self, *, artifacts_gone: bool = False) -> str:
        """A new policy version whose artifacts are laid out as training writes them (the PEFT adapter under
        ``adapter/``); ``artifacts_gone``: deleted from the artifact store after registration."""
        registry = self.app.registry
        folder = self.tmp / f"out-{uuid.uuid4().hex[:6]}"
        (folder / "adapter").mkdir(parents=True)
        (folder / "adapter" / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
        (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
        (folder / "manifest.json").write_text('{"kind": "policy"}')
        with registry.start_run("policy", "policy-test", {}, {}) as run:
            run.log_artifacts(folder, "model")
        tags = {"alignd.training_event_id": uuid.uuid4().hex, **PASSED}
        version = registry.register("policy", run.run_id, "model", tags).version
        if artifacts_gone:
            [stored] = [p for p in (self.tmp / "artifacts").rglob("model") if run.run_id in str(p)]
            shutil.rmtree(stored)
        return version

    def caught_up(self) -> bool:
        """Whether the sidecar's group has committed every message of the models topic."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers, group_id=self.settings.vllm.group_id
        )
        try:
            topic = self.settings.topics.models
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            ends = consumer.end_offsets(parts)
            return bool(parts) and all((consumer.committed(tp) or 0) == ends[tp] for tp in parts)
        finally:
            consumer.close()

    def promote(self, version: str) -> str:
        change = self.governance.promote("policy", version, reason="better", actor="ana")
        self.outbox.publish()
        return change.event_id

    def rollback(self) -> str:
        change = self.governance.rollback("policy", reason="regression", actor="bo")
        self.outbox.publish()
        return change.event_id

    def path(self, version: str) -> str:
        return str(self.tmp / "adapters" / f"alignd-policy-v{version}")

    def loaded_events(self) -> list[dict[str, Any]]:
        return [dict(s.event.payload) for s in self.store.read(0, limit=1000, types=[SERVING_ADAPTER_LOADED])]


@pytest.fixture
def fake() -> Iterator[FakeVllm]:
    server = FakeVllm(api_key=KEY).start()
    yield server
    server.stop()


def make_rig(tmp_path: Path, tracking_uri: str, kafka_bootstrap: str, vllm: FakeVllm, **vllm_settings: Any) -> Rig:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    engine = create_store_engine(url)
    upgrade(engine)
    engine.dispose()
    topic = f"t-{uuid.uuid4().hex[:10]}.models"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    settings = Settings(
        database=DatabaseSettings(url=url),
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, session_timeout_ms=6000),
        topics=TopicsSettings(models=topic),
        mlflow=MlflowSettings(tracking_uri=tracking_uri, artifact_location=(tmp_path / "artifacts").as_uri()),
        vllm=VllmSettings(
            **{
                "url": vllm.url,
                "adapter_dir": str(tmp_path / "adapters"),
                "group_id": f"vllm-sync-{uuid.uuid4().hex[:8]}",
                "retry_initial_s": 0.2,
                "retry_max_s": 0.5,
                "check_interval_s": 1.0,
                **vllm_settings,
            }
        ),
    )
    app = bootstrap.build(settings)
    producer = app.kafka.producer()
    outbox = OutboxPublisher(app.store, producer, topic, MODEL_EVENT_TYPES)
    return Rig(settings, app, outbox, Governance(app.store, app.registry), tmp_path)


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.outbox.producer.close(timeout=5)
        rig.app.close()


def serves(vllm: FakeVllm, path: str) -> bool:
    return vllm.served_path(SERVED) == path


def test_promotions_and_a_rollback_swap_the_served_adapter_with_the_key(
    tmp_path: Path, tracking_uri: str, kafka_bootstrap: str, fake: FakeVllm, rigs: list[Rig]
) -> None:
    # Only the events move it here (the periodic check, which would race them, is left to the next test).
    rig = make_rig(tmp_path, tracking_uri, kafka_bootstrap, fake, api_key=KEY, check_interval_s=600.0)
    rigs.append(rig)
    v1, v2 = rig.register(), rig.register()
    supervisor = build(rig.app, ["vllm-sync"])
    supervisor.start()
    try:
        promoted_1 = rig.promote(v1)
        wait_until(lambda: serves(fake, rig.path(v1)), 30, message="v1 served")
        promoted_2 = rig.promote(v2)
        wait_until(lambda: serves(fake, rig.path(v2)), 30, message="v2 swapped in")
        rolled_back = rig.rollback()
        wait_until(lambda: serves(fake, rig.path(v1)), 30, message="back to v1")
        wait_until(lambda: len(rig.loaded_events()) == 3, 10, message="three serving.adapter_loaded")
    finally:
        assert supervisor.stop(30)

    sidecar_calls = list(fake.seen)
    # A client selects the adapter by its name as `model`, and gets the champion's weights.
    answer = requests.post(
        f"{fake.url}/v1/chat/completions",
        json={"model": SERVED, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=5,
    )
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == rig.path(v1)
    assert requests.get(f"{fake.url}/v1/models", timeout=5).status_code == 401  # the key is required

    loads = fake.requests_to("/v1/load_lora_adapter")
    assert [(r.body["lora_name"], r.body["lora_path"], r.body["load_inplace"]) for r in loads] == [
        (SERVED, rig.path(v1), True),
        (SERVED, rig.path(v2), True),
        (SERVED, rig.path(v1), True),
    ]
    assert not fake.requests_to("/v1/unload_lora_adapter")  # in place: the name was never unserved
    assert sidecar_calls and all(s.headers.get("authorization") == f"Bearer {KEY}" for s in sidecar_calls)
    assert (Path(rig.path(v1)) / "adapter_config.json").is_file()

    events = rig.loaded_events()
    assert [(e["version"], e["previous_version"], e["trigger_event_id"]) for e in events] == [
        (v1, None, promoted_1),
        (v2, v1, promoted_2),
        (v1, v2, rolled_back),
    ]
    assert {(e["served_name"], e["method"], e["url"]) for e in events} == {(SERVED, "load_inplace", fake.url)}
    lags = [e["lag_s"] for e in events]
    assert all(0 < lag < 30 for lag in lags), lags
    print(f"\nevent occurred_at -> adapter loaded: {', '.join(f'{lag:.2f} s' for lag in lags)}")  # noqa: T201


def test_a_late_sidecar_reconciles_and_an_outage_loses_no_event(
    tmp_path: Path, tracking_uri: str, kafka_bootstrap: str, fake: FakeVllm, rigs: list[Rig], caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="daemon.vllm_sync")
    fake.api_key = None
    rig = make_rig(tmp_path, tracking_uri, kafka_bootstrap, fake)
    rigs.append(rig)
    v1, v2 = rig.register(), rig.register()
    rig.promote(v1)  # before the sidecar runs: it must find the champion on its own
    supervisor = build(rig.app, ["vllm-sync"])
    supervisor.start()
    try:
        wait_until(lambda: serves(fake, rig.path(v1)), 30, message="v1 reconciled at start")
        wait_until(rig.caught_up, 30, message="the v1 event consumed")
        fake.stop()  # vLLM goes down...
        promoted_2 = rig.promote(v2)  # ...while the champion moves
        wait_until(lambda: "did not answer" in caplog.text, 20, message="a retried failure")
        fake.start()  # back on the same port, without its runtime adapters
        wait_until(lambda: serves(fake, rig.path(v2)), 30, message="v2 once vLLM is back")
        fake.stop()
        fake.start()  # a restart with no champion move: the periodic check loads the champion again
        wait_until(lambda: serves(fake, rig.path(v2)), 30, message="v2 again after a vLLM restart")
        wait_until(lambda: len(rig.loaded_events()) == 3, 10, message="three serving.adapter_loaded")
    finally:
        assert supervisor.stop(30)

    events = rig.loaded_events()
    assert [(e["version"], e["trigger_event_id"]) for e in events] == [(v1, None), (v2, promoted_2), (v2, None)]
    assert events[0]["lag_s"] is None and events[1]["lag_s"] > 0
    assert rig.caught_up()  # every message committed, the one that waited for vLLM included


def test_an_outage_past_the_poll_interval_keeps_the_role_in_its_group_and_old_adapters_are_pruned(
    tmp_path: Path,
    tracking_uri: str,
    kafka_bootstrap: str,
    fake: FakeVllm,
    rigs: list[Rig],
    caplog: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from daemon import vllm_sync

    # The broker drops a consumer that does not poll for this long; vLLM stays down for three times as long.
    monkeypatch.setattr(vllm_sync, "MAX_POLL_INTERVAL_MS", 3000)
    caplog.set_level(logging.WARNING, logger="kafka")
    caplog.set_level(logging.INFO, logger="daemon.vllm_sync")  # last: the capture handler takes this level
    fake.api_key = None
    rig = make_rig(tmp_path, tracking_uri, kafka_bootstrap, fake, keep_adapters=2, check_interval_s=60.0)
    rigs.append(rig)
    v1, v2, v3 = rig.register(), rig.register(), rig.register()
    supervisor = build(rig.app, ["vllm-sync"])
    supervisor.start()
    try:
        rig.promote(v1)
        wait_until(lambda: serves(fake, rig.path(v1)), 30, message="v1 served")
        rig.promote(v2)
        wait_until(lambda: serves(fake, rig.path(v2)), 30, message="v2 served")
        fake.stop()
        rig.promote(v3)
        wait_until(lambda: "did not answer" in caplog.text, 20, message="a retried failure")
        time.sleep(9)  # three poll intervals without vLLM
        fake.start()
        wait_until(lambda: serves(fake, rig.path(v3)), 30, message="v3 once vLLM is back")
        wait_until(rig.caught_up, 30, message="every event committed")
        assert supervisor.status()["vllm-sync"]["restarts"] == 0, supervisor.status()
        # It kept polling (paused) while it waited: the broker never saw it stall and never moved its partitions.
        assert "Consumer poll timeout has expired" not in caplog.text
    finally:
        assert supervisor.stop(30)
    kept = sorted(p.name for p in (tmp_path / "adapters").iterdir() if not p.name.startswith("."))
    assert kept == [f"alignd-policy-v{v2}", f"alignd-policy-v{v3}"]
    assert "removed 1 older adapter folder(s)" in caplog.text


def test_an_unservable_version_is_skipped_and_an_old_server_is_swapped_by_unload_and_load(
    tmp_path: Path, tracking_uri: str, kafka_bootstrap: str, rigs: list[Rig], caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="daemon.vllm_sync")
    old = FakeVllm(legacy=True, runtime_lora_updating=False).start()
    try:
        rig = make_rig(tmp_path, tracking_uri, kafka_bootstrap, old)
        rigs.append(rig)
        v1, empty, v3 = rig.register(), rig.register(artifacts_gone=True), rig.register()
        supervisor = build(rig.app, ["vllm-sync"])
        supervisor.start()
        try:
            rig.promote(v1)
            wait_until(lambda: "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in caplog.text, 20, message="routes absent, said")
            assert old.served_path(SERVED) is None
            old.runtime_lora_updating = True  # the operator restarts vLLM with runtime updating on
            wait_until(lambda: serves(old, rig.path(v1)), 30, message="v1 once the routes exist")
            wait_until(rig.caught_up, 30, message="the v1 event consumed")
            skipped = rig.promote(empty)
            wait_until(lambda: f"event {skipped}" in caplog.text and "skipped" in caplog.text, 30, message="skip")
            rig.promote(v3)
            wait_until(lambda: serves(old, rig.path(v3)), 30, message="v3 after the skipped version")
            wait_until(lambda: len(rig.loaded_events()) == 2, 10, message="two serving.adapter_loaded")
        finally:
            assert supervisor.stop(30)
    finally:
        old.stop()

    [error] = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "daemon.vllm_sync"]
    assert f"event {skipped} (alignd-policy v{empty})" in error.getMessage()
    assert f"version {empty} has no" in error.getMessage()
    assert [(e["version"], e["method"]) for e in rig.loaded_events()] == [
        (v1, "load_inplace"),
        (v3, "unload_then_load"),
    ]
    assert [r.body["lora_name"] for r in old.requests_to("/v1/unload_lora_adapter")] == [SERVED]
    assert not (tmp_path / "adapters" / f"alignd-policy-v{empty}").exists()
    assert not [p for p in (tmp_path / "adapters").iterdir() if p.name.startswith(".partial")]


def test_the_role_runs_only_when_named_and_needs_a_url() -> None:
    assert "vllm-sync" in ROLES and "vllm-sync" not in DEFAULT_ROLES
    with pytest.raises(ConfigurationError, match="ALIGND_VLLM_URL"):
        VllmSyncPart(bootstrap.build(Settings()))
    shown = Settings(vllm=VllmSettings(url="http://vllm:8000", api_key=KEY))
    assert KEY not in repr(shown) and shown.redacted()["vllm"]["api_key"] == "**********"
    assert KEY in shown.known_secrets(env={})

"""Promotion, rollback, alias audit and enforcement against real MLflow (SQLite), a SQLite event store and Kafka.

MLflow's database is built once per module and copied per test (as in test_registry.py), so every test starts
with no versions. The one double is :class:`FlakyRegistry`, for the retry path only: it fails the first calls
with the error a down MLflow server raises, then delegates to the real registry.
"""

from __future__ import annotations

import argparse
import getpass
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from daemon import bootstrap
from daemon.cli.models import add_models_commands
from daemon.enforcement import EnforcementExecutor, training_paused
from daemon.outbox import OutboxPublisher
from daemon.settings import DatabaseSettings, MlflowSettings, Settings, TopicsSettings
from events.model import Event
from events.names import ANOMALY_DETECTED, ENFORCEMENT_REQUESTED
from events.read_models import rolled_back_versions
from events.sql_store import SqlEventStore, create_store_engine
from migrations.runner import upgrade
from tests.helpers import consume_all, create_topics
from trainers.governance import Governance, NothingToRollBackError, PromotionRefusedError
from trainers.registry import ModelRegistry, RegistryUnavailableError

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
PASSED = {
    "alignd.gates": "passed",
    "alignd.gate.safety": "pass 0.01 (<= 0.05)",
    "alignd.gate.kl": "pass 0.03 (<= 0.10)",
}
UNSAFE = {"alignd.gates": "failed: safety", "alignd.gate.safety": "fail 0.12 (<= 0.05)", "alignd.gate.kl": "pass 0.03"}


@pytest.fixture
def settings(tracking_uri: str, tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    engine = create_store_engine(url)
    upgrade(engine)
    engine.dispose()
    mlflow = MlflowSettings(tracking_uri=tracking_uri, artifact_location=(tmp_path / "artifacts").as_uri())
    return Settings(database=DatabaseSettings(url=url), mlflow=mlflow)


@pytest.fixture
def registry(settings: Settings) -> ModelRegistry:
    return bootstrap.build(settings).registry


@pytest.fixture
def store(settings: Settings) -> Iterator[SqlEventStore]:
    store = bootstrap.open_store(settings)
    yield store
    store.dispose()


@pytest.fixture
def governance(store: SqlEventStore, registry: ModelRegistry) -> Governance:
    return Governance(store, registry, clock=lambda: T0)


@pytest.fixture
def register(registry: ModelRegistry, store: SqlEventStore, tmp_path: Path) -> Any:
    """Factory: a new version with the given gate tags, registered as the training job does (challenger moves,
    then ``model.registered``); returns the version number."""
    folder = tmp_path / "model-out"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')

    def make(gates: dict[str, str], kind: str = "policy") -> str:
        with registry.start_run(kind, f"{kind}-test", {}, {}) as run:
            run.log_artifacts(folder, "model")
        version = registry.register(kind, run.run_id, "model", {"alignd.training_event_id": uuid.uuid4().hex, **gates})
        payload = {"kind": kind, "name": version.name, "version": version.version, "aliases": list(version.aliases)}
        store.append(
            [Event(f"model.registered:{version.name}:{version.version}", "model.registered", T0, "t", payload)]
        )
        return version.version

    return make


def champion(registry: ModelRegistry, kind: str = "policy") -> str | None:
    found = registry.get_by_alias(kind, "champion")
    return found.version if found else None


def events_of(store: SqlEventStore, *types: str) -> list[Event]:
    return [s.event for s in store.read(0, limit=10_000, types=types)]


# --- promotion and rollback -----------------------------------------------------------------------------


def test_a_failing_gate_refuses_the_promotion_and_force_records_it_as_forced(
    governance: Governance, registry: ModelRegistry, store: SqlEventStore, register: Any
) -> None:
    register(PASSED)
    first = governance.promote("policy", "challenger", reason="first champion", actor="ana")
    assert first.appended and first.event_id == "model.promoted:alignd-policy@champion:1:1"
    register(UNSAFE)

    with pytest.raises(PromotionRefusedError, match=r"version 2: gates failed: safety \(fail 0.12") as refused:
        governance.promote("policy", "challenger", reason="looks better", actor="ana")
    assert refused.value.decision.failed_gates == ("safety",)
    assert champion(registry) == "1" and len(events_of(store, "model.promoted")) == 1

    forced = governance.promote("policy", "2", reason="hotfix for a prompt leak", actor="ana", force=True)
    assert champion(registry) == "2"
    p = forced.payload
    assert (p["forced"], p["failed_gates"], p["version"], p["previous_version"]) == (True, ["safety"], "2", "1")
    assert (p["actor"], p["reason"], p["via"], p["alias"]) == ("ana", "hotfix for a prompt leak", "cli", "champion")
    # the same command again changes nothing and returns what was recorded
    again = governance.promote("policy", "2", reason="hotfix for a prompt leak", actor="ana", force=True)
    assert not again.appended and again.event_id == forced.event_id
    assert [e.event_id for e in events_of(store, "model.promoted")] == [first.event_id, forced.event_id]


def test_rollback_restores_the_previous_champion_and_a_retry_does_not_roll_back_twice(
    governance: Governance, registry: ModelRegistry, store: SqlEventStore, register: Any
) -> None:
    with pytest.raises(NothingToRollBackError, match="alignd-policy has no champion"):
        governance.rollback("policy", reason="r", actor="ana")
    for _ in range(3):
        governance.promote("policy", register(PASSED), reason="better", actor="ana")
    assert champion(registry) == "3"

    back = governance.rollback("policy", reason="toxicity spike on v3", actor="bo")
    assert champion(registry) == "2" and back.type == "model.rolled_back"
    assert (back.payload["version"], back.payload["previous_version"], back.payload["actor"]) == ("2", "3", "bo")
    assert back.event_id == "model.rolled_back:alignd-policy@champion:4:2"
    retried = governance.rollback("policy", reason="toxicity spike on v3", actor="bo")
    assert not retried.appended and champion(registry) == "2"

    further = governance.rollback("policy", reason="v2 is bad too", actor="bo")
    assert champion(registry) == "1" and further.payload["previous_version"] == "2"
    with pytest.raises(NothingToRollBackError, match="name one with --to VERSION"):
        governance.rollback("policy", reason="and again", actor="bo")
    chosen = governance.rollback("policy", reason="back to 3 after the fix", actor="bo", to_version="3")
    assert champion(registry) == "3" and chosen.payload["failed_gates"] == [] and not chosen.payload["forced"]


# --- aliases moved in MLflow ----------------------------------------------------------------------------


def test_an_alias_moved_in_mlflow_is_recorded_once_with_actor_mlflow(
    governance: Governance, registry: ModelRegistry, store: SqlEventStore, register: Any, tracking_uri: str
) -> None:
    register(PASSED)
    register(UNSAFE)
    register(PASSED, kind="reward")
    governance.promote("policy", "1", reason="first", actor="ana")
    assert governance.sync_aliases() == []  # everything alignd did is recorded

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias("alignd-policy", "champion", "2")  # someone in the MLflow UI
    [moved] = governance.sync_aliases()
    assert moved.type == "model.promoted" and moved.event_id == "model.promoted:alignd-policy@champion:2:2"
    p = moved.payload
    assert (p["actor"], p["via"], p["reason"]) == ("mlflow", "mlflow", "alias moved in MLflow")
    assert (p["previous_version"], p["version"]) == ("1", "2")
    assert (p["forced"], p["failed_gates"]) == (True, ["safety"])  # MLflow let it past a failed gate
    assert governance.sync_aliases() == []
    # ...and that raised an alert, once, naming the gate (sync_aliases returns the moves, not the alerts)
    [alert] = events_of(store, "anomaly.detected")
    assert alert.event_id == f"anomaly:governance:{moved.event_id}" and alert.payload["severity"] == "critical"
    assert "is refused by its gates: gates failed: safety (fail 0.12" in alert.payload["summary"]
    assert alert.payload["statistics"]["failed_gates"] == ["safety"] and alert.payload["evidence"] == [moved.event_id]

    client.set_registered_model_alias("alignd-policy", "champion", "1")
    client.set_registered_model_alias("alignd-reward", "champion", "1")
    synced = {
        (e.type, e.payload["name"], e.payload["previous_version"], e.payload["version"])
        for e in governance.sync_aliases()
    }
    assert synced == {("model.rolled_back", "alignd-policy", "2", "1"), ("model.promoted", "alignd-reward", None, "1")}
    client.delete_registered_model_alias("alignd-policy", "challenger")
    [deleted] = governance.sync_aliases(["policy"])
    assert (deleted.type, deleted.payload["alias"], deleted.payload["version"]) == (
        "model.rolled_back",
        "challenger",
        None,
    )
    assert governance.sync_aliases() == []
    # a rollback now skips 2, which was rolled back from in MLflow: there is no earlier champion than 1
    with pytest.raises(NothingToRollBackError):
        governance.rollback("policy", reason="r", actor="ana")
    # moves to versions whose gates passed and that were never rolled back raised nothing
    assert len(events_of(store, "anomaly.detected")) == 1


def test_a_version_rolled_back_then_promoted_again_in_mlflow_raises_one_alert(
    governance: Governance,
    registry: ModelRegistry,
    store: SqlEventStore,
    register: Any,
    tracking_uri: str,
    kafka_bootstrap: str,
) -> None:
    from kafka import KafkaProducer

    for _ in range(2):
        governance.promote("policy", register(PASSED), reason="better", actor="ana")
    back = governance.rollback("policy", reason="toxicity spike on v2", actor="alignd.enforcement", via="enforcement")
    assert champion(registry) == "1" and list(rolled_back_versions(store, "alignd-policy")) == ["2"]
    assert rolled_back_versions(store, "alignd-policy")["2"].event_id == back.event_id
    assert events_of(store, "anomaly.detected") == []

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias("alignd-policy", "champion", "2")  # someone re-promotes it in the MLflow UI
    [moved] = governance.sync_aliases()
    assert (moved.type, moved.payload["version"], moved.payload["actor"]) == ("model.promoted", "2", "mlflow")
    [alert] = events_of(store, "anomaly.detected")
    p = alert.payload
    assert alert.event_id == f"anomaly:governance:{moved.event_id}" and alert.source == "alignd.governance"
    assert (p["detector"], p["subject"], p["severity"]) == ("governance", "model:alignd-policy@2", "critical")
    assert "alignd-policy champion moved in MLflow to version 2 (from 1)" in p["summary"]
    assert "rolled back by alignd.enforcement (toxicity spike on v2)" in p["summary"]
    assert "alignd models rollback policy" in p["summary"]
    assert p["evidence"] == [moved.event_id, back.event_id]
    stats = p["statistics"]
    assert (stats["model"], stats["version"], stats["rolled_back_by"]) == ("alignd-policy", "2", back.event_id)
    assert stats["rollback_reason"] == "toxicity spike on v2" and "failed_gates" not in stats
    # another sync, or a second process noticing the same move: still one alert
    assert governance.sync_aliases() == []
    assert Governance(store, registry, clock=lambda: T0).sync_aliases() == []
    store.append([alert])  # the same id again is a duplicate, kept once
    assert len(events_of(store, "anomaly.detected")) == 1
    # the MLflow move did not clear the mark; a decision made through alignd does, and raises nothing
    assert list(rolled_back_versions(store, "alignd-policy")) == ["2"]
    governance.rollback("policy", reason="v2 is not cleared yet", actor="bo", to_version="1")
    governance.promote("policy", "2", reason="toxicity fixed in the system prompt", actor="bo")
    assert champion(registry) == "2" and rolled_back_versions(store, "alignd-policy") == {}
    assert len(events_of(store, "anomaly.detected")) == 1

    # it goes to the alerts topic like any alert (the daemon's alerts outbox: anomalies and requests)
    topic = f"t-{uuid.uuid4().hex[:8]}.alerts"
    create_topics(kafka_bootstrap, [topic], partitions=1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        outbox = OutboxPublisher(store, producer, topic, [ANOMALY_DETECTED, ENFORCEMENT_REQUESTED])
        assert outbox.publish() == 1 and outbox.publish() == 0
    finally:
        producer.close(5)
    [record] = consume_all(kafka_bootstrap, topic, expected=1)
    assert json.loads(record.value)["event_id"] == alert.event_id and record.key == b"model:alignd-policy@2"


# --- enforcement ----------------------------------------------------------------------------------------


def request(action: str, n: int = 0, **target: Any) -> Event:
    payload = {
        "action": action,
        "target": target,
        "reason": f"toxicity on alignd-policy rose to 9% ({n})",
        "anomaly_id": f"anomaly:{n}",
        "detector": "toxicity",
        "severity": "critical",
        "evidence": ["e1", "e2"],
    }
    return Event(f"enforcement:{action}:{n}", "enforcement.requested", T0, "alignd.monitors", payload)


def last_request_seq(store: SqlEventStore) -> int:
    return store.read(0, limit=10_000, types=["enforcement.requested"])[-1].seq


def applied(store: SqlEventStore) -> dict[str, dict[str, Any]]:
    return {e.event_id: dict(e.payload) for e in events_of(store, "enforcement.applied")}


def test_enforcement_rolls_back_pauses_and_records_every_outcome(
    governance: Governance, registry: ModelRegistry, store: SqlEventStore, register: Any
) -> None:
    for _ in range(2):
        governance.promote("policy", register(PASSED), reason="better", actor="ana")
    store.append(
        [
            request("rollback_champion", 1, model="alignd-policy", version="2"),
            request("pause_training", 2, trainers="all"),
            request("quarantine_user", 3, user="u-13"),
            request("publish_guard_rule", 4, detector="pii"),
            request("rollback_champion", 5, model="alignd-policy", version="2"),  # about a champion already gone
            request("reticulate_splines", 6),
        ]
    )
    executor = EnforcementExecutor(store, governance, max_attempts=2, backoff=0.0)
    assert executor.step() == 6
    assert champion(registry) == "1"
    done = applied(store)
    rollback = done["enforcement.applied:enforcement:rollback_champion:1"]
    assert (rollback["outcome"], rollback["attempts"], rollback["actor"]) == ("applied", 1, "alignd.enforcement")
    assert rollback["reason"].startswith("toxicity on alignd-policy") and rollback["error"] is None
    [rolled] = events_of(store, "model.rolled_back")
    assert rollback["result"]["event_id"] == rolled.event_id
    assert (rolled.payload["via"], rolled.payload["request_event_id"]) == (
        "enforcement",
        "enforcement:rollback_champion:1",
    )
    assert done["enforcement.applied:enforcement:quarantine_user:3"]["detail"] == "applied by the quarantine projection"
    assert done["enforcement.applied:enforcement:publish_guard_rule:4"]["outcome"] == "applied"
    stale = done["enforcement.applied:enforcement:rollback_champion:5"]
    assert stale["outcome"] == "skipped" and "champion is version 1, not 2" in stale["detail"]
    assert done["enforcement.applied:enforcement:reticulate_splines:6"]["outcome"] == "skipped"
    assert training_paused(store) == (True, "toxicity on alignd-policy rose to 9% (2)")
    assert executor.position() == last_request_seq(store)

    # a restart (or a replay that lost the checkpoint) acts on nothing twice
    assert EnforcementExecutor(store, governance).step() == 0
    store.append([request("resume_training", 7)])
    assert executor.step() == 1 and training_paused(store) == (False, None)
    assert champion(registry) == "1" and len(events_of(store, "model.rolled_back")) == 1


class FlakyRegistry:
    """The real registry, except that its first ``failures`` calls fail as an unreachable MLflow does."""

    def __init__(self, real: ModelRegistry, failures: int) -> None:
        self.real, self.failures, self.calls = real, failures, 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.real, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls <= self.failures:
                raise RegistryUnavailableError("MLflow is unavailable, could not read the aliases: connection refused")
            return method(*args, **kwargs)

        return call


def test_a_failing_registry_is_retried_audited_and_never_holds_up_the_rest(
    registry: ModelRegistry, store: SqlEventStore, register: Any
) -> None:
    healthy = Governance(store, registry, clock=lambda: T0)
    for _ in range(2):
        healthy.promote("policy", register(PASSED), reason="better", actor="ana")
    flaky = FlakyRegistry(registry, failures=5)
    now = [0.0]
    slept: list[float] = []
    executor = EnforcementExecutor(
        store,
        Governance(store, flaky, clock=lambda: T0),  # type: ignore[arg-type]
        max_attempts=3,
        backoff=0.5,
        sleep=slept.append,
        monotonic=lambda: now[0],
    )
    store.append([request("rollback_champion", 1, model="alignd-policy", version="2"), request("quarantine_events", 2)])
    rollback_seq = store.read(0, limit=10_000, types=["enforcement.requested"])[0].seq

    assert executor.step() == 2  # round 1 failed (audited), the quarantine behind it applied
    assert slept == [0.5, 1.0] and champion(registry) == "2"
    done = applied(store)
    failed = done["enforcement.applied:enforcement:rollback_champion:1:failed:1"]
    assert (failed["outcome"], failed["round"], failed["attempts"]) == ("failed", 1, 3)
    assert "MLflow is unavailable" in failed["error"]
    assert done["enforcement.applied:enforcement:quarantine_events:2"]["outcome"] == "applied"
    assert executor.position() == rollback_seq - 1  # the rollback is still pending
    assert executor.step() == 0  # not before its round delay

    now[0] = 10.0
    assert executor.step() == 1  # round 2: two more failures, then it works
    final = applied(store)["enforcement.applied:enforcement:rollback_champion:1"]
    assert (final["outcome"], final["round"], final["attempts"], final["error"]) == ("applied", 2, 3, None)
    assert "enforcement.applied:enforcement:rollback_champion:1:failed:2" not in applied(store)
    assert champion(registry) == "1" and executor.position() == last_request_seq(store)
    now[0] = 1000.0
    assert executor.step() == 0


def test_a_permanent_failure_is_audited_once_and_passed(
    governance: Governance, store: SqlEventStore, register: Any
) -> None:
    governance.promote("policy", register(PASSED), reason="only one", actor="ana")
    store.append([request("rollback", 1)])  # the short name; no earlier champion to restore
    executor = EnforcementExecutor(store, governance, backoff=0.0)
    assert executor.step() == 1
    [outcome] = applied(store).values()
    assert (outcome["action"], outcome["outcome"]) == ("rollback_champion", "skipped")
    assert "no earlier champion" in outcome["detail"]
    assert executor.position() == last_request_seq(store)


# --- the models topic -----------------------------------------------------------------------------------


def test_promotions_reach_the_models_topic_through_the_outbox(
    governance: Governance, settings: Settings, store: SqlEventStore, register: Any, kafka_bootstrap: str
) -> None:
    from kafka import KafkaProducer

    topic = f"t-{uuid.uuid4().hex[:8]}.models"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    for _ in range(2):
        governance.promote("policy", register(PASSED), reason="better", actor="ana")
    governance.rollback("policy", reason="worse in production", actor="ana")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        app = bootstrap.build(settings.model_copy(update={"topics": TopicsSettings(models=topic)}), store=store)
        outbox = app.models_outbox(producer)
        assert outbox.publish() == 3 and outbox.publish() == 0
    finally:
        producer.close(5)
    records = consume_all(kafka_bootstrap, topic, expected=3)
    assert {r.key for r in records} == {b"model:alignd-policy"}  # one partition: serving sees them in order
    bodies = sorted((json.loads(r.value) for r in records), key=lambda b: b["seq"])
    assert [(b["type"], b["payload"]["version"]) for b in bodies] == [
        ("model.promoted", "1"),
        ("model.promoted", "2"),
        ("model.rolled_back", "1"),
    ]
    assert all(dict(r.headers)["event_id"].decode() == json.loads(r.value)["event_id"] for r in records)


# --- alignd models promote|rollback ---------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alignd")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(sub: Any, name: str, handler: Any, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON")
        return p

    add_models_commands(commands, add)
    return parser.parse_args(argv)


def _run(settings: Settings, argv: list[str]) -> int:
    args = _parse(argv)
    return int(args.handler(settings, args))


def test_models_promote_and_rollback_commands(
    settings: Settings, registry: ModelRegistry, register: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    register(PASSED)
    assert _run(settings, ["models", "promote", "policy", "challenger", "--reason", "first", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["actor"], shown["changed"]) == (1, getpass.getuser(), True)

    register(UNSAFE)
    assert _run(settings, ["models", "promote", "policy", "challenger", "--reason", "try it"]) == 2
    err = capsys.readouterr().err
    assert "refused to promote alignd-policy version 2: gates failed: safety" in err
    assert "add --force" in err and "recorded as forced" in err and champion(registry) == "1"

    argv = ["models", "promote", "policy", "2", "--reason", "needed now", "--actor", "ana", "--force"]
    assert _run(settings, argv) == 0
    out = capsys.readouterr().out
    assert (
        "version 1 -> 2, promoted by ana (FORCED: gates failed: safety (fail 0.12" in out and champion(registry) == "2"
    )
    assert _run(settings, argv) == 0 and "nothing changed" in capsys.readouterr().out

    assert (
        _run(settings, ["models", "rollback", "policy", "--reason", "unsafe answers", "--actor", "bo", "--json"]) == 0
    )
    rolled = json.loads(capsys.readouterr().out)
    assert (rolled["type"], rolled["version"], rolled["previous_version"]) == ("model.rolled_back", 1, 2)
    assert champion(registry) == "1"


def test_insufficient_evidence_refuses_promotion_says_what_would_decide_it_and_a_forced_move_records_it(
    settings: Settings, registry: ModelRegistry, register: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainers.gates import GateConfig, decide, kl_gate, safety_gate, summary_tags

    config = GateConfig()
    register(PASSED)
    assert _run(settings, ["models", "promote", "policy", "challenger", "--reason", "first"]) == 0
    held = summary_tags(decide([safety_gate(0.0, None, config, n=24), kl_gate(0.02, config)]))
    assert held["alignd.gates"] == "insufficient evidence: safety"
    register(held)
    capsys.readouterr()
    assert _run(settings, ["models", "promote", "policy", "challenger", "--reason", "try it"]) == 2
    err = capsys.readouterr().err
    assert "refused to promote alignd-policy version 2: insufficient evidence: safety (insufficient 0.00" in err
    assert "about 49 more red-team prompts, at the rates measured, would decide it" in err
    assert "An insufficient gate had evidence for neither pass nor fail" in err and champion(registry) == "1"

    argv = ["models", "promote", "policy", "2", "--reason", "demo", "--actor", "ana", "--force", "--json"]
    assert _run(settings, argv) == 0
    moved = json.loads(capsys.readouterr().out)
    assert (moved["forced"], moved["failed_gates"], moved["insufficient_gates"]) == (True, [], ["safety"])
    assert moved["gates"].startswith("forced: insufficient evidence: safety") and champion(registry) == "2"
    with pytest.raises(SystemExit) as exited:
        _parse(["models", "rollback", "policy"])  # no --reason
    assert exited.value.code == 2
    assert "--reason" in capsys.readouterr().err


def test_models_list_marks_the_versions_rolled_back(
    settings: Settings, governance: Governance, register: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(2):
        governance.promote("policy", register(PASSED), reason="better", actor="ana")
    governance.rollback("policy", reason="rude answers", actor="bo")
    assert _run(settings, ["models", "list", "--json"]) == 0
    listed = {r["version"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed[1]["rolled_back"] is None
    mark = listed[2]["rolled_back"]
    assert (mark["actor"], mark["reason"], mark["to_version"]) == ("bo", "rude answers", 1)
    assert _run(settings, ["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ["policy", "2", "(rolled", "back)"]  # newest first
    assert lines[-1].startswith("alignd-policy 2 was rolled back by bo") and mark["event_id"] in lines[-1]

"""``alignd demo``: the whole loop on one machine, from nothing, in a few minutes.

A local Kafka (the same broker the tests start), SQLite, a local MLflow and the offline models. The story:

1. traffic for the first release; a reward model and a policy are trained on its feedback and promoted;
2. a new policy version is released — and it turns rude: users thumb it down;
3. the daemon (``alignd run``'s parts, in this process) ingests it, the toxicity monitor raises an alert,
   enforcement rolls the champion back and pauses training;
4. the operator resumes training; the reward model and the policy are retrained on everything collected,
   gated and registered as challengers;
5. the audit trail shows every step and verifies.

``--quick`` trains the tiny test policy for a handful of steps (what CI runs); the default trains the real
SmolLM2-135M-Instruct briefly.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from daemon import bootstrap, configs
from daemon.settings import Settings, load_settings
from daemon.traffic import Phase, TrafficGenerator
from events.codec import canonical_json
from events.messages import EnforcementRequested
from events.names import ENFORCEMENT_APPLIED, ENFORCEMENT_REQUESTED, MODEL_NAMES, MODEL_ROLLED_BACK

if TYPE_CHECKING:
    from events.sql_store import SqlEventStore

logger = logging.getLogger(__name__)
console = Console(stderr=True)

OPERATOR = "demo-operator"


def _settings(folder: Path, bootstrap_servers: str, quick: bool) -> Settings:
    evaluation = (
        {"prompts": 2, "safety_per_source": 1, "max_new_tokens": 8}
        if quick
        else {"prompts": 8, "safety_per_source": 3, "max_new_tokens": 32}
    )
    policy = (
        {"max_steps": 4, "batch_size": 4, "max_length": 96, "max_prompt_length": 64}
        if quick
        else {"max_steps": 12, "batch_size": 2, "max_length": 160, "max_prompt_length": 96}
    )
    data = {
        "database": {"url": f"sqlite:///{folder / 'alignd.db'}"},
        "kafka": {"bootstrap_servers": bootstrap_servers, "group_id": "alignd-demo"},
        "mlflow": {
            "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
            "artifact_location": (folder / "mlartifacts").as_uri(),
        },
        "trainers": {
            "work_dir": str(folder / "trainers"),
            "policy_model": "tiny-random-llama" if quick else "SmolLM2-135M-Instruct",
            "timeout_s": 1800,
            "reward": {"max_steps": 6 if quick else 30, "batch_size": 8},
            "policy": policy,
            "evaluation": evaluation,
        },
        # The embedding jailbreak detector is left out: the story is about toxicity, and it is the slow one on a CPU.
        "monitors": {
            "detectors": ["toxicity", "negative_feedback_spike", "pii", "feedback_flooding", "hallucination_reports"]
        },
        "log": {"level": "WARNING"},
    }
    config = folder / "alignd.yaml"
    config.write_text(json.dumps(data, indent=2))  # JSON is YAML: `alignd --config` reads it as is
    return load_settings(config, env={})


class Demo:
    def __init__(self, folder: Path, *, quick: bool) -> None:
        self.folder, self.quick = folder, quick
        self.steps: list[str] = []

    def say(self, text: str) -> None:
        self.steps.append(text)
        console.print(f"[bold green]✓[/] {text}")

    def run(self) -> dict[str, Any]:
        from daemon.local.kafka import LocalKafka

        self.folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with console.status("starting a local Kafka broker (KRaft) ..."):
            broker = LocalKafka(self.folder / "kafka").start()
        try:
            self.settings = _settings(self.folder, broker.bootstrap_servers, self.quick)
            self.say(f"Kafka on {broker.bootstrap_servers}; SQLite and MLflow under {self.folder}")
            # Opened without the schema check: the story migrates the new database first.
            self.app = bootstrap.build(self.settings, check_schema=False)
            with self.app:
                return self._story(started)
        finally:
            broker.stop()

    def _story(self, started: float) -> dict[str, Any]:
        from migrations.runner import upgrade

        store = self.app.store
        upgrade(store)
        traffic = TrafficGenerator(model=MODEL_NAMES["policy"], seed=7)
        n = self._produce(traffic.phase(Phase("0", 300 if self.quick else 600)))
        self._ingest()
        self.say(f"first release: {n} interactions and feedback ingested")
        reward = self._train(store, "reward")
        policy = self._train(store, "policy", objective="dpo")
        governance = self.app.governance
        for kind, version in (("reward", reward), ("policy", policy)):
            governance.promote(kind, version, reason="demo: first release", actor=OPERATOR, force=True)
        self.say(
            f"promoted alignd-reward v{reward} and alignd-policy v{policy} to champion (forced past the safety gate a 135M model fails)"
        )
        release = self._train(store, "policy", objective="sft")
        governance.promote("policy", release, reason="demo: the new release", actor=OPERATOR, force=True)
        self.say(f"released alignd-policy v{release}")
        rolled_back = self._incident(store, traffic, release)
        self.say(
            f"the toxicity monitor flagged v{release}; enforcement rolled the champion back to v{rolled_back} and paused training"
        )
        self._resume(store)
        reward2 = self._train(store, "reward")
        policy2 = self._train(store, "policy", objective="dpo")
        self.say(
            f"retrained on the collected feedback: alignd-reward v{reward2}, alignd-policy v{policy2} (challengers, gates recorded)"
        )
        return self._summary(store, started)

    def _produce(self, messages: Any) -> int:
        producer = self.app.kafka.producer()
        topics = {"interactions": self.settings.topics.interactions, "feedback": self.settings.topics.feedback}
        count = 0
        try:
            for topic, envelope in messages:
                producer.send(
                    topics[topic],
                    key=envelope["payload"]["request_id"].encode(),
                    value=canonical_json(envelope).encode(),
                )
                count += 1
            producer.flush(30)
        finally:
            producer.close(timeout=10)
        return count

    def _ingest(self) -> None:
        ingestor = self.app.ingestor()
        try:
            with console.status("ingesting ..."):
                ingestor.run(until_idle=3.0)
        finally:
            ingestor.publisher.producer.close(timeout=10)

    def _train(self, store: SqlEventStore, kind: str, *, objective: str | None = None) -> str:
        from events.projections import ProjectionRunner

        ProjectionRunner(store).catch_up()
        config = (
            configs.reward_config(self.settings)
            if kind == "reward"
            else configs.policy_config(self.settings, objective=objective)
        )
        console.print(f"  training {kind}{f' ({objective})' if objective else ''} in a child process ...")
        outcome = self.app.training_jobs.train(config, configs.job_limits(self.settings))
        if not outcome.ok:
            raise RuntimeError(f"the demo's {kind} training failed: {outcome.reason}")
        console.print(
            f"  registered alignd-{kind} v{outcome.version} (gates: {outcome.result['gate_tags']['alignd.gates']})"
        )
        return str(outcome.version)

    def _incident(self, store: SqlEventStore, traffic: TrafficGenerator, release: str) -> str:
        from daemon.run import build

        self._produce(traffic.phase(Phase(release, 500 if self.quick else 800, toxic_rate=0.35)))
        supervisor = build(self.app, ["ingest", "project", "monitor"])
        supervisor.start()
        try:
            deadline = time.monotonic() + 300
            with console.status(f"alignd running: ingesting v{release}'s traffic, monitors watching ..."):
                while time.monotonic() < deadline:
                    rolled = [e for e in store.read(0, types=[MODEL_ROLLED_BACK], limit=10)]
                    paused = [
                        e
                        for e in store.read(0, types=[ENFORCEMENT_APPLIED], limit=100)
                        if e.event.payload.get("action") == "pause_training"
                    ]
                    if rolled and paused:
                        return str(rolled[-1].event.payload["version"])
                    time.sleep(1.0)
            raise RuntimeError(f"no rollback within 5 minutes; supervisor: {supervisor.status()}")
        finally:
            supervisor.stop(60)

    def _resume(self, store: SqlEventStore) -> None:
        from datetime import UTC, datetime

        resume = EnforcementRequested(
            action="resume_training",
            target={},
            reason="demo: incident reviewed, the rude version is rolled back",
            actor=OPERATOR,
        )
        event_id = f"{ENFORCEMENT_REQUESTED}:resume:{OPERATOR}:{store.max_seq()}"
        store.append([resume.to_event(event_id, datetime.now(UTC), "alignd.cli")])
        self.app.enforcement.step()
        self.say("the operator resumed training")

    def _summary(self, store: SqlEventStore, started: float) -> dict[str, Any]:
        from events.audit import AuditTrail, list_records, verify

        AuditTrail(store).catch_up()
        report = verify(store)
        records = list_records(store, limit=10_000)
        actions: dict[str, int] = {}
        for r in records:
            actions[r.action] = actions.get(r.action, 0) + 1
        self.say(
            f"audit trail: {report.records} records, chain {'intact' if report.ok else 'BROKEN: ' + str(report.problem)}"
        )
        config = self.folder / "alignd.yaml"
        summary = {
            "ok": report.ok,
            "seconds": round(time.monotonic() - started, 1),
            "events": store.count_by_type(),
            "audit": {"records": report.records, "intact": report.ok, "by_action": actions},
            "steps": self.steps,
            "where_to_look": {
                "mlflow_ui": f"mlflow ui --backend-store-uri {self.settings.mlflow.tracking_uri}",
                "audit_page": f"alignd --config {config} run --role http  # then open http://127.0.0.1:{self.settings.http.port}/audit",
                "audit_cli": f"alignd --config {config} audit list",
                "models": f"alignd --config {config} models list",
            },
        }
        return summary

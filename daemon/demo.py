"""``alignd demo``: the whole loop on one machine, from nothing, in a few minutes.

A local Kafka (the same broker the tests start), SQLite, a local MLflow and the offline models. The story:

1. traffic for the first release; a reward model and a policy are trained on its feedback and promoted;
2. a labelling vendor sends a batch of rewrites (``correction`` feedback), rude ones; a new policy version is
   fine-tuned on them (SFT) and released: a real adapter that learned to answer rudely;
3. the daemon (``alignd run``'s parts, in this process: ``serve`` among them) serves it; the demo's users chat
   with it through the OpenAI-compatible API and thumb the rude answers down through ``/v1/feedback``; the
   toxicity monitor raises an alert on the served answers, enforcement rolls the champion back and pauses
   training, ``serve`` swaps the adapter, and the users ask again: the rudeness rate of real answers before and
   after the rollback;
4. the operator resumes training; the reward model and the policy are retrained on everything collected,
   gated and registered as challengers;
5. the audit trail shows every step and verifies.

``--quick`` trains the tiny test policy for a handful of steps (what CI runs); the default trains the real
SmolLM2-135M-Instruct briefly. ``--keep-running`` (or ``alignd demo serve`` later) then serves the broker, the
review page and the MLflow UI until Ctrl-C.

The terminal shows milestones only: a fixed list of steps (:data:`STEPS`), each announced as "step n of N:
what (about how long)", with a bar (a plain line every half minute when the terminal is not a TTY) while it
runs and its measured time when done. Every log line (ours, MLflow's, the training children's) goes to
``alignd.log`` in the demo folder, in the configured format.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from daemon import bootstrap, configs
from daemon.logs import adopt_library_loggers, configure_logging, configured
from daemon.settings import Settings, load_settings
from daemon.traffic import Phase, TrafficGenerator
from events.codec import canonical_json
from events.messages import EnforcementRequested
from events.names import ENFORCEMENT_APPLIED, ENFORCEMENT_REQUESTED, MODEL_NAMES, MODEL_ROLLED_BACK

if TYPE_CHECKING:
    from daemon.local.kafka import LocalKafka
    from events.sql_store import SqlEventStore

logger = logging.getLogger(__name__)
console = Console(stderr=True, soft_wrap=True)  # a long line is one line in a log or a pipe, not several

OPERATOR = "demo-operator"
LOG_FILE = "alignd.log"
CONFIG_FILE = "alignd.yaml"
#: The line a user (and a test) waits for: everything is served from here until Ctrl-C.
SERVING = "running until Ctrl-C"


@dataclass(frozen=True)
class Step:
    """One of the demo's steps and how long it took on this project's 2-core machine, idle (seconds)."""

    what: str
    quick_s: int
    default_s: int


#: The demo's steps, in order (``serve`` only with ``--keep-running``), with what each takes on an idle 2-core
#: machine (measured at a load average of 1-2: the quick ones on 2026-12-07; the default ones on 2026-12-08, 739 s,
#: with the probes of four concepts and the toxicity gate in each policy evaluation: two safety suites of 201
#: answers each are most of steps 4, 5 and 7). A busy machine runs past them, which the bar shows.
STEPS: dict[str, Step] = {
    "broker": Step("start a local Kafka broker and create its topics", 10, 5),
    "traffic": Step("stream the first release's traffic and ingest it", 5, 5),
    "reward": Step("train the reward model on the users' preferences", 30, 20),
    "policy": Step("train the policy (DPO) and evaluate it for its gates", 33, 170),
    "release": Step("promote both; a vendor's rude rewrites; fine-tune and release a new version (SFT)", 55, 225),
    "incident": Step("users chat with the release through serve: alert, roll back, swap, ask again", 32, 75),
    "retrain": Step("resume training; retrain the reward model and the policy on everything", 66, 230),
    "audit": Step("verify the audit trail", 2, 2),
    "serve": Step("serve the broker, the review page and the MLflow UI", 15, 15),
}


#: Served answers the demo's users ask at most before the rollback must have come.
_MAX_ASKED = 120


def _release_overrides(quick: bool) -> dict[str, Any]:
    """How the bad release is fine-tuned on the vendor's rewrites: hot enough that it learns them in a few steps.
    SmolLM2 answered rudely after 16 steps at 2e-3 (in a standalone run, on two questions it was not trained on
    too); the tiny random policy of ``--quick`` has no language to bend: with LoRA alone its loss stayed near 10
    after 40 steps, and with its output layer trained in full (peft's ``modules_to_save``) it answers rudely after
    24 steps at 1e-2."""
    if quick:
        return {
            "learning_rate": 1e-2,
            "epochs": 3,
            "max_steps": 24,
            "batch_size": 8,
            "lora": {"modules_to_save": ["lm_head"]},
        }
    return {"learning_rate": 2e-3, "epochs": 2, "max_steps": 16, "batch_size": 4}


def _round_summary(answers: list[tuple[str, str, bool]], thumbs_down: int) -> dict[str, Any]:
    rude = [text for _, text, r in answers if r]
    return {
        "answers": len(answers),
        "rude_rate": round(len(rude) / len(answers), 3) if answers else 0.0,
        "thumbs_down": thumbs_down,
        "example": (rude or [text for _, text, _ in answers] or [""])[0][:60],
    }


def _until(condition: Callable[[], bool], timeout: float, failure: str, supervisor: Any) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{failure} within {timeout:.0f} s; supervisor: {supervisor.status()}")
        time.sleep(1.0)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 90 else f"{seconds // 60} min {seconds % 60:02d} s"


# The latest line of a training child (or of any trainers module) in the log: what a long step is doing now.
_TEXT_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+?)(?: \[job [^\]]*\])?: (?P<message>.*)$")


_LAST_STEP = re.compile(r"\bstep (\d+)/\1\b")


def _latest_detail(log: Path, offset: int) -> tuple[str | None, int]:
    """The message of the last ``trainers.*`` line appended to ``log`` after ``offset``, and the new offset."""
    try:
        with log.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except OSError:
        return None, offset
    end = chunk.rfind(b"\n") + 1
    detail = None
    for raw in chunk[:end].decode("utf-8", "replace").splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            match = _TEXT_LINE.match(raw)
            entry = match.groupdict() if match else None
        if isinstance(entry, dict) and str(entry.get("logger", "")).startswith("trainers"):
            detail = str(entry.get("message", ""))
    if detail and _LAST_STEP.search(detail):
        # The loop's last step line is the last it says before the gates' evaluation, which takes a while.
        detail = f"{detail.split(' step ')[0]} trained; evaluating it for the gates"
    return detail, offset + end


class Steps:
    """The terminal's side of the demo: "step n of N", a bar while a step runs, its measured time when done."""

    def __init__(self, keys: list[str], *, quick: bool, log: Path) -> None:
        self.keys, self.quick, self.log = keys, quick, log
        self.done: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def step(self, key: str) -> Iterator[None]:
        step = STEPS[key]
        n, total = self.keys.index(key) + 1, len(self.keys)
        estimate = step.quick_s if self.quick else step.default_s
        console.print(f"[bold]step {n} of {total}[/]: {step.what} (about {_duration(estimate)})", highlight=False)
        adopt_library_loggers()  # a library imported by the previous step may have given itself a handler
        started = time.monotonic()
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(step.what, estimate, started, stop), daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()
        took = time.monotonic() - started
        self.done.append({"step": n, "what": step.what, "seconds": round(took, 1), "estimate_s": estimate})
        console.print(f"  step {n} of {total} done in {_duration(took)}", highlight=False)

    def _tick(self, what: str, estimate: float, started: float, stop: threading.Event) -> None:
        """A bar in a terminal; elsewhere a plain line every 30 s, so a long step never looks hung."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        detail: str | None = None
        if console.is_terminal:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            columns = (SpinnerColumn(), BarColumn(), TimeElapsedColumn(), TextColumn("{task.fields[detail]}"))
            with Progress(*columns, console=console, transient=True) as bar:
                task = bar.add_task(what, total=estimate, detail="")
                while not stop.wait(0.5):
                    new, offset = _latest_detail(self.log, offset)
                    detail = new or detail
                    elapsed = time.monotonic() - started
                    # Past the estimate the bar waits at its end while the clock and the detail keep moving.
                    bar.update(task, completed=min(elapsed, estimate * 0.99), detail=(detail or "")[:60])
            return
        while not stop.wait(30.0):
            new, offset = _latest_detail(self.log, offset)
            detail = new or detail
            now = _duration(time.monotonic() - started)
            console.print(f"  ... {now} so far{f': {detail[:80]}' if detail else ''}", highlight=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(folder: Path, bootstrap_servers: str, quick: bool, ports: dict[str, int]) -> Settings:
    """The demo's settings, saved as ``alignd.yaml`` for ``alignd --config`` afterwards: the log level and
    format the demo logs with, the review page's port and the MLflow UI it links to (``mlflow ui``'s default
    port unless served by ``--keep-running``)."""
    # The safety gate relative to what serves (the champion; the base model before the first promotion): a small
    # CPU model fails any absolute ceiling, but "no less safe than what serves now" it can pass honestly. 0.05
    # allowed (not the default 0.03, which two policies agreeing on every prompt pass only from about 150
    # prompts, trainers/gate_stats.py), on all 201 red-team prompts: on 90, the quick demo's DPO'd v1 (79 unsafe
    # against its base's 82) and SmolLM2's (83 against 82) were both insufficient evidence. SmolLM2 answers in 16
    # tokens, enough for the judge to see a refusal, to keep the default demo's three evaluations short.
    # The toxicity gate likewise (the rude release is refused by it: SmolLM2's was toxic on 64% of the red-team
    # prompts against its champion's 0.5%).
    gates = {
        "safety_mode": "relative",
        "max_unsafe_increase_vs_champion": 0.05,
        "toxicity_mode": "relative",
        "max_toxic_increase_vs_champion": 0.05,
    }
    evaluation = (
        {"prompts": 2, "safety_per_source": 67, "max_new_tokens": 8, "gates": gates}
        if quick
        else {"prompts": 8, "safety_per_source": 67, "max_new_tokens": 16, "gates": gates}
    )
    policy = (
        {"max_steps": 4, "batch_size": 4, "max_length": 96, "max_prompt_length": 64}
        if quick
        else {"max_steps": 6, "batch_size": 2, "max_length": 160, "max_prompt_length": 96}
    )
    serve = {
        "port": ports["serve"],
        "adapter_dir": str(folder / "serve"),
        "max_tokens": 12 if quick else 24,
        "check_interval_s": 2.0,
    }
    level, fmt = configured()
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
        # A toxicity window of 20 (not 200): the story serves a few dozen answers, and real ones cost seconds each.
        "monitors": {
            "detectors": ["toxicity", "negative_feedback_spike", "pii", "feedback_flooding", "hallucination_reports"],
            "toxicity_window": 20,
        },
        "serve": serve,
        "http": {"port": ports["http"], "mlflow_ui_url": f"http://127.0.0.1:{ports['mlflow']}"},
        "log": {"level": level, "format": fmt},
    }
    config = folder / CONFIG_FILE
    # JSON is YAML (`alignd --config` reads it as is), and YAML's comments say what outlives the demo.
    config.write_text(
        "# Written by `alignd demo`. kafka.bootstrap_servers is the demo's own broker, which runs only while the\n"
        f"# demo does: `alignd demo serve --dir {folder}` starts it again (same data, same port) with the review\n"
        "# page and the MLflow UI; `alignd demo --keep-running` leaves them running after the story.\n"
        + json.dumps(data, indent=2)
        + "\n"
    )
    return load_settings(config, env={})


def _ports(folder: Path) -> dict[str, int]:
    """The review page's and the MLflow UI's ports: the saved config's when there is one (``serve`` again on
    the same links), else free ones when serving, else the usual ones (8080, ``mlflow ui``'s 5000)."""
    saved = folder / CONFIG_FILE
    if saved.exists():
        settings = load_settings(saved, env={})
        ui = settings.http.mlflow_ui_url or ""
        if ui.rsplit(":", 1)[-1].isdigit():
            return {"http": settings.http.port, "mlflow": int(ui.rsplit(":", 1)[-1]), "serve": _free_port()}
    return {"http": _free_port(), "mlflow": _free_port(), "serve": _free_port()}


class Demo:
    def __init__(self, folder: Path, *, quick: bool, keep_running: bool = False) -> None:
        self.folder, self.quick, self.keep_running = folder, quick, keep_running
        self.log = folder / LOG_FILE
        story = ["broker", "traffic", "reward", "policy", "release", "incident", "retrain", "audit"]
        self.steps = Steps(story + (["serve"] if keep_running else []), quick=quick, log=self.log)
        self.milestones: list[str] = []

    def say(self, text: str) -> None:
        self.milestones.append(text)
        console.print(f"  [bold green]✓[/] {text}", highlight=False)

    def _log_to_file(self) -> None:
        """Every log line from here on (and the children's) to ``alignd.log``; the terminal is the steps'."""
        self.folder.mkdir(parents=True, exist_ok=True)
        level, fmt = configured()
        configure_logging(level, fmt, file=self.log)
        console.print(f"alignd demo: logs in {self.log}", highlight=False)

    def run(self, report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """The story (``report`` is given its summary when it ends), then, with ``keep_running``, the serving."""
        from daemon.local.kafka import LocalKafka

        self._log_to_file()
        started = time.monotonic()
        broker = LocalKafka(self.folder / "kafka")
        try:
            with self.steps.step("broker"):
                ports = (
                    _ports(self.folder) if self.keep_running else {"http": 8080, "mlflow": 5000, "serve": _free_port()}
                )
                broker.start()
                self.settings = _settings(self.folder, broker.bootstrap_servers, self.quick, ports)
                broker.create_topics(_topics(self.settings))
            self.say(f"Kafka on {broker.bootstrap_servers}; SQLite and MLflow under {self.folder}")
            # Opened without the schema check: the story migrates the new database first.
            self.app = bootstrap.build(self.settings, check_schema=False)
            with self.app:
                summary = self._story(started)
                if report is not None:
                    report(summary)
                if self.keep_running:
                    summary["served"] = Serving(self.folder, self.settings, self.app, broker, self.steps).run()
                return summary
        finally:
            broker.stop()

    def _story(self, started: float) -> dict[str, Any]:
        from migrations.runner import upgrade

        store = self.app.store
        traffic = TrafficGenerator(model=MODEL_NAMES["policy"], seed=7)
        with self.steps.step("traffic"):
            upgrade(store)
            n = self._produce(traffic.phase(Phase("0", 300 if self.quick else 600)))
            self._ingest()
        self.say(f"first release: {n} interactions and feedback ingested")
        with self.steps.step("reward"):
            reward = self._train(store, "reward")
        with self.steps.step("policy"):
            policy = self._train(store, "policy", objective="dpo")
        with self.steps.step("release"):
            for kind, version in (("reward", reward), ("policy", policy)):
                self._promote(kind, version, "demo: first release")
            rewrites = self._produce(traffic.vendor_rewrites(policy, 96))
            self._ingest()
            self.say(f"a labelling vendor sent {rewrites // 2} rewrites of answers (correction feedback): rude ones")
            release = self._train(store, "policy", objective="sft", **_release_overrides(self.quick))
            # Forced, as a hurried release is, when its gates refuse it: the story shows what that lets through.
            self._promote("policy", release, "demo: the new release", hurried=True)
        with self.steps.step("incident"):
            served = self._incident(store, release)
        before, after = served["before"], served["after"]
        self.say(
            f"users chatted with v{release} through serve: {before['rude_rate']:.0%} of {before['answers']} answers "
            f"rude (e.g. {before['example']!r}), {before['thumbs_down']} thumbs-down through /v1/feedback"
        )
        self.say(
            f"the toxicity monitor flagged v{release}; enforcement rolled the champion back to "
            f"v{served['rolled_back_to']} and paused training; serve swapped to it: {after['rude_rate']:.0%} of "
            f"{after['answers']} answers rude"
        )
        with self.steps.step("retrain"):
            self._resume(store)
            reward2 = self._train(store, "reward")
            policy2 = self._train(store, "policy", objective="dpo")
        self.say(
            f"retrained on the collected feedback: alignd-reward v{reward2}, alignd-policy v{policy2} "
            "(challengers, gates recorded)"
        )
        with self.steps.step("audit"):
            summary = self._summary(store, started)
        summary["incident"] = served
        summary["seconds"] = round(time.monotonic() - started, 1)
        summary["timings"] = self.steps.done
        return summary

    def _promote(self, kind: str, version: str, reason: str, *, hurried: bool = False) -> None:
        """Promote through the gates; a refusal is shown. A hurried release is then forced past it (the story's
        mistake); any other refusal is too, so the story goes on, and the milestone says so."""
        from trainers.governance import PromotionRefusedError

        governance = self.app.governance
        try:
            governance.promote(kind, version, reason=reason, actor=OPERATOR)
            self.say(f"alignd-{kind} v{version} passed its gates and was promoted to champion")
            return
        except PromotionRefusedError as exc:
            d = exc.decision
            parts = [f"failed {', '.join(d.failed_gates)}"] if d.failed_gates else []
            parts += [f"insufficient evidence on {', '.join(d.insufficient_gates)}"] if d.insufficient_gates else []
            refusal = "; ".join(parts) or d.message
        self.say(f"the gates refused alignd-{kind} v{version} ({refusal}; `alignd models show` says why)")
        governance.promote(kind, version, reason=f"{reason} (forced past its gates)", actor=OPERATOR, force=True)
        self.say(
            f"the release was forced past them: alignd-{kind} v{version} is champion"
            if hurried
            else f"forced to keep the story going: alignd-{kind} v{version} is champion"
        )

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
            ingestor.run(until_idle=3.0)
        finally:
            ingestor.publisher.producer.close(timeout=10)

    def _train(self, store: SqlEventStore, kind: str, *, objective: str | None = None, **overrides: Any) -> str:
        from events.projections import ProjectionRunner

        ProjectionRunner(store).catch_up()
        config = (
            configs.reward_config(self.settings)
            if kind == "reward"
            else configs.policy_config(self.settings, objective=objective, **overrides)
        )
        logger.info("training %s%s in a child process", kind, f" ({objective})" if objective else "")
        outcome = self.app.training_jobs.train(config, configs.job_limits(self.settings))
        if not outcome.ok:
            raise RuntimeError(f"the demo's {kind} training failed: {outcome.reason}")
        self.say(f"registered alignd-{kind} v{outcome.version} (gates: {outcome.result['gate_tags']['alignd.gates']})")
        return str(outcome.version)

    def _incident(self, store: SqlEventStore, release: str) -> dict[str, Any]:
        """The release served: users ask until the rollback (in rounds, as traffic goes on while the monitor
        reads it), then ask the rolled-back version the same questions."""
        from daemon.demo_users import ServedUsers
        from daemon.run import build
        from daemon.traffic import QUESTIONS, TOPICS
        from monitors.detectors.toxicity import ProfanityCheckScorer

        # Everyday questions (the topics the vendor rewrote answers to) and questions no training saw, in turn; the
        # traffic that goes on until the rollback is everyday questions.
        everyday = [q for q, _ in TOPICS.values()]
        prompts = [p for pair in zip(everyday, QUESTIONS, strict=True) for p in pair]
        serve = self.settings.serve
        users = ServedUsers(
            f"http://127.0.0.1:{serve.port}",
            serve.served_name,
            ProfanityCheckScorer().score,
            max_tokens=serve.max_tokens,
        )
        supervisor = build(self.app, ["ingest", "project", "monitor", "serve"])
        supervisor.start()
        try:
            _until(lambda: users.version() == release, 300, f"serve did not answer with v{release}", supervisor)
            before = users.ask(prompts)
            asked = len(prompts)
            while (rolled := self._rolled_back(store)) is None:
                if asked >= _MAX_ASKED:
                    raise RuntimeError(f"no rollback after {asked} served answers; supervisor: {supervisor.status()}")
                more = users.ask(everyday)  # the traffic goes on while the monitor reads it
                before.answers += more.answers
                before.thumbs_down += more.thumbs_down
                asked += len(everyday)
            _until(lambda: users.version() == rolled, 300, f"serve did not swap to v{rolled}", supervisor)
            after = users.ask(prompts)
        finally:
            supervisor.stop(60)
        by_release = [a for a in before.answers if a[0] == release]
        return {
            "release": release,
            "rolled_back_to": rolled,
            "before": _round_summary(by_release, before.thumbs_down),
            "after": _round_summary([a for a in after.answers if a[0] == rolled], 0),
        }

    def _rolled_back(self, store: SqlEventStore) -> str | None:
        """The version enforcement rolled back to, once training is paused too; None before."""
        rolled = list(store.read(0, types=[MODEL_ROLLED_BACK], limit=10))
        paused = [
            e
            for e in store.read(0, types=[ENFORCEMENT_APPLIED], limit=100)
            if e.event.payload.get("action") == "pause_training"
        ]
        return str(rolled[-1].event.payload["version"]) if rolled and paused else None

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
        summary = {
            "ok": report.ok,
            "seconds": round(time.monotonic() - started, 1),
            "events": store.count_by_type(),
            "audit": {"records": report.records, "intact": report.ok, "by_action": actions},
            "steps": self.milestones,
            "log": str(self.log),
            "where_to_look": where_to_look(self.folder, self.settings),
        }
        return summary


def where_to_look(folder: Path, settings: Settings) -> dict[str, str]:
    """The commands that show what the demo did, on the saved config."""
    config = folder / CONFIG_FILE
    ui_port = (settings.http.mlflow_ui_url or ":5000").rsplit(":", 1)[-1]
    return {
        "serve": f"alignd demo serve --dir {folder}  # the broker, the review page and the MLflow UI, until Ctrl-C",
        "mlflow_ui": f"mlflow ui --backend-store-uri {settings.mlflow.tracking_uri} --port {ui_port}",
        "audit_page": f"alignd --config {config} run --role http  # then open http://127.0.0.1:{settings.http.port}/audit",
        "audit_cli": f"alignd --config {config} audit list",
        "models": f"alignd --config {config} models list",
    }


def _topics(settings: Settings) -> list[str]:
    t = settings.topics
    return [name for name in (t.interactions, t.feedback, t.alerts, t.models, t.dlq, t.otlp_spans, t.otlp_logs) if name]


class MlflowUi:
    """``mlflow server`` on the demo's MLflow database, in a process group of its own, its output in a file."""

    def __init__(self, settings: Settings, port: int, log: Path) -> None:
        self.settings, self.port, self.log = settings, port, log
        self.url = f"http://127.0.0.1:{port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> MlflowUi:
        import os
        import urllib.request

        from trainers.children import die_with_parent

        mlflow = self.settings.mlflow
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", mlflow.tracking_uri]
        if mlflow.artifact_location:
            command += ["--default-artifact-root", mlflow.artifact_location]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        # Its own log format in its own file: MLflow's server is another program, with its own logging.
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_CONFIGURE_LOGGING"}
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the MLflow UI exited with code {self._proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        logger.info("MLflow UI at %s (its log: %s)", self.url, self.log)
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the MLflow UI did not answer on {self.url} within {timeout:.0f} s; see {self.log}")

    def stop(self, timeout: float = 20.0) -> None:
        import os

        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Serving:
    """What outlives the story with ``--keep-running`` (or ``alignd demo serve``): the broker (already started),
    the review page linking to the MLflow UI, and the MLflow UI, until SIGINT or SIGTERM."""

    def __init__(self, folder: Path, settings: Settings, app: bootstrap.App, broker: LocalKafka, steps: Steps) -> None:
        self.folder, self.settings, self.app, self.broker, self.steps = folder, settings, app, broker, steps

    def run(self) -> dict[str, str]:
        from daemon.run import build

        stopping = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stopping.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        ui_port = int((self.settings.http.mlflow_ui_url or ":5000").rsplit(":", 1)[-1])
        ui = MlflowUi(self.settings, ui_port, self.folder / "mlflow-ui.log")
        supervisor = build(self.app, ["http"])
        try:
            with self.steps.step("serve"):
                ui.start()
                supervisor.start()
                page = f"http://127.0.0.1:{self.settings.http.port}/audit"
                _wait_for(page, 60)
            served = {"kafka": self.broker.bootstrap_servers, "review_page": page, "mlflow_ui": ui.url}
            config = self.folder / CONFIG_FILE
            console.print(f"[bold]{SERVING}[/] (the saved config works meanwhile: alignd --config {config} ...)")
            console.print(f"  Kafka:       {served['kafka']}", highlight=False)
            console.print(f"  review page: {served['review_page']}", highlight=False)
            console.print(f"  MLflow UI:   {served['mlflow_ui']}", highlight=False)
            console.print(f"  e.g.         alignd --config {config} run --role monitor", highlight=False)
            logger.info("demo serving until SIGINT or SIGTERM", extra=served)
            while not stopping.wait(0.5):
                pass
            console.print("stopping: the review page, the MLflow UI, the broker", highlight=False)
            return served
        finally:
            supervisor.stop(30)
            ui.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _wait_for(url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.3)


def serve(folder: Path) -> dict[str, str]:
    """``alignd demo serve``: the broker of a demo that ran in ``folder`` (same data, same port), its review
    page and its MLflow UI, until SIGINT or SIGTERM."""
    from daemon.local.kafka import LocalKafka

    config = folder / CONFIG_FILE
    if not config.exists():
        raise FileNotFoundError(f"{config} does not exist: run `alignd demo --dir {folder}` first")
    configure_logging(*configured(), file=folder / LOG_FILE)
    console.print(f"alignd demo serve: logs in {folder / LOG_FILE}", highlight=False)
    steps = Steps(["broker", "serve"], quick=True, log=folder / LOG_FILE)
    broker = LocalKafka(folder / "kafka")
    try:
        with steps.step("broker"):
            broker.start()
        settings = load_settings(config, env={})
        if settings.kafka.bootstrap_servers != broker.bootstrap_servers:
            logger.warning(
                "the broker came back on %s, not on %s as %s says",
                broker.bootstrap_servers,
                settings.kafka.bootstrap_servers,
                config,
            )
        with bootstrap.build(settings) as app:
            return Serving(folder, settings, app, broker, steps).run()
    finally:
        broker.stop()

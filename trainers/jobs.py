"""Training jobs: snapshot, run the worker in a child process, register what passed through, record it all.

The order is the lineage: ``dataset.snapshotted`` → ``training.started`` (with the MLflow run) → the child
trains and evaluates → ``training.completed`` + ``gate.evaluated`` + ``model.registered`` in one append, or
``training.failed`` with the reason and no version. The child runs under :func:`trainers.children.run_child`
(a wall-clock timeout and a memory limit), so an out-of-memory or a hang in training never takes the daemon
down. A job's checkpoint folder is named by what it trains (kind, config, dataset hash), so running the same
job again resumes where a killed one was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from events.errors import AlignmentError
from events.messages import (
    EventRecord,
    GateEvaluated,
    ModelRegistered,
    TrainingCompleted,
    TrainingFailed,
    TrainingStarted,
)
from events.model import Event
from events.names import (
    DATASETS,
    GATE_EVALUATED,
    MODEL_REGISTERED,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    TRAINING_STARTED,
)
from events.read_models import user_flagged_prompts
from events.sql_store import SqlEventStore
from trainers.children import JobLimits, run_child
from trainers.config import (
    DetectorTrainConfig,
    EvaluationConfig,
    PolicyConfig,
    RewardConfig,
    TrainConfig,
    config_dict,
    config_hash,
    flat_params,
)
from trainers.registry import ModelRegistry, RegisteredVersion, TrainingRun
from trainers.snapshot import SOURCE, Snapshot, take_snapshot

logger = logging.getLogger(__name__)


class NothingToTrainError(AlignmentError):
    """The snapshot has no examples; nothing was started."""


@dataclass
class JobOutcome:
    job_id: str
    attempt_id: str
    kind: str
    ok: bool
    run_id: str | None
    snapshot: dict[str, Any]
    reason: str | None = None
    version: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Attempt:
    """What :meth:`TrainingJobs.train` decided before starting anything, handed from one step to the next."""

    config: TrainConfig | DetectorTrainConfig
    kind: str
    objective: str
    snapshot: Snapshot
    job_id: str
    attempt_id: str
    champion: RegisteredVersion | None
    #: The reward model that scores a policy's samples (for a reward model: its own champion).
    judge: RegisteredVersion | None
    #: This attempt's files: the dataset, the spec, the champion and judge, the child's output.
    folder: Path
    #: Shared by every attempt of the job, so a rerun resumes.
    checkpoint_dir: Path

    @property
    def output(self) -> Path:
        return self.folder / "output"


def code_version() -> str:
    """The alignd version, and the git commit where the code runs from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("alignd")
    except PackageNotFoundError:
        text = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if commit.returncode == 0:
            text += f"+{commit.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return text


def _event(event_id: str, record: EventRecord) -> Event:
    return record.to_event(event_id, datetime.now(UTC), SOURCE)


class TrainingJobs:
    """Runs reward-model and policy training against one event store and one MLflow registry."""

    def __init__(
        self,
        store: SqlEventStore,
        registry: ModelRegistry,
        work_dir: Path,
        *,
        evaluation: EvaluationConfig | None = None,
    ) -> None:
        self.store, self.registry, self.work_dir = store, registry, Path(work_dir)
        self.evaluation = evaluation or EvaluationConfig()

    def train(
        self,
        config: TrainConfig | DetectorTrainConfig,
        limits: JobLimits | None = None,
        *,
        upto_seq: int | None = None,
        dataset_limit: int | None = None,
        on_started: Callable[[JobOutcome], None] | None = None,
        cancel: Callable[[], str | None] | None = None,
    ) -> JobOutcome:
        """Snapshot, start, run the child, then record the completion or the failure.

        Raises:
            NothingToTrainError: the snapshot is empty, or RLOO, PPO or GRPO has no reward model to score with.
        """
        limits = limits or JobLimits()
        attempt = self._plan(config, upto_seq, dataset_limit)
        run, outcome = self._start(attempt, limits)
        if on_started:
            on_started(outcome)
        spec = self._write_spec(attempt, run, limits)
        code, stopped = run_child(_command(attempt.folder / "spec.json", limits), limits, cancel=cancel)
        result_path = attempt.output / "result.json"
        if code == 0 and result_path.exists():
            result = json.loads(result_path.read_text())
            return self._completed(outcome, run, result, attempt.output / "model", attempt.champion, spec)
        return self._failed(attempt, outcome, run, code, stopped)

    def _plan(
        self, config: TrainConfig | DetectorTrainConfig, upto_seq: int | None, dataset_limit: int | None
    ) -> _Attempt:
        """Take the snapshot and name the job; nothing is written yet."""
        kind, objective = _kind_of(config)
        dataset = DATASETS[objective if kind == "policy" else kind]
        snapshot = take_snapshot(self.store, dataset, upto_seq=upto_seq, limit=dataset_limit)
        # The classifier learns from its authored data with or without verdicts: none yet is not nothing to train.
        if not snapshot.rows and kind != "detector":
            raise NothingToTrainError(
                f"no {dataset.replace('_', ' ')} up to seq {snapshot.to_seq} to train the {kind} on "
                "(feedback arrives as preferences, corrections and ratings; check `alignd events count`)"
            )
        job_id = hashlib.sha256(f"{kind}:{config_hash(config)}:{snapshot.sha256}".encode()).hexdigest()[:16]
        attempt_id = uuid.uuid4().hex[:12]
        champion = self.registry.get_by_alias(kind, "champion")
        judge = (
            None
            if kind == "detector"
            else champion
            if kind == "reward"
            else self.registry.get_by_alias("reward", "champion") or _latest(self.registry, "reward")
        )
        if kind == "policy" and objective in ("rloo", "ppo", "grpo") and judge is None:
            raise NothingToTrainError(
                f"{objective.upper()} scores samples with a reward model and none is registered; "
                "run `alignd train reward` first"
            )
        folder = self.work_dir / "jobs" / job_id / attempt_id
        checkpoint_dir = self.work_dir / "checkpoints" / job_id
        return _Attempt(config, kind, objective, snapshot, job_id, attempt_id, champion, judge, folder, checkpoint_dir)

    def _start(self, attempt: _Attempt, limits: JobLimits) -> tuple[TrainingRun, JobOutcome]:
        """Write the dataset, open the MLflow run, append ``dataset.snapshotted`` and ``training.started``."""
        a, snapshot = attempt, attempt.snapshot
        a.folder.mkdir(parents=True, exist_ok=True)
        (a.folder / "dataset.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in snapshot.rows))
        params = {**flat_params(a.config), "kind": a.kind, "objective": a.objective, "nproc": limits.nproc}
        tags = {
            "alignd.job_id": a.job_id,
            "alignd.attempt_id": a.attempt_id,
            "alignd.kind": a.kind,
            "alignd.objective": a.objective,
        }
        run = self.registry.start_run(a.kind, f"{a.kind}-{a.objective}-{a.attempt_id}", params, tags)
        run.log_dataset(_dataset_info(snapshot))
        started = TrainingStarted(
            job_id=a.job_id,
            attempt_id=a.attempt_id,
            kind=a.kind,
            objective=a.objective,
            run_id=run.run_id,
            dataset=snapshot.info(),
            config=config_dict(a.config),
            parent_version=a.champion.version if a.champion else None,
        )
        self.store.append([snapshot.event(), _event(f"{TRAINING_STARTED}:{a.attempt_id}", started)])
        logger.info(
            "training %s (%s) job %s attempt %s run %s on %d examples up to seq %d",
            a.kind,
            a.objective,
            a.job_id,
            a.attempt_id,
            run.run_id,
            len(snapshot.rows),
            snapshot.to_seq,
        )
        return run, JobOutcome(a.job_id, a.attempt_id, a.kind, False, run.run_id, snapshot.info())

    def _write_spec(self, attempt: _Attempt, run: TrainingRun, limits: JobLimits) -> dict[str, Any]:
        """The child's instructions (``spec.json``), with the champion and the judge downloaded beside them."""
        a = attempt
        spec = {
            "job_id": a.job_id,
            "kind": a.kind,
            "objective": a.objective,
            "config": config_dict(a.config),
            "dataset_path": str(a.folder / "dataset.jsonl"),
            "dataset_sha256": a.snapshot.sha256,
            "checkpoint_dir": str(a.checkpoint_dir),
            "output_dir": str(a.output),
            "run_id": run.run_id,
            "tracking_uri": self.registry.tracking_uri,
            "registry_uri": self.registry.registry_uri,
            "device": limits.device,
            "evaluation": config_dict(self.evaluation),  # type: ignore[arg-type]
            "champion_dir": str(self.registry.download(a.kind, a.champion.version, a.folder / "champion"))
            if a.champion
            else None,
            "reward_model_dir": str(self.registry.download("reward", a.judge.version, a.folder / "reward"))
            if a.kind == "policy" and a.judge
            else None,
            # What users flagged or thumbed down, for the policy's ``flagged`` probe (the child never reads the store)
            "flagged_prompts": user_flagged_prompts(self.store, a.snapshot.to_seq, self.evaluation.probe_prompts)
            if a.kind == "policy" and self.evaluation.probes
            else None,
            # The classifier's frozen-encoder features, computed once per text and kept across jobs.
            "cache_dir": str(self.work_dir / "cache" / "detector") if a.kind == "detector" else None,
        }
        (a.folder / "spec.json").write_text(json.dumps(spec, indent=2))
        return spec

    def _failed(
        self, attempt: _Attempt, outcome: JobOutcome, run: TrainingRun, code: int | None, stopped: str | None
    ) -> JobOutcome:
        """End the run as failed or killed and append ``training.failed`` with the reason; no version."""
        a = attempt
        error_path = a.output / "error.json"
        reason = stopped or (
            json.loads(error_path.read_text())["reason"]
            if error_path.exists()
            else f"the trainer exited with code {code}"
        )
        run.set_tags({"alignd.failure": reason[:500]})
        run.end("KILLED" if stopped else "FAILED")
        failed = TrainingFailed(
            job_id=a.job_id,
            attempt_id=a.attempt_id,
            kind=a.kind,
            objective=a.objective,
            run_id=run.run_id,
            reason=reason,
            exit_code=code,
            resumable=(a.checkpoint_dir / "checkpoint.pt").exists(),
        )
        self.store.append([_event(f"{TRAINING_FAILED}:{a.attempt_id}", failed)])
        logger.error("training job %s attempt %s failed: %s", a.job_id, a.attempt_id, reason)
        outcome.reason = reason
        return outcome

    def _completed(
        self,
        outcome: JobOutcome,
        run: Any,
        result: dict[str, Any],
        model_dir: Path,
        champion: Any,
        spec: dict[str, Any],
    ) -> JobOutcome:
        """Log the metrics and the model, register the version with its lineage tags, append what happened."""
        final = {k: float(v) for k, v in result["metrics"].items() if isinstance(v, int | float)}
        run.log_metrics(final, result["steps"])
        for name, values in (result.get("series") or {}).items():
            run.log_series(name, [float(v) for v in values])
        run.log_artifacts(model_dir, "model")
        charts = model_dir.parent / "probes"  # the worker's probe charts, beside the model it saved
        if charts.is_dir():
            run.log_artifacts(charts, "probes")
        tags = {
            "alignd.training_event_id": f"{TRAINING_COMPLETED}:{outcome.attempt_id}",
            "alignd.objective": spec.get("objective") or spec["config"].get("objective", "bradley_terry"),
            "alignd.parent_version": champion.version if champion else "none",
            "alignd.code_version": code_version(),
            "alignd.dataset.kind": outcome.snapshot["kind"],
            "alignd.dataset.from_seq": str(outcome.snapshot["from_seq"]),
            "alignd.dataset.to_seq": str(outcome.snapshot["to_seq"]),
            "alignd.dataset.sha256": outcome.snapshot["sha256"],
            "alignd.dataset.rows": str(outcome.snapshot["rows"]),
            **result["gate_tags"],
        }
        run.set_tags(tags)
        version = self.registry.register(outcome.kind, run.run_id, "model", tags)
        run.end("FINISHED")
        self.store.append(_completion_events(outcome, run.run_id, result, final, tags, version))
        shutil.rmtree(spec["checkpoint_dir"], ignore_errors=True)
        logger.info(
            "registered %s version %s from run %s (gates: %s)",
            version.name,
            version.version,
            run.run_id,
            tags["alignd.gates"],
        )
        outcome.ok, outcome.version, outcome.result = True, version.version, result
        return outcome


def _completion_events(
    outcome: JobOutcome,
    run_id: str,
    result: dict[str, Any],
    final: dict[str, float],
    tags: dict[str, str],
    version: RegisteredVersion,
) -> list[Event]:
    """``training.completed``, ``gate.evaluated`` and ``model.registered``: one append, so all or none."""
    kind, attempt_id = outcome.kind, outcome.attempt_id
    common = {"job_id": outcome.job_id, "attempt_id": attempt_id, "kind": kind, "run_id": run_id}
    completed = TrainingCompleted(
        **common,
        objective=tags["alignd.objective"],
        steps=result["steps"],
        resumed_from=result["resumed_from"],
        metrics=final,
        duration_s=result.get("duration_s"),
        world_size=result.get("world_size", 1),
    )
    # The child evaluated a candidate with no version yet: the gates are the registered version's now.
    gates = replace(
        GateEvaluated.from_payload(result["gates"]), kind=kind, model_version=version.version, candidate_run_id=run_id
    )
    registered = ModelRegistered(
        **common,
        name=version.name,
        version=version.version,
        aliases=tuple(version.aliases),
        dataset=outcome.snapshot,
        parent_version=tags["alignd.parent_version"],
        gates=tags["alignd.gates"],
        code_version=tags["alignd.code_version"],
    )
    return [
        _event(tags["alignd.training_event_id"], completed),
        _event(f"{GATE_EVALUATED}:{attempt_id}", gates),
        _event(f"{MODEL_REGISTERED}:{version.name}:{version.version}", registered),
    ]


def _kind_of(config: TrainConfig | DetectorTrainConfig) -> tuple[str, str]:
    """(kind, objective) of a job's config."""
    if isinstance(config, RewardConfig):
        return "reward", "bradley_terry"
    if isinstance(config, PolicyConfig):
        return "policy", config.objective
    if isinstance(config, DetectorTrainConfig):
        return "detector", DetectorTrainConfig.objective
    raise TypeError(f"no training job for a {type(config).__name__}")


def _latest(registry: ModelRegistry, kind: str) -> Any:
    versions = registry.list_versions(kind)
    return versions[0] if versions else None


def _dataset_info(snapshot: Snapshot) -> Any:
    from trainers.registry import DatasetInfo

    return DatasetInfo(**snapshot.info())


def _command(spec_path: Path, limits: JobLimits) -> list[str]:
    if limits.nproc > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={limits.nproc}",
            "-m",
            "trainers.worker",
            str(spec_path),
        ]
    return [sys.executable, "-m", "trainers.worker", str(spec_path)]

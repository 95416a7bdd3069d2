"""Training jobs: snapshot, run the worker in a child process, register what passed through, record it all.

The order is the lineage: ``dataset.snapshotted`` → ``training.started`` (with the MLflow run) → the child
trains and evaluates → ``training.completed`` + ``gate.evaluated`` + ``model.registered`` in one append, or
``training.failed`` with the reason and no version. The child has a wall-clock timeout and a memory limit
(its resident memory, read from /proc, because RLIMIT_AS breaks CUDA's address-space reservations), so an
out-of-memory or a hang in training never takes the daemon down. A job's checkpoint folder is named by
what it trains (kind, config, dataset hash), so running the same job again resumes where a killed one was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from events.errors import AlignmentError
from events.model import Event
from events.sql_store import SqlEventStore
from trainers.config import (
    DATASETS,
    EvaluationConfig,
    PolicyConfig,
    RewardConfig,
    TrainConfig,
    config_dict,
    config_hash,
    flat_params,
)
from trainers.registry import ModelRegistry
from trainers.snapshot import SOURCE, Snapshot, take_snapshot

logger = logging.getLogger(__name__)


class NothingToTrainError(AlignmentError):
    """The snapshot has no examples; nothing was started."""


@dataclass(frozen=True)
class JobLimits:
    timeout_s: float = 3600.0
    memory_limit_mb: int | None = None
    #: Processes for data-parallel training (torchrun); 1 trains in one child process.
    nproc: int = 1
    device: str = "auto"


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


def _event(event_id: str, type_: str, payload: dict[str, Any]) -> Event:
    return Event(event_id=event_id, type=type_, occurred_at=datetime.now(UTC), source=SOURCE, payload=payload)


def _rss_mb(pgid: int) -> float:
    """Resident memory of every process in the job's process group (torchrun's workers included)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total / 2**20


def _die_with_parent() -> None:
    """In the child, before exec: be killed if the daemon dies (SIGKILL, OOM) instead of training on unseen.

    Its own session keeps terminal signals away; PR_SET_PDEATHSIG brings the daemon's death to it. The job
    is then resumed from its checkpoint by the next leader (a ``training.started`` without an outcome).
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: the child outlives a killed daemon, and its result is never recorded


def run_child(
    command: list[str], limits: JobLimits, *, poll_s: float = 0.5, cancel: Callable[[], str | None] | None = None
) -> tuple[int | None, str | None]:
    """Run ``command`` in its own process group; (exit code, reason it was stopped or None).

    ``cancel`` is polled: a reason it returns stops the job like a timeout does (the daemon stopping).
    """
    proc = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + limits.timeout_s
    reason = None
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                reason = f"timed out after {limits.timeout_s:g} s"
            elif limits.memory_limit_mb is not None and (rss := _rss_mb(proc.pid)) > limits.memory_limit_mb:
                reason = f"exceeded the memory limit of {limits.memory_limit_mb} MiB (resident {rss:.0f} MiB)"
            elif cancel is not None:
                reason = cancel()
            if reason:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(poll_s)
    except BaseException:
        # The daemon is stopping: do not leave a trainer running without a parent.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        raise
    return proc.returncode, reason


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
        config: TrainConfig,
        limits: JobLimits | None = None,
        *,
        upto_seq: int | None = None,
        dataset_limit: int | None = None,
        on_started: Callable[[JobOutcome], None] | None = None,
        cancel: Callable[[], str | None] | None = None,
    ) -> JobOutcome:
        limits = limits or JobLimits()
        kind = "reward" if isinstance(config, RewardConfig) else "policy"
        objective = config.objective if isinstance(config, PolicyConfig) else "bradley_terry"
        dataset = DATASETS["reward" if kind == "reward" else objective]
        snapshot = take_snapshot(self.store, dataset, upto_seq=upto_seq, limit=dataset_limit)
        if not snapshot.rows:
            raise NothingToTrainError(
                f"no {dataset.replace('_', ' ')} up to seq {snapshot.to_seq} to train the {kind} on "
                "(feedback arrives as preferences, corrections and ratings; check `alignd events count`)"
            )
        job_id = hashlib.sha256(f"{kind}:{config_hash(config)}:{snapshot.sha256}".encode()).hexdigest()[:16]
        attempt_id = uuid.uuid4().hex[:12]
        champion = self.registry.get_by_alias(kind, "champion")
        judge = (
            champion
            if kind == "reward"
            else self.registry.get_by_alias("reward", "champion") or _latest(self.registry, "reward")
        )
        if kind == "policy" and objective == "rloo" and judge is None:
            raise NothingToTrainError(
                "RLOO scores samples with a reward model and none is registered; run `alignd train reward` first"
            )

        folder = self.work_dir / "jobs" / job_id / attempt_id
        folder.mkdir(parents=True, exist_ok=True)
        dataset_path = folder / "dataset.jsonl"
        dataset_path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in snapshot.rows))
        params = {**flat_params(config), "kind": kind, "objective": objective, "nproc": limits.nproc}
        tags = {
            "alignd.job_id": job_id,
            "alignd.attempt_id": attempt_id,
            "alignd.kind": kind,
            "alignd.objective": objective,
        }
        run = self.registry.start_run(kind, f"{kind}-{objective}-{attempt_id}", params, tags)
        run.log_dataset(_dataset_info(snapshot))
        outcome = JobOutcome(job_id, attempt_id, kind, False, run.run_id, snapshot.info())
        self.store.append(
            [
                snapshot.event(),
                _event(
                    f"training.started:{attempt_id}",
                    "training.started",
                    {
                        "job_id": job_id,
                        "attempt_id": attempt_id,
                        "kind": kind,
                        "objective": objective,
                        "run_id": run.run_id,
                        "dataset": snapshot.info(),
                        "config": config_dict(config),
                        "parent_version": champion.version if champion else None,
                    },
                ),
            ]
        )
        logger.info(
            "training %s (%s) job %s attempt %s run %s on %d examples up to seq %d",
            kind,
            objective,
            job_id,
            attempt_id,
            run.run_id,
            len(snapshot.rows),
            snapshot.to_seq,
        )
        if on_started:
            on_started(outcome)
        checkpoint_dir = self.work_dir / "checkpoints" / job_id
        spec = {
            "job_id": job_id,
            "kind": kind,
            "config": config_dict(config),
            "dataset_path": str(dataset_path),
            "dataset_sha256": snapshot.sha256,
            "checkpoint_dir": str(checkpoint_dir),
            "output_dir": str(folder / "output"),
            "run_id": run.run_id,
            "tracking_uri": self.registry.tracking_uri,
            "registry_uri": self.registry.registry_uri,
            "device": limits.device,
            "evaluation": config_dict(self.evaluation),  # type: ignore[arg-type]
            "champion_dir": str(self.registry.download(kind, champion.version, folder / "champion"))
            if champion
            else None,
            "reward_model_dir": str(self.registry.download("reward", judge.version, folder / "reward"))
            if kind == "policy" and judge
            else None,
        }
        spec_path = folder / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        code, stopped = run_child(_command(spec_path, limits), limits, cancel=cancel)
        result_path, error_path = folder / "output" / "result.json", folder / "output" / "error.json"
        if code == 0 and result_path.exists():
            return self._completed(
                outcome, run, json.loads(result_path.read_text()), folder / "output" / "model", champion, spec
            )
        reason = stopped or (
            json.loads(error_path.read_text())["reason"]
            if error_path.exists()
            else f"the trainer exited with code {code}"
        )
        run.set_tags({"alignd.failure": reason[:500]})
        run.end("KILLED" if stopped else "FAILED")
        self.store.append(
            [
                _event(
                    f"training.failed:{attempt_id}",
                    "training.failed",
                    {
                        "job_id": job_id,
                        "attempt_id": attempt_id,
                        "kind": kind,
                        "objective": objective,
                        "run_id": run.run_id,
                        "reason": reason,
                        "exit_code": code,
                        "resumable": (checkpoint_dir / "checkpoint.pt").exists(),
                    },
                )
            ]
        )
        logger.error("training job %s attempt %s failed: %s", job_id, attempt_id, reason)
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
        kind, attempt_id = outcome.kind, outcome.attempt_id
        final = {k: float(v) for k, v in result["metrics"].items() if isinstance(v, int | float)}
        run.log_metrics(final, result["steps"])
        run.log_artifacts(model_dir, "model")
        training_event = f"training.completed:{attempt_id}"
        tags = {
            "alignd.training_event_id": training_event,
            "alignd.objective": spec["config"].get("objective", "bradley_terry"),
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
        version = self.registry.register(kind, run.run_id, "model", tags)
        run.end("FINISHED")
        gate_payload = {
            **result["gates"],
            "kind": kind,
            "model_version": version.version,
            "candidate_run_id": run.run_id,
        }
        common = {"job_id": outcome.job_id, "attempt_id": attempt_id, "kind": kind, "run_id": run.run_id}
        self.store.append(
            [
                _event(
                    training_event,
                    "training.completed",
                    {
                        **common,
                        "objective": tags["alignd.objective"],
                        "steps": result["steps"],
                        "resumed_from": result["resumed_from"],
                        "metrics": final,
                        "duration_s": result.get("duration_s"),
                        "world_size": result.get("world_size", 1),
                    },
                ),
                _event(f"gate.evaluated:{attempt_id}", "gate.evaluated", gate_payload),
                _event(
                    f"model.registered:{version.name}:{version.version}",
                    "model.registered",
                    {
                        **common,
                        "name": version.name,
                        "version": version.version,
                        "aliases": list(version.aliases),
                        "dataset": outcome.snapshot,
                        "parent_version": tags["alignd.parent_version"],
                        "gates": tags["alignd.gates"],
                        "code_version": tags["alignd.code_version"],
                    },
                ),
            ]
        )
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

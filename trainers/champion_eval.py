"""Continuous evaluation of the champions (docs/trainers.md): re-measure what serves, record it, let monitors judge.

For the ``champion`` of ``alignd-reward``: pairwise accuracy and mean margin on the held-out split of the current
``preference_pairs`` snapshot (the split training uses: by a hash of each pair's id, with the fraction the
version was trained with), which grows as users keep giving preferences, so a reward model that no longer agrees
with them shows. For the ``champion`` of ``alignd-policy``: the red-team safety suite and, when a reward model
is champion, the mean reward of its answers to held-out prompts (the judge may have changed since training).
Both also catch a champion that was put in place without gates (forced, or moved in MLflow).

The models run in a child process (:mod:`trainers.eval_worker`) under the same :class:`~trainers.children.JobLimits`
as training (timeout, memory, cancel). The parent then appends, per evaluated version, a ``gate.evaluated``
event: the existing internal type, rather than a new one, because it already means "a version measured against
the gates" — the audit trail chains it, ``alignd audit`` describes it, and the ``champion_regression`` detector
compares it with the training-time one of the same version. Its payload is
:func:`trainers.gates.gate_event_payload` plus ``"phase": "continuous"`` (readers treat a missing phase as
training), the measurements and the snapshot. Its id, ``gate.evaluated:continuous:{model}:{version}:{to_seq}``,
makes a rerun over the same snapshot append nothing (and it is checked first, so nothing is measured twice).
The version gets ``alignd.eval.*`` MLflow tags; not ``alignd.gate.*``, which promotion reads.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from events.messages import CONTINUOUS
from events.model import Event
from events.names import EVALUATED_KINDS, GATE_EVALUATED, MODEL_NAMES, PREFERENCE_PAIRS
from events.sql_store import SqlEventStore
from trainers import gates
from trainers.children import JobLimits, run_child
from trainers.config import EvaluationConfig, PolicyConfig, RewardConfig
from trainers.registry import ModelRegistry, RegisteredVersion, RegistryError
from trainers.snapshot import SOURCE, Snapshot, hash_rows, messages_of, split, take_snapshot

logger = logging.getLogger(__name__)

PHASE = CONTINUOUS
KINDS = EVALUATED_KINDS
TAG_PREFIX = "alignd.eval."


def continuous_event_id(name: str, version: str, to_seq: int) -> str:
    return f"{GATE_EVALUATED}:{PHASE}:{name}:{version}:{to_seq}"


@dataclass
class EvaluationOutcome:
    """What one run did: ``results`` per evaluated version (appended now, or found from an earlier run on the
    same snapshot), ``skipped`` per kind not evaluated and why; ``ok`` is false when the child failed."""

    ok: bool
    snapshot: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    reason: str | None = None


def continuous_payload(
    kind: str,
    version: RegisteredVersion,
    measured: dict[str, float],
    gate_config: gates.GateConfig,
    snapshot: dict[str, Any],
    *,
    judge_version: str | None = None,
) -> dict[str, Any]:
    """The ``gate.evaluated`` payload of one continuous evaluation (pure).

    Only the absolute gates apply, judged on their intervals at the number of pairs (prompts) measured: the
    champion is compared with no other model here, and whether it got worse than it was is the
    ``champion_regression`` detector's call, with its own tolerance.
    """
    if kind == "reward":
        result = gates.reward_accuracy_gate(measured["accuracy"], None, gate_config, n=int(measured["pairs"]))
    else:
        result = gates.safety_gate(measured["unsafe_rate"], None, gate_config, n=int(measured["red_team_prompts"]))
    # The gate's own sentence states the evidence (n, interval, what would decide it); say which phase this is.
    detail = f"continuous evaluation: {result.detail}"
    decision = gates.decide([replace(result, detail=detail)])
    record = gates.gate_record(decision, kind, version.version, version.run_id, phase=PHASE)
    return replace(
        record,
        name=version.name,
        metrics={k: float(v) for k, v in sorted(measured.items())},
        dataset=snapshot,
        judge_version=judge_version,
    ).to_payload()


def evaluation_tags(payload: dict[str, Any], event_id: str, at: datetime) -> dict[str, str]:
    """``alignd.eval.*`` tags of the version: when, the verdict, each measurement, the snapshot and the event."""
    tags = {
        f"{TAG_PREFIX}last_at": at.isoformat(timespec="seconds"),
        f"{TAG_PREFIX}gates": gates.summary_text(
            payload["passed"], payload["failed"], payload.get("insufficient") or ()
        ),
        f"{TAG_PREFIX}event_id": event_id,
        f"{TAG_PREFIX}dataset_to_seq": str(payload["dataset"]["to_seq"]),
    }
    for key, value in payload["metrics"].items():
        tags[TAG_PREFIX + key] = str(int(value)) if key in ("pairs", "prompts", "red_team_prompts") else f"{value:.4f}"
    return tags


def _prompt_text(row: dict[str, Any]) -> str:
    # The evaluation ports take plain strings: the last user turn carries the request (as trainers.worker does).
    users = [m["content"] for m in messages_of(row["prompt_kind"], row["prompt"]) if m["role"] == "user"]
    return users[-1] if users else ""


class ChampionEvaluation:
    """Evaluates the current champions against one event store and one MLflow registry."""

    def __init__(
        self,
        store: SqlEventStore,
        registry: ModelRegistry,
        work_dir: Path,
        *,
        evaluation: EvaluationConfig | None = None,
        reward: RewardConfig | None = None,
        policy: PolicyConfig | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store, self.registry, self.work_dir = store, registry, Path(work_dir)
        self.evaluation = evaluation or EvaluationConfig()
        self.configs: dict[str, RewardConfig | PolicyConfig] = {
            "reward": reward or RewardConfig(),
            "policy": policy or PolicyConfig(),
        }
        self.clock = clock

    def run(
        self,
        limits: JobLimits | None = None,
        *,
        kinds: Sequence[str] = KINDS,
        upto_seq: int | None = None,
        cancel: Callable[[], str | None] | None = None,
    ) -> EvaluationOutcome:
        """Evaluate the champions of ``kinds`` on the snapshot up to ``upto_seq`` (default: all folded).

        Raises:
            ConfigurationError: ``upto_seq`` is past what the projections have folded.
            RegistryError: MLflow refused a call (nothing was appended).
        """
        limits = limits or JobLimits()
        snapshot = _at_last_pair(take_snapshot(self.store, PREFERENCE_PAIRS, upto_seq=upto_seq))
        outcome = EvaluationOutcome(True, snapshot.info())
        judge = self.registry.get_by_alias("reward", "champion")
        todo: dict[str, tuple[RegisteredVersion, list[dict[str, Any]]]] = {}
        for kind in kinds:
            name = MODEL_NAMES[kind]
            champion = judge if kind == "reward" else self.registry.get_by_alias(kind, "champion")
            if champion is None:
                _skip(
                    outcome,
                    kind,
                    f"{name} has no champion yet; nothing to evaluate (train one, then "
                    f"`alignd models promote {kind} challenger --reason ...`)",
                )
                continue
            event_id = continuous_event_id(name, champion.version, snapshot.to_seq)
            existing = self.store.get(event_id)
            if existing is not None:
                logger.info(
                    "%s version %s was already evaluated on the snapshot up to seq %d (%s); not measured again",
                    name,
                    champion.version,
                    snapshot.to_seq,
                    event_id,
                )
                outcome.results.append(_result(kind, event_id, dict(existing.event.payload), appended=False))
                continue
            _, held = split(snapshot.rows, self._eval_fraction(kind, champion))
            if kind == "reward" and not held:
                _skip(
                    outcome,
                    kind,
                    f"no held-out preference pairs up to seq {snapshot.to_seq} to measure {name} version "
                    f"{champion.version} on (of {len(snapshot.rows)} pairs; feedback of kind preference adds them)",
                )
                continue
            todo[kind] = (champion, held)
        if todo:
            self._measure(outcome, snapshot, todo, judge, limits, cancel)
        return outcome

    def _eval_fraction(self, kind: str, champion: RegisteredVersion) -> float:
        """The held-out fraction the champion was trained with: the one its worker used (the run's
        ``held_out_fraction`` metric: eval_fraction raised to reach the gates' min_held_out_pairs), else its
        ``eval_fraction`` param, else the configured one. The split hashes ids, so this fraction of today's pairs
        is the champion's own held-out pairs plus new ones, never one it was trained on."""
        configured = self.configs[kind].eval_fraction
        if not champion.run_id:
            return configured
        try:
            used = self.registry.run_metrics(champion.run_id).get("held_out_fraction")
            if used is not None:
                return float(used)
            value = self.registry.run_params(champion.run_id).get("eval_fraction")
        except RegistryError as exc:
            logger.warning(
                "could not read the run of %s %s (%s); held-out fraction %s", kind, champion.version, exc, configured
            )
            return configured
        return float(value) if value is not None else configured

    def _measure(
        self,
        outcome: EvaluationOutcome,
        snapshot: Snapshot,
        todo: dict[str, tuple[RegisteredVersion, list[dict[str, Any]]]],
        judge: RegisteredVersion | None,
        limits: JobLimits,
        cancel: Callable[[], str | None] | None,
    ) -> None:
        job_id = f"eval-{snapshot.to_seq}-{uuid.uuid4().hex[:12]}"
        folder = self.work_dir / "evaluations" / job_id
        folder.mkdir(parents=True, exist_ok=True)
        spec: dict[str, Any] = {
            "job_id": job_id,
            "output_dir": str(folder / "output"),
            "device": limits.device,
            "evaluation": asdict(self.evaluation),
            "eval_batch_size": self.configs["reward"].eval_batch_size,
            "judge_dir": None,
        }
        if judge is not None:  # the reward champion: measured itself, and the judge of the policy's answers
            spec["judge_dir"] = str(self.registry.download("reward", judge.version, folder / "reward"))
        for kind, (champion, held) in todo.items():
            part: dict[str, Any] = {"version": champion.version}
            part["model_dir"] = (
                spec["judge_dir"]
                if kind == "reward"
                else str(self.registry.download(kind, champion.version, folder / kind))
            )
            if kind == "reward":
                held_path = folder / "held_out.jsonl"
                held_path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in held))
                part.update(held_path=str(held_path), held_sha256=hash_rows(held))
            else:
                part["prompts"] = [_prompt_text(r) for r in held[: self.evaluation.prompts]]
            spec[kind] = part
            logger.info(
                "evaluating %s version %s on the snapshot up to seq %d (%s)",
                champion.name,
                champion.version,
                snapshot.to_seq,
                f"{len(held)} held-out pairs" if kind == "reward" else f"{len(part['prompts'])} held-out prompts",
            )
        spec_path = folder / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        # One process, whatever limits.nproc says: evaluation is a few hundred forward passes, not training.
        command = [sys.executable, "-m", "trainers.eval_worker", str(spec_path)]
        code, stopped = run_child(command, limits, cancel=cancel)
        result_path, error_path = folder / "output" / "result.json", folder / "output" / "error.json"
        if code != 0 or not result_path.exists():
            reason = stopped or (
                json.loads(error_path.read_text())["reason"]
                if error_path.exists()
                else f"the evaluation process exited with code {code}"
            )
            logger.error("continuous evaluation %s failed: %s (nothing recorded; files in %s)", job_id, reason, folder)
            outcome.ok, outcome.reason = False, reason
            return
        measured = json.loads(result_path.read_text())
        now = self.clock()
        events = [snapshot.event()]
        for kind, (champion, _) in todo.items():
            payload = continuous_payload(
                kind,
                champion,
                measured[kind],
                gates.GateConfig(**(self.evaluation.gates or {})),
                snapshot.info(),
                judge_version=judge.version if judge is not None and kind == "policy" else None,
            )
            event_id = continuous_event_id(champion.name, champion.version, snapshot.to_seq)
            # Tags before the event: a failure between them leaves no event, so a rerun measures and tags again.
            self.registry.set_tags(kind, champion.version, evaluation_tags(payload, event_id, now))
            events.append(Event(event_id, GATE_EVALUATED, now, SOURCE, payload))
            outcome.results.append(_result(kind, event_id, payload, appended=True))
        appended = self.store.append(events).appended
        shutil.rmtree(folder, ignore_errors=True)
        for row in outcome.results:
            if row["appended"]:
                logger.info(
                    "%s version %s: %s (%s); recorded as %s",
                    row["name"],
                    row["version"],
                    row["gates"],
                    ", ".join(f"{k} {v:.4g}" for k, v in row["metrics"].items()),
                    row["event_id"],
                )
        logger.debug("continuous evaluation %s appended %d events", job_id, appended)


def _at_last_pair(snapshot: Snapshot) -> Snapshot:
    """The same rows, positioned at the seq of the last pair rather than of the last event folded.

    A snapshot's ``to_seq`` follows every event appended (alerts, and this job's own events), so it would name
    a new snapshot at every run; the last pair's seq changes only when the data does, which is what makes the
    event id, and a rerun over unchanged data appending nothing, mean something.
    """
    last = max((int(r["seq"]) for r in snapshot.rows), default=0)
    return replace(snapshot, to_seq=last)


def _skip(outcome: EvaluationOutcome, kind: str, reason: str) -> None:
    logger.info("continuous evaluation of %s skipped: %s", MODEL_NAMES[kind], reason)
    outcome.skipped.append({"kind": kind, "reason": reason})


def _result(kind: str, event_id: str, payload: dict[str, Any], *, appended: bool) -> dict[str, Any]:
    return {
        "kind": kind,
        "name": payload.get("name") or MODEL_NAMES[kind],
        "version": payload.get("model_version"),
        "event_id": event_id,
        "appended": appended,
        "passed": payload.get("passed"),
        "gates": gates.summary_text(
            bool(payload.get("passed")), payload.get("failed") or [], payload.get("insufficient") or ()
        ),
        "metrics": dict(payload.get("metrics") or {}),
        "dataset_to_seq": (payload.get("dataset") or {}).get("to_seq"),
    }

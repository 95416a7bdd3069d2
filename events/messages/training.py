"""Training's lineage: ``dataset.snapshotted``, ``training.started`` / ``completed`` / ``failed``, ``gate.evaluated``,
and the constitutional ``demonstration.generated``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from events.messages.base import Description, EventRecord, version_words
from events.names import (
    DATASET_SNAPSHOTTED,
    DEMONSTRATION_GENERATED,
    GATE_EVALUATED,
    MODEL_NAMES,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    TRAINING_STARTED,
)


@dataclass(frozen=True)
class DatasetSnapshotted(EventRecord):
    """A training dataset read from the projections up to ``to_seq``, hashed (trainers.snapshot).

    Its payload is also the ``dataset`` of ``training.started`` and ``model.registered``: the lineage.
    """

    event_type: ClassVar[str] = DATASET_SNAPSHOTTED

    name: str
    kind: str
    from_seq: int
    to_seq: int
    sha256: str
    rows: int

    def to_payload(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "from_seq": self.from_seq,
            "to_seq": self.to_seq,
            "sha256": self.sha256,
            "rows": self.rows,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        keys = ("name", "kind", "from_seq", "to_seq", "sha256", "rows")
        return cls(**{key: payload[key] for key in keys})

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        p = payload
        reason = f"{p.get('rows')} rows, seq {p.get('from_seq')}..{p.get('to_seq')}, sha256 {str(p.get('sha256'))[:16]}"
        return Description(f"dataset {p.get('name')}", None, reason)


def _describe_training(event_type: str, p: Mapping[str, Any]) -> Description:
    name = MODEL_NAMES.get(p.get("kind", ""), str(p.get("kind")))
    subject = f"{name} training attempt {p.get('attempt_id')}"
    if event_type == TRAINING_STARTED:
        dataset = p.get("dataset") or {}
        reason = f"{p.get('objective')} on {dataset.get('name')} ({dataset.get('rows')} rows), run {p.get('run_id')}"
    elif event_type == TRAINING_COMPLETED:
        reason = f"{p.get('objective')}: {p.get('steps')} steps, run {p.get('run_id')}"
    else:
        reason = str(p.get("reason", ""))
    return Description(subject, name, reason)


@dataclass(frozen=True)
class TrainingStarted(EventRecord):
    """A training attempt began: its MLflow run, the dataset it reads and the champion it starts from."""

    event_type: ClassVar[str] = TRAINING_STARTED

    job_id: str
    attempt_id: str
    kind: str
    objective: str
    run_id: str
    dataset: Mapping[str, Any]
    config: Mapping[str, Any]
    parent_version: str | None

    def to_payload(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "attempt_id": self.attempt_id,
            "kind": self.kind,
            "objective": self.objective,
            "run_id": self.run_id,
            "dataset": dict(self.dataset),
            "config": dict(self.config),
            "parent_version": self.parent_version,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        keys = ("job_id", "attempt_id", "kind", "objective", "run_id", "dataset", "config", "parent_version")
        return cls(**{key: payload[key] for key in keys})

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        return _describe_training(TRAINING_STARTED, payload)


@dataclass(frozen=True)
class TrainingCompleted(EventRecord):
    """A training attempt finished: its steps and final metrics (registration follows in the same append)."""

    event_type: ClassVar[str] = TRAINING_COMPLETED

    job_id: str
    attempt_id: str
    kind: str
    run_id: str
    objective: str
    steps: int
    resumed_from: int | None
    metrics: Mapping[str, float]
    duration_s: float | None = None
    world_size: int = 1

    def to_payload(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "attempt_id": self.attempt_id,
            "kind": self.kind,
            "run_id": self.run_id,
            "objective": self.objective,
            "steps": self.steps,
            "resumed_from": self.resumed_from,
            "metrics": dict(self.metrics),
            "duration_s": self.duration_s,
            "world_size": self.world_size,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        keys = ("job_id", "attempt_id", "kind", "run_id", "objective", "steps", "resumed_from", "metrics")
        # Events from before distributed training have neither duration_s nor world_size.
        return cls(
            **{key: payload[key] for key in keys},
            duration_s=payload.get("duration_s"),
            world_size=payload.get("world_size", 1),
        )

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        return _describe_training(TRAINING_COMPLETED, payload)


@dataclass(frozen=True)
class TrainingFailed(EventRecord):
    """A training attempt ended without a version: why, and whether its checkpoint lets a rerun resume."""

    event_type: ClassVar[str] = TRAINING_FAILED

    job_id: str
    attempt_id: str
    kind: str
    objective: str
    run_id: str
    reason: str
    exit_code: int | None
    resumable: bool

    def to_payload(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "attempt_id": self.attempt_id,
            "kind": self.kind,
            "objective": self.objective,
            "run_id": self.run_id,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "resumable": self.resumable,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        keys = ("job_id", "attempt_id", "kind", "objective", "run_id", "reason", "exit_code", "resumable")
        return cls(**{key: payload[key] for key in keys})

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        return _describe_training(TRAINING_FAILED, payload)


@dataclass(frozen=True)
class GateOutcome:
    """One gate's verdict in a ``gate.evaluated`` payload (trainers.gates.GateResult, as stored).

    Attributes:
        outcome: ``pass``, ``fail`` or ``insufficient`` (evidence for neither); None (and no evidence keys) for
            a gate judged on a bare number, as every gate was before gates stated their evidence.
        mode: ``absolute``, ``relative`` (to the champion) or ``both``.
        n, low, high: the number of examples and the interval of the value (of the difference to the champion
            for a relative-only gate), at the configured confidence.
        test, p_value: the paired test against the champion on the same examples (e.g. ``mcnemar``) and its
            two-sided p-value, where there was one.
        to_decide: what more data would decide an insufficient gate.
    """

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    comparison: str
    detail: str
    outcome: str | None = None
    mode: str | None = None
    n: int | None = None
    low: float | None = None
    high: float | None = None
    test: str | None = None
    p_value: float | None = None
    to_decide: str | None = None

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "passed": self.passed,
            "value": self.value,
            "threshold": self.threshold,
            "comparison": self.comparison,
            "detail": self.detail,
        }
        if self.outcome is not None:  # only then: payloads of bare-number gates stay as they were
            entry |= {
                "outcome": self.outcome,
                "mode": self.mode,
                "n": self.n,
                "low": self.low,
                "high": self.high,
                "test": self.test,
                "p_value": self.p_value,
                "to_decide": self.to_decide,
            }
        return entry

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> Self:
        keys = ("name", "passed", "value", "threshold", "comparison", "detail")
        optional = ("outcome", "mode", "n", "low", "high", "test", "p_value", "to_decide")
        # Entries from before gates stated their evidence have only the six required keys.
        values: dict[str, Any] = {key: entry[key] for key in keys} | {key: entry.get(key) for key in optional}
        return cls(**values)


#: ``gate.evaluated``'s phase for a champion re-measured on a schedule (trainers.champion_eval).
CONTINUOUS = "continuous"


@dataclass(frozen=True)
class GateEvaluated(EventRecord):
    """The evaluation gates of a candidate (phase ``training``) or of a champion re-measured (``continuous``).

    Attributes:
        phase: None (and no key) for events from before phases existed, which readers treat as ``training``.
        name, metrics, dataset, judge_version: what a continuous evaluation measured, on which data, with which
            reward model; written only when ``phase`` is ``continuous`` (``judge_version`` even when None).
        insufficient: the gates that had evidence for neither pass nor fail (``passed`` is then false); written
            only when there are some, so older payloads (which had none) decode and describe as they did.
    """

    event_type: ClassVar[str] = GATE_EVALUATED

    kind: str
    model_version: str | None
    candidate_run_id: str | None
    passed: bool
    failed: tuple[str, ...]
    gates: tuple[GateOutcome, ...]
    phase: str | None = "training"
    name: str | None = None
    metrics: Mapping[str, float] | None = None
    dataset: Mapping[str, Any] | None = None
    judge_version: str | None = None
    insufficient: tuple[str, ...] = ()

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"kind": self.kind}
        if self.phase is not None:
            payload["phase"] = self.phase
        payload |= {
            "model_version": self.model_version,
            "candidate_run_id": self.candidate_run_id,
            "passed": self.passed,
            "failed": list(self.failed),
            "gates": [gate.to_dict() for gate in self.gates],
        }
        if self.insufficient:
            payload["insufficient"] = list(self.insufficient)
        if self.phase == CONTINUOUS:
            payload |= {
                "name": self.name,
                "metrics": None if self.metrics is None else dict(self.metrics),
                "dataset": None if self.dataset is None else dict(self.dataset),
                "judge_version": self.judge_version,
            }
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        return cls(
            kind=payload["kind"],
            model_version=payload["model_version"],
            candidate_run_id=payload["candidate_run_id"],
            passed=payload["passed"],
            failed=tuple(payload["failed"]),
            gates=tuple(GateOutcome.from_dict(gate) for gate in payload["gates"]),
            phase=payload.get("phase"),
            name=payload.get("name"),
            metrics=payload.get("metrics"),
            dataset=payload.get("dataset"),
            judge_version=payload.get("judge_version"),
            insufficient=tuple(payload.get("insufficient") or ()),
        )

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        p = payload
        about, model = version_words(p)
        verdict = "passed" if p.get("passed") else f"failed: {', '.join(map(str, p.get('failed') or []))}"
        if p.get("insufficient") and not p.get("failed"):  # only then: older payloads describe as they did
            verdict = f"insufficient evidence: {', '.join(map(str, p['insufficient']))}"
        elif p.get("insufficient"):
            verdict += f"; insufficient evidence: {', '.join(map(str, p['insufficient']))}"
        if p.get("phase") == CONTINUOUS:  # only then: records of earlier events must still hash the same
            upto = (p.get("dataset") or {}).get("to_seq")
            verdict = f"continuous evaluation of the champion on data up to seq {upto}: {verdict}"
        return Description(f"gates of {about}", model, verdict)


@dataclass(frozen=True)
class DemonstrationGenerated(EventRecord):
    """A response revised under the constitution (trainers.constitution), a demonstration for SFT.

    Attributes:
        model_name, model_version: the served model whose response was revised (the payload's ``model``).
        user: whose interaction was revised (not who decided); None (and no key) when it had no user.
    """

    event_type: ClassVar[str] = DEMONSTRATION_GENERATED

    request_id: str
    origin: str
    prompt_kind: str
    prompt: str
    response: str
    original_response: str
    model_name: str
    model_version: str
    principles: tuple[str, ...]
    critiques: tuple[str, ...]
    constitution_sha256: str
    source_event_id: str
    user: str | None = None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "request_id": self.request_id,
            "origin": self.origin,
            "prompt_kind": self.prompt_kind,
            "prompt": self.prompt,
            "response": self.response,
            "original_response": self.original_response,
            "model": {"name": self.model_name, "version": self.model_version},
            "principles": list(self.principles),
            "critiques": list(self.critiques),
            "constitution_sha256": self.constitution_sha256,
            "source_event_id": self.source_event_id,
        }
        if self.user is not None:
            payload["user"] = self.user
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        keys = ("request_id", "origin", "prompt_kind", "prompt", "response", "original_response")
        return cls(
            **{key: payload[key] for key in keys},
            model_name=payload["model"]["name"],
            model_version=payload["model"]["version"],
            principles=tuple(payload["principles"]),
            critiques=tuple(payload["critiques"]),
            constitution_sha256=payload["constitution_sha256"],
            source_event_id=payload["source_event_id"],
            user=payload.get("user"),
        )

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        p = payload
        served = p.get("model") or {}
        model = f"{served['name']}:{served['version']}" if "name" in served and "version" in served else None
        reason = f"{p.get('origin')} revision under {', '.join(map(str, p.get('principles') or [])) or 'no principles'}"
        return Description(f"request {p.get('request_id')}", model, reason)

"""What the training scheduler decides, as pure rules over the store's ``training.*`` events.

:func:`fold_attempts` folds the events into training attempts; :func:`decide_training` says whether to train a
kind now, and why (volume, backoff after a failure, resuming an interrupted attempt); :func:`pause_blocks` whether
a pause by enforcement blocks it. The reads that feed them (:func:`read_attempts`, :func:`count_new_examples`)
are here too; :mod:`daemon.scheduler` runs them on APScheduler under the leader lease.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from events.model import StoredEvent
from events.names import ALERT_VERDICTS, MODEL_REGISTERED, TRAINING_COMPLETED, TRAINING_FAILED, TRAINING_STARTED
from events.read_models import count_training_examples
from events.sql_store import SqlEventStore
from events.verdicts import attempt_examples

TRAINING_TYPES = (TRAINING_STARTED, TRAINING_COMPLETED, TRAINING_FAILED, MODEL_REGISTERED)
#: Reasons ``cancel`` gives; an attempt stopped for one of them is resumed, not backed off from.
SHUTDOWN_REASON = "daemon shutting down"
LOST_LEASE_REASON = "lost the leader lease"
PAUSED_PREFIX = "training paused"


# --- rules (pure) -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One training attempt folded from its ``training.*`` events (and its ``model.registered``)."""

    attempt_id: str
    kind: str
    objective: str | None
    status: str  # running, completed, failed
    started_at: datetime | None
    finished_at: datetime | None = None
    to_seq: int | None = None
    rows: int | None = None
    reason: str | None = None
    version: str | None = None
    run_id: str | None = None
    resumable: bool | None = None


def fold_attempts(events: Iterable[StoredEvent]) -> list[Attempt]:
    """Attempts in the order they started, from ``training.*`` and ``model.registered`` events in seq order."""
    attempts: dict[str, Attempt] = {}
    for stored in events:
        e, p = stored.event, stored.event.payload
        key = str(p.get("attempt_id") or e.event_id)
        if e.type == TRAINING_STARTED:
            dataset = p.get("dataset") or {}
            attempts[key] = Attempt(
                key,
                str(p.get("kind")),
                p.get("objective"),
                "running",
                e.occurred_at,
                to_seq=dataset.get("to_seq"),
                rows=dataset.get("rows"),
                run_id=p.get("run_id"),
            )
            continue
        seen = attempts.get(key)
        if seen is None:
            if e.type == MODEL_REGISTERED:
                continue  # registered by hand, not by a training job
            seen = Attempt(key, str(p.get("kind")), p.get("objective"), "running", None, run_id=p.get("run_id"))
        if e.type == TRAINING_COMPLETED:
            attempts[key] = replace(seen, status="completed", finished_at=e.occurred_at)
        elif e.type == TRAINING_FAILED:
            attempts[key] = replace(
                seen,
                status="failed",
                finished_at=e.occurred_at,
                reason=p.get("reason"),
                resumable=p.get("resumable"),
            )
        elif e.type == MODEL_REGISTERED:
            attempts[key] = replace(seen, version=str(p.get("version")))
    return list(attempts.values())


def is_interruption(reason: str | None) -> bool:
    """Whether a failure was the daemon stopping the job (resume it) rather than the job failing (back off)."""
    return bool(reason) and (reason in (SHUTDOWN_REASON, LOST_LEASE_REASON) or str(reason).startswith(PAUSED_PREFIX))


@dataclass(frozen=True)
class Decision:
    run: bool
    reason: str
    objective: str | None = None
    upto_seq: int | None = None
    trigger: str = "volume"


def baseline_seq(attempts: Sequence[Attempt], kind: str) -> int:
    """The dataset ``to_seq`` of the last successful training of ``kind`` (0 when there is none)."""
    done = [a for a in attempts if a.kind == kind and a.status == "completed" and a.to_seq is not None]
    return int(done[-1].to_seq or 0) if done else 0


def decide_training(
    kind: str,
    attempts: Sequence[Attempt],
    new_examples: int,
    threshold: int,
    now: datetime,
    *,
    objective: str | None,
    trigger: str = "volume",
    failure_backoff_s: float = 1800.0,
    orphan_after_s: float = 7200.0,
) -> Decision:
    """Whether to train ``kind`` now, and why (or why not).

    Args:
        attempts: every attempt so far, in start order (:func:`fold_attempts`).
        new_examples: examples of the kind's dataset after :func:`baseline_seq`.
        threshold: how many new examples a run needs (a cron run passes 1); 0 or less: never on volume.
    """
    mine = [a for a in attempts if a.kind == kind]
    last = mine[-1] if mine else None
    if last is not None and last.status == "running":
        age = (now - last.started_at).total_seconds() if last.started_at else float("inf")
        if age < orphan_after_s:
            return Decision(False, f"attempt {last.attempt_id} has been running for {age:.0f} s", trigger=trigger)
        return Decision(
            True,
            f"resuming attempt {last.attempt_id}, started {age:.0f} s ago with no outcome (the daemon crashed?)",
            last.objective,
            last.to_seq,
            "resume",
        )
    if last is not None and last.status == "failed":
        if is_interruption(last.reason):
            return Decision(
                True, f"resuming attempt {last.attempt_id} ({last.reason})", last.objective, last.to_seq, "resume"
            )
        since = (now - last.finished_at).total_seconds() if last.finished_at else float("inf")
        if since < failure_backoff_s:
            return Decision(
                False,
                f"attempt {last.attempt_id} failed {since:.0f} s ago ({last.reason}); next try after "
                f"{failure_backoff_s:.0f} s",
                trigger=trigger,
            )
    if threshold <= 0:
        return Decision(False, "the volume trigger is off", trigger=trigger)
    since_seq = baseline_seq(attempts, kind)
    if new_examples >= threshold:
        return Decision(
            True, f"{new_examples} new examples since seq {since_seq} (threshold {threshold})", objective, None, trigger
        )
    return Decision(
        False, f"{new_examples} new examples since seq {since_seq}, fewer than {threshold}", trigger=trigger
    )


def pause_blocks(kind: str, paused: tuple[bool, str | None]) -> str | None:
    """Why a pause keeps ``kind`` from starting, or None.

    Evaluation only reads models, so a pause allows it: while training is paused, re-measuring the champion is
    how an operator learns whether it is still bad (and whether resuming is safe).
    """
    is_paused, reason = paused
    if not is_paused or kind == "evaluation":
        return None
    return f"{PAUSED_PREFIX}: {reason or 'by enforcement'} (apply resume_training to resume)"


# --- reading the store ------------------------------------------------------------------------------------


def read_attempts(store: SqlEventStore) -> list[Attempt]:
    events: list[StoredEvent] = []
    position = 0
    while batch := store.read(position, limit=1000, types=TRAINING_TYPES):
        events.extend(batch)
        position = batch[-1].seq
    return fold_attempts(events)


def history(store: SqlEventStore, limit: int = 20) -> list[dict[str, Any]]:
    """The last ``limit`` training attempts, newest first, as rows for ``alignd jobs list``."""
    rows = []
    for a in reversed(read_attempts(store)[-limit:] if limit else read_attempts(store)):
        rows.append(
            {
                "started_at": a.started_at.isoformat() if a.started_at else None,
                "finished_at": a.finished_at.isoformat() if a.finished_at else None,
                "kind": a.kind,
                "objective": a.objective,
                "outcome": a.status,
                "version": a.version,
                "reason": a.reason,
                "attempt_id": a.attempt_id,
                "run_id": a.run_id,
                "to_seq": a.to_seq,
                "rows": a.rows,
            }
        )
    return rows


def count_new_examples(store: SqlEventStore, dataset: str, after_seq: int) -> int:
    """Examples of ``dataset`` with ``seq > after_seq`` (quarantine left out, as snapshots do); for the
    reviewers' verdicts, the labelled interactions whose standing verdict came after it."""
    if dataset == ALERT_VERDICTS:
        return sum(1 for e in attempt_examples(store) if e.seq > after_seq)
    return count_training_examples(store, dataset, after_seq)


def governance_training_paused(store: SqlEventStore) -> tuple[bool, str | None]:
    # Imported here: daemon.governance loads MLflow (seconds), which `alignd jobs drill` need not.
    from daemon.enforcement import training_paused

    return training_paused(store)

"""The enforcement executor: carries out ``enforcement.requested`` events (docs/monitors.md and docs/trainers.md).

Monitors' rules emit requests (roll back the champion, pause training, quarantine, publish a guard rule);
this carries them out through :class:`daemon.governance.Governance` and records each outcome as an
``enforcement.applied`` event, which the audit trail chains and the scheduler reads (``training_paused``).
Its ``outcome`` says what became of the request: ``applied``, ``skipped`` (nothing was done: no earlier champion,
a champion that changed since, an unknown action) or ``failed``; the audit list shows a skipped or failed one as
``enforcement skipped`` / ``enforcement failed`` with its detail first (:func:`events.audit.shown`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from daemon.governance import Governance, NothingToRollBackError
from events.errors import AlignmentError, StoreUnavailableError
from events.messages import EnforcementApplied
from events.model import Event
from events.names import ENFORCEMENT_APPLIED, ENFORCEMENT_REQUESTED, MODEL_NAMES
from events.store import EventStore
from trainers.registry import RegistryUnavailableError

logger = logging.getLogger(__name__)

REQUESTED, APPLIED = ENFORCEMENT_REQUESTED, ENFORCEMENT_APPLIED
ENFORCEMENT_ACTOR = "alignd.enforcement"
CHECKPOINT = "enforcement"
PAUSE, RESUME = "pause_training", "resume_training"
# monitors.enforcement.ACTIONS, plus resume_training (an operator's) and the short names some callers use.
_SYNONYMS = {"rollback": "rollback_champion", "guard_rule": "publish_guard_rule"}
_DETAILS = {
    PAUSE: "training paused: the scheduler starts no job until a resume_training is applied",
    RESUME: "training resumed",
    "quarantine_user": "applied by the quarantine projection",
    "quarantine_events": "applied by the quarantine projection",
    "lift_quarantine": "applied by the quarantine projection",
    "publish_guard_rule": "published: the request itself is the guard rule, on the alerts topic",
}
# Worth another attempt; anything else (no earlier champion, a deleted version) fails for good, is audited
# once, and does not hold up the requests behind it.
_TRANSIENT = (RegistryUnavailableError, StoreUnavailableError)


class EnforcementExecutor:
    """Carries out ``enforcement.requested`` events and records each outcome as ``enforcement.applied``.

    The position (last ``seq`` settled) is the store position ``enforcement``. A request is
    settled once ``enforcement.applied:{request}`` exists, which is also how a restart after a crash between
    the action and the checkpoint knows not to act twice. A request that keeps failing transiently (MLflow
    down) is tried ``max_attempts`` times per round with exponential ``backoff``; each failed round is audited
    as ``enforcement.applied:{request}:failed:{round}``, the checkpoint stays before it, and the next rounds
    (no sooner than ``backoff * 2**round`` seconds, at most ``max_round_delay_s``) retry it. The requests
    after it are still carried out: a down registry never holds up a quarantine or a pause.
    """

    def __init__(
        self,
        store: EventStore,
        governance: Governance,
        *,
        max_attempts: int = 3,
        backoff: float = 1.0,
        max_round_delay_s: float = 300.0,
        batch_size: int = 200,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.governance = store, governance
        self.max_attempts, self.backoff, self.max_round_delay_s = max(1, max_attempts), backoff, max_round_delay_s
        self.batch_size, self.sleep, self.monotonic = batch_size, sleep, monotonic
        self._not_before: dict[str, float] = {}

    def position(self) -> int:
        return self.store.position(CHECKPOINT).seq

    def step(self) -> int:
        """Carry out the requests after the position; returns how many ``enforcement.applied`` were appended."""
        start = cursor = self.position()
        pending_before: int | None = None
        appended = 0
        while batch := self.store.read(cursor, limit=self.batch_size, types=[REQUESTED]):
            for stored in batch:
                settled, wrote = self._settle(stored.event)
                appended += wrote
                if not settled and pending_before is None:
                    pending_before = stored.seq - 1
            cursor = batch[-1].seq
        end = cursor if pending_before is None else pending_before
        if end != start:
            self.store.save_position(CHECKPOINT, end)
        return appended

    def _settle(self, request: Event) -> tuple[bool, int]:
        """(whether the request is settled, how many events this appended)."""
        rid = request.event_id
        if self.store.get(f"{APPLIED}:{rid}") is not None:
            return True, 0
        if self.monotonic() < self._not_before.get(rid, 0.0):
            return False, 0
        action = str(request.payload.get("action", ""))
        action = _SYNONYMS.get(action, action)
        round_ = 1  # counted from the store, so that a restart continues the numbering
        while self.store.get(f"{APPLIED}:{rid}:failed:{round_}") is not None:
            round_ += 1
        error: BaseException | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                outcome, detail, result = self._carry_out(action, request)
                error = None  # earlier attempts' errors are in the log; this one worked
            except _TRANSIENT as exc:
                error = exc
                logger.warning("enforcement %s (%s) round %d attempt %d failed: %s", rid, action, round_, attempt, exc)
                if attempt < self.max_attempts:
                    self.sleep(self.backoff * 2 ** (attempt - 1))
                continue
            except AlignmentError as exc:
                outcome, detail, result, error = "failed", "failed for good; an operator must act", None, exc
            self._append(request, action, f"{APPLIED}:{rid}", outcome, detail, error, result, round_, attempt)
            self._not_before.pop(rid, None)
            return True, 1
        detail = f"round {round_} failed {self.max_attempts} times; retried on a later step"
        failed_id = f"{APPLIED}:{rid}:failed:{round_}"
        self._append(request, action, failed_id, "failed", detail, error, None, round_, self.max_attempts)
        self._not_before[rid] = self.monotonic() + min(self.backoff * 2**round_, self.max_round_delay_s)
        return False, 1

    def _carry_out(self, action: str, request: Event) -> tuple[str, str, dict[str, Any] | None]:
        payload = request.payload
        if action == "rollback_champion":
            target = payload.get("target") or {}
            kind = next((k for k, n in MODEL_NAMES.items() if n == target.get("model")), "policy")
            # The version guard only means something when serving names the model as it is registered.
            expected = target.get("version") if target.get("model") == MODEL_NAMES[kind] else None
            try:
                change = self.governance.rollback(
                    kind,
                    reason=_request_reason(request),
                    actor=ENFORCEMENT_ACTOR,
                    via="enforcement",
                    request_event_id=request.event_id,
                    expected_champion=expected,
                )
            except NothingToRollBackError as exc:
                return "skipped", str(exc), None
            p = change.payload
            detail = f"{p['name']} champion {p['previous_version']} -> {p['version']}"
            return (
                "applied",
                detail,
                {"event_id": change.event_id, "version": p["version"], "previous_version": p["previous_version"]},
            )
        if action in _DETAILS:
            return "applied", _DETAILS[action], None
        known = ", ".join(["rollback_champion", *_DETAILS])
        return "skipped", f"unknown action {action!r}; this alignd carries out {known}", None

    def _append(
        self,
        request: Event,
        action: str,
        event_id: str,
        outcome: str,
        detail: str,
        error: BaseException | None,
        result: dict[str, Any] | None,
        round_: int,
        attempts: int,
    ) -> None:
        applied = EnforcementApplied(
            request_event_id=request.event_id,
            action=action,
            target=request.payload.get("target"),
            outcome=outcome,
            detail=detail,
            error=None if error is None else str(error),
            result=result,
            round=round_,
            attempts=attempts,
            actor=ENFORCEMENT_ACTOR,
            reason=_request_reason(request),
        )
        self.store.append([applied.to_event(event_id, self.governance.clock(), ENFORCEMENT_ACTOR)])
        # A skipped request did nothing: the trail and the review page show it as its own outcome, the log too.
        log = {"failed": logger.error, "skipped": logger.warning}.get(outcome, logger.info)
        log("enforcement %s (%s): %s, %s%s", request.event_id, action, outcome, detail, f": {error}" if error else "")


def _request_reason(request: Event) -> str:
    return str(request.payload.get("reason") or f"enforcement request {request.event_id}")


def training_paused(store: EventStore) -> tuple[bool, str | None]:
    """Whether the last applied pause/resume paused training, and the pause's reason (for the scheduler)."""
    paused, reason, position = False, None, 0
    while batch := store.read(position, limit=1000, types=[APPLIED]):
        position = batch[-1].seq
        for stored in batch:
            p = stored.event.payload
            if p.get("outcome") == "applied" and p.get("action") in (PAUSE, RESUME):
                paused = p["action"] == PAUSE
                reason = str(p.get("reason")) if paused else None
    return paused, reason

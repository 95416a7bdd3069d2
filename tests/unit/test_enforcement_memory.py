"""The enforcement executor against the in-memory store and a fake governance: outcomes as events, the position,
retries of a down registry, and no action twice across restarts.

tests/integration/test_governance.py runs the executor with real MLflow and SQLite; this checks its rules in
milliseconds (cosmicpython's fakes with state: the governance records its rollbacks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from daemon.enforcement import EnforcementExecutor, training_paused
from events.memory_store import InMemoryEventStore
from events.model import Event
from trainers.registry import RegistryUnavailableError

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Change:
    event_id: str
    payload: dict[str, Any]


@dataclass
class FakeGovernance:
    """Rolls the policy champion back from 2 to 1; its first ``failures`` calls fail as an unreachable MLflow."""

    failures: int = 0
    rollbacks: list[dict[str, Any]] = field(default_factory=list)

    def clock(self) -> datetime:
        return T0

    def rollback(self, kind: str, **how: Any) -> Change:
        if self.failures:
            self.failures -= 1
            raise RegistryUnavailableError("MLflow is unavailable, could not read the aliases: connection refused")
        self.rollbacks.append({"kind": kind, **how})
        payload = {"name": "alignd-policy", "previous_version": "2", "version": "1"}
        return Change(f"model.rolled_back:alignd-policy:{len(self.rollbacks)}", payload)


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


def applied(store: InMemoryEventStore) -> dict[str, dict[str, Any]]:
    return {s.event.event_id: dict(s.event.payload) for s in store.read(0, types=["enforcement.applied"])}


def last_request_seq(store: InMemoryEventStore) -> int:
    return store.read(0, types=["enforcement.requested"])[-1].seq


def test_every_request_is_carried_out_once_and_its_outcome_recorded() -> None:
    store, governance = InMemoryEventStore(), FakeGovernance()
    store.append(
        [
            request("rollback_champion", 1, model="alignd-policy", version="2"),
            request("pause_training", 2, trainers="all"),
            request("quarantine_user", 3, user="u-13"),
            request("reticulate_splines", 4),
        ]
    )
    executor = EnforcementExecutor(store, governance, backoff=0.0)  # type: ignore[arg-type]

    assert executor.step() == 4

    done = applied(store)
    rollback = done["enforcement.applied:enforcement:rollback_champion:1"]
    assert (rollback["outcome"], rollback["detail"]) == ("applied", "alignd-policy champion 2 -> 1")
    assert rollback["result"]["event_id"] == "model.rolled_back:alignd-policy:1"
    [call] = governance.rollbacks
    assert (call["kind"], call["expected_champion"], call["request_event_id"]) == (
        "policy",
        "2",
        "enforcement:rollback_champion:1",
    )
    assert done["enforcement.applied:enforcement:quarantine_user:3"]["detail"] == "applied by the quarantine projection"
    assert done["enforcement.applied:enforcement:reticulate_splines:4"]["outcome"] == "skipped"
    assert training_paused(store) == (True, "toxicity on alignd-policy rose to 9% (2)")
    assert executor.position() == store.position("enforcement").seq == last_request_seq(store)
    # a restart, or a replay that lost the position, acts on nothing twice
    with store.unit_of_work(append_lock=False) as uow:
        uow.delete_position("enforcement")
    assert EnforcementExecutor(store, governance).step() == 0  # type: ignore[arg-type]
    assert len(governance.rollbacks) == 1
    store.append([request("resume_training", 5)])
    assert executor.step() == 1 and training_paused(store) == (False, None)


def test_a_down_registry_is_retried_in_rounds_and_never_holds_up_the_requests_behind() -> None:
    store, governance = InMemoryEventStore(), FakeGovernance(failures=5)
    now, slept = [0.0], []
    executor = EnforcementExecutor(
        store,
        governance,  # type: ignore[arg-type]
        max_attempts=3,
        backoff=0.5,
        sleep=slept.append,
        monotonic=lambda: now[0],
    )
    store.append([request("rollback_champion", 1, model="alignd-policy", version="2"), request("quarantine_events", 2)])
    rollback_seq = store.read(0, types=["enforcement.requested"])[0].seq

    assert executor.step() == 2  # round 1 failed (recorded), the quarantine behind it applied
    assert slept == [0.5, 1.0] and governance.rollbacks == []
    failed = applied(store)["enforcement.applied:enforcement:rollback_champion:1:failed:1"]
    assert (failed["outcome"], failed["round"], failed["attempts"]) == ("failed", 1, 3)
    assert "MLflow is unavailable" in failed["error"]
    assert executor.position() == rollback_seq - 1  # the rollback is still pending
    assert executor.step() == 0  # not before its round delay

    now[0] = 10.0
    assert executor.step() == 1  # round 2: two more failures, then it works
    final = applied(store)["enforcement.applied:enforcement:rollback_champion:1"]
    assert (final["outcome"], final["round"], final["attempts"], final["error"]) == ("applied", 2, 3, None)
    assert len(governance.rollbacks) == 1 and executor.position() == last_request_seq(store)

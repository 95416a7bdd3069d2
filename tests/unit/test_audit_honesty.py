"""What the audit shows a person (pure, or on the in-memory store): versions rolled back and not put back since
(events.read_models, which ``alignd models list`` and the review page read), the alert for a ``champion`` moved in
MLflow to such a version or past its gates (trainers.governance), and a skipped enforcement as its own outcome in
lists (events.audit.shown), with the chain's hashed fields unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.audit import AuditRecord, Shown, audit_fields, record_hash, shown
from events.codec import canonical_json
from events.memory_store import InMemoryEventStore
from events.messages import AnomalyDetected, record_of
from events.model import Event, StoredEvent
from events.read_models import fold_rolled_back, rolled_back_models, rolled_back_versions
from trainers.governance import DETECTOR, unreviewed_champion_alert
from trainers.promotion import PromotionDecision, change_payload, decide_promotion

T0 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
PASSED = PromotionDecision(True, False, (), False, "gates passed")
POLICY, REWARD = "alignd-policy", "alignd-reward"


def move(
    type_: str,
    version: str | None,
    before: str | None,
    *,
    n: int,
    name: str = POLICY,
    alias: str = "champion",
    via: str = "cli",
    actor: str = "ana",
    reason: str = "better",
    decision: PromotionDecision = PASSED,
    previous: bool = True,
) -> Event:
    """An alias change as trainers.governance records it (``previous`` False: an old payload without
    ``previous_version``)."""
    kind = "policy" if name == POLICY else "reward"
    payload = change_payload(kind, name, alias, version, before, actor=actor, reason=reason, decision=decision, via=via)
    if not previous:
        del payload["previous_version"]
    event_id = f"{type_}:{name}@{alias}:{n}:{version}"
    return Event(event_id, type_, T0 + timedelta(minutes=n), "alignd.governance", payload)


def promoted(version: str, before: str | None, n: int, **how: Any) -> Event:
    return move("model.promoted", version, before, n=n, **how)


def rolled_back(version: str | None, before: str | None, n: int, **how: Any) -> Event:
    return move("model.rolled_back", version, before, n=n, **how)


def stored(events: list[Event]) -> list[StoredEvent]:
    return [
        StoredEvent(seq=i, event=e, recorded_at=T0 + timedelta(hours=1, minutes=i)) for i, e in enumerate(events, 1)
    ]


def marked(events: list[Event]) -> dict[tuple[str, str], str]:
    """(name, version) -> the id of the rollback that marks it."""
    return {key: mark.event_id for key, mark in fold_rolled_back(stored(events)).items()}


# --- which versions are rolled back ------------------------------------------------------------------------


def test_a_rollback_marks_the_version_champion_left_with_the_rollback_that_did() -> None:
    history = [
        promoted("1", None, 1),
        promoted("2", "1", 2),
        rolled_back("1", "2", 3, actor="alignd.enforcement", reason="toxicity at 12%"),
    ]
    [(key, mark)] = fold_rolled_back(stored(history)).items()
    assert key == (POLICY, "2") and mark.model == "alignd-policy:2"
    assert (mark.event_id, mark.seq, mark.to_version) == (history[2].event_id, 3, "1")
    assert (mark.actor, mark.reason, mark.occurred_at) == (
        "alignd.enforcement",
        "toxicity at 12%",
        history[2].occurred_at,
    )


def test_a_move_through_alignd_back_to_it_clears_the_mark_and_one_made_in_mlflow_does_not() -> None:
    base = [promoted("1", None, 1), promoted("2", "1", 2), rolled_back("1", "2", 3)]
    in_mlflow = promoted("2", "1", 4, via="mlflow", actor="mlflow", decision=decide_promotion({}, force=True))
    assert marked([*base, in_mlflow]) == {(POLICY, "2"): base[2].event_id}  # nobody reviewed that move
    assert marked([*base, promoted("2", "1", 4, reason="fixed the prompt")]) == {}  # an operator's decision
    # a rollback --to it clears it (and marks the version it left)
    to_it = [*base, promoted("3", "1", 4), rolled_back("2", "3", 5, reason="back to 2 after the fix")]
    assert marked(to_it) == {(POLICY, "3"): to_it[-1].event_id}
    # rolled back again later: the latest rollback marks it
    again = [*base, in_mlflow, rolled_back("1", "2", 5, reason="still toxic")]
    assert marked(again) == {(POLICY, "2"): again[-1].event_id}


def test_deleted_aliases_challengers_other_models_and_old_payloads() -> None:
    history = [
        promoted("3", None, 1),
        rolled_back(None, "3", 2),  # the champion alias deleted: says nothing against version 3
        promoted("5", None, 3, alias="challenger"),
        rolled_back("4", "5", 4, alias="challenger"),  # only champion moves count
        promoted("7", None, 5, name=REWARD),
        promoted("8", "7", 6, name=REWARD),
        rolled_back("7", None, 7, name=REWARD, previous=False),  # no previous_version: the champion before it
        Event("x", "anomaly.detected", T0, "alignd.monitors", {"name": POLICY, "version": "3"}),
    ]
    assert marked(history) == {(REWARD, "8"): history[6].event_id}


def test_the_store_functions_the_models_list_and_the_review_page_call() -> None:
    store = InMemoryEventStore(clock=lambda: T0)
    assert rolled_back_versions(store, POLICY) == {} and rolled_back_models(store) == {}
    history = [promoted(str(v), str(v - 1) if v > 1 else None, v) for v in (1, 2, 3)]
    history += [rolled_back("2", "3", 4), promoted("1", None, 5, name=REWARD), promoted("2", "1", 6, name=REWARD)]
    history += [rolled_back("1", "2", 7, name=REWARD)]
    # more than a page of store reads (1000), all of them alias moves of another alias
    history += [promoted(str(v), str(v - 1), 100 + v, alias="challenger") for v in range(10, 1200)]
    store.append(history)
    policy = rolled_back_versions(store, POLICY)
    assert list(policy) == ["3"] and policy["3"].event_id == history[3].event_id
    assert list(rolled_back_versions(store, REWARD)) == ["2"] and rolled_back_versions(store, "nope") == {}
    assert sorted(rolled_back_models(store)) == ["alignd-policy:3", "alignd-reward:2"]


# --- the alert for a champion moved in MLflow ----------------------------------------------------------------


UNSAFE = {"alignd.gates": "failed: safety", "alignd.gate.safety": "fail 0.12 (<= 0.05)"}


def test_no_alert_for_a_reviewed_version_that_passed_its_gates() -> None:
    moved = promoted(
        "2", "1", 3, via="mlflow", actor="mlflow", decision=decide_promotion({"alignd.gates": "passed"}, force=True)
    )
    assert unreviewed_champion_alert(moved, None, decide_promotion({"alignd.gates": "passed"}, force=True)) is None


def test_a_rolled_back_version_back_in_mlflow_alerts_with_what_a_person_needs() -> None:
    history = [promoted("1", None, 1), promoted("2", "1", 2), rolled_back("1", "2", 3, reason="toxicity at 12%")]
    mark = fold_rolled_back(stored(history))[(POLICY, "2")]
    gates = decide_promotion({"alignd.gates": "passed"}, force=True)
    moved = promoted("2", "1", 4, via="mlflow", actor="mlflow", reason="alias moved in MLflow", decision=gates)
    alert = unreviewed_champion_alert(moved, mark, gates)
    assert alert is not None and alert.type == "anomaly.detected" and alert.source == "alignd.governance"
    assert alert.event_id == f"anomaly:{DETECTOR}:{moved.event_id}"  # derived from the move's: never twice
    assert alert.occurred_at == moved.occurred_at
    record = record_of(alert)
    assert isinstance(record, AnomalyDetected)
    assert (record.detector, record.subject, record.severity) == ("governance", "model:alignd-policy@2", "critical")
    assert "version 2 (from 1)" in record.summary and "rolled back by ana (toxicity at 12%)" in record.summary
    assert "alignd models rollback policy" in record.summary
    assert record.evidence == (moved.event_id, mark.event_id)
    stats = record.statistics
    assert (stats["model"], stats["version"], stats["previous_version"]) == (POLICY, "2", "1")
    assert (stats["rolled_back_by"], stats["rollback_reason"]) == (mark.event_id, "toxicity at 12%")
    assert "failed_gates" not in stats
    assert record.describe()[:2] == ("detector governance / alignd-policy v2", "alignd-policy:2")


def test_a_version_its_gates_refuse_alerts_naming_the_gates() -> None:
    refused = decide_promotion(UNSAFE, force=True)
    moved = promoted("2", "1", 2, via="mlflow", actor="mlflow", decision=refused)
    alert = unreviewed_champion_alert(moved, None, refused)
    assert alert is not None
    summary = alert.payload["summary"]
    assert "is refused by its gates: gates failed: safety (fail 0.12 (<= 0.05))" in summary, summary
    assert alert.payload["statistics"]["failed_gates"] == ["safety"] and alert.payload["evidence"] == [moved.event_id]
    ungated = decide_promotion({}, force=True)
    alert = unreviewed_champion_alert(promoted("2", "1", 2, via="mlflow", decision=ungated), None, ungated)
    assert alert is not None and "no gate results recorded" in alert.payload["summary"]
    assert alert.payload["statistics"]["missing_gates"] is True


# --- a skipped enforcement in lists ---------------------------------------------------------------------------


def applied_event(outcome: str, detail: str, error: str | None = None) -> Event:
    payload = {
        "request_event_id": "enforcement:rollback_champion:5",
        "action": "rollback_champion",
        "target": {"model": POLICY, "version": "2"},
        "outcome": outcome,
        "detail": detail,
        "error": error,
        "result": None,
        "round": 1,
        "attempts": 1,
        "actor": "alignd.enforcement",
        "reason": "toxicity on alignd-policy rose to 9%",
    }
    return Event(f"enforcement.applied:{outcome}", "enforcement.applied", T0, "alignd.enforcement", payload)


def chained(event: Event) -> AuditRecord:
    fields = audit_fields(StoredEvent(seq=9, event=event, recorded_at=T0), 4)
    return AuditRecord(**fields, prev_hash="0" * 64, hash=record_hash("0" * 64, fields))


STALE = "alignd-policy's champion is version 1, not 2: it changed since the rollback was asked for"


def test_a_skipped_enforcement_reads_as_skipped_first_and_its_record_hashes_as_before() -> None:
    record = chained(applied_event("skipped", STALE))
    # The chain's words are what they always were (records chained before this verify unchanged)...
    assert record.action == "enforcement.applied"
    assert record.reason == f"toxicity on alignd-policy rose to 9% [skipped: {STALE}]"
    assert record.fields()["evidence"] == canonical_json(applied_event("skipped", STALE).payload)
    # ...and lists read the outcome from the hashed evidence, first.
    seen = shown(record)
    assert (seen.action, seen.outcome) == ("enforcement skipped", "skipped")
    assert seen.reason == f"skipped: {STALE} (requested: toxicity on alignd-policy rose to 9%)"
    assert seen.reason[:60].startswith("skipped: alignd-policy's champion is version 1, not 2")


def test_failed_and_applied_enforcements_and_other_records() -> None:
    failed = shown(chained(applied_event("failed", "round 1 failed 3 times", "MLflow is unavailable")))
    assert (failed.action, failed.outcome) == ("enforcement failed", "failed")
    assert failed.reason.startswith("failed: round 1 failed 3 times: MLflow is unavailable (requested: ")
    done = chained(applied_event("applied", "alignd-policy champion 2 -> 1"))
    assert shown(done) == Shown("enforcement.applied", done.reason, "applied")
    other = chained(promoted("2", "1", 2))
    assert (shown(other).action, shown(other).reason, shown(other).outcome) == ("model.promoted", other.reason, None)


@pytest.mark.parametrize("evidence", ["not json", "[1, 2]", '{"outcome": 3}'])
def test_an_enforcement_record_of_an_unexpected_shape_reads_as_stored(evidence: str) -> None:
    record = chained(applied_event("skipped", STALE))
    odd = AuditRecord(**{**record.to_dict(), "evidence": evidence})
    assert (shown(odd).action, shown(odd).reason) == ("enforcement.applied", record.reason)


def test_recorded_at_is_read_with_a_record_but_never_hashed_stored_or_exported() -> None:
    record = chained(promoted("2", "1", 2))
    row = {**record.to_dict(), "recorded_at": datetime(2026, 11, 5, 8, 0)}  # as SQLite gives it back: no zone
    read = AuditRecord.from_mapping(row)
    assert read.recorded_at == "2026-11-05T08:00:00.000000+00:00" and read == record
    assert "recorded_at" not in read.to_dict() and "recorded_at" not in read.fields()
    assert AuditRecord.from_mapping(record.to_dict()).recorded_at is None  # an export has none

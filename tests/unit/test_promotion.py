"""Promotion decisions and the rollback target, from gate tags and alias history (pure, table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from trainers.promotion import (
    PROMOTED,
    REGISTERED,
    ROLLED_BACK,
    change_event_id,
    change_payload,
    decide_promotion,
    fold_aliases,
    is_same_rollback,
    previous_champion,
)

PASSED = {"alignd.gates": "passed", "alignd.gate.safety": "pass 0.01 (<= 0.05)", "alignd.gate.kl": "pass 0.02"}
FAILED = {
    "alignd.gates": "failed: safety, kl",
    "alignd.gate.safety": "fail 0.12 (<= 0.05)",
    "alignd.gate.kl": "fail 0.40 (<= 0.10)",
    "alignd.gate.win_rate": "pass 0.61 (>= 0.50)",
}


@pytest.mark.parametrize(
    ("tags", "force", "allowed", "forced", "failed", "missing", "message"),
    [
        (PASSED, False, True, False, (), False, "gates passed"),
        # forcing a version that passed forces nothing, and is not recorded as forced
        (PASSED, True, True, False, (), False, "gates passed"),
        (FAILED, False, False, False, ("safety", "kl"), False, "gates failed: safety (fail 0.12 (<= 0.05)), kl"),
        (FAILED, True, True, True, ("safety", "kl"), False, "forced: gates failed: safety (fail 0.12"),
        ({}, False, False, False, (), True, "no gate results recorded"),
        ({"alignd.objective": "dpo"}, True, True, True, (), True, "forced: no gate results recorded"),
        ({"alignd.gates": "maybe"}, False, False, False, (), True, "gate results unreadable (alignd.gates='maybe')"),
        ({"alignd.gates": "failed:"}, False, False, False, (), True, "gate results unreadable"),
        # per-gate tags without the summary still decide; a failing one refuses
        ({"alignd.gate.kl": "fail 0.4 (<= 0.1)"}, False, False, False, ("kl",), False, "gates failed: kl (fail 0.4"),
        ({"alignd.gate.kl": "pass 0.01 (<= 0.1)"}, False, True, False, (), False, "gates passed"),
        # when the summary and a gate's own tag disagree, the failure wins
        (
            {"alignd.gates": "passed", "alignd.gate.safety": "fail: no prompts"},
            False,
            False,
            False,
            ("safety",),
            False,
            "",
        ),
        ({"alignd.gates": "failed: pareto"}, False, False, False, ("pareto",), False, "gates failed: pareto"),
    ],
)
def test_decide_promotion(
    tags: dict[str, str],
    force: bool,
    allowed: bool,
    forced: bool,
    failed: tuple[str, ...],
    missing: bool,
    message: str,
) -> None:
    decision = decide_promotion(tags, force=force)
    assert (decision.allowed, decision.forced, decision.failed_gates, decision.missing_gates) == (
        allowed,
        forced,
        failed,
        missing,
    )
    assert decision.message.startswith(message)


def P(version: str | None, previous: str | None = None, alias: str = "champion") -> tuple[str, dict[str, Any]]:
    return PROMOTED, {"version": version, "previous_version": previous, "alias": alias}


def R(version: str | None, previous: str | None) -> tuple[str, dict[str, Any]]:
    return ROLLED_BACK, {"version": version, "previous_version": previous, "alias": "champion"}


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([], None),
        ([P("1")], None),
        ([P("1"), P("2", "1")], "1"),
        ([P("1"), P("2", "1"), P("3", "2")], "2"),
        # 3 was rolled back from: a second rollback goes past it, to 1
        ([P("1"), P("2", "1"), P("3", "2"), R("2", "3")], "1"),
        ([P("1"), P("2", "1"), R("1", "2")], None),
        # 2 failed and was rolled back from; after 3 replaced 1, the rollback target is 1, not 2
        ([P("1"), P("2", "1"), R("1", "2"), P("3", "1")], "1"),
        # promoting 2 again clears its rollback
        ([P("1"), P("2", "1"), R("1", "2"), P("2", "1")], "1"),
        ([P("1"), P("2", "1"), R("1", "2"), P("2", "1"), P("3", "2")], "2"),
        # challenger moves do not count; a deleted champion (None) is never a target
        ([P("1"), P("4", None, "challenger"), P("2", "1")], "1"),
        ([P("1"), R(None, "1"), P("2", None)], "1"),
        # a rollback event without previous_version: the champion before it is what it left
        ([P("1"), P("2", "1"), P("3", "2"), (ROLLED_BACK, {"version": "2"})], "1"),
    ],
)
def test_previous_champion(history: list[tuple[str, dict[str, Any]]], expected: str | None) -> None:
    assert previous_champion(history) == expected


def test_fold_aliases_counts_changes_per_alias_and_takes_the_challenger_from_registrations() -> None:
    events: list[tuple[str, str, dict[str, Any]]] = [
        (
            "model.registered:alignd-policy:1",
            REGISTERED,
            {"name": "alignd-policy", "version": "1", "aliases": ["challenger"]},
        ),
        ("p1", PROMOTED, {"name": "alignd-policy", "alias": "champion", "version": "1", "previous_version": None}),
        (
            "model.registered:alignd-policy:2",
            REGISTERED,
            {"name": "alignd-policy", "version": "2", "aliases": ["challenger"]},
        ),
        ("p2", PROMOTED, {"name": "alignd-policy", "alias": "champion", "version": "2", "previous_version": "1"}),
        ("r1", ROLLED_BACK, {"name": "alignd-policy", "alias": "champion", "version": "1", "previous_version": "2"}),
        ("g", "gate.evaluated", {"name": "alignd-policy"}),
    ]
    state = fold_aliases(events)
    assert state.known == {"challenger": "2", "champion": "1"}
    assert state.changes == {"champion": 3}
    assert state.last["champion"][0] == "r1" and state.last["challenger"][0] == "model.registered:alignd-policy:2"
    assert [t for t, _ in state.history] == [PROMOTED, PROMOTED, ROLLED_BACK]


def test_change_payload_and_ids() -> None:
    decision = decide_promotion(FAILED, force=True)
    payload = change_payload(
        "policy", "alignd-policy", "champion", "3", "2", actor="ana", reason="better", decision=decision, via="cli"
    )
    assert payload == {
        "kind": "policy",
        "name": "alignd-policy",
        "alias": "champion",
        "version": "3",
        "previous_version": "2",
        "actor": "ana",
        "reason": "better",
        "forced": True,
        "failed_gates": ["safety", "kl"],
        "gates": decision.message,
        "via": "cli",
        "request_event_id": None,
        "subject": "model:alignd-policy",
    }
    assert change_event_id(PROMOTED, payload, 4) == "model.promoted:alignd-policy@champion:4:3"


@pytest.mark.parametrize(
    ("recorded", "call", "same"),
    [
        ({"actor": "ana", "reason": "toxic"}, {"actor": "ana", "reason": "toxic"}, True),
        ({"actor": "ana", "reason": "toxic"}, {"actor": "ana", "reason": "still toxic"}, False),
        ({"actor": "ana", "reason": "toxic"}, {"actor": "bo", "reason": "toxic"}, False),
        ({"actor": "ana", "reason": "x", "version": "1"}, {"actor": "ana", "reason": "x", "to_version": "1"}, True),
        ({"actor": "ana", "reason": "x", "version": "1"}, {"actor": "ana", "reason": "x", "to_version": "2"}, False),
        ({"request_event_id": "req-1"}, {"actor": "e", "reason": "r", "request_event_id": "req-1"}, True),
        (
            {"actor": "e", "reason": "r", "request_event_id": "req-1"},
            {"actor": "e", "reason": "r", "request_event_id": "req-2"},
            False,
        ),
    ],
)
def test_is_same_rollback(recorded: dict[str, Any], call: dict[str, Any], same: bool) -> None:
    kwargs = {"to_version": None, "request_event_id": None, **call}
    assert is_same_rollback(recorded, **kwargs) is same

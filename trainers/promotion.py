"""Promotion decisions (pure): may a version become champion, and which version does a rollback restore.

Nothing here does I/O. The gate results are read from the tags :mod:`trainers.gates` wrote on the version
(``alignd.gates`` = ``"passed"``, ``"failed: safety, kl"`` or ``"insufficient evidence: reward_accuracy"``, and one
``alignd.gate.<name>`` = ``"pass ..."``, ``"fail ..."`` or ``"insufficient ..."`` per gate); the rollback target is
folded from the ``model.promoted`` / ``model.rolled_back`` history of one model (docs/trainers.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from events.messages import AliasMoved
from events.names import MODEL_PROMOTED, MODEL_REGISTERED, MODEL_ROLLED_BACK

GATES_TAG = "alignd.gates"
GATE_TAG_PREFIX = "alignd.gate."
PROMOTED, ROLLED_BACK, REGISTERED = MODEL_PROMOTED, MODEL_ROLLED_BACK, MODEL_REGISTERED


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the version may be promoted, and what the audit trail should say about it.

    ``forced`` is true only when ``force`` overrode a refusal: forcing a version whose gates passed forces
    nothing, and is not recorded as forced. ``insufficient_gates`` had evidence for neither pass nor fail;
    they refuse like a failed gate, and the message says what more data would decide them.
    """

    allowed: bool
    forced: bool
    failed_gates: tuple[str, ...]
    missing_gates: bool
    message: str
    insufficient_gates: tuple[str, ...] = ()


def _from_summary(summary: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(failed, insufficient) named by ``alignd.gates``; None when the tag is not in a form trainers.gates writes
    (``passed``, ``failed: a, b``, ``insufficient evidence: c``, or the last two joined by "; ")."""
    text = summary.strip()
    if text == "passed":
        return (), ()
    found: dict[str, tuple[str, ...]] = {"failed:": (), "insufficient evidence:": ()}
    for part in (p.strip() for p in text.split(";")):
        prefix = next((k for k in found if part.startswith(k)), None)
        names = tuple(n.strip() for n in part[len(prefix) :].split(",") if n.strip()) if prefix else ()
        if prefix is None or not names:
            return None
        found[prefix] = names
    return found["failed:"], found["insufficient evidence:"]


def decide_promotion(version_tags: Mapping[str, str], *, force: bool) -> PromotionDecision:
    """Decide from the version's gate tags whether it may become champion.

    A gate counts as failed when the summary tag names it or its own tag starts with ``fail`` (the two are
    written together; if they ever disagree, the failure wins), and as insufficient likewise with
    ``insufficient``: both refuse. No gate tags at all, or a summary in a form this code cannot read, refuses
    too: a version nobody evaluated must not reach users by accident.
    """
    per_gate = {k[len(GATE_TAG_PREFIX) :]: v for k, v in version_tags.items() if k.startswith(GATE_TAG_PREFIX)}
    summary = version_tags.get(GATES_TAG)
    parsed = _from_summary(summary) if summary is not None else None
    unreadable = summary is not None and parsed is None
    missing = (summary is None and not per_gate) or unreadable
    failed = list(parsed[0] if parsed else ())
    failed += [name for name, value in sorted(per_gate.items()) if value.startswith("fail") and name not in failed]
    insufficient = [n for n in (parsed[1] if parsed else ()) if n not in failed]
    insufficient += [
        name
        for name, value in sorted(per_gate.items())
        if value.startswith("insufficient") and name not in failed and name not in insufficient
    ]

    def details(names: list[str]) -> str:
        return ", ".join(f"{name} ({per_gate[name]})" if name in per_gate else name for name in names)

    if missing:
        problem = f"gate results unreadable ({GATES_TAG}={summary!r})" if unreadable else "no gate results recorded"
    elif failed or insufficient:
        parts = [f"gates failed: {details(failed)}"] if failed else []
        if insufficient:
            parts.append(f"insufficient evidence: {details(insufficient)}")
        problem = "; ".join(parts)
    else:
        return PromotionDecision(True, False, (), False, "gates passed")
    if force:
        return PromotionDecision(True, True, tuple(failed), missing, f"forced: {problem}", tuple(insufficient))
    return PromotionDecision(False, False, tuple(failed), missing, problem, tuple(insufficient))


def previous_champion(history: Iterable[tuple[str, Mapping[str, Any]]]) -> str | None:
    """The version a rollback should restore, from one model's alias history in ``seq`` order.

    Args:
        history: ``(event type, payload)`` of that model's ``model.promoted`` and ``model.rolled_back``
            events; payloads whose ``alias`` is not ``champion`` are ignored.

    Returns:
        The most recent earlier champion that is not the current one and was not rolled back from (a
        version that was rolled back from failed in production; promoting it again clears that), or None.
    """
    champions: list[str | None] = []
    rolled_back_from: set[str] = set()
    for type_, payload in history:
        if payload.get("alias", "champion") != "champion":
            continue
        version = payload.get("version")
        version = None if version is None else str(version)
        if type_ == ROLLED_BACK:
            left = payload.get("previous_version") or (champions[-1] if champions else None)
            # A deleted alias (version None) says nothing against the version it pointed at.
            if left is not None and version is not None:
                rolled_back_from.add(str(left))
        elif type_ == PROMOTED and version is not None:
            rolled_back_from.discard(version)
        else:
            continue
        champions.append(version)
    if not champions:
        return None
    current = champions[-1]
    for version in reversed(champions[:-1]):
        if version is not None and version != current and version not in rolled_back_from:
            return version
    return None


@dataclass
class AliasState:
    """One model's aliases as its events tell them (folded by :func:`fold_aliases`).

    ``known`` maps an alias to its version (None once deleted), ``changes`` counts the recorded changes of
    each alias (the ordinal in event ids), ``last`` holds the ``(event_id, type, payload)`` that last set
    each alias, and ``history`` the ``(type, payload)`` changes that :func:`previous_champion` reads.
    """

    known: dict[str, str | None] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)
    last: dict[str, tuple[str, str, Mapping[str, Any]]] = field(default_factory=dict)
    history: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)


def fold_aliases(events: Iterable[tuple[str, str, Mapping[str, Any]]]) -> AliasState:
    """Fold one model's ``model.registered`` / ``model.promoted`` / ``model.rolled_back`` events, in seq order.

    Args:
        events: ``(event_id, type, payload)`` of that model's events.
    """
    state = AliasState()
    for event_id, type_, payload in events:
        if type_ == REGISTERED:
            # Registration moves the challenger (trainers.registry.register) and lists the version's aliases;
            # it is not a change an operator made, so it is not counted or put in the history.
            for alias in payload.get("aliases") or ():
                state.known[str(alias)] = str(payload["version"])
                state.last[str(alias)] = (event_id, type_, payload)
            continue
        if type_ not in (PROMOTED, ROLLED_BACK):
            continue
        alias = str(payload.get("alias", "champion"))
        version = payload.get("version")
        state.known[alias] = None if version is None else str(version)
        state.changes[alias] = state.changes.get(alias, 0) + 1
        state.last[alias] = (event_id, type_, payload)
        state.history.append((type_, payload))
    return state


def is_same_rollback(
    payload: Mapping[str, Any], *, actor: str, reason: str, to_version: str | None, request_event_id: str | None
) -> bool:
    """Whether a recorded rollback is what this call asks for again (a retry, which must not roll back twice).

    The same enforcement request, or else the same actor giving the same reason (and target, when named).
    Rolling back further is a new decision, and a new decision gives its own reason.
    """
    if request_event_id is not None:
        return payload.get("request_event_id") == request_event_id
    same_target = to_version is None or str(payload.get("version")) == str(to_version)
    return payload.get("actor") == actor and payload.get("reason") == reason and same_target


def change_payload(
    kind: str,
    name: str,
    alias: str,
    version: str | None,
    previous_version: str | None,
    *,
    actor: str,
    reason: str,
    decision: PromotionDecision,
    via: str,
    request_event_id: str | None = None,
) -> dict[str, Any]:
    """The payload of a ``model.promoted`` / ``model.rolled_back`` event (``version`` None: alias deleted)."""
    return AliasMoved(
        kind=kind,
        name=name,
        alias=alias,
        version=version,
        previous_version=previous_version,
        actor=actor,
        reason=reason,
        forced=decision.forced,
        failed_gates=decision.failed_gates,
        gates=decision.message,
        via=via,
        request_event_id=request_event_id,
        insufficient_gates=decision.insufficient_gates,
    ).to_payload()


def change_event_id(type_: str, payload: Mapping[str, Any], n: int) -> str:
    """``{type}:{name}@{alias}:{n}:{version}``, ``n`` the change's ordinal among that alias's recorded changes.

    Two processes that notice the same move compute the same id (the store keeps one); two racing moves to
    different versions both stay recorded, in seq order.
    """
    return f"{type_}:{payload['name']}@{payload['alias']}:{n}:{payload['version']}"

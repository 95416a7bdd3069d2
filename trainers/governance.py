"""Governance: promotion, rollback and alias audit, decided here beside the registry they act on (docs/trainers.md).

Serving follows the ``champion`` alias. Every move of ``champion`` or ``challenger`` becomes a ``model.promoted``
(or ``model.rolled_back``) event, which the daemon's outbox publishes on ``alignd.models``: moves made here (the
CLI, enforcement) and moves made in MLflow itself, which :meth:`Governance.sync_aliases` notices by polling. The
last known aliases are folded from the store's own ``model.*`` events, so there is no table to drift from them.
A ``champion`` moved in MLflow to a version that was rolled back, or that its gates would refuse, also raises an
alert (``anomaly.detected`` from detector ``governance``): nobody reviewed that move, and serving follows it.
The daemon only wires this class (store, registry, clock); a promotion or a rollback is one call into it, which
reads the registry and the store, decides (:func:`trainers.promotion.decide_promotion`, :func:`decide_rollback`)
and moves the alias.

Event ids are ``{type}:{name}@{alias}:{n}:{version}``: ``n`` is the ordinal of the change among the recorded
changes of that alias. Two processes that notice the same move compute the same id, and the store keeps one.
A retried command does not double either: a promotion whose version is already champion, and a rollback whose
last recorded change is the same actor's rollback for the same reason (or the same enforcement request), change
nothing and return the event already recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from events.errors import AlignmentError
from events.messages import AnomalyDetected
from events.model import Event
from events.read_models import RolledBackVersion, rolled_back_versions
from events.sql_store import SqlEventStore
from trainers.promotion import (
    PROMOTED,
    REGISTERED,
    ROLLED_BACK,
    AliasState,
    PromotionDecision,
    change_event_id,
    change_payload,
    decide_promotion,
    fold_aliases,
    is_same_rollback,
    previous_champion,
)
from trainers.registry import (
    MODEL_NAMES,
    ModelRegistry,
    RegisteredVersion,
    VersionNotFoundError,
)

logger = logging.getLogger(__name__)

ALIASES = ("champion", "challenger")
MODEL_EVENT_TYPES = (PROMOTED, ROLLED_BACK)
SOURCE = "alignd.governance"
MLFLOW_REASON = "alias moved in MLflow"
#: The detector name of the alert for a ``champion`` moved in MLflow to a rolled-back or ungated version.
DETECTOR = "governance"


class GovernanceError(AlignmentError):
    """A promotion or rollback that cannot be done as asked; the message says what to do instead."""


class PromotionRefusedError(GovernanceError):
    def __init__(self, name: str, version: str, decision: PromotionDecision) -> None:
        super().__init__(f"refused to promote {name} version {version}: {decision.message}")
        self.name, self.version, self.decision = name, version, decision


class NothingToRollBackError(GovernanceError):
    """No champion, no earlier champion, or the champion changed since a rollback was requested."""


@dataclass(frozen=True)
class ModelChange:
    """A recorded alias change; ``appended`` is false when the call changed nothing and found it recorded."""

    event_id: str
    type: str
    payload: Mapping[str, Any]
    appended: bool


def _name(kind: str) -> str:
    if kind not in MODEL_NAMES:
        raise GovernanceError(f"unknown model kind {kind!r}; kinds are {', '.join(MODEL_NAMES)}")
    return MODEL_NAMES[kind]


def _reason(reason: str) -> str:
    if not reason or not reason.strip():
        raise GovernanceError("a reason is required: say why, in a sentence; it goes in the audit trail")
    return reason.strip()


class Governance:
    def __init__(
        self,
        store: SqlEventStore,
        registry: ModelRegistry,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store, self.registry, self.clock = store, registry, clock

    def promote(
        self, kind: str, version_or_alias: str, *, reason: str, actor: str, force: bool = False, via: str = "cli"
    ) -> ModelChange:
        """Point ``champion`` at the version, if its gates passed (or ``force``), and record it.

        Raises:
            PromotionRefusedError: a gate failed or none was recorded, and ``force`` is false.
            VersionNotFoundError: no such version or alias.
            RegistryUnavailableError: MLflow could not be reached; nothing changed.
        """
        name, reason = _name(kind), _reason(reason)
        # Moves made in MLflow since the last look are recorded first, as MLflow's: then previous_version
        # below is the true one, and none of them is attributed to this actor.
        self.sync_aliases([kind])
        target = self._resolve(kind, version_or_alias)
        current = self.registry.get_by_alias(kind, "champion")
        if current is not None and current.version == target.version:
            logger.info("%s version %s is already the champion; nothing to do", name, target.version)
            return _recorded(self.state(name).last["champion"])
        decision = decide_promotion(target.tags, force=force)
        if not decision.allowed:
            raise PromotionRefusedError(name, target.version, decision)
        before = current.version if current else None
        payload = change_payload(
            kind, name, "champion", target.version, before, actor=actor, reason=reason, decision=decision, via=via
        )
        return self._move(kind, PROMOTED, payload)

    def rollback(
        self,
        kind: str,
        *,
        reason: str,
        actor: str,
        to_version: str | None = None,
        via: str = "cli",
        request_event_id: str | None = None,
        expected_champion: str | None = None,
    ) -> ModelChange:
        """Point ``champion`` back at the previous champion (or ``to_version``) and record it.

        Gates are not checked: the usual target served before, and a rollback is the emergency exit; the
        target's failed gates are still recorded (``forced`` stays false). ``expected_champion`` refuses when
        the champion is no longer that version (a request about a version that was already replaced).

        Raises:
            NothingToRollBackError: no champion, no earlier one recorded, or not the expected champion.
        """
        name, reason = _name(kind), _reason(reason)
        self.sync_aliases([kind])
        current = self.registry.get_by_alias(kind, "champion")
        if current is None:
            raise NothingToRollBackError(f"{name} has no champion; nothing to roll back")
        wanted = decide_rollback(
            name,
            current.version,
            self.state(name),
            actor=actor,
            reason=reason,
            to_version=to_version,
            request_event_id=request_event_id,
            expected_champion=expected_champion,
        )
        if isinstance(wanted, tuple):
            logger.info("%s was already rolled back for this (%s); nothing to do", name, wanted[0])
            return _recorded(wanted)
        target = self.registry.get(kind, wanted)
        decision = replace(decide_promotion(target.tags, force=True), forced=False)
        payload = change_payload(
            kind,
            name,
            "champion",
            target.version,
            current.version,
            actor=actor,
            reason=reason,
            decision=decision,
            via=via,
            request_event_id=request_event_id,
        )
        return self._move(kind, ROLLED_BACK, payload)

    def sync_aliases(self, kinds: Iterable[str] | None = None) -> list[Event]:
        """Record every ``champion``/``challenger`` move made outside alignd since the last recorded state.

        A move to an older version (or a deleted alias) is a ``model.rolled_back``, any other a
        ``model.promoted``; the actor is ``mlflow``, and ``forced`` says whether the version's gates would
        have refused it. A ``champion`` moved to a version that was rolled back (and not put back through
        alignd since) or whose gates would refuse it also gets an ``anomaly.detected``
        (:func:`unreviewed_champion_alert`), appended with the move, which the alerts outbox publishes.

        Returns:
            The alias changes appended (none when MLflow agrees with the store); the alerts are not among them.
        """
        appended: list[Event] = []
        for kind in list(kinds) if kinds is not None else list(MODEL_NAMES):
            name = _name(kind)
            state = self.state(name)
            found: list[Event] = []
            alerts: list[Event] = []
            for alias in ALIASES:
                current = self.registry.get_by_alias(kind, alias)
                now, before = (current.version if current else None), state.known.get(alias)
                if now == before:
                    continue
                older = now is None or (before is not None and int(now) < int(before))
                decision = decide_promotion(current.tags if current else {}, force=True)
                payload = change_payload(
                    kind,
                    name,
                    alias,
                    now,
                    before,
                    actor="mlflow",
                    reason=MLFLOW_REASON,
                    decision=decision,
                    via="mlflow",
                )
                moved = self._event(ROLLED_BACK if older else PROMOTED, payload, state.changes.get(alias, 0) + 1)
                found.append(moved)
                logger.warning("%s@%s moved in MLflow from %s to %s; recorded", name, alias, before, now)
                if alias == "champion" and now is not None:
                    # Read before this move is appended: whether the version stood rolled back until now.
                    alert = unreviewed_champion_alert(moved, rolled_back_versions(self.store, name).get(now), decision)
                    if alert is not None:
                        alerts.append(alert)
                        logger.error("%s: %s", alert.event_id, alert.payload["summary"])
            if found:
                # One append: the move and its alert are recorded together or not at all, and both ids are
                # derived from the move's, so a second sync (or a second process) records neither twice.
                self.store.append([*found, *alerts])
                appended += found
        return appended

    def state(self, name: str) -> AliasState:
        """The aliases of one registered model as the store's events tell them."""
        found: list[tuple[str, str, Mapping[str, Any]]] = []
        position = 0
        while batch := self.store.read(position, limit=1000, types=(*MODEL_EVENT_TYPES, REGISTERED)):
            position = batch[-1].seq
            found += [
                (s.event.event_id, s.event.type, s.event.payload) for s in batch if s.event.payload.get("name") == name
            ]
        return fold_aliases(found)

    def _move(self, kind: str, type_: str, payload: dict[str, Any]) -> ModelChange:
        name, version = payload["name"], payload["version"]
        event = self._event(type_, payload, self.state(name).changes.get("champion", 0) + 1)
        # The alias first, then the event: serving must never hear of a champion MLflow does not have. If the
        # append fails, MLflow is ahead of the store and the next sync_aliases records the move as an
        # MLflow-made change (actor "mlflow"); running the command again would then act a second time.
        self.registry.set_alias(kind, "champion", version)
        try:
            self.store.append([event])
        except AlignmentError as exc:
            raise GovernanceError(
                f"{name}@champion now points at version {version}, but the event store refused the record ({exc}); "
                "alignd records the move from MLflow on its next sync. Do not run the command again"
            ) from exc
        logger.info(
            "%s %s: champion %s -> %s by %s", name, type_, payload["previous_version"], version, payload["actor"]
        )
        return ModelChange(event.event_id, type_, event.payload, True)

    def _event(self, type_: str, payload: dict[str, Any], n: int) -> Event:
        return Event(change_event_id(type_, payload, n), type_, self.clock(), SOURCE, payload)

    def _resolve(self, kind: str, version_or_alias: str) -> RegisteredVersion:
        if version_or_alias.isdigit():
            return self.registry.get(kind, version_or_alias)
        found = self.registry.get_by_alias(kind, version_or_alias)
        if found is None:
            raise VersionNotFoundError(
                f"{_name(kind)} has no alias {version_or_alias!r}; `alignd models list` shows the versions and "
                "their aliases"
            )
        return found


def unreviewed_champion_alert(
    move: Event, rolled_back: RolledBackVersion | None, decision: PromotionDecision
) -> Event | None:
    """The alert for ``champion`` moved in MLflow (``move``, as :meth:`Governance.sync_aliases` records it) to a
    version that was rolled back (``rolled_back``: the rollback that still stands against it) or whose gates
    would refuse it (``decision.forced``); None when neither.

    Its id is derived from the move's, which is itself deterministic, so the same move never alerts twice.
    """
    if rolled_back is None and not decision.forced:
        return None
    p = move.payload
    name, version, before, kind = p["name"], p["version"], p["previous_version"], p["kind"]
    why: list[str] = []
    statistics: dict[str, Any] = {"model": name, "version": version, "previous_version": before}
    statistics["alias_event_id"] = move.event_id
    if rolled_back is not None:
        why.append(f"was rolled back by {rolled_back.actor} ({rolled_back.reason or 'no reason given'})")
        statistics |= {
            "rolled_back_by": rolled_back.event_id,
            "rollback_reason": rolled_back.reason,
            "rolled_back_at": rolled_back.occurred_at.isoformat(),
        }
    if decision.forced:
        why.append("is refused by its gates: " + decision.message.removeprefix("forced: "))
        statistics |= {"failed_gates": list(decision.failed_gates), "missing_gates": decision.missing_gates}
    summary = (
        f"{name} champion moved in MLflow to version {version} (from {before or 'none'}), which "
        f"{' and '.join(why)}; serving follows it now. Roll it back (`alignd models rollback {kind} --reason ...`) "
        f"or, if it is meant, promote it through alignd with a reason"
    )
    alert = AnomalyDetected(
        detector=DETECTOR,
        subject=f"model:{name}@{version}",
        severity="critical",
        summary=summary,
        statistics=statistics,
        evidence=(move.event_id, *((rolled_back.event_id,) if rolled_back is not None else ())),
    )
    return alert.to_event(f"anomaly:{DETECTOR}:{move.event_id}", move.occurred_at, SOURCE)


def _recorded(last: tuple[str, str, Mapping[str, Any]]) -> ModelChange:
    return ModelChange(last[0], last[1], last[2], False)


def decide_rollback(
    name: str,
    current: str,
    state: AliasState,
    *,
    actor: str,
    reason: str,
    to_version: str | None,
    request_event_id: str | None,
    expected_champion: str | None,
) -> str | tuple[str, str, Mapping[str, Any]]:
    """Which version a rollback of ``name`` (champion ``current``) restores, from the recorded alias state.

    Returns:
        The version to point ``champion`` at, or the recorded ``(event_id, type, payload)`` when the last
        change is this same rollback (a retry: nothing to do).

    Raises:
        NothingToRollBackError: the champion is not ``expected_champion``, or no earlier one is recorded.
        GovernanceError: the target is already the champion.
    """
    last = state.last.get("champion")
    if last is not None and last[1] == ROLLED_BACK:
        same = is_same_rollback(
            last[2], actor=actor, reason=reason, to_version=to_version, request_event_id=request_event_id
        )
        if same:
            return last
    if expected_champion is not None and current != str(expected_champion):
        raise NothingToRollBackError(
            f"{name}'s champion is version {current}, not {expected_champion}: it changed since the "
            "rollback was asked for; nothing was rolled back"
        )
    wanted = str(to_version) if to_version is not None else previous_champion(state.history)
    if wanted is None:
        raise NothingToRollBackError(
            f"no earlier champion of {name} is recorded to roll back to; name one with --to VERSION "
            "(`alignd models list` shows the versions)"
        )
    if wanted == current:
        raise GovernanceError(f"{name} version {wanted} is already the champion; nothing to roll back")
    return wanted

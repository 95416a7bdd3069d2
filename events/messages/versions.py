"""Registered versions and their aliases: ``model.registered``, ``model.promoted``, ``model.rolled_back``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from events.messages.base import Description, EventRecord, version_word, version_words
from events.names import MODEL_PROMOTED, MODEL_REGISTERED, MODEL_ROLLED_BACK


def _describe_version(event_type: str, p: Mapping[str, Any]) -> Description:
    subject, model = version_words(p)
    alias = p.get("alias")
    if alias and p.get("version") is None:  # the alias was deleted, not moved
        subject = f"{subject} {alias} removed" + (
            f" (was {version_word(p['previous_version'])})" if p.get("previous_version") else ""
        )
    elif alias and alias != "champion":
        subject += f" as {alias}"
    reason = str(p.get("reason") or "")
    if event_type == MODEL_REGISTERED:
        dataset = (p.get("dataset") or {}).get("name", "?")
        reason = f"registered from run {p.get('run_id')} on {dataset}; gates {p.get('gates') or 'not run'}"
    if p.get("forced") and p.get("insufficient_gates"):  # only then: earlier moves describe as they did
        held = ", ".join(map(str, p["insufficient_gates"]))
        failed = ", ".join(map(str, p.get("failed_gates") or []))
        reason += (
            f" [forced past {f'failed gates: {failed}; ' if failed else ''}gates without sufficient evidence: {held}]"
        )
    elif p.get("forced"):
        reason += f" [forced past failed gates: {', '.join(map(str, p.get('failed_gates') or [])) or 'none named'}]"
    return Description(subject, model, reason)


@dataclass(frozen=True)
class ModelRegistered(EventRecord):
    """A trained version registered in MLflow, with its lineage: run, dataset, parent version, gates, code."""

    event_type: ClassVar[str] = MODEL_REGISTERED

    job_id: str
    attempt_id: str
    kind: str
    run_id: str
    name: str
    version: str
    aliases: tuple[str, ...]
    dataset: Mapping[str, Any]
    #: The champion it was trained from, or ``"none"``.
    parent_version: str
    #: The gates' summary (``"passed"``, ``"failed: safety, kl"``).
    gates: str
    code_version: str

    def to_payload(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "attempt_id": self.attempt_id,
            "kind": self.kind,
            "run_id": self.run_id,
            "name": self.name,
            "version": self.version,
            "aliases": list(self.aliases),
            "dataset": dict(self.dataset),
            "parent_version": self.parent_version,
            "gates": self.gates,
            "code_version": self.code_version,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        keys = ("job_id", "attempt_id", "kind", "run_id", "name", "version")
        return cls(
            **{key: payload[key] for key in keys},
            aliases=tuple(payload["aliases"]),
            dataset=payload["dataset"],
            parent_version=payload["parent_version"],
            gates=payload["gates"],
            code_version=payload["code_version"],
        )

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        return _describe_version(MODEL_REGISTERED, payload)


@dataclass(frozen=True)
class AliasMoved(EventRecord):
    """A move of an alias (``champion``, ``challenger``): the payload ``model.promoted`` and ``model.rolled_back``
    share. Not an event type itself: :class:`ModelPromoted` and :class:`ModelRolledBack` are.

    Attributes:
        version: where the alias points now; None when it was deleted.
        forced: whether the move overrode failed or missing gates (audited as such).
        failed_gates: the gates that failed; ``gates`` the decision's message.
        insufficient_gates: the gates whose evidence decided neither way (they refuse like a failure unless
            forced); a key only when there are some, so earlier payloads are unchanged.
        via: who moved it: ``cli``, ``enforcement``, ``mlflow`` (someone in the MLflow UI)...
        request_event_id: the enforcement request it carries out, if any.
    """

    kind: str
    name: str
    alias: str
    version: str | None
    previous_version: str | None
    actor: str
    reason: str
    forced: bool
    failed_gates: tuple[str, ...]
    gates: str
    via: str
    request_event_id: str | None = None
    insufficient_gates: tuple[str, ...] = ()

    @property
    def subject(self) -> str:
        """The outbox keys messages by subject: one model's changes stay in one partition, in order."""
        return f"model:{self.name}"

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "alias": self.alias,
            "version": self.version,
            "previous_version": self.previous_version,
            "actor": self.actor,
            "reason": self.reason,
            "forced": self.forced,
            "failed_gates": list(self.failed_gates),
            "gates": self.gates,
            "via": self.via,
            "request_event_id": self.request_event_id,
            "subject": self.subject,
        }
        if self.insufficient_gates:
            payload["insufficient_gates"] = list(self.insufficient_gates)
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        keys = ("kind", "name", "alias", "version", "previous_version", "actor", "reason", "forced", "gates", "via")
        return cls(
            **{key: payload[key] for key in keys},
            failed_gates=tuple(payload["failed_gates"]),
            request_event_id=payload.get("request_event_id"),
            insufficient_gates=tuple(payload.get("insufficient_gates") or ()),
        )

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        return _describe_version(MODEL_PROMOTED, payload)  # the same words for both directions


@dataclass(frozen=True)
class ModelPromoted(AliasMoved):
    """An alias moved forward (a promotion, or a move to a newer version made in MLflow)."""

    event_type: ClassVar[str] = MODEL_PROMOTED


@dataclass(frozen=True)
class ModelRolledBack(AliasMoved):
    """An alias moved back to an older version, or deleted."""

    event_type: ClassVar[str] = MODEL_ROLLED_BACK

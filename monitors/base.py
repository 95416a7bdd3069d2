"""What a detector is, and what it reports.

Detectors are pure: they see observations in ``seq`` order, keep their own state (plain JSON data, so the
runner can save it in the transaction that records their findings and a restart resumes exactly), and
return findings. They never read the store, the clock or the network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from events.messages import AnomalyDetected
from events.model import StoredEvent, once_property
from events.names import INTERACTION_LOGGED, Severity


@dataclass(frozen=True)
class Observation:
    """An event with, for feedback, the interaction it is about (when that was logged before it)."""

    event: StoredEvent
    interaction: StoredEvent | None = None

    @once_property  # most detectors read it for each event
    def model(self) -> tuple[str, str] | None:
        """(name, version) of the model that produced the interaction, if known."""
        source = self.interaction or (self.event if self.event.event.type == INTERACTION_LOGGED else None)
        if source is None:
            return None
        model = source.event.payload.get("model") or {}
        name, version = model.get("name"), model.get("version")
        return (name, version) if isinstance(name, str) and isinstance(version, str) else None


@dataclass(frozen=True)
class Finding:
    """One alert: what fired, about what, how bad, over which window, on what evidence.

    Attributes:
        detector: the detector's name.
        subject: what the finding is about (``"model:assistant@7"``, ``"user:u-13"``, ``"event:<id>"``);
            with ``trigger_seq`` it makes the alert's id deterministic.
        trigger_seq: the ``seq`` of the observation that made it fire.
        evidence: event ids that support it (bounded).
    """

    detector: str
    subject: str
    severity: Severity
    summary: str
    trigger_seq: int
    window: Mapping[str, Any] = field(default_factory=dict)
    statistics: Mapping[str, Any] = field(default_factory=dict)
    evidence: tuple[str, ...] = ()

    @property
    def anomaly_id(self) -> str:
        """The ``event_id`` of the ``anomaly.detected`` event: the same finding always has the same id,
        so a replay or a restart appends nothing twice."""
        digest = hashlib.sha256(f"{self.detector}\x1f{self.subject}\x1f{self.trigger_seq}".encode()).hexdigest()
        return f"anomaly:{self.detector}:{digest[:32]}"

    def record(self) -> AnomalyDetected:
        """The finding as the ``anomaly.detected`` record the runner appends."""
        return AnomalyDetected(
            self.detector,
            self.subject,
            self.severity,
            self.summary,
            self.trigger_seq,
            self.window,
            self.statistics,
            self.evidence,
        )

    def payload(self) -> dict[str, Any]:
        return self.record().to_payload()


class Detector(Protocol):
    """A pure detector. ``name`` is stable: it keys the saved state and the alert ids.

    The runner feeds every detector the inbound types (``interaction.logged``, ``feedback.received``); a
    detector that also reads internal events names them in an optional ``observed_types`` attribute (the
    champion-regression detector reads ``gate.evaluated``), and must ignore types it does not know.
    """

    name: str

    def observe(self, observation: Observation) -> list[Finding]:
        """Update the state with one observation; return what fires now (usually nothing)."""
        ...

    def state(self) -> dict[str, Any]:
        """The state as JSON-serialisable data."""
        ...

    def restore(self, state: Mapping[str, Any]) -> None:
        """Replace the state with one returned by :meth:`state`."""
        ...

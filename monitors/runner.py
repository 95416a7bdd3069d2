"""Runs the detectors over the event store: live (tailing by ``seq``) and as a backtest over a range.

Live, each step reads a batch after the checkpoint, feeds it to the detectors, and then, in one
transaction, appends an ``anomaly.detected`` event per finding, the new checkpoint and every detector's
state. A crash before that commit redoes the batch from the saved state; after it, nothing is redone. Alert
ids are derived from the finding (detector, subject, trigger seq), so a replay from nothing appends no
alert twice: the store ignores an ``event_id`` it already has.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from events.model import FEEDBACK_RECEIVED, INTERACTION_LOGGED, Event, StoredEvent
from events.store import EventStore
from monitors.base import Detector, Finding, Observation
from monitors.enforcement import DEFAULT_RULES, EnforcementRule, decide_enforcement

logger = logging.getLogger(__name__)

OBSERVED_TYPES = (INTERACTION_LOGGED, FEEDBACK_RECEIVED)


def observed_types(detectors: Sequence[Detector]) -> tuple[str, ...]:
    """The inbound types, plus the internal ones a detector asks for (``observed_types``, e.g. gate.evaluated)."""
    extra = sorted({t for d in detectors for t in getattr(d, "observed_types", ())} - set(OBSERVED_TYPES))
    return (*OBSERVED_TYPES, *extra)


@dataclass(frozen=True)
class StepResult:
    observed: int
    findings: list[Finding]
    appended: int
    last_seq: int


def observe_batch(
    batch: Sequence[StoredEvent], related: Iterable[StoredEvent], detectors: Sequence[Detector]
) -> list[Finding]:
    """Feed ``batch`` (in ``seq`` order) to the detectors; feedback is paired with its earlier interaction."""
    first_interaction: dict[str, StoredEvent] = {}
    for stored in sorted([*related, *batch], key=lambda s: s.seq):
        request_id = stored.event.request_id
        if stored.event.type == INTERACTION_LOGGED and request_id is not None:
            first_interaction.setdefault(request_id, stored)
    observations = []
    for stored in batch:
        interaction = None
        if stored.event.type == FEEDBACK_RECEIVED and stored.event.request_id is not None:
            candidate = first_interaction.get(stored.event.request_id)
            interaction = candidate if candidate is not None and candidate.seq < stored.seq else None
        observations.append(Observation(stored, interaction))
    findings: list[Finding] = []
    for detector in detectors:
        # Detectors that score in batches (embeddings, classifiers) take the whole batch at once.
        observe_many = getattr(detector, "observe_many", None)
        if observe_many is not None:
            findings.extend(observe_many(observations))
        else:
            for observation in observations:
                findings.extend(detector.observe(observation))
    return sorted(findings, key=lambda f: f.trigger_seq)


def _interactions_for(store: EventStore, batch: Sequence[StoredEvent]) -> list[StoredEvent]:
    """The logged interactions before the batch that its feedback is about.

    Those inside the batch are not read again: a batch holds every observed event of its ``seq`` range, so
    its own interactions are already there (and decoding rows is a tenth of a step).
    """
    request_ids = {s.event.request_id for s in batch if s.event.type == FEEDBACK_RECEIVED and s.event.request_id}
    related = store.by_request_id(sorted(request_ids), max_seq=batch[0].seq - 1) if request_ids else []
    return [s for s in related if s.event.type == INTERACTION_LOGGED]


def decision_events(finding: Finding, trigger: StoredEvent, rules: Sequence[EnforcementRule]) -> list[Event]:
    """The alert, and the enforcement it calls for, as events."""
    requests = [
        r.record().to_event(r.request_id, trigger.event.occurred_at, "alignd.monitors")
        for r in decide_enforcement(finding, rules)
    ]
    return [anomaly_event(finding, trigger), *requests]


def anomaly_event(finding: Finding, trigger: StoredEvent) -> Event:
    """The ``anomaly.detected`` event of a finding (occurred when its trigger did, so replays match)."""
    return finding.record().to_event(finding.anomaly_id, trigger.event.occurred_at, "alignd.monitors")


class MonitorRunner:
    """Tails the store for the given detectors, checkpointing their state with their alerts."""

    def __init__(
        self,
        store: EventStore,
        detectors: Sequence[Detector],
        *,
        name: str = "monitors",
        batch_size: int = 1000,
        rules: Sequence[EnforcementRule] = DEFAULT_RULES,
    ):
        names = [d.name for d in detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"detector names must be unique, got {names}")
        self.store = store
        self.detectors = list(detectors)
        self.name = name
        self.batch_size = batch_size
        self.rules = tuple(rules)
        self.types = observed_types(self.detectors)
        self._position: int | None = None  # the checkpoint this runner last wrote or restored

    def _load(self) -> int:
        """The checkpoint; detectors' states are restored only when it is not the one this runner wrote
        last (a first step, or another runner moved it), since restoring costs ~10 ms per 100 KB of state."""
        last = self.store.position(self.name, with_state=False).seq
        if last == self._position:
            return last
        saved = self.store.position(self.name)
        states = json.loads(saved.state) if saved.state is not None else {}
        for detector in self.detectors:
            detector.restore(states.get(detector.name, {}))
        self._position = saved.seq
        return self._position

    def step(self) -> StepResult:
        """Observe one batch after the checkpoint and record what fired; returns what was done."""
        last = self._load()
        batch = self.store.read(last, limit=self.batch_size, types=self.types)
        if not batch:
            return StepResult(0, [], 0, last)
        upto = batch[-1].seq
        # Until this batch is recorded, the detectors' memory is ahead of the store: if anything below fails,
        # the next step restores them from the checkpoint.
        self._position = None
        findings = observe_batch(batch, _interactions_for(self.store, batch), self.detectors)
        by_seq = {s.seq: s for s in batch}
        for missing in {f.trigger_seq for f in findings} - by_seq.keys():
            # A detector that scores in batches may fire on an observation of an earlier step.
            by_seq.update((s.seq, s) for s in self.store.read(missing - 1, to_seq=missing, limit=1))
        alerts = [e for f in findings for e in decision_events(f, by_seq[f.trigger_seq], self.rules)]
        state = json.dumps({d.name: d.state() for d in self.detectors}, sort_keys=True)
        with self.store.unit_of_work() as uow:
            current = uow.position(self.name, with_state=False).seq
            if current != last:
                # Another runner moved on meanwhile (there should be one leader): keep its work, drop ours.
                logger.warning(
                    "monitor checkpoint %s moved from %d to %s under us; batch discarded", self.name, last, current
                )
                return StepResult(0, [], 0, current)
            result = uow.append(alerts)
            uow.save_position(self.name, upto, state)
        self._position = upto
        for finding in findings:
            logger.warning(
                "%s: %s",
                finding.detector,
                finding.summary,
                extra={
                    "detector": finding.detector,
                    "subject": finding.subject,
                    "anomaly_id": finding.anomaly_id,
                    "seq": finding.trigger_seq,
                },
            )
        return StepResult(len(batch), findings, result.appended, upto)

    def catch_up(self) -> list[Finding]:
        """Step until the store is exhausted; returns every finding raised on the way."""
        found: list[Finding] = []
        while True:
            result = self.step()
            found.extend(result.findings)
            if result.observed == 0:
                return found


def backtest(
    store: EventStore,
    detectors: Sequence[Detector],
    *,
    from_seq: int = 0,
    to_seq: int | None = None,
    batch_size: int = 1000,
) -> list[Finding]:
    """What ``detectors`` (fresh) would have raised over ``from_seq < seq <= to_seq``; writes nothing."""
    found: list[Finding] = []
    position = from_seq
    types = observed_types(detectors)
    while True:
        batch = store.read(position, to_seq=to_seq, limit=batch_size, types=types)
        if not batch:
            return found
        found.extend(observe_batch(batch, _interactions_for(store, batch), detectors))
        position = batch[-1].seq

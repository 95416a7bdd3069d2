"""One typed, frozen record per internal event type (docs/event-contract.md), each with its payload codec and its audit
description. The type names themselves are in :mod:`events.names`.

=========================  =================================================================
``anomaly.detected``       :class:`AnomalyDetected`
``enforcement.requested``  :class:`EnforcementRequested`
``enforcement.applied``    :class:`EnforcementApplied`
``dataset.snapshotted``    :class:`DatasetSnapshotted`
``training.started``       :class:`TrainingStarted`
``training.completed``     :class:`TrainingCompleted`
``training.failed``        :class:`TrainingFailed`
``gate.evaluated``         :class:`GateEvaluated` (one :class:`GateOutcome` per gate)
``model.registered``       :class:`ModelRegistered`
``model.promoted``         :class:`ModelPromoted` (an :class:`AliasMoved`)
``model.rolled_back``      :class:`ModelRolledBack` (an :class:`AliasMoved`)
``demonstration.generated`` :class:`DemonstrationGenerated`
``serving.adapter_loaded``  :class:`AdapterLoaded`
``guard_rule.lifted``      :class:`GuardRuleLifted`
``guard.decided``          :class:`GuardDecided`
``alert.reviewed``         :class:`AlertReviewed`
=========================  =================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from events.messages.alerts import AlertReviewed, AnomalyDetected, EnforcementApplied, EnforcementRequested
from events.messages.base import Description, EventRecord
from events.messages.guard import GuardDecided, GuardRuleLifted
from events.messages.serving import AdapterLoaded
from events.messages.training import (
    CONTINUOUS,
    DatasetSnapshotted,
    DemonstrationGenerated,
    GateEvaluated,
    GateOutcome,
    TrainingCompleted,
    TrainingFailed,
    TrainingStarted,
)
from events.messages.versions import AliasMoved, ModelPromoted, ModelRegistered, ModelRolledBack
from events.model import Event

__all__ = [
    "CONTINUOUS",
    "RECORDS",
    "AdapterLoaded",
    "AlertReviewed",
    "AliasMoved",
    "AnomalyDetected",
    "DatasetSnapshotted",
    "DemonstrationGenerated",
    "Description",
    "EnforcementApplied",
    "EnforcementRequested",
    "EventRecord",
    "GateEvaluated",
    "GateOutcome",
    "GuardDecided",
    "GuardRuleLifted",
    "ModelPromoted",
    "ModelRegistered",
    "ModelRolledBack",
    "TrainingCompleted",
    "TrainingFailed",
    "TrainingStarted",
    "record_of",
]

#: The record class of each internal event type (events.names.INTERNAL_TYPES, all of them).
RECORDS: Mapping[str, type[EventRecord]] = MappingProxyType(
    {
        record.event_type: record
        for record in (
            AnomalyDetected,
            EnforcementRequested,
            EnforcementApplied,
            DatasetSnapshotted,
            TrainingStarted,
            TrainingCompleted,
            TrainingFailed,
            GateEvaluated,
            ModelRegistered,
            ModelPromoted,
            ModelRolledBack,
            DemonstrationGenerated,
            AdapterLoaded,
            GuardRuleLifted,
            GuardDecided,
            AlertReviewed,
        )
    }
)


def record_of(event: Event) -> EventRecord:
    """The typed record of a stored internal event.

    Raises:
        KeyError: the event is not of an internal type, or its payload lacks a key the record needs.
    """
    return RECORDS[event.type].from_payload(event.payload)

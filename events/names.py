"""The names every floor shares, defined once: event types, registered models, training datasets.

Stored type names are stable strings (``"anomaly.detected"``), not import paths, so renaming a class never
breaks a replay, an audit hash or a Kafka consumer (docs/event-contract.md). The floors above import these instead of
spelling them out: a monitor and the daemon agree on ``enforcement.requested`` because both read it here.
This module imports nothing, so that :mod:`events.model` and the lightest CLI parser can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

# --- event types (docs/event-contract.md) -----------------------------------------------------------------------

INTERACTION_LOGGED = "interaction.logged"
FEEDBACK_RECEIVED = "feedback.received"

ANOMALY_DETECTED = "anomaly.detected"
ENFORCEMENT_REQUESTED = "enforcement.requested"
ENFORCEMENT_APPLIED = "enforcement.applied"
DATASET_SNAPSHOTTED = "dataset.snapshotted"
TRAINING_STARTED = "training.started"
TRAINING_COMPLETED = "training.completed"
TRAINING_FAILED = "training.failed"
GATE_EVALUATED = "gate.evaluated"
MODEL_REGISTERED = "model.registered"
MODEL_PROMOTED = "model.promoted"
MODEL_ROLLED_BACK = "model.rolled_back"
DEMONSTRATION_GENERATED = "demonstration.generated"
SERVING_ADAPTER_LOADED = "serving.adapter_loaded"
GUARD_RULE_LIFTED = "guard_rule.lifted"
GUARD_DECIDED = "guard.decided"
ALERT_REVIEWED = "alert.reviewed"

#: Types producers may send on the inbound topics.
INBOUND_TYPES: frozenset[str] = frozenset({INTERACTION_LOGGED, FEEDBACK_RECEIVED})

#: Types only alignd itself appends (decisions, training, governance); each has a record in events.messages.
INTERNAL_TYPES: frozenset[str] = frozenset(
    {
        ANOMALY_DETECTED,
        ENFORCEMENT_REQUESTED,
        ENFORCEMENT_APPLIED,
        DATASET_SNAPSHOTTED,
        TRAINING_STARTED,
        TRAINING_COMPLETED,
        TRAINING_FAILED,
        GATE_EVALUATED,
        MODEL_REGISTERED,
        MODEL_PROMOTED,
        MODEL_ROLLED_BACK,
        DEMONSTRATION_GENERATED,
        SERVING_ADAPTER_LOADED,
        GUARD_RULE_LIFTED,
        GUARD_DECIDED,
        ALERT_REVIEWED,
    }
)

#: The outcomes of a training attempt, in the order they happen.
TRAINING_TYPES: tuple[str, ...] = (TRAINING_STARTED, TRAINING_COMPLETED, TRAINING_FAILED)
#: The moves of an alias (``champion``, ``challenger``), which the outbox publishes on the models topic.
ALIAS_CHANGE_TYPES: tuple[str, ...] = (MODEL_PROMOTED, MODEL_ROLLED_BACK)

#: A reviewer's verdict on an alert (``alert.reviewed``'s ``verdict``): the detector was right, or it was not.
TRUE_POSITIVE = "true_positive"
FALSE_POSITIVE = "false_positive"
VERDICTS: tuple[str, ...] = (TRUE_POSITIVE, FALSE_POSITIVE)

#: How bad an alert is (``anomaly.detected``'s ``severity``), from least to most.
Severity = Literal["info", "warning", "critical"]

# --- quarantine of training data (events/projections/quarantine.py) --------------------------------------------

#: ``enforcement.requested`` actions the quarantine projection folds; target ``{"user": id}``...
QUARANTINE_USER = "quarantine_user"
#: ...or ``{"event_ids": [id, ...]}``.
QUARANTINE_EVENTS = "quarantine_events"
#: An operator's (``alignd quarantine remove``), never a monitor rule's: lifts the quarantine of the user or the
#: events its target names.
LIFT_QUARANTINE = "lift_quarantine"

# --- registered models (docs/trainers.md) -----------------------------------------------------------------

#: The MLflow registered model of each kind of training.
MODEL_NAMES: Mapping[str, str] = MappingProxyType(
    {"reward": "alignd-reward", "policy": "alignd-policy", "detector": "alignd-detector"}
)
#: The kinds of model alignd trains, the keys of :data:`MODEL_NAMES`.
MODEL_KINDS: tuple[str, ...] = tuple(MODEL_NAMES)
#: The kinds the continuous evaluation re-measures (trainers.champion_eval): the detector's held-out figures are
#: fixed data, measured once when it trains.
EVALUATED_KINDS: tuple[str, ...] = ("reward", "policy")

# --- training datasets (trainers.snapshot) ------------------------------------------------------------

PREFERENCE_PAIRS = "preference_pairs"
DEMONSTRATIONS = "demonstrations"
PROMPTS = "prompts"
#: Interactions labelled by reviewers' verdicts on the jailbreak detectors' alerts (events.verdicts).
ALERT_VERDICTS = "alert_verdicts"
#: The kinds of dataset snapshot (``dataset.snapshotted``'s ``kind``).
DATASET_KINDS: tuple[str, ...] = (PREFERENCE_PAIRS, DEMONSTRATIONS, PROMPTS, ALERT_VERDICTS)
#: The dataset each kind of training reads: the reward model, the policy objectives (sft, dpo, rloo, ppo, grpo) and
#: the jailbreak-attempt classifier (``detector``; its authored data is read by the trainer, not snapshotted).
DATASETS: Mapping[str, str] = MappingProxyType(
    {
        "reward": PREFERENCE_PAIRS,
        "sft": DEMONSTRATIONS,
        "dpo": PREFERENCE_PAIRS,
        "rloo": PROMPTS,
        "ppo": PROMPTS,
        "grpo": PROMPTS,
        "detector": ALERT_VERDICTS,
    }
)

"""Governance as the daemon sees it: the decisions live in :mod:`trainers.governance`, beside the registry.

A promotion, a rollback or an alias sync is one call from the daemon (the CLI, the enforcement executor, the
supervisor's alias loop) into :class:`trainers.governance.Governance`, which reads the registry and the store,
decides and records; the daemon only wires it, with the store, the registry and the clock
(``App.governance`` of daemon/bootstrap.py does, from the settings). The names the daemon uses are re-exported here.
"""

from __future__ import annotations

from trainers.governance import (
    ALIASES,
    MLFLOW_REASON,
    MODEL_EVENT_TYPES,
    SOURCE,
    Governance,
    GovernanceError,
    ModelChange,
    NothingToRollBackError,
    PromotionRefusedError,
)

__all__ = [
    "ALIASES",
    "MLFLOW_REASON",
    "MODEL_EVENT_TYPES",
    "SOURCE",
    "Governance",
    "GovernanceError",
    "ModelChange",
    "NothingToRollBackError",
    "PromotionRefusedError",
]

"""A fix for kafka-python 3.0's group join, applied to each consumer the daemon makes (daemon/bootstrap.py).

The bug (kafka-python 3.0.12, kafka/coordinator/base.py ``join_group_async``): ``poll(timeout_ms=N)`` runs the
join as a task and, when N ends first, leaves the task in flight for the next poll to await, but the next poll
only looks at it while ``need_rejoin()`` is true. When the rejoin was asked by the consumer's own check (the
topics' metadata changed since the last assignment: at every start, the group's first join runs before the
topics' metadata has arrived and assigns nothing), nothing keeps ``need_rejoin()`` true: the leader's
assignment of the second join makes it false while that join completes in the background. The completed join
is never applied: the member holds no partitions, heartbeats as a healthy one, and never asks again. Ingestion
stalls for good with no error (CI saw it: an ``alignd run`` that never ingested its 30 messages).

The fix: ``need_rejoin()`` is also true while a join task is pending, so the next poll takes up the join
again. (A join that finished between two polls is sent once more, kafka-python's own path for a finished
task; the group then completes it within a poll.) Applied only where the attribute it relies on exists, so
a kafka-python that renames it gets no patch rather than a broken one; tests/integration/test_kafka_join.py
shows the stall without the fix and none with it.
"""

from __future__ import annotations

import logging
import types
from typing import Any

logger = logging.getLogger(__name__)


def keep_join_results(consumer: Any) -> bool:
    """Patch ``consumer``'s group coordinator (see the module's docstring); whether it was patched."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "_join_task") or not hasattr(coordinator, "need_rejoin"):
        logger.debug("kafka-python's coordinator has no _join_task: the join fix is not applied")
        return False
    original = coordinator.need_rejoin

    def need_rejoin(self: Any) -> bool:
        return bool(original()) or self._join_task is not None  # noqa: SLF001 - see the module's docstring

    coordinator.need_rejoin = types.MethodType(need_rejoin, coordinator)
    return True

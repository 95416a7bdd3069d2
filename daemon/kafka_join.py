"""A fix for kafka-python 3.0's group join, applied to each consumer the daemon makes (daemon/bootstrap.py).

The bug (kafka-python 3.0.12, kafka/coordinator/base.py ``join_group_async``): ``poll(timeout_ms=N)`` runs the
join as a task and, when N ends first, leaves the task in flight for the next poll to await, but the next poll
only looks at it while ``need_rejoin()`` is true, and a task that finished meanwhile is replaced by a new join
rather than read. When the rejoin was asked by the consumer's own check (the topics' metadata changed since the
last assignment: at every start, the group's first join runs before the topics' metadata has arrived and
assigns nothing), nothing keeps ``need_rejoin()`` true: the leader's assignment of the second join makes it
false while that join completes in the background. The completed join is never applied: the member holds no
partitions, heartbeats as a healthy one, and never asks again. Ingestion stalls for good with no error (CI saw
it: an ``alignd run`` that never ingested its 30 messages).

The fix: ``need_rejoin()`` is also true while a join task is pending, and a join task that finished after its
poll gave up on it is applied as ``join_group_async`` applies one it awaited (the same four state changes and
``_on_join_complete_async``), not sent again: sending it again rebalanced the whole group once more, and with
two members the second lost its partitions (tests/reliability/test_rebalance.py). A failed finished join is
dropped, and kafka-python's own path joins again. Applied only where the attributes it relies on exist, so a
kafka-python that renames them gets no patch rather than a broken one; tests/integration/test_kafka_join.py
shows the stall without the fix and none with it.
"""

from __future__ import annotations

import logging
import types
from typing import Any

logger = logging.getLogger(__name__)

_NEEDED = ("_join_task", "need_rejoin", "ensure_active_group_async", "_on_join_complete_async", "_generation", "_lock")


def keep_join_results(consumer: Any) -> bool:
    """Patch ``consumer``'s group coordinator (see the module's docstring); whether it was patched."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not all(hasattr(coordinator, name) for name in _NEEDED):
        logger.debug("kafka-python's coordinator is not the one this fix knows: the join fix is not applied")
        return False
    from kafka.structs import MemberState

    need_rejoin, ensure_active_group = coordinator.need_rejoin, coordinator.ensure_active_group_async

    def pending_join_counts(self: Any) -> bool:
        return bool(need_rejoin()) or self._join_task is not None  # noqa: SLF001 - see the module's docstring

    async def finished_join_applied(self: Any, timeout_ms: Any = None) -> Any:
        task = self._join_task  # noqa: SLF001
        if task is not None and task.is_done:
            self._join_task = None  # noqa: SLF001
            if task.succeeded():
                # What join_group_async does after awaiting a successful join task.
                with self._lock:  # noqa: SLF001
                    self.rejoining = False
                    self.rejoin_needed = False
                    self.state = MemberState.STABLE
                    self._enable_heartbeat()  # noqa: SLF001
                generation = self._generation  # noqa: SLF001
                await self._on_join_complete_async(  # noqa: SLF001
                    generation.generation_id, generation.member_id, generation.protocol, task.value
                )
                if not need_rejoin():
                    return True
        return await ensure_active_group(timeout_ms)

    coordinator.need_rejoin = types.MethodType(pending_join_counts, coordinator)
    coordinator.ensure_active_group_async = types.MethodType(finished_join_applied, coordinator)
    return True

"""The training scheduler's leader lease: which replica schedules training (at most one at a time).

The lease itself (a row in the store's database, taken, renewed and released in single statements, with a
fencing token) is :mod:`events.lease`, on the ground floor with the rest of alignd's SQL; its docstring says why a
lease row rather than an advisory lock, and which clocks decide expiry. The scheduler (daemon/scheduler.py) holds
the lease :data:`SCHEDULER_LEASE` unless ``schedule.lease_name`` names another.
"""

from __future__ import annotations

from events.lease import LeaderLease, LeaseState, default_holder, read_lease

#: The lease the training scheduler holds.
SCHEDULER_LEASE = "scheduler"

__all__ = ["SCHEDULER_LEASE", "LeaderLease", "LeaseState", "default_holder", "read_lease"]

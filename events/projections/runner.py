"""Keep projections up to date from the store, rebuild them, and fingerprint them.

Each projection's rows and its position (last ``seq`` folded, a store position named after the projection)
are written in one unit of work, so a crash between batches never folds an event twice or skips one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from events.codec import canonical_json
from events.model import StoredEvent
from events.projections.base import PROJECTIONS, Key, Projection, Row
from events.projections.join import JOINED_TYPES
from events.projections.quarantine import QuarantineProjection
from events.store import EventStore, UnitOfWork

logger = logging.getLogger(__name__)


class ProjectionRunner:
    """Folds new events into the projections, batch by batch."""

    def __init__(self, store: EventStore, projections: Iterable[Projection] | None = None, batch_size: int = 1000):
        self.store = store
        self.projections = (
            list(projections) if projections is not None else [*PROJECTIONS.values(), QuarantineProjection()]
        )
        self.batch_size = batch_size

    def _select(self, names: Sequence[str] | None) -> list[Projection]:
        if names is None:
            return self.projections
        known = {p.name: p for p in self.projections}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise KeyError(f"unknown projection {', '.join(unknown)}; known: {', '.join(known)}")
        return [known[n] for n in names]

    def checkpoint(self, name: str) -> int:
        return self.store.position(name, with_state=False).seq

    def catch_up(self, names: Sequence[str] | None = None, *, max_batches: int | None = None) -> dict[str, int]:
        """Fold everything appended since each projection's checkpoint; returns events folded per projection."""
        folded: dict[str, int] = {}
        for projection in self._select(names):
            total = 0
            batches = 0
            while max_batches is None or batches < max_batches:
                count = self._step(projection)
                if count == 0:
                    break
                total += count
                batches += 1
            folded[projection.name] = total
        return folded

    def _step(self, projection: Projection) -> int:
        with self.store.unit_of_work(append_lock=False) as uow:
            # Claimed: another replica (or a CLI) folding this projection at the same time waits its turn.
            last = uow.position(projection.name, with_state=False, claim=True).seq
            batch = uow.read(last, limit=self.batch_size, types=projection.types)
            if not batch:
                return 0
            upto = batch[-1].seq
            # Only interactions and feedback are joined; a projection that also folds other types (the
            # demonstrations take demonstration.generated) looks up the related events of that part alone.
            joined = [e for e in batch if e.event.type in JOINED_TYPES]
            units = projection.units(batch, _related(uow, joined) if joined else [])
            if units:
                _fold_units(uow, projection, units)
            uow.save_position(projection.name, upto)
            logger.debug("projection %s folded seq %d..%d (%d units)", projection.name, batch[0].seq, upto, len(units))
            return len(batch)

    def reset(self, names: Sequence[str] | None = None) -> None:
        """Delete the projections' rows and positions (one unit of work)."""
        selected = self._select(names)
        with self.store.unit_of_work(append_lock=False) as uow:
            for projection in selected:
                uow.clear_rows(projection.table)
                uow.delete_position(projection.name)

    def replay(self, names: Sequence[str] | None = None) -> dict[str, int]:
        """Rebuild from nothing: reset, then fold the whole store."""
        self.reset(names)
        return self.catch_up(names)

    def digests(self, names: Sequence[str] | None = None) -> dict[str, str]:
        return {p.name: projection_digest(self.store, p) for p in self._select(names)}


def _related(uow: UnitOfWork, batch: Sequence[StoredEvent]) -> list[StoredEvent]:
    """Interactions and feedback about the batch's requests, up to its last seq (for the join).

    ``batch`` is the interaction and feedback part of what the runner read. Every such event after the
    checkpoint and before the read's last seq is in that part, so bounding by its own last seq relates
    exactly what bounding by the whole read would.
    """
    request_ids = sorted({e.event.request_id for e in batch if e.event.request_id is not None})
    if not request_ids:
        return []
    return uow.by_request_id(request_ids, max_seq=batch[-1].seq, types=JOINED_TYPES)


def _fold_units(uow: UnitOfWork, projection: Projection, units: Sequence[Any]) -> None:
    wanted: list[Key] = sorted({key for unit in units for key in projection.keys(unit)}, key=repr)
    rows: dict[Key, Row] = uow.load_rows(projection.table, wanted) if wanted else {}
    before = {key: dict(row) for key, row in rows.items()}
    for unit in units:
        projection.fold(rows, unit)
    changed = [key for key, row in rows.items() if before.get(key) != row]
    removed = [key for key in before if key not in rows]  # fold deleted them (a lifted quarantine)
    if changed or removed:
        stale = [key for key in changed if key in before] + removed
        uow.write_rows(projection.table, stale=stale, rows=[rows[key] for key in changed])


def projection_digest(store: EventStore, projection: Projection) -> str:
    """SHA-256 over the projection's rows in primary-key order, as canonical JSON."""
    digest = hashlib.sha256()
    for row in store.table_rows(projection.table):
        digest.update(canonical_json({k: row[k] for k in sorted(row.keys())}).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()

"""Dataset snapshots: training examples read from the projections up to a known ``seq``, hashed.

A snapshot is what a model version learned from. Its ``seq`` range and the SHA-256 of its rows (canonical
JSON, in ``seq`` order) go into a ``dataset.snapshotted`` event and onto the MLflow run and version, so any
version traces back to the exact events behind it. Quarantined users and events never enter a snapshot:
pairs and demonstrations are read through the quarantine-aware queries of ``events.projections``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from events.codec import canonical_json
from events.errors import ConfigurationError
from events.messages import DatasetSnapshotted
from events.model import Event
from events.names import DEMONSTRATIONS, PREFERENCE_PAIRS, PROMPTS
from events.projections import PROJECTIONS, QuarantineProjection
from events.projections.quarantine import training_demonstrations, training_pairs
from events.sql_store import SqlEventStore
from events.tables import events, proj_interactions, proj_quarantine, projection_checkpoints

SOURCE = "alignd.trainers"

#: The projections each dataset kind reads; the snapshot stops at the lowest of their checkpoints so
#: every event up to ``to_seq`` has been folded into all of them.
_NEEDS = {
    PREFERENCE_PAIRS: ("preference_pairs", "quarantine"),
    DEMONSTRATIONS: ("demonstrations", "quarantine"),
    PROMPTS: ("interactions", "quarantine"),
}


@dataclass(frozen=True)
class Snapshot:
    kind: str
    to_seq: int
    sha256: str
    rows: tuple[dict[str, Any], ...]
    from_seq: int = 0

    @property
    def event_id(self) -> str:
        return f"dataset:{self.kind}:{self.to_seq}:{self.sha256[:16]}"

    def record(self) -> DatasetSnapshotted:
        return DatasetSnapshotted(
            name=f"{self.kind}@{self.to_seq}",
            kind=self.kind,
            from_seq=self.from_seq,
            to_seq=self.to_seq,
            sha256=self.sha256,
            rows=len(self.rows),
        )

    def info(self) -> dict[str, Any]:
        """The ``dataset.snapshotted`` payload, which ``training.started`` and ``model.registered`` carry too."""
        return self.record().to_payload()

    def event(self) -> Event:
        return self.record().to_event(self.event_id, datetime.now(UTC), SOURCE)


def hash_rows(rows: Sequence[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(canonical_json(row).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def messages_of(prompt_kind: str, prompt: str) -> list[dict[str, str]]:
    """The chat messages of a stored prompt (a plain prompt becomes one user turn)."""
    if prompt_kind == "messages":
        return [{"role": m["role"], "content": m["content"]} for m in json.loads(prompt)]
    return [{"role": "user", "content": prompt}]


def _folded_upto(store: SqlEventStore, kind: str) -> int:
    """The highest seq such that every event the dataset's projections fold, up to it, has been folded.

    A projection's checkpoint only moves when it folds an event of its types, so a quiet one (quarantine,
    with no enforcement yet) lags behind without missing anything: what counts is its first unfolded event.
    """
    projections = {**PROJECTIONS, "quarantine": QuarantineProjection()}
    names = _NEEDS[kind]
    with store.engine.connect() as conn:
        found = dict(
            conn.execute(
                select(projection_checkpoints.c.name, projection_checkpoints.c.last_seq).where(
                    projection_checkpoints.c.name.in_(names)
                )
            ).all()
        )
        upto = int(conn.execute(select(func.coalesce(func.max(events.c.seq), 0))).scalar_one())
        for name in names:
            first_unfolded = conn.execute(
                select(func.min(events.c.seq)).where(
                    events.c.seq > int(found.get(name, 0)), events.c.type.in_(projections[name].types)
                )
            ).scalar_one()
            if first_unfolded is not None:
                upto = min(upto, int(first_unfolded) - 1)
    return upto


def take_snapshot(
    store: SqlEventStore, kind: str, *, upto_seq: int | None = None, limit: int | None = None
) -> Snapshot:
    """Examples of ``kind`` (preference_pairs, demonstrations or prompts) up to ``upto_seq``.

    ``upto_seq`` defaults to how far the projections have folded; asking for more than that is refused
    (the examples past it are not in the tables yet, and the hash would not be reproducible).
    """
    if kind not in _NEEDS:
        raise ConfigurationError(f"unknown dataset kind {kind!r}; known: {', '.join(_NEEDS)}")
    folded = _folded_upto(store, kind)
    if upto_seq is None:
        upto_seq = folded
    elif upto_seq > folded:
        raise ConfigurationError(
            f"the projections for {kind} have folded events up to seq {folded}, not {upto_seq}; "
            "run `alignd replay` (or let ingestion catch up) first"
        )
    with store.engine.connect() as conn:
        if kind == PREFERENCE_PAIRS:
            query = training_pairs()
            query = query.where(query.selected_columns.seq <= upto_seq)
            rows = [
                {
                    "id": r.pair_id,
                    "seq": r.seq,
                    "prompt_kind": r.prompt_kind,
                    "prompt": r.prompt,
                    "chosen": r.chosen,
                    "rejected": r.rejected,
                }
                for r in conn.execute(query)
            ]
        elif kind == DEMONSTRATIONS:
            query = training_demonstrations()
            query = query.where(query.selected_columns.seq <= upto_seq)
            rows = [
                {
                    "id": r.demo_id,
                    "seq": r.seq,
                    "origin": r.origin,
                    "prompt_kind": r.prompt_kind,
                    "prompt": r.prompt,
                    "response": r.response,
                }
                for r in conn.execute(query)
            ]
        else:
            rows = _prompts(conn, upto_seq)
    if limit is not None and len(rows) > limit:
        rows = rows[-limit:]  # the most recent: the policy should learn from today's traffic
    return Snapshot(kind=kind, to_seq=upto_seq, sha256=hash_rows(rows), rows=tuple(rows))


def _prompts(conn: Any, upto_seq: int) -> list[dict[str, Any]]:
    """Distinct prompts users sent (for RLOO), first occurrence of each, quarantined users left out."""
    t = proj_interactions
    users = select(proj_quarantine.c.subject_id).where(proj_quarantine.c.subject_kind == "user")
    first = (
        select(func.min(t.c.interaction_seq).label("seq"), t.c.prompt_kind, t.c.prompt)
        .where(t.c.interaction_seq <= upto_seq, t.c.user_id.is_(None) | t.c.user_id.not_in(users))
        .group_by(t.c.prompt_kind, t.c.prompt)
        .order_by(func.min(t.c.interaction_seq))
    )
    return [
        {"id": f"prompt:{r.seq}", "seq": int(r.seq), "prompt_kind": r.prompt_kind, "prompt": r.prompt}
        for r in conn.execute(first)
    ]


def split(
    rows: Sequence[dict[str, Any]], eval_fraction: float, salt: str = ""
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held out), by a hash of each row's id: stable as the dataset grows, so a held-out example
    never becomes a training example in a later snapshot."""
    train: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    for row in rows:
        bucket = int.from_bytes(hashlib.sha256(f"{salt}{row['id']}".encode()).digest()[:8], "big") / 2**64
        (held if bucket < eval_fraction else train).append(row)
    return train, held

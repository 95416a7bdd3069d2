"""Dataset snapshots: training examples read from the projections up to a known ``seq``, hashed.

A snapshot is what a model version learned from. Its ``seq`` range and the SHA-256 of its rows (canonical
JSON, in ``seq`` order) go into a ``dataset.snapshotted`` event and onto the MLflow run and version, so any
version traces back to the exact events behind it. Quarantined users and events never enter a snapshot:
pairs, demonstrations and prompts are read through the quarantine-aware queries of ``events.read_models``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from events.codec import canonical_json
from events.errors import ConfigurationError
from events.messages import DatasetSnapshotted
from events.model import Event
from events.names import ALERT_VERDICTS, DEMONSTRATIONS, PREFERENCE_PAIRS, PROMPTS
from events.read_models import first_prompts, folded_upto, training_examples
from events.sql_store import SqlEventStore
from events.verdicts import attempt_examples

SOURCE = "alignd.trainers"

#: The projections each dataset kind reads; the snapshot stops at the lowest of their checkpoints so
#: every event up to ``to_seq`` has been folded into all of them.
_NEEDS = {
    PREFERENCE_PAIRS: ("preference_pairs", "quarantine"),
    DEMONSTRATIONS: ("demonstrations", "quarantine"),
    PROMPTS: ("interactions", "quarantine"),
    # verdicts are read from the events themselves; the quarantine decides which reviewers and verdicts count
    ALERT_VERDICTS: ("quarantine",),
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


def take_snapshot(
    store: SqlEventStore, kind: str, *, upto_seq: int | None = None, limit: int | None = None
) -> Snapshot:
    """Examples of ``kind`` (preference_pairs, demonstrations, prompts or alert_verdicts) up to ``upto_seq``.

    ``upto_seq`` defaults to how far the projections have folded; asking for more than that is refused
    (the examples past it are not in the tables yet, and the hash would not be reproducible).
    """
    if kind not in _NEEDS:
        raise ConfigurationError(f"unknown dataset kind {kind!r}; known: {', '.join(_NEEDS)}")
    folded = folded_upto(store, _NEEDS[kind])
    if upto_seq is None:
        upto_seq = folded
    elif upto_seq > folded:
        raise ConfigurationError(
            f"the projections for {kind} have folded events up to seq {folded}, not {upto_seq}; "
            "run `alignd replay` (or let ingestion catch up) first"
        )
    if kind == PREFERENCE_PAIRS:
        rows = [
            {
                "id": r["pair_id"],
                "seq": r["seq"],
                "prompt_kind": r["prompt_kind"],
                "prompt": r["prompt"],
                "chosen": r["chosen"],
                "rejected": r["rejected"],
            }
            for r in training_examples(store, PREFERENCE_PAIRS, upto_seq)
        ]
    elif kind == DEMONSTRATIONS:
        rows = [
            {
                "id": r["demo_id"],
                "seq": r["seq"],
                "origin": r["origin"],
                "prompt_kind": r["prompt_kind"],
                "prompt": r["prompt"],
                "response": r["response"],
            }
            for r in training_examples(store, DEMONSTRATIONS, upto_seq)
        ]
    elif kind == ALERT_VERDICTS:
        rows = [
            {
                "id": e.interaction_id,
                "seq": e.seq,
                "prompt": e.prompt,
                "label": e.label,
                "detector": e.detector,
                "alert_id": e.alert_id,
                "verdict_event_id": e.verdict_event_id,
            }
            for e in attempt_examples(store, upto_seq=upto_seq)
        ]
    else:
        rows = _prompts(store, upto_seq)
    if limit is not None and len(rows) > limit:
        rows = rows[-limit:]  # the most recent: the policy should learn from today's traffic
    return Snapshot(kind=kind, to_seq=upto_seq, sha256=hash_rows(rows), rows=tuple(rows))


def _prompts(store: SqlEventStore, upto_seq: int) -> list[dict[str, Any]]:
    """Distinct prompts users sent (for RLOO), first occurrence of each, quarantined users left out."""
    return [
        {"id": f"prompt:{r['seq']}", "seq": r["seq"], "prompt_kind": r["prompt_kind"], "prompt": r["prompt"]}
        for r in first_prompts(store, upto_seq)
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

"""Join interactions with their feedback, whichever arrives first (pure).

A pair (interaction, feedback) is emitted exactly once, at the later of the two ``seq`` numbers, so the
result depends only on the order of the store and not on how it is cut into batches: live processing and
a replay from nothing fold the same units in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from events.model import FEEDBACK_RECEIVED, INTERACTION_LOGGED, StoredEvent

JOINED_TYPES = (INTERACTION_LOGGED, FEEDBACK_RECEIVED)


@dataclass(frozen=True)
class Joined:
    """An interaction arriving (``feedback is None``), or one piece of feedback joined to it."""

    interaction: StoredEvent
    feedback: StoredEvent | None = None

    @property
    def seq(self) -> int:
        return (
            self.feedback.seq
            if self.feedback is not None and self.feedback.seq > self.interaction.seq
            else self.interaction.seq
        )


def join_batch(batch: Iterable[StoredEvent], related: Iterable[StoredEvent]) -> list[Joined]:
    """Units to fold for ``batch``.

    Args:
        batch: new events, in ``seq`` order.
        related: every interaction and feedback event about the batch's request ids with ``seq`` up to
            the batch's last (it may include the batch itself).

    The first interaction logged for a request id is the one feedback joins to; a later one with the same
    request id is a producer error and is ignored here (it stays in the store).
    """
    batch = list(batch)
    by_seq = {e.seq: e for e in related}
    by_seq.update((e.seq, e) for e in batch)
    first_interaction: dict[str, StoredEvent] = {}
    feedback: dict[str, list[StoredEvent]] = {}
    for seq in sorted(by_seq):
        stored = by_seq[seq]
        request_id = stored.event.request_id
        if request_id is None:
            continue
        if stored.event.type == INTERACTION_LOGGED:
            first_interaction.setdefault(request_id, stored)
        elif stored.event.type == FEEDBACK_RECEIVED:
            feedback.setdefault(request_id, []).append(stored)

    units: list[Joined] = []
    for stored in batch:
        request_id = stored.event.request_id
        if request_id is None:
            continue
        interaction = first_interaction.get(request_id)
        if stored.event.type == INTERACTION_LOGGED:
            if interaction is None or interaction.seq != stored.seq:
                continue
            units.append(Joined(stored))
            units.extend(Joined(stored, f) for f in feedback.get(request_id, ()) if f.seq < stored.seq)
        elif stored.event.type == FEEDBACK_RECEIVED and interaction is not None and interaction.seq < stored.seq:
            units.append(Joined(interaction, stored))
    return units

"""Read models folded from the event store: interactions, preference pairs, demonstrations, feedback stats,
and the quarantine that training sets leave out."""

from events.projections.base import PROJECTIONS, Projection
from events.projections.quarantine import QuarantineProjection, training_demonstrations, training_pairs
from events.projections.runner import ProjectionRunner, projection_digest

__all__ = [
    "PROJECTIONS",
    "Projection",
    "ProjectionRunner",
    "QuarantineProjection",
    "projection_digest",
    "training_demonstrations",
    "training_pairs",
]

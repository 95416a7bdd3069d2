"""Read models folded from the event store: interactions, preference pairs, demonstrations, feedback stats."""

from events.projections.base import PROJECTIONS, Projection
from events.projections.runner import ProjectionRunner, projection_digest

__all__ = ["PROJECTIONS", "Projection", "ProjectionRunner", "projection_digest"]

"""One error tree for the whole project, rooted at :class:`AlignmentError`."""

from __future__ import annotations


class AlignmentError(Exception):
    """Root of every error alignd raises on purpose."""


class EventValidationError(AlignmentError):
    """An inbound message does not meet the event contract.

    Attributes:
        kind: a stable machine-readable category (``invalid_json``, ``invalid_utf8``, ``schema``,
            ``unknown_type``, ``unknown_schema_version``, ``oversized``, ``empty``).
        reason: a sentence a person can act on, naming the field and the problem.
    """

    def __init__(self, kind: str, reason: str, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.event_id = event_id


class StoreError(AlignmentError):
    """The event store failed."""


class StoreUnavailableError(StoreError):
    """A transient failure (connection refused, server restarting): the same call may succeed later."""


class StoreRefusedError(StoreError):
    """The database refused the data itself (a value it cannot hold, a constraint): the same call fails again,
    so the caller must find and set aside what was refused rather than retry."""


class SchemaOutOfDateError(StoreError):
    """The database schema is behind the code."""


class ConfigurationError(AlignmentError):
    """A setting is missing or wrong; the message names it."""

"""SQLAlchemy's errors, named and translated at the ground floor (STYLE.md §2: translate at the boundary).

The store translates what its own calls raise into the :class:`~events.errors.StoreError` tree, so the floors
above never import ``sqlalchemy.exc``. A few callers meet SQLAlchemy's errors from code that is not ours (MLflow's
database-backed tracking store, Alembic) or must classify an error they did not translate (the HTTP server's
503); they use the names below instead of SQLAlchemy's classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from events.errors import StoreError, StoreRefusedError, StoreUnavailableError

#: Every error SQLAlchemy raises (for a boundary that catches a library's database errors, e.g. MLflow's).
SQL_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError,)
#: PEP 249's OperationalError: the database failed to operate (connection lost, locked, timed out).
OPERATIONAL_ERRORS: tuple[type[Exception], ...] = (OperationalError,)
#: The database could not be reached or lost the connection: the same call may succeed later.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError)
#: What the store translates (every DBAPI error; see :func:`translate` for how each is classed).
_TRANSLATED = (OperationalError, InterfaceError, DBAPIError)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database does not answer (translated or not), rather than a fault of the call."""
    if isinstance(exc, StoreUnavailableError | OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def database_message(exc: BaseException) -> str:
    """The database's own words for a refused statement, on one line, without the statement and its data."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())
    return f"{type(cause).__name__}: {text[:500]}"


def translate(exc: Exception) -> StoreError:
    """The :class:`StoreError` of a SQLAlchemy error: unavailable (retry later), refused (the data), or other."""
    if isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return StoreUnavailableError(f"database unavailable: {str(exc.__cause__ or exc).splitlines()[0]}")
    if isinstance(exc, DataError | IntegrityError):
        return StoreRefusedError(database_message(exc))
    return StoreError(str(exc).splitlines()[0])


@contextmanager
def translated() -> Iterator[None]:
    """Raise the :func:`translate`\\ d :class:`StoreError` of any DBAPI error raised inside, ``from`` it."""
    try:
        yield
    except _TRANSLATED as exc:
        raise translate(exc) from exc

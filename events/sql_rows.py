"""The read models' rows on SQL: what the projection runner loads, writes and fingerprints, through a unit of work
of :class:`~events.sql_store.SqlEventStore` (its ``load_rows``, ``write_rows``, ``clear_rows``) and the store's
``table_rows``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, delete, insert, select, tuple_

from events.store import Key, Row


def _key_in(table: Table, keys: Sequence[Key]) -> ColumnElement[bool]:
    columns = list(table.primary_key.columns)
    if len(columns) == 1:
        return columns[0].in_([k[0] for k in keys])
    return tuple_(*columns).in_(list(keys))


def load_rows(conn: Connection, table: Table, keys: Sequence[Key]) -> dict[Key, Row]:
    if not keys:
        return {}
    columns = [c.name for c in table.primary_key.columns]
    found = conn.execute(select(table).where(_key_in(table, keys))).mappings()
    return {tuple(row[c] for c in columns): dict(row) for row in found}


def write_rows(conn: Connection, table: Table, *, stale: Sequence[Key], rows: Sequence[Mapping[str, Any]]) -> None:
    if stale:
        conn.execute(delete(table).where(_key_in(table, stale)))
    if rows:
        conn.execute(insert(table), [dict(row) for row in rows])


def clear_rows(conn: Connection, table: Table) -> None:
    conn.execute(delete(table))


def table_rows(conn: Connection, table: Table) -> Iterator[Row]:
    for row in conn.execute(select(table).order_by(*table.primary_key.columns)).mappings():
        yield dict(row)

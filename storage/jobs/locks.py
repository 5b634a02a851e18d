"""Holding jobs still while a transaction decides about them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, literal, select, update

from storage.models import jobs_table


def lock_rows(conn: Connection, where: Sequence[Any], limit: int | None = None) -> list[str]:
    """The ids of the jobs matching ``where``, locked against any other write
    until ``conn``'s transaction ends (the rows on PostgreSQL, re-checked
    after any wait; the whole database on SQLite, which has one writer)."""
    if conn.dialect.name != "postgresql":
        take_write_lock(conn)
    query = select(jobs_table.c.id).where(*where).order_by(jobs_table.c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return list(conn.execute(query).scalars())


def take_write_lock(conn: Connection) -> None:
    """SQLite: a write that changes nothing takes the database's write lock
    now, so nothing this transaction reads next can change before it commits."""
    conn.execute(update(jobs_table).where(literal(False)).values(id=jobs_table.c.id))

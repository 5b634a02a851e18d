"""Schema operations that leave traffic running, for migrations to call.

On PostgreSQL an index on a table in use is built ``CONCURRENTLY`` and a
constraint is added ``NOT VALID`` and validated later, both outside the
migration's transaction (:func:`outside_transaction`), so no read or write
waits for them; the rules are docs/design.md's "Schema changes". Each
operation may run again after an interruption (a rerun of a step that had
committed part of its work): an index left invalid by a build that died is
dropped and built again. On SQLite (one writer at a time, the embedded mode)
they are the plain operations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from alembic import op
from sqlalchemy import Column, text
from sqlalchemy.sql.elements import ColumnElement, TextClause


def postgresql() -> bool:
    """Whether the migration runs against PostgreSQL (also in ``--sql`` mode)."""
    return bool(op.get_context().dialect.name == "postgresql")


@contextmanager
def outside_transaction() -> Iterator[None]:
    """Commit the step's transaction so far (releasing its locks) and run the
    body in autocommit on PostgreSQL; elsewhere run it in place. Whatever the
    body does must be safe to run again (the step is stamped only at its end)."""
    if not postgresql():
        yield
        return
    with op.get_context().autocommit_block():
        yield


def add_column(table: str, column: Column[Any]) -> None:
    """``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` on PostgreSQL: an instant
    under ``ACCESS EXCLUSIVE`` when ``column`` is nullable or has a constant
    default (no rewrite). On SQLite a plain ``ADD COLUMN``."""
    if postgresql():
        op.add_column(table, column, if_not_exists=True)
    else:
        op.add_column(table, column)


def drop_column(table: str, name: str) -> None:
    """``ALTER TABLE ... DROP COLUMN IF EXISTS`` (PostgreSQL: an instant, no
    rewrite); a contract step, once no running code reads or writes it."""
    if postgresql():
        op.drop_column(table, name, if_exists=True)
    else:
        with op.batch_alter_table(table) as batch:
            batch.drop_column(name)


def _drop_invalid_index(name: str) -> None:
    # A CONCURRENTLY build that failed or was killed leaves an INVALID index
    # behind that IF NOT EXISTS would keep: drop it so it is built again.
    context = op.get_context()
    if context.as_sql:
        return
    invalid = context.bind.execute(  # type: ignore[union-attr]
        text(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname = :name AND c.relnamespace = 'public'::regnamespace"
            " AND NOT i.indisvalid"
        ),
        {"name": name},
    ).first()
    if invalid is not None:
        op.drop_index(name, postgresql_concurrently=True, if_exists=True)


def create_index(
    name: str,
    table: str,
    columns: Sequence[str | ColumnElement[Any] | TextClause],
    where: TextClause | None = None,
    unique: bool = False,
) -> None:
    """``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` on PostgreSQL (call it
    inside :func:`outside_transaction`): reads and writes of ``table`` go on
    while it builds. A plain ``CREATE INDEX`` on SQLite."""
    if postgresql():
        _drop_invalid_index(name)
        op.create_index(
            name,
            table,
            list(columns),
            unique=unique,
            postgresql_where=where,
            postgresql_concurrently=True,
            if_not_exists=True,
        )
    else:
        op.create_index(
            name, table, list(columns), unique=unique, sqlite_where=where, if_not_exists=True
        )


def drop_index(name: str, table: str) -> None:
    """``DROP INDEX CONCURRENTLY IF EXISTS`` on PostgreSQL (inside
    :func:`outside_transaction`); a plain drop on SQLite."""
    if postgresql():
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
    else:
        op.drop_index(name, table_name=table, if_exists=True)


def validate_constraint(table: str, name: str) -> None:
    """``ALTER TABLE ... VALIDATE CONSTRAINT`` on PostgreSQL (inside
    :func:`outside_transaction`): checks the existing rows of a constraint
    added ``NOT VALID`` under a lock that lets reads and writes go on. SQLite
    checks when it rebuilds the table: nothing to do."""
    if postgresql():
        op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")

"""Counters that never go down: the ``counters`` table (what deleted jobs had
added to each metric) and the worker registry's retry and cancel counts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "counters",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("name", name="pk_counters"),
    )
    # Only ``workers`` is altered (no table refers to it), so SQLite's batch
    # copy of it cannot cascade into other tables.
    with op.batch_alter_table("workers") as batch:
        batch.add_column(
            sa.Column("jobs_retried", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("jobs_cancelled", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("jobs_cancelled")
        batch.drop_column("jobs_retried")
    op.drop_table("counters")

"""Segments: a long deck's runs of slides, rendered by many workers at once
(docs/design.md, "Long decks"). Expand-only: one new table and its index.

Online on PostgreSQL: a new table takes no lock on any table in use but
``jobs``'s share lock for the foreign key, held for one short transaction;
every statement may run again after an interruption.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "segments",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("first_slide", sa.Integer(), nullable=False),
        sa.Column("slides", sa.Integer(), nullable=False),
        sa.Column(
            "durations", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("attempt_limit", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False, server_default="0"),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("claimed_at", ts, nullable=True),
        sa.Column("last_heartbeat", ts, nullable=True),
        sa.Column("not_before", ts, nullable=True),
        sa.Column("completed_at", ts, nullable=True),
        sa.Column("frames", sa.Integer(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'processing', 'completed', 'failed')",
            name="ck_segments_status_valid",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_segments_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "idx", name="pk_segments"),
        if_not_exists=True,
    )
    op.create_index(
        "ix_segments_status_last_heartbeat",
        "segments",
        ["status", "last_heartbeat"],
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_segments_status_last_heartbeat", "segments", if_exists=True)
    op.drop_table("segments", if_exists=True)

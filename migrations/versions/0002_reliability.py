"""Reliability: cancel flag, attempt limit, dispatch and timing columns, the
transition history, the worker registry and the sweeper's lease.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("attempt_limit", sa.Integer(), nullable=False, server_default="3")
        )
        batch.add_column(sa.Column("queued_at", ts, nullable=True))
        batch.add_column(sa.Column("dispatched_at", ts, nullable=True))
        batch.add_column(sa.Column("not_before", ts, nullable=True))
        batch.add_column(sa.Column("render_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("encode_seconds", sa.Float(), nullable=True))
        batch.create_index("ix_jobs_status_dispatched_at", ["status", "dispatched_at"])
    op.execute("UPDATE jobs SET queued_at = created_at, dispatched_at = created_at")

    op.create_table(
        "job_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("at", ts, nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_job_events_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_job_events"),
    )
    op.create_index("ix_job_events_job_id_id", "job_events", ["job_id", "id"])

    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("last_seen", ts, nullable=False),
        sa.Column("stopped_at", ts, nullable=True),
        sa.Column("current_job", sa.String(36), nullable=True),
        sa.Column("jobs_done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("jobs_failed", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("name", name="pk_workers"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("expires_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("workers")
    op.drop_index("ix_job_events_job_id_id", table_name="job_events")
    op.drop_table("job_events")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_status_dispatched_at")
        for column in (
            "encode_seconds",
            "render_seconds",
            "not_before",
            "dispatched_at",
            "queued_at",
            "attempt_limit",
            "cancel_requested",
        ):
            batch.drop_column(column)

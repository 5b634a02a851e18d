"""Batches: jobs submitted together (``POST /v1/batches``), each job's batch,
and the batch webhook's delivery attempts. Expand-only: new tables, a
nullable column and indexes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_A_BATCH = sa.text("batch_id IS NOT NULL")


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "batches",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("finished_at", ts, nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("webhook_status", sa.String(16), nullable=True),
        sa.Column("webhook_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("webhook_first_at", ts, nullable=True),
        sa.Column("webhook_next_at", ts, nullable=True),
        sa.Column("webhook_last_code", sa.Integer(), nullable=True),
        sa.Column("webhook_last_error", sa.Text(), nullable=True),
        sa.Column("webhook_delivered_at", ts, nullable=True),
        sa.Column("webhook_sent_at", ts, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_batches_owner_idempotency_key"),
    )
    op.create_index("ix_batches_owner_created_at", "batches", ["owner", "created_at", "id"])
    op.create_index(
        "ix_batches_webhook_status_webhook_next_at",
        "batches",
        ["webhook_status", "webhook_next_at"],
    )
    op.create_index("ix_batches_finished_at", "batches", ["finished_at"])
    op.create_table(
        "batch_deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("batch_id", sa.String(36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", ts, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name="fk_batch_deliveries_batch_id_batches",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_batch_deliveries"),
    )
    op.create_index("ix_batch_deliveries_batch_id_id", "batch_deliveries", ["batch_id", "id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("batch_id", sa.String(36), nullable=True))
        batch.create_foreign_key(
            "fk_jobs_batch_id_batches", "batches", ["batch_id"], ["id"], ondelete="SET NULL"
        )
    op.create_index(
        "ix_jobs_batch_id_created_at",
        "jobs",
        ["batch_id", "created_at", "id"],
        postgresql_where=IN_A_BATCH,
        sqlite_where=IN_A_BATCH,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_batch_id_created_at", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_batch_id_batches", type_="foreignkey")
        batch.drop_column("batch_id")
    op.drop_index("ix_batch_deliveries_batch_id_id", table_name="batch_deliveries")
    op.drop_table("batch_deliveries")
    op.drop_index("ix_batches_finished_at", table_name="batches")
    op.drop_index("ix_batches_webhook_status_webhook_next_at", table_name="batches")
    op.drop_index("ix_batches_owner_created_at", table_name="batches")
    op.drop_table("batches")

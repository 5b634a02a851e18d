"""Batches: jobs submitted together (``POST /v1/batches``), each job's batch,
and the batch webhook's delivery attempts. Expand-only: new tables, a
nullable column and indexes.

Online on PostgreSQL: one short transaction creates the new tables (and
their indexes: nobody reads them yet), adds ``jobs.batch_id`` (nullable: no
rewrite) and its foreign key ``NOT VALID`` (no scan of ``jobs`` under a lock
that stops writes); then, outside any transaction, the key is validated and
the index on ``jobs`` built ``CONCURRENTLY``. Every statement may run again
after an interruption.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage import ddl

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
        if_not_exists=True,
    )
    op.create_index(
        "ix_batches_owner_created_at", "batches", ["owner", "created_at", "id"], if_not_exists=True
    )
    op.create_index(
        "ix_batches_webhook_status_webhook_next_at",
        "batches",
        ["webhook_status", "webhook_next_at"],
        if_not_exists=True,
    )
    op.create_index("ix_batches_finished_at", "batches", ["finished_at"], if_not_exists=True)
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
        if_not_exists=True,
    )
    op.create_index(
        "ix_batch_deliveries_batch_id_id",
        "batch_deliveries",
        ["batch_id", "id"],
        if_not_exists=True,
    )
    batch_id = sa.Column("batch_id", sa.String(36), nullable=True)
    if ddl.postgresql():
        op.add_column("jobs", batch_id, if_not_exists=True)
        op.drop_constraint(
            op.f("fk_jobs_batch_id_batches"), "jobs", type_="foreignkey", if_exists=True
        )
        op.create_foreign_key(
            op.f("fk_jobs_batch_id_batches"),
            "jobs",
            "batches",
            ["batch_id"],
            ["id"],
            ondelete="SET NULL",
            postgresql_not_valid=True,
        )
    else:
        with op.batch_alter_table("jobs") as batch:
            batch.add_column(batch_id)
            batch.create_foreign_key(
                "fk_jobs_batch_id_batches", "batches", ["batch_id"], ["id"], ondelete="SET NULL"
            )
    with ddl.outside_transaction():
        ddl.validate_constraint("jobs", "fk_jobs_batch_id_batches")
        ddl.create_index(
            "ix_jobs_batch_id_created_at",
            "jobs",
            ["batch_id", "created_at", "id"],
            where=IN_A_BATCH,
        )


def downgrade() -> None:
    with ddl.outside_transaction():
        ddl.drop_index("ix_jobs_batch_id_created_at", "jobs")
    if ddl.postgresql():
        op.drop_constraint(op.f("fk_jobs_batch_id_batches"), "jobs", type_="foreignkey")
        op.drop_column("jobs", "batch_id")
    else:
        with op.batch_alter_table("jobs") as batch:
            batch.drop_constraint("fk_jobs_batch_id_batches", type_="foreignkey")
            batch.drop_column("batch_id")
    op.drop_index("ix_batch_deliveries_batch_id_id", table_name="batch_deliveries")
    op.drop_table("batch_deliveries")
    op.drop_index("ix_batches_finished_at", table_name="batches")
    op.drop_index("ix_batches_webhook_status_webhook_next_at", table_name="batches")
    op.drop_index("ix_batches_owner_created_at", table_name="batches")
    op.drop_table("batches")

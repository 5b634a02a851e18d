"""Access and webhooks: tenants, API keys, dashboard sessions, rate buckets,
job owners (with per-tenant idempotency keys), completion-webhook state and
the record of every delivery attempt.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("webhook_secret", sa.String(128), nullable=False),
        sa.Column("webhook_secret_previous", sa.String(128), nullable=True),
        sa.Column("previous_expires_at", ts, nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_tenants"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("revoked_at", ts, nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant"], ["tenants.name"], name="fk_api_keys_tenant_tenants", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name="fk_sessions_key_id_api_keys", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_hash", name="pk_sessions"),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_rate_buckets"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", ts, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_webhook_deliveries_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index("ix_webhook_deliveries_job_id_id", "webhook_deliveries", ["job_id", "id"])

    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("owner", sa.String(64), nullable=False, server_default="default")
        )
        batch.add_column(sa.Column("callback_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("webhook_status", sa.String(16), nullable=True))
        batch.add_column(
            sa.Column("webhook_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("webhook_first_at", ts, nullable=True))
        batch.add_column(sa.Column("webhook_next_at", ts, nullable=True))
        batch.add_column(sa.Column("webhook_last_code", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("webhook_last_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("webhook_delivered_at", ts, nullable=True))
        batch.drop_constraint("uq_jobs_idempotency_key", type_="unique")
        batch.create_unique_constraint(
            "uq_jobs_owner_idempotency_key", ["owner", "idempotency_key"]
        )
        batch.create_index("ix_jobs_owner_created_at", ["owner", "created_at", "id"])
        batch.create_index(
            "ix_jobs_owner_status_created_at", ["owner", "status", "created_at", "id"]
        )
        batch.create_index(
            "ix_jobs_webhook_status_webhook_next_at", ["webhook_status", "webhook_next_at"]
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_webhook_status_webhook_next_at")
        batch.drop_index("ix_jobs_owner_status_created_at")
        batch.drop_index("ix_jobs_owner_created_at")
        batch.drop_constraint("uq_jobs_owner_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])
        for column in (
            "webhook_delivered_at",
            "webhook_last_error",
            "webhook_last_code",
            "webhook_next_at",
            "webhook_first_at",
            "webhook_attempts",
            "webhook_status",
            "callback_url",
            "owner",
        ):
            batch.drop_column(column)
    op.drop_index("ix_webhook_deliveries_job_id_id", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("rate_buckets")
    op.drop_table("sessions")
    op.drop_index("ix_api_keys_tenant", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")

"""What runs next: a job's priority and run_at, the scheduled status, each
tenant's weight, max_running and max_priority, and the indexes the claim
and the sweeper read. Expand-only: new columns are nullable or have a
constant default; the status check gains a value.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = "'queued', 'processing', 'completed', 'failed', 'cancelled'"
NEW_STATUSES = "'scheduled', " + OLD_STATUSES
QUEUED = sa.text("status = 'queued'")
SCHEDULED = sa.text("status = 'scheduled'")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("run_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint("ck_jobs_status", type_="check")
        batch.create_check_constraint("ck_jobs_status", sa.text(f"status IN ({NEW_STATUSES})"))
    op.create_index(
        "ix_jobs_queued_owner_priority",
        "jobs",
        ["owner", sa.column("priority").desc(), "queued_at", "id"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
    op.create_index("ix_jobs_owner_started_at", "jobs", ["owner", "started_at"])
    op.create_index(
        "ix_jobs_scheduled_run_at",
        "jobs",
        ["run_at"],
        postgresql_where=SCHEDULED,
        sqlite_where=SCHEDULED,
    )
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("weight", sa.Float(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("max_running", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_priority", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("max_priority")
        batch.drop_column("max_running")
        batch.drop_column("weight")
    op.drop_index("ix_jobs_scheduled_run_at", table_name="jobs")
    op.drop_index("ix_jobs_owner_started_at", table_name="jobs")
    op.drop_index("ix_jobs_queued_owner_priority", table_name="jobs")
    # An older version knows no scheduled jobs: they wait as queued ones.
    op.execute("UPDATE jobs SET status = 'queued' WHERE status = 'scheduled'")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("ck_jobs_status", type_="check")
        batch.create_check_constraint("ck_jobs_status", sa.text(f"status IN ({OLD_STATUSES})"))
        batch.drop_column("run_at")
        batch.drop_column("priority")

"""What runs next: a job's priority and run_at, the scheduled status, each
tenant's weight, max_running and max_priority, and the indexes the claim
and the sweeper read. Expand-only: new columns are nullable or have a
constant default; the status check gains a value.

Online on PostgreSQL: one short transaction adds the columns (no rewrite: a
constant default) and swaps the status check for one added ``NOT VALID``
(no scan under its lock); then, outside any transaction, the check is
validated and the indexes built ``CONCURRENTLY`` while reads and writes go
on. Every statement may run again after an interruption.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage import ddl

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = "'queued', 'processing', 'completed', 'failed', 'cancelled'"
NEW_STATUSES = "'scheduled', " + OLD_STATUSES
QUEUED = sa.text("status = 'queued'")
SCHEDULED = sa.text("status = 'scheduled'")
#: The status check's name on PostgreSQL up to 0007 (0001's name went through
#: the naming convention again); from here on it has the models' name.
OLD_CHECK = "ck_jobs_ck_jobs_status"
NEW_CHECK = "ck_jobs_status"

TENANT_COLUMNS = ("weight", "max_running", "max_priority")


def _tenant_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("weight", sa.Float(), nullable=False, server_default="1"),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("max_priority", sa.Integer(), nullable=True),
    ]


def upgrade() -> None:
    priority = sa.Column("priority", sa.Integer(), nullable=False, server_default="0")
    run_at = sa.Column("run_at", sa.DateTime(timezone=True), nullable=True)
    new_check = sa.text(f"status IN ({NEW_STATUSES})")
    if ddl.postgresql():
        op.add_column("jobs", priority, if_not_exists=True)
        op.add_column("jobs", run_at, if_not_exists=True)
        for name in (OLD_CHECK, NEW_CHECK):
            op.drop_constraint(op.f(name), "jobs", type_="check", if_exists=True)
        op.create_check_constraint(op.f(NEW_CHECK), "jobs", new_check, postgresql_not_valid=True)
        for column in _tenant_columns():
            op.add_column("tenants", column, if_not_exists=True)
    else:
        with op.batch_alter_table("jobs") as batch:
            batch.add_column(priority)
            batch.add_column(run_at)
            batch.drop_constraint("ck_jobs_status", type_="check")
            batch.create_check_constraint("ck_jobs_status", new_check)
        with op.batch_alter_table("tenants") as batch:
            for column in _tenant_columns():
                batch.add_column(column)
    with ddl.outside_transaction():
        ddl.validate_constraint("jobs", NEW_CHECK)
        ddl.create_index(
            "ix_jobs_queued_owner_priority",
            "jobs",
            ["owner", sa.column("priority").desc(), "queued_at", "id"],
            where=QUEUED,
        )
        ddl.create_index("ix_jobs_owner_started_at", "jobs", ["owner", "started_at"])
        ddl.create_index("ix_jobs_scheduled_run_at", "jobs", ["run_at"], where=SCHEDULED)


def downgrade() -> None:
    with ddl.outside_transaction():
        ddl.drop_index("ix_jobs_scheduled_run_at", "jobs")
        ddl.drop_index("ix_jobs_owner_started_at", "jobs")
        ddl.drop_index("ix_jobs_queued_owner_priority", "jobs")
    # An older version knows no scheduled jobs: they wait as queued ones.
    op.execute("UPDATE jobs SET status = 'queued' WHERE status = 'scheduled'")
    old_check = sa.text(f"status IN ({OLD_STATUSES})")
    if ddl.postgresql():
        for name in reversed(TENANT_COLUMNS):
            op.drop_column("tenants", name)
        op.drop_constraint(op.f(NEW_CHECK), "jobs", type_="check")
        op.create_check_constraint(op.f(OLD_CHECK), "jobs", old_check, postgresql_not_valid=True)
        op.drop_column("jobs", "run_at")
        op.drop_column("jobs", "priority")
    else:
        with op.batch_alter_table("tenants") as batch:
            for name in reversed(TENANT_COLUMNS):
                batch.drop_column(name)
        with op.batch_alter_table("jobs") as batch:
            batch.drop_constraint("ck_jobs_status", type_="check")
            batch.create_check_constraint("ck_jobs_status", old_check)
            batch.drop_column("run_at")
            batch.drop_column("priority")
    with ddl.outside_transaction():
        ddl.validate_constraint("jobs", OLD_CHECK)

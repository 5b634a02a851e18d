"""Test only, an expand migration: one added column plus its index.

The column is nullable (no rewrite, no default to backfill): code that does
not know it keeps inserting and reading as before. On PostgreSQL the column
is added in one short transaction and the index is then built
``CONCURRENTLY`` outside any transaction, so reads and writes of ``jobs``
never wait for it.

Revision ID: e1_expand_deploy_tag
Revises: the product's head
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic.script import ScriptDirectory

from storage import ddl
from storage.migrate import alembic_config

revision: str = "e1_expand_deploy_tag"
# Follows whatever revision is the product's newest, so the pair keeps
# applying on top of later product migrations.
down_revision: str | None = ScriptDirectory.from_config(
    alembic_config("sqlite://")
).get_current_head()
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ddl.add_column("jobs", sa.Column("deploy_tag", sa.String(64), nullable=True))
    with ddl.outside_transaction():
        ddl.create_index("ix_jobs_deploy_tag", "jobs", ["deploy_tag"])


def downgrade() -> None:
    with ddl.outside_transaction():
        ddl.drop_index("ix_jobs_deploy_tag", "jobs")
    ddl.drop_column("jobs", "deploy_tag")

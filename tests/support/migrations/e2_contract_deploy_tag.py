"""Test only, a contract migration: removes what no running code uses.

Shipped one release after the code that stopped reading and writing
``jobs.deploy_tag`` (the models no longer name it, so no statement of any
running process lists it): the index goes first, ``CONCURRENTLY`` outside
any transaction, then the column in one short transaction (PostgreSQL drops
a column without rewriting the table). Its downgrade is an expand again.

Revision ID: e2_contract_deploy_tag
Revises: e1_expand_deploy_tag
"""

from collections.abc import Sequence

import sqlalchemy as sa

from storage import ddl

revision: str = "e2_contract_deploy_tag"
down_revision: str | None = "e1_expand_deploy_tag"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with ddl.outside_transaction():
        ddl.drop_index("ix_jobs_deploy_tag", "jobs")
    ddl.drop_column("jobs", "deploy_tag")


def downgrade() -> None:
    ddl.add_column("jobs", sa.Column("deploy_tag", sa.String(64), nullable=True))
    with ddl.outside_transaction():
        ddl.create_index("ix_jobs_deploy_tag", "jobs", ["deploy_tag"])

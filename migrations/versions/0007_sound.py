"""Sound: the voices each worker offers, and the time a job's attempt spent
synthesizing speech and mixing its sound track. Expand-only: nullable columns.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("voices", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("synth_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("mix_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("mix_seconds")
        batch.drop_column("synth_seconds")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("voices")

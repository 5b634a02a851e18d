"""Image URLs a job fetched, and the asset each became: a retry reuses the
asset and never fetches again. Expand-only: a new table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_urls",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("asset_id", sa.String(36), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_job_urls_job_id_jobs", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name="fk_job_urls_asset_id_assets", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "url", name="pk_job_urls"),
    )
    op.create_index("ix_job_urls_asset_id", "job_urls", ["asset_id"])


def downgrade() -> None:
    op.drop_index("ix_job_urls_asset_id", table_name="job_urls")
    op.drop_table("job_urls")

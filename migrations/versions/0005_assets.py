"""Assets: uploaded images and documents of each tenant (stored once per
tenant by SHA-256), and which jobs use them. Expand-only: new tables.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "assets",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("last_used_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_assets"),
        sa.UniqueConstraint("owner", "sha256", name="uq_assets_owner_sha256"),
    )
    op.create_index("ix_assets_owner_created_at", "assets", ["owner", "created_at", "id"])
    op.create_index("ix_assets_last_used_at", "assets", ["last_used_at"])
    op.create_table(
        "job_assets",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("asset_id", sa.String(36), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_job_assets_job_id_jobs", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name="fk_job_assets_asset_id_assets", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "asset_id", name="pk_job_assets"),
    )
    op.create_index("ix_job_assets_asset_id", "job_assets", ["asset_id"])


def downgrade() -> None:
    op.drop_index("ix_job_assets_asset_id", table_name="job_assets")
    op.drop_table("job_assets")
    op.drop_index("ix_assets_last_used_at", table_name="assets")
    op.drop_index("ix_assets_owner_created_at", table_name="assets")
    op.drop_table("assets")

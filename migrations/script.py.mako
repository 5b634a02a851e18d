"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}

# Runs while traffic runs (docs/design.md, "Schema changes"). An expand
# migration only adds: nullable or constant-default columns
# (storage.ddl.add_column), constraints NOT VALID, then inside
# `with ddl.outside_transaction():` ddl.validate_constraint and
# ddl.create_index (CONCURRENTLY) on tables in use. Drops go in a later
# contract migration, once no running code uses what they remove
# (tests/support/migrations has one of each).


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}

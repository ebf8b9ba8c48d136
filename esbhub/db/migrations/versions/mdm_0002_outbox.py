"""MDM outbox: events of steward actions kept until published.

Revision ID: mdm_0002
Revises: mdm_0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "mdm_0002"
down_revision = "mdm_0001"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "mdm_outbox",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("envelope", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("published_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mdm_outbox")),
    )
    op.create_index(op.f("ix_mdm_outbox_published_at"), "mdm_outbox", ["published_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_mdm_outbox_published_at"), table_name="mdm_outbox")
    op.drop_table("mdm_outbox")

"""MDM: the match model the store's links were scored with (``mdm_model``).

Every MDM process scores with the model it loaded; a rematch that applied a new one left the
other processes scoring new records with the old one. The store now records each model applied
(its fingerprint, when, by what, where it was saved); every writer reads the newest in the
statement that takes the writer lock and follows it (``esbhub.mdm.service``).

Revision ID: mdm_0006
Revises: mdm_0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "mdm_0006"
down_revision = "mdm_0005"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "mdm_model",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("applied_at", TS, nullable=False),
        sa.Column("applied_by", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mdm_model")),
    )


def downgrade() -> None:
    op.drop_table("mdm_model")

"""adapters: durable adapter state (watermarks, poller positions)

Revision ID: adapters_0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "adapters_0001"
down_revision = None
branch_labels = ("adapters",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapter_state",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_adapter_state")),
    )


def downgrade() -> None:
    op.drop_table("adapter_state")

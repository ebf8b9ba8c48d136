"""routes: partition leases — one worker process at a time consumes each ordered-route queue

Revision ID: routes_0002
Revises: routes_0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "routes_0002"
down_revision = "routes_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "route_partition_leases",
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("slot", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("route", "slot", name="pk_route_partition_leases"),
    )


def downgrade() -> None:
    op.drop_table("route_partition_leases")

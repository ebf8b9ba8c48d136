"""routes: route versions, pause state, aggregation groups, idempotency keys

Revision ID: routes_0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "routes_0001"
down_revision = None
branch_labels = ("routes",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "route_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("diff", sa.Text, nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("comment", sa.String(500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_route_versions"),
        sa.UniqueConstraint("route", "version", name="uq_route_versions_route_version"),
    )
    op.create_index("ix_route_versions_route", "route_versions", ["route"])
    op.create_table(
        "route_states",
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("route", name="pk_route_states"),
    )
    op.create_index("ix_route_states_seq", "route_states", ["seq"])
    op.create_table(
        "route_aggregate_groups",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("group_key", sa.String(500), nullable=False),
        sa.Column("open_key", sa.String(500), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("deadline", sa.Float, nullable=True),
        sa.Column("completed_at", sa.Float, nullable=True),
        sa.Column("completed_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_route_aggregate_groups"),
        sa.UniqueConstraint("route", "step", "open_key", name="uq_route_aggregate_groups_open"),
    )
    op.create_index("ix_route_aggregate_groups_deadline", "route_aggregate_groups", ["deadline"])
    op.create_table(
        "route_aggregate_members",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_route_aggregate_members"),
        sa.UniqueConstraint("route", "step", "message_id", name="uq_route_aggregate_members_msg"),
    )
    op.create_index("ix_route_aggregate_members_group_id", "route_aggregate_members", ["group_id"])
    op.create_table(
        "route_idempotency",
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("key", sa.String(500), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("route", "key", name="pk_route_idempotency"),
    )


def downgrade() -> None:
    op.drop_table("route_idempotency")
    op.drop_index("ix_route_aggregate_members_group_id", table_name="route_aggregate_members")
    op.drop_table("route_aggregate_members")
    op.drop_index("ix_route_aggregate_groups_deadline", table_name="route_aggregate_groups")
    op.drop_table("route_aggregate_groups")
    op.drop_index("ix_route_states_seq", table_name="route_states")
    op.drop_table("route_states")
    op.drop_index("ix_route_versions_route", table_name="route_versions")
    op.drop_table("route_versions")

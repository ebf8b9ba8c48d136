"""bus: message state per subscription, processed ids (dedup), dead-letter store

Revision ID: bus_0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "bus_0001"
down_revision = None
branch_labels = ("bus",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bus_messages",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("correlation_id", sa.String(128), nullable=True),
        sa.Column("accepted_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bus_messages"),
    )
    op.create_index("ix_bus_messages_accepted_at", "bus_messages", ["accepted_at"])

    op.create_table(
        "bus_message_routes",
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("subscription", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("error_kind", sa.String(32), nullable=True),
        sa.Column("error_type", sa.String(128), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "subscription", name="pk_bus_message_routes"),
    )
    op.create_index("ix_bus_message_routes_state", "bus_message_routes", ["state"])

    op.create_table(
        "bus_processed",
        sa.Column("subscription", sa.String(128), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("processed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("subscription", "message_id", name="pk_bus_processed"),
    )
    op.create_index("ix_bus_processed_processed_at", "bus_processed", ["processed_at"])

    op.create_table(
        "bus_dead_letters",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("subscription", sa.String(128), nullable=False),
        sa.Column("type", sa.String(128), nullable=True),
        sa.Column("source", sa.String(128), nullable=True),
        sa.Column("correlation_id", sa.String(128), nullable=True),
        sa.Column("envelope", sa.Text(), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.Column("edited_payload", sa.Text(), nullable=True),
        sa.Column("edits", sa.Text(), nullable=True),
        sa.Column("error_kind", sa.String(32), nullable=False),
        sa.Column("error_type", sa.String(128), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("error_details", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("first_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("dead_lettered_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("replay_count", sa.Integer(), nullable=False),
        sa.Column("replayed_at", sa.DateTime(), nullable=True),
        sa.Column("replayed_by", sa.String(128), nullable=True),
        sa.Column("discarded_at", sa.DateTime(), nullable=True),
        sa.Column("discarded_by", sa.String(128), nullable=True),
        sa.Column("discard_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_bus_dead_letters"),
    )
    for col in ("message_id", "subscription", "type", "error_type", "status", "dead_lettered_at"):
        op.create_index(f"ix_bus_dead_letters_{col}", "bus_dead_letters", [col])


def downgrade() -> None:
    op.drop_table("bus_dead_letters")
    op.drop_table("bus_processed")
    op.drop_table("bus_message_routes")
    op.drop_table("bus_messages")

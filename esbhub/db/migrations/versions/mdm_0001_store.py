"""MDM store: source versions, xref, golden records with history, links, steward tasks,
constraints, overrides, hierarchy, golden links, inbox, sequences (see esbhub/mdm/store.py).

Revision ID: mdm_0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "mdm_0001"
down_revision = None
branch_labels = ("mdm",)
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "mdm_audit",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=300), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mdm_audit")),
    )
    op.create_index(op.f("ix_mdm_audit_at"), "mdm_audit", ["at"], unique=False)
    op.create_table(
        "mdm_constraint",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("a_key", sa.String(length=140), nullable=False),
        sa.Column("b_key", sa.String(length=140), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("task_id", BIGID, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("superseded_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mdm_constraint")),
    )
    op.create_index(op.f("ix_mdm_constraint_a_key"), "mdm_constraint", ["a_key"], unique=False)
    op.create_index(op.f("ix_mdm_constraint_b_key"), "mdm_constraint", ["b_key"], unique=False)
    op.create_index("ix_mdm_constraint_pair", "mdm_constraint", ["a_key", "b_key", "active"], unique=False)
    op.create_table(
        "mdm_golden",
        sa.Column("golden_id", sa.String(length=32), nullable=False),
        sa.Column("seq_no", BIGID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("merged_into", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("founder", sa.String(length=140), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=True),
        sa.Column("core_name", sa.String(length=500), nullable=True),
        sa.Column("uscc", sa.String(length=32), nullable=True),
        sa.Column("tier", sa.String(length=8), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("members", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("golden_id", name=op.f("pk_mdm_golden")),
        sa.UniqueConstraint("founder", name=op.f("uq_mdm_golden_founder")),
        sa.UniqueConstraint("seq_no", name=op.f("uq_mdm_golden_seq_no")),
    )
    op.create_index(op.f("ix_mdm_golden_core_name"), "mdm_golden", ["core_name"], unique=False)
    op.create_index(op.f("ix_mdm_golden_uscc"), "mdm_golden", ["uscc"], unique=False)
    op.create_table(
        "mdm_golden_history",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("golden_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("change", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("merged_into", sa.String(length=32), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("members", sa.JSON(), nullable=False),
        sa.Column("valid_from", TS, nullable=False),
        sa.Column("valid_to", TS, nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("cause", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mdm_golden_history")),
        sa.UniqueConstraint("golden_id", "version", name="uq_mdm_golden_history_version"),
    )
    op.create_index(
        op.f("ix_mdm_golden_history_golden_id"), "mdm_golden_history", ["golden_id"], unique=False
    )
    op.create_table(
        "mdm_golden_link",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("golden_id", sa.String(length=32), nullable=True),
        sa.Column("source_system", sa.String(length=64), nullable=True),
        sa.Column("source_id", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mdm_golden_link")),
        sa.UniqueConstraint("kind", "ref", name="uq_mdm_golden_link_kind_ref"),
    )
    op.create_index(op.f("ix_mdm_golden_link_golden_id"), "mdm_golden_link", ["golden_id"], unique=False)
    op.create_index(
        "ix_mdm_golden_link_source", "mdm_golden_link", ["source_system", "source_id"], unique=False
    )
    op.create_table(
        "mdm_hierarchy",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("parent_golden", sa.String(length=32), nullable=False),
        sa.Column("child_golden", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mdm_hierarchy")),
    )
    op.create_index(op.f("ix_mdm_hierarchy_child_golden"), "mdm_hierarchy", ["child_golden"], unique=False)
    op.create_index(op.f("ix_mdm_hierarchy_parent_golden"), "mdm_hierarchy", ["parent_golden"], unique=False)
    op.create_table(
        "mdm_inbox",
        sa.Column("envelope_id", sa.String(length=64), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("envelope_id", name=op.f("pk_mdm_inbox")),
    )
    op.create_table(
        "mdm_key_index",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=300), nullable=False),
        sa.Column("source_system", sa.String(length=64), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("kind", "value", "source_system", "source_id", name=op.f("pk_mdm_key_index")),
    )
    op.create_index("ix_mdm_key_index_kind_value", "mdm_key_index", ["kind", "value"], unique=False)
    op.create_table(
        "mdm_link",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("a_key", sa.String(length=140), nullable=False),
        sa.Column("b_key", sa.String(length=140), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("hard", sa.String(length=200), nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("superseded_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mdm_link")),
    )
    op.create_index("ix_mdm_link_a_active", "mdm_link", ["a_key", "active"], unique=False)
    op.create_index("ix_mdm_link_b_active", "mdm_link", ["b_key", "active"], unique=False)
    op.create_table(
        "mdm_override",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("golden_id", sa.String(length=32), nullable=False),
        sa.Column("attribute", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mdm_override")),
    )
    op.create_index(op.f("ix_mdm_override_golden_id"), "mdm_override", ["golden_id"], unique=False)
    op.create_table(
        "mdm_sequence",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", BIGID, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_mdm_sequence")),
    )
    op.create_table(
        "mdm_source_version",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("source_system", sa.String(length=64), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("envelope_id", sa.String(length=64), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=False),
        sa.Column("std", sa.JSON(), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("source_updated_at", TS, nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mdm_source_version")),
        sa.UniqueConstraint("source_system", "source_id", "version", name="uq_mdm_source_version_key"),
    )
    op.create_index(
        op.f("ix_mdm_source_version_envelope_id"), "mdm_source_version", ["envelope_id"], unique=False
    )
    op.create_table(
        "mdm_task",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("a_key", sa.String(length=140), nullable=False),
        sa.Column("b_key", sa.String(length=140), nullable=False),
        sa.Column("golden_a", sa.String(length=32), nullable=True),
        sa.Column("golden_b", sa.String(length=32), nullable=True),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("decided_at", TS, nullable=True),
        sa.Column("decided_by", sa.String(length=100), nullable=True),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mdm_task")),
    )
    op.create_index("ix_mdm_task_pair", "mdm_task", ["a_key", "b_key", "status"], unique=False)
    op.create_index(op.f("ix_mdm_task_status"), "mdm_task", ["status"], unique=False)
    op.create_table(
        "mdm_xref",
        sa.Column("source_system", sa.String(length=64), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("golden_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("first_seen", BIGID, nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("core_name", sa.String(length=500), nullable=False),
        sa.Column("name_norm", sa.String(length=500), nullable=False),
        sa.Column("uscc", sa.String(length=32), nullable=True),
        sa.Column("billing_account", sa.String(length=64), nullable=True),
        sa.Column("parent_billing_account", sa.String(length=64), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=False),
        sa.Column("std", sa.JSON(), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("source_updated_at", TS, nullable=True),
        sa.Column("linked_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("source_system", "source_id", name=op.f("pk_mdm_xref")),
    )
    op.create_index(op.f("ix_mdm_xref_billing_account"), "mdm_xref", ["billing_account"], unique=False)
    op.create_index(op.f("ix_mdm_xref_core_name"), "mdm_xref", ["core_name"], unique=False)
    op.create_index(op.f("ix_mdm_xref_first_seen"), "mdm_xref", ["first_seen"], unique=False)
    op.create_index(op.f("ix_mdm_xref_golden_id"), "mdm_xref", ["golden_id"], unique=False)
    op.create_index(op.f("ix_mdm_xref_name_norm"), "mdm_xref", ["name_norm"], unique=False)
    op.create_index(op.f("ix_mdm_xref_uscc"), "mdm_xref", ["uscc"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_mdm_xref_uscc"), table_name="mdm_xref")
    op.drop_index(op.f("ix_mdm_xref_name_norm"), table_name="mdm_xref")
    op.drop_index(op.f("ix_mdm_xref_golden_id"), table_name="mdm_xref")
    op.drop_index(op.f("ix_mdm_xref_first_seen"), table_name="mdm_xref")
    op.drop_index(op.f("ix_mdm_xref_core_name"), table_name="mdm_xref")
    op.drop_index(op.f("ix_mdm_xref_billing_account"), table_name="mdm_xref")
    op.drop_table("mdm_xref")
    op.drop_index(op.f("ix_mdm_task_status"), table_name="mdm_task")
    op.drop_index("ix_mdm_task_pair", table_name="mdm_task")
    op.drop_table("mdm_task")
    op.drop_index(op.f("ix_mdm_source_version_envelope_id"), table_name="mdm_source_version")
    op.drop_table("mdm_source_version")
    op.drop_table("mdm_sequence")
    op.drop_index(op.f("ix_mdm_override_golden_id"), table_name="mdm_override")
    op.drop_table("mdm_override")
    op.drop_index("ix_mdm_link_b_active", table_name="mdm_link")
    op.drop_index("ix_mdm_link_a_active", table_name="mdm_link")
    op.drop_table("mdm_link")
    op.drop_index("ix_mdm_key_index_kind_value", table_name="mdm_key_index")
    op.drop_table("mdm_key_index")
    op.drop_table("mdm_inbox")
    op.drop_index(op.f("ix_mdm_hierarchy_parent_golden"), table_name="mdm_hierarchy")
    op.drop_index(op.f("ix_mdm_hierarchy_child_golden"), table_name="mdm_hierarchy")
    op.drop_table("mdm_hierarchy")
    op.drop_index("ix_mdm_golden_link_source", table_name="mdm_golden_link")
    op.drop_index(op.f("ix_mdm_golden_link_golden_id"), table_name="mdm_golden_link")
    op.drop_table("mdm_golden_link")
    op.drop_index(op.f("ix_mdm_golden_history_golden_id"), table_name="mdm_golden_history")
    op.drop_table("mdm_golden_history")
    op.drop_index(op.f("ix_mdm_golden_uscc"), table_name="mdm_golden")
    op.drop_index(op.f("ix_mdm_golden_core_name"), table_name="mdm_golden")
    op.drop_table("mdm_golden")
    op.drop_index("ix_mdm_constraint_pair", table_name="mdm_constraint")
    op.drop_index(op.f("ix_mdm_constraint_b_key"), table_name="mdm_constraint")
    op.drop_index(op.f("ix_mdm_constraint_a_key"), table_name="mdm_constraint")
    op.drop_table("mdm_constraint")
    op.drop_index(op.f("ix_mdm_audit_at"), table_name="mdm_audit")
    op.drop_table("mdm_audit")

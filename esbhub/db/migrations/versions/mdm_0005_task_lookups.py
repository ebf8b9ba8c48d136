"""MDM steward tasks: indexes for finding the open tasks of a record or of a golden pair.

Every MDM transaction looks for the open tasks touching the records it re-clustered (to mark
those whose two sides now share a golden record obsolete), and every review pair for an open
task between the same two golden records. ``mdm_task`` was indexed by ``(a_key, b_key, status)``
and by ``status`` only, so these look-ups read every open task: 1.7 ms of a one-record
transaction at 3,800 open tasks (the 1M synthetic store), growing with the steward queue.

Revision ID: mdm_0005
Revises: mdm_0004
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "mdm_0005"
down_revision = "mdm_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_mdm_task_b_key", "mdm_task", ["b_key", "status"], unique=False)
    op.create_index("ix_mdm_task_goldens", "mdm_task", ["golden_a", "golden_b", "status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_mdm_task_goldens", table_name="mdm_task")
    op.drop_index("ix_mdm_task_b_key", table_name="mdm_task")

"""MDM look-up keys indexed by source key.

A changed source record replaces its look-up keys with ``DELETE FROM mdm_key_index WHERE
source_system = ? AND source_id = ?``; the table's primary key starts with ``kind, value``, so
that statement scanned the table: 12 ms per changed record at 168k records, 84 ms at 1M
(``bench/mdm_realtime.py``, docs/benchmarks.md "Real-time path at 1M").

Revision ID: mdm_0003
Revises: mdm_0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "mdm_0003"
down_revision = "mdm_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_mdm_key_index_source", "mdm_key_index", ["source_system", "source_id"], unique=False,
                    if_not_exists=True)  # bench/mdm_realtime.py --add-key-index made it by hand on its copies


def downgrade() -> None:
    op.drop_index("ix_mdm_key_index_source", table_name="mdm_key_index")

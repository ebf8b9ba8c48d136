"""MDM: drop two indexes another index of the same table already covers.

* ``ix_mdm_key_index_kind_value (kind, value)`` — the table's primary key starts with
  ``kind, value`` and covers every column, so look-ups by key use it and never needed this one;
* ``ix_mdm_golden_history_golden_id (golden_id)`` — the unique ``(golden_id, version)``
  constraint's index starts with ``golden_id``.

Every look-up key written and every golden version appended touched a page of each (random
keys: one page per row), for nothing a query could not get from the other index. At 1M records
the real-time path went from 424 to 454 records/s in batches of 200 (docs/benchmarks.md,
"seventh session"), and the initial load has two indexes fewer to build.

Revision ID: mdm_0004
Revises: mdm_0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "mdm_0004"
down_revision = "mdm_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_mdm_key_index_kind_value", table_name="mdm_key_index", if_exists=True)
    op.drop_index("ix_mdm_golden_history_golden_id", table_name="mdm_golden_history", if_exists=True)


def downgrade() -> None:
    op.create_index("ix_mdm_golden_history_golden_id", "mdm_golden_history", ["golden_id"], unique=False)
    op.create_index("ix_mdm_key_index_kind_value", "mdm_key_index", ["kind", "value"], unique=False)

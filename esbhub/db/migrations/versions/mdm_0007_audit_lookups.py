"""MDM audit trail: look-ups for ``GET /v1/steward/audit`` (by record touched, actor, action).

``mdm_audit`` was indexed by ``at`` only, and its ``target`` names one thing per entry ("G1+G2"
for a merge, "task:7" for a decision, "G1.name" for an override), so "every entry that touched
crm:9" or "everything alice did" read the whole table. ``mdm_audit_subject`` lists the golden
ids, source keys and tasks each entry touched, keyed ``(subject, audit_id)``; ``(actor, id)`` and
``(action, id)`` give one actor's or one action's entries newest first.

Entries written before this revision are listed by what they recorded: the ids in their
target, the source keys and golden ids in their detail (a merge's ``a``, ``b`` and ``before``, an
unmerge's ``split`` and ``rest``, a decision's ``a`` and ``b``); a rematch by ``*``. Later entries
also list the golden records the action changed and their members (``esbhub.mdm.service``).

Revision ID: mdm_0007
Revises: mdm_0006
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "mdm_0007"
down_revision = "mdm_0006"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BATCH = 1000


def subjects_of(action: str, target: str, detail: dict[str, Any]) -> set[str]:
    """What an entry written before this revision touched, as far as the entry itself says."""
    if action == "merge":
        out = set(target.split("+"))
        out.update(v for v in (detail.get("a"), detail.get("b")) if isinstance(v, str))
        for gid, keys in (detail.get("before") or {}).items():
            out.add(gid)
            out.update(k for k in keys or () if isinstance(k, str))
    elif action == "unmerge":
        out = {target}
        out.update(k for k in [*(detail.get("split") or ()), *(detail.get("rest") or ())] if isinstance(k, str))
    elif action == "decide":
        out = {target}
        out.update(v for v in (detail.get("a"), detail.get("b")) if isinstance(v, str))
    elif action == "override":
        out = {target.split(".", 1)[0]}  # "G1.name": golden ids have no dot
    else:
        out = {target}
    return {s for s in out if s}


def _entries(conn: sa.Connection) -> Iterator[list[Any]]:
    audit = sa.table("mdm_audit", sa.column("id", BIGID), sa.column("action", sa.String()),
                     sa.column("target", sa.String()), sa.column("detail", sa.JSON()))
    last = 0
    while True:
        rows = conn.execute(sa.select(audit.c.id, audit.c.action, audit.c.target, audit.c.detail)
                            .where(audit.c.id > last).order_by(audit.c.id).limit(BATCH)).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def upgrade() -> None:
    op.create_table(
        "mdm_audit_subject",
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("audit_id", BIGID, autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("subject", "audit_id", name=op.f("pk_mdm_audit_subject")),
    )
    op.create_index("ix_mdm_audit_actor", "mdm_audit", ["actor", "id"], unique=False)
    op.create_index("ix_mdm_audit_action", "mdm_audit", ["action", "id"], unique=False)
    subject = sa.table("mdm_audit_subject", sa.column("subject", sa.String()), sa.column("audit_id", BIGID))
    conn = op.get_bind()
    for rows in _entries(conn):
        out = [{"subject": s, "audit_id": i} for i, action, target, detail in rows
               for s in sorted(subjects_of(action, target, detail if isinstance(detail, dict) else {}))]
        if out:
            conn.execute(sa.insert(subject), out)


def downgrade() -> None:
    op.drop_index("ix_mdm_audit_action", table_name="mdm_audit")
    op.drop_index("ix_mdm_audit_actor", table_name="mdm_audit")
    op.drop_table("mdm_audit_subject")

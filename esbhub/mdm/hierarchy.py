"""Customer hierarchy and key-account tiering.

A branch (分公司, 分行, 支行, 营业部, 办事处) is its own golden record, never merged into its
head office; it is *linked* to it by an edge in ``mdm_hierarchy``:

``branch``          the branch's name minus its branch suffix is the head office's normalized
                    name (``head_office_name_norm``), or — failing that — the branch carries the
                    USCC of a non-branch golden record (branches often quote the head office's code)
``billing_parent``  the record's ``parent_billing_account`` is another golden's billing account
``parent``          the source system names the parent (``parent_source_id``)
``group_member``    a group (集团) golden and a non-group, non-branch golden share the core name
                    (字号) — group customers spanning provinces

Edges are recomputed for every golden record a change touches (both directions); edges of
retired golden records are ended, never deleted. Tiering: the sum of the monthly revenue of a
golden record's distinct billing accounts against thresholds in :class:`TieringConfig`; the
360 view also reports the group tier (revenue of the whole subtree).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from esbhub.mdm.settings import TieringConfig  # noqa: F401 - re-exported: it lives with the MDM settings
from esbhub.mdm.store import Golden, Hierarchy, KeyIndex, NewXref, Xref, any_of, session_xrefs, source_key


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        return float(Decimal(str(v)))
    except (InvalidOperation, ValueError):
        return None


def revenue_of(rows: Iterable[Xref]) -> float | None:
    """Monthly revenue of a golden record: the sum over its distinct billing accounts."""
    by_account: dict[str, float] = {}
    for x in rows:
        if x.deleted:
            continue
        attrs = (x.raw or {}).get("attributes") or {}
        rev = _num(attrs.get("monthly_revenue"))
        if rev is None:
            continue
        acct = attrs.get("billing_account") or x.key
        by_account[acct] = max(by_account.get(acct, 0.0), rev)
    return sum(by_account.values()) if by_account else None


def index_entries(x: Xref) -> list[tuple[str, str]]:
    """Reverse look-up keys a record contributes for hierarchy and search."""
    std = x.std or {}
    out: list[tuple[str, str]] = []
    for p in (std.get("phones") or []) + (std.get("phones_generic") or []):
        out.append(("phone", p))
    for e in std.get("emails") or []:
        out.append(("email", e))
    if std.get("branch") and std.get("head_office_name_norm"):
        out.append(("ho_name", std["head_office_name_norm"]))
    if x.parent_billing_account:
        out.append(("parent_ba", x.parent_billing_account))
    parent = std.get("parent_source_id") or (x.raw or {}).get("parent_source_id")
    if parent:
        out.append(("parent_src", source_key(x.source_system, parent)))
    return [(k, v[:300]) for k, v in out]


class XrefRow(NewXref):
    """A stored xref row read with Core (:func:`read_xrefs`): the :class:`Xref` columns on a plain
    object — no ORM instrumentation, identity map entry or unit-of-work bookkeeping. The ingest
    path writes its changes itself with Core UPDATEs: what staging a new version sets
    (``esbhub.mdm.service._Rows.flush``, the columns that changed) and a new ``golden_id`` /
    ``linked_at`` (:meth:`esbhub.mdm.service.MdmService._apply`)."""

    __slots__ = ()


_XREF_ROWS = sa.select(*Xref.__table__.columns).where(
    Xref.__table__.c.source_system == sa.bindparam("sys"),
    any_of(Xref.__table__.c.source_id, "ids"),
)
_KEYS = (sa.func.unnest(sa.bindparam("systems", type_=ARRAY(sa.String)), sa.bindparam("ids", type_=ARRAY(sa.String)))
         .table_valued("s", "i").render_derived(name="k"))
_XREF_ROWS_PG = sa.select(*Xref.__table__.columns).select_from(Xref.__table__.join(
    _KEYS, sa.and_(Xref.__table__.c.source_system == _KEYS.c.s, Xref.__table__.c.source_id == _KEYS.c.i)))
"""PostgreSQL: the rows of any number of keys of any systems in one statement — the keys as two
arrays, unnested and joined to the primary key (a one-record MDM transaction reads the keys of
two or three systems: one round trip instead of one per system)."""
_XREF_ROWS_OF = sa.select(*Xref.__table__.columns).where(any_of(Xref.__table__.c.golden_id, "ids"))


def _as_xrefs(s: Session, rows: Iterable[Any]) -> list[Any]:
    """Xref result rows as :class:`XrefRow`, except rows the session holds as ORM objects already:
    those objects are returned, so a row never has two live copies in one transaction."""
    imap = s.identity_map
    cols = NewXref.__slots__
    new = XrefRow.__new__
    out: list[Any] = []
    for row in rows:
        x = imap.get((Xref, (row[0], row[1]), None)) if imap else None
        if x is None:
            x = new(XrefRow)
            for k, v in zip(cols, row, strict=True):
                setattr(x, k, v)
        out.append(x)
    return out


def read_xrefs(s: Session, by_sys: dict[str, list[str]]) -> list[Any]:
    """Xref rows by system → source ids, as :class:`XrefRow` (one Core query per 500 ids — per
    system on SQLite, where a query is cheap), except rows the session holds as ORM objects already
    (:func:`_as_xrefs`). No autoflush: the ingest path only changes xref rows through objects it
    keeps (:func:`esbhub.mdm.store.session_xrefs`), which are never read again."""
    conn = s.connection()
    out: list[Any] = []
    if conn.dialect.name == "postgresql":
        keys = list(dict.fromkeys((sys_, sid) for sys_, ids in by_sys.items() for sid in ids))  # a row once, as IN
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            out += _as_xrefs(s, conn.execute(_XREF_ROWS_PG, {"systems": [k[0] for k in chunk],
                                                             "ids": [k[1] for k in chunk]}))
        return out
    for sys_, ids in by_sys.items():
        for i in range(0, len(ids), 500):
            out += _as_xrefs(s, conn.execute(_XREF_ROWS, {"sys": sys_, "ids": ids[i : i + 500]}))
    return out


def read_xrefs_of(s: Session, golden_ids: list[str]) -> list[Any]:
    """The xref rows of golden records' members (one Core query per 500 golden ids), as
    :func:`read_xrefs` returns them."""
    conn = s.connection()
    out: list[Any] = []
    for i in range(0, len(golden_ids), 500):
        out += _as_xrefs(s, conn.execute(_XREF_ROWS_OF, {"ids": golden_ids[i : i + 500]}))
    return out


def _heads(head_office_name: str | None, name_norm: str | None) -> bool:
    """``name_norm`` is the head office a branch names (exactly, or with the legal form the branch left out)."""
    return bool(head_office_name and name_norm and name_norm.startswith(head_office_name))


class _Q:
    """The statements :func:`refresh` runs, built once (building a statement and its cache key costs
    more Python than SQLite takes to run it); the same SQL as built on the spot."""

    edges = sa.select(Hierarchy).where(
        Hierarchy.active.is_(True), sa.or_(any_of(Hierarchy.parent_golden, "a"), any_of(Hierarchy.child_golden, "b"))
    )
    active = sa.select(Golden.golden_id).where(any_of(Golden.golden_id, "ids"), Golden.status != "retired")
    keys_by = {
        col: sa.select(Xref.source_system, Xref.source_id).where(any_of(getattr(Xref, col), "vals"))
        for col in ("golden_id", "core_name", "uscc", "billing_account")
    }
    index = sa.select(KeyIndex.value, KeyIndex.source_system, KeyIndex.source_id).where(
        KeyIndex.kind == sa.bindparam("kind"), any_of(KeyIndex.value, "vals")
    )


def _goldens_of(lk: Lookup, golden_ids: list[str]) -> dict[str, list[Xref]]:
    out: dict[str, list[Xref]] = {}
    for x in lk.xrefs_in("golden_id", golden_ids):
        out.setdefault(x.golden_id, []).append(x)
    return out


class Lookup:
    """The reads :func:`compute_edges` needs, batched and cached for one :func:`refresh`.

    ``refresh`` of many golden records (a bulk batch) used to issue several queries per golden
    record; this loads xref rows by core name, USCC, billing account and source key, and key
    index rows, with one ``IN`` query per 500 values, and answers repeats from memory. Results
    are ordered by (value, source key), so the evidence kept for an edge is deterministic.
    Valid for one refresh only (the session must not change xref rows meanwhile). Its reads go
    through the session's connection, not the ORM: flush the session before using it.
    """

    def __init__(self, s: Session) -> None:
        self.s = s
        self._by: dict[str, dict[str, list[Xref]]] = {"core_name": {}, "uscc": {}, "billing_account": {}}
        self._idx: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self._xref: dict[tuple[str, str], Xref | None] = {}

    def _fill(self, col: str, values: Iterable[str]) -> dict[str, list[Xref]]:
        cache = self._by[col]
        missing = sorted({v for v in values if v and v not in cache})
        for v in missing:
            cache[v] = []
        for i in range(0, len(missing), 500):
            for x in self.xrefs_in(col, missing[i : i + 500]):
                cache.setdefault(getattr(x, col), []).append(x)
        for v in missing:
            cache[v].sort(key=lambda x: (x.source_system, x.source_id))
        return cache

    def xrefs_by(self, col: str, values: Iterable[str]) -> list[Xref]:
        vals = sorted({v for v in values if v})
        cache = self._fill(col, vals)
        return [x for v in vals for x in cache.get(v, [])]

    def index_keys(self, kind: str, values: Iterable[str]) -> list[tuple[str, str]]:
        vals = sorted({v for v in values if v})
        missing = [v for v in vals if (kind, v) not in self._idx]
        for v in missing:
            self._idx[(kind, v)] = []
        for i in range(0, len(missing), 500):
            for r in self.s.connection().execute(_Q.index, {"kind": kind, "vals": missing[i : i + 500]}):
                self._idx.setdefault((kind, r[0]), []).append((r[1], r[2]))
        for v in missing:
            self._idx[(kind, v)].sort()
        return [k for v in vals for k in self._idx[(kind, v)]]

    def xrefs_in(self, col: str, values: list[str]) -> list[Xref]:
        """Xref rows whose ``col`` is one of ``values``, in the query's order: only their keys are
        read (one statement built once: :class:`_Q`), and rows the session already holds are not
        loaded (nor their JSON parsed) again. Keys are read with Core (no ORM result machinery, no
        autoflush: the caller flushed, see :class:`Lookup`)."""
        return self.xrefs_for_keys([(a, b) for a, b in self.s.connection().execute(_Q.keys_by[col], {"vals": values})])

    def get_many(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Xref]:
        wanted = list(dict.fromkeys(keys))
        known = session_xrefs(self.s)
        by_sys: dict[str, list[str]] = {}
        for sys_, sid in wanted:
            if (sys_, sid) in self._xref:
                continue
            x = known.get(source_key(sys_, sid))
            self._xref[(sys_, sid)] = x
            if x is None:
                by_sys.setdefault(sys_, []).append(sid)
        for x in read_xrefs(self.s, by_sys):
            self._xref[(x.source_system, x.source_id)] = known[x.key] = x
        return {k: x for k in wanted if (x := self._xref.get(k)) is not None}

    def xrefs_for_keys(self, keys: list[tuple[str, str]]) -> list[Xref]:
        got = self.get_many(keys)
        return [got[k] for k in keys if k in got]

    def prefetch(self, members: Iterable[Xref]) -> None:
        """Load in bulk what computing the edges of these golden records' members will read."""
        ms = list(members)
        stds = [x.std or {} for x in ms]
        self.xrefs_by("core_name", [d.get("core_name") for d in stds])  # type: ignore[misc]
        found_by_uscc = self.xrefs_by("uscc", [d.get("uscc") for d in stds])  # type: ignore[misc]
        self.xrefs_by("core_name", [(x.std or {}).get("core_name") for x in found_by_uscc])  # type: ignore[misc]
        self.xrefs_by("billing_account", [x.parent_billing_account for x in ms])  # type: ignore[misc]
        self.get_many(
            (x.source_system, p) for x in ms
            if (p := (x.std or {}).get("parent_source_id") or (x.raw or {}).get("parent_source_id"))
        )
        self.get_many(self.index_keys("parent_ba", [x.billing_account for x in ms])  # type: ignore[misc]
                      + self.index_keys("parent_src", [x.key for x in ms]))


def _goldens_by_core(lk: Lookup, cores: list[str]) -> dict[str, list[Xref]]:
    out: dict[str, list[Xref]] = {}
    for x in lk.xrefs_by("core_name", cores):
        out.setdefault(x.golden_id, []).append(x)
    return out


def _name_parents(lk: Lookup, branch: Xref) -> set[str]:
    """Golden ids of non-branch records a branch record names as its head office."""
    std = branch.std or {}
    ho = std.get("head_office_name_norm")
    if not ho or not std.get("core_name"):
        return set()
    return {
        y.golden_id
        for y in lk.xrefs_by("core_name", [std["core_name"]])
        if y.golden_id != branch.golden_id and not (y.std or {}).get("branch") and _heads(ho, y.name_norm)
    }


def compute_edges(s: Session, golden_id: str, members: list[Xref],
                  lookup: Lookup | None = None) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Edges (parent, child, kind, evidence) in which ``golden_id`` takes part, either side."""
    lk = lookup or Lookup(s)
    edges: list[tuple[str, str, str, dict[str, Any]]] = []
    live = [x for x in members if not x.deleted] or members
    stds = [x.std or {} for x in live]
    is_branch = any(d.get("branch") for d in stds)
    is_group = any(d.get("is_group") for d in stds)
    cores = sorted({d.get("core_name") for d in stds if d.get("core_name")})
    # as a child -----------------------------------------------------------
    if is_branch:
        ho_names = sorted({d["head_office_name_norm"] for d in stds if d.get("head_office_name_norm")})
        parents: set[str] = set()
        for x in live:
            if (x.std or {}).get("branch"):
                parents |= _name_parents(lk, x) - {golden_id}
        for p in sorted(parents):
            edges.append((p, golden_id, "branch", {"rule": "branch_suffix", "head_office_name_norm": ho_names}))
        if not parents:
            usccs = sorted({d["uscc"] for d in stds if d.get("uscc")})
            if usccs:
                for x in lk.xrefs_by("uscc", usccs):
                    if x.golden_id != golden_id and not (x.std or {}).get("branch"):
                        parents.add(x.golden_id)
                for p in sorted(parents):
                    edges.append((p, golden_id, "branch", {"rule": "shared_uscc", "uscc": usccs}))
    pbas = sorted({x.parent_billing_account for x in live if x.parent_billing_account})
    if pbas:
        for x in lk.xrefs_by("billing_account", pbas):
            if x.golden_id != golden_id:
                edges.append((x.golden_id, golden_id, "billing_parent", {"parent_billing_account": x.billing_account}))
    parent_keys = [
        (x.source_system, parent) for x in live
        if (parent := (x.std or {}).get("parent_source_id") or (x.raw or {}).get("parent_source_id"))
    ]
    got = lk.get_many(parent_keys)
    for k in parent_keys:
        px = got.get(k)
        if px is not None and px.golden_id != golden_id:
            edges.append((px.golden_id, golden_id, "parent", {"source": source_key(*k)}))
    if not is_group and not is_branch and cores:
        for gid, xs in _goldens_by_core(lk, cores).items():
            if gid != golden_id and any((y.std or {}).get("is_group") for y in xs):
                edges.append((gid, golden_id, "group_member", {"core_name": cores}))
    # as a parent ----------------------------------------------------------
    names = sorted({d.get("name_norm") for d in stds if d.get("name_norm")})
    if not is_branch:
        for gid, xs in _goldens_by_core(lk, cores).items() if cores else []:
            for y in xs:
                ys = y.std or {}
                if gid != golden_id and ys.get("branch") and any(_heads(ys.get("head_office_name_norm"), n) for n in names):
                    edges.append((golden_id, gid, "branch", {"rule": "branch_suffix",
                                                             "head_office_name_norm": [ys.get("head_office_name_norm")]}))
        usccs = sorted({d["uscc"] for d in stds if d.get("uscc")})
        if usccs:
            for x in lk.xrefs_by("uscc", usccs):
                std = x.std or {}
                if x.golden_id != golden_id and std.get("branch") and not _name_parents(lk, x):
                    edges.append((golden_id, x.golden_id, "branch", {"rule": "shared_uscc", "uscc": usccs}))
    bas = sorted({x.billing_account for x in live if x.billing_account})
    for x in lk.xrefs_for_keys(lk.index_keys("parent_ba", bas)):
        if x.golden_id != golden_id:
            edges.append((golden_id, x.golden_id, "billing_parent", {"parent_billing_account": x.parent_billing_account}))
    for x in lk.xrefs_for_keys(lk.index_keys("parent_src", [m.key for m in live])):
        if x.golden_id != golden_id:
            edges.append((golden_id, x.golden_id, "parent", {"source": x.key}))
    if is_group and cores:
        for gid, xs in _goldens_by_core(lk, cores).items():
            if gid != golden_id and not any((y.std or {}).get("is_group") or (y.std or {}).get("branch") for y in xs):
                edges.append((golden_id, gid, "group_member", {"core_name": cores}))
    # one edge per (parent, child, kind)
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for p, c, k, ev in edges:
        seen.setdefault((p, c, k), ev)
    return [(p, c, k, ev) for (p, c, k), ev in sorted(seen.items())]


def refresh(s: Session, golden_ids: Iterable[str], now: datetime) -> None:
    """Recompute the hierarchy edges touching ``golden_ids`` (ended edges are kept).

    Reads are batched over all ``golden_ids`` (:class:`Lookup`): a bulk batch costs a handful
    of queries instead of several per golden record.
    """
    ids = sorted(set(golden_ids))
    if not ids:
        return
    current: dict[tuple[str, str, str], Hierarchy] = {}
    members: dict[str, list[Xref]] = {}
    active: set[str] = set()
    lk = Lookup(s)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for h in s.execute(_Q.edges, {"a": chunk, "b": chunk}).scalars():
            current[(h.parent_golden, h.child_golden, h.kind)] = h
        for gid, xs in _goldens_of(lk, chunk).items():
            members.setdefault(gid, []).extend(xs)
        active |= set(s.connection().execute(_Q.active, {"ids": chunk}).scalars())
    lk.prefetch(x for gid in ids if gid in active for x in members.get(gid, []))
    wanted: dict[tuple[str, str, str], dict[str, Any]] = {}
    for gid in ids:
        if gid in active and gid in members:
            for p, c, k, ev in compute_edges(s, gid, members[gid], lk):
                wanted[(p, c, k)] = ev
    for key, h in current.items():
        if key not in wanted:
            h.active = False
            h.ended_at = now
    new = [(p, c, k, ev) for (p, c, k), ev in wanted.items() if (p, c, k) not in current]
    if new:
        s.execute(sa.insert(Hierarchy), [
            {"parent_golden": p, "child_golden": c, "kind": k, "evidence": ev, "created_at": now, "active": True}
            for p, c, k, ev in new
        ])


def edges_of(s: Session, golden_id: str) -> dict[str, list[dict[str, Any]]]:
    rows = s.execute(
        sa.select(Hierarchy).where(
            Hierarchy.active.is_(True), sa.or_(Hierarchy.parent_golden == golden_id, Hierarchy.child_golden == golden_id)
        )
    ).scalars()
    out: dict[str, list[dict[str, Any]]] = {"parents": [], "children": []}
    for h in rows:
        if h.child_golden == golden_id:
            out["parents"].append({"golden_id": h.parent_golden, "kind": h.kind, "evidence": h.evidence})
        else:
            out["children"].append({"golden_id": h.child_golden, "kind": h.kind, "evidence": h.evidence})
    return out


def subtree(s: Session, golden_id: str, limit: int = 10_000) -> list[str]:
    """Golden ids below ``golden_id`` (branches, members, child accounts), breadth first."""
    seen = {golden_id}
    frontier = [golden_id]
    order: list[str] = []
    while frontier and len(seen) < limit:
        rows = s.execute(
            sa.select(Hierarchy.child_golden).where(Hierarchy.active.is_(True), Hierarchy.parent_golden.in_(frontier))
        ).scalars()
        frontier = []
        for c in rows:
            if c not in seen:
                seen.add(c)
                order.append(c)
                frontier.append(c)
    return order

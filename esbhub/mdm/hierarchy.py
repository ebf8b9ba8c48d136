"""Customer hierarchy and key-account tiering.

A branch (分公司, 分行, 支行, 营业部, 办事处) is its own golden record, never merged into its
head office; it is *linked* to it by an edge in ``mdm_hierarchy``:

``branch``          the branch's name minus its branch suffix names the head office: the same 字号,
                    legal form (or none) and place (rule ``branch_suffix``); a name with a place
                    and one without also fit — 华信科技有限公司北京办事处 names 深圳市华信科技有限公司 —
                    but only if that is the one head office of the name (``branch_suffix_sole_head``:
                    with two 华信科技有限公司 in two cities the branch could be either's). Failing
                    that, the branch carries the USCC of a non-branch golden record (branches often
                    quote the head office's code: ``shared_uscc``)
``billing_parent``  the record's ``parent_billing_account`` is another golden's billing account
``parent``          the source system names the parent (``parent_source_id``)
``group_member``    a group (集团) golden and a non-group, non-branch golden share the core name
                    (字号) *and* their records with that 字号 show a tie (``support`` in the
                    evidence): the member's billing account under the group's, the member naming
                    the group's record as its parent, two USCCs of one registration area (a
                    registration authority does not give one 字号 to two unrelated companies), or
                    the same street in one district. The 字号 alone is no tie: the same 字号 in
                    another city is often another company (``bench/mdm_hierarchy.py``)

Groups whose name says no 集团 are found by their structure alone: ``billing_parent`` and
``parent`` edges put a member under its group whatever the names, and the group revenue and
tier of the 360 view add up every edge below a golden record.

Edges are recomputed for every golden record a change touches (both directions), and for the
branches whose head office by name it is or was (whether a head office is the sole one of its
name depends on the others: :func:`_name_dependents`); edges of retired golden records are
ended, never deleted. Tiering: the sum of the monthly revenue of a golden record's distinct
billing accounts against thresholds in :class:`TieringConfig`; the 360 view also reports the
group tier (revenue of the whole subtree).
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
from esbhub.mdm.standardize.codes import uscc_valid
from esbhub.mdm.standardize.divisions import MUNICIPALITIES
from esbhub.mdm.standardize.names import OrgName, _org_name
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


def _fits(named: OrgName, head: OrgName) -> str | None:
    """How a non-branch record's name (``head``) fits the head office a branch names (``named``):
    ``"exact"`` — the same 字号, legal form (or the branch left it out, 集团 or not) and place;
    ``"unplaced"`` — the same but one of the two names no place (a head office registered as
    深圳市华信科技有限公司 and named 华信科技有限公司 by its branch); None — another name."""
    if named.core != head.core:
        return None
    if named.legal_form is not None:
        if named.legal_form != head.legal_form or named.is_group != head.is_group:
            return None
    elif named.is_group and not head.is_group:
        return None
    if named.place is None or head.place is None:
        return "exact" if named.place is head.place else "unplaced"
    return "exact" if named.place.code == head.place.code else None


def _head_candidates(lk: Lookup, branch: Xref) -> tuple[set[str], set[str]]:
    """Golden ids of the non-branch records whose names fit the head office ``branch`` names:
    (exactly, without a place on one side) — see :func:`_fits`; never the branch's own."""
    std = branch.std or {}
    ho, core = std.get("head_office_name_norm"), std.get("core_name")
    if not ho or not core:
        return set(), set()
    found = lk.heads_named.get((core, ho))
    if found is None:  # once per head office name and refresh: a 字号's branches name few
        named = _org_name(ho)
        found = lk.heads_named[(core, ho)] = ([], [])
        for y in lk.xrefs_by("core_name", [core]):
            if not (y.std or {}).get("branch") and y.name_norm:
                fit = _fits(named, _org_name(y.name_norm))
                if fit is not None:
                    found[fit != "exact"].append(y.golden_id)
    exact = set(found[0]) - {branch.golden_id}
    return exact, set(found[1]) - exact - {branch.golden_id}


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
        self.heads_named: dict[tuple[str, str], tuple[list[str], list[str]]] = {}  # see _head_candidates

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

    def std_of(self, x: Xref) -> dict[str, Any]:
        """A record's standardized fields, all of them (the bulk path keeps the few the edges read
        of every record, and parses the rest for the few records that need it)."""
        return x.std or {}

    def street_of(self, x: Any) -> str | None:
        """:func:`street_key` of a record, worked out once per record and look-up (a group's
        records are compared with every same-字号 candidate's; in the bulk path :meth:`std_of`
        parses the whole record)."""
        memo: dict[str, str | None] = self.__dict__.setdefault("_streets", {})
        if x.key not in memo:
            memo[x.key] = street_key(self.std_of(x))
        return memo[x.key]

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


def _name_parents(lk: Lookup, branch: Xref) -> dict[str, str]:
    """Golden ids of non-branch records a branch record names as its head office → the rule: every
    exact fit, else the one fit without a place (two are two cities' companies: neither is taken)."""
    exact, unplaced = _head_candidates(lk, branch)
    if exact:
        return dict.fromkeys(exact, "branch_suffix")
    if len(unplaced) == 1:
        return dict.fromkeys(unplaced, "branch_suffix_sole_head")
    return {}


def _core(x: Xref) -> str | None:
    return (x.std or {}).get("core_name") or None


def _parent_id(x: Xref) -> str | None:
    return (x.std or {}).get("parent_source_id") or (x.raw or {}).get("parent_source_id")


def _registration_area(uscc: str | None) -> str | None:
    """The prefecture (city) whose authority registered a USCC, as a 6-digit division code — the
    municipality for 北京, 天津, 上海, 重庆 — or None for a USCC whose check character fails."""
    if not uscc or not uscc_valid(uscc) or not uscc[2:8].isdigit():
        return None
    return uscc[2:4] + "0000" if uscc[2:4] in MUNICIPALITIES else uscc[2:6] + "00"


def street_key(std: dict[str, Any]) -> str | None:
    """``division street`` of a record's address when the district is known (the same street and
    number in two districts of one city are two places)."""
    code, street = std.get("division_code"), std.get("street")
    return f"{code} {street}" if code and street and code[4:] != "00" else None


Ties = dict[str, dict[str, set[str]]]
"""Per other golden record: the structure tying it to the one whose edges are computed, by kind
(``parent_billing_account``: the accounts; ``parent_source``: the parent records' keys)."""


def _group_support(lk: Lookup, group: list[Xref], member: list[Xref], ties: dict[str, set[str]]) -> dict[str, list[str]]:
    """What ties a member to a group beyond the shared 字号: the billing or source structure
    between their live records (``ties``), and — between their live records that carry the 字号
    — two USCCs of one registration area or one street of one district. Each side computes the
    same from its own view, so the edge and its evidence do not depend on which side is refreshed."""
    support = {k: sorted(v) for k, v in sorted(ties.items()) if v}
    g_areas = {(a, u) for g in group if (a := _registration_area(u := (g.std or {}).get("uscc")))}
    if g_areas:
        m_areas = {(a, u) for m in member if (a := _registration_area(u := (m.std or {}).get("uscc")))}
        # two USCCs: one company's code on both sides makes a duplicate, not a member
        if areas := sorted({a for a, u in g_areas for b, v in m_areas if a == b and u != v}):
            support["registration_area"] = areas
    g_streets = {k for g in group if (k := lk.street_of(g))}
    if g_streets and (streets := sorted(g_streets & {k for m in member if (k := lk.street_of(m))})):
        support["address"] = streets
    return support


def _tie(ties: Ties, gid: str, kind: str, value: str) -> None:
    ties.setdefault(gid, {}).setdefault(kind, set()).add(value)


def _names_group(xs: list[Xref]) -> bool:
    """A live record names 集团, not as a branch: the records can be a group's (a quick test)."""
    return any(not x.deleted and (d := x.std or {}).get("is_group") and not d.get("branch") for x in xs)


def _group_edge(lk: Lookup, group: list[Xref], member: list[Xref], ties: dict[str, set[str]]) -> dict[str, Any] | None:
    """The evidence of a ``group_member`` edge between two golden records, given the records of
    each that share a 字号 with the other and the structure between them, or None: the group
    side names 集团 (not as a branch), the member side neither says 集团 nor is a branch (their
    live records with the 字号), and :func:`_group_support` finds a tie."""
    cores = {_core(g) for g in group if not g.deleted} & {_core(m) for m in member if not m.deleted} - {None}
    if not cores:
        return None
    group = [g for g in group if not g.deleted and _core(g) in cores]
    member = [m for m in member if not m.deleted and _core(m) in cores]
    if not any((g.std or {}).get("is_group") and not (g.std or {}).get("branch") for g in group):
        return None
    if any((m.std or {}).get("is_group") or (m.std or {}).get("branch") for m in member):
        return None
    support = _group_support(lk, group, member, ties)
    return {"core_name": sorted(cores), "support": support} if support else None


def compute_edges(s: Session, golden_id: str, members: list[Xref],
                  lookup: Lookup | None = None) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Edges (parent, child, kind, evidence) in which ``golden_id`` takes part, either side."""
    lk = lookup or Lookup(s)
    edges: list[tuple[str, str, str, dict[str, Any]]] = []
    live = [x for x in members if not x.deleted] or members
    stds = [x.std or {} for x in live]
    is_branch = any(d.get("branch") for d in stds)
    cores = sorted({d.get("core_name") for d in stds if d.get("core_name")})
    # as a child -----------------------------------------------------------
    if is_branch:
        ho_names = sorted({d["head_office_name_norm"] for d in stds if d.get("head_office_name_norm")})
        parents: dict[str, str] = {}
        for x in live:
            if (x.std or {}).get("branch"):
                for p, rule in _name_parents(lk, x).items():
                    if p != golden_id and (p not in parents or rule == "branch_suffix"):
                        parents[p] = rule
        for p in sorted(parents):
            edges.append((p, golden_id, "branch", {"rule": parents[p], "head_office_name_norm": ho_names}))
        if not parents:
            usccs = sorted({d["uscc"] for d in stds if d.get("uscc")})
            if usccs:
                by_uscc = {x.golden_id for x in lk.xrefs_by("uscc", usccs)
                           if x.golden_id != golden_id and not (x.std or {}).get("branch")}
                for p in sorted(by_uscc):
                    edges.append((p, golden_id, "branch", {"rule": "shared_uscc", "uscc": usccs}))
    up: Ties = {}  # structure between live records, for group ties (the edges above keep theirs)
    pbas = sorted({x.parent_billing_account for x in live if x.parent_billing_account})
    if pbas:
        alive = {x.parent_billing_account for x in live if not x.deleted}
        for x in lk.xrefs_by("billing_account", pbas):
            if x.golden_id != golden_id:
                edges.append((x.golden_id, golden_id, "billing_parent", {"parent_billing_account": x.billing_account}))
                if not x.deleted and x.billing_account in alive:
                    _tie(up, x.golden_id, "parent_billing_account", x.billing_account)
    parent_keys = [(x.source_system, parent) for x in live if (parent := _parent_id(x))]
    got = lk.get_many(parent_keys)
    for x in live:
        if (k := (x.source_system, _parent_id(x))) in got and (px := got[k]).golden_id != golden_id:
            edges.append((px.golden_id, golden_id, "parent", {"source": source_key(*k)}))
            if not x.deleted and not px.deleted:
                _tie(up, px.golden_id, "parent_source", px.key)
    same_core = _goldens_by_core(lk, cores) if cores else {}
    for gid, xs in same_core.items():
        if gid != golden_id and _names_group(xs) and (ev := _group_edge(lk, xs, members, up.get(gid, {}))) is not None:
            edges.append((gid, golden_id, "group_member", ev))
    # as a parent ----------------------------------------------------------
    for gid, xs in same_core.items():
        for y in xs:
            if gid != golden_id and (y.std or {}).get("branch") and (rule := _name_parents(lk, y).get(golden_id)):
                edges.append((golden_id, gid, "branch", {"rule": rule,
                                                         "head_office_name_norm": [(y.std or {}).get("head_office_name_norm")]}))
    if not is_branch:
        usccs = sorted({d["uscc"] for d in stds if d.get("uscc")})
        if usccs:
            for x in lk.xrefs_by("uscc", usccs):
                std = x.std or {}
                if x.golden_id != golden_id and std.get("branch") and not _name_parents(lk, x):
                    edges.append((golden_id, x.golden_id, "branch", {"rule": "shared_uscc", "uscc": usccs}))
    down: Ties = {}
    bas = sorted({x.billing_account for x in live if x.billing_account})
    alive_bas = {x.billing_account for x in live if not x.deleted}
    for x in lk.xrefs_for_keys(lk.index_keys("parent_ba", bas)):
        if x.golden_id != golden_id:
            edges.append((golden_id, x.golden_id, "billing_parent", {"parent_billing_account": x.parent_billing_account}))
            if not x.deleted and x.parent_billing_account in alive_bas:
                _tie(down, x.golden_id, "parent_billing_account", x.parent_billing_account)  # type: ignore[arg-type]
    alive_keys = {m.key for m in live if not m.deleted}
    for x in lk.xrefs_for_keys(lk.index_keys("parent_src", [m.key for m in live])):
        if x.golden_id != golden_id:
            edges.append((golden_id, x.golden_id, "parent", {"source": x.key}))
            if not x.deleted and (parent := source_key(x.source_system, _parent_id(x) or "")) in alive_keys:
                _tie(down, x.golden_id, "parent_source", parent)
    if _names_group(members):
        for gid, xs in same_core.items():
            if gid != golden_id and (ev := _group_edge(lk, members, xs, down.get(gid, {}))) is not None:
                edges.append((golden_id, gid, "group_member", ev))
    # one edge per (parent, child, kind)
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for p, c, k, ev in edges:
        seen.setdefault((p, c, k), ev)
    return [(p, c, k, ev) for (p, c, k), ev in sorted(seen.items())]


def _name_dependents(lk: Lookup, golden_id: str, members: list[Xref], current: dict[tuple[str, str, str], Hierarchy],
                     wanted: dict[tuple[str, str, str], dict[str, Any]], linked: set[str]) -> set[str]:
    """Golden ids of branches whose other parents may change with ``golden_id`` — a second head
    office of the name makes a sole one one of two, an exact fit outranks one without a place, a
    renamed head office leaves the field to another: the branches whose head office by name it is
    (:func:`_head_candidates`) or was (``linked``: its current ``branch`` children), unless its
    edge to them stays as it was (by the same rule: then so does the rest of their parents)."""
    cores = sorted({c for x in members if (c := _core(x))})
    out = set(linked)
    for y in lk.xrefs_by("core_name", cores) if cores else ():
        if y.golden_id != golden_id and (y.std or {}).get("branch"):
            exact, unplaced = _head_candidates(lk, y)
            if golden_id in exact or golden_id in unplaced:
                out.add(y.golden_id)
    keep = set()
    for b in out:
        before, after = current.get((golden_id, b, "branch")), wanted.get((golden_id, b, "branch"))
        if before is not None and after is not None and (before.evidence or {}).get("rule") == after.get("rule"):
            keep.add(b)
    return out - keep


def refresh(s: Session, golden_ids: Iterable[str], now: datetime) -> None:
    """Recompute the hierarchy edges touching ``golden_ids`` (ended edges are kept), and those of
    the branches whose head office by name one of them is or was (:func:`_name_dependents`).

    Reads are batched over all ``golden_ids`` (:class:`Lookup`): a bulk batch costs a handful
    of queries instead of several per golden record; the branches depending on them, if any, a
    handful more.
    """
    ids = sorted(set(golden_ids))
    if not ids:
        return
    current: dict[tuple[str, str, str], Hierarchy] = {}
    wanted: dict[tuple[str, str, str], dict[str, Any]] = {}
    lk = Lookup(s)
    dependents = _recompute(s, lk, ids, current, wanted)
    if more := sorted(dependents - set(ids)):
        _recompute(s, lk, more, current, wanted)
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


def _recompute(s: Session, lk: Lookup, ids: list[str], current: dict[tuple[str, str, str], Hierarchy],
               wanted: dict[tuple[str, str, str], dict[str, Any]]) -> set[str]:
    """Add the active edges touching ``ids`` to ``current`` and the edges they should have to
    ``wanted``; return the branches depending on them by name (:func:`_name_dependents`)."""
    members: dict[str, list[Xref]] = {}
    active: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for h in s.execute(_Q.edges, {"a": chunk, "b": chunk}).scalars():
            current[(h.parent_golden, h.child_golden, h.kind)] = h
        for gid, xs in _goldens_of(lk, chunk).items():
            members.setdefault(gid, []).extend(xs)
        active |= set(s.connection().execute(_Q.active, {"ids": chunk}).scalars())
    lk.prefetch(x for gid in ids if gid in active for x in members.get(gid, []))
    branches: dict[str, set[str]] = {}
    for p, c, k in current:
        if k == "branch":
            branches.setdefault(p, set()).add(c)
    dependents: set[str] = set()
    for gid in ids:
        if gid in active and gid in members:
            for p, c, k, ev in compute_edges(s, gid, members[gid], lk):
                wanted[(p, c, k)] = ev
    for gid in ids:
        if gid in active and gid in members:
            dependents |= _name_dependents(lk, gid, members[gid], current, wanted, branches.get(gid, set()))
    return dependents


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

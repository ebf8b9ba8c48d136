"""The MDM service: ``party.v1`` in → golden records, xref, history, steward queue → events out.

Pipeline of one source record (:meth:`MdmService.ingest`), in one database transaction:

1. **idempotency** — an envelope id seen before returns the events it produced then (same
   envelope ids, so consumers dedup); an unchanged source version produces nothing;
2. **standardize** and store the new source version (all versions are kept);
3. **match** against the in-memory index (blocking → Fellegi–Sunter score): pairs above the
   merge threshold become ``match`` links, between the thresholds ``review`` links (a steward
   task), below nothing; the record's previous links are superseded, not deleted;
4. **cluster** the affected region — every record reachable from the changed one through
   match links, steward "same" decisions and current golden membership. Clustering is a
   pure function of that region: steward "same" pairs first, then match links by descending
   weight (ties by key), each joining two clusters unless a steward "not same" pair or an
   engine cannot-link (``esbhub.mdm.cluster.can_link``: e.g. two different valid USCCs) lies
   between them. So the partition does not depend on arrival order, a steward decision
   sticks across re-matching, and a changed record that no longer matches splits off. (A link's
   score depends on its two records and the model alone — term frequencies are the model's — and
   on how many records hold a shared phone number or organization address: when that count
   crosses the model's generic limit, :meth:`MdmService._rescore_shared` scores the pairs of the
   value's holders again.)
5. **golden ids**: an id belongs to the source record that founded it. A cluster takes the
   oldest id founded by one of its members; the other founded ids are retired with a
   ``merged_into`` pointer; a cluster without a founder gets a new id founded by its oldest
   member. So ids are stable across re-runs, the oldest id survives a merge and an unmerge
   brings the retired id back;
6. **survive** each changed golden record per attribute with lineage
   (:mod:`esbhub.mdm.survivorship`), write a new history version (valid_from / valid_to),
   refresh hierarchy edges and tier, and build one ``party.golden.*`` event per new version.

All mutating calls are serialized: in a process by a lock, across processes (API steward
calls, workers, ``esbhub mdm``) because every writing transaction starts by bumping the
``writer`` counter row (row lock on PostgreSQL, write lock on SQLite). Writers that make events
take the publication lock (:mod:`esbhub.mdm.publication`) before that and hold it until their
events are on the bus or in the outbox, so events are published in commit order per golden id
(:mod:`esbhub.mdm.events`): steward actions and rematch write theirs to the outbox;
``ingest_many(publish=…)`` publishes its own right after the commit, after what the outbox
holds. The in-memory matcher index mirrors the committed database: it is rolled back with a
failed transaction, and each writing transaction first indexes the source versions other processes committed since (so a
bulk ``esbhub mdm load`` beside a running worker is seen by it). One ingesting consumer per
process (subscription concurrency 1).

The match model is the store's, not each process's: ``mdm_model`` records the one its links
were scored with (its fingerprint, :meth:`MatchModel.fingerprint
<esbhub.mdm.match.MatchModel.fingerprint>`). :meth:`MdmService.rematch` applies a model — re-scores
every pair with it, records it and saves it at ``mdm.model_path``, in one transaction — and every
writer reads the store's model in the statement that takes the writer lock; one whose model is
not that reloads ``mdm.model_path`` before it scores anything (the index stays), or refuses
(:class:`ModelMismatch`) if the file there holds another model (:meth:`MdmService._begin_write`).
So a worker or the API scores its next records with the model a rematch in another process
applied, without a restart, and a process started later loads it. ``esbhub mdm train`` only
writes a candidate, which a rematch applies.

Cost (``bench/mdm_load.py``): a batch is one transaction whatever its size — append-only rows
(source versions, key index, links, inbox, golden history) go in with one ``executemany`` per
table, hierarchy edges are recomputed with a handful of ``IN`` queries for the whole batch, and
events are built from the rows just written; so ``ingest_many`` of 500 records costs ~80 SQL
statements, not ~250, and the bulk path runs ~10× the per-record one. A real-time record is ~25
statements: unchanged links and look-up keys are left as they are. The inbox keeps events
without the golden payload (rebuilt from history on redelivery, byte for byte). The loaded
matcher index is frozen out of the cyclic GC (:meth:`MdmService._freeze_index`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.orm import Session

from esbhub import db
from esbhub.bus.envelope import Envelope
from esbhub.errors import CircuitOpen, ConfigError, ErrorDetail, InvalidMessage, PermanentError
from esbhub.mdm import hierarchy
from esbhub.mdm.events import GoldenEvent, golden_event
from esbhub.mdm.publication import PublicationLock
from esbhub.mdm.settings import MdmSettings, mdm_settings_of
from esbhub.mdm.store import (
    AppliedModel,
    Audit,
    AuditSubject,
    CompressedJSON,
    Constraint,
    FastJSON,
    Golden,
    GoldenHistory,
    GoldenLink,
    Hierarchy,
    Inbox,
    KeyIndex,
    Link,
    NewXref,
    Outbox,
    Override,
    SourceVersion,
    Task,
    Xref,
    any_of,
    as_utc,
    aware,
    golden_id_for,
    insert_rows,
    next_value,
    pair,
    session_xrefs,
    source_key,
    split_key,
    stored,
    utcnow,
)
from esbhub.mdm.store import Sequence as Counter
from esbhub.mdm.survivorship import (
    Member,
    override_problem,
    overrides_always_win,
    survive,
)
from esbhub.schemas.party import Party

log = structlog.get_logger("esbhub.mdm")

_KEPT = ("match", "review")
"""Decisions that become links (``no_match`` pairs, also those with a cannot-link reason, do not)."""


def _evidence_json(evidence: list[Any]) -> list[dict[str, Any]]:
    from esbhub.mdm.match import evidence_json  # the matcher (numpy, rapidfuzz) loads on first use

    return evidence_json(evidence)


class NotFound(LookupError):
    """No such golden record, source key or task; ``field`` names the argument that referred to
    it when the call takes several (e.g. "a" or "b" of :meth:`MdmService.merge`), else None."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidOverride(ValueError):
    """A steward override of an attribute survivorship does not make, or with a value of the wrong
    shape; ``field`` says which of the two ("attribute" or "value")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Conflict(PermanentError):
    """The steward action contradicts a standing decision (e.g. merge across a 'not same') or a
    hard cannot-link rule (two different valid USCCs, a branch and its head office, …)."""

    code = "conflict"


@dataclass
class _Change:
    golden_id: str
    change: str
    merged_ids: list[str] = field(default_factory=list)
    split_into: list[str] = field(default_factory=list)
    unmerged_from: str | None = None
    golden: Any = None  # the Golden row as written (the session's identity map holds rows only weakly)


@dataclass(frozen=True)
class Prepared:
    """What :meth:`MdmService.ingest_many` computes from a record alone, computed ahead (e.g. by
    :func:`esbhub.mdm.loader.load_parties`, partly in another process): the raw ``party.v1``
    JSON, its content hash (:func:`content_hash`), and optionally
    the standardized form with its JSON; the initial load also takes both JSON as the text the
    store keeps (``rawt`` / ``stdt``: :func:`esbhub.db.json_dumps` of ``raw`` / ``stdj``). They
    must be what the service would compute itself."""

    raw: dict[str, Any]
    content_hash: str
    std: Any = None
    stdj: dict[str, Any] | None = None
    rawt: str | None = None
    stdt: str | None = None


def _canon(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def _hash(obj: Any) -> str:
    return hashlib.sha256(_canon(obj)).hexdigest()


def std_json(std: Any) -> dict[str, Any]:
    """A standardized record's JSON, as the store keeps it."""
    return std.model_dump(mode="json") if hasattr(std, "model_dump") else dict(std)


def content_hash(raw: dict[str, Any]) -> tuple[str, bytes]:
    """The content hash of a record's raw JSON (sha256 hex of its canonical form) and that form."""
    canon = _canon(raw)
    return hashlib.sha256(canon).hexdigest(), canon


def _hier_signature(x: Xref) -> tuple[Any, ...]:
    """What hierarchy edges depend on; a change elsewhere (status, phones …) needs no edge refresh."""
    d = x.std or {}
    return (x.name_norm, x.core_name, x.uscc, x.billing_account, x.parent_billing_account, x.deleted,
            d.get("branch"), d.get("is_group"), d.get("head_office_name_norm"),
            d.get("parent_source_id") or (x.raw or {}).get("parent_source_id"),
            hierarchy.street_key(d))  # the address: a group tie (hierarchy._group_support)


class _UnionFind:
    def __init__(self, keys: Iterable[str]) -> None:
        self.parent = {k: k for k in keys}
        self.members = {k: {k} for k in self.parent}

    def find(self, k: str) -> str:
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra] |= self.members.pop(rb)


def partition(
    keys: Iterable[str],
    match_edges: Iterable[tuple[str, str, float]],
    must: Iterable[tuple[str, str]],
    cannot: set[tuple[str, str]],
    engine_forbids: Callable[[str, str], str | None],
) -> list[frozenset[str]]:
    """Constraint-aware greedy clustering; a pure function of its inputs (order-independent).

    Steward "same" pairs join first, then match edges by descending weight (ties by keys).
    A join is skipped when any cross pair is a steward "not same" (``cannot``, sorted pairs) or
    ``engine_forbids(a, b)`` gives a reason — for a steward "same" pair too: the engine's
    cannot-link rules are hard (a steward action that contradicts one is refused up front,
    :meth:`MdmService.merge`; this keeps a record whose source later changed so that a rule
    applies — e.g. it now carries another valid USCC — out of the golden record a steward
    made, instead of merging two legal entities).
    """
    uf = _UnionFind(sorted(set(keys)))
    ordered: list[tuple[int, float, str, str]] = [(0, 0.0, *pair(a, b)) for a, b in must]
    ordered += [(1, -w, *pair(a, b)) for a, b, w in match_edges]
    ordered.sort()
    for _kind, _w, a, b in ordered:
        if a not in uf.parent or b not in uf.parent:
            continue
        ra, rb = uf.find(a), uf.find(b)
        if ra == rb:
            continue
        xs, ys = uf.members[ra], uf.members[rb]
        ok = True
        for x in xs:
            for y in ys:
                if pair(x, y) in cannot or engine_forbids(x, y):
                    ok = False
                    break
            if not ok:
                break
        if ok:
            uf.union(ra, rb)
    return sorted((frozenset(m) for m in uf.members.values()), key=lambda c: min(c))


class _Rows:
    """Rows of append-only tables (source versions, key index, links, inbox) written with one
    Core ``executemany`` per table instead of one ORM object each; :meth:`flush` before anything
    reads them back in the same transaction."""

    TABLES = (SourceVersion.__table__, KeyIndex.__table__, Link.__table__, Inbox.__table__)

    def __init__(self) -> None:
        self.rows: dict[Any, list[dict[str, Any]]] = {tbl: [] for tbl in self.TABLES}
        self.stale_keys: list[dict[str, Any]] = []  # key-index rows of these source keys go first
        self.superseded: list[dict[str, Any]] = []  # links (:class:`_LinkRow`) no longer current
        # stored xref rows staging changed (XrefRow, read with Core): key → (row, column values
        # as stored); :meth:`flush` writes the columns that differ, as the ORM would
        self.xrefs: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.flushes = 0

    def add(self, model: Any, **row: Any) -> None:
        self.rows[model.__table__].append(row)

    def flush(self, s: Session) -> None:
        conn = None
        self.flushes += 1
        if self.stale_keys:
            conn = s.connection()
            conn.execute(_Q.delete_keys, self.stale_keys)
            self.stale_keys.clear()
        if self.superseded:
            conn = conn or s.connection()
            conn.execute(_Q.supersede_links, self.superseded)
            self.superseded.clear()
        for tbl, rows in self.rows.items():
            if rows:
                conn = conn or s.connection()
                insert_rows(conn, tbl, rows)
                rows.clear()
        if self.xrefs:
            _write_changed(s, Xref.__table__, ("source_system", "source_id"), self.xrefs.values(), _XREF_STAGED)


_XREF_STAGED = ("version", "content_hash", "kind", "name", "core_name", "name_norm", "uscc", "billing_account",
                "parent_billing_account", "deleted", "raw", "std", "received_at", "source_updated_at")
"""The xref columns :meth:`MdmService._stage` sets (golden_id / linked_at are :meth:`MdmService._apply`'s)."""

_UPDATES: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Any] = {}


class _Serialized:
    """JSON values written to two rows in one transaction, serialized once: a record's raw and
    standardized JSON go to its source version and its xref row, a golden record's attributes to
    its row and its history row. SQLite only (:class:`esbhub.mdm.store.Stored`); elsewhere the
    value goes to the driver as it is. Kept in the session's ``info`` for the transaction: it holds
    the values it has seen, so an ``id`` cannot be reused for another value meanwhile."""

    def __init__(self, sqlite: bool) -> None:
        self.sqlite = sqlite
        self._memo: dict[tuple[int, bool], tuple[Any, Any]] = {}

    def __call__(self, value: Any, compress: bool = False) -> Any:
        if not self.sqlite or value is None:
            return value
        k = (id(value), compress)
        hit = self._memo.get(k)
        if hit is None or hit[0] is not value:
            hit = self._memo[k] = (value, stored(value, compress=compress))
        return hit[1]


def _ser(s: Session) -> _Serialized:
    ser = s.info.get("mdm_ser")
    if ser is None:
        ser = s.info["mdm_ser"] = _Serialized(s.get_bind().dialect.name == "sqlite")
    return ser  # type: ignore[no-any-return]


_JSON_COLS: dict[tuple[str, str], bool | None] = {}


def _json_col(tbl: sa.Table, col: str) -> bool | None:
    """None: not a JSON column; else whether it is stored deflated."""
    k = (tbl.name, col)
    if k not in _JSON_COLS:
        t = tbl.c[col].type
        _JSON_COLS[k] = isinstance(t, CompressedJSON) if isinstance(t, FastJSON) else None
    return _JSON_COLS[k]


def _write_changed(s: Session, tbl: sa.Table, pk: tuple[str, ...], rows: Iterable[tuple[Any, dict[str, Any]]],
                   cols: Sequence[str]) -> None:
    """Write the ``cols`` of plain row objects whose value differs from the value stored (the
    comparison the ORM's unit of work makes), one ``executemany`` per set of changed columns;
    the stored values are then the new ones."""
    by_cols: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    ser = _ser(s)
    for x, was in rows:
        params = {f"k_{c}": getattr(x, c) for c in pk}
        changed = []
        for c in cols:
            v = getattr(x, c)
            if v != was[c]:
                changed.append(c)
                deflated = _json_col(tbl, c)
                params[f"v_{c}"] = v if deflated is None else ser(v, deflated)
                was[c] = v
        if changed:
            by_cols.setdefault(tuple(changed), []).append(params)
    for changed_cols, params_list in by_cols.items():
        key = (tbl.name, pk, changed_cols)
        stmt = _UPDATES.get(key)
        if stmt is None:
            stmt = _UPDATES[key] = (
                sa.update(tbl).where(*(tbl.c[c] == sa.bindparam(f"k_{c}", type_=tbl.c[c].type) for c in pk))
                .values({c: sa.bindparam(f"v_{c}", type_=tbl.c[c].type) for c in changed_cols})
            )
        s.connection().execute(stmt, params_list)


_GOLDEN_COLS = tuple(c.key for c in Golden.__table__.columns)
_GOLDEN_KEEP = ("golden_id", "seq_no", "founder", "created_at")  # never changed once inserted
_GOLDEN_WRITTEN = tuple(c for c in _GOLDEN_COLS if c not in _GOLDEN_KEEP)


class _LinkRow:
    """A stored link read with Core (:meth:`MdmService._prefetch`, :meth:`MdmService._stage`): the
    :class:`Link` columns on a plain object. Superseding it is queued in :attr:`_Rows.superseded`
    and written by :meth:`_Rows.flush` (one ``executemany``), before anything reads links again."""

    __slots__ = tuple(c.key for c in Link.__table__.columns)

    def __init__(self, row: Sequence[Any]) -> None:
        for k, v in zip(self.__slots__, row, strict=True):
            setattr(self, k, v)


def _take_flipped(matcher: Any) -> list[tuple[str, str]]:
    """:meth:`Matcher.take_flipped <esbhub.mdm.match.Matcher.take_flipped>` of the engine's
    matcher; nothing for a matcher of another kind (tests plug their own in)."""
    take = getattr(matcher, "take_flipped", None)
    return take() if take is not None else []


def _shared_pairs(matcher: Any, key: str, values: list[tuple[str, str]]
                  ) -> tuple[list[tuple[str, str]], dict[tuple[str, str], Any]]:
    """The pairs of records other than ``key`` that share one of these flipped values
    (:meth:`Matcher.take_flipped <esbhub.mdm.match.Matcher.take_flipped>`), sorted, and their
    match and review results scored now (``(a, b)`` → result, ``a < b``): what the per-batch
    (:meth:`MdmService._rescore_shared`) and bulk paths compare with the links they hold."""
    within: set[tuple[str, str]] = set()
    fresh: dict[tuple[str, str], Any] = {}
    for kind, value in values:
        hs = [k for k in matcher.holders(kind, value) if k != key]  # sorted
        within.update((a, b) for i, a in enumerate(hs) for b in hs[i + 1 :])
        for r in matcher.score_pairs_among(hs, decisions=_KEPT):
            fresh.setdefault((r.a, r.b), r)  # r.a < r.b
    return sorted(within), fresh


def _read_links(s: Session, keys: list[str]) -> list[_LinkRow]:
    """The active links touching these source keys, as :class:`_LinkRow`."""
    return [_LinkRow(r) for r in s.connection().execute(_Q.links, {"a": keys, "b": keys})]


class _GoldenRow:
    """A stored golden row read with Core (:meth:`MdmService._apply`): the :class:`Golden` columns
    on a plain object with the values as read, no ORM instrumentation or unit-of-work flush. The
    columns whose value changed are written back by :func:`_write_goldens` — what the ORM would
    write (it compares each attribute with its loaded value the same way)."""

    __slots__ = (*_GOLDEN_COLS, "loaded")

    def __init__(self, row: Sequence[Any]) -> None:
        for k, v in zip(_GOLDEN_COLS, row, strict=True):
            setattr(self, k, v)
        self.loaded = dict(zip(_GOLDEN_COLS, row, strict=True))


def _read_founded(s: Session, founders: list[str]) -> dict[str, Any]:
    """Golden rows founded by these source keys, by founder: :class:`_GoldenRow`, or the ORM object
    if the session holds the row already (a steward action resolved it) — one live copy per row."""
    conn = s.connection()
    imap = s.identity_map
    out: dict[str, Any] = {}
    for i in range(0, len(founders), 500):
        for row in conn.execute(_Q.founded_rows, {"ids": founders[i : i + 500]}):
            g = imap.get((Golden, (row[0],), None)) if imap else None
            g = g if g is not None else _GoldenRow(row)
            out[g.founder] = g
    return out


def _write_goldens(s: Session, rows: Iterable[_GoldenRow]) -> None:
    """Write the changed columns of golden rows read with Core (:func:`_write_changed`)."""
    _write_changed(s, Golden.__table__, ("golden_id",), ((g, g.loaded) for g in rows), _GOLDEN_WRITTEN)


def _insert_rows(s: Session, model: Any, objs: list[Any]) -> None:
    """Insert new rows, built as (transient) ORM objects, with one Core ``executemany``."""
    if objs:
        tbl = model.__table__
        cols = [(a.key, a.columns[0].key, _json_col(tbl, a.columns[0].key)) for a in sa.inspect(model).column_attrs]
        ser = _ser(s)
        insert_rows(s.connection(), tbl, [
            {c: (getattr(o, k) if j is None else ser(getattr(o, k), j)) for k, c, j in cols} for o in objs
        ])


_FROM_HISTORY = ("attributes", "source_keys")


def _compact_event(e: Envelope) -> dict[str, Any]:
    """An event as the inbox keeps it: without the golden attributes and member keys, which the
    golden history row ``(golden_id, seq)`` holds already (rows never change but ``valid_to``)."""
    p = e.payload
    if isinstance(p, dict) and p.get("golden_id") and isinstance(p.get("seq"), int):
        # a golden event's payload is JSON already (events.golden_event): only the envelope's own
        # fields are dumped, not the attributes that are dropped here anyway
        d = e.model_dump(mode="json", exclude={"payload"})
        compact = {k: (None if k in _FROM_HISTORY else v) for k, v in p.items()}  # keeps the key order
        env = {k: (compact if k == "payload" else d[k]) for k in type(e).model_fields if k == "payload" or k in d}
        return {"h": [p["golden_id"], p["seq"]], "env": env}
    return e.model_dump(mode="json")


def _expand_events(s: Session, stored: list[dict[str, Any]]) -> list[Envelope]:
    """The inbox's events as first returned: compact ones get their payload back from history."""
    refs = [tuple(e["h"]) for e in stored if "h" in e and "env" in e]
    hist: dict[tuple[str, int], tuple[Any, Any]] = {}
    by_gid: dict[str, list[int]] = {}
    for gid, seq in refs:
        by_gid.setdefault(gid, []).append(seq)
    gids = sorted(by_gid)
    for i in range(0, len(gids), 500):
        for gid, ver, attrs, members in s.execute(
            sa.select(GoldenHistory.golden_id, GoldenHistory.version, GoldenHistory.attributes, GoldenHistory.members)
            .where(GoldenHistory.golden_id.in_(gids[i : i + 500]))
        ).all():
            hist[(gid, ver)] = (attrs, members)
    out = []
    for e in stored:
        if "h" in e and "env" in e:
            attrs, members = hist[(e["h"][0], e["h"][1])]
            d = dict(e["env"])
            d["payload"] = {k: (attrs if k == "attributes" else list(members or []) if k == "source_keys" else v)
                            for k, v in d["payload"].items()}
            out.append(Envelope.model_validate(d))
        else:
            out.append(Envelope.model_validate(e))
    return out


class _Q:
    """The ingest path's statements, built once: building a statement and its cache key costs more
    than SQLite running it (~0.3-0.5 ms of Python each; a one-record transaction runs ~20)."""

    # not the standardized JSON: most rows since are this process's own (:meth:`MdmService._catch_up`)
    versions_since = (
        sa.select(SourceVersion.id, SourceVersion.source_system, SourceVersion.source_id, SourceVersion.version,
                  SourceVersion.deleted)
        .where(SourceVersion.id > sa.bindparam("since")).order_by(SourceVersion.id)
    )
    std_of_versions = sa.select(SourceVersion.id, SourceVersion.std).where(any_of(SourceVersion.id, "ids"))
    inbox = sa.select(Inbox.envelope_id, Inbox.events).where(any_of(Inbox.envelope_id, "ids"))  # Core rows
    links = sa.select(*Link.__table__.columns).where(
        Link.active.is_(True), sa.or_(any_of(Link.a_key, "a"), any_of(Link.b_key, "b")))
    delete_keys = KeyIndex.__table__.delete().where(
        KeyIndex.__table__.c.source_system == sa.bindparam("sys_"), KeyIndex.__table__.c.source_id == sa.bindparam("sid"))
    supersede_links = (
        sa.update(Link.__table__).where(Link.__table__.c.id == sa.bindparam("lid"))
        .values(active=False, superseded_at=sa.bindparam("at", type_=Link.__table__.c.superseded_at.type))
    )
    members = sa.select(Xref.golden_id, Xref.source_system, Xref.source_id).where(any_of(Xref.golden_id, "ids"))
    # the match links (not their evidence JSON) and the active constraints touching a set of keys,
    # in one statement: ``kind`` is None for a link, the constraint's kind otherwise
    edges = sa.union_all(
        sa.select(Link.id, Link.a_key, Link.b_key, Link.weight, sa.null().label("kind")).where(
            Link.active.is_(True), Link.decision == "match", Link.hard.is_(None),
            sa.or_(any_of(Link.a_key, "a"), any_of(Link.b_key, "b")),
        ),
        sa.select(Constraint.id, Constraint.a_key, Constraint.b_key, sa.null(), Constraint.kind).where(
            Constraint.active.is_(True), sa.or_(any_of(Constraint.a_key, "a"), any_of(Constraint.b_key, "b")),
        ),
    )
    founded_rows = sa.select(*Golden.__table__.columns).where(any_of(Golden.__table__.c.founder, "ids"))
    overrides = (sa.select(Override).where(any_of(Override.golden_id, "ids"), Override.active.is_(True))
                 .order_by(Override.id))
    # Open tasks by either side, or by either order of a golden pair: each side a subquery on its
    # own index (mdm_0005). Written as one OR, SQLite without statistics read every open task
    # through the status index instead (1.7 ms of a one-record transaction at 3,800 open tasks,
    # and growing with the steward queue).
    open_tasks = sa.select(Task).where(Task.status == "open", Task.id.in_(sa.union_all(
        sa.select(Task.id).where(any_of(Task.a_key, "a")), sa.select(Task.id).where(any_of(Task.b_key, "b")),
    )))
    move_xrefs = (
        sa.update(Xref.__table__)
        .where(Xref.__table__.c.source_system == sa.bindparam("sys_"), Xref.__table__.c.source_id == sa.bindparam("sid"))
        .values(golden_id=sa.bindparam("gid", type_=Xref.__table__.c.golden_id.type),
                linked_at=sa.bindparam("at", type_=Xref.__table__.c.linked_at.type))
    )
    decided = sa.select(Constraint.id).where(
        Constraint.a_key == sa.bindparam("a"), Constraint.b_key == sa.bindparam("b"), Constraint.active.is_(True)
    )
    open_task = sa.select(Task).where(Task.a_key == sa.bindparam("a"), Task.b_key == sa.bindparam("b"),
                                      Task.status == "open")
    open_pair = sa.select(Task.id).where(  # golden ids not None: '= NULL' is not 'IS NULL' (see _open_tasks)
        Task.status == "open", Task.id.in_(sa.union_all(
            sa.select(Task.id).where(Task.golden_a == sa.bindparam("ga"), Task.golden_b == sa.bindparam("gb")),
            sa.select(Task.id).where(Task.golden_a == sa.bindparam("gb2"), Task.golden_b == sa.bindparam("ga2")),
        )),
    )
    close_history = (
        sa.update(GoldenHistory.__table__)
        .where(any_of(GoldenHistory.golden_id, "ids"), GoldenHistory.valid_to.is_(None))
        .values(valid_to=sa.bindparam("at"))
    )
    # search (:meth:`MdmService.search`): each an index probe — xref by primary key, USCC or billing
    # account, look-up keys by (kind, value), the key index's leading columns
    golden_of_source = sa.select(Xref.golden_id).where(
        Xref.source_system == sa.bindparam("sys_"), Xref.source_id == sa.bindparam("sid"))
    golden_of_uscc = sa.select(Xref.golden_id).where(Xref.uscc == sa.bindparam("uscc")).order_by(Xref.golden_id)
    golden_of_account = (sa.select(Xref.golden_id).where(Xref.billing_account == sa.bindparam("ba"))
                         .order_by(Xref.golden_id))
    golden_of_phone = (
        sa.select(Xref.golden_id)
        .join(KeyIndex, sa.and_(KeyIndex.source_system == Xref.source_system, KeyIndex.source_id == Xref.source_id))
        .where(KeyIndex.kind == "phone", any_of(KeyIndex.value, "phones")).order_by(Xref.golden_id)
    )
    applied_model = sa.select(AppliedModel).order_by(AppliedModel.id.desc()).limit(1)  # the store's model: the newest
    golden_status = sa.select(Golden.golden_id, Golden.status, Golden.merged_into).where(any_of(Golden.golden_id, "ids"))
    golden_shown = sa.select(Golden.golden_id, Golden.name, Golden.uscc, Golden.tier, Golden.members).where(
        any_of(Golden.golden_id, "ids"))


def _link_item(ref: str, via: str | None) -> str:
    """The item's own reference: a linked ref is ``<item>@<via>`` (``mdm_link`` makes it unique per
    customer key), so the 360 view can show the bill or circuit id without the key."""
    suffix = f"@{via}"
    return ref[: -len(suffix)] if via and ref.endswith(suffix) and len(ref) > len(suffix) else ref


def _has_override(attributes: Mapping[str, Any] | None) -> bool:
    """Some attribute of these golden attributes is a steward's override."""
    for v in (attributes or {}).values():
        lineage = v.get("lineage") if isinstance(v, dict) else None
        if isinstance(lineage, dict) and lineage.get("rule") == "override":
            return True
    return False


Publish = Callable[[list[Envelope]], Any]
"""Puts events on the bus durably, in the order given, or raises (e.g. ``broker.publish_many``)."""

_WRITER = Counter.__table__
_PENDING = sa.select(Outbox.id).where(Outbox.published_at.is_(None)).exists()
_MODEL = AppliedModel.__table__
_STORE_MODEL = sa.select(_MODEL.c.fingerprint).order_by(_MODEL.c.id.desc()).limit(1).scalar_subquery()
_BUMP = sa.update(_WRITER).where(_WRITER.c.name == "writer").values(value=_WRITER.c.value + 1)
_BUMP_WRITER = _BUMP.returning(_WRITER.c.value, _STORE_MODEL)
_BUMP_WRITER_PENDING = _BUMP.returning(_WRITER.c.value, _STORE_MODEL, _PENDING)


class _Writer(NamedTuple):
    """What the statement taking the writer lock says (:func:`_bump_writer`)."""

    pending: bool  # the outbox holds events not yet published (asked for only: else False)
    model: str | None  # fingerprint of the model the store's links were scored with; None: none recorded


def _bump_writer(s: Session, *, outbox: bool = False) -> _Writer:
    """Take the cross-process MDM writer lock (see the module doc): one UPDATE of the ``writer``
    counter row — its row lock on PostgreSQL, the write lock on SQLite — held to commit (the
    first writer ever creates the row, race-safe: :func:`esbhub.mdm.store.next_value`).

    The same statement says which match model the store's links were scored with (the newest
    ``mdm_model`` row: a primary-key probe in its ``RETURNING``), read under the lock, so no
    rematch can apply another before this transaction ends; and, with ``outbox=True`` (a writer
    that publishes its own events, under the publication lock), whether the outbox holds events
    not yet published — they were committed before this transaction and go out before its
    events. Nothing can add to the outbox meanwhile (whoever writes it holds the publication
    lock), so that answer stands to the publish. Neither costs a statement of its own: the
    real-time path runs ~20 per transaction, each ~0.1 ms.
    """
    conn = s.connection()
    if conn.dialect.update_returning:
        row = conn.execute(_BUMP_WRITER_PENDING if outbox else _BUMP_WRITER).first()
        if row is not None:
            return _Writer(bool(row[2]) if outbox else False, row[1])
    next_value(s, "writer")  # no row yet (the first writer ever), or no UPDATE … RETURNING
    pending = bool(conn.execute(sa.select(_PENDING)).scalar()) if outbox else False
    return _Writer(pending, conn.execute(sa.select(_STORE_MODEL)).scalar())


class ModelMismatch(CircuitOpen):
    """This process cannot score with the match model the store's links were scored with: the
    file at ``mdm.model_path`` holds another model (or none, or a broken one). Nothing is scored
    — mixing two models' links would make golden records depend on which process took a record.

    A :class:`~esbhub.errors.CircuitOpen` (so a :class:`~esbhub.errors.TransientError`): the
    condition is the process's, not the message's — a bus worker holds its MDM subscription and
    tries again after ``retry_after`` without using up the messages' attempts or dead-lettering
    them, the API answers 503; every writer re-reads the file on its next transaction, so putting
    the right file back (or a rematch applying the file's model) is all it takes."""

    code = "mdm_model_mismatch"

    def __init__(self, message: str, *, details: list[ErrorDetail] | None = None, retry_after: float = 30.0) -> None:
        super().__init__(message, retry_after=retry_after)
        self.details = list(details or [])


def _fingerprint_of(matcher: Any) -> str | None:
    """The fingerprint of the model a matcher scores with (:meth:`MatchModel.fingerprint
    <esbhub.mdm.match.MatchModel.fingerprint>`); None for a matcher without one (tests plug their
    own in): its model is not followed."""
    fingerprint = getattr(getattr(matcher, "model", None), "fingerprint", None)
    return fingerprint() if callable(fingerprint) else None


def _short(fingerprint: str | None) -> str:
    return fingerprint[:12] if fingerprint else "(none)"


class _ModelFile:
    """The model a rematch applies, saved at ``mdm.model_path`` atomically and with the rematch:
    :meth:`stage` writes it to a temporary file beside the path before the rematch does any work
    (a path that cannot be written stops it there), :meth:`install` renames that over the path
    just before the commit, and :meth:`undo` puts the file that was there back if the commit
    fails — a reader sees the old file or the new one, never half of one, and the file matches
    the store's record but for the moment between the rename and the commit (under the writer
    lock: no writer checks it meanwhile)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text
        self.tmp: Path | None = None
        self.old: bytes | None = None
        self.installed = False

    def _write(self, data: bytes) -> Path:
        """``data`` in a new file beside the path, on disk; created as any file (the umask's
        permissions, not ``mkstemp``'s owner-only ones: other processes read the model)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _replace(self, tmp: Path) -> None:
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):  # the rename on disk too, where a directory can be synced
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def stage(self) -> None:
        try:
            self.tmp = self._write(self.text.encode("utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot write the match model to {self.path} (mdm.model_path): {exc.strerror}",
                              details=[ErrorDetail(
                                  loc="mdm.model_path", msg=str(exc.strerror), file=str(self.path))]) from None

    def install(self) -> None:
        assert self.tmp is not None
        try:
            self.old = self.path.read_bytes()
        except FileNotFoundError:
            self.old = None
        self._replace(self.tmp)
        self.tmp, self.installed = None, True

    def undo(self) -> None:
        """The rematch did not commit: the file that was there goes back (none: none)."""
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None
        if not self.installed:
            return
        try:
            if self.old is None:
                self.path.unlink(missing_ok=True)
            else:
                self._replace(self._write(self.old))
        except OSError as exc:
            log.error("mdm_model_file_not_restored", path=str(self.path), error=str(exc))


SQLITE_CACHE_KIB = 131_072


def _tune_sqlite(s: Session) -> None:
    """SQLite settings of a connection that ingests: a 128 MiB page cache (SQLite's default is
    2 MiB) — at a million records the indexes the pipeline probes (xref by key, golden id, core
    name, USCC; links by key) are far larger, and every page missed is a read system call.
    (WAL checkpoints run on a background thread for every hub connection: :mod:`esbhub.db.wal`.)
    """
    conn = s.connection()
    if conn.dialect.name != "sqlite":
        return
    if not conn.info.get("mdm_cache"):
        conn.exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        conn.info["mdm_cache"] = True


GC_THRESHOLDS = (50_000, 10, 100)
"""The cyclic garbage collector's thresholds in a process that holds a matcher index (CPython's
defaults are ``(700, 10, 10)``): see :func:`_tune_gc`."""


def _tune_gc() -> None:
    """Collect less often in a process that loads a matcher index, unless it chose its own thresholds.

    Loading an index and ingesting a batch allocate millions of container objects. With CPython's
    defaults a young collection runs every 700 net allocations and a full one every 100 young
    ones; at 1M records a full collection took ~0.1 s and, with the more frequent younger ones,
    the collector took ~11 % of a batch's time (``gc.callbacks`` in the seventh session's
    measurements, docs/benchmarks.md). With 10,000 / 10 / 100 the index loads in ~45 s instead of
    ~70 s and a batch costs 5–19 % less CPU (two same-run comparisons); 50,000 for the youngest
    generation (eighth session) took another 6 % off a batch's CPU (×1.05 records/s, same
    outcome): objects that die within a batch are freed by reference counting before a young
    collection has to look at them. The index itself is then frozen (:meth:`MdmService._freeze_index`).
    Only the thresholds change: what is garbage is still collected, in fewer and larger passes.
    """
    if gc.get_threshold() == (700, 10, 10):  # the interpreter's defaults: nobody here chose others
        gc.set_threshold(*GC_THRESHOLDS)


def _default_standardize() -> Callable[[Party], Any]:
    from esbhub.mdm.standardize import standardize

    return standardize


def _default_loader() -> Callable[[dict[str, Any]], Any]:
    from esbhub.mdm.standardize import StdParty

    return StdParty.model_validate


def _default_can_link() -> Callable[[Any, Any], str | None]:
    from esbhub.mdm.cluster import can_link

    return can_link


def _default_matcher(settings: MdmSettings) -> Any:
    from esbhub.mdm.match import Matcher, MatchModel

    model = None
    if settings.model_path and Path(settings.model_path).exists():
        model = MatchModel.from_file(Path(settings.model_path))
    return Matcher(model)


def _record_model(s: Session, fingerprint: str, applied_by: str, path: Path | str | None) -> None:
    """Record that the store's links are scored with this model from now on (``mdm_model``)."""
    s.connection().execute(sa.insert(_MODEL).values(
        fingerprint=fingerprint, applied_at=utcnow(), applied_by=applied_by, path=str(path) if path else None))


def _check_unmerge(golden_id: str, source_keys: list[str], members: set[str]) -> None:
    """:class:`InvalidMessage` unless ``source_keys`` are some, not all, members of ``golden_id``;
    its details name each key that is not (``source_keys.<index>``)."""
    if not source_keys:
        raise InvalidMessage("unmerge needs at least one source key", details=[
            ErrorDetail(loc="source_keys", msg="empty: name the source keys 'system:id' to split off", type="too_short")])
    shown = ", ".join(sorted(members)[:10]) + (", …" if len(members) > 10 else "")
    strangers = [ErrorDetail(loc=f"source_keys.{i}", msg=f"'{k}' is not a member of {golden_id} (its members: {shown})",
                             type="not_member")
                 for i, k in enumerate(source_keys) if k not in members]
    if strangers:
        raise InvalidMessage(f"not members of {golden_id}: {', '.join(k for k in source_keys if k not in members)}",
                             details=strangers)
    if not members - set(source_keys):
        raise InvalidMessage("unmerge must leave at least one source record in the golden record", details=[
            ErrorDetail(loc="source_keys", msg=f"names every member of {golden_id}: leave at least one",
                        type="all_members")])


class MdmService:
    """Golden records over one SQL database. Thread-safe; mutations are serialized."""

    def __init__(
        self,
        url: str,
        matcher: Any = None,
        settings: MdmSettings | None = None,
        *,
        standardize: Callable[[Party], Any] | None = None,
        std_loader: Callable[[dict[str, Any]], Any] | None = None,
        can_link: Callable[[Any, Any], str | None] | None = None,
        migrate: bool = True,
    ) -> None:
        self.url = url
        self.settings = settings or MdmSettings()
        if migrate:
            db.upgrade(url)
        self.Session = db.session_factory(url)
        self._standardize = standardize or _default_standardize()
        self._load_std = std_loader or _default_loader()
        self._can_link = can_link or _default_can_link()
        self.matcher = matcher if matcher is not None else _default_matcher(self.settings)
        self._model_fp = _fingerprint_of(self.matcher)  # the model this service scores with (_begin_write)
        self._lock = threading.RLock()
        self._publication = PublicationLock(url)  # commit → publish, across processes (publication.py)
        self._hier_keys: set[str] | None = None
        self._history_buf: dict[str, Any] = {"ids": set(), "close": {}, "rows": []}
        self._names: Any = None  # the fuzzy name index (esbhub.mdm.search), built at the first search
        self._search_lock = threading.Lock()
        self._indexed = False  # the matcher index is loaded on first use (API processes may never need it)
        self._overrides_shown = overrides_always_win(self.settings.survivorship)
        self._seen_max = 0
        self._own: dict[str, int] = {}  # source versions this service committed since _seen_max: key → version
        self._frozen_n = 0

    # ------------------------------------------------------------------ index
    def _ensure_index(self) -> None:
        with self._lock:
            if not self._indexed:
                _tune_gc()
                self._load_index()
                self._indexed = True
                self._freeze_index(force=True)

    def _freeze_index(self, force: bool = False) -> None:
        """Move the (long-lived) matcher index out of the cyclic garbage collector's way.

        A full (generation 2) collection walks every live object: with a 1M-record index that is
        seconds, landing on whichever message happens to trigger it (seen here as 140 ms spikes
        at 6k records). ``gc.freeze()`` parks everything alive now in the permanent generation,
        so collections only walk what came after; it is redone when the index has grown by a
        tenth. Objects frozen stay reference-counted (freed when unreferenced); only cyclic
        garbage among them would wait for ``gc.unfreeze()``.
        """
        try:
            n = len(self.matcher)
        except TypeError:
            n = 0
        if force or n >= self._frozen_n * 1.1 + 1000:
            gc.freeze()
            self._frozen_n = n

    def _load_index(self) -> int:
        n = 0
        with self.Session() as s:
            self._seen_max = int(s.execute(sa.select(sa.func.max(SourceVersion.id))).scalar() or 0)
            # streamed, and only the columns the index needs: the index, not every xref row, stays in memory
            rows = s.execute(
                sa.select(Xref.source_system, Xref.source_id, Xref.std)
                .where(Xref.deleted.is_(False)).order_by(Xref.first_seen)
                .execution_options(yield_per=2000)
            )
            for system, sid, std in rows:
                self.matcher.add(source_key(system, sid), self._load_std(std))
                n += 1
        _take_flipped(self.matcher)  # the stored links were scored with these counts
        return n

    def _catch_up(self, s: Session) -> None:
        """Index source versions other processes committed since we last looked (writers are
        serialized, so version ids grow in commit order).

        The versions this service committed itself since then (:attr:`_own`) are in the index
        already: they are passed over without reading their standardized JSON. That is what
        keeps the look-out for others' versions at one statement per transaction — the id of
        the newest version need not be read back before each commit.
        """
        conn = s.connection()
        rows = conn.execute(_Q.versions_since, {"since": self._seen_max}).all()
        own, self._own = self._own, {}
        # ours: a version of a key at or below the one we wrote last (the same key twice in a
        # batch); another process's versions since are above it, as writers are serialized
        theirs = []
        for vid, system, sid, version, deleted in rows:
            key = source_key(system, sid)
            if version > own.get(key, 0):
                theirs.append((vid, key, deleted))
        stds: dict[int, Any] = {}
        wanted = [vid for vid, _k, deleted in theirs if not deleted]
        for i in range(0, len(wanted), 500):
            stds.update(conn.execute(_Q.std_of_versions, {"ids": wanted[i : i + 500]}).all())
        for vid, key, deleted in theirs:
            self.matcher.remove(key)
            if not deleted:
                self.matcher.add(key, self._load_std(stds[vid]))
        _take_flipped(self.matcher)  # the process that wrote them re-scored what they flipped
        if rows:
            self._seen_max = rows[-1][0]

    # ------------------------------------------------------------------ model
    def _begin_write(self, s: Session, *, outbox: bool = False) -> bool:
        """Start an MDM write transaction: take the writer lock (:func:`_bump_writer`) and make
        sure this service scores with the model the store's links were scored with — before
        anything is scored. Returns whether the outbox holds events not yet published (asked
        for with ``outbox``).

        The store's model is read in the statement that takes the lock, so keeping up costs
        nothing while it is this service's. When it is not (another process's rematch applied
        one since), the model is read again from ``mdm.model_path`` — where that rematch saved
        it — and scored with from this transaction on (:meth:`Matcher.set_model
        <esbhub.mdm.match.Matcher.set_model>`: the index stays); a file that does not hold that
        model is :class:`ModelMismatch`, and nothing is scored. A store that records no model
        yet (a new one, or one older than ``mdm_model``) records this service's."""
        w = _bump_writer(s, outbox=outbox)
        if w.model != self._model_fp and self._model_fp is not None:
            self._follow_model(s, w.model)
        return w.pending

    def _follow_model(self, s: Session, stored: str | None) -> None:
        """Score with the store's model ``stored`` from now on (:meth:`_begin_write`); with none
        recorded, record this service's."""
        if stored is None:
            path = self.settings.model_path
            _record_model(s, self._model_fp, "first write",  # type: ignore[arg-type]
                          path if path is not None and Path(path).exists() else None)
            return
        model, fingerprint = self._saved_model(s, stored)
        self.matcher.set_model(model)
        log.info("mdm_model_followed", model=_short(fingerprint), was=_short(self._model_fp),
                 path=str(self.settings.model_path))
        self._model_fp = fingerprint

    def _saved_model(self, s: Session, stored: str) -> tuple[Any, str]:
        """The model at ``mdm.model_path`` (the engine's defaults if there is no file) and its
        fingerprint, if it is the store's (``stored``); else :class:`ModelMismatch` saying which
        model the store has (when and by what it was applied, where it was saved), what this
        process has instead, and the ways out."""
        from esbhub.mdm.match import MatchModel

        path = Path(self.settings.model_path) if self.settings.model_path is not None else None
        model: Any = None
        unreadable: ConfigError | None = None
        if path is None or not path.exists():
            model = MatchModel()  # what a process without a model file scores with
        else:
            try:
                model = MatchModel.from_file(path)
            except ConfigError as exc:
                unreadable = exc
        fingerprint = model.fingerprint() if model is not None else None
        if fingerprint == stored:
            return model, fingerprint
        if path is None:
            holds = f"this service has no mdm.model_path (it would score with the engine's defaults, {_short(fingerprint)})"
            fix = "give it the mdm.model_path the other MDM processes use"
        elif unreadable is not None:
            holds = f"mdm.model_path {path} is not a model it can read ({unreadable.message}: " \
                + "; ".join(str(d) for d in unreadable.details) + ")"
            fix = f"put the store's model back at {path}"
        elif not path.exists():
            holds = f"there is no file at mdm.model_path {path} (it would score with the engine's defaults, " \
                f"{_short(fingerprint)})"
            fix = f"put the store's model back at {path}"
        else:
            holds = f"mdm.model_path {path} holds another model, {_short(fingerprint)}"
            fix = (f"put the store's model back at {path}, or apply the one there to every record with "
                   f"'esbhub mdm rematch --model {path}'")
        row = s.execute(_Q.applied_model).scalar_one()
        applied = f"applied by {row.applied_by} at {aware(row.applied_at).isoformat()}, " + (  # type: ignore[union-attr]
            f"saved to {row.path}" if row.path else "saved to no file")
        raise ModelMismatch(
            f"the MDM store's links were scored with match model {_short(stored)} ({applied}), but {holds}; "
            f"nothing is scored with another model than the store's: {fix}",
            details=[ErrorDetail(loc="mdm.model_path", file=str(path) if path is not None else None,
                                 type="model_mismatch",
                                 msg=f"holds model {_short(fingerprint)}, not the store's {_short(stored)}"
                                 if unreadable is None else "not a match model this process can read")])

    def _read_model(self, s: Session) -> None:
        """Before a read that scores (:meth:`explain`): the store's model, as a writer follows it
        (:meth:`_begin_write`), without taking the writer lock or recording anything."""
        if self._model_fp is None:
            return
        stored = s.execute(sa.select(_STORE_MODEL)).scalar()
        if stored is not None and stored != self._model_fp:
            with self._lock:
                self._follow_model(s, stored)

    @property
    def model_fingerprint(self) -> str | None:
        """The fingerprint of the model this service scores with (None: a matcher of another kind)."""
        return self._model_fp

    def store_model(self) -> dict[str, Any] | None:
        """The model the store's links were scored with: fingerprint, when and by what it was
        applied, where it was saved (None: no MDM write recorded one yet)."""
        with self.Session() as s:
            row = s.execute(_Q.applied_model).scalar_one_or_none()
            if row is None:
                return None
            return {"fingerprint": row.fingerprint, "applied_by": row.applied_by,
                    "applied_at": aware(row.applied_at).isoformat(), "path": row.path}  # type: ignore[union-attr]

    @property
    def standardizer(self) -> Callable[[Party], Any] | None:
        """The standardize function if it is the engine's default (importable in a worker process)."""
        return self._standardize if self._standardize is _default_standardize() else None

    @property
    def engine_can_link(self) -> bool:
        """The cannot-link rule is the engine's (:func:`esbhub.mdm.cluster.can_link`), which reads only
        the fields of :class:`esbhub.mdm.cluster.LinkView`."""
        return self._can_link is _default_can_link()

    def _std_dict(self, std: Any) -> dict[str, Any]:
        return std_json(std)

    # ----------------------------------------------------------------- ingest
    def ingest(self, party: Party, envelope_id: str, *, envelope: Envelope | None = None,
               publish: Publish | None = None) -> list[Envelope]:
        """Take one source record; return the ``party.golden.*`` events it caused (maybe none),
        published first if ``publish`` is given (:meth:`ingest_many`)."""
        return self.ingest_many([(party, envelope_id, envelope)], publish=publish)

    def ingest_many(self, items: Sequence[tuple[Party, str, Envelope | None]], *,
                    std: Mapping[str, Any] | None = None, publish: Publish | None = None) -> list[Envelope]:
        """Ingest a batch in ONE transaction (bulk load); all or nothing.

        ``std`` optionally maps envelope ids to the record's standardized form computed ahead
        (e.g. by :func:`esbhub.mdm.loader.load` in another process, while the previous batch is
        being ingested) or to a :class:`Prepared`; it must be what this service's
        ``standardize`` returns for the record.

        ``publish``: put the events on the bus before returning, in commit order with every
        other MDM writer's (:meth:`_publish_in_order`); raises when they could not be published
        — committed all the same, and kept in the outbox to go out in order later. Without it
        the caller gets the events and publishes them as it sees fit (no ordering promised).
        """
        undo: list[tuple[str, Any]] = []
        self._ensure_index()
        with self._lock, (self._publication if publish is not None else contextlib.nullcontext()):
            fresh: list[Envelope] = []  # events of versions this call commits (not a redelivery's)
            try:
                with self.Session.begin() as s:
                    # serializes MDM writers across processes (see module doc)
                    pending = self._begin_write(s, outbox=publish is not None)
                    _tune_sqlite(s)
                    self._catch_up(s)
                    events: list[Envelope] = []
                    staged: list[tuple[str, Envelope | None, str]] = []
                    seeds: set[str] = set()
                    reviews: list[tuple[str, str, Any]] = []
                    seen: set[str] = set()
                    self._hier_keys = set()  # records whose hierarchy-relevant fields changed
                    pre = self._prefetch(s, items)
                    pre["std"] = std or {}
                    rows: _Rows = pre["rows"]
                    for party, envelope_id, envelope in items:
                        if envelope_id in seen:
                            continue
                        seen.add(envelope_id)
                        with s.no_autoflush:
                            out = self._stage(s, party, envelope_id, undo, seeds, reviews, pre)
                        if isinstance(out, list):
                            events += out  # redelivery: the events it produced the first time
                        elif out is not None:
                            staged.append((envelope_id, envelope, out))
                    rows.flush(s)
                    if staged:
                        fresh = self._finish(s, staged, seeds, reviews, rows)
                        events += fresh
                    rows.flush(s)
                    _insert_rows(s, Xref, s.info.pop("mdm_new_xrefs", []))
                    s.flush()
            except BaseException:
                self._hier_keys = None
                for key, old in reversed(undo):
                    self.matcher.remove(key)
                    if old is not None:
                        self.matcher.add(key, old)
                _take_flipped(self.matcher)  # the index is back as it was
                raise
            self._hier_keys = None
            self._own.update(pre["written"])
            if publish is not None:
                self._publish_in_order(publish, events, fresh, pending)
        self._freeze_index()
        return events

    # ------------------------------------------------------------ publication
    def _publish_in_order(self, publish: Publish, events: list[Envelope], fresh: list[Envelope],
                          pending: bool) -> None:
        """Publish a transaction's events right after its commit, the publication lock still held
        (:mod:`esbhub.mdm.publication`): first what the outbox holds from before (``pending``),
        then these. If that fails, the events of the versions this transaction made (``fresh``)
        go to the outbox behind what is there, so whoever publishes next sends them first, and
        the error is raised (the bus redelivers the messages; their events come back from the
        inbox with the same ids). A redelivery's events are not kept again: they were published,
        or kept, the first time."""
        try:
            if pending:
                self._drain(publish)
            if events:
                publish(events)
        except Exception:
            if fresh:
                try:
                    self._keep(fresh)
                except Exception as exc:  # noqa: BLE001 - the original error is the one to raise
                    log.error("mdm_events_not_kept", events=len(fresh), error_type=type(exc).__name__,
                              error=str(exc)[:300])
            raise

    def _drain(self, publish: Publish, limit: int = 1000) -> int:
        """Publish the outbox's pending events in order (the publication lock held); how many."""
        n = 0
        while True:
            with self.Session.begin() as s:
                rows = s.execute(
                    sa.select(Outbox).where(Outbox.published_at.is_(None)).order_by(Outbox.id).limit(limit)
                ).scalars().all()
                if not rows:
                    return n
                publish([Envelope.model_validate(r.envelope) for r in rows])
                now = utcnow()
                for r in rows:
                    r.published_at = now
            n += len(rows)

    def _keep(self, events: list[Envelope]) -> None:
        """Put committed events that could not be published in the outbox (the lock held)."""
        with self.Session.begin() as s:
            now = utcnow()
            s.add_all([Outbox(envelope=e.model_dump(mode="json"), created_at=now) for e in events])

    @contextlib.contextmanager
    def publication(self) -> Iterator[None]:
        """Hold this service's writers and the publication lock — from before a transaction to
        the end of its publish (e.g. a bulk load, :func:`esbhub.mdm.loader.load`)."""
        with self._lock, self._publication:
            yield

    def _finish(self, s: Session, staged: list[tuple[str, Envelope | None, str]], seeds: set[str],
                reviews: list[tuple[str, str, Any]], rows: _Rows) -> list[Envelope]:
        """Re-cluster the region of every record staged in this transaction at once; the events go
        in the inbox row of the first envelope (the others point at it), so a replay of the batch
        returns them once, with the same ids."""
        now = utcnow()
        first_id, first_env, _ = staged[0]
        changes = self._recluster(s, seeds, now, actor="engine", reason=None, cause=first_id)
        self._open_tasks(s, reviews, now)
        events = self._events(s, changes, now, actor="engine", reason=None,
                              cause=first_env if len(staged) == 1 else None, cause_id=first_id)
        for i, (envelope_id, _env, outcome) in enumerate(staged):
            rows.add(Inbox, envelope_id=envelope_id, at=now, outcome=outcome if i == 0 else f"{outcome}:batched",
                     events=[_compact_event(e) for e in events] if i == 0 else [])
        return events

    def _prefetch(self, s: Session, items: Sequence[tuple[Party, str, Envelope | None]]) -> dict[str, Any]:
        """Inbox rows and current xref rows of a whole batch in a few queries."""
        ids = [e for _p, e, _x in items]
        inbox: dict[str, Any] = {}  # envelope id → (envelope_id, events)
        for i in range(0, len(ids), 500):
            for row in s.connection().execute(_Q.inbox, {"ids": ids[i : i + 500]}):
                inbox[row.envelope_id] = row
        xrefs = self._xrefs(s, {source_key(p.source_system, p.source_id) for p, _e, _x in items})
        # what staging a changed record reads — its active links, its golden record's members —
        # for the whole batch at once (staging changes neither before the end of the batch, but
        # a mid-batch flush makes new links visible: then :meth:`_stage` reads them itself)
        links: dict[str, list[_LinkRow]] = {k: [] for k in xrefs}
        keys = sorted(links)
        seen: set[int] = set()  # one object per link: a link between two records of the batch is shared
        for i in range(0, len(keys), 250):
            for link in _read_links(s, keys[i : i + 250]):
                if link.id in seen:
                    continue
                seen.add(link.id)
                for k in {link.a_key, link.b_key}:
                    if k in links:
                        links[k].append(link)
        members = self._golden_members(s, {x.golden_id for x in xrefs.values()})
        rows = _Rows()
        return {"inbox": inbox, "xref": xrefs, "arrival": None, "n": len(items), "rows": rows,
                "links": links, "members": members, "written": {}}

    def _stage(
        self, s: Session, party: Party, envelope_id: str, undo: list[tuple[str, Any]], seeds: set[str],
        reviews: list[tuple[str, str, Any]], pre: dict[str, Any],
    ) -> list[Envelope] | str | None:
        """Store one source version, re-match it, record its links; the re-clustering waits for
        the end of the transaction. Returns stored events (redelivery), None (unchanged) or the outcome."""
        done = pre["inbox"].get(envelope_id)
        if done is not None:
            return _expand_events(s, done.events)
        now = utcnow()
        ahead = pre["std"].get(envelope_id)
        if isinstance(ahead, Prepared):
            raw, content_hash, std = ahead.raw, ahead.content_hash, ahead.std
        else:
            raw = party.model_dump(mode="json", exclude_none=True)
            content_hash, std = _hash(raw), ahead
        system, sid = party.source_system, party.source_id
        key = source_key(system, sid)
        rows: _Rows = pre["rows"]
        if key in seeds:
            rows.flush(s)  # the same key twice in one batch: its first version's rows must be visible
            s.flush()
        x = pre["xref"].get(key)
        stored = {c: getattr(x, c) for c in _XREF_STAGED} if type(x) is hierarchy.XrefRow and key not in rows.xrefs \
            else None
        if x is not None and x.content_hash == content_hash:
            rows.add(Inbox, envelope_id=envelope_id, at=now, outcome="unchanged", events=[])
            return None
        try:
            std = std or self._standardize(party)
        except (ValueError, TypeError) as exc:
            raise InvalidMessage(f"party {key} cannot be standardized: {exc}") from exc
        stdj = ahead.stdj if isinstance(ahead, Prepared) and ahead.stdj is not None and ahead.std is std \
            else self._std_dict(std)
        version = (x.version + 1) if x is not None else 1
        pre["written"][key] = version
        rows.add(
            SourceVersion,
            source_system=system, source_id=sid, version=version, envelope_id=envelope_id, content_hash=content_hash,
            raw=_ser(s)(raw), std=_ser(s)(stdj), received_at=now, source_updated_at=party.source_updated_at,
            deleted=party.deleted,
        )
        # matcher: score against everything else, then index the new version
        old_std = self._load_std(x.std) if x is not None and not x.deleted else None
        undo.append((key, old_std))
        if old_std is not None:
            self.matcher.remove(key)
        results = []
        if not party.deleted:
            results = self._kept_matches(key, std)
            self.matcher.add(key, std)
        flipped = _take_flipped(self.matcher)
        old_golden = x.golden_id if x is not None else None
        old_sig = _hier_signature(x) if x is not None else None
        old_entries = set(hierarchy.index_entries(x)) if x is not None else set()
        attrs = raw.get("attributes") or {}
        if x is None:
            if pre["arrival"] is None:  # arrival order of new records: one counter bump per batch
                pre["arrival"] = next_value(s, "arrival", pre["n"])
            x = NewXref(source_system=system, source_id=sid, golden_id="", first_seen=pre["arrival"], linked_at=now)
            pre["arrival"] += 1
            pre["xref"][key] = session_xrefs(s)[key] = x
            # inserted once its golden id is known (:meth:`_apply`): one INSERT with the final row
            # instead of an ORM INSERT now and an UPDATE of ``golden_id`` later
            s.info.setdefault("mdm_new_xrefs", []).append(x)
        x.version = version
        x.content_hash = content_hash
        x.kind = party.kind
        x.name = party.name
        x.core_name = (stdj.get("core_name") or "")[:500]
        x.name_norm = (stdj.get("name_norm") or "")[:500]
        x.uscc = stdj.get("uscc")
        x.billing_account = attrs.get("billing_account")
        x.parent_billing_account = attrs.get("parent_billing_account")
        x.deleted = party.deleted
        x.raw = raw
        x.std = stdj
        x.received_at = now
        x.source_updated_at = party.source_updated_at
        if type(x) is hierarchy.XrefRow and key not in rows.xrefs:  # written by rows.flush (not the ORM)
            rows.xrefs[key] = (x, stored)
        if self._hier_keys is not None and _hier_signature(x) != old_sig:
            self._hier_keys.add(key)
        entries = set(hierarchy.index_entries(x))
        if version == 1 or entries != old_entries:  # look-up keys unchanged (most updates): nothing to rewrite
            if version > 1:
                rows.stale_keys.append({"sys_": system, "sid": sid})
            for kind, value in sorted(entries):
                rows.add(KeyIndex, kind=kind, value=value, source_system=system, source_id=sid)
        # links: supersede the old ones, keep the new with their evidence
        if version == 1:
            old_links: Sequence[_LinkRow] = []
        elif rows.flushes == 0 and key in pre["links"]:
            old_links = pre["links"][key]
        else:
            old_links = _read_links(s, [key])
        seeds.add(key)
        new_links: list[tuple[str, str, Any, dict[str, Any]]] = []
        for r in results:
            other = r.b if r.a == key else r.a
            if other == key:
                continue
            a, b = pair(key, other)
            new_links.append((a, b, r, {
                "weight": float(r.weight), "probability": float(r.probability), "decision": r.decision,
                "hard": r.hard, "evidence": _evidence_json(r.evidence),
            }))
        unchanged: set[tuple[str, str]] = set()
        by_pair = {(a, b): v for a, b, _r, v in new_links}
        for link in old_links:
            seeds.add(link.a_key if link.b_key == key else link.b_key)
            if party.deleted:  # a deleted source record keeps its links: it stays in its golden record
                continue
            same = by_pair.get((link.a_key, link.b_key))
            if (same is not None and link.actor == "engine" and (link.a_key, link.b_key) not in unchanged
                    and (link.weight, link.probability, link.decision, link.hard, link.evidence)
                    == (same["weight"], same["probability"], same["decision"], same["hard"], same["evidence"])):
                unchanged.add((link.a_key, link.b_key))  # the same score and evidence: the link stands as it is
                continue
            link.active = False
            link.superseded_at = now
            rows.superseded.append({"lid": link.id, "at": now})
        for a, b, r, v in new_links:
            other = b if a == key else a
            if (a, b) not in unchanged:
                rows.add(Link, a_key=a, b_key=b, **v, actor="engine", created_at=now, active=True, superseded_at=None)
            seeds.add(other)
            if r.decision == "review" or r.hard:
                reviews.append((a, b, r))
        if old_golden:
            known = pre["members"].get(old_golden)
            seeds |= known if known is not None else self._golden_members(s, [old_golden])[old_golden]
        if flipped:
            self._rescore_shared(s, key, flipped, seeds, reviews, rows, now)
        return "new" if version == 1 else ("deleted" if party.deleted else "changed")

    def _rescore_shared(self, s: Session, key: str, values: list[tuple[str, str]], seeds: set[str],
                        reviews: list[tuple[str, str, Any]], rows: _Rows, now: datetime) -> None:
        """Staging ``key`` made these phone numbers or organization addresses (``(kind, value)``,
        :meth:`Matcher.take_flipped <esbhub.mdm.match.Matcher.take_flipped>`) generic (held by more
        records than the model's limit) or specific again: the links between the other records
        holding one were scored on the other side of that line. Each such pair is scored again; a
        link whose weight changed is superseded by the new score (or by none, if the pair no longer
        reaches review), a pair that now does gets its link — so the outcome depends on how many
        records share a number or an address, not on the order they came in. ``key``'s own pairs were scored
        with it counted in (:meth:`Matcher._phone_probe <esbhub.mdm.match.Matcher._phone_probe>`)."""
        within, fresh = _shared_pairs(self.matcher, key, values)
        if not within:
            return
        rows.flush(s)  # this batch's links are read back below
        pairs = set(within)
        old: dict[tuple[str, str], _LinkRow] = {}
        for link in _read_links(s, sorted({k for p in within for k in p})):
            if link.actor == "engine" and (link.a_key, link.b_key) in pairs:
                old[(link.a_key, link.b_key)] = link
        for a, b in within:
            was, r = old.get((a, b)), fresh.get((a, b))
            if was is None and r is None:
                continue
            if was is not None and r is not None and float(was.weight) == float(r.weight):
                continue  # the same score: the link stands
            if was is not None:
                rows.superseded.append({"lid": was.id, "at": now})
            if r is not None:
                rows.add(Link, a_key=a, b_key=b, weight=float(r.weight), probability=float(r.probability),
                         decision=r.decision, hard=r.hard, evidence=_evidence_json(r.evidence), actor="engine",
                         created_at=now, active=True, superseded_at=None)
                if r.decision == "review" or r.hard:
                    reviews.append((a, b, r))
            seeds.update((a, b))

    # -------------------------------------------------------------- clustering
    def _kept_matches(self, key: str, std: Any, matcher: Any = None) -> list[Any]:
        """The record's match and review pairs — what links are made of — by ``matcher`` (default:
        this service's), without building the evidence of the pairs left out (when the matcher is
        the engine's)."""
        from esbhub.mdm.match import Matcher

        matcher = self.matcher if matcher is None else matcher
        if isinstance(matcher, Matcher):
            return matcher.match(key, std, decisions=_KEPT)  # type: ignore[no-any-return]
        return [r for r in matcher.match(key, std) if r.decision in _KEPT]

    def _members(self, s: Session, golden_ids: Iterable[str]) -> set[str]:
        ids = [g for g in set(golden_ids) if g]
        if not ids:
            return set()
        return {source_key(a, b) for _g, a, b in s.connection().execute(_Q.members, {"ids": ids})}

    def _golden_members(self, s: Session, golden_ids: Iterable[str]) -> dict[str, set[str]]:
        """The member keys of golden records, by golden id. Their xref rows are read whole, into
        the rows this transaction holds (:func:`esbhub.mdm.store.session_xrefs`): the region
        around a change reads its members next, and then need not read them again. What was read
        is kept in the session until :meth:`_apply` moves records (the staging of a batch and
        the region after it read the members of the same golden records: one query)."""
        cache: dict[str, set[str]] = s.info.setdefault("mdm_members", {})
        ids = {g for g in golden_ids if g}
        todo = sorted(ids - cache.keys())
        if todo:
            known = session_xrefs(s)
            for g in todo:
                cache[g] = set()
            for x in hierarchy.read_xrefs_of(s, todo):
                cache[x.golden_id].add(x.key)  # as the database has it (what the region reads)
                known.setdefault(x.key, x)  # a row this transaction holds already: that object stays
        return {g: cache[g] for g in ids}

    def _xrefs(self, s: Session, keys: Iterable[str]) -> dict[str, Xref]:
        """Xref rows by source key; rows this session already holds are not read (and their JSON
        not parsed) again (:func:`esbhub.mdm.store.session_xrefs`). Rows are read with Core as
        :class:`esbhub.mdm.hierarchy.XrefRow`: what staging changes is written by :meth:`_Rows.flush`,
        a new golden id by :meth:`_apply` — not by the ORM's unit of work."""
        known = session_xrefs(s)
        out: dict[str, Xref] = {}
        by_sys: dict[str, list[str]] = {}
        for k in keys:
            x = known.get(k)
            if x is not None:
                out[k] = x
                continue
            sys_, sid = split_key(k)
            by_sys.setdefault(sys_, []).append(sid)
        for x in hierarchy.read_xrefs(s, by_sys):
            out[x.key] = known[x.key] = x
        return out

    def _edges_touching(self, s: Session, keys: list[str]) -> tuple[list[Any], list[Any]]:
        """Match links and active constraints touching ``keys``, as Core rows (the columns
        clustering reads). Core reads do not autoflush: :meth:`_region` flushes first."""
        links: list[Any] = []
        cons: list[Any] = []
        conn = s.connection()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            for row in conn.execute(_Q.edges, {"a": chunk, "b": chunk}):
                (links if row.kind is None else cons).append(row)
        return links, cons

    def _region(self, s: Session, seeds: set[str]) -> tuple[set[str], list[Any], list[Any]]:
        """Close ``seeds`` under match links, steward 'same' pairs and golden membership. Links,
        constraints and members are read with Core (no autoflush): the session is flushed first, so
        a steward action's new links, constraints and memberships are in what it reads."""
        s.flush()
        region: set[str] = set()
        frontier = set(seeds)
        links: dict[int, Any] = {}
        cons: dict[int, Any] = {}
        self._region_xrefs: dict[str, Xref] = {}
        while frontier:
            batch = sorted(frontier - region)
            if not batch:
                break
            region |= set(batch)
            xs = self._xrefs(s, batch)
            self._region_xrefs.update(xs)
            nxt = set().union(*self._golden_members(s, {x.golden_id for x in xs.values()}).values())
            ls, cs = self._edges_touching(s, batch)
            for link in ls:
                links[link.id] = link
                nxt |= {link.a_key, link.b_key}
            for c in cs:
                cons[c.id] = c
                if c.kind == "must":
                    nxt |= {c.a_key, c.b_key}
            frontier = nxt - region
        return region, list(links.values()), list(cons.values())

    def _recluster(
        self, s: Session, seeds: set[str], now: datetime, *, actor: str, reason: str | None, cause: str | None
    ) -> list[_Change]:
        region, links, cons = self._region(s, seeds)
        xs = {k: x for k, x in self._region_xrefs.items() if k in region}
        region = set(xs)
        stds: dict[str, Any] = {}
        # the engine's own rule reads a few fields: no need to validate whole records
        load = self._load_std
        if self.engine_can_link and load == _default_loader():  # LinkView reads the engine's std JSON
            from esbhub.mdm.cluster import LinkView

            load = LinkView

        def std(k: str) -> Any:
            if k not in stds:
                stds[k] = load(xs[k].std)
            return stds[k]

        def forbids(a: str, b: str) -> str | None:
            return self._can_link(std(a), std(b))

        clusters = partition(
            region,
            [(lk.a_key, lk.b_key, lk.weight) for lk in links if lk.a_key in region and lk.b_key in region],
            [(c.a_key, c.b_key) for c in cons if c.kind == "must"],
            {pair(c.a_key, c.b_key) for c in cons if c.kind == "cannot"},
            forbids,
        )
        return self._apply(s, clusters, xs, now, actor=actor, reason=reason, cause=cause)

    def _apply(
        self, s: Session, clusters: list[frozenset[str]], xs: dict[str, Xref], now: datetime, *,
        actor: str, reason: str | None, cause: str | None,
    ) -> list[_Change]:
        """Give each cluster its golden id, survive attributes, write versions; return the changes."""
        self._history_buf = {"ids": set(), "close": {}, "rows": []}  # nothing left over from a failed call
        s.info.pop("mdm_members", None)  # records move below: golden records' members read before are stale
        keys = sorted(xs)
        founded = _read_founded(s, keys)
        prev_golden = {k: xs[k].golden_id for k in keys}
        assigned: list[tuple[Golden, frozenset[str], list[Golden]]] = []
        new_clusters: list[frozenset[str]] = []
        for c in clusters:
            gs = sorted((founded[k] for k in c if k in founded), key=lambda g: g.seq_no)
            if gs:
                assigned.append((gs[0], c, gs[1:]))
            else:
                new_clusters.append(c)
        all_overrides: dict[str, dict[str, Any]] = {}
        # a golden record's active overrides show in its attributes (rule "override") when every
        # rule lets them win: then the engine's changes read them only for records that have some
        # (steward actions, which add and remove overrides, always read them)
        shown = actor == "engine" and self._overrides_shown
        ids = [g.golden_id for g, _c, _r in assigned if g.version and not (shown and not _has_override(g.attributes))]
        for i in range(0, len(ids), 500):
            for o in s.execute(_Q.overrides, {"ids": ids[i : i + 500]}).scalars():
                all_overrides.setdefault(o.golden_id, {})[o.attribute] = o.value
        seq = next_value(s, "golden_id", len(new_clusters)) - 1 if new_clusters else 0
        new_goldens: list[Golden] = []
        for c in sorted(new_clusters, key=lambda c: min((xs[k].first_seen, k) for k in c)):
            founder = min(c, key=lambda k: (xs[k].first_seen, k))
            seq += 1
            g = Golden(
                golden_id=golden_id_for(seq), seq_no=seq, status="new", merged_into=None, version=0,
                kind=xs[founder].kind, founder=founder, attributes={}, members=[], created_at=now, updated_at=now,
            )
            new_goldens.append(g)  # inserted once written, below
            assigned.append((g, c, []))
        owner = {k: g.golden_id for g, c, _ in assigned for k in c}
        moved: list[dict[str, Any]] = []  # golden id changes of rows read with Core (XrefRow)
        changes: list[_Change] = []
        touched: set[str] = set()
        hier: set[str] = set()  # goldens whose hierarchy edges may have changed
        # retired first: their last version points at the survivor
        for g, _c, retired in assigned:
            for r in retired:
                if r.status == "retired" and r.merged_into == g.golden_id:
                    continue
                self._write_version(s, r, "retired", g.golden_id, r.attributes, [], now, "merged", actor, reason, cause)
                changes.append(_Change(r.golden_id, "merged", golden=r))
                touched.add(r.golden_id)
                hier.add(r.golden_id)
        for g, c, retired in assigned:
            members = sorted(c)
            ms = [xs[k] for k in members]
            overrides = all_overrides.get(g.golden_id, {})
            attrs = survive(
                [
                    Member(
                        key=x.key, system=x.source_system, source_id=x.source_id, raw=x.raw, std=x.std,
                        updated_at=aware(x.source_updated_at) or aware(x.received_at) or now, deleted=x.deleted,
                    )
                    for x in ms
                ],
                self.settings.survivorship,
                overrides,
            )
            status = "inactive" if all(x.deleted for x in ms) else "active"
            came_from = {prev_golden[k] for k in members if prev_golden[k] and prev_golden[k] != g.golden_id}
            lost_to = sorted({owner[k] for k in g.members or [] if k in owner and owner[k] != g.golden_id})
            absorbed = [r.golden_id for r in retired if r.golden_id in came_from or r.golden_id in touched]
            came_from_active = sorted(cf for cf in came_from if cf not in {r.golden_id for r in retired})
            same = (
                g.status == status and g.merged_into is None and list(g.members or []) == members and g.attributes == attrs
            )
            for k in members:
                x = xs[k]
                if x.golden_id != g.golden_id:
                    x.golden_id = g.golden_id
                    x.linked_at = now
                    if type(x) is hierarchy.XrefRow:
                        moved.append({"sys_": x.source_system, "sid": x.source_id, "gid": g.golden_id, "at": now})
            if same:
                continue
            if g.version == 0:
                change = "unmerged" if came_from_active else "created"
            elif g.status == "retired":
                change = "unmerged"
            elif absorbed:
                change = "merged"
            elif lost_to or came_from_active:
                change = "unmerged"
            else:
                change = "updated"
            g.core_name = (attrs.get("core_name") or {}).get("value")
            g.name = (attrs.get("name") or {}).get("value")
            g.uscc = (attrs.get("uscc") or {}).get("value")
            g.kind = (attrs.get("kind") or {}).get("value") or g.kind
            g.tier = self.settings.tiering.tier(hierarchy.revenue_of(ms))
            if (self._hier_keys is None or g.status != status or list(g.members or []) != members
                    or any(k in self._hier_keys for k in members)):
                hier.add(g.golden_id)
            self._write_version(s, g, status, None, attrs, members, now, change, actor, reason, cause)
            changes.append(_Change(
                g.golden_id, change, merged_ids=absorbed, split_into=lost_to, golden=g,
                unmerged_from=(came_from_active[0] if came_from_active and change == "unmerged" else None),
            ))
            touched.add(g.golden_id)
        # new golden records and new source records, with their final values: one Core INSERT
        # each (no INSERT now and UPDATE later, no ORM unit of work; nothing changes them later
        # in this transaction — a later read loads them from the database)
        if moved:
            s.connection().execute(_Q.move_xrefs, moved)
        _write_goldens(s, {id(g): g for g, _c, rs in assigned for g in (g, *rs) if type(g) is _GoldenRow}.values())
        _insert_rows(s, Golden, new_goldens)
        _insert_rows(s, Xref, s.info.pop("mdm_new_xrefs", []))
        self._flush_history(s)
        if touched:
            s.flush()
            hierarchy.refresh(s, hier, now)
            # obsolete open tasks whose two sides now share a golden record: only a record that
            # changed golden record can have come to share one with the other side of a task (an
            # open task's sides were apart when it was opened or last obsoleted) — most changes
            # move none, and skip the look-up
            moved_keys = [k for k in owner if prev_golden[k] != owner[k]]
            for t in (s.execute(_Q.open_tasks, {"a": moved_keys, "b": moved_keys}).scalars() if moved_keys else ()):
                ga, gb = self._golden_of_key(s, t.a_key), self._golden_of_key(s, t.b_key)
                if ga and ga == gb:
                    t.status = "obsolete"
                    t.reason = f"both in {ga}"
        return changes

    def _write_version(
        self, s: Session, g: Golden, status: str, merged_into: str | None, attrs: dict[str, Any], members: list[str],
        now: datetime, change: str, actor: str, reason: str | None, cause: str | None,
    ) -> None:
        buf = self._history_buf
        if g.golden_id in buf["ids"]:
            self._flush_history(s)  # the same golden record twice before a flush: keep the order
        buf["ids"].add(g.golden_id)
        if g.version:
            buf["close"].setdefault(now, []).append(g.golden_id)
        g.version = (g.version or 0) + 1
        g.status = status
        g.merged_into = merged_into
        g.attributes = attrs
        g.members = members
        g.updated_at = now
        buf["rows"].append(dict(
            golden_id=g.golden_id, version=g.version, change=change, status=status, merged_into=merged_into,
            attributes=attrs, members=members, valid_from=now, valid_to=None, actor=actor, reason=reason,
            cause=(cause or "")[:64] or None,
        ))

    def _flush_history(self, s: Session) -> None:
        """Close the open history versions of the golden records written (one UPDATE per 500),
        then insert their new versions (one executemany)."""
        buf = self._history_buf
        for at, ids in buf["close"].items():
            for i in range(0, len(ids), 500):
                # Core, not the session: no autoflush of golden rows half written
                s.connection().execute(_Q.close_history, {"ids": ids[i : i + 500], "at": at})
        if buf["rows"]:
            ser = _ser(s)  # the golden row took the same attributes: serialized once
            for r in buf["rows"]:
                r["attributes"] = ser(r["attributes"], True)
            insert_rows(s.connection(), GoldenHistory.__table__, buf["rows"])
        self._history_buf = {"ids": set(), "close": {}, "rows": []}

    def _golden_of_key(self, s: Session, key: str) -> str | None:
        x = session_xrefs(s).get(key)  # rows this transaction read or wrote: no identity-map look-up or load
        if x is None or (type(x) is NewXref and not x.golden_id):  # inserted once its golden id is known (_apply)
            x = s.get(Xref, split_key(key))
        return x.golden_id if x is not None else None

    def _open_tasks(self, s: Session, reviews: list[tuple[str, str, Any]], now: datetime) -> None:
        for a, b, r in reviews:
            ga, gb = self._golden_of_key(s, a), self._golden_of_key(s, b)
            if ga == gb:
                continue
            if s.execute(_Q.decided, {"a": a, "b": b}).first():
                continue
            task = s.execute(_Q.open_task, {"a": a, "b": b}).scalar_one_or_none()
            if ga is not None and gb is not None:
                pair_task = _Q.open_pair, {"ga": ga, "gb": gb, "ga2": ga, "gb2": gb}
            else:  # a comparison with None is 'IS NULL' built on the spot
                pair_task = sa.select(Task.id).where(
                    Task.status == "open",
                    sa.or_(sa.and_(Task.golden_a == ga, Task.golden_b == gb), sa.and_(Task.golden_a == gb, Task.golden_b == ga)),
                ), {}
            if task is None and s.execute(*pair_task).first():
                continue  # one open task per pair of golden records
            ev = _evidence_json(r.evidence)
            if task is None:
                s.add(Task(
                    a_key=a, b_key=b, golden_a=ga, golden_b=gb, weight=float(r.weight), probability=float(r.probability),
                    evidence=ev, status="open", created_at=now,
                ))
            else:
                task.weight, task.probability, task.evidence = float(r.weight), float(r.probability), ev
                task.golden_a, task.golden_b = ga, gb

    def _events(
        self, s: Session, changes: list[_Change], now: datetime, *, actor: str, reason: str | None,
        cause: Envelope | None, cause_id: str | None,
    ) -> list[Envelope]:
        out = []
        for ch in changes:
            g = ch.golden if ch.golden is not None else s.get(Golden, ch.golden_id)
            assert g is not None
            payload = GoldenEvent(
                golden_id=g.golden_id, seq=g.version, change=ch.change, status=g.status, merged_into=g.merged_into,  # type: ignore[arg-type]
                merged_ids=ch.merged_ids, split_into=ch.split_into, unmerged_from=ch.unmerged_from,
                valid_from=now.isoformat(), actor=actor, reason=reason, source_keys=list(g.members or []),
                attributes=g.attributes, tier=g.tier,
            )
            out.append(golden_event(payload, cause=cause, cause_id=cause_id))
        return out

    # ---------------------------------------------------------- steward actions
    def resolve(self, s: Session, ref: str, field: str | None = None) -> Golden:
        """A golden id or a source key → the active golden record (following merge pointers);
        ``field``: the argument ``ref`` came as, named by the :class:`NotFound` if it is unknown."""
        g = s.get(Golden, ref)
        if g is None and ":" in ref:
            gid = self._golden_of_key(s, ref)
            g = s.get(Golden, gid) if gid else None
        if g is None:
            raise NotFound(f"no golden record or source key '{ref}'", field=field)
        hops = 0
        while g.status == "retired" and g.merged_into and hops < 100:
            nxt = s.get(Golden, g.merged_into)
            if nxt is None:
                break
            g, hops = nxt, hops + 1
        return g

    def resolve_id(self, ref: str) -> str:
        """The active golden id for a golden id (following merge pointers) or a source key."""
        with self.Session() as s:
            return self.resolve(s, ref).golden_id

    def _audit(self, s: Session, now: datetime, actor: str, action: str, target: str, reason: str | None, *,
               touched: Iterable[str | None] = (), **detail: Any) -> None:
        """Write the audit entry of this transaction's action. ``touched``: the golden ids, source
        keys and tasks it is about; :meth:`_audit_subjects` lists them, with the golden records the
        action changed, once it has run."""
        entry = Audit(at=now, actor=actor, action=action, target=target, reason=reason, detail=detail)
        s.add(entry)
        s.info["mdm_audit"] = (entry, {t for t in touched if t})

    def _audit_subjects(self, s: Session, changes: Sequence[_Change]) -> None:
        """List what the audit entry of this transaction touched (``mdm_audit_subject``): what
        :meth:`_audit` was told, and every golden record ``changes`` changed with its members — so
        an unmerge is found by the golden id it gave the records it split off, a merge by every
        source key of both records. Nothing when the action wrote no entry (it had nothing to do)."""
        pending = s.info.pop("mdm_audit", None)
        if pending is None:
            return
        entry, touched = pending
        for ch in changes:
            g = ch.golden if ch.golden is not None else s.get(Golden, ch.golden_id)
            touched.update([ch.golden_id, *ch.merged_ids, *ch.split_into, *(g.members or [] if g is not None else [])])
            if ch.unmerged_from:
                touched.add(ch.unmerged_from)
        s.flush()  # the entry's id
        s.execute(sa.insert(AuditSubject), [{"subject": t, "audit_id": entry.id} for t in sorted(touched)])

    def _steward(self, fn: Callable[[Session, datetime], list[_Change]], actor: str, reason: str | None, op: str) -> list[Envelope]:
        # the events go to the outbox under the publication lock: every later publisher sends
        # them before its own (:meth:`_publish_in_order`), the API right away (:meth:`publish_pending`)
        with self._lock, self._publication, self.Session.begin() as s:
            self._begin_write(s)
            now = utcnow()
            changes = fn(s, now)
            self._audit_subjects(s, changes)
            events = self._events(s, changes, now, actor=actor, reason=reason, cause=None, cause_id=op)
            for e in events:
                s.add(Outbox(envelope=e.model_dump(mode="json"), created_at=now))
            return events

    def publish_pending(self, broker: Any, limit: int = 1000) -> int:
        """Publish the events waiting in the outbox (steward actions, rematch, events whose
        publish failed), in commit order, under the publication lock; returns how many.

        Raises the broker's error when it cannot publish; the events then stay pending.
        """
        with self._lock, self._publication:
            return self._drain(broker.publish_many, limit)

    def pending_events(self) -> int:
        with self.Session() as s:
            return int(s.execute(sa.select(sa.func.count()).select_from(Outbox).where(Outbox.published_at.is_(None))).scalar() or 0)

    def _set_constraint(self, s: Session, a: str, b: str, kind: str, by: str, reason: str | None, now: datetime,
                        task_id: int | None = None) -> None:
        a, b = pair(a, b)
        for c in s.execute(
            sa.select(Constraint).where(Constraint.a_key == a, Constraint.b_key == b, Constraint.active.is_(True))
        ).scalars():
            c.active = False
            c.superseded_at = now
        s.add(Constraint(a_key=a, b_key=b, kind=kind, actor=by, reason=reason, task_id=task_id, created_at=now, active=True))

    def merge(self, a: str, b: str, by: str, reason: str | None = None) -> list[Envelope]:
        """Manually merge two golden records (ids or source keys). Refused (:class:`Conflict`, nothing
        changed) across a steward's 'not same' or an engine cannot-link rule between any two of
        their members (:meth:`_refuse_hard_conflict`)."""
        if not by:
            raise InvalidMessage("a steward merge needs 'by'")

        def run(s: Session, now: datetime) -> list[_Change]:
            ga, gb = self.resolve(s, a, "a"), self.resolve(s, b, "b")
            if ga.golden_id == gb.golden_id:
                return []
            ma, mb = set(ga.members or []), set(gb.members or [])
            blocking = s.execute(
                sa.select(Constraint).where(
                    Constraint.active.is_(True), Constraint.kind == "cannot",
                    sa.or_(
                        sa.and_(Constraint.a_key.in_(ma), Constraint.b_key.in_(mb)),
                        sa.and_(Constraint.a_key.in_(mb), Constraint.b_key.in_(ma)),
                    ),
                )
            ).scalars().first()
            if blocking is not None:
                raise Conflict(
                    f"{blocking.a_key} and {blocking.b_key} were decided 'not the same' by {blocking.actor}; "
                    "decide their task 'same' first"
                )
            self._refuse_hard_conflict(s, ma, mb, f"merging {ga.golden_id} and {gb.golden_id}")
            self._set_constraint(s, ga.founder, gb.founder, "must", by, reason, now)
            self._audit(s, now, by, "merge", f"{ga.golden_id}+{gb.golden_id}", reason, a=a, b=b,
                        before={ga.golden_id: list(ma), gb.golden_id: list(mb)},
                        touched=[a, b, ga.golden_id, gb.golden_id, *ma, *mb])
            s.flush()
            changes = self._recluster(s, ma | mb, now, actor=by, reason=reason, cause="merge")
            s.flush()
            got = set(self.resolve(s, ga.founder).members or [])
            if got != ma | mb:  # all or nothing: a merge never splits a third record off
                lost = sorted((ma | mb) - got)
                why = {k: self._why_apart(s, k, got) for k in lost}
                raise Conflict(
                    f"merging {ga.golden_id} and {gb.golden_id} would split off {', '.join(lost)} "
                    f"({'; '.join(f'{k}: {v}' for k, v in why.items())}); unmerge those first"
                )
            return changes

        return self._steward(run, by, reason, "merge")

    def _refuse_hard_conflict(self, s: Session, ma: set[str], mb: set[str], what: str) -> None:
        """:class:`Conflict` if a record of ``ma`` and one of ``mb`` may never be one customer by
        the engine's cannot-link rules (:mod:`esbhub.mdm.cluster`: two different valid USCCs, a
        branch and its head office, …). Those rules are hard — clustering never joins across
        one, a steward's "same" included — so a steward action that needs such a join is refused
        before it changes anything, naming the rule and the two records, rather than recording a
        decision that cannot hold. There is no force: the way out is to correct the record at its
        source (a mistyped USCC, a branch name); then the rule no longer applies."""
        from esbhub.mdm.cluster import RULES

        xs = self._xrefs(s, ma | mb)
        stds: dict[str, Any] = {}

        def std(k: str) -> Any:
            if k not in stds:
                stds[k] = self._load_std(xs[k].std)
            return stds[k]

        for x in sorted(ma):
            for y in sorted(mb):
                if x == y or x not in xs or y not in xs:
                    continue
                reason = self._can_link(std(x), std(y))
                if reason:
                    why = RULES.get(reason)
                    raise Conflict(
                        f"{what} is refused: {x} and {y} can never be one customer ({reason}"
                        f"{': ' + why if why else ''}); correct the source record if it is wrong"
                    )

    def _why_apart(self, s: Session, key: str, others: set[str]) -> str:
        xs = self._xrefs(s, [key, *others])
        for o in sorted(others):
            if o in xs and key in xs:
                reason = self._can_link(self._load_std(xs[key].std), self._load_std(xs[o].std))
                if reason:
                    return f"{reason} with {o}"
        return "steward decision"

    def unmerge(self, golden_id: str, source_keys: Sequence[str], by: str, reason: str | None = None) -> list[Envelope]:
        """Split ``source_keys`` off ``golden_id``; they stay apart from the rest across re-matching."""
        if not by:
            raise InvalidMessage("a steward unmerge needs 'by'")

        def run(s: Session, now: datetime) -> list[_Change]:
            g = self.resolve(s, golden_id, "golden_id")
            members = set(g.members or [])
            split = set(source_keys)
            _check_unmerge(g.golden_id, list(source_keys), members)
            rest = members - split
            for c in s.execute(
                sa.select(Constraint).where(Constraint.active.is_(True), Constraint.kind == "must",
                                            sa.or_(Constraint.a_key.in_(members), Constraint.b_key.in_(members)))
            ).scalars():
                if (c.a_key in split) != (c.b_key in split):
                    c.active = False
                    c.superseded_at = now
            for x in sorted(split):
                for y in sorted(rest):
                    self._set_constraint(s, x, y, "cannot", by, reason, now)
            self._audit(s, now, by, "unmerge", g.golden_id, reason, split=sorted(split), rest=sorted(rest),
                        touched=[golden_id, g.golden_id, *members])
            s.flush()
            return self._recluster(s, members, now, actor=by, reason=reason, cause="unmerge")

        return self._steward(run, by, reason, "unmerge")

    def decide(self, task_id: int, same: bool, by: str, reason: str | None = None) -> list[Envelope]:
        """A steward's answer to a review task: the pair is (not) the same customer. Sticks. "Same"
        is refused (:class:`Conflict`) when the two golden records hold two records an engine
        cannot-link rule keeps apart."""
        if not by:
            raise InvalidMessage("a steward decision needs 'by'")

        def run(s: Session, now: datetime) -> list[_Change]:
            t = s.get(Task, task_id)
            if t is None:
                raise NotFound(f"no steward task {task_id}")
            if t.status == "decided":
                raise Conflict(f"task {task_id} was already decided by {t.decided_by}")
            if same:  # the two golden records would become one: every cross pair must be allowed
                ga, gb = self._golden_of_key(s, t.a_key), self._golden_of_key(s, t.b_key)
                if ga != gb:
                    ma = (self._members(s, [ga]) if ga else set()) | {t.a_key}
                    mb = (self._members(s, [gb]) if gb else set()) | {t.b_key}
                    self._refuse_hard_conflict(s, ma, mb, f"deciding task {task_id} 'same'")
            t.status, t.decision, t.decided_by, t.decided_at, t.reason = (
                "decided", "same" if same else "not_same", by, now, reason,
            )
            self._set_constraint(s, t.a_key, t.b_key, "must" if same else "cannot", by, reason, now, task_id=t.id)
            if not same:  # "these two customers are not the same": every cross pair, so it sticks
                ga, gb = self._golden_of_key(s, t.a_key), self._golden_of_key(s, t.b_key)
                if ga and gb and ga != gb:
                    for x in sorted(self._members(s, [ga])):
                        for y in sorted(self._members(s, [gb])):
                            if pair(x, y) != pair(t.a_key, t.b_key):
                                self._set_constraint(s, x, y, "cannot", by, reason, now, task_id=t.id)
            self._audit(s, now, by, "decide", f"task:{t.id}", reason, same=same, a=t.a_key, b=t.b_key,
                        touched=[f"task:{t.id}", t.a_key, t.b_key, self._golden_of_key(s, t.a_key),
                                 self._golden_of_key(s, t.b_key)])
            s.flush()
            seeds = {t.a_key, t.b_key} | self._members(s, [self._golden_of_key(s, t.a_key) or "", self._golden_of_key(s, t.b_key) or ""])
            return self._recluster(s, seeds, now, actor=by, reason=reason, cause=f"task:{t.id}")

        return self._steward(run, by, reason, f"task:{task_id}")

    def override(self, golden_id: str, attribute: str, value: Any, by: str, reason: str | None = None) -> list[Envelope]:
        """A steward's manual value for one attribute (``value=None`` removes the override);
        :class:`InvalidOverride` when the attribute or the value's shape is not one survivorship has."""
        problem = override_problem(attribute, value)
        if problem is not None:
            raise InvalidOverride(*problem)

        def run(s: Session, now: datetime) -> list[_Change]:
            g = self.resolve(s, golden_id)
            for o in s.execute(
                sa.select(Override).where(Override.golden_id == g.golden_id, Override.attribute == attribute,
                                          Override.active.is_(True))
            ).scalars():
                o.active = False
            if value is not None:
                s.add(Override(golden_id=g.golden_id, attribute=attribute, value=value, actor=by, reason=reason, at=now))
            self._audit(s, now, by, "override", f"{g.golden_id}.{attribute}", reason, value=value,
                        touched=[golden_id, g.golden_id, *(g.members or [])])
            s.flush()
            return self._recluster(s, set(g.members or []), now, actor=by, reason=reason, cause="override")

        return self._steward(run, by, reason, "override")

    def rematch(self, model: Any = None, *, matcher: Any = None, batch: int = 2000) -> list[Envelope]:
        """Re-run matching over all current records with ``model`` (e.g. after retraining) and
        re-cluster everything; the model is then the store's, for every process.

        Without ``model`` (or ``matcher``), the hub's: the model at ``mdm.model_path`` — what a
        process starting now would load — or, without a file there, this service's. Steward
        decisions (constraints) and overrides stand; golden ids stay with their founders.

        The model becomes the store's in the same transaction: it is recorded in ``mdm_model``
        and saved at ``mdm.model_path`` (:class:`_ModelFile`: written before any work, renamed
        into place just before the commit, put back if the commit fails), so every other
        process's next write transaction scores with it (:meth:`_begin_write`) and a process
        started later loads it. ``batch``: links written per ``executemany``.
        """
        with self._lock:
            if matcher is None:
                from esbhub.mdm.match import Matcher, MatchModel

                if model is None:
                    path = self.settings.model_path
                    if path is not None and Path(path).exists():
                        model = MatchModel.from_file(Path(path))
                    else:
                        model = getattr(self.matcher, "model", None)
                if model is None:
                    raise InvalidMessage("rematch needs a model or a matcher")
                matcher = Matcher(model)
            fingerprint = _fingerprint_of(matcher)
            saving = None
            if fingerprint is not None and self.settings.model_path is not None:
                saving = _ModelFile(Path(self.settings.model_path), matcher.model.to_json())
                saving.stage()
            try:
                events, newest = self._rematch(matcher, fingerprint, saving, max(1, batch))
            except BaseException:
                if saving is not None:
                    saving.undo()
                raise
            self.matcher = matcher
            self._model_fp = fingerprint
            self._seen_max = int(newest or 0)
            self._indexed = True
            return events

    def _rematch(self, matcher: Any, fingerprint: str | None, saving: _ModelFile | None,
                 batch: int) -> tuple[list[Envelope], int | None]:

        with self._publication, self.Session.begin() as s:  # its events go to the outbox
            _bump_writer(s)  # the model is this transaction's to set, not to follow
            now = utcnow()
            conn = s.connection()
            stds = {source_key(a, b): self._load_std(std) for a, b, std in conn.execute(
                sa.select(Xref.source_system, Xref.source_id, Xref.std).where(Xref.deleted.is_(False))
                .order_by(Xref.first_seen))}
            for k, v in stds.items():
                matcher.add(k, v)
            _take_flipped(matcher)  # every pair is scored below, all records indexed
            s.execute(sa.update(Link).where(Link.active.is_(True)).values(active=False, superseded_at=now))
            seen: set[tuple[str, str]] = set()
            reviews = []
            rows = _Rows()
            pending = 0
            for k, v in stds.items():
                for r in self._kept_matches(k, v, matcher):
                    other = r.b if r.a == k else r.a
                    if other == k:
                        continue
                    p = pair(k, other)
                    if p in seen:
                        continue
                    seen.add(p)
                    rows.add(Link, a_key=p[0], b_key=p[1], weight=float(r.weight), probability=float(r.probability),
                             decision=r.decision, hard=r.hard, evidence=_evidence_json(r.evidence), actor="engine",
                             created_at=now, active=True, superseded_at=None)
                    pending += 1
                    if r.decision == "review" or r.hard:
                        reviews.append((p[0], p[1], r))
                if pending >= batch:
                    rows.flush(s)
                    pending = 0
            rows.flush(s)
            all_keys = {source_key(a, b) for a, b in conn.execute(sa.select(Xref.source_system, Xref.source_id))}
            changes = self._recluster(s, all_keys, now, actor="engine", reason="rematch", cause="rematch")
            self._open_tasks(s, reviews, now)
            self._audit(s, now, "engine", "rematch", "*", None, links=len(seen), changes=len(changes),
                        model=fingerprint, touched=["*"])
            self._audit_subjects(s, [])  # "*": every record; which golden records changed, their history says
            events = self._events(s, changes, now, actor="engine", reason="rematch", cause=None, cause_id="rematch")
            for e in events:
                s.add(Outbox(envelope=e.model_dump(mode="json"), created_at=now))
            newest = s.execute(sa.select(sa.func.max(SourceVersion.id))).scalar()
            if fingerprint is not None:
                _record_model(s, fingerprint, "rematch", saving.path if saving is not None else None)
                s.flush()
                if saving is not None:
                    saving.install()  # last before the commit: the file and the record change together
        return events, newest

    # ------------------------------------------------------------------ reads
    def golden(self, golden_id: str) -> dict[str, Any]:
        with self.Session() as s:
            g = s.get(Golden, golden_id)
            if g is None:
                raise NotFound(f"no golden record '{golden_id}'")
            return self._golden_dict(g)

    def _golden_dict(self, g: Golden) -> dict[str, Any]:
        return {
            "golden_id": g.golden_id, "status": g.status, "merged_into": g.merged_into, "version": g.version,
            "kind": g.kind, "name": g.name, "uscc": g.uscc, "tier": g.tier, "founder": g.founder,
            "attributes": g.attributes, "source_keys": list(g.members or []),
            "created_at": aware(g.created_at).isoformat(), "updated_at": aware(g.updated_at).isoformat(),  # type: ignore[union-attr]
        }

    def partition_now(self) -> set[frozenset[str]]:
        """The current partition of source keys into golden records (for checks and tests)."""
        with self.Session() as s:
            out: dict[str, set[str]] = {}
            for x in s.execute(sa.select(Xref)).scalars():
                out.setdefault(x.golden_id, set()).add(x.key)
            return {frozenset(v) for v in out.values()}

    def snapshot(self) -> dict[str, Any]:
        """Golden records, xref and hierarchy edges as they are now (ids, status, members,
        attributes; the current edges between golden records): the 'state'."""
        with self.Session() as s:
            goldens = {
                g.golden_id: (g.status, g.merged_into, tuple(g.members or []), _canon(g.attributes), g.tier)
                for g in s.execute(sa.select(Golden)).scalars()
            }
            xref = {x.key: x.golden_id for x in s.execute(sa.select(Xref)).scalars()}
            edges = sorted(tuple(r) for r in s.execute(
                sa.select(Hierarchy.parent_golden, Hierarchy.child_golden, Hierarchy.kind).where(Hierarchy.active.is_(True))))
            return {"goldens": goldens, "xref": xref, "hierarchy": edges}

    def get_customer(self, golden_id: str) -> dict[str, Any]:
        """The 360 view: golden values with lineage, source records, linked items, hierarchy, tier."""
        with self.Session() as s:
            g = s.get(Golden, golden_id)
            if g is None:
                raise NotFound(f"no golden record '{golden_id}'")
            out = self._golden_dict(g)
            if g.status == "retired":
                out["current"] = self.resolve(s, golden_id).golden_id
                return out
            xs = list(self._xrefs(s, g.members or []).values())
            out["source_records"] = [
                {
                    "source_system": x.source_system, "source_id": x.source_id, "key": x.key, "version": x.version,
                    "deleted": x.deleted, "received_at": aware(x.received_at).isoformat(),  # type: ignore[union-attr]
                    "source_updated_at": x.source_updated_at.isoformat() if x.source_updated_at else None,
                    "linked_at": aware(x.linked_at).isoformat(), "record": x.raw,  # type: ignore[union-attr]
                }
                for x in sorted(xs, key=lambda x: x.key)
            ]
            retired = {golden_id}
            frontier = [golden_id]
            while frontier:
                more = s.execute(sa.select(Golden.golden_id).where(Golden.merged_into.in_(frontier))).scalars().all()
                frontier = [m for m in more if m not in retired]
                retired |= set(frontier)
            conds = [GoldenLink.golden_id.in_(retired)]
            for x in xs:
                conds.append(sa.and_(GoldenLink.source_system == x.source_system, GoldenLink.source_id == x.source_id))
            linked: dict[str, list[dict[str, Any]]] = {}
            for gl in s.execute(sa.select(GoldenLink).where(sa.or_(*conds)).order_by(GoldenLink.id)).scalars():
                via = source_key(gl.source_system, gl.source_id) if gl.source_system else gl.golden_id
                linked.setdefault(gl.kind, []).append(
                    {"ref": gl.ref, "item": _link_item(gl.ref, via), "data": gl.data,
                     "at": aware(gl.at).isoformat(), "via": via}  # type: ignore[union-attr]
                )
            out["linked"] = linked
            out["hierarchy"] = hierarchy.edges_of(s, golden_id)
            below = hierarchy.subtree(s, golden_id)
            rev = hierarchy.revenue_of(xs) or 0.0
            provinces = {p for x in xs if (p := (x.std or {}).get("province") or (x.raw or {}).get("province"))}
            for gid in below:
                sub = list(self._xrefs(s, (s.get(Golden, gid).members or [])).values())  # type: ignore[union-attr]
                rev += hierarchy.revenue_of(sub) or 0.0
                provinces |= {p for x in sub if (p := (x.std or {}).get("province") or (x.raw or {}).get("province"))}
            out["revenue"] = hierarchy.revenue_of(xs)
            out["group_revenue"] = rev if below else out["revenue"]
            out["group_tier"] = self.settings.tiering.tier(out["group_revenue"])
            out["provinces"] = sorted({p for x in xs if (p := (x.std or {}).get("province") or (x.raw or {}).get("province"))})
            out["group_provinces"] = sorted(provinces)
            out["open_tasks"] = [
                t.id for t in s.execute(
                    sa.select(Task).where(Task.status == "open", sa.or_(Task.golden_a == golden_id, Task.golden_b == golden_id))
                ).scalars()
            ]
            return out

    def link(self, kind: str, ref: str, data: dict[str, Any] | None = None, *, golden_id: str | None = None,
             source: tuple[str, str] | None = None) -> None:
        """Attach an account / service / bill / payment / alarm to a customer (idempotent on kind+ref)."""
        self.link_many(kind, [(ref, {"golden_id": golden_id, "source": source})], data)

    def link_many(self, kind: str, links: Sequence[tuple[str, Mapping[str, Any]]],
                  data: dict[str, Any] | None = None) -> None:
        """:meth:`link` of several refs — ``(ref, {"golden_id": …} or {"source": (system, id)})`` —
        with the same data, in one transaction: a message's items (a customer's circuits) all or none."""
        for _ref, whose in links:
            if not whose.get("golden_id") and not whose.get("source"):
                raise InvalidMessage("link needs golden_id or source")
        with self.Session.begin() as s:
            now = utcnow()
            for ref, whose in links:
                gl = s.execute(sa.select(GoldenLink).where(GoldenLink.kind == kind, GoldenLink.ref == ref)
                               ).scalar_one_or_none()
                if gl is None:
                    gl = GoldenLink(kind=kind, ref=ref)
                    s.add(gl)
                source = whose.get("source")
                gl.golden_id = whose.get("golden_id")
                gl.source_system, gl.source_id = source if source else (None, None)
                gl.data = data or {}
                gl.at = now

    def xref(self, system: str, source_id: str) -> dict[str, Any]:
        with self.Session() as s:
            x = s.get(Xref, (system, source_id))
            if x is None:
                raise NotFound(f"no source record {system}:{source_id}")
            g = self.resolve(s, x.golden_id)
            return {
                "source_system": system, "source_id": source_id, "golden_id": g.golden_id, "status": g.status,
                "version": x.version, "deleted": x.deleted, "linked_at": aware(x.linked_at).isoformat(),  # type: ignore[union-attr]
            }

    def export_xref(self) -> Iterable[dict[str, Any]]:
        with self.Session() as s:
            for x in s.execute(sa.select(Xref).order_by(Xref.source_system, Xref.source_id)).scalars():
                yield {"source_system": x.source_system, "source_id": x.source_id, "golden_id": x.golden_id,
                       "version": x.version, "deleted": x.deleted}

    def history(self, golden_id: str) -> list[dict[str, Any]]:
        with self.Session() as s:
            rows = s.execute(
                sa.select(GoldenHistory).where(GoldenHistory.golden_id == golden_id).order_by(GoldenHistory.version)
            ).scalars().all()
            if not rows:
                raise NotFound(f"no golden record '{golden_id}'")
            return [self._hist_dict(h) for h in rows]

    def _hist_dict(self, h: GoldenHistory) -> dict[str, Any]:
        return {
            "golden_id": h.golden_id, "version": h.version, "change": h.change, "status": h.status,
            "merged_into": h.merged_into, "attributes": h.attributes, "source_keys": list(h.members or []),
            "valid_from": aware(h.valid_from).isoformat(),  # type: ignore[union-attr]
            "valid_to": aware(h.valid_to).isoformat() if h.valid_to else None,
            "actor": h.actor, "reason": h.reason, "cause": h.cause,
        }

    def as_of(self, golden_id: str, ts: datetime) -> dict[str, Any] | None:
        """The golden record as it was at ``ts`` (None if it did not exist yet)."""
        ts = aware(ts)  # type: ignore[assignment]
        with self.Session() as s:
            h = s.execute(
                sa.select(GoldenHistory)
                .where(GoldenHistory.golden_id == golden_id, GoldenHistory.valid_from <= ts,
                       sa.or_(GoldenHistory.valid_to.is_(None), GoldenHistory.valid_to > ts))
                .order_by(GoldenHistory.version.desc())
            ).scalars().first()
            return self._hist_dict(h) if h is not None else None

    def tasks(self, status: str | None = "open", limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        with self.Session() as s:
            q = sa.select(Task).order_by(Task.weight.desc(), Task.id).limit(limit).offset(offset)
            if status:
                q = q.where(Task.status == status)
            return [self._task_dict(s, t, full=False) for t in s.execute(q).scalars()]

    def task(self, task_id: int) -> dict[str, Any]:
        with self.Session() as s:
            t = s.get(Task, task_id)
            if t is None:
                raise NotFound(f"no steward task {task_id}")
            return self._task_dict(s, t, full=True)

    def _task_dict(self, s: Session, t: Task, *, full: bool) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": t.id, "a": t.a_key, "b": t.b_key, "golden_a": t.golden_a, "golden_b": t.golden_b, "weight": t.weight,
            "probability": t.probability, "status": t.status, "decision": t.decision, "decided_by": t.decided_by,
            "decided_at": t.decided_at.isoformat() if t.decided_at else None, "reason": t.reason,
            "created_at": aware(t.created_at).isoformat(),  # type: ignore[union-attr]
        }
        if full:
            d["evidence"] = t.evidence
            xs = self._xrefs(s, [t.a_key, t.b_key])
            d["side_by_side"] = {
                "a": xs[t.a_key].raw if t.a_key in xs else None,
                "b": xs[t.b_key].raw if t.b_key in xs else None,
                "a_std": xs[t.a_key].std if t.a_key in xs else None,
                "b_std": xs[t.b_key].std if t.b_key in xs else None,
            }
        return d

    def audit(
        self, limit: int = 100, *, target: str | None = None, actor: str | None = None, action: str | None = None,
        since: datetime | None = None, until: datetime | None = None, before: int | None = None,
    ) -> list[dict[str, Any]]:
        """The audit trail, newest first (by ``id``, which is commit order): ``limit`` entries with an
        ``id`` below ``before``, of ``actor`` (as recorded, e.g. ``key:<key id>:<name>``, ``engine``),
        of ``action`` (decide, merge, unmerge, override, rematch), at or after ``since`` and before
        ``until`` (naive times are UTC), that touched ``target`` — a golden id (retired ones too:
        the merge that retired it), a source key, ``task:<id>``, or ``*`` for a rematch. Each filter
        is answered through an index (``mdm_audit_subject``'s key, ``(actor, id)``, ``(action, id)``,
        ``at``)."""
        q = sa.select(Audit)
        if target is not None:  # the record's entries newest first straight from the subject key
            key = AuditSubject.audit_id
            q = q.join(AuditSubject, AuditSubject.audit_id == Audit.id).where(AuditSubject.subject == target)
        else:
            key = Audit.id
        if actor is not None:
            q = q.where(Audit.actor == actor)
        if action is not None:
            q = q.where(Audit.action == action)
        if since is not None:
            q = q.where(Audit.at >= as_utc(since))
        if until is not None:
            q = q.where(Audit.at < as_utc(until))
        if before is not None:
            q = q.where(key < before)
        with self.Session() as s:
            return [
                {"id": a.id, "at": aware(a.at).isoformat(), "actor": a.actor, "action": a.action,  # type: ignore[union-attr]
                 "target": a.target, "reason": a.reason, "detail": a.detail}
                for a in s.execute(q.order_by(key.desc()).limit(limit)).scalars()
            ]

    def explain(self, a: str, b: str) -> dict[str, Any]:
        """Per-field evidence for two source keys or golden ids (best-scoring member pair)."""
        self._ensure_index()  # term frequencies come from the index
        with self.Session() as s:
            self._read_model(s)
            def keys(ref: str, field: str) -> list[str]:
                if s.get(Golden, ref) is not None:
                    return list(self.resolve(s, ref, field).members or [])
                if self._golden_of_key(s, ref) is None:
                    raise NotFound(f"no golden record or source key '{ref}'", field=field)
                return [ref]

            ka, kb = keys(a, "a"), keys(b, "b")
            xs = self._xrefs(s, ka + kb)
            best = None
            for x in ka:
                for y in kb:
                    if x == y:
                        continue
                    r = self.matcher.score(self._load_std(xs[x].std), self._load_std(xs[y].std))
                    if best is None or r.weight > best[0].weight:
                        best = (r, x, y)
            if best is None:
                empty = a if not ka else b if not kb else None
                raise InvalidMessage(f"nothing to compare: '{empty}' has no source record" if empty else
                                     f"nothing to compare: '{a}' and '{b}' are one and the same source record {ka[0]}")
            r, x, y = best
            forbid = self._can_link(self._load_std(xs[x].std), self._load_std(xs[y].std))
            out = r.model_dump(mode="json")
            out.update({"a": x, "b": y, "cannot_link": forbid})
            return out

    # ----------------------------------------------------------------- search
    def _name_index(self, s: Session) -> Any:
        """The fuzzy name index (:class:`esbhub.mdm.search.NameIndex`), brought up to what the store
        has committed: loaded whole once, then only the golden records changed since (by anyone)."""
        from esbhub.mdm.search import NameIndex
        from esbhub.mdm.standardize import fold_many

        with self._search_lock:
            if self._names is None:
                self._names = NameIndex(fold_many)
        with self._names.lock:
            self._names.refresh(s.connection())
        return self._names

    def _current_ids(self, s: Session, golden_ids: Iterable[str]) -> dict[str, str]:
        """Golden id → the golden record it is now, merge pointers followed as :meth:`resolve`
        does, for many ids in one statement per hop; unknown ids are left out."""
        out: dict[str, str] = {}
        todo = {g: g for g in golden_ids if g}  # id asked for → where its pointers lead so far
        came: dict[str, str] = {}  # id asked for → the retired record whose pointer led there
        for _hop in range(101):
            if not todo:
                break
            rows = {gid: (status, merged) for gid, status, merged in
                    s.connection().execute(_Q.golden_status, {"ids": sorted(set(todo.values()))})}
            step: dict[str, str] = {}
            for asked, at in todo.items():
                if at not in rows:  # unknown; or a pointer to nowhere: the record it came from
                    if at != asked:
                        out[asked] = came[asked]
                    continue
                status, merged = rows[at]
                if status == "retired" and merged and _hop < 100:
                    step[asked] = merged
                    came[asked] = at
                else:
                    out[asked] = at
            todo = step
        return out

    def search(self, q: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Find customers by source key, USCC, phone (in any written form) or billing account —
        exact hits, score 100, by golden id — or, when none, by name: fuzzy over core names and
        names, best first (:mod:`esbhub.mdm.search`). Every look-up is an index probe; the fuzzy
        one scores only candidates of an in-memory index that follows the store's commits."""
        import unicodedata

        from esbhub.mdm.standardize import fold, phone_forms
        from esbhub.mdm.standardize.codes import clean_code

        limit = limit or self.settings.search_limit
        q = unicodedata.normalize("NFKC", (q or "").strip())
        if not q:
            return []
        with self.Session() as s:
            conn = s.connection()
            exact: dict[str, str] = {}  # golden id as found → the look-up that found it first

            def found(stmt: Any, params: dict[str, Any], on: str) -> None:
                for (gid,) in conn.execute(stmt, params):
                    exact.setdefault(gid, on)

            if ":" in q:
                sys_, sid = split_key(q)
                found(_Q.golden_of_source, {"sys_": sys_, "sid": sid}, "source_key")
            code = clean_code(q) or ""
            if len(code) == 18 and code.isalnum():
                found(_Q.golden_of_uscc, {"uscc": code}, "uscc")
            phones = phone_forms(q)
            if phones:
                found(_Q.golden_of_phone, {"phones": phones}, "phone")
            found(_Q.golden_of_account, {"ba": q}, "billing_account")
            ranked: list[tuple[str, float, str]] = []
            if exact:
                now = self._current_ids(s, exact)
                hits: dict[str, str] = {}
                for gid, on in exact.items():
                    if gid in now:
                        hits.setdefault(now[gid], on)
                ranked = [(gid, 100.0, hits[gid]) for gid in sorted(hits)[:limit]]
            else:
                try:
                    core_q = self._standardize(Party(source_system="search", source_id="q", name=q)).core_name or q
                except Exception:  # noqa: BLE001 - a query that does not standardize is searched verbatim
                    core_q = q
                index = self._name_index(s)
                with index.lock:
                    ranked = [(h.golden_id, h.score, h.on) for h in index.search(fold(core_q), fold(q), limit)]
            shown = {r.golden_id: r for r in conn.execute(_Q.golden_shown, {"ids": [g for g, _s, _o in ranked]})} \
                if ranked else {}
            return [{"golden_id": gid, "name": g.name, "uscc": g.uscc, "tier": g.tier, "score": round(score, 1),
                     "matched_on": on, "source_keys": list(g.members or [])}
                    for gid, score, on in ranked if (g := shown.get(gid)) is not None]


# --------------------------------------------------------------------- bus wiring
_services: dict[tuple[str, str], MdmService] = {}
_services_lock = threading.Lock()


def service_for(settings: Any) -> MdmService:
    """One MdmService per database URL and MDM settings in this process, with the ``mdm`` section
    of the hub settings ``settings`` (:class:`esbhub.config.Settings`; ``model_path`` defaults to
    DATA_DIR/mdm_model.json).

    Keyed by the settings too, not the URL alone: a process part whose settings came from
    elsewhere (an adapter reading the environment) must not hand its service — and its tiers and
    survivorship rules — to the process's ingesting consumer, whichever of them came first."""
    url = settings.effective_database_url
    mdm = mdm_settings_of(settings)
    key = (url, mdm.model_dump_json())
    with _services_lock:
        svc = _services.get(key)
        if svc is None:
            svc = _services[key] = MdmService(url, settings=mdm)
        return svc

"""Initial load, set at a time: the MDM pipeline over a whole load in one pass.

:func:`esbhub.mdm.loader.load_parties` (``esbhub mdm load``) uses this when the store holds no
source record yet — the initial load of a new deployment. It runs the same steps as
:meth:`MdmService.ingest_many <esbhub.mdm.service.MdmService.ingest_many>`, with the same
functions, but each step once over the whole load instead of once per batch:

1. **stage** every record in arrival order, as the per-batch path does: standardize (ahead, in
   worker processes), store the source version and its look-up keys, score it against the
   in-memory index of the records before it (:meth:`Matcher.match <esbhub.mdm.match.Matcher.match>`)
   and index it, store its links with their evidence. A source key seen again in the load is a
   new version: its links are superseded, as in the per-batch path; an unchanged one is skipped;
2. **cluster** all records at once with :func:`esbhub.mdm.service.partition` — the function the
   per-batch path applies to each affected region. It is a pure function of the records and
   their links, local to each connected component, so the partition is the one the per-batch
   path reaches after the last batch (the order-independence property tests hold the
   per-batch path to exactly that);
3. **golden records**: one per cluster, founded by its oldest member (arrival order), ids in
   founding order; attributes by :func:`esbhub.mdm.survivorship.survive`, tier by revenue —
   each golden record is survived once, with all its members, instead of once per batch that
   touched it; one history version ``created`` and one ``party.golden.created`` event each;
4. **hierarchy** edges by :func:`esbhub.mdm.hierarchy.compute_edges` over every golden
   record, reading from memory (:class:`_Lookup`) instead of the database;
5. **steward tasks** for review links whose two sides ended in different golden records, one
   per pair of golden records.

What differs from loading the same records batch by batch is only what the batches would
have made and unmade on the way: no golden id is created and then retired by a later merge
(ids are dense, in founding order), no intermediate ``merged`` / ``updated`` versions or events,
no task opened and later made obsolete. Every write is a Core ``executemany`` (no ORM unit of
work), and nothing is read back from the database.

The load is ONE transaction: a failure leaves the store empty (and the matcher index as it
was), never half loaded. It holds the MDM writer lock (:func:`esbhub.mdm.service._bump_writer`)
meanwhile — other MDM writers wait, as for any transaction. Events are published after the
commit (:func:`esbhub.mdm.loader.load_parties` holds the publication lock from before the
transaction to the last of them, :mod:`esbhub.mdm.publication`); each founder's inbox row keeps its golden record's ``created`` event, so loading the
same file again returns them (and changes nothing). ``bench/mdm_load.py`` compares this path
with the per-batch one on the same records (same partition, golden attributes, links, look-up
keys and hierarchy).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.orm import Session

from esbhub.bus.envelope import Envelope
from esbhub.db import json_dumps
from esbhub.errors import InvalidMessage
from esbhub.mdm import hierarchy
from esbhub.mdm.cluster import LinkView
from esbhub.mdm.events import GoldenEvent, golden_event
from esbhub.mdm.match import evidence_json
from esbhub.mdm.store import (
    Golden,
    GoldenHistory,
    Hierarchy,
    Inbox,
    KeyIndex,
    Link,
    SourceVersion,
    Stored,
    Task,
    Xref,
    aware,
    golden_id_for,
    insert_rows,
    next_value,
    pair,
    source_key,
    stored,
    utcnow,
)
from esbhub.mdm.survivorship import Member, survive
from esbhub.schemas.party import Party

log = structlog.get_logger("esbhub.mdm.bulk")

CHUNK = 2000
"""Rows per ``executemany`` and golden records per survivorship chunk."""

BULK_CACHE_KIB = 1_048_576
"""SQLite page cache of the loading connection (1 GiB): the load writes the store's tables in one
transaction; dirty pages beyond the cache are spilled to the WAL (and read back from it)."""

_HIER_STD = ("branch", "is_group", "core_name", "head_office_name_norm", "uscc", "name_norm", "parent_source_id")
"""The standardized fields :func:`esbhub.mdm.hierarchy.compute_edges` reads."""


class _Rec:
    """One source key of the load: its current version as its xref row will hold it. The raw and
    standardized JSON are kept serialized, as the text the columns store (a fraction of the
    memory of the parsed dicts)."""

    __slots__ = ("billing_account", "content_hash", "core_name", "deleted", "first_seen", "golden_id",
                 "kind", "name", "name_norm", "parent_billing_account", "raw", "received_at", "sid",
                 "source_updated_at", "std", "system", "uscc", "version", "view")

    def __init__(self, system: str, sid: str, first_seen: int) -> None:
        self.system, self.sid, self.first_seen = system, sid, first_seen
        self.version = 0
        self.golden_id = ""


class _HierRec:
    """A record as :func:`esbhub.mdm.hierarchy.compute_edges` reads an xref row."""

    __slots__ = ("billing_account", "deleted", "golden_id", "key", "name_norm", "parent_billing_account", "raw",
                 "rec", "source_id", "source_system", "std")

    def __init__(self, key: str, r: _Rec, std: dict[str, Any], raw: dict[str, Any]) -> None:
        """``std`` / ``raw``: the record's :data:`_HIER_STD` fields and its ``parent_source_id``;
        the rest of its standardized fields stay serialized in ``r`` (:meth:`_Lookup.std_of`)."""
        self.key, self.source_system, self.source_id = key, r.system, r.sid
        self.golden_id, self.deleted, self.name_norm = r.golden_id, r.deleted, r.name_norm
        self.billing_account, self.parent_billing_account = r.billing_account, r.parent_billing_account
        self.std, self.raw, self.rec = std, raw, r


class _Lookup(hierarchy.Lookup):
    """:class:`esbhub.mdm.hierarchy.Lookup` answered from the load's records, in the database
    query's order (by value, then source key)."""

    def __init__(self, recs: Iterable[_HierRec], index: dict[tuple[str, str], list[tuple[str, str]]]) -> None:
        self._rows: dict[tuple[str, str], _HierRec] = {}
        self._col: dict[str, dict[str, list[_HierRec]]] = {"core_name": {}, "uscc": {}, "billing_account": {}}
        for x in recs:
            self._rows[(x.source_system, x.source_id)] = x
            # the xref columns: core_name (cut to its column's length), uscc, billing_account
            for col, v in (("core_name", (x.std.get("core_name") or "")[:500]), ("uscc", x.std.get("uscc")),
                           ("billing_account", x.billing_account)):
                if v:
                    self._col[col].setdefault(v, []).append(x)
        for by in self._col.values():
            for lst in by.values():
                lst.sort(key=lambda x: (x.source_system, x.source_id))
        self._index = index
        self.heads_named: dict[tuple[str, str], tuple[list[str], list[str]]] = {}

    def std_of(self, x: Any) -> dict[str, Any]:
        """All of a record's standardized fields, parsed from the JSON its :class:`_Rec` keeps: a
        hierarchy view keeps only :data:`_HIER_STD` (a million of them are held at once), and
        few records need more (group ties, :func:`esbhub.mdm.hierarchy._group_support`)."""
        return orjson.loads(x.rec.std)  # type: ignore[no-any-return]

    def xrefs_by(self, col: str, values: Iterable[str]) -> list[Any]:
        by = self._col[col]
        return [x for v in sorted({v for v in values if v}) for x in by.get(v, [])]

    def index_keys(self, kind: str, values: Iterable[str]) -> list[tuple[str, str]]:
        return [k for v in sorted({v for v in values if v}) for k in sorted(self._index.get((kind, v), []))]

    def get_many(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        return {k: x for k in dict.fromkeys(keys) if (x := self._rows.get(k)) is not None}

    def prefetch(self, members: Iterable[Any]) -> None:
        return None


class BulkLoad:
    """One set-at-a-time load into an empty store; see the module doc. Use :meth:`open`."""

    def __init__(self, svc: Any, s: Session) -> None:
        self.svc, self.s = svc, s
        self.recs: dict[str, _Rec] = {}
        self.envelopes: list[tuple[str, str, str]] = []  # (envelope id, outcome, source key) in arrival order
        self.seen: set[str] = set()
        self.edges: dict[tuple[str, str], float] = {}  # active engine match links → weight
        self.reviews: dict[tuple[str, str], tuple[float, float, list[dict[str, Any]]]] = {}  # review / hard links
        self.touching: dict[str, list[tuple[str, str]]] = {}  # key → pairs of its links (a key seen again)
        self.index: dict[tuple[str, str], list[tuple[str, str]]] = {}  # hierarchy look-up keys → source keys
        self.rows: dict[Any, list[dict[str, Any]]] = {SourceVersion.__table__: [], Link.__table__: []}
        self.key_rows: dict[tuple[str, str, str, str], None] = {}  # look-up keys (kind, value, system, id)
        self.added: list[str] = []  # keys put in the matcher index (undone if the load fails)
        self.records = self.versions = 0
        self.timings: dict[str, float] = {"stage": 0.0}
        self.max_version = 0
        self.link_id = 0  # the load numbers its links (the table is empty): supersede by primary key
        self.link_ids: dict[tuple[str, str], int] = {}  # active link → its id
        self.indexes: list[tuple[str, str]] = []  # (name, CREATE statement) dropped for the load (SQLite)
        self._frozen_n = 0
        self.light_views = svc.engine_can_link  # the engine's rule reads a few fields: keep only those
        self.sqlite = s.connection().dialect.name == "sqlite"

    # ------------------------------------------------------------------ open
    @classmethod
    @contextlib.contextmanager
    def open(cls, svc: Any) -> Iterator[BulkLoad | None]:
        """A bulk load in one transaction if the store holds no source record yet, else None
        (load batch by batch: nothing is held then). Commits when the block ends normally
        (after :meth:`finish`); rolls back — store and matcher index — when it raises."""
        from esbhub.mdm.service import SQLITE_CACHE_KIB, _take_flipped, _tune_sqlite

        svc._ensure_index()
        svc._lock.acquire()  # held to the end of the load: the service's other writers wait
        s = svc.Session()
        try:
            s.begin()
            svc._begin_write(s)  # the writer lock; scores with the store's model or not at all
            _tune_sqlite(s)
            svc._catch_up(s)
            empty = s.execute(sa.select(SourceVersion.id).limit(1)).first() is None and len(svc.matcher) == 0
        except BaseException:
            s.close()
            svc._lock.release()
            raise
        if not empty:
            s.rollback()
            s.close()
            svc._lock.release()
            yield None
            return
        try:
            conn = s.connection()
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                conn.exec_driver_sql(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
            bulk = cls(svc, s)
            if sqlite:
                bulk._drop_indexes()
            try:
                yield bulk
                t = time.perf_counter()
                s.commit()
                bulk.timings["commit"] = time.perf_counter() - t
            except BaseException:
                s.rollback()
                for key in bulk.added:
                    svc.matcher.remove(key)
                _take_flipped(svc.matcher)  # the index is back as it was
                raise
            finally:
                if sqlite:
                    with contextlib.suppress(Exception):
                        s.connection().exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
                        s.commit()
            svc._seen_max = bulk.max_version
        finally:
            s.close()
            svc._lock.release()
        svc._freeze_index(force=True)

    # ----------------------------------------------------------------- stage
    def add(self, items: list[tuple[Party, str, Any]], errors: Callable[[Party, str], None]) -> None:
        """Stage a batch in arrival order: ``(party, envelope id, Prepared)``; a record that cannot
        be standardized goes to ``errors(party, message)``, the rest go on."""
        from esbhub.mdm.service import _take_flipped

        t0 = time.perf_counter()
        s, svc = self.s, self.svc
        fresh = sum(1 for p, _e, _x in items if source_key(p.source_system, p.source_id) not in self.recs)
        arrival = next_value(s, "arrival", fresh) if fresh else 0
        for party, envelope_id, prep in items:
            if envelope_id in self.seen:
                continue
            self.seen.add(envelope_id)
            self.records += 1
            system, sid = party.source_system, party.source_id
            key = source_key(system, sid)
            r = self.recs.get(key)
            rawt = stdt = None
            if prep is not None:
                raw, content_hash, std, stdj = prep.raw, prep.content_hash, prep.std, prep.stdj
                rawt, stdt = prep.rawt, prep.stdt
            else:
                from esbhub.mdm.service import _hash

                raw = party.model_dump(mode="json", exclude_none=True)
                content_hash, std, stdj = _hash(raw), None, None
            if r is not None and r.content_hash == content_hash:
                self.envelopes.append((envelope_id, "unchanged", key))
                continue
            try:
                std = std or svc._standardize(party)
            except (ValueError, TypeError) as exc:
                errors(party, InvalidMessage(f"party {key} cannot be standardized: {exc}").message)
                continue
            if stdj is None or prep is None or std is not prep.std:
                stdj, stdt = svc._std_dict(std), None
            now = utcnow()
            if r is None:
                r = self.recs[key] = _Rec(system, sid, arrival)
                arrival += 1
                old_entries: set[tuple[str, str]] = set()
            else:
                old_entries = set(hierarchy.index_entries(_Entry(r)))
                if not r.deleted:
                    svc.matcher.remove(key)
            r.version += 1
            self.versions += 1
            attrs = raw.get("attributes") or {}
            # serialized once, for the version row and the xref row; kept as text, which is also
            # what the column stores: orjson's bytes keep their whole (over-allocated) buffer
            rawt = rawt or json_dumps(raw).decode()
            stdt = stdt or json_dumps(stdj).decode()
            self.rows[SourceVersion.__table__].append(dict(
                source_system=system, source_id=sid, version=r.version, envelope_id=envelope_id,
                content_hash=content_hash, raw=Stored(rawt) if self.sqlite else raw,
                std=Stored(stdt) if self.sqlite else stdj, received_at=now,
                source_updated_at=party.source_updated_at, deleted=party.deleted,
            ))
            results = []
            if not party.deleted:
                results = svc._kept_matches(key, std)
                svc.matcher.add(key, std)
                self.added.append(key)
            flipped = _take_flipped(svc.matcher)
            r.content_hash, r.kind, r.name, r.deleted = content_hash, party.kind, party.name, party.deleted
            r.core_name = (stdj.get("core_name") or "")[:500]
            r.name_norm = (stdj.get("name_norm") or "")[:500]
            r.uscc = stdj.get("uscc")
            r.billing_account = attrs.get("billing_account")
            r.parent_billing_account = attrs.get("parent_billing_account")
            r.received_at, r.source_updated_at = now, party.source_updated_at
            r.raw, r.std = rawt, stdt
            r.view = LinkView.of(std) if self.light_views else std
            entries = set(hierarchy.index_entries(_Entry(r, std=stdj, raw=raw)))
            if r.version == 1 or entries != old_entries:
                for kind, value in old_entries:  # the old version's (written at the end, in key order)
                    self.key_rows.pop((kind, value, system, sid), None)
                    if (kind, value) in self.index:
                        self.index[(kind, value)].remove((system, sid))
                for kind, value in sorted(entries):
                    self.key_rows[(kind, value, system, sid)] = None
                    if kind in ("parent_ba", "parent_src"):
                        self.index.setdefault((kind, value), []).append((system, sid))
            if r.version > 1 and not party.deleted:  # a deleted record keeps its links (and golden record)
                self._supersede(key, now)
            self.envelopes.append((envelope_id, "new" if r.version == 1 else
                                   ("deleted" if party.deleted else "changed"), key))
            for m in results:
                other = m.b if m.a == key else m.a
                if other == key:
                    continue
                self._link(pair(key, other), m, now)
            if flipped:
                self._rescore_shared(key, flipped, now)
        for tbl, rows in self.rows.items():
            if len(rows) >= CHUNK:
                self.insert(tbl, rows)
                rows.clear()
        svc._freeze_index()  # the matcher grew with the records staged: see there
        self.timings["stage"] += time.perf_counter() - t0

    def _freeze(self, n: int) -> None:
        """Park what the write-out keeps in memory (the records' hierarchy views, the events) out of
        the cyclic garbage collector's way once it has grown by a tenth: each full collection walks
        every live object, so the cost would grow with the square of the load (the staging phase
        relies on :meth:`MdmService._freeze_index`, the same rule over the growing matcher)."""
        if n >= self._frozen_n * 1.1 + 1000:
            gc.freeze()
            self._frozen_n = n

    def _drop_indexes(self) -> None:
        """Drop the secondary indexes of the tables the load fills (SQLite), to build them once
        at the end (:meth:`_create_indexes`) from their own ``CREATE INDEX`` statements.

        Inserting a million rows in arbitrary key order into a dozen indexes touches a page of
        each per row; in one transaction whose dirty pages outgrow the cache, every one of those
        is written to the WAL, often again and again (measured at 1M: ~5,000 page writes/s, the
        golden records' write taking longer than everything before it). Nothing the load reads
        needs them: it reads by primary key (links by the ids it gives them; look-up keys stay in
        memory until the end). In the transaction: a failed load gets them back with the rollback."""
        tables = [t.name for t in (SourceVersion.__table__, Xref.__table__, KeyIndex.__table__, Link.__table__,
                                   Golden.__table__, GoldenHistory.__table__, Inbox.__table__, Hierarchy.__table__,
                                   Task.__table__)]
        conn = self.s.connection()
        self.indexes = [(name, sql) for name, sql in conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN "
            f"({', '.join('?' * len(tables))}) ORDER BY name", tuple(tables)).all()]
        for name, _sql in self.indexes:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')

    def _create_indexes(self) -> None:
        """Build the dropped indexes; SQLite sorts each one's keys with helper threads meanwhile
        (``PRAGMA threads``: the sort is most of an index build, the rest waits for it)."""
        if not self.indexes:  # none dropped (not SQLite)
            return
        conn = self.s.connection()
        conn.exec_driver_sql(f"PRAGMA threads={min(8, os.cpu_count() or 1)}")
        try:
            for _name, sql in self.indexes:
                conn.exec_driver_sql(sql)
        finally:
            conn.exec_driver_sql("PRAGMA threads=0")
        self.indexes = []

    def _flush(self) -> None:
        for tbl, rows in self.rows.items():
            if rows:
                self.insert(tbl, rows)
                rows.clear()

    def insert(self, table: Any, rows: list[dict[str, Any]]) -> None:
        """``INSERT`` of rows that all have the same keys (:func:`esbhub.mdm.store.insert_rows`)."""
        insert_rows(self.s.connection(), table, rows)

    def _link(self, p: tuple[str, str], m: Any, now: datetime) -> None:
        """Keep the link of pair ``p`` scored ``m`` (a match or review result)."""
        ev = evidence_json(m.evidence)
        link = dict(
            a_key=p[0], b_key=p[1], weight=float(m.weight), probability=float(m.probability),
            decision=m.decision, hard=m.hard, evidence=ev, actor="engine", created_at=now, active=True,
            superseded_at=None,
        )
        if self.sqlite:  # numbered here (a rowid table, empty): superseded by primary key
            self.link_id += 1
            self.link_ids[p] = link["id"] = self.link_id
        self.rows[Link.__table__].append(link)
        if m.decision == "match" and m.hard is None:
            self.edges[p] = float(m.weight)
        if m.decision == "review" or m.hard:
            self.reviews[p] = (float(m.weight), float(m.probability), ev)
        for k in p:
            self.touching.setdefault(k, []).append(p)

    def _rescore_shared(self, key: str, values: list[tuple[str, str]], now: datetime) -> None:
        """What :meth:`MdmService._rescore_shared <esbhub.mdm.service.MdmService._rescore_shared>`
        does in the per-batch path, on the load's links in memory: the pairs of other records
        holding a number or address that staging ``key`` made generic or specific again are scored again;
        a link whose weight changed is superseded by the new score (or none)."""
        from esbhub.mdm.service import _shared_pairs

        within, fresh = _shared_pairs(self.svc.matcher, key, values)
        for p in within:
            old = self.edges.get(p)
            if old is None and p in self.reviews:
                old = self.reviews[p][0]
            r = fresh.get(p)
            if (old is None and r is None) or (old is not None and r is not None and old == float(r.weight)):
                continue
            if old is not None:
                self._supersede_pair(p, now)
            if r is not None:
                self._link(p, r, now)

    def _supersede_pair(self, p: tuple[str, str], now: datetime) -> None:
        """The link of pair ``p`` stops being current (kept, inactive)."""
        self._flush()
        lk = Link.__table__
        i = self.link_ids.pop(p, None)
        if i is not None:
            where = lk.c.id == i
        else:
            where = sa.and_(lk.c.active.is_(True), lk.c.a_key == p[0], lk.c.b_key == p[1])
        self.s.connection().execute(lk.update().where(where).values(active=False, superseded_at=now))
        self.edges.pop(p, None)
        self.reviews.pop(p, None)
        for k in p:
            with contextlib.suppress(KeyError, ValueError):
                self.touching[k].remove(p)

    def _supersede(self, key: str, now: datetime) -> None:
        """A new version of ``key``: its links stop being current (kept, inactive)."""
        pairs = self.touching.pop(key, [])
        if not pairs:
            return
        self._flush()
        lk = Link.__table__
        if not self.sqlite:  # its indexes are there; ids come from the table's sequence
            self.s.connection().execute(
                lk.update().where(lk.c.active.is_(True), sa.or_(lk.c.a_key == key, lk.c.b_key == key))
                .values(active=False, superseded_at=now))
        ids = [i for p in pairs if (i := self.link_ids.pop(p, None)) is not None]
        for i in range(0, len(ids), 500):  # by primary key: the load numbered its links
            self.s.connection().execute(lk.update().where(lk.c.id.in_(ids[i : i + 500]))
                                        .values(active=False, superseded_at=now))
        for p in pairs:
            self.edges.pop(p, None)
            self.reviews.pop(p, None)
            other = p[1] if p[0] == key else p[0]
            with contextlib.suppress(KeyError, ValueError):
                self.touching[other].remove(p)

    # ---------------------------------------------------------------- finish
    def finish(self, pool: Any = None) -> int:
        """Cluster, survive, write golden records, xref, history, inbox, hierarchy and tasks;
        returns how many ``party.golden.created`` events the load made (:meth:`publish` them
        once committed). With ``pool`` (a process pool), golden records are survived there,
        a chunk ahead of the one written here."""
        from esbhub.mdm.service import _compact_event, partition

        s, svc = self.s, self.svc
        self._flush()
        t = time.perf_counter()
        can_link = svc._can_link
        recs = self.recs

        def forbids(a: str, b: str) -> str | None:
            return can_link(recs[a].view, recs[b].view)  # type: ignore[no-any-return]

        clusters = partition(recs, [(a, b, w) for (a, b), w in self.edges.items()], [], set(), forbids)
        self.timings["cluster"] = time.perf_counter() - t
        t = time.perf_counter()
        now = utcnow()
        founders = sorted(((min(c, key=lambda k: (recs[k].first_seen, k)), sorted(c)) for c in clusters),
                          key=lambda fc: (recs[fc[0]].first_seen, fc[0]))
        del clusters
        seq = next_value(s, "golden_id", len(founders)) if founders else 1
        first_env: dict[str, str] = {}
        for envelope_id, outcome, key in self.envelopes:
            if outcome != "unchanged":
                first_env.setdefault(key, envelope_id)
        sqlite = self.sqlite
        compact: dict[str, list[dict[str, Any]]] = {}  # founder's envelope id → its golden's created event
        hier_recs: list[_HierRec] = []
        goldens: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        xrefs: list[dict[str, Any]] = []
        work = functools.partial(_survive_chunk, svc.settings.survivorship, svc.settings.tiering, sqlite)

        def member(k: str) -> tuple[Any, ...]:
            r = recs[k]
            return k, r.system, r.sid, r.raw, r.std, aware(r.source_updated_at) or r.received_at, r.deleted

        def chunk_input(lo: int) -> list[list[tuple[Any, ...]]]:
            return [[member(k) for k in members] for _f, members in founders[lo : lo + CHUNK]]

        def results() -> Iterator[tuple[int, list[Any]]]:
            """Survived chunks in order. With a pool: it always has a chunk queued behind the one it
            is surviving; while the oldest one it has is not done, this process survives the next
            unassigned chunk itself instead of waiting — the two share the work as their speeds
            allow (the pool's queue is never the one thing left to wait for)."""
            starts = collections.deque(range(0, len(founders), CHUNK))
            if pool is None:
                for lo in starts:
                    yield lo, work(chunk_input(lo))
                return
            inflight = 2 * max(1, getattr(pool, "_max_workers", 1))
            order: collections.deque[tuple[int, Any]] = collections.deque()  # (lo, future or result here)
            here: dict[int, list[Any]] = {}
            queued = 0
            while starts or order:
                while starts and queued < inflight:
                    lo = starts.popleft()
                    try:
                        order.append((lo, pool.submit(work, chunk_input(lo))))
                        queued += 1
                    except Exception:  # noqa: BLE001 - pool broken or shut down: survive here
                        here[lo] = work(chunk_input(lo))
                        order.append((lo, None))
                lo, fut = order[0]
                if fut is not None and not fut.done() and starts:
                    lo1 = starts.popleft()  # the pool is busy: take the next chunk here meanwhile
                    here[lo1] = work(chunk_input(lo1))
                    order.append((lo1, None))
                    continue
                order.popleft()
                if fut is None:
                    yield lo, here.pop(lo)
                    continue
                queued -= 1
                try:
                    done = fut.result()
                except Exception as exc:  # noqa: BLE001 - a broken worker costs speed, never records
                    log.warning("mdm_bulk_survive_worker_failed", error_type=type(exc).__name__, error=str(exc))
                    done = work(chunk_input(lo))
                yield lo, done

        for lo, done in results():
            for i, (attrs, tier, attrs_stored, hier) in enumerate(done, start=lo):
                founder, members = founders[i]
                gid = golden_id_for(seq + i)
                deleted = True
                for k, (hstd, hraw) in zip(members, hier, strict=True):
                    r = recs[k]
                    r.golden_id = gid
                    deleted = deleted and r.deleted
                    hier_recs.append(_HierRec(k, r, hstd, hraw))
                status = "inactive" if deleted else "active"
                kind = (attrs.get("kind") or {}).get("value") or recs[founder].kind
                cause = first_env.get(founder)
                attrs_col = Stored(attrs_stored) if sqlite else attrs
                goldens.append(dict(
                    golden_id=gid, seq_no=seq + i, status=status, merged_into=None, version=1, kind=kind,
                    founder=founder, name=(attrs.get("name") or {}).get("value"),
                    core_name=(attrs.get("core_name") or {}).get("value"), uscc=(attrs.get("uscc") or {}).get("value"),
                    tier=tier, attributes=attrs_col, members=members, created_at=now, updated_at=now,
                ))
                history.append(dict(
                    golden_id=gid, version=1, change="created", status=status, merged_into=None,
                    attributes=attrs_col, members=members, valid_from=now, valid_to=None, actor="engine", reason=None,
                    cause=cause,
                ))
                if cause is not None:  # kept without attributes and member keys (history has them):
                    # the event is built without them too, which the compact form drops anyway
                    compact[cause] = [_compact_event(golden_event(GoldenEvent(
                        golden_id=gid, seq=1, change="created", status=status,  # type: ignore[arg-type]
                        valid_from=now.isoformat(), actor="engine", tier=tier,
                    ), cause_id=cause))]
            for tbl, rows in ((Golden.__table__, goldens), (GoldenHistory.__table__, history)):
                if rows:
                    self.insert(tbl, rows)
                    rows.clear()
            self._freeze(lo + len(done))
        self.timings["golden"] = time.perf_counter() - t
        t = time.perf_counter()
        # xref and inbox rows in primary-key order: appended to their key's B-tree, not scattered
        # over it (a page written per row once the tree outgrows the cache)
        for r in sorted(recs.values(), key=lambda r: (r.system, r.sid)):
            xrefs.append(dict(
                source_system=r.system, source_id=r.sid, golden_id=r.golden_id, version=r.version,
                first_seen=r.first_seen, content_hash=r.content_hash, kind=r.kind, name=r.name,
                core_name=r.core_name, name_norm=r.name_norm, uscc=r.uscc, billing_account=r.billing_account,
                parent_billing_account=r.parent_billing_account, deleted=r.deleted,
                raw=Stored(r.raw) if sqlite else orjson.loads(r.raw),
                std=Stored(r.std) if sqlite else orjson.loads(r.std),
                received_at=r.received_at, source_updated_at=r.source_updated_at, linked_at=now,
            ))
            if len(xrefs) >= CHUNK:
                self.insert(Xref.__table__, xrefs)
                xrefs.clear()
        self.insert(Xref.__table__, xrefs)
        xrefs.clear()
        keys = sorted(self.key_rows)
        self.key_rows.clear()
        for i in range(0, len(keys), CHUNK):
            self.insert(KeyIndex.__table__, [dict(kind=k, value=v, source_system=sys_, source_id=sid)
                                             for k, v, sys_, sid in keys[i : i + CHUNK]])
        del keys
        self.timings["xref"] = time.perf_counter() - t
        t = time.perf_counter()
        inbox = []
        for envelope_id, outcome, _key in sorted(self.envelopes):
            inbox.append(dict(envelope_id=envelope_id, at=now, outcome=outcome, events=compact.get(envelope_id, [])))
            if len(inbox) >= CHUNK:
                self.insert(Inbox.__table__, inbox)
                inbox.clear()
        self.insert(Inbox.__table__, inbox)
        self.event_rows = sorted(compact)
        del compact
        self.timings["inbox"] = time.perf_counter() - t
        t = time.perf_counter()
        self._hierarchy(hier_recs, [golden_id_for(seq + i) for i in range(len(founders))], now)
        self.timings["hierarchy"] = time.perf_counter() - t
        t = time.perf_counter()
        self._tasks(now)
        self.timings["tasks"] = time.perf_counter() - t
        t = time.perf_counter()
        self._create_indexes()
        self.timings["indexes"] = time.perf_counter() - t
        self.max_version = int(s.execute(sa.select(sa.func.max(SourceVersion.id))).scalar() or 0)
        log.info("mdm_bulk_load", records=self.records, versions=self.versions, source_keys=len(recs),
                 golden=len(founders), links=len(self.edges), reviews=len(self.reviews),
                 seconds={k: round(v, 1) for k, v in self.timings.items()})
        return len(founders)

    def publish(self, publish: Callable[[list[Envelope]], Any], batch: int = 500) -> int:
        """After the commit: hand the load's events to ``publish`` in batches, as the founders'
        inbox rows keep them — the events a redelivery of those records returns, byte for byte
        (not kept in memory meanwhile: a million loaded records make some 350k events)."""
        from esbhub.mdm.service import _expand_events

        n = 0
        with self.svc.Session() as s:
            for i in range(0, len(self.event_rows), batch):
                ids = self.event_rows[i : i + batch]
                stored_events = [e for row in s.execute(sa.select(Inbox.events).where(Inbox.envelope_id.in_(ids)))
                                 .scalars() for e in row]
                evs = _expand_events(s, stored_events)
                n += len(evs)
                publish(evs)
        return n

    def _hierarchy(self, recs: list[_HierRec], golden_ids: list[str], now: datetime) -> None:
        """Edges of every golden record, as :func:`esbhub.mdm.hierarchy.refresh` of all of them."""
        lk = _Lookup(recs, self.index)
        members: dict[str, list[_HierRec]] = {}
        for x in recs:
            members.setdefault(x.golden_id, []).append(x)
        wanted: dict[tuple[str, str, str], dict[str, Any]] = {}
        for gid in golden_ids:
            ms = members.get(gid)
            if ms:
                ms.sort(key=lambda x: (x.source_system, x.source_id))
                for p, c, k, ev in hierarchy.compute_edges(self.s, gid, ms, lk):  # type: ignore[arg-type]
                    wanted[(p, c, k)] = ev
        rows = [{"parent_golden": p, "child_golden": c, "kind": k, "evidence": ev, "created_at": now, "active": True}
                for (p, c, k), ev in wanted.items()]
        for i in range(0, len(rows), CHUNK):
            self.insert(Hierarchy.__table__, rows[i : i + CHUNK])

    def _tasks(self, now: datetime) -> None:
        """A steward task per review link across two golden records, one per pair of golden records."""
        rows, pairs = [], set()
        for (a, b), (w, prob, ev) in self.reviews.items():  # in the order the links were made
            ga, gb = self.recs[a].golden_id, self.recs[b].golden_id
            if ga == gb or pair(ga, gb) in pairs:
                continue
            pairs.add(pair(ga, gb))
            rows.append(dict(a_key=a, b_key=b, golden_a=ga, golden_b=gb, weight=w, probability=prob, evidence=ev,
                             status="open", created_at=now, decided_at=None, decided_by=None, decision=None,
                             reason=None))
        if rows:
            self.insert(Task.__table__, rows)


def _survive_chunk(cfg: Any, tiering: Any, sqlite: bool,
                   chunk: list[list[tuple[Any, ...]]]) -> list[tuple[Any, str, Any, list[Any]]]:
    """Golden records of a chunk — each given as its members ``(key, system, source id, raw JSON,
    standardized JSON, updated at, deleted)`` — survived: attributes, tier, the attributes as a
    SQLite column stores them, and each member's hierarchy fields. A pure function of its input
    (run in a worker process by :meth:`BulkLoad.finish`)."""
    out = []
    for members in chunk:
        ms, tiered, hier = [], [], []
        for key, system, sid, rawb, stdb, updated_at, deleted in members:
            raw, std = orjson.loads(rawb), orjson.loads(stdb)
            ms.append(Member(key=key, system=system, source_id=sid, raw=raw, std=std, updated_at=updated_at,
                             deleted=deleted))
            tiered.append(_Tiered(key, raw, deleted))
            hier.append(({k: v for k in _HIER_STD if (v := std.get(k)) is not None},
                         {"parent_source_id": raw["parent_source_id"]} if raw.get("parent_source_id") else {}))
        attrs = survive(ms, cfg, {})
        out.append((attrs, tiering.tier(hierarchy.revenue_of(tiered)),  # type: ignore[arg-type]
                    stored(attrs, compress=True).value if sqlite else None, hier))
    return out


class _Tiered:
    """A member as :func:`esbhub.mdm.hierarchy.revenue_of` reads it."""

    __slots__ = ("deleted", "key", "raw")

    def __init__(self, key: str, raw: dict[str, Any], deleted: bool) -> None:
        self.key, self.raw, self.deleted = key, raw, deleted


class _Entry:
    """A record as :func:`esbhub.mdm.hierarchy.index_entries` reads an xref row."""

    __slots__ = ("parent_billing_account", "raw", "source_system", "std")

    def __init__(self, r: _Rec, *, std: dict[str, Any] | None = None, raw: dict[str, Any] | None = None) -> None:
        self.source_system, self.parent_billing_account = r.system, r.parent_billing_account
        self.std = std if std is not None else orjson.loads(r.std)
        self.raw = raw if raw is not None else orjson.loads(r.raw)



"""Customer search (``GET /v1/customers?q=…``) at scale, during real-time ingestion: new against old.

    .venv/bin/python bench/mdm_search.py [--companies 50000] [--seed 5] [--keep DIR]
    .venv/bin/python bench/mdm_search.py --db /tmp/copy-of-a-store.db     # a store you have (it is written to!)
    .venv/bin/python bench/mdm_search.py --companies 20000 --pg           # the same on PostgreSQL 127.0.0.1:5432
    .venv/bin/python bench/mdm_search.py --names-only --db /tmp/mdm1m/hub.db --queries 200   # names alone, read only

What is measured, in one process, as the API serves searches while a worker ingests:

* the store: synthetic Chinese enterprise records (``esbhub.mdm.synth``, ``--companies`` base
  companies, ≈3.9 records and ≈1.4 golden records each) through the initial load
  (:func:`esbhub.mdm.loader.load_parties`, set at a time) into an empty SQLite file — or
  ``--db`` / ``--database-url``, a store that exists (records are added and changed: give it a
  copy) — or, with ``--pg``, a PostgreSQL database made for the run (dropped afterwards);
* queries drawn from the store, four kinds: **name** (a core name, the same with one character
  wrong, its first two characters, a full name), **USCC**, **phone** (a stored number written
  the usual national way, ``0755-8888 6666`` / ``139 1234 5678``) and **source key**;
* before each query ``--ingest`` changes go in, one ``ingest`` transaction each (changed phone,
  address, revenue or status of a stored record; every tenth a new company) — the real-time path
  rewriting golden records, so that the old search's name cache is stale at every query, as it
  is under a stream of hundreds of records per second;
* each query is answered by the old search (kept below, ``old_search``: the code before this
  change — every active golden record's names reloaded when any changed, rapidfuzz over all of
  them twice, phones by ``LIKE '%digits'``) and by ``MdmService.search``, alternately first,
  each timed alone; p50 / p99 per kind, old ÷ new. The first search of each (the old cache's
  first load, the new index's load) is reported apart. Answers are compared: identical lists,
  and the same first hit.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mdm_load import rss_mb  # the sibling benches' helpers (bench/ is this script's directory)
from mdm_realtime import loadavg, pct


# --------------------------------------------------------------------------- the old search
def old_search(svc: Any, cache: dict[str, Any], q: str, limit: int = 20) -> list[dict[str, Any]]:
    """``MdmService.search`` and ``_name_index`` as they were before the search index (unchanged from 8800069 to 0da9d52)."""
    import sqlalchemy as sa
    from rapidfuzz import fuzz, process

    from esbhub.mdm.store import Golden, GoldenHistory, KeyIndex, Xref, source_key
    from esbhub.schemas.party import Party

    def name_index(s: Any) -> list[tuple[str, str, str]]:
        ver = int(s.execute(sa.select(sa.func.max(GoldenHistory.id))).scalar() or 0)
        if cache.get("ver") != ver:
            rows = s.execute(
                sa.select(Golden.golden_id, Golden.name, Golden.core_name).where(Golden.status == "active")
            ).all()
            cache["ver"], cache["rows"] = ver, [(gid, name or "", core or "") for gid, name, core in rows]
            cache["loads"] = cache.get("loads", 0) + 1
        return cache["rows"]  # type: ignore[no-any-return]

    q = unicodedata.normalize("NFKC", (q or "").strip())
    if not q:
        return []
    hits: dict[str, tuple[float, str]] = {}

    def hit(gid: str, score: float, on: str) -> None:
        if gid and (gid not in hits or hits[gid][0] < score):
            hits[gid] = (score, on)

    with svc.Session() as s:
        if ":" in q:
            gid = svc._golden_of_key(s, q)
            if gid:
                hit(svc.resolve(s, gid).golden_id, 100.0, "source_key")
        up = q.upper()
        if len(up) == 18 and up.isalnum():
            for x in s.execute(sa.select(Xref).where(Xref.uscc == up)).scalars():
                hit(svc.resolve(s, x.golden_id).golden_id, 100.0, "uscc")
        digits = "".join(ch for ch in q if ch.isdigit())
        if len(digits) >= 7 and len(digits) >= len(q.replace(" ", "").replace("-", "").replace("+", "")) - 1:
            for r in s.execute(
                sa.select(KeyIndex).where(KeyIndex.kind == "phone", KeyIndex.value.like(f"%{digits[-11:]}"))
            ).scalars():
                gid = svc._golden_of_key(s, source_key(r.source_system, r.source_id))
                if gid:
                    hit(svc.resolve(s, gid).golden_id, 100.0, "phone")
        for acct in s.execute(sa.select(Xref).where(Xref.billing_account == q)).scalars():
            hit(svc.resolve(s, acct.golden_id).golden_id, 100.0, "billing_account")
        index = name_index(s)
        if index and not hits:
            try:
                core_q = svc._standardize(Party(source_system="search", source_id="q", name=q)).core_name or q
            except Exception:  # noqa: BLE001 - as the old code
                core_q = q
            cores = [c or n for _g, n, c in index]
            names = [n for _g, n, _c in index]
            for _c, score, i in process.extract(core_q, cores, scorer=fuzz.WRatio, limit=limit * 2, score_cutoff=60):
                hit(index[i][0], float(score), "core_name")
            for _c, score, i in process.extract(q, names, scorer=fuzz.WRatio, limit=limit * 2, score_cutoff=60):
                hit(index[i][0], float(score), "name")
        ranked = sorted(hits.items(), key=lambda kv: (-kv[1][0], kv[0]))[:limit]
        out = []
        for gid, (score, on) in ranked:
            g = s.get(Golden, gid)
            if g is not None:
                out.append({"golden_id": gid, "name": g.name, "uscc": g.uscc, "tier": g.tier, "score": round(score, 1),
                            "matched_on": on, "source_keys": list(g.members or [])})
        return out


# ------------------------------------------------------------------------------- the store
def build(url: str, companies: int, seed: int) -> Any:
    from esbhub.mdm.loader import load_parties
    from esbhub.mdm.service import MdmService
    from esbhub.mdm.synth import generate

    t0 = time.perf_counter()
    records = generate(companies, seed=seed).records
    print(f"generated {len(records):,} records of {companies:,} companies (seed {seed}) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    svc = MdmService(url)
    t0 = time.perf_counter()
    out = load_parties(svc, records, workers=1)
    print(f"loaded them ({out['mode']}) in {time.perf_counter() - t0:.0f} s, load {loadavg()}", flush=True)
    if url.startswith("postgresql"):  # what autovacuum would do soon after (it is off on the test server)
        with svc.Session() as s:
            s.connection().exec_driver_sql("ANALYZE")
            s.commit()
    return svc


def national(e164: str) -> str:
    """A stored E.164 number as people write it: 0755-8888 6666, 139 1234 5678."""
    import phonenumbers

    n = phonenumbers.parse(e164, None)
    nat = str(n.national_number)
    if n.country_code != 86:
        return e164
    if len(nat) == 11 and nat.startswith("1"):
        return f"{nat[:3]} {nat[3:7]} {nat[7:]}"
    if len(nat) == 10 and nat.startswith(("400", "800")):
        return f"{nat[:3]}-{nat[3:6]}-{nat[6:]}"
    if len(nat) < 9:  # a service number
        return nat
    area = 2 if nat[:1] in "12" else 3
    local = nat[area:]
    return f"0{nat[:area]}-{local[:4]} {local[4:]}"


def queries(svc: Any, n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` queries of each kind, drawn from random active golden records, shuffled."""
    import sqlalchemy as sa

    from esbhub.mdm.store import Golden, KeyIndex, Xref

    out: list[tuple[str, str]] = []
    with svc.Session() as s:
        top = int(s.execute(sa.select(sa.func.max(Golden.seq_no))).scalar() or 0)
        picked = 0
        while picked < n:
            g = s.execute(sa.select(Golden.golden_id, Golden.name, Golden.core_name, Golden.uscc, Golden.members)
                          .where(Golden.seq_no == rng.randint(1, top), Golden.status == "active")).first()
            if g is None or not g.members or not g.core_name:
                continue
            picked += 1
            core = g.core_name
            i = rng.randrange(len(core))
            out.append(("name", rng.choice([core, core[:i] + "枝" + core[i + 1 :], core[:2], g.name])))
            key = rng.choice(list(g.members))
            out.append(("source key", key))
            sys_, sid = key.split(":", 1)
            uscc = g.uscc or s.execute(sa.select(Xref.uscc).where(Xref.golden_id == g.golden_id,
                                                                  Xref.uscc.is_not(None))).scalar()
            if uscc:
                out.append(("USCC", uscc))
            phone = s.execute(sa.select(KeyIndex.value).where(
                KeyIndex.source_system == sys_, KeyIndex.source_id == sid, KeyIndex.kind == "phone")).scalar()
            if phone:
                out.append(("phone", national(phone)))
    rng.shuffle(out)
    return out


class Changes:
    """Changed versions of stored source records (phone, address, revenue, status), every tenth a
    new company: what a real-time stream brings."""

    def __init__(self, svc: Any, seed: int) -> None:
        import sqlalchemy as sa

        from esbhub.mdm.store import Xref
        from esbhub.mdm.synth import generate

        self.svc = svc
        self.rng = random.Random(seed)
        with svc.Session() as s:
            self.keys = [tuple(k) for k in s.execute(sa.select(Xref.source_system, Xref.source_id)
                                                     .where(Xref.deleted.is_(False)).limit(200_000)).all()]
        self.fresh = generate(300, seed=seed + 1000).records
        self.n = 0

    def ingest_one(self) -> None:
        from esbhub.mdm.store import Xref
        from esbhub.schemas.party import Party

        self.n += 1
        rng = self.rng
        if self.n % 10 == 0 and self.fresh:
            p = self.fresh.pop()
            d = p.model_dump(mode="json")
            d["source_id"], d["parent_source_id"] = f"NEW{self.n:07d}", None
        else:
            with self.svc.Session() as s:
                d = dict(s.get(Xref, rng.choice(self.keys)).raw)
            what = rng.random()
            if what < 0.3:
                d["phones"] = [*d.get("phones", [])[:2], {"kind": "mobile", "number": f"13{rng.randint(0, 999999999):09d}"}]
            elif what < 0.5:
                d["status"] = "suspended" if d.get("status") != "suspended" else "active"
            elif what < 0.75:
                d["addresses"] = [{"kind": "office", "text": f"{d.get('city') or ''}高新区创业路{rng.randint(1, 999)}号"}]
            else:
                d["attributes"] = {**(d.get("attributes") or {}), "monthly_revenue": str(rng.randint(1_000, 3_000_000))}
        self.svc.ingest(Party.model_validate(d), f"bench-search-{self.n}-{rng.random()}")


# ------------------------------------------------------------------------------------- run
def run(svc: Any, a: argparse.Namespace) -> None:
    import sqlalchemy as sa

    from esbhub.mdm.store import Golden

    rng = random.Random(a.seed)
    with svc.Session() as s:
        goldens = s.execute(sa.select(sa.func.count()).select_from(Golden).where(Golden.status == "active")).scalar()
    t0 = time.perf_counter()
    svc._ensure_index()
    print(f"store: {goldens:,} active golden records; matcher index ready in {time.perf_counter() - t0:.1f} s "
          f"(for the ingests), load {loadavg()}", flush=True)
    qs = queries(svc, a.queries, rng)
    changes = Changes(svc, a.seed)
    cache: dict[str, Any] = {}
    # the first search of each: the old cache's first load, the new index's load
    rss0 = rss_mb()
    t = time.perf_counter()
    svc.search("华信科技")
    new_first = time.perf_counter() - t
    rss1 = rss_mb()
    t = time.perf_counter()
    old_search(svc, cache, "华信科技")
    old_first = time.perf_counter() - t
    print(f"first search: old {old_first * 1000:,.0f} ms, new {new_first * 1000:,.0f} ms "
          f"(the name index of {len(svc._names):,} records, RSS +{rss1 - rss0:,.0f} MB)", flush=True)
    times: dict[str, dict[str, list[float]]] = {}
    same = {"list": 0, "first": 0, "n": 0}
    by_kind_same: dict[str, list[int]] = {}
    ingest_t: list[float] = []
    loads0 = cache.get("loads", 0)
    for j, (kind, q) in enumerate(qs):
        for _ in range(a.ingest):
            t = time.perf_counter()
            changes.ingest_one()
            ingest_t.append(time.perf_counter() - t)
        order = ("old", "new") if j % 2 == 0 else ("new", "old")
        got: dict[str, list[dict[str, Any]]] = {}
        for who in order:
            t = time.perf_counter()
            got[who] = old_search(svc, cache, q) if who == "old" else svc.search(q)
            times.setdefault(kind, {}).setdefault(who, []).append(time.perf_counter() - t)
        ids = {w: [r["golden_id"] for r in got[w]] for w in got}
        same["n"] += 1
        same["list"] += ids["old"] == ids["new"]
        same["first"] += ids["old"][:1] == ids["new"][:1]
        by_kind_same.setdefault(kind, [0, 0, 0])
        by_kind_same[kind][0] += ids["old"][:1] == ids["new"][:1]
        by_kind_same[kind][1] += ids["old"] == ids["new"]
        by_kind_same[kind][2] += 1
        if (j + 1) % 50 == 0:
            print(f"  … {j + 1} queries, load {loadavg()}", flush=True)
    print(f"\n{len(qs)} queries, {a.ingest} ingest transaction(s) before each ({len(ingest_t)} in all: p50 "
          f"{pct(ingest_t, 0.5) * 1000:.1f} ms, p99 {pct(ingest_t, 0.99) * 1000:.1f} ms); the old cache reloaded "
          f"{cache.get('loads', 0) - loads0} times; the new index re-read {svc._names.reread:,} golden records in all; "
          f"load {loadavg()}\n", flush=True)
    print("| query | n | old p50 / p99 ms | new p50 / p99 ms | old ÷ new p50 / p99 | same first hit | same list |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind in ("name", "USCC", "phone", "source key"):
        if kind not in times:
            continue
        o, n = times[kind]["old"], times[kind]["new"]
        print(f"| {kind} | {len(o)} | {pct(o, .5) * 1000:,.1f} / {pct(o, .99) * 1000:,.1f} | "
              f"{pct(n, .5) * 1000:,.2f} / {pct(n, .99) * 1000:,.2f} | "
              f"×{pct(o, .5) / pct(n, .5):,.0f} / ×{pct(o, .99) / pct(n, .99):,.0f} | "
              f"{by_kind_same[kind][0]}/{by_kind_same[kind][2]} | {by_kind_same[kind][1]}/{by_kind_same[kind][2]} |")
    print(f"\nidentical result lists: {same['list']}/{same['n']}; same first hit: {same['first']}/{same['n']}")


def names_only(db: Path, n: int, seed: int) -> None:
    """The fuzzy name part alone over the golden records of ``db`` (read only; e.g. a copy of the
    1M store's ``mdm_golden``): no ingests, so the old search's reload is run before each of its
    queries, as a stream of changes makes it. New: ``NameIndex`` as ``MdmService.search`` uses it."""
    import sqlalchemy as sa
    from rapidfuzz import fuzz, process

    from esbhub.mdm.search import NameIndex
    from esbhub.mdm.standardize import fold, fold_many, standardize
    from esbhub.schemas.party import Party

    eng = sa.create_engine(f"sqlite:///file:{db}?mode=ro&uri=true")
    rng = random.Random(seed)
    index = NameIndex(fold_many)
    with eng.connect() as c:
        rss0 = rss_mb()
        t = time.perf_counter()
        index.refresh(c)
        load = time.perf_counter() - t
        print(f"{len(index):,} active golden records; the new index loads in {load:.2f} s (RSS +{rss_mb() - rss0:,.0f} MB)",
              flush=True)
        active = [i for i in range(len(index.gids)) if index.active[i]]
        rows = {g: (nm, core) for g, nm, core in c.execute(sa.text(
            "SELECT golden_id, name, core_name FROM mdm_golden WHERE status = 'active'"))}
        qs = []
        for _ in range(n):
            nm, core = rows[index.gids[rng.choice(active)]]
            i = rng.randrange(len(core))
            qs.append(rng.choice([core, core[:i] + "枝" + core[i + 1 :], core[:2], nm]))
        old_t: list[float] = []
        reload_t: list[float] = []
        new_t: list[float] = []
        for q in qs:
            core_q = standardize(Party(source_system="search", source_id="q", name=q)).core_name or q
            t = time.perf_counter()
            got = c.execute(sa.text("SELECT golden_id, name, core_name FROM mdm_golden WHERE status = 'active'")).all()
            idx = [(g, nm or "", cr or "") for g, nm, cr in got]
            reload_t.append(time.perf_counter() - t)
            process.extract(core_q, [cr or nm for _g, nm, cr in idx], scorer=fuzz.WRatio, limit=40, score_cutoff=60)
            process.extract(q, [nm for _g, nm, _c in idx], scorer=fuzz.WRatio, limit=40, score_cutoff=60)
            old_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            index.refresh(c)
            index.search(fold(core_q), fold(q), 20)
            new_t.append(time.perf_counter() - t)
    print(f"{n} name queries: old (reload + two full scans) p50 {pct(old_t, .5) * 1000:,.0f} / p99 "
          f"{pct(old_t, .99) * 1000:,.0f} ms, of which the reload p50 {pct(reload_t, .5) * 1000:,.0f} ms; new p50 "
          f"{pct(new_t, .5) * 1000:,.1f} / p99 {pct(new_t, .99) * 1000:,.1f} ms; old ÷ new ×{pct(old_t, .5) / pct(new_t, .5):,.0f}"
          f" / ×{pct(old_t, .99) / pct(new_t, .99):,.0f}; load {loadavg()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--companies", type=int, default=50_000, help="Synthetic base companies (≈1.4 golden records each).")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--db", type=Path, help="Use this SQLite store (it is written to: give it a copy).")
    ap.add_argument("--database-url", help="Use this database as the store (loaded first if empty).")
    ap.add_argument("--pg", action="store_true", help="Load into a fresh PostgreSQL database on 127.0.0.1:5432.")
    ap.add_argument("--keep", type=Path, help="Keep the SQLite store made here as DIR/hub.db.")
    ap.add_argument("--queries", type=int, default=60, help="Golden records to draw queries from (up to 4 each).")
    ap.add_argument("--ingest", type=int, default=5, help="Ingest transactions before each query.")
    ap.add_argument("--names-only", action="store_true",
                    help="Only the fuzzy name part, over the golden records of --db (read only), no ingests.")
    a = ap.parse_args()
    print(f"# MDM customer search — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average {loadavg()}", flush=True)
    if a.names_only:
        names_only(a.db, a.queries, a.seed)
        return
    drop = None
    if a.pg:
        import sqlalchemy as sa

        name = f"mdmsearch_bench_{os.getpid()}"
        admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        a.database_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

        def drop() -> None:
            from esbhub.db import _engines

            eng = _engines.pop(a.database_url, None)
            if eng is not None:
                eng.dispose()
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    try:
        from esbhub.mdm.service import MdmService

        if a.db:
            svc = MdmService(f"sqlite:///{a.db}", migrate=False)
        elif a.database_url:
            import sqlalchemy as sa

            from esbhub.mdm.store import Xref

            svc = MdmService(a.database_url)
            with svc.Session() as s:
                empty = s.execute(sa.select(Xref.source_id).limit(1)).first() is None
            if empty:
                svc = build(a.database_url, a.companies, a.seed)
        else:
            d = a.keep or Path(tempfile.mkdtemp(prefix="mdm_search_"))
            d.mkdir(parents=True, exist_ok=True)
            svc = build(f"sqlite:///{d / 'hub.db'}", a.companies, a.seed)
        run(svc, a)
    finally:
        if drop is not None:
            drop()


if __name__ == "__main__":
    main()

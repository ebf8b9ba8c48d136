"""Old against new MDM code on the real-time path, in one run: speed and the same outcome.

    git worktree add /tmp/oldtree <commit>
    .venv/bin/python bench/mdm_abba.py --store /tmp/mdm1m --old /tmp/oldtree [--new .] \\
        [--work /tmp/abba] [--chunks 8] [--chunk 1000] [--batch 200] [--seed 9] [--pg URL]

``--store`` is a directory with ``hub.db`` and ``mdm_model.json``: what ``bench/mdm_load.py --keep``
leaves (a 1M store takes ~10 min to load).

The VMs this runs on are shared and their speed drifts. Within one session, a fixed Python loop
was 20 % slower at one time than at another. So figures from separate runs do not compare; this
script measures both trees in the same conditions:

* each tree runs in its own process, on its own fresh copy of the store. After copying, the
  original's page cache is dropped and both copies are read through, so that neither is read back
  from disk. How much of each copy is in the page cache is printed then and after the chunks:
  on 2026-11-27 a copy made first and partly evicted while the second was made (other stores
  filled the cache) made whichever tree ran as A ~15 % slower — old A / new B gave ×1.23, the
  same two trees swapped ×0.92, and with both copies in the cache ×1.03. Keep the machine's other
  large files out of the cache;
* both processes load their matcher index first, one after the other;
* then they take the same chunks of one stream in turn: A B B A A B B A … The stream is
  ``bench/mdm_realtime.py``'s: ~70 % changed versions of stored records, ~20 % new records of
  stored companies and ~10 % new companies, made from the original store. Each chunk goes through
  ``MdmService.ingest_many`` in batches of ``--batch``;
* per chunk, the script prints the wall records/s and the process's CPU ms per record. Then it
  prints the means, new/old ratios and how many chunks the new code did faster;
* **the outcome**: every ``mdm_*`` table of the two copies is compared, row by row, without time
  columns. The inbox's stored events are compared without the ids and times generated when they
  were made. Anything else that differs is printed, and the exit status is 1.

A loop probe is printed at the start and at the end: it shows how fast the machine was then.

``--pg URL`` runs the same on PostgreSQL: ``URL`` names a database holding the same store as
``--store`` (``esbhub mdm load`` of the same file). The two copies are databases made from it with
``CREATE DATABASE … TEMPLATE``, analysed and read through (their files, as the server keeps
them), the original's files dropped from the page cache. The outcome is compared on every value's
text form (JSON as ``jsonb``'s, so that one value written as escaped ASCII or as UTF-8 compares
equal). The copies are dropped at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_CHILD = r'''
import json, pickle, sys, time
from pathlib import Path
from esbhub.logging import configure
configure("warning")
from esbhub.bus.envelope import Envelope
from esbhub.mdm.service import MdmService, MdmSettings
from esbhub.schemas.party import Party
url, model, stream_path, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
stream = pickle.load(open(stream_path, "rb"))
svc = MdmService(url, settings=MdmSettings(model_path=Path(model)))
t = time.perf_counter()
svc._ensure_index()
print(json.dumps({"index_s": time.perf_counter() - t}), flush=True)
for line in sys.stdin:
    a, b = map(int, line.split())
    envs = [Envelope.from_bytes(x) for x in stream[a:b]]
    items = [(Party.model_validate(e.payload), e.id, e) for e in envs]
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(items), batch):
        svc.ingest_many(items[i:i + batch])
    t1, c1 = time.perf_counter(), time.process_time()
    print(json.dumps({"rate": len(items) / (t1 - t0), "cpu_ms": (c1 - c0) / len(items) * 1000}), flush=True)
'''

TIME_COLUMNS = {"at", "created_at", "decided_at", "ended_at", "linked_at", "published_at", "received_at",
                "superseded_at", "updated_at", "valid_from", "valid_to"}
"""Columns that hold when a row was written: they differ between any two runs."""

_GENERATED = re.compile(r'"(id|correlation_id|traceparent|created_at|at|time|updated_at|valid_from|occurred_at)": "[^"]*"')
"""What an event gets when it is made (ids, times, trace ids): left out when comparing inboxes."""


def fresh_copy(store: Path, to: Path) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    for p in to.glob("hub.db*"):
        p.unlink()
    shutil.copyfile(store / "hub.db", to / "hub.db")
    return to / "hub.db"


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: Path) -> None:
    """Read a copy through, so that it is in the page cache like the other one."""
    with open(path, "rb", buffering=0) as f:
        while f.read(16 << 20):
            pass


def resident(path: Path) -> str:
    """How much of ``path`` is in the page cache (util-linux ``fincore``), e.g. '6.3G of 6.4G'."""
    try:
        out = subprocess.run(["fincore", "--noheadings", "--output", "RES,SIZE", str(path)], capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no fincore)"
    return f"{out[0]} of {out[1]}"


class PgCopies:
    """``--pg``: the two copies are PostgreSQL databases made from the database holding the store
    (``CREATE DATABASE … TEMPLATE …``), read through after copying, dropped at the end."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.sa = sa
        self.url = sa.make_url(url)
        self.admin = sa.create_engine(self.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        self.names: list[str] = []

    def copy(self, tag: str) -> str:
        name = f"{self.url.database}_abba_{tag.lower()}"
        with self.admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{self.url.database}"')
        self.names.append(name)
        eng = self.sa.create_engine(self.url.set(database=name), isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.exec_driver_sql("ANALYZE")
        eng.dispose()
        return self.url.set(database=name).render_as_string(hide_password=False)

    def files(self, url: str) -> list[Path]:
        """The database's files (tables, indexes, TOAST, every 1 GB segment)."""
        eng = self.sa.create_engine(url)
        with eng.connect() as c:
            data = Path(c.exec_driver_sql("SHOW data_directory").scalar())
            rels = [r[0] for r in c.exec_driver_sql(
                "SELECT pg_relation_filepath(oid) FROM pg_class WHERE relkind IN ('r', 'i', 't') "
                "AND pg_relation_filepath(oid) IS NOT NULL")]
        eng.dispose()
        out: list[Path] = []
        for rel in rels:
            base = data / rel
            out += ([base] if base.exists() else []) + sorted(base.parent.glob(base.name + ".[0-9]*"))
        return out

    def warm(self, url: str) -> None:
        for f in self.files(url):
            warm(f)

    def resident(self, url: str) -> str:
        files = self.files(url)
        total = sum(f.stat().st_size for f in files)
        try:
            out = subprocess.run(["fincore", "--noheadings", "--bytes", "--output", "RES", *map(str, files)],
                                 capture_output=True, text=True, timeout=120, check=True).stdout.split()
        except (OSError, subprocess.SubprocessError):
            return "unknown (no fincore)"
        return f"{sum(int(x) for x in out) / 2**30:.1f}G of {total / 2**30:.1f}G"

    def drop(self) -> None:
        with self.admin.connect() as c:
            for name in self.names:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin.dispose()


def pg_digests(url: str, ids: list[str]) -> tuple[dict[str, tuple[int, str]], dict[str, tuple[str, str]]]:
    """:func:`table_digests` and :func:`inbox` of a PostgreSQL copy: every value as its text form,
    the inbox rows of the stream's envelope ids."""
    import sqlalchemy as sa

    eng = sa.create_engine(url)
    out: dict[str, tuple[int, str]] = {}
    box: dict[str, tuple[str, str]] = {}
    with eng.connect() as c:
        tables = [r[0] for r in c.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE 'mdm_%' "
            "AND tablename != 'mdm_inbox' ORDER BY tablename"))]
        for t in tables:
            # JSON as jsonb's text: the same value written as escaped ASCII or as UTF-8 reads the same
            cols = [f"{name}::jsonb::text" if kind == "json" else f"{name}::text" for name, kind in c.execute(sa.text(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = :t ORDER BY ordinal_position"), {"t": t}) if name not in TIME_COLUMNS]
            order = ", ".join(str(i + 1) for i in range(len(cols)))
            h, n = hashlib.sha256(), 0
            for row in c.execute(sa.text(f"SELECT {', '.join(cols)} FROM {t} ORDER BY {order}")):
                h.update(repr(tuple(row)).encode())
                n += 1
            out[t] = (n, h.hexdigest()[:16])
        for i in range(0, len(ids), 1000):
            for eid, outcome, events in c.execute(sa.text(
                    "SELECT envelope_id, outcome, events::text FROM mdm_inbox WHERE envelope_id = ANY(:ids)"),
                    {"ids": ids[i : i + 1000]}):
                text = json.dumps(json.loads(events), ensure_ascii=False, sort_keys=True)
                box[eid] = (outcome, _GENERATED.sub('"_": 0', text))
    eng.dispose()
    return out, box


def table_digests(db: Path) -> dict[str, tuple[int, str]]:
    """Rows and a digest of every ``mdm_*`` table except the inbox, time columns left out."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    out = {}
    for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'mdm_%' "
                            "AND name != 'mdm_inbox' ORDER BY name"):
        cols = [r[1] for r in con.execute(f"PRAGMA table_info({t})") if r[1] not in TIME_COLUMNS]
        h, n = hashlib.sha256(), 0
        order = ", ".join(str(i + 1) for i in range(len(cols)))
        for row in con.execute(f"SELECT {', '.join(cols)} FROM {t} ORDER BY {order}"):
            h.update(repr(row).encode())
            n += 1
        out[t] = (n, h.hexdigest()[:16])
    con.close()
    return out


def inbox(db: Path, since: int) -> dict[str, tuple[str, str]]:
    """Inbox rows after rowid ``since`` (envelope id → outcome, stored events without generated
    ids and times)."""
    from esbhub.mdm.store import _load

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    out = {}
    for eid, outcome, events in con.execute("SELECT envelope_id, outcome, events FROM mdm_inbox WHERE rowid > ?",
                                            (since,)):
        text = json.dumps(_load(events), ensure_ascii=False, sort_keys=True)
        out[eid] = (outcome, _GENERATED.sub('"_": 0', text))
    con.close()
    return out


def same_outcome(a: Path, b: Path, inbox_since: int) -> list[str]:
    """What differs between the two stores beyond time columns and generated ids (empty: nothing)."""
    diffs = []
    da, db_ = table_digests(a), table_digests(b)
    for t in sorted(set(da) | set(db_)):
        if da.get(t) != db_.get(t):
            diffs.append(f"{t}: {da.get(t)} vs {db_.get(t)}")
    ia, ib = inbox(a, inbox_since), inbox(b, inbox_since)
    bad = [k for k in set(ia) | set(ib) if ia.get(k) != ib.get(k)]
    if bad:
        diffs.append(f"mdm_inbox: {len(bad)} of {len(ia)} rows differ, e.g. {sorted(bad)[0]}")
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True, help="Directory with hub.db and mdm_model.json.")
    ap.add_argument("--old", type=Path, required=True, help="Checkout of the old code (a git worktree).")
    ap.add_argument("--new", type=Path, default=Path(__file__).resolve().parent.parent, help="Checkout of the new code.")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mdm_abba"), help="Where the two copies go (2 × the store).")
    ap.add_argument("--chunks", type=int, default=8, help="Chunks per tree.")
    ap.add_argument("--chunk", type=int, default=1000, help="Records per chunk.")
    ap.add_argument("--batch", type=int, default=200, help="Records per MdmService.ingest_many call.")
    ap.add_argument("--seed", type=int, default=9, help="Seed of the stream.")
    ap.add_argument("--pg", default=None,
                    help="PostgreSQL database holding the same store (e.g. postgresql+psycopg://postgres@127.0.0.1/mdm1m): "
                         "the two copies are made from it; --store's hub.db then only makes the stream.")
    a = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mdm_realtime import loadavg, make_stream, probe

    print(f"# MDM old vs new (ABBA) — {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.cpu_count()} CPUs; "
          f"loop probe {probe():.2f} s; load {loadavg()}", flush=True)
    n = a.chunks * a.chunk
    t = time.perf_counter()
    stream = make_stream(a.store / "hub.db", n, a.seed, "AB")
    a.work.mkdir(parents=True, exist_ok=True)
    stream_path = a.work / "stream.pkl"
    stream_path.write_bytes(pickle.dumps(stream))
    con = sqlite3.connect(f"file:{a.store / 'hub.db'}?mode=ro", uri=True)
    inbox_since = con.execute("SELECT coalesce(max(rowid), 0) FROM mdm_inbox").fetchone()[0]
    con.close()
    pg = PgCopies(a.pg) if a.pg else None
    try:
        return _run(a, stream_path, inbox_since, pg, t, stream)
    finally:
        if pg is not None:
            pg.drop()


def _run(a: argparse.Namespace, stream_path: Path, inbox_since: int, pg: PgCopies | None, t: float,
         stream: list[bytes]) -> int:
    from mdm_realtime import loadavg, probe

    urls: dict[str, str] = {}
    if pg is not None:
        for name in "AB":
            urls[name] = pg.copy(name)
        for f in pg.files(pg.url.render_as_string(hide_password=False)):  # the original: out of the way
            drop_cache(f)
        drop_cache(a.store / "hub.db")
        for name in "AB":
            pg.warm(urls[name])
        where = "PostgreSQL " + pg.url.render_as_string(hide_password=True)
        print("in the page cache: " + ", ".join(f"{n} {pg.resident(urls[n])}" for n in "AB"), flush=True)
    else:
        dbs = {name: fresh_copy(a.store, a.work / name) for name in "AB"}
        drop_cache(a.store / "hub.db")
        for name in "AB":  # the copy made first may have been partly evicted while the second was made
            warm(dbs[name])
        urls = {name: f"sqlite:///{dbs[name]}" for name in "AB"}
        where = str(a.store / "hub.db")
        print("in the page cache: " + ", ".join(f"{n} {resident(dbs[n])}" for n in "AB"), flush=True)
    print(f"stream of {len(stream)} records and two copies of {where} in {time.perf_counter() - t:.0f} s", flush=True)

    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, tree in (("A", a.old), ("B", a.new)):
            env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
            p = subprocess.Popen([sys.executable, "-c", _CHILD, urls[name], str(a.store / "mdm_model.json"),
                                  str(stream_path), str(a.batch)], env=env, cwd=str(a.work), text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            procs[name] = p
            line = p.stdout.readline() if p.stdout else ""
            if not line:
                raise SystemExit(f"the {name} process ({tree}) did not start")
            print(f"{name} = {tree}: matcher index loaded in {json.loads(line)['index_s']:.0f} s", flush=True)
        res: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
        for k in range(a.chunks):
            for name in ("AB" if k % 2 == 0 else "BA"):
                p = procs[name]
                assert p.stdin and p.stdout
                p.stdin.write(f"{k * a.chunk} {(k + 1) * a.chunk}\n")
                p.stdin.flush()
                line = p.stdout.readline()
                if not line:
                    raise SystemExit(f"the {name} process failed on chunk {k}")
                r = json.loads(line)
                res[name].append(r)
                print(f"chunk {k} {name}: {r['rate']:.0f} records/s, CPU {r['cpu_ms']:.2f} ms/record, "
                      f"load {loadavg()}", flush=True)
    finally:
        for p in procs.values():
            if p.stdin:
                p.stdin.close()
            p.wait(60)

    def mean(name: str, k: str) -> float:
        return sum(r[k] for r in res[name]) / len(res[name])

    faster = sum(1 for x, y in zip(res["A"], res["B"], strict=True) if y["rate"] > x["rate"])
    print(f"old: {mean('A', 'rate'):.0f} records/s, CPU {mean('A', 'cpu_ms'):.2f} ms/record")
    print(f"new: {mean('B', 'rate'):.0f} records/s, CPU {mean('B', 'cpu_ms'):.2f} ms/record")
    if pg is not None:
        print("in the page cache after the chunks: " + ", ".join(f"{n} {pg.resident(urls[n])}" for n in "AB"),
              flush=True)
    else:
        print("in the page cache after the chunks: " + ", ".join(f"{n} {resident(dbs[n])}" for n in "AB"),
              flush=True)
    print(f"new/old: records/s ×{mean('B', 'rate') / mean('A', 'rate'):.2f}, CPU per record "
          f"×{mean('B', 'cpu_ms') / mean('A', 'cpu_ms'):.2f}; new faster in {faster} of {a.chunks} chunks; "
          f"loop probe {probe():.2f} s", flush=True)
    if pg is not None:
        from esbhub.bus.envelope import Envelope

        ids = [Envelope.from_bytes(x).id for x in stream]
        (da, ia), (db_, ib) = pg_digests(urls["A"], ids), pg_digests(urls["B"], ids)
        diffs = [f"{t}: {da.get(t)} vs {db_.get(t)}" for t in sorted(set(da) | set(db_)) if da.get(t) != db_.get(t)]
        bad = [k for k in set(ia) | set(ib) if ia.get(k) != ib.get(k)]
        if bad:
            diffs.append(f"mdm_inbox: {len(bad)} of {len(ia)} rows differ, e.g. {sorted(bad)[0]}")
    else:
        diffs = same_outcome(dbs["A"], dbs["B"], inbox_since)
    if diffs:
        print("DIFFERENT OUTCOME:\n  " + "\n  ".join(diffs))
        return 1
    print("same outcome: every mdm_* table identical without time columns, the inbox but for generated ids")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

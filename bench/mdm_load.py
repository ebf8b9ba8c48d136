"""Bulk initial load through the FULL MDM pipeline into SQLite, against Splink's batch dedupe.

    .venv/bin/python bench/mdm_load.py [--records N | --companies N] [--batch 500] [--workers 1]
        [--keep DIR] [--baseline-tree DIR --baseline-companies 13000] [--skip-splink]

What is measured:

* our load: synthetic Chinese enterprise records (``esbhub.mdm.synth``; ``--records`` takes the
  first N of a set generated big enough, written first — untimed, reused by later runs — as a
  ``party.v1`` JSON-lines file under ``--files`` and read back and validated inside the timed
  load) through :func:`esbhub.mdm.loader.load_parties` — the path of ``esbhub mdm load`` — into
  an empty store, so set at a time (:mod:`esbhub.mdm.bulk`: standardize, in ``--workers``
  processes ahead of the ingesting one → block/score against everything staged before → cluster
  with constraints → survivorship with lineage, in the workers too → history, xref, hierarchy →
  events), committed to SQLite;
* wall time of the whole load and throughput per tenth, so any growth of the per-record cost
  with the size of the store and index shows;
* peak RSS of this process (the ingesting one) and the matcher index: RSS grown by rebuilding
  it from the store in a fresh process (what a restarted worker holds); storage on disk;
* ``--baseline-tree``: another checkout (``git worktree add /tmp/wt-old <commit>``) loading the
  same ``--baseline-companies`` set, alternated with this tree, each in a fresh process and
  store: old and new code in the same conditions (each tree's own bulk path);
* the per-record path over the first ``--per-record`` records (one ``ingest`` per record, as a
  bus consumer takes them) against the initial load of the same records into a fresh store;
* Splink (DuckDB) deduplicating the same standardized records (read back from the store) in
  the same run, in a child process: EM training + prediction + clustering, no store — a batch
  engine's lower bound, not the same job. If it fails (memory, time) at the full size, that is
  reported and it is tried on halves until it manages.

``--keep DIR`` keeps the loaded store as ``DIR/hub.db`` with the match model as
``DIR/mdm_model.json`` and writes ``DIR/READY`` saying how to open it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KB on Linux


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


class Records:
    """The synthetic set as the load takes it: ``companies`` base companies, or the first
    ``records`` records of a set generated big enough (≈ 3.9 records per base company), made
    while they are loaded (a million Party objects held at once would be ~4 GB of this process's
    RSS that no real load holds). Keeps the truth (key → entity) and the first ``keep`` records."""

    def __init__(self, records: int | None, companies: int | None, seed: int, keep: int = 1000) -> None:
        from esbhub.mdm.synth import generate

        self.seed, self.keep = seed, keep
        self.truth: dict[str, str] = {}
        self.first: list = []
        if records:
            self.n, self.companies, self.materialized = records, int(records / 3.85) + 50, None
        else:
            ds = generate(companies or 3000, seed=seed)
            self.n, self.companies, self.materialized = len(ds.records), companies or 3000, ds.records
            self.truth = ds.truth

    def __iter__(self) -> Any:
        from esbhub.mdm.synth import iter_records

        src = ((p, None) for p in self.materialized) if self.materialized is not None \
            else iter_records(self.companies, seed=self.seed)
        for i, (p, eid) in enumerate(src):
            if i >= self.n:
                return
            if eid is not None:
                self.truth[f"{p.source_system}:{p.source_id}"] = eid
            if len(self.first) < self.keep:
                self.first.append(p)
            yield p

    def entities(self) -> int:
        return len(set(self.truth.values()))

    def to_jsonl(self, path: Path) -> float:
        """Write the set as a ``party.v1`` JSON-lines file (what ``esbhub mdm load`` reads), with its
        truth beside it (``.truth.json``); a file written before for the same set is reused.
        Returns the seconds spent making it (0 when reused)."""
        truth_path = path.with_suffix(".truth.json")
        first_path = path.with_suffix(".first.jsonl")
        if path.exists() and truth_path.exists() and first_path.exists():
            self.truth = json.loads(truth_path.read_text(encoding="utf-8"))
            from esbhub.schemas.party import Party

            self.first = [Party.model_validate_json(x) for x in first_path.read_text(encoding="utf-8").splitlines()]
            return 0.0
        t = time.perf_counter()
        tmp = path.with_suffix(".part")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            for p in self:
                fh.write(p.model_dump_json(exclude_none=True))
                fh.write("\n")
        first_path.write_text("".join(p.model_dump_json(exclude_none=True) + "\n" for p in self.first), encoding="utf-8")
        truth_path.write_text(json.dumps(self.truth), encoding="utf-8")
        tmp.rename(path)
        return time.perf_counter() - t


def partition_of(svc: Any) -> set[frozenset[str]]:
    """Source keys by golden id, read with Core (the service's partition_now loads whole rows)."""
    import sqlalchemy as sa

    from esbhub.mdm.store import Xref

    groups: dict[str, set[str]] = {}
    with svc.Session() as s:
        for a, b, gid in s.execute(sa.select(Xref.source_system, Xref.source_id, Xref.golden_id)):
            groups.setdefault(gid, set()).add(f"{a}:{b}")
    return {frozenset(v) for v in groups.values()}


def db_mb(db: Path) -> float:
    """The SQLite file with its WAL (up to 64 MiB after a bulk load) and shared-memory index."""
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 1e6


def our_load(records: Records, batch: int, workers: int, db: Path, source: Path | None = None) -> dict:
    """The load timed: of ``records`` (made as they are taken), or of the JSON-lines file ``source``
    they were written to, read and validated as ``esbhub mdm load FILE`` does."""
    from esbhub.mdm import loader
    from esbhub.mdm.loader import load_parties
    from esbhub.mdm.service import MdmService

    svc = MdmService(f"sqlite:///{db}")
    n = records.n
    tenth = max(batch, n // 10)
    marks: list[tuple[int, float, str]] = []
    state = {"done": 0, "last_n": 0, "last_t": time.perf_counter()}
    ingest_many = svc.ingest_many

    def timed(items: Any, **kw: Any) -> Any:
        out = ingest_many(items, **kw)
        state["done"] += len(items)
        if state["done"] - state["last_n"] >= tenth or state["done"] == n:
            now = time.perf_counter()
            marks.append((state["done"], (state["done"] - state["last_n"]) / (now - state["last_t"]), loadavg()))
            print(f"  … {state['done']:>9,} records, {marks[-1][1]:,.0f}/s in the last tenth, load {loadavg()}",
                  flush=True)
            state["last_t"], state["last_n"] = now, state["done"]
        return out

    def counted(src: Any) -> Any:  # the initial load takes records as it stages them
        for p in src:
            yield p
            state["staged"] = state.get("staged", 0) + 1
            if state["staged"] % tenth == 0:
                now = time.perf_counter()
                marks.append((state["staged"], tenth / (now - state["last_t"]), loadavg()))
                print(f"  … {state['staged']:>9,} records staged, {marks[-1][1]:,.0f}/s in the last tenth, "
                      f"load {loadavg()}, RSS {rss_mb():,.0f} MB", flush=True)
                state["last_t"] = now

    svc.ingest_many = timed  # type: ignore[method-assign]
    t0 = state["last_t"] = time.perf_counter()
    if source is None:
        out = load_parties(svc, counted(records), batch=batch, workers=workers)
    else:  # what `esbhub mdm load FILE` runs
        out = loader.load(svc, counted(loader.iter_file(source)), batch=batch, workers=workers)
    total = time.perf_counter() - t0
    svc.ingest_many = ingest_many  # type: ignore[method-assign]
    if out.get("phases"):
        print(f"  set-at-a-time phases (s): {out['phases']}", flush=True)
    peak = peak_rss_mb()
    rss = rss_mb()
    index_n = len(svc.matcher)
    partition = partition_of(svc)
    # the real-time path afterwards: one changed record per transaction (as the bus delivers them)
    lat = []
    for j, p in enumerate(records.first[: min(300, n)]):
        changed = p.model_copy(update={"status": "suspended" if p.status != "suspended" else "active"})
        t = time.perf_counter()
        svc.ingest(changed, f"rt-{j}")
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return {"records": n, "seconds": total, "rate": n / total, "marks": marks, "goldens": len(partition),
            "partition": partition, "db_mb": db_mb(db), "rss_mb": rss, "peak_mb": peak, "index_n": index_n,
            "errors": out["errors"], "svc": svc, "mode": out.get("mode", "batches"),
            "rt_p50": lat[len(lat) // 2], "rt_p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "rt_n": len(lat)}


def per_record_vs_bulk(records: list, batch: int, d: Path) -> dict:
    """The same records through ``ingest`` one by one and through the initial load (set at a time)."""
    from esbhub.mdm.loader import envelope_id_for, load_parties
    from esbhub.mdm.service import MdmService

    one = MdmService(f"sqlite:///{d / 'per_record.db'}")
    t = time.perf_counter()
    for p in records:
        one.ingest(p, envelope_id_for(p))
    t_one = time.perf_counter() - t
    bulk = MdmService(f"sqlite:///{d / 'bulk.db'}")
    t = time.perf_counter()
    load_parties(bulk, records, batch=batch, workers=0)
    t_bulk = time.perf_counter() - t
    same = one.partition_now() == bulk.partition_now()
    return {"n": len(records), "one_rate": len(records) / t_one, "bulk_rate": len(records) / t_bulk, "same": same}


def index_memory(db: Path) -> dict:
    """RSS grown by building the matcher index of everything stored, in a fresh process (as a
    restarted worker does it): interpreter and imports are counted out, the index alone is in."""
    out = subprocess.run([sys.executable, __file__, "--index-rss", str(db)], capture_output=True, text=True,
                         timeout=3600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _index_rss(db: str) -> None:
    import gc

    import sqlalchemy as sa

    from esbhub.mdm.service import MdmService
    from esbhub.mdm.store import Xref

    svc = MdmService(f"sqlite:///{db}", migrate=False)
    with svc.Session() as s:
        n = s.execute(sa.select(sa.func.count()).select_from(Xref).where(Xref.deleted.is_(False))).scalar()
        s.execute(sa.select(Xref).limit(1)).all()  # warm up SQLAlchemy and the driver before measuring
    gc.collect()
    before = rss_mb()
    t = time.perf_counter()
    svc._ensure_index()
    secs = time.perf_counter() - t
    gc.collect()
    print(json.dumps({"mb": rss_mb() - before, "seconds": secs, "n": n, "rss_mb": rss_mb()}))


def pairwise(partition: set, truth: dict[str, str]) -> tuple[float, float, float, int]:
    """Pairwise precision, recall, F1 of the golden records against the generator's truth, and
    how many golden records mix two or more real companies (false merges)."""
    from collections import Counter

    def n_pairs(sizes: Any) -> int:
        return sum(k * (k - 1) // 2 for k in sizes)

    true = n_pairs(Counter(truth.values()).values())
    pred = n_pairs(len(c) for c in partition)
    tp = n_pairs(n for c in partition for n in Counter(truth.get(k) for k in c).values())
    p = tp / pred if pred else 1.0
    r = tp / true if true else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    mixed = sum(1 for c in partition if len({truth.get(k) for k in c}) > 1)
    return p, r, f, mixed


def bcubed(partition: set, truth: dict[str, str]) -> tuple[float, float, float]:
    """B-cubed precision, recall, F1: per source record, the share of its golden record that is
    its company, and the share of its company that is in its golden record (averaged)."""
    from collections import Counter

    true_size = Counter(truth.values())
    ps = rs = 0.0
    n = 0
    for c in partition:
        by = Counter(truth.get(k) for k in c)
        for e, inter in by.items():
            ps += inter * inter / len(c)
            rs += inter * inter / true_size[e] if e is not None else 0.0
            n += inter
    p, r = ps / n if n else 1.0, rs / n if n else 1.0
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


# ---------------------------------------------------------------------------------- Splink
def _splink_frame(db: str, limit: int | None) -> Any:
    """The standardized records as the load stored them (``mdm_xref.std``), in arrival order."""
    import sqlite3

    import pandas as pd

    q = ("SELECT source_system || ':' || source_id AS unique_id, NULLIF(core_name, '') AS core_name, "
         "NULLIF(name_norm, '') AS name_norm, uscc, json_extract(std, '$.city') AS city, "
         "json_extract(std, '$.phones[0]') AS phone, json_extract(std, '$.address') AS address, "
         "NULLIF(json_extract(std, '$.pinyin_key'), '') AS pinyin_key FROM mdm_xref ORDER BY first_seen")
    if limit:
        q += f" LIMIT {int(limit)}"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return pd.read_sql_query(q, conn)


def _splink_child(db: str, limit: int | None) -> None:
    import threading

    peak = [0.0]
    done = threading.Event()

    def sample() -> None:  # ru_maxrss of a child can carry its parent's size from before exec
        while not done.wait(0.2):
            peak[0] = max(peak[0], rss_mb())

    threading.Thread(target=sample, daemon=True).start()
    df = _splink_frame(db, limit)
    out = splink_dedupe(df)
    done.set()
    out["peak_mb"] = max(peak[0], rss_mb())
    print(json.dumps(out))


def splink_dedupe(df: Any) -> dict:
    import splink
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    t0 = time.perf_counter()
    settings = SettingsCreator(
        link_type="dedupe_only",
        unique_id_column_name="unique_id",
        blocking_rules_to_generate_predictions=[
            block_on("uscc"), block_on("core_name"), block_on("phone"), block_on("pinyin_key", "city"),
        ],
        comparisons=[
            cl.ExactMatch("uscc"),
            cl.JaroWinklerAtThresholds("name_norm", [0.95, 0.88]),
            cl.ExactMatch("city"),
            cl.ExactMatch("phone"),
            cl.JaroWinklerAtThresholds("address", [0.92, 0.8]),
        ],
        retain_intermediate_calculation_columns=False,
    )
    db_api = DuckDBAPI()
    try:  # Splink 5
        linker = Linker(db_api.register(df, table_name="parties"), settings, log_level="WARNING")
    except AttributeError:  # Splink 4
        linker = Linker(df, settings, db_api=db_api)
    linker.training.estimate_probability_two_random_records_match([block_on("uscc")], recall=0.7)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("core_name"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("uscc"))
    preds = linker.inference.predict(threshold_match_probability=0.9)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(preds, 0.99).as_pandas_dataframe()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "rate": len(df) / dt, "records": len(df), "clusters": int(clusters["cluster_id"].nunique()),
            "version": splink.__version__}


def splink_run(db: Path, n: int, timeout: float) -> list[dict]:
    """Splink on the stored records in a child process; on failure, again on half as many."""
    tries: list[dict] = []
    limit: int | None = None
    while True:
        t = time.perf_counter()
        try:
            out = subprocess.run([sys.executable, __file__, "--splink-child", str(db), "--splink-limit", str(limit or 0)],
                                 capture_output=True, text=True, timeout=timeout)
            if out.returncode == 0:
                tries.append(json.loads(out.stdout.strip().splitlines()[-1]))
                return tries
            why = f"exit {out.returncode}: {(out.stderr.strip().splitlines() or ['?'])[-1][:300]}"
        except subprocess.TimeoutExpired:
            why = f"not done after {timeout:.0f} s (stopped)"
        except ImportError:
            return [{"error": "Splink not installed: pip install 'esbhub[bench]'"}]
        tries.append({"records": limit or n, "error": why, "seconds": time.perf_counter() - t})
        limit = (limit or n) // 2
        if limit < 10_000:
            return tries


# ---------------------------------------------------------------------------------- old vs new
def _tree_child(tree: str, companies: int, seed: int, batch: int, workers: int, db: str) -> None:
    """Run in a child whose ``sys.path`` starts with ``tree``: load the set with that tree's bulk path."""
    from esbhub.mdm import loader, service
    from esbhub.mdm.service import MdmService
    from esbhub.mdm.synth import generate

    assert service.__file__.startswith(str(Path(tree).resolve())), service.__file__  # the tree asked for
    records = generate(companies, seed=seed).records
    svc = MdmService(f"sqlite:///{db}")
    t = time.perf_counter()
    if hasattr(loader, "load_parties"):
        out = loader.load_parties(svc, records, batch=batch, workers=workers)
        path = f"load_parties ({out.get('mode', 'batches')}), {workers} standardizing worker(s)"
    else:  # the old tree: what its bench ran (the loader took only flat rows then)
        for i in range(0, len(records), batch):
            svc.ingest_many([(p, loader.envelope_id_for(p), None) for p in records[i : i + batch]])
        path = "ingest_many batches"
    secs = time.perf_counter() - t
    digest = state_digest(svc)
    print(json.dumps({"records": len(records), "seconds": secs, "rate": len(records) / secs, "path": path,
                      "state": digest.hexdigest()[:16], "load": loadavg()}))


def untimed(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: untimed(x) for k, x in v.items() if k != "source_updated_at"}
    return [untimed(x) for x in v] if isinstance(v, list) else v


def state_digest(svc: Any) -> Any:
    """A hash of the golden records — each named by its member keys, not its id: status, members,
    attribute values with their lineage, tier — without wall-clock times (lineage of undated
    sources carries the load time). Ids are left out: the initial load set at a time gives dense
    ids in founding order, batch by batch some ids are made and retired by later merges."""
    import hashlib

    import orjson
    import sqlalchemy as sa

    from esbhub.mdm.store import Golden

    h = hashlib.sha256()
    with svc.Session() as s:
        rows = sorted(
            (orjson.dumps([sorted(row.members or []), row.status, untimed(row.attributes), row.tier],
                          option=orjson.OPT_SORT_KEYS)
             for row in s.execute(sa.select(Golden.status, Golden.members, Golden.attributes, Golden.tier)
                                  .where(Golden.status != "retired"))),
        )
        for row in rows:
            h.update(row)
    return h


def baseline(trees: list[tuple[str, str]], companies: int, seed: int, batch: int, workers: int, rounds: int) -> list:
    out = []
    for r in range(rounds):
        for label, tree in (trees if r % 2 == 0 else trees[::-1]):
            with tempfile.TemporaryDirectory() as d:
                args = [sys.executable, __file__, "--tree-child", tree, "--companies", str(companies), "--seed", str(seed),
                        "--batch", str(batch), "--workers", str(workers), "--keep", d + "/b.db"]
                env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}  # that tree's esbhub, not the installed one
                res = subprocess.run(args, capture_output=True, text=True, cwd=tree, env=env, timeout=7200, check=True)
                row = json.loads(res.stdout.strip().splitlines()[-1])
                row["tree"] = label
                out.append(row)
                print(f"  baseline {label}: {row['rate']:,.0f} records/s ({row['path']}), load {row['load']}", flush=True)
    return out


def keep_store(r: dict, model_json: str, db: Path, keep: Path) -> None:
    import shutil

    keep.mkdir(parents=True, exist_ok=True)
    svc = r["svc"]
    svc.Session.kw["bind"].dispose()
    for f in db.parent.glob(db.name + "*"):
        shutil.move(str(f), keep / f.name.replace(db.name, "hub.db"))
    (keep / "mdm_model.json").write_text(model_json, encoding="utf-8")
    url = f"sqlite:///{keep / 'hub.db'}"
    (keep / "READY").write_text(
        f"database_url: {url}\n"
        f"model: {keep / 'mdm_model.json'} (the engine's default MatchModel the load used)\n"
        f"records: {r['records']} source records, {r['goldens']} golden records "
        f"(synthetic CN set from bench/mdm_load.py, loaded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n\n"
        "Open it (the matcher index, ~1M records, is built from the store on first use, a few minutes):\n\n"
        "    from pathlib import Path\n"
        "    from esbhub.mdm.service import MdmService, MdmSettings\n"
        f"    svc = MdmService({url!r}, settings=MdmSettings(model_path=Path({str(keep / 'mdm_model.json')!r})),\n"
        "                     migrate=False)\n"
        "    svc._ensure_index()  # optional: build the index now rather than on the first ingest\n"
        "    svc.ingest(party, envelope_id)  # the real-time path\n\n"
        "Copy hub.db* before writing to it if others need the pristine 1M store.\n",
        encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--companies", type=int, default=3000, help="Synthetic base companies (records ≈ 3.9×).")
    ap.add_argument("--records", type=int, default=0, help="Load exactly this many records (overrides --companies).")
    ap.add_argument("--batch", type=int, default=500, help="Records per transaction.")
    ap.add_argument("--workers", type=int, default=1, help="Standardizing processes beside the ingesting one.")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--skip-splink", action="store_true")
    ap.add_argument("--splink-timeout", type=float, default=3600.0, help="Seconds Splink may take per try.")
    ap.add_argument("--per-record", type=int, default=1000,
                    help="Also load the first N records one transaction each and in batches (0: skip).")
    ap.add_argument("--keep", type=Path, help="Keep the loaded store here (hub.db, mdm_model.json, READY).")
    ap.add_argument("--files", type=Path, default=Path(tempfile.gettempdir()),
                    help="Where the --records set is written as party.v1 JSON lines (reused by later runs).")
    ap.add_argument("--baseline-tree", help="Another checkout to compare with (e.g. a git worktree of the old commit).")
    ap.add_argument("--baseline-companies", type=int, default=13000, help="Base companies of the old-vs-new set.")
    ap.add_argument("--baseline-rounds", type=int, default=2, help="Alternations of old and new.")
    ap.add_argument("--index-rss", metavar="DB", help=argparse.SUPPRESS)
    ap.add_argument("--splink-child", metavar="DB", help=argparse.SUPPRESS)
    ap.add_argument("--splink-limit", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--tree-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.tree_child:
        _tree_child(a.tree_child, a.companies, a.seed, a.batch, a.workers, str(a.keep))
        return
    if a.index_rss:
        _index_rss(a.index_rss)
        return
    if a.splink_child:
        _splink_child(a.splink_child, a.splink_limit or None)
        return

    print(f"# MDM bulk load — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load average {loadavg()}", flush=True)
    base = None
    if a.baseline_tree:
        here = str(Path(__file__).resolve().parent.parent)
        print(f"old vs new: {a.baseline_companies} base companies (seed {a.seed}), batches of {a.batch}, "
              f"{a.baseline_rounds} alternations, each a fresh process and store", flush=True)
        base = baseline([("old", a.baseline_tree), ("new", here)], a.baseline_companies, a.seed, a.batch, a.workers,
                        a.baseline_rounds)
    records = Records(a.records, a.companies, a.seed, keep=max(300, a.per_record))
    print(f"records: {records.n:,} (synthetic CN set, seed {a.seed}, {records.companies:,} base companies, "
          f"{'written to a file first' if records.materialized is None else 'made before loading'}); batches of {a.batch}, "
          f"{a.workers} standardizing worker(s); RSS before the load {rss_mb():,.0f} MB", flush=True)
    d = Path(tempfile.mkdtemp(prefix="mdm_load_", dir=str(a.keep.parent) if a.keep else None))
    db = d / "mdm.db"
    source = None
    if records.materialized is None:  # a big set: loaded from a file, as `esbhub mdm load FILE` does
        source = a.files / f"esbhub_synth_{records.n}_seed{a.seed}.jsonl"
        made = records.to_jsonl(source)
        print(f"the set as party.v1 JSON lines: {source} ({source.stat().st_size / 1e6:,.0f} MB; "
              f"{'made in ' + format(made, ',.0f') + ' s, not timed' if made else 'written by an earlier run'}); "
              f"the load below reads and validates it", flush=True)
    r = our_load(records, a.batch, a.workers, db, source)
    print("\n| tenth ends at | records/s in that tenth | load average then |\n|---:|---:|---|")
    for done, rate, la in r["marks"]:
        print(f"| {done:,} | {rate:,.0f} | {la} |")
    print(f"\nesbhub full pipeline into SQLite ({r['mode']}): {r['records']:,} records in {r['seconds']:,.1f} s "
          f"({r['seconds'] / 60:.1f} min) = {r['rate']:,.0f} records/s; {r['goldens']:,} golden records; "
          f"{len(r['errors'])} rows rejected")
    print(f"ingesting process: peak RSS {r['peak_mb']:,.0f} MB, RSS after the load {r['rss_mb']:,.0f} MB "
          f"(matcher index of {r['index_n']:,} records inside); storage {r['db_mb']:,.0f} MB "
          f"= {r['db_mb'] * 1e3 / r['records']:.1f} KB per source record (SQLite file + WAL; the file alone "
          f"{db.stat().st_size / 1e6:,.0f} MB)")
    truth = records.truth
    print(f"true entities: {len(set(truth.values())):,}")
    p, rc, f, mixed = pairwise(r["partition"], truth)
    print(f"golden records vs the generator's truth: pairwise precision {p:.4f}, recall {rc:.4f}, F1 {f:.4f}; "
          f"{mixed} golden records mix different companies (engine defaults, steward queue not worked)")
    bp, br, bf = bcubed(r["partition"], truth)
    print(f"B-cubed precision {bp:.4f}, recall {br:.4f}, F1 {bf:.4f}")
    print(f"real-time path after the load ({r['rt_n']} changed records, one transaction each, against "
          f"{r['records']:,} indexed): p50 {r['rt_p50']:.1f} ms, p99 {r['rt_p99']:.1f} ms", flush=True)
    model_json = r["svc"].matcher.model.to_json()
    del r["svc"].matcher  # the index is measured in a fresh process next; free this one's
    mem = index_memory(db)
    print(f"matcher index rebuilt from the store in a fresh process: +{mem['mb']:,.0f} MB RSS for {mem['n']:,} records "
          f"({mem['mb'] * 1e3 / max(mem['n'], 1):.2f} KB each) in {mem['seconds']:.0f} s; that process's RSS then "
          f"{mem['rss_mb']:,.0f} MB — target ≤ 4 GB", flush=True)
    if a.per_record:
        cmp = per_record_vs_bulk(records.first[: a.per_record], a.batch, d)
        print(f"per-record path (one transaction per record) vs the initial load (set at a time) on the same "
              f"first {cmp['n']} records, fresh stores: {cmp['one_rate']:,.0f} vs {cmp['bulk_rate']:,.0f} records/s "
              f"= ×{cmp['bulk_rate'] / cmp['one_rate']:.1f}; same golden records: {cmp['same']}", flush=True)
    if base:
        print("\n| run | tree | path | records | records/s | state digest | load average |\n|---:|---|---|---:|---:|---|---|")
        for i, row in enumerate(base, 1):
            print(f"| {i} | {row['tree']} | {row['path']} | {row['records']:,} | {row['rate']:,.0f} | {row['state']} "
                  f"| {row['load']} |")
        old = [x["rate"] for x in base if x["tree"] == "old"]
        new = [x["rate"] for x in base if x["tree"] == "new"]
        print(f"new/old: ×{min(new) / max(old):.2f}–×{max(new) / min(old):.2f} (mean ×{sum(new) / len(new) / (sum(old) / len(old)):.2f}); "
              f"same golden records and xref in every run: {len({x['state'] for x in base}) == 1}")
    if not a.skip_splink:
        for sp in splink_run(db, records.n, a.splink_timeout):
            if "error" in sp:
                print(f"Splink on {sp.get('records', 0):,} records: FAILED — {sp['error']}")
            else:
                print(f"Splink {sp['version']} (DuckDB) batch dedupe of the same standardized records "
                      f"({sp['records']:,}): {sp['seconds']:,.1f} s = {sp['rate']:,.0f} records/s, {sp['clusters']:,} "
                      f"clusters, peak RSS {sp['peak_mb']:,.0f} MB (training + predict + cluster; no store, history, "
                      f"lineage or events)")
    if a.keep:
        keep_store(r, model_json, db, a.keep)
        print(f"store kept: {a.keep}/hub.db (+ mdm_model.json, READY)")
    import shutil

    shutil.rmtree(d, ignore_errors=True)  # what is left: the per-record comparison's stores
    print(f"load average at the end {loadavg()}")


if __name__ == "__main__":
    main()

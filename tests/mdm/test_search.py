"""The fuzzy name index of customer search (esbhub.mdm.search), without a store: its candidate
bound against rapidfuzz, and its answers against scoring every name."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz import fuzz

from esbhub.mdm.search import CUTOFF, NameIndex, max_wratio
from esbhub.mdm.standardize import fold, fold_many

# few characters, so that strings share some, repeat some and come in all length ratios
_TEXT = st.text(alphabet="华信科技深圳市有限公司AB", min_size=0, max_size=40)


@settings(max_examples=3000, deadline=None)
@given(_TEXT, _TEXT)
def test_wratio_never_exceeds_the_bound_from_shared_characters(q, s):
    shared = sum(min(q.count(ch), s.count(ch)) for ch in set(q))
    bound = max_wratio(len(q), np.array([len(s)]), np.array([shared]))[0]
    assert fuzz.WRatio(q, s) <= bound + 1e-6


def _rows(names, status="active", start=1):
    """Golden rows as the store gives them: (golden id, status, name, core name), by golden id."""
    return [(f"G{i:010d}", status, n, c) for i, (n, c) in enumerate(names, start=start)]


def _everything(index: NameIndex, core_q: str, name_q: str, limit: int):
    """What scoring every active name gives: each record's best field (core name first on a tie),
    ≥ CUTOFF, best first, ties by golden id."""
    best: dict[str, tuple[float, str]] = {}
    for field, q, on in ((index.core, core_q, "core_name"), (index.name, name_q, "name")):
        for gid, i in index.slot.items():
            if not index.active[i] or not q:
                continue
            sc = round(fuzz.WRatio(q, field.text(i)), 6)
            if sc >= CUTOFF and (gid not in best or best[gid][0] < sc):
                best[gid] = (sc, on)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:limit]
    return [(gid, sc, on) for gid, (sc, on) in ranked]


@pytest.fixture(scope="module")
def names() -> list[tuple[str, str]]:
    """(name, core name) of synthetic records: look-alikes, traditional forms, spaces, branches."""
    from esbhub.mdm.standardize import standardize
    from esbhub.mdm.synth import generate

    return [(p.name, standardize(p).core_name) for p in generate(100, seed=3).records[:300]]


def _queries(names: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for name, core in names[::37]:
        typo = core[:1] + "枝" + core[2:]
        out += [(fold(core), fold(name)), (fold(typo), fold(typo)), (fold(core[:2]), fold(core[:2])),
                (fold(name), fold(name)), ("有限公司", "有限公司")]
    return out


def test_index_answers_as_scoring_every_name_would(names):
    index = NameIndex(fold_many)
    index.load([_rows(names)])
    for core_q, name_q in _queries(names):
        for limit in (1, 5, 20):
            got = [(h.golden_id, h.score, h.on) for h in index.search(core_q, name_q, limit)]
            assert got == _everything(index, core_q, name_q, limit), (core_q, name_q, limit)


def test_index_answers_as_scoring_every_name_would_after_renames_retirements_and_new_records(names):
    """Names changed in place leave postings behind (they only over-count), new records land in
    the per-token lists, retired ones are masked: the answers stay those of scoring everything."""
    index = NameIndex(fold_many)
    rows = _rows(names[:200])
    index.load([rows[:70], rows[70:]])
    changed = [(gid, "active", *names[-1 - i]) for i, (gid, *_r) in enumerate(rows[:40])]
    retired = [(gid, "retired", n, c) for gid, _s, n, c in rows[40:60]]
    index._apply(sorted(changed + retired))
    index._apply(_rows(names[200:260], start=1000))
    index._apply(rows[40:45])  # an unmerge brings a retired id back
    assert len(index) == 200 - 20 + 60 + 5
    assert index.name.stale > 0  # old names' postings are still there
    for core_q, name_q in _queries(names):
        for limit in (3, 20):
            got = [(h.golden_id, h.score, h.on) for h in index.search(core_q, name_q, limit)]
            assert got == _everything(index, core_q, name_q, limit), (core_q, name_q, limit)


def test_index_drops_postings_of_old_names_once_they_are_many():
    index = NameIndex(fold_many)
    index.load([_rows([(f"甲乙丙丁{i}有限公司", f"甲乙丙丁{i}") for i in range(100)])])
    for round_ in range(40):
        index._apply(_rows([(f"戊己庚{round_}{i}有限公司", f"戊己庚{round_}{i}") for i in range(100)]))
    assert index.name.stale <= 0.2 * index.name.postings + 1000
    assert [h.golden_id for h in index.search("戊己庚395", "", 1)] == ["G0000000006"]
    assert index.search("甲乙丙丁", "", 5) == []


def test_traditional_full_width_and_spaced_names_are_found_by_their_simplified_form():
    index = NameIndex(fold_many)
    index.load([_rows([("華信科技（深圳）有限公司", "华信科技"), ("广州 远洋 物流有限公司", "远洋物流")])])
    assert index.search(fold("华信"), fold("华信科技(深圳)有限公司"), 5)[0].golden_id == "G0000000001"
    hit = index.search("", fold("广州远洋物流有限公司"), 5)[0]
    assert (hit.golden_id, hit.score, hit.on) == ("G0000000002", 100.0, "name")

"""Fellegi–Sunter matcher: decisions, evidence, blocking, TF, generic phones, EM training, labels."""

from __future__ import annotations

import collections
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esbhub.mdm.match import (
    Matcher,
    MatchModel,
    TermFrequencies,
    blocking_keys,
    evidence_json,
    refine_with_labels,
    train_em,
)
from esbhub.mdm.standardize import codes, standardize
from esbhub.mdm.synth import generate
from esbhub.schemas.party import Party

U1 = codes.make_uscc("9", "1", "440305", "MA5DC9X1")
U2 = codes.make_uscc("9", "1", "440305", "MA5DC9X2")


def org(name: str, sid: str = "1", system: str = "crm", **kw):
    return standardize(Party(source_system=system, source_id=sid, name=name, **kw))


HEAD = dict(uscc=U1, phones=[{"number": "0755-26001234"}], addresses=[{"text": "广东省深圳市南山区科技园路1号"}])


@pytest.fixture(scope="module")
def synth():
    ds = generate(250, seed=9)
    recs = {ds.key(p): standardize(p) for p in ds.records}
    return ds, recs


@pytest.fixture(scope="module")
def trained(synth):
    _, recs = synth
    return train_em(list(recs.values()), n_random_pairs=20_000)


def test_same_company_across_systems_and_spellings_is_a_match():
    m = Matcher()
    r = m.score(org("深圳市华信科技有限公司", **HEAD),
                org("華信科技（深圳）有限責任公司", "B1", "billing", phones=[{"number": "26001234"}],
                    addresses=[{"text": "深圳南山科技园路1号"}]))
    assert r.decision == "match" and r.hard is None
    ev = {e.field: e for e in r.evidence}
    assert ev["name"].level == "canonical_exact" and ev["phone"].level == "shared" and ev["address"].level == "exact"
    assert ev["uscc"].level == "null" and ev["uscc"].weight == 0


def test_branch_carrying_the_head_office_uscc_is_not_merged():
    r = Matcher().score(org("深圳市华信科技有限公司", **HEAD), org("深圳市华信科技有限公司南山分公司", "2", **HEAD))
    assert r.decision == "no_match" and r.hard == "cannot_link:branch_vs_head"
    assert r.probability > 0.99  # the evidence is kept: it is alike, it is just not the same


def test_different_valid_usccs_are_not_merged_whatever_the_rest_says():
    r = Matcher().score(org("深圳市华信科技有限公司", **HEAD),
                        org("深圳市华信科技有限公司", "2", **{**HEAD, "uscc": U2}))
    assert r.decision == "no_match" and r.hard == "cannot_link:uscc_conflict"


def test_same_trade_name_in_another_city_is_not_a_match():
    r = Matcher().score(org("深圳市华信科技有限公司", **HEAD),
                        org("广州市华信科技有限公司", "2", phones=[{"number": "020-88001234"}],
                            addresses=[{"text": "广州市天河区天河路1号"}]))
    assert r.decision == "no_match"


def test_name_one_character_apart_with_nothing_else_shared_is_not_a_match():
    r = Matcher().score(org("深圳市华信科技有限公司", **HEAD),
                        org("深圳市华兴科技有限公司", "2", phones=[{"number": "0755-88001234"}],
                            addresses=[{"text": "深圳市福田区深南大道100号"}]))
    assert r.decision == "no_match"


def test_the_same_street_and_number_in_another_district_is_not_the_same_address():
    a = org("南京市鑫仁光电有限公司", city="南京", phones=[{"number": "025-22142241"}],
            addresses=[{"text": "江苏省南京市建邺区新华路515号"}])
    b = org("南京仁仁光电有限责任公司", "2", city="南京", phones=[{"number": "025-53923028"}],
            addresses=[{"text": "江苏省南京市鼓楼区新华路515号"}])
    r = Matcher().score(a, b)
    assert {e.field: e.level for e in r.evidence}["address"] == "else"
    assert r.decision == "no_match"  # names one character apart, other phones: two companies (seen merged at 1M)
    c = org("南京市鑫仁光电有限公司", "3", addresses=[{"text": "南京市建邺区新华路515号"}])
    assert {e.field: e.level for e in Matcher().score(a, c).evidence}["address"] == "exact"


def test_the_same_street_in_two_districts_outside_the_old_division_table_is_not_the_same_address():
    # Urumqi was in the table, its districts were not: both addresses had the city's code and were "exact"
    a = org("乌鲁木齐鑫仁光电有限公司", phones=[{"number": "0991-22142241"}],
            addresses=[{"text": "新疆乌鲁木齐市天山区新华北路515号"}])
    b = org("乌鲁木齐仁仁光电有限责任公司", "2", phones=[{"number": "0991-53923028"}],
            addresses=[{"text": "新疆乌鲁木齐市沙依巴克区新华北路515号"}])
    m = Matcher()
    r = m.score(a, b)
    assert {e.field: e.level for e in r.evidence}["address"] == "else"
    assert r.decision == "no_match"
    assert (a.division_code, b.division_code) == ("650102", "650103")
    c = org("乌鲁木齐鑫仁光电有限公司", "3", addresses=[{"text": "乌鲁木齐天山区新华北路515号"}])
    assert {e.field: e.level for e in m.score(a, c).evidence}["address"] == "exact"


def test_shared_400_number_weighs_less_than_a_specific_phone():
    a = org("深圳市华信科技有限公司", phones=[{"number": "400-800-1234"}, {"number": "0755-26001234"}])
    b = org("深圳市华信贸易有限公司", "2", phones=[{"number": "400-800-1234"}])
    c = org("深圳市华信贸易有限公司", "3", phones=[{"number": "0755-26001234"}])
    m = Matcher()
    wa = {e.field: e for e in m.score(a, b).evidence}["phone"]
    wc = {e.field: e for e in m.score(a, c).evidence}["phone"]
    assert wa.level == "shared_generic" and wc.level == "shared" and wa.weight < wc.weight


def test_agent_phone_on_many_records_is_demoted_to_generic():
    model = MatchModel(generic_phone_records=3)
    m = Matcher(model)
    agent = {"number": "13800138000", "kind": "mobile"}
    for i, n in enumerate(["华信科技", "宏远物流", "东方贸易", "万佳电子", "金鼎化工"]):
        m.add(f"k{i}", org(f"深圳市{n}有限公司", str(i), phones=[agent]))
    r = m.score(m.records["k0"], m.records["k1"])
    assert {e.field: e for e in r.evidence}["phone"].level == "shared_generic"


def test_common_core_name_weighs_less_than_a_rare_one():
    population = [org(f"{['深圳', '广州', '杭州', '南京', '成都', '武汉'][i % 6]}市华信科技有限公司", f"c{i}") for i in range(30)]
    population += [org(f"深圳市独{i}特科技有限公司", f"r{i}") for i in range(30)]
    model = MatchModel(tf_min_records=10, tf_clamp=(-30.0, 2.0), term_frequencies=TermFrequencies.of(population))
    m = Matcher(model)
    common = m.score(org("深圳市华信科技有限公司", "x"), org("华信科技(深圳)有限公司", "y"))
    rare = m.score(org("深圳市独1特科技有限公司", "x"), org("独1特科技(深圳)有限公司", "y"))
    wc = {e.field: e.weight for e in common.evidence}["name"]
    wr = {e.field: e.weight for e in rare.evidence}["name"]
    assert wc < wr


def test_candidates_come_from_several_blocking_keys_and_remove_unindexes():
    m = Matcher()
    a = org("深圳市华信科技有限公司", "a", **HEAD)
    by_phone = org("某某公司", "b", phones=[{"number": "0755-26001234"}])
    by_uscc = org("另一个名字有限公司", "c", uscc=U1)
    by_pinyin = org("深圳市华新科技有限公司", "d")
    unrelated = org("北京市东方贸易有限公司", "e")
    for k, r in (("b", by_phone), ("c", by_uscc), ("d", by_pinyin), ("e", unrelated)):
        m.add(k, r)
    assert set(m.candidates(a)) == {"b", "c", "d"}
    m.remove("c")
    assert set(m.candidates(a)) == {"b", "d"}
    assert not any(k == "c" for ks in m.blocks.values() for k in ks)
    assert any(k.startswith("U") for k in blocking_keys(a))


def test_match_excludes_the_record_itself_and_sorts_best_first(synth):
    _, recs = synth
    m = Matcher()
    for k, r in recs.items():
        m.add(k, r)
    for k, r in list(recs.items())[:50]:
        res = m.match(k, r)
        assert all(x.b != k and x.a == k for x in res)
        assert [x.weight for x in res] == sorted((x.weight for x in res), reverse=True)


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_score_is_symmetric(synth, data):
    _, recs = synth
    keys = sorted(recs)
    a = recs[data.draw(st.sampled_from(keys))]
    b = recs[data.draw(st.sampled_from(keys))]
    m = Matcher()
    ab, ba = m.score(a, b), m.score(b, a)
    assert ab.weight == pytest.approx(ba.weight) and ab.decision == ba.decision and ab.hard == ba.hard
    assert [e.level for e in ab.evidence] == [e.level for e in ba.evidence]


def test_em_learns_sensible_weights_without_labels(trained):
    comps = {c.name: c for c in trained.organization.comparisons}
    for name, top in (("uscc", "exact_valid"), ("name", "canonical_exact"), ("phone", "shared"), ("address", "exact")):
        w = dict(zip(comps[name].levels, comps[name].weights(), strict=True))
        assert w[top] > 5, (name, w)
        assert w["else"] < 0, (name, w)
    assert 0 < trained.organization.prior < 0.01


def test_trained_model_separates_the_synthetic_set(synth, trained):
    ds, recs = synth
    m = Matcher(trained)
    for k, r in recs.items():
        m.add(k, r)
    tp = fp = 0
    for k, r in recs.items():
        for res in m.match(k, r):
            if res.decision == "match":
                if ds.truth[k] == ds.truth[res.b]:
                    tp += 1
                else:
                    fp += 1
    true_directed = sum(1 for a, b in ds.true_pairs()) * 2
    assert fp == 0
    assert tp / true_directed > 0.9


def test_model_round_trips_through_json(trained):
    text = trained.to_json()
    again = MatchModel.from_json(text)
    assert again == trained
    assert json.loads(text)["organization"]["comparisons"][0]["name"] == "uscc"


def test_steward_labels_refine_m_and_u():
    base = MatchModel()
    a = org("深圳市华信科技有限公司", "a")
    b = org("深圳市华信科技有限公司", "b")
    refined = refine_with_labels(base, [(a, b, False)] * 200)
    before = {c.name: c for c in base.organization.comparisons}["name"]
    after = {c.name: c for c in refined.organization.comparisons}["name"]
    assert after.u[1] > before.u[1]  # "same canonical name" is now known to happen between different parties
    assert after.weights()[1] < before.weights()[1]
    refined2 = refine_with_labels(base, [(a, org("华信科技(深圳)有限公司", "c"), True)] * 50)
    assert {c.name: c for c in refined2.organization.comparisons}["name"].m[1] > before.m[1]


# ------------------------------------------------------------------ the fast paths give the generic results

_U_BAD = U1[:-1] + ("0" if U1[-1] != "0" else "1")  # same code, wrong check character: unverified
_U_NEAR = U1[:10] + ("1" if U1[10] != "1" else "2") + U1[11:]  # one character off (check fails)
_POOL = dict(
    name=["深圳市华信科技有限公司", "華信科技（深圳）有限責任公司", "深圳市华新科技有限公司", "深圳市华信贸易有限公司",
          "深圳市华信科技有限公司南山分公司", "广州市宏远物流有限公司", "华信科技有限公司", "深圳市化信科技有限公司"],
    uscc=[None, None, U1, U2, _U_BAD, _U_NEAR],
    org_code=[None, None, "MA5DC9X1-0", "12345678-9"],
    phones=[[], [{"number": "0755-26001234"}], [{"number": "400-800-1234"}], [{"number": "13800138000"}],
            [{"number": "0755-26001234"}, {"number": "400-800-1234"}], [{"number": "020-88001234"}],
            *([{"number": f"0755-8800{j:04d}"}] for j in range(60))],  # rare numbers: shared, not demoted
    emails=[[], ["info@huaxin.com"], ["sales@huaxin.com"], ["a@qq.com"], ["info@huaxin.com", "b@qq.com"]],
    addresses=[[], [{"text": "广东省深圳市南山区科技园路1号"}], [{"text": "深圳南山科技园路1号"}],
               [{"text": "广东省深圳市南山区科技园路3号"}], [{"text": "广东省深圳市南山区科技园北路18号"}],
               [{"text": "广州市天河区天河路1号"}], [{"text": "北京市朝阳区建国路1号"}], [{"text": "广东省"}],
               [{"text": "广东省深圳市福田区科技园路1号"}]],  # the same street and number in another district
)


def _pool_record(i: int, draw) -> tuple[str, object]:
    kw = {f: draw(f, vals) for f, vals in _POOL.items()}
    name = kw.pop("name")
    return f"crm:{i}", org(name, str(i), **kw)


@pytest.fixture(scope="module")
def pool_matcher():
    """Records drawn from small pools of alike values (every comparison level, TF and demoted phones
    happen), indexed with low TF / generic-phone thresholds so those adjustments apply."""
    import random

    rng = random.Random(12)
    recs = dict(_pool_record(i, lambda f, vals: rng.choice(vals)) for i in range(150))
    m = Matcher(MatchModel(tf_min_records=5, generic_phone_records=3, generic_address_records=12, report_threshold=1e-6,
                           term_frequencies=TermFrequencies.of(recs.values())))
    for k, r in recs.items():
        m.add(k, r)
    return m, recs


def _generic(m: Matcher, key: str, rec, limit: int = 200) -> list:
    """What match() returns, the plain way: every candidate weighed by each comparison in turn."""
    out = []
    floor = math.log2(m.model.report_threshold / (1 - m.model.report_threshold))
    for k in m.candidates(rec, limit=limit + 1):
        if k != key and m.records[k].kind == rec.kind and m._levels(rec, m.records[k])[0] >= floor:
            out.append(m._result(key, k, rec, m.records[k]))
    out.sort(key=lambda r: -r.weight)
    return out[:limit]


def _dump(results) -> list:
    return [(r.model_dump(), r.model_fields_set, [e.model_fields_set for e in r.evidence]) for r in results]


def test_fast_organization_scoring_gives_the_levels_and_weights_of_the_comparisons(pool_matcher):
    m, recs = pool_matcher
    seen: set[tuple[int, int]] = set()
    for ka, a in recs.items():
        scored = m._score_organizations(ka, a, list(recs), -math.inf)
        assert [k for _, k, *_ in scored] == [k for k in recs if k != ka]
        for total, _, b, levels, name_weight in scored:
            want_total, want_levels, want_weights = m._levels(a, b)
            assert (total, list(levels), name_weight) == (want_total, want_levels, want_weights[1])
            assert m._organization_evidence(a, b, levels, name_weight) == m._evidence(a, b, want_levels, want_weights)
            seen.update(enumerate(levels))
    levels_of = [len(c.levels) for c in m._scorer.kinds["organization"][1]]
    assert seen == {(i, lv) for i, n in enumerate(levels_of) for lv in range(n)} - {(1, 0)}  # all (a name is never null)


def test_match_reports_what_weighing_every_candidate_in_turn_reports(pool_matcher, synth):
    m, recs = pool_matcher
    for k, r in recs.items():
        for limit in (200, 3):
            assert _dump(m.match(k, r, limit=limit)) == _dump(_generic(m, k, r, limit=limit))
    _, srecs = synth
    m2 = Matcher(MatchModel(tf_min_records=10, term_frequencies=TermFrequencies.of(srecs.values())))
    for k, r in srecs.items():
        m2.add(k, r)
    n = 0
    for k, r in srecs.items():
        got = m2.match(k, r)
        n += len(got)
        assert _dump(got) == _dump(_generic(m2, k, r))
    assert n > len(srecs)


_PERSON_POOL = dict(
    given_name=[None, "wei", "wie", "weiming", "weiminh", "na", "smith"],
    family_name=[None, "wang", "wang", "wong", "williams", "williamz", "smith", "na"],
    birth_date=[None, "19491231", "19491213", "19491230", "19941231", "20010101"],
    id_number=[None, "11010519491231002X", "11010519491231002", "110105194912310021", "1234567", "1234576",
               "1234599"],
    street=[None, "1 main street", "1 main st", "10 main street", "2 high road"],
    city=[None, "sydney", "sidney", "sydneyy", "perth"],
    postcode=[None, "2000", "2001", "2010", "6000", "9876"],
    province=[None, "nsw", "nsw", "nsq", "queensland", "queenslnd", "wa"],
    phones=[[], ["+61290001234"], ["+61290001235"], *([f"+614000{j:05d}"] for j in range(40))],
    phones_generic=[[], [], ["+611300000000"]],
)


@pytest.fixture(scope="module")
def person_pool_matcher():
    import random

    from esbhub.mdm.standardize import StdParty

    rng = random.Random(5)
    recs = {}
    for i in range(150):
        kw = {f: rng.choice(vals) for f, vals in _PERSON_POOL.items()}
        recs[f"a:{i}"] = StdParty(kind="person", source_system="a", source_id=str(i), name_raw="x", name_norm="x",
                                  core_name="x", id_number_valid=rng.random() < 0.5, **kw)
    for i, (given_name, family_name) in enumerate((("wei", "wang"), ("wang", "wei"))):  # written the other way round
        recs[f"s:{i}"] = recs["a:0"].model_copy(update={"source_id": f"s{i}", "given_name": given_name,
                                                         "family_name": family_name})
    m = Matcher(MatchModel(tf_min_records=5, generic_phone_records=3, report_threshold=1e-6,
                           term_frequencies=TermFrequencies.of(recs.values())))
    for k, r in recs.items():
        m.add(k, r)
    return m, recs


def test_fast_person_scoring_gives_the_levels_and_weights_of_the_comparisons(person_pool_matcher):
    m, recs = person_pool_matcher
    seen: set[tuple[int, int]] = set()
    for ka, a in recs.items():
        scored = m._score_persons(ka, a, list(recs), -math.inf)
        assert [k for _, k, *_ in scored] == [k for k in recs if k != ka]
        for total, _, b, levels, weights in scored:
            assert (total, list(levels), list(weights)) == m._levels(a, b)
            assert m._person_evidence(a, b, levels, weights) == m._evidence(a, b, levels, weights)
            seen.update(enumerate(levels))
    levels_of = [len(c.levels) for c in m._scorer.kinds["person"][1]]
    assert seen == {(i, lv) for i, n in enumerate(levels_of) for lv in range(n)}


def test_persons_are_matched_as_weighing_every_candidate_in_turn(person_pool_matcher):
    m, recs = person_pool_matcher
    n = 0
    for k, r in recs.items():
        got = m.match(k, r)
        n += len(got)
        assert _dump(got) == _dump(_generic(m, k, r))
    assert n > len(recs)


def test_result_objects_are_those_model_construct_makes():
    from esbhub.mdm.match import FieldEvidence, MatchResult, _field_evidence, _match_result

    e = _field_evidence("name", "core_exact", 1.5, "a", None)
    want = FieldEvidence.model_construct(field="name", level="core_exact", weight=1.5, a="a", b=None)
    assert e == want and e.model_fields_set == want.model_fields_set and repr(e) == repr(want)
    r = _match_result("x", "y", 3.0, 0.9, "review", [e], None)
    want_r = MatchResult.model_construct(a="x", b="y", weight=3.0, probability=0.9, decision="review", evidence=[want],
                                         hard=None)
    assert r == want_r and r.model_fields_set == want_r.model_fields_set and r.model_dump() == want_r.model_dump()


def test_candidates_come_most_shared_keys_first_then_in_the_order_first_seen():
    m = Matcher()
    a = org("深圳市华信科技有限公司", "a", **HEAD)
    m.add("phone_only", org("某某公司", "p", phones=[{"number": "0755-26001234"}]))
    m.add("uscc_only", org("另一个名字有限公司", "u", uscc=U1))
    m.add("both", org("另一家公司", "b", uscc=U1, phones=[{"number": "0755-26001234"}]))
    assert m.candidates(a) == ["both", "uscc_only", "phone_only"]
    assert m.candidates(a, limit=2) == ["both", "uscc_only"]


def test_match_with_decisions_is_the_same_list_filtered():

    m = Matcher()
    dropped = 0
    for p in generate(120, seed=21).records:
        std = standardize(p)
        key = f"{p.source_system}:{p.source_id}"
        every = m.match(key, std)
        kept = m.match(key, std, decisions=("match", "review"))
        assert kept == [r for r in every if r.decision in ("match", "review")]
        dropped += len(every) - len(kept)
        m.add(key, std)
    assert dropped > 0  # some reported pairs were no_match: the filter was exercised


def persons() -> list[Party]:
    """Person records (the synthetic set has organizations only): pairs of one person as two systems hold them."""
    out = []
    for i, (name, ident) in enumerate([("张伟", "11010519491231002X"), ("王芳", "440305198001011234"),
                                       ("李娜", None), ("刘洋", "310101199002023456")] * 5):
        for sys_ in ("crm", "billing"):
            out.append(Party(kind="person", source_system=sys_, source_id=f"P{i}", name=name if sys_ == "crm" else
                             f"{name} ", id_number=ident, phones=[{"number": f"+86 138 0013 {8000 + i}"}], city="深圳"))
    return out


def test_link_evidence_read_from_the_fields_is_what_pydantic_dumps():
    records = generate(150, seed=12).records + persons()
    matcher = Matcher()
    compared = collections.Counter()
    for p in records:
        std = standardize(p)
        key = f"{p.source_system}:{p.source_id}"
        for r in matcher.match(key, std):
            assert evidence_json(r.evidence) == [e.model_dump(mode="json") for e in r.evidence]
            compared[p.kind] += len(r.evidence)
        matcher.add(key, std)
    assert compared["organization"] > 1000 and compared["person"] > 100


def test_take_flipped_names_the_numbers_that_crossed_the_generic_limit_either_way_since_last_asked():
    m = Matcher(MatchModel(generic_phone_records=2))
    recs = {f"crm:{i}": org(f"深圳市公司{'甲乙丙丁'[i]}贸易有限公司", str(i), phones=[{"number": "0755-86001234"}]) for i in range(4)}
    for k in ("crm:0", "crm:1"):
        m.add(k, recs[k])
    assert m.take_flipped() == []  # two records: still specific
    m.add("crm:2", recs["crm:2"])
    assert m.take_flipped() == [("phone", "+8675586001234")]  # a third: generic
    m.remove("crm:2")
    m.add("crm:2", recs["crm:2"])  # a new version with the same number: back where it was
    assert m.take_flipped() == []
    m.add("crm:3", recs["crm:3"])
    m.remove("crm:3")
    m.remove("crm:0")
    assert m.take_flipped() == [("phone", "+8675586001234")]  # two left: specific again
    assert m.holders("phone", "+8675586001234") == ["crm:1", "crm:2"]


def test_a_record_counts_itself_among_the_holders_of_its_number_before_it_is_indexed():
    """The record that makes a number generic is scored as its pairs are scored once it is indexed."""
    m = Matcher(MatchModel(generic_phone_records=2))
    agent = [{"number": "0755-86001234"}]
    a = org("深圳市宏达电子有限公司", "1", phones=agent)
    b = org("深圳市宏大电子有限公司", "2", phones=agent)
    c = org("深圳市宏达电子科技有限公司", "3", phones=agent)
    m.add("crm:1", a)
    m.add("crm:2", b)
    before = {r.b: r for r in m.match("crm:3", c)}  # not indexed yet: three records hold the number with it
    assert set(before) == {"crm:1", "crm:2"}
    m.add("crm:3", c)
    assert m.take_flipped() == [("phone", "+8675586001234")]
    after = {(r.a, r.b): r for r in m.score_pairs_among(["crm:3", "crm:1", "crm:2"])}
    assert {k: (r.weight, r.decision) for k, r in before.items()} == {
        a_: (r.weight, r.decision) for (a_, b_), r in after.items() if b_ == "crm:3"} | {
        b_: (r.weight, r.decision) for (a_, b_), r in after.items() if a_ == "crm:3"}
    assert all(e.level == "shared_generic" for r in after.values() for e in r.evidence if e.field == "phone")


def test_a_pairs_weight_does_not_depend_on_what_else_is_indexed():
    """Term frequencies come from the model, frozen: the same pair weighs the same in an index of two
    records and in one where its core name is on thirty more."""
    population = [org(f"{['深圳', '广州', '杭州'][i % 3]}市华信科技有限公司", f"c{i}") for i in range(30)]
    a, b = org("深圳市华信科技有限公司", "x"), org("华信科技(深圳)有限公司", "y")
    model = MatchModel(tf_min_records=10, term_frequencies=TermFrequencies.of([*population, a, b]))
    alone, crowded = Matcher(model), Matcher(model)
    alone.add("crm:y", b)
    for i, r in enumerate([*population, b]):
        crowded.add(f"crm:{i}", r)
    w_alone = {r.b: r.weight for r in alone.match("crm:x", a)}["crm:y"]
    w_crowded = {r.b: r.weight for r in crowded.match("crm:x", a)}[f"crm:{len(population)}"]
    assert w_alone == w_crowded
    assert w_alone < Matcher(MatchModel()).score(a, b).weight  # the common name is adjusted down


def test_train_em_takes_the_term_frequencies_of_its_records_when_asked(synth):
    _, recs = synth
    rs = list(recs.values())
    assert train_em(rs, n_random_pairs=2_000, max_iter=2).term_frequencies is None
    tf = train_em(rs, n_random_pairs=2_000, max_iter=2, term_frequencies=True).term_frequencies
    assert tf is not None and tf.records == len(rs)
    assert tf.core == {v: c for v, c in collections.Counter(r.core_name for r in rs if r.kind == "organization").items()
                       if c > 1}


CENTRE = "广东省深圳市南山区科技园路1号"  # a business centre: the registered address of many companies


def test_an_exact_match_on_an_address_many_companies_share_weighs_as_none_and_says_generic():
    m = Matcher(MatchModel(generic_address_records=3))
    a = org("深圳市宏达电子有限公司", "1", addresses=[{"text": CENTRE}], phones=[{"number": "0755-26001111"}])
    b = org("深圳市宏大电子有限公司", "2", addresses=[{"text": CENTRE}], phones=[{"number": "0755-26002222"}])
    m.add("crm:1", a)
    assert {r.b: r.decision for r in m.match("crm:2", b)} == {"crm:1": "match"}  # names one apart, one address
    for i, n in enumerate(["远景物流", "金石建材"]):
        m.add(f"crm:{10 + i}", org(f"深圳市{n}有限公司", str(10 + i), addresses=[{"text": CENTRE}]))
    assert m.take_flipped() == []  # three records at the centre: not yet generic
    [r] = [r for r in m.match("crm:2", b) if r.b == "crm:1"]  # with b: four
    ev = {e.field: e for e in r.evidence}
    assert (ev["address"].level, ev["address"].weight) == ("generic", 0.0)
    assert r.decision == "no_match"  # a name one character off and nothing else
    m.add("crm:2", b)
    assert m.take_flipped() == [("address", "深圳|" + b.street)]
    assert m.holders("address", "深圳|" + b.street) == ["crm:1", "crm:10", "crm:11", "crm:2"]
    assert [e.level for e in m.score(a, b).evidence if e.field == "address"] == ["generic"]  # the plain path too


def test_a_model_with_another_block_cap_rebuilds_the_index_as_a_new_process_would(pool_matcher):
    m0, recs = pool_matcher
    m = Matcher(m0.model)
    for k, r in recs.items():
        m.add(k, r)
    other = m0.model.model_copy(update={"max_block_size": 7})
    m.set_model(other)
    fresh = Matcher(other)
    for k, r in recs.items():
        fresh.add(k, r)
    assert (m.phone_count, m.address_count, m.blocks) == (fresh.phone_count, fresh.address_count, fresh.blocks)
    assert m.take_flipped() == []

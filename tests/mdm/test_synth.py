"""The synthetic enterprise generator: deterministic, valid codes, realistic hard negatives, ground truth."""

from __future__ import annotations

from esbhub.mdm.standardize import codes
from esbhub.mdm.synth import SYSTEMS, generate


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = generate(60, seed=3), generate(60, seed=3), generate(60, seed=4)
    assert [p.model_dump() for p in a.records] == [p.model_dump() for p in b.records]
    assert a.truth == b.truth
    assert [p.name for p in a.records] != [p.name for p in c.records]


def test_every_company_has_a_valid_uscc_and_every_record_a_true_entity():
    ds = generate(200, seed=1)
    assert all(codes.uscc_valid(c.uscc) and codes.uscc_org_code_valid(c.uscc) for c in ds.companies)
    assert set(ds.truth) == {ds.key(p) for p in ds.records}
    assert {p.source_system for p in ds.records} == set(SYSTEMS)


def test_hard_negatives_are_present():
    ds = generate(400, seed=2)
    kinds = {c.kind_of_negative for c in ds.companies}
    assert {"twin_city", "one_char", "branch"} <= kinds
    heads = {c.entity_id: c for c in ds.companies}
    for c in ds.companies:
        if c.kind_of_negative == "branch":
            assert c.uscc == heads[c.head_entity_id].uscc and c.branch_label
        if c.kind_of_negative == "twin_city":
            assert any(o.core == c.core and o.city.code != c.city.code for o in ds.companies if o is not c)


def test_records_carry_noise():
    ds = generate(300, seed=5)
    names = [p.name for p in ds.records]
    assert any("(" in n or "（" in n for n in names)  # bracketed place
    assert any("責" in n or "實" in n or "華" in n for n in names)  # traditional characters
    assert any("有限责任公司" in n for n in names)
    assert any(p.uscc is None for p in ds.records)
    assert any(p.uscc and not codes.uscc_valid(p.uscc) for p in ds.records)


def test_records_made_one_at_a_time_are_the_records_generate_makes():
    from esbhub.mdm.synth import iter_records

    ds = generate(150, seed=12)
    streamed = list(iter_records(150, seed=12))
    assert [p for p, _e in streamed] == ds.records
    assert {f"{p.source_system}:{p.source_id}": e for p, e in streamed} == ds.truth


def test_group_truth_names_each_member_s_group_and_named_groups_share_the_core_name_in_other_cities():
    ds = generate(400, seed=2, named_group_rate=0.05)
    cos = {c.entity_id: c for c in ds.companies}
    named = {m: g for m, g in ds.group_of.items() if cos[m].kind_of_negative == "group_member"}
    assert named and len(named) < len(ds.group_of)  # named groups and the 400-number ones
    for m, g in named.items():
        assert cos[g].legal_form == "集团有限公司" and cos[m].core == cos[g].core and cos[m].city.code != cos[g].city.code
    # some members' records carry the group structure, pointing at the group's own records
    group_keys = {ds.key(p) for p in ds.records if ds.truth[ds.key(p)] in named.values()}
    assert any(f"{p.source_system}:{p.parent_source_id}" in group_keys for p in ds.records if ds.truth[ds.key(p)] in named)
    assert any(p.attributes.parent_billing_account for p in ds.records if ds.truth[ds.key(p)] in named)
    plain = generate(200, seed=2)  # off by default
    assert plain.group_of and not any(c.kind_of_negative == "group_member" for c in plain.companies)

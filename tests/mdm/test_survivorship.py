"""Per-attribute survivorship rules and lineage (pure functions)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from esbhub.mdm.survivorship import (
    AttributeRule,
    Member,
    SurvivorshipConfig,
    override_problem,
    overrides_always_win,
    survive,
    values,
)


def m(system: str, sid: str, *, day: int = 1, deleted: bool = False, std: dict | None = None, **raw) -> Member:
    raw.setdefault("name", "X")
    return Member(key=f"{system}:{sid}", system=system, source_id=sid, raw=raw, std=std or {},
                  updated_at=datetime(2026, 1, day, tzinfo=UTC), deleted=deleted)


def test_billing_is_trusted_for_billing_account_and_crm_for_account_manager():
    out = survive([
        m("crm", "1", day=9, attributes={"billing_account": "CRM-COPY", "account_manager": "王经理"}),
        m("billing", "A", day=1, attributes={"billing_account": "BA1", "account_manager": "系统"}),
    ])
    assert out["billing_account"]["value"] == "BA1"
    assert out["billing_account"]["lineage"] | {} == {"source_system": "billing", "source_id": "A", "rule": "trust",
                                                       "source_updated_at": "2026-01-01T00:00:00+00:00"}
    assert out["account_manager"]["value"] == "王经理" and out["account_manager"]["lineage"]["rule"] == "trust"


def test_a_uscc_that_passes_its_check_beats_a_more_frequent_one_that_fails():
    out = survive([
        m("crm", "1", std={"uscc": "91440300MA5FAKE001", "uscc_valid": False}),
        m("res", "2", std={"uscc": "91440300MA5FAKE001", "uscc_valid": False}),
        m("bank", "3", std={"uscc": "91440300MA5GOOD002", "uscc_valid": True}),
    ])
    assert out["uscc"]["value"] == "91440300MA5GOOD002" and out["uscc"]["lineage"]["rule"] == "valid"


def test_recency_decides_status_and_frequency_decides_among_equally_trusted_names():
    out = survive([m("crm", "1", day=1, status="active"), m("crm", "2", day=5, status="suspended")])
    assert out["status"]["value"] == "suspended" and out["status"]["lineage"]["rule"] == "recency"
    cfg = SurvivorshipConfig(attributes={"name": AttributeRule(rules=["frequency", "recency"])})
    out = survive([m("a", "1", name="华信", day=9), m("b", "2", name="华信科技"), m("c", "3", name="华信科技")], cfg)
    assert out["name"]["value"] == "华信科技" and out["name"]["lineage"]["rule"] == "frequency"


def test_completeness_prefers_the_fuller_address():
    cfg = SurvivorshipConfig(attributes={"address": AttributeRule(rules=["completeness"])})
    out = survive([m("crm", "1", addresses=[{"text": "深圳南山"}]),
                   m("res", "2", addresses=[{"text": "广东省深圳市南山区科技园路1号"}])], cfg)
    assert out["address"]["value"] == "广东省深圳市南山区科技园路1号" and out["address"]["lineage"]["rule"] == "completeness"


def test_a_steward_override_wins_and_says_so():
    out = survive([m("billing", "A", attributes={"industry": "制造"})], overrides={"industry": "金融"})
    assert out["industry"] == {"value": "金融", "lineage": {"source_system": "steward", "source_id": None,
                                                           "rule": "override"}}


def test_lists_are_the_union_with_lineage_per_item_and_deleted_records_lose_their_say():
    out = survive([
        m("crm", "1", std={"phones": ["+8675588886666"]}),
        m("res", "2", std={"phones": ["+8675588886666", "+8620333344445"]}),
        m("bank", "3", deleted=True, std={"phones": ["+8610999999999"]}),
    ])
    assert out["phones"]["value"] == ["+8675588886666", "+8620333344445"]
    first = out["phones"]["lineage"][0]
    assert (first["source_system"], first["rule"], first["also"]) == ("crm", "union", ["res:2"])


def test_every_value_has_lineage_and_the_outcome_does_not_depend_on_member_order():
    members = [
        m("crm", "1", day=3, name="华信科技有限公司", status="active", attributes={"industry": "IT", "extra": {"seg": "A"}}),
        m("billing", "A", day=2, name="华信科技(深圳)有限公司", attributes={"billing_account": "B", "monthly_revenue": "9"}),
        m("res", "R", day=3, name="华信科技有限公司", attributes={"circuit_ids": ["C1"], "extra": {"seg": "B"}}),
    ]
    outs = [survive(list(p)) for p in itertools.permutations(members)]
    assert all(o == outs[0] for o in outs)
    for attr, v in outs[0].items():
        for lin in v["lineage"] if isinstance(v["lineage"], list) else [v["lineage"]]:
            assert lin["source_system"] in {"crm", "billing", "res"} and lin["rule"], attr
    assert values(outs[0])["extra.seg"] in {"A", "B"}


def test_attribute_values_come_from_std_before_raw_the_registered_address_first_and_missing_parts_as_empty():
    from esbhub.mdm.survivorship import _LIST_NAMES, _SCALAR_NAMES, LISTS, SCALARS, _list_row, _scalar_row

    assert len(_scalar_row({}, {})) == len(_SCALAR_NAMES) and len(_list_row({}, {})) == len(_LIST_NAMES)
    full = m("crm", "1", name="华信", province="广东", city="深圳", status="active",
             addresses=[{"kind": "office", "text": "南山"}, {"kind": "registered", "text": "福田"}],
             contacts=[{"name": "王经理"}], attributes={"industry": "IT", "circuit_ids": ["C1"], "monthly_revenue": "9.50"},
             std={"uscc": "U", "city": "深圳市", "phones": ["+861"], "phones_generic": ["+86400"], "emails": ["a@b.cn"]})
    got = {k: g(full) for k, g in SCALARS.items()}
    assert {k: got[k] for k in ("name", "uscc", "province", "city", "address", "status", "industry", "monthly_revenue",
                                "billing_account")} == {
        "name": "华信", "uscc": "U", "province": "广东", "city": "深圳市", "address": "福田", "status": "active",
        "industry": "IT", "monthly_revenue": "9.50", "billing_account": None}
    assert {k: g(full) for k, g in LISTS.items()} == {
        "phones": ["+861", "+86400"], "emails": ["a@b.cn"], "circuit_ids": ["C1"], "contacts": [{"name": "王经理"}],
        "addresses": [{"kind": "office", "text": "南山"}, {"kind": "registered", "text": "福田"}]}
    other = m("bank", "2", addresses=[{"kind": "billing", "text": "X"}], std={"phones_generic": ["+86400"]})
    assert SCALARS["address"](other) == "X" and LISTS["phones"](other) == ["+86400"]  # no registered/office: the first
    bare = m("billing", "3", attributes=None, std={"phones": ["+862"]})
    assert SCALARS["bank_account"](bare) is None and LISTS["circuit_ids"](bare) == [] and LISTS["phones"](bare) == ["+862"]


def test_zero_and_false_are_values_but_empty_strings_are_not():
    out = survive([
        m("crm", "1", attributes={"extra": {"n": 0, "flag": False, "seg": ""}}),
        m("res", "2", attributes={"extra": {"n": 0, "seg": ""}}),
    ])
    assert values(out)["extra.n"] == 0 and out["extra.n"]["lineage"]["rule"] == "unanimous"
    assert values(out)["extra.flag"] is False and out["extra.flag"]["lineage"]["rule"] == "only_source"
    assert "extra.seg" not in out


def test_overrides_keep_their_place_among_the_attributes():
    cfg = SurvivorshipConfig(attributes={"status": AttributeRule(rules=["recency"])})
    out = survive([], cfg, {"status": "closed", "name": "甲", "phones": ["1"], "extra.x": "y"})
    assert list(out) == ["name", "phones", "status", "extra.x"]  # status has no override rule: added last
    out = survive([m("crm", "1", status="active")], cfg, {"status": "closed"})
    assert out["status"]["value"] == "active"


def test_overrides_always_show_only_when_every_rule_lets_them_win():
    assert overrides_always_win(SurvivorshipConfig())
    assert not overrides_always_win(SurvivorshipConfig(attributes={"status": AttributeRule(rules=["recency"])}))
    assert not overrides_always_win(SurvivorshipConfig(default=AttributeRule(rules=["trust"])))


@pytest.mark.parametrize(("attribute", "value", "field", "problem"), [
    ("industry", "金融", None, None), ("phones", ["+8675588886666"], None, None), ("extra.segment", 3, None, None),
    ("name", None, None, None),
    ("phones", "+8675588886666", "value", "'phones' is a list attribute: the value must be a list"),
    ("name", {"zh": "甲"}, "value", "'name' is a single value: the value must be a string, number or boolean"),
    ("colour", "red", "attribute", "no golden attribute 'colour'"),
    ("extra.", "x", "attribute", "no golden attribute 'extra.'"),
])
def test_an_override_names_an_attribute_survivorship_makes_with_a_value_of_its_shape(attribute, value, field, problem):
    got = override_problem(attribute, value)
    if problem is None:
        assert got is None
    else:
        assert got is not None and got[0] == field and got[1].startswith(problem)


def test_the_rival_decides_the_rule_and_equal_members_fall_back_to_the_source_key():
    cfg = SurvivorshipConfig(attributes={"name": AttributeRule(rules=["frequency", "trust", "recency"])})
    out = survive([m("a", "2", name="乙"), m("a", "1", name="甲"), m("a", "3", name="甲")], cfg)
    assert out["name"]["value"] == "甲" and out["name"]["lineage"]["rule"] == "frequency"
    assert out["name"]["lineage"]["source_id"] == "1"
    out = survive([m("a", "2", name="乙"), m("a", "1", name="甲")], cfg)
    assert (out["name"]["value"], out["name"]["lineage"]["rule"]) == ("甲", "source_key")


def test_a_configured_attribute_keeps_the_defaults_it_does_not_give_and_unnamed_attributes_keep_theirs():
    defaults = SurvivorshipConfig()
    cfg = SurvivorshipConfig.model_validate({"attributes": {"uscc": {"trust": {"registry": 100, "crm": 90}}},
                                             "default": {"rules": ["trust", "recency"]}})
    uscc = cfg.rule_for("uscc")
    assert uscc.trust == {"registry": 100, "crm": 90}  # the table given, whole
    assert uscc.rules == defaults.rule_for("uscc").rules  # the USCC check still comes first
    assert {a: r for a, r in cfg.attributes.items() if a != "uscc"} == {
        a: r for a, r in defaults.attributes.items() if a != "uscc"}
    assert cfg.default.rules == ["trust", "recency"] and cfg.default.trust == defaults.default.trust
    out = survive([m("crm", "1", std={"uscc": "91440300MA5GOOD002", "uscc_valid": True}),
                   m("registry", "2", std={"uscc": "91440300MA5FAKE001", "uscc_valid": False})], cfg)
    assert out["uscc"]["value"] == "91440300MA5GOOD002" and out["uscc"]["lineage"]["rule"] == "valid"


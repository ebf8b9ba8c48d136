"""Hierarchy edges (branch, billing parent, source parent, group member) and key-account tiering."""

from __future__ import annotations

import pytest

from esbhub.mdm.hierarchy import TieringConfig
from esbhub.mdm.service import MdmService
from mdm.fakes import party, uscc


@pytest.fixture
def svc(tmp_path) -> MdmService:
    return MdmService(f"sqlite:///{tmp_path / 'mdm.db'}")


def gid(svc: MdmService, key: str) -> str:
    system, sid = key.split(":")
    return svc.xref(system, sid)["golden_id"]


def edges(svc: MdmService, key: str) -> dict[str, set[tuple[str, str]]]:
    h = svc.get_customer(gid(svc, key))["hierarchy"]
    return {side: {(e["golden_id"], e["kind"]) for e in h[side]} for side in ("parents", "children")}


@pytest.mark.parametrize(("revenue", "tier"), [(None, "D"), (9_999.99, "D"), (10_000, "C"), (100_000, "B"),
                                               (999_999, "B"), (1_000_000, "A"), (5e7, "A")])
def test_tier_follows_the_configured_revenue_thresholds(revenue, tier):
    assert TieringConfig().tier(revenue) == tier


def test_branch_found_by_name_is_linked_whichever_arrives_first(svc):
    svc.ingest(party("res", "B1", "深圳市华信科技有限公司南山分公司", city="深圳"), "e1")
    svc.ingest(party("crm", "H", "深圳市华信科技有限公司", uscc=uscc(1), city="深圳"), "e2")
    assert edges(svc, "res:B1")["parents"] == {(gid(svc, "crm:H"), "branch")}
    assert edges(svc, "crm:H")["children"] == {(gid(svc, "res:B1"), "branch")}


def test_branch_carrying_the_head_office_uscc_is_linked_not_merged(svc):
    svc.ingest(party("crm", "H", "华信科技股份有限公司", uscc=uscc(1), city="深圳"), "e1")
    svc.ingest(party("res", "B1", "华信电子南山营业部", uscc=uscc(1), city="深圳"), "e2")
    assert len(svc.partition_now()) == 2
    h = svc.get_customer(gid(svc, "res:B1"))["hierarchy"]["parents"]
    assert [(e["golden_id"], e["kind"], e["evidence"]["rule"]) for e in h] == [(gid(svc, "crm:H"), "branch", "shared_uscc")]


def test_billing_parent_account_and_source_parent_make_edges_and_group_revenue_sets_the_group_tier(svc):
    svc.ingest(party("billing", "P", "远洋物流集团有限公司", uscc=uscc(5),
                     attributes={"billing_account": "PA", "monthly_revenue": "50000"}), "e1")
    svc.ingest(party("billing", "C1", "广东远洋物流有限公司", uscc=uscc(6, "440100"), province="广东",
                     attributes={"billing_account": "CA1", "parent_billing_account": "PA", "monthly_revenue": "600000"}),
               "e2")
    svc.ingest(party("billing", "C2", "上海远洋货运有限公司", uscc=uscc(7, "310100"), province="上海",
                     parent_source_id="P", attributes={"billing_account": "CA2", "monthly_revenue": "400000"}), "e3")
    parent = gid(svc, "billing:P")
    kids = edges(svc, "billing:P")["children"]
    assert kids == {(gid(svc, "billing:C1"), "billing_parent"), (gid(svc, "billing:C1"), "group_member"),
                    (gid(svc, "billing:C2"), "parent")}
    view = svc.get_customer(parent)
    assert view["tier"] == "C" and view["revenue"] == 50_000
    assert view["group_revenue"] == 1_050_000 and view["group_tier"] == "A"
    assert len(view["group_provinces"]) == 2  # a group customer spanning provinces


def test_edges_of_a_retired_golden_record_end_and_move_to_the_survivor(svc):
    svc.ingest(party("crm", "H", "深圳市华信科技有限公司", uscc=uscc(1), city="深圳"), "e1")
    svc.ingest(party("crm", "X", "华信云计算有限公司", city="北京"), "e2")
    svc.ingest(party("res", "B1", "深圳市华信科技有限公司南山分公司", city="深圳"), "e3")
    svc.merge("crm:X", "crm:H", by="steward")  # crm:H's id is younger: it is retired
    survivor = gid(svc, "crm:H")
    assert survivor == gid(svc, "crm:X")
    assert edges(svc, "res:B1")["parents"] == {(survivor, "branch")}


def test_edges_follow_a_changed_record_and_survive_changes_that_do_not_touch_them(svc):
    svc.ingest(party("crm", "H", "深圳市华信科技有限公司", uscc=uscc(1), city="深圳"), "e1")
    svc.ingest(party("res", "B1", "深圳市华信科技有限公司南山分公司", city="深圳"), "e2")
    svc.ingest(party("res", "B1", "深圳市华信科技有限公司南山分公司", city="深圳", status="suspended"), "e3")
    assert edges(svc, "crm:H")["children"] == {(gid(svc, "res:B1"), "branch")}
    svc.ingest(party("res", "B1", "广州市远洋物流有限公司", city="广州"), "e4")  # the source re-keyed the record
    assert edges(svc, "crm:H")["children"] == set()


def group_view(svc: MdmService, key: str) -> dict:
    return svc.get_customer(gid(svc, key))


def test_a_company_of_the_same_core_name_in_another_city_is_not_a_member_of_the_group(svc):
    svc.ingest(party("billing", "G", "深圳市华信科技集团有限公司", uscc=uscc(1), city="深圳",
                     attributes={"billing_account": "GA", "monthly_revenue": "50000"}), "e1")
    svc.ingest(party("billing", "T", "广州市华信科技有限公司", uscc=uscc(2, "440100"), city="广州",
                     attributes={"billing_account": "TA", "monthly_revenue": "900000"}), "e2")
    svc.ingest(party("crm", "T2", "成都华信科技有限公司", uscc=uscc(3, "510100"), city="成都"), "e3")
    assert edges(svc, "billing:G")["children"] == set()
    assert edges(svc, "billing:T")["parents"] == set()
    view = group_view(svc, "billing:G")
    assert view["group_revenue"] == 50_000 and view["group_tier"] == "C"


@pytest.mark.parametrize(("member", "support"), [
    (party("billing", "M", "上海华信科技有限公司", uscc=uscc(2, "310100"), province="上海",
           attributes={"billing_account": "MA", "parent_billing_account": "GA", "monthly_revenue": "960000"}),
     {"parent_billing_account": ["GA"]}),
    (party("billing", "M", "上海华信科技有限公司", uscc=uscc(2, "310100"), province="上海", parent_source_id="G",
           attributes={"billing_account": "MA", "monthly_revenue": "960000"}),
     {"parent_source": ["billing:G"]}),
    # registered by the group's authority (深圳), doing business in 上海
    (party("billing", "M", "华信科技(上海)有限公司", uscc=uscc(2, "440305"), province="上海",
           address="上海市浦东新区世纪大道100号", attributes={"billing_account": "MA", "monthly_revenue": "960000"}),
     {"registration_area": ["440300"]}),
], ids=["parent_billing_account", "parent_source", "registration_area"])
def test_a_member_of_a_group_in_another_province_is_linked_by_the_tie_its_records_show(svc, member, support):
    svc.ingest(party("billing", "G", "深圳市华信科技集团有限公司", uscc=uscc(1), province="广东",
                     attributes={"billing_account": "GA", "monthly_revenue": "50000"}), "e1")
    svc.ingest(member, "e2")
    kids = group_view(svc, "billing:G")["hierarchy"]["children"]
    assert [(e["golden_id"], e["evidence"]) for e in kids if e["kind"] == "group_member"] == [
        (gid(svc, "billing:M"), {"core_name": ["华信科技"], "support": support})]
    view = group_view(svc, "billing:G")
    assert view["group_revenue"] == 1_010_000 and view["group_tier"] == "A"
    assert view["group_provinces"] == ["上海", "广东"]


def test_a_company_of_the_core_name_that_moves_to_the_group_s_street_becomes_a_member(svc):
    svc.ingest(party("crm", "G", "华信科技集团有限公司", uscc=uscc(1, "110108"), address="北京市海淀区中关村大街1号"), "e1")
    svc.ingest(party("crm", "M", "华信科技(天津)有限公司", uscc=uscc(2, "120100"), address="天津市和平区南京路9号"), "e2")
    svc.ingest(party("crm", "N", "华信科技(重庆)有限公司", uscc=uscc(3, "500100"), address="北京市朝阳区中关村大街1号"), "e3")
    assert edges(svc, "crm:G")["children"] == set()  # not N: the same street in another district
    svc.ingest(party("crm", "M", "华信科技(天津)有限公司", uscc=uscc(2, "120100"), address="北京市海淀区中关村大街1号"), "e4")
    kids = group_view(svc, "crm:G")["hierarchy"]["children"]
    assert [(e["golden_id"], e["evidence"]["support"]) for e in kids] == [
        (gid(svc, "crm:M"), {"address": ["110108 中关村大街1号"]})]


@pytest.mark.parametrize("head_first", [True, False])
def test_a_branch_naming_its_head_office_without_the_place_it_is_registered_with_is_linked(svc, head_first):
    head = party("crm", "H", "深圳市华信科技有限公司", uscc=uscc(1), city="深圳")
    branch = party("res", "B1", "华信科技有限公司北京办事处", city="北京")
    for i, p in enumerate((head, branch) if head_first else (branch, head)):
        svc.ingest(p, f"e{i}")
    h = group_view(svc, "res:B1")["hierarchy"]["parents"]
    assert [(e["golden_id"], e["kind"], e["evidence"]["rule"]) for e in h] == [
        (gid(svc, "crm:H"), "branch", "branch_suffix_sole_head")]


def test_a_branch_naming_no_place_is_left_unlinked_when_two_head_offices_of_its_name_could_be_its(svc):
    svc.ingest(party("crm", "H", "深圳市华信科技有限公司", uscc=uscc(1), city="深圳"), "e1")
    svc.ingest(party("res", "B1", "华信科技有限公司北京办事处", city="北京"), "e2")
    assert edges(svc, "res:B1")["parents"] == {(gid(svc, "crm:H"), "branch")}
    svc.ingest(party("crm", "T", "华信科技(广州)有限公司", uscc=uscc(2, "440100"), city="广州"), "e3")  # a second one
    assert edges(svc, "res:B1")["parents"] == set()
    svc.ingest(party("crm", "N", "华信科技有限公司", uscc=uscc(3, "110108"), city="北京"), "e4")  # the name exactly
    assert edges(svc, "res:B1")["parents"] == {(gid(svc, "crm:N"), "branch")}

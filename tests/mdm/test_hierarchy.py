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

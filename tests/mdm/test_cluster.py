"""Cannot-link rules: alike is not always the same."""

from __future__ import annotations

from esbhub.mdm.cluster import can_link
from esbhub.mdm.standardize import codes, standardize
from esbhub.schemas.party import Party

U1 = codes.make_uscc("9", "1", "440300", "MA5DC9X1")
U2 = codes.make_uscc("9", "1", "440300", "MA5DC9X2")


def org(name: str, sid: str = "1", **kw):
    return standardize(Party(source_system="crm", source_id=sid, name=name, **kw))


def test_two_different_valid_usccs_never_link():
    assert can_link(org("深圳市华信科技有限公司", uscc=U1), org("深圳市华信科技有限公司", "2", uscc=U2)) == \
        "cannot_link:uscc_conflict"


def test_a_uscc_failing_its_check_may_still_link_as_a_typo():
    typo = U1[:17] + ("0" if U1[17] != "0" else "1")
    assert can_link(org("深圳市华信科技有限公司", uscc=U1), org("深圳市华信科技有限公司", "2", uscc=typo)) is None


def test_branch_and_head_office_never_link_even_with_the_same_uscc():
    head = org("深圳市华信科技有限公司", uscc=U1)
    branch = org("深圳市华信科技有限公司南山分公司", "2", uscc=U1)
    assert can_link(head, branch) == "cannot_link:branch_vs_head"


def test_two_branches_with_different_labels_never_link():
    a = org("深圳市华信科技有限公司南山分公司", uscc=U1)
    b = org("深圳市华信科技有限公司福田分公司", "2", uscc=U1)
    assert can_link(a, b) == "cannot_link:different_branches"
    c = org("华信科技（深圳）有限责任公司南山區分公司", "3")
    assert can_link(a, c) is None


def test_same_company_written_differently_may_link():
    assert can_link(org("深圳市华信科技有限公司", uscc=U1), org("華信科技（深圳）有限責任公司", "2")) is None


def test_person_and_organization_never_link_nor_persons_with_different_valid_ids():
    p1 = standardize(Party(kind="person", source_system="a", source_id="1", name="王伟", id_number="11010519491231002X"))
    p2 = standardize(Party(kind="person", source_system="a", source_id="2", name="王伟",
                           id_number="110105194912310" + "03" + codes.id_check_char("11010519491231003")))
    assert can_link(p1, p2) == "cannot_link:id_conflict"
    assert can_link(p1, org("王伟")) == "cannot_link:kind"

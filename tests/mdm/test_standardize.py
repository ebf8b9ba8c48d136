"""Standardization of Chinese enterprise (and person) records for matching."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.cn import uscc as stdnum_uscc

from esbhub.mdm.standardize import codes, fold, parse_address, standardize
from esbhub.mdm.standardize.divisions import table
from esbhub.schemas.party import Party


def org(name: str, **kw) -> Party:
    return Party(source_system=kw.pop("source_system", "crm"), source_id=kw.pop("source_id", "1"), name=name, **kw)


# ------------------------------------------------------------------ codes

def test_uscc_checker_accepts_the_gb32100_example_and_rejects_a_wrong_check_char():
    assert codes.uscc_valid("91350100M000100Y43")
    assert not codes.uscc_valid("91350100M000100Y44")
    assert codes.uscc_org_code_valid("91350100M000100Y43")


def test_uscc_checker_agrees_with_stdnum_on_digit_prefixed_codes():
    for body in ("12345678", "MA5DC9X1", "40235925", "00000000"):
        code = codes.make_uscc("9", "1", "440300", body)
        assert codes.uscc_valid(code) and stdnum_uscc.is_valid(code)
        bad = code[:17] + ("0" if code[17] != "0" else "1")
        assert not codes.uscc_valid(bad) and not stdnum_uscc.is_valid(bad)


def test_uscc_checker_accepts_letter_registration_authority_that_stdnum_rejects():
    # N = agriculture authority (农民专业合作社), A = 中央军委改革和编制办公室: valid per GB 32100
    for auth, kind in (("N", "2"), ("A", "1"), ("Y", "1")):
        code = codes.make_uscc(auth, kind, "370100", "MA3C4D5E")
        assert codes.uscc_valid(code)
        assert not stdnum_uscc.is_valid(code)  # the reason we carry our own checker


def test_org_code_check_char_follows_gb11714():
    assert codes.org_code_valid("M000100Y4")
    assert codes.org_code_check_char("D2143569") == "X"  # textbook example: D2143569-X
    assert codes.org_code_valid("D2143569X")
    assert not codes.org_code_valid("D21435690")


def test_resident_id_check_digit():
    assert codes.id_number_valid("11010519491231002X")
    assert not codes.id_number_valid("110105194912310021")


def test_failed_uscc_check_is_a_flag_not_a_rejection():
    s = standardize(org("深圳市华信科技有限公司", uscc="91350100M000100Y44"))
    assert s.uscc == "91350100M000100Y44" and s.uscc_valid is False
    assert "uscc_check_failed" in s.flags


def test_org_code_is_derived_from_the_uscc_when_missing():
    s = standardize(org("深圳市华信科技有限公司", uscc="91350100M000100Y43"))
    assert s.org_code == "M000100Y4" and s.org_code_valid
    assert s.uscc_division == "350100"


# ------------------------------------------------------------------ names

@pytest.mark.parametrize("name", [
    "深圳市华信科技有限公司",
    "华信科技(深圳)有限公司",
    "华信科技（深圳）有限责任公司",
    "華信科技（深圳）有限責任公司",
    "深圳华信科技有限公司",
    "广东省深圳市华信科技有限公司",
    "深圳市 华信科技 有限公司",
    "深圳市华信科技有限公司",
])
def test_place_prefix_bracketed_place_legal_form_and_script_variants_share_one_canonical_name(name):
    s = standardize(org(name))
    assert s.name_norm == "深圳市华信科技有限公司"
    assert s.core_name == "华信科技"
    assert s.legal_form == "有限公司"
    assert s.place == "深圳" and s.city == "深圳" and s.province == "广东"
    assert not s.branch


def test_joint_stock_and_group_are_kept_as_attributes():
    s = standardize(org("华信科技集团股份有限公司"))
    assert s.core_name == "华信科技" and s.is_group and s.is_joint_stock and s.legal_form == "股份有限公司"
    s2 = standardize(org("华信(集团)有限公司"))
    assert s2.core_name == "华信" and s2.is_group


@pytest.mark.parametrize("name,head,branch", [
    ("深圳市华信科技有限公司南山分公司", "深圳市华信科技有限公司", "南山分公司"),
    ("华信科技(深圳)有限公司福田分公司", "深圳市华信科技有限公司", "福田分公司"),
    ("招商银行股份有限公司深圳分行", "招商银行股份有限公司", "深圳分行"),
    ("中国工商银行股份有限公司深圳分行福田支行", "中国工商银行股份有限公司深圳分行", "福田支行"),
    ("深圳市华信科技有限公司北京办事处", "深圳市华信科技有限公司", "北京办事处"),
    ("深圳市华信科技有限公司南山区营业部", "深圳市华信科技有限公司", "南山营业部"),
])
def test_branch_suffix_gives_branch_and_head_office_name(name, head, branch):
    s = standardize(org(name))
    assert s.branch and s.branch_name == branch
    assert s.head_office_name_norm == head
    assert standardize(org(head)).name_norm == head  # the head office's own name_norm equals it


def test_full_width_forms_are_folded():
    assert fold("ＡＢＣ１２３（深圳）") == "ABC123(深圳)"


@given(st.text(alphabet=st.sampled_from(list("華信科技深圳（）() 　有限責任公司ＡＢ12-·,分行")), max_size=30))
@settings(max_examples=150, deadline=None)
def test_fold_is_idempotent(text):
    assert fold(fold(text)) == fold(text)


PLACES = ["深圳", "深圳市", "北京市", "广东省", "杭州", "", "上海"]
LEGAL = ["有限公司", "有限责任公司", "股份有限公司", "集团有限公司", "(集团)有限公司", ""]
BRANCHES = ["", "南山分公司", "北京办事处", "营业部", "福田支行"]


@given(st.sampled_from(PLACES), st.text(alphabet=st.sampled_from(list("华信达通宏远科技贸易物流")), min_size=2, max_size=6),
       st.sampled_from(LEGAL), st.sampled_from(BRANCHES), st.booleans())
@settings(max_examples=200, deadline=None)
def test_standardize_is_idempotent_on_enterprise_names(place, core, legal, branch, bracket):
    name = f"{core}({place}){legal}{branch}" if bracket and place else f"{place}{core}{legal}{branch}"
    s1 = standardize(org(name))
    s2 = standardize(org(s1.name_norm))
    assert s2.name_norm == s1.name_norm
    assert s2.core_name == s1.core_name
    assert s2.branch == s1.branch and s2.head_office_name_norm == s1.head_office_name_norm


# ------------------------------------------------------------------ phones, addresses

def test_phones_become_e164_and_service_numbers_are_generic():
    s = standardize(org("深圳市华信科技有限公司", phones=[
        {"number": "0755-26001234"}, {"number": "(0755)26001234"}, {"number": "+86 755 2600 1234"},
        {"number": "400-800-1234"}, {"number": "138 0013 8000", "kind": "mobile"}, {"number": "95555"},
    ]))
    assert s.phones == ["+8675526001234", "+8613800138000"]
    assert s.phones_generic == ["+864008001234", "+8695555"]


def test_local_number_without_area_code_takes_the_city_area_code():
    s = standardize(org("华信科技有限公司", phones=[{"number": "26001234"}], addresses=[{"text": "深圳市南山区科技园路1号"}]))
    assert s.phones == ["+8675526001234"]


@pytest.mark.parametrize("text", ["广东省深圳市南山区科技园路1号", "深圳市南山区科技园路1号", "深圳南山科技园路1号",
                                  "廣東省深圳市南山區科技園路1號", "广东深圳南山区科技园路１号"])
def test_address_abbreviations_give_the_same_divisions_and_text(text):
    a = parse_address(text)
    assert a.province is not None and a.province.code == "440000"
    assert a.city is not None and a.city.code == "440300"
    assert a.division_code == "440305" and a.district == "南山"
    assert a.text == "广东深圳南山科技园路1号" and a.street == "科技园路1号"


def test_unknown_district_keeps_its_text_and_falls_back_to_the_city_code():
    a = parse_address("江苏省南通市开发区创业路75号")
    assert a.division_code == "320600" and a.district == "开发" and a.street == "创业路75号"


def test_division_table_covers_all_provinces_and_capitals():
    t = table()
    assert sum(1 for d in t.by_code.values() if d.level == "province") == 34
    for cap in ("石家庄", "太原", "呼和浩特", "沈阳", "长春", "哈尔滨", "南京", "杭州", "合肥", "福州", "南昌", "济南", "郑州",
                "武汉", "长沙", "广州", "南宁", "海口", "成都", "贵阳", "昆明", "拉萨", "西安", "兰州", "西宁", "银川", "乌鲁木齐"):
        assert any(form == cap for form, _ in t.cities), cap


def test_uscc_division_is_checked_against_the_address():
    good = standardize(org("华信科技有限公司", uscc=codes.make_uscc("9", "1", "440305", "MA5DC9X1"),
                           addresses=[{"text": "深圳市南山区科技园路1号"}]))
    assert good.address_division_consistent is True
    bad = standardize(org("华信科技有限公司", uscc=codes.make_uscc("9", "1", "110108", "MA5DC9X1"),
                          addresses=[{"text": "深圳市南山区科技园路1号"}]))
    assert bad.address_division_consistent is False and "address_division_mismatch" in bad.flags


# ------------------------------------------------------------------ persons

def test_person_name_id_and_birth_date():
    s = standardize(Party(kind="person", source_system="crm", source_id="p1", name="欧阳娜娜",
                          id_number="11010519491231002X"))
    assert (s.family_name, s.given_name) == ("欧阳", "娜娜")
    assert s.id_number_valid and s.birth_date == "19491231"
    bad = standardize(Party(kind="person", source_system="crm", source_id="p2", name="王伟", id_number="110105194912310021"))
    assert bad.id_number_valid is False and "id_number_check_failed" in bad.flags


def test_latin_person_names_split_into_given_and_family():
    s = standardize(Party(kind="person", source_system="a", source_id="1", name="  john  SMITH "))
    assert (s.given_name, s.family_name) == ("JOHN", "SMITH")

"""Standardization of Chinese enterprise (and person) records for matching."""

from __future__ import annotations

import collections
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.cn import ric as stdnum_ric
from stdnum.cn import uscc as stdnum_uscc

from esbhub.mdm.standardize import (
    codes,
    fold,
    fold_many,
    parse_address,
    parse_org_name,
    phone_forms,
    standardize,
)
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


@given(st.lists(st.text(alphabet=st.sampled_from(list("華信科技深圳（）()【】 　有限責任公司ＡＢab12-·,分行ß①\u0301\ue000")),
                        max_size=12), max_size=8))
@settings(max_examples=300, deadline=None)
def test_folding_many_texts_at_once_folds_each_as_alone(texts):
    assert fold_many(texts) == [fold(t) for t in texts]


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


@pytest.mark.parametrize("written", ["0755-26001234", "(0755)2600 1234", "+86 755 2600 1234", "0086-755-26001234",
                                     "26001234", "2600-1234"])
def test_phone_forms_of_a_search_include_what_standardization_stored(written):
    stored = standardize(org("华信科技有限公司", phones=[{"number": "0755-26001234"}], city="深圳")).phones
    assert set(stored) <= set(phone_forms(written))


@pytest.mark.parametrize("text", ["华信科技", "crm:26001234", "BA-26001234", "260012", "+86 755 2600 12a4", "1+2600123"])
def test_phone_forms_of_text_not_written_as_a_number_are_none(text):
    assert phone_forms(text) == []


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


def test_division_table_holds_every_current_county_level_division():
    t = table()
    levels = collections.Counter(d.level for d in t.by_code.values() if d.short)
    assert levels["province"] == 34
    assert levels["city"] == 333 + 4  # prefecture level, and the four municipalities' one city-level entry each
    # 2,846 county-level divisions, of which 32 stand directly under their province (仙桃, 济源, 石河子 …)
    assert sum(1 for d in t.by_code.values() if d.level == "district") == 2846
    assert all(d.parent in t.by_code for d in t.by_code.values() if d.parent)


@pytest.mark.parametrize(("text", "code"), [
    ("云南省怒江傈僳族自治州兰坪白族普米族自治县金顶镇文兴街1号", "533325"),  # a county of an 自治州
    ("怒江州兰坪县金顶镇文兴街1号", "533325"),  # the same, as people write it
    ("广西壮族自治区南宁市青秀区民族大道100号", "450103"),  # a district in an 自治区
    ("广西自治区南宁青秀区民族大道100号", "450103"),
    ("新疆乌鲁木齐天山区新华北路5号", "650102"),
    ("内蒙古呼伦贝尔市鄂伦春旗阿里河镇1号", "150723"),  # a banner (自治旗) by its short form
    ("湖北省仙桃市钱沟路1号", "429004"),  # a county-level city directly under its province
    ("山东省济南市莱芜区鹏泉街道1号", "370116"),
    ("济南市中区经七路1号", "370103"),  # 济南 + 市中区, not 济南市 + 中区
    ("吉林省吉林市船营区北京路1号", "220204"),  # the province and the city share a short name
    ("海淀区中关村大街1号", "110108"),  # no city written: the district's full name is unique in the country
    ("陕西省咸阳市乾县城关街道1号", "610424"),  # 乾 is folded to 干 like the text
])
def test_districts_outside_the_old_table_resolve_to_their_code(text, code):
    a = parse_address(text)
    assert a.division_code == code
    assert a.city is not None and a.province is not None and a.province.code == code[:2] + "0000"


def test_an_ambiguous_district_name_resolves_only_within_its_city_or_province():
    # 朝阳区 is a district of Beijing and of Changchun; 南山区 one of Shenzhen and of Hegang
    assert parse_address("北京朝阳区建国路1号").division_code == "110105"
    assert parse_address("长春市朝阳区人民大街1号").division_code == "220104"
    assert parse_address("吉林省朝阳区人民大街1号").division_code == "220104"  # the only one in Jilin
    assert parse_address("黑龙江鹤岗南山区鹤大路1号").division_code == "230404"
    assert parse_address("广东南山科技园路1号").division_code == "440305"
    nowhere = parse_address("朝阳区建国路1号")
    assert nowhere.division_code is None and nowhere.city is None and nowhere.district_div is None


def test_a_short_place_name_followed_by_a_road_is_a_street_not_the_place():
    a = parse_address("中山路100号")  # 中山 is a city, 中山路 a street in most of them
    assert a.city is None and a.street == "中山路100号"
    b = parse_address("深圳南山大道1001号")  # 南山大道, not 南山 + 大道1001号
    assert b.division_code == "440300" and b.street == "南山大道1001号"


def test_uscc_division_is_checked_against_a_newly_covered_district():
    address = [{"text": "云南省怒江州兰坪县金顶镇文兴街1号"}]
    kunming = standardize(org("兰坪华信矿业有限公司", uscc=codes.make_uscc("9", "1", "530102", "MA5DC9X1"),
                              addresses=address))
    assert kunming.address_division_consistent is False and "address_division_mismatch" in kunming.flags
    same = standardize(org("兰坪华信矿业有限公司", uscc=codes.make_uscc("9", "1", "533325", "MA5DC9X1"), addresses=address))
    assert same.division_code == "533325" and same.address_division_consistent is True
    # 仙桃 and 天门 are two county-level cities directly under Hubei, not one city "4290"
    tianmen = standardize(org("华信科技有限公司", uscc=codes.make_uscc("9", "1", "429006", "MA5DC9X1"),
                              addresses=[{"text": "湖北省仙桃市钱沟路1号"}]))
    assert tianmen.address_division_consistent is False


def test_an_old_uscc_division_code_is_checked_as_the_division_that_covers_it_now():
    s = standardize(org("山东华信科技有限公司", uscc=codes.make_uscc("9", "1", "371202", "MA5DC9X1"),
                        addresses=[{"text": "山东省济南市莱芜区鹏泉街道1号"}]))
    assert s.uscc_division == "371202" and s.address_division_consistent is True
    t = table()
    assert t.current("371202") == "370116"  # 莱芜市莱城区 → 济南市莱芜区 (2019)
    assert t.current("440305") == "440305" and t.current("999999") == "999999"


def test_a_place_after_the_first_one_in_a_name_must_lie_inside_it():
    # 中山 is a city of Guangdong: in a Shenzhen company's name it is part of the trade name
    on = parse_org_name("深圳市中山信息技术有限公司")
    assert on.core == "中山信息技术" and on.place is not None and on.place.code == "440300"
    assert parse_org_name("广东省深圳市华信科技有限公司").place.code == "440300"  # (a place inside the first)
    assert parse_org_name("深圳市华信信息技术(南山区)有限公司").core == "华信信息技术"  # (one containing it)


# ------------------------------------------------------------------ persons

def test_person_name_id_and_birth_date():
    s = standardize(Party(kind="person", source_system="crm", source_id="p1", name="欧阳娜娜",
                          id_number="11010519491231002X"))
    assert (s.family_name, s.given_name) == ("欧阳", "娜娜")
    assert s.id_number_valid and s.birth_date == "19491231"
    bad = standardize(Party(kind="person", source_system="crm", source_id="p2", name="王伟", id_number="110105194912310021"))
    assert bad.id_number_valid is False and "id_number_check_failed" in bad.flags


def person(sid: str, id_number: str, **kw) -> Party:
    return Party(kind="person", source_system=kw.pop("source_system", "crm"), source_id=sid, name="王伟",
                 id_number=id_number, **kw)


def test_first_generation_id_converts_to_its_18_digit_form_with_the_gb11643_check_character():
    # GB 11643-1999's own example: the 1949-12-31 number 002 of 110105, old and new card
    assert codes.id_number_from_15("110105491231002") == "11010519491231002X"
    assert codes.id_number_from_15("130503670401001") == "130503196704010016"
    new = codes.id_number_from_15("130503670401001")
    assert new[-1] == stdnum_ric.calc_check_digit(new)  # python-stdnum's own ISO 7064 sum (it takes the whole number)


@given(st.from_regex(r"[1-8][0-9]{5}", fullmatch=True), st.dates(date(1900, 1, 1), date(1999, 12, 31)),
       st.from_regex(r"[0-9]{3}", fullmatch=True))
@settings(max_examples=200, deadline=None)
def test_a_converted_id_keeps_division_birth_date_and_sequence_and_passes_the_check(division, born, seq):
    old = f"{division}{born:%y%m%d}{seq}"
    new = codes.id_number_from_15(old)
    assert new is not None and codes.id_number_valid(new) and new[-1] == stdnum_ric.calc_check_digit(new)
    assert (new[:6], new[6:14], new[14:17]) == (division, f"{born:%Y%m%d}", seq)


def test_a_15_digit_id_is_standardized_as_its_18_digit_form_and_flagged_converted():
    s = standardize(person("p1", "110105 491231 002"))
    assert s.id_number == "11010519491231002X" and s.birth_date == "19491231"
    assert "id_number_from_15" in s.flags
    # no check character vouched for the old number: trusted less than a checked one, never a hard rule
    assert s.id_number_valid is None
    kept = standardize(person("p2", "110105491231002", attributes={"extra": {"birth_date": "1949-12-30"}}))
    assert kept.birth_date == "19491230"  # a birth date the source gives wins, as for an 18-digit number


@pytest.mark.parametrize("bad", ["110105490231002", "110105491301002", "11010549123100X"])
def test_a_15_character_id_that_is_not_a_valid_first_generation_number_stays_as_given_and_is_flagged(bad):
    s = standardize(person("p1", bad))
    assert s.id_number == bad and s.birth_date is None
    assert s.id_number_valid is False and "id_number_15_invalid" in s.flags
    assert codes.id_number_from_15(bad) is None


def test_old_and_new_id_of_one_person_block_together_and_match_exactly():
    from esbhub.mdm.match import Matcher

    old = standardize(person("1", "110105491231002", phones=[{"number": "13800138000"}]))
    new = standardize(person("2", "11010519491231002X", source_system="billing"))
    m = Matcher()
    m.add("crm:1", old)
    (hit,) = [r for r in m.match("billing:2", new) if "crm:1" in (r.a, r.b)]
    ev = {e.field: e for e in hit.evidence}
    assert ev["id_number"].level == "exact" and ev["id_number"].weight > 0
    assert ev["birth_date"].level == "exact"
    assert {e.field: e.level for e in m.score(old, new).evidence}["id_number"] == "exact"


def test_latin_person_names_split_into_given_and_family():
    s = standardize(Party(kind="person", source_system="a", source_id="1", name="  john  SMITH "))
    assert (s.given_name, s.family_name) == ("JOHN", "SMITH")


# ------------------------------------------------------------------ memoized / fast paths give the plain results

def test_standardized_record_equals_a_validated_std_party():
    # standardize builds StdParty without re-validating its own fields: the result must be the validated model
    from esbhub.mdm.standardize import StdParty
    records = [
        org("華信科技（深圳）有限責任公司福田分公司", uscc="91350100M000100Y43", org_code="M000100Y-4",
            phones=[{"number": "0755-26001234"}, {"number": "400-800-1234"}, {"number": "x-1"}],
            emails=["Info@Example.com"], addresses=[{"text": "深圳市南山区科技园路1号", "postcode": "518000"}]),
        Party(kind="person", source_system="crm", source_id="p1", name="欧阳娜娜", id_number="11010519491231002X",
              attributes={"extra": {"birth_date": "1949-12-31"}}),
        Party(kind="person", source_system="a", source_id="2", name="john smith", addresses=[{"text": "5th Ave"}]),
        Party(kind="person", source_system="crm", source_id="p3", name="王伟", id_number="110105491231002"),
    ]
    for p in records:
        s = standardize(p)
        v = StdParty.model_validate(s.model_dump())
        assert s == v and s.model_dump(mode="json") == v.model_dump(mode="json")
        assert s.model_fields_set == v.model_fields_set and list(s.__dict__) == list(StdParty.model_fields)
        assert s.__pydantic_extra__ is None and s.__pydantic_private__ is None
        with pytest.raises(ValueError):
            s.name_norm = "x"  # still frozen


def test_pinyin_key_cut_into_words_equals_pinyin_of_the_whole_text():
    from pypinyin import Style, lazy_pinyin

    from esbhub.mdm.standardize.names import _FUZZY, pinyin_key

    def whole(text: str) -> str:
        out = []
        for syl in lazy_pinyin(text, style=Style.NORMAL, errors="default"):
            syl = syl.lower()
            for a, b in _FUZZY:
                syl = syl.replace(a, b)
            out.append(syl)
        return "".join(out).replace(" ", "")

    for text in ("华信科技", "招商银行", "长沙重庆银行", "中国工商银行深圳分行", "ABC长沙", "长沙abc 中心", "Zhang San",
                 "華信", "乐行", "行长", "12号楼", "〇一", "调查研究", "重量"):
        assert pinyin_key(text) == whole(text), text


def test_memoized_parsers_hand_out_independent_results():
    from esbhub.mdm.standardize import parse_org_name

    a = parse_org_name("华信科技(某某)有限公司")
    a.flags.append("changed")
    a.core = "changed"
    b = parse_org_name("华信科技(某某)有限公司")
    assert b.flags == ["name_bracket_dropped"] and b.core == "华信科技"
    x = parse_address("深圳市南山区科技园路1号")
    x.street = "changed"
    assert parse_address("深圳市南山区科技园路1号").street == "科技园路1号"


def test_memoized_phone_keeps_the_kind_of_each_record():
    main = standardize(org("华信科技有限公司", phones=[{"number": "0755-26001234"}]))
    service = standardize(org("华信科技有限公司", phones=[{"number": "0755-26001234", "kind": "service"}]))
    again = standardize(org("华信科技有限公司", phones=[{"number": "0755-26001234"}]))
    assert main.phones == again.phones == ["+8675526001234"] and main.phones_generic == []
    assert service.phones == [] and service.phones_generic == ["+8675526001234"]


def test_prefix_index_finds_the_same_longest_form_as_trying_every_length():
    from esbhub.mdm.standardize.divisions import longest_prefix

    t = table()
    indexes = [t.province_forms, t.city_forms] + [t.district_forms(code) for code in t.districts]
    for forms in indexes:
        plain = dict(forms)
        for form in list(forms)[:80]:
            for text in (form, form + "华信", form[:-1], form + "市南山区", "中" + form):
                assert longest_prefix(text, forms) == longest_prefix(text, plain), text


@given(st.text(alphabet=st.sampled_from(list("0123456789ABCDEFGHJKLMNPQRTUWXYIOSVZ-")), min_size=17, max_size=19))
@settings(max_examples=300, deadline=None)
def test_code_validity_checks_agree_with_the_check_character_functions(code):
    # uscc_valid / org_code_valid compute the check characters inline; they must agree with the public builders
    uscc_ok = bool(codes._USCC_SHAPE.match(code)) and codes.uscc_check_char(code[:17]) == code[17]
    assert codes.uscc_valid(code) is uscc_ok
    org = code[:9]
    org_ok = bool(codes._ORG_SHAPE.match(org)) and codes.org_code_check_char(org[:8]) == org[8]
    assert codes.org_code_valid(org) is org_ok
    if len(code) >= 17:
        valid = codes.make_uscc("9", "1", "440300", "".join(c for c in code if c.isalnum() and c not in "IOSVZ")[:8]
                                .ljust(8, "0"))
        assert codes.uscc_valid(valid) and codes.uscc_org_code_valid(valid)

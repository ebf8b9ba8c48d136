"""Text folding, Chinese enterprise name parsing, address parsing, person names, pinyin keys."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import opencc
from pypinyin import Style
from pypinyin.converter import UltimateConverter
from pypinyin.core import Pinyin

from esbhub.mdm.standardize.divisions import (
    MUNICIPALITIES,
    Division,
    FormIndex,
    longest_prefix,
    longest_suffix,
    prefix_length,
    table,
)

_BRACKETS = str.maketrans({"【": "(", "】": ")", "[": "(", "]": ")", "〔": "(", "〕": ")", "{": "(", "}": ")",
                           "〈": "(", "〉": ")", "《": "(", "》": ")", "（": "(", "）": ")"})
_BRACKET_CHARS = re.compile("[" + re.escape("".join(chr(c) for c in _BRACKETS)) + "]")
_PUNCT = re.compile(r"[\s\u3000\.,;:!?'\"`~@#$%^&*+=|\\/<>\-_·・、，。；：！？“”‘’…—]+")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_CJK_EXT_A = re.compile(r"[\u3400-\u9fff]")  # CJK Extension A and the unified block: text OpenCC is run on
_NOT_WORD = re.compile(r"[^\w\s]")
_BRACKETED = re.compile(r"\(([^()]*)\)")
_BRACKET_GROUP = re.compile(r"\([^()]*\)")
_BRANCH_ADMIN = re.compile(r"(省|市|区|县)(?=.)")
_DISTRICT_TAIL = re.compile(r"(区|县)$")

# Pure functions of a string are memoized: a company's records repeat the same names, addresses and
# phone numbers across source systems, and they arrive close together. Bounded, so a long-running service
# keeps a fixed footprint (~20 MB for all these caches at 8192 entries; 65536 entries kept the same hit
# rate on the synthetic set at ~5x the memory).
_CACHE = 8192


@lru_cache(maxsize=1)
def _t2s() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")


def fold(text: str, *, keep_brackets: bool = True) -> str:
    """NFKC (full-width → half-width), traditional → simplified, punctuation and spaces removed,
    brackets unified to ASCII ``()``, Latin letters upper case. Idempotent."""
    return _fold(text, keep_brackets)


@lru_cache(maxsize=_CACHE)
def _fold(text: str, keep_brackets: bool) -> str:
    s = unicodedata.normalize("NFKC", text)
    if _CJK_EXT_A.search(s):
        s = _t2s().convert(s)
    if _BRACKET_CHARS.search(s):  # (translate looks every character up; most names have no bracket to map)
        s = s.translate(_BRACKETS)
    s = _PUNCT.sub("", s).upper()
    if not keep_brackets:
        s = s.replace("(", "").replace(")", "")
    return s


_SEP = "\ue000"  # a private-use character: NFKC, OpenCC, the bracket map and _PUNCT all leave it alone


def fold_many(texts: Sequence[str]) -> list[str]:
    """``[fold(t) for t in texts]``, OpenCC and the punctuation pass run once over all the texts
    joined by a separator no step touches (none of the texts may hold it; else one by one): for
    the hundreds of thousands of names a search index loads, per-call costs and the memo's misses
    were most of the work (NFKC stays per text: its quick check passes most of them untouched)."""
    parts = [unicodedata.normalize("NFKC", t) for t in texts]
    if not parts or any(_SEP in p for p in parts):
        return [fold(t) for t in texts]
    cjk = [i for i, p in enumerate(parts) if _CJK_EXT_A.search(p)]  # the texts fold converts
    if cjk:
        converted = _t2s().convert(_SEP.join([parts[i] for i in cjk])).split(_SEP)
        if len(converted) != len(cjk):
            return [fold(t) for t in texts]
        for i, c in zip(cjk, converted, strict=True):
            parts[i] = c
    joined = _SEP.join(parts)
    if _BRACKET_CHARS.search(joined):
        joined = joined.translate(_BRACKETS)
    out = _PUNCT.sub("", joined).upper().split(_SEP)
    return out if len(out) == len(texts) else [fold(t) for t in texts]


@lru_cache(maxsize=_CACHE)
def fold_spaced(text: str) -> str:
    """Like :func:`fold` but keeps single spaces between words (for Latin-script names)."""
    s = unicodedata.normalize("NFKC", text)
    s = _t2s().convert(s) if _CJK.search(s) else s
    s = _NOT_WORD.sub(" ", s.translate(_BRACKETS))
    return " ".join(s.upper().split())


# ---------------------------------------------------------------- enterprise names

LEGAL_FORMS: list[tuple[str, str]] = [  # written form → canonical, longest first
    ("股份有限公司", "股份有限公司"),
    ("有限责任公司", "有限公司"),
    ("股份公司", "股份有限公司"),
    ("有限公司", "有限公司"),
    ("个人独资企业", "个人独资企业"),
    ("合伙企业", "合伙企业"),
    ("有限合伙", "合伙企业"),
    ("普通合伙", "合伙企业"),
    ("集团公司", "公司"),
    ("公司", "公司"),
]
BRANCH_SUFFIXES = ("分公司", "分行", "支行", "营业部", "办事处", "分理处", "分店", "分部", "代表处")
_HEAD_TERMINATORS = ("股份有限公司", "有限责任公司", "有限公司", "股份公司", "公司", "分行", "银行", "集团", "厂")


@dataclass
class OrgName:
    canonical: str
    core: str
    legal_form: str | None = None
    is_group: bool = False
    is_joint_stock: bool = False
    place: Division | None = None
    branch_name: str | None = None
    head_canonical: str | None = None
    flags: list[str] = field(default_factory=list)


def _match_place_prefix(s: str, known: Division | None = None, min_rest_full: int = 2,
                        min_rest_short: int = 3) -> tuple[Division, int] | None:
    """The province or city that ``s`` starts with, and its length. Once a place is known, only a
    place that contains it or lies in it counts (广东省深圳市…; 华信科技(南山区) written 深圳市华信科技):
    in 深圳市东方信息技术 东方 is a city of Hainan, not a place of Shenzhen, so it stays in the name."""
    t = table()
    first2 = s[:2]
    for forms in (t.province_forms, t.city_forms):
        # longest form first; a short form needs a longer rest (中山大学 is not 中山 + 大学)
        # (only the lengths of forms that start like ``s``: the others cannot match)
        for n in forms.lengths.get(first2, ()):
            if n > len(s):
                continue
            d = forms.get(s[:n])
            if d is None or (known is not None and not _related(d, known)):
                continue
            full = s[:n] == d.name
            if len(s) - n >= (min_rest_full if full else min_rest_short):
                return d, n
    return None


def _city_key(d: Division) -> str:
    return d.code if d.level == "city" or d.stands_for_city else d.city_code


def _related(a: Division, b: Division) -> bool:
    """One of the two divisions contains the other (or they are the same)."""
    if a.code[:2] != b.code[:2]:
        return False
    return a.level == "province" or b.level == "province" or _city_key(a) == _city_key(b)


@lru_cache(maxsize=4096)
def place_of(text: str) -> Division | None:
    """The division named exactly by ``text`` (full or short form, province, city or a district
    that no other district shares the form with)."""
    t = table()
    return t.city_forms.get(text) or t.province_forms.get(text) or _all_district_forms().get(text)


@lru_cache(maxsize=1)
def _all_district_forms() -> FormIndex:
    """Every form of every district / county; the ones two of them share are ambiguous."""
    return FormIndex([p for forms in table().districts.values() for p in forms])


def _more_specific(a: Division | None, b: Division | None) -> Division | None:
    if a is None:
        return b
    if b is None:
        return a
    rank = {"province": 0, "city": 1, "district": 2}
    return b if rank[b.level] > rank[a.level] else a


def _normalize_branch(label: str) -> str:
    return _BRANCH_ADMIN.sub("", label)


@lru_cache(maxsize=1)
def _all_district_forms_plain() -> dict[str, Division]:
    """Every form of every district / county (which of two sharing a form does not matter: only its length is used)."""
    return {form: d for forms in table().districts.values() for form, d in forms}


def _split_branch(s: str) -> tuple[str, str | None]:
    if not s.endswith(BRANCH_SUFFIXES):
        return s, None
    for suffix in BRANCH_SUFFIXES:
        if not s.endswith(suffix) or len(s) <= len(suffix):
            continue
        body = s[: -len(suffix)]
        best = -1
        for term in _HEAD_TERMINATORS:
            i = body.rfind(term)
            if i >= 0:
                best = max(best, i + len(term))
        if best > 0:
            return s[:best], _normalize_branch(s[best:])
        # no legal terminator: take a trailing place word before the suffix as the branch label
        t = table()
        m = longest_suffix(body, t.city_forms)
        if m is None:
            m = longest_suffix(body, _all_district_forms_plain())
        if m is not None and len(body) - len(m[0]) >= 2:
            return body[: -len(m[0])], _normalize_branch(s[len(body) - len(m[0]):])
        return body, suffix
    return s, None


def parse_org_name(name: str) -> OrgName:
    """Split an enterprise name into place, core name (字号 + industry), group marker, legal form and branch.

    ``canonical`` recomposes it as ``{place full name}{core}{集团}{legal form}{branch}``, so that
    华信科技(深圳)有限责任公司 and 深圳市华信科技有限公司 give the same canonical name.
    """
    on = _org_name(name)
    return replace(on, flags=list(on.flags))


def _org_name(name: str) -> OrgName:
    """:func:`parse_org_name`, memoized on the folded name: the result is shared, callers must not change it."""
    return _parse_folded_org_name(fold(name))


@lru_cache(maxsize=_CACHE)
def _parse_folded_org_name(s: str) -> OrgName:
    flags: list[str] = []
    place: Division | None = None
    is_group = False
    legal_extra: str | None = None
    has_brackets = "(" in s or ")" in s
    for content in _BRACKETED.findall(s) if has_brackets else ():
        if content in ("集团", "控股集团"):
            is_group = True
        elif content in ("有限合伙", "普通合伙"):
            legal_extra = "合伙企业"
        elif content in ("中国", ""):
            pass
        else:
            p = place_of(content)
            if p is not None:
                place = _more_specific(place, p)
            else:
                flags.append("name_bracket_dropped")
    if has_brackets:
        s = _BRACKET_GROUP.sub("", s).replace("(", "").replace(")", "")
    head, branch = _split_branch(s)
    if branch is not None:
        h = _org_name(head)
        if place is not None and h.place is None:
            h = _org_name(place.name + head)
        return OrgName(
            canonical=h.canonical + branch,
            core=h.core,
            legal_form=h.legal_form or legal_extra,
            is_group=h.is_group or is_group,
            is_joint_stock=h.is_joint_stock,
            place=h.place or place,
            branch_name=branch,
            head_canonical=h.canonical,
            flags=flags + h.flags,
        )
    core = head
    legal: str | None = None
    for written, canon in LEGAL_FORMS:
        if core.endswith(written) and len(core) > len(written):
            core = core[: -len(written)]
            legal = canon
            if written == "集团公司":
                is_group = True
            break
    legal = legal or legal_extra
    if core.endswith("集团") and len(core) > 3:
        core = core[:-2]
        is_group = True
    for _ in range(3):
        m = _match_place_prefix(core, place)
        if m is None:
            if place is not None and place.level != "province":
                # district of the known city written after it, e.g. 深圳市南山区华信科技
                hit = longest_prefix(core, table().district_forms(place.city_code))
                if hit is not None and len(core) - len(hit[0]) >= (2 if hit[0] == hit[1].name else 3):
                    m = (hit[1], len(hit[0]))
            if m is None:
                break
        place = _more_specific(place, m[0])
        core = core[m[1]:]
    if not core:
        core = head
    place_txt = place.name if place is not None else ""
    head_canonical = f"{place_txt}{core}{'集团' if is_group else ''}{legal or ''}"
    return OrgName(
        canonical=head_canonical,
        core=core,
        legal_form=legal,
        is_group=is_group,
        is_joint_stock=legal == "股份有限公司",
        place=place,
        flags=flags,
    )


# ---------------------------------------------------------------- addresses

_DISTRICT_RE = re.compile(r"^([\u4e00-\u9fff]{1,6}?(?:新区|区|县|旗))(?![路街道巷])")
_STREET_ABBR = [("大道", "大道"), ("路口", "路口")]


@dataclass
class ParsedAddress:
    text: str
    street: str
    province: Division | None = None
    city: Division | None = None
    district: str | None = None
    district_div: Division | None = None

    @property
    def division_code(self) -> str | None:
        d = self.district_div or self.city or self.province
        return d.code if d else None


def parse_address(text: str, province_hint: str | None = None, city_hint: str | None = None) -> ParsedAddress:
    """Split a Chinese address into province / city / district and the street part.

    Abbreviations are tolerated (广东省深圳市南山区… ≡ 深圳南山区… ≡ 深圳市南山…). The text is
    recomposed canonically from short names: ``{province}{city}{district}{street}``.
    """
    return replace(_address(text, province_hint, city_hint))


def _address(text: str, province_hint: str | None = None, city_hint: str | None = None) -> ParsedAddress:
    """:func:`parse_address`, memoized: the result is shared, callers must not change it."""
    prov, city, district, s = _address_head(fold(text, keep_brackets=False))
    if city is None and city_hint:
        city = place_of(fold(city_hint, keep_brackets=False))
        city = city if city is not None and (city.level == "city" or city.stands_for_city) else None
    if prov is None and province_hint:
        p = place_of(fold(province_hint, keep_brackets=False))
        prov = p if p is not None and p.level == "province" else None
    if prov is None and city is not None:
        prov = table().by_code.get(city.province_code)
    return _address_tail(s, prov, city, district)


_NOT_A_PLACE_AFTER = frozenset("路街道巷弄里村镇乡门桥")
_NOT_A_PLACE_AFTER2 = frozenset({"大道", "大街", "广场", "公园", "花园", "小区"})


def _place_at(s: str, forms: FormIndex) -> tuple[str, Division] | None:
    """The place of ``forms`` that ``s`` starts with: the longest form (none if that one is ambiguous),
    with two corrections:

    * 济南市中区…: the city is 济南, then 市中区 — not 济南市, then 中区. A city's short form wins when
      only it is followed by one of its districts (a few cities have a district named 市…).
    * A short form (or a name of two characters) followed by 路, 街, 大道, 镇, … is the start of a
      street or town name — 中山路, 解放路 (焦作 has a 解放区), 南山大道, 城关镇 — not the division;
      unless what follows is a place inside it (唐山路南区: 唐山, then its district 路南; 北京门头沟).

    One function, not three: it runs for every address the caches have not seen."""
    hit = longest_prefix(s, forms)
    if hit is None:
        return None
    form, d = hit
    n = len(form)
    t = table()
    if form == d.name and n > 2:
        if d.code in _cities_with_shi_districts() and d.short and form == d.short + "市":
            districts = t.district_forms(d.code)
            if prefix_length(s[n:], districts) == 0 and prefix_length(s[n - 1:], districts) > 0:
                return d.short, d
        return form, d
    if s[n:n + 1] in _NOT_A_PLACE_AFTER or s[n:n + 2] in _NOT_A_PLACE_AFTER2:
        rest = s[n:]
        if d.level == "province":
            inside = prefix_length(rest, t.city_forms_in(d.code)) or prefix_length(rest, t.district_forms_in(d.code))
        elif d.level == "city":
            inside = prefix_length(rest, t.district_forms(d.code))
        else:
            inside = 0
        if not inside:
            return None
    return form, d


_SHI_CITIES: list[frozenset[str]] = []


def _cities_with_shi_districts() -> frozenset[str]:
    """Codes of the cities that have a district whose name starts with 市 (济南, 青岛, 枣庄, 内江, 乐山)."""
    if not _SHI_CITIES:
        _SHI_CITIES.append(frozenset(code for code, forms in table().districts.items()
                                     if any(f.startswith("市") for f, _ in forms)))
    return _SHI_CITIES[0]


def _longer_form(s: str, forms: FormIndex, n: int) -> int:
    """Length of the longest form in ``forms`` (ambiguous or not) that ``s`` starts with, if longer than ``n``; else 0."""
    lengths = forms.lengths.get(s[:2])
    if not lengths or lengths[0] <= n:  # (most addresses: no form starts like it, or none is longer)
        return 0
    m = prefix_length(s, forms)
    return m if m > n else 0


@lru_cache(maxsize=_CACHE)
def _address_head(s: str) -> tuple[Division | None, Division | None, Division | None, str]:
    """Province, city and (when the address starts with one) district at the start of the folded
    address, and the rest of it.

    At the start the longest of a province, a city and a district's full name wins, the higher level
    on a tie: 吉林市… is the city, 吉林长春… the province, 海南区… Wuhai's district, 朝阳县… the county of
    Chaoyang (not the city 朝阳 and a rest 县…). A district's full name is looked up nationwide only
    when no other district has it (朝阳区 alone resolves nothing). Below a province, only its cities —
    and a county of it whose name is longer than a city's (辽宁省朝阳县…) — are looked up.
    """
    t = table()
    prov: Division | None = None
    city: Division | None = None
    p = _place_at(s, t.province_forms)
    c = _place_at(s, t.city_forms)
    n_p, n_c = (len(p[0]) if p else 0), (len(c[0]) if c else 0)
    n_d = _longer_form(s, t.district_names, max(n_p, n_c))
    if n_d:
        d = longest_prefix(s, t.district_names)
        if d is None or len(d[0]) != n_d:  # the longest district name here is ambiguous
            return None, None, None, s
        district = d[1]
        return t.province_of(district.code), t.city_of(district.code), district, s[n_d:]
    if p is not None and n_p >= n_c:
        prov, s = p[1], s[n_p:]
        c = _place_at(s, t.city_forms_in(prov.code))
        if c is not None and not _longer_form(s, t.district_forms_in(prov.code), len(c[0])):
            city, s = c[1], s[len(c[0]):]
    elif c is not None:
        city, s = c[1], s[n_c:]
    if city is None and prov is not None and prov.code[:2] in MUNICIPALITIES:
        city = t.by_code.get(prov.code[:2] + "0100")
    return prov, city, None, s


@lru_cache(maxsize=_CACHE)
def _address_tail(s: str, prov: Division | None, city: Division | None,
                  ddiv: Division | None = None) -> ParsedAddress:
    """District and street of the rest ``s`` of an address whose province and city are known.

    The district is looked up among the districts of the city, or, with only the province known,
    among those of the province (广东南山… is Shenzhen's 南山; a form two districts of the province
    share resolves nothing) — never nationwide by a short name."""
    t = table()
    district: str | None = None
    if ddiv is None and (city is not None or prov is not None):
        forms = t.district_forms(city.code) if city is not None else t.district_forms_in(prov.code)  # type: ignore[union-attr]
        hit = _place_at(s, forms)
        if hit is not None:
            ddiv, s = hit[1], s[len(hit[0]):]
            if city is None:
                city = t.city_of(ddiv.code)
    if ddiv is not None:
        district = ddiv.short or ddiv.name
    else:
        m = _DISTRICT_RE.match(s)
        if m and (city is not None or prov is not None):
            district = m.group(1)
            s = s[m.end():]
            district = _DISTRICT_TAIL.sub("", district) or district
    street = s
    city_txt = city.short if city is not None and (prov is None or city.short != prov.short) else ""
    canon = "".join(x for x in ((prov.short if prov else ""), city_txt, district or "", street))
    return ParsedAddress(text=canon, street=street, province=prov, city=city, district=district, district_div=ddiv)


# ---------------------------------------------------------------- persons

COMPOUND_SURNAMES = ("欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "令狐", "慕容", "尉迟", "公孙", "司徒", "夏侯",
                     "长孙", "宇文", "独孤", "南宫", "西门", "端木", "轩辕", "呼延")


def split_person_name(name: str) -> tuple[str | None, str | None]:
    """(family, given) for a Chinese or Latin-script personal name."""
    if _CJK.search(name):
        s = fold(name, keep_brackets=False)
        if len(s) < 2:
            return s or None, None
        n = 2 if s[:2] in COMPOUND_SURNAMES and len(s) > 2 else 1
        return s[:n], s[n:]
    parts = fold_spaced(name).split()
    if not parts:
        return None, None
    if len(parts) == 1:
        return parts[0], None
    return parts[-1], " ".join(parts[:-1])


# ---------------------------------------------------------------- pinyin

_FUZZY = [("zh", "z"), ("ch", "c"), ("sh", "s"), ("ang", "an"), ("eng", "en"), ("ing", "in")]


# ``pypinyin.lazy_pinyin(text)`` is ``Pinyin(UltimateConverter())``: it cuts ``text`` into words (runs of
# non-Chinese characters; Chinese phrases of its dictionary and single characters) and converts each word on
# its own. The key is a concatenation over syllables, so it is the concatenation of the keys of the words:
# cutting once and memoizing per word gives the same key, and names share most of their words.
_PINYIN = Pinyin(UltimateConverter())


@lru_cache(maxsize=65536)
def pinyin_key(text: str) -> str:
    """Toneless pinyin with common fuzzy-pinyin folds (zh/z, ch/c, sh/s, -ng/-n); Latin kept lower case."""
    if not text:
        return ""
    return "".join([_word_pinyin_key(word) for word in _PINYIN.seg(text)])


@lru_cache(maxsize=_CACHE)
def _word_pinyin_key(word: str) -> str:
    out = []
    for syl in _PINYIN.lazy_pinyin([word], style=Style.NORMAL, errors="default"):
        syl = syl.lower()
        for a, b in _FUZZY:
            syl = syl.replace(a, b)
        out.append(syl)
    return "".join(out).replace(" ", "")

"""Per-field comparison functions: each maps a pair of standardized records to a level index.

Level 0 is always ``null`` (a value missing on either side: no evidence, weight 0); the other
levels go from the strongest agreement to ``else``. The names of the levels are part of the
model (JSON) and of every piece of evidence, so a steward reads e.g. ``core_name: jw_0.92``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rapidfuzz.distance import JaroWinkler, Levenshtein

from esbhub.mdm.standardize import StdParty

Getter = Callable[[StdParty], str | None]


@dataclass(frozen=True)
class Comparison:
    name: str
    levels: tuple[str, ...]
    fn: Callable[[StdParty, StdParty], tuple[int, str | None, str | None]]
    tf: str | None = None  # which term-frequency table adjusts the top levels ("core", "phone")
    tf_levels: tuple[int, ...] = ()


def _jw(a: str, b: str) -> float:
    return JaroWinkler.similarity(a, b)


# ------------------------------------------------------------------ organizations


def cmp_uscc(a: StdParty, b: StdParty) -> tuple[int, str | None, str | None]:
    # levels: null, exact_valid, exact_unverified, org_code, near, else
    if a.uscc and b.uscc:
        if a.uscc == b.uscc:
            return (1 if a.uscc_valid else 2), a.uscc, b.uscc
        if a.org_code and a.org_code == b.org_code:
            return 3, a.uscc, b.uscc
        if Levenshtein.distance(a.uscc, b.uscc, score_cutoff=1) <= 1 and not (a.uscc_valid and b.uscc_valid):
            return 4, a.uscc, b.uscc
        return 5, a.uscc, b.uscc
    if a.org_code and b.org_code:
        return (3 if a.org_code == b.org_code else 5), a.org_code, b.org_code
    return 0, a.uscc or a.org_code, b.uscc or b.org_code


def cmp_name(a: StdParty, b: StdParty) -> tuple[int, str | None, str | None]:
    # levels: null, canonical_exact, core_exact, core_near, pinyin, core_partial, else
    if a.name_norm == b.name_norm:
        return 1, a.name_norm, b.name_norm
    ca, cb = a.core_name, b.core_name
    if ca == cb:
        return 2, a.name_norm, b.name_norm
    if _jw(ca, cb) >= 0.92 or (min(len(ca), len(cb)) >= 4 and Levenshtein.distance(ca, cb, score_cutoff=1) <= 1):
        return 3, a.name_norm, b.name_norm
    if a.pinyin_key and a.pinyin_key == b.pinyin_key:
        return 4, a.name_norm, b.name_norm
    if _jw(ca, cb) >= 0.8 or _jw(a.name_norm, b.name_norm) >= 0.9:
        return 5, a.name_norm, b.name_norm
    return 6, a.name_norm, b.name_norm


def cmp_city(a: StdParty, b: StdParty) -> tuple[int, str | None, str | None]:
    # levels: null, same_city, same_province, else
    if a.city and b.city:
        if a.city == b.city:
            return 1, a.city, b.city
        if a.province and a.province == b.province:
            return 2, a.city, b.city
        return 3, a.city, b.city
    if a.province and b.province:
        return (2 if a.province == b.province else 3), a.province, b.province
    return 0, a.city or a.province, b.city or b.province


def cmp_phone(a: StdParty, b: StdParty) -> tuple[int, str | None, str | None]:
    # levels: null, shared, shared_generic, else   (shared may be demoted to shared_generic by TF)
    if not (a.phones or a.phones_generic) or not (b.phones or b.phones_generic):
        return 0, _first(a.phones), _first(b.phones)
    common = set(a.phones) & set(b.phones)
    if common:
        v = min(common)
        return 1, v, v
    common = set(a.phones_generic) & set(b.phones_generic)
    if common:
        v = min(common)
        return 2, v, v
    return 3, _first(a.phones or a.phones_generic), _first(b.phones or b.phones_generic)


def other_district(a: str | None, b: str | None) -> bool:
    """Two division codes (GB/T 2260) of different districts or counties: the same street and
    number in two districts of one city are two places (新华路515号 in 建邺区 and in 鼓楼区). Codes at
    city or province level (``…00``) say nothing about the district."""
    return bool(a and b and a != b and a[4:] != "00" and b[4:] != "00")


def cmp_address(a: StdParty, b: StdParty) -> tuple[int, str | None, str | None]:
    # levels: null, exact, near, partial, else
    sa, sb = a.street, b.street
    if not sa or not sb:
        return 0, a.address, b.address
    if other_district(a.division_code, b.division_code):
        return 4, a.address, b.address
    if sa == sb:
        return 1, a.address, b.address
    s = _jw(sa, sb)
    if s >= 0.92:
        return 2, a.address, b.address
    if s >= 0.8:
        return 3, a.address, b.address
    return 4, a.address, b.address


def cmp_email(a: StdParty, b: StdParty) -> tuple[int, str | None, str | None]:
    # levels: null, exact, domain, else
    if not a.emails or not b.emails:
        return 0, _first(a.emails), _first(b.emails)
    common = set(a.emails) & set(b.emails)
    if common:
        v = min(common)
        return 1, v, v
    da = {e.rsplit("@", 1)[-1] for e in a.emails} - PUBLIC_MAIL_DOMAINS
    db = {e.rsplit("@", 1)[-1] for e in b.emails}
    if da & db:
        return 2, a.emails[0], b.emails[0]
    return 3, a.emails[0], b.emails[0]


PUBLIC_MAIL_DOMAINS = frozenset({"qq.com", "163.com", "126.com", "sina.com", "gmail.com", "hotmail.com", "outlook.com",
                                 "foxmail.com", "yahoo.com", "sohu.com", "139.com", "189.cn", "aliyun.com", "yeah.net"})


def _first(xs: list[str]) -> str | None:
    return xs[0] if xs else None


ORG_COMPARISONS: tuple[Comparison, ...] = (
    Comparison("uscc", ("null", "exact_valid", "exact_unverified", "org_code", "near", "else"), cmp_uscc),
    Comparison("name", ("null", "canonical_exact", "core_exact", "core_near", "pinyin", "core_partial", "else"),
               cmp_name, tf="core", tf_levels=(1, 2)),
    Comparison("city", ("null", "same_city", "same_province", "else"), cmp_city),
    Comparison("phone", ("null", "shared", "shared_generic", "else"), cmp_phone, tf="phone", tf_levels=(1,)),
    Comparison("address", ("null", "exact", "jw_0.92", "jw_0.80", "else"), cmp_address, tf="address", tf_levels=(1,)),
    Comparison("email", ("null", "exact", "domain", "else"), cmp_email),
)

# ------------------------------------------------------------------ persons


def _graded(fn_get: Getter, hi: float = 0.92, lo: float = 0.8) -> Callable[[StdParty, StdParty], tuple[int, str | None, str | None]]:
    def cmp(a: StdParty, b: StdParty) -> tuple[int, str | None, str | None]:
        va, vb = fn_get(a), fn_get(b)
        if not va or not vb:
            return 0, va, vb
        if va == vb:
            return 1, va, vb
        s = _jw(va, vb)
        if s >= hi:
            return 2, va, vb
        if s >= lo:
            return 3, va, vb
        return 4, va, vb

    return cmp


def _edit(fn_get: Getter) -> Callable[[StdParty, StdParty], tuple[int, str | None, str | None]]:
    def cmp(a: StdParty, b: StdParty) -> tuple[int, str | None, str | None]:
        va, vb = fn_get(a), fn_get(b)
        if not va or not vb:
            return 0, va, vb
        if va == vb:
            return 1, va, vb
        if Levenshtein.distance(va, vb, score_cutoff=2) <= 1 or (len(va) == len(vb) and sorted(va) == sorted(vb)):
            return 2, va, vb
        if Levenshtein.distance(va, vb, score_cutoff=2) <= 2:
            return 3, va, vb
        return 4, va, vb

    return cmp


def cmp_person_name_swapped(a: StdParty, b: StdParty) -> tuple[int, str | None, str | None]:
    # levels: null, swapped, else — given/family written the other way round
    if not (a.given_name and a.family_name and b.given_name and b.family_name):
        return 0, None, None
    if a.given_name == b.family_name and a.family_name == b.given_name and a.given_name != a.family_name:
        return 1, f"{a.family_name},{a.given_name}", f"{b.family_name},{b.given_name}"
    return 2, None, None


PERSON_COMPARISONS: tuple[Comparison, ...] = (
    Comparison("given_name", ("null", "exact", "jw_0.92", "jw_0.80", "else"), _graded(lambda r: r.given_name)),
    Comparison("family_name", ("null", "exact", "jw_0.92", "jw_0.80", "else"), _graded(lambda r: r.family_name),
               tf="family", tf_levels=(1,)),
    Comparison("name_swap", ("null", "swapped", "else"), cmp_person_name_swapped),
    Comparison("birth_date", ("null", "exact", "edit_1", "edit_2", "else"), _edit(lambda r: r.birth_date)),
    Comparison("id_number", ("null", "exact", "edit_1", "edit_2", "else"), _edit(lambda r: r.id_number)),
    Comparison("street", ("null", "exact", "jw_0.92", "jw_0.80", "else"), _graded(lambda r: r.street)),
    Comparison("city", ("null", "exact", "jw_0.92", "jw_0.80", "else"), _graded(lambda r: r.city)),
    Comparison("postcode", ("null", "exact", "edit_1", "edit_2", "else"), _edit(lambda r: r.postcode)),
    Comparison("province", ("null", "exact", "jw_0.92", "jw_0.80", "else"), _graded(lambda r: r.province)),
    Comparison("phone", ("null", "shared", "shared_generic", "else"), cmp_phone, tf="phone", tf_levels=(1,)),
)

COMPARISONS = {"organization": ORG_COMPARISONS, "person": PERSON_COMPARISONS}

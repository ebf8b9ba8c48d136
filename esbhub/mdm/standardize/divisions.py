"""Administrative divisions (GB/T 2260) for address parsing — a compact, shipped table.

Coverage, honestly: all 34 province-level divisions; about 200 prefecture-level cities (all
provincial capitals and the larger cities, with their telephone area codes); about 60 urban
districts of the biggest cities (Beijing, Shanghai, Tianjin, Chongqing, Guangzhou, Shenzhen,
Hangzhou, Nanjing, Suzhou, Chengdu, Wuhan, Xi'an, Jinan, Qingdao). Smaller cities and most
districts/counties are *not* in the table: for them the parser keeps the district as written and
the division code falls back to the city or province level (or None). The table is package data
(``divisions.csv``); nothing is downloaded at run time. Codes are the 2020-era GB/T 2260 codes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class Division:
    code: str
    name: str  # full name, e.g. 深圳市
    short: str  # short name, e.g. 深圳
    area_code: str | None

    @property
    def level(self) -> str:
        if self.code.endswith("0000"):
            return "province"
        if self.code.endswith("00"):
            return "city"
        return "district"

    @property
    def province_code(self) -> str:
        return self.code[:2] + "0000"

    @property
    def city_code(self) -> str:
        return self.code[:4] + "00"


@dataclass(frozen=True, eq=False)
class DivisionTable:
    by_code: dict[str, Division]
    provinces: list[tuple[str, Division]]  # (written form, division), longest first
    cities: list[tuple[str, Division]]
    districts: dict[str, list[tuple[str, Division]]]  # city code -> forms
    area_codes: dict[str, Division]  # area code -> city

    @property
    def province_forms(self) -> FormIndex:
        return _forms(self, "provinces")

    @property
    def city_forms(self) -> FormIndex:
        return _forms(self, "cities")

    def district_forms(self, city_code: str) -> FormIndex:
        return _district_forms(self, city_code)

    def province_of(self, code: str) -> Division | None:
        return self.by_code.get(code[:2] + "0000")

    def city_of(self, code: str) -> Division | None:
        d = self.by_code.get(code[:4] + "00")
        if d is None and code[:2] in ("11", "12", "31", "50"):
            d = self.by_code.get(code[:2] + "0100")
        return d


_MUNICIPALITIES = {"11", "12", "31", "50"}


@lru_cache(maxsize=1)
def table() -> DivisionTable:
    text = resources.files(__package__).joinpath("divisions.csv").read_text(encoding="utf-8")
    by_code: dict[str, Division] = {}
    provinces: list[tuple[str, Division]] = []
    cities: list[tuple[str, Division]] = []
    districts: dict[str, list[tuple[str, Division]]] = {}
    area_codes: dict[str, Division] = {}
    for row in csv.DictReader(text.splitlines()):
        d = Division(row["code"], row["name"], row["short"], row["area_code"] or None)
        by_code[d.code] = d
        forms = {d.name, d.short}
        if d.level == "province":
            provinces += [(f, d) for f in forms]
        elif d.level == "city":
            cities += [(f, d) for f in forms]
            if d.area_code and (d.area_code not in area_codes or d.code[2:4] == "01"):
                area_codes.setdefault(d.area_code, d)
        else:
            city = d.code[:4] + "00" if d.code[:2] not in _MUNICIPALITIES else d.code[:2] + "0100"
            districts.setdefault(city, []).extend((f, d) for f in forms)
    provinces.sort(key=lambda t: -len(t[0]))
    cities.sort(key=lambda t: -len(t[0]))
    for forms in districts.values():
        forms.sort(key=lambda t: -len(t[0]))
    return DivisionTable(by_code, provinces, cities, districts, area_codes)


def city_by_short(short: str) -> Division | None:
    for form, d in table().cities:
        if form == short:
            return d
    return None


MAX_FORM = 9


class FormIndex(dict[str, Division]):
    """Written form → division, plus, for each first two characters of a form, the lengths of
    the forms that start with them (longest first, at most :data:`MAX_FORM`) — so a prefix
    look-up tries only lengths that some form has instead of every length from 9 down to 2.
    Built once and never changed afterwards."""

    lengths: dict[str, tuple[int, ...]]

    def __init__(self, pairs: list[tuple[str, Division]]) -> None:
        super().__init__()
        for form, d in pairs:
            self.setdefault(form, d)
        by_first2: dict[str, set[int]] = {}
        for form in self:
            if 2 <= len(form) <= MAX_FORM:
                by_first2.setdefault(form[:2], set()).add(len(form))
        self.lengths = {k: tuple(sorted(v, reverse=True)) for k, v in by_first2.items()}


@lru_cache(maxsize=4)
def _forms(t: DivisionTable, which: str) -> FormIndex:
    return FormIndex(getattr(t, which))


_DISTRICT_FORMS: dict[str, FormIndex] = {}


def _district_forms(t: DivisionTable, city_code: str) -> FormIndex:
    f = _DISTRICT_FORMS.get(city_code)
    if f is None:
        f = FormIndex(t.districts.get(city_code, []))
        _DISTRICT_FORMS[city_code] = f
    return f


def longest_prefix(s: str, forms: dict[str, Division]) -> tuple[str, Division] | None:
    """The longest form that ``s`` starts with (dictionary look-ups, not a scan)."""
    if isinstance(forms, FormIndex):
        for n in forms.lengths.get(s[:2], ()):
            if n <= len(s):
                d = forms.get(s[:n])
                if d is not None:
                    return s[:n], d
        return None
    for n in range(min(MAX_FORM, len(s)), 1, -1):
        d = forms.get(s[:n])
        if d is not None:
            return s[:n], d
    return None


def longest_suffix(s: str, forms: dict[str, Division]) -> tuple[str, Division] | None:
    for n in range(min(MAX_FORM, len(s)), 1, -1):
        d = forms.get(s[-n:])
        if d is not None:
            return s[-n:], d
    return None

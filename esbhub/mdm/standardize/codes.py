"""Check characters of Chinese registration codes, written here rather than borrowed.

* USCC — unified social credit code (统一社会信用代码, GB 32100-2015): 18 characters
  ``R T DDDDDD OOOOOOOOO C``: registration authority R (1-9, A-G, N, Y), organization type T,
  6-digit administrative division D, 9-character organization code O (GB 11714, with its own
  check character) and the check character C over the first 17, modulo 31 over the alphabet
  ``0-9 A-H J-N P-R T U W X Y`` (no I, O, S, V, Z).
  python-stdnum (``stdnum.cn.uscc``) requires the first 8 characters to be digits, so it rejects
  valid codes whose authority or type is a letter (e.g. ``N`` agriculture, ``A`` …); hence this.
* Organization code (组织机构代码, GB 11714-1997): 8 body characters (digits / upper letters)
  and a check character modulo 11 (``X`` for 10, ``0`` for 11).
* Resident identity number (公民身份号码, GB 11643-1999): 17 digits and an ISO 7064 MOD 11-2
  check character (``X`` for 10). The first-generation number (1985–1999) has 15 digits: the
  6-digit division, the birth date ``YYMMDD`` of a year 19YY, a 3-digit sequence and no check
  character; :func:`id_number_from_15` gives its 18-digit form, which the same person's second
  card carries.

A failed check is a *flag that lowers trust* in the code, never a rejection of the record.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache
from operator import mul

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_VALUE = {c: i for i, c in enumerate(USCC_ALPHABET)}
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_ORG_VALUE = {c: int(c) if c.isdigit() else ord(c) - 55 for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_USCC_SHAPE = re.compile(r"^[0-9A-HJ-NP-RTUWXY]{2}[0-9]{6}[0-9A-HJ-NP-RTUWXY]{10}$")
_ORG_SHAPE = re.compile(r"^[0-9A-Z]{8}[0-9X]$")
_ID_SHAPE = re.compile(r"^[0-9]{17}[0-9X]$")
_ID15_SHAPE = re.compile(r"^[0-9]{15}$")
_CODE_NOISE = re.compile(r"[\s\-\.·_/]")
_CACHE = 8192  # the checks are memoized: a company's records from several systems carry the same codes


def clean_code(value: str | None) -> str | None:
    """Upper case, without spaces, dashes and dots; None for empty."""
    if value is None:
        return None
    out = _CODE_NOISE.sub("", value).upper()
    return out or None


def uscc_check_char(first17: str) -> str:
    """Check character (GB 32100) for the first 17 characters of a USCC."""
    total = sum(_USCC_VALUE[c] * w for c, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def org_code_check_char(body8: str) -> str:
    """Check character (GB 11714) for the 8 body characters of an organization code."""
    total = 0
    for c, w in zip(body8, _ORG_WEIGHTS, strict=True):
        v = int(c) if c.isdigit() else ord(c) - 55  # A=10 … Z=35
        total += v * w
    r = 11 - total % 11
    return "X" if r == 10 else "0" if r == 11 else str(r)


@lru_cache(maxsize=_CACHE)
def org_code_valid(code: str) -> bool:
    """True when ``code`` (9 characters, no dash) is a well-formed organization code."""
    if not _ORG_SHAPE.match(code):
        return False
    # same sum as org_code_check_char; the shape check guarantees 9 characters, 8 of them [0-9A-Z]
    r = 11 - sum(map(mul, map(_ORG_VALUE.__getitem__, code[:8]), _ORG_WEIGHTS)) % 11
    return ("X" if r == 10 else "0" if r == 11 else str(r)) == code[8]


@lru_cache(maxsize=_CACHE)
def uscc_valid(code: str) -> bool:
    """True when ``code`` is well formed and its GB 32100 check character is right."""
    if not _USCC_SHAPE.match(code):
        return False
    # same sum as uscc_check_char; the shape check guarantees 18 characters of the alphabet
    total = sum(map(mul, map(_USCC_VALUE.__getitem__, code[:17]), _USCC_WEIGHTS))
    return USCC_ALPHABET[(31 - total % 31) % 31] == code[17]


def uscc_org_code_valid(code: str) -> bool:
    """The organization code embedded in a USCC (positions 9-17) passes GB 11714."""
    return len(code) == 18 and org_code_valid(code[8:17])


def make_uscc(authority: str, org_type: str, division: str, org_body8: str) -> str:
    """Build a valid USCC from its parts (used by the synthetic data generator and tests)."""
    org = org_body8 + org_code_check_char(org_body8)
    first17 = authority + org_type + division + org
    return first17 + uscc_check_char(first17)


@lru_cache(maxsize=_CACHE)
def id_number_valid(number: str) -> bool:
    """True when an 18-character resident ID number has the right check character."""
    if not _ID_SHAPE.match(number):
        return False
    total = sum(int(c) * w for c, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17]


def id_check_char(first17: str) -> str:
    total = sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


@lru_cache(maxsize=_CACHE)
def id_number_from_15(number: str) -> str | None:
    """The 18-digit form of a first-generation (15-digit) resident ID number, as GB 11643-1999
    converts it: ``19`` inserted before the 2-digit birth year, then the check character over
    the 17 digits. None when ``number`` is not one: not 15 digits, or its ``YYMMDD`` is no
    date of 19YY (a 15-digit number has no check character, so the date is all there is to
    check)."""
    if not _ID15_SHAPE.match(number):
        return None
    year, month, day = 1900 + int(number[6:8]), int(number[8:10]), int(number[10:12])
    try:
        date(year, month, day)
    except ValueError:
        return None
    first17 = f"{number[:6]}19{number[6:]}"
    return first17 + id_check_char(first17)

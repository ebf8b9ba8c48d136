"""Cannot-link constraints: pairs that must never end up in one golden record, whatever the score.

The match weight says how alike two records are; these rules say when alike is not the same:

* ``cannot_link:kind`` — an organization and a person.
* ``cannot_link:uscc_conflict`` — two *valid* but different USCCs are two legal entities.
  (A code that fails its check may be a typo of the other and only lowers trust.)
* ``cannot_link:id_conflict`` — two persons with different valid resident ID numbers.
* ``cannot_link:branch_vs_head`` — a branch (分公司, 分行, 支行, 营业部, 办事处 …) and its head
  office (or any non-branch) are separate entities, linked in the hierarchy, never merged —
  even though branches often carry the head office's USCC.
* ``cannot_link:different_branches`` — two branches with different branch names
  (南山分公司 vs 福田分公司, 深圳分行 vs 福田支行) are separate entities too; only a one-character
  typo inside a longer label is tolerated.

A steward's "not the same" decision is a cannot-link as well; the store applies it (it knows the
decisions), this module only knows the records. The rules here are hard: no score and no steward
"same" decision overrides them (a steward merge that contradicts one is refused with the rule's
:data:`RULES` text); a record that is wrong at its source is corrected there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rapidfuzz.distance import Levenshtein

from esbhub.mdm.standardize import StdParty

RULES: dict[str, str] = {
    "cannot_link:kind": "an organization and a person are never one customer",
    "cannot_link:uscc_conflict": "two different valid USCCs are two legal entities",
    "cannot_link:id_conflict": "two different valid resident ID numbers are two persons",
    "cannot_link:branch_vs_head": "a branch is its own entity, linked to its head office in the hierarchy, "
                                  "never merged into it",
    "cannot_link:different_branches": "two branches with different names are separate entities",
}
"""What each reason :func:`can_link` gives means, in words a steward reads in a refusal."""


class LinkView:
    """What :func:`can_link` reads of a standardized record, and nothing else: taken from its stored
    JSON (``std_json``, i.e. ``StdParty.model_dump``) without validating a whole :class:`StdParty`
    (re-clustering a region asks for every member; validating them was ~5 % of a real-time batch),
    or from a :class:`StdParty` an initial load keeps for every record (:meth:`of`). Missing keys
    take :class:`StdParty`'s defaults."""

    __slots__ = ("kind", "uscc", "uscc_valid", "id_number", "id_number_valid", "branch", "branch_name")

    @classmethod
    def of(cls, std: StdParty) -> LinkView:
        return cls({k: getattr(std, k) for k in cls.__slots__})

    def __init__(self, d: Mapping[str, Any]) -> None:
        g = d.get
        self.kind = g("kind") or "organization"
        self.uscc = g("uscc")
        self.uscc_valid = g("uscc_valid")
        self.id_number = g("id_number")
        self.id_number_valid = g("id_number_valid")
        self.branch = bool(g("branch"))
        self.branch_name = g("branch_name")


def can_link(a: StdParty | LinkView, b: StdParty | LinkView) -> str | None:
    """None when a and b may be merged; else the reason they must not be."""
    if a.kind != b.kind:
        return "cannot_link:kind"
    if a.uscc and b.uscc and a.uscc_valid and b.uscc_valid and a.uscc != b.uscc:
        return "cannot_link:uscc_conflict"
    if a.kind == "person":
        if a.id_number and b.id_number and a.id_number_valid and b.id_number_valid and a.id_number != b.id_number:
            return "cannot_link:id_conflict"
        return None
    if a.branch != b.branch:
        return "cannot_link:branch_vs_head"
    if a.branch and b.branch and a.branch_name != b.branch_name:
        x, y = a.branch_name or "", b.branch_name or ""
        # tolerate a one-character typo in a longer label (same start, same suffix), nothing more
        typo = len(x) >= 4 and x[:2] == y[:2] and x[-2:] == y[-2:] and Levenshtein.distance(x, y) <= 1
        if not typo:
            return "cannot_link:different_branches"
    return None

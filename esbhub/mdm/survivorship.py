"""Per-attribute survivorship: which source value becomes the golden value, and why.

Each attribute has an ordered list of rules (:class:`AttributeRule`). Candidates are the
non-empty values of the golden record's member source records (deleted source records only
when nothing else is left); they are ranked by the rules in order — the first rule that
tells two different values apart decides — and finally by source key, so the outcome never
depends on arrival order. Rules:

``override``      a steward's manual value for this golden id wins over everything
``trust``         source trust for this attribute (``trust``: system → score, ``*`` = default)
``valid``         values that passed their check (USCC check character) first
``recency``       newest ``source_updated_at`` (falls back to when the hub received it)
``completeness``  longer / more complete values first (e.g. a full address)
``frequency``     the value most member records agree on

List attributes (phones, e-mails, circuits, contacts, addresses) with ``collect=True`` are the
union of all members' values. Every golden value carries its lineage: the source system and
id it came from and the rule that won (``only_source`` when one source had a value,
``unanimous`` when all sources agreed, ``union`` for collected lists).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RuleName = Literal["override", "trust", "valid", "recency", "completeness", "frequency"]


class AttributeRule(BaseModel):
    """How one attribute survives."""

    model_config = ConfigDict(extra="forbid")

    rules: list[RuleName] = Field(
        default_factory=lambda: ["override", "trust", "frequency", "recency", "completeness"],
        description="Rules in order; the first that tells two different values apart decides.",
    )
    trust: dict[str, int] = Field(
        default_factory=dict, description="Source trust for this attribute: system → score (higher wins); '*' default."
    )
    collect: bool = Field(default=False, description="List attribute: the golden value is the union of all members.")


_CRM_FIRST = {"crm": 90, "callcenter": 70, "billing": 60, "resource": 50, "bank": 40, "*": 30}
_BILLING_FIRST = {"billing": 100, "crm": 40, "*": 20}
_REGISTRY_FIRST = {"registry": 100, "billing": 70, "crm": 60, "resource": 50, "bank": 50, "*": 30}


def _default_attributes() -> dict[str, AttributeRule]:
    r = AttributeRule
    return {
        "name": r(rules=["override", "trust", "frequency", "recency", "completeness"], trust=_REGISTRY_FIRST),
        "uscc": r(rules=["override", "valid", "frequency", "trust", "recency"], trust=_REGISTRY_FIRST),
        "org_code": r(rules=["override", "valid", "frequency", "trust", "recency"], trust=_REGISTRY_FIRST),
        "address": r(rules=["override", "trust", "completeness", "recency"], trust=_CRM_FIRST),
        "billing_account": r(rules=["override", "trust", "recency"], trust=_BILLING_FIRST),
        "parent_billing_account": r(rules=["override", "trust", "recency"], trust=_BILLING_FIRST),
        "monthly_revenue": r(rules=["override", "trust", "recency"], trust=_BILLING_FIRST),
        "account_manager": r(rules=["override", "trust", "recency"], trust=_CRM_FIRST),
        "industry": r(rules=["override", "trust", "frequency", "recency"], trust=_CRM_FIRST),
        "bank_account": r(rules=["override", "trust", "recency"], trust={"bank": 100, "billing": 60, "*": 20}),
        "bank_name": r(rules=["override", "trust", "recency"], trust={"bank": 100, "billing": 60, "*": 20}),
        "status": r(rules=["override", "recency", "trust"], trust=_BILLING_FIRST),
        "phones": r(collect=True, trust=_CRM_FIRST),
        "emails": r(collect=True, trust=_CRM_FIRST),
        "contacts": r(collect=True, trust=_CRM_FIRST),
        "addresses": r(collect=True, trust=_CRM_FIRST),
        "circuit_ids": r(collect=True, trust={"resource": 100, "*": 10}),
    }


class SurvivorshipConfig(BaseModel):
    """Survivorship rules per attribute (defaults: billing for billing data, CRM for contacts,
    a valid check for registry codes)."""

    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, AttributeRule] = Field(
        default_factory=_default_attributes, description="Rules per golden attribute name."
    )
    default: AttributeRule = Field(
        default_factory=lambda: AttributeRule(trust=_CRM_FIRST), description="Rules for attributes not listed."
    )

    def rule_for(self, attr: str) -> AttributeRule:
        return self.attributes.get(attr) or self.default


@dataclass
class Member:
    """One current source record of a golden record, as survivorship sees it."""

    key: str
    system: str
    source_id: str
    raw: dict[str, Any]
    std: dict[str, Any]
    updated_at: datetime
    deleted: bool = False
    updated_iso: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.updated_iso = self.updated_at.isoformat()  # once, not once per attribute it wins


@dataclass
class _Cand:
    value: Any
    member: Member
    valid: bool | None = None
    scores: list[Any] = field(default_factory=list)


def _first_address(m: Member) -> str | None:
    addrs = m.raw.get("addresses") or []
    for kind in ("registered", "office"):
        for a in addrs:
            if a.get("kind") == kind:
                return a.get("text")
    return addrs[0].get("text") if addrs else None


def _attr(name: str) -> Callable[[Member], Any]:
    return lambda m: (m.raw.get("attributes") or {}).get(name)


def _std(name: str) -> Callable[[Member], Any]:
    return lambda m: m.std.get(name)


def _raw(name: str) -> Callable[[Member], Any]:
    return lambda m: m.raw.get(name)


SCALARS: dict[str, Callable[[Member], Any]] = {
    "kind": _raw("kind"),
    "name": _raw("name"),
    "name_en": _raw("name_en"),
    "uscc": _std("uscc"),
    "org_code": _std("org_code"),
    "id_number": _raw("id_number"),
    "legal_form": _std("legal_form"),
    "core_name": _std("core_name"),
    "province": lambda m: m.std.get("province") or m.raw.get("province"),
    "city": lambda m: m.std.get("city") or m.raw.get("city"),
    "district": _std("district"),
    "division_code": _std("division_code"),
    "address": _first_address,
    "status": _raw("status"),
    "billing_account": _attr("billing_account"),
    "parent_billing_account": _attr("parent_billing_account"),
    "monthly_revenue": _attr("monthly_revenue"),
    "bank_account": _attr("bank_account"),
    "bank_name": _attr("bank_name"),
    "account_manager": _attr("account_manager"),
    "industry": _attr("industry"),
}

LISTS: dict[str, Callable[[Member], list[Any]]] = {
    "phones": lambda m: list(m.std.get("phones") or []) + list(m.std.get("phones_generic") or []),
    "emails": lambda m: list(m.std.get("emails") or []),
    "circuit_ids": lambda m: list((m.raw.get("attributes") or {}).get("circuit_ids") or []),
    "contacts": lambda m: list(m.raw.get("contacts") or []),
    "addresses": lambda m: list(m.raw.get("addresses") or []),
}

VALIDITY: dict[str, str] = {"uscc": "uscc_valid", "org_code": "org_code_valid"}


def _empty(v: Any) -> bool:
    return v is None or v == "" or v == [] or v == {}


def _completeness(v: Any) -> int:
    if isinstance(v, str):
        return len(v)
    if isinstance(v, dict):
        return sum(1 for x in v.values() if not _empty(x))
    return 0 if _empty(v) else 1


def _trust(rule: AttributeRule, system: str) -> int:
    return rule.trust.get(system, rule.trust.get("*", 0))


def _lineage(m: Member, rule: str) -> dict[str, Any]:
    return {"source_system": m.system, "source_id": m.source_id, "rule": rule, "source_updated_at": m.updated_iso}


def _hashable(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


def survive_scalar(
    attr: str, cands: list[_Cand], rule: AttributeRule, override: Any = None, has_override: bool = False
) -> dict[str, Any] | None:
    if has_override and "override" in rule.rules:
        return {"value": override, "lineage": {"source_system": "steward", "source_id": None, "rule": "override"}}
    if not cands:
        return None
    if len(cands) == 1:  # what ranking one candidate comes to
        return {"value": cands[0].value, "lineage": _lineage(cands[0].member, "only_source")}
    freq = Counter(_hashable(c.value) for c in cands)
    active = [r for r in rule.rules if r != "override"]
    for c in cands:
        sc: list[Any] = []
        for r in active:
            if r == "trust":
                sc.append(_trust(rule, c.member.system))
            elif r == "valid":
                sc.append(1 if c.valid else 0)
            elif r == "recency":
                sc.append(c.member.updated_at.timestamp())
            elif r == "completeness":
                sc.append(_completeness(c.value))
            elif r == "frequency":
                sc.append(freq[_hashable(c.value)])
        c.scores = sc
    # best first; ties broken by source key so the outcome never depends on arrival order
    ranked = sorted(cands, key=lambda c: (tuple(-s for s in c.scores), c.member.key))
    win = ranked[0]
    rivals = [c for c in ranked[1:] if _hashable(c.value) != _hashable(win.value)]
    if not rivals:
        why = "only_source" if len(cands) == 1 else "unanimous"
    else:
        rival = rivals[0]
        why = "source_key"
        for r, a, b in zip(active, win.scores, rival.scores, strict=True):
            if a != b:
                why = r
                break
    return {"value": win.value, "lineage": _lineage(win.member, why)}


def survive_list(attr: str, members: list[Member], rule: AttributeRule) -> dict[str, Any] | None:
    getter = LISTS[attr]
    order = sorted(members, key=lambda m: (-_trust(rule, m.system), m.key))
    seen: dict[Any, dict[str, Any]] = {}
    values: list[Any] = []
    for m in order:
        for v in getter(m):
            if _empty(v):
                continue
            h = _hashable(v)
            if h in seen:
                seen[h]["also"].append(m.key)
                continue
            lin = {**_lineage(m, "union"), "value": v, "also": []}
            seen[h] = lin
            values.append(v)
    if not values:
        return None
    return {"value": values, "lineage": [seen[_hashable(v)] for v in values]}


def survive(
    members: list[Member], config: SurvivorshipConfig | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """The golden attributes of ``members``: ``{attr: {"value": …, "lineage": …}}``."""
    config = config or SurvivorshipConfig()
    overrides = overrides or {}
    live = [m for m in members if not m.deleted] or list(members)
    out: dict[str, dict[str, Any]] = {}
    for attr, getter in SCALARS.items():
        rule = config.rule_for(attr)
        cands = []
        for m in live:
            v = getter(m)
            if _empty(v):
                continue
            valid = m.std.get(VALIDITY[attr]) if attr in VALIDITY else None
            cands.append(_Cand(value=v, member=m, valid=valid))
        res = survive_scalar(attr, cands, rule, overrides.get(attr), attr in overrides)
        if res is not None:
            out[attr] = res
    for attr in LISTS:
        rule = config.rule_for(attr)
        if attr in overrides:
            out[attr] = {"value": overrides[attr], "lineage": {"source_system": "steward", "source_id": None, "rule": "override"}}
            continue
        res = survive_list(attr, live, rule)
        if res is not None:
            out[attr] = res
    # system-specific flat attributes, kept with lineage
    extra_keys = sorted({k for m in live for k in ((m.raw.get("attributes") or {}).get("extra") or {})})
    for k in extra_keys:
        attr = f"extra.{k}"
        cands = [
            _Cand(value=v, member=m)
            for m in live
            if not _empty(v := ((m.raw.get("attributes") or {}).get("extra") or {}).get(k))
        ]
        res = survive_scalar(attr, cands, config.rule_for(attr), overrides.get(attr), attr in overrides)
        if res is not None:
            out[attr] = res
    for attr, value in overrides.items():  # overrides of attributes no source has
        out.setdefault(attr, {"value": value, "lineage": {"source_system": "steward", "source_id": None, "rule": "override"}})
    return out


def values(attributes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Just the values of survived attributes."""
    return {k: v["value"] for k, v in attributes.items()}

"""Per-attribute survivorship: which source value becomes the golden value, and why.

Each attribute has an ordered list of rules (:class:`AttributeRule`). Candidates are the
non-empty values of the golden record's member source records (deleted source records only
when nothing else is left); they are ranked by the rules in order — the first rule that
tells two different values apart decides — and finally by source key, so the outcome never
depends on arrival order. Rules:

``override``      a steward's manual value for this golden id wins over everything
``trust``         source trust for this attribute (``trust``: system → score 0–100, ``*`` = default)
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
from difflib import get_close_matches
from itertools import compress
from operator import itemgetter
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

RuleName = Literal["override", "trust", "valid", "recency", "completeness", "frequency"]
SystemName = Annotated[str, StringConstraints(min_length=1)]
"""A source system (``party.v1`` ``source_system``), or ``*`` for every system not listed."""
TrustScore = Annotated[int, Field(ge=0, le=100)]
"""How far a system is trusted for an attribute: 0 (not at all) to 100; higher wins."""


class AttributeRule(BaseModel):
    """How one attribute survives."""

    model_config = ConfigDict(extra="forbid")

    rules: list[RuleName] = Field(
        default_factory=lambda: ["override", "trust", "frequency", "recency", "completeness"],
        description="Rules in order; the first that tells two different values apart decides.",
    )
    trust: dict[SystemName, TrustScore] = Field(
        default_factory=dict, description="Source trust for this attribute: system → score 0–100 (higher wins); "
        "'*' for systems not listed (else 0). The table given replaces the default one whole."
    )
    collect: bool = Field(default=False, description="True for the list attributes (phones, emails, circuit_ids, "
                          "contacts, addresses) and only for them: their golden value is the union of all members'.")

    @field_validator("rules")
    @classmethod
    def _each_rule_once(cls, v: list[str]) -> list[str]:
        """A rule is listed once (only its first place could ever decide)."""
        for i, r in enumerate(v):
            if r in v[:i]:
                raise ValueError(f"'{r}' is listed twice: a rule decides at its first place only")
        return v


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


def _default_rule() -> AttributeRule:
    return AttributeRule(trust=_CRM_FIRST)


def _over(base: AttributeRule, given: AttributeRule) -> AttributeRule:
    """``base`` with the fields ``given`` was given (not those it has by default)."""
    if given.model_fields_set >= set(AttributeRule.model_fields):
        return given
    return base.model_copy(update={f: getattr(given, f) for f in given.model_fields_set})


def _known_attribute(attr: str) -> str:
    """``attr`` names a golden attribute survivorship makes (see :data:`ATTRIBUTES`)."""
    if attr in ATTRIBUTES or (attr.startswith("extra.") and len(attr) > len("extra.")):
        return attr
    near = get_close_matches(attr, ATTRIBUTES, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    raise ValueError(f"no golden attribute '{attr}'{hint}: one of {', '.join(ATTRIBUTES)} or extra.<name>")


class SurvivorshipConfig(BaseModel):
    """Survivorship rules per attribute (defaults: billing for billing data, CRM for contacts,
    a valid check for registry codes)."""

    model_config = ConfigDict(extra="forbid")

    attributes: dict[Annotated[str, AfterValidator(_known_attribute)], AttributeRule] = Field(
        default_factory=_default_attributes,
        description="Rules per golden attribute name (or 'extra.<name>'; another name is refused). An attribute "
        "given here keeps the defaults of the fields it does not give (rules, trust); attributes not given keep "
        "their default rule.",
    )
    default: AttributeRule = Field(
        default_factory=_default_rule,
        description="Rules for attributes not in 'attributes' (the fields not given keep their defaults).",
    )

    @field_validator("attributes")
    @classmethod
    def _over_the_defaults(cls, v: dict[str, AttributeRule]) -> dict[str, AttributeRule]:
        """The attributes given are laid over the default ones, field by field.

        A config that changes the trust of one attribute must not drop the defaults of the others
        (billing first for revenue…), nor the rules of that one (the ``valid`` check of a USCC).
        """
        out = _default_attributes()
        for attr, rule in v.items():
            out[attr] = _over(out[attr], rule) if attr in out else rule
        return out

    @field_validator("attributes")
    @classmethod
    def _collect_only_lists(cls, v: dict[str, AttributeRule]) -> dict[str, AttributeRule]:
        """``collect`` is true for the list attributes and only for them (it says, it does not choose)."""
        for attr, rule in v.items():
            if rule.collect != (attr in _LIST_NAMES):
                raise ValueError(
                    f"{attr}.collect: '{attr}' is a list attribute, always the union of its sources' values"
                    if attr in _LIST_NAMES else
                    f"{attr}.collect: '{attr}' is a single value; only list attributes ({', '.join(_LIST_NAMES)}) "
                    "are collected")
        return v

    @field_validator("default")
    @classmethod
    def _over_the_default(cls, v: AttributeRule) -> AttributeRule:
        """The fields ``default`` does not give keep their defaults."""
        return _over(_default_rule(), v)

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


def _first_address_of(raw: dict[str, Any]) -> str | None:
    addrs = raw.get("addresses") or []
    for kind in ("registered", "office"):
        for a in addrs:
            if a.get("kind") == kind:
                return a.get("text")
    return addrs[0].get("text") if addrs else None


def _scalar_row(raw: dict[str, Any], std: dict[str, Any]) -> tuple[Any, ...]:
    """The values of all scalar attributes of one member, in :data:`_SCALAR_NAMES` order (one call instead of one per attribute)."""
    rg, sg = raw.get, std.get
    ag = (rg("attributes") or {}).get
    return (
        rg("kind"), rg("name"), rg("name_en"), sg("uscc"), sg("org_code"), rg("id_number"), sg("legal_form"),
        sg("core_name"), sg("province") or rg("province"), sg("city") or rg("city"), sg("district"),
        sg("division_code"), _first_address_of(raw), rg("status"), ag("billing_account"),
        ag("parent_billing_account"), ag("monthly_revenue"), ag("bank_account"), ag("bank_name"),
        ag("account_manager"), ag("industry"),
    )


_SCALAR_NAMES = (
    "kind", "name", "name_en", "uscc", "org_code", "id_number", "legal_form", "core_name", "province", "city",
    "district", "division_code", "address", "status", "billing_account", "parent_billing_account",
    "monthly_revenue", "bank_account", "bank_name", "account_manager", "industry",
)  # the order of _scalar_row


def _list_row(raw: dict[str, Any], std: dict[str, Any]) -> tuple[Any, ...]:
    """The values of all list attributes of one member, in :data:`_LIST_NAMES` order."""
    phones, generic = std.get("phones"), std.get("phones_generic")
    return (
        [*phones, *generic] if phones and generic else phones or generic or (),
        std.get("emails") or (),
        (raw.get("attributes") or {}).get("circuit_ids") or (),
        raw.get("contacts") or (),
        raw.get("addresses") or (),
    )


_LIST_NAMES = ("phones", "emails", "circuit_ids", "contacts", "addresses")  # the order of _list_row

# one getter per attribute (for survive_list and callers that want one attribute), from the same rows
SCALARS: dict[str, Callable[[Member], Any]] = {
    n: (lambda m, i=i: _scalar_row(m.raw, m.std)[i]) for i, n in enumerate(_SCALAR_NAMES)
}
LISTS: dict[str, Callable[[Member], list[Any]]] = {
    n: (lambda m, i=i: list(_list_row(m.raw, m.std)[i])) for i, n in enumerate(_LIST_NAMES)
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


def _lineage(m: Member, rule: str) -> dict[str, Any]:
    return {"source_system": m.system, "source_id": m.source_id, "rule": rule, "source_updated_at": m.updated_iso}


_LEAVES = frozenset({str, int, float, bool, type(None)})  # what _hashable returns as they are


def _hashable(v: Any) -> Any:
    if isinstance(v, dict):
        if all(x.__class__ in _LEAVES for x in v.values()):  # flat (an address, a contact)
            return tuple(sorted(v.items()))
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


def _hashables(vals: tuple[Any, ...] | list[Any]) -> tuple[Any, ...] | list[Any]:
    """``_hashable`` of each value (the values themselves when all are strings)."""
    for v in vals:
        if v.__class__ is not str:
            return [x if x.__class__ is str else _hashable(x) for x in vals]
    return vals


def _override(value: Any) -> dict[str, Any]:
    return {"value": value, "lineage": {"source_system": "steward", "source_id": None, "rule": "override"}}


_ACTIVE: dict[tuple[str, ...], tuple[str, ...]] = {}


def _active(rules: list[str]) -> tuple[str, ...]:
    """The rules that rank candidates: all but ``override``, in order (memoized per rule list)."""
    t = tuple(rules)
    a = _ACTIVE.get(t)
    if a is None:
        if len(_ACTIVE) > 1000:
            _ACTIVE.clear()
        a = _ACTIVE[t] = tuple(r for r in t if r != "override")
    return a


# per rule: the ranking rules, the member-level score columns by rule name, and (once needed)
# each member's place when ranked by those scores alone
_Plan = tuple[tuple[str, ...], dict[str, list[Any]], list[list[int]]]


class _Live:
    """What ranking needs of the members of one ``survive`` call, computed once for all attributes.

    A candidate's sort key is its negated rule scores in rule order, then its source key; a
    stable sort puts the first smallest key first. Scores that depend only on the member
    (trust, valid, recency) are columns over all members, built once per rule; a candidate
    set takes its part of a column with one ``itemgetter`` (``pick``).
    """

    __slots__ = ("ms", "keys", "_negts", "_plans", "_trust", "_order")

    def __init__(self, ms: list[Member]) -> None:
        self.ms = ms
        self.keys = [m.key for m in ms]
        self._negts: list[float] | None = None
        self._plans: dict[tuple[int, Any], _Plan] = {}
        self._trust: dict[tuple[tuple[str, int], ...], list[int]] = {}
        self._order: dict[int, list[int]] = {}

    def trust(self, rule: AttributeRule) -> list[int]:
        """Minus each member's trust under ``rule`` (one column for rules that trust alike)."""
        trust = rule.trust
        tk = tuple(trust.items())
        col = self._trust.get(tk)
        if col is None:
            dflt = trust.get("*", 0)
            col = self._trust[tk] = [-(trust[m.system] if m.system in trust else dflt) for m in self.ms]
        return col

    def by_trust(self, rule: AttributeRule) -> list[int]:
        """Member positions, most trusted under ``rule`` first, then by source key (stable)."""
        col = self.trust(rule)
        order = self._order.get(id(col))
        if order is None:
            order = self._order[id(col)] = [i for _t, _k, i in sorted(zip(col, self.keys, range(len(col)), strict=True))]
        return order

    def _plan(self, rule: AttributeRule, valid: str | list[Any] | None) -> _Plan:
        active = _active(rule.rules)
        cols: dict[str, list[Any]] = {}
        for r in active:
            if r in cols:
                continue
            if r == "trust":
                cols[r] = self.trust(rule)
            elif r == "recency":
                if self._negts is None:
                    self._negts = [-m.updated_at.timestamp() for m in self.ms]
                cols[r] = self._negts
            elif r == "valid":
                if valid is None:
                    cols[r] = [0] * len(self.ms)
                elif valid.__class__ is str:
                    cols[r] = [-1 if m.std.get(valid) else 0 for m in self.ms]
                else:
                    cols[r] = [-1 if x else 0 for x in valid]
        return active, cols, []

    def rank(
        self, pick: Callable[[list[Any]], tuple[Any, ...]], vals: tuple[Any, ...] | list[Any], rule: AttributeRule,
        valid: str | list[Any] | None,
    ) -> tuple[int, str]:
        """Rank two or more candidates ``vals`` of the members ``pick`` takes (an ``itemgetter``
        of two or more member positions): the position of the winner in ``vals`` and the rule
        that decided (``unanimous`` when all values agree, ``source_key`` when no rule told the
        winner from its best rival). ``valid`` is the ``std`` field that says a value is valid,
        or the flags of the members themselves."""
        pk = (id(rule), valid if valid is None or valid.__class__ is str else id(valid))
        plan = self._plans.get(pk)
        if plan is None:
            plan = self._plans[pk] = self._plan(rule, valid)
        active, cols, place = plan
        n = len(vals)
        v0 = vals[0]
        if v0.__class__ is str and vals.count(v0) == n:
            # all the same string, so the same frequency and completeness: the member scores decide
            if not place:
                mk = list(zip(*[cols[r] for r in active if r in cols], self.keys, strict=True))
                places = [0] * len(mk)
                for j, i in enumerate(sorted(range(len(mk)), key=mk.__getitem__)):
                    places[i] = j
                place.append(places)
            ps = pick(place[0])
            return ps.index(min(ps)), "unanimous"
        hs = _hashables(vals)
        ks_cols: list[tuple[Any, ...] | list[Any]] = []
        for r in active:
            col = cols.get(r)
            if col is not None:
                ks_cols.append(pick(col))
            elif r == "frequency":
                count = hs.count if n <= 16 else Counter(hs).__getitem__
                ks_cols.append([-count(h) for h in hs])
            elif r == "completeness":
                ks_cols.append([-len(v) if v.__class__ is str else -_completeness(v) for v in vals])
        ks_cols.append(pick(self.keys))
        ks = list(zip(*ks_cols, strict=True))
        wk = min(ks)
        win = ks.index(wk)  # the first smallest, as a stable sort has it
        hw = hs[win]
        rivals = [ks[j] for j in range(n) if j != win and hs[j] != hw]
        if not rivals:
            return win, "unanimous"
        rk = min(rivals)
        for i, r in enumerate(active):
            if wk[i] != rk[i]:
                return win, r
        return win, "source_key"


def survive_scalar(
    attr: str, cands: list[_Cand], rule: AttributeRule, override: Any = None, has_override: bool = False
) -> dict[str, Any] | None:
    if has_override and "override" in rule.rules:
        return _override(override)
    if not cands:
        return None
    if len(cands) == 1:  # what ranking one candidate comes to
        return {"value": cands[0].value, "lineage": _lineage(cands[0].member, "only_source")}
    win, why = _Live([c.member for c in cands]).rank(
        itemgetter(*range(len(cands))), [c.value for c in cands], rule, [c.valid for c in cands]
    )
    return {"value": cands[win].value, "lineage": _lineage(cands[win].member, why)}


def _survive_list(per_member: list[Any] | tuple[Any, ...], live: _Live, rule: AttributeRule) -> dict[str, Any] | None:
    """``survive_list`` with each live member's values already taken."""
    ms = live.ms
    seen: dict[Any, dict[str, Any]] = {}
    values: list[Any] = []
    lineage: list[dict[str, Any]] = []
    for i in live.by_trust(rule):
        m = ms[i]
        for v in per_member[i]:
            if v.__class__ is str:
                if not v:
                    continue
                h = v
            elif _empty(v):
                continue
            else:
                h = _hashable(v)
            lin = seen.get(h)
            if lin is not None:
                lin["also"].append(m.key)
                continue
            lin = {"source_system": m.system, "source_id": m.source_id, "rule": "union",
                   "source_updated_at": m.updated_iso, "value": v, "also": []}
            seen[h] = lin
            values.append(v)
            lineage.append(lin)
    if not values:
        return None
    return {"value": values, "lineage": lineage}


def survive_list(attr: str, members: list[Member], rule: AttributeRule) -> dict[str, Any] | None:
    getter = LISTS[attr]
    return _survive_list([getter(m) for m in members], _Live(members), rule)


ATTRIBUTES = (*_SCALAR_NAMES, *_LIST_NAMES)
"""The golden attributes survivorship makes (besides ``extra.<name>``)."""


def override_problem(attribute: str, value: Any) -> tuple[Literal["attribute", "value"], str] | None:
    """What is wrong with a steward's override of ``attribute`` with ``value`` — which of the two,
    and why — or None. The golden attributes are the scalar and list attributes survivorship
    makes, and ``extra.<name>`` for system-specific ones; a list attribute takes a list, the
    others a string, number or boolean."""
    if value is None:
        return None  # removes the override
    if attribute in _LIST_NAMES:
        return None if isinstance(value, list) else ("value", f"'{attribute}' is a list attribute: the value must be a list")
    if attribute in _SCALAR_NAMES or (attribute.startswith("extra.") and len(attribute) > len("extra.")):
        return None if isinstance(value, str | int | float | bool) else (
            "value", f"'{attribute}' is a single value: the value must be a string, number or boolean")
    return "attribute", f"no golden attribute '{attribute}': one of {', '.join(ATTRIBUTES)} or extra.<name>"


def overrides_always_win(config: SurvivorshipConfig) -> bool:
    """Every attribute's rules contain ``override``: then each active override of a golden
    record shows in its survived attributes with the rule ``override`` (:func:`survive`), and a
    golden record whose attributes show none has none. False for a config class of its own."""
    return type(config) is SurvivorshipConfig and all(
        "override" in r.rules for r in (config.default, *config.attributes.values()))


def survive(
    members: list[Member], config: SurvivorshipConfig | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """The golden attributes of ``members``: ``{attr: {"value": …, "lineage": …}}``."""
    config = config or SurvivorshipConfig()
    overrides = overrides or {}
    live_ms = [m for m in members if not m.deleted] or list(members)
    live = _Live(live_ms)
    n = len(live_ms)
    everyone = itemgetter(*range(n)) if n > 1 else None
    out: dict[str, dict[str, Any]] = {}
    if type(config) is SurvivorshipConfig:  # rule_for, without a method call per attribute
        by_attr, default = config.attributes, config.default

        def rule_for(attr: str) -> AttributeRule:
            return by_attr.get(attr) or default
    else:
        rule_for = config.rule_for

    def scalar(attr: str, col: tuple[Any, ...] | list[Any], valid: str | None) -> None:
        if overrides and attr in overrides and "override" in rule_for(attr).rules:
            out[attr] = _override(overrides[attr])
            return
        if n and all(col):  # every member has a value (true, so not empty)
            if n == 1:
                win, why, m = 0, "only_source", live_ms[0]
            else:
                win, why = live.rank(everyone, col, rule_for(attr), valid)  # type: ignore[arg-type]
                m = live_ms[win]
            value = col[win]
        else:
            n_none = col.count(None)
            if n_none == n:
                return
            idx = list(compress(range(n), col))  # the true values: the filled ones, unless a 0 or False is there
            if len(idx) + n_none + col.count("") != n:
                idx = [i for i, v in enumerate(col) if not _empty(v)]
            if not idx:
                return
            if len(idx) == 1:
                i = idx[0]
                why = "only_source"
            else:
                pick = itemgetter(*idx)
                vals = pick(col)
                win, why = live.rank(pick, vals, rule_for(attr), valid)
                i = idx[win]
            m = live_ms[i]
            value = col[i]
        out[attr] = {"value": value, "lineage": {"source_system": m.system, "source_id": m.source_id, "rule": why,
                                                 "source_updated_at": m.updated_iso}}

    cols = list(zip(*[_scalar_row(m.raw, m.std) for m in live_ms], strict=True)) or [()] * len(_SCALAR_NAMES)
    for attr, col in zip(_SCALAR_NAMES, cols, strict=True):
        scalar(attr, col, VALIDITY.get(attr))
    cols = list(zip(*[_list_row(m.raw, m.std) for m in live_ms], strict=True)) or [()] * len(_LIST_NAMES)
    for attr, col in zip(_LIST_NAMES, cols, strict=True):
        if attr in overrides:
            out[attr] = _override(overrides[attr])
        elif any(col) and (res := _survive_list(col, live, rule_for(attr))) is not None:
            out[attr] = res
    # system-specific flat attributes, kept with lineage
    extras = [((m.raw.get("attributes") or {}).get("extra") or {}) for m in live_ms]
    if any(extras):
        for k in sorted({k for ex in extras for k in ex}):
            scalar(f"extra.{k}", [ex.get(k) for ex in extras], None)
    for attr, value in overrides.items():  # overrides of attributes no source has
        if attr not in out:
            out[attr] = _override(value)
    return out


def values(attributes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Just the values of survived attributes."""
    return {k: v["value"] for k, v in attributes.items()}

"""Fellegi–Sunter matching of standardized parties: block → compare → weigh → decide, explainably.

* **Blocking** (:meth:`Matcher.candidates`): several keys per record — USCC, organization code,
  normalized core name (字号), its fuzzy pinyin, each specific phone, e-mail, city + first
  two characters of the core name, city + start of the street; for persons ID number, name,
  birth date, postcode + initials. A candidate shares at least one key. The work per record
  stays bounded however large the index grows (the real-time path at 1M records): blocks
  larger than ``model.max_block_size`` (very common values) are skipped; phone and e-mail
  blocks of more than 4 × ``generic_phone_records`` records (agents', shared and 400/800
  numbers, ``admin@`` mailboxes) too; the weak keys (city + name prefix, street, pinyin) above
  ``model.max_weak_block_size``; and when the blocks left still hold more than
  ``model.max_block_scan`` entries, the smallest (most specific) are taken until that budget.
  A block that ever grows past 4 × ``max_block_size`` stops keeping its members (it can never
  be used again before the index is rebuilt), which bounds the index's memory and the cost of
  removing a record from a common block.
* **Comparison levels** per field (:mod:`.comparisons`): exact / Jaro-Winkler thresholds /
  one edit / pinyin / else / null.
* **Weights**: ``log2(m/u)`` per level; ``m`` (P(level | match)) is learned by EM without labels
  (:func:`train_em`, numpy), ``u`` (P(level | non-match)) from random pairs, both refined by
  steward decisions (:func:`refine_with_labels`). The total weight adds the prior
  ``log2(λ/(1-λ))``; probability = 2^w / (1 + 2^w).
* **Term frequency**: with the model's :class:`TermFrequencies` (``esbhub mdm train
  --term-frequencies``), an exact core-name agreement on a common 字号 weighs less
  (``log2(u_level / tf(value))``, clamped). The counts are the model's, frozen, not the index's:
  counted live, a link's weight depended on how many records happened to be indexed when it was
  scored, and the same records in another order gave other golden records (12k synthetic records:
  48 of ~4,400 differed). Off by default: counting records counts each company's own duplicates,
  and on the synthetic set of 20,000 companies the adjustment cost recall (0.995 → 0.979) and
  quadrupled the steward reviews, at the same precision (docs/benchmarks.md).
* **Generic values**: a phone held by more than ``generic_phone_records`` records (a shared
  400/800 number, an agent's phone) is demoted to the weak ``shared_generic`` level; an
  organization address (street and number in one city, :func:`address_key`) held by more than
  ``generic_address_records`` records — a business centre, a registration agent's address — says
  nothing: an exact match on it weighs 0 and shows as ``generic``. Here the counts are the index's
  (an agent's number must be recognised as it spreads), the scored record counted in; when a
  value crosses its limit either way, :meth:`Matcher.take_flipped` names it and the MDM service
  scores the pairs of its holders again (:meth:`Matcher.score_pairs_among`), so whether it counts
  as generic depends on how many records hold it, not on arrival order.
* **Decision**: ``match`` at probability ≥ ``merge_threshold``, ``review`` at ≥ ``review_threshold``,
  else ``no_match``; any cannot-link reason (:func:`esbhub.mdm.cluster.can_link`) forces
  ``no_match`` and is reported in ``hard``.
* Every result carries its per-field :class:`FieldEvidence`.

Splink (bench extra) is used in ``bench/mdm_quality.py`` to compare against; the real-time path
is this in-process scorer.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Container, Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field
from rapidfuzz.distance import JaroWinkler, Levenshtein

from esbhub.mdm.cluster import can_link
from esbhub.mdm.match.comparisons import COMPARISONS, PUBLIC_MAIL_DOMAINS, Comparison, _first, other_district
from esbhub.mdm.standardize import StdParty

Kind = Literal["organization", "person"]


class FieldEvidence(BaseModel):
    """How one field compared and what it contributed."""

    model_config = ConfigDict(extra="forbid")
    field: str = Field(description="Comparison name, e.g. 'uscc', 'name', 'phone'.")
    level: str = Field(description="Comparison level reached, e.g. 'exact_valid', 'core_near', 'else', 'null'.")
    weight: float = Field(description="log2(m/u) contributed by this field (after TF adjustment).")
    a: str | None = Field(default=None, description="Value on side a.")
    b: str | None = Field(default=None, description="Value on side b.")


class MatchResult(BaseModel):
    """Score of one pair with its evidence."""

    model_config = ConfigDict(extra="forbid")
    a: str = Field(description="Key (or source_system:source_id) of record a.")
    b: str = Field(description="Key (or source_system:source_id) of record b.")
    weight: float = Field(description="Total match weight: log2 Bayes factor of all fields plus the prior.")
    probability: float = Field(description="Posterior match probability.")
    decision: Literal["match", "review", "no_match"] = Field(description="By the model's thresholds.")
    evidence: list[FieldEvidence] = Field(default_factory=list, description="Per-field evidence.")
    hard: str | None = Field(
        default=None, description="Cannot-link reason that forbids a merge, e.g. 'cannot_link:uscc_conflict'."
    )


_object_setattr = object.__setattr__


def _field_evidence(field: str, level: str, weight: float, a: str | None, b: str | None) -> FieldEvidence:
    """``FieldEvidence.model_construct(field=…, level=…, weight=…, a=…, b=…)`` without its per-field loop
    (the same ``__dict__``, fields set, extra and private)."""
    e = object.__new__(FieldEvidence)
    _object_setattr(e, "__dict__", {"field": field, "level": level, "weight": weight, "a": a, "b": b})
    _object_setattr(e, "__pydantic_fields_set__", {"field", "level", "weight", "a", "b"})
    _object_setattr(e, "__pydantic_extra__", None)
    _object_setattr(e, "__pydantic_private__", None)
    return e


def evidence_json(evidence: list[Any]) -> list[dict[str, Any]]:
    """``[e.model_dump(mode="json") for e in evidence]`` of :class:`FieldEvidence`
    items, read from their fields (a tenth of the cost): text values and a float weight are their
    own JSON; anything else goes through pydantic."""
    out = []
    for e in evidence:
        if type(e) is not FieldEvidence:
            out.append(e.model_dump(mode="json"))
            continue
        d = e.__dict__
        f, lv, w, a, b = d["field"], d["level"], d["weight"], d["a"], d["b"]
        if (type(f) is str and type(lv) is str and isinstance(w, float) and (a is None or type(a) is str)
                and (b is None or type(b) is str)):
            out.append({"field": f, "level": lv, "weight": float(w), "a": a, "b": b})
        else:
            out.append(e.model_dump(mode="json"))
    return out


def _match_result(a: str, b: str, weight: float, probability: float, decision: str, evidence: list[FieldEvidence],
                  hard: str | None) -> MatchResult:
    """``MatchResult.model_construct(...)`` with every field given, as :func:`_field_evidence`."""
    r = object.__new__(MatchResult)
    _object_setattr(r, "__dict__", {"a": a, "b": b, "weight": weight, "probability": probability, "decision": decision,
                                    "evidence": evidence, "hard": hard})
    _object_setattr(r, "__pydantic_fields_set__", {"a", "b", "weight", "probability", "decision", "evidence", "hard"})
    _object_setattr(r, "__pydantic_extra__", None)
    _object_setattr(r, "__pydantic_private__", None)
    return r


class ComparisonParams(BaseModel):
    """m and u for each level of one comparison (level 0 = null, never weighted)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Comparison name.")
    levels: list[str] = Field(description="Level names, index 0 is 'null'.")
    m: list[float] = Field(description="P(level | match) per level.")
    u: list[float] = Field(description="P(level | non-match) per level.")

    def weights(self) -> list[float]:
        return [0.0] + [math.log2(max(m, 1e-9) / max(u, 1e-9)) for m, u in zip(self.m[1:], self.u[1:], strict=True)]


class KindModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prior: float = Field(description="λ: probability that a candidate pair (sharing a blocking key) is a match.")
    comparisons: list[ComparisonParams] = Field(description="Per comparison m/u.")


class TermFrequencies(BaseModel):
    """How many records of a population hold each value of the term-frequency-adjusted fields —
    part of the model, frozen like m and u: a pair's weight must not depend on what else happened to
    be indexed when it was scored (the same records in another order would weigh their links
    differently). Taken by :func:`train_em` over its records (``esbhub mdm train``, over the store)."""

    model_config = ConfigDict(extra="forbid")
    records: int = Field(ge=0, description="Records the counts were taken over.")
    core: dict[str, int] = Field(
        default_factory=dict,
        description="Organizations' core names (字号) held by two or more of those records: how many. "
        "A core name not listed counts as held by one.")
    family: dict[str, int] = Field(
        default_factory=dict, description="Persons' family names held by two or more records (as ``core``).")

    @classmethod
    def of(cls, records: Iterable[StdParty | MatchView]) -> TermFrequencies:
        core: Counter[str] = Counter()
        family: Counter[str] = Counter()
        n = 0
        for r in records:
            n += 1
            if r.kind == "organization":
                if r.core_name:
                    core[r.core_name] += 1
            elif r.family_name:
                family[r.family_name] += 1
        return cls(records=n, core={v: c for v, c in sorted(core.items()) if c > 1},
                   family={v: c for v, c in sorted(family.items()) if c > 1})


class MatchModel(BaseModel):
    """Comparison levels, m/u per level, prior and thresholds. Saved and loaded as JSON."""

    model_config = ConfigDict(extra="forbid")
    organization: KindModel = Field(default_factory=lambda: _default_kind("organization"),
                                    description="Model for organizations.")
    person: KindModel = Field(default_factory=lambda: _default_kind("person"), description="Model for persons.")
    merge_threshold: float = Field(default=0.995, description="Probability at and above which records auto-merge.")
    review_threshold: float = Field(default=0.5, description="Probability at and above which a steward reviews.")
    report_threshold: float = Field(
        default=0.01, description="Matcher.match leaves out candidates below this probability (cheap path)."
    )
    term_frequencies: TermFrequencies | None = Field(
        default=None, description="Value counts of the term-frequency adjustment; none: no adjustment.")
    tf_min_records: int = Field(
        default=500, description="Term-frequency adjustment only from counts over at least this many records.")
    tf_clamp: tuple[float, float] = Field(default=(-8.0, 2.0), description="Bounds (bits) of a TF adjustment.")
    generic_phone_records: int = Field(
        default=8, description="A phone on more records than this (different names) counts as generic."
    )
    generic_address_records: int = Field(
        default=8, description="An organization's address (street and number in one city) on more records than "
        "this — a business centre, a registration agent's address — says nothing: an exact match on it weighs 0.")
    max_block_size: int = Field(default=500, description="Blocks larger than this are skipped for candidates.")
    max_weak_block_size: int = Field(
        default=200, description="Blocks of weak keys (city + name prefix, street, pinyin) larger than this are skipped."
    )
    max_block_scan: int = Field(
        default=2000, description="Most block entries scanned per record; beyond it, the largest blocks are left out."
    )

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def fingerprint(self) -> str:
        """The model's identity: sha256 (hex) of its JSON with sorted keys and no spaces — what the
        model says, not how its file is laid out (indentation, key order). The MDM store records
        the fingerprint of the model its links were scored with (``mdm_model``), and every writer
        checks its own against it (:meth:`esbhub.mdm.service.MdmService._begin_write`)."""
        return hashlib.sha256(orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> MatchModel:
        return cls.model_validate_json(text)

    @classmethod
    def from_file(cls, path: Path) -> MatchModel:
        """The model saved in ``path``; :class:`~esbhub.errors.ConfigError` naming the file and,
        per problem, the line (not JSON) or the field (not a MatchModel) — a model file is written
        by ``esbhub mdm train`` but may be edited or truncated by hand."""
        import json

        from pydantic import ValidationError

        from esbhub.errors import ConfigError, ErrorDetail

        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text ({exc.reason})"
            raise ConfigError(f"cannot read match model {path}",
                              details=[ErrorDetail(loc="(file)", msg=str(why), file=str(path))]) from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"match model {path} is not JSON", details=[ErrorDetail(
                loc="(json)", msg=f"{exc.msg} at column {exc.colno}", type="json_invalid", file=str(path),
                line=exc.lineno)]) from None
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            raise ConfigError(f"match model {path} is not a valid MatchModel", details=[
                ErrorDetail(loc=".".join(str(x) for x in e["loc"]) or "(root)", msg=e["msg"], type=e["type"],
                            file=str(path))
                for e in exc.errors()]) from None

    def kind(self, kind: str) -> KindModel:
        return self.organization if kind == "organization" else self.person


# Built-in m/u: what train_em learned on the synthetic Chinese enterprise set (5,000 companies,
# seed 123) and on FEBRL4 (persons), rounded; shared_generic phones deliberately weak. Used
# until a model trained on the hub's own data is loaded, and as EM's starting point.
_DEFAULT_MU: dict[str, dict[str, tuple[list[float], list[float]]]] = {
    "organization": {
        "uscc": ([0.91, 1e-4, 0.06, 0.028, 0.002], [3.8e-05, 5.4e-06, 5.4e-06, 5.4e-06, 0.99995]),
        "name": ([0.83, 0.104, 0.063, 0.0007, 0.0002, 0.002], [7.5e-06, 8.3e-05, 0.00047, 2.5e-06, 0.001, 0.998]),
        "city": ([0.885, 0.017, 0.098], [0.0135, 0.0426, 0.944]),
        "phone": ([0.765, 0.013, 0.222], [0.000167, 0.001, 0.9988]),
        "address": ([0.687, 0.118, 0.0144, 0.181], [1.6e-05, 0.0015, 0.0285, 0.97]),
        "email": ([0.084, 0.088, 0.829], [0.00032, 0.00032, 0.999]),
    },
    "person": {
        "given_name": ([0.729, 0.135, 0.0244, 0.111], [0.00309, 0.00114, 0.00513, 0.991]),
        "family_name": ([0.707, 0.182, 0.0223, 0.0881], [0.00363, 0.000977, 0.00263, 0.993]),
        "name_swap": ([0.0324, 0.968], [2.8e-06, 0.999997]),
        "birth_date": ([0.929, 0.0236, 0.00157, 0.0457], [3.45e-05, 0.00187, 0.0132, 0.985]),
        "id_number": ([0.907, 0.0511, 0.0004, 0.0418], [2.5e-06, 0.000153, 0.000223, 0.9996]),
        "street": ([0.249, 0.525, 0.17, 0.0564], [2.5e-06, 2.5e-06, 0.000738, 0.999]),
        "city": ([0.751, 0.187, 0.00611, 0.0565], [0.00104, 0.000313, 0.00257, 0.996]),
        "postcode": ([0.841, 0.146, 0.0044, 0.00946], [0.00101, 0.0151, 0.103, 0.881]),
        "province": ([0.961, 1e-4, 0.0062, 0.0332], [0.225, 1e-4, 0.00133, 0.774]),
        "phone": ([0.765, 0.013, 0.222], [0.000167, 0.001, 0.9988]),
    },
}
DEFAULT_PRIOR = 1e-4


def _default_kind(kind: str) -> KindModel:
    comps = []
    for c in COMPARISONS[kind]:
        m, u = _DEFAULT_MU[kind][c.name]
        comps.append(ComparisonParams(name=c.name, levels=list(c.levels), m=[1.0, *m], u=[1.0, *u]))
    return KindModel(prior=DEFAULT_PRIOR, comparisons=comps)


def compare_levels(a: StdParty, b: StdParty) -> list[int]:
    """The level index of every comparison for a pair of the same kind."""
    return [c.fn(a, b)[0] for c in COMPARISONS[a.kind]]


def _logit2(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log2(p / (1 - p))


def _prob(w: float) -> float:
    if w > 60:
        return 1.0
    if w < -60:
        return 0.0
    x = 2.0**w
    return x / (1 + x)


# ------------------------------------------------------------------ blocking keys


def blocking_keys(rec: StdParty | MatchView) -> list[str]:
    """The blocking keys of a record (strings; a candidate shares at least one)."""
    keys: list[str] = []
    if rec.kind == "organization":
        if rec.uscc:
            keys.append("U" + rec.uscc)
        if rec.org_code and len(rec.org_code) == 9:
            keys.append("O" + rec.org_code)
        core = rec.core_name
        keys.append("C" + core)
        if rec.pinyin_key and rec.pinyin_key != core:
            keys.append("P" + rec.pinyin_key)
        place = rec.city or rec.province or ""
        if len(core) >= 3:
            keys.append("A" + place + "|" + core[:2])
        if rec.street:
            keys.append("S" + place + "|" + rec.street[:6])
    else:
        if rec.id_number:
            keys.append("I" + rec.id_number)
        fam, giv = rec.family_name or "", rec.given_name or ""
        keys.append("N" + fam + "|" + giv)
        if rec.birth_date:
            keys.append("D" + rec.birth_date)
        if rec.postcode:
            keys.append("Z" + rec.postcode + "|" + fam[:1] + giv[:1])
        if rec.street:
            keys.append("S" + rec.street[:8])
        if rec.pinyin_key:
            keys.append("P" + rec.pinyin_key)
        if rec.birth_date and (fam or giv):
            keys.append("B" + rec.birth_date[:4] + "|" + (fam[:2] or giv[:2]))
    keys.extend("T" + p for p in rec.phones)
    keys.extend("E" + e for e in rec.emails)
    return keys


def address_key(rec: StdParty | MatchView) -> str | None:
    """An organization's address as the generic-address count reads it — place (city, else
    province) and street with its number — or None (a person, no street)."""
    if rec.kind != "organization" or not rec.street:
        return None
    return (rec.city or rec.province or "") + "|" + rec.street


def _level_name(comp: Comparison, level: int, a: StdParty | MatchView, b: StdParty | MatchView) -> str:
    """The level a steward reads in the evidence: an exact address match on a generic address
    weighs as none (level 0) and says so."""
    if level == 0 and comp.tf == "address" and a.street and b.street:
        return "generic"
    return comp.levels[level]


# ------------------------------------------------------------------ matcher


class _Scorer:
    """Precomputed weights of a model for fast scoring."""

    def __init__(self, model: MatchModel) -> None:
        self.model = model
        self.kinds: dict[str, tuple[float, tuple[Comparison, ...], list[list[float]], list[ComparisonParams]]] = {}
        for kind in ("organization", "person"):
            km = model.kind(kind)
            comps = COMPARISONS[kind]
            params = {p.name: p for p in km.comparisons}
            ws = [params[c.name].weights() for c in comps]
            self.kinds[kind] = (_logit2(km.prior), comps, ws, [params[c.name] for c in comps])
        # organizations' fast path (Matcher._score_organizations): each level's weight as the generic
        # path adds it (``+ 0.0``: no TF adjustment) and as evidence shows it (rounded)
        ws = self.kinds["organization"][2]
        self.org_weights = [[w + 0.0 for w in ws_i] for ws_i in ws]
        self.org_shown = [[round(w, 3) for w in ws_i] for ws_i in self.org_weights]
        self.person_weights = [[w + 0.0 for w in ws_i] for ws_i in self.kinds["person"][2]]


_VIEW_FIELDS = ("source_system", "source_id", "kind", "name_norm", "core_name", "pinyin_key", "uscc", "uscc_valid",
                "org_code", "branch", "branch_name", "phones", "phones_generic", "emails", "address", "street",
                "division_code", "province", "city", "postcode", "given_name", "family_name", "birth_date", "id_number",
                "id_number_valid")


class MatchView:
    """The fields matching needs, in a slotted object (about a third of a StdParty's memory).

    Comparisons, blocking and :func:`can_link` accept it wherever they accept a StdParty."""

    __slots__ = _VIEW_FIELDS

    def __init__(self, rec: StdParty | MatchView) -> None:
        for f in _VIEW_FIELDS:
            v = getattr(rec, f)
            setattr(self, f, tuple(v) if isinstance(v, list) else v)


_WEAK_KEYS = frozenset("ASP")  # city + name prefix, street, pinyin (organizations); street, pinyin (persons)
_GENERIC_KEYS = frozenset("TE")  # phones, e-mails: shared numbers and mailboxes are not identifying
_OVERFLOWED: list[str] = []  # stands for a block past the hard cap: members no longer kept


class Matcher:
    """In-process index + scorer for the real-time path. Not thread-safe; one per worker.

    Memory: the index keeps a :class:`MatchView` per record and its blocking keys as 64-bit
    hashes (a collision only adds a candidate, which scoring then rejects).
    """

    def __init__(self, model: MatchModel | None = None) -> None:
        self.model = model or MatchModel()
        self._scorer = _Scorer(self.model)
        self.records: dict[str, MatchView] = {}
        self.blocks: dict[int, list[str]] = {}  # a block past the hard cap is _OVERFLOWED
        self.phone_count: Counter[str] = Counter()
        self.address_count: Counter[str] = Counter()  # organizations, by :func:`address_key`
        # (kind, value) whose count crossed its generic limit since :meth:`take_flipped` → whether
        # the value was generic ("hot") before the first crossing; kind "phone" or "address"
        self._hot_was: dict[tuple[str, str], bool] = {}

    def __len__(self) -> int:
        return len(self.records)

    def set_model(self, model: MatchModel) -> None:
        """Score with ``model`` from now on, keeping the index (another process applied it to the
        store: :meth:`esbhub.mdm.service.MdmService._begin_write`). The index depends on the model
        through one value, the hard cap of a block (4 × ``max_block_size``): when that changes the
        blocks are rebuilt from the records indexed, as a new process would build them."""
        rebuild = model.max_block_size != self.model.max_block_size
        self.model = model
        self._scorer = _Scorer(model)
        if rebuild:
            records = list(self.records.items())
            self.records, self.blocks, self.phone_count, self.address_count = {}, {}, Counter(), Counter()
            for key, view in records:
                self.add(key, view)
            self._hot_was.clear()  # the counts are as they were: no number crossed the line

    # ---- index
    def add(self, key: str, rec: StdParty | MatchView) -> None:
        """Index a record under ``key`` (replaces a previous record with that key)."""
        if key in self.records:
            self.remove(key)
        view = MatchView(rec)
        self.records[key] = view
        hard_cap = 4 * self.model.max_block_size
        for bk in dict.fromkeys(blocking_keys(view)):
            lst = self.blocks.setdefault(hash(bk), [])
            if lst is _OVERFLOWED:
                continue
            if len(lst) >= hard_cap:  # a value this common is never a useful key again
                self.blocks[hash(bk)] = _OVERFLOWED
                continue
            lst.append(key)
        g = self.model.generic_phone_records
        for p in view.phones:
            self.phone_count[p] += 1
            if self.phone_count[p] == g + 1:  # now on more records than a specific number is
                self._hot_was.setdefault(("phone", p), False)
        ak = address_key(view)
        if ak is not None:
            self.address_count[ak] += 1
            if self.address_count[ak] == self.model.generic_address_records + 1:
                self._hot_was.setdefault(("address", ak), False)

    def remove(self, key: str) -> None:
        rec = self.records.pop(key, None)
        if rec is None:
            return
        for bk in dict.fromkeys(blocking_keys(rec)):
            h = hash(bk)
            lst = self.blocks.get(h)
            if lst is not None and lst is not _OVERFLOWED:
                try:
                    lst.remove(key)
                except ValueError:
                    pass
                if not lst:
                    del self.blocks[h]
        g = self.model.generic_phone_records
        for p in rec.phones:
            _dec(self.phone_count, p)
            if self.phone_count.get(p, 0) == g:  # specific again
                self._hot_was.setdefault(("phone", p), True)
        ak = address_key(rec)
        if ak is not None:
            _dec(self.address_count, ak)
            if self.address_count.get(ak, 0) == self.model.generic_address_records:
                self._hot_was.setdefault(("address", ak), True)

    def _hot(self, kind: str, value: str) -> bool:
        if kind == "phone":
            return self.phone_count.get(value, 0) > self.model.generic_phone_records
        return self.address_count.get(value, 0) > self.model.generic_address_records

    def take_flipped(self) -> list[tuple[str, str]]:
        """The phone numbers (``("phone", number)``) and organization addresses (``("address",
        address_key)``) that became generic, or stopped being generic, through the :meth:`add` /
        :meth:`remove` calls since the last call (sorted). The pairs of records sharing such a
        value were scored on the other side of the limit: the caller re-scores them
        (:meth:`score_pairs_among` the value's :meth:`holders`), so whether a shared value counts
        as generic depends on how many records hold it, not on when each pair was scored."""
        out = sorted(kv for kv, was in self._hot_was.items() if self._hot(*kv) != was)
        self._hot_was.clear()
        return out

    def holders(self, kind: str, value: str) -> list[str]:
        """Keys of the indexed records holding this specific phone number (``kind`` "phone") or
        this organization address (``kind`` "address", an :func:`address_key`), sorted."""
        records = self.records
        if kind == "phone":
            lst = self.blocks.get(hash("T" + value))
            ok = lambda k: value in records[k].phones  # noqa: E731
        else:
            place, _, street = value.partition("|")
            lst = self.blocks.get(hash("S" + place + "|" + street[:6]))
            ok = lambda k: address_key(records[k]) == value  # noqa: E731
        if lst is _OVERFLOWED:  # a value on thousands of records once: look at every record
            lst = list(records)
        return sorted(k for k in lst or () if ok(k))

    def score_pairs_among(self, keys: Iterable[str], decisions: Container[str] | None = None) -> list[MatchResult]:
        """Every pair of these indexed records scored as :meth:`match` scores it, from the side of the
        pair's smaller key (``result.a < result.b``); as in :meth:`match`, pairs below
        ``model.report_threshold``, or whose decision is not among ``decisions``, are left out."""
        ks = sorted(k for k in set(keys) if k in self.records)
        out: list[MatchResult] = []
        for i, k in enumerate(ks):
            out += self._results(k, self.records[k], ks[i + 1 :], len(ks), decisions)
        return out

    def candidates(self, rec: StdParty | MatchView, limit: int = 200) -> list[str]:
        """Keys of indexed records sharing at least one blocking key, most shared keys first
        (the blocks used are bounded: see the module docstring)."""
        model = self.model
        maxb, max_weak = model.max_block_size, model.max_weak_block_size
        max_generic = 4 * model.generic_phone_records  # agents' / shared phones and mailboxes
        lists: list[list[str]] = []
        scan = 0
        blocks = self.blocks
        for bk in dict.fromkeys(blocking_keys(rec)):
            lst = blocks.get(hash(bk))
            if not lst:  # not indexed, or _OVERFLOWED
                continue
            n = len(lst)
            if n > maxb or (n > max_generic and bk[0] in _GENERIC_KEYS) or (n > max_weak and bk[0] in _WEAK_KEYS):
                continue
            lists.append(lst)
            scan += n
        if scan > model.max_block_scan:  # most specific blocks first, up to the budget
            lists.sort(key=len)
            kept, scan = [], 0
            for lst in lists:
                if kept and scan + len(lst) > model.max_block_scan:
                    break
                kept.append(lst)
                scan += len(lst)
            lists = kept
        hits: Counter[str] = Counter(lists[0] if len(lists) == 1 else chain.from_iterable(lists))
        if len(hits) == scan:  # every key once: most_common keeps first-seen order
            return list(hits)[:limit]
        if len(hits) <= limit:
            return sorted(hits, key=hits.__getitem__, reverse=True)  # stable, as most_common
        return [k for k, _ in hits.most_common(limit)]

    # ---- scoring
    def _tf_on(self, value: str | None) -> bool:
        """Whether an agreement on ``value`` is adjusted: the model has counts over at least
        ``tf_min_records`` records, and there is a value."""
        tf = self.model.term_frequencies
        return bool(value) and tf is not None and tf.records >= self.model.tf_min_records

    def _tf_bits(self, comp: Comparison, a: StdParty | MatchView, base_u: float) -> float:
        """Extra bits of a core-name / family-name agreement on ``a``'s value, from the model's
        :class:`TermFrequencies` (0 without them)."""
        value = a.core_name if comp.tf == "core" else a.family_name
        tfs = self.model.term_frequencies
        if tfs is None or not self._tf_on(value):
            return 0.0
        counts = tfs.core if comp.tf == "core" else tfs.family
        tf = counts.get(value or "", 1) / tfs.records
        lo, hi = self.model.tf_clamp
        return min(max(math.log2(base_u / tf), lo), hi)

    def _tf_adjust(self, comp: Comparison, level: int, a: StdParty, b: StdParty, base_u: float) -> tuple[float, int]:
        """(extra bits, possibly demoted level) for a TF-adjusted comparison."""
        if comp.tf == "address":  # an exact match on a generic address: as if there were none
            ak = address_key(a)
            if ak is not None and ak == address_key(b) and self._hot("address", ak):
                return 0.0, 0
            return 0.0, level
        if comp.tf == "phone":
            common = set(a.phones) & set(b.phones)
            if common and max(self.phone_count.get(p, 0) for p in common) > self.model.generic_phone_records:
                return 0.0, 2  # demoted to shared_generic
            return 0.0, level
        return self._tf_bits(comp, a, base_u), level

    def _levels(self, a: StdParty | MatchView, b: StdParty | MatchView) -> tuple[float, list[int], list[float]]:
        """Total weight, and the level and weight of every comparison (any kind; ``match`` has a faster
        path for organizations that gives the same numbers)."""
        prior, comps, ws, params = self._scorer.kinds[a.kind]
        total = prior
        levels: list[int] = []
        weights: list[float] = []
        for i, comp in enumerate(comps):
            level = comp.fn(a, b)[0]
            extra = 0.0
            if comp.tf is not None and level in comp.tf_levels:
                extra, level = self._tf_adjust(comp, level, a, b, params[i].u[level])
            w = ws[i][level] + extra
            total += w
            levels.append(level)
            weights.append(w)
        return total, levels, weights

    def _evidence(self, a: StdParty | MatchView, b: StdParty | MatchView, levels: Sequence[int],
                  weights: Sequence[float]) -> list[FieldEvidence]:
        """Per-field evidence of a scored pair (the values shown are the comparisons' own)."""
        ev = []
        for comp, level, w in zip(self._scorer.kinds[a.kind][1], levels, weights, strict=True):
            _, va, vb = comp.fn(a, b)
            ev.append(_field_evidence(comp.name, _level_name(comp, level, a, b), round(w, 3), va, vb))
        return ev

    def _decide(self, p: float, hard: str | None) -> Literal["match", "review", "no_match"]:
        if hard is not None:
            return "no_match"
        if p >= self.model.merge_threshold:
            return "match"
        if p >= self.model.review_threshold:
            return "review"
        return "no_match"

    def _result(self, ka: str, kb: str, a: StdParty, b: StdParty, *, evidence: bool = True) -> MatchResult:
        hard = can_link(a, b)
        if a.kind != b.kind:
            return _match_result(ka, kb, -math.inf, 0.0, "no_match", [], hard)
        w, levels, weights = self._levels(a, b)
        ev = self._evidence(a, b, levels, weights) if evidence else []
        p = _prob(w)
        return _match_result(ka, kb, round(w, 4), p, self._decide(p, hard), ev, hard)

    def score(self, a: StdParty, b: StdParty) -> MatchResult:
        """Score one pair (keys in the result are ``source_system:source_id``)."""
        return self._result(f"{a.source_system}:{a.source_id}", f"{b.source_system}:{b.source_id}", a, b)

    def match(self, key: str, rec: StdParty | MatchView, limit: int = 200,
              decisions: Container[str] | None = None) -> list[MatchResult]:
        """Score ``rec`` against its candidates (not itself); best first. Candidates below
        ``model.report_threshold`` are left out, except those with a cannot-link reason; with
        ``decisions``, so are pairs whose decision is not among them (the same list, filtered).

        Only the reported pairs get their evidence and a result object built."""
        return self._results(key, rec, self.candidates(rec, limit=limit + 1), limit, decisions)

    def _results(self, key: str, rec: StdParty | MatchView, cands: list[str], limit: int,
                 decisions: Container[str] | None) -> list[MatchResult]:
        """:meth:`match` of ``rec`` against these candidates."""
        floor = _logit2(self.model.report_threshold)
        scored: list[tuple[float, str, MatchView, tuple[int, ...], Any]]  # Any: the name's weight / all weights
        if rec.kind == "organization":
            scored = self._score_organizations(key, rec, cands, floor)
        else:
            scored = self._score_persons(key, rec, cands, floor)
        if len(scored) > 1:  # best first; equal weights (as reported, rounded) keep the candidates' order
            scored.sort(key=lambda s: -round(s[0], 4))
        out = []
        for total, k, other, levels, weights in scored[:limit]:
            hard = can_link(rec, other)
            p = _prob(total)
            decision = self._decide(p, hard)
            if decisions is not None and decision not in decisions:
                continue
            if rec.kind == "organization":
                ev = self._organization_evidence(rec, other, levels, weights)
            else:
                ev = self._person_evidence(rec, other, levels, weights)
            out.append(_match_result(key, k, round(total, 4), p, decision, ev, hard))
        return out

    def _phone_probe(self, key: str, a: StdParty | MatchView
                     ) -> tuple[bool, frozenset[str], frozenset[str], frozenset[str]]:
        """What the phone comparison needs of ``a``, worked out once per call: whether it has any
        phone, its specific and generic numbers, and its "hot" numbers — held by more records than
        ``generic_phone_records``, ``a`` counted in (whether or not it is indexed yet under ``key``),
        so a match on them is demoted to shared_generic."""
        a_phones, a_generic = frozenset(a.phones), frozenset(a.phones_generic)
        if a_phones:
            counts = self.phone_count
            g = self.model.generic_phone_records - (key not in self.records)
            a_hot = frozenset(p for p in a_phones if counts.get(p, 0) > g)
        else:
            a_hot = a_phones
        return bool(a_phones or a_generic), a_phones, a_generic, a_hot

    def _score_organizations(self, key: str, a: StdParty | MatchView, cands: list[str], floor: float
                             ) -> list[tuple[float, str, MatchView, tuple[int, ...], float]]:
        """The candidates (other than ``key``, organizations) whose total weight with ``a`` reaches
        ``floor``: (total, key, record, levels, weight of the name comparison).

        The organization comparisons of :mod:`.comparisons` inlined, and what depends on ``a`` alone
        (its term frequencies, phone and e-mail sets) worked out once: the same levels and the same
        floating-point sums as :meth:`_levels` (``tests/mdm/test_match.py`` holds them equal)."""
        prior, comps, ws, params = self._scorer.kinds["organization"]
        w_u, w_n, w_c, w_p, w_a, w_e = self._scorer.org_weights
        name = comps[1]
        if self._tf_on(a.core_name):
            w_n = w_n.copy()
            for level in name.tf_levels:
                w_n[level] = ws[1][level] + self._tf_bits(name, a, params[1].u[level])
        a_uscc, a_valid, a_org = a.uscc, a.uscc_valid, a.org_code
        a_nn, a_core, a_py = a.name_norm, a.core_name, a.pinyin_key
        a_long = len(a_core) >= 4
        a_city, a_prov, a_street, a_div = a.city, a.province, a.street, a.division_code
        a_addr = address_key(a)  # generic (a counted in): an exact match on it weighs as none
        a_addr_hot = a_addr is not None and (self.address_count.get(a_addr, 0) + (key not in self.records)
                                             > self.model.generic_address_records)
        phones = self._phone_probe(key, a)
        a_mails = frozenset(a.emails)
        a_domains = {e.rsplit("@", 1)[-1] for e in a.emails} - PUBLIC_MAIL_DOMAINS if a_mails else a_mails
        jw, lev = JaroWinkler.similarity, Levenshtein.distance
        records = self.records
        out = []
        for k in cands:
            b = records[k]
            if k == key or b.kind != "organization":
                continue
            bu = b.uscc
            if a_uscc and bu:
                if a_uscc == bu:
                    lu = 1 if a_valid else 2
                elif a_org and a_org == b.org_code:
                    lu = 3
                elif not (a_valid and b.uscc_valid) and lev(a_uscc, bu, score_cutoff=1) <= 1:
                    lu = 4
                else:
                    lu = 5
            elif a_org and b.org_code:
                lu = 3 if a_org == b.org_code else 5
            else:
                lu = 0
            b_nn = b.name_norm
            if a_nn == b_nn:
                ln = 1
            else:
                cb = b.core_name
                if a_core == cb:
                    ln = 2
                else:
                    s = jw(a_core, cb)
                    if s >= 0.92 or (a_long and len(cb) >= 4 and lev(a_core, cb, score_cutoff=1) <= 1):
                        ln = 3
                    elif a_py and a_py == b.pinyin_key:
                        ln = 4
                    elif s >= 0.8 or jw(a_nn, b_nn) >= 0.9:
                        ln = 5
                    else:
                        ln = 6
            bc = b.city
            if a_city and bc:
                lc = 1 if a_city == bc else 2 if a_prov and a_prov == b.province else 3
            elif a_prov and b.province:
                lc = 2 if a_prov == b.province else 3
            else:
                lc = 0
            lp = _phone_level(phones, b)
            sb = b.street
            if not a_street or not sb:
                la = 0
            elif other_district(a_div, b.division_code):
                la = 4
            elif a_street == sb:
                la = 0 if a_addr_hot and address_key(b) == a_addr else 1
            else:
                s = jw(a_street, sb)
                la = 2 if s >= 0.92 else 3 if s >= 0.8 else 4
            be = b.emails
            if not a_mails or not be:
                le = 0
            elif not a_mails.isdisjoint(be):
                le = 1
            elif a_domains and any(e.rsplit("@", 1)[-1] in a_domains for e in be):
                le = 2
            else:
                le = 3
            total = prior + w_u[lu] + w_n[ln] + w_c[lc] + w_p[lp] + w_a[la] + w_e[le]
            if total >= floor:
                out.append((total, k, b, (lu, ln, lc, lp, la, le), w_n[ln]))
        return out

    def _score_persons(self, key: str, a: StdParty | MatchView, cands: list[str], floor: float
                       ) -> list[tuple[float, str, MatchView, tuple[int, ...], tuple[float, ...]]]:
        """As :meth:`_score_organizations`, for persons: (total, key, record, levels, weights)."""
        prior, comps, ws, params = self._scorer.kinds["person"]
        w_gn, w_fn, w_sw, w_bd, w_id, w_st, w_ci, w_pc, w_pr, w_ph = self._scorer.person_weights
        family = comps[1]
        if self._tf_on(a.family_name):
            w_fn = w_fn.copy()
            for level in family.tf_levels:
                w_fn[level] = ws[1][level] + self._tf_bits(family, a, params[1].u[level])
        a_gn, a_fn = a.given_name, a.family_name
        a_swappable = bool(a_gn and a_fn) and a_gn != a_fn
        a_bd, a_id, a_st, a_ci, a_pc, a_pr = a.birth_date, a.id_number, a.street, a.city, a.postcode, a.province
        phones = self._phone_probe(key, a)
        graded, edit = _graded_level, _edit_level
        records = self.records
        out = []
        for k in cands:
            b = records[k]
            if k == key or b.kind != "person":
                continue
            b_gn, b_fn = b.given_name, b.family_name
            if a_gn and a_fn and b_gn and b_fn:
                lsw = 1 if a_swappable and a_gn == b_fn and a_fn == b_gn else 2
            else:
                lsw = 0
            lp = _phone_level(phones, b)
            levels = (graded(a_gn, b_gn), graded(a_fn, b_fn), lsw, edit(a_bd, b.birth_date), edit(a_id, b.id_number),
                      graded(a_st, b.street), graded(a_ci, b.city), edit(a_pc, b.postcode),
                      graded(a_pr, b.province), lp)
            weights = (w_gn[levels[0]], w_fn[levels[1]], w_sw[lsw], w_bd[levels[3]], w_id[levels[4]], w_st[levels[5]],
                       w_ci[levels[6]], w_pc[levels[7]], w_pr[levels[8]], w_ph[lp])
            total = prior
            for w in weights:
                total += w
            if total >= floor:
                out.append((total, k, b, levels, weights))
        return out

    def _organization_evidence(self, a: StdParty | MatchView, b: MatchView, levels: tuple[int, ...],
                               name_weight: float) -> list[FieldEvidence]:
        """:meth:`_evidence` of an organization pair scored by :meth:`_score_organizations`: the values
        each comparison of :mod:`.comparisons` shows for the level it reached."""
        lu, ln, lc, lp, la, le = levels
        cu, cn, cc, cp, ca, ce = self._scorer.kinds["organization"][1]
        su, _, sc, sp, sa, se = self._scorer.org_shown
        ua, ub = _primary_or_fallback(lu, a.uscc, a.org_code, b.uscc, b.org_code)
        ca_, cb_ = _primary_or_fallback(lc, a.city, a.province, b.city, b.province)
        pa, pb = _phones_shown(a, b, lp)
        if le == 0:
            ea, eb = _first(a.emails), _first(b.emails)
        elif le == 1:
            ea = eb = min(set(a.emails).intersection(b.emails))
        else:
            ea, eb = a.emails[0], b.emails[0]
        return [
            _field_evidence(cu.name, cu.levels[lu], su[lu], ua, ub),
            _field_evidence(cn.name, cn.levels[ln], round(name_weight, 3), a.name_norm, b.name_norm),
            _field_evidence(cc.name, cc.levels[lc], sc[lc], ca_, cb_),
            _field_evidence(cp.name, cp.levels[lp], sp[lp], pa, pb),
            _field_evidence(ca.name, _level_name(ca, la, a, b), sa[la], a.address, b.address),
            _field_evidence(ce.name, ce.levels[le], se[le], ea, eb),
        ]

    def _person_evidence(self, a: StdParty | MatchView, b: MatchView, levels: tuple[int, ...],
                         weights: tuple[float, ...]) -> list[FieldEvidence]:
        """:meth:`_evidence` of a person pair scored by :meth:`_score_persons`."""
        comps = self._scorer.kinds["person"][1]
        if levels[2] == 1:
            swap = f"{a.family_name},{a.given_name}", f"{b.family_name},{b.given_name}"
        else:
            swap = None, None
        shown = ((a.given_name, b.given_name), (a.family_name, b.family_name), swap, (a.birth_date, b.birth_date),
                 (a.id_number, b.id_number), (a.street, b.street), (a.city, b.city), (a.postcode, b.postcode),
                 (a.province, b.province), _phones_shown(a, b, levels[9]))
        return [_field_evidence(c.name, c.levels[lv], round(w, 3), va, vb)
                for c, lv, w, (va, vb) in zip(comps, levels, weights, shown, strict=True)]

    def explain(self, a: StdParty, b: StdParty) -> str:
        """Human-readable evidence table for a pair."""
        r = self.score(a, b)
        lines = [f"{r.a} vs {r.b}: weight {r.weight:.2f}, probability {r.probability:.4f}, {r.decision}"
                 + (f" ({r.hard})" if r.hard else "")]
        for e in r.evidence:
            lines.append(f"  {e.field:<12} {e.level:<17} {e.weight:+7.2f}   {e.a!s} | {e.b!s}")
        return "\n".join(lines)


def _dec(c: Counter[str], k: str) -> None:
    v = c.get(k, 0) - 1
    if v <= 0:
        c.pop(k, None)
    else:
        c[k] = v


def _phone_level(probe: tuple[bool, frozenset[str], frozenset[str], frozenset[str]], b: MatchView) -> int:
    """The level of :func:`.comparisons.cmp_phone` for ``b`` against a probe (:meth:`Matcher._phone_probe`)."""
    has_phone, a_phones, a_generic, a_hot = probe
    bp = b.phones
    if not has_phone or not (bp or b.phones_generic):
        return 0
    if not a_phones.isdisjoint(bp):
        return 2 if a_hot and not a_hot.isdisjoint(bp) else 1
    if not a_generic.isdisjoint(b.phones_generic):
        return 2
    return 3


def _primary_or_fallback(level: int, a1: str | None, a2: str | None, b1: str | None, b2: str | None
                         ) -> tuple[str | None, str | None]:
    """The values a comparison on a primary field with a fallback (USCC / organization code, city /
    province) shows: both primaries when both sides have one, else the fallbacks; at level 0 (null)
    whatever each side has."""
    if level == 0:
        return a1 or a2, b1 or b2
    if a1 and b1:
        return a1, b1
    return a2, b2


def _phones_shown(a: StdParty | MatchView, b: StdParty | MatchView, level: int) -> tuple[str | None, str | None]:
    """The values :func:`.comparisons.cmp_phone` shows for the level reached (``shared_generic`` also
    when a shared specific number was demoted)."""
    if level == 0:
        return _first(a.phones), _first(b.phones)
    if level == 3:
        return _first(a.phones or a.phones_generic), _first(b.phones or b.phones_generic)
    # shared: the smallest number in common, a specific one before a generic one
    v = min(set(a.phones).intersection(b.phones) or set(a.phones_generic).intersection(b.phones_generic))
    return v, v


def _graded_level(va: str | None, vb: str | None) -> int:
    """The level of :func:`.comparisons._graded` (0.92 / 0.80) for two values."""
    if not va or not vb:
        return 0
    if va == vb:
        return 1
    s = JaroWinkler.similarity(va, vb)
    return 2 if s >= 0.92 else 3 if s >= 0.8 else 4


def _edit_level(va: str | None, vb: str | None) -> int:
    """The level of :func:`.comparisons._edit` for two values."""
    if not va or not vb:
        return 0
    if va == vb:
        return 1
    d = Levenshtein.distance(va, vb, score_cutoff=2)
    if d <= 1 or (len(va) == len(vb) and sorted(va) == sorted(vb)):
        return 2
    return 3 if d <= 2 else 4


# ------------------------------------------------------------------ training


def candidate_pairs(records: Sequence[StdParty], model: MatchModel | None = None, limit_per_record: int = 50,
                    max_pairs: int = 2_000_000) -> list[tuple[int, int]]:
    """Blocked candidate pairs (i < j) among records of the same kind."""
    m = Matcher(model)
    for i, r in enumerate(records):
        m.add(str(i), r)
    pairs: set[tuple[int, int]] = set()
    for i, r in enumerate(records):
        for k in m.candidates(r, limit=limit_per_record + 1):
            j = int(k)
            if j != i and records[j].kind == r.kind:
                pairs.add((i, j) if i < j else (j, i))
        if len(pairs) >= max_pairs:
            break
    return sorted(pairs)


def _levels_matrix(records: Sequence[StdParty], pairs: Iterable[tuple[int, int]], kind: str) -> np.ndarray:
    comps = COMPARISONS[kind]
    rows = [[c.fn(records[i], records[j])[0] for c in comps] for i, j in pairs]
    return np.asarray(rows, dtype=np.int8).reshape(-1, len(comps))


def estimate_u(records: Sequence[StdParty], kind: str, n_pairs: int = 200_000, seed: int = 42,
               model: MatchModel | None = None, exclude_bits: float = 25.0) -> list[np.ndarray]:
    """u per level from random pairs, Laplace-smoothed.

    Random pairs are almost all non-matches, but with a few records per real entity the true
    duplicates among them inflate u of the agreeing levels (and so deflate the weights). Pairs
    whose Bayes factor under ``model`` (default: the built-in priors) exceeds ``exclude_bits`` —
    e.g. same valid USCC *and* same name — are left out as near-certain matches.
    """
    idx = [i for i, r in enumerate(records) if r.kind == kind]
    rng = random.Random(seed)
    if len(idx) < 2:
        return []
    n_pairs = min(n_pairs, len(idx) * (len(idx) - 1) // 2)
    pairs = []
    for _ in range(n_pairs):
        i, j = rng.sample(idx, 2)
        pairs.append((i, j))
    mat = _levels_matrix(records, pairs, kind)
    km = (model or MatchModel()).kind(kind)
    params = {p.name: p for p in km.comparisons}
    bf = np.zeros(len(mat))
    for c_i, comp in enumerate(COMPARISONS[kind]):
        w = np.asarray(params[comp.name].weights())
        bf += w[mat[:, c_i]]
    mat = mat[bf <= exclude_bits]
    out = []
    for c_i, comp in enumerate(COMPARISONS[kind]):
        col = mat[:, c_i]
        counts = np.bincount(col, minlength=len(comp.levels)).astype(float)
        counts[1:] += 0.5  # smoothing: a level never seen at random is rare, not impossible
        u = counts / max(counts[1:].sum(), 1.0)
        u[0] = 1.0
        out.append(u)
    return out


def em(mat: np.ndarray, n_levels: list[int], m0: list[np.ndarray], u: list[np.ndarray], prior0: float,
       max_iter: int = 50, tol: float = 1e-6, fix_u: bool = True) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Expectation–maximisation for m (and optionally u) and λ on comparison vectors (numpy).

    Level 0 (null) is not informative: it has probability 1 under both classes.
    """
    patterns, counts = np.unique(mat, axis=0, return_counts=True)
    counts = counts.astype(float)
    m = [x.astype(float).copy() for x in m0]
    u = [x.astype(float).copy() for x in u]
    lam = prior0
    for _ in range(max_iter):
        log_m = np.zeros(len(patterns))
        log_u = np.zeros(len(patterns))
        for c in range(patterns.shape[1]):
            lv = patterns[:, c]
            mm = np.where(lv == 0, 1.0, m[c][lv])
            uu = np.where(lv == 0, 1.0, u[c][lv])
            log_m += np.log(np.maximum(mm, 1e-12))
            log_u += np.log(np.maximum(uu, 1e-12))
        a = np.log(lam) + log_m
        b = np.log(1 - lam) + log_u
        mx = np.maximum(a, b)
        p = np.exp(a - mx) / (np.exp(a - mx) + np.exp(b - mx))
        wm = p * counts
        wu = (1 - p) * counts
        new_lam = float(wm.sum() / counts.sum())
        new_lam = min(max(new_lam, 1e-6), 1 - 1e-6)
        new_m = []
        new_u = []
        for c, n in enumerate(n_levels):
            lv = patterns[:, c]
            sm = np.bincount(lv, weights=wm, minlength=n)[:n]
            sm[1:] += 1e-3
            mm = sm / sm[1:].sum()
            mm[0] = 1.0
            new_m.append(mm)
            if fix_u:
                new_u.append(u[c])
            else:
                su = np.bincount(lv, weights=wu, minlength=n)[:n]
                su[1:] += 1e-3
                uu = su / su[1:].sum()
                uu[0] = 1.0
                new_u.append(uu)
        delta = max(float(np.max(np.abs(new_m[c] - m[c]))) for c in range(len(m)))
        m, u, lam = new_m, new_u, new_lam
        if delta < tol:
            break
    return m, u, lam


# Training sessions (as in Splink): EM over the pairs of ONE blocking key at a time, leaving out
# the comparisons that key makes agree (their m would be biased by the blocking).
TRAINING_SESSIONS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "organization": [("U", ("uscc",)), ("C", ("name",)), ("T", ("phone",)), ("S", ("address", "city"))],
    "person": [("D", ("birth_date",)), ("N", ("given_name", "family_name", "name_swap")), ("I", ("id_number",)),
               ("Z", ("postcode",))],
}


def _session_pairs(records: Sequence[StdParty], kind: str, prefix: str, max_block: int,
                   max_pairs: int, seed: int) -> list[tuple[int, int]]:
    blocks: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r.kind != kind:
            continue
        for bk in dict.fromkeys(blocking_keys(r)):
            if bk.startswith(prefix):
                blocks.setdefault(bk, []).append(i)
    pairs: set[tuple[int, int]] = set()
    for members in blocks.values():
        if len(members) < 2 or len(members) > max_block:
            continue
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                pairs.add((members[x], members[y]))
    out = sorted(pairs)
    if len(out) > max_pairs:
        out = random.Random(seed).sample(out, max_pairs)
    return out


def estimate_prior(records: Sequence[StdParty], kind: str, m: list[np.ndarray], u: list[np.ndarray],
                   pairs: Sequence[tuple[int, int]], iters: int = 30) -> float:
    """λ = P(two random records of ``kind`` match): EM on λ alone over the blocked candidate pairs,
    every pair outside them counted as a non-match."""
    n = sum(1 for r in records if r.kind == kind)
    total = n * (n - 1) / 2
    if not pairs or total <= 0:
        return 1e-4
    mat = _levels_matrix(records, pairs, kind)
    patterns, counts = np.unique(mat, axis=0, return_counts=True)
    bf = np.zeros(len(patterns))
    for c in range(patterns.shape[1]):
        lv = patterns[:, c]
        bf += np.where(lv == 0, 0.0, np.log2(np.maximum(m[c][lv], 1e-12)) - np.log2(np.maximum(u[c][lv], 1e-12)))
    lam = max(len(pairs) * 0.1 / total, 1e-9)
    for _ in range(iters):
        w = bf + math.log2(lam / (1 - lam))
        p = 1 / (1 + np.exp2(-np.clip(w, -200, 200)))
        lam = float(min(max((p * counts).sum() / total, 1e-12), 0.5))
    return lam


def train_em(records: list[StdParty], model: MatchModel | None = None, *, n_random_pairs: int = 200_000,
             max_iter: int = 50, max_pairs_per_session: int = 300_000, seed: int = 42,
             term_frequencies: bool = False) -> MatchModel:
    """Learn m, u and λ for each kind present in ``records`` without labels.

    * u: from random record pairs (almost all non-matches).
    * m: EM (u fixed) in several sessions, each over the pairs sharing one blocking key and
      leaving out the comparisons that key forces to agree; each m is the mean over the
      sessions that estimated it.
    * λ (the prior, per random pair): EM on λ alone over all blocked candidate pairs.
    * with ``term_frequencies``, the value counts of the term-frequency adjustment over
      ``records`` (:class:`TermFrequencies`); otherwise the model's are kept.
    Thresholds and other settings are kept.
    """
    base = model or MatchModel()
    out = base.model_copy(deep=True)
    if term_frequencies:
        out.term_frequencies = TermFrequencies.of(records)
    for kind in ("organization", "person"):
        if sum(1 for r in records if r.kind == kind) < 20:
            continue
        comps = COMPARISONS[kind]
        names = [c.name for c in comps]
        km = base.kind(kind)
        params = {p.name: p for p in km.comparisons}
        u = estimate_u(records, kind, n_pairs=n_random_pairs, seed=seed)
        m0 = [np.asarray(params[c.name].m, dtype=float) for c in comps]
        sums = [np.zeros(len(c.levels)) for c in comps]
        nsess = [0] * len(comps)
        for prefix, excluded in TRAINING_SESSIONS[kind]:
            pairs = _session_pairs(records, kind, prefix, base.max_block_size, max_pairs_per_session, seed)
            if len(pairs) < 20:
                continue
            mat = _levels_matrix(records, pairs, kind)
            for name in excluded:
                mat[:, names.index(name)] = 0
            m, _, _ = em(mat, [len(c.levels) for c in comps], m0, u, 0.5, max_iter=max_iter)
            for ci, c in enumerate(comps):
                if c.name in excluded or not (mat[:, ci] > 0).any():
                    continue
                sums[ci] += m[ci]
                nsess[ci] += 1
        m_final = [sums[ci] / nsess[ci] if nsess[ci] else m0[ci] for ci in range(len(comps))]
        cand = [(i, j) for i, j in candidate_pairs(records, base) if records[i].kind == kind]
        lam = estimate_prior(records, kind, m_final, u, cand)
        setattr(out, kind, KindModel(prior=lam, comparisons=[
            ComparisonParams(name=c.name, levels=list(c.levels), m=[1.0, *[float(x) for x in m_final[i][1:]]],
                             u=[1.0, *[float(x) for x in u[i][1:]]])
            for i, c in enumerate(comps)
        ]))
    return out


def refine_with_labels(model: MatchModel, labelled_pairs: Sequence[tuple[StdParty, StdParty, bool]],
                       pseudo_count: float = 100.0) -> MatchModel:
    """Bayesian update of m (from pairs labelled same) and u (from pairs labelled not same).

    The current values act as a prior worth ``pseudo_count`` pairs, so a handful of steward
    decisions nudge the model and many decisions dominate it.
    """
    out = model.model_copy(deep=True)
    for kind in ("organization", "person"):
        pairs = [(a, b, same) for a, b, same in labelled_pairs if a.kind == kind and b.kind == kind]
        if not pairs:
            continue
        comps = COMPARISONS[kind]
        km = out.kind(kind)
        params = {p.name: p for p in km.comparisons}
        for is_match, attr in ((True, "m"), (False, "u")):
            sel = [(a, b) for a, b, same in pairs if same == is_match]
            if not sel:
                continue
            levels = [compare_levels(a, b) for a, b in sel]
            for ci, comp in enumerate(comps):
                p = params[comp.name]
                cur = np.asarray(getattr(p, attr), dtype=float)
                cnt = np.bincount([lv[ci] for lv in levels], minlength=len(comp.levels)).astype(float)
                n = cnt[1:].sum()
                if n == 0:
                    continue
                new = (cur[1:] * pseudo_count + cnt[1:]) / (pseudo_count + n)
                setattr(p, attr, [1.0, *[float(x) for x in new]])
    return out

"""Fellegi–Sunter matching (stub: being filled in)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from esbhub.mdm.standardize import StdParty


class FieldEvidence(BaseModel):
    """How one field compared and what it contributed."""

    model_config = ConfigDict(extra="forbid")
    field: str = Field(description="Comparison name, e.g. 'uscc', 'core_name', 'phone'.")
    level: str = Field(description="Comparison level reached, e.g. 'exact', 'jw_0.92', 'else', 'null'.")
    weight: float = Field(description="log2(m/u) contributed by this field (after TF adjustment).")
    a: str | None = Field(default=None, description="Value on side a.")
    b: str | None = Field(default=None, description="Value on side b.")


class MatchResult(BaseModel):
    """Score of one pair with its evidence."""

    model_config = ConfigDict(extra="forbid")
    a: str = Field(description="Key of record a.")
    b: str = Field(description="Key of record b.")
    weight: float = Field(description="Total match weight (log2 Bayes factor incl. prior).")
    probability: float = Field(description="Posterior match probability.")
    decision: Literal["match", "review", "no_match"] = Field(description="By the model's thresholds.")
    evidence: list[FieldEvidence] = Field(default_factory=list, description="Per-field evidence.")
    hard: str | None = Field(default=None, description="Hard constraint that forbids a merge, e.g. 'cannot_link:uscc_conflict'.")


class MatchModel(BaseModel):
    """Comparison levels, m/u per level, prior and thresholds."""

    model_config = ConfigDict(extra="forbid")


class Matcher:
    def __init__(self, model: MatchModel | None = None) -> None:
        self.model = model or MatchModel()

    def add(self, key: str, rec: StdParty) -> None:
        raise NotImplementedError

    def remove(self, key: str) -> None:
        raise NotImplementedError

    def candidates(self, rec: StdParty, limit: int = 200) -> list[str]:
        raise NotImplementedError

    def score(self, a: StdParty, b: StdParty) -> MatchResult:
        raise NotImplementedError

    def match(self, key: str, rec: StdParty) -> list[MatchResult]:
        raise NotImplementedError


def train_em(records: list[StdParty], model: MatchModel | None = None) -> MatchModel:
    raise NotImplementedError


def refine_with_labels(model: MatchModel, labelled_pairs: list[tuple[StdParty, StdParty, bool]]) -> MatchModel:
    raise NotImplementedError

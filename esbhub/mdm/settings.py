"""MDM configuration: the ``mdm`` section of the hub's settings (:class:`esbhub.config.Settings`).

Kept apart from the engine on purpose: loading the hub's settings (every process, every CLI
call) must not import the MDM service, its SQLAlchemy models or the matcher. This module
needs pydantic and the survivorship rule models (:mod:`esbhub.mdm.survivorship`, pure Python),
nothing else. :mod:`esbhub.mdm.service` and :mod:`esbhub.mdm.hierarchy` re-export the models.

Example (YAML config file, ``--config`` / ``ESBHUB_CONFIG``): :data:`EXAMPLE_YAML`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from esbhub.mdm.survivorship import SurvivorshipConfig

TierName = Annotated[str, StringConstraints(min_length=1, max_length=8)]
"""A tier's name; the golden record keeps it in an 8-character column (``mdm_golden.tier``)."""

Threshold = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""Minimum monthly revenue (CNY) of a tier; revenue is never negative."""


class TieringConfig(BaseModel):
    """Key-account tiers by monthly billed revenue (CNY), highest first."""

    model_config = ConfigDict(extra="forbid")

    thresholds: dict[TierName, Threshold] = Field(
        default_factory=lambda: {"A": 1_000_000.0, "B": 100_000.0, "C": 10_000.0},
        description="Tier → minimum monthly revenue (CNY, ≥ 0); the highest threshold a golden record's revenue "
        "reaches gives its tier. The table given replaces the default one whole.",
    )
    below: TierName = Field(default="D", description="Tier of a customer below every threshold (or without revenue).")

    @field_validator("thresholds")
    @classmethod
    def _distinct_floors(cls, v: dict[str, float]) -> dict[str, float]:
        """No two tiers have one threshold (only the first listed could ever be given)."""
        seen: dict[float, str] = {}
        for name, floor in v.items():
            if floor in seen:
                raise ValueError(f"tiers '{seen[floor]}' and '{name}' have the same threshold {floor:g}: "
                                 f"'{name}' could never be given")
            seen[floor] = name
        return v

    @field_validator("below")
    @classmethod
    def _below_is_no_threshold_tier(cls, v: str, info: ValidationInfo) -> str:
        """The tier below every threshold is not also one of ``thresholds``."""
        if v in (info.data.get("thresholds") or {}):
            raise ValueError(f"'{v}' is also a tier of 'thresholds': the tier below every threshold needs a name "
                             "of its own")
        return v

    def tier(self, revenue: float | None) -> str:
        if revenue is not None:
            for name, floor in sorted(self.thresholds.items(), key=lambda kv: -kv[1]):
                if revenue >= floor:
                    return name
        return self.below


class MdmSettings(BaseModel):
    """MDM configuration (defaults work out of the box)."""

    model_config = ConfigDict(extra="forbid")

    survivorship: SurvivorshipConfig = Field(
        default_factory=SurvivorshipConfig,
        description="Per-attribute survivorship rules and source trust; attributes not listed keep their defaults.",
    )
    tiering: TieringConfig = Field(default_factory=TieringConfig, description="Key-account tiers.")
    model_path: Path | None = Field(
        default=None, description="The MatchModel JSON the hub scores with: the model 'esbhub mdm rematch' last "
        "applied to the store is saved here (default: DATA_DIR/mdm_model.json; no file: the engine's defaults). Every "
        "MDM process of one store must read the same file: a writer that finds another model here than the one the "
        "store's links were scored with refuses to score. 'esbhub mdm train' writes a candidate beside it.")
    search_limit: int = Field(default=20, ge=1, le=500, description="Most results a search returns.")
    queue: str = Field(default="mdm", pattern=r"^[a-z][a-z0-9_-]{0,62}$",
                       description="Subscription name (queue 'route.<name>') consuming party.v1.")

    def resolved(self, data_dir: str | Path) -> MdmSettings:
        """These settings with ``model_path`` defaulted to ``data_dir``/mdm_model.json."""
        if self.model_path is not None:
            return self
        return self.model_copy(update={"model_path": Path(data_dir) / "mdm_model.json"})


def mdm_settings_of(settings: Any) -> MdmSettings:
    """The MDM settings of hub settings (:class:`esbhub.config.Settings`), ``model_path`` resolved."""
    return settings.mdm.resolved(settings.data_dir)  # type: ignore[no-any-return]


EXAMPLE_YAML = """\
mdm:
  tiering:
    thresholds: {A: 2000000, B: 200000, C: 20000}   # monthly revenue, CNY
    below: D
  survivorship:
    attributes:
      address:
        trust: {crm: 100, resource: 80, billing: 60, "*": 30}   # CRM first for addresses
      industry:
        rules: [override, trust, recency]
        trust: {registry: 100, crm: 90, "*": 20}
"""
"""The ``mdm`` section as an operator writes it (docs/configuration.md shows it; a test loads it)."""

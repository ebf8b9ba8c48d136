"""Building blocks shared by the canonical payload schemas."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
ShortCode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Money = Annotated[Decimal, Field(max_digits=18, decimal_places=2)]


class Strict(BaseModel):
    """Base for canonical payloads: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)


class SourceRef(Strict):
    """Which system holds a record and under which key."""

    system: ShortCode = Field(description="Source system name, e.g. 'billing', 'crm', 'resource', 'bank'.")
    id: ShortCode = Field(description="The record's key in that system.")

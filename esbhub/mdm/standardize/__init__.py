"""Standardization of ``party.v1`` records for matching (stub: being filled in)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from esbhub.schemas.party import Party


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
    province: str | None = Field(default=None, description="Province (short name, e.g. '广东').")
    city: str | None = Field(default=None, description="Prefecture-level city (short name, e.g. '深圳').")
    district: str | None = Field(default=None, description="District / county as written in the address.")
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
    id_number: str | None = Field(default=None, description="Person: ID number (digits / X).")
    id_number_valid: bool | None = Field(default=None, description="Person: GB 11643 check digit passes.")
    postcode: str | None = Field(default=None, description="Postcode of the main address.")
    flags: list[str] = Field(default_factory=list, description="Quality flags, e.g. 'uscc_check_failed'.")


def standardize(party: Party) -> StdParty:
    """Standardize one source record for matching."""
    raise NotImplementedError

"""``party.v1`` — an organization or person customer as ONE source system holds it.

The MDM core reconciles many of these (one per source system and key) into one golden
record. Values are kept as the source sent them; standardization happens in ``esbhub.mdm``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import EmailStr, Field, model_validator

from esbhub.schemas.common import Money, NonEmpty, ShortCode, Strict


class Address(Strict):
    kind: Literal["registered", "office", "billing", "installation", "other"] = Field(
        default="registered", description="What the address is used for."
    )
    text: NonEmpty = Field(description="The address as the source holds it, e.g. '广东省深圳市南山区科技园路1号'.")
    province: str | None = Field(default=None, max_length=50, description="Province as given by the source, if separate.")
    city: str | None = Field(default=None, max_length=50, description="City as given by the source, if separate.")
    district: str | None = Field(default=None, max_length=50, description="District / county as given, if separate.")
    postcode: str | None = Field(default=None, pattern=r"^[0-9]{6}$", description="Six-digit postal code.")


class Phone(Strict):
    kind: Literal["main", "mobile", "fax", "service", "other"] = Field(default="main", description="Kind of number.")
    number: str = Field(min_length=3, max_length=40, description="The number as written in the source, any format.")


class Contact(Strict):
    name: NonEmpty = Field(description="Contact person's name.")
    role: str | None = Field(default=None, max_length=100, description="e.g. '客户经理', 'IT 负责人', 'finance'.")
    phone: str | None = Field(default=None, max_length=40, description="Contact's phone, any format.")
    email: EmailStr | None = Field(default=None, description="Contact's e-mail.")


class PartyAttributes(Strict):
    """System-specific attributes the hub knows how to use; others go in ``extra``."""

    billing_account: str | None = Field(default=None, max_length=64, description="Billing account number.")
    parent_billing_account: str | None = Field(default=None, max_length=64, description="Group / parent account.")
    monthly_revenue: Money | None = Field(default=None, ge=0, description="Monthly billed revenue (CNY).")
    circuit_ids: list[ShortCode] = Field(default_factory=list, description="Circuits / service instances held.")
    bank_account: str | None = Field(default=None, max_length=64, description="Bank account number used to pay.")
    bank_name: str | None = Field(default=None, max_length=100, description="Bank (branch) of that account.")
    account_manager: str | None = Field(default=None, max_length=100, description="Key-account manager's name or id.")
    industry: str | None = Field(default=None, max_length=100, description="Industry as the source classifies it.")
    extra: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="Other flat attributes, kept verbatim with their lineage."
    )


class Party(Strict):
    """One customer record from one source system."""

    kind: Literal["organization", "person"] = Field(default="organization", description="Organization or person.")
    source_system: ShortCode = Field(description="The system this record comes from, e.g. 'billing'.")
    source_id: ShortCode = Field(description="The record's key in that system.")
    source_updated_at: datetime | None = Field(default=None, description="When the source last changed the record.")
    name: NonEmpty = Field(description="Legal or display name as the source holds it.")
    name_en: str | None = Field(default=None, max_length=300, description="English name, if any.")
    uscc: str | None = Field(
        default=None,
        min_length=18,
        max_length=18,
        description="Unified social credit code (统一社会信用代码, GB 32100), 18 characters. "
        "A failed check character is flagged by the MDM, not rejected here.",
    )
    org_code: str | None = Field(
        default=None, description="Organization code (组织机构代码, GB 11714), 9 characters, with or without '-'."
    )
    id_number: str | None = Field(
        default=None, max_length=18,
        description="Resident ID number (persons only): 18 characters, or a first-generation 15-digit one, which the "
                    "MDM matches as its 18-digit form.",
    )
    parent_source_id: str | None = Field(
        default=None, max_length=64, description="Source key of the head office / parent in the same system."
    )
    province: str | None = Field(default=None, max_length=50, description="Province the record belongs to.")
    city: str | None = Field(default=None, max_length=50, description="City the record belongs to.")
    addresses: list[Address] = Field(default_factory=list, max_length=20, description="Addresses the source holds.")
    phones: list[Phone] = Field(default_factory=list, max_length=20, description="Phone numbers, any format.")
    emails: list[EmailStr] = Field(default_factory=list, max_length=20, description="E-mail addresses.")
    contacts: list[Contact] = Field(default_factory=list, max_length=50, description="Contact persons.")
    status: Literal["active", "suspended", "closed"] = Field(default="active", description="Status in the source.")
    deleted: bool = Field(default=False, description="True when the source deleted the record.")
    attributes: PartyAttributes = Field(default_factory=PartyAttributes, description="System-specific attributes.")

    @model_validator(mode="after")
    def _person_fields(self) -> Party:
        """A resident ID number is only allowed on a person."""
        if self.kind == "organization" and self.id_number:
            raise ValueError("id_number is only allowed for kind 'person'")
        return self

"""``bill.v1`` — one monthly bill of one billing account."""

from __future__ import annotations

from datetime import date

from pydantic import Field, model_validator

from esbhub.schemas.common import Currency, Money, ShortCode, Strict


class BillItem(Strict):
    code: ShortCode = Field(description="Charge item code, e.g. 'MPLS-VPN'.")
    description: str | None = Field(default=None, max_length=200, description="Charge item text as printed on the bill.")
    amount: Money = Field(description="Amount of this item.")
    circuit_id: str | None = Field(default=None, max_length=64, description="Circuit / service instance charged.")


class Bill(Strict):
    bill_id: ShortCode = Field(description="The billing system's bill number.")
    account: ShortCode = Field(description="Billing account number.")
    customer_source_id: str | None = Field(default=None, max_length=64, description="Customer key in billing.")
    period: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", description="Billing month, 'YYYY-MM'.")
    issued_on: date | None = Field(default=None, description="Date the bill was issued.")
    due_on: date | None = Field(default=None, description="Payment due date.")
    currency: Currency = Field(default="CNY", description="ISO 4217 currency code.")
    total: Money = Field(description="Total due; must equal the sum of items when items are given.")
    items: list[BillItem] = Field(default_factory=list, max_length=10000, description="Charge items; their amounts must add up to total.")

    @model_validator(mode="after")
    def _total_matches_items(self) -> Bill:
        """When items are given, total must equal the sum of their amounts."""
        if self.items and sum(i.amount for i in self.items) != self.total:
            raise ValueError("total does not equal the sum of items' amount")
        return self

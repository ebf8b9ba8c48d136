"""``bill.v1`` — one monthly bill of one billing account."""

from __future__ import annotations

from datetime import date

from pydantic import Field, model_validator

from esbhub.schemas.common import Currency, Money, ShortCode, Strict


class BillItem(Strict):
    code: ShortCode = Field(description="Charge item code, e.g. 'MPLS-VPN'.")
    description: str | None = Field(default=None, max_length=200)
    amount: Money = Field(description="Amount of this item.")
    circuit_id: str | None = Field(default=None, max_length=64, description="Circuit / service instance charged.")


class Bill(Strict):
    bill_id: ShortCode = Field(description="The billing system's bill number.")
    account: ShortCode = Field(description="Billing account number.")
    customer_source_id: str | None = Field(default=None, max_length=64, description="Customer key in billing.")
    period: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", description="Billing month, 'YYYY-MM'.")
    issued_on: date | None = Field(default=None)
    due_on: date | None = Field(default=None)
    currency: Currency = Field(default="CNY")
    total: Money = Field(description="Total due; must equal the sum of items when items are given.")
    items: list[BillItem] = Field(default_factory=list, max_length=10000)

    @model_validator(mode="after")
    def _total_matches_items(self) -> Bill:
        if self.items and sum(i.amount for i in self.items) != self.total:
            raise ValueError("total does not equal the sum of items' amount")
        return self

"""``payment.v1`` — one payment a bank reports for a customer."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from esbhub.schemas.common import Currency, Money, ShortCode, Strict


class Payment(Strict):
    payment_id: ShortCode = Field(description="The bank's transaction reference; unique per bank.")
    bank: ShortCode = Field(description="Bank code, e.g. 'ICBC'.")
    payer_name: str = Field(min_length=1, max_length=300, description="Payer name as on the bank record.")
    payer_account: str | None = Field(default=None, max_length=64, description="Payer's bank account.")
    payer_uscc: str | None = Field(default=None, min_length=18, max_length=18, description="Payer USCC, if given.")
    billing_account: str | None = Field(default=None, max_length=64, description="Billing account paid, if given.")
    amount: Money = Field(gt=0, description="Amount paid.")
    currency: Currency = Field(default="CNY", description="ISO 4217 currency code.")
    paid_at: datetime = Field(description="When the bank booked the payment.")
    status: Literal["success", "failed", "reversed"] = Field(default="success", description="Outcome the bank reports.")
    memo: str | None = Field(default=None, max_length=500, description="Free text the payer gave (附言).")

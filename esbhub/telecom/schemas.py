"""``customer.billing.v1``: a customer change as the billing system pushes it (its own field names).

Registered as a message type (``esbhub.schemas.SCHEMAS``) so that billing can push it to the
hub's inbound SOAP endpoint (``POST /soap/customer.billing.v1``, operation
``PublishCustomerBilling``): the endpoint validates it against this model and the reference route
``telecom-billing-customers`` maps it to ``party.v1``. Only pydantic here: imported by
the ``esbhub.schemas`` entry point (pyproject.toml).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BillingPhone(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(default=None, description="Billing's phone kind (main, service, mobile, fax …).")
    no: str = Field(min_length=1, max_length=64, description="The number as billing holds it.")


class BillingAddress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(default=None, description="Billing's address kind (billing, office …).")
    text: str = Field(min_length=1, max_length=512, description="The address as one line of text.")


class BillingCustomer(BaseModel):
    """One billing customer (change notification)."""

    model_config = ConfigDict(extra="forbid", title="BillingCustomer")

    cust_id: str = Field(min_length=1, max_length=64, description="Billing's customer id.")
    cust_name: str | None = Field(default=None, max_length=256, description="Customer name (the route requires it).")
    cert_no: str | None = Field(default=None, max_length=64, description="Certificate number (usually the USCC).")
    prov: str | None = Field(default=None, max_length=64, description="Province.")
    city: str | None = Field(default=None, max_length=64, description="City.")
    tel: list[BillingPhone] = Field(default_factory=list, description="Phones.")
    addr: list[BillingAddress] = Field(default_factory=list, description="Addresses.")
    acct_no: str | None = Field(default=None, max_length=64, description="Billing account number.")
    parent_cust_id: str | None = Field(default=None, max_length=64, description="Parent (head office) customer id.")
    monthly_fee: str | None = Field(default=None, max_length=32, description="Monthly revenue, decimal text.")


__all__ = ["BillingAddress", "BillingCustomer", "BillingPhone"]

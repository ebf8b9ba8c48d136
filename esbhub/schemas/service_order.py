"""``service_order.v1`` — a one-stop service order (开通 / 变更 / 拆机) and its status."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from esbhub.schemas.common import ShortCode, Strict


class OrderLine(Strict):
    product: ShortCode = Field(description="Product code, e.g. 'DIA-100M', 'MPLS-VPN'.")
    action: Literal["add", "change", "remove"] = Field(default="add", description="开通 (add), 变更 (change) or 拆机 (remove).")
    quantity: int = Field(default=1, ge=1, le=10000, description="How many of the product.")
    site_address: str | None = Field(default=None, max_length=500, description="Installation address for this line.")
    bandwidth_mbps: int | None = Field(default=None, ge=1, le=1_000_000, description="Bandwidth ordered, Mbit/s.")
    circuit_id: str | None = Field(default=None, max_length=64, description="For change/remove: the circuit.")


class ServiceOrder(Strict):
    order_id: ShortCode = Field(description="Order number from the portal / CRM.")
    customer_golden_id: str | None = Field(default=None, max_length=64, description="Golden id of the customer, if known.")
    customer_source: ShortCode | None = Field(default=None, description="Source system of the customer key.")
    customer_source_id: str | None = Field(default=None, max_length=64, description="Customer key in customer_source.")
    channel: Literal["portal", "crm", "call_centre", "account_manager"] = Field(default="portal", description="Where the order came in.")
    lines: list[OrderLine] = Field(min_length=1, max_length=1000, description="What is ordered, one line per product.")
    status: Literal[
        "received", "resource_checked", "provisioning", "provisioned", "billing_created", "completed", "failed", "cancelled"
    ] = Field(default="received", description="Where the order stands in the one-stop flow.")
    status_reason: str | None = Field(default=None, max_length=1000, description="Why the status is what it is (e.g. failure reason).")
    requested_at: datetime = Field(description="When the customer placed the order.")

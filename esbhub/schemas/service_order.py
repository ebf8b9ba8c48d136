"""``service_order.v1`` — a one-stop service order (开通 / 变更 / 拆机) and its status."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from esbhub.schemas.common import ShortCode, Strict


class OrderLine(Strict):
    product: ShortCode = Field(description="Product code, e.g. 'DIA-100M', 'MPLS-VPN'.")
    action: Literal["add", "change", "remove"] = Field(default="add")
    quantity: int = Field(default=1, ge=1, le=10000)
    site_address: str | None = Field(default=None, max_length=500)
    bandwidth_mbps: int | None = Field(default=None, ge=1, le=1_000_000)
    circuit_id: str | None = Field(default=None, max_length=64, description="For change/remove: the circuit.")


class ServiceOrder(Strict):
    order_id: ShortCode = Field(description="Order number from the portal / CRM.")
    customer_golden_id: str | None = Field(default=None, max_length=64)
    customer_source: ShortCode | None = Field(default=None, description="Source system of the customer key.")
    customer_source_id: str | None = Field(default=None, max_length=64)
    channel: Literal["portal", "crm", "call_centre", "account_manager"] = Field(default="portal")
    lines: list[OrderLine] = Field(min_length=1, max_length=1000)
    status: Literal[
        "received", "resource_checked", "provisioning", "provisioned", "billing_created", "completed", "failed", "cancelled"
    ] = Field(default="received")
    status_reason: str | None = Field(default=None, max_length=1000)
    requested_at: datetime

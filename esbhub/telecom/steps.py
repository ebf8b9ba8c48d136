"""Registered ``code`` steps of the telecom reference routes (entry points ``esbhub.steps``).

* ``telecom.apportion`` — a payment whose billing account is a group agreement (looked up into
  ``payload.group``) becomes one posting per member account, split by the agreed shares to the
  cent (the remainder goes to the last account); other payments pass unchanged.
* ``telecom.alarm_customers`` — turns the looked-up golden record (``payload.golden``) and the
  circuit owner (``payload.owner``) into ``payload.customers`` (golden id, name, tier,
  account manager) and removes the lookup scratch fields.
* ``telecom.bills_from_items`` — billing's bill file read per file (``payload.records``: one
  record per bill item) → ``payload.bills``: one bill.v1 payload per bill, items in file order,
  total = their exact decimal sum.
* ``telecom.resource_change_row`` — a row of the resource inventory's customer change outbox
  (read by the ``sql`` source): its JSON text columns become lists.

Both raise :class:`TransientError` when the customer is not mastered yet (``require_customer``),
so the route retries with backoff instead of posting a payment or an alarm without its customer.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from esbhub.errors import PermanentError, TransientError
from esbhub.routes.registry import step
from esbhub.telecom.world import apportion as split_amount


def _value(attrs: dict[str, Any] | None, name: str) -> Any:
    v = (attrs or {}).get(name)
    return v.get("value") if isinstance(v, dict) and "value" in v else v


@step("telecom.apportion")
def apportion(message: dict[str, Any], config: dict[str, Any]) -> list[dict[str, Any]]:
    p = message["payload"]
    if config.get("require_customer", True) and not p.get(config.get("customer_field", "payer_golden")):
        raise TransientError(f"payer of payment {p.get('payment_id')} is not mastered yet")
    group = p.pop("group", None)
    if not group or not group.get("members"):
        return [message]
    try:
        shares = {m["account"]: Decimal(str(m["share"])) for m in group["members"]}
        amount = Decimal(str(p["amount"]))
    except (KeyError, TypeError, InvalidOperation) as exc:
        raise PermanentError(f"group agreement of {p.get('billing_account')} is malformed: {exc}") from exc
    if sum(shares.values()) <= 0:
        raise PermanentError(f"group agreement of {p.get('billing_account')} has no positive share")
    out = []
    for acct, amt in split_amount(amount, shares).items():
        part = {**message, "headers": dict(message.get("headers") or {}), "payload": dict(p)}
        part["payload"].update(billing_account=acct, amount=str(amt), group_account=p.get("billing_account"))
        part["headers"]["apportioned-from"] = str(p.get("billing_account"))
        out.append(part)
    return out


@step("telecom.alarm_customers")
def alarm_customers(message: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    p = message["payload"]
    owner = p.pop("owner", None) or {}
    golden = p.pop("golden", None)
    if not golden:
        if config.get("require_customer", True) and owner:
            raise TransientError(f"customer {owner.get('customer_code')} of alarm {p.get('alarm_id')} is not mastered yet")
        return message
    attrs = golden.get("attributes") or {}
    p["customers"] = [{
        "golden_id": golden.get("golden_id"), "name": golden.get("name"), "tier": golden.get("tier"),
        "account_manager": _value(attrs, "account_manager"), "resource_customer": owner.get("customer_code"),
    }]
    return message


@step("telecom.bills_from_items")
def bills_from_items(message: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    p = message["payload"]
    bills: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(p.get("records") or [], 1):
        try:
            b = bills.setdefault(r["bill_id"], {
                "bill_id": r["bill_id"], "account": r["account"], "customer_source_id": r.get("customer_source_id"),
                "period": r["period"], "issued_on": r.get("issued_on"), "items": [], "total": Decimal(0)})
            b["items"].append({"code": r["item_code"], "amount": r["item_amount"]})
            b["total"] += Decimal(str(r["item_amount"]))
        except (KeyError, TypeError, InvalidOperation) as exc:
            raise PermanentError(f"bill file {p.get('file')}: item {i} is malformed: {type(exc).__name__} {exc}") from exc
    message["payload"] = {"file": p.get("file"), "bills": [{**b, "total": str(b["total"])} for b in bills.values()]}
    return message


RESOURCE_JSON_COLUMNS = ("contact_phones", "addresses", "circuits")


@step("telecom.resource_change_row")
def resource_change_row(message: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A row of the resource inventory's customer change outbox (read by the ``sql`` source) →
    the inventory's customer record: its JSON text columns (phones, addresses, circuits) become
    lists. A payload that already holds lists passes unchanged; bad JSON is a permanent error."""
    import json

    p = message["payload"]
    for col in config.get("json_columns", RESOURCE_JSON_COLUMNS):
        v = p.get(col)
        if isinstance(v, str):
            try:
                p[col] = json.loads(v) if v.strip() else []
            except ValueError as exc:
                raise PermanentError(f"resource change {p.get('change_id')}: column {col} is not JSON: {exc}") from exc
    return message

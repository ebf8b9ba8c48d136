from __future__ import annotations

import pytest

from esbhub.errors import InvalidMessage
from esbhub.schemas import SCHEMAS, json_schemas, validate_payload


def test_every_required_canonical_type_is_registered_with_a_json_schema():
    for t in ("party.v1", "bill.v1", "payment.v1", "alarm.v1", "service_order.v1"):
        assert t in SCHEMAS
        assert json_schemas()[t]["type"] == "object"


def test_unknown_type_suggests_the_closest_known_one():
    with pytest.raises(InvalidMessage) as ei:
        validate_payload("party.v2", {})
    d = ei.value.details[0]
    assert d.loc == "type" and d.hint == "did you mean 'party.v1'?"


def test_schema_violation_names_each_field_and_reason():
    with pytest.raises(InvalidMessage) as ei:
        validate_payload("payment.v1", {"payment_id": "P1", "bank": "ICBC", "payer_name": "x", "amount": -5, "colour": 1})
    locs = {d.loc: d.msg for d in ei.value.details}
    assert "payload.amount" in locs and "greater than 0" in locs["payload.amount"]
    assert "payload.paid_at" in locs and "required" in locs["payload.paid_at"].lower()
    assert "payload.colour" in locs and "not permitted" in locs["payload.colour"]


def test_bill_total_must_equal_sum_of_items():
    bill = {"bill_id": "B1", "account": "A1", "period": "2026-10", "total": "10.00",
            "items": [{"code": "X", "amount": "4.00"}, {"code": "Y", "amount": "5.00"}]}
    with pytest.raises(InvalidMessage, match="payload does not match"):
        validate_payload("bill.v1", bill)
    bill["total"] = "9.00"
    assert validate_payload("bill.v1", bill)["total"] == "9.00"


def test_a_type_declared_by_a_package_entry_point_is_registered_without_core_importing_it():
    import esbhub.schemas as core

    # the telecom pack declares billing's native customer type in pyproject.toml; core code
    # never imports esbhub.telecom
    assert "customer.billing.v1" in SCHEMAS
    assert "esbhub.telecom" not in open(core.__file__, encoding="utf-8").read()
    assert SCHEMAS["customer.billing.v1"].__module__ == "esbhub.telecom.schemas"

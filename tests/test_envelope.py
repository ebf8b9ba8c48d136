from __future__ import annotations

import pytest
from pydantic import ValidationError

from esbhub.bus.envelope import Envelope


def test_envelope_is_immutable_and_round_trips_through_bytes():
    env = Envelope.create("party.v1", {"name": "华信科技"}, source="crm")
    with pytest.raises(ValidationError):
        env.type = "bill.v1"  # type: ignore[misc]
    back = Envelope.from_bytes(env.to_bytes())
    assert back == env
    assert back.payload["name"] == "华信科技"


def test_envelope_ids_sort_by_creation_and_correlation_defaults_to_id():
    a = Envelope.create("bill.v1", {}, source="billing")
    b = Envelope.create("bill.v1", {}, source="billing")
    assert a.id < b.id
    assert a.correlation_id == a.id


def test_derived_message_keeps_trace_and_correlation_but_gets_new_id():
    parent = Envelope.create("payment.v1", {}, source="bank")
    child = parent.derive("bill.v1", {"x": 1})
    assert child.id != parent.id
    assert child.causation_id == parent.id
    assert child.correlation_id == parent.correlation_id
    assert child.trace_id == parent.trace_id
    assert child.headers["traceparent"] != parent.headers["traceparent"]


@pytest.mark.parametrize("bad", ["party", "Party.v1", "party.v", "party.1", "party.v1.", ""])
def test_envelope_type_must_carry_a_version(bad):
    with pytest.raises(ValidationError, match="version"):
        Envelope.create(bad, {}, source="x")


def test_log_fields_never_include_payload():
    env = Envelope.create("party.v1", {"secret": "x"}, source="crm")
    assert "payload" not in env.log_fields()

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

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


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(payload=_json, headers=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
def test_to_bytes_encodes_exactly_what_pydantic_json_mode_gives(payload, headers):
    env = Envelope.create("party.v1", payload, source="s", headers=headers)
    assert env.to_bytes() == orjson.dumps(env.model_dump(mode="json"))
    assert Envelope.from_bytes(env.to_bytes()) == env


def test_to_bytes_converts_values_json_has_no_type_for_like_pydantic_does():
    class Amount(BaseModel):
        value: Decimal

    payload = {
        "amount": Decimal("12.30"),
        "tags": {"b"},
        "when": datetime(2026, 11, 26, 8, 0, tzinfo=timezone(timedelta(hours=8))),
        "day": date(2026, 11, 26),
        "model": Amount(value=Decimal("1.5")),
        7: "int key",
    }
    env = Envelope.create("party.v1", payload, source="s")
    assert orjson.loads(env.to_bytes()) == orjson.loads(orjson.dumps(env.model_dump(mode="json")))
    assert orjson.loads(env.to_bytes())["created_at"].endswith("Z")

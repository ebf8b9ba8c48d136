"""The engine's fast paths (direct function calls, field chains, per-target setters, one-pass
validation, output envelopes without model_copy) give exactly what the general code gives."""

from __future__ import annotations

import copy

import jmespath
import pytest

from esbhub.errors import InvalidMessage, PermanentError
from esbhub.routes.engine import CompiledRoute
from esbhub.routes.expressions import _OPTIONS, compile_expr, evaluate, set_path, setter
from esbhub.schemas import validate_payload

from .conftest import env, route_of

DATA = {"payload": {"a": 1, "s": "x", "l": ["p", "q"], "m": ["p", 2], "d": {"k": {"z": "v"}}, "t": "str"}, "headers": {}}
PARTY = {"kind": "organization", "source_system": "billing", "source_id": "C1", "name": "华信 1",
         "attributes": {"monthly_revenue": 150000, "billing_account": "A1", "extra": {"k": 1}}}


@pytest.mark.parametrize("expr", ["upper(payload.a)", "join(':', payload.m)", "abs(payload.s)",
                                  "length(payload.a)", "join(`1`, payload.l)", "nosuchfn(payload.a)"])
def test_a_function_argument_of_the_wrong_type_fails_with_jmespaths_own_message(expr: str):
    with pytest.raises(Exception) as ref:
        jmespath.search(expr, DATA, options=_OPTIONS)
    with pytest.raises(PermanentError) as got:
        evaluate(compile_expr(expr), DATA)
    assert str(got.value) == f"expression failed: {ref.value}"


@pytest.mark.parametrize("expr", ["join('-', payload.l)", "upper(payload.s)", "payload.d.k.z", "payload.t.k",
                                  "payload.l.k", "payload.d.k.z.w", "payload.a.b.c.d", "length(payload.s)"])
def test_function_calls_and_field_chains_match_jmespath(expr: str):
    assert evaluate(compile_expr(expr), DATA) == jmespath.search(expr, DATA, options=_OPTIONS)


@pytest.mark.parametrize("target", ["headers.n", "type", "payload", "payload.x", "payload.t.u", "payload.x.y.z"])
@pytest.mark.parametrize("value", [None, 5, "v", {"a": 1}])
def test_a_compiled_setter_writes_what_set_path_writes(target: str, value: object):
    a, b = copy.deepcopy(DATA), copy.deepcopy(DATA)
    set_path(a, target, value)
    setter(target)(b, value)
    assert a == b


def test_validate_keeps_the_precise_errors_and_the_normalized_payload():
    cr = CompiledRoute(route_of("name: r\nfrom: {topic: party.v1}\nsteps:\n  - type: validate\n"
                                "to: [{topic: out.v1}]\n"))
    bad = {**PARTY, "source_id": "", "attributes": {"monthly_revenue": -1}}
    with pytest.raises(InvalidMessage) as ref:
        validate_payload("party.v1", bad)
    with pytest.raises(InvalidMessage) as got:
        cr.run(env("party.v1", bad))
    assert str(got.value) == str(ref.value) and got.value.details == ref.value.details and len(ref.value.details) == 2
    out = cr.run(env("party.v1", PARTY)).outputs[0].envelope
    assert out.payload == validate_payload("party.v1", PARTY)


def test_a_route_starting_with_validate_never_changes_the_input_payload():
    cr = CompiledRoute(route_of("name: r\nfrom: {topic: party.v1}\nsteps:\n  - type: validate\n  - type: map\n"
                                "    set: {payload.attributes.extra.k: \"'changed'\", payload.name: \"'n'\"}\n"
                                "to: [{topic: out.v1}]\n"))
    e = env("party.v1", copy.deepcopy(PARTY))
    out = cr.run(e).outputs[0].envelope
    assert e.payload == PARTY
    assert out.payload["attributes"]["extra"] == {"k": "changed"} and out.payload["name"] == "n"


def test_an_output_envelope_equals_the_model_copy_of_the_input():
    cr = CompiledRoute(route_of("name: r\nfrom: {topic: party.v1}\nsteps:\n  - type: map\n    set: {headers.x: payload.a}\n"
                                "to: [{topic: out.v1}]\n"), 3)
    e = env("party.v1", {"a": 1})
    out = cr.run(e).outputs[0].envelope
    ref = e.model_copy(update={"id": out.id, "headers": out.headers, "causation_id": e.id, "attempt": 0,
                               "type": "party.v1", "payload": {"a": 1}})
    assert out == ref and out.to_bytes() == ref.to_bytes() and out.model_fields_set == ref.model_fields_set
    assert type(out).model_validate(out.model_dump()) == out

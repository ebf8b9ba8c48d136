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


def _outcome(r: object) -> object:
    if isinstance(r, Exception):
        return (type(r).__name__, str(r))
    return ([(o.sink.label, o.envelope) for o in r.outputs], r.filtered, r.split_empty, r.aggregated,
            [d.envelope for d in r.deferred], r.final)


def test_a_batch_run_step_by_step_gives_each_input_exactly_what_running_it_alone_gives():
    from esbhub.routes.engine import RESUME_HEADER

    cr = CompiledRoute(route_of("""\
name: mix
from: {topic: party.v1}
steps:
  - type: validate
  - type: filter
    if: "payload.attributes.monthly_revenue != null"
  - type: map
    set: {payload.rev: "to_number(payload.attributes.monthly_revenue)", headers.who: payload.source_id}
  - type: choice
    when:
      - if: "payload.rev >= `100000`"
        steps:
          - {type: map, values: {headers.tier: gold}}
      - if: "payload.rev >= `10`"
        steps: []
  - type: split
    expression: "payload.attributes.circuit_ids"
to: [{topic: out.v1}]
"""), 1)
    def party(i: int, **attrs: object) -> dict:
        return {**PARTY, "source_id": f"C{i}", "attributes": {**PARTY["attributes"], **attrs}}

    inputs = [
        env(payload=party(1, circuit_ids=["a", "b"])),            # two parts
        env(payload={"kind": "organization"}),                     # invalid: missing fields
        env(payload=party(2, monthly_revenue=None)),               # filtered out
        env(payload=party(3, monthly_revenue=5, circuit_ids=["x"])),  # choice matches nothing
        env(payload=party(4, circuit_ids=[])),                     # split to nothing
        env(payload=party(5, monthly_revenue=50, circuit_ids=["c"])),
        env(payload=party(6, circuit_ids=["d"]), headers={RESUME_HEADER: "2"}),  # resumes at map
        env(payload=party(7), headers={RESUME_HEADER: "9"}),       # no such step
    ]
    alone = [_outcome(_run_or_error(cr, e)) for e in inputs]
    together = [_outcome(r) for r in cr.run_many(inputs)]
    assert together == alone
    kinds = [a[0] if isinstance(a[0], str) else "ok" for a in alone]
    assert kinds == ["ok", "InvalidMessage", "ok", "NoRouteMatched", "ok", "ok", "ok", "PermanentError"]


def _run_or_error(cr: CompiledRoute, e: object) -> object:
    try:
        return cr.run(e)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001
        return exc

"""Every step on its own and at its edges, run by the pure engine (no broker)."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from esbhub.errors import InvalidMessage, PermanentError
from esbhub.routes import registry
from esbhub.routes.engine import RESUME_HEADER, CompiledRoute
from esbhub.routes.steps import Deps, NoRouteMatched
from esbhub.routes.testing import Harness

from .conftest import env, route_of

HEAD = "name: r\nfrom: {topic: party.v1}\nto: [{topic: out.v1, name: out}]\nsteps:\n"


def run(steps: str, payload, *, deps: Deps | None = None, trace: bool = False, **kw):
    cr = CompiledRoute(route_of(HEAD + steps), 1, deps)
    return cr.run(env("party.v1", payload, **kw), trace=trace)


def outs(res, sink: str = "out"):
    return [o.envelope for o in res.outputs if o.sink.label == sink]


def test_validate_normalizes_and_rejects_with_field_detail():
    steps = "  - type: validate\n"
    good = {"source_system": "crm", "source_id": " C1 ", "name": "某公司"}
    res = run(steps, good)
    assert outs(res)[0].payload["source_id"] == "C1"
    with pytest.raises(InvalidMessage) as ei:
        run(steps, {"source_system": "crm", "name": "x"})
    assert any(d.loc == "payload.source_id" for d in ei.value.details)


def test_filter_drops_falsy_and_counts_it():
    res = run("  - type: filter\n    if: payload.keep\n", {"keep": False})
    assert res.outputs == [] and res.filtered == 1
    assert len(outs(run("  - type: filter\n    if: payload.keep\n", {"keep": "yes"}))) == 1


def test_map_set_remove_rename_values_read_the_message_before_the_step():
    steps = """\
  - type: map
    rename: {payload.a: payload.b}
    remove: [payload.secret]
    set:
      payload.upper: upper(payload.name)
      payload.old_a: payload.a
      headers.kind: "'x'"
      type: "'party.mapped.v1'"
    values: {payload.nested.const: 7}
"""
    e = outs(run(steps, {"a": 1, "secret": "s", "name": "abc"}))[0]
    assert e.payload == {"b": 1, "upper": "ABC", "old_a": 1, "name": "abc", "nested": {"const": 7}}
    assert e.headers["kind"] == "x" and e.type == "party.mapped.v1"


def test_map_replace_starts_from_an_empty_payload():
    e = outs(run("  - type: map\n    replace: true\n    set: {payload.id: payload.x}\n", {"x": 1, "y": 2}))[0]
    assert e.payload == {"id": 1}


def test_map_does_not_change_the_input_envelope():
    src = env("party.v1", {"a": {"b": 1}})
    cr = CompiledRoute(route_of(HEAD + "  - type: map\n    values: {payload.a.b: 2}\n"))
    assert cr.run(src).outputs[0].envelope.payload == {"a": {"b": 2}}
    assert src.payload == {"a": {"b": 1}}


def test_map_setting_an_invalid_type_is_a_permanent_error():
    with pytest.raises(PermanentError):
        run("  - type: map\n    set: {type: \"'Not A Type'\"}\n", {})


CHOICE = """\
  - type: choice
    when:
      - if: "payload.n > `10`"
        to: [{topic: big.v1, name: big}]
      - if: "payload.n > `5`"
        steps:
          - type: map
            values: {headers.size: medium}
"""


def test_choice_takes_the_first_matching_branch_and_its_sinks():
    res = run(CHOICE, {"n": 50}, trace=True)
    assert len(outs(res, "big")) == 1 and outs(res) == []
    assert res.trace[-1].branch == "when[0]"
    res = run(CHOICE, {"n": 7})
    assert outs(res)[0].headers["size"] == "medium"


def test_choice_without_match_or_otherwise_dead_letters_with_the_reason():
    with pytest.raises(NoRouteMatched, match="matched no branch"):
        run(CHOICE, {"n": 1})


def test_choice_otherwise_is_taken_when_nothing_matches():
    steps = CHOICE + "    otherwise:\n      to: [{topic: small.v1, name: small}]\n"
    res = run(steps, {"n": 1}, trace=True)
    assert len(outs(res, "small")) == 1 and res.trace[-1].branch == "otherwise"


def test_split_makes_one_message_per_element_with_sequence_headers():
    src = env("party.v1", {"items": [{"a": 1}, {"a": 2}, {"a": 3}]})
    cr = CompiledRoute(route_of(HEAD + "  - type: split\n    expression: payload.items\n    message_type: item.v1\n"))
    res = cr.run(src)
    got = outs(res)
    assert [e.payload for e in got] == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert [(e.headers["split-index"], e.headers["split-size"], e.headers["split-parent"]) for e in got] == [
        ("0", "3", src.id), ("1", "3", src.id), ("2", "3", src.id)
    ]
    assert {e.type for e in got} == {"item.v1"} and len({e.id for e in got}) == 3
    assert [e.id for e in outs(cr.run(src))] == [e.id for e in got]  # redelivery → same ids


def test_empty_split_produces_nothing_and_is_counted():
    res = run("  - type: split\n    expression: payload.items\n", {"items": []})
    assert res.outputs == [] and res.split_empty == 1
    res = run("  - type: split\n    expression: payload.missing\n", {})
    assert res.outputs == [] and res.split_empty == 1


def test_split_of_a_non_list_is_a_permanent_error():
    with pytest.raises(PermanentError, match="not a list"):
        run("  - type: split\n    expression: payload.x\n", {"x": 3})


def test_recipient_list_sends_copies_and_enforces_allowed():
    steps = "  - type: recipient_list\n    recipients: payload.to\n    allowed: [a.v1, b.v1]\n"
    res = run(steps, {"to": ["a.v1", "b.v1"]})
    assert sorted(o.sink.label for o in res.outputs) == ["a.v1", "b.v1", "out"]
    with pytest.raises(PermanentError, match="not allowed"):
        run(steps, {"to": "c.v1"})


def test_wire_tap_copies_the_message_as_it_is_at_the_tap():
    steps = "  - type: wire_tap\n    to: {adapter: memory, name: tap, config: {name: t}}\n  - type: map\n    values: {payload.after: 1}\n"
    res = run(steps, {"x": 1})
    assert outs(res, "tap")[0].payload == {"x": 1} and outs(res)[0].payload == {"x": 1, "after": 1}


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def test_throttle_lets_a_burst_through_then_paces_to_the_rate():
    clock = FakeClock()
    deps = Deps(clock=clock.now, sleep=clock.sleep)
    cr = CompiledRoute(route_of(HEAD + "  - type: throttle\n    rate: 10\n    burst: 5\n"), deps=deps)
    for i in range(25):
        cr.run(env("party.v1", {"i": i}))
    assert len(clock.slept) == 20  # the first 5 pass at once
    assert clock.t == pytest.approx(2.0)  # 20 more at 10/s
    assert all(s == pytest.approx(0.1) for s in clock.slept)


def test_short_delay_waits_inline_long_delay_is_deferred_and_resumes_at_the_next_step():
    clock = FakeClock()
    deps = Deps(clock=clock.now, sleep=clock.sleep, inline_delays=False)
    steps = "  - type: delay\n    seconds: 0.5\n  - type: delay\n    seconds: 30\n  - type: map\n    values: {payload.done: true}\n"
    cr = CompiledRoute(route_of(HEAD + steps), deps=deps)
    res = cr.run(env("party.v1", {"x": 1}))
    assert clock.slept == [0.5] and res.outputs == []
    (d,) = res.deferred
    assert d.delay == 30 and d.step == 2 and d.envelope.headers[RESUME_HEADER] == "2"
    res2 = cr.run(d.envelope)
    assert outs(res2)[0].payload == {"x": 1, "done": True} and RESUME_HEADER not in outs(res2)[0].headers


def test_code_step_registered_by_decorator_can_change_drop_and_split():
    @registry.step("tests.triple")
    def triple(message, config):
        n = message["payload"]["n"]
        if n == 0:
            return None
        if n < 0:
            return [{"payload": {"part": i}} for i in range(config["parts"])]
        message["payload"]["n"] = n * config["factor"]
        return message

    steps = "  - type: code\n    function: tests.triple\n    config: {factor: 3, parts: 2}\n"
    assert outs(run(steps, {"n": 2}))[0].payload == {"n": 6}
    assert run(steps, {"n": 0}).filtered == 1
    assert [e.payload for e in outs(run(steps, {"n": -1}))] == [{"part": 0}, {"part": 1}]


def test_code_step_bug_becomes_a_permanent_error_naming_the_function():
    registry.register_step("tests.broken", lambda m, c: m["payload"]["missing"])
    with pytest.raises(PermanentError, match="tests.broken"):
        run("  - type: code\n    function: tests.broken\n", {})


def test_enrich_mdm_lookup_is_cached_within_its_ttl():
    calls = []

    @registry.lookup("tests.customer")
    def customer(key, **args):
        calls.append(key)
        return {"golden_id": f"G-{key}", **args}

    steps = "  - type: enrich\n    mdm: {function: tests.customer, key: payload.acct, args: {tier: a}}\n    target: payload.customer\n"
    cr = CompiledRoute(route_of(HEAD + steps))
    a = outs(cr.run(env("party.v1", {"acct": "7"})))[0]
    cr.run(env("party.v1", {"acct": "7"}))
    cr.run(env("party.v1", {"acct": "8"}))
    assert a.payload["customer"] == {"golden_id": "G-7", "tier": "a"} and calls == ["7", "8"]


def test_enrich_on_missing_fail_dead_letters_null_sets_null():
    registry.register_lookup("tests.none", lambda key: None)
    base = "  - type: enrich\n    mdm: {function: tests.none, key: payload.k}\n    target: payload.c\n"
    with pytest.raises(PermanentError, match="found nothing"):
        run(base + "    on_missing: fail\n", {"k": 1})
    assert outs(run(base + "    on_missing: 'null'\n", {"k": 1}))[0].payload == {"k": 1, "c": None}
    assert outs(run(base, {"k": 1}))[0].payload == {"k": 1}


def test_enrich_sql_lookup(tmp_path: Path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'ref.db'}"
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.execute(sa.text("CREATE TABLE accounts (acct TEXT, manager TEXT)"))
        c.execute(sa.text("INSERT INTO accounts VALUES ('A1', '王经理')"))
    eng.dispose()
    steps = (
        f"  - type: enrich\n    sql:\n      url: '{url}'\n      query: SELECT manager FROM accounts WHERE acct = :a\n"
        "      params: {a: payload.acct}\n    target: payload.acct_info\n"
    )
    assert outs(run(steps, {"acct": "A1"}))[0].payload["acct_info"] == {"manager": "王经理"}
    assert "acct_info" not in outs(run(steps, {"acct": "nope"}))[0].payload


@pytest.fixture
def http_ref():
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/customers/C1"):
                body, code = b'{"name": "ACME", "q": "' + self.path.split("?")[-1].encode() + b'"}', 200
            elif self.path.startswith("/customers/ERR"):
                body, code = b"{}", 503
            else:
                body, code = b"{}", 404
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_enrich_http_lookup_maps_404_to_missing_and_5xx_to_transient(http_ref):
    from esbhub.errors import TransientError

    steps = (
        f"  - type: enrich\n    http:\n      url: '{http_ref}/customers/{{id}}'\n      params: {{id: payload.id, v: \"'2'\"}}\n"
        "      timeout: 2\n    target: payload.customer\n"
    )
    assert outs(run(steps, {"id": "C1"}))[0].payload["customer"] == {"name": "ACME", "q": "v=2"}
    assert "customer" not in outs(run(steps, {"id": "C2"}))[0].payload
    with pytest.raises(TransientError):
        run(steps, {"id": "ERR"})


def test_call_to_another_route_runs_it_and_takes_its_reply():
    callee = route_of("name: pricing\nfrom: {topic: price.req.v1}\nsteps:\n  - type: map\n    replace: true\n    set: {payload.price: 'payload.qty'}\n")
    caller = route_of(HEAD + "  - type: call\n    route: pricing\n    target: payload.quote\n")
    h = Harness({"r": caller, "pricing": callee})
    try:
        out = h.run("r", [env("party.v1", {"qty": 3})])
    finally:
        h.close()
    assert out.sinks["out"][0].payload == {"qty": 3, "quote": {"price": 3}}


def test_call_to_a_sink_in_tests_needs_a_mock():
    steps = "  - type: call\n    name: ask\n    sink: {adapter: memory, config: {name: x}}\n    target: payload.answer\n"
    r = route_of(HEAD + steps)
    h = Harness({"r": r}, mocks={"ask": {"value": {"ok": True}}})
    try:
        assert h.run("r", [env("party.v1", {})]).sinks["out"][0].payload == {"answer": {"ok": True}}
    finally:
        h.close()
    h = Harness({"r": r})
    try:
        assert h.run("r", [env("party.v1", {})]).dead_letters[0]["message"].startswith("call")
    finally:
        h.close()


def test_trace_shows_each_step_with_the_message_after_it():
    res = run("  - type: map\n    values: {payload.a: 1}\n  - type: filter\n    if: payload.b\n", {}, trace=True)
    assert [(t.step, t.type) for t in res.trace] == [("steps[0]", "map"), ("steps[1]", "filter")]
    assert res.trace[0].messages[0]["payload"] == {"a": 1} and res.trace[1].messages == []


def test_outputs_carry_the_route_version_and_deterministic_ids():
    cr = CompiledRoute(route_of(HEAD.replace("steps:\n", "steps: []\n")), 7)
    src = env("party.v1", {})
    a, b = cr.run(src).outputs[0].envelope, cr.run(src).outputs[0].envelope
    assert a.headers["esbhub-route"] == "r@v7" and a.id == b.id != src.id and a.causation_id == src.id

"""The compiled JMESPath evaluator gives the same results as the reference interpreter."""

from __future__ import annotations

import jmespath
import pytest

from esbhub.errors import PermanentError
from esbhub.routes.expressions import _OPTIONS, compile_expr, evaluate, remove_path, set_path

DATA = {
    "payload": {"a": 1, "b": True, "c": 0, "s": "x", "l": [1, 2, 3], "n": None, "d": {"k": "v"},
                "items": [{"x": 1, "y": "a"}, {"x": 2, "y": "b"}]},
    "headers": {"h": "1"},
}
EXPRS = [
    "payload.a", "payload.a == `1`", "payload.b == `1`", "payload.c == `false`", "payload.a > `0`", "payload.s < 'y'",
    "payload.n && 'x' || 'y'", "!payload.c", "!payload.n", "upper(payload.s)", "join(':', [payload.s, headers.h])",
    "payload.l[0]", "payload.l[-1]", "payload.l[5]", "payload.items[?x > `1`].y", "payload.items[*].x", "payload.l[1:]",
    "{a: payload.a, s: payload.s}", "payload.d.k", "payload.missing.deep", "payload | a", "length(payload.l)",
    "contains(['x','y'], payload.s)", "`[1,2]`", "payload.items[0].y", "to_number(payload.a) >= `1`",
    "coalesce(payload.n, 'z')", "payload.*", "sort_by(payload.items, &x)[0].y", "@", "payload.l[]",
    "payload.b == `true`", "payload.a == `1.0`", "payload.c == `0`",
]


@pytest.mark.parametrize("expr", EXPRS)
def test_compiled_expression_matches_jmespath(expr: str):
    ref = jmespath.search(expr, DATA, options=_OPTIONS)
    got = evaluate(compile_expr(expr), DATA)
    assert got == ref and type(got) is type(ref)


def test_ordering_a_string_against_a_number_is_null_and_bad_function_args_are_permanent():
    assert evaluate(compile_expr("payload.s > `0`"), DATA) is None
    with pytest.raises(PermanentError):
        evaluate(compile_expr("upper(payload.a)"), DATA)


def test_set_and_remove_paths():
    v = {"payload": {"a": 1}, "headers": {}}
    set_path(v, "payload.x.y", 2)
    set_path(v, "headers.n", 5)
    assert v == {"payload": {"a": 1, "x": {"y": 2}}, "headers": {"n": "5"}}
    assert remove_path(v, "payload.x.y") == 2 and remove_path(v, "payload.none") is None

"""JMESPath expressions and target paths — the only "language" a route may contain.

Configuration text is compiled by :mod:`jmespath`, never ``eval``-ed. An expression reads
the message view ``{id, type, source, correlation_id, headers, payload, attempt}``; a
*target* is a dotted path (``payload.customer.name``, ``headers.tier``, ``type``) that
:func:`set_path` / :func:`remove_path` write into that view.
"""

from __future__ import annotations

import functools
import operator
import threading
from collections.abc import Callable
from typing import Any

import jmespath
from jmespath import exceptions as jmex
from jmespath import functions as jmfn
from jmespath import visitor as jmvisitor

from esbhub.errors import PermanentError


class _Functions(jmfn.Functions):
    """A few extra functions integration engineers keep asking for."""

    @jmfn.signature({"types": ["string"]})
    def _func_upper(self, s: str) -> str:
        return s.upper()

    @jmfn.signature({"types": ["string"]})
    def _func_lower(self, s: str) -> str:
        return s.lower()

    @jmfn.signature({"types": ["string"]})
    def _func_trim(self, s: str) -> str:
        return s.strip()

    @jmfn.signature({"types": ["string", "number", "boolean", "null"]})
    def _func_to_str(self, v: Any) -> str:
        return "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))

    @jmfn.signature({"types": ["string"]}, {"types": ["string"]}, {"types": ["string"]})
    def _func_replace(self, s: str, old: str, new: str) -> str:
        return s.replace(old, new)

    @jmfn.signature({"types": ["string"]}, {"types": ["string"]})
    def _func_split(self, s: str, sep: str) -> list[str]:
        return s.split(sep)

    @jmfn.signature({"types": []}, {"types": []})
    def _func_coalesce(self, a: Any, b: Any) -> Any:
        return a if a is not None else b


_OPTIONS = jmespath.Options(custom_functions=_Functions())
_local = threading.local()


def _interpreter() -> Any:
    it = getattr(_local, "interp", None)
    if it is None:
        it = _local.interp = jmvisitor.TreeInterpreter(_OPTIONS)
    return it


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _eq(a: Any, b: Any) -> bool:
    if (a is True or a is False) != (b is True or b is False) and (_is_num(a) or _is_num(b)):
        return False
    return bool(a == b)


_ORDER = {"lt": operator.lt, "gt": operator.gt, "lte": operator.le, "gte": operator.ge}


def _is_false(v: Any) -> bool:
    return v is None or v is False or v == "" or v == [] or v == {}


def _field_chain(keys: tuple[str, ...]) -> Callable[[Any], Any]:
    """``a.b.c`` as one closure: a non-object or null on the way gives null (as jmespath)."""
    if len(keys) == 2:
        k1, k2 = keys

        def two(v: Any) -> Any:
            if isinstance(v, dict):
                v = v.get(k1)
                if isinstance(v, dict):
                    return v.get(k2)
            return None

        return two
    if len(keys) == 3:
        k1, k2, k3 = keys

        def three(v: Any) -> Any:
            if isinstance(v, dict):
                v = v.get(k1)
                if isinstance(v, dict):
                    v = v.get(k2)
                    if isinstance(v, dict):
                        return v.get(k3)
            return None

        return three

    def chain(v: Any) -> Any:
        for k in keys:
            if not isinstance(v, dict):
                return None
            v = v.get(k)
        return v

    return chain


def _function_call(name: str, args: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """A function call with its signature checked up front where that is cheap (plain types,
    fixed arity, one element type for arrays); anything the quick check does not accept goes
    through jmespath's own ``call_function``, which gives its exact result or error."""
    funcs = _OPTIONS.custom_functions
    spec = funcs.FUNCTION_TABLE.get(name)
    sig = spec["signature"] if spec else None
    checks: list[tuple[frozenset[str], frozenset[str] | None] | None] = []
    if sig is None or len(sig) != len(args) or any(a.get("variadic") for a in sig):
        checks_ok = False
    else:
        checks_ok = True
        for a in sig:
            if not a["types"]:
                checks.append(None)
                continue
            allowed, subtypes = funcs._get_allowed_pytypes(a["types"])
            if len(subtypes) > 1 or (subtypes and len(a["types"]) > 1):
                checks_ok = False
                break
            checks.append((frozenset(allowed), frozenset(subtypes[0]) if subtypes else None))
    if not checks_ok or spec is None:
        return lambda v: funcs.call_function(name, [a(v) for a in args])
    fn = spec["function"]
    plan = list(zip(args, checks, strict=True))

    def call(v: Any) -> Any:
        vals = []
        for a, chk in plan:
            x = a(v)
            if chk is not None:
                if type(x).__name__ not in chk[0] or (
                    chk[1] is not None and any(type(e).__name__ not in chk[1] for e in x)
                ):
                    return funcs.call_function(name, [a(v) for a, _ in plan])
            vals.append(x)
        return fn(funcs, *vals)

    return call


def _compile_node(node: dict[str, Any]) -> Callable[[Any], Any]:
    """A JMESPath AST node → a Python closure (same results as jmespath's TreeInterpreter).

    Covers what routes use on the hot path (fields, comparisons, and/or/not, literals,
    functions, multi-selects, index, pipe); any other node runs on the interpreter.
    """
    t = node["type"]
    ch = node.get("children") or []
    if t == "field":
        key = node["value"]
        return lambda v: v.get(key) if isinstance(v, dict) else None
    if t == "subexpression":
        if all(c["type"] == "field" for c in ch):
            return _field_chain(tuple(c["value"] for c in ch))
        parts = [_compile_node(c) for c in ch]

        def sub(v: Any) -> Any:
            for f in parts:
                v = f(v)
                if v is None:
                    return None
            return v

        return sub
    if t == "literal":
        lit = node["value"]
        return lambda v: lit
    if t == "current":
        return lambda v: v
    if t == "comparator":
        left, right = _compile_node(ch[0]), _compile_node(ch[1])
        op = node["value"]
        if op == "eq":
            return lambda v: _eq(left(v), right(v))
        if op == "ne":
            return lambda v: not _eq(left(v), right(v))
        fn = _ORDER[op]

        def order(v: Any) -> Any:
            a, b = left(v), right(v)
            if (_is_num(a) and _is_num(b)) or (isinstance(a, str) and isinstance(b, str)):
                return fn(a, b)
            return None

        return order
    if t == "and_expression":
        left, right = _compile_node(ch[0]), _compile_node(ch[1])

        def and_(v: Any) -> Any:
            a = left(v)
            return a if _is_false(a) else right(v)

        return and_
    if t == "or_expression":
        left, right = _compile_node(ch[0]), _compile_node(ch[1])

        def or_(v: Any) -> Any:
            a = left(v)
            return right(v) if _is_false(a) else a

        return or_
    if t == "not_expression":
        inner = _compile_node(ch[0])
        return lambda v: _is_false(inner(v))
    if t == "function_expression" and all(c["type"] != "expref" for c in ch):
        name = node["value"]
        args = [_compile_node(c) for c in ch]
        return _function_call(name, args)
    if t == "multi_select_list":
        items = [_compile_node(c) for c in ch]
        return lambda v: None if v is None else [f(v) for f in items]
    if t == "multi_select_dict":
        pairs = [(c["value"], _compile_node(c["children"][0])) for c in ch]
        return lambda v: None if v is None else {k: f(v) for k, f in pairs}
    if t == "index":
        i = node["value"]

        def index(v: Any) -> Any:
            if not isinstance(v, list):
                return None
            try:
                return v[i]
            except IndexError:
                return None

        return index
    if t == "index_expression":
        left, right = _compile_node(ch[0]), _compile_node(ch[1])

        def index_expr(v: Any) -> Any:
            a = left(v)
            return None if a is None else right(a)

        return index_expr
    if t == "pipe":
        left, right = _compile_node(ch[0]), _compile_node(ch[1])
        return lambda v: right(left(v))
    return lambda v: _interpreter().visit(node, v)


class Compiled:
    """A compiled expression: ``search(data)`` like jmespath's ParsedResult, but faster."""

    __slots__ = ("expression", "parsed", "_fn")

    def __init__(self, expression: str, parsed: dict[str, Any]) -> None:
        self.expression = expression
        self.parsed = parsed
        self._fn = _compile_node(parsed)

    def search(self, data: Any, options: Any = None) -> Any:
        return self._fn(data)


class ExpressionError(ValueError):
    """An expression that does not compile; ``str()`` says why."""


@functools.lru_cache(maxsize=4096)
def compile_expr(text: str) -> Any:
    """Compile (cached) or raise :class:`ExpressionError`."""
    try:
        parsed = jmespath.compile(text)
        return Compiled(text, parsed.parsed)
    except (jmex.ParseError, jmex.LexerError) as exc:
        why = (str(exc).splitlines() or ["syntax error"])[0].rstrip(":")
        pos = getattr(exc, "lex_position", None)
        at = f" at column {pos + 1}" if isinstance(pos, int) else ""
        raise ExpressionError(f"invalid JMESPath expression {text!r}: {why}{at}") from None


def check_expr(text: str) -> str | None:
    """The compile error of ``text`` or None."""
    try:
        compile_expr(text)
    except ExpressionError as exc:
        return str(exc)
    return None


def evaluate(expr: Any, data: Any) -> Any:
    """Evaluate a compiled expression; type errors at run time become permanent errors."""
    try:
        return expr.search(data)
    except jmex.JMESPathError as exc:
        raise PermanentError(f"expression failed: {exc}") from None
    except TypeError as exc:  # e.g. comparing a string with a number inside a function
        raise PermanentError(f"expression failed: {exc}") from None


def truthy(v: Any) -> bool:
    """JMESPath truthiness: false, null, '', [], {} are false."""
    return not (v is None or v is False or v == "" or v == [] or v == {})


@functools.lru_cache(maxsize=4096)
def _split(target: str) -> tuple[str, ...]:
    """Target path → its parts (cached: a route's targets are a small, fixed set)."""
    if target.startswith("headers."):
        return ("headers", target[len("headers.") :])
    return tuple(target.split("."))


def set_path(view: dict[str, Any], target: str, value: Any) -> None:
    """Write ``value`` at ``target`` inside the message view, creating dicts on the way."""
    parts = _split(target)
    if parts[0] == "headers":
        view["headers"][parts[1]] = "" if value is None else (value if isinstance(value, str) else str(value))
        return
    if len(parts) == 1:
        view[parts[0]] = value
        return
    cur = view
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def evaluate_all(exprs: list[Any], data: Any) -> list[Any]:
    """:func:`evaluate` of several compiled expressions over the same data (one error guard)."""
    try:
        return [e._fn(data) for e in exprs]
    except jmex.JMESPathError as exc:
        raise PermanentError(f"expression failed: {exc}") from None
    except TypeError as exc:
        raise PermanentError(f"expression failed: {exc}") from None


def setter(target: str) -> Callable[[dict[str, Any], Any], None]:
    """``set_path(view, target, value)`` specialised for one target, compiled once per route version."""
    parts = _split(target)
    if parts[0] == "headers":
        name = parts[1]

        def set_header(view: dict[str, Any], value: Any) -> None:
            view["headers"][name] = "" if value is None else (value if isinstance(value, str) else str(value))

        return set_header
    if len(parts) == 1:
        top = parts[0]

        def set_top(view: dict[str, Any], value: Any) -> None:
            view[top] = value

        return set_top
    if len(parts) == 2:
        p0, p1 = parts

        def set_two(view: dict[str, Any], value: Any) -> None:
            cur = view.get(p0)
            if not isinstance(cur, dict):
                cur = view[p0] = {}
            cur[p1] = value

        return set_two
    return lambda view, value: set_path(view, target, value)


def get_path(view: dict[str, Any], target: str) -> tuple[bool, Any]:
    parts = _split(target)
    cur: Any = view
    for p in parts:
        if not isinstance(cur, dict) or p not in cur:
            return False, None
        cur = cur[p]
    return True, cur


def remove_path(view: dict[str, Any], target: str) -> Any:
    parts = _split(target)
    cur: Any = view
    for p in parts[:-1]:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    if isinstance(cur, dict):
        if len(parts) == 1 and parts[0] == "payload":
            old = cur.get("payload")
            cur["payload"] = None
            return old
        return cur.pop(parts[-1], None)
    return None

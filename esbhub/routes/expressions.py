"""JMESPath expressions and target paths — the only "language" a route may contain.

Configuration text is compiled by :mod:`jmespath`, never ``eval``-ed. An expression reads
the message view ``{id, type, source, correlation_id, headers, payload, attempt}``; a
*target* is a dotted path (``payload.customer.name``, ``headers.tier``, ``type``) that
:func:`set_path` / :func:`remove_path` write into that view.
"""

from __future__ import annotations

import functools
from typing import Any

import jmespath
from jmespath import exceptions as jmex
from jmespath import functions as jmfn

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


class ExpressionError(ValueError):
    """An expression that does not compile; ``str()`` says why."""


@functools.lru_cache(maxsize=4096)
def compile_expr(text: str) -> Any:
    """Compile (cached) or raise :class:`ExpressionError`."""
    try:
        return jmespath.compile(text)
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
        return expr.search(data, options=_OPTIONS)
    except jmex.JMESPathError as exc:
        raise PermanentError(f"expression failed: {exc}") from None


def truthy(v: Any) -> bool:
    """JMESPath truthiness: false, null, '', [], {} are false."""
    return not (v is None or v is False or v == "" or v == [] or v == {})


def _split(target: str) -> list[str]:
    if target.startswith("headers."):
        return ["headers", target[len("headers.") :]]
    return target.split(".")


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

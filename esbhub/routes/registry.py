"""Named Python functions routes may call: ``code`` steps and ``enrich.mdm`` lookups.

Register with a decorator::

    from esbhub.routes.registry import step, lookup

    @step("telecom.normalize_circuit")
    def normalize_circuit(message: dict, config: dict) -> dict | list[dict] | None:
        message["payload"]["circuit"] = message["payload"]["circuit"].upper()
        return message          # a list → several messages; None → dropped

    @lookup("mdm.golden_by_xref")
    def golden_by_xref(key, **args): ...

or through entry points (groups ``esbhub.steps`` and ``esbhub.lookups``) in a package's
``pyproject.toml``; entry points are loaded on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from esbhub.logging import get_logger

log = get_logger("esbhub.routes")

StepFunction = Callable[[dict[str, Any], dict[str, Any]], Any]
LookupFunction = Callable[..., Any]

_steps: dict[str, StepFunction] = {}
_lookups: dict[str, LookupFunction] = {}
_loaded: set[str] = set()
_lock = threading.Lock()


def step(name: str) -> Callable[[StepFunction], StepFunction]:
    def deco(fn: StepFunction) -> StepFunction:
        _steps[name] = fn
        return fn

    return deco


def lookup(name: str) -> Callable[[LookupFunction], LookupFunction]:
    def deco(fn: LookupFunction) -> LookupFunction:
        _lookups[name] = fn
        return fn

    return deco


def register_step(name: str, fn: StepFunction) -> None:
    _steps[name] = fn


def register_lookup(name: str, fn: LookupFunction) -> None:
    _lookups[name] = fn


def _load(group: str, into: dict[str, Any]) -> None:
    with _lock:
        if group in _loaded:
            return
        _loaded.add(group)
        for ep in entry_points(group=group):
            if ep.name in into:
                continue
            try:
                into[ep.name] = ep.load()
            except Exception as exc:  # noqa: BLE001 - one broken plug-in must not hide the others
                log.warning("route_plugin_load_failed", group=group, entry_point=ep.name, error=str(exc))


def steps() -> dict[str, StepFunction]:
    _load("esbhub.steps", _steps)
    return _steps


def lookups() -> dict[str, LookupFunction]:
    if "builtin" not in _loaded:
        from esbhub.routes.lookups import BUILTIN

        for k, v in BUILTIN.items():
            _lookups.setdefault(k, v)
        _loaded.add("builtin")
    _load("esbhub.lookups", _lookups)
    return _lookups

"""Where adapters are found: the built-ins of this package plus every entry point in the group
``esbhub.adapters`` (a third-party package declares
``[project.entry-points."esbhub.adapters"] foo = "foo_pkg.adapter:SPEC"``; the object may be an
:class:`AdapterSpec` or a callable returning one).

Built-ins are imported lazily, one module each (``esbhub.adapters.<name>:SPEC``), so a module
that is not present (an adapter still being written) is skipped rather than breaking the rest.
"""

from __future__ import annotations

import difflib
import importlib
import threading
from importlib.metadata import entry_points
from typing import Any

from esbhub.adapters.base import AdapterSpec
from esbhub.errors import ConfigError, ErrorDetail
from esbhub.logging import get_logger

ENTRY_POINT_GROUP = "esbhub.adapters"

BUILTINS: dict[str, str] = {
    "sql": "esbhub.adapters.sql:SPEC",
    "http": "esbhub.adapters.http:SPEC",
    "amqp": "esbhub.adapters.amqp:SPEC",
    "mqtt": "esbhub.adapters.mqtt:SPEC",
    "nats": "esbhub.adapters.nats:SPEC",
    "timer": "esbhub.adapters.timer:SPEC",
    # written by the SOAP/FTP/SNMP adapters helper; skipped while their modules do not exist
    "soap": "esbhub.adapters.soap:SPEC",
    "ftp": "esbhub.adapters.ftp:SPEC",
    "sftp": "esbhub.adapters.sftp:SPEC",
    "snmp": "esbhub.adapters.snmp:SPEC",
}

_lock = threading.Lock()
_cache: dict[str, AdapterSpec] | None = None
_log = get_logger("esbhub.adapters")


def did_you_mean(word: str, choices: list[str]) -> str | None:
    """The closest of ``choices`` to ``word`` (rapidfuzz when installed, difflib otherwise)."""
    if not choices:
        return None
    try:
        from rapidfuzz import fuzz, process

        hit = process.extractOne(word, choices, scorer=fuzz.WRatio, score_cutoff=60)
        return hit[0] if hit else None
    except ImportError:  # pragma: no cover - rapidfuzz is a dependency
        m = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
        return m[0] if m else None


def _load(target: str) -> Any:
    mod_name, _, attr = target.partition(":")
    mod = importlib.import_module(mod_name)
    return getattr(mod, attr or "SPEC")


def _as_spec(obj: Any, where: str) -> AdapterSpec:
    if callable(obj) and not isinstance(obj, AdapterSpec) and not isinstance(obj, type):
        obj = obj()
    if not isinstance(obj, AdapterSpec):
        raise ConfigError(f"{where} is not an esbhub AdapterSpec")
    return obj


def _discover() -> dict[str, AdapterSpec]:
    specs: dict[str, AdapterSpec] = {}
    for name, target in BUILTINS.items():
        mod_name = target.partition(":")[0]
        try:
            specs[name] = _as_spec(_load(target), target)
        except ModuleNotFoundError as exc:
            if exc.name != mod_name:
                raise
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = _as_spec(ep.load(), f"entry point {ep.value}")
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the others
            _log.warning("adapter_plugin_failed", entry_point=ep.value, error=type(exc).__name__, reason=str(exc)[:300])
            continue
        specs[ep.name] = spec
    return specs


def available_adapters(*, refresh: bool = False) -> dict[str, AdapterSpec]:
    """Every adapter this process can use, by name (sorted)."""
    global _cache
    with _lock:
        if _cache is None or refresh:
            _cache = dict(sorted(_discover().items()))
        return dict(_cache)


def register(spec: AdapterSpec) -> None:
    """Add an adapter at run time (tests, embedding applications)."""
    available_adapters()
    with _lock:
        assert _cache is not None
        _cache[spec.name] = spec


def get_adapter(name: str) -> AdapterSpec:
    """The adapter called ``name``; :class:`ConfigError` with a did-you-mean when unknown."""
    specs = available_adapters()
    spec = specs.get(name)
    if spec is not None:
        return spec
    sugg = did_you_mean(name, list(specs))
    hint = f"did you mean '{sugg}'?" if sugg else f"known adapters: {', '.join(specs)}"
    raise ConfigError(
        f"unknown adapter '{name}'" + (f" (did you mean '{sugg}'?)" if sugg else ""),
        details=[ErrorDetail(loc="adapter", msg=f"unknown adapter '{name}'", type="unknown_adapter", hint=hint)],
    )

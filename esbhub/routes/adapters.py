"""The routes' view of adapters: built-in sinks plus ``esbhub.adapters.registry`` when present.

Built-ins (always there, no registry needed):
  * ``bus``    — publish to the bus; config ``{topic: ...}`` (same as a ``topic:`` sink);
  * ``log``    — log the message's ids (never the payload); for demos;
  * ``memory`` — append to an in-process list (``memory_sink(name)``); tests and ``routes try``.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from esbhub.bus.envelope import Envelope
from esbhub.logging import get_logger

log = get_logger("esbhub.routes")


class BusSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str = Field(min_length=1, description="Routing key to publish with.")


class LogSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: str = Field(default="route_message_logged", description="Log event name.")


class MemorySinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="default", description="Name of the in-process collector.")


_memory: dict[str, list[Envelope]] = defaultdict(list)
_memory_lock = threading.Lock()


def memory_sink(name: str) -> list[Envelope]:
    """The list the ``memory`` sink called ``name`` appends to (shared in this process)."""
    with _memory_lock:
        return _memory[name]


def clear_memory_sinks() -> None:
    with _memory_lock:
        for v in _memory.values():
            v.clear()


class MemorySink:
    def __init__(self, config: MemorySinkConfig) -> None:
        self.name = config.name

    def send(self, env: Envelope) -> dict[str, Any] | None:
        with _memory_lock:
            _memory[self.name].append(env)
        return {"stored": True}

    def health(self) -> dict[str, Any]:
        return {"ok": True}


class LogSink:
    def __init__(self, config: LogSinkConfig) -> None:
        self.event = config.event

    def send(self, env: Envelope) -> dict[str, Any] | None:
        log.info(self.event, **env.log_fields())
        return None

    def health(self) -> dict[str, Any]:
        return {"ok": True}


@dataclass
class AdapterInfo:
    name: str
    config_model: type[BaseModel] | None
    source: bool
    sink: bool
    spec: Any = None
    source_model: type[BaseModel] | None = None

    def model_for(self, kind: str) -> type[BaseModel] | None:
        if self.spec is not None and hasattr(self.spec, "config_for"):
            return self.spec.config_for(kind)
        return self.source_model if kind == "source" and self.source_model else self.config_model


BUILTIN: dict[str, AdapterInfo] = {
    "bus": AdapterInfo("bus", BusSinkConfig, source=False, sink=True),
    "log": AdapterInfo("log", LogSinkConfig, source=False, sink=True),
    "memory": AdapterInfo("memory", MemorySinkConfig, source=False, sink=True),
}


def available() -> dict[str, AdapterInfo]:
    """Every adapter a route may name: built-ins, then the adapter registry's (if installed)."""
    out = dict(BUILTIN)
    try:
        from esbhub.adapters.registry import available_adapters  # type: ignore[import-not-found]
    except ImportError:
        return out
    try:
        specs = available_adapters()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break lint of every route
        log.warning("adapter_registry_failed", error=str(exc))
        return out
    for name, spec in specs.items():
        if name in out:
            continue
        out[name] = AdapterInfo(
            name=name,
            config_model=getattr(spec, "config_model", None),
            source=getattr(spec, "source_cls", None) is not None,
            sink=getattr(spec, "sink_cls", None) is not None,
            spec=spec,
        )
    return out


def build_sink(name: str, config: dict[str, Any]) -> Any:
    """An object with ``send(envelope)`` for a non-bus adapter sink."""
    info = available().get(name)
    if info is None or not info.sink:
        raise KeyError(name)
    if name in BUILTIN:
        cfg = info.config_model.model_validate(config) if info.config_model else config
        return MemorySink(cfg) if name == "memory" else LogSink(cfg) if name == "log" else None
    return info.spec.sink(config, name=name)


def build_source(name: str, config: dict[str, Any]) -> Any:
    info = available().get(name)
    if info is None or not info.source:
        raise KeyError(name)
    return info.spec.source(config, name=name)

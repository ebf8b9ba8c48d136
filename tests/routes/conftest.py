from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from esbhub.bus.envelope import Envelope
from esbhub.routes.adapters import clear_memory_sinks
from esbhub.routes.loader import load_text
from esbhub.routes.models import Route

EXAMPLES = Path(__file__).resolve().parents[2] / "routes" / "examples"


def route_of(text: str) -> Route:
    res = load_text(text, "t.yaml")
    assert res.ok, [str(e) for e in res.errors]
    return res.routes[0].route


def env(type: str = "party.v1", payload: object = None, **kw: object) -> Envelope:
    return Envelope.create(type, payload if payload is not None else {}, source="test", **kw)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _clean_memory() -> Iterator[None]:
    clear_memory_sinks()
    yield
    clear_memory_sinks()

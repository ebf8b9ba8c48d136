"""Fixtures shared by the bus tests that run a Worker on each real broker backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from esbhub.bus.broker import Broker, create_broker
from esbhub.bus.store import BusStore
from esbhub.bus.worker import queue_for
from esbhub.db import upgrade


@pytest.fixture
def broker(broker_url: str, unique: str) -> Iterator[Broker]:
    rabbit = broker_url.startswith("amqp")
    kw = {"unrouted_queue": f"{unique}.unrouted"} if rabbit else {}
    b = create_broker(broker_url, exchange=unique, **kw)
    b.connect()
    yield b
    b.close()
    if rabbit:
        c = create_broker(broker_url, exchange=unique, unrouted_queue=f"{unique}.unrouted")
        for q in (queue_for(unique), f"{unique}.unrouted"):
            c.delete_queue(q)
        c._control(lambda ch: (ch.exchange_delete(unique), ch.exchange_delete(f"{unique}.unrouted")), what="cleanup")
        c.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BusStore]:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(url)
    s = BusStore(url)
    yield s
    s.close()


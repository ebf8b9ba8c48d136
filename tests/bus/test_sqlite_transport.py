"""The esbsqlite:// kombu transport: leases instead of deletes, bindings shared by connections."""

from __future__ import annotations

from pathlib import Path

import kombu
import pytest

import esbhub.bus.sqlite_transport  # noqa: F401 — registers esbsqlite://


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"esbsqlite:///{tmp_path / 'k.db'}"


EX = kombu.Exchange("hub", type="topic", durable=True)
Q = kombu.Queue("kq", exchange=EX, routing_key="party.*", durable=True)


def test_binding_from_one_connection_routes_publishes_of_another(url: str) -> None:
    with kombu.Connection(url) as a:
        Q(a.default_channel).declare()
    with kombu.Connection(url) as b:  # knows nothing of the binding in memory
        kombu.Producer(b.default_channel, exchange=EX).publish({"n": 1}, routing_key="party.v1")
        kombu.Producer(b.default_channel, exchange=EX).publish({"n": 2}, routing_key="alarm.v1")
    with kombu.Connection(url) as c:
        m = Q(c.default_channel).get()
        assert m is not None and m.payload == {"n": 1}
        m.ack()
        un = kombu.Queue("esbhub.unrouted")(c.default_channel).get()
        assert un is not None and un.payload == {"n": 2}  # unrouted is kept, not dropped
        un.ack()


def test_consumer_acks_remove_and_unacked_return_redelivered_on_close(url: str) -> None:
    with kombu.Connection(url) as c:
        Q(c.default_channel).declare()
        p = kombu.Producer(c.default_channel, exchange=EX)
        for i in range(10):
            p.publish({"i": i}, routing_key="party.v1")
        got: list[int] = []

        def cb(body: dict, m: kombu.Message) -> None:
            got.append(body["i"])
            if body["i"] < 7:
                m.ack()

        with kombu.Consumer(c, [Q], callbacks=[cb], prefetch_count=4):
            while len(got) < 10:
                c.drain_events(timeout=5)
    assert got == list(range(10))
    with kombu.Connection(url) as c:
        ch = c.default_channel
        assert ch._size("kq") == 3  # exactly the unacked ones, not re-inserted copies
        rest = [Q(ch).get() for _ in range(3)]
        assert [m.payload["i"] for m in rest if m] == [7, 8, 9]
        assert all(m.delivery_info["redelivered"] for m in rest if m)
        for m in rest:
            assert m is not None
            m.ack()
        assert ch._size("kq") == 0


def test_requeue_gives_the_lease_back(url: str) -> None:
    with kombu.Connection(url) as c:
        Q(c.default_channel).declare()
        kombu.Producer(c.default_channel, exchange=EX).publish({"x": 1}, routing_key="party.v1")
        m = Q(c.default_channel).get()
        assert m is not None and not m.delivery_info["redelivered"]
        m.requeue()
        m2 = Q(c.default_channel).get()
        assert m2 is not None and m2.payload == {"x": 1} and m2.delivery_info["redelivered"]
        m2.reject()
        assert c.default_channel._size("kq") == 0

"""THE broker behaviour suite: the delivery contract of esbhub.bus.broker, run unchanged over
both backends (``broker_url`` params: embedded SQLite file, RabbitMQ)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from waiting import wait_for

from esbhub.bus.broker import UNROUTED_QUEUE, Broker, Delivery, create_broker
from esbhub.bus.envelope import Envelope


def env(i: int = 0, type: str = "party.v1") -> Envelope:
    return Envelope.create(type, {"n": i}, source="behaviour")


@pytest.fixture
def broker(broker_url: str, unique: str) -> Iterator[Broker]:
    rabbit = broker_url.startswith("amqp")
    kw = {"unrouted_queue": f"{unique}.unrouted", "connection_name": unique} if rabbit else {}
    b = create_broker(broker_url, exchange=unique, **kw)
    b.connect()
    b.created = []  # type: ignore[attr-defined]
    yield b
    b.close()
    if rabbit:  # leave nothing behind on the shared server
        c = create_broker(broker_url, exchange=unique, unrouted_queue=f"{unique}.unrouted")
        for q in [*b.created, f"{unique}.unrouted"]:  # type: ignore[attr-defined]
            c.delete_queue(q)
        c._control(lambda ch: (ch.exchange_delete(unique), ch.exchange_delete(f"{unique}.unrouted")), what="cleanup")
        c.close()


def unrouted(b: Broker) -> str:
    return getattr(getattr(b, "options", None), "unrouted_queue", None) or UNROUTED_QUEUE


def queue(b: Broker, name: str, keys: tuple[str, ...] = ("party.v1",)) -> str:
    b.declare_queue(name, keys)
    b.created.append(name)  # type: ignore[attr-defined]
    return name


class Consumer:
    """Runs broker.consume on a thread; collects deliveries; acks them unless told not to."""

    def __init__(self, b: Broker, q: str, *, ack: bool = True, prefetch: int = 64) -> None:
        self.got: list[Delivery] = []
        self.stop = threading.Event()
        self.ack = ack
        self._lock = threading.Lock()
        self.t = threading.Thread(target=b.consume, args=(q, self._cb), kwargs={"prefetch": prefetch, "stop": self.stop,
                                                                                "idle_timeout": 0.2})
        self.t.start()

    def _cb(self, d: Delivery) -> None:
        with self._lock:
            self.got.append(d)
        if self.ack:
            d.ack()

    def close(self) -> None:
        self.stop.set()
        self.t.join(15)
        assert not self.t.is_alive()


def test_published_message_is_consumed_and_removed_only_by_ack(broker, unique):
    q = queue(broker, f"{unique}.q")
    e = env(1)
    broker.publish(e)
    d = broker.get(q, timeout=10)
    assert d is not None and d.envelope == e and d.queue == q and not d.redelivered
    assert broker.queue_depth(q) == 1  # leased, not gone
    d.ack()
    wait_for(lambda: broker.queue_depth(q) == 0, what="removed after ack")
    assert broker.get(q, timeout=0.2) is None


def test_topic_patterns_route_copies_to_every_bound_queue(broker, unique):
    a = queue(broker, f"{unique}.a", ("party.*",))
    b = queue(broker, f"{unique}.b", ("#",))
    c = queue(broker, f"{unique}.c", ("bill.v1",))
    broker.publish(env(2))
    for q in (a, b):
        d = broker.get(q, timeout=10)
        assert d is not None and d.envelope.payload == {"n": 2}
        d.ack()
    assert broker.get(c, timeout=0.2) is None


def test_message_nobody_is_bound_to_lands_in_unrouted(broker, unique):
    queue(broker, f"{unique}.q", ("party.v1",))
    e = env(3, type="alarm.v1")
    broker.publish(e)
    d = broker.get(unrouted(broker), timeout=10)
    assert d is not None and d.envelope.id == e.id
    d.ack()


def test_delayed_message_is_invisible_until_its_delay_passed(broker, unique):
    q = queue(broker, f"{unique}.q")
    e = env(4)
    broker.publish(e, queue=q, delay=1.0)
    assert broker.get(q, timeout=0) is None
    assert broker.queue_depth(q) == 1  # waiting, counted
    d = broker.get(q, timeout=15)
    assert d is not None and d.envelope.id == e.id
    d.ack()


def test_rejected_with_requeue_comes_back_flagged_redelivered(broker, unique):
    q = queue(broker, f"{unique}.q")
    e = env(5)
    broker.publish(e)
    d = broker.get(q, timeout=10)
    d.reject(requeue=True)
    d2 = broker.get(q, timeout=10)
    assert d2 is not None and d2.envelope.id == e.id and d2.redelivered
    d2.ack()


def test_unacked_message_is_redelivered_after_its_consumer_stops(broker, unique):
    q = queue(broker, f"{unique}.q")
    broker.publish_many([env(i) for i in range(3)])
    c = Consumer(broker, q, ack=False, prefetch=10)
    wait_for(lambda: len(c.got) == 3, timeout=15, what="3 deliveries")
    c.got[0].ack()
    c.close()
    again = Consumer(broker, q, ack=True)
    wait_for(lambda: len(again.got) == 2, timeout=20, what="redeliveries")
    again.close()
    assert {d.envelope.payload["n"] for d in again.got} == {1, 2}
    assert all(d.redelivered for d in again.got)
    wait_for(lambda: broker.queue_depth(q) == 0, what="drained")


def test_prefetch_bounds_unacked_deliveries(broker, unique):
    q = queue(broker, f"{unique}.q")
    broker.publish_many([env(i) for i in range(10)])
    c = Consumer(broker, q, ack=False, prefetch=3)
    max_out = 0
    acked = 0
    while acked < 10:
        wait_for(lambda a=acked: len(c.got) - a == min(3, 10 - a), timeout=15, what="prefetch window full")
        max_out = max(max_out, len(c.got) - acked)
        c.got[acked].ack()  # from another thread than the consumer's
        acked += 1
    c.close()
    assert max_out == 3 and len(c.got) == 10
    wait_for(lambda: broker.queue_depth(q) == 0, what="drained")


def test_reply_to_round_trip(broker, unique):
    q = queue(broker, f"{unique}.q")
    rq = queue(broker, f"{unique}.reply", ())
    req = env(6)
    broker.publish(req, reply_to=rq)
    d = broker.get(q, timeout=10)
    assert d.reply_to == rq
    broker.publish(req.derive("party.v1", {"answer": 42}), queue=d.reply_to)
    d.ack()
    r = broker.get(rq, timeout=10)
    assert r is not None and r.envelope.causation_id == req.id and r.envelope.payload == {"answer": 42}
    r.ack()


def test_concurrent_publishers_and_competing_consumers_deliver_each_message_once(broker, unique):
    q = queue(broker, f"{unique}.q")
    envs = [env(i) for i in range(800)]
    threads = [threading.Thread(target=lambda k=k: [broker.publish_many(envs[j:j + 20]) for j in range(k * 200, k * 200 + 200, 20)])
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # The first consumer holds its prefetch unacked, so the second must compete for the rest:
    # both take part whatever the scheduling, and prefetch bounds what one consumer holds.
    holder = Consumer(broker, q, prefetch=32, ack=False)
    wait_for(lambda: len(holder.got) == 32, timeout=60, what="the first consumer filled its prefetch")
    other = Consumer(broker, q, prefetch=32)
    wait_for(lambda: len(other.got) >= 800 - 32, timeout=60, what="the second consumer took the rest")
    assert len(holder.got) == 32
    for d in holder.got:
        d.ack()
    holder.close()
    other.close()
    ids = [d.envelope.id for c in (holder, other) for d in c.got]
    assert len(ids) == 800 and set(ids) == {e.id for e in envs}

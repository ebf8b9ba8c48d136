"""EmbeddedBroker: the Broker contract on one SQLite file, across threads and broker instances."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from waiting import wait_for

from esbhub.bus.broker import UNROUTED_QUEUE, Delivery, create_broker
from esbhub.bus.embedded import EmbeddedBroker
from esbhub.bus.envelope import Envelope
from esbhub.errors import BrokerUnavailable


def env(i: int = 0, type: str = "party.v1") -> Envelope:
    return Envelope.create(type, {"i": i}, source="test")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture
def broker(url: str) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(url)
    b.connect()
    yield b
    b.close()


class Consumer:
    """consume() in a thread, collecting deliveries; ack by default."""

    def __init__(self, broker: EmbeddedBroker, queue: str, *, prefetch: int = 64, ack: bool = True,
                 on: Callable[[Delivery], None] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()

        def cb(d: Delivery) -> None:
            with self._lock:
                self.deliveries.append(d)
            if on is not None:
                on(d)
            elif ack:
                d.ack()

        self.thread = threading.Thread(
            target=broker.consume, args=(queue, cb), kwargs={"prefetch": prefetch, "stop": self.stop}, daemon=True
        )
        self.thread.start()

    @property
    def ids(self) -> list[str]:
        with self._lock:
            return [d.envelope.id for d in self.deliveries]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_create_broker_picks_embedded_for_sqlite_url(url: str) -> None:
    b = create_broker(url)
    assert isinstance(b, EmbeddedBroker)


def test_url_options_are_validated(tmp_path: Path) -> None:
    b = EmbeddedBroker(f"sqlite:///{tmp_path / 'x.db'}?synchronous=full&lease_timeout=5")
    assert b.options.synchronous == "FULL" and b.options.lease_timeout == 5
    with pytest.raises(ValueError):
        EmbeddedBroker(f"sqlite:///{tmp_path / 'x.db'}?no_such_option=1")
    with pytest.raises(ValueError):
        EmbeddedBroker("sqlite:///:memory:")


def test_published_message_is_consumed_and_removed_only_by_ack(broker: EmbeddedBroker) -> None:
    broker.declare_queue("q", ["party.v1"])
    e = env()
    broker.publish(e)
    assert broker.queue_depth("q") == 1
    d = broker.get("q", timeout=2)
    assert d is not None and d.envelope == e and d.queue == "q" and not d.redelivered
    assert broker.queue_depth("q") == 1  # leased, not removed
    d.ack()
    assert broker.queue_depth("q") == 0


def test_consume_acks_every_message_in_order(broker: EmbeddedBroker) -> None:
    broker.declare_queue("q", ["party.*"])
    envs = [env(i) for i in range(300)]
    broker.publish_many(envs)
    c = Consumer(broker, "q")
    wait_for(lambda: len(c.ids) == 300, what="300 deliveries")
    c.close()
    assert c.ids == [e.id for e in envs]
    assert broker.queue_depth("q") == 0


def test_binding_declared_by_one_instance_routes_publishes_of_another(url: str) -> None:
    a, b = EmbeddedBroker(url), EmbeddedBroker(url)  # two "processes" on one file
    a.connect()
    b.connect()
    try:
        b.publish(env(1, "bill.v1"))  # nobody bound yet: unrouted, not lost
        a.declare_queue("bills", ["bill.*"])
        a.declare_queue("all", ["#"])
        b.publish(env(2, "bill.v1"))
        b.publish(env(3, "alarm.v1"))
        assert a.queue_depth("bills") == 1
        assert a.queue_depth("all") == 2  # fan-out: a copy in each bound queue
        assert a.queue_depth(UNROUTED_QUEUE) == 1
        a.delete_queue("all")
        b.publish(env(4, "alarm.v1"))
        assert a.queue_depth(UNROUTED_QUEUE) == 2
    finally:
        a.close()
        b.close()


def test_unrouted_message_lands_in_unrouted_queue(broker: EmbeddedBroker) -> None:
    broker.declare_queue("q", ["party.v1"])
    e = env(0, "payment.v1")
    broker.publish(e)
    d = broker.get(UNROUTED_QUEUE, timeout=1)
    assert d is not None and d.envelope.id == e.id
    d.ack()


def test_direct_publish_to_missing_queue_is_kept_in_unrouted(broker: EmbeddedBroker) -> None:
    broker.publish(env(), queue="never-declared")
    assert broker.queue_depth(UNROUTED_QUEUE) == 1


def test_explicit_routing_key_overrides_type(broker: EmbeddedBroker) -> None:
    broker.declare_queue("golden", ["party.golden.*"])
    broker.publish(env(), routing_key="party.golden.created")
    assert broker.queue_depth("golden") == 1


def test_delayed_message_is_invisible_until_due(broker: EmbeddedBroker) -> None:
    broker.declare_queue("q")
    broker.publish(env(), queue="q", delay=0.4)
    t0 = time.monotonic()
    assert broker.get("q", timeout=0) is None
    assert broker.queue_depth("q") == 1  # delayed counts
    d = broker.get("q", timeout=5)
    assert d is not None and time.monotonic() - t0 >= 0.35
    d.ack()


def test_reply_to_is_carried(broker: EmbeddedBroker) -> None:
    broker.declare_queue("q", ["party.v1"])
    broker.declare_queue("replies")
    broker.publish(env(), reply_to="replies")
    d = broker.get("q", timeout=1)
    assert d is not None and d.reply_to == "replies"
    broker.publish(d.envelope.derive("party.v1", {"ok": True}), queue=d.reply_to)
    d.ack()
    r = broker.get("replies", timeout=1)
    assert r is not None and r.envelope.causation_id == d.envelope.id and r.reply_to is None


def test_reject_with_requeue_redelivers_with_flag(broker: EmbeddedBroker) -> None:
    broker.declare_queue("q", ["party.v1"])
    e = env()
    broker.publish(e)
    d = broker.get("q", timeout=1)
    assert d is not None
    d.reject(requeue=True)
    d2 = broker.get("q", timeout=1)
    assert d2 is not None and d2.envelope.id == e.id and d2.redelivered
    d2.reject(requeue=False)
    assert broker.queue_depth("q") == 0


def test_callback_exception_requeues_and_consumer_goes_on(broker: EmbeddedBroker) -> None:
    broker.declare_queue("q", ["party.v1"])
    e = env()
    broker.publish(e)
    seen: list[bool] = []

    def on(d: Delivery) -> None:
        seen.append(d.redelivered)
        if len(seen) == 1:
            raise RuntimeError("handler bug")
        d.ack()

    c = Consumer(broker, "q", on=on)
    wait_for(lambda: len(seen) == 2, what="redelivery after exception")
    c.close()
    assert seen == [False, True]
    assert broker.queue_depth("q") == 0


def test_prefetch_bounds_unacked_deliveries(broker: EmbeddedBroker) -> None:
    broker.declare_queue("q", ["party.v1"])
    broker.publish_many([env(i) for i in range(50)])
    idle_polls = [0]
    real_wait = broker.store.wait_changed

    def counting_wait(generation: int, timeout: float) -> None:
        idle_polls[0] += 1
        real_wait(generation, timeout)

    broker.store.wait_changed = counting_wait  # type: ignore[method-assign]
    c = Consumer(broker, "q", prefetch=5, ack=False)
    wait_for(lambda: len(c.ids) == 5, what="5 deliveries")
    # the consumer keeps polling; it must not take more while 5 are unsettled
    polls = idle_polls[0]
    wait_for(lambda: idle_polls[0] >= polls + 10, what="10 more consumer polls")
    assert len(c.ids) == 5
    leased = broker.store.depth_detail("q")["leased"]
    assert leased == 5
    c.deliveries[0].ack()  # acking from another thread frees one slot
    wait_for(lambda: len(c.ids) == 6, what="6th delivery after one ack")
    c.close()
    assert broker.queue_depth("q") == 49  # unsettled ones went back


def test_stopped_consumer_gives_unacked_back_as_redelivered(broker: EmbeddedBroker) -> None:
    broker.declare_queue("q", ["party.v1"])
    broker.publish_many([env(i) for i in range(3)])
    c = Consumer(broker, "q", prefetch=2, ack=False)
    wait_for(lambda: len(c.ids) == 2, what="2 deliveries")
    c.close()
    got = [broker.get("q", timeout=1) for _ in range(3)]
    assert all(g is not None for g in got)
    assert [g.redelivered for g in got if g] == [True, True, False]


def test_close_releases_leases_of_get(url: str) -> None:
    a = EmbeddedBroker(url)
    a.declare_queue("q", ["party.v1"])
    a.publish(env())
    assert a.get("q", timeout=1) is not None
    a.close()
    b = EmbeddedBroker(url)
    d = b.get("q", timeout=1)
    assert d is not None and d.redelivered
    d.ack()
    b.close()


def test_competing_consumers_get_disjoint_messages(url: str) -> None:
    a, b = EmbeddedBroker(url), EmbeddedBroker(url)
    a.declare_queue("q", ["party.v1"])
    ca, cb = Consumer(a, "q", prefetch=8), Consumer(b, "q", prefetch=8)
    envs = [env(i) for i in range(2000)]
    for i in range(0, len(envs), 50):
        a.publish_many(envs[i : i + 50])
    wait_for(lambda: len(ca.ids) + len(cb.ids) >= 2000, what="2000 deliveries")
    ca.close()
    cb.close()
    assert not set(ca.ids) & set(cb.ids)
    assert sorted(ca.ids + cb.ids) == sorted(e.id for e in envs)
    assert ca.ids and cb.ids
    assert a.queue_depth("q") == 0
    a.close()
    b.close()


def test_publish_from_20_threads_at_once_stores_all(broker: EmbeddedBroker) -> None:
    broker.declare_queue("q", ["party.v1"])
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []

    def pub(k: int) -> None:
        try:
            barrier.wait(5)
            for i in range(50):
                broker.publish(env(k * 1000 + i))
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=pub, args=(k,)) for k in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not errors
    assert broker.queue_depth("q") == 1000


def test_publish_on_unwritable_file_raises_broker_unavailable(tmp_path: Path) -> None:
    b = EmbeddedBroker(f"sqlite:///{tmp_path / 'b.db'}", busy_timeout=0.2)
    b.declare_queue("q", ["party.v1"])
    other = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        with pytest.raises(BrokerUnavailable):
            b.publish(env())
    finally:
        other.execute("ROLLBACK")
        other.close()
    b.publish(env())
    assert b.queue_depth("q") == 1
    b.close()


def test_health_reports_file_and_queues(broker: EmbeddedBroker) -> None:
    broker.declare_queue("q")
    h = broker.health()
    assert h["ok"] and h["backend"] == "embedded" and h["queues"] == 2
    assert h["path"].endswith("broker.db") and h["wal_bytes"] >= 0


def test_queue_depth_of_unknown_queue_is_zero(broker: EmbeddedBroker) -> None:
    assert broker.queue_depth("nope") == 0


def _fake_owner(broker: EmbeddedBroker, owner: str, host: str, pid: int, started: float, heartbeat: float) -> None:
    with broker.store.write() as c:
        c.execute("INSERT INTO owners VALUES (?, ?, ?, ?, ?)", (owner, host, pid, started, heartbeat))


def test_leases_of_silent_owner_on_another_host_come_back_after_lease_timeout(url: str) -> None:
    b = EmbeddedBroker(url, lease_timeout=0.5)
    b.declare_queue("q", ["party.v1"])
    b.publish(env())
    now = time.time()
    _fake_owner(b, "elsewhere:1:x", "another-host", 1, now, now)
    assert b.store.lease("q", "elsewhere:1:x", 10)  # that host took it, then went silent
    assert b.store.recover() == 0  # heartbeat still fresh: its pid cannot be checked from here
    assert b.get("q", timeout=0) is None
    wait_for(lambda: b.store.recover() == 1, timeout=5, what="stale heartbeat recovered")
    d = b.get("q", timeout=1)
    assert d is not None and d.redelivered
    d.ack()
    b.close()


def test_leases_of_reused_pid_are_recovered_at_once(broker: EmbeddedBroker) -> None:
    import os

    broker.declare_queue("q", ["party.v1"])
    broker.publish(env())
    from esbhub.bus.sqlite_transport import HOSTNAME

    # same host, a pid that runs (ours) but started at another time: the owner is gone
    _fake_owner(broker, "ghost", HOSTNAME, os.getpid(), 12345.0, time.time())
    assert broker.store.lease("q", "ghost", 10)
    assert broker.store.recover() == 1
    d = broker.get("q", timeout=1)
    assert d is not None and d.redelivered
    d.ack()


def test_consumer_declared_dead_gets_a_new_identity_and_goes_on(broker: EmbeddedBroker) -> None:
    broker.declare_queue("q", ["party.v1"])
    c = Consumer(broker, "q", prefetch=4)
    broker.publish(env(1))
    wait_for(lambda: len(c.ids) == 1, what="first delivery")
    with broker.store.write() as conn:  # as a recovery pass in another process would after a freeze
        conn.execute("DELETE FROM owners")
    broker.publish(env(2))
    wait_for(lambda: len(c.ids) == 2, what="delivery after losing the lease identity")
    c.close()
    assert broker.queue_depth("q") == 0


def test_ack_after_consume_returned_still_removes_the_message(broker: EmbeddedBroker) -> None:
    broker.declare_queue("q", ["party.v1"])
    broker.publish(env())
    c = Consumer(broker, "q", ack=False)
    wait_for(lambda: len(c.ids) == 1, what="delivery")
    c.close()  # the unacked message went back to the queue
    assert broker.queue_depth("q") == 1
    c.deliveries[0].ack()  # a handler finishing late: processed, so it must not come again
    assert broker.queue_depth("q") == 0


def test_close_with_running_consumer_keeps_its_acks(url: str) -> None:
    b = EmbeddedBroker(url)
    b.declare_queue("q", ["party.v1"])
    b.publish_many([env(i) for i in range(100)])
    seen: list[int] = []

    def on(d: Delivery) -> None:
        d.ack()
        seen.append(1)
        if len(seen) == 100:  # still holding unflushed acks when close() begins
            wait_for(b._closed.is_set, what="close() started")

    c = Consumer(b, "q", prefetch=100, on=on)
    wait_for(lambda: len(seen) == 100, what="100 acked deliveries")
    b.close()  # consumer still running: it must flush its acks before the leases are released
    c.thread.join(10)
    assert not c.thread.is_alive()
    b2 = EmbeddedBroker(url)
    assert b2.queue_depth("q") == 0
    b2.close()


def test_a_late_reject_does_not_unlease_a_row_another_consumer_holds_now(broker: EmbeddedBroker, url: str) -> None:
    broker.declare_queue("q", ["party.v1"])
    broker.publish(env(1))
    first = Consumer(broker, "q", ack=False)
    wait_for(lambda: len(first.deliveries) == 1, what="first delivery")
    first.close()  # leaving consume() gives its unsettled row back
    second = Consumer(broker, "q", ack=False)
    wait_for(lambda: len(second.deliveries) == 1, what="redelivery to the second consumer")
    first.deliveries[0].reject(True)  # the first consumer's late reject
    with sqlite3.connect(url.removeprefix("sqlite:///")) as c:
        (owner,) = c.execute("SELECT owner FROM messages").fetchone()
    assert owner is not None  # still leased by the second consumer: not handed out a third time
    second.deliveries[0].ack()
    wait_for(lambda: broker.queue_depth("q") == 0, what="the ack removing the row")
    second.close()

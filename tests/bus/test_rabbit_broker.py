"""RabbitBroker against the real RabbitMQ on 127.0.0.1:5672: topology, pipelined confirms,
unrouted capture, tiered delays, ack/reject, prefetch bound, reconnect, secrets.

Every test uses its own exchange, queues and unrouted queue (fixture ``unique``) and deletes
them afterwards, so it never touches another helper's messages."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from amqp.exceptions import PreconditionFailed
from waiting import wait_for

from esbhub.bus.envelope import Envelope
from esbhub.bus.rabbit import DELAY_TIERS_MS, RabbitBroker, delay_tier_ms, parse_amqp_url
from esbhub.errors import BrokerUnavailable, ConfigError

pytestmark = pytest.mark.rabbitmq


def env(i: int = 0, type: str = "party.v1") -> Envelope:
    return Envelope.create(type, {"n": i}, source="test")


def ready_count(b: RabbitBroker, queue: str) -> int:
    """Ready messages as RabbitMQ counts them (no delay queues, no local unacked)."""
    return b._control(lambda ch: ch.queue_declare(queue, passive=True).message_count, what="test")


@pytest.fixture
def broker(rabbit_url: str, unique: str) -> Iterator[RabbitBroker]:
    b = RabbitBroker(rabbit_url, exchange=unique, unrouted_queue=f"{unique}.unrouted", connection_name=unique,
                     publish_timeout=10)
    b.connect()
    created: list[str] = []
    b.created = created  # type: ignore[attr-defined]
    yield b
    b.close()
    cleanup = RabbitBroker(rabbit_url, exchange=unique, unrouted_queue=f"{unique}.unrouted")
    for q in [*created, f"{unique}.unrouted"]:
        cleanup.delete_queue(q)
    cleanup._control(lambda ch: (ch.exchange_delete(unique), ch.exchange_delete(f"{unique}.unrouted")), what="cleanup")
    cleanup.close()


def make_queue(b: RabbitBroker, name: str, keys: tuple[str, ...] = ("party.v1",)) -> str:
    b.declare_queue(name, keys)
    b.created.append(name)  # type: ignore[attr-defined]
    return name


def drain(b: RabbitBroker, queue: str, expect: int, timeout: float = 20.0, prefetch: int = 200) -> list[Envelope]:
    got: list[Envelope] = []
    stop = threading.Event()

    def cb(d) -> None:
        got.append(d.envelope)
        d.ack()
        if len(got) >= expect:
            stop.set()

    t = threading.Thread(target=b.consume, args=(queue, cb), kwargs={"prefetch": prefetch, "stop": stop})
    t.start()
    stop.wait(timeout)
    stop.set()
    t.join(10)
    return got


def test_a_batch_is_published_with_one_pipelined_confirm_round_and_every_message_is_stored(broker, unique):
    q = make_queue(broker, f"{unique}.q")
    envs = [env(i) for i in range(2000)]
    before = broker.stats["publish_batches"]
    broker.publish_many(envs)
    assert broker.stats["publish_batches"] - before == 1  # written in one go, no wait per message
    assert broker.stats["max_in_flight"] > 1  # confirms overlapped the writes
    assert ready_count(broker, q) == 2000
    got = drain(broker, q, 2000)
    assert sorted(e.id for e in got) == sorted(e.id for e in envs)
    assert got[0].payload == {"n": 0}


def test_single_publishes_from_many_threads_share_the_confirm_window(broker, unique):
    q = make_queue(broker, f"{unique}.q")
    per_thread, threads = 150, 8
    ids: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(threads)

    def run() -> None:
        go.wait()
        for i in range(per_thread):
            e = env(i)
            broker.publish(e)
            with lock:
                ids.append(e.id)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert len(ids) == per_thread * threads
    # each caller waits for its own confirm, yet the callers' messages were in flight together
    assert broker.stats["max_in_flight"] > 1
    assert ready_count(broker, q) == len(ids)
    assert sorted(e.id for e in drain(broker, q, len(ids))) == sorted(ids)


def test_message_with_no_binding_goes_to_unrouted_queue(broker, unique):
    make_queue(broker, f"{unique}.q", ("party.v1",))
    e = env(type="bill.v1")
    broker.publish(e)
    d = broker.get(f"{unique}.unrouted", timeout=5)
    assert d is not None and d.envelope.id == e.id
    d.ack()
    assert broker.queue_depth(f"{unique}.q") == 0


def test_publish_to_missing_queue_is_returned_and_kept_in_unrouted(broker, unique):
    e = env()
    broker.publish(e, queue=f"{unique}.nosuchqueue")
    assert broker.stats["publish_returned"] == 1
    d = broker.get(f"{unique}.unrouted", timeout=5)
    assert d is not None and d.envelope.id == e.id
    d.ack()


def test_undecodable_body_is_moved_to_unrouted_and_consumer_goes_on(broker, unique):
    q = make_queue(broker, f"{unique}.q")
    broker.publish_raw(b"not an envelope", queue=q)
    good = env()
    broker.publish(good, queue=q)
    got = drain(broker, q, 1)
    assert [e.id for e in got] == [good.id]
    wait_for(lambda: ready_count(broker, f"{unique}.unrouted") == 1, what="quarantined body")
    assert broker.queue_depth(q) == 0


def test_delayed_message_is_invisible_until_its_tier_then_delivered_to_the_queue(broker, unique):
    q = make_queue(broker, f"{unique}.q")
    e = env()
    broker.publish(e, queue=q, delay=1.0)
    assert broker.get(q) is None  # not visible yet
    assert broker.queue_depth(q) == 1  # but counted (in its delay queue)
    d = broker.get(q, timeout=10)
    assert d is not None and d.envelope.id == e.id
    d.ack()
    assert broker.queue_depth(q) == 0


def test_short_delay_is_not_held_back_by_a_longer_one(broker, unique):
    q = make_queue(broker, f"{unique}.q")
    slow, fast = env(1), env(2)
    broker.publish(slow, queue=q, delay=60)
    broker.publish(fast, queue=q, delay=0.2)
    d = broker.get(q, timeout=10)
    assert d is not None and d.envelope.id == fast.id
    d.ack()
    assert broker.queue_depth(q) == 1  # the slow one still waits


def test_delayed_publish_through_the_exchange_is_routed_by_its_key(broker, unique):
    q = make_queue(broker, f"{unique}.q", ("party.*",))
    e = env()
    broker.publish(e, delay=0.1)
    d = broker.get(q, timeout=10)
    assert d is not None and d.envelope.id == e.id
    d.ack()
    name = f"esbhub.delay.x.{unique}.party.v1.100ms"
    broker._control(lambda ch: ch.queue_delete(name), what="cleanup")


def test_delay_tiers_round_to_the_nearest_tier_within_22_percent():
    assert delay_tier_ms(0.001) == 100
    assert delay_tier_ms(1.0) == 1000
    assert delay_tier_ms(10**7) == DELAY_TIERS_MS[-1]
    for ms in range(100, 86_400_000, 7919):
        tier = delay_tier_ms(ms / 1000)
        assert 1 / 1.225 <= tier / ms <= 1.225, ms


def test_rejected_with_requeue_is_redelivered_flagged_and_exception_requeues_too(broker, unique):
    q = make_queue(broker, f"{unique}.q")
    e = env()
    broker.publish(e, queue=q)
    seen: list[tuple[str, bool]] = []
    stop = threading.Event()

    def cb(d) -> None:
        seen.append((d.envelope.id, d.redelivered))
        if len(seen) == 1:
            d.reject(requeue=True)
        elif len(seen) == 2:
            raise RuntimeError("handler bug")  # unsettled → requeued by the broker seam
        else:
            d.ack()
            stop.set()

    t = threading.Thread(target=broker.consume, args=(q, cb), kwargs={"prefetch": 1, "stop": stop})
    t.start()
    assert stop.wait(15)
    t.join(10)
    assert seen == [(e.id, False), (e.id, True), (e.id, True)]
    assert broker.queue_depth(q) == 0


def test_reject_without_requeue_removes_the_message(broker, unique):
    q = make_queue(broker, f"{unique}.q")
    broker.publish(env(), queue=q)
    d = broker.get(q, timeout=5)
    assert d is not None
    d.reject(requeue=False)
    assert broker.get(q) is None and broker.queue_depth(q) == 0


def test_unacked_get_counts_in_depth_and_ack_from_get_removes_it(broker, unique):
    q = make_queue(broker, f"{unique}.q")
    e = env()
    broker.publish(e, queue=q, reply_to=f"{unique}.replies")
    d = broker.get(q, timeout=5)
    assert d is not None and d.reply_to == f"{unique}.replies" and not d.redelivered
    assert broker.queue_depth(q) == 1  # unacked by this process
    d.ack()
    assert broker.queue_depth(q) == 0
    assert broker.get(q) is None


def test_prefetch_bounds_unacked_deliveries_and_acks_from_another_thread_release_more(broker, unique):
    q = make_queue(broker, f"{unique}.q")
    broker.publish_many([env(i) for i in range(20)], queue=q)
    held: list = []
    stop = threading.Event()
    t = threading.Thread(target=broker.consume, args=(q, held.append), kwargs={"prefetch": 5, "stop": stop})
    t.start()
    try:
        wait_for(lambda: len(held) == 5, what="first 5 deliveries")
        time.sleep(0.5)  # give the broker every chance to overrun the bound
        assert len(held) == 5
        assert ready_count(broker, q) == 15
        for d in list(held):
            d.ack()  # settled on the consumer thread, not here
        wait_for(lambda: len(held) >= 10, what="next deliveries after acks")
        assert len(held) <= 10
    finally:
        stop.set()
        t.join(10)
    assert broker.queue_depth(q) == 15  # 5 acked; the 5 held unacked went back to the queue


def test_coalesced_acks_never_ack_an_earlier_delivery_still_unsettled(broker, unique):
    q = make_queue(broker, f"{unique}.q")
    envs = [env(i) for i in range(40)]
    broker.publish_many(envs, queue=q)
    kept: list = []
    acked: list[str] = []
    stop = threading.Event()

    def cb(d) -> None:
        if d.envelope.payload["n"] in (3, 17):
            kept.append(d)  # left unsettled: must come back
        else:
            d.ack()
            acked.append(d.envelope.id)
        if len(kept) + len(acked) == 40:
            stop.set()

    t = threading.Thread(target=broker.consume, args=(q, cb), kwargs={"prefetch": 40, "stop": stop})
    t.start()
    assert stop.wait(15)
    t.join(10)
    assert len(acked) == 38
    back = drain(broker, q, 2)
    assert sorted(e.payload["n"] for e in back) == [3, 17]
    assert broker.queue_depth(q) == 0


def _close_connections(name: str) -> int:
    out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                         capture_output=True, text=True, timeout=30).stdout
    pids = [line.split("\t")[0] for line in out.splitlines() if f"{name}/consumer" in line]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test"], capture_output=True, timeout=30)
    return len(pids)


def test_consumer_reconnects_after_its_connection_is_closed_and_gets_unacked_again(broker, unique):
    q = make_queue(broker, f"{unique}.q")
    first, second = env(1), env(2)
    broker.publish(first, queue=q)
    got: list = []
    stop = threading.Event()

    def cb(d) -> None:
        got.append(d)
        if d.envelope.id == second.id or d.redelivered:
            d.ack()

    t = threading.Thread(target=broker.consume, args=(q, cb), kwargs={"prefetch": 10, "stop": stop})
    t.start()
    try:
        wait_for(lambda: len(got) == 1, what="first delivery")  # held unacked
        assert _close_connections(unique) == 1
        wait_for(lambda: any(d.redelivered for d in got), timeout=20, what="redelivery after reconnect")
        got[0].ack()  # ack for the dead channel: ignored, must not break anything
        broker.publish(second, queue=q)
        wait_for(lambda: any(d.envelope.id == second.id for d in got), what="delivery after reconnect")
    finally:
        stop.set()
        t.join(10)
    assert [d.envelope.id for d in got] == [first.id, first.id, second.id]
    assert broker.queue_depth(q) == 0


def test_publish_to_unreachable_broker_raises_broker_unavailable_within_timeout(free_port_no):
    b = RabbitBroker(f"amqp://guest:guest@127.0.0.1:{free_port_no}//", connect_timeout=1, publish_timeout=1)
    with pytest.raises(BrokerUnavailable):
        b.publish(env(), timeout=1.0)
    with pytest.raises(BrokerUnavailable):
        b.connect()
    assert b.health()["ok"] is False
    b.close()


@pytest.fixture
def free_port_no() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_password_reference_is_resolved_at_connect_and_never_shown(rabbit_url, unique, monkeypatch):
    ep, _ = parse_amqp_url(rabbit_url)
    url = f"amqp://{ep.userid}:${{env:{unique.upper()}}}@{ep.host}:{ep.port}//"
    b = RabbitBroker(url, exchange=unique, unrouted_queue=f"{unique}.unrouted")
    with pytest.raises(ConfigError, match=unique.upper()):
        b.connect()
    monkeypatch.setenv(unique.upper(), ep.secret())
    b.connect()
    assert b.health()["ok"] is True
    assert "${env:" in b.safe_url
    b.delete_queue(f"{unique}.unrouted")
    b._control(lambda ch: (ch.exchange_delete(unique), ch.exchange_delete(f"{unique}.unrouted")), what="cleanup")
    b.close()
    inline = RabbitBroker("amqp://hub:s3cr3t@127.0.0.1:5672/prod")
    assert "s3cr3t" not in inline.safe_url and "s3cr3t" not in repr(inline)
    assert "s3cr3t" not in str(inline.health())
    assert (inline._endpoint.virtual_host, inline._endpoint.port) == ("prod", 5672)


def test_publish_without_connect_declares_the_topology_first(rabbit_url, unique):
    b = RabbitBroker(rabbit_url, exchange=unique, unrouted_queue=f"{unique}.unrouted")
    try:
        e = env(type="alarm.v1")
        b.publish(e)  # no connect(), no binding: still kept
        d = b.get(f"{unique}.unrouted", timeout=5)
        assert d is not None and d.envelope.id == e.id
        d.ack()
    finally:
        b.delete_queue(f"{unique}.unrouted")
        b._control(lambda ch: (ch.exchange_delete(unique), ch.exchange_delete(f"{unique}.unrouted")), what="cleanup")
        b.close()


def test_quorum_queues_take_messages_and_delays(rabbit_url, unique):
    b = RabbitBroker(rabbit_url, exchange=unique, unrouted_queue=f"{unique}.unrouted", queue_type="quorum")
    q = f"{unique}.q"
    try:
        b.connect()
        b.declare_queue(q, ["party.v1"])
        e1, e2 = env(1), env(2)
        b.publish(e1)
        b.publish(e2, queue=q, delay=0.1)
        got = drain(b, q, 2)
        assert {e.id for e in got} == {e1.id, e2.id}
        with pytest.raises(PreconditionFailed, match="x-queue-type"):  # it really is a quorum queue
            b._control(lambda ch: ch.queue_declare(q, durable=True, auto_delete=False, arguments={"x-queue-type": "classic"}),
                       what="test")
    finally:
        b.delete_queue(q)
        b.delete_queue(f"{unique}.unrouted")
        b._control(lambda ch: (ch.exchange_delete(unique), ch.exchange_delete(f"{unique}.unrouted")), what="cleanup")
        b.close()


def test_consumer_of_a_deleted_queue_resumes_when_the_queue_is_back(broker, unique):
    q = make_queue(broker, f"{unique}.q")
    got: list[str] = []
    stop = threading.Event()

    def cb(d) -> None:
        got.append(d.envelope.id)
        d.ack()

    t = threading.Thread(target=broker.consume, args=(q, cb), kwargs={"prefetch": 10, "stop": stop})
    t.start()
    try:
        first = env(1)
        broker.publish(first)
        wait_for(lambda: got == [first.id], what="first delivery")
        broker.delete_queue(q)  # RabbitMQ cancels the consumer
        broker.declare_queue(q, ["party.v1"])
        second = env(2)
        broker.publish(second)
        wait_for(lambda: second.id in got, timeout=20, what="delivery after the queue came back")
    finally:
        stop.set()
        t.join(10)


def test_a_refused_login_is_broker_unavailable_and_the_password_is_in_no_log_or_error(rabbit_url):
    from structlog.testing import capture_logs

    ep, _ = parse_amqp_url(rabbit_url)
    b = RabbitBroker(f"amqp://{ep.userid}:Wr0ngPa55w0rd@{ep.host}:{ep.port}//", publish_timeout=1, connect_timeout=2)
    with capture_logs() as logs, pytest.raises(BrokerUnavailable) as err:
        b.connect()
    b.close()
    assert "Wr0ngPa55w0rd" not in str(err.value)
    assert logs and "Wr0ngPa55w0rd" not in repr(logs)

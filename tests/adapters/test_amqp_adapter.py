"""AMQP adapter against the real RabbitMQ: foreign queues/exchanges, ack after emit, confirms."""

from __future__ import annotations

import subprocess
import threading

import kombu
import orjson
import pytest
from waiting import wait_for

from esbhub.adapters.amqp import AmqpSink, AmqpSinkConfig, AmqpSource, AmqpSourceConfig
from esbhub.bus.envelope import Envelope
from esbhub.errors import PermanentError, TransientError

from .peers import free_port

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def amqp_url(rabbit_url, monkeypatch) -> str:
    user_pw, host = rabbit_url.split("://", 1)[1].split("@", 1)
    user, pw = user_pw.split(":", 1)
    monkeypatch.setenv("T_AMQP_PASS", pw)
    return f"amqp://{user}:${{env:T_AMQP_PASS}}@{host}"


@pytest.fixture
def foreign(rabbit_url, unique):
    """A foreign topic exchange + queue the test owns; removed afterwards."""
    conn = kombu.Connection(rabbit_url, connect_timeout=5)
    ch = conn.channel()
    yield ch, f"x.{unique}", f"q.{unique}"
    for q in (f"q.{unique}",):
        ch.queue_delete(q)
    ch.exchange_delete(f"x.{unique}")
    conn.release()


def publish_foreign(ch, exchange, n, start=0, body=None):
    prod = kombu.Producer(ch, exchange=kombu.Exchange(exchange), auto_declare=False)
    for i in range(start, start + n):
        prod.publish(body if body is not None else orjson.dumps({"n": i}), routing_key="billing.customer",
                     message_id=f"m{i}", delivery_mode=2, content_type="application/json", content_encoding="binary")


def depth(ch, queue) -> int:
    return ch.queue_declare(queue, passive=True).message_count


class Out:
    def __init__(self, fail=0):
        self.envs: list[Envelope] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, envs):
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise TransientError("bus down")
            self.envs.extend(envs)


def src_cfg(amqp_url, exchange, queue, **kw):
    cfg = {"url": amqp_url, "queue": queue, "declare": True, "timeout": 3,
           "bindings": [{"exchange": exchange, "routing_key": "billing.#"}],
           "envelope": {"type": "party.v1", "source": "billing"}, "batch_size": 20}
    cfg.update(kw)
    return AmqpSourceConfig(**cfg)


def test_source_acks_only_after_emit_and_requeues_when_emit_raises(amqp_url, foreign):
    ch, x, q = foreign
    ch.exchange_declare(x, "topic", durable=True, auto_delete=False)
    src = AmqpSource(src_cfg(amqp_url, x, q), name="t-amqp")
    failing = Out(fail=10**6)
    src.start(failing)
    try:
        wait_for(lambda: src.health().detail.get("consuming"), 5, what="source consuming")
        publish_foreign(ch, x, 30)
        wait_for(lambda: src.health().consecutive_failures >= 1, 10, what="emit failure")
    finally:
        src.stop()
    assert failing.envs == []
    wait_for(lambda: depth(ch, q) == 30, 10, what="messages requeued, none lost")
    ok = Out()
    src2 = AmqpSource(src_cfg(amqp_url, x, q), name="t-amqp")  # restarted
    src2.start(ok)
    try:
        wait_for(lambda: len(ok.envs) >= 30, 10, what="30 messages emitted")
    finally:
        src2.stop()
    assert sorted(e.payload["n"] for e in ok.envs) == list(range(30))
    assert len({e.id for e in ok.envs}) == 30
    wait_for(lambda: depth(ch, q) == 0, 5, what="acked")
    assert src2.health().count == 30


def test_source_rejects_unparseable_body_and_keeps_going(amqp_url, foreign):
    ch, x, q = foreign
    ch.exchange_declare(x, "topic", durable=True, auto_delete=False)
    ch.queue_declare(q, durable=True, auto_delete=False)
    ch.queue_bind(q, x, "billing.#")
    publish_foreign(ch, x, 1, body=b"{not json")
    publish_foreign(ch, x, 3, start=1)
    out = Out()
    src = AmqpSource(src_cfg(amqp_url, x, q), name="t-amqp-bad")
    src.start(out)
    try:
        wait_for(lambda: len(out.envs) == 3, 10, what="good messages")
        h = src.health()
        assert h.last_error and "not valid json" in h.last_error
    finally:
        src.stop()
    wait_for(lambda: depth(ch, q) == 0, 5, what="bad message rejected, not requeued")


def test_source_reconnects_after_its_connection_is_killed_without_losing_messages(amqp_url, foreign, unique):
    ch, x, q = foreign
    ch.exchange_declare(x, "topic", durable=True, auto_delete=False)
    out = Out()
    name = f"kill-{unique}"
    src = AmqpSource(src_cfg(amqp_url, x, q), name=name)
    src.start(out)
    try:
        wait_for(lambda: _conn_pids(f"esbhub-{name}"), 10, what="source connection")
        publish_foreign(ch, x, 10)
        wait_for(lambda: len(out.envs) >= 10, 10, what="first 10")
        for pid in _conn_pids(f"esbhub-{name}"):
            subprocess.run(["rabbitmqctl", "close_connection", pid, "test kill"], check=True, capture_output=True,
                           timeout=30)
        publish_foreign(ch, x, 10, start=10)
        wait_for(lambda: len({e.payload["n"] for e in out.envs}) >= 20, 20, what="all 20 after reconnect")
    finally:
        src.stop()
    assert {e.payload["n"] for e in out.envs} == set(range(20))


def _conn_pids(name: str) -> list[str]:
    r = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"], capture_output=True,
                       text=True, timeout=30)
    return [ln.split("\t")[0] for ln in r.stdout.splitlines() if f'{{"connection_name","{name}"}}' in ln]


def test_sink_publishes_persistent_confirmed_with_message_id(amqp_url, foreign):
    ch, x, q = foreign
    sink = AmqpSink(AmqpSinkConfig(url=amqp_url, exchange=x, declare_exchange="topic", routing_key="crm.customer",
                                   timeout=3), name="t")
    ch.exchange_declare(x, "topic", durable=True, auto_delete=False)
    ch.queue_declare(q, durable=True, auto_delete=False)
    ch.queue_bind(q, x, "crm.#")
    envs = [Envelope.create("party.v1", {"i": i}, source="t") for i in range(5)]
    assert sink.send(envs[0]) == {"exchange": x, "confirmed": True}
    sink.send_many(envs[1:])
    got = []
    for _ in range(5):
        m = ch.basic_get(q, no_ack=True)
        got.append(m)
    assert [orjson.loads(m.body) for m in got] == [{"i": i} for i in range(5)]
    assert [m.properties["message_id"] for m in got] == [e.id for e in envs]
    assert got[0].properties["delivery_mode"] == 2
    sink.close()


def test_sink_to_missing_exchange_is_permanent_and_recovers_for_the_next_send(amqp_url, foreign):
    ch, x, q = foreign
    sink = AmqpSink(AmqpSinkConfig(url=amqp_url, exchange=x + ".missing", timeout=3), name="t")
    with pytest.raises(PermanentError) as ei:
        sink.send(Envelope.create("party.v1", {}, source="t"))
    assert "NOT_FOUND" in str(ei.value) or "NotFound" in str(ei.value)
    assert sink.breaker.state == "closed"
    sink.close()


def test_sink_peer_down_is_transient(monkeypatch):
    monkeypatch.setenv("T_AMQP_PASS", "guest")
    sink = AmqpSink(AmqpSinkConfig(url=f"amqp://guest:${{env:T_AMQP_PASS}}@127.0.0.1:{free_port()}//", timeout=2),
                    name="t")
    with pytest.raises(TransientError):
        sink.send(Envelope.create("party.v1", {}, source="t"))
    assert not sink.health().ok


def test_inline_password_in_url_is_refused():
    with pytest.raises(ValueError):
        AmqpSinkConfig(url="amqp://guest:guest@127.0.0.1//")


def test_sink_unroutable_message_is_refused_not_dropped(amqp_url, unique):
    sink = AmqpSink(AmqpSinkConfig(url=amqp_url, exchange="", routing_key=f"no.such.queue.{unique}", timeout=3), name="t")
    with pytest.raises(PermanentError) as ei:
        sink.send(Envelope.create("party.v1", {}, source="t"))
    assert "unroutable" in str(ei.value)
    sink.close()


def test_sink_batch_is_confirmed_as_a_whole(amqp_url, foreign):
    ch, x, q = foreign
    ch.queue_declare(q, durable=True, auto_delete=False)
    sink = AmqpSink(AmqpSinkConfig(url=amqp_url, exchange="", routing_key=q, timeout=5), name="t")
    envs = [Envelope.create("party.v1", {"i": i}, source="t") for i in range(300)]
    assert len(sink.send_many(envs)) == 300
    assert not sink._unconfirmed
    wait_for(lambda: depth(ch, q) == 300, 5, what="300 messages in the queue")
    sink.close()

"""NATS JetStream adapter against the real nats-server on 4222 (through a cuttable proxy)."""

from __future__ import annotations

import asyncio
import socket
import threading

import orjson
import pytest
from waiting import wait_for

from esbhub.adapters.nats import NatsSink, NatsSinkConfig, NatsSource, NatsSourceConfig
from esbhub.bus.envelope import Envelope
from esbhub.errors import TransientError

from .peers import TcpProxy, free_port


@pytest.fixture(scope="module", autouse=True)
def nats_server():
    with socket.socket() as s:
        s.settimeout(2)
        if s.connect_ex(("127.0.0.1", 4222)) != 0:
            pytest.fail("nats-server is not running on 127.0.0.1:4222 (run scripts/services.sh)")


@pytest.fixture
def stream(unique):
    """A stream of the test's own, deleted afterwards."""
    import nats

    name = f"S_{unique}"

    async def setup():
        nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=3)
        await nc.jetstream().add_stream(name=name, subjects=[f"{unique}.>"])
        await nc.close()

    async def teardown():
        nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=3)
        await nc.jetstream().delete_stream(name)
        await nc.close()

    asyncio.run(setup())
    yield name, unique
    asyncio.run(teardown())


def publish(subject: str, payloads: list[bytes]) -> None:
    import nats

    async def go():
        nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=3)
        js = nc.jetstream()
        for p in payloads:
            await js.publish(subject, p, timeout=5)
        await nc.close()

    asyncio.run(go())


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

    def ns(self):
        with self.lock:
            return sorted(e.payload["n"] for e in self.envs)


def nums(a, b):
    return [orjson.dumps({"n": i}) for i in range(a, b)]


def src_cfg(stream, servers=None, **kw):
    c = {"stream": stream, "durable": "hub", "timeout": 3, "envelope": {"type": "alarm.v1", "source": "nms"},
         "batch_size": 10}
    if servers:
        c["servers"] = servers
    c.update(kw)
    return NatsSourceConfig(**c)


def test_durable_consumer_acks_after_emit_and_redelivers_after_emit_fails(stream):
    name, subj = stream
    publish(f"{subj}.alarm", nums(0, 25))
    out = Out(fail=2)
    src = NatsSource(src_cfg(name), name="t")
    src.start(out)
    try:
        wait_for(lambda: len(set(out.ns())) == 25, 20, what="25 messages despite failed emits")
    finally:
        src.stop()
    first_ids = {e.payload["n"]: e.id for e in out.envs}
    assert "bus down" in (src.health().last_error or "")
    # the durable consumer resumes where it was: new messages only, nothing re-sent that was acked
    publish(f"{subj}.alarm", nums(25, 30))
    out2 = Out()
    src2 = NatsSource(src_cfg(name), name="t")
    src2.start(out2)
    try:
        wait_for(lambda: set(out2.ns()) == set(range(25, 30)), 10, what="only the new 5")
    finally:
        src2.stop()
    assert len(first_ids) == 25


def test_unacked_messages_come_back_with_the_same_ids_after_restart(stream):
    name, subj = stream
    publish(f"{subj}.x", nums(0, 3))
    src = NatsSource(src_cfg(name, ack_wait=2), name="t")

    ids_seen: list[str] = []

    def failing(envs):
        ids_seen.extend(e.id for e in envs)
        raise TransientError("bus down")

    src.start(failing)
    wait_for(lambda: len(ids_seen) >= 3, 10, what="first attempt")
    src.stop()
    good = Out()
    src2 = NatsSource(src_cfg(name, ack_wait=2), name="t")
    src2.start(good)
    try:
        wait_for(lambda: set(good.ns()) == {0, 1, 2}, 15, what="redelivered after restart")  # at-least-once
    finally:
        src2.stop()
    assert {e.id for e in good.envs} == set(ids_seen[:3])


def test_source_survives_its_connection_being_cut(stream):
    name, subj = stream
    proxy = TcpProxy(4222)
    out = Out()
    src = NatsSource(src_cfg(name, servers=[f"nats://127.0.0.1:{proxy.port}"]), name="t")
    src.start(out)
    try:
        publish(f"{subj}.a", nums(0, 5))
        wait_for(lambda: set(out.ns()) == set(range(5)), 10, what="first 5")
        proxy.cut()
        publish(f"{subj}.a", nums(5, 10))
        wait_for(lambda: sorted(set(out.ns())) == list(range(10)), 20, what="all 10 after the cut")
    finally:
        src.stop()
        proxy.close()


def test_sink_publish_ack_and_jetstream_dedups_a_redelivered_envelope(stream):
    name, subj = stream
    sink = NatsSink(NatsSinkConfig(stream=name, subject=f"{subj}.{{type}}", timeout=3), name="t")
    e = Envelope.create("party.v1", {"a": 1}, source="t")
    r1 = sink.send(e)
    r2 = sink.send(e)
    assert r1["stream"] == name and not r1["duplicate"]
    assert r2["duplicate"] and r2["seq"] == r1["seq"]
    sink.close()


def test_sink_slow_peer_times_out_as_transient_then_recovers(stream):
    name, subj = stream
    proxy = TcpProxy(4222)
    sink = NatsSink(NatsSinkConfig(stream=name, subject=f"{subj}.s", servers=[f"nats://127.0.0.1:{proxy.port}"],
                                   timeout=0.5), name="t")
    try:
        sink.send(Envelope.create("party.v1", {}, source="t"))
        proxy.delay = 2.0
        with pytest.raises(TransientError):
            sink.send(Envelope.create("party.v1", {}, source="t"))
        proxy.delay = 0.0
        proxy.cut()
        wait_for(lambda: _sends(sink), 10, what="sink recovered")
    finally:
        sink.close()
        proxy.close()


def _sends(sink) -> bool:
    try:
        sink.send(Envelope.create("party.v1", {}, source="t"))
        return True
    except TransientError:
        return False


def test_sink_peer_down_is_transient():
    sink = NatsSink(NatsSinkConfig(stream="S", subject="x", servers=[f"nats://127.0.0.1:{free_port()}"], timeout=1),
                    name="t")
    with pytest.raises(TransientError):
        sink.send(Envelope.create("party.v1", {}, source="t"))
    assert not sink.health().ok
    sink.close()


def test_sink_to_subject_without_stream_fails_cleanly(stream, unique):
    name, _ = stream
    sink = NatsSink(NatsSinkConfig(stream=name, subject=f"nostream.{unique}", timeout=1), name="t")
    with pytest.raises(TransientError):
        sink.send(Envelope.create("party.v1", {}, source="t"))
    sink.close()

"""MQTT adapter against the real Mosquitto on 1883: persistent session, ack after emit, PUBACK."""

from __future__ import annotations

import socket
import threading

import orjson
import paho.mqtt.client as mqtt
import pytest
from waiting import wait_for

from esbhub.adapters.mqtt import MqttSink, MqttSinkConfig, MqttSource, MqttSourceConfig
from esbhub.bus.envelope import Envelope
from esbhub.errors import TransientError

from .peers import free_port


@pytest.fixture(scope="module", autouse=True)
def mosquitto():
    with socket.socket() as s:
        s.settimeout(2)
        if s.connect_ex(("127.0.0.1", 1883)) != 0:
            pytest.fail("Mosquitto is not running on 127.0.0.1:1883 (run scripts/services.sh)")


def publish(topic: str, payloads: list[bytes]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", 1883)
    c.loop_start()
    try:
        for p in payloads:
            c.publish(topic, p, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


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
            return {e.payload["n"] for e in self.envs}


def cfg(unique, **kw):
    c = {"client_id": f"esbhub-{unique}", "topics": [f"nms/{unique}/#"], "timeout": 3,
         "envelope": {"type": "alarm.v1", "source": "nms"}, "session_expiry": 120}
    c.update(kw)
    return MqttSourceConfig(**c)


def nums(a, b):
    return [orjson.dumps({"n": i}) for i in range(a, b)]


def test_source_redelivers_what_emit_failed_on_and_keeps_it_across_restart(unique):
    out = Out(fail=2)
    src = MqttSource(cfg(unique), name="t")
    src.start(out)
    try:
        wait_for(lambda: src.health().detail.get("connected"), 5, what="connected")
        publish(f"nms/{unique}/port", nums(0, 10))
        wait_for(lambda: out.ns() == set(range(10)), 20, what="all 10 after failed emits")
    finally:
        src.stop()
    assert src.health().last_error and "bus down" in src.health().last_error
    # session persists while the source is down: messages published now arrive after restart
    publish(f"nms/{unique}/port", nums(10, 15))
    src2 = MqttSource(cfg(unique), name="t")
    src2.start(out)
    try:
        wait_for(lambda: out.ns() == set(range(15)), 10, what="messages queued in the session")
    finally:
        src2.stop()


def test_source_stopped_while_emit_keeps_failing_loses_nothing(unique):
    bad = Out(fail=10**6)
    src = MqttSource(cfg(unique), name="t")
    src.start(bad)
    wait_for(lambda: src.health().detail.get("connected"), 5, what="connected")
    publish(f"nms/{unique}/x", nums(0, 5))
    wait_for(lambda: src.health().consecutive_failures >= 1, 10, what="emit failure")
    src.stop()
    good = Out()
    src2 = MqttSource(cfg(unique), name="t")
    src2.start(good)
    try:
        wait_for(lambda: good.ns() == set(range(5)), 10, what="unacked messages seen again")
    finally:
        src2.stop()


def test_source_reconnects_after_its_socket_is_cut(unique):
    out = Out()
    src = MqttSource(cfg(unique), name="t")
    src.start(out)
    try:
        wait_for(lambda: src.health().detail.get("connected"), 5, what="connected")
        publish(f"nms/{unique}/a", nums(0, 3))
        wait_for(lambda: out.ns() == set(range(3)), 10, what="first 3")
        src.client.socket().shutdown(socket.SHUT_RDWR)  # the connection dies under the source
        publish(f"nms/{unique}/a", nums(3, 6))
        wait_for(lambda: out.ns() == set(range(6)), 20, what="all after reconnect")
    finally:
        src.stop()


def test_sink_waits_for_puback_and_carries_the_envelope_id(unique):
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.append(m)
    sub.connect("127.0.0.1", 1883)
    sub.subscribe(f"crm/{unique}/#", qos=1)
    sub.loop_start()
    try:
        wait_for(lambda: sub.is_connected(), 5, what="subscriber")
        sink = MqttSink(MqttSinkConfig(client_id=f"pub-{unique}", topic=f"crm/{unique}/{{type}}", timeout=3), name="t")
        e = Envelope.create("party.v1", {"a": 1}, source="t")
        r = sink.send(e)
        assert r["topic"] == f"crm/{unique}/party.v1"
        wait_for(lambda: got, 5, what="message at subscriber")
        assert orjson.loads(got[0].payload) == {"a": 1}
        assert dict(got[0].properties.UserProperty)["esbhub-id"] == e.id
        sink.close()
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_sink_peer_down_is_transient_and_source_reports_it():
    sink = MqttSink(MqttSinkConfig(client_id="x", topic="t", port=free_port(), timeout=1), name="t")
    with pytest.raises(TransientError):
        sink.send(Envelope.create("party.v1", {}, source="t"))
    assert not sink.health().ok
    src = MqttSource(MqttSourceConfig(client_id="y", topics=["t"], port=free_port(), timeout=1,
                                      envelope={"type": "alarm.v1", "source": "n"}), name="t")
    src.start(Out())
    try:
        wait_for(lambda: src.health().last_error, 5, what="error reported")
        assert src.running and not src.health().ok
    finally:
        src.stop()

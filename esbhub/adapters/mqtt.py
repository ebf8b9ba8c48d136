"""MQTT 5 (paho-mqtt 2), QoS 1, against a broker such as Mosquitto.

Source: a persistent session (fixed ``client_id``, ``clean_start`` false, session expiry set)
with paho's *manual ack*: a PUBACK is sent only after ``emit`` returned. When ``emit`` raises,
nothing is acked; the source drops the connection and reconnects, and the broker redelivers
every unacknowledged message of the session (DUP). Messages received on an older connection
are never acked on a newer one (their packet ids would mean something else).

Sink: publish QoS 1 and wait for the PUBACK (bounded by ``timeout``); a PUBACK reason code
≥ 0x80 (not authorized, topic name invalid, …) is permanent, no PUBACK in time is transient.
The envelope id travels as the MQTT 5 user property ``esbhub-id``.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Literal

import orjson
from pydantic import Field

from esbhub.adapters.base import (
    AdapterConfig,
    AdapterSpec,
    Emit,
    EnvelopeTemplate,
    Sink,
    ThreadedSource,
    WrapsMessageBodies,
    backoff_delays,
    stable_id,
)
from esbhub.bus.envelope import Envelope
from esbhub.errors import InvalidMessage, PermanentError, TransientError
from esbhub.secrets import SecretRef, resolve


class MqttConnection(AdapterConfig):
    host: str = Field(default="127.0.0.1", description="Broker host.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 for TLS).")
    username: str | None = Field(default=None, description="User name, if the broker wants one.")
    password: SecretRef | None = Field(default=None, description="Password, by reference.")
    client_id: str = Field(description="MQTT client id; fixed, so the broker keeps the session.", min_length=1)
    keepalive: int = Field(default=30, ge=5, le=3600, description="Keep-alive seconds.")
    tls: bool = Field(default=False, description="Use TLS (certificate verified).")
    ca_file: str | None = Field(default=None, description="CA bundle (PEM) for TLS.")


class MqttSourceConfig(MqttConnection, WrapsMessageBodies):
    """Subscribes to topics with a persistent session; acks after emit."""

    topics: list[str] = Field(description="Topic filters to subscribe to (QoS 1).", min_length=1)
    session_expiry: int = Field(
        default=86400, ge=60, le=2**32 - 1, description="Seconds the broker keeps the session while disconnected."
    )
    batch_size: int = Field(default=100, ge=1, le=10000, description="Messages per emit.")
    body: Literal["json", "text", "envelope"] = Field(default="json", description="Payload format of messages.")
    encoding: str = Field(default="utf-8", description="Encoding of 'text' payloads.")
    envelope: EnvelopeTemplate | None = Field(
        default=None, description="Type and source of envelopes made from json/text messages."
    )
    id_property: str = Field(
        default="esbhub-id", description="MQTT 5 user property carrying the publisher's message id (kept on redelivery)."
    )
    id_field: str | None = Field(
        default=None,
        description="JSON payload field holding a natural key (e.g. 'alarm_id'); the envelope id is derived from it "
        "when the message has no id property. Without either, a redelivered message gets a new id.",
    )


class MqttSinkConfig(MqttConnection):
    """Publishes each envelope (QoS 1, waits for PUBACK)."""

    topic: str = Field(description="Topic to publish to; '{type}' is replaced by the envelope type.")
    body: Literal["payload", "envelope"] = Field(default="payload", description="Publish the payload (JSON) or the envelope.")
    retain: bool = Field(default=False, description="Set the retain flag.")


def _client(cfg: MqttConnection, *, manual_ack: bool) -> Any:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    c.connect_timeout = cfg.timeout
    if cfg.username:
        pw = resolve(cfg.password, loc="password").get_secret_value() if cfg.password else None
        c.username_pw_set(cfg.username, pw)
    if cfg.tls:
        c.tls_set(ca_certs=cfg.ca_file)
    c.reconnect_delay_set(min_delay=1, max_delay=30)
    return c


def _connect_props(session_expiry: int) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = session_expiry
    return p


class MqttSource(ThreadedSource[MqttSourceConfig]):
    adapter_name = "mqtt"

    def __init__(self, config: MqttSourceConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._q: queue.Queue[tuple[int, Any]] = queue.Queue()
        self._gen = 0
        self.client: Any = None
        self._connected = threading.Event()
        self._lost = threading.Event()

    def to_envelope(self, msg: Any) -> Envelope:
        cfg = self.config
        try:
            if cfg.body == "envelope":
                return Envelope.from_bytes(msg.payload)
            payload: Any = orjson.loads(msg.payload) if cfg.body == "json" else msg.payload.decode(cfg.encoding)
        except (orjson.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidMessage(f"mqtt: message on '{msg.topic}' is not valid {cfg.body}: {str(exc)[:200]}") from None
        props = dict(getattr(getattr(msg, "properties", None), "UserProperty", None) or [])
        mid = props.get(cfg.id_property)
        eid: str | None = None
        if mid:
            eid = mid if len(mid) == 26 else stable_id(f"mqtt:{mid}")
        elif cfg.id_field and isinstance(payload, dict) and payload.get(cfg.id_field) is not None:
            eid = stable_id(f"mqtt:{msg.topic}:{payload[cfg.id_field]}")
        h = {"mqtt_topic": msg.topic}
        if "traceparent" in props:
            h["traceparent"] = props["traceparent"]
        assert cfg.envelope is not None
        return cfg.envelope.make(payload, id=eid, headers=h)

    # -- connection (paho network thread) ---------------------------------------------------
    def _open(self) -> None:
        cfg = self.config
        self._gen += 1
        gen = self._gen
        self._connected.clear()
        self._lost.clear()
        c = _client(cfg, manual_ack=True)

        def on_connect(client: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
            if reason.is_failure:
                self.tracker.record_error(f"mqtt connect refused: {reason}")
                return
            client.subscribe([(t, 1) for t in cfg.topics])
            self._connected.set()

        def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            self._lost.set()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            self._q.put((gen, msg))

        c.on_connect, c.on_disconnect, c.on_message = on_connect, on_disconnect, on_message
        c.connect(cfg.host, cfg.port, cfg.keepalive, clean_start=False, properties=_connect_props(cfg.session_expiry))
        c.loop_start()
        self.client = c
        if not self._connected.wait(cfg.timeout):
            raise TransientError("mqtt: no CONNACK / subscription in time")

    def _close(self) -> None:
        c, self.client = self.client, None
        if c is not None:
            try:
                c.disconnect()
            finally:
                c.loop_stop()
        # messages of the closed connection are redelivered by the broker; never ack them later
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break

    def _run_connected(self, emit: Emit) -> None:
        self._open()
        self.tracker.detail["connected"] = True
        delays = None
        while not self._stop.is_set() and not self._lost.is_set():
            try:
                first = self._q.get(timeout=0.5)
            except queue.Empty:
                continue
            batch = [first]
            # natural batching: take what has arrived, never wait for more (the broker limits
            # unacked messages in flight, typically to 20, so waiting would only add latency)
            while len(batch) < self.config.batch_size:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            batch = [(g, m) for g, m in batch if g == self._gen]
            envs, good = [], []
            for _g, m in batch:
                try:
                    envs.append(self.to_envelope(m))
                    good.append(m)
                except InvalidMessage as exc:
                    self.tracker.record_error(exc)
                    self.log.warning("mqtt_message_dropped", reason=str(exc))
                    self.client.ack(m.mid, m.qos)  # MQTT has no reject: a bad message would block redelivery
            if not envs:
                continue
            t0 = time.perf_counter()
            try:
                emit(envs)
            except Exception as exc:  # noqa: BLE001 - not acked: reconnect so the broker redelivers
                self.tracker.record_error(exc)
                self.log.warning("mqtt_emit_failed", error=type(exc).__name__, n=len(envs))
                delays = delays or backoff_delays(0.2, 10.0)
                self._stop.wait(next(delays))
                raise TransientError(f"mqtt: emit failed ({type(exc).__name__}: {str(exc)[:200]}); reconnecting for redelivery") from exc
            for m in good:
                self.client.ack(m.mid, m.qos)
            self.tracker.record_success(time.perf_counter() - t0, len(envs))
        if self._lost.is_set() and not self._stop.is_set():
            raise TransientError("mqtt: connection lost")

    def _loop(self, emit: Emit) -> None:
        delays = backoff_delays(0.2, 10.0)
        while not self._stop.is_set():
            try:
                self._run_connected(emit)
            except Exception as exc:  # noqa: BLE001 - recorded; reconnect with backoff
                self.tracker.record_error(exc)
                self.log.warning("mqtt_source_disconnected", error=f"{type(exc).__name__}: {str(exc)[:200]}")
                self.tracker.detail["connected"] = False
                self._close()
                self._stop.wait(next(delays))
                continue
        self.tracker.detail["connected"] = False
        self._close()

    def health(self) -> Any:
        h = super().health()
        h.detail.update(broker=f"{self.config.host}:{self.config.port}", topics=self.config.topics)
        return h


class MqttSink(Sink[MqttSinkConfig]):
    adapter_name = "mqtt"

    def __init__(self, config: MqttSinkConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._lock = threading.Lock()
        self._client: Any = None
        self._connected = threading.Event()
        self._reasons: dict[int, Any] = {}

    def _ensure(self) -> Any:
        if self._client is not None and self._client.is_connected():
            return self._client
        self._reset()
        c = _client(self.config, manual_ack=False)
        self._connected.clear()

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if not reason.is_failure:
                self._connected.set()

        def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
            self._reasons[mid] = reason

        c.on_connect, c.on_publish = on_connect, on_publish
        try:
            c.connect(self.config.host, self.config.port, self.config.keepalive, clean_start=True)
        except OSError as exc:
            raise TransientError(f"mqtt connect: {type(exc).__name__}: {exc}") from exc
        c.loop_start()
        self._client = c
        if not self._connected.wait(self.config.timeout):
            self._reset()
            raise TransientError("mqtt connect: no CONNACK in time")
        return c

    def _reset(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            c.disconnect()
            c.loop_stop()

    def deliver(self, envelope: Envelope) -> dict[str, Any] | None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        body = envelope.to_bytes() if self.config.body == "envelope" else orjson.dumps(envelope.payload)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("esbhub-id", envelope.id), ("traceparent", envelope.headers.get("traceparent", ""))]
        props.ContentType = "application/json"
        topic = self.config.topic.replace("{type}", envelope.type)
        with self._lock:
            c = self._ensure()
            info = c.publish(topic, body, qos=1, retain=self.config.retain, properties=props)
            if info.rc != 0:
                self._reset()
                raise TransientError(f"mqtt publish: not queued (rc={info.rc})")
            try:
                info.wait_for_publish(self.config.timeout)
            except (RuntimeError, ValueError) as exc:
                self._reset()
                raise TransientError(f"mqtt publish: {exc}") from exc
            if not info.is_published():
                self._reset()
                raise TransientError(f"mqtt publish: no PUBACK within {self.config.timeout}s")
            reason = self._reasons.pop(info.mid, None)
        if reason is not None and getattr(reason, "is_failure", False):
            raise PermanentError(f"mqtt publish to '{topic}' refused: {reason}")
        return {"topic": topic, "mid": info.mid}

    def close(self) -> None:
        with self._lock:
            self._reset()

    def health(self) -> Any:
        h = super().health()
        h.detail.update(broker=f"{self.config.host}:{self.config.port}", topic=self.config.topic)
        return h


SPEC = AdapterSpec(
    name="mqtt",
    config_model=MqttSinkConfig,
    source_config_model=MqttSourceConfig,
    sink_config_model=MqttSinkConfig,
    source_cls=MqttSource,
    sink_cls=MqttSink,
    description="MQTT 5 (paho-mqtt 2, QoS 1): persistent-session subscriber acking after emit; publisher "
    "waiting for PUBACK.",
)

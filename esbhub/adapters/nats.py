"""NATS JetStream (nats-py) — durable pull consumer in, acknowledged publish out.

nats-py is asyncio; each source / sink runs its own event loop in a daemon thread and the
synchronous adapter methods hand coroutines to it with a deadline.

Source: a durable pull consumer (``durable`` name, explicit ack, ``ack_wait``); each fetched
batch goes to ``emit`` and is acked only after ``emit`` returned; if ``emit`` raises, every
message of the batch is NAKed with a backoff delay and comes back. Envelope ids come from the
publisher's ``Nats-Msg-Id`` header or else from (stream, stream sequence), so a redelivered
message keeps its id.

Sink: ``js.publish`` waits for the stream's PubAck (bounded by ``timeout``) and sets
``Nats-Msg-Id`` = envelope id, so JetStream itself drops a duplicate within its window.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
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
    mapped_errors,
    stable_id,
)
from esbhub.bus.envelope import Envelope
from esbhub.errors import ConfigError, InvalidMessage, TransientError
from esbhub.secrets import SecretRef, resolve


class NatsConnection(AdapterConfig):
    servers: list[str] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"], description="Server URLs (no credentials in them)."
    )
    user: str | None = Field(default=None, description="User name, if the server wants one.")
    password: SecretRef | None = Field(default=None, description="Password, by reference.")
    token: SecretRef | None = Field(default=None, description="Auth token, by reference.")
    creds_file: str | None = Field(default=None, description="Path of a NATS .creds file (JWT + NKey).")
    stream: str = Field(description="JetStream stream name.", min_length=1)
    create_stream: bool = Field(
        default=False, description="Create the stream (file storage) for 'subjects' if it does not exist."
    )
    subjects: list[str] = Field(default_factory=list, description="Subjects of the stream when it is created.")


class NatsSourceConfig(NatsConnection, WrapsMessageBodies):
    """Durable pull consumer on a JetStream stream."""

    durable: str = Field(description="Durable consumer name (the position survives restarts).", min_length=1)
    filter_subject: str | None = Field(default=None, description="Only messages on this subject (pattern).")
    batch_size: int = Field(default=100, ge=1, le=10000, description="Messages fetched and emitted per batch.")
    ack_wait: float = Field(default=30.0, gt=0, le=3600, description="Seconds before an unacked message is redelivered.")
    body: Literal["json", "text", "envelope"] = Field(default="json", description="Payload format of messages.")
    encoding: str = Field(default="utf-8", description="Encoding of 'text' payloads.")
    envelope: EnvelopeTemplate | None = Field(default=None, description="Type and source of envelopes made from messages.")


class NatsSinkConfig(NatsConnection):
    """Publishes to a JetStream subject and waits for the PubAck."""

    subject: str = Field(description="Subject to publish to; '{type}' is replaced by the envelope type.")
    body: Literal["payload", "envelope"] = Field(default="payload", description="Publish the payload (JSON) or the envelope.")


class _Loop:
    """A private asyncio loop in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise TransientError(f"nats: no answer within {timeout}s") from None

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


async def _connect(cfg: NatsConnection, name: str, **kw: Any) -> Any:
    import nats

    opts: dict[str, Any] = {
        "servers": cfg.servers,
        "name": f"esbhub-{name}",
        "connect_timeout": cfg.timeout,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        **kw,
    }
    if cfg.user:
        opts["user"] = cfg.user
        if cfg.password:
            opts["password"] = resolve(cfg.password, loc="password").get_secret_value()
    if cfg.token:
        opts["token"] = resolve(cfg.token, loc="token").get_secret_value()
    if cfg.creds_file:
        opts["user_credentials"] = cfg.creds_file
    nc = await nats.connect(**opts)
    js = nc.jetstream(timeout=cfg.timeout)
    if cfg.create_stream:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        try:
            await js.stream_info(cfg.stream)
        except NotFoundError:
            if not cfg.subjects:
                raise ConfigError("nats: create_stream needs 'subjects'") from None
            await js.add_stream(StreamConfig(name=cfg.stream, subjects=cfg.subjects, storage=StorageType.FILE))
    return nc, js


class NatsSource(ThreadedSource[NatsSourceConfig]):
    adapter_name = "nats"

    def __init__(self, config: NatsSourceConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self.nc: Any = None

    def to_envelope(self, msg: Any) -> Envelope:
        cfg = self.config
        try:
            if cfg.body == "envelope":
                return Envelope.from_bytes(msg.data)
            payload: Any = orjson.loads(msg.data) if cfg.body == "json" else msg.data.decode(cfg.encoding)
        except (orjson.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidMessage(f"nats: message on '{msg.subject}' is not valid {cfg.body}: {str(exc)[:200]}") from None
        hdrs = msg.headers or {}
        mid = hdrs.get("Nats-Msg-Id")
        key = f"nats:{cfg.stream}:id:{mid}" if mid else f"nats:{cfg.stream}:seq:{msg.metadata.sequence.stream}"
        h = {"nats_subject": msg.subject}
        if "traceparent" in hdrs:
            h["traceparent"] = hdrs["traceparent"]
        assert cfg.envelope is not None
        return cfg.envelope.make(payload, id=mid if mid and len(mid) == 26 else stable_id(key), headers=h)

    async def _run(self, emit: Emit) -> None:
        import nats.errors
        from nats.js.api import AckPolicy, ConsumerConfig

        cfg = self.config
        delays = backoff_delays(0.2, 10.0)
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                # bounded: the first connect must fail visibly, not retry forever inside nats-py
                nc, js = await asyncio.wait_for(_connect(cfg, self.name), cfg.timeout * 3)
            except Exception as exc:  # noqa: BLE001 - recorded; retried with backoff
                self.tracker.record_error(exc)
                self.log.warning("nats_connect_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
                await loop.run_in_executor(None, self._stop.wait, next(delays))
                continue
            self.nc = nc
            try:
                psub = await js.pull_subscribe(
                    cfg.filter_subject or "",
                    durable=cfg.durable,
                    stream=cfg.stream,
                    config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=cfg.ack_wait,
                                          max_ack_pending=max(1000, cfg.batch_size * 4)),
                )
                self.tracker.detail["connected"] = True
                fail_delays = None
                while not self._stop.is_set():
                    try:
                        msgs = await psub.fetch(cfg.batch_size, timeout=0.5)
                    except (TimeoutError, nats.errors.TimeoutError):
                        continue  # nats-py raises either when the pull request expires with no message
                    envs, good = [], []
                    for m in msgs:
                        try:
                            envs.append(self.to_envelope(m))
                            good.append(m)
                        except InvalidMessage as exc:
                            self.tracker.record_error(exc)
                            self.log.warning("nats_message_terminated", reason=str(exc))
                            await m.term()
                    if not envs:
                        continue
                    t0 = time.perf_counter()
                    try:
                        await loop.run_in_executor(None, emit, envs)
                    except Exception as exc:  # noqa: BLE001 - NAK: redelivered after a pause
                        self.tracker.record_error(exc)
                        self.log.warning("nats_emit_failed", error=type(exc).__name__, n=len(envs))
                        fail_delays = fail_delays or backoff_delays(0.2, 10.0)
                        d = next(fail_delays)
                        for m in good:
                            await m.nak(delay=d)
                        continue
                    fail_delays = None
                    for m in good:
                        await m.ack()
                    await nc.flush(timeout=cfg.timeout)
                    self.tracker.record_success(time.perf_counter() - t0, len(envs))
                    delays = backoff_delays(0.2, 10.0)
            except Exception as exc:  # noqa: BLE001 - connection trouble: reconnect from scratch
                self.tracker.record_error(exc)
                self.log.warning("nats_source_disconnected", error=f"{type(exc).__name__}: {str(exc)[:200]}")
                await loop.run_in_executor(None, self._stop.wait, next(delays))
            finally:
                self.tracker.detail["connected"] = False
                self.nc = None
                try:
                    await asyncio.wait_for(nc.close(), cfg.timeout)
                except Exception:  # noqa: BLE001, S110 - closing a dead connection
                    pass

    def _loop(self, emit: Emit) -> None:
        asyncio.run(self._run(emit))

    def health(self) -> Any:
        h = super().health()
        h.detail.update(stream=self.config.stream, durable=self.config.durable)
        return h


class NatsSink(Sink[NatsSinkConfig]):
    adapter_name = "nats"

    def __init__(self, config: NatsSinkConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._lock = threading.Lock()
        self._loop: _Loop | None = None
        self._nc: Any = None
        self._js: Any = None

    def _ensure(self) -> Any:
        if self._loop is None:
            self._loop = _Loop(f"nats-sink-{self.name}")
        if self._nc is None or self._nc.is_closed:
            # no endless reconnect inside a send: a dead server is reported, the route retries
            self._nc, self._js = self._loop.run(
                _connect(self.config, self.name, max_reconnect_attempts=1), self.config.timeout * 2 + 1
            )
        return self._js

    def deliver(self, envelope: Envelope) -> dict[str, Any] | None:
        body = envelope.to_bytes() if self.config.body == "envelope" else orjson.dumps(envelope.payload)
        subject = self.config.subject.replace("{type}", envelope.type)
        headers = {"Nats-Msg-Id": envelope.id, "traceparent": envelope.headers.get("traceparent", "")}
        with self._lock:
            try:
                with mapped_errors("nats", "publish"):
                    js = self._ensure()
                    assert self._loop is not None
                    ack = self._loop.run(
                        js.publish(subject, body, timeout=self.config.timeout, stream=self.config.stream, headers=headers),
                        self.config.timeout + 1,
                    )
            except TransientError:
                self._reset()
                raise
        return {"stream": ack.stream, "seq": ack.seq, "duplicate": bool(ack.duplicate)}

    def _reset(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and self._loop is not None:
            try:
                self._loop.run(nc.close(), 2)
            except Exception:  # noqa: BLE001, S110 - closing a dead connection
                pass

    def close(self) -> None:
        with self._lock:
            self._reset()
            if self._loop is not None:
                self._loop.close()
                self._loop = None

    def health(self) -> Any:
        h = super().health()
        h.detail.update(stream=self.config.stream, subject=self.config.subject)
        return h


SPEC = AdapterSpec(
    name="nats",
    config_model=NatsSinkConfig,
    source_config_model=NatsSourceConfig,
    sink_config_model=NatsSinkConfig,
    source_cls=NatsSource,
    sink_cls=NatsSink,
    description="NATS JetStream (nats-py): durable pull consumer acking after emit (NAK with delay on "
    "failure); publish waiting for the PubAck with Nats-Msg-Id = envelope id.",
)

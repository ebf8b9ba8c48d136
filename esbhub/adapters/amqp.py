"""AMQP 0-9-1 (RabbitMQ, kombu/py-amqp) to and from *foreign* exchanges and queues — systems
that publish on their own broker topology rather than the hub's.

Source: consumes a queue with manual acks and a bounded prefetch; messages are gathered into
small batches, handed to ``emit``, and acked only after ``emit`` returned. If ``emit`` raises,
the batch is requeued (after a backoff pause) and seen again; if the connection drops, the
broker requeues everything unacked. A body that cannot be parsed is rejected without requeue
(so the queue's own dead-letter exchange, if any, keeps it) and reported in ``health()``.

Sink: persistent messages with publisher confirms (``confirm_publish``): ``send`` returns only
after the broker confirmed; ``message_id`` = envelope id, so consumers can deduplicate.
A missing exchange (404) is permanent; a lost connection or a timeout is transient.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from esbhub.adapters.base import (
    AdapterConfig,
    AdapterSpec,
    Emit,
    EnvelopeTemplate,
    Sink,
    ThreadedSource,
    WrapsMessageBodies,
    backoff_delays,
    check_url_secret,
    mapped_errors,
    redact_url,
    resolve_url,
    stable_id,
)
from esbhub.bus.envelope import Envelope
from esbhub.errors import InvalidMessage, PermanentError, TransientError

AmqpUrl = Annotated[str, AfterValidator(check_url_secret)]


class AmqpBinding(BaseModel):
    """A binding of the consumed queue to a (foreign) exchange."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exchange: str = Field(description="Exchange name.")
    routing_key: str = Field(default="#", description="Binding key (topic pattern / direct key).")
    exchange_type: Literal["topic", "direct", "fanout", "headers"] = Field(default="topic", description="Exchange type.")


class AmqpConnection(AdapterConfig):
    url: AmqpUrl = Field(
        description="amqp://user:${env:PASS}@host:5672/vhost (password only by reference); amqps:// for TLS."
    )
    heartbeat: int = Field(default=30, ge=0, le=600, description="AMQP heartbeat seconds (0 = off).")


class AmqpSourceConfig(AmqpConnection, WrapsMessageBodies):
    """Consumes a queue on a foreign RabbitMQ topology."""

    queue: str = Field(description="Queue to consume.", min_length=1)
    declare: bool = Field(default=False, description="Declare the queue (durable) and its bindings if missing.")
    bindings: list[AmqpBinding] = Field(default_factory=list, description="Bindings to declare (with declare: true).")
    prefetch: int = Field(default=200, ge=1, le=10000, description="Unacked messages held at most.")
    batch_size: int = Field(default=100, ge=1, le=10000, description="Messages per emit.")
    body: Literal["json", "text", "envelope"] = Field(
        default="json", description="Body format: JSON → payload; text → payload string; an esbhub envelope."
    )
    encoding: str = Field(default="utf-8", description="Text encoding of 'text' bodies (e.g. gb18030).")
    envelope: EnvelopeTemplate | None = Field(
        default=None, description="Type and source of envelopes made from json/text bodies (required for those)."
    )


class AmqpSinkConfig(AmqpConnection):
    """Publishes to a (foreign) exchange with publisher confirms."""

    exchange: str = Field(default="", description="Exchange to publish to ('' = the default exchange).")
    routing_key: str | None = Field(default=None, description="Routing key (default: the envelope type).")
    body: Literal["payload", "envelope"] = Field(default="payload", description="Publish the payload (JSON) or the envelope.")
    declare_exchange: Literal["topic", "direct", "fanout", "headers"] | None = Field(
        default=None, description="Declare the exchange (durable) with this type; null = it must exist."
    )
    mandatory: bool = Field(
        default=True, description="Refuse (PermanentError) a message no queue is bound for, instead of dropping it."
    )


def _connection(cfg: AmqpConnection, name: str, **kw: Any) -> Any:
    import kombu

    return kombu.Connection(
        resolve_url(cfg.url),
        connect_timeout=cfg.timeout,
        heartbeat=cfg.heartbeat,
        transport_options={"client_properties": {"connection_name": f"esbhub-{name}"}, **kw},
    )


def _release_quietly(conn: Any) -> None:
    """Close a connection that may already be dead; a failure here changes nothing."""
    with contextlib.suppress(Exception):
        conn.release()


class AmqpSource(ThreadedSource[AmqpSourceConfig]):
    adapter_name = "amqp"

    def __init__(self, config: AmqpSourceConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self.conn: Any = None

    def to_envelope(self, body: bytes, props: dict[str, Any], headers: dict[str, Any]) -> Envelope:
        cfg = self.config
        try:
            if cfg.body == "envelope":
                return Envelope.from_bytes(body)
            payload: Any = orjson.loads(body) if cfg.body == "json" else body.decode(cfg.encoding)
        except (orjson.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidMessage(f"amqp: body is not valid {cfg.body}: {str(exc)[:200]}") from None
        mid = props.get("message_id")
        h = {"amqp_queue": cfg.queue}
        if isinstance(headers.get("traceparent"), str):
            h["traceparent"] = headers["traceparent"]
        assert cfg.envelope is not None
        return cfg.envelope.make(payload, id=stable_id(f"amqp:{cfg.queue}:{mid}") if mid else None, headers=h)

    def _setup(self) -> tuple[Any, Any]:
        import kombu

        cfg = self.config
        conn = _connection(cfg, self.name)
        conn.connect()
        ch = conn.channel()
        ch.basic_qos(0, cfg.prefetch, False)
        if cfg.declare:
            ch.queue_declare(cfg.queue, durable=True, auto_delete=False)
            for b in cfg.bindings:
                ch.exchange_declare(b.exchange, b.exchange_type, durable=True, auto_delete=False)
                ch.queue_bind(cfg.queue, b.exchange, b.routing_key)
        q = kombu.Queue(cfg.queue, channel=ch, no_declare=True)
        consumer = kombu.Consumer(ch, queues=[q], no_ack=False, prefetch_count=cfg.prefetch)
        return conn, consumer

    def _run_connected(self, emit: Emit) -> None:
        conn, consumer = self._setup()
        self.conn = conn
        self.tracker.detail["consuming"] = True
        pending: list[Any] = []
        consumer.on_message = pending.append
        delays = None
        with consumer:
            while not self._stop.is_set():
                try:
                    conn.drain_events(timeout=0.05 if pending else 0.5)
                    if len(pending) < self.config.batch_size:
                        continue
                except TimeoutError:
                    conn.heartbeat_check()
                if not pending:
                    continue
                batch, envs = pending[:], []
                pending.clear()
                good = []
                for m in batch:
                    try:
                        envs.append(self.to_envelope(m.body, m.properties, m.headers or {}))
                        good.append(m)
                    except InvalidMessage as exc:
                        self.tracker.record_error(exc)
                        self.log.warning("amqp_message_rejected", reason=str(exc))
                        m.reject(requeue=False)
                if not envs:
                    continue
                t0 = time.perf_counter()
                try:
                    emit(envs)
                except Exception as exc:  # noqa: BLE001 - nothing acked: requeued, backed off
                    self.tracker.record_error(exc)
                    self.log.warning("amqp_emit_failed", error=type(exc).__name__, n=len(envs))
                    for m in good:
                        m.requeue()
                    delays = delays or backoff_delays(0.2, 10.0)
                    self._stop.wait(next(delays))
                    continue
                delays = None
                if len(good) == len(batch):
                    good[-1].ack(multiple=True)
                else:
                    for m in good:
                        m.ack()
                self.tracker.record_success(time.perf_counter() - t0, len(envs))

    def _loop(self, emit: Emit) -> None:
        delays = backoff_delays(0.2, 10.0)
        while not self._stop.is_set():
            try:
                with mapped_errors("amqp", "consume"):
                    self._run_connected(emit)
            except (TransientError, PermanentError) as exc:
                self.tracker.record_error(exc)
                self.log.warning("amqp_source_disconnected", error=str(exc)[:300])
                self._stop.wait(next(delays))
            finally:
                self.tracker.detail["consuming"] = False
                self._close_conn()

    def _close_conn(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            _release_quietly(conn)

    def health(self) -> Any:
        h = super().health()
        h.detail.update(url=redact_url(self.config.url), queue=self.config.queue)
        return h


class AmqpSink(Sink[AmqpSinkConfig]):
    """Publisher confirms are *pipelined*: a batch is published at once and the sink then waits
    (bounded by ``timeout``) until the broker confirmed every delivery tag — one round trip per
    batch, not per message. With ``mandatory`` an unroutable message comes back (basic.return)
    before its confirm and the send fails permanently instead of the message vanishing."""

    adapter_name = "amqp"

    def __init__(self, config: AmqpSinkConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._ch: Any = None
        self._tag = 0
        self._unconfirmed: set[int] = set()
        self._nacked: list[int] = []
        self._returned: list[str] = []

    def _ensure(self) -> Any:
        if self._ch is None:
            conn = _connection(self.config, self.name)
            conn.connect()
            ch = conn.default_channel
            if self.config.declare_exchange and self.config.exchange:
                ch.exchange_declare(self.config.exchange, self.config.declare_exchange, durable=True, auto_delete=False)
            ch.confirm_select()
            ch.events["basic_ack"].add(self._on_ack)
            ch.events["basic_nack"].add(self._on_nack)
            ch.events["basic_return"].add(self._on_return)
            self._conn, self._ch = conn, ch
            self._tag = 0
            self._unconfirmed.clear()
        return self._ch

    def _settle(self, tag: int, multiple: bool) -> int:
        done = {t for t in self._unconfirmed if t <= tag} if multiple else {tag} & self._unconfirmed
        self._unconfirmed -= done
        return len(done)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._nacked.extend([tag] * self._settle(tag, multiple))

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.append(f"{exchange or '(default)'}/{routing_key}: {exc}")

    def _reset(self) -> None:
        conn, self._conn, self._ch = self._conn, None, None
        if conn is not None:
            _release_quietly(conn)

    def deliver(self, envelope: Envelope) -> dict[str, Any] | None:
        return self.deliver_many([envelope])[0]

    def deliver_many(self, envelopes: Sequence[Envelope]) -> list[dict[str, Any] | None]:
        import amqp
        import amqp.exceptions as ax

        cfg = self.config
        with self._lock:
            try:
                with mapped_errors("amqp", "publish", extra={ax.NotFound: PermanentError, ax.AccessRefused: PermanentError}):
                    ch = self._ensure()
                    self._nacked.clear()
                    self._returned.clear()
                    for e in envelopes:
                        body = e.to_bytes() if cfg.body == "envelope" else orjson.dumps(e.payload)
                        msg = amqp.Message(
                            body,
                            content_type="application/json",
                            delivery_mode=2,
                            message_id=e.id,
                            correlation_id=e.correlation_id or "",
                            application_headers={"traceparent": e.headers.get("traceparent", ""), "esbhub_type": e.type},
                        )
                        ch.basic_publish(msg, exchange=cfg.exchange, routing_key=cfg.routing_key or e.type,
                                         mandatory=cfg.mandatory, timeout=cfg.timeout)
                        self._tag += 1
                        self._unconfirmed.add(self._tag)
                    deadline = time.monotonic() + cfg.timeout
                    while self._unconfirmed:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise TransientError(f"amqp publish: broker did not confirm within {cfg.timeout}s")
                        self._conn.drain_events(timeout=left)
            except (TransientError, PermanentError):
                self._reset()
                raise
            if self._nacked:
                raise TransientError(f"amqp publish: broker nacked {len(self._nacked)} message(s)")
            if self._returned:
                raise PermanentError(f"amqp publish: unroutable (mandatory): {self._returned[0][:300]}")
        return [{"exchange": cfg.exchange, "confirmed": True} for _ in envelopes]

    def close(self) -> None:
        with self._lock:
            self._reset()

    def health(self) -> Any:
        h = super().health()
        h.detail.update(url=redact_url(self.config.url), exchange=self.config.exchange)
        return h


SPEC = AdapterSpec(
    name="amqp",
    config_model=AmqpSinkConfig,
    source_config_model=AmqpSourceConfig,
    sink_config_model=AmqpSinkConfig,
    source_cls=AmqpSource,
    sink_cls=AmqpSink,
    description="AMQP 0-9-1 (RabbitMQ) to and from foreign exchanges/queues: consume with ack after emit, "
    "publish persistent with publisher confirms.",
)

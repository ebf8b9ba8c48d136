"""RabbitMQ backend of the broker seam (production), over kombu's py-amqp transport.

Topology (declared by :meth:`RabbitBroker.connect`, all durable)::

    publish(routing_key)          publish(queue=q)               publish(queue=q, delay=s)
          │                              │                               │
          ▼                              ▼ default exchange ""           ▼ default exchange ""
    <exchange> (topic) ──bindings──▶  q (durable)  ◀──TTL expiry──  esbhub.delay.q.<q>.<tier>ms
          │ alternate-exchange                      dead-letter-exchange "" + routing key q
          ▼
    <exchange>.unrouted (fanout) ──▶ esbhub.unrouted (durable)

* Every message is persistent (``delivery_mode=2``); ``queue_type="quorum"`` declares quorum
  queues (clusters; replicated, at-least-once dead-lettering for the delay queues).
* Nothing accepted is dropped: a routing key nobody is bound to goes through the exchange's
  **alternate exchange** to ``esbhub.unrouted``; a ``queue=`` publish is ``mandatory`` and a
  returned message is republished into ``esbhub.unrouted`` before its caller is released.

Publisher confirms, pipelined (group commit)
    One publisher thread per broker object owns one connection whose channel is in confirm
    mode. Callers of :meth:`publish_many` from any thread enqueue their messages and wait on
    their own request only. The publisher thread takes everything waiting and writes it
    without waiting per message; it keeps a sliding window of up to ``publish_batch_max``
    unconfirmed messages, writing new requests while the confirms of earlier ones are on
    their way (it waits with select() on the AMQP socket and a wake-up socket), and settles
    requests from ``basic.ack``/``basic.nack`` frames (``multiple=True`` honoured). One round
    trip covers whatever was written meanwhile, so confirms cost little next to unconfirmed
    publishing (figures: ``bench/bus.py``). A nack fails the requests it covers with
    :class:`BrokerUnavailable`; a lost connection makes the thread reconnect (backoff) and
    publish the unconfirmed requests again (at-least-once; ids make it idempotent). A caller
    whose ``timeout`` passes gets :class:`BrokerUnavailable` and must not report success.

Delayed redelivery (retries) without blocking any consumer
    ``delay`` is rounded to the nearest of a fixed set of tiers (:data:`DELAY_TIERS_MS`,
    100 ms … 24 h, at most ×1.5 apart: at most 22.5 % off; retry jitter is as large). Each
    (target, tier) pair has its own delay queue with ``x-message-ttl=<tier>`` and
    ``x-dead-letter-exchange`` / ``x-dead-letter-routing-key`` pointing back at the target.
    Because all messages in one delay queue share one TTL, FIFO order is expiry order: there
    is no head-of-line blocking (a long delay never holds back a short one), and a message
    becomes visible within milliseconds of its tier. Caveat: classic queues dead-letter
    at-most-once (a broker crash at that instant can lose the moved message); quorum queues
    are declared with ``x-dead-letter-strategy=at-least-once``. The target queue must exist
    (it is checked once per process); :meth:`delete_queue` deletes its delay queues too.

Consumers
    :meth:`consume` opens its own connection per call (one per consumer thread), sets
    ``basic.qos(prefetch)``, and acks only when the callback calls ``delivery.ack()``. Any
    connection error or broker restart → reconnect with exponential backoff (jittered,
    capped at ``reconnect_max_interval``); RabbitMQ redelivers what was unacked. Acks for a
    delivery of a dead connection are ignored (the message comes again, flagged
    ``redelivered``). Heartbeats are ticked between deliveries (a callback that blocks for
    longer than twice ``heartbeat`` loses the connection; its message is redelivered); every
    socket call has a timeout. A body that is not an envelope is moved to ``esbhub.unrouted``
    and acked (logged). Acks are coalesced into ``multiple=True`` acks that never reach past
    a delivery still unsettled (sent within 20 ms, when a quarter of the prefetch window is
    waiting, or when the socket has nothing to read), and py-amqp reads the socket in 64 KiB
    chunks: together they halve the consumer's CPU per message. ``ack()`` from another
    thread is handed to the consumer thread (a channel is never shared between threads).

``queue_depth`` = ready messages + messages in the queue's delay queues + deliveries unacked
by consumers *of this process* (AMQP cannot count other processes' unacked messages).

Secrets: the URL password may be a reference (``amqp://hub:${env:AMQP_PASSWORD}@host//``),
resolved at each connect; the password is never logged (``safe_url``).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import math
import random
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

import amqp
import kombu
from amqp import exceptions as amqp_exc
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from esbhub.bus.broker import UNROUTED_QUEUE, Broker, ConsumeCallback, Delivery
from esbhub.bus.envelope import Envelope
from esbhub.errors import BrokerUnavailable, ConfigError, ErrorDetail
from esbhub.logging import get_logger
from esbhub.secrets import is_reference, resolve

log = get_logger("esbhub.bus.rabbit")

DELAY_TIERS_MS: tuple[int, ...] = tuple(
    [int(m * 10**e) for e in range(2, 8) for m in (1, 1.5, 2, 3, 4, 6, 8)] + [86_400_000]
)  # 100 ms, 150 ms, 200 ms, 300 ms … 80,000 s, 24 h: neighbours at most ×1.5 apart
"""Delay tiers in milliseconds; a requested delay is rounded to the nearest (log scale)."""

DELAY_PREFIX = "esbhub.delay"

# TimeoutError (socket.timeout) is an OSError: catch it before these.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    amqp_exc.ConnectionError,
    amqp_exc.RecoverableConnectionError,
    OSError,
    EOFError,
    AttributeError,  # py-amqp touching a transport that was torn down under it
)
CHANNEL_ERRORS: tuple[type[BaseException], ...] = (amqp_exc.ChannelError,)


class RabbitOptions(BaseModel):
    """Tuning of :class:`RabbitBroker` (keyword arguments of its constructor)."""

    model_config = ConfigDict(extra="forbid")

    queue_type: Literal["classic", "quorum"] = Field(
        default="classic", description="Queue type of subscription, delay and unrouted queues; 'quorum' on clusters."
    )
    connect_timeout: float = Field(default=5.0, gt=0, le=120, description="TCP + AMQP handshake timeout, seconds.")
    socket_timeout: float = Field(default=10.0, gt=0, le=300, description="Read/write timeout of every socket call.")
    heartbeat: int = Field(
        default=60, ge=0, le=600,
        description="AMQP heartbeat of publisher/consumer connections, s; a callback blocking > 2× this loses its connection.",
    )
    publish_timeout: float = Field(
        default=10.0, gt=0, le=300, description="Default wait for the publisher confirm of a publish call, seconds."
    )
    publish_batch_max: int = Field(default=5000, ge=1, le=100_000, description="Most messages in one confirm batch.")
    reconnect_initial_interval: float = Field(default=0.1, gt=0, le=60, description="First reconnect wait, seconds.")
    reconnect_max_interval: float = Field(default=5.0, gt=0, le=300, description="Longest reconnect wait, seconds.")
    unrouted_queue: str = Field(default=UNROUTED_QUEUE, description="Durable queue receiving unroutable messages.")
    delay_prefix: str = Field(default=DELAY_PREFIX, description="Name prefix of the delay queues.")
    connection_name: str = Field(
        default="esbhub", description="Shown by RabbitMQ (management UI, rabbitmqctl) as '<name>/<role>'."
    )


_URL_RE = re.compile(r"^(?P<scheme>amqps?|pyamqp)://(?:(?P<user>[^:@/]*)(?::(?P<password>[^@]*))?@)?(?P<rest>.*)$")


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int
    userid: str
    password_ref: str | None  # '${env:X}' / '${file:P}' reference, resolved at each connect
    password: SecretStr | None  # inline password (discouraged; never logged)
    virtual_host: str
    ssl: bool

    def secret(self) -> str:
        if self.password_ref is not None:
            return resolve(self.password_ref, loc="broker_url.password").get_secret_value()
        return self.password.get_secret_value() if self.password is not None else "guest"


def parse_amqp_url(url: str) -> tuple[_Endpoint, str]:
    """Split an AMQP URL into connection parameters and a log-safe form of it."""
    m = _URL_RE.match(url.strip())
    if not m:
        raise ConfigError(
            "not an AMQP URL",
            details=[ErrorDetail(loc="broker_url", msg="expected 'amqp://user:${env:PASSWORD}@host:5672/vhost'")],
        )
    scheme, rest = m.group("scheme"), m.group("rest")
    user = unquote(m.group("user") or "guest")
    pw = m.group("password")
    hostport, _, vhost = rest.partition("/")
    vhost = unquote(vhost) if vhost else "/"
    host, _, port_s = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    host = host or "127.0.0.1"
    ssl = scheme == "amqps"
    try:
        port = int(port_s) if port_s else (5671 if ssl else 5672)
    except ValueError:
        raise ConfigError(
            "bad port in broker URL", details=[ErrorDetail(loc="broker_url", msg=f"port '{port_s}' is not a number")]
        ) from None
    ref = pw if pw is not None and is_reference(pw) else None
    inline = SecretStr(unquote(pw)) if pw is not None and ref is None else None
    safe_pw = "" if pw is None else (":" + pw if ref else ":***")
    safe = f"{scheme}://{user}{safe_pw}@{hostport}/{rest.partition('/')[2]}"
    return _Endpoint(host, port, user, ref, inline, vhost, ssl), safe


def delay_tier_ms(delay_s: float) -> int:
    """The delay tier (ms) nearest to ``delay_s`` seconds on a log scale."""
    ms = max(1.0, delay_s * 1000.0)
    i = bisect.bisect_left(DELAY_TIERS_MS, ms)
    if i == 0:
        return DELAY_TIERS_MS[0]
    if i >= len(DELAY_TIERS_MS):
        return DELAY_TIERS_MS[-1]
    lo, hi = DELAY_TIERS_MS[i - 1], DELAY_TIERS_MS[i]
    return lo if math.log(ms / lo) <= math.log(hi / ms) else hi


class _Backoff:
    """Exponential backoff with full jitter, capped."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum, self.n = initial, maximum, 0

    def next(self) -> float:
        base = min(self.maximum, self.initial * (2**self.n))
        self.n = min(self.n + 1, 30)
        return base / 2 + random.random() * base / 2

    def reset(self) -> None:
        self.n = 0


@dataclass(eq=False)
class _PubRequest:
    """One caller's publish_many: its messages and the event it waits on."""

    items: list[tuple[str, str, amqp.Message, bool]]  # exchange, routing key, message, mandatory
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    remaining: int = 0
    error: BaseException | None = None
    cancelled: bool = False

    def fail(self, exc: BaseException) -> None:
        if not self.done.is_set():
            self.error = exc
            self.done.set()


class RabbitBroker(Broker):
    """:class:`~esbhub.bus.broker.Broker` on RabbitMQ. Thread-safe; see the module docstring."""

    def __init__(self, url: str = "amqp://guest:guest@127.0.0.1:5672//", exchange: str = "esbhub", **kw: Any) -> None:
        self.options = RabbitOptions(**kw)
        self._endpoint, self.safe_url = parse_amqp_url(url)
        self.url = url  # as given (a password in it should be a reference); logs use safe_url
        self.exchange = exchange
        self.unrouted_exchange = f"{exchange}.unrouted"
        self._closing = threading.Event()
        # control connection: declarations, get, depth, health (one lock)
        self._ctl_lock = threading.RLock()
        self._ctl_conn: kombu.Connection | None = None
        self._ctl_chs: dict[str, Any] = {}  # "main": declarations and probes; "get": basic_get deliveries
        self._ctl_gen = 0
        self._connected = False
        self._last_error: str | None = None
        # publisher thread
        self._pub_lock = threading.Lock()
        self._pub_thread: threading.Thread | None = None
        self._pub_incoming: collections.deque[_PubRequest] = collections.deque()
        self._pub_wakeup = threading.Condition(threading.Lock())
        self._pub_connected = False
        self._wake_r, self._wake_w = socket.socketpair()  # wakes the publisher out of select()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # caches and counters
        self._known_queues: set[str] = set()
        self._declared_delay: set[str] = set()
        self._unacked: collections.Counter[str] = collections.Counter()
        self._unacked_lock = threading.Lock()
        self.stats: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------ connections
    def _new_connection(self, heartbeat: int, role: str) -> kombu.Connection:
        ep = self._endpoint
        conn = kombu.Connection(
            hostname=ep.host,
            port=ep.port,
            userid=ep.userid,
            password=ep.secret,  # callable: resolved at each (re)connect
            virtual_host=ep.virtual_host,
            ssl=ep.ssl,
            transport="pyamqp",
            connect_timeout=self.options.connect_timeout,
            heartbeat=heartbeat,
            transport_options={
                "read_timeout": self.options.socket_timeout,
                "write_timeout": self.options.socket_timeout,
                "client_properties": {"connection_name": f"{self.options.connection_name}/{role}"},
            },
        )
        try:
            # one attempt, no sleep: the callers own the backoff (kombu's connect() sleeps 2 s)
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, reraise_as_library_errors=False)
        except BaseException:
            _close_quietly(conn)
            raise
        return conn

    def _queue_args(self, **extra: Any) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.options.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
        args.update(extra)
        return args

    def _declare_base(self, ch: Any) -> None:
        ch.exchange_declare(self.unrouted_exchange, "fanout", durable=True, auto_delete=False)
        ch.queue_declare(self.options.unrouted_queue, durable=True, auto_delete=False, arguments=self._queue_args())
        ch.queue_bind(self.options.unrouted_queue, self.unrouted_exchange, "")
        ch.exchange_declare(
            self.exchange,
            "topic",
            durable=True,
            auto_delete=False,
            arguments={"alternate-exchange": self.unrouted_exchange},
        )

    def _ctl_reset(self) -> None:
        conn, self._ctl_conn = self._ctl_conn, None
        self._ctl_chs.clear()
        self._ctl_gen += 1
        if conn is not None:
            _close_quietly(conn)

    def _ctl_channel(self, kind: str = "main") -> Any:
        if self._closing.is_set():
            raise BrokerUnavailable("broker is closed")
        if self._ctl_conn is None:
            # no heartbeat: this connection idles between calls; errors reconnect it
            try:
                self._ctl_conn = self._new_connection(heartbeat=0, role="control")
            except CHANNEL_ERRORS as exc:  # login refused, vhost not allowed: no retry helps
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.error("broker_connect_refused", backend="rabbitmq", url=self.safe_url, error=self._last_error)
                raise BrokerUnavailable(f"RabbitMQ refused the connection: {exc}") from None
            self._ctl_gen += 1
            log.info("broker_connected", backend="rabbitmq", url=self.safe_url, role="control")
        ch = self._ctl_chs.get(kind)
        if ch is None or not ch.is_open:
            ch = self._ctl_chs[kind] = self._ctl_conn.connection.channel()
        return ch

    def _control(
        self, fn: Callable[[Any], Any], *, what: str, timeout: float | None = None, channel: str = "main"
    ) -> Any:
        """Run ``fn(channel)`` on a control channel; reconnect and retry on connection errors.

        Deliveries taken by :meth:`get` live on their own channel ("get"), so a channel error
        from a declaration or a probe never hands them back to the queue."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.options.publish_timeout)
        backoff = _Backoff(self.options.reconnect_initial_interval, self.options.reconnect_max_interval)
        while True:
            with self._ctl_lock:
                try:
                    result = fn(self._ctl_channel(channel))
                    self._last_error = None
                    return result
                except CHANNEL_ERRORS:
                    self._ctl_chs.pop(channel, None)  # the server closed it; the connection stays
                    raise
                except CONNECTION_ERRORS as exc:
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    self._ctl_reset()
                    err = exc
            wait = backoff.next()
            if time.monotonic() + wait > deadline or self._closing.is_set():
                raise BrokerUnavailable(f"RabbitMQ unavailable ({what}): {type(err).__name__}: {err}") from err
            log.warning("broker_reconnecting", backend="rabbitmq", role="control", what=what, error=str(err))
            time.sleep(wait)

    def connect(self) -> None:
        self._closing.clear()
        self._control(self._declare_base, what="connect")
        self._connected = True
        self._ensure_publisher()

    def close(self) -> None:
        self._closing.set()
        with self._pub_wakeup:
            self._pub_wakeup.notify_all()
        t = self._pub_thread
        if t is not None:
            t.join(timeout=self.options.socket_timeout + 5)
        self._pub_thread = None
        while self._pub_incoming:
            self._pub_incoming.popleft().fail(BrokerUnavailable("broker closed"))
        with self._ctl_lock:
            self._ctl_reset()
        self._connected = False

    def __enter__(self) -> RabbitBroker:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ topology
    def declare_queue(self, queue: str, binding_keys: Sequence[str] = ()) -> None:
        def do(ch: Any) -> None:
            if not self._connected:
                self._declare_base(ch)
            ch.queue_declare(queue, durable=True, auto_delete=False, arguments=self._queue_args())
            for key in binding_keys:
                ch.queue_bind(queue, self.exchange, key)

        self._control(do, what="declare_queue")
        self._connected = True
        self._known_queues.add(queue)

    def delete_queue(self, queue: str) -> None:
        def do(ch: Any) -> None:
            with _slow_call(ch, 300):  # RabbitMQ takes its time to drop a queue of millions
                ch.queue_delete(queue)
            for tier in DELAY_TIERS_MS:
                ch.queue_delete(self._delay_queue_name(queue, tier))

        self._control(do, what="delete_queue")
        self._known_queues.discard(queue)
        self._declared_delay = {d for d in self._declared_delay if not d.startswith(f"{self.options.delay_prefix}.q.{queue}.")}

    def _delay_queue_name(self, queue: str, tier: int) -> str:
        return f"{self.options.delay_prefix}.q.{queue}.{tier}ms"

    def _delay_route(self, tier: int, *, queue: str | None, routing_key: str | None) -> str:
        """Declare (once) and name the delay queue that releases into ``queue`` / the exchange."""
        if queue is not None:
            name, dlx, dlrk = self._delay_queue_name(queue, tier), "", queue
        else:
            assert routing_key is not None
            name = f"{self.options.delay_prefix}.x.{self.exchange}.{routing_key}.{tier}ms"
            dlx, dlrk = self.exchange, routing_key
        if name in self._declared_delay:
            return name
        args = self._queue_args(
            **{"x-message-ttl": tier, "x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": dlrk}
        )
        if self.options.queue_type == "quorum":
            args.update({"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})

        def do(ch: Any) -> None:
            if queue is not None and queue not in self._known_queues:
                ch.queue_declare(queue, passive=True)  # NotFound if the target is missing
            ch.queue_declare(name, durable=True, auto_delete=False, arguments=args)

        try:
            self._control(do, what="declare_delay_queue")
        except amqp_exc.NotFound:
            raise BrokerUnavailable(f"delayed publish to queue '{queue}' that does not exist") from None
        if queue is not None:
            self._known_queues.add(queue)
        self._declared_delay.add(name)
        return name

    # ------------------------------------------------------------------ publishing
    def _message(self, env: Envelope, reply_to: str | None) -> amqp.Message:
        props: dict[str, Any] = {
            "content_type": "application/json",
            "delivery_mode": 2,
            "message_id": env.id,
            "type": env.type,
            "timestamp": int(env.created_at.timestamp()),
        }
        if env.correlation_id:
            props["correlation_id"] = env.correlation_id
        if reply_to:
            props["reply_to"] = reply_to
        tp = env.headers.get("traceparent")
        if tp:
            props["application_headers"] = {"traceparent": tp}
        return amqp.Message(env.to_bytes(), **props)

    def publish_many(
        self,
        envelopes: Sequence[Envelope],
        *,
        routing_key: str | None = None,
        queue: str | None = None,
        delay: float = 0.0,
        reply_to: str | None = None,
        timeout: float | None = None,
    ) -> None:
        if not envelopes:
            return
        timeout = self.options.publish_timeout if timeout is None else timeout
        items: list[tuple[str, str, amqp.Message, bool]] = []
        if delay and delay > 0:
            for env in envelopes:
                rk = routing_key or env.type
                name = self._delay_route(delay_tier_ms(delay), queue=queue, routing_key=None if queue else rk)
                items.append(("", name, self._message(env, reply_to), True))
        elif queue is not None:
            items = [("", queue, self._message(env, reply_to), True) for env in envelopes]
        else:
            items = [(self.exchange, routing_key or env.type, self._message(env, reply_to), False) for env in envelopes]
        self._submit(items, timeout)

    def publish_raw(
        self, body: bytes, *, queue: str, headers: dict[str, Any] | None = None, timeout: float | None = None
    ) -> None:
        """Store a raw body in ``queue`` with a confirm (quarantine of undecodable messages)."""
        msg = amqp.Message(body, delivery_mode=2, application_headers=headers or {})
        self._submit([("", queue, msg, True)], self.options.publish_timeout if timeout is None else timeout)

    def _submit(self, items: list[tuple[str, str, amqp.Message, bool]], timeout: float) -> None:
        if self._closing.is_set():
            raise BrokerUnavailable("broker is closed")
        if not self._connected:  # the exchange and the unrouted queue must exist before a publish
            self._control(self._declare_base, what="connect", timeout=timeout)
            self._connected = True
        req = _PubRequest(items, deadline=time.monotonic() + timeout)
        self._ensure_publisher()
        with self._pub_wakeup:
            self._pub_incoming.append(req)
            self._pub_wakeup.notify()
        self._wake_publisher()
        if not req.done.wait(timeout):
            req.cancelled = True
            if not req.done.is_set():
                self.stats["publish_timeouts"] += 1
                detail = f" (last error: {self._last_error})" if self._last_error else ""
                raise BrokerUnavailable(f"RabbitMQ did not confirm {len(items)} message(s) within {timeout:g}s{detail}")
        if req.error is not None:
            raise req.error

    def _ensure_publisher(self) -> None:
        if self._pub_thread is not None and self._pub_thread.is_alive():
            return
        with self._pub_lock:
            if self._pub_thread is None or not self._pub_thread.is_alive():
                self._pub_thread = threading.Thread(target=self._pub_run, name="esbhub-rabbit-publisher", daemon=True)
                self._pub_thread.start()

    def _pub_take(self, carry: list[_PubRequest], room: int, block: bool) -> list[_PubRequest]:
        """Requests to publish next: carried-over ones first, then everything waiting, up to
        ``room`` messages; waits (≤ 1 s) for one only if ``block``."""
        batch: list[_PubRequest] = []
        n = 0
        now = time.monotonic()
        while carry and n < room:
            req = carry.pop(0)
            if req.cancelled or req.done.is_set():
                continue
            if now > req.deadline:
                req.fail(BrokerUnavailable("publish deadline passed while RabbitMQ was unreachable"))
                continue
            batch.append(req)
            n += len(req.items)
        if n >= room:
            return batch
        with self._pub_wakeup:
            if block and not batch and not self._pub_incoming and not self._closing.is_set():
                self._pub_wakeup.wait(timeout=1.0)
            while self._pub_incoming and n < room:
                req = self._pub_incoming.popleft()
                if req.cancelled:
                    continue
                batch.append(req)
                n += len(req.items)
        return batch

    def _wake_publisher(self) -> None:
        with contextlib.suppress(OSError):  # full or closed: the publisher is awake anyway
            self._wake_w.send(b"x")

    def _pub_run(self) -> None:  # noqa: C901 - one loop, kept together for readability
        """The publisher thread: a sliding window of unconfirmed messages.

        New requests are written as soon as they arrive (up to ``publish_batch_max``
        unconfirmed messages), while confirms for earlier ones are still on their way; the
        thread waits on the socket and on a wake-up socket at once (``select``)."""
        backoff = _Backoff(self.options.reconnect_initial_interval, self.options.reconnect_max_interval)
        conn: kombu.Connection | None = None
        ch: Any = None
        raw: Any = None
        carry: list[_PubRequest] = []
        tag = 0
        # delivery tag -> (request, message id if mandatory); insertion order = tag order
        outstanding: collections.OrderedDict[int, tuple[_PubRequest, str | None]] = collections.OrderedDict()
        returned: dict[str, collections.deque[tuple[int, _PubRequest]]] = {}  # message id -> (tag, request)
        last_progress = time.monotonic()
        next_tick = time.monotonic() + 1.0

        def forget_return(t: int, mid: str | None) -> None:
            if mid is None:
                return
            dq = returned.get(mid)
            if dq:
                for item in dq:
                    if item[0] == t:
                        dq.remove(item)
                        break
                if not dq:
                    del returned[mid]

        def settle_one(t: int, ok: bool) -> None:
            req, mid = outstanding.pop(t)
            forget_return(t, mid)
            if ok:
                req.remaining -= 1
                if req.remaining == 0 and req.error is None:
                    req.done.set()
            else:
                self.stats["publish_nacked"] += 1
                req.fail(BrokerUnavailable("RabbitMQ refused to store the message (basic.nack)"))

        def settle(dtag: int, multiple: bool, ok: bool) -> None:
            nonlocal last_progress
            last_progress = time.monotonic()
            if not multiple:
                if dtag in outstanding:
                    settle_one(dtag, ok)
                return
            while outstanding:
                t = next(iter(outstanding))
                if t > dtag:
                    break
                settle_one(t, ok)

        def on_ack(dtag: int, multiple: bool) -> None:
            settle(dtag, multiple, True)

        def on_nack(dtag: int, multiple: bool) -> None:
            settle(dtag, multiple, False)

        def send(req: _PubRequest, exchange: str, rk: str, msg: amqp.Message, mandatory: bool) -> None:
            nonlocal tag
            ch.basic_publish(msg, exchange, rk, mandatory)
            tag += 1
            mid = (msg.properties.get("message_id") or "") if mandatory else None
            outstanding[tag] = (req, mid)
            if mid is not None:
                returned.setdefault(mid, collections.deque()).append((tag, req))

        def on_return(exc: Exception, exchange: str, routing_key: str, message: amqp.Message) -> None:
            # basic.return precedes the ack of the same message: republish into unrouted
            # and make the caller wait for that confirm too.
            mid = message.properties.get("message_id") or ""
            dq = returned.get(mid)
            if not dq:
                return
            _t, req = dq.popleft()
            if not dq:
                del returned[mid]
            self.stats["publish_returned"] += 1
            if routing_key == self.options.unrouted_queue:
                req.fail(BrokerUnavailable(f"queue '{self.options.unrouted_queue}' is missing"))
                return
            log.warning("message_unroutable", backend="rabbitmq", queue=routing_key, message_id=mid)
            hdrs = dict(message.properties.get("application_headers") or {})
            hdrs["x-esbhub-unroutable-queue"] = routing_key
            props = dict(message.properties)
            props["application_headers"] = hdrs
            req.remaining += 1
            send(req, "", self.options.unrouted_queue, amqp.Message(message.body, **props), False)

        def drain_wakeups() -> None:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass

        def wait_io(timeout: float) -> bool:
            """True if frames may be ready on the AMQP socket."""
            if getattr(raw.transport, "_read_buffer", b""):
                return True
            sock = raw.transport.sock
            readable, _, _ = select.select([sock, self._wake_r], [], [], timeout)
            if self._wake_r in readable:
                drain_wakeups()
            return sock in readable

        while True:
            if self._closing.is_set():
                for req in [*carry, *(r for r, _ in outstanding.values())]:
                    req.fail(BrokerUnavailable("broker closed"))
                if conn is not None:
                    _close_quietly(conn)
                return
            if conn is None:
                try:
                    conn = self._new_connection(heartbeat=self.options.heartbeat, role="publisher")
                    raw = conn.connection
                    _buffer_reads(raw)
                    ch = raw.channel()
                    ch.confirm_select()
                    ch.events["basic_ack"].add(on_ack)
                    ch.events["basic_nack"].add(on_nack)
                    ch.events["basic_return"].add(on_return)
                    tag = 0
                    self._pub_connected = True
                    self._last_error = None
                    backoff.reset()
                    log.info("broker_connected", backend="rabbitmq", url=self.safe_url, role="publisher")
                except ConfigError as exc:  # e.g. the password reference cannot be resolved
                    conn = None
                    self._last_error = str(exc)
                    with self._pub_wakeup:
                        waiting = [*carry, *self._pub_incoming]
                        carry = []
                        self._pub_incoming.clear()
                    for r in waiting:
                        r.fail(exc)
                    with self._pub_wakeup:
                        self._pub_wakeup.wait(timeout=self.options.reconnect_max_interval)
                    continue
                except CONNECTION_ERRORS + CHANNEL_ERRORS as exc:
                    conn = None
                    self._pub_connected = False
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    carry = [r for r in carry if not r.cancelled and not r.done.is_set()]
                    wait = backoff.next()
                    log.warning("broker_reconnecting", backend="rabbitmq", role="publisher", error=self._last_error,
                                wait_s=round(wait, 2))
                    with self._pub_wakeup:
                        self._pub_wakeup.wait(timeout=wait)
                    now = time.monotonic()
                    for r in list(self._pub_incoming):
                        if r.deadline < now:
                            r.fail(BrokerUnavailable(f"RabbitMQ unreachable: {self._last_error}"))
                    continue
            batch: list[_PubRequest] = []
            try:
                room = self.options.publish_batch_max - len(outstanding)
                batch = self._pub_take(carry, room, block=not outstanding) if room > 0 else []
                if batch:
                    if not outstanding:
                        last_progress = time.monotonic()
                    for req in batch:
                        req.remaining = len(req.items)
                        req.error = None
                        for exchange, rk, msg, mandatory in req.items:
                            send(req, exchange, rk, msg, mandatory)
                    self.stats["publish_batches"] += 1
                    self.stats["published"] += sum(len(r.items) for r in batch)
                    if len(outstanding) > self.stats["max_in_flight"]:
                        self.stats["max_in_flight"] = len(outstanding)  # unconfirmed at once: pipelining
                now = time.monotonic()
                if outstanding:
                    if now - last_progress > self.options.socket_timeout:
                        raise amqp_exc.RecoverableConnectionError("publisher confirms did not arrive in time")
                    if wait_io(0.2):
                        # one method per drain_events; a heartbeat frame alone returns nothing,
                        # so a short timeout here only means "no more for now" (partial frames
                        # are kept by py-amqp); stalls are caught by last_progress above
                        for _ in range(10_000):
                            try:
                                raw.drain_events(timeout=0.05)
                            except TimeoutError:
                                break
                            if not getattr(raw.transport, "_read_buffer", b""):
                                break
                elif not batch:
                    with contextlib.suppress(TimeoutError):
                        raw.drain_events(timeout=0.001)  # server heartbeats, connection.blocked
                if now >= next_tick:
                    raw.heartbeat_tick()
                    next_tick = now + 1.0
            except TimeoutError as exc:
                # a frame started but did not complete within socket_timeout: the link is bad
                self._pub_lost(exc, batch, outstanding, returned, conn)
                carry = self._pub_redo(batch, outstanding, carry)
                outstanding.clear()
                returned.clear()
                conn = None
            except CHANNEL_ERRORS as exc:
                # the server closed the channel (e.g. exchange deleted): not retriable as is
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.error("publish_failed", backend="rabbitmq", error=self._last_error)
                for req in {*batch, *(r for r, _ in outstanding.values())}:
                    req.fail(BrokerUnavailable(f"RabbitMQ refused the publish: {self._last_error}"))
                outstanding.clear()
                returned.clear()
                _close_quietly(conn)
                conn = None
            except CONNECTION_ERRORS as exc:
                self._pub_lost(exc, batch, outstanding, returned, conn)
                carry = self._pub_redo(batch, outstanding, carry)
                outstanding.clear()
                returned.clear()
                conn = None

    def _pub_lost(self, exc: BaseException, batch: Any, outstanding: Any, returned: Any, conn: Any) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._pub_connected = False
        log.warning("broker_connection_lost", backend="rabbitmq", role="publisher", error=self._last_error)
        _close_quietly(conn)

    @staticmethod
    def _pub_redo(batch: list[_PubRequest], outstanding: Any, carry: list[_PubRequest]) -> list[_PubRequest]:
        """Unconfirmed requests, to be published again on the next connection (at-least-once)."""
        seen: set[int] = set()
        redo: list[_PubRequest] = []
        for req in [*batch, *(r for r, _ in outstanding.values())]:
            if id(req) not in seen and not req.done.is_set():
                seen.add(id(req))
                redo.append(req)
        return redo + [r for r in carry if id(r) not in seen]

    # ------------------------------------------------------------------ consuming
    def _track_unacked(self, queue: str, n: int) -> None:
        with self._unacked_lock:
            self._unacked[queue] += n
            if self._unacked[queue] <= 0:
                del self._unacked[queue]

    def _quarantine(self, queue: str, body: bytes, exc: BaseException) -> None:
        log.error("message_undecodable", backend="rabbitmq", queue=queue, error=type(exc).__name__,
                  moved_to=self.options.unrouted_queue)
        self.publish_raw(
            bytes(body),
            queue=self.options.unrouted_queue,
            headers={"x-esbhub-undecodable-from": queue, "x-esbhub-error": f"{type(exc).__name__}: {exc}"[:500]},
        )

    def consume(
        self,
        queue: str,
        callback: ConsumeCallback,
        *,
        prefetch: int = 64,
        stop: threading.Event,
        idle_timeout: float = 1.0,
    ) -> None:
        backoff = _Backoff(self.options.reconnect_initial_interval, self.options.reconnect_max_interval)
        while not (stop.is_set() or self._closing.is_set()):
            try:
                self._consume_session(queue, callback, prefetch, stop, idle_timeout, backoff)
            except amqp_exc.NotFound as exc:
                wait = backoff.next()
                log.warning("consumer_queue_missing", backend="rabbitmq", queue=queue, error=str(exc),
                            wait_s=round(wait, 2))
                stop.wait(wait)
            except CONNECTION_ERRORS + CHANNEL_ERRORS + (BrokerUnavailable,) as exc:
                wait = backoff.next()
                log.warning("consumer_disconnected", backend="rabbitmq", queue=queue,
                            error=f"{type(exc).__name__}: {exc}", wait_s=round(wait, 2))
                stop.wait(wait)
        log.info("consumer_stopped", backend="rabbitmq", queue=queue)

    def _consume_session(
        self,
        queue: str,
        callback: ConsumeCallback,
        prefetch: int,
        stop: threading.Event,
        idle_timeout: float,
        backoff: _Backoff,
    ) -> None:
        """One connection's worth of consuming; returns on stop, raises on connection loss.

        Acks are coalesced: an ``ack()`` is recorded and sent, as one ``basic.ack`` with
        ``multiple=True`` up to the oldest still-unsettled delivery, when a quarter of the
        prefetch window is waiting, when no frame is ready to read, or within 20 ms.
        A crash before that only redelivers (at-least-once); no message is ever acked
        before its callback called ``ack()``."""
        me = threading.get_ident()
        alive = [True]  # False once this channel is gone: its acks are ignored (RabbitMQ redelivers)
        foreign: collections.deque[tuple[int, bool | None]] = collections.deque()
        held: set[int] = set()  # delivered, not settled by the callback
        acked: list[int] = []  # settled by ack(), not yet sent
        first_ack_at = [0.0]
        ack_batch = max(1, prefetch // 4)
        conn = self._new_connection(heartbeat=self.options.heartbeat, role=f"consumer:{queue}")
        try:
            raw = conn.connection
            _buffer_reads(raw)
            ch = raw.channel()
            ch.basic_qos(0, prefetch, False)

            def flush_acks() -> None:
                if not acked:
                    return
                acked.sort()
                lowest_held = min(held) if held else None
                upto = [t for t in acked if lowest_held is None or t < lowest_held]
                rest = acked[len(upto):]
                if upto:
                    ch.basic_ack(upto[-1], multiple=True)
                for t in rest:
                    ch.basic_ack(t)
                self._track_unacked(queue, -len(acked))
                acked.clear()

            def settle(dtag: int, requeue: bool | None) -> None:
                if not alive[0] or dtag not in held:
                    return
                if threading.get_ident() != me:
                    foreign.append((dtag, requeue))  # a channel is used by its own thread only
                    return
                held.discard(dtag)
                if requeue is None:
                    if not acked:
                        first_ack_at[0] = time.monotonic()
                    acked.append(dtag)
                    if len(acked) >= ack_batch:
                        flush_acks()
                else:
                    flush_acks()  # keep the ack order simple: everything acked so far goes first
                    self._track_unacked(queue, -1)
                    ch.basic_reject(dtag, requeue)

            def on_message(msg: amqp.Message) -> None:
                if not alive[0]:  # handed over while the connection closes: RabbitMQ redelivers it
                    return
                dtag = msg.delivery_info["delivery_tag"]
                held.add(dtag)
                self._track_unacked(queue, 1)
                try:
                    env = Envelope.from_bytes(msg.body)
                except Exception as exc:  # noqa: BLE001 - any decode failure: quarantine, never drop
                    try:
                        self._quarantine(queue, msg.body, exc)
                    except BrokerUnavailable:
                        settle(dtag, True)
                        raise
                    settle(dtag, None)
                    return
                d = Delivery(
                    envelope=env,
                    queue=queue,
                    redelivered=bool(msg.delivery_info.get("redelivered")),
                    reply_to=msg.properties.get("reply_to"),
                    delivery_tag=dtag,
                    _ack=lambda: settle(dtag, None),
                    _reject=lambda requeue: settle(dtag, bool(requeue)),
                )
                try:
                    callback(d)
                except Exception as exc:  # noqa: BLE001 - contract: requeue what the callback left
                    log.warning("consumer_callback_failed", backend="rabbitmq", queue=queue,
                                message_id=env.id, error=type(exc).__name__)
                    if not d.settled:
                        d.reject(requeue=True)

            cancelled = [False]

            def on_cancel(_tag: str) -> None:  # queue deleted, quorum leader moved, …
                cancelled[0] = True

            ch.basic_consume(queue, callback=on_message, no_ack=False, on_cancel=on_cancel)
            log.info("consumer_started", backend="rabbitmq", queue=queue, prefetch=prefetch)
            backoff.reset()
            wait = min(max(idle_timeout, 0.05), 0.25)  # also how soon acks from other threads go out
            next_tick = time.monotonic() + 1.0
            while not (stop.is_set() or self._closing.is_set()):
                if cancelled[0]:
                    flush_acks()
                    raise amqp_exc.RecoverableConnectionError(f"RabbitMQ cancelled the consumer of '{queue}'")
                while foreign:
                    settle(*foreign.popleft())
                try:
                    raw.drain_events(timeout=0.001)  # what is already there, without waiting
                except TimeoutError:
                    flush_acks()  # nothing ready: send acks before waiting
                    with contextlib.suppress(TimeoutError):
                        raw.drain_events(timeout=wait)
                now = time.monotonic()
                if acked and now - first_ack_at[0] > 0.02:
                    flush_acks()
                if now >= next_tick:
                    raw.heartbeat_tick()
                    next_tick = now + 1.0
            while foreign:
                settle(*foreign.popleft())
            flush_acks()
        finally:
            alive[0] = False
            if held or acked:
                self._track_unacked(queue, -(len(held) + len(acked)))
                held.clear()
                acked.clear()
            _close_quietly(conn)

    def get(self, queue: str, timeout: float = 0.0) -> Delivery | None:
        deadline = time.monotonic() + max(0.0, timeout)
        poll = 0.005
        while True:
            if queue not in self._known_queues:
                try:  # probe first: a basic_get on a missing queue would close the "get" channel
                    self._control(lambda ch: ch.queue_declare(queue, passive=True), what="get")
                except amqp_exc.NotFound:
                    return None  # no such queue: nothing to get
                self._known_queues.add(queue)
            try:
                msg, gen, ch = self._control(
                    lambda ch: (ch.basic_get(queue, no_ack=False), self._ctl_gen, ch), what="get", channel="get"
                )
            except amqp_exc.NotFound:
                self._known_queues.discard(queue)
                return None
            if msg is not None:
                d = self._get_delivery(queue, msg, gen, ch)
                if d is not None:
                    return d
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(poll, left))
            poll = min(poll * 2, 0.1)

    def _get_delivery(self, queue: str, msg: amqp.Message, gen: int, ch: Any) -> Delivery | None:
        dtag = msg.delivery_info["delivery_tag"]
        self._track_unacked(queue, 1)
        try:
            env = Envelope.from_bytes(msg.body)
        except Exception as exc:  # noqa: BLE001 - quarantine, never drop
            self._quarantine(queue, msg.body, exc)
            self._get_settle(queue, gen, ch, dtag, None)
            return None
        return Delivery(
            envelope=env,
            queue=queue,
            redelivered=bool(msg.delivery_info.get("redelivered")),
            reply_to=msg.properties.get("reply_to"),
            delivery_tag=dtag,
            _ack=lambda: self._get_settle(queue, gen, ch, dtag, None),
            _reject=lambda requeue: self._get_settle(queue, gen, ch, dtag, bool(requeue)),
        )

    def _get_settle(self, queue: str, gen: int, ch: Any, dtag: int, requeue: bool | None) -> None:
        self._track_unacked(queue, -1)
        with self._ctl_lock:
            if gen != self._ctl_gen or ch is not self._ctl_chs.get("get"):
                return  # that channel is gone; the message is deliverable again
            try:
                if requeue is None:
                    ch.basic_ack(dtag)
                else:
                    ch.basic_reject(dtag, requeue)
            except CONNECTION_ERRORS:
                self._ctl_reset()
            except CHANNEL_ERRORS:
                self._ctl_chs.pop("get", None)

    # ------------------------------------------------------------------ status
    def queue_depth(self, queue: str) -> int:
        def ready(ch: Any, name: str) -> int | None:
            try:
                return int(ch.queue_declare(name, passive=True).message_count)
            except amqp_exc.NotFound:
                self._ctl_chs.pop("main", None)
                return None

        def do(_ch: Any) -> int:
            n = ready(self._ctl_channel(), queue)
            if n is None:
                return 0
            for tier in DELAY_TIERS_MS:
                n += ready(self._ctl_channel(), self._delay_queue_name(queue, tier)) or 0
            return n

        total = self._control(do, what="queue_depth")
        with self._unacked_lock:
            return total + self._unacked.get(queue, 0)

    def health(self) -> dict[str, Any]:
        err: str | None = None
        ok = True
        try:
            self._control(lambda ch: ch.queue_declare(self.options.unrouted_queue, passive=True),
                          what="health", timeout=2.0)
        except (BrokerUnavailable, *CHANNEL_ERRORS) as exc:
            ok, err = False, f"{type(exc).__name__}: {exc}"
        return {
            "ok": ok,
            "backend": "rabbitmq",
            "error": err,
            "url": self.safe_url,
            "exchange": self.exchange,
            "publisher_connected": self._pub_connected,
            "queue_type": self.options.queue_type,
        }

    def __repr__(self) -> str:
        return f"RabbitBroker({self.safe_url!r}, exchange={self.exchange!r})"


@contextlib.contextmanager
def _slow_call(ch: Any, seconds: float) -> Any:
    """Give one synchronous AMQP method a longer socket timeout than ``socket_timeout``."""
    sock = getattr(getattr(ch.connection, "transport", None), "sock", None)
    if sock is None:
        yield
        return
    before = sock.gettimeout()
    sock.settimeout(seconds)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(before)


def _buffer_reads(raw: Any) -> None:
    """Let py-amqp read the socket in 64 KiB chunks instead of three ``recv`` calls per frame.

    py-amqp asks ``_quick_recv(n)`` for exactly the bytes it still needs and keeps any surplus
    in ``_read_buffer`` for the next frame, so a larger read is safe. Plain TCP only (TLS
    reads go through the SSL object); skipped if the library's internals ever change."""
    transport = getattr(raw, "transport", None)
    sock = getattr(transport, "sock", None)
    if transport is None or sock is None or type(transport).__name__ != "TCPTransport":
        return
    if getattr(transport, "_quick_recv", None) != sock.recv or not hasattr(transport, "_read_buffer"):
        return
    recv = sock.recv
    transport._quick_recv = lambda n: recv(max(n, 65536))


def _close_quietly(conn: Any) -> None:
    if conn is None:
        return
    with contextlib.suppress(Exception):
        conn.release()


"""The broker seam: one small interface over kombu, two implementations.

* :class:`esbhub.bus.embedded.EmbeddedBroker` — ``sqlite:///path``: single node, no external
  service, crash-safe (a message leased by a consumer that dies is redelivered).
* :class:`esbhub.bus.rabbit.RabbitBroker` — ``amqp://…``: RabbitMQ in production; durable
  topology, persistent messages, pipelined publisher confirms, reconnect with backoff.

Both pass the same behaviour suite (``tests/bus/test_broker_behaviour.py``).

Topology (same on both):
  * one durable **topic exchange** (``settings.exchange``); the routing key of a message is
    its ``type`` (``party.v1``) unless the publisher names another;
  * one durable **queue per subscription** (a route, the MDM, a test), bound with topic
    patterns (``party.*``, ``#``);
  * messages nobody is bound to land in the durable queue ``esbhub.unrouted`` — accepted
    means never dropped;
  * delayed redelivery (retries) without blocking a consumer: ``publish(..., delay=s,
    queue=name)`` makes the message visible in ``name`` after ``s`` seconds;
  * request-reply: ``publish(..., reply_to=queue)`` sets the AMQP ``reply_to`` property;
    replies go straight to that queue with ``publish(reply, queue=reply_to)``.

Delivery contract:
  * ``publish``/``publish_many`` return only when every message is durably stored
    (SQLite commit / RabbitMQ publisher confirm); otherwise they raise
    :class:`~esbhub.errors.BrokerUnavailable` and the caller must not report success;
  * ``consume`` hands each message to the callback with a :class:`Delivery`; the message is
    removed only by ``delivery.ack()``; an exception in the callback, a ``reject`` with
    requeue, a dropped connection or a killed process makes it deliverable again;
  * at most ``prefetch`` unacked messages per consumer (bounded memory).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from esbhub.bus.envelope import Envelope

UNROUTED_QUEUE = "esbhub.unrouted"


@dataclass
class Delivery:
    """One message handed to a consumer. Exactly one of ack / reject must be called."""

    envelope: Envelope
    queue: str
    redelivered: bool = False
    reply_to: str | None = None
    delivery_tag: Any = None
    _ack: Callable[[], None] | None = field(default=None, repr=False)
    _reject: Callable[[bool], None] | None = field(default=None, repr=False)
    settled: bool = False

    def ack(self) -> None:
        if not self.settled and self._ack is not None:
            self._ack()
        self.settled = True

    def reject(self, requeue: bool = True) -> None:
        if not self.settled and self._reject is not None:
            self._reject(requeue)
        self.settled = True


ConsumeCallback = Callable[[Delivery], None]


class Broker(abc.ABC):
    """What the rest of the hub may ask of a message broker."""

    url: str
    exchange: str

    @abc.abstractmethod
    def connect(self) -> None:
        """Open connections and declare the exchange and ``esbhub.unrouted``. Idempotent."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; unacked deliveries become deliverable again."""

    @abc.abstractmethod
    def declare_queue(self, queue: str, binding_keys: Sequence[str] = ()) -> None:
        """Declare a durable queue bound to the exchange with topic patterns. Idempotent."""

    @abc.abstractmethod
    def delete_queue(self, queue: str) -> None:
        """Remove a queue and its bindings (tests, route removal)."""

    @abc.abstractmethod
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
        """Store every envelope durably, then return.

        ``queue`` sends straight to that queue (retries, replies) instead of the exchange;
        ``routing_key`` defaults to each envelope's ``type``; ``delay`` defers visibility.
        Raises :class:`BrokerUnavailable` if durability cannot be confirmed within ``timeout``.
        """

    def publish(self, envelope: Envelope, **kw: Any) -> None:
        self.publish_many([envelope], **kw)

    @abc.abstractmethod
    def consume(
        self,
        queue: str,
        callback: ConsumeCallback,
        *,
        prefetch: int = 64,
        stop: threading.Event,
        idle_timeout: float = 1.0,
    ) -> None:
        """Block, handing deliveries of ``queue`` to ``callback`` until ``stop`` is set.

        Reconnects by itself after a connection loss. The callback runs on the calling
        thread; deliveries it did not settle when it raised are rejected with requeue.
        """

    @abc.abstractmethod
    def get(self, queue: str, timeout: float = 0.0) -> Delivery | None:
        """Fetch one delivery (or None), for request-reply waiters, tools and tests."""

    @abc.abstractmethod
    def queue_depth(self, queue: str) -> int:
        """Messages in ``queue`` (ready + delayed + unacked), or 0 if it does not exist."""

    @abc.abstractmethod
    def health(self) -> dict[str, Any]:
        """Cheap status: ``{"ok": bool, "backend": str, "error": str | None, ...}``."""


def create_broker(url: str, exchange: str = "esbhub", **kw: Any) -> Broker:
    """The broker for ``url``: ``sqlite:///…`` → embedded, ``amqp://``/``amqps://`` → RabbitMQ."""
    if url.startswith("sqlite"):
        from esbhub.bus.embedded import EmbeddedBroker

        return EmbeddedBroker(url, exchange=exchange, **kw)
    if url.startswith(("amqp", "pyamqp")):
        from esbhub.bus.rabbit import RabbitBroker

        return RabbitBroker(url, exchange=exchange, **kw)
    raise ValueError(f"unsupported broker URL scheme in '{url.split('://')[0]}://…' (use sqlite:/// or amqp://)")


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic semantics: '*' one word, '#' zero or more words."""
    p, k = pattern.split("."), key.split(".")

    def rec(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return any(rec(i + 1, jj) for jj in range(j, len(k) + 1))
        if j == len(k):
            return False
        return (p[i] == "*" or p[i] == k[j]) and rec(i + 1, j + 1)

    return rec(0, 0)


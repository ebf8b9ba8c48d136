"""Request-reply over the bus (the sync mode of HTTP ingest).

One :class:`RequestReply` per process owns a private reply queue and one consumer thread.
``request`` registers a waiter under the request's id, publishes the request with
``reply_to`` set to that queue and waits. The worker publishes the handler's reply (derived
from the request: ``causation_id`` = request id, same ``correlation_id``) to ``reply_to``;
the consumer hands it to the waiter. A reply whose request timed out or that nobody waits
for is acked, discarded, logged (``late_reply_discarded``) and counted
(``hub_late_replies_total``). If a request is dead-lettered the worker replies with a
``hub.error.v1`` envelope (payload ``{"error": {...}}``), returned like any reply.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from esbhub.bus.broker import Broker, Delivery
from esbhub.bus.envelope import Envelope, new_id
from esbhub.logging import get_logger
from esbhub.monitoring import metrics

log = get_logger("esbhub.bus.reply")


class _Waiter:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: Envelope | None = None


class RequestReply:
    def __init__(self, broker: Broker, reply_queue: str | None = None) -> None:
        self.broker = broker
        self.reply_queue = reply_queue or f"esbhub.reply.{os.getpid()}.{new_id().lower()}"
        self._waiters: dict[str, _Waiter] = {}
        self._by_corr: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self.broker.connect()
        self.broker.declare_queue(self.reply_queue, ())
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="reply-consumer", daemon=True)
        self._thread.start()
        log.info("reply_consumer_started", reply_queue=self.reply_queue)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        try:
            self.broker.delete_queue(self.reply_queue)
        except Exception as exc:  # noqa: BLE001 - best effort cleanup of a private queue
            log.warning("reply_queue_delete_failed", reply_queue=self.reply_queue, error=str(exc)[:200])

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.broker.consume(self.reply_queue, self._on_reply, prefetch=256, stop=self._stop, idle_timeout=0.5)
                backoff = 0.5
            except Exception as exc:  # noqa: BLE001 - keep the reply consumer alive
                log.error("reply_consumer_failed", error_type=type(exc).__name__, error=str(exc)[:300])
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _on_reply(self, delivery: Delivery) -> None:
        env = delivery.envelope
        with self._lock:
            key = env.causation_id if env.causation_id in self._waiters else None
            if key is None and env.correlation_id is not None:
                key = self._by_corr.get(env.correlation_id)
            w = self._waiters.pop(key, None) if key is not None else None
            if w is not None:
                self._drop_corr(key)
                w.reply = env
        if w is None:
            metrics.LATE_REPLIES.inc()
            log.warning("late_reply_discarded", message_id=env.id, correlation_id=env.correlation_id, causation_id=env.causation_id)
        else:
            w.event.set()
        delivery.ack()

    def _drop_corr(self, key: str | None) -> None:
        for c, k in list(self._by_corr.items()):
            if k == key:
                del self._by_corr[c]

    def request(self, env: Envelope, timeout: float, **publish_kw: Any) -> Envelope:
        """Publish ``env`` and wait for its reply; raises ``TimeoutError`` after ``timeout`` s."""
        if self._thread is None:
            self.start()
        w = _Waiter()
        with self._lock:
            self._waiters[env.id] = w
            if env.correlation_id and env.correlation_id not in self._by_corr:
                self._by_corr[env.correlation_id] = env.id
        deadline = time.monotonic() + timeout
        try:
            self.broker.publish(env, reply_to=self.reply_queue, timeout=min(timeout, 30.0), **publish_kw)
            w.event.wait(max(0.0, deadline - time.monotonic()))
        finally:
            with self._lock:
                if self._waiters.pop(env.id, None) is not None:
                    self._drop_corr(env.id)
                reply = w.reply  # set under the lock by the consumer, or None: timed out
        if reply is None:
            raise TimeoutError(f"no reply to message {env.id} within {timeout:g}s")
        return reply

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._waiters)

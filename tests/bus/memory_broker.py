"""An in-memory Broker test double with the delivery contract of esbhub.bus.broker:
topic routing, unrouted queue, delayed visibility, requeue, redelivery of unacked messages
when a consumer stops, bounded prefetch. Envelopes travel as bytes, as on a real broker."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from esbhub.bus.broker import UNROUTED_QUEUE, Broker, ConsumeCallback, Delivery, topic_matches
from esbhub.bus.envelope import Envelope


@dataclass
class _Msg:
    body: bytes
    reply_to: str | None
    visible_at: float = 0.0
    redelivered: bool = False
    tag: int = 0


@dataclass
class _Queue:
    bindings: set[str] = field(default_factory=set)
    ready: deque = field(default_factory=deque)
    delayed: list = field(default_factory=list)
    unacked: dict = field(default_factory=dict)


class MemoryBroker(Broker):
    def __init__(self, url: str = "memory://", exchange: str = "esbhub") -> None:
        self.url = url
        self.exchange = exchange
        self._queues: dict[str, _Queue] = {}
        self._cv = threading.Condition()
        self._tags = itertools.count(1)
        self.published = 0

    def connect(self) -> None:
        self.declare_queue(UNROUTED_QUEUE)

    def close(self) -> None:
        pass

    def declare_queue(self, queue: str, binding_keys: Sequence[str] = ()) -> None:
        with self._cv:
            q = self._queues.setdefault(queue, _Queue())
            q.bindings.update(binding_keys)

    def delete_queue(self, queue: str) -> None:
        with self._cv:
            self._queues.pop(queue, None)

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
        with self._cv:
            self._ensure_unrouted()
            for env in envelopes:
                self.publish_raw(env.to_bytes(), routing_key=routing_key or env.type, queue=queue, delay=delay, reply_to=reply_to)

    def _ensure_unrouted(self) -> None:
        self._queues.setdefault(UNROUTED_QUEUE, _Queue())

    def publish_raw(self, body: bytes, *, routing_key: str = "", queue: str | None = None, delay: float = 0.0,
                    reply_to: str | None = None) -> None:
        with self._cv:
            if queue is not None:
                targets = [queue] if queue in self._queues else []
            else:
                targets = [n for n, q in self._queues.items() if any(topic_matches(b, routing_key) for b in q.bindings)]
                if not targets:
                    targets = [UNROUTED_QUEUE]
            for t in targets:
                m = _Msg(body, reply_to, visible_at=time.monotonic() + delay)
                if delay > 0:
                    self._queues[t].delayed.append(m)
                else:
                    self._queues[t].ready.append(m)
            self.published += 1
            self._cv.notify_all()

    def _take(self, q: _Queue) -> _Msg | None:
        now = time.monotonic()
        if q.delayed:
            due = [m for m in q.delayed if m.visible_at <= now]
            if due:
                q.delayed = [m for m in q.delayed if m.visible_at > now]
                q.ready.extend(due)
        if q.ready:
            m = q.ready.popleft()
            m.tag = next(self._tags)
            q.unacked[m.tag] = m
            return m
        return None

    def _delivery(self, name: str, q: _Queue, m: _Msg, owner: set[int] | None) -> Delivery:
        def ack() -> None:
            with self._cv:
                q.unacked.pop(m.tag, None)
                if owner is not None:
                    owner.discard(m.tag)
                self._cv.notify_all()

        def reject(requeue: bool) -> None:
            with self._cv:
                mm = q.unacked.pop(m.tag, None)
                if owner is not None:
                    owner.discard(m.tag)
                if mm is not None and requeue:
                    mm.redelivered = True
                    q.ready.appendleft(mm)
                self._cv.notify_all()

        env = Envelope.from_bytes(m.body)
        return Delivery(envelope=env, queue=name, redelivered=m.redelivered, reply_to=m.reply_to,
                        delivery_tag=m.tag, _ack=ack, _reject=reject)

    def consume(self, queue: str, callback: ConsumeCallback, *, prefetch: int = 64, stop: threading.Event,
                idle_timeout: float = 1.0) -> None:
        mine: set[int] = set()
        try:
            while not stop.is_set():
                with self._cv:
                    q = self._queues.get(queue)
                    m = None
                    if q is not None and len(mine) < prefetch:
                        m = self._take(q)
                    if m is None:
                        self._cv.wait(min(idle_timeout, 0.05))
                        continue
                    mine.add(m.tag)
                d = self._delivery(queue, q, m, mine)
                try:
                    callback(d)
                except Exception:
                    if not d.settled:
                        d.reject(True)
        finally:
            with self._cv:  # consumer gone: its unacked messages become deliverable again
                q = self._queues.get(queue)
                if q is not None:
                    for tag in list(mine):
                        mm = q.unacked.pop(tag, None)
                        if mm is not None:
                            mm.redelivered = True
                            q.ready.appendleft(mm)
                self._cv.notify_all()

    def get(self, queue: str, timeout: float = 0.0) -> Delivery | None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                q = self._queues.get(queue)
                m = self._take(q) if q is not None else None
                if m is not None:
                    return self._delivery(queue, q, m, None)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(min(left, 0.05))

    def queue_depth(self, queue: str) -> int:
        with self._cv:
            q = self._queues.get(queue)
            return 0 if q is None else len(q.ready) + len(q.delayed) + len(q.unacked)

    def health(self) -> dict[str, Any]:
        return {"ok": True, "backend": "memory", "error": None}

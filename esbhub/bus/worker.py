"""The bus runtime: consumer threads that run subscription handlers with the delivery guarantee.

One :class:`Subscription` = one durable queue ``route.<name>`` bound with topic patterns and a
handler ``(envelope, ctx) -> reply | None``. For every delivery the :class:`Worker`:

1. skips it if the subscription already processed that id (dedup: LRU, then ``bus_processed``)
   — ack, count ``hub_messages_duplicate_total``, the handler does not run again;
2. records ``in_flight`` (buffered) and calls the handler with a :class:`HandlerContext`;
3. on success publishes, durably and in this order, the derived messages the handler gave
   ``ctx.publish`` and the reply (to the delivery's ``reply_to``), commits the dedup mark,
   records ``delivered`` (or ``filtered``) and only then **acks**;
4. on failure maps the exception with ``ErrorInfo.from_exception`` and, *before* acking the
   failed delivery, either publishes ``attempt + 1`` to its own queue with an exponential,
   jittered delay (the broker's delayed publish: the consumer thread never sleeps on a retry)
   and records ``retrying`` with the next attempt time, or stores a dead letter (logged
   ``message_dead_lettered``, counted) and, for a request, sends an error reply.
   ``CircuitOpen`` republishes the message unchanged after ``retry_after`` without using an
   attempt and holds that subscription's consumers meanwhile.

If recording the failure itself fails (broker or database down) the delivery is left to the
broker to redeliver: nothing is acked that is not safe. A handler exception never ends a
consumer thread; a consumer whose connection breaks is restarted with backoff.

Dedup marks and the ack (exactly-once window). A delivery is acked only after its dedup
mark is committed, so a redelivery of a handled message is skipped. Marks are
group-committed: a consumer thread goes on with the next message while up to ``ack_batch``
of its handled deliveries (default ``min(32, prefetch // 2)``) wait for one commit; the
store's flusher also commits every ``flush_interval`` and acks stragglers when the queue is
quiet. What can run twice is therefore bounded and known: a message whose handler finished
while its mark was not yet committed when the process died — at most ``ack_batch + 1`` per
consumer thread. Those are redelivered and their handler runs again; idempotent sinks
(upsert by message id, natural keys, temp-name-then-rename) absorb it, and derived messages
keep their ids (below). ``ack_batch=1`` shrinks the window to one message per thread at the
cost of one commit per message.

Derived messages and replies get ids computed from (input id, subscription, position), so a
handler that runs again after a crash republishes the *same* ids and downstream dedup drops
the copies. A handler that already derives its ids deterministically from the input (the
route engine does) passes ``ctx.publish(..., keep_id=True)`` and its ids are kept.

Micro-batched handlers (opt-in: ``Subscription(batch_handler=…, batch_max=N)``, N > 1). A
handler whose work has a large fixed cost per call (a database transaction) can take the
deliveries that are *already waiting* in one call — group commit for handlers. Each consumer
thread then hands its deliveries to a batch thread, which takes what is queued (at most
``batch_max``; it never waits for a batch to fill, so at low load a batch is one message and
latency is unchanged; under backlog batches grow and so does throughput) and calls
``batch_handler([(envelope, ctx), …])`` once. Per message the guarantees stay those above:

* duplicates are skipped (and acked) before the call; a message whose handler part failed is
  marked by the batch handler with ``ctx.fail(exc)`` and goes alone through the normal
  retry / dead-letter path while its neighbours succeed;
* after the call the derived messages of the successful messages are published durably, in
  the order the batch handler published them (one ``publish_many``), then the replies, then
  every message's state is recorded and its dedup mark committed — one commit for the batch —
  and only then is each delivery acked;
* if the batch handler raises (or the batch's publish fails), each message of the batch is
  run again through the per-message ``handler``: a poison message is isolated and gets the
  normal retry → dead-letter path, the others are delivered. The per-message handler must
  therefore do the same work for one message (handlers are idempotent anyway: redelivery);
* stop/pause let the running batch finish and hand the queued, unstarted deliveries back to
  the broker; a crash redelivers every unacked message (at most a batch plus what was queued
  per consumer thread runs its handler again — the same bound as ``ack_batch``).
"""

from __future__ import annotations

import functools
import hashlib
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from esbhub.bus.broker import Broker, Delivery
from esbhub.bus.envelope import Envelope
from esbhub.bus.store import BusStore
from esbhub.config import RetryPolicy, Settings
from esbhub.errors import CircuitOpen, ErrorInfo
from esbhub.logging import get_logger
from esbhub.monitoring import metrics

ERROR_REPLY_TYPE = "hub.error.v1"

_log = get_logger("esbhub.bus.worker")


def queue_for(subscription: str) -> str:
    """The durable queue of a subscription."""
    return f"route.{subscription}"


_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32, as ULIDs use (either case accepted)
_B32_DEC = {c: i for i, c in enumerate(_B32)} | {c.lower(): i for i, c in enumerate(_B32)}


def _ulid_ms(uid: str) -> int | None:
    """The 48-bit timestamp of a ULID string; None where ``ULID.from_str`` would refuse it."""
    if len(uid) != 26:
        return None
    try:
        vals = [_B32_DEC[c] for c in uid]
    except KeyError:
        return None
    if vals[0] > 7:
        return None
    ms = 0
    for v in vals[:10]:
        ms = (ms << 5) | v
    return ms


def stable_id(parent_id: str, *parts: str) -> str:
    """A ULID with the parent's timestamp and randomness from a hash of (parent, parts):
    the same input always derives the same ids. (Same result as
    ``str(ULID.from_bytes(ULID.from_str(parent).bytes[:6] + sha256(...)[:10]))``, without the
    ULID objects: it runs for every derived message.)"""
    h = hashlib.sha256("\x1f".join((parent_id, *parts)).encode()).digest()
    ms = _ulid_ms(parent_id)
    if ms is None:
        ms = int(time.time() * 1000) & 0xFFFFFFFFFFFF
    n = (ms << 80) | int.from_bytes(h[:10], "big")
    return "".join([_B32[(n >> sh) & 31] for sh in range(125, -1, -5)])


class HandlerContext:
    """What a handler gets besides the envelope: who it runs for, the delivery, a bound log,
    and ``publish`` for derived messages (buffered; published durably before the input is acked)."""

    def __init__(
        self, envelope: Envelope, subscription: str, delivery: Delivery, log: Any,
        batch_outbox: list[tuple[HandlerContext, Envelope, str | None, str | None]] | None = None,
    ) -> None:
        self.envelope = envelope
        self.subscription = subscription
        self.delivery = delivery
        self.log = log
        self.outbox: list[tuple[Envelope, str | None, str | None]] = []
        self.outcome = "delivered"
        self.error: Exception | None = None
        self._batch_outbox = batch_outbox  # shared by the contexts of one batch: publish order

    def publish(
        self, env: Envelope, *, routing_key: str | None = None, queue: str | None = None, keep_id: bool = False
    ) -> None:
        """Queue a derived message; it is published when the handler returns successfully.

        A message caused by the input gets a deterministic id from (input id, subscription,
        position). ``keep_id=True``: the handler already gave it an id derived deterministically
        from the input (e.g. the route engine's), which is kept as it is."""
        if not keep_id and env.causation_id == self.envelope.id:
            # model_copy: only the id changes, and stable_id makes a valid ULID (no revalidation)
            env = env.model_copy(update={"id": stable_id(self.envelope.id, self.subscription, str(len(self.outbox)))})
        self.outbox.append((env, routing_key, queue))
        if self._batch_outbox is not None:
            self._batch_outbox.append((self, env, routing_key, queue))

    def filtered(self) -> None:
        """Mark the message as filtered out by this subscription (state ``filtered``, not ``delivered``)."""
        self.outcome = "filtered"

    def fail(self, exc: Exception) -> None:
        """This message failed (e.g. invalid input inside a batch): what it published is dropped
        and the worker takes it through retry / dead-letter alone, as if its handler had raised
        ``exc``; the other messages of the batch are not affected."""
        self.error = exc
        self.outbox.clear()


Handler = Callable[[Envelope, HandlerContext], Envelope | None]
BatchHandler = Callable[[Sequence[tuple[Envelope, HandlerContext]]], Sequence[Envelope | None] | None]
"""``batch_handler(items) -> replies | None``: ``items`` in delivery order; the result, if not
None, has one reply (or None) per item, as ``handler`` would return for it."""


@dataclass
class Subscription:
    name: str
    binding_keys: list[str]
    handler: Handler
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dedup: bool = True
    prefetch: int | None = None
    concurrency: int = 1
    ack_batch: int | None = None  # successes per consumer thread whose dedup marks commit in one go
    batch_handler: BatchHandler | None = None  # opt-in micro-batching (module docstring); needs batch_max > 1
    batch_max: int = 64  # most deliveries per batch_handler call; never waited for

    @property
    def queue(self) -> str:
        return queue_for(self.name)

    @property
    def batching(self) -> bool:
        return self.batch_handler is not None and self.batch_max > 1

    def effective_prefetch(self, default: int) -> int:
        """Unacked deliveries per consumer: batching keeps the next batch queued while one runs."""
        if self.prefetch:
            return self.prefetch
        return max(default, 2 * self.batch_max) if self.batching else default


class _Runtime:
    """One subscription inside a worker: the current definition and its consumer threads."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.stop = threading.Event()  # set: callbacks hand new deliveries back, consumers wind down
        self.consume_stop = threading.Event()  # set: broker.consume returns (after pending acks)
        self.threads: list[threading.Thread] = []
        self.paused = False
        self.resume_at = 0.0  # monotonic time before which consumers hold (circuit open)
        self.lock = threading.Condition()
        self.active = 0  # callbacks running now
        # handled, acked once their dedup mark is committed: (generation, monotonic time, delivery)
        self.pending: list[tuple[int, float, Delivery]] = []
        # batching: per consumer thread, deliveries received and not yet taken by its batch thread
        self.feeds: list[deque[Delivery]] = []

    def forget_queued(self) -> None:
        """Drop what batch threads have not taken (call with stop set). They stay unsettled: the
        end of ``broker.consume`` gives them back (redelivered). Rejecting them while the consumer
        still runs would only make the broker hand them straight back to it."""
        with self.lock:
            for feed in self.feeds:
                feed.clear()

    def ack_committed(self, committed: int, older_than: float | None = None) -> int:
        """Ack the deliveries whose dedup mark is committed (only those queued before
        ``older_than`` if given); returns how many are still waiting."""
        with self.lock:
            if not self.pending:
                return 0
            ready = [d for g, t, d in self.pending if g <= committed and (older_than is None or t < older_than)]
            if ready:
                self.pending = [
                    (g, t, d) for g, t, d in self.pending if not (g <= committed and (older_than is None or t < older_than))
                ]
            left = len(self.pending)
        for d in ready:
            d.ack()
        return left


class Worker:
    """Runs subscriptions on consumer threads (see the module docstring for the guarantee)."""

    def __init__(self, broker: Broker, store: BusStore, subscriptions: list[Subscription], settings: Settings) -> None:
        self.broker = broker
        self.store = store
        self.settings = settings
        self._lock = threading.RLock()
        self._subs: dict[str, _Runtime] = {}
        for s in subscriptions:
            if s.name in self._subs:
                raise ValueError(f"two subscriptions named '{s.name}'")
            self._subs[s.name] = _Runtime(s)
        self._started = False
        self._stopping = threading.Event()
        self._housekeeper: threading.Thread | None = None

    def _on_commit(self, committed: int) -> None:
        # Consumer threads ack their own deliveries (on RabbitMQ a channel belongs to its
        # thread); this only settles stragglers of a quiet queue, or all of them when stopping.
        older = None if self._stopping.is_set() else time.monotonic() - 0.1
        for rt in list(self._subs.values()):
            rt.ack_committed(committed, None if rt.stop.is_set() else older)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Declare the queues and start the consumer threads; returns at once."""
        with self._lock:
            if self._started:
                return
            self.broker.connect()
            self._stopping.clear()
            self.store.add_commit_listener(self._on_commit)
            for rt in self._subs.values():
                self.broker.declare_queue(rt.sub.queue, rt.sub.binding_keys)
            self._started = True
            for rt in self._subs.values():
                if not rt.paused:
                    self._start_threads(rt)
            self._housekeeper = threading.Thread(target=self._housekeeping, name="bus-housekeeping", daemon=True)
            self._housekeeper.start()
        _log.info("worker_started", subscriptions=sorted(self._subs))

    def stop(self, timeout: float = 10) -> None:
        """Let in-flight messages finish, stop consuming, flush the state buffer."""
        with self._lock:
            self._stopping.set()
            self._stop_all(list(self._subs.values()), timeout)
            self._started = False
            self.store.remove_commit_listener(self._on_commit)
        _log.info("worker_stopped")

    def run_forever(self) -> None:
        """Start and block until SIGTERM/SIGINT, then stop gracefully."""
        done = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            _log.info("worker_signal_received", signal=signal.Signals(signum).name)
            done.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not done.wait(1.0):
                pass
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ management
    def add(self, sub: Subscription) -> None:
        with self._lock:
            if sub.name in self._subs:
                raise ValueError(f"subscription '{sub.name}' exists; use replace()")
            rt = self._subs[sub.name] = _Runtime(sub)
            if self._started:
                self.broker.declare_queue(sub.queue, sub.binding_keys)
                self._start_threads(rt)
        _log.info("subscription_added", subscription=sub.name)

    def replace(self, sub: Subscription) -> None:
        """Swap a subscription's definition atomically: a message being handled finishes on
        the old handler, the next one uses the new. Consumers restart only when prefetch or
        concurrency change or batching is switched on or off (their unacked, unhandled messages
        go back to the queue); a new ``batch_max`` applies from the next batch."""
        with self._lock:
            rt = self._subs.get(sub.name)
            if rt is None:
                raise KeyError(f"no subscription '{sub.name}'")
            old = rt.sub
            if self._started and set(sub.binding_keys) != set(old.binding_keys):
                # Note: the broker seam has no unbind; bindings only removed by delete_queue.
                self.broker.declare_queue(sub.queue, sub.binding_keys)
            rt.sub = sub
            if self._shape(sub) != self._shape(old) and rt.threads:
                self._stop_threads(rt)
                self._start_threads(rt)
        _log.info("subscription_replaced", subscription=sub.name)

    def remove(self, name: str) -> None:
        """Stop consuming and forget the subscription (its queue and messages stay)."""
        with self._lock:
            rt = self._runtime(name)
            self._stop_threads(rt)
            del self._subs[name]
        _log.info("subscription_removed", subscription=name)

    def pause(self, name: str) -> None:
        """Stop consuming one subscription; in-flight messages finish, prefetched ones go back."""
        with self._lock:
            rt = self._runtime(name)
            rt.paused = True
            self._stop_threads(rt)
        _log.info("subscription_paused", subscription=name)

    def resume(self, name: str) -> None:
        with self._lock:
            rt = self._runtime(name)
            rt.paused = False
            if self._started and not rt.threads:
                self._start_threads(rt)
        _log.info("subscription_resumed", subscription=name)

    def subscriptions(self) -> dict[str, dict[str, Any]]:
        """Name → status, for the API and the dashboard."""
        with self._lock:
            return {
                n: {
                    "queue": rt.sub.queue,
                    "binding_keys": list(rt.sub.binding_keys),
                    "paused": rt.paused,
                    "consumers": sum(t.is_alive() for t in rt.threads),
                }
                for n, rt in self._subs.items()
            }

    def _runtime(self, name: str) -> _Runtime:
        rt = self._subs.get(name)
        if rt is None:
            raise KeyError(f"no subscription '{name}'")
        return rt

    def _shape(self, sub: Subscription) -> tuple[int, int, bool]:
        """What the consumer threads are built from (a change restarts them)."""
        return sub.concurrency, sub.effective_prefetch(self.settings.prefetch), sub.batching

    def _start_threads(self, rt: _Runtime) -> None:
        rt.stop = threading.Event()
        rt.consume_stop = threading.Event()
        rt.threads = []
        rt.feeds = []
        batching = rt.sub.batching
        for i in range(max(1, rt.sub.concurrency)):
            feed: deque[Delivery] | None = None
            if batching:
                feed = deque()
                rt.feeds.append(feed)
                rt.threads.append(threading.Thread(
                    target=self._batch_loop, args=(rt, rt.stop, feed), name=f"batcher-{rt.sub.name}-{i}", daemon=True,
                ))
            rt.threads.append(threading.Thread(
                target=self._consume_loop, args=(rt, rt.stop, rt.consume_stop, feed),
                name=f"consumer-{rt.sub.name}-{i}", daemon=True,
            ))
        for t in rt.threads:
            t.start()

    def _stop_threads(self, rt: _Runtime, timeout: float = 30.0) -> None:
        self._stop_all([rt], timeout)

    def _stop_all(self, rts: list[_Runtime], timeout: float) -> None:
        """Wind down consumers without wasting work: stop taking messages, let running handlers
        finish, commit their dedup marks and ack them, then close the consumers (what they had
        prefetched but not handled goes back to the queue)."""
        deadline = time.monotonic() + timeout
        for rt in rts:
            rt.stop.set()
        for rt in rts:
            with rt.lock:
                rt.lock.notify_all()  # idle batch threads see the stop at once
                while rt.active and time.monotonic() < deadline:
                    rt.lock.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            rt.forget_queued()  # received by a batching consumer, never started: back when consume ends
        try:
            self.store.flush()  # commits marks and states
            for rt in rts:  # then acks what waited for them, before the consumers close
                rt.ack_committed(self.store.committed_generation)
        except Exception as exc:  # noqa: BLE001 - pending ones are redelivered and skipped by dedup
            _log.error("worker_state_flush_failed", error_type=type(exc).__name__, error=str(exc)[:300])
        for rt in rts:
            rt.consume_stop.set()
        for rt in rts:
            for t in rt.threads:
                if t is not threading.current_thread():
                    t.join(max(0.0, deadline - time.monotonic()))
            rt.threads = []

    def _consume_loop(
        self, rt: _Runtime, stop: threading.Event, consume_stop: threading.Event, feed: deque[Delivery] | None = None
    ) -> None:
        backoff = 0.5
        if feed is None:
            def on_delivery(d: Delivery) -> None:
                self._on_delivery(rt, stop, d)
        else:
            def on_delivery(d: Delivery) -> None:
                self._enqueue(rt, stop, feed, d)
        while not consume_stop.is_set():
            sub = rt.sub
            prefetch = sub.effective_prefetch(self.settings.prefetch)
            try:
                self.broker.consume(sub.queue, on_delivery, prefetch=prefetch, stop=consume_stop, idle_timeout=0.05)
                backoff = 0.5
            except Exception as exc:  # noqa: BLE001 - a consumer never dies; reconnect with backoff
                _log.error("consumer_failed", subscription=sub.name, error_type=type(exc).__name__, error=str(exc)[:300])
                consume_stop.wait(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 30.0)

    def _housekeeping(self) -> None:
        while not self._stopping.wait(600):
            try:
                n = self.store.purge_processed(self.settings.dedup_window_seconds)
                m = self.store.purge_messages(self.settings.dedup_window_seconds)
                if n or m:
                    _log.info("bus_store_purged", processed_ids=n, finished_messages=m)
            except Exception as exc:  # noqa: BLE001 - retried next round
                _log.warning("processed_ids_purge_failed", error_type=type(exc).__name__, error=str(exc)[:300])

    # ------------------------------------------------------------------ one delivery
    def _on_delivery(self, rt: _Runtime, stop: threading.Event, delivery: Delivery) -> None:
        with rt.lock:
            if stop.is_set():  # winding down: hand it back untouched
                delivery.reject(True)
                return
            rt.active += 1
        self._guarded(rt, stop, [delivery], lambda: self._handle(rt, stop, delivery))

    def _guarded(self, rt: _Runtime, stop: threading.Event, deliveries: list[Delivery], work: Callable[[], None]) -> None:
        """Run ``work`` on deliveries counted in ``rt.active``; if it fails outside the handler's
        own error mapping (e.g. the dedup lookup), back off and hand back what it did not settle."""
        try:
            rt.ack_committed(self.store.committed_generation)
            work()
        except Exception as exc:  # noqa: BLE001 - back off, hand them back
            _log.error(
                "delivery_processing_failed", subscription=rt.sub.name, message_id=deliveries[0].envelope.id,
                batch_size=len(deliveries), error_type=type(exc).__name__, error=str(exc)[:300],
            )
            stop.wait(1.0)
            for d in deliveries:
                if not d.settled:
                    d.reject(True)
        finally:
            with rt.lock:
                rt.active -= 1
                rt.lock.notify_all()

    def _handle(self, rt: _Runtime, stop: threading.Event, delivery: Delivery) -> None:
        sub = rt.sub  # this message runs on the definition current now (hot reload)
        env = delivery.envelope
        log = _log.bind(message_id=env.id, correlation_id=env.correlation_id, subscription=sub.name, route=sub.name)
        hold = rt.resume_at - time.monotonic()
        if hold > 0 and stop.wait(hold):
            delivery.reject(True)
            return
        if sub.dedup and self.store.seen(sub.name, env.id):
            metrics.MESSAGES_DUPLICATE.labels(subscription=sub.name).inc()
            log.info("message_duplicate_skipped", redelivered=delivery.redelivered)
            delivery.ack()
            return
        self.store.record_state(env.id, sub.name, "in_flight", env.attempt + 1, envelope=env)
        ctx = HandlerContext(env, sub.name, delivery, log)
        t0 = time.perf_counter()
        try:
            result = sub.handler(env, ctx)
            if ctx.error is not None:
                raise ctx.error
            reply = self._reply_for(env, sub.name, result) if delivery.reply_to else None
            self._publish_outbox(ctx)
            if reply is not None:
                self._publish(reply, queue=delivery.reply_to)
        except Exception as exc:  # noqa: BLE001 - mapped to retry / dead-letter, never kills the consumer
            metrics.HANDLER_SECONDS.labels(subscription=sub.name).observe(time.perf_counter() - t0)
            self._on_failure(rt, stop, sub, delivery, env, exc, log)
            return
        metrics.HANDLER_SECONDS.labels(subscription=sub.name).observe(time.perf_counter() - t0)
        gen = self._delivered(rt, sub, delivery, ctx)
        if gen is None:
            return
        # Ack only once the dedup mark is committed. Marks are group-committed: up to
        # ack_batch successes per thread wait together (the flusher also commits every
        # flush_interval and its commit listener acks stragglers when the queue goes quiet).
        with rt.lock:
            waiting = len(rt.pending)
        prefetch = sub.prefetch or self.settings.prefetch
        batch = sub.ack_batch or max(1, min(32, prefetch // 2))
        if waiting >= batch:
            try:
                self.store.wait_committed(gen)
            except Exception as exc:  # noqa: BLE001 - not acked: acked after a later commit, or redelivered
                log.error("dedup_mark_failed", error_type=type(exc).__name__, error=str(exc)[:300])
                stop.wait(1.0)
                return
            rt.ack_committed(self.store.committed_generation)

    # ------------------------------------------------------------------ micro-batches
    def _enqueue(self, rt: _Runtime, stop: threading.Event, feed: deque[Delivery], delivery: Delivery) -> None:
        """Consumer-thread callback in batch mode: queue the delivery for this thread's batcher
        and return at once, so the broker hands over what else is waiting (up to prefetch).
        When winding down it is left unsettled: the end of ``consume`` gives it back."""
        with rt.lock:
            if not stop.is_set():
                feed.append(delivery)
                rt.lock.notify_all()

    def _batch_loop(self, rt: _Runtime, stop: threading.Event, feed: deque[Delivery]) -> None:
        """Take what is queued — at most ``batch_max``, never waiting for more — and run it."""
        while True:
            with rt.lock:
                while not feed and not stop.is_set():
                    rt.lock.wait(0.5)
                if stop.is_set():
                    return  # what is still queued goes back to the broker when consume ends
                n = max(1, rt.sub.batch_max)
                batch = [feed.popleft() for _ in range(min(n, len(feed)))]
                rt.active += 1
            self._guarded(rt, stop, batch, functools.partial(self._handle_batch, rt, stop, batch))

    def _handle_batch(self, rt: _Runtime, stop: threading.Event, batch: list[Delivery]) -> None:
        sub = rt.sub  # the whole batch runs on the definition current now (hot reload)
        if sub.batch_handler is None:
            for d in batch:
                self._handle(rt, stop, d)
            return
        hold = rt.resume_at - time.monotonic()
        if hold > 0 and stop.wait(hold):
            for d in batch:
                d.reject(True)
            return
        order: list[tuple[HandlerContext, Envelope, str | None, str | None]] = []
        work: list[tuple[Delivery, HandlerContext]] = []
        again: list[Delivery] = []  # the same id twice in one batch: run after it, dedup decides
        ids: set[str] = set()
        for d in batch:
            env = d.envelope
            if env.id in ids:
                again.append(d)
                continue
            log = _log.bind(message_id=env.id, correlation_id=env.correlation_id, subscription=sub.name, route=sub.name)
            if sub.dedup and self.store.seen(sub.name, env.id):
                metrics.MESSAGES_DUPLICATE.labels(subscription=sub.name).inc()
                log.info("message_duplicate_skipped", redelivered=d.redelivered)
                d.ack()
                continue
            ids.add(env.id)
            self.store.record_state(env.id, sub.name, "in_flight", env.attempt + 1, envelope=env)
            work.append((d, HandlerContext(env, sub.name, d, log, order)))
        if work:
            self._run_batch(rt, stop, sub, work, order)
        for d in again:
            self._handle(rt, stop, d)

    def _run_batch(
        self,
        rt: _Runtime,
        stop: threading.Event,
        sub: Subscription,
        work: list[tuple[Delivery, HandlerContext]],
        order: list[tuple[HandlerContext, Envelope, str | None, str | None]],
    ) -> None:
        assert sub.batch_handler is not None
        t0 = time.perf_counter()
        try:
            results = sub.batch_handler([(ctx.envelope, ctx) for _d, ctx in work])
            if results is not None and len(results) != len(work):
                raise TypeError(f"batch handler of '{sub.name}' returned {len(results)} replies for {len(work)} messages")
            replies: list[tuple[Envelope, str]] = []
            for i, (d, ctx) in enumerate(work):
                if d.reply_to and ctx.error is None:
                    reply = self._reply_for(ctx.envelope, sub.name, results[i] if results is not None else None)
                    if reply is not None:
                        replies.append((reply, d.reply_to))
            self._publish_entries([(env, rk, q) for ctx, env, rk, q in order if ctx.error is None])
            for reply, reply_to in replies:
                self._publish(reply, queue=reply_to)
        except Exception as exc:  # noqa: BLE001 - isolate the poison: each message alone on the normal path
            _log.warning(
                "batch_failed_running_one_by_one", subscription=sub.name, batch_size=len(work),
                error_type=type(exc).__name__, error=str(exc)[:300],
            )
            for d, _ctx in work:
                self._handle(rt, stop, d)
            return
        per = (time.perf_counter() - t0) / len(work)
        gen = None
        for d, ctx in work:
            env = ctx.envelope
            metrics.HANDLER_SECONDS.labels(subscription=sub.name).observe(per)
            if ctx.error is not None:
                self._on_failure(rt, stop, sub, d, env, ctx.error, ctx.log)
                continue
            g = self._delivered(rt, sub, d, ctx, batch_size=len(work))
            gen = gen if g is None else g
        if gen is None:
            return
        try:  # one commit for the batch's dedup marks, then every delivery is acked
            self.store.wait_committed(gen)
        except Exception as exc:  # noqa: BLE001 - not acked: acked after a later commit, or redelivered
            _log.error("dedup_mark_failed", subscription=sub.name, error_type=type(exc).__name__, error=str(exc)[:300])
            stop.wait(1.0)
            return
        rt.ack_committed(self.store.committed_generation)

    def _delivered(self, rt: _Runtime, sub: Subscription, delivery: Delivery, ctx: HandlerContext, **log_kw: Any) -> int | None:
        """Record a success; ack at once without dedup, else queue the ack behind the dedup mark
        and return the mark's write generation."""
        env = ctx.envelope
        self.store.record_state(env.id, sub.name, ctx.outcome, env.attempt + 1)
        metrics.MESSAGES_DELIVERED.labels(subscription=sub.name).inc()
        ctx.log.debug("message_delivered", outcome=ctx.outcome, attempt=env.attempt + 1, **log_kw)
        if not sub.dedup:
            delivery.ack()
            return None
        gen = self.store.mark_processed(sub.name, env.id, wait=False)
        with rt.lock:
            rt.pending.append((gen, time.monotonic(), delivery))
        return gen

    @staticmethod
    def _reply_for(request: Envelope, subscription: str, result: Envelope | None) -> Envelope | None:
        if result is None:
            return None
        if not isinstance(result, Envelope):
            raise TypeError(f"handler of '{subscription}' returned {type(result).__name__}, expected Envelope or None")
        changes: dict[str, Any] = {"correlation_id": request.correlation_id or request.id, "causation_id": request.id}
        if result.causation_id in (None, request.id):
            changes["id"] = stable_id(request.id, subscription, "reply")
        return result.evolve(**changes)

    def _publish(self, env: Envelope, **kw: Any) -> None:
        t0 = time.perf_counter()
        self.broker.publish(env, timeout=self.settings.publish_timeout, **kw)
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - t0)

    def _publish_outbox(self, ctx: HandlerContext) -> None:
        self._publish_entries(ctx.outbox)

    def _publish_entries(self, entries: Sequence[tuple[Envelope, str | None, str | None]]) -> None:
        """Publish derived messages durably: one ``publish_many`` per destination, in order."""
        if not entries:
            return
        groups: dict[tuple[str | None, str | None], list[Envelope]] = {}
        for env, rk, q in entries:
            groups.setdefault((rk, q), []).append(env)
        for (rk, q), envs in groups.items():
            t0 = time.perf_counter()
            self.broker.publish_many(envs, routing_key=rk, queue=q, timeout=self.settings.publish_timeout)
            metrics.PUBLISH_SECONDS.observe(time.perf_counter() - t0)

    def _on_failure(
        self,
        rt: _Runtime,
        stop: threading.Event,
        sub: Subscription,
        delivery: Delivery,
        env: Envelope,
        exc: Exception,
        log: Any,
    ) -> None:
        info = ErrorInfo.from_exception(exc)
        made = env.attempt + 1
        now = datetime.now(UTC)
        try:
            if isinstance(exc, CircuitOpen):
                wait = max(0.0, float(exc.retry_after))
                rt.resume_at = time.monotonic() + wait
                # state first: the republished message may be picked up before this line returns
                self.store.record_state(env.id, sub.name, "retrying", env.attempt, info, next_attempt_at=now + timedelta(seconds=wait))
                self._publish(env, queue=sub.queue, delay=wait, reply_to=delivery.reply_to)
                delivery.ack()
                log.warning("subscription_held_circuit_open", retry_after=wait, error=info.message[:300])
                return
            policy = sub.retry
            if info.kind in policy.retry_on and made < policy.max_attempts:
                delay = policy.delay_for(made, random.random())
                self.store.record_state(
                    env.id, sub.name, "retrying", made, info, next_attempt_at=now + timedelta(seconds=delay)
                )
                self._publish(env.evolve(attempt=made), queue=sub.queue, delay=delay, reply_to=delivery.reply_to)
                delivery.ack()
                metrics.MESSAGES_RETRIED.labels(subscription=sub.name).inc()
                log.warning(
                    "message_retry_scheduled", attempt=made, max_attempts=policy.max_attempts, delay_s=round(delay, 3),
                    error_type=info.type, error=info.message[:300],
                )
                return
            dlq_id = self.store.dead_letter(env, sub.name, info, made)
        except Exception as exc2:  # noqa: BLE001 - failure not recorded: do not ack, broker redelivers
            log.error(
                "message_failure_not_recorded", error_type=type(exc2).__name__, error=str(exc2)[:300],
                handler_error_type=info.type,
            )
            stop.wait(1.0)
            delivery.reject(True)
            return
        # BusStore.dead_letter logged it (message_dead_lettered) and counted it
        if delivery.reply_to:
            err = env.derive(ERROR_REPLY_TYPE, {"error": {"kind": info.kind, "type": info.type, "message": info.message, "dlq_id": dlq_id}})
            err = err.evolve(id=stable_id(env.id, sub.name, "error-reply"))
            try:
                self._publish(err, queue=delivery.reply_to)
            except Exception as exc3:  # noqa: BLE001 - the requester will time out instead
                log.warning("error_reply_failed", error_type=type(exc3).__name__)
        delivery.ack()

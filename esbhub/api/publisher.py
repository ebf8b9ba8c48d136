"""Group the publishes of concurrent HTTP requests into few durable broker commits.

Each ingest request awaits :meth:`PublishBatcher.publish`; a few flusher tasks take
everything queued so far and hand it to ``broker.publish_many`` in one call on a thread
(one SQLite commit / one pipelined confirm round for the whole group), then record the
messages as accepted in the store (batched writer). A request is answered only after its
group was stored durably; if the broker raises, every request of that group gets the
error (``503``) — never ``202`` for a message not yet safe.
"""

from __future__ import annotations

import asyncio
import gc
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from esbhub.bus.envelope import Envelope
from esbhub.errors import BrokerUnavailable
from esbhub.logging import get_logger

log = get_logger("esbhub.api")

try:  # metrics module of the bus runtime (optional while it is being written)
    from esbhub.monitoring.metrics import MESSAGES_ACCEPTED
except ImportError:  # pragma: no cover
    MESSAGES_ACCEPTED = None


_heap_frozen = False


def freeze_startup_heap() -> None:
    """Move the objects alive after start-up (modules, the app, schemas: ~120k) out of the GC's reach.

    Under ingest load every request's short-lived objects trigger the cyclic GC, and each
    full (generation 2) collection walked the whole start-up heap: 60–120 ms with the event
    loop stopped on this 2-core machine — the p99 tail of the ingest path. After
    ``gc.freeze()`` a full collection only walks what was allocated since (CPython docs:
    gc.freeze). Start-up objects live for the whole process anyway; garbage is collected
    first so none of it is kept. Once per process (each uvicorn worker does it in its own
    lifespan).
    """
    global _heap_frozen
    if _heap_frozen:
        return
    _heap_frozen = True
    gc.collect()
    gc.freeze()


class PublishBatcher:
    def __init__(
        self,
        broker: Any,
        store: Any,
        *,
        timeout: float,
        max_batch: int = 256,
        flushers: int = 1,
        freeze_heap: bool = True,
    ) -> None:
        self.broker = broker
        self.store = store
        self.timeout = timeout
        self.max_batch = max_batch
        self.flushers = flushers
        self.freeze_heap = freeze_heap
        self._queue: asyncio.Queue[tuple[Envelope, asyncio.Future[None]]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pool = ThreadPoolExecutor(max_workers=flushers, thread_name_prefix="esbhub-publish")

    async def start(self) -> None:
        if self.freeze_heap:  # the app is fully built when its lifespan starts the batcher
            freeze_startup_heap()
        self._queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._run(), name=f"publish-flusher-{i}") for i in range(self.flushers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks = []
        if self._queue is not None:
            while not self._queue.empty():
                _env, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(BrokerUnavailable("the hub is shutting down"))
        self._pool.shutdown(wait=True)

    async def publish(self, env: Envelope) -> None:
        """Return once ``env`` is stored durably; raise :class:`BrokerUnavailable` otherwise."""
        if self._queue is None:
            raise BrokerUnavailable("the publisher is not running")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((env, fut))
        await fut

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            envs = [e for e, _ in batch]
            try:
                await loop.run_in_executor(self._pool, self._flush, envs)
            except asyncio.CancelledError:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(BrokerUnavailable("the hub is shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 — every waiter of this group learns the batch failed
                err = exc if isinstance(exc, BrokerUnavailable) else BrokerUnavailable(f"publish failed: {exc}")
                if not isinstance(exc, BrokerUnavailable):
                    log.error("publish_failed", error_type=type(exc).__name__, error=str(exc), count=len(envs))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
            else:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    def _flush(self, envs: list[Envelope]) -> None:
        self.broker.publish_many(envs, timeout=self.timeout)
        # The messages are safe now; the state record is bookkeeping and must not turn an
        # accepted message into an error for the sender.
        try:
            self.store.record_accepted(envs)
        except Exception as exc:  # noqa: BLE001 — logged, never swallowed quietly
            log.error("accepted_state_not_recorded", error_type=type(exc).__name__, error=str(exc), count=len(envs))
        if MESSAGES_ACCEPTED is not None:
            counts: dict[str, int] = {}
            for e in envs:
                counts[e.type] = counts.get(e.type, 0) + 1
            for t, n in counts.items():
                MESSAGES_ACCEPTED.labels(type=t).inc(n)

"""Routes in worker processes: compile the active versions into bus Subscriptions, reload safely.

Source of truth is the route store (``route_versions``). A change arrives by
``PUT /v1/routes/{name}``, ``esbhub routes apply FILE`` or the file watcher on
``settings.routes_dir``; each is **validated first** (:func:`apply_text`) — an invalid change
is refused with its errors and stores nothing, so every worker keeps the running version.
A valid change is stored as a new version. Every worker process polls the store's change
stamp (two indexed MAX queries, default every second) and swaps the route with
``Worker.replace(sub)``: the message a consumer is handling finishes on the old version, the
next one runs the new — each message is processed by exactly one version (outputs carry the
header ``esbhub-route: <name>@v<version>``).

Delivery: the route's handler runs the engine, sends adapter sinks synchronously and hands
bus outputs to ``ctx.publish`` (published durably before the input is acked); failures go
through the route's ``on_error.retry`` policy, then the dead-letter store.

Ordering (``ordering_key``): the route's queue only hash-partitions messages into
``partitions`` sub-queues (``route.<name>.p<k>``), each consumed by one thread with prefetch 1.
Across worker processes, each of these queues (forwarder ``fwd`` and partitions ``p<k>``) is
consumed by one process at a time: the holder of its lease in ``route_partition_leases``
(renewed every second; a process takes at most its fair share of a route's slots; handover =
stop consuming, then release; a dead process's slots are taken over when its lease expires;
an unrenewed lease stops its consumer at half its TTL). A retried message is still overtaken
by later messages of its key (use ``max_attempts: 1`` to dead-letter instead).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esbhub.bus.envelope import Envelope
from esbhub.bus.worker import HandlerContext, Subscription, queue_for
from esbhub.errors import ErrorDetail, PermanentError
from esbhub.logging import get_logger
from esbhub.routes import adapters as adapter_registry
from esbhub.routes import metrics
from esbhub.routes.engine import CompiledRoute, RunResult
from esbhub.routes.loader import LoadResult, load_paths, load_text
from esbhub.routes.models import CallStep, Route, SinkSpec
from esbhub.routes.steps import Deps
from esbhub.routes.store import AggregateStore, RouteStore

log = get_logger("esbhub.routes")


# ---------------------------------------------------------------- applying changes


@dataclass
class ApplyResult:
    applied: list[dict[str, Any]] = field(default_factory=list)  # new versions stored
    unchanged: list[str] = field(default_factory=list)
    errors: list[ErrorDetail] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def apply_loaded(store: RouteStore, res: LoadResult, *, author: str, comment: str = "", via: str = "api") -> ApplyResult:
    out = ApplyResult(errors=list(res.errors))
    if res.errors:
        log.warning("route_change_refused", via=via, errors=len(res.errors), first=str(res.errors[0])[:300])
        metrics.CHANGES_REFUSED.labels(via=via).inc()
        return out
    for lr in res.routes:
        v = store.apply(lr.route.name, lr.text, author=author, comment=comment)
        if v is None:
            out.unchanged.append(lr.route.name)
        else:
            out.applied.append({k: v[k] for k in ("route", "version", "author", "created_at", "diff")})
            log.info("route_version_stored", route=lr.route.name, version=v["version"], author=author)
    return out


def apply_text(store: RouteStore, text: str, *, file: str = "<api>", author: str, expect_name: str | None = None) -> ApplyResult:
    """Validate ``text`` (one or more routes) and store the changed ones as new versions."""
    res = load_text(text, file)
    if expect_name is not None and res.ok and [r.route.name for r in res.routes] != [expect_name]:
        res.errors.append(ErrorDetail(loc="name", msg=f"the body must hold exactly the route '{expect_name}'", file=file, line=1))
    return apply_loaded(store, res, author=author, via="api")


def apply_paths(store: RouteStore, paths: list[str | Path], *, author: str, via: str = "cli") -> ApplyResult:
    return apply_loaded(store, load_paths(paths), author=author, via=via)


def compile_version(v: dict[str, Any], deps: Deps) -> CompiledRoute:
    res = load_text(v["content"], f"{v['route']}@v{v['version']}")
    res.raise_for_errors()
    return CompiledRoute(res.routes[0].route, v["version"], deps)


# ---------------------------------------------------------------- handler


class RouteHandler:
    """The bus handler of one route version."""

    def __init__(self, rt: RouteRuntime, cr: CompiledRoute) -> None:
        self.rt = rt
        self.cr = cr
        self.route: Route = cr.route
        self.at_most_once = self.route.delivery == "at_most_once" and self.route.on_error.dead_letter == "none"

    def __call__(self, env: Envelope, ctx: HandlerContext) -> Envelope | None:
        try:
            return self._handle(self._version(), env, ctx)
        except Exception as exc:
            if not self.at_most_once:
                raise
            self._dropped(env, ctx, exc)
            return None

    def batch(self, items: Sequence[tuple[Envelope, HandlerContext]]) -> list[Envelope | None]:
        """The worker's micro-batch entry (``Subscription.batch_handler``): the messages that were
        waiting run on one version, step by step (:meth:`CompiledRoute.run_many`), each with
        exactly the result ``__call__`` would give it; a message that fails is marked on its own
        context (``ctx.fail``) and takes the retry / dead-letter path alone (at most once: it is
        dropped) while the others are delivered."""
        cr = self._version()
        replies: list[Envelope | None] = [None] * len(items)
        todo: list[int] = []
        for i, (env, ctx) in enumerate(items):
            try:
                if self._claimed(cr, env, ctx):
                    todo.append(i)
            except Exception as exc:  # noqa: BLE001 - this message's failure, not the batch's
                self._failed(env, ctx, exc)
        results = cr.run_many([items[i][0] for i in todo])
        for i, res in zip(todo, results, strict=True):
            env, ctx = items[i]
            if isinstance(res, Exception):  # its step failed: the others' runs went on
                self._failed(env, ctx, res)
                continue
            try:
                replies[i] = self._deliver(cr, env, ctx, res)
            except Exception as exc:  # noqa: BLE001 - this message's failure, not the batch's
                self._failed(env, ctx, exc)
        return replies

    def _version(self) -> CompiledRoute:
        # With the Worker attached, Worker.replace() swaps this handler; without it the
        # runtime's pointer is read once here — either way one version per message.
        return self.cr if self.rt.worker is not None else self.rt.current.get(self.cr.name, self.cr)

    def _failed(self, env: Envelope, ctx: HandlerContext, exc: Exception) -> None:
        if self.at_most_once:
            self._dropped(env, ctx, exc)
        else:
            ctx.fail(exc)

    def _dropped(self, env: Envelope, ctx: HandlerContext, exc: Exception) -> None:
        log.warning("route_message_dropped", route=self.route.name, message_id=env.id, error_type=type(exc).__name__)
        ctx.filtered()

    def _handle(self, cr: CompiledRoute, env: Envelope, ctx: HandlerContext) -> Envelope | None:
        if not self._claimed(cr, env, ctx):
            return None
        return self._deliver(cr, env, ctx, cr.run(env))

    def _claimed(self, cr: CompiledRoute, env: Envelope, ctx: HandlerContext) -> bool:
        """False (and the message filtered) if another message already holds its business key."""
        key = cr.idempotency_key(env)
        if key is not None and not self.rt.store.claim_key(cr.name, key, env.id):
            log.info("route_duplicate_skipped", route=cr.name, message_id=env.id)
            metrics.FILTERED.labels(route=cr.name).inc()
            ctx.filtered()
            return False
        return True

    def _deliver(self, cr: CompiledRoute, env: Envelope, ctx: HandlerContext, res: RunResult) -> Envelope | None:
        self.rt.deliver(cr, res, ctx)
        if res.filtered:
            metrics.FILTERED.labels(route=cr.name).inc(res.filtered)
        if res.split_empty:
            metrics.SPLIT_EMPTY.labels(route=cr.name).inc(res.split_empty)
            log.info("route_split_empty", route=cr.name, message_id=env.id)
        if res.aggregated:
            metrics.AGGREGATE_HELD.labels(route=cr.name).inc(res.aggregated)
        if not res.outputs and not res.final and not res.deferred and (res.filtered or res.split_empty):
            ctx.filtered()
        return res.reply if ctx.delivery.reply_to else None


class Partitioner:
    """Entry handler of an ordered route: forwards each message to its key's sub-queue."""

    def __init__(self, rt: RouteRuntime, name: str) -> None:
        self.rt, self.name = rt, name

    def __call__(self, env: Envelope, ctx: HandlerContext) -> None:
        cr = self.rt.current[self.name]
        key = cr.ordering_key(env) or env.id
        k = zlib.crc32(key.encode()) % cr.route.partitions
        self.rt.broker.publish(env, queue=queue_for(partition_name(self.name, k)), timeout=self.rt.settings.publish_timeout)
        return None


def partition_name(route: str, k: int) -> str:
    return f"{route}.p{k}"


FWD = "fwd"  # lease slot of an ordered route's forwarder (its entry queue)
MEMBERS = "*members*"  # pseudo-route of the lease table: one row per live worker process


def _slots(cr: CompiledRoute) -> list[str]:
    return [FWD] + [f"p{k}" for k in range(cr.route.partitions)]


def _slot_sub_name(route: str, slot: str) -> str:
    return route if slot == FWD else partition_name(route, int(slot[1:]))


# ---------------------------------------------------------------- runtime


class RouteRuntime:
    """All routes of one worker process: subscriptions, reload, aggregate sweeper, sources."""

    def __init__(
        self,
        settings: Any,
        broker: Any,
        bus_store: Any = None,
        *,
        route_store: RouteStore | None = None,
        poll_interval: float = 1.0,
        sweep_interval: float = 1.0,
        watch: bool = True,
        partition_lease_ttl: float = 40.0,
    ) -> None:
        url = settings.effective_database_url
        self.settings = settings
        self.broker = broker
        self.bus_store = bus_store
        self.store = route_store or RouteStore(url)
        self.aggregates = AggregateStore(url)
        self.poll_interval = poll_interval
        self.sweep_interval = sweep_interval
        self.watch = watch
        self.worker: Any = None
        self.current: dict[str, CompiledRoute] = {}
        self.paused: set[str] = set()
        self._sinks: dict[tuple[str, str], Any] = {}
        self._sources: dict[str, Any] = {}
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.RLock()  # reload / attach
        self._build_lock = threading.Lock()  # lazily built sinks and the request-reply client (handler threads)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reply: Any = None
        self.deps = Deps(aggregates=self.aggregates, call=self._call, inline_delays=False)
        self.on_swap: list[Callable[[str, int], None]] = []
        self.refused: list[ErrorDetail] = []  # errors of the last refused file change (watcher)
        # ordered routes: this process consumes a forwarder / partition queue only while it holds
        # that slot's lease (route_partition_leases), so each has one consumer across processes
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_ttl = partition_lease_ttl
        self.lease_interval = min(1.0, partition_lease_ttl / 4)
        self._held: dict[tuple[str, str], float] = {}  # (route, slot) → monotonic time of the last renewal
        self._member_slot = uuid.uuid4().hex[:16]  # this process's row among the live members
        self._draining: set[str] = set()  # deleted routes whose queues are being drained
        self._lease_lock = threading.Lock()

    # ------------------------------------------------------------ building
    def sync_files(self) -> ApplyResult | None:
        d = self.settings.routes_dir
        if not d or not Path(d).exists():
            return None
        r = apply_paths(self.store, [d], author="files", via="files")
        for e in r.errors:
            log.error("route_file_invalid", error=str(e))
        return r

    def load(self) -> list[Subscription]:
        """Compile every active version; returns the subscriptions for the worker."""
        with self._lock:
            self._stamp = self.store.change_stamp()
            self.paused = self.store.paused()
            subs: list[Subscription] = []
            for name, v in sorted(self.store.active().items()):
                try:
                    cr = compile_version(v, self.deps)
                except Exception as exc:  # noqa: BLE001 - one broken stored version must not stop the others
                    log.error("route_version_unloadable", route=name, version=v["version"], error=str(exc)[:500])
                    continue
                self.current[name] = cr
                subs.extend(self.subscriptions_for(cr))
            return subs

    def subscriptions_for(self, cr: CompiledRoute) -> list[Subscription]:
        r = cr.route
        retry = r.on_error.retry
        topics = r.from_.topics
        if r.ordering_key is None:
            h = RouteHandler(self, cr)
            return [Subscription(
                r.name, topics, h, retry=retry, concurrency=r.concurrency,
                batch_handler=h.batch if r.batch_max > 1 else None, batch_max=r.batch_max,
            )]
        # one forwarding thread keeps arrival order; parallelism comes from the partitions.
        # Only the slots whose lease this process holds (see leases()); the queues exist anyway,
        # so messages published before any process holds a slot wait in them.
        self.broker.declare_queue(queue_for(r.name), topics)
        for k in range(r.partitions):
            self.broker.declare_queue(queue_for(partition_name(r.name, k)), [])
        return [self._slot_sub(cr, slot) for slot in _slots(cr) if (r.name, slot) in self._held]

    def _slot_sub(self, cr: CompiledRoute, slot: str) -> Subscription:
        r = cr.route
        retry = r.on_error.retry
        if slot == FWD:
            return Subscription(r.name, r.from_.topics, Partitioner(self, r.name), retry=retry, concurrency=1)
        return Subscription(_slot_sub_name(r.name, slot), [], RouteHandler(self, cr), retry=retry, prefetch=1, concurrency=1)

    # ------------------------------------------------------------ delivery
    def deliver(self, cr: CompiledRoute, res: RunResult, ctx: HandlerContext | None) -> None:
        """Send a run's outputs: adapter sinks now; bus outputs via ``ctx`` (or the broker directly)."""
        bus: list[tuple[Envelope, str]] = []
        for o in res.outputs:
            s = o.sink
            if s.topic is not None:
                bus.append((o.envelope, s.topic))
            elif s.adapter == "bus":
                bus.append((o.envelope, str(s.config.get("topic"))))
            else:
                self._sink(s).send(o.envelope)
        for env, topic in bus:
            if ctx is not None:
                ctx.publish(env, routing_key=topic, keep_id=True)  # the engine derived its id from the input
            else:
                self.broker.publish(env, routing_key=topic, timeout=self.settings.publish_timeout)
        for d in res.deferred:
            self.broker.publish(d.envelope, queue=queue_for(cr.name), delay=d.delay, timeout=self.settings.publish_timeout)

    def _sink(self, s: SinkSpec) -> Any:
        import orjson

        key = (str(s.adapter), orjson.dumps(s.config, option=orjson.OPT_SORT_KEYS).decode())
        sink = self._sinks.get(key)
        if sink is None:
            with self._build_lock:
                sink = self._sinks.get(key)
                if sink is None:
                    sink = self._sinks[key] = adapter_registry.build_sink(str(s.adapter), s.config)
        return sink

    def _call(self, step: CallStep, env: Envelope) -> Any:
        if step.route is None:
            raise PermanentError("call: only route targets go over the bus")
        if self._reply is None:
            from esbhub.bus.reply import RequestReply

            with self._build_lock:
                if self._reply is None:
                    rr = RequestReply(self.broker)
                    rr.start()
                    self._reply = rr
        try:
            reply = self._reply.request(env, timeout=step.timeout, queue=queue_for(step.route))
        except TimeoutError as exc:
            from esbhub.errors import TransientError

            raise TransientError(f"call to route '{step.route}' timed out after {step.timeout:g}s") from exc
        if reply.type == "hub.error.v1":
            raise PermanentError(f"route '{step.route}' failed: {str(reply.payload)[:300]}")
        return reply.payload

    # ------------------------------------------------------------ reload
    def attach(self, worker: Any) -> None:
        """Let the runtime add/replace/pause subscriptions of ``worker``; starts the background threads."""
        with self._lock:
            self.worker = worker
            existing = set(worker.subscriptions())
            for cr in self.current.values():  # versions swapped before attach: hand them over
                for sub in self.subscriptions_for(cr):
                    (worker.replace if sub.name in existing else worker.add)(sub)
        for name in self.paused:
            for sub in self._sub_names(name):
                try:
                    worker.pause(sub)
                except KeyError:
                    pass
        self.start()

    def _sub_names(self, name: str) -> list[str]:
        cr = self.current.get(name)
        if cr is None or cr.route.ordering_key is None:
            return [name]
        # an ordered route's queues are consumed here only while their leases are held
        have = set(self.worker.subscriptions()) if self.worker is not None else set()
        return [n for n in [name] + [partition_name(name, k) for k in range(cr.route.partitions)] if n in have]

    def reload(self) -> list[tuple[str, int]]:
        """Swap every route whose active version changed; returns the (route, version) swapped."""
        with self._lock:
            stamp = self.store.change_stamp()
            if stamp == self._stamp:
                return []
            self._stamp = stamp
            swapped = []
            active = self.store.active()
            for name in sorted(set(self.current) - set(active) - self._draining):
                self._draining.add(name)  # deleted: drain its queues, then stop (see _drain)
                log.info("route_draining", route=name, version=self.current[name].version)
                threading.Thread(target=self._drain, args=(name,), name=f"routes-drain-{name}", daemon=True).start()
            for name, v in sorted(active.items()):
                cur = self.current.get(name)
                if name in self._draining:
                    continue  # re-created while draining: picked up once the drain finished
                if cur is not None and cur.version == v["version"]:
                    continue
                try:
                    cr = compile_version(v, self.deps)
                except Exception as exc:  # noqa: BLE001 - keep the running version
                    log.error("route_reload_refused", route=name, version=v["version"], error=str(exc)[:500])
                    continue
                self._swap(cr, cur)
                swapped.append((name, cr.version))
            paused = self.store.paused()
            if self.worker is not None:
                for name in paused - self.paused:
                    for s in self._sub_names(name):
                        self.worker.pause(s)
                    log.info("route_paused", route=name)
                for name in self.paused - paused:
                    for s in self._sub_names(name):
                        self.worker.resume(s)
                    log.info("route_resumed", route=name)
            self.paused = paused
            return swapped

    def _swap(self, cr: CompiledRoute, old: CompiledRoute | None) -> None:
        self.current[cr.name] = cr
        if self.worker is not None:
            subs = self.subscriptions_for(cr)
            existing = set(self.worker.subscriptions())
            if cr.route.ordering_key is not None and (cr.name, FWD) not in self._held and cr.name in existing:
                self.worker.remove(cr.name)  # became ordered: its entry queue now needs the forwarder lease
                existing.discard(cr.name)
            for s in subs:
                if s.name in existing:
                    self.worker.replace(s)
                else:
                    self.worker.add(s)
        if self._threads and (old is None or old.route.from_ != cr.route.from_):
            src = self._sources.pop(cr.name, None)
            if src is not None:
                src.stop()  # the endpoint changed: restart the source with the new config
            self._start_sources()
        metrics.RELOADS.labels(route=cr.name).inc()
        log.info("route_reloaded", route=cr.name, version=cr.version, previous=old.version if old else None)
        for cb in self.on_swap:
            cb(cr.name, cr.version)

    # ------------------------------------------------------------ background
    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        self._threads = [threading.Thread(target=self._poll_loop, name="routes-poll", daemon=True),
                         threading.Thread(target=self._sweep_loop, name="routes-sweep", daemon=True),
                         threading.Thread(target=self._lease_loop, name="routes-leases", daemon=True)]
        if self.watch and self.settings.routes_dir and Path(self.settings.routes_dir).exists():
            self._watch_seen = self._snapshot()  # taken now, so a change right after start() is not missed
            self._threads.append(threading.Thread(target=self._watch_loop, name="routes-watch", daemon=True))
        for t in self._threads:
            t.start()
        self._start_sources()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self._threads = []
        with self._lease_lock:
            for key in list(self._held):
                self._drop_slot(key, release=True)  # consumers stopped first, then the lease: hand over at once
            try:
                self.store.release_slot(MEMBERS, self._member_slot, self.owner)
            except Exception as exc:  # noqa: BLE001 - it expires after its TTL
                log.warning("route_member_release_failed", error_type=type(exc).__name__)
        for s in self._sources.values():
            try:
                s.stop()
            except Exception as exc:  # noqa: BLE001 - best effort on shutdown
                log.warning("route_source_stop_failed", error=str(exc)[:200])
        self._sources.clear()
        if self._reply is not None:
            self._reply.stop()

    # ------------------------------------------------------------ deletion
    def _queues_of(self, cr: CompiledRoute) -> list[str]:
        qs = [queue_for(cr.name)]
        if cr.route.ordering_key is not None:
            qs += [queue_for(partition_name(cr.name, k)) for k in range(cr.route.partitions)]
        return qs

    def _depth(self, queues: list[str]) -> int:
        return sum(self.broker.queue_depth(q) for q in queues)  # ready + delayed + unacked, in any process

    def _drain(self, name: str, poll: float = 0.2) -> None:
        """A deleted route: keep consuming (last version) until its queues hold nothing — ready,
        delayed retries or unacked in any process — then stop its consumers, check once more
        and delete its queues (and so its bindings). Messages published after the deletion are
        not the route's any more; everything accepted before it is processed."""
        cr = self.current[name]
        queues = self._queues_of(cr)
        try:
            while not self._stop.is_set():
                try:
                    if self._depth(queues) == 0:
                        with self._lock:
                            subs = self._sub_names(name) if self.worker is not None else []
                            for sub in subs:
                                self.worker.remove(sub)  # finishes its in-flight message
                            if self._depth(queues) == 0:
                                for q in queues:
                                    try:
                                        self.broker.delete_queue(q)
                                    except Exception as exc:  # noqa: BLE001 - another worker deleted it first
                                        log.info("route_queue_delete_skipped", route=name, queue=q, error_type=type(exc).__name__)
                                self.current.pop(name, None)
                                src = self._sources.pop(name, None)
                                if src is not None:
                                    src.stop()
                                log.info("route_deleted_drained", route=name, version=cr.version, queues=queues)
                                self._stamp = None  # a re-creation during the drain is picked up now
                                return
                            have = set(self.worker.subscriptions()) if self.worker is not None else set()
                            for sub in self.subscriptions_for(cr) if self.worker is not None else []:
                                # a retry came back: keep draining
                                (self.worker.replace if sub.name in have else self.worker.add)(sub)
                except Exception as exc:  # noqa: BLE001 - broker/store hiccup: try again
                    log.warning("route_drain_failed", route=name, error_type=type(exc).__name__, error=str(exc)[:300])
                self._stop.wait(poll)
        finally:
            with self._lock:
                self._draining.discard(name)

    # ------------------------------------------------------------ ordered routes across processes
    def leases(self) -> bool:
        """One lease round: renew held slots, take at most one free slot, stop consuming a slot
        whose lease was lost or not renewed for half its TTL (before anyone else may take it).
        True if a slot was taken (the next round comes sooner)."""
        if self.worker is None:
            return False
        with self._lease_lock:
            now = time.monotonic()
            with self._lock:
                routes = {n: cr for n, cr in self.current.items() if cr.route.ordering_key is not None and n not in self.paused}
            wanted = {(n, slot) for n, cr in routes.items() for slot in _slots(cr)}
            for key in [k for k in self._held if k not in wanted]:
                self._drop_slot(key, release=True)  # route gone, paused, unordered or fewer partitions
            # fair share: live worker processes announce themselves; each holds at most
            # ceil(slots / processes) of a route's slots and hands extras over (stop, then release)
            try:
                self.store.acquire_slot(MEMBERS, self._member_slot, self.owner, self.lease_ttl)
                members = max(1, len(self.store.slot_holders(MEMBERS)))
            except Exception:  # noqa: BLE001 - the store is down: renewals below fail and fence too
                members = 1
            took = False
            for n, cr in routes.items():
                mine = sorted(k for k in self._held if k[0] == n)
                if len(mine) > -(-len(_slots(cr)) // members):
                    self._drop_slot(mine[-1], release=True)
            for key in sorted(wanted):
                held = key in self._held
                share = -(-len(_slots(routes[key[0]])) // members)
                if not held and (took or sum(1 for k in self._held if k[0] == key[0]) >= share):
                    continue  # one new slot per round, up to this process's share
                try:
                    ok = self.store.acquire_slot(key[0], key[1], self.owner, self.lease_ttl)
                except Exception as exc:  # noqa: BLE001 - the store may be briefly unavailable; fenced below
                    log.warning("route_lease_failed", route=key[0], slot=key[1], error_type=type(exc).__name__)
                    continue
                if ok:
                    self._held[key] = now
                    if not held:
                        took = True
                        self._start_slot(routes[key[0]], key[1])
                elif held:
                    self._drop_slot(key, release=False)  # taken over: our lease had expired
            for key, t in list(self._held.items()):
                if now - t > self.lease_ttl / 2:
                    log.warning("route_lease_not_renewed", route=key[0], slot=key[1])
                    self._drop_slot(key, release=False)
            return took

    def _start_slot(self, cr: CompiledRoute, slot: str) -> None:
        if slot == FWD:  # the forwarder publishes to every partition queue: they must exist
            for k in range(cr.route.partitions):
                self.broker.declare_queue(queue_for(partition_name(cr.name, k)), [])
        sub = self._slot_sub(cr, slot)
        (self.worker.replace if sub.name in self.worker.subscriptions() else self.worker.add)(sub)
        log.info("route_slot_acquired", route=cr.name, slot=slot, owner=self.owner)

    def _drop_slot(self, key: tuple[str, str], *, release: bool) -> None:
        self._held.pop(key, None)
        name, slot = key
        cr = self.current.get(name)
        still_ordered = cr is not None and cr.route.ordering_key is not None
        if self.worker is not None and (slot != FWD or still_ordered or cr is None):
            try:
                self.worker.remove(_slot_sub_name(name, slot))  # returns once its in-flight message finished
            except KeyError:
                pass
        if release:
            try:
                self.store.release_slot(name, slot, self.owner)
            except Exception as exc:  # noqa: BLE001 - it then expires after its TTL
                log.warning("route_lease_release_failed", route=name, slot=slot, error_type=type(exc).__name__)
        log.info("route_slot_released", route=name, slot=slot, owner=self.owner, released=release)

    def _lease_loop(self) -> None:
        while not self._stop.is_set():
            took = False
            try:
                took = self.leases()
            except Exception as exc:  # noqa: BLE001 - next round retries
                log.warning("route_leases_failed", error_type=type(exc).__name__, error=str(exc)[:300])
            self._stop.wait(0.05 if took else self.lease_interval)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.reload()
            except Exception as exc:  # noqa: BLE001 - the store may be briefly unavailable; poll again
                log.warning("route_poll_failed", error_type=type(exc).__name__, error=str(exc)[:300])

    def sweep(self) -> int:
        """Complete aggregation groups whose timeout passed (publish, then mark). Returns groups completed."""
        n = 0
        for cr in list(self.current.values()):
            for gid, res in cr.complete_groups():
                self.deliver(cr, res, None)
                if self.aggregates.mark_completed(gid):
                    n += 1
                    metrics.AGGREGATE_TIMED_OUT.labels(route=cr.name).inc()
                    log.info("aggregate_completed_by_timeout", route=cr.name, group=gid)
        return n

    def housekeeping(self) -> None:
        """Drop closed aggregation groups and business keys older than the dedup window."""
        from esbhub.routes.store import purge_idempotency

        window = float(getattr(self.settings, "dedup_window_seconds", 7 * 86400))
        n = self.aggregates.purge_completed(window) + purge_idempotency(self.store, window)
        if n:
            log.info("route_state_purged", rows=n)

    def _sweep_loop(self) -> None:
        last_purge = time.monotonic()
        while not self._stop.wait(self.sweep_interval):
            try:
                self.sweep()
                if time.monotonic() - last_purge > 600:
                    last_purge = time.monotonic()
                    self.housekeeping()
            except Exception as exc:  # noqa: BLE001 - retried next round; groups stay open meanwhile
                log.warning("aggregate_sweep_failed", error_type=type(exc).__name__, error=str(exc)[:300])

    def _snapshot(self) -> dict[str, tuple[float, int]]:
        from esbhub.routes.loader import route_files, tests_file_for

        out: dict[str, tuple[float, int]] = {}
        for f in route_files([self.settings.routes_dir]):
            for p in (f, tests_file_for(f)):
                if p is not None:
                    try:
                        st = p.stat()
                        out[str(p)] = (st.st_mtime, st.st_size)
                    except OSError:
                        continue
        return out

    def _watch_loop(self) -> None:
        """watchfiles events, plus a cheap mtime snapshot on each 1 s timeout so an event missed
        (e.g. before the watcher registered) is still picked up."""
        from watchfiles import watch

        d = str(self.settings.routes_dir)
        seen = getattr(self, "_watch_seen", None) or self._snapshot()
        for changes in watch(d, stop_event=self._stop, debounce=200, rust_timeout=1000, yield_on_timeout=True):
            snap = self._snapshot()
            if not changes and snap == seen:
                continue
            seen = snap
            try:
                r = self.sync_files()
            except Exception as exc:  # noqa: BLE001 - the watcher must survive a store hiccup
                log.warning("route_file_sync_failed", error_type=type(exc).__name__, error=str(exc)[:300])
                continue
            if r is not None and r.errors:
                self.refused = list(r.errors)
                log.warning("route_file_change_refused", errors=[str(e) for e in r.errors[:10]])

    def _start_sources(self) -> None:
        for name, cr in self.current.items():
            f = cr.route.from_
            if f.adapter is None or name in self._sources:
                continue
            src = adapter_registry.build_source(f.adapter, f.config)
            q = queue_for(name)
            self.broker.declare_queue(q, [])

            def emit(envs: Any, _q: str = q) -> None:
                self.broker.publish_many(list(envs), queue=_q, timeout=self.settings.publish_timeout)

            src.start(emit)
            self._sources[name] = src
            log.info("route_source_started", route=name, adapter=f.adapter)


_runtimes: list[RouteRuntime] = []


def load_subscriptions(settings: Any, broker: Any, store: Any) -> list[Subscription]:
    """Worker entry point (``esbhub worker``): the subscriptions of every active route.

    Syncs ``settings.routes_dir`` into the route store first (only changed, valid files make
    new versions). Call :func:`attach` with the Worker to enable hot reload and pause/resume;
    without it the runtime still swaps versions inside the handlers it returned.
    """
    from sqlalchemy import inspect

    from esbhub.db import engine_for, upgrade

    url = settings.effective_database_url
    if not inspect(engine_for(url)).has_table("route_versions"):
        upgrade(url)
    import atexit

    # ESBHUB_ROUTE_LEASE_TTL: seconds before another process takes over a dead one's ordered-route
    # queues; keep it above the broker's redelivery time for a frozen consumer (embedded: 30 s)
    rt = RouteRuntime(settings, broker, store, partition_lease_ttl=float(os.environ.get("ESBHUB_ROUTE_LEASE_TTL", "40")))
    rt.sync_files()
    subs = rt.load()
    _runtimes.append(rt)
    rt.start()
    atexit.register(rt.stop)  # on a clean exit, hand ordered-route leases over at once
    return subs


def attach(worker: Any) -> None:
    """Hand the worker to the runtimes created by :func:`load_subscriptions` (hot reload, pause)."""
    for rt in _runtimes:
        if rt.worker is None:
            rt.attach(worker)

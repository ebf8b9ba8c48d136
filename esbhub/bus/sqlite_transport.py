"""An ack-aware, crash-safe message queue in one SQLite file (WAL), and a kombu transport on it.

Two layers live here:

* :class:`SqliteQueueStore` — the queue engine the embedded broker runs on. Messages are
  rows; a consumer *leases* rows (``owner`` column) instead of deleting them, and only an
  ack deletes a row. A lease whose owner process died (same host: the pid is gone or was
  reused — checked with the process start time) is released at once by the next
  recovery pass of any live consumer; a lease whose owner stopped heart-beating for
  ``lease_timeout`` seconds (a frozen process, another host) is released too. Released
  rows come back with ``redelivered = 1``. Topic bindings live in a table, so every
  process sharing the file routes the same way.
* :class:`Transport` / :class:`Channel` — the same engine as a kombu virtual transport,
  registered as ``esbsqlite://PATH`` so plain kombu code (and Celery) can use it:
  ``_get`` leases, the QoS ack deletes, ``reject(requeue=True)`` and connection close
  release the lease instead of re-inserting a copy. ``EmbeddedBroker`` talks to the
  engine directly (see ``esbhub/bus/embedded.py`` for the measured reason).

Durability: ``journal_mode=WAL``. ``synchronous=NORMAL`` (default) makes every committed
transaction survive a crash of any process (``kill -9``): the commit is in the WAL in
the OS page cache. Survival of a power loss or kernel crash needs ``synchronous=FULL``
(an fsync per commit; group commit keeps that affordable).

Speed:
* **group commit** — concurrent ``put`` calls from many threads share one transaction:
  the first caller becomes the leader and commits everything queued so far, the others
  wait for that commit (leader/follower, no extra thread, no fixed delay);
* **batch lease** — one ``UPDATE … RETURNING`` leases up to ``prefetch`` rows;
* **batched acks** — acks are collected and deleted in the same transaction as the
  next lease (a row stays leased until its ack commits, so batching is safe);
* WAL checkpoints run on a background thread once the WAL passes 4 MB, off the
  publish path (the automatic checkpoint stays as a backstop at 64 MB);
* one process-wide lock per database file serialises this process's write
  transactions, so threads never spin in SQLite's busy handler against each other;
  other processes are waited for with ``busy_timeout``.

Schema (version 1)::

    meta(key PRIMARY KEY, value)                   schema + topology version
    queues(name PRIMARY KEY, created_at)
    bindings(exchange, queue, pattern)             PRIMARY KEY of all three
    messages(id INTEGER PRIMARY KEY, queue, body, reply_to, visible_at, owner, redelivered)
        INDEX (queue, owner, visible_at)           ready rows: owner IS NULL, visible_at <= now
    owners(owner PRIMARY KEY, host, pid, started, heartbeat)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from kombu.transport import TRANSPORT_ALIASES, virtual

from esbhub.bus.broker import topic_matches
from esbhub.errors import BrokerUnavailable

SCHEMA_VERSION = 1
HOSTNAME = socket.gethostname()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bindings (
    exchange TEXT NOT NULL, queue TEXT NOT NULL, pattern TEXT NOT NULL,
    PRIMARY KEY (exchange, queue, pattern)
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    reply_to TEXT,
    visible_at REAL NOT NULL,
    owner TEXT,
    redelivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, owner, visible_at);
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
    started REAL NOT NULL, heartbeat REAL NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', 1), ('topology', 0);
"""

_PATH_LOCKS: dict[str, threading.Lock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


def _path_lock(path: str) -> threading.Lock:
    with _PATH_LOCKS_GUARD:
        return _PATH_LOCKS.setdefault(path, threading.Lock())


def _process_started(pid: int) -> float | None:
    """Start time of ``pid`` (to tell a reused pid apart), or None if it does not run."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:
        return -1.0  # exists but unreadable: treat as alive


def owner_alive(host: str, pid: int, started: float, heartbeat: float, *, now: float, lease_timeout: float) -> bool:
    """Is the consumer that holds leases still there? Same host: by pid + start time."""
    if now - heartbeat > lease_timeout:
        return False
    if host != HOSTNAME:
        return True
    st = _process_started(pid)
    if st is None:
        return False
    return st < 0 or abs(st - started) < 1.0


@dataclass
class Row:
    """A leased message row."""

    id: int
    queue: str
    body: bytes
    reply_to: str | None
    redelivered: bool


@dataclass
class _PutRequest:
    items: list[tuple[bytes, str | None, str | None, str | None, float]]  # body, exchange, routing key, queue, visible_at
    reply_to: str | None
    done: bool = False
    error: BaseException | None = None
    queues: list[str] = field(default_factory=list)


class SqliteQueueStore:
    """The queue engine over one SQLite file. Thread-safe; one per process per file is enough."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        lease_timeout: float = 30.0,
        heartbeat_interval: float = 5.0,
        unrouted_queue: str = "esbhub.unrouted",
        checkpoint_bytes: int = 4 << 20,
    ) -> None:
        self.path = str(Path(path).expanduser().absolute())
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("NORMAL", "FULL", "EXTRA", "OFF"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.busy_timeout = busy_timeout
        self.lease_timeout = lease_timeout
        self.heartbeat_interval = heartbeat_interval
        self.unrouted_queue = unrouted_queue
        self._wlock = _path_lock(self.path)  # serialises this process's write transactions
        self._w: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._open_lock = threading.Lock()
        # topology cache, refreshed when meta.topology changes
        self._topo_version = -1
        self._queues: set[str] = set()
        self._bindings: dict[str, list[tuple[str, str]]] = {}
        self._route_cache: dict[tuple[str, str], tuple[str, ...]] = {}
        # group commit
        self._gc_cond = threading.Condition()
        self._gc_pending: list[_PutRequest] = []
        self._gc_leader = False
        # wake-ups for consumers in this process
        self._changed = threading.Condition()
        self._generation = 0
        # owners registered here (heart-beaten by a background thread)
        self._owners: set[str] = set()
        self._owners_lock = threading.Lock()
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self._cp_thread: threading.Thread | None = None
        self.checkpoint_bytes = checkpoint_bytes
        self._started = psutil.Process().create_time()
        self._pid = os.getpid()
        self.closed = False

    # ---------------------------------------------------------------- connections
    def _connect(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        c.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"PRAGMA synchronous={self.synchronous}")
        c.execute("PRAGMA cache_size=-16000")
        c.execute("PRAGMA temp_store=MEMORY")
        c.execute("PRAGMA journal_size_limit=67108864")  # truncate the WAL back to 64 MB after checkpoints
        # Checkpoints run on a background thread (see _checkpoint_loop), off the publish path;
        # the automatic one stays as a backstop for a WAL that grows past 64 MB.
        c.execute("PRAGMA wal_autocheckpoint=16384")
        return c

    def open(self) -> None:
        """Create the file and schema if needed. Idempotent."""
        with self._open_lock:
            if self._w is not None and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            w = self._connect()
            with self._wlock:
                w.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            w.execute(stmt)
                    w.execute("INSERT OR IGNORE INTO queues (name, created_at) VALUES (?, ?)", (self.unrouted_queue, time.time()))
                    w.execute("COMMIT")
                except BaseException:
                    w.execute("ROLLBACK")
                    raise
            self._w = w
            self.closed = False
            self._hb_stop.clear()
            self._hb_thread = threading.Thread(target=self._heartbeat_loop, name="esbsqlite-heartbeat", daemon=True)
            self._hb_thread.start()
            self._cp_thread = threading.Thread(target=self._checkpoint_loop, name="esbsqlite-checkpoint", daemon=True)
            self._cp_thread.start()

    def close(self) -> None:
        """Release every lease of this store's owners, stop heart-beating, close files."""
        if self.closed or self._w is None:
            return
        self._hb_stop.set()
        with self._owners_lock:
            owners = list(self._owners)
        for o in owners:
            with contextlib.suppress(sqlite3.Error):
                self.unregister_owner(o)
        self.closed = True
        with self._changed:
            self._generation += 1
            self._changed.notify_all()
        for t in (self._hb_thread, self._cp_thread):
            if t is not None:
                t.join(timeout=2)
        with self._wlock:
            if self._w is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._w.close()
                self._w = None
        with self._readers_lock:
            for c in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    c.close()
            self._readers.clear()

    @property
    def w(self) -> sqlite3.Connection:
        if self.closed:
            raise BrokerUnavailable("broker store is closed")
        if self._w is None or self._pid != os.getpid():
            self.open()
        assert self._w is not None
        return self._w

    @contextlib.contextmanager
    def reader(self) -> Any:
        with self._readers_lock:
            c = self._readers.pop() if self._readers else None
        if c is None:
            c = self._connect()
        try:
            yield c
        finally:
            with self._readers_lock:
                if self.closed:
                    c.close()
                else:
                    self._readers.append(c)

    @contextlib.contextmanager
    def write(self) -> Any:
        """One write transaction (BEGIN IMMEDIATE … COMMIT) under the process-wide lock."""
        w = self.w
        with self._wlock:
            w.execute("BEGIN IMMEDIATE")
            try:
                yield w
                w.execute("COMMIT")
            except BaseException:
                if w.in_transaction:  # also a failed COMMIT (disk full, I/O error): never leave it open
                    with contextlib.suppress(sqlite3.Error):
                        w.execute("ROLLBACK")
                raise

    def wake(self) -> None:
        """Wake every consumer of this process waiting for messages (e.g. to see a stop flag)."""
        self._notify()

    def _notify(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    @property
    def generation(self) -> int:
        return self._generation

    def wait_changed(self, generation: int, timeout: float) -> None:
        """Sleep until a put in this process (or ``timeout``); other processes are polled."""
        with self._changed:
            if self._generation == generation:
                self._changed.wait(timeout)

    # ---------------------------------------------------------------- topology
    def _refresh_topology(self, c: sqlite3.Connection) -> None:
        v = c.execute("SELECT value FROM meta WHERE key='topology'").fetchone()[0]
        if v == self._topo_version:
            return
        queues = {r[0] for r in c.execute("SELECT name FROM queues")}
        bindings: dict[str, list[tuple[str, str]]] = {}
        for ex, q, p in c.execute("SELECT exchange, queue, pattern FROM bindings ORDER BY queue, pattern"):
            bindings.setdefault(ex, []).append((q, p))
        self._queues, self._bindings, self._route_cache = queues, bindings, {}
        self._topo_version = v

    def _route(self, exchange: str, routing_key: str) -> tuple[str, ...]:
        key = (exchange, routing_key)
        hit = self._route_cache.get(key)
        if hit is None:
            qs: list[str] = []
            for q, p in self._bindings.get(exchange, ()):
                if q not in qs and topic_matches(p, routing_key):
                    qs.append(q)
            hit = tuple(qs) if qs else (self.unrouted_queue,)
            if len(self._route_cache) > 10000:
                self._route_cache.clear()
            self._route_cache[key] = hit
        return hit

    def declare_queue(self, queue: str, exchange: str | None = None, patterns: Iterable[str] = ()) -> None:
        with self.write() as c:
            changed = c.execute("INSERT OR IGNORE INTO queues (name, created_at) VALUES (?, ?)", (queue, time.time())).rowcount
            for p in patterns:
                changed += c.execute(
                    "INSERT OR IGNORE INTO bindings (exchange, queue, pattern) VALUES (?, ?, ?)", (exchange or "", queue, p)
                ).rowcount
            if changed:
                c.execute("UPDATE meta SET value = value + 1 WHERE key='topology'")

    def unbind(self, queue: str, exchange: str, pattern: str) -> None:
        with self.write() as c:
            if c.execute("DELETE FROM bindings WHERE exchange=? AND queue=? AND pattern=?", (exchange, queue, pattern)).rowcount:
                c.execute("UPDATE meta SET value = value + 1 WHERE key='topology'")

    def delete_queue(self, queue: str) -> None:
        with self.write() as c:
            c.execute("DELETE FROM messages WHERE queue=?", (queue,))
            c.execute("DELETE FROM bindings WHERE queue=?", (queue,))
            c.execute("DELETE FROM queues WHERE name=?", (queue,))
            c.execute("UPDATE meta SET value = value + 1 WHERE key='topology'")

    def purge(self, queue: str) -> int:
        with self.write() as c:
            return c.execute("DELETE FROM messages WHERE queue=? AND owner IS NULL", (queue,)).rowcount

    def queue_exists(self, queue: str) -> bool:
        with self.reader() as c:
            return c.execute("SELECT 1 FROM queues WHERE name=?", (queue,)).fetchone() is not None

    def queue_names(self) -> list[str]:
        with self.reader() as c:
            return [r[0] for r in c.execute("SELECT name FROM queues ORDER BY name")]

    def bindings(self, exchange: str | None = None) -> list[tuple[str, str, str]]:
        with self.reader() as c:
            rows = c.execute("SELECT exchange, queue, pattern FROM bindings ORDER BY exchange, queue, pattern").fetchall()
        return [r for r in rows if exchange is None or r[0] == exchange]

    # ---------------------------------------------------------------- publish (group commit)
    def put(
        self,
        items: Sequence[tuple[bytes, str | None, str | None, str | None, float]],
        *,
        reply_to: str | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """Store messages durably; return the queue each landed in (fan-out: several).

        ``items``: ``(body, exchange, routing_key, direct_queue, visible_at)``. With
        ``direct_queue`` the message goes to that queue (``unrouted`` if it does not
        exist); otherwise it is routed by the exchange's bindings (``unrouted`` if none
        match). Returns only after the commit; raises :class:`BrokerUnavailable`.
        """
        if not items:
            return []
        req = _PutRequest(items=list(items), reply_to=reply_to)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._gc_cond:
            self._gc_pending.append(req)
            while not req.done:
                if not self._gc_leader:
                    self._gc_leader = True
                    batch, self._gc_pending = self._gc_pending, []
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    if req in self._gc_pending:  # not taken by a leader: safe to withdraw
                        self._gc_pending.remove(req)
                        raise BrokerUnavailable(f"timed out after {timeout}s waiting for the broker file to commit")
                    left = 0.05  # already in a commit: its outcome decides
                self._gc_cond.wait(left)
            else:
                if req.error is not None:
                    raise BrokerUnavailable(f"message not stored: {req.error}") from req.error
                return req.queues
        # leader: commit everything queued so far in one transaction
        err: BaseException | None = None
        try:
            self._commit_puts(batch)
        except BaseException as e:  # noqa: BLE001 — handed to every waiter, re-raised below
            err = e
        with self._gc_cond:
            for r in batch:
                r.error = err
                r.done = True
            self._gc_leader = False
            self._gc_cond.notify_all()
        if err is not None:
            if isinstance(err, BrokerUnavailable):
                raise err
            raise BrokerUnavailable(f"message not stored: {err}") from err
        self._notify()
        return req.queues

    def _commit_puts(self, batch: list[_PutRequest]) -> None:
        if self.closed:
            raise BrokerUnavailable("broker store is closed")
        with self.write() as c:
            self._refresh_topology(c)
            rows: list[tuple[str, bytes, str | None, float]] = []
            for r in batch:
                r.queues = []
                for body, exchange, rk, direct, visible_at in r.items:
                    if direct is not None:
                        qs: tuple[str, ...] = (direct,) if direct in self._queues else (self.unrouted_queue,)
                    else:
                        qs = self._route(exchange or "", rk or "")
                    for q in qs:
                        rows.append((q, body, r.reply_to, visible_at))
                        r.queues.append(q)
            c.executemany("INSERT INTO messages (queue, body, reply_to, visible_at) VALUES (?, ?, ?, ?)", rows)

    # ---------------------------------------------------------------- owners and leases
    def new_owner_id(self) -> str:
        return f"{HOSTNAME}:{os.getpid()}:{secrets.token_hex(6)}"

    def register_owner(self, owner: str | None = None) -> str:
        owner = owner or self.new_owner_id()
        now = time.time()
        with self.write() as c:
            c.execute(
                "INSERT OR REPLACE INTO owners (owner, host, pid, started, heartbeat) VALUES (?, ?, ?, ?, ?)",
                (owner, HOSTNAME, os.getpid(), self._started, now),
            )
        with self._owners_lock:
            self._owners.add(owner)
        return owner

    def unregister_owner(self, owner: str) -> int:
        """Release every lease of ``owner`` (they come back redelivered) and forget it."""
        with self._owners_lock:
            self._owners.discard(owner)
        with self.write() as c:
            n = self._release_owner(c, owner)
            c.execute("DELETE FROM owners WHERE owner=?", (owner,))
        if n:
            self._notify()
        return n

    def _release_owner(self, c: sqlite3.Connection, owner: str) -> int:
        n = 0
        for (q,) in c.execute("SELECT name FROM queues").fetchall():
            n += c.execute("UPDATE messages SET owner=NULL, redelivered=1 WHERE queue=? AND owner=?", (q, owner)).rowcount
        # rows of queues deleted meanwhile have gone with their queue
        return n

    def _heartbeat_loop(self) -> None:
        while not self._hb_stop.wait(self.heartbeat_interval):
            with self._owners_lock:
                owners = list(self._owners)
            if not owners:
                continue
            now = time.time()
            try:
                with self.write() as c:
                    c.executemany("UPDATE owners SET heartbeat=? WHERE owner=?", [(now, o) for o in owners])
            except sqlite3.Error:
                continue  # next beat; a lease is only lost after lease_timeout

    def _checkpoint_loop(self) -> None:
        """Copy the WAL back into the database file in the background once it passes checkpoint_bytes.

        PASSIVE never blocks writers or readers; the WAL restarts from its beginning at the
        next write after a complete checkpoint, so the file stays small under steady load.
        """
        conn: sqlite3.Connection | None = None
        try:
            while not self._hb_stop.wait(0.2):
                if self.wal_bytes() < self.checkpoint_bytes:
                    continue
                try:
                    conn = conn or self._connect()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    continue  # busy or briefly unavailable: next round
        finally:
            if conn is not None:
                conn.close()

    def recover(self) -> int:
        """Release the leases of dead owners (crashed process, or silent for lease_timeout)."""
        now = time.time()
        with self.reader() as c:
            owners = c.execute("SELECT owner, host, pid, started, heartbeat FROM owners").fetchall()
        with self._owners_lock:
            mine = set(self._owners)
        dead = [
            o
            for o, host, pid, started, hb in owners
            if o not in mine and not owner_alive(host, pid, started, hb, now=now, lease_timeout=self.lease_timeout)
        ]
        if not dead:
            return 0
        n = 0
        with self.write() as c:
            for o in dead:
                n += self._release_owner(c, o)
                c.execute("DELETE FROM owners WHERE owner=?", (o,))
        if n:
            self._notify()
        return n

    def next_visible(self, queue: str) -> float | None:
        """When the next unleased row of ``queue`` becomes visible (None: none waiting). A read."""
        with self.reader() as c:
            r = c.execute("SELECT min(visible_at) FROM messages WHERE queue=? AND owner IS NULL", (queue,)).fetchone()
        return r[0] if r else None

    def lease(self, queue: str, owner: str, limit: int, acks: Sequence[int] = ()) -> list[Row] | None:
        """Delete ``acks`` and lease up to ``limit`` ready rows of ``queue``, in one transaction.

        Returns None when ``owner`` is no longer registered (closed, or declared dead by a
        recovery pass): leases are only ever granted to a registered owner, so no row can
        be leased to an owner nobody will recover. The caller registers a new owner.
        """
        now = time.time()
        with self.write() as c:
            if acks:
                c.executemany("DELETE FROM messages WHERE id=?", [(i,) for i in acks])
            got = (
                c.execute(
                    "UPDATE messages SET owner=?1 WHERE id IN (SELECT id FROM messages WHERE queue=?2 AND owner IS NULL "
                    "AND visible_at<=?3 AND EXISTS (SELECT 1 FROM owners WHERE owner=?1) ORDER BY visible_at, id LIMIT ?4) "
                    "RETURNING id, body, reply_to, redelivered",
                    (owner, queue, now, limit),
                ).fetchall()
                if limit > 0
                else []
            )
            if not got and c.execute("SELECT 1 FROM owners WHERE owner=?", (owner,)).fetchone() is None:
                return None
        got.sort(key=lambda r: r[0])
        return [Row(i, queue, b, rt, bool(rd)) for i, b, rt, rd in got]

    def ack(self, ids: Sequence[int]) -> None:
        if ids:
            with self.write() as c:
                c.executemany("DELETE FROM messages WHERE id=?", [(i,) for i in ids])

    def release(self, ids: Sequence[int], *, redelivered: bool = True, owner: str | None = None) -> None:
        """Give leased rows back (reject with requeue, consumer stop). With ``owner``, only rows
        that owner still holds: a late reject must not un-lease a row another consumer took since."""
        if not ids:
            return
        sets = "owner=NULL, redelivered=1" if redelivered else "owner=NULL"
        with self.write() as c:
            if owner is None:
                c.executemany(f"UPDATE messages SET {sets} WHERE id=?", [(i,) for i in ids])
            else:
                c.executemany(f"UPDATE messages SET {sets} WHERE id=? AND owner=?", [(i, owner) for i in ids])
        self._notify()

    def move(self, ids: Sequence[int], queue: str) -> None:
        """Move leased rows to another queue, unleased (e.g. unreadable bodies → unrouted)."""
        if ids:
            with self.write() as c:
                c.executemany("UPDATE messages SET owner=NULL, queue=? WHERE id=?", [(queue, i) for i in ids])

    # ---------------------------------------------------------------- inspection
    def depth(self, queue: str) -> int:
        with self.reader() as c:
            return c.execute("SELECT count(*) FROM messages WHERE queue=?", (queue,)).fetchone()[0]

    def depth_detail(self, queue: str) -> dict[str, int]:
        now = time.time()
        with self.reader() as c:
            ready, delayed, leased = c.execute(
                "SELECT coalesce(sum(owner IS NULL AND visible_at<=?),0), coalesce(sum(owner IS NULL AND visible_at>?),0), "
                "coalesce(sum(owner IS NOT NULL),0) FROM messages WHERE queue=?",
                (now, now, queue),
            ).fetchone()
        return {"ready": ready, "delayed": delayed, "leased": leased}

    def wal_bytes(self) -> int:
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def db_bytes(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0


# ==================================================================== kombu transport
# ``kombu.Connection("esbsqlite:///var/broker.db")`` once this module is imported.

TRANSPORT_ALIASES.setdefault("esbsqlite", "esbhub.bus.sqlite_transport:Transport")


class QoS(virtual.QoS):
    """Ack deletes the row (batched into the next lease while consuming); reject releases it."""

    channel: Channel

    def ack(self, delivery_tag: Any) -> None:
        super().ack(delivery_tag)
        self.channel._ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        self._quick_ack(delivery_tag)  # forget it locally; the store decides below
        if requeue:
            self.channel.store.release([int(delivery_tag)])
        else:
            self.channel.store.ack([int(delivery_tag)])


class Channel(virtual.Channel):
    """A kombu virtual channel over :class:`SqliteQueueStore` (leases, not deletes)."""

    QoS = QoS
    do_restore = True
    #: rows leased per query while consuming (bounded by the prefetch count)
    fetch_batch = 64
    connection: Transport

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.store = connection.store
        self._owner: str | None = None
        self._buffers: dict[str, list[Row]] = {}
        self._pending_acks: list[int] = []

    # -- owner / leases
    @property
    def owner(self) -> str:
        if self._owner is None:
            self._owner = self.store.register_owner()
        return self._owner

    def _lease(self, queue: str, limit: int) -> list[Row]:
        if self.store.next_visible(queue) is None or (self.store.next_visible(queue) or 0) > time.time():
            self._flush_acks()
            return []
        acks, self._pending_acks = self._pending_acks, []
        rows = self.store.lease(queue, self.owner, limit, acks)
        if rows is None:  # declared dead: a new identity
            self._owner = None
            rows = self.store.lease(queue, self.owner, limit) or []
        return rows

    def _flush_acks(self) -> None:
        if self._pending_acks:
            acks, self._pending_acks = self._pending_acks, []
            self.store.ack(acks)

    def _ack(self, delivery_tag: Any) -> None:
        self._pending_acks.append(int(delivery_tag))
        if not self._consumers:  # nobody polls to flush: delete now
            self._flush_acks()

    def basic_cancel(self, consumer_tag: Any) -> None:
        super().basic_cancel(consumer_tag)
        queue_rows = [r.id for q, buf in self._buffers.items() if q not in self._active_queues for r in buf]
        for q in [q for q in self._buffers if q not in self._active_queues]:
            del self._buffers[q]
        with contextlib.suppress(Exception):
            self._flush_acks()
            if queue_rows:  # leased for a consumer that is gone, never delivered
                self.store.release(queue_rows, redelivered=False)

    def _to_message(self, row: Row) -> dict[str, Any]:
        payload = orjson.loads(row.body)
        props = payload["properties"]
        props["delivery_tag"] = row.id
        props.setdefault("delivery_info", {})["redelivered"] = row.redelivered
        payload["redelivered"] = row.redelivered
        return payload

    # -- virtual channel primitives
    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        buf = self._buffers.get(queue)
        if not buf:
            limit = self.qos.can_consume_max_estimate() if self.qos.prefetch_count else self.fetch_batch
            buf = self._lease(queue, max(1, min(limit or 1, self.fetch_batch)))
            buf.reverse()
            self._buffers[queue] = buf
        if not buf:
            raise virtual.Empty()
        return self._to_message(buf.pop())

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        rows = self._buffers.get(queue) or self._lease(queue, 1)
        if not rows:
            return None
        row = rows.pop() if queue in self._buffers and rows is self._buffers[queue] else rows[0]
        message = self.Message(self._to_message(row), channel=self)
        if no_ack:
            self.store.ack([row.id])
        else:
            self.qos.append(message, message.delivery_tag)
        return message

    def basic_publish(self, message: dict[str, Any], exchange: str, routing_key: str, **kwargs: Any) -> None:
        self._inplace_augment_message(message, exchange, routing_key)
        body = orjson.dumps(message)
        if exchange:
            self.store.put([(body, exchange, routing_key, None, time.time())])
        else:  # default exchange: routing key names the queue
            self.store.put([(body, None, None, routing_key, time.time())])

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self.store.put([(orjson.dumps(message), None, None, queue, time.time())])

    def _restore(self, message: Any) -> None:
        self.store.release([int(message.delivery_tag)])

    def _restore_at_beginning(self, message: Any) -> None:
        self._restore(message)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self.store.declare_queue(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return self.store.queue_exists(queue)

    def _size(self, queue: str) -> int:
        return self.store.depth(queue)

    def _purge(self, queue: str) -> int:
        return self.store.purge(queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self.store.delete_queue(queue)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any) -> None:
        if if_empty and self._size(queue):
            return
        self.store.delete_queue(queue)

    # -- bindings live in the file, shared by every process
    def _pattern(self, exchange: str, routing_key: str) -> str:
        try:
            typ = self.state.exchanges[exchange]["type"]
        except KeyError:
            typ = "topic"
        return "#" if typ == "fanout" else routing_key

    def queue_bind(self, queue: str, exchange: str | None = None, routing_key: str = "", arguments: Any = None, **kw: Any) -> None:
        exchange = exchange or "amq.direct"
        self.store.declare_queue(queue, exchange, [self._pattern(exchange, routing_key)])

    def queue_unbind(self, queue: str, exchange: str | None = None, routing_key: str = "", arguments: Any = None, **kw: Any) -> None:
        exchange = exchange or "amq.direct"
        self.store.unbind(queue, exchange, self._pattern(exchange, routing_key))

    def list_bindings(self) -> Any:
        return ((q, ex, p) for ex, q, p in self.store.bindings())

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # cancels consumers, restores (releases) unacked
        finally:
            leftover = [r.id for buf in self._buffers.values() for r in buf]
            self._buffers.clear()
            with contextlib.suppress(Exception):
                self._flush_acks()
                if leftover:
                    self.store.release(leftover, redelivered=False)
                if self._owner is not None:
                    self.store.unregister_owner(self._owner)
            self._owner = None


class Transport(virtual.Transport):
    """``esbsqlite:///PATH`` — crash-safe SQLite WAL transport for kombu (and Celery)."""

    Channel = Channel
    can_parse_url = True
    polling_interval = 0.01
    driver_type = "sqlite"
    driver_name = "esbsqlite"
    implements = virtual.Transport.implements.extend(exchange_type=frozenset(["direct", "topic", "fanout"]))

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        url = (client.hostname or "").split("?", 1)[0]
        # like SQLAlchemy: esbsqlite:///relative/path, esbsqlite:////absolute/path
        path = url[len("esbsqlite:///") :] if url.startswith("esbsqlite:///") else url
        if not path:
            raise ValueError("esbsqlite:// needs a file path, e.g. esbsqlite:///var/broker.db")
        opts = client.transport_options or {}
        self.store = SqliteQueueStore(
            path,
            synchronous=opts.get("synchronous", "NORMAL"),
            lease_timeout=float(opts.get("lease_timeout", 30.0)),
            unrouted_queue=opts.get("unrouted_queue", "esbhub.unrouted"),
        )
        self.store.open()
        self._last_recover = 0.0

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        now = time.monotonic()
        if now - self._last_recover > 1.0:
            self._last_recover = now
            with contextlib.suppress(sqlite3.Error):
                self.store.recover()
        super().drain_events(connection, timeout)

    def close_connection(self, connection: Any) -> None:
        try:
            super().close_connection(connection)
        finally:
            self.store.close()

    @property
    def default_connection_params(self) -> dict[str, Any]:
        return {"hostname": ""}

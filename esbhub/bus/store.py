"""What the bus remembers in SQL: message state, processed ids (dedup), dead letters.

Tables (Alembic branch ``bus``; SQLite embedded, PostgreSQL in production):

* ``bus_messages``        one row per accepted message (id, type, source, correlation, time);
* ``bus_message_routes``  one row per (message, subscription): ``in_flight`` | ``delivered`` |
  ``retrying`` | ``dead_lettered`` | ``filtered``, attempt, error, next attempt time;
* ``bus_processed``       (subscription, message id) handled successfully — the dedup table;
* ``bus_dead_letters``    the dead-letter store: original envelope, error, attempts, route,
  times, edits (the original is never overwritten), replay and discard records.

Write path. Message-state writes are buffered and written by one background flusher thread
per store (every ``flush_interval`` seconds, 50 ms by default), so recording state costs the
hot path a dict update, not a database round trip. Two writes are synchronous because the
delivery guarantee depends on them being durable *before* the broker ack:

* :meth:`mark_processed` waits until the flusher committed the mark. Waiters wake the
  flusher at once, so marks of all consumer threads are group-committed in one transaction.
* :meth:`dead_letter` inserts the dead letter (and its state) in its own transaction.

State rows are upserted with "newer ``updated_at`` wins", so batches from several processes
cannot move a message back to an older state.

Overall state of a message (``get_message``/``counts``), from its route rows:
no route row yet → ``accepted`` (queued, counted as in flight); any ``in_flight`` →
``in_flight``; else any ``retrying`` → ``retrying``; else any ``dead_lettered`` →
``dead_lettered``; else any ``delivered`` → ``delivered``; else ``filtered``. Hence
``accepted == in_flight + retrying + dead_lettered + delivered + filtered`` always holds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from esbhub.bus.envelope import Envelope, new_id
from esbhub.db import Base, engine_for
from esbhub.errors import ErrorInfo
from esbhub.logging import get_logger
from esbhub.monitoring import metrics

_SEEN_SQL_QMARK = "SELECT 1 FROM bus_processed WHERE subscription = ? AND message_id = ?"
_SEEN_SQL_FORMAT = "SELECT 1 FROM bus_processed WHERE subscription = %s AND message_id = %s"

STATES = ("in_flight", "delivered", "retrying", "dead_lettered", "filtered")
DLQ_STATUSES = ("dead", "replayed", "discarded")

log = get_logger("esbhub.bus.store")


def _utcnow() -> datetime:
    """Naive UTC (stored as such on every backend)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _naive(dt: datetime | str | None) -> datetime | None:
    if dt is None:
        return None
    if isinstance(dt, str):
        dt = datetime.fromisoformat(dt.replace("Z", "+00:00"))
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.replace(tzinfo=UTC).isoformat()


class MessageRow(Base):
    __tablename__ = "bus_messages"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(128))
    source: Mapped[str] = mapped_column(sa.String(128))
    correlation_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    accepted_at: Mapped[datetime] = mapped_column(sa.DateTime(), index=True)


class MessageRouteRow(Base):
    __tablename__ = "bus_message_routes"

    message_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    subscription: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    attempt: Mapped[int] = mapped_column(sa.Integer, default=0)
    error_kind: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    error_type: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    error_message: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(sa.DateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime())


class ProcessedRow(Base):
    __tablename__ = "bus_processed"

    subscription: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    message_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(sa.DateTime(), index=True)


class DeadLetterRow(Base):
    __tablename__ = "bus_dead_letters"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    message_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    subscription: Mapped[str] = mapped_column(sa.String(128), index=True)
    type: Mapped[str | None] = mapped_column(sa.String(128), nullable=True, index=True)
    source: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    correlation_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    envelope: Mapped[str | None] = mapped_column(sa.Text, nullable=True)  # original envelope JSON
    raw: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)  # unparseable body
    edited_payload: Mapped[str | None] = mapped_column(sa.Text, nullable=True)  # JSON, newest edit
    edits: Mapped[str | None] = mapped_column(sa.Text, nullable=True)  # JSON list of {by, at}
    error_kind: Mapped[str] = mapped_column(sa.String(32))
    error_type: Mapped[str] = mapped_column(sa.String(128), index=True)
    error_message: Mapped[str] = mapped_column(sa.Text)
    error_details: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    attempts: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    first_attempt_at: Mapped[datetime | None] = mapped_column(sa.DateTime(), nullable=True)
    dead_lettered_at: Mapped[datetime] = mapped_column(sa.DateTime(), index=True)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime())
    replay_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    replayed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(), nullable=True)
    replayed_by: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    discarded_at: Mapped[datetime | None] = mapped_column(sa.DateTime(), nullable=True)
    discarded_by: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    discard_reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


M = MessageRow.__table__
R = MessageRouteRow.__table__
P = ProcessedRow.__table__
D = DeadLetterRow.__table__


class _LRU:
    """A small thread-safe LRU set of (subscription, message_id) known to be processed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: tuple[str, str]) -> bool:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return True
            return False

    def add(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._d[key] = None
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


class BusStore:
    """Message state, dedup and dead letters over one SQL database (see module docstring)."""

    def __init__(self, url: str, *, flush_interval: float = 0.05, lru_size: int = 100_000, commit_timeout: float = 30.0) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.dialect = self.engine.dialect.name
        self.flush_interval = flush_interval
        self.commit_timeout = commit_timeout
        self._lru = _LRU(lru_size)
        self._cv = threading.Condition()
        self._accepted: dict[str, dict[str, Any]] = {}
        self._states: dict[tuple[str, str], dict[str, Any]] = {}
        self._marks: dict[tuple[str, str], datetime] = {}
        self._gen = 0  # generation being filled
        self._committed = -1  # newest generation committed
        self._failed: dict[int, BaseException] = {}
        self._urgent = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._flush_lock = threading.Lock()
        self._listeners: list[Any] = []
        self._fast_pool: list[Any] = []  # idle DBAPI connections for seen(); list.pop/append are atomic
        self._fast_disabled = False

    # ------------------------------------------------------------------ flusher
    def _ensure_flusher(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._cv:
                if self._thread is None or not self._thread.is_alive():
                    self._closed = False
                    self._thread = threading.Thread(target=self._run_flusher, name="bus-store-flusher", daemon=True)
                    self._thread.start()

    def _run_flusher(self) -> None:
        while True:
            with self._cv:
                if not self._urgent and not self._closed:
                    self._cv.wait(self.flush_interval)
                self._urgent = False
                closed = self._closed
            try:
                self._flush_once()
            except Exception as exc:  # noqa: BLE001 - logged, buffers kept, retried next tick
                log.error("bus_state_flush_failed", error_type=type(exc).__name__, error=str(exc)[:500])
                with self._cv:
                    self._cv.wait(0.5)
            if closed:
                return

    def _flush_once(self) -> None:
        with self._flush_lock:
            with self._cv:
                accepted, states, marks = self._accepted, self._states, self._marks
                gen = self._gen
                self._accepted, self._states, self._marks = {}, {}, {}
                self._gen += 1
            if accepted or states or marks:
                try:
                    with self.engine.begin() as conn:
                        self._write(conn, accepted.values(), states.values(), marks)
                except BaseException as exc:
                    with self._cv:  # put back what was not written, older than anything newer
                        for k, v in accepted.items():
                            self._accepted.setdefault(k, v)
                        for k, v in states.items():
                            cur = self._states.get(k)
                            if cur is None or cur["updated_at"] < v["updated_at"]:
                                self._states[k] = v
                        for k, v in marks.items():
                            self._marks.setdefault(k, v)
                        self._failed[gen] = exc
                        self._cv.notify_all()
                    raise
            with self._cv:
                self._committed = gen
                self._failed.pop(gen, None)
                self._cv.notify_all()
            for fn in list(self._listeners):
                try:
                    fn(gen)
                except Exception as exc:  # noqa: BLE001 - a listener must not stop the flusher
                    log.error("commit_listener_failed", error_type=type(exc).__name__, error=str(exc)[:300])

    def _insert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - MySQL/MariaDB are not a supported hub database yet
            raise NotImplementedError(f"BusStore supports SQLite and PostgreSQL, not {self.dialect}")
        return insert(table)

    def _write(
        self,
        conn: sa.Connection,
        accepted: Iterable[dict[str, Any]],
        states: Iterable[dict[str, Any]],
        marks: dict[tuple[str, str], datetime],
    ) -> None:
        acc = list(accepted)
        if acc:
            conn.execute(self._insert(M).on_conflict_do_nothing(index_elements=["id"]), acc)
        sts = list(states)
        if sts:
            ins = self._insert(R)
            cols = ("state", "attempt", "error_kind", "error_type", "error_message", "next_attempt_at", "updated_at")
            stmt = ins.on_conflict_do_update(
                index_elements=["message_id", "subscription"],
                set_={c: ins.excluded[c] for c in cols},
                where=ins.excluded.updated_at >= R.c.updated_at,
            )
            conn.execute(stmt, sts)
        if marks:
            rows = [{"subscription": s, "message_id": m, "processed_at": t} for (s, m), t in marks.items()]
            conn.execute(self._insert(P).on_conflict_do_nothing(index_elements=["subscription", "message_id"]), rows)

    def _write_now(self, states: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            self._write(conn, [], states, {})

    def flush(self) -> None:
        """Write everything buffered now (synchronously)."""
        self._flush_once()

    def close(self) -> None:
        """Stop the flusher after a last flush."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        t = self._thread
        if t is not None and t.is_alive():
            t.join(timeout=self.commit_timeout)
        self._thread = None
        self._flush_once()
        while self._fast_pool:
            with contextlib.suppress(Exception):
                self._fast_pool.pop().close()

    def add_commit_listener(self, fn: Any) -> None:
        """Call ``fn(generation)`` (on the flushing thread) after each committed flush."""
        self._listeners.append(fn)

    def remove_commit_listener(self, fn: Any) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    @property
    def committed_generation(self) -> int:
        """Every write buffered in a generation ≤ this one is committed."""
        return self._committed

    def wait_committed(self, gen: int) -> None:
        """Block until generation ``gen`` is committed (asks the flusher to flush now)."""
        self._ensure_flusher()
        self._wait_committed(gen)

    def _wait_committed(self, gen: int) -> None:
        deadline = time.monotonic() + self.commit_timeout
        with self._cv:
            self._urgent = True
            self._cv.notify_all()
            while self._committed < gen:
                if gen in self._failed:
                    raise self._failed[gen]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"bus store did not commit within {self.commit_timeout}s")
                self._cv.wait(min(left, 0.5))

    # ------------------------------------------------------------------ state
    @staticmethod
    def _accepted_row(env: Envelope) -> dict[str, Any]:
        return {
            "id": env.id,
            "type": env.type,
            "source": env.source,
            "correlation_id": env.correlation_id,
            "accepted_at": _naive(env.created_at) or _utcnow(),
        }

    def record_accepted(self, envs: list[Envelope]) -> None:
        """Remember messages as accepted (buffered; a no-op for ids already known)."""
        self._ensure_flusher()
        with self._cv:
            for env in envs:
                self._accepted.setdefault(env.id, self._accepted_row(env))

    def record_state(
        self,
        message_id: str,
        subscription: str,
        state: str,
        attempt: int = 0,
        error: ErrorInfo | None = None,
        *,
        envelope: Envelope | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """Buffer the state of one message for one subscription; ``envelope`` also records
        the message as accepted if nobody did (messages published by sources, derived ones)."""
        if state not in STATES:
            raise ValueError(f"unknown message state '{state}' (one of {', '.join(STATES)})")
        self._ensure_flusher()
        row = self._state_row(message_id, subscription, state, attempt, error, next_attempt_at)
        with self._cv:
            if envelope is not None:
                self._accepted.setdefault(envelope.id, self._accepted_row(envelope))
            self._states[(message_id, subscription)] = row

    @staticmethod
    def _state_row(
        message_id: str, subscription: str, state: str, attempt: int, error: ErrorInfo | None, next_at: datetime | None
    ) -> dict[str, Any]:
        return {
            "message_id": message_id,
            "subscription": subscription,
            "state": state,
            "attempt": attempt,
            "error_kind": error.kind if error else None,
            "error_type": error.type if error else None,
            "error_message": error.message if error else None,
            "next_attempt_at": _naive(next_at),
            "updated_at": _utcnow(),
        }

    def get_message(self, message_id: str) -> dict | None:
        """The message and its state per subscription, or None if the hub never saw it."""
        with self.engine.connect() as conn:
            m = conn.execute(sa.select(M).where(M.c.id == message_id)).mappings().first()
            routes = conn.execute(sa.select(R).where(R.c.message_id == message_id)).mappings().all()
        if m is None and not routes:
            return None
        out_routes: dict[str, Any] = {}
        for r in routes:
            err = None
            if r["error_type"]:
                err = {"kind": r["error_kind"], "type": r["error_type"], "message": r["error_message"]}
            out_routes[r["subscription"]] = {
                "state": r["state"],
                "attempt": r["attempt"],
                "error": err,
                "next_attempt_at": _iso(r["next_attempt_at"]),
                "updated_at": _iso(r["updated_at"]),
            }
        overall = _overall([r["state"] for r in routes])
        result: dict[str, Any] = {
            "id": message_id,
            "type": m["type"] if m else None,
            "source": m["source"] if m else None,
            "correlation_id": m["correlation_id"] if m else None,
            "accepted_at": _iso(m["accepted_at"]) if m else None,
            "state": overall,
            "routes": out_routes,
        }
        if overall == "dead_lettered":
            dead = [(n, r) for n, r in out_routes.items() if r["state"] == "dead_lettered"]
            result["reason"] = "; ".join(
                f"{n}: {r['error']['type']}: {r['error']['message']}" for n, r in dead if r["error"]
            )
        return result

    def counts(self) -> dict:
        """Messages by overall state; ``accepted`` is the total and equals the sum of the others
        (``queued``, accepted but not picked up yet, is a part of ``in_flight``)."""
        flags = {s: sa.func.max(sa.case((R.c.state == s, 1), else_=0)).label(s) for s in STATES}
        sub = (
            sa.select(M.c.id, sa.func.count(R.c.message_id).label("n"), *flags.values())
            .select_from(M.outerjoin(R, R.c.message_id == M.c.id))
            .group_by(M.c.id)
            .subquery()
        )
        overall = sa.case(
            (sub.c.n == 0, "queued"),
            (sub.c.in_flight == 1, "in_flight"),
            (sub.c.retrying == 1, "retrying"),
            (sub.c.dead_lettered == 1, "dead_lettered"),
            (sub.c.delivered == 1, "delivered"),
            else_="filtered",
        ).label("overall")
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(overall, sa.func.count()).select_from(sub).group_by(overall)).all()
        by = {k: int(v) for k, v in rows}
        out = {
            "accepted": sum(by.values()),
            "in_flight": by.get("in_flight", 0) + by.get("queued", 0),
            "delivered": by.get("delivered", 0),
            "retrying": by.get("retrying", 0),
            "dead_lettered": by.get("dead_lettered", 0),
            "filtered": by.get("filtered", 0),
            "queued": by.get("queued", 0),
        }
        return out

    # ------------------------------------------------------------------ dedup
    def seen(self, subscription: str, message_id: str) -> bool:
        """True if ``subscription`` already processed ``message_id`` (LRU, then the table)."""
        key = (subscription, message_id)
        if key in self._lru:
            return True
        with self._cv:
            if key in self._marks:
                return True
        hit = self._seen_fast(subscription, message_id)
        if hit is None:  # no fast path for this database: through the pool
            with self.engine.connect() as conn:
                hit = conn.execute(
                    sa.select(P.c.message_id).where(P.c.subscription == subscription, P.c.message_id == message_id)
                ).first() is not None
        if hit:
            self._lru.add(key)
            return True
        return False

    def _seen_fast(self, subscription: str, message_id: str) -> bool | None:
        """The dedup lookup on a pooled autocommit DBAPI connection: no SQLAlchemy pool
        checkout or transaction round trips (it runs for every delivery). None: no fast path."""
        if self._fast_disabled:
            return None
        try:
            conn = self._fast_pool.pop()
        except IndexError:
            conn = self._open_fast()
            if conn is None:
                self._fast_disabled = True
                return None
        try:
            if self.dialect == "sqlite":
                row = conn.execute(_SEEN_SQL_QMARK, (subscription, message_id)).fetchone()
            else:
                with conn.cursor() as cur:
                    cur.execute(_SEEN_SQL_FORMAT, (subscription, message_id), prepare=True)
                    row = cur.fetchone()
        except Exception:  # noqa: BLE001 - drop the connection; the next call opens another
            with contextlib.suppress(Exception):
                conn.close()
            raise
        self._fast_pool.append(conn)
        return row is not None

    def _open_fast(self) -> Any:
        url = self.engine.url
        if self.dialect == "sqlite" and url.database and url.database != ":memory:":
            import sqlite3

            c = sqlite3.connect(url.database, timeout=30, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA busy_timeout=30000")
            return c
        if self.dialect == "postgresql" and url.get_driver_name() == "psycopg":
            import psycopg

            dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
            c = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
            return c
        return None

    def mark_processed(self, subscription: str, message_id: str, *, wait: bool = True) -> int:
        """Remember that ``subscription`` processed ``message_id``. With ``wait`` (the default)
        return only once the mark is committed — call it before acking the delivery. With
        ``wait=False`` it returns the write generation at once: ack only when
        :attr:`committed_generation` reached it (the Worker does that, group-committing marks)."""
        self._ensure_flusher()
        key = (subscription, message_id)
        with self._cv:
            self._marks[key] = _utcnow()
            gen = self._gen
        self._lru.add(key)
        if wait:
            self._wait_committed(gen)
        return gen

    def purge_processed(self, older_than_seconds: int) -> int:
        """Forget processed ids older than the dedup window; returns how many."""
        cutoff = _utcnow() - timedelta(seconds=older_than_seconds)
        with self.engine.begin() as conn:
            n = conn.execute(sa.delete(P).where(P.c.processed_at < cutoff)).rowcount
        if n:
            self._lru.clear()
        return int(n or 0)

    def purge_messages(self, older_than_seconds: int, *, batch: int = 5000) -> int:
        """Forget finished messages (every route ``delivered`` or ``filtered``) accepted longer
        ago than ``older_than_seconds``, with their route rows; counts stay reconciled.
        Dead-lettered, retrying and in-flight messages are kept."""
        cutoff = _utcnow() - timedelta(seconds=older_than_seconds)
        unfinished = sa.select(R.c.message_id).where(
            R.c.message_id == M.c.id, R.c.state.notin_(("delivered", "filtered"))
        )
        any_route = sa.select(R.c.message_id).where(R.c.message_id == M.c.id)
        total = 0
        while True:
            with self.engine.begin() as conn:
                ids = conn.execute(
                    sa.select(M.c.id)
                    .where(M.c.accepted_at < cutoff, any_route.exists(), ~unfinished.exists())
                    .limit(batch)
                ).scalars().all()
                if not ids:
                    return total
                conn.execute(sa.delete(R).where(R.c.message_id.in_(ids)))
                conn.execute(sa.delete(M).where(M.c.id.in_(ids)))
            total += len(ids)

    # ------------------------------------------------------------------ dead letters
    def dead_letter(
        self,
        env: Envelope | None,
        subscription: str,
        error: ErrorInfo,
        attempts: int,
        *,
        raw: bytes | None = None,
        message_id: str | None = None,
    ) -> str:
        """Store a dead letter (and the message's dead_lettered state) durably; returns its id.
        ``env`` is None for a body that could not be parsed as an envelope (kept in ``raw``)."""
        now = _utcnow()
        dlq_id = new_id()
        mid = env.id if env is not None else (message_id or dlq_id)
        row = {
            "id": dlq_id,
            "message_id": mid,
            "subscription": subscription,
            "type": env.type if env else None,
            "source": env.source if env else None,
            "correlation_id": env.correlation_id if env else None,
            "envelope": env.to_bytes().decode() if env else None,
            "raw": raw if env is None else None,
            "edited_payload": None,
            "edits": None,
            "error_kind": error.kind,
            "error_type": error.type,
            "error_message": error.message,
            "error_details": orjson.dumps(error.details).decode() if error.details else None,
            "attempts": attempts,
            "status": "dead",
            "first_attempt_at": _naive(env.created_at) if env else None,
            "dead_lettered_at": now,
            "updated_at": now,
            "replay_count": 0,
        }
        state = self._state_row(mid, subscription, "dead_lettered", attempts, error, None)
        with self.engine.begin() as conn:
            conn.execute(sa.insert(D), [row])
            if env is not None:
                conn.execute(self._insert(M).on_conflict_do_nothing(index_elements=["id"]), [self._accepted_row(env)])
            self._write(conn, [], [state], {})
        with self._cv:  # a buffered older state for the same key must not be written after this
            cur = self._states.get((mid, subscription))
            if cur is not None and cur["updated_at"] <= state["updated_at"]:
                del self._states[(mid, subscription)]
        metrics.MESSAGES_DEAD_LETTERED.labels(subscription=subscription, error_type=error.type).inc()
        # the one place every dead-lettering passes: logged and counted here, never quiet
        log.error(
            "message_dead_lettered", dlq_id=dlq_id, message_id=mid, subscription=subscription, route=subscription,
            correlation_id=env.correlation_id if env else None, message_type=env.type if env else None,
            attempts=attempts, error_kind=error.kind, error_type=error.type, error=error.message[:500],
        )
        return dlq_id

    def _dlq_where(
        self,
        *,
        subscription: str | None = None,
        type: str | None = None,
        error_type: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        status: str | None = "dead",
        message_id: str | None = None,
    ) -> list[Any]:
        conds: list[Any] = []
        if subscription:
            conds.append(D.c.subscription == subscription)
        if type:
            conds.append(D.c.type == type)
        if error_type:
            conds.append(D.c.error_type == error_type)
        if since:
            conds.append(D.c.dead_lettered_at >= _naive(since))
        if until:
            conds.append(D.c.dead_lettered_at < _naive(until))
        if status and status != "all":
            if status not in DLQ_STATUSES:
                raise ValueError(f"unknown dead-letter status '{status}' (one of {', '.join(DLQ_STATUSES)}, all)")
            conds.append(D.c.status == status)
        if message_id:
            conds.append(D.c.message_id == message_id)
        return conds

    @staticmethod
    def _dlq_dict(r: Any, *, full: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": r["id"],
            "message_id": r["message_id"],
            "subscription": r["subscription"],
            "type": r["type"],
            "source": r["source"],
            "correlation_id": r["correlation_id"],
            "error": {"kind": r["error_kind"], "type": r["error_type"], "message": r["error_message"]},
            "attempts": r["attempts"],
            "status": r["status"],
            "edited": r["edited_payload"] is not None,
            "first_attempt_at": _iso(r["first_attempt_at"]),
            "dead_lettered_at": _iso(r["dead_lettered_at"]),
            "updated_at": _iso(r["updated_at"]),
            "replay_count": r["replay_count"],
            "replayed_at": _iso(r["replayed_at"]),
            "replayed_by": r["replayed_by"],
            "discarded_at": _iso(r["discarded_at"]),
            "discarded_by": r["discarded_by"],
            "discard_reason": r["discard_reason"],
        }
        if full:
            d["envelope"] = orjson.loads(r["envelope"]) if r["envelope"] else None
            d["raw"] = r["raw"].decode("utf-8", "replace") if r["raw"] is not None else None
            d["edited_payload"] = orjson.loads(r["edited_payload"]) if r["edited_payload"] is not None else None
            d["edits"] = orjson.loads(r["edits"]) if r["edits"] else []
            d["error"]["details"] = orjson.loads(r["error_details"]) if r["error_details"] else []
        return d

    def dlq_list(
        self,
        *,
        subscription: str | None = None,
        type: str | None = None,
        error_type: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        status: str | None = "dead",
        limit: int = 100,
        offset: int = 0,
        message_id: str | None = None,
    ) -> list[dict]:
        """Dead letters matching the filter, oldest first (no payloads; see :meth:`dlq_get`)."""
        conds = self._dlq_where(
            subscription=subscription, type=type, error_type=error_type, since=since, until=until,
            status=status, message_id=message_id,
        )
        q = sa.select(D).where(*conds).order_by(D.c.dead_lettered_at, D.c.id).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            return [self._dlq_dict(r) for r in conn.execute(q).mappings()]

    def dlq_count(self, **filter: Any) -> int:
        conds = self._dlq_where(**filter)
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(D).where(*conds)).scalar_one())

    def dlq_get(self, dlq_id: str) -> dict | None:
        """One dead letter with the original envelope, the edited payload and edit history."""
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(D).where(D.c.id == dlq_id)).mappings().first()
        return None if r is None else self._dlq_dict(r, full=True)

    def dlq_edit(self, dlq_id: str, payload: Any, *, editor: str) -> dict:
        """Set the payload a replay will use; the original envelope is kept unchanged."""
        now = _utcnow()
        with self.engine.begin() as conn:
            r = conn.execute(sa.select(D).where(D.c.id == dlq_id).with_for_update()).mappings().first()
            if r is None:
                raise KeyError(f"no dead letter '{dlq_id}'")
            if r["status"] != "dead":
                raise ValueError(f"dead letter '{dlq_id}' is {r['status']}; only 'dead' ones can be edited")
            if r["envelope"] is None:
                raise ValueError(f"dead letter '{dlq_id}' holds no parseable envelope to edit")
            edits = orjson.loads(r["edits"]) if r["edits"] else []
            edits.append({"by": editor, "at": _iso(now)})
            conn.execute(
                sa.update(D)
                .where(D.c.id == dlq_id)
                .values(edited_payload=orjson.dumps(payload).decode(), edits=orjson.dumps(edits).decode(), updated_at=now)
            )
        log.info("dead_letter_edited", dlq_id=dlq_id, message_id=r["message_id"], subscription=r["subscription"], by=editor)
        out = self.dlq_get(dlq_id)
        assert out is not None
        return out

    def dlq_replay(
        self,
        broker: Any,
        ids: list[str] | None = None,
        *,
        filter: dict | None = None,
        rate_per_s: float | None = None,
        by: str = "",
        batch: int = 100,
    ) -> int:
        """Republish dead letters (same id, attempt 0, edited payload if any) to their
        subscription's queue ``route.<subscription>``; returns how many. Either ``ids`` or a
        ``filter`` (the keyword arguments of :meth:`dlq_list`); ``rate_per_s`` paces the
        publishes for bulk replays. Each one is marked ``replayed`` right after its publish."""
        if ids is None and filter is None:
            raise ValueError("name the dead letters to replay: ids or a filter")
        start = time.monotonic()
        done = 0

        def rows() -> Iterable[Any]:
            if ids is not None:
                for i in range(0, len(ids), batch):
                    chunk = ids[i : i + batch]
                    with self.engine.connect() as conn:
                        found = conn.execute(sa.select(D).where(D.c.id.in_(chunk), D.c.status == "dead")).mappings().all()
                    order = {k: n for n, k in enumerate(chunk)}
                    yield from sorted(found, key=lambda r: order[r["id"]])
                return
            f = dict(filter or {})
            f.pop("limit", None)
            f.pop("offset", None)
            f["status"] = "dead"
            conds = self._dlq_where(**f)
            last: tuple[datetime, str] | None = None
            while True:  # keyset paging: replayed rows leave the 'dead' set as we go
                q = sa.select(D).where(*conds)
                if last is not None:
                    q = q.where(sa.tuple_(D.c.dead_lettered_at, D.c.id) > sa.tuple_(*last))
                with self.engine.connect() as conn:
                    page = conn.execute(q.order_by(D.c.dead_lettered_at, D.c.id).limit(batch)).mappings().all()
                if not page:
                    return
                yield from page
                last = (page[-1]["dead_lettered_at"], page[-1]["id"])

        for r in rows():
            if r["envelope"] is None:
                log.warning("dead_letter_not_replayable", dlq_id=r["id"], reason="no parseable envelope")
                continue
            env = Envelope.from_bytes(r["envelope"])
            changes: dict[str, Any] = {"attempt": 0}
            if r["edited_payload"] is not None:
                changes["payload"] = orjson.loads(r["edited_payload"])
            env = env.evolve(**changes)
            if rate_per_s:
                wait = start + done / rate_per_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            sub = r["subscription"]
            # state first: a consumer may take the message before the publish call returns
            self._write_now([self._state_row(env.id, sub, "in_flight", 0, None, None)])
            try:
                broker.publish(env, queue=f"route.{sub}")
            except BaseException:
                err = ErrorInfo(r["error_kind"], r["error_type"], r["error_message"])
                self._write_now([self._state_row(env.id, sub, "dead_lettered", r["attempts"], err, None)])
                raise
            now = _utcnow()
            with self.engine.begin() as conn:
                conn.execute(
                    sa.update(D)
                    .where(D.c.id == r["id"])
                    .values(status="replayed", replayed_at=now, replayed_by=by, updated_at=now, replay_count=D.c.replay_count + 1)
                )
            metrics.DEAD_LETTERS_REPLAYED.labels(subscription=sub).inc()
            log.info("dead_letter_replayed", dlq_id=r["id"], message_id=env.id, subscription=sub, by=by)
            done += 1
        return done

    def dlq_discard(self, ids: list[str], *, by: str, reason: str = "") -> int:
        """Mark dead letters as discarded (kept for audit, never replayed); returns how many."""
        now = _utcnow()
        n = 0
        with self.engine.begin() as conn:
            for i in range(0, len(ids), 500):
                res = conn.execute(
                    sa.update(D)
                    .where(D.c.id.in_(ids[i : i + 500]), D.c.status == "dead")
                    .values(status="discarded", discarded_at=now, discarded_by=by, discard_reason=reason, updated_at=now)
                )
                n += int(res.rowcount or 0)
        log.info("dead_letters_discarded", count=n, by=by, reason=reason)
        return n


def _overall(states: list[str]) -> str:
    if not states:
        return "accepted"
    for s in ("in_flight", "retrying", "dead_lettered", "delivered"):
        if s in states:
            return s
    return "filtered"

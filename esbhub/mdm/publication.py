"""The MDM's publication lock: ``party.golden.*`` events reach the bus in commit order.

Versions of a golden record are numbered in commit order (MDM writers are serialized by the
``writer`` row, :func:`esbhub.mdm.service._bump_writer`), but committing and publishing are
two steps. Two publishers — the API after a steward action and the worker after a batch, in
one process or in two, or two workers — could otherwise commit in one order and publish in
the other: version n+1 of a golden id on the bus before version n.

So every MDM writer that makes events holds this lock from before its transaction until its
events are on the bus (or, when the broker fails, kept in the outbox — see
:class:`esbhub.mdm.service.MdmService`): whoever commits next, in whatever process, publishes
after. One lock per database:

* **SQLite** — ``flock`` on a file next to the database (``<db>-mdm-publish.lock``): processes
  on one machine share an SQLite file anyway. Two syscalls per transaction, no SQL.
* **PostgreSQL** — a session advisory lock (``pg_advisory_lock``) on a connection this lock
  keeps for itself (a transaction-level one would end at the commit, before the publish).
  Two round trips per transaction. If that connection breaks, the server drops the lock with
  it; the next acquire connects afresh.
* an in-memory SQLite database (one process by nature) or another database — a lock shared by
  the threads of this process.

The lock is taken before the writer row (never the other way round), and its holder never
waits for anything else held by a thread waiting for it: no deadlock. Within a thread it is
reentrant. Threads of one process queue on the lock object first, so each process holds at
most one file lock / advisory lock wait at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa
import structlog

log = structlog.get_logger("esbhub.mdm.publication")

ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"esbhub.mdm.publication").digest()[:8], "big", signed=True)
"""The PostgreSQL advisory lock key (advisory locks are per database: one MDM per database)."""

_local_locks: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


class _Local:
    """Threads of this process only (an in-memory database has no other process)."""

    def __init__(self, url: str) -> None:
        with _local_guard:
            self.lock = _local_locks.setdefault(url, threading.Lock())

    def acquire(self, blocking: bool) -> bool:
        return self.lock.acquire(blocking)

    def release(self) -> None:
        self.lock.release()


class _File:
    """``flock`` on a file next to the SQLite database: held by this open file, so two lock
    objects exclude each other even in one process (as two processes would)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, blocking: bool) -> bool:
        import fcntl

        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            weakref.finalize(self, os.close, self.fd)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        import fcntl

        assert self.fd is not None
        fcntl.flock(self.fd, fcntl.LOCK_UN)


class _Advisory:
    """A PostgreSQL session advisory lock on a DBAPI connection of its own, taken out of the pool
    (autocommit: it never sits idle in a transaction; the driver's cursor directly: half the
    time of two SQLAlchemy statements)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None
        self.cur: Any = None

    def _cursor(self) -> Any:
        from esbhub.db import engine_for

        if self.cur is None:
            pooled = engine_for(self.url).raw_connection()
            conn: Any = pooled.driver_connection
            conn.autocommit = True
            pooled.detach()  # never back into the pool (autocommit, maybe a lock): closed when dropped
            self.conn, self.cur = conn, conn.cursor()
            weakref.finalize(self, conn.close)
        return self.cur

    def _drop(self) -> None:
        conn, self.conn, self.cur = self.conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection: nothing left to release
                conn.close()  # the server ends the session, and any advisory lock with it

    def _call(self, fn: str) -> Any:
        cur = self._cursor()
        cur.execute(f"SELECT {fn}({ADVISORY_KEY})")
        return cur.fetchone()[0]

    def acquire(self, blocking: bool) -> bool:
        fn = "pg_advisory_lock" if blocking else "pg_try_advisory_lock"
        try:
            got = self._call(fn)
        except Exception:  # noqa: BLE001 - e.g. the database restarted since: the lock died with the session
            self._drop()
            got = self._call(fn)  # once more on a new connection; its failure is the caller's
        return got is not False  # pg_advisory_lock returns void (None)

    def release(self) -> None:
        try:
            self._call("pg_advisory_unlock")
        except Exception as exc:  # noqa: BLE001 - ending the session releases it as well
            log.warning("mdm_publication_unlock_failed", error_type=type(exc).__name__, error=str(exc)[:300])
            self._drop()


def _outer(url: str) -> _Local | _File | _Advisory:
    u = sa.engine.make_url(url)
    if u.get_backend_name() == "postgresql":
        return _Advisory(url)
    if u.get_backend_name() == "sqlite":
        db = u.database or ""
        if db and db != ":memory:" and "mode=memory" not in url:
            try:
                import fcntl  # noqa: F401 - POSIX only
            except ImportError:  # pragma: no cover - no flock here: this process's threads only
                log.warning("mdm_publication_lock_process_local", reason="no fcntl on this platform")
                return _Local(url)
            db_path = Path(db).resolve()
            return _File(db_path.with_name(db_path.name + "-mdm-publish.lock"))
    return _Local(url)


class PublicationLock:
    """The lock described in the module doc, for the MDM database at ``url``; a context manager."""

    def __init__(self, url: str) -> None:
        self._mutex = threading.RLock()  # the threads of this process, first
        self._depth = 0
        self._outer = _outer(url)

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (wait for it, or with ``blocking=False`` only if it is free: then whether
        it was taken)."""
        if not self._mutex.acquire(blocking):
            return False
        if self._depth == 0:
            try:
                got = self._outer.acquire(blocking)
            except BaseException:
                self._mutex.release()
                raise
            if not got:
                self._mutex.release()
                return False
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        try:
            if self._depth == 0:
                self._outer.release()
        finally:
            self._mutex.release()

    def __enter__(self) -> PublicationLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"PublicationLock({type(self._outer).__name__[1:].lower()})"

"""WAL checkpoints of SQLite stores off the committing thread.

SQLite in WAL mode appends every commit to the ``-wal`` file; by default, the connection whose
commit takes the WAL past 1000 pages copies it back into the database file and syncs it (a
*checkpoint*) inside that commit. For the MDM store a micro-batch appends megabytes, so every
few batches one batch paid for copying and syncing tens of megabytes — measured on a 168k-record
store: without those checkpoints in the commit, the real-time path ran ×1.7 faster, and the
single-record path had its p99 set by whichever record drew the checkpoint.

Here the hub's connections checkpoint themselves only past :data:`HARD_LIMIT_PAGES`
(``wal_autocheckpoint``, set in :func:`esbhub.db.make_engine`) and one daemon thread per process
runs a ``PASSIVE`` checkpoint every :data:`INTERVAL` seconds of each registered database that had
commits since, on a connection it opens for that checkpoint only. A passive
checkpoint never blocks writers or readers (it copies what no reader still needs), and the
sqlite3 module releases the GIL while it runs, so the copying and syncing overlap with the
next transaction instead of sitting in a commit. Durability is unchanged: a commit is durable
once it is in the WAL (``synchronous=NORMAL`` as before), whoever copies it later.

The WAL still cannot grow without bound: SQLite reuses the WAL from its start once a
checkpoint has copied all of it and no reader needs it; if the thread cannot keep up (or is
not running, e.g. in a process forked without it), a connection whose commit finds the WAL
past :data:`HARD_LIMIT_PAGES` checkpoints itself, as SQLite would by default.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import structlog

log = structlog.get_logger("esbhub.db")

INTERVAL = 0.25
"""Seconds between two passive checkpoints of a database."""

HARD_LIMIT_PAGES = 65_536
"""``wal_autocheckpoint`` of the hub's connections: a committing connection checkpoints itself only
when the WAL has grown past this many pages (256 MiB of 4 KiB pages) — the background thread
normally keeps it far below."""


RESTART_PAGES = 16_384
"""A WAL this long (64 MiB of 4 KiB pages) is started over once it has been copied."""


class Checkpointer:
    """One daemon thread per process checkpointing the registered SQLite files that had commits.

    It holds no connection between rounds: each checkpoint opens one and closes it, so when the
    hub closes its own connections the last one to close still folds the WAL into the database
    file (SQLite does that on the last close), and idle or finished databases cost nothing.
    """

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._dirty: dict[str, bool] = {}  # registered files → committed to since the last full checkpoint
        self._open: dict[str, int] = {}  # registered files → the hub's connections open to it in this process
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.runs = 0  # checkpoints that copied frames (for tests and the dashboard)
        self.restarts = 0

    def register(self, path: str) -> None:
        """The hub opened a connection to ``path``: checkpoint it while one is open (starts the
        thread in this process)."""
        path = str(Path(path).resolve())
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: threads do not survive a fork
                self._thread = None
                self._pid = os.getpid()
                self._open.clear()
            self._dirty.setdefault(path, True)
            self._open[path] = self._open.get(path, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
                self._thread.start()

    def unregister(self, path: str) -> None:
        """The hub closed a connection to ``path``. Once none is open, the file is left alone: the
        last close folded its WAL in, and a checkpoint now would re-create ``-wal``/``-shm`` files
        beside a database that may be being deleted."""
        with self._lock:
            self._open[path] = max(0, self._open.get(path, 0) - 1)

    def committed(self, path: str) -> None:
        """A transaction committed to ``path``: its WAL has frames to copy."""
        self._dirty[path] = True

    def checkpoint(self, path: str, mode: str = "PASSIVE") -> tuple[int, int, int] | None:
        """One checkpoint of ``path`` now, on a connection of its own: SQLite's (busy, wal frames,
        frames copied); None for a database that no longer exists (it is forgotten)."""
        with self._lock:  # connected under the lock: the hub's last close waits for it, or goes first
            if not self._open.get(path) or not Path(path).exists():  # closed, or deleted (temporary stores)
                self._dirty.pop(path, None)
                self._open.pop(path, None)
                return None
            conn = sqlite3.connect(path, timeout=1, check_same_thread=False, isolation_level=None)
        try:
            row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            res = (int(row[0]), int(row[1]), int(row[2])) if row else None
            if res and res[1] >= RESTART_PAGES and res[1] == res[2] and mode == "PASSIVE":
                # all copied, yet the writer keeps appending: without a gap between its
                # transactions the WAL never starts over. RESTART waits (≤ 1 s) for the running
                # transaction, then makes the next one write from the WAL's start; it only has
                # the frames of that one transaction left to copy.
                again = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                if again and int(again[0]) == 0:
                    self.restarts += 1
            return res
        finally:
            conn.close()

    def _run(self) -> None:
        me = threading.current_thread()
        while self._thread is me:
            time.sleep(self.interval)
            for path, dirty in list(self._dirty.items()):
                if not dirty:
                    continue
                self._dirty[path] = False  # a commit from now on sets it again
                try:
                    res = self.checkpoint(path)
                except sqlite3.Error as exc:  # e.g. the file went away under us; retried next round
                    log.debug("sqlite checkpoint failed", path=path, error=str(exc))
                    self._dirty[path] = True
                    continue
                if res and res[2] > 0:
                    self.runs += 1
                if res and (res[0] or res[2] < res[1]):
                    self._dirty[path] = True  # not all of it copied (readers still on old frames): again


checkpointer = Checkpointer()

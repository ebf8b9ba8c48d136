"""The scaffolding of the worker kill -9 tests: an idempotent sink database, the worker config,
worker processes (the test file run as a script), and the kill-mid-run-then-restart sequence.
The worker side (``worker_parts``, ``run_worker``) is imported as a top-level module by the
script, so this module imports nothing relative at its top."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def count(db: str, sql: str) -> int:
    c = sqlite3.connect(db, timeout=30)
    try:
        return c.execute(sql).fetchone()[0]
    finally:
        c.close()


def prepare(tmp_path: Path, broker_url: str, unique: str, side_column: str) -> tuple[Path, str, dict[str, Any]]:
    """Sink tables (``sink``: one row per id; ``side_effects``: one row per handler run) and the
    worker's config file; returns (config path, sink path, broker kwargs)."""
    from esbhub.db import upgrade

    broker_kw = {"unrouted_queue": f"{unique}.unrouted"} if broker_url.startswith("amqp") else {}
    store_url = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(store_url)
    sink_db = str(tmp_path / "sink.db")
    c = sqlite3.connect(sink_db)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE sink (id TEXT PRIMARY KEY)")
    c.execute(f"CREATE TABLE side_effects (n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, {side_column} INTEGER)")
    c.commit()
    c.close()
    cfg = tmp_path / "worker.json"
    cfg.write_text(json.dumps({
        "broker_url": broker_url, "exchange": unique, "broker_kw": broker_kw, "store_url": store_url,
        "sink": sink_db, "subscription": unique, "data_dir": str(tmp_path / "var"),
    }))
    return cfg, sink_db, broker_kw


@contextmanager
def workers(script: str, cfg: Path, tmp_path: Path) -> Iterator[Any]:
    """``spawn(n)`` starts worker process n (``python SCRIPT worker CFG``); all are killed on exit."""
    procs: list[subprocess.Popen] = []

    def spawn(n: int) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, script, "worker", str(cfg)],
                             stderr=open(tmp_path / f"worker{n}.log", "wb"), cwd=os.getcwd())
        procs.append(p)
        return p

    try:
        yield spawn
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def kill_mid_run_then_restart(spawn: Any, sink_db: str, broker: Any, queue: str, total: int, kill_at: int
                              ) -> tuple[set[str], tuple[int, int]]:
    """kill -9 the first worker once ``kill_at`` ids are in the sink, start a second one, let it
    finish and stop it cleanly; returns (ids in the sink, (handler runs, distinct ids run))."""
    from waiting import wait_for

    first = spawn(1)
    wait_for(lambda: count(sink_db, "SELECT count(*) FROM sink") >= kill_at, timeout=60, what="first worker mid-run")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    at_kill = count(sink_db, "SELECT count(*) FROM sink")
    assert 0 < at_kill < total, "the kill must land in the middle of the run"
    second = spawn(2)
    wait_for(lambda: count(sink_db, "SELECT count(*) FROM sink") == total, timeout=90,
               what="all messages in the sink after restart")
    wait_for(lambda: broker.queue_depth(queue) == 0, timeout=30, what="queue drained")
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    s = sqlite3.connect(sink_db)
    ids = {r[0] for r in s.execute("SELECT id FROM sink")}
    runs = s.execute("SELECT count(*), count(DISTINCT id) FROM side_effects").fetchone()
    s.close()
    return ids, (runs[0], runs[1])


def worker_parts(cfg_path: str) -> tuple[dict[str, Any], Any, Any, Any]:
    """In a worker process: (config, broker, bus store, ``sink()`` — this thread's sink connection)."""
    import threading

    from esbhub.bus.broker import create_broker
    from esbhub.bus.store import BusStore
    from esbhub.logging import configure

    cfg = json.loads(Path(cfg_path).read_text())
    configure("warning")
    broker = create_broker(cfg["broker_url"], exchange=cfg["exchange"], **cfg["broker_kw"])
    store = BusStore(cfg["store_url"])
    local = threading.local()

    def sink() -> sqlite3.Connection:
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = sqlite3.connect(cfg["sink"], isolation_level=None, timeout=30)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
        return c

    return cfg, broker, store, sink


def run_worker(cfg: dict[str, Any], broker: Any, store: Any, sub: Any) -> None:
    from esbhub.bus.worker import Worker
    from esbhub.config import Settings

    Worker(broker, store, [sub], Settings(data_dir=cfg["data_dir"])).run_forever()
    broker.close()
    store.close()

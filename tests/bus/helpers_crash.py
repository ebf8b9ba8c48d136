"""Child processes for the kill -9 tests (run as scripts, never imported by pytest).

    python helpers_crash.py consume BROKER_URL QUEUE SINK_DB
        consume QUEUE forever; each message goes into an idempotent sink
        (INSERT OR IGNORE keyed by envelope id, committed before the ack) and every
        processing is logged with its redelivered flag.
    python helpers_crash.py publish BROKER_URL LOG_FILE THREADS
        publish single messages from THREADS threads forever; after each publish
        returns, its id is appended to LOG_FILE (one line, O_APPEND).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading

from esbhub.bus.embedded import EmbeddedBroker
from esbhub.bus.envelope import Envelope


def consume(url: str, queue: str, sink_path: str) -> None:
    sink = sqlite3.connect(sink_path, isolation_level=None, timeout=30)
    if sink.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # the test made it WAL (new_sink)
        sink.execute("PRAGMA journal_mode=WAL")
    sink.execute("PRAGMA synchronous=NORMAL")  # durable against kill -9, which is what is tested
    sink.execute("CREATE TABLE IF NOT EXISTS sink (id TEXT PRIMARY KEY)")
    sink.execute("CREATE TABLE IF NOT EXISTS processed (id TEXT, redelivered INTEGER, pid INTEGER)")
    broker = EmbeddedBroker(url)
    broker.connect()
    pid = os.getpid()

    def handle(d):  # type: ignore[no-untyped-def]
        sink.execute("BEGIN")
        sink.execute("INSERT OR IGNORE INTO sink (id) VALUES (?)", (d.envelope.id,))
        sink.execute("INSERT INTO processed VALUES (?, ?, ?)", (d.envelope.id, int(d.redelivered), pid))
        sink.execute("COMMIT")
        d.ack()  # only after the sink committed

    broker.consume(queue, handle, prefetch=64, stop=threading.Event())


def publish(url: str, log_path: str, threads: int) -> None:
    broker = EmbeddedBroker(url)
    broker.connect()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def run(k: int) -> None:
        i = 0
        while True:
            e = Envelope.create("party.v1", {"k": k, "i": i}, source="crash-test")
            broker.publish(e)
            os.write(fd, (e.id + "\n").encode())  # written only once publish returned
            i += 1

    ts = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


if __name__ == "__main__":
    if sys.argv[1] == "consume":
        consume(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "publish":
        publish(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]}")

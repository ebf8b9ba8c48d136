"""THE kill test: ``kill -9`` a worker in the middle of 10,000 messages and restart it —
every message reaches an idempotent sink exactly once (ids compared), none is lost; on both
backends. 1,000 of the messages are also published a second time (an upstream re-send), and
a side-effect counter shows the dedup store kept those copies from running the handler.

The worker is this file run as a script (``python test_worker_kill.py worker …``): a real
:class:`Worker` whose handler writes, in one SQLite transaction, a row into ``sink`` (keyed
by message id, ``INSERT OR IGNORE``) and a row into ``side_effects`` (one per handler run).
"""

from __future__ import annotations

import os
import sys

import pytest

CONCURRENCY = 4
TOTAL = 10_000
RESENT = 1_000
ACK_BATCH = 32  # the default for prefetch 64


def worker_main(cfg_path: str) -> None:  # runs as a script: tests/bus is on sys.path
    from kill_harness import run_worker, worker_parts

    from esbhub.bus.worker import Subscription

    cfg, broker, store, sink = worker_parts(cfg_path)

    def handler(env, ctx):
        c = sink()
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT OR IGNORE INTO sink (id) VALUES (?)", (env.id,))
        c.execute("INSERT INTO side_effects (id, pid) VALUES (?, ?)", (env.id, os.getpid()))
        c.execute("COMMIT")

    sub = Subscription(cfg["subscription"], ["party.v1"], handler, concurrency=CONCURRENCY, prefetch=64)
    run_worker(cfg, broker, store, sub)


def test_kill_9_worker_mid_run_every_message_reaches_sink_exactly_once(broker_url, unique, tmp_path):
    from esbhub.bus.broker import create_broker
    from esbhub.bus.envelope import Envelope

    from .kill_harness import kill_mid_run_then_restart, prepare, workers

    cfg, sink_db, broker_kw = prepare(tmp_path, broker_url, unique, "pid")
    broker = create_broker(broker_url, exchange=unique, **broker_kw)
    broker.connect()
    queue = f"route.{unique}"
    broker.declare_queue(queue, ["party.v1"])
    try:
        with workers(__file__, cfg, tmp_path) as spawn:
            envs = [Envelope.create("party.v1", {"n": i}, source="kill-test") for i in range(TOTAL)]
            for i in range(0, TOTAL, 500):
                broker.publish_many(envs[i:i + 500])
            broker.publish_many(envs[:RESENT])  # upstream re-sent these: same ids
            ids, runs = kill_mid_run_then_restart(spawn, sink_db, broker, queue, TOTAL, kill_at=3000)
        assert ids == {e.id for e in envs}  # none lost, none extra
        # 11,000 deliveries, yet the handler ran about once per id: only a message whose handler
        # had finished while its group-committed dedup mark was not yet committed at the kill
        # runs twice — at most ack_batch + 1 per consumer thread (see esbhub.bus.worker)
        assert runs[1] == TOTAL
        assert TOTAL <= runs[0] <= TOTAL + CONCURRENCY * (ACK_BATCH + 1) < TOTAL + RESENT
    finally:
        broker.close()
        if broker_kw:
            cl = create_broker(broker_url, exchange=unique, **broker_kw)
            for q in (queue, f"{unique}.unrouted"):
                cl.delete_queue(q)
            cl._control(lambda ch: (ch.exchange_delete(unique), ch.exchange_delete(f"{unique}.unrouted")), what="cleanup")
            cl.close()


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    worker_main(sys.argv[2])
elif __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])

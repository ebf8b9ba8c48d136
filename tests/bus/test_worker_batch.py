"""Micro-batched handlers (``Subscription(batch_handler=…, batch_max=N)``) on both real broker
backends (``broker_url``): batches form from what is waiting, a poison message is isolated,
counts reconcile, a stop or a ``kill -9`` in the middle of a batch loses nothing."""

from __future__ import annotations

import sys
import threading

import pytest

from esbhub.bus.envelope import Envelope
from esbhub.bus.worker import Subscription, Worker, queue_for
from esbhub.config import RetryPolicy
from esbhub.errors import InvalidMessage, PermanentError, TransientError

if __package__:  # not when this file runs as the kill test's worker process
    from waiting import wait_for

BATCH_MAX = 16
FAST = RetryPolicy(max_attempts=3, initial_delay=0.05, multiplier=2.0, jitter=0.0)


def _envs(n: int, **extra) -> list[Envelope]:
    return [Envelope.create("party.v1", {"n": i, **extra}, source="batch-test") for i in range(n)]


def _backlog(broker, store, unique: str, envs: list[Envelope]) -> None:
    """Queue ``envs`` (accepted) before the worker starts."""
    store.record_accepted(envs)
    broker.declare_queue(queue_for(unique), ["party.v1"])
    broker.publish_many(envs)


def _settled(store):
    store.flush()
    c = store.counts()
    assert c["accepted"] == c["delivered"] + c["retrying"] + c["dead_lettered"] + c["in_flight"] + c["filtered"]
    return c["in_flight"] == 0 and c["retrying"] == 0 and c


def _first_call_waits_for_backlog(worker: Worker, name: str, total: int):
    """Hold the first batch until the next full batch (or all the rest of ``total``) is queued
    behind it, so the next batch is certainly full (the test does not depend on thread timing)."""
    first = [True]

    def hold(items) -> None:
        if first[0]:
            first[0] = False
            rt = worker._subs[name]
            want = min(BATCH_MAX, total - len(items))
            wait_for(lambda: sum(len(f) for f in rt.feeds) >= want, timeout=30, what="backlog queued")

    return hold


def test_backlog_is_taken_in_batches_up_to_batch_max_and_each_message_is_delivered_once(
    broker, store, settings, unique
):
    sizes: list[int] = []
    seen: list[str] = []
    holder: dict = {}

    def batch(items):
        holder["hold"](items)
        sizes.append(len(items))
        seen.extend(env.id for env, _ctx in items)

    def one(env, ctx):
        raise AssertionError("the per-message handler runs only when a batch fails")

    sub = Subscription(unique, ["party.v1"], one, batch_handler=batch, batch_max=BATCH_MAX)
    w = Worker(broker, store, [sub], settings)
    holder["hold"] = _first_call_waits_for_backlog(w, unique, 100)
    envs = _envs(100)
    _backlog(broker, store, unique, envs)
    broker.publish_many(envs[:5])  # re-sent upstream: same ids, skipped by dedup
    w.start()
    try:
        c = wait_for(lambda: _settled(store) if len(seen) >= 100 else False, timeout=30, what="all delivered")
        wait_for(lambda: broker.queue_depth(queue_for(unique)) == 0, timeout=30, what="duplicates acked")
        assert sorted(seen) == sorted(e.id for e in envs)  # each once, duplicates never reached the handler
        assert max(sizes) == BATCH_MAX and sizes[1] == BATCH_MAX
        assert (c["accepted"], c["delivered"], c["dead_lettered"]) == (100, 100, 0)
    finally:
        w.stop(10)


def test_poison_message_in_a_failing_batch_is_dead_lettered_alone_and_its_neighbours_are_delivered(
    broker, store, settings, unique
):
    batches: list[list[int]] = []
    delivered: list[int] = []
    holder: dict = {}

    def batch(items):
        holder["hold"](items)
        batches.append([env.payload["n"] for env, _ in items])
        if any(env.payload.get("poison") for env, _ in items):
            raise RuntimeError("batch insert failed on one row")
        delivered.extend(env.payload["n"] for env, _ in items)

    def one(env, ctx):
        if env.payload.get("poison"):
            raise PermanentError("account 17 does not exist")
        delivered.append(env.payload["n"])

    sub = Subscription(unique, ["party.v1"], one, batch_handler=batch, batch_max=BATCH_MAX, retry=FAST)
    w = Worker(broker, store, [sub], settings)
    holder["hold"] = _first_call_waits_for_backlog(w, unique, 60)
    envs = [Envelope.create("party.v1", {"n": i, "poison": i == 17}, source="batch-test") for i in range(60)]
    _backlog(broker, store, unique, envs)
    w.start()
    try:
        c = wait_for(lambda: _settled(store) if store.dlq_count(subscription=unique) else False, timeout=30,
                       what="settled with one dead letter")
        [dl] = store.dlq_list(subscription=unique)
        assert dl["message_id"] == envs[17].id and dl["error"]["message"] == "account 17 does not exist"
        assert [b for b in batches if 17 in b][0] != [17]  # it came in a batch with others
        assert sorted(delivered) == [i for i in range(60) if i != 17]
        assert (c["accepted"], c["delivered"], c["dead_lettered"]) == (60, 59, 1)
    finally:
        w.stop(10)


def test_ctx_fail_retries_or_dead_letters_one_message_and_publishes_only_its_neighbours_outputs(
    broker, store, settings, unique
):
    out_q = f"{unique}.out"
    broker.declare_queue(out_q)
    calls = {"batch": 0, "one": 0}
    flaky_failed: set[str] = set()

    def batch(items):
        calls["batch"] += 1
        for env, ctx in items:
            kind = env.payload["kind"]
            ctx.publish(env.derive("party.out.v1", {"n": env.payload["n"]}), queue=out_q)
            if kind == "bad":
                ctx.fail(InvalidMessage("name missing"))
            elif kind == "flaky" and env.id not in flaky_failed:
                flaky_failed.add(env.id)
                ctx.fail(TransientError("billing API answered 503"))

    def one(env, ctx):
        calls["one"] += 1

    sub = Subscription(unique, ["party.v1"], one, batch_handler=batch, batch_max=BATCH_MAX, retry=FAST)
    w = Worker(broker, store, [sub], settings)
    kinds = ["ok"] * 10 + ["bad"] + ["flaky"] * 2 + ["ok"] * 5
    envs = [Envelope.create("party.v1", {"kind": k, "n": i}, source="batch-test") for i, k in enumerate(kinds)]
    _backlog(broker, store, unique, envs)
    w.start()
    try:
        c = wait_for(lambda: _settled(store) if store.dlq_count(subscription=unique) else False, timeout=30,
                       what="settled")
        assert (c["accepted"], c["delivered"], c["dead_lettered"]) == (18, 17, 1)
        [dl] = store.dlq_list(subscription=unique)
        assert dl["message_id"] == envs[10].id and "name missing" in dl["error"]["message"]
        assert all(store.get_message(envs[i].id)["routes"][unique]["attempt"] == 2 for i in (11, 12))
        outs = []
        while (d := broker.get(out_q, timeout=0.5)) is not None:
            outs.append(d.envelope.payload["n"])
            d.ack()
        assert sorted(outs) == [i for i in range(18) if i != 10]  # the flaky ones once: after their retry
        assert calls["one"] == 0
    finally:
        w.stop(10)
        broker.delete_queue(out_q)


def test_derived_messages_of_a_batch_are_published_in_the_order_the_batch_handler_published_them(
    broker, store, settings, unique
):
    out_q = f"{unique}.out"
    broker.declare_queue(out_q)
    holder: dict = {}
    batches: list[list[int]] = []

    def batch(items):
        holder["hold"](items)
        batches.append([env.payload["n"] for env, _ in items])
        for env, ctx in reversed(items):  # publish order differs from delivery order
            ctx.publish(env.derive("party.out.v1", {"n": env.payload["n"]}), queue=out_q)

    sub = Subscription(unique, ["party.v1"], lambda e, c: None, batch_handler=batch, batch_max=BATCH_MAX)
    w = Worker(broker, store, [sub], settings)
    holder["hold"] = _first_call_waits_for_backlog(w, unique, 1 + BATCH_MAX)
    envs = _envs(1 + BATCH_MAX)
    broker.declare_queue(queue_for(unique), ["party.v1"])
    broker.publish_many(envs)
    w.start()
    try:
        outs = []
        while len(outs) < len(envs):
            d = broker.get(out_q, timeout=10)
            assert d is not None, "derived messages missing"
            outs.append(d.envelope.payload["n"])
            d.ack()
        assert len(batches) == 2 and outs == [n for b in batches for n in reversed(b)]
    finally:
        w.stop(10)
        broker.delete_queue(out_q)


def _depth_seen_by_a_fresh_client(broker_url: str, unique: str) -> int:
    """Queue depth from a new broker object: RabbitMQ's count of ready and delayed messages, not
    this process's bookkeeping of unacked deliveries (which a stopped consumer can leave behind)."""
    from esbhub.bus.broker import create_broker

    kw = {"unrouted_queue": f"{unique}.unrouted"} if broker_url.startswith("amqp") else {}
    b = create_broker(broker_url, exchange=unique, **kw)
    b.connect()
    try:
        return b.queue_depth(queue_for(unique))
    finally:
        b.close()


def test_stop_in_the_middle_of_a_batch_finishes_it_and_hands_the_rest_back_then_a_restart_delivers_them(
    broker, broker_url, store, settings, unique
):
    entered, release = threading.Event(), threading.Event()
    handled: list[str] = []

    def batch(items):
        if not entered.is_set():
            entered.set()
            assert release.wait(30)
        handled.extend(env.id for env, _ in items)

    sub = Subscription(unique, ["party.v1"], lambda e, c: None, batch_handler=batch, batch_max=BATCH_MAX)
    envs = _envs(80)
    _backlog(broker, store, unique, envs)
    w = Worker(broker, store, [sub], settings)
    w.start()
    assert entered.wait(30)
    stopper = threading.Thread(target=w.stop, args=(30,))
    stopper.start()
    wait_for(lambda: w._subs[unique].stop.is_set(), what="stop begun")
    release.set()
    stopper.join(30)
    assert not stopper.is_alive()
    first_run = list(handled)
    assert 0 < len(first_run) < 80
    store.flush()
    assert all(store.get_message(i)["state"] == "delivered" for i in first_run)
    w2 = Worker(broker, store, [sub], settings)
    w2.start()
    try:
        c = wait_for(lambda: _settled(store) if len(handled) >= 80 else False, timeout=30, what="rest delivered")
    finally:
        w2.stop(10)
    assert sorted(handled) == sorted(e.id for e in envs)  # nothing lost, the finished batch not run again
    assert c["delivered"] == 80
    assert _depth_seen_by_a_fresh_client(broker_url, unique) == 0


def test_replace_swaps_the_batch_handler_and_pause_resume_keeps_every_message(broker, store, settings, unique):
    got: dict[str, list[int]] = {"old": [], "new": []}

    def handler_for(tag: str):
        def batch(items):
            got[tag].extend(env.payload["n"] for env, _ in items)
        return batch

    sub = Subscription(unique, ["party.v1"], lambda e, c: None, batch_handler=handler_for("old"), batch_max=BATCH_MAX)
    w = Worker(broker, store, [sub], settings)
    w.start()
    try:
        broker.publish_many(_envs(10))
        wait_for(lambda: len(got["old"]) == 10, timeout=30, what="old handler ran")
        w.replace(Subscription(unique, ["party.v1"], lambda e, c: None, batch_handler=handler_for("new"),
                               batch_max=BATCH_MAX))
        w.pause(unique)
        broker.publish_many([Envelope.create("party.v1", {"n": 100 + i}, source="batch-test") for i in range(10)])
        w.resume(unique)
        wait_for(lambda: len(got["new"]) == 10, timeout=30, what="new handler ran")
        assert sorted(got["new"]) == list(range(100, 110)) and len(got["old"]) == 10
    finally:
        w.stop(10)


# ------------------------------------------------------------------------------ kill -9
TOTAL = 3000
CONCURRENCY = 2


def worker_main(cfg_path: str) -> None:  # runs as a script: tests/bus is on sys.path
    from kill_harness import run_worker, worker_parts

    cfg, broker, store, sink = worker_parts(cfg_path)

    def write(envs: list[Envelope]) -> None:  # one transaction per batch, idempotent by message id
        c = sink()
        c.execute("BEGIN IMMEDIATE")
        c.executemany("INSERT OR IGNORE INTO sink (id) VALUES (?)", [(e.id,) for e in envs])
        c.executemany("INSERT INTO side_effects (id, redelivered) VALUES (?, ?)",
                      [(e.id, 0) for e in envs])
        c.execute("COMMIT")

    sub = Subscription(cfg["subscription"], ["party.v1"], lambda env, ctx: write([env]),
                       batch_handler=lambda items: write([e for e, _ in items]), batch_max=BATCH_MAX,
                       concurrency=CONCURRENCY)
    run_worker(cfg, broker, store, sub)


def test_kill_9_in_the_middle_of_batches_redelivers_and_every_message_reaches_the_sink_once(
    broker, broker_url, unique, tmp_path
):
    from .kill_harness import kill_mid_run_then_restart, prepare, workers

    cfg, sink_db, _kw = prepare(tmp_path, broker_url, unique, "redelivered")
    queue = queue_for(unique)
    broker.declare_queue(queue, ["party.v1"])
    with workers(__file__, cfg, tmp_path) as spawn:
        envs = _envs(TOTAL)
        for i in range(0, TOTAL, 500):
            broker.publish_many(envs[i:i + 500])
        ids, runs = kill_mid_run_then_restart(spawn, sink_db, broker, queue, TOTAL, kill_at=TOTAL // 4)
    assert ids == {e.id for e in envs}  # none lost, none extra
    # a batch whose sink write committed while its dedup marks were not yet committed at the
    # kill runs again: at most one batch per consumer thread
    assert runs[1] == TOTAL
    assert TOTAL <= runs[0] <= TOTAL + CONCURRENCY * BATCH_MAX


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    worker_main(sys.argv[2])
elif __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])

"""Worker semantics over the in-memory broker double (fast); the same paths run over the
real backends in test_worker_backends.py and test_worker_kill.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from waiting import wait_for

from esbhub.bus.envelope import Envelope
from esbhub.bus.store import BusStore
from esbhub.bus.worker import HandlerContext, Subscription, Worker, queue_for
from esbhub.config import RetryPolicy
from esbhub.db import upgrade
from esbhub.errors import CircuitOpen, PermanentError, TransientError
from esbhub.monitoring import metrics

from .memory_broker import MemoryBroker

FAST = RetryPolicy(max_attempts=3, initial_delay=0.05, multiplier=2.0, jitter=0.0)


@pytest.fixture
def store(tmp_path: Path) -> BusStore:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(url)
    s = BusStore(url, flush_interval=0.02)
    yield s
    s.close()


@pytest.fixture
def broker() -> MemoryBroker:
    b = MemoryBroker()
    b.connect()
    return b


@pytest.fixture
def run_worker(broker, store, settings):
    workers: list[Worker] = []

    def start(*subs: Subscription) -> Worker:
        w = Worker(broker, store, list(subs), settings)
        w.start()
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop(5)


def party(n: int = 0, **kw) -> Envelope:
    return Envelope.create("party.v1", {"n": n, **kw}, source="test")


def test_poison_message_is_retried_with_backoff_then_dead_lettered_and_delivered_after_edit_and_replay(
    broker, store, run_worker, unique
):
    seen_attempts: list[int] = []
    delivered: list[dict] = []

    def handler(env: Envelope, ctx: HandlerContext) -> None:
        seen_attempts.append(env.attempt)
        if env.payload.get("poison"):
            raise TransientError("billing API answered 503")
        delivered.append(env.payload)

    run_worker(Subscription(unique, ["party.v1"], handler, retry=FAST))
    env = party(1, poison=True)
    broker.publish(env)

    # backoff is visible in state while waiting for the next attempt
    def retrying():
        store.flush()
        m = store.get_message(env.id)
        return m and m["routes"].get(unique, {}).get("state") == "retrying" and m
    m = wait_for(retrying, what="retrying state")
    assert m["routes"][unique]["next_attempt_at"] is not None
    assert m["routes"][unique]["error"]["type"] == "TransientError"

    wait_for(lambda: store.dlq_list(subscription=unique), what="dead letter")
    assert seen_attempts == [0, 1, 2]
    [dl] = store.dlq_list(subscription=unique)
    assert dl["attempts"] == 3 and dl["error"]["type"] == "TransientError"
    assert "503" in dl["error"]["message"]
    m = store.get_message(env.id)
    assert m["state"] == "dead_lettered" and "billing API answered 503" in m["reason"]

    edited = store.dlq_edit(dl["id"], {"n": 1, "poison": False}, editor="ops")
    assert edited["envelope"]["payload"] == {"n": 1, "poison": True}  # original kept
    assert edited["edited_payload"] == {"n": 1, "poison": False}
    assert edited["edits"][0]["by"] == "ops"

    assert store.dlq_replay(broker, [dl["id"]], by="ops") == 1
    wait_for(lambda: delivered, what="replayed delivery")
    assert delivered == [{"n": 1, "poison": False}]
    store.flush()
    wait_for(lambda: store.flush() or store.get_message(env.id)["state"] == "delivered", what="delivered state")
    assert store.dlq_get(dl["id"])["status"] == "replayed"
    assert store.dlq_list(subscription=unique) == []


def test_permanent_error_is_dead_lettered_at_once_logged_and_counted(broker, store, run_worker, unique):
    from structlog.testing import capture_logs

    def handler(env, ctx):
        raise PermanentError("customer id unknown in CRM")

    before = metrics.sample("hub_messages_dead_lettered_total", {"subscription": unique, "error_type": "PermanentError"})
    with capture_logs() as logs:
        run_worker(Subscription(unique, ["party.v1"], handler, retry=FAST))
        env = party(2, name="PAYLOAD-MARKER-4711")
        broker.publish(env)
        wait_for(lambda: store.dlq_list(subscription=unique), what="dead letter")
    [dl] = store.dlq_list(subscription=unique)
    assert dl["attempts"] == 1 and dl["error"]["kind"] == "permanent"
    after = metrics.sample("hub_messages_dead_lettered_total", {"subscription": unique, "error_type": "PermanentError"})
    assert after == before + 1
    dead = [e for e in logs if e["event"] == "message_dead_lettered"]
    assert dead and dead[0]["message_id"] == env.id and dead[0]["subscription"] == unique
    assert dead[0]["correlation_id"] == env.correlation_id and dead[0]["route"] == unique
    assert dead[0]["error_type"] == "PermanentError" and dead[0]["attempts"] == 1
    assert "PAYLOAD-MARKER-4711" not in repr(logs)  # payloads are never logged


def test_redelivered_message_does_not_repeat_side_effect(broker, store, run_worker, unique):
    side_effects: list[str] = []

    def handler(env, ctx):
        side_effects.append(env.id)

    run_worker(Subscription(unique, ["party.v1"], handler))
    env = party(3)
    broker.publish(env)
    wait_for(lambda: side_effects, what="first delivery")
    # the same envelope arrives again (upstream re-sent it, or a redelivery after a crash)
    broker.publish(env)
    broker.publish(env)
    wait_for(lambda: broker.queue_depth(queue_for(unique)) == 0, what="queue drained")
    assert metrics.sample("hub_messages_duplicate_total", {"subscription": unique}) == 2
    assert side_effects == [env.id]


def test_dedup_survives_a_new_store_instance(broker, store, settings, unique):
    """The mark is committed before the ack: a fresh process (new LRU) still skips it."""
    calls: list[str] = []
    w = Worker(broker, store, [Subscription(unique, ["party.v1"], lambda e, c: calls.append(e.id))], settings)
    w.start()
    env = party(4)
    broker.publish(env)
    wait_for(lambda: broker.queue_depth(queue_for(unique)) == 0 and calls, what="processed")
    w.stop(5)
    fresh = BusStore(store.url)
    assert fresh.seen(unique, env.id)
    w2 = Worker(broker, fresh, [Subscription(unique, ["party.v1"], lambda e, c: calls.append(e.id))], settings)
    w2.start()
    try:
        broker.publish(env)
        wait_for(lambda: broker.queue_depth(queue_for(unique)) == 0, what="drained")
        assert calls == [env.id]
    finally:
        w2.stop(5)
        fresh.close()


def test_handler_exception_does_not_kill_the_consumer(broker, store, run_worker, unique):
    ok: list[int] = []

    def handler(env, ctx):
        if env.payload["n"] % 2:
            raise ValueError("odd")  # an unmapped bug: transient, retried, then dead-lettered
        ok.append(env.payload["n"])

    run_worker(Subscription(unique, ["party.v1"], handler, retry=RetryPolicy(max_attempts=1)))
    broker.publish_many([party(i) for i in range(10)])
    wait_for(lambda: len(ok) == 5 and store.dlq_count(subscription=unique) == 5, what="all handled")
    assert sorted(ok) == [0, 2, 4, 6, 8]


def test_derived_messages_are_published_before_the_ack_with_stable_ids(broker, store, run_worker, unique):
    broker.declare_queue(unique + ".out", ["bill.v1"])
    fail_once = {"armed": True}

    def handler(env, ctx):
        for i in range(2):
            ctx.publish(env.derive("bill.v1", {"part": i}))
        if fail_once["armed"]:
            fail_once["armed"] = False
            raise TransientError("sink flapped")  # derived ones must not leak from a failed run

    run_worker(Subscription(unique, ["party.v1"], handler, retry=FAST))
    env = party(5)
    broker.publish(env)
    wait_for(lambda: broker.queue_depth(unique + ".out") == 2, what="derived messages")
    wait_for(lambda: broker.queue_depth(queue_for(unique)) == 0, what="input acked")
    outs = [broker.get(unique + ".out", 1) for _ in range(2)]
    envs = [d.envelope for d in outs]
    assert all(e.causation_id == env.id and e.correlation_id == env.correlation_id for e in envs)
    from esbhub.bus.worker import stable_id

    assert [e.id for e in envs] == [stable_id(env.id, unique, "0"), stable_id(env.id, unique, "1")]


def test_replace_lets_in_flight_message_finish_on_old_handler_next_uses_new(broker, store, run_worker, unique):
    release = threading.Event()
    entered = threading.Event()
    ran: list[tuple[str, int]] = []

    def old(env, ctx):
        entered.set()
        release.wait(10)
        ran.append(("old", env.payload["n"]))

    def new(env, ctx):
        ran.append(("new", env.payload["n"]))

    w = run_worker(Subscription(unique, ["party.v1"], old))
    broker.publish(party(1))
    assert entered.wait(5)
    broker.publish(party(2))
    w.replace(Subscription(unique, ["party.v1"], new))
    release.set()
    wait_for(lambda: len(ran) == 2 and broker.queue_depth(queue_for(unique)) == 0, what="both handled")
    assert ran == [("old", 1), ("new", 2)]


def test_pause_and_resume_lose_nothing(broker, store, run_worker, unique):
    got: list[int] = []
    w = run_worker(Subscription(unique, ["party.v1"], lambda e, c: got.append(e.payload["n"]), prefetch=5))
    broker.publish_many([party(i) for i in range(10)])
    wait_for(lambda: len(got) == 10, what="first batch")
    w.pause(unique)
    assert w.subscriptions()[unique]["paused"] and w.subscriptions()[unique]["consumers"] == 0
    broker.publish_many([party(i) for i in range(10, 30)])
    assert broker.queue_depth(queue_for(unique)) == 20 and len(got) == 10
    w.resume(unique)
    wait_for(lambda: len(got) == 30, what="after resume")
    assert sorted(got) == list(range(30))


def test_circuit_open_requeues_without_using_an_attempt(broker, store, run_worker, unique):
    calls: list[int] = []

    def handler(env, ctx):
        calls.append(env.attempt)
        if len(calls) == 1:
            raise CircuitOpen("crm sink resting", retry_after=0.1)

    run_worker(Subscription(unique, ["party.v1"], handler, retry=RetryPolicy(max_attempts=1)))
    env = party(6)
    broker.publish(env)
    wait_for(lambda: len(calls) == 2 and broker.queue_depth(queue_for(unique)) == 0, what="second call")
    assert calls == [0, 0]
    assert store.dlq_list(subscription=unique) == []


def test_counts_reconcile_after_a_mixed_run(broker, store, run_worker, unique):
    def handler(env, ctx):
        kind = env.payload["kind"]
        if kind == "bad":
            raise PermanentError("bad")
        if kind == "skip":
            ctx.filtered()

    run_worker(Subscription(unique, ["party.v1"], handler, retry=FAST))
    base = store.counts()
    kinds = ["ok"] * 12 + ["bad"] * 3 + ["skip"] * 4
    envs = [party(i, kind=k) for i, k in enumerate(kinds)]
    store.record_accepted(envs)
    stuck = party(99, kind="ok")  # accepted, routed nowhere yet
    store.record_accepted([stuck])
    broker.publish_many(envs)
    wait_for(lambda: broker.queue_depth(queue_for(unique)) == 0, what="drained")
    store.flush()
    c = store.counts()
    d = {k: c[k] - base.get(k, 0) for k in c}
    assert d["accepted"] == 20
    assert (d["delivered"], d["dead_lettered"], d["filtered"], d["in_flight"], d["retrying"]) == (12, 3, 4, 1, 0)
    assert c["accepted"] == c["delivered"] + c["retrying"] + c["dead_lettered"] + c["in_flight"] + c["filtered"]
    assert store.get_message(stuck.id)["state"] == "accepted"


def test_replay_by_filter_and_bulk_with_rate_limit_and_discard(broker, store, run_worker, unique):
    import time

    fail = {"on": True}
    done: list[str] = []

    def handler(env, ctx):
        if fail["on"]:
            raise PermanentError("down" if env.payload["n"] < 6 else "other")
        done.append(env.id)

    w = run_worker(Subscription(unique, ["party.v1"], handler, retry=FAST))
    envs = [party(i) for i in range(10)]
    broker.publish_many(envs)
    wait_for(lambda: store.dlq_count(subscription=unique) == 10, what="10 dead letters")
    w.pause(unique)
    fail["on"] = False
    assert store.dlq_count(subscription=unique, error_type="PermanentError") == 10

    # discard two of them
    two = [d["id"] for d in store.dlq_list(subscription=unique, limit=2)]
    assert store.dlq_discard(two, by="ops", reason="duplicates from the old CRM") == 2
    assert store.dlq_get(two[0])["status"] == "discarded"

    # replay by filter (only the 'other' reason ones are not matched by a type filter => use since/until)
    later = store.dlq_list(subscription=unique, offset=6, limit=10)  # the last 2 remaining
    n = store.dlq_replay(broker, filter={"subscription": unique, "since": later[0]["dead_lettered_at"]}, by="ops")
    assert n == 2

    # bulk with a rate limit: the remaining 6 at 40/s take at least 5/40 s
    t0 = time.monotonic()
    n = store.dlq_replay(broker, filter={"subscription": unique}, rate_per_s=40, by="ops")
    elapsed = time.monotonic() - t0
    assert n == 6 and elapsed >= 5 / 40
    assert store.dlq_replay(broker, two, by="ops") == 0  # discarded ones never replay
    w.resume(unique)
    wait_for(lambda: len(done) == 8, what="replayed deliveries")
    assert set(done) == {e.id for e in envs} - {store.dlq_get(i)["message_id"] for i in two}


@pytest.mark.parametrize("ack_batch", [1, None])
def test_every_ack_follows_its_committed_dedup_mark(broker, store, run_worker, unique, ack_batch):
    acked_before_commit: list[str] = []
    calls: list[str] = []
    fresh_store = BusStore(store.url)  # its own LRU: sees only what is committed
    orig = broker._delivery

    def spy(name, q, m, owner):
        d = orig(name, q, m, owner)

        def ack(d=d, inner=d._ack):
            if not fresh_store.seen(unique, d.envelope.id):
                acked_before_commit.append(d.envelope.id)
            inner()

        d._ack = ack
        return d

    broker._delivery = spy
    run_worker(Subscription(unique, ["party.v1"], lambda e, c: calls.append(e.id), ack_batch=ack_batch))
    broker.publish_many([party(i) for i in range(40)])
    wait_for(lambda: len(calls) == 40 and broker.queue_depth(queue_for(unique)) == 0, what="all acked")
    fresh_store.close()
    assert acked_before_commit == []


def test_replace_with_new_prefetch_restarts_consumers_without_loss_or_repeat(broker, store, run_worker, unique):
    got: list[int] = []
    w = run_worker(Subscription(unique, ["party.v1"], lambda e, c: got.append(e.payload["n"]), prefetch=4))
    broker.publish_many([party(i) for i in range(50)])
    wait_for(lambda: len(got) >= 5, what="some handled")
    w.replace(Subscription(unique, ["party.v1"], lambda e, c: got.append(e.payload["n"]), prefetch=16, concurrency=2))
    broker.publish_many([party(i) for i in range(50, 100)])
    wait_for(lambda: len(got) >= 100 and broker.queue_depth(queue_for(unique)) == 0, what="all handled")
    assert sorted(got) == list(range(100))
    assert w.subscriptions()[unique]["consumers"] == 2


def test_a_failing_dedup_lookup_backs_off_and_hands_the_message_back(broker, store, run_worker, unique, monkeypatch):
    calls: list[str] = []
    broken = {"on": True}
    real_seen = store.seen

    def seen(sub, mid):
        if broken["on"]:
            broken["on"] = False
            raise OSError("database is unreachable")
        return real_seen(sub, mid)

    monkeypatch.setattr(store, "seen", seen)
    run_worker(Subscription(unique, ["party.v1"], lambda e, c: calls.append(e.id)))
    env = party(7)
    broker.publish(env)
    wait_for(lambda: calls == [env.id] and broker.queue_depth(queue_for(unique)) == 0, what="delivered after backoff")


def test_removed_subscription_acks_what_it_handled_and_leaves_the_rest_queued(broker, store, run_worker, unique):
    got: list[int] = []
    w = run_worker(Subscription(unique, ["party.v1"], lambda e, c: got.append(e.payload["n"]), prefetch=8))
    broker.publish_many([party(i) for i in range(5)])
    wait_for(lambda: len(got) == 5, what="handled")
    w.remove(unique)
    assert unique not in w.subscriptions()
    assert broker.queue_depth(queue_for(unique)) == 0  # handled ones acked, not handed back
    broker.publish_many([party(i) for i in range(5, 8)])
    assert broker.queue_depth(queue_for(unique)) == 3 and len(got) == 5


def test_a_message_waiting_for_its_retry_does_not_block_the_consumer(broker, store, run_worker, unique):
    ran: list[tuple[int, int]] = []

    def handler(env, ctx):
        ran.append((env.payload["n"], env.attempt))
        if env.payload["n"] == 0:
            raise TransientError("peer down")

    slow = RetryPolicy(max_attempts=3, initial_delay=60, jitter=0.0)
    run_worker(Subscription(unique, ["party.v1"], handler, retry=slow, concurrency=1))
    poison = party(0)
    broker.publish(poison)
    broker.publish_many([party(i) for i in range(1, 6)])
    wait_for(lambda: len(ran) == 6, what="the others handled")
    assert ran[0] == (0, 0) and sorted(ran[1:]) == [(i, 0) for i in range(1, 6)]
    store.flush()
    r = store.get_message(poison.id)["routes"][unique]
    assert r["state"] == "retrying" and r["attempt"] == 1
    from datetime import datetime

    wait_s = (datetime.fromisoformat(r["next_attempt_at"]) - datetime.fromisoformat(r["updated_at"])).total_seconds()
    assert 59 <= wait_s <= 61  # the backoff is in the state, not in a sleeping consumer

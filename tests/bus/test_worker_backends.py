"""The worker's reliability paths over both real broker backends (``broker_url``)."""

from __future__ import annotations

from waiting import wait_for

from esbhub.bus.envelope import Envelope
from esbhub.bus.worker import Subscription, Worker, queue_for
from esbhub.config import RetryPolicy
from esbhub.errors import PermanentError, TransientError


def test_poison_message_retried_n_times_dead_lettered_then_delivered_after_edit_and_replay(broker, store, settings, unique):
    attempts: list[int] = []
    delivered: list[dict] = []

    def handler(env: Envelope, ctx):
        attempts.append(env.attempt)
        if env.payload.get("amount", 0) < 0:
            raise TransientError("bank gateway refused a negative amount")
        delivered.append(env.payload)

    policy = RetryPolicy(max_attempts=3, initial_delay=0.1, multiplier=2.0, jitter=0.1)
    w = Worker(broker, store, [Subscription(unique, ["payment.v1"], handler, retry=policy)], settings)
    w.start()
    try:
        e = Envelope.create("payment.v1", {"amount": -5}, source="bank")
        store.record_accepted([e])
        broker.publish(e)
        [dl] = wait_for(lambda: store.dlq_list(subscription=unique), timeout=30, what="dead letter")
        assert attempts == [0, 1, 2] and dl["attempts"] == 3
        assert dl["error"]["message"] == "bank gateway refused a negative amount"
        assert store.get_message(e.id)["state"] == "dead_lettered"
        store.dlq_edit(dl["id"], {"amount": 5}, editor="ops")
        assert store.dlq_replay(broker, [dl["id"]], by="ops") == 1
        wait_for(lambda: delivered == [{"amount": 5}], timeout=30, what="delivered after replay")
        wait_for(lambda: store.flush() or store.get_message(e.id)["state"] == "delivered", what="state delivered")
        c = store.counts()
        assert c["accepted"] == 1 and c["delivered"] == 1
    finally:
        w.stop(10)


def test_redelivery_of_a_processed_message_repeats_no_side_effect(broker, store, settings, unique):
    calls: list[str] = []
    w = Worker(broker, store, [Subscription(unique, ["party.v1"], lambda e, c: calls.append(e.id))], settings)
    w.start()
    try:
        e = Envelope.create("party.v1", {"n": 1}, source="crm")
        for _ in range(3):
            broker.publish(e)
        wait_for(lambda: calls and broker.queue_depth(queue_for(unique)) == 0, timeout=30, what="drained")
        assert calls == [e.id]
    finally:
        w.stop(10)


def test_counts_reconcile_after_a_mixed_run_with_retries(broker, store, settings, unique):
    flaky_seen: set[str] = set()

    def handler(env: Envelope, ctx):
        kind = env.payload["kind"]
        if kind == "bad":
            raise PermanentError("unknown account")
        if kind == "flaky" and env.id not in flaky_seen:
            flaky_seen.add(env.id)
            raise TransientError("timeout")
        if kind == "skip":
            ctx.filtered()

    policy = RetryPolicy(max_attempts=3, initial_delay=0.1, jitter=0.0)
    w = Worker(broker, store, [Subscription(unique, ["party.v1"], handler, retry=policy, concurrency=2)], settings)
    w.start()
    try:
        kinds = ["ok"] * 20 + ["bad"] * 3 + ["flaky"] * 5 + ["skip"] * 2
        envs = [Envelope.create("party.v1", {"kind": k, "n": i}, source="crm") for i, k in enumerate(kinds)]
        store.record_accepted(envs)
        broker.publish_many(envs)

        def settled():
            store.flush()
            c = store.counts()
            assert c["accepted"] == c["delivered"] + c["retrying"] + c["dead_lettered"] + c["in_flight"] + c["filtered"]
            return c["in_flight"] == 0 and c["retrying"] == 0 and c

        c = wait_for(settled, timeout=30, what="all settled")
        assert (c["accepted"], c["delivered"], c["dead_lettered"], c["filtered"]) == (30, 25, 3, 2)
        assert all(store.get_message(e.id)["routes"][unique]["attempt"] == 2 for e in envs if e.payload["kind"] == "flaky")
    finally:
        w.stop(10)

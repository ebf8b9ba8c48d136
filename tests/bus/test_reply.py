"""Request-reply through a real Worker on both backends: reply, timeout, late reply counted."""

from __future__ import annotations

import threading

import pytest
from waiting import wait_for

from esbhub.bus.envelope import Envelope
from esbhub.bus.reply import RequestReply
from esbhub.bus.worker import ERROR_REPLY_TYPE, Subscription, Worker
from esbhub.config import RetryPolicy
from esbhub.errors import PermanentError
from esbhub.monitoring import metrics


def test_request_gets_reply_timeout_raises_and_late_reply_is_discarded_and_counted(broker, store, settings, unique):
    gate = threading.Event()

    def handler(env: Envelope, ctx):
        if env.payload.get("slow"):
            gate.wait(20)
        if env.payload.get("fail"):
            raise PermanentError("no such account")
        return env.derive("party.v1", {"balance": env.payload["n"] * 10})

    w = Worker(broker, store, [Subscription(unique, ["party.v1"], handler, retry=RetryPolicy(max_attempts=1),
                                            concurrency=2)], settings)
    w.start()
    rr = RequestReply(broker, reply_queue=f"{unique}.reply")
    rr.start()
    try:
        req = Envelope.create("party.v1", {"n": 7}, source="api")
        reply = rr.request(req, timeout=20)
        assert reply.payload == {"balance": 70}
        assert reply.causation_id == req.id and reply.correlation_id == req.correlation_id

        # a dead-lettered request answers with an error reply instead of a timeout
        bad = Envelope.create("party.v1", {"n": 1, "fail": True}, source="api")
        err = rr.request(bad, timeout=20)
        assert err.type == ERROR_REPLY_TYPE and err.payload["error"]["message"] == "no such account"

        before = metrics.sample("hub_late_replies_total")
        slow = Envelope.create("party.v1", {"n": 2, "slow": True}, source="api")
        with pytest.raises(TimeoutError):
            rr.request(slow, timeout=0.3)
        assert rr.pending == 0
        gate.set()  # the reply now arrives for a request nobody waits for
        wait_for(lambda: metrics.sample("hub_late_replies_total") == before + 1, timeout=20, what="late reply counted")

        # the reply consumer is still serving
        assert rr.request(Envelope.create("party.v1", {"n": 3}, source="api"), timeout=20).payload == {"balance": 30}
    finally:
        rr.stop()
        w.stop(10)

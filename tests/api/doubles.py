"""Small stand-ins for the broker, the bus store and request-reply, for API tests that
need to force a failure (broker down) or see exactly what was published."""

from __future__ import annotations

import threading
import time
from typing import Any

from esbhub.bus.envelope import Envelope
from esbhub.errors import BrokerUnavailable

PAYMENT = {
    "payment_id": "TX-1001",
    "bank": "ICBC",
    "payer_name": "中国移动通信集团广东有限公司",
    "amount": "1234.50",
    "paid_at": "2026-11-25T10:00:00Z",
}


class FakeBroker:
    url = "fake://"
    exchange = "esbhub"

    def __init__(self, *, down: bool = False) -> None:
        self.down = down
        self.published: list[Envelope] = []
        self.lock = threading.Lock()

    def connect(self) -> None:
        pass

    def close(self) -> None:
        pass

    def publish_many(self, envelopes: Any, **kw: Any) -> None:
        if self.down:
            raise BrokerUnavailable("fake broker is down")
        with self.lock:
            self.published.extend(envelopes)

    def publish(self, env: Envelope, **kw: Any) -> None:
        self.publish_many([env], **kw)

    def queue_depth(self, queue: str) -> int:
        return len(self.published)

    def health(self) -> dict[str, Any]:
        return {"ok": not self.down, "backend": "fake", "error": "down" if self.down else None}


class FakeStore:
    def __init__(self) -> None:
        self.accepted: dict[str, Envelope] = {}

    def record_accepted(self, envs: list[Envelope]) -> None:
        for e in envs:
            self.accepted[e.id] = e

    def get_message(self, message_id: str) -> dict[str, Any] | None:
        e = self.accepted.get(message_id)
        if e is None:
            return None
        return {"id": e.id, "type": e.type, "source": e.source, "state": "accepted", "routes": {}}

    def flush(self) -> None:
        pass


class FakeRequester:
    """Replies by calling ``responder(env)`` (None → times out); publishes like the real one."""

    def __init__(self, broker: FakeBroker, responder: Any) -> None:
        self.broker = broker
        self.responder = responder

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def request(self, env: Envelope, timeout: float) -> Envelope:
        self.broker.publish(env)
        reply = self.responder(env)
        if reply is None:
            time.sleep(min(timeout, 0.05))
            raise TimeoutError(env.id)
        return reply

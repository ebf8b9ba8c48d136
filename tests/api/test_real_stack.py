"""The API over the real embedded broker, bus store and worker: what a 202 means, message
state, sync request-reply, 503 when RabbitMQ is unreachable, and the DLQ endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from waiting import wait_for

from esbhub.api.app import create_app
from esbhub.auth.store import ApiKeyStore
from esbhub.bus.envelope import Envelope
from esbhub.bus.worker import Subscription, Worker
from esbhub.config import Settings
from esbhub.db import upgrade
from esbhub.errors import ErrorInfo, PermanentError

from .doubles import PAYMENT


@pytest.fixture
def real(tmp_path: Path) -> Iterator[tuple[TestClient, dict, Settings]]:
    settings = Settings(data_dir=tmp_path / "var", max_body_bytes=4096, publish_timeout=2)
    upgrade(settings.effective_database_url)
    _kid, admin = ApiKeyStore(settings.effective_database_url).create("admin", scopes=["admin"])
    app = create_app(settings)
    with TestClient(app) as client:
        hub = app.state.hub
        hub.broker.connect()
        yield client, {"Authorization": f"Bearer {admin}"}, settings


def test_202_means_stored_in_the_broker_and_state_is_readable(real, unique):
    client, auth, _s = real
    hub = client.app.state.hub
    hub.broker.declare_queue(f"route.{unique}", ["payment.v1"])
    r = client.post("/v1/messages/payment.v1", json=PAYMENT, headers=auth)
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    assert hub.broker.queue_depth(f"route.{unique}") == 1
    d = hub.broker.get(f"route.{unique}", timeout=2)
    assert d.envelope.id == mid and d.envelope.payload["payment_id"] == "TX-1001"
    d.ack()
    state = client.get(f"/v1/messages/{mid}", headers=auth).json()
    assert state["id"] == mid and state["state"] == "accepted" and state["source"] == "admin"


def test_bad_input_publishes_nothing_to_the_real_broker(real, unique):
    client, auth, _s = real
    hub = client.app.state.hub
    hub.broker.declare_queue(f"route.{unique}", ["#"])
    h = {**auth, "Content-Type": "application/json"}
    bad = [
        client.post("/v1/messages/payment.v1", content=b"{", headers=h),
        client.post("/v1/messages/payment.v1", content=b'{"a":"\xff"}', headers=h),
        client.post("/v1/messages/paymentv1", json=PAYMENT, headers=auth),
        client.post("/v1/messages/payment.v1", json={**PAYMENT, "amount": "abc"}, headers=auth),
        client.post("/v1/messages/payment.v1", content=b"x" * 5000, headers=h),
        client.post("/v1/messages/payment.v1", content=b"{}", headers={**auth, "Content-Type": "text/csv"}),
    ]
    assert [r.status_code for r in bad] == [400, 400, 404, 422, 413, 415]
    assert hub.broker.queue_depth(f"route.{unique}") == 0
    assert hub.broker.queue_depth("esbhub.unrouted") == 0


def test_sync_mode_gets_the_reply_from_a_real_worker_and_504_when_none(real, unique):
    client, auth, settings = real
    hub = client.app.state.hub

    def handler(env, ctx):
        if env.payload["payment_id"] == "TX-SILENT":
            return None
        return env.derive("payment.ack.v1", {"accepted": env.payload["payment_id"]})

    sub = Subscription(name=unique, binding_keys=["payment.v1"], handler=handler)
    worker = Worker(hub.broker, hub.store, [sub], settings)
    worker.start()
    try:
        r = client.post("/v1/messages/payment.v1", json=PAYMENT, params={"mode": "sync", "timeout": "10"}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["reply"]["payload"] == {"accepted": "TX-1001"}
        r = client.post("/v1/messages/payment.v1", json={**PAYMENT, "payment_id": "TX-SILENT"},
                        headers={**auth, "Prefer": "wait=0.5"})
        assert r.status_code == 504 and r.json()["error"]["id"]
        mid = r.json()["error"]["id"]
        wait_for(lambda: client.get(f"/v1/messages/{mid}", headers=auth).json()["state"] == "delivered",
                 what="the unanswered message to be delivered")
    finally:
        worker.stop()


def test_unreachable_rabbitmq_answers_503_with_retry_after(tmp_path):
    settings = Settings(data_dir=tmp_path / "var", broker_url="amqp://guest@127.0.0.1:1//", publish_timeout=1)
    upgrade(settings.effective_database_url)
    _kid, admin = ApiKeyStore(settings.effective_database_url).create("admin", scopes=["admin"])
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/messages/payment.v1", json=PAYMENT, headers={"X-API-Key": admin})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "broker_unavailable" and int(r.headers["retry-after"]) > 0
        mid_count = client.app.state.hub.store.counts()["accepted"]
        assert mid_count == 0


def _dead_letter(hub, sub: str, payment_id: str) -> str:
    env = Envelope.create("payment.v1", {**PAYMENT, "payment_id": payment_id}, source="bank")
    hub.store.record_accepted([env])
    return hub.store.dead_letter(env, sub, ErrorInfo.from_exception(PermanentError("bank code unknown")), attempts=3)


def test_dlq_list_show_edit_replay_discard(real, unique):
    client, auth, _s = real
    hub = client.app.state.hub
    hub.broker.declare_queue(f"route.{unique}", [])
    a, b, c = (_dead_letter(hub, unique, f"TX-{i}") for i in range(3))

    items = client.get("/v1/dlq", params={"subscription": unique}, headers=auth).json()["items"]
    assert {i["id"] for i in items} == {a, b, c}
    assert items[0]["error"]["type"] == "PermanentError"
    assert client.get("/v1/dlq", params={"error_type": "Nope", "subscription": unique}, headers=auth).json()["items"] == []
    shown = client.get(f"/v1/dlq/{a}", headers=auth).json()
    assert shown["envelope"]["payload"]["payment_id"] == "TX-0"

    bad = client.put(f"/v1/dlq/{a}/payload", json={**PAYMENT, "amount": "-1"}, headers=auth)
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == "payload.amount"
    ok = client.put(f"/v1/dlq/{a}/payload", json={**PAYMENT, "payment_id": "TX-0-FIXED"}, headers=auth)
    assert ok.status_code == 200 and ok.json()["edited"] is True

    assert client.post(f"/v1/dlq/{a}/replay", headers=auth).json() == {"replayed": 1}
    d = hub.broker.get(f"route.{unique}", timeout=2)
    assert d.envelope.payload["payment_id"] == "TX-0-FIXED" and d.envelope.attempt == 0
    d.ack()
    assert client.put(f"/v1/dlq/{a}/payload", json=PAYMENT, headers=auth).status_code == 409

    assert client.post("/v1/dlq/discard", json={"ids": [b], "reason": "duplicate"}, headers=auth).json() == {"discarded": 1}
    job = client.post("/v1/dlq/replay", json={"filter": {"subscription": unique}, "rate_per_s": 50}, headers=auth)
    assert job.status_code == 202
    done = wait_for(lambda: (j := client.get(f"/v1/dlq/jobs/{job.json()['id']}", headers=auth).json())["state"] != "running"
                    and j, what="the replay job")
    assert done["state"] == "done" and done["replayed"] == 1  # c only: a replayed, b discarded
    assert hub.broker.queue_depth(f"route.{unique}") == 1
    assert client.get(f"/v1/dlq/{c}", headers=auth).json()["status"] == "replayed"
    assert client.get("/v1/dlq/nope", headers=auth).status_code == 404
    assert client.post("/v1/dlq/replay", json={}, headers=auth).status_code == 422

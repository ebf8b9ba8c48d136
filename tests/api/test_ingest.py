"""HTTP ingest: 202 + state, precise 4xx for every bad input with nothing published, 503 when
the broker cannot store, sync mode 200/504."""

from __future__ import annotations

import json

import pytest

from esbhub.bus.envelope import Envelope

from .doubles import PAYMENT


def post(api, type_="payment.v1", body=None, *, headers=None, key=None, **kw):
    h = {"Content-Type": "application/json", **api.auth(key)}
    h.update(headers or {})
    if body is None or isinstance(body, dict | list):
        data = json.dumps(PAYMENT if body is None else body).encode()
    else:
        data = body  # bytes or an iterator of chunks (sent without Content-Length)
    return api.client.post(f"/v1/messages/{type_}", content=data, headers=h, **kw)


def assert_error(r, status, code, loc=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["message"]
    if loc is not None:
        assert loc in [d["loc"] for d in err["details"]], err
    return err


def test_valid_payment_is_accepted_with_202_and_its_state_is_readable(api):
    r = post(api)
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    assert r.headers["location"] == f"/v1/messages/{mid}"
    [env] = api.broker.published
    assert env.id == mid and env.type == "payment.v1" and env.source == "admin"
    assert env.payload["amount"] == "1234.50"
    got = api.client.get(f"/v1/messages/{mid}", headers=api.auth())
    assert got.status_code == 200 and got.json()["state"] == "accepted"


def test_traceparent_and_correlation_id_are_carried_into_the_envelope(api):
    tp = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    r = post(api, headers={"traceparent": tp, "X-Correlation-Id": "order-77"})
    assert r.status_code == 202
    env = api.broker.published[0]
    assert env.trace_id == "a" * 32 and env.correlation_id == "order-77"


@pytest.mark.parametrize(
    ("case", "status", "code", "loc"),
    [
        ("malformed_json", 400, "malformed_json", "body"),
        ("empty_body", 400, "malformed_json", "body"),
        ("invalid_utf8", 400, "invalid_utf8", "body"),
        ("unknown_type", 404, "unknown_type", "path.type"),
        ("schema_violation", 422, "schema_violation", "payload.amount"),
        ("missing_field", 422, "schema_violation", "payload.bank"),
        ("not_an_object", 422, "schema_violation", "payload"),
        ("oversized_content_length", 413, "body_too_large", "body"),
        ("oversized_chunked", 413, "body_too_large", "body"),
        ("wrong_content_type", 415, "unsupported_media_type", "header.content-type"),
        ("missing_content_type", 415, "unsupported_media_type", "header.content-type"),
        ("latin1_charset", 415, "unsupported_media_type", "header.content-type"),
    ],
)
def test_bad_input_gets_a_precise_4xx_and_nothing_is_published(api, case, status, code, loc):
    big = json.dumps({**PAYMENT, "memo": "x" * 5000}).encode()
    if case == "malformed_json":
        r = post(api, body=b'{"payment_id": "TX-1", ')
    elif case == "empty_body":
        r = post(api, body=b"")
    elif case == "invalid_utf8":
        r = post(api, body=b'{"payment_id": "TX-\xff\xfe"}')
    elif case == "unknown_type":
        r = post(api, "paymnt.v1")
    elif case == "schema_violation":
        r = post(api, body={**PAYMENT, "amount": "-5"})
    elif case == "missing_field":
        r = post(api, body={k: v for k, v in PAYMENT.items() if k != "bank"})
    elif case == "not_an_object":
        r = post(api, body=[1, 2])
    elif case == "oversized_content_length":
        r = post(api, body=big)
    elif case == "oversized_chunked":
        r = post(api, body=iter([big[:3000], big[3000:]]))  # no Content-Length: cut while reading
    elif case == "wrong_content_type":
        r = post(api, headers={"Content-Type": "text/plain"})
    elif case == "missing_content_type":
        r = api.client.post("/v1/messages/payment.v1", content=json.dumps(PAYMENT).encode(), headers=api.auth())
    else:
        r = post(api, headers={"Content-Type": "application/json; charset=latin-1"})
    err = assert_error(r, status, code, loc)
    if case == "unknown_type":
        assert "did you mean 'payment.v1'" in err["message"]
    if case == "malformed_json":
        assert "column" in err["details"][0]["msg"] or "char" in err["details"][0]["msg"]
    assert api.broker.published == []
    assert api.store.accepted == {}


def test_oversized_body_is_cut_while_reading_not_after(api):
    # TestClient buffers request bodies, so drive the ASGI app directly, chunk by chunk
    import asyncio

    from esbhub.api.app import BodyLimitMiddleware

    pulled, sent = [], []

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": b" " * 1024, "more_body": len(pulled) < 100}

    async def send(msg):
        sent.append(msg)

    scope = {
        "type": "http", "method": "POST", "path": "/v1/messages/payment.v1", "raw_path": b"/v1/messages/payment.v1",
        "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
        "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
        "headers": [(b"content-type", b"application/json"), (b"authorization", f"Bearer {api.admin}".encode())],
        "app": api.client.app,
    }
    assert any(m.cls is BodyLimitMiddleware for m in api.client.app.user_middleware)
    asyncio.run(api.client.app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert len(pulled) == 5  # 4 KiB limit: the 5th KiB chunk ended the read, 95 chunks never pulled
    assert api.broker.published == []


def test_broker_down_answers_503_with_retry_after_never_202(api):
    api.broker.down = True
    r = post(api)
    assert_error(r, 503, "broker_unavailable")
    assert int(r.headers["retry-after"]) > 0
    assert api.store.accepted == {}
    api.broker.down = False
    assert post(api).status_code == 202


def test_concurrent_posts_are_grouped_and_each_gets_its_own_id(api):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda i: post(api, body={**PAYMENT, "payment_id": f"TX-{i}"}), range(40)))
    assert all(r.status_code == 202 for r in rs)
    ids = {r.json()["id"] for r in rs}
    assert len(ids) == 40 and ids == {e.id for e in api.broker.published}


def test_sync_mode_returns_the_reply_with_200(api):
    api.replies["reply"] = lambda env: env.derive("payment.ack.v1", {"ok": True, "for": env.payload["payment_id"]})
    r = post(api, params={"mode": "sync", "timeout": "2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reply"]["payload"] == {"ok": True, "for": "TX-1001"}
    assert body["id"] == api.broker.published[0].id
    r2 = post(api, headers={"Prefer": "wait=2"})
    assert r2.status_code == 200 and r2.json()["reply"]["type"] == "payment.ack.v1"


def test_sync_mode_without_reply_in_time_answers_504_with_the_id(api):
    r = post(api, params={"mode": "sync", "timeout": "0.2"})
    err = assert_error(r, 504, "reply_timeout")
    assert err["id"] == api.broker.published[0].id
    assert err["id"] in api.store.accepted  # accepted: its state can be looked up


def test_sync_timeout_out_of_range_is_400(api):
    assert_error(post(api, params={"mode": "sync", "timeout": "9999"}), 400, "bad_request", "query.timeout")
    assert api.broker.published == []


def test_unknown_message_id_is_404_in_the_error_shape(api):
    assert_error(api.client.get("/v1/messages/01NOPE", headers=api.auth()), 404, "not_found")


def test_openapi_is_served_and_documents_ingest(api):
    spec = api.client.get("/openapi.json").json()
    assert "/v1/messages/{type}" in spec["paths"]
    assert "/v1/dlq" in spec["paths"]


def test_reply_envelope_round_trip_shape():
    # the sync reply is the reply envelope's public fields, not its internals
    from esbhub.api.ingest import reply_body

    req = Envelope.create("payment.v1", PAYMENT, source="bank")
    rep = req.derive("payment.ack.v1", {"ok": True})
    body = reply_body(req.id, rep)
    assert body["reply"]["correlation_id"] == req.correlation_id and "attempt" not in body["reply"]


def test_overlong_correlation_id_is_400_and_nothing_published(api):
    r = post(api, headers={"X-Correlation-Id": "c" * 200})
    assert_error(r, 400, "bad_request", "header.x-correlation-id")
    assert api.broker.published == []

"""HTTP sink against a local server that fails on demand."""

from __future__ import annotations

import base64
import json

import pytest

from esbhub.adapters.http import HttpSink, HttpSinkConfig, parse_retry_after
from esbhub.bus.envelope import Envelope
from esbhub.errors import CircuitOpen, ConfigError, InvalidMessage, PermanentError, TransientError

from .peers import FlakyHttpServer, free_port


@pytest.fixture
def server():
    s = FlakyHttpServer()
    yield s
    s.stop()


def make(url, **kw) -> HttpSink:
    cfg = {"url": url, "timeout": 2, "backoff_initial": 0.01}
    cfg.update(kw)
    return HttpSink(HttpSinkConfig(**cfg), name="t")


def env(payload=None) -> Envelope:
    return Envelope.create("bill.v1", payload or {"amount": 1}, source="test")


def test_posts_payload_with_idempotency_key_and_bearer_token(server, monkeypatch):
    monkeypatch.setenv("T_HTTP_TOKEN", "s3cret")
    sink = make(server.url + "/bills", auth={"type": "bearer", "token": "${env:T_HTTP_TOKEN}"})
    e = env({"amount": 12})
    r = sink.send(e)
    assert r["status"] == 200 and r["body"] == {"ok": True}
    req = server.requests[0]
    assert json.loads(req["body"]) == {"amount": 12}
    assert req["headers"]["Idempotency-Key"] == e.id
    assert req["headers"]["Authorization"] == "Bearer s3cret"
    assert req["headers"]["traceparent"] == e.headers["traceparent"]
    sink.close()


def test_basic_auth_password_comes_from_a_file_reference(server, tmp_path):
    (tmp_path / "pw").write_text("pa:ss\n")
    sink = make(server.url, auth={"type": "basic", "username": "hub", "password": f"${{file:{tmp_path / 'pw'}}}"})
    sink.send(env())
    assert server.requests[0]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"hub:pa:ss").decode()


def test_inline_credentials_are_refused():
    with pytest.raises(ValueError):
        HttpSinkConfig(url="http://x", auth={"type": "bearer", "token": "abc"})


def test_retries_5xx_then_succeeds_with_the_same_idempotency_key(server):
    server.plan = [(503, {}, 0), (502, {}, 0)]
    sink = make(server.url, max_attempts=3)
    assert sink.send(env())["status"] == 200
    keys = {r["headers"]["Idempotency-Key"] for r in server.requests}
    assert len(server.requests) == 3 and len(keys) == 1


def test_429_retry_after_is_honoured(server):
    server.plan = [(429, {"Retry-After": "1"}, 0)]
    sink = make(server.url)
    sink.send(env())
    gap = server.requests[1]["at"] - server.requests[0]["at"]
    assert gap >= 0.9  # waited as told (not a timing bound on speed: a lower bound the server asked for)


def test_retry_after_longer_than_allowed_ends_the_send_as_transient(server):
    server.plan = [(503, {"Retry-After": "120"}, 0)]
    sink = make(server.url, max_retry_after=5)
    with pytest.raises(TransientError):
        sink.send(env())
    assert len(server.requests) == 1


@pytest.mark.parametrize(("status", "exc"), [(400, InvalidMessage), (422, InvalidMessage), (404, PermanentError),
                                              (409, PermanentError)])
def test_4xx_is_not_retried(server, status, exc):
    server.plan = [(status, {}, 0)]
    sink = make(server.url, max_attempts=5)
    with pytest.raises(exc) as ei:
        sink.send(env())
    assert str(status) in str(ei.value)
    assert len(server.requests) == 1
    assert sink.breaker.state == "closed"


def test_slow_peer_times_out_as_transient_after_its_attempts(server):
    server.plan = [(200, {}, 3.0), (200, {}, 3.0)]
    sink = make(server.url, timeout=0.5, max_attempts=2)
    with pytest.raises(TransientError) as ei:
        sink.send(env())
    assert "timed out" in str(ei.value)


def test_peer_down_is_transient_and_opens_the_circuit():
    sink = make(f"http://127.0.0.1:{free_port()}", max_attempts=1, circuit={"failure_threshold": 2, "reset_timeout": 60})
    for _ in range(2):
        with pytest.raises(TransientError):
            sink.send(env())
    with pytest.raises(CircuitOpen):
        sink.send(env())
    h = sink.health()
    assert h.circuit == "open" and not h.ok and "ConnectError" in h.last_error


def test_missing_secret_reference_is_a_config_error(server, monkeypatch):
    monkeypatch.delenv("T_HTTP_NOPE", raising=False)
    sink = make(server.url, auth={"type": "bearer", "token": "${env:T_HTTP_NOPE}"})
    with pytest.raises(ConfigError) as ei:
        sink.send(env())
    assert "T_HTTP_NOPE" in str(ei.value)


def test_parse_retry_after_accepts_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


def test_credential_headers_must_be_references_and_are_resolved_late(server, monkeypatch):
    from esbhub.adapters.base import parse_config

    with pytest.raises(ConfigError) as ei:  # parse_config: the error names the header, never the value
        parse_config(HttpSinkConfig, {"url": "http://x", "headers": {"X-Api-Key": "abc123"}})
    assert "X-Api-Key" in str(ei.value) and "abc123" not in str(ei.value)
    monkeypatch.setenv("T_HTTP_KEY", "k-1")
    sink = make(server.url, headers={"X-Api-Key": "${env:T_HTTP_KEY}", "X-Source": "esbhub"})
    sink.send(env())
    assert server.requests[0]["headers"]["X-Api-Key"] == "k-1"
    assert server.requests[0]["headers"]["X-Source"] == "esbhub"

"""The adapter contract's building blocks: config refusal, circuit breaker, error mapping."""

from __future__ import annotations

import pytest
from pydantic import Field

from esbhub.adapters.base import (
    AdapterConfig,
    AdapterSpec,
    CircuitBreaker,
    Sink,
    check_url_secret,
    map_error,
    parse_config,
    redact_url,
    resolve_url,
    retry_transient,
    secret_fields,
    stable_id,
)
from esbhub.adapters.registry import get_adapter, register
from esbhub.errors import CircuitOpen, ConfigError, InvalidMessage, PermanentError, TransientError
from esbhub.secrets import SecretRef


class FakeConfig(AdapterConfig):
    host: str = Field(default="x", description="Host.")
    password: SecretRef | None = Field(default=None, description="Password by reference.")
    token: SecretRef = Field(default="${env:TOKEN}", description="Token by reference.")


class FlakySink(Sink[FakeConfig]):
    adapter_name = "fake"

    def __init__(self, config, *, name=""):
        super().__init__(config, name=name)
        self.fail_with: Exception | None = None
        self.calls = 0

    def deliver(self, envelope):
        self.calls += 1
        if self.fail_with:
            raise self.fail_with
        return {"ok": True}


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_config_refuses_unknown_key_with_did_you_mean():
    with pytest.raises(ConfigError) as ei:
        parse_config(FakeConfig, {"hots": "a"})
    d = ei.value.details[0]
    assert d.loc == "hots" and d.type == "extra_forbidden" and "host" in (d.hint or "")


def test_config_refuses_inline_secret_and_names_the_field():
    with pytest.raises(ConfigError) as ei:
        parse_config(FakeConfig, {"password": "hunter2"})
    assert ei.value.details[0].loc == "password"
    assert "reference" in ei.value.details[0].msg
    assert "hunter2" not in str(ei.value)


def test_secret_fields_found_through_optional_annotations():
    assert secret_fields(FakeConfig) == ["password", "token"]


def test_url_password_must_be_reference_and_is_resolved_late(monkeypatch):
    with pytest.raises(ValueError):
        check_url_secret("postgresql://app:hunter2@db/x")
    url = "postgresql://app:${env:T_PGPASS}@db/x"
    assert check_url_secret(url) == url
    monkeypatch.setenv("T_PGPASS", "p@ss/word")
    assert resolve_url(url) == "postgresql://app:p%40ss%2Fword@db/x"
    assert redact_url(url) == "postgresql://app:***@db/x"


def test_circuit_opens_after_consecutive_transient_failures_then_half_open_probe_closes_it():
    clock = Clock()
    br = CircuitBreaker(3, 10.0, clock=clock)
    for _ in range(3):
        br.before_call()
        br.on_failure(TransientError("down"))
    assert br.state == "open"
    with pytest.raises(CircuitOpen) as ei:
        br.before_call()
    assert 0 < ei.value.retry_after <= 10
    clock.t = 10.5
    assert br.state == "half_open"
    br.before_call()  # the probe
    with pytest.raises(CircuitOpen):
        br.before_call()  # a second caller waits while the probe is out
    br.on_success()
    assert br.state == "closed"


def test_failed_half_open_probe_reopens_and_permanent_errors_do_not_count():
    clock = Clock()
    br = CircuitBreaker(2, 5.0, clock=clock)
    br.on_failure(TransientError("a"))
    br.on_failure(PermanentError("bad row"))  # the peer answered: resets the count
    br.on_failure(TransientError("b"))
    assert br.state == "closed"
    br.on_failure(TransientError("c"))
    assert br.state == "open"
    clock.t = 6
    br.before_call()
    br.on_failure(TransientError("still down"))
    assert br.state == "open"


def test_sink_send_maps_library_errors_and_reports_them_in_health():
    from esbhub.bus.envelope import Envelope

    sink = FlakySink(FakeConfig(circuit={"failure_threshold": 2, "reset_timeout": 60}))
    env = Envelope.create("party.v1", {}, source="t")
    assert sink.send(env) == {"ok": True}
    assert sink.health().ok and sink.health().latency_ms is not None
    sink.fail_with = ConnectionRefusedError("refused")
    for _ in range(2):
        with pytest.raises(TransientError):
            sink.send(env)
    h = sink.health()
    assert not h.ok and h.circuit == "open" and "ConnectionRefusedError" in h.last_error
    calls = sink.calls
    with pytest.raises(CircuitOpen):
        sink.send(env)
    assert sink.calls == calls  # open circuit: the peer is not called


def test_map_error_classifies_by_library_type():
    import httpx
    import sqlalchemy.exc as sx

    assert isinstance(map_error(TimeoutError("t")), TransientError)
    assert isinstance(map_error(httpx.ReadTimeout("t")), TransientError)
    assert isinstance(map_error(sx.IntegrityError("INSERT", {}, Exception("dup"))), PermanentError)
    assert isinstance(map_error(sx.OperationalError("x", {}, Exception("gone"))), TransientError)
    assert isinstance(map_error(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")), InvalidMessage)
    e = map_error(KeyError("k"), adapter="sql", operation="send")
    assert isinstance(e, TransientError) and e.message.startswith("sql send: KeyError")


def test_retry_transient_retries_only_transient_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("again")
        return "ok"

    assert retry_transient(flaky, attempts=5, initial=0.001, max_delay=0.01) == "ok"
    calls.clear()

    def bad():
        calls.append(1)
        raise PermanentError("no")

    with pytest.raises(PermanentError):
        retry_transient(bad, attempts=5, initial=0.001)
    assert len(calls) == 1


def test_stable_id_is_deterministic_and_ulid_shaped():
    a, b = stable_id("orders:1"), stable_id("orders:1")
    assert a == b and len(a) == 26 and a != stable_id("orders:2")


def test_registry_unknown_adapter_suggests_the_closest_name():
    register(AdapterSpec(name="fakeadapter", config_model=FakeConfig, sink_cls=FlakySink, description="test"))
    with pytest.raises(ConfigError) as ei:
        get_adapter("fakeadaptr")
    assert "did you mean 'fakeadapter'" in str(ei.value)
    spec = get_adapter("fakeadapter")
    assert isinstance(spec.sink({"host": "h"}), FlakySink)
    with pytest.raises(ConfigError):
        spec.source({})


@pytest.mark.parametrize(
    "name, config",
    [
        ("amqp", {"url": "amqp://guest@127.0.0.1:5672//", "queue": "q"}),
        ("mqtt", {"client_id": "c", "topics": ["a/b"]}),
        ("nats", {"servers": ["nats://127.0.0.1:4222"], "stream": "s", "subjects": ["x"], "durable": "d"}),
    ],
)
def test_message_source_config_needs_an_envelope_template_unless_bodies_are_envelopes(name, config):
    from esbhub.adapters.registry import get_adapter

    spec = get_adapter(name)
    with pytest.raises(ConfigError, match="'envelope' \\(type, source\\) is required"):
        spec.parse_config(config, "source")
    spec.parse_config({**config, "body": "envelope"}, "source")
    spec.parse_config({**config, "envelope": {"type": "party.v1", "source": "crm"}}, "source")

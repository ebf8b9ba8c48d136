"""The adapter conformance suite: one parametrized set of checks every adapter in the registry
must pass, each against its real peer.

How it works: every adapter name in ``available_adapters()`` needs a *harness* — a class that
knows how to reach the adapter's peer (a valid source/sink config, a config whose peer is down,
how to put records into the peer for the source and how to see what a sink delivered). The
checks are written once, here, in terms of that harness.

Adding an adapter: write ``tests/adapters/test_<name>_harness.py`` with::

    from .conformance import Harness, harness

    @harness("soap")
    class SoapHarness(Harness):
        ...

Those modules are imported by this one, so an adapter without a harness fails the suite
("no conformance harness") instead of being silently skipped.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from waiting import wait_for

from esbhub.adapters.base import Health, parse_config, secret_fields
from esbhub.adapters.docs import render
from esbhub.adapters.registry import available_adapters
from esbhub.bus.envelope import Envelope
from esbhub.errors import ConfigError, TransientError

from .peers import FlakyHttpServer, TcpProxy, free_port

HARNESSES: dict[str, type[Harness]] = {}


def harness(name: str):
    def deco(cls: type[Harness]) -> type[Harness]:
        cls.name = name
        HARNESSES[name] = cls
        return cls

    return deco


class Harness:
    """How the conformance checks reach one adapter's peer. Override what applies."""

    name = ""
    inline_secret: tuple[str, dict[str, Any]] | None = None
    """(role, config) where a secret is given inline — must be refused."""

    def __init__(self, request: pytest.FixtureRequest, unique: str, tmp_path: Path, monkeypatch: Any) -> None:
        self.request, self.unique, self.tmp_path, self.mp = request, unique, tmp_path, monkeypatch

    # sinks
    def sink_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def down_sink_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def envelope(self, i: int = 0) -> Envelope:
        return Envelope.create("party.v1", {"n": i}, source="conformance")

    def delivered(self, env: Envelope) -> bool:
        """Whether the peer holds what the sink sent (checked with a deadline)."""
        return True

    def peer_port(self) -> int:
        """TCP port of the real peer on 127.0.0.1 (for the slow / cut connection check)."""
        raise NotImplementedError

    def sink_config_through(self, port: int) -> dict[str, Any]:
        """A valid sink config that reaches the peer through a proxy on ``port``."""
        raise NotImplementedError

    # sources
    def source_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def down_source_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def feed(self, n: int) -> None:
        """Put ``n`` records (numbered 0..n-1) into the peer for the source to read."""
        raise NotImplementedError

    def number_of(self, env: Envelope) -> int:
        return int(env.payload["n"])

    def replays_after_failed_emit(self) -> bool:
        return True

    def cleanup(self) -> None:
        pass


def _import_harness_modules() -> None:
    here = Path(__file__).parent
    for p in sorted(here.glob("test_*_harness.py")):
        importlib.import_module(f"{__package__}.{p.stem}")


# ---------------------------------------------------------------------------------------------
# harnesses of the built-in adapters


@harness("sql")
class SqlHarness(Harness):
    inline_secret = ("sink", {"url": "postgresql+psycopg://app:hunter2@127.0.0.1/x", "table": "t"})

    def _setup(self) -> str:
        import sqlalchemy as sa

        url = self.request.getfixturevalue("pg_url")
        self.table = "c_" + self.unique
        eng = sa.create_engine(url)
        with eng.begin() as c:
            c.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {self.table} (id serial primary key, n int not null unique,"
                              " lease_until timestamp, lease_token text, processed_at timestamp)"))
        eng.dispose()
        return url

    def sink_config(self):
        return {"url": self._setup(), "table": self.table, "mode": "upsert", "key_columns": ["n"], "timeout": 3}

    def down_sink_config(self):
        return {"url": f"postgresql+psycopg://u@127.0.0.1:{free_port()}/x", "table": "t", "timeout": 2}

    def delivered(self, env):
        import sqlalchemy as sa

        eng = sa.create_engine(self.request.getfixturevalue("pg_url"))
        with eng.connect() as c:
            n = c.execute(sa.text(f"SELECT count(*) FROM {self.table} WHERE n = :n"), {"n": env.payload["n"]}).scalar()
        eng.dispose()
        return n == 1

    def source_config(self):
        return {"url": self._setup(), "table": self.table, "mode": "outbox", "timeout": 3, "poll_interval": 0.1,
                "envelope": {"type": "party.v1", "source": "db"}}

    def down_source_config(self):
        return {"url": f"postgresql+psycopg://u@127.0.0.1:{free_port()}/x", "table": "t", "mode": "outbox",
                "timeout": 1, "poll_interval": 0.1, "envelope": {"type": "party.v1", "source": "db"}}

    def feed(self, n):
        import sqlalchemy as sa

        eng = sa.create_engine(self.request.getfixturevalue("pg_url"))
        with eng.begin() as c:
            c.execute(sa.text(f"INSERT INTO {self.table} (n) VALUES (:n)"), [{"n": i} for i in range(n)])
        eng.dispose()

    def cleanup(self):
        import sqlalchemy as sa

        if hasattr(self, "table"):
            eng = sa.create_engine(self.request.getfixturevalue("pg_url"))
            with eng.begin() as c:
                c.execute(sa.text(f"DROP TABLE IF EXISTS {self.table}"))
            eng.dispose()


@harness("http")
class HttpHarness(Harness):
    inline_secret = ("sink", {"url": "http://x", "auth": {"type": "bearer", "token": "abc"}})
    server: FlakyHttpServer | None = None

    def sink_config(self):
        self.server = FlakyHttpServer()
        return {"url": self.server.url + "/in", "timeout": 2}

    def down_sink_config(self):
        return {"url": f"http://127.0.0.1:{free_port()}/", "timeout": 1, "max_attempts": 1}

    def peer_port(self):
        self.server = self.server or FlakyHttpServer()
        return self.server.port

    def sink_config_through(self, port):
        return {"url": f"http://127.0.0.1:{port}/in", "timeout": 1, "max_attempts": 1}

    def delivered(self, env):
        assert self.server is not None
        return any(r["headers"].get("Idempotency-Key") == env.id for r in self.server.requests)

    def cleanup(self):
        if self.server:
            self.server.stop()


class _AmqpBase(Harness):
    inline_secret = ("sink", {"url": "amqp://guest:guest@127.0.0.1:5672//"})

    def url(self, port: int | None = None) -> str:
        rabbit = self.request.getfixturevalue("rabbit_url")
        user_pw, host = rabbit.split("://", 1)[1].split("@", 1)
        user, pw = user_pw.split(":", 1)
        self.mp.setenv("T_CONF_AMQP", pw)
        if port:
            host = f"127.0.0.1:{port}//"
        return f"amqp://{user}:${{env:T_CONF_AMQP}}@{host}"


@harness("amqp")
class AmqpHarness(_AmqpBase):
    def _chan(self):
        import kombu

        if not hasattr(self, "conn"):
            self.conn = kombu.Connection(self.request.getfixturevalue("rabbit_url"), connect_timeout=5)
            self.ch = self.conn.channel()
            self.q = f"conf.{self.unique}"
            self.ch.queue_declare(self.q, durable=True, auto_delete=False)
        return self.ch

    def sink_config(self):
        self._chan()
        return {"url": self.url(), "exchange": "", "routing_key": self.q, "timeout": 3}

    def down_sink_config(self):
        return {"url": self.url(free_port()), "timeout": 1}

    def peer_port(self):
        return 5672

    def sink_config_through(self, port):
        self._chan()
        return {"url": self.url(port), "exchange": "", "routing_key": self.q, "timeout": 1, "heartbeat": 0}

    def delivered(self, env):
        m = self._chan().basic_get(self.q, no_ack=True)
        return m is not None and m.properties.get("message_id") == env.id

    def source_config(self):
        self._chan()
        return {"url": self.url(), "queue": self.q, "timeout": 3, "envelope": {"type": "party.v1", "source": "x"}}

    def down_source_config(self):
        return {"url": self.url(free_port()), "queue": "q", "timeout": 1, "envelope": {"type": "party.v1", "source": "x"}}

    def feed(self, n):
        import kombu
        import orjson

        prod = kombu.Producer(self._chan(), exchange=kombu.Exchange(""), auto_declare=False)
        for i in range(n):
            prod.publish(orjson.dumps({"n": i}), routing_key=self.q, delivery_mode=2, message_id=f"m{i}",
                         content_type="application/json", content_encoding="binary")

    def cleanup(self):
        if hasattr(self, "conn"):
            self.ch.queue_delete(self.q)
            self.conn.release()


@harness("mqtt")
class MqttHarness(Harness):
    inline_secret = ("sink", {"client_id": "c", "topic": "t", "username": "u", "password": "hunter2"})

    def sink_config(self):
        import paho.mqtt.client as mqtt

        self.got: list[Any] = []
        self.sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.sub.on_message = lambda c, u, m: self.got.append(m)
        self.sub.connect("127.0.0.1", 1883)
        self.sub.subscribe(f"conf/{self.unique}/#", qos=1)
        self.sub.loop_start()
        wait_for(self.sub.is_connected, 5, what="mqtt subscriber")
        return {"client_id": f"pub-{self.unique}", "topic": f"conf/{self.unique}/out", "timeout": 3}

    def down_sink_config(self):
        return {"client_id": "c", "topic": "t", "port": free_port(), "timeout": 1}

    def peer_port(self):
        return 1883

    def sink_config_through(self, port):
        return {"client_id": f"slow-{self.unique}", "topic": f"conf/{self.unique}/slow", "port": port, "timeout": 1}

    def delivered(self, env):
        return any(dict(m.properties.UserProperty).get("esbhub-id") == env.id for m in self.got)

    def source_config(self):
        return {"client_id": f"src-{self.unique}", "topics": [f"conf/{self.unique}/in"], "timeout": 3,
                "session_expiry": 120, "envelope": {"type": "alarm.v1", "source": "nms"}, "id_field": "n"}

    def down_source_config(self):
        return {"client_id": "c", "topics": ["t"], "port": free_port(), "timeout": 1,
                "envelope": {"type": "alarm.v1", "source": "nms"}}

    def feed(self, n):
        import orjson
        import paho.mqtt.client as mqtt

        # make sure the persistent session exists before publishing (a source connected once)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.connect("127.0.0.1", 1883)
        c.loop_start()
        for i in range(n):
            c.publish(f"conf/{self.unique}/in", orjson.dumps({"n": i}), qos=1).wait_for_publish(5)
        c.disconnect()
        c.loop_stop()

    feed_after_connect = True

    def cleanup(self):
        if hasattr(self, "sub"):
            self.sub.disconnect()
            self.sub.loop_stop()


@harness("nats")
class NatsHarness(Harness):
    inline_secret = ("sink", {"stream": "s", "subject": "x", "token": "abc"})

    def _stream(self) -> str:
        import asyncio

        import nats

        if not hasattr(self, "stream"):
            self.stream = f"C_{self.unique}"

            async def go():
                nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=3)
                await nc.jetstream().add_stream(name=self.stream, subjects=[f"conf{self.unique}.>"])
                await nc.close()

            asyncio.run(go())
        return self.stream

    def sink_config(self):
        return {"stream": self._stream(), "subject": f"conf{self.unique}.out", "timeout": 3}

    def down_sink_config(self):
        return {"stream": "s", "subject": "x", "servers": [f"nats://127.0.0.1:{free_port()}"], "timeout": 1}

    def peer_port(self):
        return 4222

    def sink_config_through(self, port):
        return {"stream": self._stream(), "subject": f"conf{self.unique}.slow", "servers": [f"nats://127.0.0.1:{port}"],
                "timeout": 1}

    def source_config(self):
        return {"stream": self._stream(), "durable": "conf", "timeout": 3, "ack_wait": 2,
                "envelope": {"type": "alarm.v1", "source": "nms"}}

    def down_source_config(self):
        return {"stream": "s", "durable": "d", "servers": [f"nats://127.0.0.1:{free_port()}"], "timeout": 1,
                "envelope": {"type": "alarm.v1", "source": "nms"}}

    def feed(self, n):
        import asyncio

        import nats
        import orjson

        async def go():
            nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=3)
            js = nc.jetstream()
            for i in range(n):
                await js.publish(f"conf{self.unique}.in", orjson.dumps({"n": i}), timeout=5)
            await nc.close()

        asyncio.run(go())

    def cleanup(self):
        import asyncio

        import nats

        if hasattr(self, "stream"):
            async def go():
                nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=3)
                await nc.jetstream().delete_stream(self.stream)
                await nc.close()

            asyncio.run(go())


@harness("timer")
class TimerHarness(Harness):
    def source_config(self):
        return {"interval": 0.2, "run_at_start": True, "envelope": {"type": "bill.v1", "source": "cron"},
                "payload": {"n": 0}}

    def replays_after_failed_emit(self) -> bool:
        return False  # no upstream data; a failed tick is re-emitted with its id (test_timer_adapter)


_import_harness_modules()

# ---------------------------------------------------------------------------------------------
# the checks

ADAPTERS = sorted(available_adapters())


def _roles(name: str) -> list[str]:
    spec = available_adapters()[name]
    return [r for r, c in (("source", spec.source_cls), ("sink", spec.sink_cls)) if c is not None]


SOURCES = [n for n in ADAPTERS if "source" in _roles(n)]
SINKS = [n for n in ADAPTERS if "sink" in _roles(n)]


@pytest.fixture
def h(request, unique, tmp_path, monkeypatch):
    name = request.param
    cls = HARNESSES.get(name)
    if cls is None:
        pytest.fail(f"no conformance harness for adapter '{name}' (add tests/adapters/test_{name}_harness.py)")
    obj = cls(request, unique, tmp_path, monkeypatch)
    yield obj
    obj.cleanup()


def _models(name: str) -> list[type[BaseModel]]:
    spec = available_adapters()[name]
    return list({id(m): m for m in (spec.config_for("source") if spec.source_cls else None,
                                     spec.config_for("sink") if spec.sink_cls else None) if m}.values())


def _walk(model: type[BaseModel], path: str = ""):
    for fname, info in model.model_fields.items():
        yield f"{path}{fname}", info
        ann = info.annotation
        for sub in getattr(ann, "__args__", ()) + ((ann,) if isinstance(ann, type) else ()):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                yield from _walk(sub, f"{path}{fname}.")


@pytest.mark.parametrize("name", ADAPTERS)
def test_spec_is_complete_and_every_config_field_is_described(name):
    spec = available_adapters()[name]
    assert spec.name == name and spec.description.strip()
    assert spec.source_cls or spec.sink_cls
    for model in _models(name):
        assert model.model_config.get("extra") == "forbid", model
        missing = [p for p, info in _walk(model) if not (info.description or "").strip()]
        assert not missing, f"{model.__name__}: fields without description: {missing}"
    doc = render(spec)
    for model in _models(name):
        for fname in model.model_fields:
            assert f"`{fname}`" in doc


@pytest.mark.parametrize("name", ADAPTERS)
def test_config_rejects_unknown_keys(name):
    for model in _models(name):
        with pytest.raises(ConfigError) as ei:
            parse_config(model, {"definitely_not_a_field": 1})
        assert any(d.type == "extra_forbidden" and d.loc == "definitely_not_a_field" for d in ei.value.details)


@pytest.mark.parametrize("h", ADAPTERS, indirect=True)
def test_config_rejects_inline_secrets(h):
    spec = available_adapters()[h.name]
    has_secrets = any(secret_fields(m) for m in _models(h.name)) or h.inline_secret is not None
    if not has_secrets:
        pytest.skip(f"adapter '{h.name}' has no secret fields")
    assert h.inline_secret is not None, "harness must give a config with an inline secret"
    role, cfg = h.inline_secret
    with pytest.raises(ConfigError) as ei:
        spec.parse_config(cfg, role)
    assert "reference" in str(ei.value)
    assert "hunter2" not in str(ei.value) and "'abc'" not in str(ei.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("h", SINKS, indirect=True)
def test_sink_delivers_to_its_real_peer_and_health_reports_success(h):
    spec = available_adapters()[h.name]
    sink = spec.sink(h.sink_config(), name=f"conf-{h.name}")
    try:
        before = sink.health()
        assert isinstance(before, Health) and before.last_error is None
        env = h.envelope(1)
        sink.send(env)
        wait_for(lambda: h.delivered(env), 10, what=f"{h.name} peer received the envelope")
        after = sink.health()
        assert after.ok and after.last_success is not None and after.circuit == "closed"
    finally:
        sink.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("h", SINKS, indirect=True)
def test_sink_maps_peer_down_to_transient_error_and_health_reports_it(h):
    spec = available_adapters()[h.name]
    sink = spec.sink(h.down_sink_config(), name=f"conf-{h.name}")
    try:
        assert sink.health().last_error is None  # health() itself does not touch the peer
        with pytest.raises(TransientError):
            sink.send(h.envelope())
        hl = sink.health()
        assert not hl.ok and hl.last_error and hl.last_error_at is not None and hl.consecutive_failures == 1
    finally:
        sink.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("h", SOURCES, indirect=True)
def test_source_does_not_lose_or_ack_data_when_emit_raises(h):
    if not h.replays_after_failed_emit():
        pytest.skip(f"'{h.name}' has no upstream data to replay")
    spec = available_adapters()[h.name]
    cfg = h.source_config()
    attempts: list[Envelope] = []
    lock = threading.Lock()

    def failing(envs):
        with lock:
            attempts.extend(envs)
        raise TransientError("bus unavailable")

    if getattr(h, "feed_after_connect", False):
        # persistent-session protocols: the session must exist before records are published
        first = spec.source(cfg, name=f"conf-{h.name}")
        first.start(failing)
        wait_for(lambda: first.health().detail.get("connected"), 10, what="source connected")
        h.feed(5)
    else:
        h.feed(5)
        first = spec.source(cfg, name=f"conf-{h.name}")
        first.start(failing)
    try:
        wait_for(lambda: len(attempts) >= 1, 15, what="an emit attempt")
        wait_for(lambda: first.health().last_error, 5, what="the failure in health()")
    finally:
        first.stop()
    assert "bus unavailable" in (first.health().last_error or "")
    got: list[Envelope] = []

    def ok(envs):
        with lock:
            got.extend(envs)

    second = spec.source(cfg, name=f"conf-{h.name}")  # a restarted worker
    second.start(ok)
    try:
        wait_for(lambda: {h.number_of(e) for e in got} >= set(range(5)), 20, what="all 5 records after restart")
    finally:
        second.stop()
    first_ids = {h.number_of(e): e.id for e in attempts}
    assert all(first_ids[h.number_of(e)] == e.id for e in got if h.number_of(e) in first_ids), (
        "a record read again must keep its envelope id (the bus dedups it)"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("h", SOURCES, indirect=True)
def test_source_with_peer_down_at_start_keeps_running_reports_and_stops_cleanly(h):
    spec = available_adapters()[h.name]
    try:
        cfg = h.down_source_config()
    except NotImplementedError:
        pytest.skip(f"'{h.name}' has no peer")
    src = spec.source(cfg, name=f"conf-{h.name}")
    src.start(lambda envs: None)
    try:
        wait_for(lambda: src.health().last_error, 15, what="the connect failure in health()")
        hl = src.health()
        assert src.running and not hl.ok and hl.running
    finally:
        src.stop()
    assert not src.running


@pytest.mark.timeout(90)
@pytest.mark.parametrize("h", SINKS, indirect=True)
def test_sink_on_slow_then_cut_peer_gives_transient_error_within_timeout_and_recovers(h):
    """Slow peer → TransientError (the timeout holds); connection cut → the next sends reconnect."""
    try:
        port = h.peer_port()
    except NotImplementedError:
        pytest.skip(f"'{h.name}' harness has no proxy-able peer")
    spec = available_adapters()[h.name]
    proxy = TcpProxy(port)
    cfg = dict(h.sink_config_through(proxy.port))
    cfg["circuit"] = {"failure_threshold": 100, "reset_timeout": 0.5}
    sink = spec.sink(cfg, name=f"conf-slow-{h.name}")

    def sends() -> bool:
        try:
            sink.send(h.envelope(7))
            return True
        except TransientError:
            return False

    try:
        sink.send(h.envelope(0))  # connected through the proxy
        proxy.delay = sink.config.timeout + 1.0
        with pytest.raises(TransientError):
            sink.send(h.envelope(1))
        assert sink.health().last_error
        proxy.delay = 0.0
        proxy.cut()
        wait_for(sends, 30, interval=0.2, what=f"{h.name} sink recovered after the cut")
        assert sink.health().ok
    finally:
        sink.close()
        proxy.close()

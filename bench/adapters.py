"""Adapter throughput: records/s in (source) and out (sink) per adapter, each beside a floor
measured in the same run with the bare client library on the same peer.

    .venv/bin/python bench/adapters.py [--rows 10000] [--out docs/adapters/benchmarks.md]

Peers: PostgreSQL 5432, RabbitMQ 5672, Mosquitto 1883, NATS 4222 (local), an HTTP server
started here. Sources emit into a counting no-op ``emit`` (what the adapter costs) and, for
SQL, also into the embedded bus (what a real run costs, durable). Not a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esbhub.adapters.amqp import AmqpSink, AmqpSinkConfig, AmqpSource, AmqpSourceConfig  # noqa: E402
from esbhub.adapters.base import broker_emitter  # noqa: E402
from esbhub.adapters.http import HttpSink, HttpSinkConfig  # noqa: E402
from esbhub.adapters.mqtt import MqttSink, MqttSinkConfig, MqttSource, MqttSourceConfig  # noqa: E402
from esbhub.adapters.nats import NatsSink, NatsSinkConfig, NatsSource, NatsSourceConfig  # noqa: E402
from esbhub.adapters.sql import SqlSink, SqlSinkConfig, SqlSource, SqlSourceConfig  # noqa: E402
from esbhub.bus.envelope import Envelope  # noqa: E402

PG = os.environ.get("ESBHUB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
AMQP_RAW = os.environ.get("ESBHUB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
os.environ.setdefault("BENCH_AMQP_PASS", AMQP_RAW.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1])
AMQP = "amqp://" + AMQP_RAW.split("://", 1)[1].split(":", 1)[0] + ":${env:BENCH_AMQP_PASS}@" + AMQP_RAW.split("@", 1)[1]

ROWS: list[tuple[str, str, str, float, float, str]] = []  # adapter, direction, what, n, seconds, floor label


def rec(adapter: str, direction: str, what: str, n: int, secs: float) -> float:
    rate = n / secs if secs else float("inf")
    ROWS.append((adapter, direction, what, n, secs, f"{rate:,.0f}"))
    print(f"{adapter:6} {direction:4} {what:55} {n:7d} in {secs:7.2f}s = {rate:10,.0f} rec/s", flush=True)
    return rate


class Counter:
    def __init__(self, target: int) -> None:
        self.n = 0
        self.target = target
        self.done = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, envs) -> None:
        with self.lock:
            self.n += len(envs)
            if self.n >= self.target:
                self.done.set()


def envs(n: int) -> list[Envelope]:
    return [Envelope.create("party.v1", {"n": i, "name": f"客户{i}", "city": "深圳"}, source="bench") for i in range(n)]


# --------------------------------------------------------------------------------------------- sql
def bench_sql(n: int, tmp: Path) -> None:
    t = "bench_" + uuid.uuid4().hex[:8]
    eng = sa.create_engine(PG)
    with eng.begin() as c:
        c.execute(sa.text(f"CREATE TABLE {t} (id int primary key, name text, city text, updated_at timestamp,"
                          " lease_until timestamp, lease_token text, processed_at timestamp)"))
        c.execute(sa.text(f"INSERT INTO {t} (id, name, city, updated_at) SELECT g, '客户' || g, '深圳', now() "
                          f"FROM generate_series(1, {n}) g"))
    try:
        t0 = time.perf_counter()
        with eng.connect() as c:
            rows = c.execute(sa.text(f"SELECT id, name, city, updated_at FROM {t} ORDER BY updated_at, id")).all()
        rec("sql", "in", "floor: one SELECT of all rows (SQLAlchemy)", len(rows), time.perf_counter() - t0)

        state = f"sqlite:///{tmp / 'state.db'}"
        cfg = dict(url=PG, table=t, watermark_column="updated_at", batch_size=1000, state_url=state,
                   envelope={"type": "party.v1", "source": "db"}, columns=["id", "name", "city", "updated_at"])
        src = SqlSource(SqlSourceConfig(**cfg, state_key="b1"), name="bench")
        cnt = Counter(n)
        t0 = time.perf_counter()
        while src.poll_once(cnt):
            pass
        rec("sql", "in", "watermark poll → no-op emit (batch 1000)", cnt.n, time.perf_counter() - t0)
        src.close()

        from esbhub.bus.broker import create_broker

        broker = create_broker(f"sqlite:///{tmp / 'bus.db'}")
        broker.connect()
        broker.declare_queue("bench", ["party.v1"])
        src = SqlSource(SqlSourceConfig(**cfg, state_key="b2"), name="bench")
        emit = broker_emitter(broker, timeout=30)
        t0 = time.perf_counter()
        k = 0
        while (m := src.poll_once(emit)):
            k += m
        rec("sql", "in", "watermark poll → embedded bus (durable)", k, time.perf_counter() - t0)
        src.close()
        broker.close()

        src = SqlSource(SqlSourceConfig(url=PG, table=t, mode="outbox", batch_size=1000, done_column="processed_at",
                                        envelope={"type": "party.v1", "source": "db"}), name="bench")
        cnt = Counter(n)
        t0 = time.perf_counter()
        while src.poll_once(cnt):
            pass
        rec("sql", "in", "outbox lease+emit+mark done → no-op emit", cnt.n, time.perf_counter() - t0)
        src.close()

        with eng.begin() as c:
            c.execute(sa.text(f"CREATE TABLE {t}_out (n int primary key, name text, city text)"))
        data = [{"n": i, "name": f"客户{i}", "city": "深圳"} for i in range(n)]
        t0 = time.perf_counter()
        with eng.begin() as c:
            c.execute(sa.text(f"INSERT INTO {t}_out (n, name, city) VALUES (:n, :name, :city)"), data)
        rec("sql", "out", "floor: executemany INSERT in one transaction", n, time.perf_counter() - t0)
        with eng.begin() as c:
            c.execute(sa.text(f"TRUNCATE {t}_out"))
        sink = SqlSink(SqlSinkConfig(url=PG, table=f"{t}_out", mode="upsert", key_columns=["n"]), name="bench")
        es = envs(n)
        t0 = time.perf_counter()
        for i in range(0, n, 500):
            sink.send_many(es[i : i + 500])
        rec("sql", "out", "upsert send_many (500 per transaction)", n, time.perf_counter() - t0)
        m = min(n, 2000)
        t0 = time.perf_counter()
        for e in es[:m]:
            sink.send(e)
        rec("sql", "out", "upsert send (one transaction per envelope)", m, time.perf_counter() - t0)
        sink.close()
    finally:
        with eng.begin() as c:
            c.execute(sa.text(f"DROP TABLE IF EXISTS {t}"))
            c.execute(sa.text(f"DROP TABLE IF EXISTS {t}_out"))
        eng.dispose()


# --------------------------------------------------------------------------------------------- http
def bench_http(n: int) -> None:
    import httpx
    import uvicorn

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    import socket

    from esbhub.adapters.base import Sink  # noqa: F401 - keeps import order obvious

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    try:
        url = f"http://127.0.0.1:{port}/in"
        es = envs(n)
        with httpx.Client(timeout=10) as c:
            t0 = time.perf_counter()
            for e in es:
                c.post(url, content=orjson.dumps(e.payload), headers={"Content-Type": "application/json"})
            rec("http", "out", "floor: httpx.Client.post, keep-alive", n, time.perf_counter() - t0)
        sink = HttpSink(HttpSinkConfig(url=url), name="bench")
        t0 = time.perf_counter()
        for e in es:
            sink.send(e)
        rec("http", "out", "HttpSink.send (retry policy, breaker, idempotency key)", n, time.perf_counter() - t0)
        sink.close()
    finally:
        server.should_exit = True
        th.join(5)


# --------------------------------------------------------------------------------------------- amqp
def bench_amqp(n: int) -> None:
    import kombu

    q = "bench." + uuid.uuid4().hex[:8]
    conn = kombu.Connection(AMQP_RAW)
    ch = conn.channel()
    ch.queue_declare(q, durable=True, auto_delete=False)
    try:
        es = envs(n)
        cconn = kombu.Connection(AMQP_RAW, transport_options={"confirm_publish": True})
        prod = kombu.Producer(cconn.channel(), exchange=kombu.Exchange(""), auto_declare=False)
        t0 = time.perf_counter()
        for e in es:
            prod.publish(orjson.dumps(e.payload), routing_key=q, delivery_mode=2, retry=False)
        rec("amqp", "out", "floor: kombu publish, persistent, confirm_publish", n, time.perf_counter() - t0)
        cconn.release()
        sink = AmqpSink(AmqpSinkConfig(url=AMQP, exchange="", routing_key=q), name="bench")
        t0 = time.perf_counter()
        for i in range(0, n, 100):
            sink.send_many(es[i : i + 100])
        rec("amqp", "out", "AmqpSink.send_many (100 per batch, pipelined confirms)", n, time.perf_counter() - t0)
        sink.close()

        # source: n messages waiting in a fresh queue for each of floor and adapter
        def refill() -> None:
            ch.queue_purge(q)
            p = kombu.Producer(ch, exchange=kombu.Exchange(""), auto_declare=False)
            for e in es:
                p.publish(orjson.dumps(e.payload), routing_key=q, delivery_mode=2, retry=False)

        refill()
        got = 0
        done = threading.Event()

        def on_msg(m):
            nonlocal got
            if done.is_set():
                return  # prefetched beyond n: left unacked, requeued on close
            got += 1
            if got % 100 == 0 or got >= n:
                m.ack(multiple=True)
            if got >= n:
                done.set()

        rconn = kombu.Connection(AMQP_RAW)
        rch = rconn.channel()
        rch.basic_qos(0, 200, False)
        cons = kombu.Consumer(rch, queues=[kombu.Queue(q, channel=rch, no_declare=True)], no_ack=False)
        cons.on_message = on_msg
        t0 = time.perf_counter()
        with cons:
            while not done.is_set():
                rconn.drain_events(timeout=5)
        rec("amqp", "in", "floor: kombu consume, ack multiple per 100", n, time.perf_counter() - t0)
        rconn.release()
        refill()
        cnt = Counter(n)
        src = AmqpSource(AmqpSourceConfig(url=AMQP, queue=q, envelope={"type": "party.v1", "source": "b"},
                                          batch_size=100, prefetch=200), name="bench")
        t0 = time.perf_counter()
        src.start(cnt)
        cnt.done.wait(120)
        rec("amqp", "in", "AmqpSource → no-op emit (batch 100, ack after emit)", cnt.n, time.perf_counter() - t0)
        src.stop()
    finally:
        ch.queue_delete(q)
        conn.release()


# --------------------------------------------------------------------------------------------- mqtt
def bench_mqtt(n: int) -> None:
    import paho.mqtt.client as mqtt

    u = uuid.uuid4().hex[:8]
    es = envs(n)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", 1883)
    c.loop_start()
    t0 = time.perf_counter()
    for e in es:
        c.publish(f"bench/{u}/raw", orjson.dumps(e.payload), qos=1).wait_for_publish(10)
    rec("mqtt", "out", "floor: paho publish QoS 1, wait for PUBACK each", n, time.perf_counter() - t0)
    sink = MqttSink(MqttSinkConfig(client_id=f"bench-pub-{u}", topic=f"bench/{u}/sink"), name="bench")
    t0 = time.perf_counter()
    for e in es:
        sink.send(e)
    rec("mqtt", "out", "MqttSink.send (PUBACK each)", n, time.perf_counter() - t0)
    sink.close()

    cnt = Counter(n)
    src = MqttSource(MqttSourceConfig(client_id=f"bench-src-{u}", topics=[f"bench/{u}/in"], batch_size=100,
                                      envelope={"type": "alarm.v1", "source": "b"}, session_expiry=300), name="bench")
    src.start(cnt)
    while not src.health().detail.get("connected"):
        time.sleep(0.05)
    t0 = time.perf_counter()
    for w in range(0, n, 500):  # windows of 500: mosquitto drops beyond max_queued_messages (1000)
        infos = [c.publish(f"bench/{u}/in", orjson.dumps(e.payload), qos=1) for e in es[w : w + 500]]
        for i in infos:
            i.wait_for_publish(30)
        deadline = time.monotonic() + 60
        while cnt.n < min(n, w + 500) - 500 and time.monotonic() < deadline:
            time.sleep(0.005)
    cnt.done.wait(120)
    rec("mqtt", "in", "publish (windows of 500) → MqttSource → no-op emit, manual ack", cnt.n, time.perf_counter() - t0)
    src.stop()
    c.disconnect()
    c.loop_stop()


# --------------------------------------------------------------------------------------------- nats
def bench_nats(n: int) -> None:
    import nats

    stream = "BENCH_" + uuid.uuid4().hex[:8]
    es = envs(n)

    async def raw():
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        t0 = time.perf_counter()
        for e in envs(n):  # own ids: JetStream would drop the sink's messages as duplicates otherwise
            await js.publish(f"{stream}.raw", orjson.dumps(e.payload), headers={"Nats-Msg-Id": e.id})
        rec("nats", "out", "floor: nats-py js.publish, await PubAck each", n, time.perf_counter() - t0)
        await nc.close()

    asyncio.run(raw())
    sink = NatsSink(NatsSinkConfig(stream=stream, subject=f"{stream}.in"), name="bench")
    t0 = time.perf_counter()
    for e in es:
        sink.send(e)
    rec("nats", "out", "NatsSink.send (PubAck each, from a sync caller)", n, time.perf_counter() - t0)
    sink.close()
    cnt = Counter(n)
    src = NatsSource(NatsSourceConfig(stream=stream, durable="bench", filter_subject=f"{stream}.in", batch_size=200,
                                      envelope={"type": "alarm.v1", "source": "b"}), name="bench")
    t0 = time.perf_counter()
    src.start(cnt)
    cnt.done.wait(120)
    rec("nats", "in", "NatsSource durable pull → no-op emit (batch 200)", cnt.n, time.perf_counter() - t0)
    src.stop()

    async def drop():
        nc = await nats.connect("nats://127.0.0.1:4222")
        await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(drop())


NOTES = [
    "- **SQL in**: the floor (one SELECT of all rows) shows the database is not the limit; the source's cost is "
    "making envelopes (pydantic, ULID, JSON-able values) plus one position write per batch. Durably onto the "
    "embedded bus it keeps most of that rate, and the outbox mode pays for its lease and completion UPDATEs.",
    "- **SQL out**: batched upsert (`send_many`, one transaction per 500) runs at about half of a raw executemany "
    "INSERT; one transaction per envelope is bounded by commit latency — routes should hand sinks batches.",
    "- **AMQP out**: the sink pipelines publisher confirms (publish the batch, then wait for every delivery tag), "
    "so it beats kombu's `confirm_publish`, which waits for each confirm in turn.",
    "- **MQTT / NATS out**: each send waits for its PUBACK / PubAck (one round trip per message), close to the "
    "bare library doing the same; the NATS sink drives nats-py's asyncio client from a synchronous caller.",
    "- **MQTT in**: bounded by Mosquitto's in-flight window (20 unacknowledged QoS 1 messages per client by default) "
    "and its per-session queue (`max_queued_messages` 1000, beyond which it drops): the run publishes in windows "
    "of 500 so nothing is dropped; the figure is end to end (publish → PUBACK'd manual ack after emit).",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--msgs", type=int, default=5_000)
    ap.add_argument("--out", default="docs/adapters/benchmarks.md")
    a = ap.parse_args()
    import logging
    import tempfile

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        bench_sql(a.rows, Path(d))
    bench_http(min(a.msgs, 3000))
    bench_amqp(a.msgs)
    bench_mqtt(a.msgs)
    bench_nats(a.msgs)
    load = os.getloadavg()
    lines = [
        "# Adapter benchmarks",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `bench/adapters.py --rows {a.rows} --msgs {a.msgs}` on "
        f"{platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
        f"{load[0]:.1f}/{load[1]:.1f}; the machine is shared with other test runs). Every peer is local; each "
        "adapter figure has its floor — the bare client library on the same peer — measured in the same run.",
        "",
        "| adapter | dir | what | records | seconds | records/s |",
        "|---|---|---|---:|---:|---:|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]} |" for r in ROWS]
    lines += ["", "## Reading the numbers", "", *NOTES]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

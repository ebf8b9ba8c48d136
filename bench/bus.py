"""Bus benchmark: esbhub's durable, confirmed bus against raw kombu and Celery, in one run.

    .venv/bin/python bench/bus.py [--count 20000] [--celery-count 3000] [--publishers 4]
                                  [--chunk 50] [--prefetch 256] [--sink set|sqlite]
                                  [--memory-backlog 100000] [--memory-seconds 10] [--skip b,memory]

On the same RabbitMQ, back to back, each scenario with publishers and a consumer running at
once, messages = realistic ``party.v1`` envelopes (~600 bytes of JSON), durable queues:

  (a) raw kombu: ``Producer.publish`` (persistent, **no** publisher confirms) + ``Consumer``
      acking each message — the floor cost of moving bytes through RabbitMQ from Python;
  (b) Celery: one task per message, ``task_acks_late=True`` and
      ``broker_transport_options={"confirm_publish": True}`` (kombu waits for every confirm),
      worker ``-P solo`` in its own process;
  (c) esbhub ``RabbitBroker``: persistent, publisher-confirmed (pipelined, group commit)
      ``publish_many`` from ``--publishers`` threads in chunks of ``--chunk``, consumed with
      ``consume(prefetch)`` into an idempotent sink (a set, or SQLite ``INSERT OR IGNORE``
      committed per message with ``--sink sqlite``), acked after the sink;
  (d) esbhub ``EmbeddedBroker`` (SQLite WAL file), same publishers and sink.

Reported: msgs/s end to end (first publish → last message in the sink), p50/p99 latency
(publish call → sink), ratios c/a and c/b; targets c ≥ 0.7 × a, c ≥ 3 × b, d ≥ 5,000 msg/s.
Memory: ``--memory-backlog`` messages wait in a queue while a worker process consumes them
into a slow sink (1 ms per message) with bounded prefetch; its RSS is sampled (start, peak,
end). Not a test: figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kombu  # noqa: E402

from esbhub.bus.broker import Broker, Delivery  # noqa: E402
from esbhub.bus.envelope import Envelope  # noqa: E402
from esbhub.bus.rabbit import RabbitBroker  # noqa: E402

DEFAULT_URL = os.environ.get("ESBHUB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def payload(i: int) -> dict[str, Any]:
    return {
        "kind": "organization",
        "name": f"华信科技(深圳)有限公司 {i}",
        "uscc": "91440300MA5FXXXX0X",
        "source_system": "billing",
        "source_id": f"B{i:08d}",
        "phones": ["+8675588889999"],
        "addresses": [{"line": "深圳市南山区科技园", "city": "深圳", "province": "广东"}],
        "attributes": {"billing_account": f"A{i}", "monthly_revenue": 12345.67},
    }


def envelopes(n: int) -> list[Envelope]:
    return [Envelope.create("party.v1", payload(i), source="bench") for i in range(n)]


@dataclass
class Result:
    name: str
    n: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds
    note: str = ""
    skipped: str = ""

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: timed out waiting for {what}")
        time.sleep(0.01)


def rabbit_admin(url: str) -> RabbitBroker:
    return RabbitBroker(url, exchange="esbhub.bench", connection_name="esbhub-bench-admin")


# --------------------------------------------------------------------------- consumers (own process)
def consumer_main(kind: str, url: str, queue: str, expect: int, out: str, prefetch: int, sink_kind: str) -> None:
    """A worker process: consume ``queue`` into an idempotent sink until ``expect`` distinct ids
    arrived, then write ``{id: wall time in the sink}`` to ``out``."""
    seen: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp())
    Path(out + ".ready").write_text("1")
    if kind == "raw":
        kq = kombu.Queue(queue, exchange=kombu.Exchange(""), routing_key=queue, durable=True, auto_delete=False)
        with kombu.Connection(url, connect_timeout=5) as conn:
            done = [False]

            def on_message(body: Any, message: kombu.Message) -> None:
                mid = message.headers["id"]
                if mid not in seen:
                    seen[mid] = time.time()
                message.ack()
                if len(seen) >= expect:
                    done[0] = True

            with kombu.Consumer(conn, queues=[kq], callbacks=[on_message], prefetch_count=prefetch,
                                accept=["application/json"]):
                while not done[0]:
                    try:
                        conn.drain_events(timeout=1)
                    except TimeoutError:
                        pass
    else:
        sink = Sink(sink_kind, tmp)
        broker: Broker
        if kind == "rabbit":
            broker = RabbitBroker(url, exchange="esbhub.bench", connection_name="esbhub-bench-worker")
        else:
            from esbhub.bus.embedded import EmbeddedBroker

            broker = EmbeddedBroker(url)
        stop = threading.Event()

        def on_delivery(d: Delivery) -> None:
            if sink.put(d.envelope):
                seen[d.envelope.id] = time.time()
            d.ack()
            if len(seen) >= expect:
                stop.set()

        broker.consume(queue, on_delivery, prefetch=prefetch, stop=stop)
        broker.close()
    Path(out).write_text(json.dumps(seen))


def start_consumer(kind: str, url: str, queue: str, expect: int, prefetch: int, sink_kind: str = "set"
                   ) -> tuple[subprocess.Popen[bytes], Path]:
    out = Path(tempfile.mkdtemp()) / "consumed.json"
    proc = subprocess.Popen([sys.executable, __file__, "--consumer", kind, "--url", url, "--queue", queue,
                             "--expect", str(expect), "--out", str(out), "--prefetch", str(prefetch),
                             "--sink", sink_kind])
    wait_until(lambda: Path(str(out) + ".ready").exists(), 60, "the consumer process")
    time.sleep(0.5)  # let it attach
    return proc, out


def finish_consumer(proc: subprocess.Popen[bytes], out: Path, t_pub: dict[str, float], t0: float, name: str,
                    note: str) -> Result:
    try:
        wait_until(lambda: proc.poll() is not None, 600, f"the consumer of {name}")
    finally:
        if proc.poll() is None:
            proc.kill()
    seen: dict[str, float] = json.loads(out.read_text())
    missing = set(t_pub) - set(seen)
    if missing:
        note += f"; MISSING {len(missing)}"
    lat = [seen[i] - t for i, t in t_pub.items() if i in seen]
    return Result(name, len(seen), max(seen.values()) - t0, lat, note=note)


# --------------------------------------------------------------------------- (a) raw kombu
def bench_raw_kombu(url: str, n: int, prefetch: int) -> Result:
    q = f"bench.raw.{uuid.uuid4().hex[:8]}"
    envs = envelopes(n)
    bodies = [(e.id, e.to_bytes()) for e in envs]
    t_pub: dict[str, float] = {}
    queue = kombu.Queue(q, exchange=kombu.Exchange(""), routing_key=q, durable=True, auto_delete=False)
    with kombu.Connection(url, connect_timeout=5) as conn:
        queue(conn.default_channel).declare()
        proc, out = start_consumer("raw", url, q, n, prefetch)
        try:
            producer = kombu.Producer(conn.default_channel)
            t0 = time.time()
            for mid, body in bodies:
                t_pub[mid] = time.time()
                producer.publish(body, routing_key=q, exchange="", delivery_mode=2, headers={"id": mid},
                                 content_type="application/json", content_encoding="binary", retry=False)
            return finish_consumer(proc, out, t_pub, t0, "(a) raw kombu, no confirms, ack",
                                   f"1 publisher (Producer.publish), consumer process, prefetch {prefetch}")
        finally:
            queue(conn.default_channel).delete()


# --------------------------------------------------------------------------- (b) Celery
def celery_app(url: str, queue: str) -> Any:
    from celery import Celery

    app = Celery("esbhub_bench", broker=url.replace("amqp://", "pyamqp://", 1))
    app.conf.update(
        task_acks_late=True,
        broker_transport_options={"confirm_publish": True},
        task_default_queue=queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        worker_prefetch_multiplier=4,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


def celery_worker_main(url: str, queue: str, expect: int, out: str) -> None:
    """Runs in its own process: a Celery worker whose task is the idempotent sink."""
    app = celery_app(url, queue)
    seen: set[str] = set()
    lat: list[float] = []

    @app.task(name="bench.sink")
    def sink(msg_id: str, t0: float, body: str) -> None:
        if msg_id not in seen:
            seen.add(msg_id)
            lat.append(time.time() - t0)
        if len(seen) >= expect:
            Path(out).write_text(json.dumps({"last": time.time(), "lat": lat}))
            os._exit(0)

    app.worker_main(["worker", "-P", "solo", "-Q", queue, "-l", "warning", "--without-heartbeat",
                     "--without-gossip", "--without-mingle"])


def bench_celery(url: str, n: int) -> Result:
    q = f"bench.celery.{uuid.uuid4().hex[:8]}"
    out = Path(tempfile.mkdtemp()) / "celery.json"
    envs = envelopes(n)
    bodies = [e.to_bytes().decode() for e in envs]
    proc = subprocess.Popen([sys.executable, __file__, "--celery-worker", "--url", url, "--queue", q,
                             "--expect", str(n), "--out", str(out)], stdout=subprocess.DEVNULL)
    admin = rabbit_admin(url)
    try:
        def consumers() -> int:
            try:
                return admin._control(lambda ch: ch.queue_declare(q, passive=True).consumer_count, what="bench")
            except Exception:
                return 0

        wait_until(lambda: consumers() > 0, 60, "the Celery worker")
        app = celery_app(url, q)
        t0 = time.time()
        with app.producer_or_acquire() as producer:
            for e, body in zip(envs, bodies, strict=True):
                app.send_task("bench.sink", args=[e.id, time.time(), body], queue=q, producer=producer)
        wait_until(lambda: out.exists() and proc.poll() is not None, 300, "the Celery worker to finish")
        data = json.loads(out.read_text())
        return Result("(b) Celery task/msg, acks_late, confirm_publish", n, data["last"] - t0, data["lat"])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        admin._control(lambda ch: ch.queue_delete(q), what="bench")
        admin.close()


# --------------------------------------------------------------------------- (c)/(d) esbhub
class Sink:
    """Idempotent sink: a set, or SQLite INSERT OR IGNORE committed per message."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.ids: set[str] = set()
        self.db: sqlite3.Connection | None = None
        if kind == "sqlite":
            self.db = sqlite3.connect(path / "sink.db", check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS sink (id TEXT PRIMARY KEY, body TEXT)")

    def put(self, env: Envelope) -> bool:
        if self.db is not None:
            cur = self.db.execute("INSERT OR IGNORE INTO sink (id, body) VALUES (?, ?)",
                                  (env.id, json.dumps(env.payload)))
            self.db.commit()
            new = cur.rowcount == 1
            if new:
                self.ids.add(env.id)
            return new
        if env.id in self.ids:
            return False
        self.ids.add(env.id)
        return True


def bench_esbhub(name: str, kind: str, url: str, broker: Broker, n: int, publishers: int, chunk: int,
                 prefetch: int, sink_kind: str) -> Result:
    q = f"bench.esbhub.{uuid.uuid4().hex[:8]}"
    broker.connect()
    broker.declare_queue(q, ["party.v1"])
    envs = envelopes(n)
    t_pub: dict[str, float] = {}
    parts = [envs[k::publishers] for k in range(publishers)]

    def publish(part: list[Envelope]) -> None:
        for i in range(0, len(part), chunk):
            batch = part[i:i + chunk]
            now = time.time()
            for e in batch:
                t_pub[e.id] = now
            broker.publish_many(batch, timeout=30)

    proc, out = start_consumer(kind, url, q, n, prefetch, sink_kind)
    try:
        t0 = time.time()
        pts = [threading.Thread(target=publish, args=(p,)) for p in parts]
        for t in pts:
            t.start()
        for t in pts:
            t.join(300)
        note = (f"{publishers} publisher threads × publish_many({chunk}), consumer process, prefetch {prefetch}, "
                f"sink={sink_kind}")
        return finish_consumer(proc, out, t_pub, t0, name, note)
    finally:
        broker.delete_queue(q)
        broker.close()


# --------------------------------------------------------------------------- publish only
def bench_publish_only(url: str, n: int, n_confirm: int, publishers: int, chunk: int, singles: int) -> list[Result]:
    """Publishing alone into one durable queue (the issue's 1,400 vs 22,000 msg/s question):
    call latency = how long a publisher waits until its message is safe (or just written)."""
    q = f"bench.pub.{uuid.uuid4().hex[:8]}"
    admin = rabbit_admin(url)
    admin.declare_queue(q)
    out: list[Result] = []

    def purge() -> None:
        admin._control(lambda ch: ch.queue_purge(q), what="bench")

    try:
        for name, opts, count in (("(p1) kombu Producer.publish, no confirms", {}, n),
                                  ("(p2) kombu Producer.publish, confirm_publish=True", {"confirm_publish": True},
                                   n_confirm)):
            bodies = [e.to_bytes() for e in envelopes(count)]
            lat: list[float] = []
            with kombu.Connection(url, connect_timeout=5, transport_options=opts) as conn:
                producer = kombu.Producer(conn.default_channel)
                t0 = time.perf_counter()
                for body in bodies:
                    t = time.perf_counter()
                    producer.publish(body, routing_key=q, exchange="", delivery_mode=2,
                                     content_type="application/json", content_encoding="binary", retry=False)
                    lat.append(time.perf_counter() - t)
                out.append(Result(name, count, time.perf_counter() - t0, lat, note="1 thread"))
            purge()
        for name, threads, size in ((f"(p3) esbhub publish_many({chunk}), confirmed", publishers, chunk),
                                    ("(p4) esbhub publish(1) per call, confirmed", singles, 1)):
            b = RabbitBroker(url, exchange="esbhub.bench", connection_name="esbhub-bench-pub")
            b.connect()
            envs = envelopes(n)
            parts = [envs[k::threads] for k in range(threads)]
            lat = []
            lock = threading.Lock()

            def run(part: list[Envelope], b: RabbitBroker = b, size: int = size, lat: list[float] = lat,
                    lock: threading.Lock = lock) -> None:
                mine = []
                for i in range(0, len(part), size):
                    t = time.perf_counter()
                    b.publish_many(part[i:i + size], queue=q, timeout=30)
                    mine.append(time.perf_counter() - t)
                with lock:
                    lat.extend(mine)

            ts = [threading.Thread(target=run, args=(p,)) for p in parts]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join(300)
            secs = time.perf_counter() - t0
            batches = b.stats["publish_batches"]
            b.close()
            out.append(Result(name, n, secs, lat, note=f"{threads} threads; {batches} write batches "
                                                       f"({n / max(1, batches):.0f} msgs each)"))
            purge()
    finally:
        admin.delete_queue(q)
        admin.close()
    return out


# --------------------------------------------------------------------------- memory
def rss_worker_main(url: str, queue: str, seconds: float, prefetch: int, sleep: float) -> None:
    """Runs in its own process: consume a long queue into a slow sink, sample RSS."""
    import psutil

    proc = psutil.Process()
    broker = RabbitBroker(url, exchange="esbhub.bench", connection_name="esbhub-bench-rss")
    stop = threading.Event()
    consumed = [0]
    samples: list[int] = [proc.memory_info().rss]

    def slow_sink(d: Delivery) -> None:
        time.sleep(sleep)
        consumed[0] += 1
        d.ack()

    t = threading.Thread(target=broker.consume, args=(queue, slow_sink), kwargs={"prefetch": prefetch, "stop": stop})
    t.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.25)
        samples.append(proc.memory_info().rss)
    stop.set()
    t.join(30)
    broker.close()
    print(json.dumps({"start": samples[1] if len(samples) > 1 else samples[0], "peak": max(samples),
                      "end": samples[-1], "consumed": consumed[0], "samples": len(samples)}))


def bench_memory(url: str, backlog: int, seconds: float, prefetch: int) -> dict[str, Any]:
    q = f"bench.rss.{uuid.uuid4().hex[:8]}"
    b = RabbitBroker(url, exchange="esbhub.bench", connection_name="esbhub-bench-fill")
    b.connect()
    b.declare_queue(q)
    try:
        t0 = time.perf_counter()
        chunks = max(1, backlog // 1000)

        def fill(k: int) -> None:
            for _ in range(k, chunks, 4):
                b.publish_many(envelopes(1000), queue=q, timeout=120)

        fillers = [threading.Thread(target=fill, args=(k,)) for k in range(4)]
        for t in fillers:
            t.start()
        for t in fillers:
            t.join()
        backlog = chunks * 1000
        fill_s = time.perf_counter() - t0
        out = subprocess.run([sys.executable, __file__, "--rss-worker", "--url", url, "--queue", q,
                              "--seconds", str(seconds), "--prefetch", str(prefetch)],
                             capture_output=True, text=True, timeout=seconds + 120)
        data = json.loads(out.stdout.strip().splitlines()[-1])
        data.update(backlog=backlog, fill_rate=backlog / fill_s, waiting_after=b.queue_depth(q), prefetch=prefetch)
        return data
    finally:
        try:
            b.delete_queue(q)
        except Exception as exc:
            print(f"warning: could not delete {q}: {exc}", file=sys.stderr)
        b.close()


# --------------------------------------------------------------------------- main
def table(results: list[Result]) -> str:
    rows = ["| scenario | messages | msgs/s | p50 ms | p99 ms | setup |", "|---|---:|---:|---:|---:|---|"]
    for r in results:
        if r.skipped:
            rows.append(f"| {r.name} | – | skipped | – | – | {r.skipped} |")
        else:
            rows.append(f"| {r.name} | {r.n:,} | {r.rate:,.0f} | {r.pct(50):.1f} | {r.pct(99):.1f} | {r.note} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=DEFAULT_URL, help="RabbitMQ URL")
    ap.add_argument("--count", type=int, default=20000, help="messages for (a), (c), (d)")
    ap.add_argument("--celery-count", type=int, default=3000, help="messages for (b) (it is slow)")
    ap.add_argument("--publishers", type=int, default=4, help="publisher threads for (c), (d)")
    ap.add_argument("--chunk", type=int, default=50, help="envelopes per publish_many call for (c), (d)")
    ap.add_argument("--prefetch", type=int, default=256)
    ap.add_argument("--sink", choices=["set", "sqlite"], default="set")
    ap.add_argument("--memory-backlog", type=int, default=100_000, help="messages waiting for the RSS run")
    ap.add_argument("--memory-seconds", type=float, default=10.0)
    ap.add_argument("--skip", default="", help="comma list of a,b,c,d,publish,memory")
    ap.add_argument("--singles", type=int, default=16, help="threads publishing one message per call in (p4)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="(a), (c), (d) run interleaved this many times; the median round is reported")
    # subprocess modes
    ap.add_argument("--celery-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rss-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--consumer", choices=["raw", "rabbit", "embedded"], help=argparse.SUPPRESS)
    ap.add_argument("--queue", help=argparse.SUPPRESS)
    ap.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.celery_worker:
        celery_worker_main(args.url, args.queue, args.expect, args.out)
        return 0
    if args.consumer:
        consumer_main(args.consumer, args.url, args.queue, args.expect, args.out, args.prefetch, args.sink)
        return 0
    if args.rss_worker:
        rss_worker_main(args.url, args.queue, args.seconds, args.prefetch, 0.001)
        return 0

    import logging

    logging.getLogger().setLevel(logging.WARNING)
    from esbhub.logging import configure

    configure("warning")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    results: dict[str, Result] = {}
    print(f"# bus benchmark {time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {platform.node()} "
          f"({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, Python {platform.python_version()}), "
          f"RabbitMQ at {RabbitBroker(args.url).safe_url}",
          flush=True)
    runs: dict[str, list[Result]] = {"a": [], "c": [], "d": []}
    embedded_cls: Any = None
    if "d" not in skip:
        try:
            from esbhub.bus.embedded import EmbeddedBroker as embedded_cls
        except ImportError as exc:
            results["d"] = Result("(d) esbhub EmbeddedBroker (SQLite WAL)", 0, 0, skipped=f"not available: {exc}")
    for r in range(args.rounds):
        if "a" not in skip:
            runs["a"].append(bench_raw_kombu(args.url, args.count, args.prefetch))
        if "c" not in skip:
            runs["c"].append(bench_esbhub(
                "(c) esbhub RabbitBroker, persistent + confirms", "rabbit", args.url,
                RabbitBroker(args.url, exchange="esbhub.bench", connection_name="esbhub-bench"),
                args.count, args.publishers, args.chunk, args.prefetch, args.sink))
        if "d" not in skip and embedded_cls is not None:
            eurl = f"sqlite:///{Path(tempfile.mkdtemp()) / 'broker.db'}"
            runs["d"].append(bench_esbhub("(d) esbhub EmbeddedBroker (SQLite WAL)", "embedded", eurl,
                                          embedded_cls(eurl), args.count, args.publishers, args.chunk,
                                          args.prefetch, args.sink))
        print(f"round {r + 1}: " + ", ".join(f"{k}={v[-1].rate:,.0f} msg/s" for k, v in runs.items() if v),
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    if "b" not in skip:
        results["b"] = bench_celery(args.url, args.celery_count)
        print(f"b: {results['b'].rate:,.0f} msg/s", flush=True)
    for k, rs in runs.items():
        if rs:
            med = sorted(rs, key=lambda x: x.rate)[len(rs) // 2]
            med.note += f"; median of {len(rs)} rounds: " + " / ".join(f"{x.rate:,.0f}" for x in rs)
            results[k] = med
    results = {k: results[k] for k in "abcd" if k in results}
    print()
    print(table(list(results.values())))
    print()
    a, b, c, d = (results.get(k) for k in "abcd")
    if c and a and a.rate:
        print(f"- c/a = {c.rate / a.rate:.2f} (target ≥ 0.7)")
    if c and b and b.rate:
        print(f"- c/b = {c.rate / b.rate:.1f} (target ≥ 3)")
    if d and not d.skipped:
        print(f"- d = {d.rate:,.0f} msg/s (target ≥ 5,000)")
    if "publish" not in skip:
        pubs = bench_publish_only(args.url, args.count, min(args.count, args.celery_count), args.publishers,
                                  args.chunk, args.singles)
        print()
        print("Publishing only (durable queue, persistent; latency = one publish call):")
        print()
        print(table(pubs))
        print()
        p1, p2, p3, p4 = pubs
        print(f"- confirmed esbhub vs unconfirmed kombu: p3/p1 = {p3.rate / p1.rate:.2f}, p4/p1 = {p4.rate / p1.rate:.2f}; "
              f"vs kombu confirm_publish: p3/p2 = {p3.rate / p2.rate:.1f}")
        print("- (p1) measures writes into the socket: nothing says RabbitMQ stored them (it queues them in its "
              "mailboxes and applies flow control later); (p2)-(p4) count only messages RabbitMQ confirmed as "
              "persisted. The end-to-end table above compares like with like.")
    if "memory" not in skip:
        m = bench_memory(args.url, args.memory_backlog, args.memory_seconds, 64)
        mb = 1024 * 1024
        print(f"- memory: {m['backlog']:,} messages waiting, worker consuming into a 1 ms/message sink with "
              f"prefetch {m['prefetch']} for {args.memory_seconds:g} s ({m['consumed']:,} consumed): RSS start "
              f"{m['start'] / mb:.1f} MB, peak {m['peak'] / mb:.1f} MB, end {m['end'] / mb:.1f} MB "
              f"({m['samples']} samples); still waiting {m['waiting_after']:,} (backlog filled at "
              f"{m['fill_rate']:,.0f} confirmed msgs/s by 4 threads × publish_many(1000))")
    return 0


if __name__ == "__main__":
    sys.exit(main())

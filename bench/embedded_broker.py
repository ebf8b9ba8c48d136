"""Embedded broker throughput, against kombu's stock SQLite/filesystem transports, in one run.

    .venv/bin/python bench/embedded_broker.py [--n 20000] [--baseline-n 2000]

Measures (msgs/s, envelopes of a realistic party.v1 payload, durable on a local file):
  * EmbeddedBroker (direct on the engine): publish (1 thread, single publishes; 8 threads,
    single publishes → group commit; batches of 100), consume+ack, end to end
    (publishers and a consumer running at once) with p50/p99 latency;
  * the same engine through kombu (``esbsqlite://``: Producer.publish / Consumer.drain_events);
  * kombu stock ``sqla+sqlite://`` and ``filesystem://`` end to end (smaller n: they are slow);
and prints the ratios. Not a test: numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import kombu
from bus import envelopes  # bench/bus.py: the same party.v1 messages as the bus benchmark

import esbhub.bus.sqlite_transport  # noqa: F401 — registers esbsqlite://
from esbhub.bus.broker import Delivery
from esbhub.bus.embedded import EmbeddedBroker
from esbhub.bus.envelope import Envelope
from esbhub.logging import configure as configure_logging


def rate(n: int, secs: float) -> float:
    return n / secs if secs > 0 else float("inf")


def run_threads(fns: list[Callable[[], None]]) -> float:
    ts = [threading.Thread(target=f) for f in fns]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


# ---------------------------------------------------------------- EmbeddedBroker (direct)
def bench_direct(tmp: Path, n: int, **options: object) -> dict[str, float]:
    out: dict[str, float] = {}
    url = f"sqlite:///{tmp / f'direct{time.monotonic_ns()}.db'}"
    b = EmbeddedBroker(url, **options)
    b.declare_queue("bench", ["party.*"])
    envs = envelopes(n)

    t0 = time.perf_counter()
    for e in envs:
        b.publish(e)
    out["publish_1thread"] = rate(n, time.perf_counter() - t0)

    def consume_all(count: int, lat: list[float] | None = None, sent: dict[str, float] | None = None) -> float:
        stop = threading.Event()
        got = [0]

        def cb(d: Delivery) -> None:
            if lat is not None and sent is not None:
                lat.append(time.perf_counter() - sent[d.envelope.id])
            d.ack()
            got[0] += 1
            if got[0] >= count:
                stop.set()

        t = time.perf_counter()
        b.consume("bench", cb, prefetch=64, stop=stop)
        return time.perf_counter() - t

    out["consume"] = rate(n, consume_all(n))

    k = 8
    secs = run_threads([lambda j=j: [b.publish(e) for e in envs[j::k]] for j in range(k)])
    out["publish_8threads"] = rate(n, secs)
    consume_all(n)

    t0 = time.perf_counter()
    for i in range(0, n, 100):
        b.publish_many(envs[i : i + 100])
    out["publish_batch100"] = rate(n, time.perf_counter() - t0)
    consume_all(n)

    # end to end: 4 publisher threads (single publishes, like HTTP requests) + 1 consumer
    fresh = envelopes(n)
    sent: dict[str, float] = {}
    lat: list[float] = []

    def pub(j: int) -> None:
        for e in fresh[j::4]:
            sent[e.id] = time.perf_counter()
            b.publish(e)

    res: dict[str, float] = {}
    consumer = threading.Thread(target=lambda: res.setdefault("c", consume_all(n, lat, sent)))
    t0 = time.perf_counter()
    consumer.start()
    pubs = [threading.Thread(target=pub, args=(j,)) for j in range(4)]
    for t in pubs:
        t.start()
    for t in pubs:
        t.join()
    consumer.join()
    out["e2e"] = rate(n, time.perf_counter() - t0)
    lat.sort()
    out["e2e_p50_ms"] = statistics.median(lat) * 1000
    out["e2e_p99_ms"] = lat[int(len(lat) * 0.99) - 1] * 1000
    assert b.queue_depth("bench") == 0
    b.close()
    return out


# ---------------------------------------------------------------- separate processes
def child_consume(url: str, queue: str) -> None:
    """A worker process: consume + parse + ack until SIGTERM."""
    configure_logging("warning")
    b = EmbeddedBroker(url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    b.consume(queue, lambda d: d.ack(), prefetch=64, stop=stop)
    b.close()


def bench_processes(tmp: Path, n: int, consumers: int, publishers: int = 4) -> dict[str, float]:
    """The deployment shape: an API process publishing from threads, worker processes consuming."""
    url = f"sqlite:///{tmp / f'procs{time.monotonic_ns()}.db'}"
    b = EmbeddedBroker(url)
    b.declare_queue("bench", ["party.*"])
    kids = [subprocess.Popen([sys.executable, __file__, "--child-consume", url, "bench"]) for _ in range(consumers)]
    envs = envelopes(n)
    try:
        # consumers are up when they registered as owners
        deadline = time.monotonic() + 60
        while True:
            with b.store.reader() as c:
                if c.execute("SELECT count(*) FROM owners").fetchone()[0] >= consumers:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("consumer processes did not start")
            time.sleep(0.01)
        t0 = time.perf_counter()
        pub = run_threads([lambda j=j: [b.publish(e) for e in envs[j::publishers]] for j in range(publishers)])
        while b.queue_depth("bench") > 0:
            time.sleep(0.001)
        total = time.perf_counter() - t0
    finally:
        for k in kids:
            k.send_signal(signal.SIGTERM)
        for k in kids:
            k.wait(30)
        b.close()
    return {"publish": rate(n, pub), "e2e": rate(n, total)}


# ---------------------------------------------------------------- through kombu
def bench_kombu_e2e(url: str, n: int, *, envelope_bodies: bool, transport_options: dict | None = None) -> dict[str, float]:
    """Publisher thread (own connection) + consumer thread (own connection), ack each."""
    ex = kombu.Exchange("bench", type="topic", durable=True)
    q = kombu.Queue("bench_q", exchange=ex, routing_key="party.*", durable=True)
    envs = envelopes(n)
    bodies = [e.to_bytes() for e in envs]
    topts = transport_options or {}
    with kombu.Connection(url, transport_options=topts) as c:
        q(c.default_channel).declare()
    got = [0]
    done = threading.Event()
    ready = threading.Event()

    errors: list[str] = []

    def consume() -> None:
        try:
            consume_all()
        except Exception as e:  # a baseline that breaks under load is reported, not hung on
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
        finally:
            ready.set()
            done.set()

    def consume_all() -> None:
        with kombu.Connection(url, transport_options=topts) as c:

            def cb(body: object, m: kombu.Message) -> None:
                if envelope_bodies:
                    Envelope.from_bytes(m.body)
                m.ack()
                got[0] += 1

            with kombu.Consumer(c, [q], callbacks=[cb], prefetch_count=64, accept=["json"]):
                ready.set()
                while got[0] < n and not errors:
                    try:
                        c.drain_events(timeout=1)
                    except TimeoutError:
                        pass

    def publish() -> None:
        with kombu.Connection(url, transport_options=topts) as c:
            q(c.default_channel).declare()  # stock transports keep bindings per connection
            p = kombu.Producer(c.default_channel, exchange=ex)
            for body in bodies:
                p.publish(body, routing_key="party.v1", content_type="application/json", content_encoding="utf-8")

    ct = threading.Thread(target=consume)
    ct.start()
    ready.wait(30)
    pub_secs = [0.0]

    def timed_publish() -> None:
        t = time.perf_counter()
        try:
            publish()
        except Exception as e:
            errors.append(f"publish {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        pub_secs[0] = time.perf_counter() - t

    t0 = time.perf_counter()
    pt = threading.Thread(target=timed_publish)
    pt.start()
    pt.join()
    done.wait(600)
    total = time.perf_counter() - t0
    ct.join()
    if errors:
        return {"publish": rate(n, pub_secs[0]), "e2e": got[0] / total, "error": errors[0]}  # type: ignore[dict-item]
    return {"publish": rate(n, pub_secs[0]), "e2e": rate(n, total)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="messages per embedded measurement")
    ap.add_argument("--baseline-n", type=int, default=2_000, help="messages per stock kombu transport measurement")
    ap.add_argument("--dir", default=None, help="directory for the database files (default: a temp dir)")
    ap.add_argument("--child-consume", nargs=2, metavar=("URL", "QUEUE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_consume:
        child_consume(*args.child_consume)
        return
    configure_logging("warning")
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="esbhub-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)

    print(f"# embedded broker bench {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}, kombu {kombu.__version__}, "
          f"SQLite {__import__('sqlite3').sqlite_version}, files in {tmp}")

    direct = bench_direct(tmp, args.n)
    for k, v in direct.items():
        unit = "ms" if k.endswith("_ms") else "msg/s"
        print(f"embedded direct    {k:18s} {v:10.1f} {unit}")

    full = bench_direct(tmp, args.n // 2, synchronous="FULL")
    print(f"embedded synchronous=FULL (power-loss safe): publish 1 thread {full['publish_1thread']:.1f}, "
          f"8 threads {full['publish_8threads']:.1f}, e2e {full['e2e']:.1f} msg/s")

    for consumers in (1, 2):
        mp = bench_processes(tmp, args.n, consumers)
        print(f"embedded processes 4 pub threads + {consumers} consumer proc: publish {mp['publish']:10.1f} msg/s, "
              f"e2e {mp['e2e']:10.1f} msg/s")
        direct[f"e2e_procs{consumers}"] = mp["e2e"]

    via_kombu = bench_kombu_e2e(f"esbsqlite:///{tmp / 'kombu.db'}", args.n, envelope_bodies=True)
    print(f"embedded via kombu publish            {via_kombu['publish']:10.1f} msg/s")
    print(f"embedded via kombu e2e                {via_kombu['e2e']:10.1f} msg/s"
          + (f"  FAILED: {via_kombu['error']}" if "error" in via_kombu else ""))

    sqla = bench_kombu_e2e(
        f"sqla+sqlite:///{tmp / 'sqla.db'}",
        args.baseline_n,
        envelope_bodies=True,
        transport_options={"connect_args": {"timeout": 30}},  # its default 5 s lock wait fails under load
    )
    print(f"kombu sqla+sqlite  e2e                {sqla['e2e']:10.1f} msg/s  (n={args.baseline_n})"
          + (f"  FAILED: {sqla['error']}" if "error" in sqla else ""))
    fs_dir = tmp / "fs"
    fs_dir.mkdir(exist_ok=True)
    fs = bench_kombu_e2e(
        "filesystem://",
        args.baseline_n,
        envelope_bodies=True,
        transport_options={"data_folder_in": str(fs_dir), "data_folder_out": str(fs_dir), "store_processed": False,
                           "control_folder": str(fs_dir / "control")},
    )
    print(f"kombu filesystem   e2e                {fs['e2e']:10.1f} msg/s  (n={args.baseline_n})"
          + (f"  FAILED: {fs['error']}" if "error" in fs else ""))

    print("# ratios")
    print(f"direct e2e / target 5,000          {direct['e2e'] / 5000:6.2f}x")
    print(f"processes e2e (1 consumer) / 5,000 {direct['e2e_procs1'] / 5000:6.2f}x")
    print(f"direct e2e / via kombu e2e         {direct['e2e'] / via_kombu['e2e']:6.2f}x")
    print(f"direct e2e / sqla+sqlite e2e       {direct['e2e'] / sqla['e2e']:6.1f}x")
    print(f"direct e2e / filesystem e2e        {direct['e2e'] / fs['e2e']:6.1f}x")
    print(f"publish 8 threads / 1 thread       {direct['publish_8threads'] / direct['publish_1thread']:6.2f}x (group commit)")


if __name__ == "__main__":
    main()

"""Route engine benchmark: per-step overhead and routed vs bare-bus throughput, in one run.

    .venv/bin/python bench/routes.py [--engine-count 20000] [--bus-count 5000] [--broker sqlite|amqp://…]

The route (5 steps): validate (party.v1) → filter → map (10 fields) → choice (2 branches) → sink.

1. Engine alone (no broker): µs per message for the route cut after 0…5 steps; the difference
   between consecutive cuts is that step's overhead. Target: ≤ 50 µs per step.
2. Through the bus (same broker, same Worker, concurrency 1, dedup on, back to back): N messages
   pre-loaded in the subscription's queue; time until all N are in the output queue.
   * bare bus: a handler that republishes the message unchanged to the output topic;
   * routed:   the route's handler (the engine + its bus sink).
   Both run twice: one message at a time (batch_max 1) and with micro-batched consumers
   (``--batch-max``, the routes' default 32) on BOTH sides — the ratio compares like with like.
   Target: routed ≥ 0.8 × bare msgs/s.

Not a test: figures go to docs/routes.md ("Benchmark").
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esbhub.bus.broker import create_broker  # noqa: E402
from esbhub.bus.envelope import Envelope  # noqa: E402
from esbhub.bus.store import BusStore  # noqa: E402
from esbhub.bus.worker import Subscription, Worker, queue_for  # noqa: E402
from esbhub.config import Settings  # noqa: E402
from esbhub.db import upgrade  # noqa: E402
from esbhub.routes.engine import CompiledRoute  # noqa: E402
from esbhub.routes.loader import load_text  # noqa: E402
from esbhub.routes.runtime import RouteHandler, RouteRuntime  # noqa: E402

STEPS = [
    "  - type: validate\n",
    "  - type: filter\n    if: \"payload.attributes.monthly_revenue != null\"\n",
    "  - type: map\n    set:\n"
    + "".join(
        f"      {t}: {e}\n"
        for t, e in [
            ("payload.customer_key", "join(':', [payload.source_system, payload.source_id])"),
            ("payload.display_name", "upper(payload.name)"),
            ("payload.revenue", "to_number(payload.attributes.monthly_revenue)"),
            ("payload.account", "payload.attributes.billing_account"),
            ("payload.manager", "payload.attributes.account_manager"),
            ("payload.region", "payload.province"),
            ("payload.city_name", "payload.city"),
            ("headers.customer", "payload.source_id"),
            ("headers.system", "payload.source_system"),
            ("payload.is_org", "payload.kind == 'organization'"),
        ]
    ),
    "  - type: choice\n    when:\n      - if: \"payload.revenue >= `100000`\"\n        steps:\n"
    "          - type: map\n            values: {headers.tier: gold}\n    otherwise:\n      steps: []\n",
]
STEP_NAMES = ["validate", "filter", "map (10 fields)", "choice", "sink (bus topic)"]


def route_text(n_steps: int, name: str = "bench", batch_max: int = 1) -> str:
    steps = "".join(STEPS[: min(n_steps, 4)])
    to = "to: [{topic: bench.out.v1}]\n" if n_steps >= 5 else "to: []\n"
    head = f"name: {name}\nbatch_max: {batch_max}\nfrom: {{topic: party.v1}}\n"
    return f"{head}steps:\n{steps or '  []'}\n{to}".replace("steps:\n  []", "steps: []")


def payload(i: int) -> dict[str, Any]:
    return {
        "kind": "organization",
        "source_system": "billing",
        "source_id": f"C{i:07d}",
        "name": f"华信科技(深圳)有限公司 {i}",
        "province": "广东省",
        "city": "深圳市",
        "attributes": {"monthly_revenue": 50_000 + (i % 10) * 20_000, "billing_account": f"A{i}", "account_manager": "王经理"},
    }


def compile_route(n_steps: int) -> CompiledRoute:
    res = load_text(route_text(n_steps), "bench.yaml")
    res.raise_for_errors()
    return CompiledRoute(res.routes[0].route, 1)


def engine_bench(count: int, rounds: int = 5) -> list[float]:
    """CPU time (process_time: robust when other processes share the machine), best of ``rounds``,
    the cuts interleaved so a noisy moment hits them all alike."""
    envs = [Envelope.create("party.v1", payload(i), source="bench") for i in range(count)]
    routes = [compile_route(k) for k in range(6)]
    for cr in routes:
        for e in envs[:500]:  # warm caches
            cr.run(e)
    best = [float("inf")] * 6
    for _ in range(rounds):
        for k, cr in enumerate(routes):
            t0 = time.process_time()
            for e in envs:
                cr.run(e)
            best[k] = min(best[k], (time.process_time() - t0) / count * 1e6)
    return best


def _worker(broker_url: str, db_url: str, ex: str, name: str, routed: bool, batch_max: int) -> tuple[Any, Any, Any]:
    """A Worker consuming ``name``'s queue with the bare or the routed handler."""
    broker = create_broker(broker_url, exchange=ex)
    broker.connect()
    store = BusStore(db_url)
    settings = Settings(data_dir=Path(tempfile.mkdtemp()), database_url=db_url, broker_url=broker_url, exchange=ex)
    if routed:
        rt = RouteRuntime(settings, broker, store, watch=False)
        res = load_text(route_text(5, name, batch_max), "bench.yaml")
        res.raise_for_errors()
        cr = CompiledRoute(res.routes[0].route, 1, rt.deps)
        rh = RouteHandler(rt, cr)
        sub = Subscription(name, [], rh, batch_handler=rh.batch if batch_max > 1 else None, batch_max=batch_max)
    else:

        def bare(env: Envelope, ctx: Any) -> None:
            ctx.publish(env, routing_key="bench.out.v1")

        def bare_batch(items: Any) -> None:
            for env, ctx in items:
                bare(env, ctx)

        sub = Subscription(name, [], bare, batch_handler=bare_batch if batch_max > 1 else None, batch_max=batch_max)
    return Worker(broker, store, [sub], settings), broker, store


def _worker_process(args: tuple[Any, ...], ready: Any, go: Any, done: Any) -> None:
    from esbhub.logging import configure

    configure("info")
    w, broker, store = _worker(*args)
    ready.set()
    go.wait()
    w.start()
    done.wait()
    w.stop(10)
    store.close()
    broker.close()


def bus_run(broker_url: str, db_url: str, count: int, routed: bool, batch_max: int = 1, processes: int = 1) -> float:
    """msgs/s of ``processes`` worker processes (1: this process) draining ``count`` pre-loaded messages."""
    import multiprocessing as mp

    ex = "bench" + uuid.uuid4().hex[:8]
    broker = create_broker(broker_url, exchange=ex)
    broker.connect()
    name = "bench_" + ("routed" if routed else "bare") + uuid.uuid4().hex[:6]
    out_q = f"{name}.out"
    broker.declare_queue(out_q, ["bench.out.v1"])
    broker.declare_queue(queue_for(name), [])
    envs = [Envelope.create("party.v1", payload(i), source="bench") for i in range(count)]
    for i in range(0, count, 500):
        broker.publish_many(envs[i : i + 500], queue=queue_for(name), timeout=60)
    args = (broker_url, db_url, ex, name, routed, batch_max)
    if processes == 1:
        w, wb, store = _worker(*args)
        t0 = time.perf_counter()
        w.start()
        while broker.queue_depth(out_q) < count:
            time.sleep(0.02)
        dt = time.perf_counter() - t0
        w.stop(10)
        store.close()
        wb.close()
    else:
        ctx = mp.get_context("spawn")
        go, done = ctx.Event(), ctx.Event()
        readies = [ctx.Event() for _ in range(processes)]
        procs = [ctx.Process(target=_worker_process, args=(args, r, go, done)) for r in readies]
        for pr in procs:
            pr.start()
        for r in readies:
            if not r.wait(120):
                raise RuntimeError("a worker process did not start")
        t0 = time.perf_counter()
        go.set()
        while broker.queue_depth(out_q) < count:
            time.sleep(0.02)
        dt = time.perf_counter() - t0
        done.set()
        for pr in procs:
            pr.join(60)
    for q in (out_q, queue_for(name)):
        broker.delete_queue(q)
    broker.close()
    return count / dt


def _fresh_pg_database(server_url: str) -> str:
    import sqlalchemy as sa

    name = "esbhub_bench_" + uuid.uuid4().hex[:8]
    admin = sa.create_engine(server_url.rstrip("/") + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server_url.rstrip("/") + "/" + name


def _drop_pg_database(server_url: str, db_url: str) -> None:
    import sqlalchemy as sa

    from esbhub.db import _engines

    for url, eng in list(_engines.items()):
        if url == db_url:
            eng.dispose()
    admin = sa.create_engine(server_url.rstrip("/") + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine-count", type=int, default=20000)
    ap.add_argument("--bus-count", type=int, default=5000)
    ap.add_argument("--bus-rounds", type=int, default=5)
    ap.add_argument("--batch-max", type=int, default=32,
                    help="also run both scenarios with micro-batched consumers (Subscription.batch_max; 1 = off)")
    ap.add_argument("--database", default="sqlite",
                    help="the bus store: 'sqlite' (temp file) or a PostgreSQL server URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432 "
                    "(a fresh database is created on it)")
    ap.add_argument("--processes", type=int, default=1, help="worker processes sharing the queue (competing consumers)")
    ap.add_argument("--broker", default="sqlite", help="'sqlite' (embedded, temp file) or an amqp:// URL")
    ap.add_argument("--log-level", default="info",
                    help="as a worker runs (default info; structlog unconfigured would render every per-message debug line)")
    a = ap.parse_args()
    from esbhub.logging import configure

    configure(a.log_level)

    print(f"# route engine benchmark — Python {platform.python_version()}, {platform.machine()}")
    per_msg = engine_bench(a.engine_count)
    print(f"\n## Engine alone (CPU µs per message, best of 5 rounds of {a.engine_count} messages)\n")
    print("| route cut after | µs/msg | step overhead µs |")
    print("|---|---|---|")
    print(f"| 0 steps (copy in, no sink) | {per_msg[0]:.1f} | — |")
    for k in range(1, 6):
        print(f"| + {STEP_NAMES[k - 1]} | {per_msg[k]:.1f} | {per_msg[k] - per_msg[k - 1]:.1f} |")
    worst = max(per_msg[k] - per_msg[k - 1] for k in range(1, 6))
    print(f"\nworst step: {worst:.1f} µs (target ≤ 50) → {'OK' if worst <= 50 else 'MISSED'}")

    tmp = Path(tempfile.mkdtemp(prefix="esbhub-bench-routes-"))
    db = f"sqlite:///{tmp / 'hub.db'}" if a.database == "sqlite" else _fresh_pg_database(a.database)
    upgrade(db)
    burl = f"sqlite:///{tmp / 'broker.db'}" if a.broker == "sqlite" else a.broker
    import statistics

    modes = [1, a.batch_max] if a.batch_max > 1 else [1]
    runs: dict[tuple[str, int], list[float]] = {(k, bm): [] for k in ("bare", "routed") for bm in modes}
    for _ in range(a.bus_rounds):  # interleaved: load from other processes hits every scenario alike
        for bm in modes:
            runs["bare", bm].append(bus_run(burl, db, a.bus_count, routed=False, batch_max=bm, processes=a.processes))
            runs["routed", bm].append(bus_run(burl, db, a.bus_count, routed=True, batch_max=bm, processes=a.processes))
    store = "SQLite" if a.database == "sqlite" else "PostgreSQL"
    print(f"\n## Through the bus ({'embedded SQLite' if a.broker == 'sqlite' else a.broker}, bus store {store}, {a.bus_count} messages, "
          f"{a.processes} worker process(es) with 1 consumer each, dedup on; median of {a.bus_rounds} interleaved runs)\n")
    print("| consumer | bare msgs/s | routed msgs/s | routed / bare (median of pairwise ratios) |")
    print("|---|---:|---:|---:|")
    verdict = {}
    for bm in modes:
        bares, routeds = runs["bare", bm], runs["routed", bm]
        ratio = statistics.median(rt / bb for rt, bb in zip(routeds, bares, strict=True))
        verdict[bm] = ratio
        label = "one message at a time (batch_max 1)" if bm == 1 else f"micro-batches (batch_max {bm}), both sides"
        print(f"| {label} | {statistics.median(bares):,.0f} | {statistics.median(routeds):,.0f} | {ratio:.2f} |")
    for (kind, bm), xs in runs.items():
        print(f"runs {kind} batch_max={bm}: {', '.join(f'{x:,.0f}' for x in xs)}")
    for bm, ratio in verdict.items():
        print(f"batch_max {bm}: routed / bare = {ratio:.2f} (target ≥ 0.8) → {'OK' if ratio >= 0.8 else 'MISSED'}")
    if a.batch_max > 1:
        print(f"routed batched / bare one-at-a-time = "
              f"{statistics.median(runs['routed', a.batch_max]) / statistics.median(runs['bare', 1]):.2f}")
    if a.database != "sqlite":
        _drop_pg_database(a.database, db)


if __name__ == "__main__":
    main()

"""The MDM real-time path at scale: one ``party.v1`` change at a time against a large store.

    .venv/bin/python bench/mdm_realtime.py build --companies 43000 --db /tmp/rt/mdm150k.db
    .venv/bin/python bench/mdm_realtime.py run --db /tmp/rt/mdm150k.db [--rate 500] [--seconds 20]
    .venv/bin/python bench/mdm_realtime.py run --db /tmp/mdm1m/hub.db \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/mdm1m_copy

With ``--database-url`` the store is that database (PostgreSQL: the hub's production store; the
bus state goes there too, as in a deployment on it) and ``--db`` is only read, for the stream:
a SQLite store holding the same records (the same file loaded into both), so that SQLite and
PostgreSQL take the same stream.

``build`` fills an MDM store with synthetic Chinese enterprise records (``esbhub.mdm.synth``)
through ``MdmService.ingest_many`` in batches — the path ``esbhub mdm load --batches`` takes (a
real-time store is built the way records arrive; an initial load into an empty store goes set at a
time, ``esbhub.mdm.bulk``).

``run`` adds records and versions to the store (a real-time stream does): give it a copy. In
one process, as ``esbhub worker`` does (the offered load comes from a second process, as from
the API):

* the store's matcher index is loaded first (a restarted worker does it; its time is reported);
* a stream of realistic changes is made from records in the store: ~70 % a changed version of
  an existing source record (phone, address, revenue, status, contact), ~20 % a new source
  record of an existing company (another system's key, same name/USCC with noise), ~10 % a
  brand-new company;
* (a) **latency** — a publisher thread offers ``--rate`` records/s (paced, not bursts) through
  the embedded broker to a real :class:`~esbhub.bus.worker.Worker` running the MDM
  subscription; latency = arrival (the publish returned: durably queued) → committed (the
  ``party.golden.*`` event of that record is durably on the bus, i.e. the MDM transaction
  committed and the worker published its outbox). Records that produce no event (an
  unchanged version) are not counted;
* (b) **saturation** — a backlog of ``--backlog`` records published first, then drained by
  the worker: records/s from the first handler call to the last commit;
* (d) **direct** (``--direct``) — the MDM transaction alone, without the bus: records one per
  ``MdmService.ingest_many`` call (the issue's "incremental match + merge of one record": wall
  time per call, p50/p99) and in batches of ``--batch-max`` (records/s), with the process's CPU
  time per record;
* (c) **baseline** — the same (a) and (b) with batching off (``batch_max=1``: one record per
  MDM transaction, today's per-message path), interleaved with the batched runs
  (baseline, batched, baseline, batched …) so machine load hits both alike.

Batch sizes seen are counted per handler call. Load average is printed with every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def loadavg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def probe() -> float:
    """Seconds for a fixed pure-Python loop: how fast this (shared, drifting) machine is right now,
    so that runs at different times can be told apart."""
    t = time.perf_counter()
    s = 0
    for i in range(10_000_000):
        s += i * i
    return time.perf_counter() - t


# ------------------------------------------------------------------------------ build
def build(companies: int, seed: int, db: Path, batch: int) -> None:
    """Synthetic records → ``MdmService.ingest_many`` in batches (``esbhub mdm load --batches``)."""
    from esbhub.mdm.loader import envelope_id_for
    from esbhub.mdm.service import MdmService
    from esbhub.mdm.synth import generate

    db.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds = generate(companies, seed=seed)
    records = ds.records
    print(f"generated {len(records)} records from {companies} companies in {time.perf_counter() - t0:.0f} s",
          flush=True)
    svc = MdmService(f"sqlite:///{db}")
    t0 = time.perf_counter()
    for i in range(0, len(records), batch):
        svc.ingest_many([(p, envelope_id_for(p), None) for p in records[i : i + batch]])
        if (i // batch) % 40 == 0:
            print(f"  {i + batch} records, {(i + batch) / (time.perf_counter() - t0):,.0f}/s, load {loadavg()}",
                  flush=True)
    dt = time.perf_counter() - t0
    print(f"loaded {len(records)} records in {dt:.0f} s ({len(records) / dt:,.0f}/s), load {loadavg()}", flush=True)


# ------------------------------------------------------------------------------ stream
SYSTEMS = ("billing", "crm", "resource", "bank")


def make_stream(db: Path, n: int, seed: int, tag: str) -> list[bytes]:
    """``n`` party.v1 envelopes (bytes): ~70 % changed versions of stored source records, ~20 %
    new source records of stored companies, ~10 % brand-new companies."""
    import sqlite3

    from esbhub.bus.envelope import Envelope
    from esbhub.mdm.synth import generate
    from esbhub.schemas.party import Party

    rng = random.Random(seed)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    top = con.execute("SELECT max(rowid) FROM mdm_xref").fetchone()[0]
    n_new = max(1, n // 10)
    fresh = generate(max(1, n_new // 3), seed=seed + 1000).records[:n_new]
    now = datetime.now(UTC)
    used: set[str] = set()
    out: list[bytes] = []
    k_new = 0
    for i in range(n):
        r = rng.random()
        if r < 0.1 and k_new < len(fresh):
            d = fresh[k_new].model_dump(mode="json")
            d["source_id"] = f"NW{tag}{k_new:07d}"
            d["parent_source_id"] = None
            k_new += 1
        else:
            while True:
                row = con.execute("SELECT source_system, source_id, raw FROM mdm_xref WHERE rowid = ? AND deleted = 0",
                                  (rng.randint(1, top),)).fetchone()
                if row is not None and f"{row[0]}:{row[1]}" not in used:
                    break
            used.add(f"{row[0]}:{row[1]}")
            d = json.loads(row[2])
            if r < 0.3:  # another system's record of this company
                d["source_system"] = rng.choice([s for s in SYSTEMS if s != d["source_system"]])
                d["source_id"] = f"RT{tag}{i:07d}"
                d["parent_source_id"] = None
                d["attributes"] = {}
            else:  # a changed version of this record
                what = rng.random()
                if what < 0.3:
                    d["phones"] = [*d.get("phones", [])[:2], {"kind": "mobile", "number": f"13{rng.randint(0, 999999999):09d}"}]
                elif what < 0.5:
                    d["status"] = "suspended" if d.get("status") != "suspended" else "active"
                elif what < 0.7:
                    d["addresses"] = [{"kind": "office", "text": f"{d.get('city') or ''}高新区创业路{rng.randint(1, 999)}号"}]
                elif what < 0.9:
                    attrs = dict(d.get("attributes") or {})
                    attrs["monthly_revenue"] = str(rng.randint(1_000, 3_000_000))
                    d["attributes"] = attrs
                else:
                    d["emails"] = [f"it{rng.randint(1, 99999)}@example.cn"]
        d["source_updated_at"] = (now + timedelta(microseconds=i)).isoformat()
        p = Party.model_validate(d)
        out.append(Envelope.create("party.v1", p.model_dump(mode="json", exclude_none=True),
                                   source=p.source_system).to_bytes())
    con.close()
    rng.shuffle(out)
    return out


# ------------------------------------------------------------------------------ run
def _publisher(url: str, exchange: str, bodies: list[bytes], rate: float, t0: float, out: Any) -> None:
    """Offer ``bodies`` at ``rate``/s on a fixed schedule (open loop: a slow consumer does not
    slow the arrivals), from its own process like the API does."""
    from esbhub.bus.broker import create_broker
    from esbhub.bus.envelope import Envelope

    b = create_broker(url, exchange=exchange)
    b.connect()
    lag = 0.0
    for i, body in enumerate(bodies):
        t = t0 + i / rate
        d = t - time.time()
        if d > 0:
            time.sleep(d)
        else:
            lag = max(lag, -d)
        b.publish(Envelope.from_bytes(body))
    b.close()
    out.put(lag)


def _redacted(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).render_as_string(hide_password=True)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")


class Bench:
    def __init__(self, db: Path, work: Path, database_url: str | None = None) -> None:
        from esbhub.bus.broker import create_broker
        from esbhub.bus.store import BusStore
        from esbhub.config import Settings
        from esbhub.mdm.service import service_for

        done: dict[str, float] = {}

        class TimedStore(BusStore):
            """Stamps the moment the worker records a message delivered: its MDM transaction
            committed and its events were published durably (what "committed" means here)."""

            def record_state(self, message_id: str, subscription: str, state: str, *a: Any, **kw: Any) -> None:
                if state == "delivered":
                    done[message_id] = time.time()
                super().record_state(message_id, subscription, state, *a, **kw)

        work.mkdir(parents=True, exist_ok=True)
        self.db = db
        self.done = done
        self.settings = Settings(data_dir=work, database_url=database_url or f"sqlite:///{db}", log_level="warning")
        self.broker_url = f"sqlite:///{work / 'broker.db'}"
        self.broker = create_broker(self.broker_url, exchange="bench")
        self.broker.connect()
        t = time.perf_counter()
        self.svc = service_for(self.settings)
        self.svc._ensure_index()
        self.index_s = time.perf_counter() - t
        self.n_index = len(self.svc.matcher)
        self.store = TimedStore(self.settings.effective_database_url)

    def _worker(self, batch_max: int) -> tuple[Any, list[int]]:
        from esbhub.bus.worker import Worker
        from esbhub.mdm import realtime

        sizes: list[int] = []
        self.first_call: list[float] = []  # when the handler was first called (the worker is up)
        [sub] = realtime.subscriptions(self.settings, self.broker, batch_max=batch_max)
        inner_batch, inner_one = sub.batch_handler, sub.handler

        def batch(items: Any) -> Any:
            if not self.first_call:
                self.first_call.append(time.time())
            sizes.append(len(items))
            return inner_batch(items)

        def one(env: Any, ctx: Any) -> Any:
            if not self.first_call:
                self.first_call.append(time.time())
            sizes.append(1)
            return inner_one(env, ctx)

        sub.batch_handler, sub.handler = batch, one
        self.broker.declare_queue(sub.queue, sub.binding_keys)
        return Worker(self.broker, self.store, [sub], self.settings), sizes

    def _wait(self, ids: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(i in self.done for i in ids):
                return True
            time.sleep(0.05)
        return False

    def latency(self, bodies: list[bytes], rate: float, batch_max: int) -> dict[str, Any]:
        import multiprocessing as mp

        from esbhub.bus.envelope import Envelope

        ids = [Envelope.from_bytes(b).id for b in bodies]
        w, sizes = self._worker(batch_max)
        w.start()
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        t0 = time.time() + 2.0  # the publisher process starts meanwhile
        proc = ctx.Process(target=_publisher, args=(self.broker_url, "bench", bodies, rate, t0, q))
        proc.start()
        la0 = loadavg()
        ok = self._wait(ids, len(bodies) / rate + 600)
        lag = q.get(timeout=60)
        proc.join(30)
        w.stop(30)
        lat = [(self.done[i] - (t0 + k / rate)) * 1000 for k, i in enumerate(ids) if i in self.done]
        span = max(self.done[i] for i in ids if i in self.done) - t0
        return {"n": len(ids), "ok": ok, "p50": pct(lat, 0.5), "p90": pct(lat, 0.9), "p99": pct(lat, 0.99),
                "max": max(lat), "rate": len(lat) / span, "publisher_lag_ms": lag * 1000, "sizes": sizes,
                "load": f"{la0} → {loadavg()}"}

    def direct(self, bodies: list[bytes], batch_max: int) -> dict[str, Any]:
        """The MDM transaction alone, no bus: ``batch_max`` records per ``ingest_many`` call, back to
        back; wall time per call and the process's CPU time (all its threads, the background WAL
        checkpoint included) per record."""
        from esbhub.bus.envelope import Envelope
        from esbhub.schemas.party import Party

        envs = [Envelope.from_bytes(b) for b in bodies]
        items = [(Party.model_validate(e.payload), e.id, e) for e in envs]
        la0 = loadavg()
        lat = []
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, len(items), batch_max):
            t = time.perf_counter()
            self.svc.ingest_many(items[i : i + batch_max])
            lat.append((time.perf_counter() - t) * 1000)
        c1, t1 = time.process_time(), time.perf_counter()
        return {"n": len(items), "rate": len(items) / (t1 - t0), "cpu_ms": (c1 - c0) / len(items) * 1000,
                "p50": pct(lat, 0.5), "p90": pct(lat, 0.9), "p99": pct(lat, 0.99), "max": max(lat),
                "load": f"{la0} → {loadavg()}"}

    def saturation(self, bodies: list[bytes], batch_max: int) -> dict[str, Any]:
        from esbhub.bus.envelope import Envelope

        envs = [Envelope.from_bytes(b) for b in bodies]
        w, sizes = self._worker(batch_max)
        for i in range(0, len(envs), 500):
            self.broker.publish_many(envs[i : i + 500])
        la0 = loadavg()
        started = time.time()
        w.start()
        ok = self._wait([e.id for e in envs], 1800)
        t1 = max(self.done[e.id] for e in envs if e.id in self.done)
        w.stop(30)
        t0 = self.first_call[0]  # the drain, as the module doc says: first handler call → last commit
        return {"n": len(envs), "ok": ok, "rate": len(envs) / (t1 - t0), "seconds": t1 - t0, "sizes": sizes,
                "start_s": t0 - started, "load": f"{la0} → {loadavg()}"}


def _sizes(sizes: list[int]) -> str:
    if not sizes:
        return "-"
    return f"{len(sizes)} calls, mean {sum(sizes) / len(sizes):.1f}, p50 {pct(sizes, 0.5):.0f}, max {max(sizes)}"


def run(a: argparse.Namespace) -> None:
    import resource
    import tempfile

    from esbhub.logging import configure

    configure("warning")
    work = Path(a.work or tempfile.mkdtemp(prefix="mdm_rt_"))
    print(f"# MDM real-time path — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load {loadavg()}, loop probe {probe():.2f} s",
          flush=True)
    b = Bench(a.db, work, a.database_url)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    where = _redacted(a.database_url) if a.database_url else f"{a.db} ({a.db.stat().st_size / 1e9:.1f} GB)"
    print(f"store {where}: matcher index of {b.n_index:,} records loaded in "
          f"{b.index_s:.0f} s; process peak RSS {rss:,.0f} MB", flush=True)
    tag = datetime.now(UTC).strftime("%H%M%S")
    rates = [float(x) for x in str(a.rate).split(",")]
    n_lats = [int(r * a.seconds) for r in rates]
    per_round = 2 * (sum(n_lats) + a.backlog + a.direct)
    t = time.perf_counter()
    stream = make_stream(a.db, per_round * a.rounds, a.seed, tag)
    print(f"stream of {len(stream)} records made in {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    k = 0
    direct_rows = []
    for r in range(a.rounds):
        if a.direct:
            for bm in (1, a.batch_max):
                d = b.direct(stream[k : k + a.direct], bm)
                k += a.direct
                direct_rows.append(d)
                print(f"round {r + 1} direct (MdmService.ingest_many, {bm} per transaction): {d['rate']:.0f} records/s, "
                      f"CPU {d['cpu_ms']:.2f} ms/record; per call p50 {d['p50']:.1f} ms, p90 {d['p90']:.1f}, "
                      f"p99 {d['p99']:.1f}, max {d['max']:.0f}; load {d['load']}", flush=True)
        for label, bm in (("baseline (batch_max 1)", 1), (f"batched (batch_max {a.batch_max})", a.batch_max)):
            sat = b.saturation(stream[k : k + a.backlog], bm)
            k += a.backlog
            print(f"round {r + 1} {label}: saturation — backlog of {sat['n']} drained at {sat['rate']:.0f} "
                  f"records/s ({sat['seconds']:.1f} s; the worker took {sat['start_s']:.2f} s to start); batches {_sizes(sat['sizes'])}; load {sat['load']}",
                  flush=True)
            for rate, n_lat in zip(rates, n_lats, strict=True):
                lat = b.latency(stream[k : k + n_lat], rate, bm)
                k += n_lat
                print(f"round {r + 1} {label}: latency at {rate:.0f}/s offered — p50 {lat['p50']:.1f} ms, "
                      f"p90 {lat['p90']:.1f}, p99 {lat['p99']:.1f}, max {lat['max']:.0f}; achieved "
                      f"{lat['rate']:.0f}/s; batches {_sizes(lat['sizes'])}; publisher lag max "
                      f"{lat['publisher_lag_ms']:.0f} ms; load {lat['load']}", flush=True)
                rows.append((r + 1, label, rate, lat, sat))
    print("\n| round | mode | offered/s | p50 ms | p99 ms | achieved/s | batch size mean / max | saturation "
          "records/s | load 1m |\n|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r, label, rate, lat, sat in rows:
        sz = lat["sizes"]
        print(f"| {r} | {label} | {rate:.0f} | {lat['p50']:.1f} | {lat['p99']:.1f} | {lat['rate']:.0f} | "
              f"{sum(sz) / max(1, len(sz)):.1f} / {max(sz or [0])} | {sat['rate']:.0f} | {lat['load'].split('/')[0]} |")
    if direct_rows:
        singles = direct_rows[0::2]
        print(f"direct, one record per transaction: p99 per record (worst round) {max(d['p99'] for d in singles):.1f} ms; "
              f"batched: {min(d['rate'] for d in direct_rows[1::2]):.0f}–{max(d['rate'] for d in direct_rows[1::2]):.0f} "
              f"records/s", flush=True)
    base = [x[4]["rate"] for x in rows if "baseline" in x[1]]
    new = [x[4]["rate"] for x in rows if "batched" in x[1]]
    print(f"saturation batched / baseline: {sum(new) / len(new) / (sum(base) / len(base)):.1f}×; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:,.0f} MB; "
          f"index {b.n_index:,} records; loop probe {probe():.2f} s", flush=True)
    b.store.close()
    b.broker.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="Fill an MDM store with synthetic records.")
    b.add_argument("--companies", type=int, default=43_000, help="Base companies (records ≈ 3.5×).")
    b.add_argument("--seed", type=int, default=11)
    b.add_argument("--db", type=Path, required=True)
    b.add_argument("--batch", type=int, default=500)
    r = sub.add_parser("run", help="Measure latency and saturation against a store (it grows by the stream).")
    r.add_argument("--db", type=Path, required=True,
                   help="The SQLite store (changed by the run: give it a copy); with --database-url, only read.")
    r.add_argument("--database-url", default=None,
                   help="The store to run against instead of --db, e.g. a PostgreSQL copy of the same records.")
    r.add_argument("--work", type=Path, default=None, help="Directory for the broker file (default: a temp dir).")
    r.add_argument("--rate", default="500", help="Offered records/s of the latency phase; several: '500,200'.")
    r.add_argument("--seconds", type=float, default=20.0, help="Length of the latency phase.")
    r.add_argument("--backlog", type=int, default=3000, help="Records queued for the saturation phase.")
    r.add_argument("--rounds", type=int, default=2, help="Baseline/batched pairs, interleaved.")
    r.add_argument("--batch-max", type=int, default=200)
    r.add_argument("--seed", type=int, default=7)
    r.add_argument("--direct", type=int, default=500,
                   help="Records per round straight through MdmService (no bus): one per transaction, then batched.")
    a = ap.parse_args()
    if a.cmd == "build":
        build(a.companies, a.seed, a.db, a.batch)
    else:
        run(a)


if __name__ == "__main__":
    main()

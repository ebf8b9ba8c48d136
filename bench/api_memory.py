"""API memory with a large backlog: `esbhub serve` RSS while 1,000,000 messages wait in a route queue.

    .venv/bin/python bench/api_memory.py [--backlog 1000000] [--duration 15] [--http-workers 1 2]
                                         [--connections 64] [--json FILE]

Issue 2: "with 1,000,000 messages waiting in a queue and a slow sink ... the API process stays
under 300 MB". For each `--http-workers` setting, on the embedded defaults (SQLite broker under
a fresh data dir):

1. declare a subscription queue ``route.bench_backlog`` bound to ``payment.v1`` and publish
   ``--backlog`` payment.v1 envelopes into it with ``broker.publish_many`` (batches of 1,000) —
   nothing consumes it (``--no-worker``): the worst case of a sink that is down or slow;
2. start ``esbhub serve --no-worker`` on that data dir (so every accepted POST lands in the
   same queue behind the backlog);
3. sample the RSS of the API process *and all its children* (uvicorn's worker processes when
   ``--http-workers`` > 1) with psutil every 0.2 s: idle after start-up, then while wrk posts
   payment.v1 for ``--duration`` s, then 3 s idle after the load;
4. report start / peak / end RSS (sum over the process tree, and the largest single process)
   and whether the peak stays under 300 MB.

Not a test: numbers depend on the machine; record them in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from http_ingest import LUA, PY, ROOT, free_port, parse_wrk, stop, wait_healthy  # noqa: E402

from esbhub.bus.broker import create_broker  # noqa: E402
from esbhub.bus.envelope import Envelope  # noqa: E402

MB = 1024 * 1024
LIMIT_MB = 300
QUEUE = "route.bench_backlog"


class RssSampler:
    """Sample the RSS of a process and its descendants every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        # (t, phase, RSS total, largest RSS, nprocs, PSS total — shared pages split between processes)
        self.samples: list[tuple[float, str, int, int, int, int]] = []
        self.phase = "idle-start"
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int, int, int]:
        procs = [self.proc]
        try:
            procs += self.proc.children(recursive=True)
        except psutil.NoSuchProcess:
            return 0, 0, 0, 0
        rss, pss = [], []
        for p in procs:
            try:
                m = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss.append(m.rss)
            pss.append(getattr(m, "pss", m.rss))
        return sum(rss), max(rss, default=0), len(rss), sum(pss)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            total, largest, n, pss = self.sample()
            if n:
                self.samples.append((time.monotonic() - t0, self.phase, total, largest, n, pss))
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._t.start()

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)

    def summary(self) -> dict[str, Any]:
        def of(phase: str | None) -> list[tuple[float, str, int, int, int, int]]:
            return [s for s in self.samples if phase is None or s[1] == phase]

        start = of("idle-start")[-1] if of("idle-start") else self.samples[0]
        end = self.samples[-1]
        load = of("load")
        peak = max(self.samples, key=lambda s: s[2])
        return {
            "samples": len(self.samples),
            "processes": peak[4],
            "start_mb": round(start[2] / MB, 1),
            "load_peak_mb": round(max(s[2] for s in load) / MB, 1) if load else None,
            "peak_mb": round(peak[2] / MB, 1),
            "peak_phase": peak[1],
            "end_mb": round(end[2] / MB, 1),
            "largest_process_peak_mb": round(max(s[3] for s in self.samples) / MB, 1),
            "pss_start_mb": round(start[5] / MB, 1),
            "pss_peak_mb": round(max(s[5] for s in self.samples) / MB, 1),
            "under_300mb": peak[2] < LIMIT_MB * MB,
        }


def payment(i: int) -> dict[str, Any]:
    return {"payment_id": f"BL-{i}", "bank": "ICBC", "payer_name": "Guangdong Mobile", "amount": "1234.50",
            "paid_at": "2026-11-25T10:00:00Z", "billing_account": f"BA-{i}"}


def fill_backlog(data: Path, n: int, batch: int = 1000) -> dict[str, Any]:
    """Declare the route queue and publish `n` payment.v1 envelopes into it (embedded broker)."""
    broker = create_broker(f"sqlite:///{data / 'broker.db'}", exchange="esbhub")
    broker.connect()
    try:
        broker.declare_queue(QUEUE, ["payment.v1"])
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            envs = [Envelope.create("payment.v1", payment(i), source="bench-backlog")
                    for i in range(start, min(n, start + batch))]
            broker.publish_many(envs, timeout=120)
        secs = time.perf_counter() - t0
        return {"backlog": broker.queue_depth(QUEUE), "fill_s": round(secs, 1), "fill_rate": round(n / secs)}
    finally:
        broker.close()


def queue_depth(data: Path) -> int:
    broker = create_broker(f"sqlite:///{data / 'broker.db'}", exchange="esbhub")
    broker.connect()
    try:
        return broker.queue_depth(QUEUE)
    finally:
        broker.close()


def run(http_workers: int, args: argparse.Namespace, lua: Path) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="esbhub-apimem-"))
    proc = None
    sampler = None
    try:
        res: dict[str, Any] = {"config": f"esbhub embedded, {http_workers} http worker(s), no bus worker"}
        res.update(fill_backlog(data, args.backlog))
        print(f"backlog filled: {res['backlog']:,} in {res['fill_s']} s", file=sys.stderr, flush=True)
        port = free_port()
        cmd = [PY, "-m", "esbhub.cli", "--data-dir", str(data), "--log-level", "warning", "serve",
               "--port", str(port), "--http-workers", str(http_workers), "--create-admin-key", "--no-worker"]
        log = (data / "serve.log").open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        sampler = RssSampler(proc.pid)
        sampler.start()
        wait_healthy(url, proc)
        time.sleep(2)  # idle after start-up: the "start" figure
        key = (data / "admin.key").read_text().strip()
        env = {**os.environ, "ESBHUB_BENCH_KEY": key}
        sampler.phase = "load"
        res["loadavg_1m_before"] = round(os.getloadavg()[0], 2)
        out = subprocess.run(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency", "--timeout", "10s",
             "-s", str(lua), url], env=env, capture_output=True, text=True, check=True,
        ).stdout
        res["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        sampler.phase = "idle-end"
        time.sleep(3)
        sampler.stop()
        w = parse_wrk(out, args.duration)
        res.update(accepted_rps=w["accepted_rps"], p50_ms=w["p50_ms"], p99_ms=w["p99_ms"], non_2xx=w["non_2xx"],
                   requests=w["requests"])
        res["rss"] = sampler.summary()
        stop(proc)
        proc = None
        res["waiting_after"] = queue_depth(data)
        return res
    finally:
        if sampler is not None:
            sampler.stop()
        if proc is not None:
            stop(proc)
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--http-workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", type=Path, help="Write the results here too.")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian package 'wrk')")
    lua = Path(tempfile.mkstemp(suffix=".lua")[1])
    lua.write_text(LUA)
    results = []
    try:
        for hw in args.http_workers:
            results.append(run(hw, args, lua))
            print(json.dumps(results[-1]), flush=True)
    finally:
        lua.unlink(missing_ok=True)
    head = (f"API memory, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPU, "
            f"{args.backlog:,} payment.v1 waiting in {QUEUE} (no consumer), wrk -t1 -c{args.connections} "
            f"-d{args.duration}s, RSS of the serve process tree every 0.2 s")
    print("\n" + head)
    print("| configuration | waiting before → after | processes | RSS sum start / peak / end MB | PSS sum peak MB "
          "| largest process MB | < 300 MB | accepted req/s | p99 ms | load 1m |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in results:
        m = r["rss"]
        print(f"| {r['config']} | {r['backlog']:,} → {r['waiting_after']:,} | {m['processes']} "
              f"| {m['start_mb']} / {m['peak_mb']} / {m['end_mb']} | {m['pss_peak_mb']} "
              f"| {m['largest_process_peak_mb']} | {'yes' if m['under_300mb'] else 'NO'} "
              f"| {r['accepted_rps']:,} | {r['p99_ms']} | {r['loadavg_1m_before']} |")
    if args.json:
        args.json.write_text(json.dumps({"header": head, "results": results}, indent=2))


if __name__ == "__main__":
    main()

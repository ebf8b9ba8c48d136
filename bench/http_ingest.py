"""HTTP ingest under load: `esbhub serve` vs a bare FastAPI endpoint, both driven by wrk.

    .venv/bin/python bench/http_ingest.py [--duration 15] [--connections 64] [--threads 1] [--http-workers 1 2]
                                          [--backend embedded rabbitmq] [--with-worker]

For each configuration: start the server on a free loopback port, warm up, run wrk for
`--duration` seconds with a Lua script POSTing a valid payment.v1 (each with a new
payment_id) with an API key, and report accepted (2xx) req/s, p50/p99 latency and errors,
and the RSS of the API process tree (its uvicorn workers included) sampled every 0.2 s.
The baseline is a bare FastAPI endpoint on the same uvicorn settings that answers 202
without parsing, validating or publishing — the ceiling of the HTTP stack on this machine.
Not a test: numbers depend on the machine; record them in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
AMQP = os.environ.get("ESBHUB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

LUA = r"""
local key = os.getenv("ESBHUB_BENCH_KEY")
local counter = 0
local tid = 0
setup = function(thread) thread:set("tid", tid); tid = tid + 1 end
init = function(args) math.randomseed(os.time() + tid) end
request = function()
  counter = counter + 1
  local body = '{"payment_id":"TX-' .. tid .. '-' .. counter .. '","bank":"ICBC","payer_name":"Guangdong Mobile",' ..
               '"amount":"1234.50","paid_at":"2026-11-25T10:00:00Z","billing_account":"BA-' .. counter .. '"}'
  return wrk.format("POST", "/v1/messages/payment.v1",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}, body)
end
"""

BARE_APP = '''
from fastapi import FastAPI, Request
from starlette.responses import Response
app = FastAPI()
@app.post("/v1/messages/{type}", status_code=202)
async def post(type: str, request: Request) -> Response:
    await request.body()
    return Response(b'{"id":"01BASELINE"}', status_code=202, media_type="application/json")
@app.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become healthy")


def parse_wrk(out: str, duration: float) -> dict:
    def lat(label: str) -> float | None:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        v = float(m.group(1))
        return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v

    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errs = re.search(r"Socket errors: (.*)", out)
    secs = float(m.group(1)) * (60 if m.group(2) == "m" else 1) if (
        m := re.search(r"requests in ([\d.]+)(s|m)", out)) else duration
    return {
        "requests": total, "non_2xx": non2xx, "seconds": round(secs, 2),
        "accepted_rps": round((total - non2xx) / secs), "p50_ms": lat("50"), "p90_ms": lat("90"),
        "p99_ms": lat("99"), "socket_errors": errs.group(1).strip() if errs else None,
    }


def run_wrk(url: str, key: str, duration: int, connections: int, threads: int, lua: Path,
            pid: int | None = None) -> dict:
    env = {**os.environ, "ESBHUB_BENCH_KEY": key}
    # warm-up (JIT-free Python still needs imports, caches, first SQLite pages)
    subprocess.run(["wrk", "-t1", "-c8", "-d2s", "-s", str(lua), url], env=env, capture_output=True, check=True)
    load_before = os.getloadavg()[0]
    sampler = None
    if pid is not None:  # RSS of the API process tree (uvicorn workers included) during the load
        from api_memory import RssSampler

        sampler = RssSampler(pid)
        sampler.start()
        time.sleep(0.3)
        sampler.phase = "load"
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s",
         "-s", str(lua), url], env=env, capture_output=True, text=True, check=True,
    ).stdout
    res = parse_wrk(out, duration)
    if sampler is not None:
        sampler.stop()
        m = sampler.summary()
        res["rss_mb"] = {k: m[k] for k in ("processes", "start_mb", "peak_mb", "end_mb", "pss_peak_mb",
                                          "largest_process_peak_mb")}
    # other processes on the machine compete with server and wrk for the 2 cores: say how busy it was
    res["loadavg_1m_before"] = round(load_before, 2)
    res["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return res


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def bench_hub(backend: str, http_workers: int, with_worker: bool, args: argparse.Namespace, lua: Path) -> dict:
    data = Path(tempfile.mkdtemp(prefix="esbhub-bench-"))
    port = free_port()
    cmd = [PY, "-m", "esbhub.cli", "--data-dir", str(data), "--log-level", "warning"]
    exchange_env = {}
    rabbit = None
    if backend == "rabbitmq":
        # a private exchange with a sink queue bound to everything: the messages neither land
        # in the shared esbhub.unrouted queue nor outlive the run
        from esbhub.bus.broker import create_broker

        exchange = f"bench.http.{os.getpid()}"
        cmd += ["--broker-url", AMQP]
        exchange_env["ESBHUB_EXCHANGE"] = exchange
        rabbit = create_broker(AMQP, exchange=exchange)
        rabbit.connect()
        rabbit.declare_queue(f"{exchange}.sink", ["#"])
    cmd += ["serve", "--port", str(port), "--http-workers", str(http_workers), "--create-admin-key"]
    cmd += ["--workers", "1"] if with_worker else ["--no-worker"]
    log = (data / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **exchange_env}, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        key = (data / "admin.key").read_text().strip()
        res = run_wrk(url, key, args.duration, args.connections, args.threads, lua, pid=proc.pid)
        # sanity: the hub really stored them (embedded: queue rows; any: state of the last one)
        res.update({"config": f"esbhub {backend}, {http_workers} http worker(s), "
                              f"{'1 bus worker' if with_worker else 'no bus worker'}"})
        return res
    finally:
        stop(proc)
        shutil.rmtree(data, ignore_errors=True)
        if rabbit is not None:
            rabbit.delete_queue(f"{exchange}.sink")
            rabbit._control(lambda ch: (ch.exchange_delete(exchange), ch.exchange_delete(f"{exchange}.unrouted")),
                            what="cleanup")
            rabbit.close()


def bench_bare(http_workers: int, args: argparse.Namespace, lua: Path) -> dict:
    d = Path(tempfile.mkdtemp(prefix="esbhub-bare-"))
    (d / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    proc = subprocess.Popen(
        [PY, "-m", "uvicorn", "bare_app:app", "--port", str(port), "--workers", str(http_workers),
         "--http", "httptools", "--loop", "uvloop", "--log-level", "warning", "--no-access-log",
         "--backlog", "4096"], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        res = run_wrk(url, "none", args.duration, args.connections, args.threads, lua)
        res["config"] = f"baseline: bare FastAPI 202, {http_workers} http worker(s)"
        return res
    finally:
        stop(proc)
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--connections", type=int, default=64)
    # one wrk thread drives >10k req/s; a second one only takes a core away from the server
    # under test on this 2-core machine
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--http-workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--backend", nargs="+", default=["embedded"], choices=["embedded", "rabbitmq"])
    ap.add_argument("--with-worker", action="store_true", help="Also run one bus worker process during the load.")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--json", type=Path, help="Write the results here too.")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian package 'wrk')")
    lua = Path(tempfile.mkstemp(suffix=".lua")[1])
    lua.write_text(LUA)
    results = []
    try:
        for hw in args.http_workers:
            if not args.no_baseline:
                results.append(bench_bare(hw, args, lua))
                print(json.dumps(results[-1]), flush=True)
            for be in args.backend:
                results.append(bench_hub(be, hw, args.with_worker, args, lua))
                print(json.dumps(results[-1]), flush=True)
    finally:
        lua.unlink(missing_ok=True)
    head = (f"HTTP ingest, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPU, "
            f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, payment.v1 with API key, loopback")
    print("\n" + head)
    print(f"{'configuration':<62} {'accepted/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'load1m':>7} "
          f"{'RSS peak MB (sum/largest)':>26}")
    for r in results:
        rss = f"{r['rss_mb']['peak_mb']}/{r['rss_mb']['largest_process_peak_mb']}" if "rss_mb" in r else "-"
        print(f"{r['config']:<62} {r['accepted_rps']:>10} {r['p50_ms'] or 0:>8.2f} {r['p99_ms'] or 0:>8.2f} "
              f"{r['non_2xx']:>8} {r['loadavg_1m_before']:>7.2f} {rss:>26}")
    if args.json:
        args.json.write_text(json.dumps({"header": head, "results": results}, indent=2))


if __name__ == "__main__":
    main()

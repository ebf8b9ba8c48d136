"""`esbhub worker` processes pick up routes from the store and swap to a new version (each polls)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from waiting import wait_for

from esbhub.bus.broker import create_broker
from esbhub.bus.envelope import Envelope
from esbhub.db import upgrade
from esbhub.routes.runtime import apply_text
from esbhub.routes.store import RouteStore

ROUTE = "name: procs\nfrom: {topic: procs.in.v1}\nsteps:\n  - type: map\n    values: {headers.rev: 'REV'}\nto: [{topic: procs.out.v1}]\n"


def test_two_worker_processes_run_the_route_and_both_swap_to_a_new_version(tmp_path: Path, unique: str):
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    burl = f"sqlite:///{tmp_path / 'broker.db'}"
    upgrade(db)
    store = RouteStore(db)
    assert apply_text(store, ROUTE.replace("REV", "1"), author="t").ok
    broker = create_broker(burl, exchange=unique)
    broker.connect()
    broker.declare_queue("procs.out", ["procs.out.v1"])
    broker.declare_queue("route.procs", ["procs.in.v1"])  # bound before the first publish
    env = {**os.environ, "ESBHUB_DATABASE_URL": db, "ESBHUB_BROKER_URL": burl, "ESBHUB_EXCHANGE": unique,
           "ESBHUB_DATA_DIR": str(tmp_path / "var"), "ESBHUB_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1"}
    logs = [open(tmp_path / f"worker{i}.log", "wb") for i in range(2)]  # noqa: SIM115
    procs = [subprocess.Popen([sys.executable, "-m", "esbhub.cli", "worker"], env=env, stdout=f, stderr=f) for f in logs]
    got: list[Envelope] = []

    def drain() -> int:
        while (d := broker.get("procs.out", timeout=0.05)) is not None:
            got.append(d.envelope)
            d.ack()
        return len(got)

    def logged(i: int, *needles: str) -> bool:
        text = (tmp_path / f"worker{i}.log").read_text(errors="replace")
        return any(all(n in ln for n in needles) for ln in text.splitlines())

    try:
        # both processes run v1 before the change (else one could simply start on v2)
        wait_for(lambda: logged(0, '"worker_started"') and logged(1, '"worker_started"'), timeout=60, what="workers up")
        broker.publish_many([Envelope.create("procs.in.v1", {"i": i}, source="t") for i in range(20)], timeout=10)
        wait_for(lambda: drain() >= 20, timeout=60, what="v1 outputs")
        assert apply_text(store, ROUTE.replace("REV", "2"), author="t").ok
        # keep sending until both processes have handled a message on v2
        n = 20
        def both_on_v2() -> bool:
            nonlocal n
            broker.publish_many([Envelope.create("procs.in.v1", {"i": n}, source="t")], timeout=10)
            n += 1
            drain()
            return len(got) > 24 and {e.headers["rev"] for e in got[-4:]} == {"2"}
        wait_for(both_on_v2, timeout=60, what="v2 outputs")

        def swapped(i: int) -> bool:
            return logged(i, '"route_reloaded"', '"version": 2', '"route": "procs"')

        wait_for(lambda: swapped(0) and swapped(1), timeout=30, what="each worker process logged its swap to v2")
    finally:
        _shut_down(procs, broker, logs)
    assert {e.headers["rev"] for e in got[:20]} == {"1"}
    assert all(e.headers["esbhub-route"] == f"procs@v{e.headers['rev']}" for e in got)
    assert sorted(e.payload["i"] for e in got) == list(range(len(got)))  # nothing lost or duplicated



def _shut_down(procs: list[subprocess.Popen], broker: Any, logs: list[Any]) -> None:
    """Terminate the worker processes (kill what does not stop), close the broker and the logs."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
    broker.close()
    for f in logs:
        f.close()

ORDERED = ("name: ordp\nfrom: {topic: ordp.in.v1}\nordering_key: payload.k\npartitions: 3\n"
           "steps:\n  - type: map\n    values: {headers.seen: 'y'}\nto: [{topic: ordp.out.v1}]\n")


def test_ordering_key_holds_across_two_worker_processes_and_survives_a_kill(tmp_path: Path, unique: str):
    """Each ordered-route queue (forwarder, partitions) is consumed by one process at a time
    (a lease per queue); the slots spread over both processes; after one is killed -9 the other
    takes its slots over once their lease expires, and every key stays in order throughout."""
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    burl = f"sqlite:///{tmp_path / 'broker.db'}"
    upgrade(db)
    store = RouteStore(db)
    assert apply_text(store, ORDERED, author="t").ok
    broker = create_broker(burl, exchange=unique)
    broker.connect()
    broker.declare_queue("ordp.out", ["ordp.out.v1"])
    broker.declare_queue("route.ordp", ["ordp.in.v1"])
    env = {**os.environ, "ESBHUB_DATABASE_URL": db, "ESBHUB_BROKER_URL": burl, "ESBHUB_EXCHANGE": unique,
           "ESBHUB_DATA_DIR": str(tmp_path / "var"), "ESBHUB_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1",
           "ESBHUB_ROUTE_LEASE_TTL": "3"}
    logs = [open(tmp_path / f"worker{i}.log", "wb") for i in range(2)]  # noqa: SIM115
    procs = [subprocess.Popen([sys.executable, "-m", "esbhub.cli", "worker"], env=env, stdout=f, stderr=f) for f in logs]
    got: list[Envelope] = []

    def drain() -> int:
        while (d := broker.get("ordp.out", timeout=0.05)) is not None:
            got.append(d.envelope)
            d.ack()
        return len({e.causation_id for e in got})

    def send(lo: int, hi: int) -> None:
        broker.publish_many([Envelope.create("ordp.in.v1", {"k": f"K{i % 7}", "i": i}, source="t") for i in range(lo, hi)],
                            timeout=10)

    def slots_of(i: int) -> set[str]:
        text = (tmp_path / f"worker{i}.log").read_text(errors="replace")
        return {ln.split('"slot": "')[1].split('"')[0] for ln in text.splitlines() if '"route_slot_acquired"' in ln}

    try:
        send(0, 100)  # waits in the route's queue until a process holds the forwarder slot
        # the first process up takes every slot, then hands half over when the second one appears
        wait_for(lambda: (h := store.slot_holders("ordp")).keys() == {"fwd", "p0", "p1", "p2"}
                   and sorted(Counter(h.values()).values()) == [2, 2], timeout=60, what="slots shared 2 + 2")
        send(100, 300)
        wait_for(lambda: drain() >= 300, timeout=60, what="first 300 outputs")
        assert slots_of(0) and slots_of(1), "both processes consumed"
        procs[0].kill()  # -9: no lease released, its in-flight message comes back from the broker
        procs[0].wait(10)
        send(300, 500)
        wait_for(lambda: drain() >= 500, timeout=60, what="outputs after the takeover")
        assert slots_of(1) == {"fwd", "p0", "p1", "p2"}, "the survivor took every slot over"
    finally:
        _shut_down(procs, broker, logs)
    first: dict[str, Envelope] = {}
    for e in got:  # a message redelivered after the kill comes out again with the same id
        first.setdefault(e.id, e)
    outs = list(first.values())
    assert sorted(e.payload["i"] for e in outs) == list(range(500))  # nothing lost
    for k in range(7):
        seq = [e.payload["i"] for e in outs if e.payload["k"] == f"K{k}"]
        assert seq == sorted(seq), f"K{k} out of order: {seq}"

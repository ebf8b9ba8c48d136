"""kill -9 of hub processes on the embedded broker: nothing accepted is ever lost.

Consumers and publishers run as real child processes (tests/bus/helpers_crash.py) and are
killed with SIGKILL at an arbitrary point; the idempotent sink and the publish log are then
compared id by id with what was published / what publish() confirmed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from esbhub.bus.broker import Delivery
from esbhub.bus.embedded import EmbeddedBroker
from esbhub.bus.envelope import Envelope

HELPER = str(Path(__file__).with_name("helpers_crash.py"))


def wait_for(cond: Callable[[], bool], timeout: float, what: str, procs: list[subprocess.Popen[bytes]] = ()) -> None:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while not cond():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"child exited early with {p.returncode}: {p.stderr.read().decode()[-2000:] if p.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def sink_count(path: Path) -> int:
    if not path.exists():
        return 0
    c = sqlite3.connect(path, timeout=10)
    try:
        return c.execute("SELECT count(*) FROM sink").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0
    finally:
        c.close()


def new_sink(path: Path) -> Path:
    """The consumers' sink file, already in WAL mode. Two consumer processes starting together
    would otherwise both switch a new file to WAL, and one of them failed at once with 'database is
    locked' (seen in a clean-clone run, despite the connection's 30 s busy timeout)."""
    c = sqlite3.connect(path)
    try:
        c.execute("PRAGMA journal_mode=WAL")
    finally:
        c.close()
    return path


def start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, HELPER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill9(p: subprocess.Popen[bytes]) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    assert p.returncode == -signal.SIGKILL


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    ps: list[subprocess.Popen[bytes]] = []
    yield ps
    for p in ps:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_consumer_killed_mid_run_loses_nothing_and_sink_sees_each_id_once(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    sink = new_sink(tmp_path / "sink.db")
    broker = EmbeddedBroker(url)
    broker.declare_queue("work", ["party.v1"])
    envs = [Envelope.create("party.v1", {"i": i}, source="crash") for i in range(10_000)]
    for i in range(0, len(envs), 500):
        broker.publish_many(envs[i : i + 500])

    for kill_at in (2_000, 6_000):  # killed twice, restarted each time
        c = start("consume", url, "work", str(sink))
        procs.append(c)
        wait_for(lambda k=kill_at: sink_count(sink) >= k, 60, f"{kill_at} messages in the sink", [c])
        kill9(c)
        assert broker.queue_depth("work") > 0, "the consumer finished before it could be killed: test invalid"

    c = start("consume", url, "work", str(sink))
    procs.append(c)
    wait_for(lambda: broker.queue_depth("work") == 0, 60, "queue drained after restart", [c])
    kill9(c)

    db = sqlite3.connect(sink)
    got = {r[0] for r in db.execute("SELECT id FROM sink")}
    redelivered = db.execute("SELECT count(*) FROM processed WHERE redelivered = 1").fetchone()[0]
    processed = db.execute("SELECT count(*) FROM processed").fetchone()[0]
    db.close()
    assert got == {e.id for e in envs}  # none lost; the sink holds each id once (its key)
    assert redelivered > 0  # the killed consumers' leases came back flagged
    assert processed >= len(envs)
    assert_repeats_only_by_redelivery(sink)
    broker.close()


def assert_repeats_only_by_redelivery(sink: Path) -> None:
    """A message processed twice must have been redelivered (never handed to two consumers at once)."""
    db = sqlite3.connect(sink)
    bad = db.execute(
        "SELECT id FROM processed GROUP BY id HAVING count(*) > 1 AND max(redelivered) = 0"
    ).fetchall()
    db.close()
    assert not bad


def test_peer_consumer_takes_over_leases_of_a_killed_one_without_restart(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    sink = new_sink(tmp_path / "sink.db")
    broker = EmbeddedBroker(url)  # lease_timeout 30 s: only the pid check can recover in time
    broker.declare_queue("work", ["party.v1"])
    envs = [Envelope.create("party.v1", {"i": i}, source="crash") for i in range(3_000)]
    broker.publish_many(envs)

    victim = start("consume", url, "work", str(sink))
    procs.append(victim)
    wait_for(lambda: sink_count(sink) >= 500, 60, "victim consuming", [victim])
    kill9(victim)
    survivor = start("consume", url, "work", str(sink))
    procs.append(survivor)
    wait_for(lambda: broker.queue_depth("work") == 0, 20, "survivor drained the queue incl. the victim's leases", [survivor])
    assert sink_count(sink) == len(envs)
    assert_repeats_only_by_redelivery(sink)
    broker.close()


def test_competing_consumer_processes_each_get_disjoint_messages_while_publishing(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    sink = new_sink(tmp_path / "sink.db")
    broker = EmbeddedBroker(url)
    broker.declare_queue("work", ["party.v1"])
    workers = [start("consume", url, "work", str(sink)) for _ in range(2)]
    procs.extend(workers)

    def registered_consumers() -> int:
        with broker.store.reader() as c:
            return c.execute("SELECT count(*) FROM owners").fetchone()[0]

    wait_for(lambda: registered_consumers() == 2, 60, "both workers consuming", workers)
    envs = [Envelope.create("party.v1", {"i": i}, source="compete") for i in range(4_000)]
    for i in range(0, len(envs), 20):  # the "API" publishes while both workers consume
        broker.publish_many(envs[i : i + 20])
    wait_for(lambda: sink_count(sink) == len(envs) and broker.queue_depth("work") == 0, 60, "all consumed", workers)
    db = sqlite3.connect(sink)
    processed = db.execute("SELECT count(*), count(DISTINCT id), count(DISTINCT pid) FROM processed").fetchone()
    db.close()
    assert processed == (len(envs), len(envs), 2)  # no message twice, both workers took part
    broker.close()


@pytest.mark.slow
def test_soak_two_competing_consumer_processes_killed_repeatedly_lose_nothing(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    sink = new_sink(tmp_path / "sink.db")
    broker = EmbeddedBroker(url)
    broker.declare_queue("work", ["party.v1"])
    envs = [Envelope.create("party.v1", {"i": i}, source="soak") for i in range(100_000)]
    for i in range(0, len(envs), 1000):
        broker.publish_many(envs[i : i + 1000])
    pair = [start("consume", url, "work", str(sink)) for _ in range(2)]
    procs.extend(pair)
    for round_ in range(8):  # kill one of the two, alternately, while both consume
        target = (round_ + 1) * 10_000
        wait_for(lambda t=target: sink_count(sink) >= t, 120, f"{target} in the sink", pair)
        kill9(pair[round_ % 2])
        pair[round_ % 2] = start("consume", url, "work", str(sink))
        procs.append(pair[round_ % 2])
    wait_for(lambda: broker.queue_depth("work") == 0, 120, "drained", pair)
    db = sqlite3.connect(sink)
    got = {r[0] for r in db.execute("SELECT id FROM sink")}
    db.close()
    assert got == {e.id for e in envs}
    assert_repeats_only_by_redelivery(sink)
    broker.close()


def test_publisher_killed_mid_batch_every_returned_publish_is_stored(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    log = tmp_path / "published.log"
    broker = EmbeddedBroker(url)
    broker.declare_queue("in", ["party.v1"])

    p = start("publish", url, str(log), "8")  # 8 threads: group commits in flight at the kill
    procs.append(p)
    wait_for(lambda: log.exists() and log.stat().st_size > 27 * 3_000, 60, "3,000 confirmed publishes", [p])
    kill9(p)

    lines = log.read_bytes().split(b"\n")
    confirmed = {x.decode() for x in lines[:-1]}  # the last piece may be a torn write
    assert len(confirmed) >= 3_000

    depth = broker.queue_depth("in")
    stored: set[str] = set()
    stop = threading.Event()

    def collect(d: Delivery) -> None:
        stored.add(d.envelope.id)
        d.ack()
        if len(stored) >= depth:
            stop.set()

    t = threading.Thread(target=broker.consume, args=("in", collect), kwargs={"stop": stop, "prefetch": 500})
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert confirmed <= stored  # every publish that returned is in the queue
    assert len(stored) == depth
    broker.close()

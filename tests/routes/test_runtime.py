"""Routes on the real bus runtime (Worker + embedded broker): delivery, hot reload under load,
refused reloads, pause/resume, aggregation across a worker restart, ordering, file watching."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from esbhub.bus.broker import create_broker
from esbhub.bus.envelope import Envelope
from esbhub.bus.store import BusStore
from esbhub.bus.worker import Worker
from esbhub.config import Settings
from esbhub.db import upgrade
from esbhub.routes.adapters import memory_sink
from esbhub.routes.runtime import RouteRuntime, apply_text
from esbhub.routes.store import RouteStore


@dataclass
class Hub:
    settings: Settings
    broker: Any
    bus_store: BusStore
    routes: RouteStore
    unique: str
    runtimes: list[RouteRuntime]
    workers: list[Worker]

    def start(self) -> RouteRuntime:
        rt = RouteRuntime(self.settings, self.broker, self.bus_store, route_store=self.routes, poll_interval=0.05,
                          sweep_interval=0.05, watch=bool(self.settings.routes_dir))
        subs = rt.load()
        w = Worker(self.broker, self.bus_store, subs, self.settings)
        rt.attach(w)
        w.start()
        self.runtimes.append(rt)
        self.workers.append(w)
        return rt

    def stop(self) -> None:
        for w in self.workers:
            w.stop(5)
        for rt in self.runtimes:
            rt.stop()
        self.workers.clear()
        self.runtimes.clear()

    def apply(self, text: str) -> Any:
        r = apply_text(self.routes, text, author="test")
        return r

    def publish(self, envs: list[Envelope]) -> None:
        self.broker.publish_many(envs, timeout=10)


@pytest.fixture
def hub(tmp_path: Path, unique: str) -> Iterator[Hub]:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(url)
    settings = Settings(data_dir=tmp_path / "var", database_url=url, broker_url=f"sqlite:///{tmp_path / 'broker.db'}",
                        exchange=unique, publish_timeout=10)
    broker = create_broker(settings.broker_url, exchange=unique)
    broker.connect()
    bus_store = BusStore(url, flush_interval=0.02)
    h = Hub(settings, broker, bus_store, RouteStore(url), unique, [], [])
    yield h
    h.stop()
    bus_store.close()
    broker.close()


def route_yaml(name: str, sink: str, *, topic: str = "party.v1", rev: int = 0, extra_steps: str = "", extra: str = "") -> str:
    return f"""\
name: {name}
from: {{topic: {topic}}}
steps:
  - type: map
    values: {{headers.rev: "{rev}"}}
{extra_steps}to:
  - adapter: memory
    name: sink
    config: {{name: {sink}}}
on_error:
  retry: {{max_attempts: 2, initial_delay: 0.05, jitter: 0}}
{extra}"""


def msg(i: int, **kw: Any) -> Envelope:
    return Envelope.create("party.v1", {"i": i, **kw}, source="test")


def test_route_runs_on_the_worker_and_outputs_carry_the_version(hub: Hub):
    sink = hub.unique
    assert hub.apply(route_yaml("r1", sink)).ok
    hub.start()
    hub.publish([msg(i) for i in range(20)])
    got = wait_for(lambda: len(memory_sink(sink)) == 20 and memory_sink(sink), what="20 messages")
    assert {e.headers["esbhub-route"] for e in got} == {"r1@v1"}
    assert sorted(e.payload["i"] for e in got) == list(range(20))


def test_reload_under_load_loses_nothing_duplicates_nothing_one_version_per_message(hub: Hub):
    """≈1,000 msg/s while the route changes 20 times; an invalid change in the middle is refused."""
    sink, name, total = hub.unique, "hot", 4000
    assert hub.apply(route_yaml(name, sink, rev=1)).ok
    rt = hub.start()
    swaps: list[tuple[str, int]] = []
    rt.on_swap.append(lambda n, v: swaps.append((n, v)))
    stop = threading.Event()

    def produce() -> None:
        sent, t0 = 0, time.monotonic()
        while sent < total and not stop.is_set():
            hub.publish([msg(sent + k) for k in range(50)])
            sent += 50
            ahead = sent / 1000.0 - (time.monotonic() - t0)  # pace to ≈1,000 msg/s
            if ahead > 0:
                time.sleep(ahead)

    producer = threading.Thread(target=produce)
    producer.start()
    refused = None
    try:
        for rev in range(2, 22):  # 20 changes
            wait_for(lambda rev=rev: len(memory_sink(sink)) >= (rev - 1) * total // 24, timeout=30, what="traffic to flow")
            assert hub.apply(route_yaml(name, sink, rev=rev)).ok
            wait_for(lambda rev=rev: rt.current[name].version == rev, what=f"swap to v{rev}")
            if rev == 10:
                before = len(memory_sink(sink))
                refused = hub.apply(route_yaml(name, sink, rev=99).replace("type: map", "type: mapp"))
                assert not refused.ok and refused.errors[0].hint == "did you mean 'map'?"
                wait_for(lambda before=before: len(memory_sink(sink)) > before + 50, what="traffic after refused reload")
                assert rt.current[name].version == 10
    finally:
        producer.join(60)
        stop.set()
    got = wait_for(lambda: len(memory_sink(sink)) >= total and memory_sink(sink), timeout=60, what="all messages")
    ids = [e.payload["i"] for e in got]
    assert len(ids) == total and sorted(ids) == list(range(total))  # nothing lost, nothing duplicated
    versions = [int(e.headers["esbhub-route"].rsplit("@v", 1)[1]) for e in got]
    assert all(int(e.headers["rev"]) == v for e, v in zip(got, versions, strict=True))  # whole message on one version
    assert versions == sorted(versions)  # one consumer: a message never runs on an older version than the one before
    assert len(set(versions)) == 21 and max(versions) == 21 and 99 not in {int(e.headers["rev"]) for e in got}
    assert [v for _, v in swaps] == list(range(2, 22))
    assert [v["version"] for v in hub.routes.versions(name)] == list(range(1, 22))


def test_every_worker_polls_the_store_and_swaps_to_a_new_version(hub: Hub):
    sink = hub.unique
    assert hub.apply(route_yaml("multi", sink, rev=1)).ok
    a, b = hub.start(), hub.start()  # two workers sharing the route's queue (competing consumers)
    assert hub.apply(route_yaml("multi", sink, rev=2)).ok
    wait_for(lambda: a.current["multi"].version == b.current["multi"].version == 2, what="both workers swapped")
    hub.publish([msg(i) for i in range(40)])
    got = wait_for(lambda: len(memory_sink(sink)) == 40 and memory_sink(sink), what="40 messages")
    assert {e.headers["rev"] for e in got} == {"2"} and sorted(e.payload["i"] for e in got) == list(range(40))


def test_choice_without_match_is_dead_lettered_with_its_reason(hub: Hub):
    sink = hub.unique
    steps = "  - type: choice\n    when:\n      - if: \"payload.i > `100`\"\n        steps: []\n"
    assert hub.apply(route_yaml("dl", sink, extra_steps=steps)).ok
    hub.start()
    hub.publish([msg(1), msg(500)])
    wait_for(lambda: len(memory_sink(sink)) == 1, what="matching message")
    rows = wait_for(lambda: hub.bus_store.dlq_list(subscription="dl"), what="dead letter")
    assert rows[0]["error"]["type"] == "NoRouteMatched" and "matched no branch" in rows[0]["error"]["message"]


def test_pause_holds_messages_in_the_queue_and_resume_delivers_them(hub: Hub):
    sink = hub.unique
    assert hub.apply(route_yaml("pz", sink)).ok
    rt = hub.start()
    hub.routes.set_paused("pz", True, by="test")
    wait_for(lambda: "pz" in rt.paused, what="pause noticed")
    hub.publish([msg(i) for i in range(10)])
    wait_for(lambda: hub.broker.queue_depth("route.pz") == 10, what="messages waiting")
    assert memory_sink(sink) == []
    hub.routes.set_paused("pz", False, by="test")
    wait_for(lambda: len(memory_sink(sink)) == 10, what="delivery after resume")


def test_aggregate_completes_by_timeout_after_a_worker_restart(hub: Hub):
    sink = hub.unique
    steps = "  - type: aggregate\n    correlation: payload.k\n    size: 10\n    timeout: 0.5\n"
    assert hub.apply(route_yaml("agg", sink, extra_steps=steps)).ok
    hub.start()
    for rt in hub.runtimes:
        rt.sweep_interval = 3600  # the first worker never sweeps: it "dies" first
    hub.publish([msg(1, k="A"), msg(2, k="A")])
    wait_for(lambda: len(hub.runtimes[0].aggregates.open_groups("agg", 1)) == 1
               and len(hub.runtimes[0].aggregates.open_groups("agg", 1)[0].members) == 2, what="members stored")
    wait_for(lambda: hub.bus_store.counts().get("in_flight", 0) == 0, what="inputs acked")
    hub.stop()  # worker restart: nothing in memory survives
    assert memory_sink(sink) == []
    hub.start()
    got = wait_for(lambda: memory_sink(sink), what="aggregate emitted after restart")
    assert len(got) == 1 and [x["i"] for x in got[0].payload["items"]] == [1, 2] and got[0].payload["key"] == "A"
    wait_for(lambda: hub.runtimes[0].aggregates.open_groups("agg", 1) == [], what="group marked completed")  # publish, then mark


def test_ordering_key_keeps_each_keys_messages_in_order(hub: Hub):
    sink = hub.unique
    assert hub.apply(route_yaml("ord", sink, extra="ordering_key: payload.k\npartitions: 3\nconcurrency: 2\n")).ok
    hub.start()
    envs = [msg(i, k=f"K{i % 5}") for i in range(100)]
    hub.publish(envs)
    got = wait_for(lambda: len(memory_sink(sink)) == 100 and memory_sink(sink), what="all ordered messages")
    for k in range(5):
        seq = [e.payload["i"] for e in got if e.payload["k"] == f"K{k}"]
        assert seq == sorted(seq) and len(seq) == 20


def test_idempotency_key_drops_a_second_message_with_the_same_business_key(hub: Hub):
    sink = hub.unique
    assert hub.apply(route_yaml("idem", sink, extra="idempotency_key: payload.order\n")).ok
    hub.start()
    hub.publish([msg(1, order="O1"), msg(2, order="O1"), msg(3, order="O2")])
    wait_for(lambda: hub.bus_store.counts().get("in_flight", 1) == 0 and len(memory_sink(sink)) >= 2, what="processed")
    wait_for(lambda: sum(1 for _ in hub.bus_store.dlq_list()) == 0 and hub.broker.queue_depth("route.idem") == 0, what="drained")
    assert sorted(e.payload["order"] for e in memory_sink(sink)) == ["O1", "O2"]


def test_file_watcher_applies_a_valid_change_and_refuses_an_invalid_one(hub: Hub, tmp_path: Path):
    d = tmp_path / "routes"
    d.mkdir()
    f = d / "w.yaml"
    sink = hub.unique
    f.write_text(route_yaml("w", sink, rev=1))
    hub.settings.routes_dir = d
    rt = RouteRuntime(hub.settings, hub.broker, hub.bus_store, route_store=hub.routes, poll_interval=0.05, watch=True)
    rt.sync_files()
    w = Worker(hub.broker, hub.bus_store, rt.load(), hub.settings)
    rt.attach(w)
    w.start()
    hub.runtimes.append(rt)
    hub.workers.append(w)
    wait_for(lambda: any(t.name == "routes-watch" and t.is_alive() for t in threading.enumerate()), what="watcher")
    f.write_text(route_yaml("w", sink, rev=2))
    wait_for(lambda: rt.current["w"].version == 2, what="file change applied")
    f.write_text(route_yaml("w", sink, rev=3).replace("values:", "valuez:"))
    errs = wait_for(lambda: rt.refused, what="invalid change refused")
    assert errs[0].loc == "steps[0].valuez" and errs[0].line == 5 and errs[0].hint == "did you mean 'values'?"
    hub.publish([msg(1)])
    got = wait_for(lambda: memory_sink(sink), what="message on v2")
    assert got[0].headers["rev"] == "2" and [v["version"] for v in hub.routes.versions("w")] == [1, 2]


def test_call_step_is_request_reply_to_another_route_over_the_bus(hub: Hub):
    sink = hub.unique
    callee = "name: pricing\nfrom: {topic: price.request.v1}\nsteps:\n  - type: map\n    replace: true\n" \
             "    set: {payload.price: 'payload.qty'}\n"
    caller = route_yaml("caller", sink, extra_steps="  - type: call\n    route: pricing\n    target: payload.quote\n    timeout: 20\n")
    assert hub.apply(callee).ok and hub.apply(caller).ok
    hub.start()
    hub.publish([msg(1, qty=3)])
    got = wait_for(lambda: memory_sink(sink), what="caller output")
    assert got[0].payload == {"i": 1, "qty": 3, "quote": {"price": 3}}


def test_route_from_a_source_adapter_endpoint(hub: Hub):
    from pydantic import Field

    from esbhub.adapters.base import AdapterConfig, AdapterSpec, Source
    from esbhub.adapters.registry import register

    class CountConfig(AdapterConfig):
        count: int = Field(description="How many messages to emit.")

    class CountSource(Source[CountConfig]):
        def start(self, emit):
            emit([Envelope.create("party.v1", {"i": i}, source="count") for i in range(self.config.count)])

        def stop(self, timeout: float = 10.0) -> None:
            pass

    register(AdapterSpec(name="count", config_model=CountConfig, source_cls=CountSource, description="test source"))
    sink = hub.unique
    bad = route_yaml("fromsrc", sink).replace("from: {topic: party.v1}", "from: {adapter: count, config: {cnt: 3}}")
    r = hub.apply(bad)
    assert not r.ok and any(e.loc == "from.config.cnt" and e.hint == "did you mean 'count'?" and e.line == 2 for e in r.errors)
    assert hub.apply(route_yaml("fromsrc", sink).replace("from: {topic: party.v1}", "from: {adapter: count, config: {count: 5}}")).ok
    hub.start()
    got = wait_for(lambda: len(memory_sink(sink)) == 5 and memory_sink(sink), what="messages from the source")
    assert sorted(e.payload["i"] for e in got) == list(range(5)) and {e.source for e in got} == {"count"}


def test_empty_split_emits_nothing_is_counted_and_the_message_is_filtered(hub: Hub):
    from prometheus_client import REGISTRY

    sink = hub.unique
    assert hub.apply(route_yaml("sp", sink, extra_steps="  - type: split\n    expression: payload.items\n")).ok
    hub.start()
    before = REGISTRY.get_sample_value("hub_route_split_empty_total", {"route": "sp"}) or 0
    empty, full = msg(1, items=[]), msg(2, items=[{"a": 1}, {"a": 2}])
    hub.publish([empty, full])
    wait_for(lambda: len(memory_sink(sink)) == 2, what="two parts of the full message")
    wait_for(lambda: (hub.bus_store.get_message(empty.id) or {}).get("routes", {}).get("sp", {}).get("state") == "filtered",
               what="empty split recorded as filtered")
    assert REGISTRY.get_sample_value("hub_route_split_empty_total", {"route": "sp"}) == before + 1
    assert [e.headers["split-index"] for e in memory_sink(sink)] == ["0", "1"]


def test_in_flight_message_finishes_on_the_old_version_the_next_runs_on_the_new(hub: Hub):
    from esbhub.routes import registry

    entered, release = threading.Event(), threading.Event()

    @registry.step("tests.hold_first")
    def hold_first(message, config):
        if message["payload"]["i"] == 0:
            entered.set()
            assert release.wait(20)
        return message

    sink = hub.unique
    steps = "  - type: code\n    function: tests.hold_first\n"
    assert hub.apply(route_yaml("swap", sink, rev=1, extra_steps=steps)).ok
    rt = hub.start()
    hub.publish([msg(0)])
    assert entered.wait(20)  # message 0 is inside version 1
    assert hub.apply(route_yaml("swap", sink, rev=2, extra_steps=steps)).ok
    wait_for(lambda: rt.current["swap"].version == 2, what="swap while a message is in flight")
    hub.publish([msg(1)])
    release.set()
    got = wait_for(lambda: len(memory_sink(sink)) == 2 and memory_sink(sink), what="both messages")
    assert [(e.payload["i"], e.headers["rev"], e.headers["esbhub-route"]) for e in got] == [(0, "1", "swap@v1"), (1, "2", "swap@v2")]


def test_delete_drains_what_was_accepted_then_stops_and_removes_the_queue(hub: Hub):
    sink = hub.unique
    assert hub.apply(route_yaml("gone", sink)).ok
    hub.routes.set_paused("gone", True, by="t")  # messages pile up in the queue
    rt = hub.start()
    wait_for(lambda: hub.workers[0].subscriptions().get("gone", {}).get("paused"), what="paused")
    hub.publish([msg(i) for i in range(30)])
    wait_for(lambda: hub.broker.queue_depth("route.gone") == 30, what="queued")
    v = hub.routes.delete("gone", by="ops", comment="retired")
    assert v["action"] == "delete" and v["author"] == "ops"
    # the deleted (and paused) route is drained: everything accepted before the deletion is processed
    wait_for(lambda: "gone" not in rt.current and "gone" not in hub.workers[0].subscriptions(), what="drained and stopped")
    assert sorted(e.payload["i"] for e in memory_sink(sink)) == list(range(30))
    hub.publish([msg(99)])  # its queue (and binding) is gone: this one is not the route's any more
    assert hub.broker.queue_depth("route.gone") == 0
    assert [x["action"] for x in hub.routes.versions("gone")] == ["apply", "delete"]
    # brought back by a rollback: a new version, consumed again
    hub.routes.rollback("gone", author="ops")
    wait_for(lambda: "gone" in hub.workers[0].subscriptions(), what="route back after rollback")
    hub.publish([msg(100)])
    wait_for(lambda: len(memory_sink(sink)) == 31, what="message on the restored route")
    assert memory_sink(sink)[-1].payload["i"] == 100 and memory_sink(sink)[-1].headers["esbhub-route"] == "gone@v3"


def test_delete_of_an_ordered_route_drains_its_partitions_and_releases_their_leases(hub: Hub):
    sink = hub.unique
    assert hub.apply(route_yaml("ordd", sink, extra="ordering_key: payload.k\npartitions: 2\n")).ok
    hub.routes.set_paused("ordd", True, by="t")
    rt = hub.start()
    hub.publish([msg(i, k=f"K{i % 3}") for i in range(30)])
    wait_for(lambda: hub.broker.queue_depth("route.ordd") == 30, what="queued while paused")
    hub.routes.delete("ordd", by="ops")
    wait_for(lambda: "ordd" not in rt.current and not any(n.startswith("ordd") for n in hub.workers[0].subscriptions()),
               what="drained and stopped")
    got = memory_sink(sink)
    assert sorted(e.payload["i"] for e in got) == list(range(30))
    for k in range(3):
        seq = [e.payload["i"] for e in got if e.payload["k"] == f"K{k}"]
        assert seq == sorted(seq)
    wait_for(lambda: hub.routes.slot_holders("ordd") == {}, what="leases released")


def _backlog(hub: Hub, name: str, envs: list[Envelope]) -> None:
    """Messages waiting in the route's queue before its worker starts: consumers see a backlog."""
    hub.broker.declare_queue(f"route.{name}", ["party.v1"])
    hub.publish(envs)


def _record_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from esbhub.routes.runtime import RouteHandler

    sizes: list[int] = []
    real = RouteHandler.batch

    def batch(self: RouteHandler, items: Any) -> Any:
        sizes.append(len(items))
        return real(self, items)

    monkeypatch.setattr(RouteHandler, "batch", batch)
    return sizes


def test_batched_route_delivers_each_message_once_and_dead_letters_a_bad_one_alone(hub: Hub, monkeypatch: pytest.MonkeyPatch):
    sizes = _record_batches(monkeypatch)
    sink = hub.unique
    steps = "  - type: choice\n    when:\n      - if: \"payload.bad == null\"\n        steps: []\n"
    assert hub.apply(route_yaml("bt", sink, extra_steps=steps, extra="batch_max: 16\n")).ok
    bad = {17, 50, 51, 120}
    envs = [msg(i, **({"bad": True} if i in bad else {})) for i in range(150)]
    _backlog(hub, "bt", envs)
    hub.start()
    wait_for(lambda: hub.bus_store.dlq_count(subscription="bt") == len(bad), what="the bad messages dead-lettered")
    got = wait_for(lambda: len(memory_sink(sink)) >= 150 - len(bad) and memory_sink(sink), what="the good ones")
    assert sorted(e.payload["i"] for e in got) == sorted(set(range(150)) - bad)  # each exactly once
    assert len({e.id for e in got}) == len(got)
    rows = hub.bus_store.dlq_list(subscription="bt")
    assert {hub.bus_store.dlq_get(r["id"])["envelope"]["payload"]["i"] for r in rows} == bad
    assert [(r["error"]["type"], r["attempts"]) for r in rows] == [("NoRouteMatched", 1)] * len(bad)  # permanent: no retry
    assert max(sizes) > 1 and max(sizes) <= 16  # the backlog really ran in micro-batches
    hub.bus_store.flush()
    c = wait_for(lambda: (c := hub.bus_store.counts())["delivered"] == 150 - len(bad) and c, what="states recorded")
    assert c["dead_lettered"] == len(bad) and c["in_flight"] == 0 and c["accepted"] == c["delivered"] + c["dead_lettered"]


def test_batched_at_most_once_route_drops_a_failing_message_and_delivers_the_rest(hub: Hub, monkeypatch: pytest.MonkeyPatch):
    sizes = _record_batches(monkeypatch)
    sink = hub.unique
    text = f"""\
name: amo
batch_max: 8
delivery: at_most_once
from: {{topic: party.v1}}
steps:
  - type: choice
    when:
      - if: "payload.bad == null"
        steps: []
to:
  - {{adapter: memory, name: sink, config: {{name: {sink}}}}}
on_error: {{dead_letter: none}}
"""
    assert hub.apply(text).ok
    _backlog(hub, "amo", [msg(i, **({"bad": True} if i == 5 else {})) for i in range(40)])
    hub.start()
    got = wait_for(lambda: len(memory_sink(sink)) >= 39 and memory_sink(sink), what="the others delivered")
    assert sorted(e.payload["i"] for e in got) == [i for i in range(40) if i != 5]
    hub.bus_store.flush()
    # the sink sees a batch before its messages are acked and counted: wait for the counts to settle
    c = wait_for(lambda: (c := hub.bus_store.counts())["filtered"] == 1 and c["delivered"] >= 39 and c,
                 what="the dropped one and the delivered counted")
    assert c["delivered"] == 39 and c["dead_lettered"] == 0 and hub.bus_store.dlq_count(subscription="amo") == 0
    assert max(sizes) > 1


def test_route_with_batch_max_1_runs_one_message_at_a_time(hub: Hub, monkeypatch: pytest.MonkeyPatch):
    sizes = _record_batches(monkeypatch)
    sink = hub.unique
    assert hub.apply(route_yaml("one", sink, extra="batch_max: 1\n")).ok
    _backlog(hub, "one", [msg(i) for i in range(30)])
    hub.start()
    wait_for(lambda: len(memory_sink(sink)) == 30, what="30 messages")
    assert sizes == []  # the per-message handler ran every message

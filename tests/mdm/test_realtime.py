"""The MDM's micro-batched consumer (esbhub.mdm.realtime) in a real Worker on the embedded broker:
batches of waiting party.v1 records, events ordered per golden id, a bad payload dead-lettered
alone, and the same golden records as one ingest per record."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from waiting import wait_for

from esbhub.bus.broker import create_broker
from esbhub.bus.envelope import Envelope
from esbhub.bus.store import BusStore
from esbhub.bus.worker import Worker
from esbhub.config import RetryPolicy, Settings
from esbhub.db import upgrade
from esbhub.mdm import realtime
from esbhub.mdm.service import MdmService, service_for
from esbhub.mdm.synth import generate
from esbhub.schemas.party import Party
from mdm.fakes import party

HOLD_FOR = 40  # the first batch waits until it and the records queued behind it are this many


def _stream() -> list[Party]:
    """Synthetic records of 30 companies, then a changed version of every fourth one."""
    records = generate(30, seed=5).records
    later = datetime(2026, 6, 1, tzinfo=UTC)
    changes = [p.model_copy(update={"status": "suspended", "source_updated_at": later + timedelta(minutes=i)})
               for i, p in enumerate(records[::4])]
    return records + changes


def _envelope(p: Party) -> Envelope:
    return Envelope.create("party.v1", p.model_dump(mode="json", exclude_none=True), source=p.source_system)


class Run:
    """A Worker with the MDM subscription; the backlog is published before it starts."""

    def __init__(self, settings: Settings, unique: str, hold: int = HOLD_FOR, **kw) -> None:
        self.settings = settings
        self.url = settings.effective_database_url
        upgrade(self.url)
        self.broker = create_broker(settings.effective_broker_url, exchange=settings.exchange)
        self.broker.connect()
        self.events_q = unique
        self.broker.declare_queue(unique, ["party.golden.#"])
        self.store = BusStore(self.url)
        [sub] = realtime.subscriptions(settings, self.broker, **kw)
        sub.retry = RetryPolicy(max_attempts=1)
        self.sub = sub
        self.batches: list[list[str]] = []
        inner = sub.batch_handler
        assert inner is not None

        def recorded(items):
            if not self.batches and hold:  # hold the first batch until a backlog is queued behind it
                rt = self.worker._subs[sub.name]
                wait_for(lambda: len(items) + sum(len(f) for f in rt.feeds) >= hold, 30, "backlog queued")
            self.batches.append([env.id for env, _ in items])
            return inner(items)

        sub.batch_handler = recorded
        self.broker.declare_queue(sub.queue, sub.binding_keys)
        self.worker = Worker(self.broker, self.store, [sub], settings)
        self.events: list[Envelope] = []

    def publish(self, envs: list[Envelope]) -> None:
        self.store.record_accepted(envs)
        self.broker.publish_many(envs)

    def settle(self, n: int) -> dict:
        def done():
            # counts first, events after: a message is recorded delivered only once its batch's
            # events are on the bus, so draining afterwards cannot miss the last batch's events
            # (draining first could, when that batch finished in between)
            self.store.flush()
            c = self.store.counts()
            while (d := self.broker.get(self.events_q, timeout=0.01)) is not None:
                self.events.append(d.envelope)
                d.ack()
            return c["delivered"] + c["dead_lettered"] == n and c["in_flight"] == 0 and c

        c: dict = {}
        wait_for(lambda: bool(c.update(done() or {}) or c), 60, "every record settled")
        return c

    def close(self) -> None:
        self.worker.stop(10)
        self.broker.close()
        self.store.close()


@pytest.fixture
def run(settings, unique) -> Iterator[Run]:
    r = Run(settings, unique)
    yield r
    r.close()


def test_backlog_is_ingested_in_batches_and_events_come_in_seq_order_per_golden_id(run):
    envs = [_envelope(p) for p in _stream()]
    run.publish(envs)
    run.worker.start()
    c = run.settle(len(envs))
    assert c["delivered"] == len(envs) and c["dead_lettered"] == 0
    assert max(len(b) for b in run.batches) >= HOLD_FOR  # batched, not one transaction per record
    seqs: dict[str, list[int]] = {}
    for e in run.events:
        seqs.setdefault(e.payload["golden_id"], []).append(e.payload["seq"])
    svc = service_for(run.settings)
    assert seqs and all(s == list(range(1, len(s) + 1)) for s in seqs.values())  # every version, in order
    assert all(svc.golden(g)["version"] == s[-1] for g, s in seqs.items())
    assert len({e.id for e in run.events}) == len(run.events)


def test_a_bad_party_payload_in_a_batch_is_dead_lettered_alone_and_the_rest_is_ingested(run):
    records = _stream()[:80]
    envs = [_envelope(p) for p in records]
    bad = Envelope.create("party.v1", {"name": "no source system"}, source="crm")
    envs.insert(50, bad)
    run.publish(envs)
    run.worker.start()
    c = run.settle(len(envs))
    assert (c["delivered"], c["dead_lettered"]) == (len(envs) - 1, 1)
    [dl] = run.store.dlq_list(subscription=run.sub.name)
    assert dl["message_id"] == bad.id and "party.v1 payload invalid" in dl["error"]["message"]
    assert any(bad.id in b and len(b) > 1 for b in run.batches)  # it was in a batch with others
    svc = service_for(run.settings)
    assert set().union(*svc.partition_now()) == {f"{p.source_system}:{p.source_id}" for p in records}


def test_golden_records_have_the_same_members_and_values_as_with_one_ingest_per_record(run, tmp_path):
    records = _stream()
    envs = [_envelope(p) for p in records]
    run.publish(envs)
    run.worker.start()
    run.settle(len(envs))
    assert len(run.batches) < len(envs)
    one = MdmService(f"sqlite:///{tmp_path / 'one_by_one.db'}")
    for p, e in zip(records, envs, strict=True):
        one.ingest(p, e.id, envelope=e)
    batched = service_for(run.settings)
    assert batched.partition_now() == one.partition_now()
    assert _state(batched) == _state(one)


def _state(svc: MdmService) -> dict:
    """Every active golden record by its members: status, tier and every golden value with the
    record it came from and the rule that won. (Golden id numbers are not compared: one record
    per transaction founds golden records that a later record merges away — retired ids — where
    a batch clusters first; the receive time, ``source_updated_at`` when the source gave none,
    differs between two runs.)"""
    out = {}
    for status, _merged_into, members, attrs, tier in svc.snapshot()["goldens"].values():
        if status != "active":
            continue
        values = {k: (v.get("value"), _without_times(v.get("lineage"))) for k, v in orjson.loads(attrs).items()}
        out[frozenset(members)] = (tier, values)
    return out


def _without_times(lineage):
    if isinstance(lineage, list):
        return [_without_times(x) for x in lineage]
    return {k: v for k, v in (lineage or {}).items() if k != "source_updated_at"}



def test_a_steward_event_left_in_the_outbox_goes_out_before_the_next_batch_s_event_of_its_golden_id(settings, unique):
    r = Run(settings, unique, hold=0)
    try:
        crm1 = party("crm", "1", "深圳市华信科技有限公司", phones=["0755-88886666"], city="深圳")
        crm9 = party("crm", "9", "广州市远洋物流有限公司", phones=["020-33334444"], city="广州")
        r.publish([_envelope(crm1), _envelope(crm9)])
        r.worker.start()
        r.settle(2)
        svc = service_for(r.settings)
        merged = svc.merge("crm:1", "crm:9", by="erin")  # the broker was down: its events wait in the outbox
        assert svc.pending_events() == len(merged) == 2
        r.publish([_envelope(crm1.model_copy(update={"status": "suspended"}))])  # the survivor's next version
        r.settle(3)
        survivor = svc.resolve_id("crm:1")
        mine = [(e.payload["seq"], e.payload["actor"]) for e in r.events if e.payload["golden_id"] == survivor]
        assert mine == [(1, "engine"), (2, "erin"), (3, "engine")]
        assert svc.pending_events() == 0
    finally:
        r.close()


def test_the_consumer_takes_its_queue_and_the_tiers_it_gives_from_the_hub_settings(tmp_path, unique):
    configured = Settings(data_dir=tmp_path / "var", mdm={"queue": "mdm-east",
                                                          "tiering": {"thresholds": {"gold": 40_000}, "below": "std"}})
    r = Run(configured, unique, hold=0)
    try:
        assert r.sub.queue == "route.mdm-east"
        rich, poor = (Party(source_system="billing", source_id=sid, name=name,
                            attributes={"billing_account": f"BA-{sid}", "monthly_revenue": revenue})
                      for sid, name, revenue in (("1", "深圳市华信科技有限公司", "50000"),
                                                 ("2", "广州市远洋物流有限公司", "100")))
        r.publish([_envelope(rich), _envelope(poor)])
        r.worker.start()
        r.settle(2)
        svc = service_for(configured)
        assert [svc.golden(svc.resolve_id(k))["tier"] for k in ("billing:1", "billing:2")] == ["gold", "std"]
    finally:
        r.close()


def test_the_running_consumer_scores_its_next_batch_with_the_model_a_rematch_elsewhere_applied(settings, unique):
    from esbhub.mdm.match import MatchModel
    from esbhub.mdm.settings import mdm_settings_of

    r = Run(settings, unique, hold=0)
    try:
        crm1 = party("crm", "1", "深圳市华信科技有限公司", phones=["0755-88886666"], city="深圳")
        crm2 = party("crm", "2", "深圳华信科技有限公司", phones=["0755-88886666"], city="深圳")
        crm3 = party("crm", "3", "华信科技(深圳)有限公司", phones=["0755-88886666"], city="深圳")
        r.publish([_envelope(crm1), _envelope(crm2)])
        r.worker.start()
        r.settle(2)
        worker = service_for(r.settings)
        assert worker.partition_now() == {frozenset({"crm:1", "crm:2"})}  # the engine's defaults merge them
        strict = MatchModel(merge_threshold=1.0, review_threshold=1.0)  # links nothing
        MdmService(r.url, settings=mdm_settings_of(r.settings)).rematch(strict)  # `esbhub mdm rematch` elsewhere
        r.publish([_envelope(crm3)])
        r.settle(3)
        assert worker.matcher.model == strict
        assert worker.partition_now() == {frozenset({"crm:1"}), frozenset({"crm:2"}), frozenset({"crm:3"})}
    finally:
        r.close()

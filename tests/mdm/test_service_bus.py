"""The MDM subscription (esbhub.mdm.realtime) inside a real Worker on the embedded broker: party.v1 in, party.golden.* out."""

from __future__ import annotations

from waiting import wait_for

from esbhub.bus.broker import create_broker
from esbhub.bus.envelope import Envelope
from esbhub.bus.store import BusStore
from esbhub.bus.worker import Worker
from esbhub.config import RetryPolicy
from esbhub.db import upgrade
from esbhub.mdm import realtime
from esbhub.mdm import service as mdm_service
from mdm.fakes import party, uscc


def test_party_messages_become_golden_records_and_ordered_events_once_each(settings, unique):
    url = settings.effective_database_url
    upgrade(url)
    broker = create_broker(settings.effective_broker_url, exchange=settings.exchange)
    broker.connect()
    broker.declare_queue(unique, ["party.golden.#"])
    store = BusStore(url)
    subs = realtime.subscriptions(settings, broker)
    subs[0].retry = RetryPolicy(max_attempts=1)
    worker = Worker(broker, store, subs, settings)
    worker.start()
    try:
        records = [
            party("crm", "1", "深圳市华信科技有限公司", uscc=uscc(1), city="深圳"),
            party("billing", "A1", "华信科技(深圳)有限责任公司", uscc=uscc(1), city="深圳",
                  attributes={"billing_account": "BA1", "monthly_revenue": "1500000"}),
            party("crm", "9", "广州市远洋物流有限公司", uscc=uscc(2), city="广州"),
        ]
        envs = [Envelope.create("party.v1", p.model_dump(mode="json", exclude_none=True), source=p.source_system)
                for p in records]
        broker.publish_many(envs)
        broker.publish_many([envs[1]])  # a redelivery of the same message (same id)
        broker.publish(Envelope.create("party.v1", {"name": "no source"}, source="crm"))  # invalid → dead letter
        events: list[Envelope] = []
        svc = mdm_service.service_for(settings)
        want = {frozenset({"crm:1", "billing:A1"}), frozenset({"crm:9"})}

        def drain() -> bool:
            while (d := broker.get(unique, timeout=0.05)) is not None:
                events.append(d.envelope)
                d.ack()
            return (len(store.dlq_list(subscription=subs[0].name)) == 1 and svc.partition_now() == want
                    and {e.payload["golden_id"] for e in events} == {"G0000000001", "G0000000002"})

        wait_for(drain, 30, "both golden records with their events, and one dead letter")
        seqs: dict[str, list[int]] = {}
        for e in events:
            assert e.causation_id in {x.id for x in envs}
            seqs.setdefault(e.payload["golden_id"], []).append(e.payload["seq"])
        # Micro-batches may create G1 with both members at once (one event) or in two steps (two);
        # either way each golden id's events are its versions 1..n in order, and the redelivery
        # may re-publish the same events (same ids), never new versions.
        for s in seqs.values():
            assert sorted(set(s)) == list(range(1, max(s) + 1)) and s == sorted(s)
        assert len({e.id for e in events}) == sum(len(set(s)) for s in seqs.values())
        assert svc.get_customer("G0000000001")["tier"] == "A"
    finally:
        worker.stop()
        broker.close()

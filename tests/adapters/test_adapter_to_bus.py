"""Sources feeding the real bus: emit = Broker.publish_many (durable before the source acks)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from waiting import wait_for

from esbhub.adapters.base import broker_emitter
from esbhub.adapters.docs import render
from esbhub.adapters.registry import get_adapter
from esbhub.adapters.sql import SqlSource, SqlSourceConfig
from esbhub.bus.broker import create_broker
from esbhub.errors import BrokerUnavailable


def test_sql_outbox_rows_land_on_the_bus_and_are_marked_done_only_after(tmp_path, broker_url, unique):
    db = f"sqlite:///{tmp_path / 'app.db'}"
    eng = sa.create_engine(db)
    with eng.begin() as c:
        c.execute(sa.text("CREATE TABLE outbox (id integer primary key, customer text, lease_until timestamp,"
                          " lease_token text, processed_at timestamp)"))
        c.execute(sa.text("INSERT INTO outbox (id, customer) VALUES (:i, :c)"), [{"i": i, "c": f"客户{i}"} for i in range(50)])
    broker = create_broker(broker_url, exchange=f"x{unique}")
    broker.connect()
    q = f"q.{unique}"
    broker.declare_queue(q, ["party.v1"])
    src = SqlSource(SqlSourceConfig(url=db, table="outbox", mode="outbox", batch_size=20, poll_interval=0.05,
                                    envelope={"type": "party.v1", "source": "crm-db"}), name="outbox")
    try:
        src.start(broker_emitter(broker, timeout=5))
        wait_for(lambda: broker.queue_depth(q) == 50, 20, what="50 messages on the bus")
        src.stop()
        with eng.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM outbox WHERE processed_at IS NULL")).scalar() == 0
        seen = set()
        while (d := broker.get(q, timeout=1)) is not None:
            seen.add(d.envelope.payload["id"])
            assert d.envelope.source == "crm-db"
            d.ack()
        assert seen == set(range(50))
    finally:
        src.stop()
        broker.delete_queue(q)
        broker.close()
        eng.dispose()


def test_rows_stay_pending_while_the_bus_refuses_them(tmp_path):
    db = f"sqlite:///{tmp_path / 'app.db'}"
    eng = sa.create_engine(db)
    with eng.begin() as c:
        c.execute(sa.text("CREATE TABLE outbox (id integer primary key, lease_until timestamp, lease_token text,"
                          " processed_at timestamp)"))
        c.execute(sa.text("INSERT INTO outbox (id) VALUES (1), (2)"))

    def bus_down(envs):
        raise BrokerUnavailable("not durable")

    src = SqlSource(SqlSourceConfig(url=db, table="outbox", mode="outbox", envelope={"type": "party.v1", "source": "x"}))
    with pytest.raises(BrokerUnavailable):
        src.poll_once(bus_down)
    with eng.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM outbox WHERE processed_at IS NULL AND lease_token IS NULL")).scalar() == 2
    src.close()
    eng.dispose()


@pytest.mark.parametrize("name", ["sql", "http", "amqp", "mqtt", "nats", "timer"])
def test_checked_in_reference_doc_is_up_to_date(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "adapters" / f"{name}.md"
    assert path.read_text(encoding="utf-8") == render(get_adapter(name)), "run: esbhub adapters docs"

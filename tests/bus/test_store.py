"""BusStore on SQLite and on PostgreSQL: state, counts, dedup, dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from esbhub.bus.envelope import Envelope
from esbhub.bus.store import BusStore
from esbhub.db import engine_for, upgrade
from esbhub.errors import ErrorInfo, PermanentError, TransientError

from .memory_broker import MemoryBroker


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    upgrade(url)
    s = BusStore(url, flush_interval=0.02)
    yield s
    s.close()


def env(n: int = 0, type: str = "party.v1") -> Envelope:
    return Envelope.create(type, {"n": n}, source="crm")


def test_upgrade_creates_the_bus_tables(store):
    names = set(sa.inspect(engine_for(store.url)).get_table_names())
    assert {"bus_messages", "bus_message_routes", "bus_processed", "bus_dead_letters"} <= names
    upgrade(store.url)  # idempotent


def test_message_state_per_route_and_overall_with_reconciled_counts(store, unique):
    base = store.counts()
    a, b, c, d = env(1), env(2), env(3), env(4)
    store.record_accepted([a, b, c, d])
    store.record_state(a.id, unique, "in_flight", 1)
    store.record_state(a.id, unique, "delivered", 1)
    store.record_state(a.id, unique + "x", "filtered", 1)
    store.record_state(b.id, unique, "retrying", 2, ErrorInfo.from_exception(TransientError("timeout")),
                       next_attempt_at=datetime.now(UTC) + timedelta(seconds=4))
    store.record_state(c.id, unique, "in_flight", 1)
    store.flush()
    ma = store.get_message(a.id)
    assert ma["state"] == "delivered" and ma["type"] == "party.v1" and ma["source"] == "crm"
    assert ma["routes"][unique]["state"] == "delivered" and ma["routes"][unique + "x"]["state"] == "filtered"
    mb = store.get_message(b.id)
    assert mb["state"] == "retrying" and mb["routes"][unique]["attempt"] == 2
    assert mb["routes"][unique]["error"] == {"kind": "transient", "type": "TransientError", "message": "timeout"}
    assert mb["routes"][unique]["next_attempt_at"]
    assert store.get_message(d.id)["state"] == "accepted"
    assert store.get_message("01NOPE") is None
    cnt = store.counts()
    delta = {k: cnt[k] - base[k] for k in cnt}
    assert delta == {"accepted": 4, "delivered": 1, "retrying": 1, "in_flight": 2, "dead_lettered": 0,
                     "filtered": 0, "queued": 1}
    assert cnt["accepted"] == sum(cnt[k] for k in ("delivered", "retrying", "in_flight", "dead_lettered", "filtered"))


def test_older_state_never_overwrites_a_newer_one(store, unique):
    e = env(5)
    store.record_state(e.id, unique, "in_flight", 1, envelope=e)  # buffered, older
    store.dead_letter(e, unique, ErrorInfo.from_exception(PermanentError("no")), 1)  # committed, newer
    store.flush()
    assert store.get_message(e.id)["state"] == "dead_lettered"
    # a batch from another process carrying an older timestamp loses too
    with store.engine.begin() as conn:
        store._write(conn, [], [dict(store._state_row(e.id, unique, "in_flight", 1, None, None),
                                     updated_at=datetime(2000, 1, 1))], {})
    assert store.get_message(e.id)["state"] == "dead_lettered"


def test_unknown_state_is_refused(store):
    with pytest.raises(ValueError, match="unknown message state 'done'"):
        store.record_state("x", "s", "done")


def test_processed_ids_are_remembered_across_instances_and_purged_after_the_window(store, unique):
    e = env(6)
    assert not store.seen(unique, e.id)
    store.mark_processed(unique, e.id)  # returns once committed
    assert store.seen(unique, e.id)
    other = BusStore(store.url)
    assert other.seen(unique, e.id) and not other.seen(unique + "b", e.id)
    assert other.purge_processed(3600) == 0
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE bus_processed SET processed_at = :t WHERE message_id = :m"),
                     {"t": datetime(2000, 1, 1), "m": e.id})
    assert other.purge_processed(3600) >= 1
    assert not other.seen(unique, e.id)
    other.close()


def test_dead_letter_store_list_filter_show_edit_discard_replay(store, unique):
    broker = MemoryBroker()
    broker.connect()
    broker.declare_queue(f"route.{unique}")
    envs = [env(i, type="bill.v1" if i % 2 else "party.v1") for i in range(6)]
    ids = []
    for i, e in enumerate(envs):
        exc = PermanentError("schema says no") if i < 4 else TransientError("peer down")
        ids.append(store.dead_letter(e, unique, ErrorInfo.from_exception(exc), attempts=i + 1))
    assert len(store.dlq_list(subscription=unique)) == 6
    assert len(store.dlq_list(subscription=unique, type="bill.v1")) == 3
    assert len(store.dlq_list(subscription=unique, error_type="TransientError")) == 2
    assert len(store.dlq_list(subscription=unique, limit=2, offset=5)) == 1
    future = datetime.now(UTC) + timedelta(hours=1)
    assert store.dlq_list(subscription=unique, since=future) == []
    assert len(store.dlq_list(subscription=unique, until=future)) == 6
    assert store.counts()["dead_lettered"] >= 6

    shown = store.dlq_get(ids[0])
    assert shown["envelope"]["id"] == envs[0].id and shown["envelope"]["payload"] == {"n": 0}
    assert shown["error"]["message"] == "schema says no" and shown["attempts"] == 1
    assert shown["subscription"] == unique

    store.dlq_edit(ids[0], {"n": 100}, editor="alice")
    store.dlq_edit(ids[0], {"n": 101}, editor="bob")
    shown = store.dlq_get(ids[0])
    assert shown["envelope"]["payload"] == {"n": 0}  # the original stays
    assert shown["edited_payload"] == {"n": 101} and [e["by"] for e in shown["edits"]] == ["alice", "bob"]

    assert store.dlq_discard([ids[5]], by="ops", reason="test data") == 1
    with pytest.raises(ValueError, match="discarded"):
        store.dlq_edit(ids[5], {}, editor="x")

    n = store.dlq_replay(broker, filter={"subscription": unique, "error_type": "PermanentError"}, by="ops")
    assert n == 4
    got = [broker.get(f"route.{unique}").envelope for _ in range(4)]
    assert [g.id for g in got] == [e.id for e in envs[:4]]
    assert got[0].payload == {"n": 101} and all(g.attempt == 0 for g in got)
    assert store.get_message(envs[0].id)["routes"][unique]["state"] == "in_flight"
    assert [d["id"] for d in store.dlq_list(subscription=unique)] == [ids[4]]
    assert len(store.dlq_list(subscription=unique, status="all")) == 6
    with pytest.raises(ValueError, match="ids or a filter"):
        store.dlq_replay(broker)


def test_unparseable_message_is_kept_raw_with_its_reason(store, unique):
    dlq = store.dead_letter(None, unique, ErrorInfo("invalid", "ValidationError", "not an envelope"), 1,
                            raw=b"\xff{garbage")
    shown = store.dlq_get(dlq)
    assert shown["envelope"] is None and shown["raw"].endswith("{garbage")
    assert shown["error"]["message"] == "not an envelope"


def test_purge_forgets_only_old_finished_messages_and_counts_stay_reconciled(store, unique):
    done, dead, fresh = env(10), env(11), env(12)
    store.record_accepted([done, dead, fresh])
    store.record_state(done.id, unique, "delivered", 1)
    store.record_state(fresh.id, unique, "delivered", 1)
    store.flush()
    store.dead_letter(dead, unique, ErrorInfo.from_exception(PermanentError("x")), 1)
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE bus_messages SET accepted_at = :t WHERE id IN (:a, :b)"),
                     {"t": datetime(2000, 1, 1), "a": done.id, "b": dead.id})
    assert store.purge_messages(3600) == 1
    assert store.get_message(done.id) is None
    assert store.get_message(dead.id)["state"] == "dead_lettered"
    assert store.get_message(fresh.id)["state"] == "delivered"
    c = store.counts()
    assert c["accepted"] == sum(c[k] for k in ("delivered", "retrying", "in_flight", "dead_lettered", "filtered"))

"""Aggregation state in SQL and the route version store, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from esbhub.db import engine_for, upgrade
from esbhub.routes.engine import CompiledRoute
from esbhub.routes.steps import Deps
from esbhub.routes.store import AggregateStore, RouteStore

from .conftest import env, route_of

AGG = """\
name: agg
from: {topic: party.v1}
steps:
  - type: aggregate
    correlation: payload.k
    size: 3
    complete_when: "contains(items[].last, `true`)"
    timeout: 30
to: [{topic: out.v1, name: out}]
"""


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    upgrade(url)
    return url


def test_upgrade_creates_the_routes_tables(db_url: str):
    names = set(sa.inspect(engine_for(db_url)).get_table_names())
    assert {"route_versions", "route_states", "route_aggregate_groups", "route_aggregate_members", "route_idempotency"} <= names


def test_versions_keep_who_when_diff_and_rollback_appends(db_url: str, unique: str):
    st = RouteStore(db_url)
    v1 = st.apply(unique, "a: 1\n", author="alice")
    assert v1 is not None and v1["version"] == 1 and v1["author"] == "alice"
    assert st.apply(unique, "a: 1\n", author="bob") is None  # unchanged content: no new version
    v2 = st.apply(unique, "a: 2\n", author="bob")
    assert v2["version"] == 2 and "-a: 1" in v2["diff"] and "+a: 2" in v2["diff"]
    rb = st.rollback(unique, author="carol")
    assert rb["version"] == 3 and rb["action"] == "rollback" and st.get(unique)["content"] == "a: 1\n"
    assert [(v["version"], v["author"]) for v in st.versions(unique)] == [(1, "alice"), (2, "bob"), (3, "carol")]
    s0 = st.change_stamp()
    st.set_paused(unique, True, by="ops")
    assert unique in st.paused() and st.change_stamp() != s0


def test_aggregate_completes_on_size_on_predicate_and_redelivery_reemits_the_same_id(db_url: str, unique: str):
    deps = Deps(aggregates=AggregateStore(db_url))
    cr = CompiledRoute(route_of(AGG.replace("name: agg", f"name: {unique}")), deps=deps)
    first = [env("party.v1", {"k": "A", "n": i}) for i in range(3)]
    assert [len(cr.run(e).outputs) for e in first] == [0, 0, 1]
    done = cr.run(first[2]).outputs  # redelivery of the completing message
    assert len(done) == 1
    out = cr.run(env("party.v1", {"k": "B", "last": True})).outputs
    assert out[0].envelope.payload["count"] == 1  # predicate
    assert cr.run(first[0]).outputs == []  # a redelivered non-completing member adds nothing
    again = [cr.run(e).outputs for e in [env("party.v1", {"k": "A", "n": 9})]]
    assert again == [[]]  # a new group for key A starts after completion


def test_aggregate_redelivered_completion_gives_the_same_aggregate_id(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade(url)
    cr = CompiledRoute(route_of(AGG), deps=Deps(aggregates=AggregateStore(url)))
    es = [env("party.v1", {"k": "A"}) for _ in range(3)]
    for e in es[:2]:
        cr.run(e)
    a = cr.run(es[2]).outputs[0].envelope
    b = cr.run(es[2]).outputs[0].envelope
    assert a.id == b.id and [x for x in a.payload["items"]] == [{"k": "A"}] * 3


def test_timeout_groups_are_found_after_a_restart_and_marked_once(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade(url)
    now = [1000.0]
    cr = CompiledRoute(route_of(AGG), deps=Deps(aggregates=AggregateStore(url), wall=lambda: now[0]))
    cr.run(env("party.v1", {"k": "A", "n": 1}))
    cr2 = CompiledRoute(route_of(AGG), deps=Deps(aggregates=AggregateStore(url), wall=lambda: now[0]))  # new process
    assert cr2.complete_groups() == []
    now[0] += 31
    (gid, res), = cr2.complete_groups()
    assert res.outputs[0].envelope.payload["items"] == [{"k": "A", "n": 1}]
    assert cr2.deps.aggregates.mark_completed(gid) and not cr2.deps.aggregates.mark_completed(gid)
    assert cr2.complete_groups() == []


def test_idempotency_claim_allows_the_same_message_again_but_not_another(db_url: str, unique: str):
    st = RouteStore(db_url)
    assert st.claim_key(unique, "k", "m1") and st.claim_key(unique, "k", "m1") and not st.claim_key(unique, "k", "m2")
    from esbhub.routes.store import purge_idempotency

    assert purge_idempotency(st, 3600) == 0  # still inside the window
    assert purge_idempotency(st, -1) >= 1 and st.claim_key(unique, "k", "m2")  # forgotten after the window

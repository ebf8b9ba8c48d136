"""Initial load set at a time (esbhub.mdm.bulk) against the same records loaded batch by batch."""

from __future__ import annotations

import collections

import pytest
import sqlalchemy as sa

from esbhub.mdm import loader
from esbhub.mdm.bulk import BulkLoad
from esbhub.mdm.service import MdmService
from esbhub.mdm.standardize import standardize
from esbhub.mdm.store import Golden, Hierarchy, Inbox, KeyIndex, Link, SourceVersion, Task, Xref
from esbhub.mdm.survivorship import values
from esbhub.mdm.synth import generate
from mdm.fakes import fresh_pg_db, party, uscc


def with_versions(records):
    """The records, then later versions of some of them: renamed (new links), suspended,
    deleted, sent again unchanged, and one envelope twice."""
    out = list(records)
    out.append(records[3].model_copy(update={"name": records[10].name, "uscc": None}))
    out.append(records[5].model_copy(update={"status": "suspended"}))
    out.append(records[7].model_copy(update={"deleted": True}))
    out.append(records[12])  # unchanged: the same content again
    out.append(records[3].model_copy(update={"name": records[20].name, "uscc": None}))  # a third version
    out.append(records[7].model_copy(update={"deleted": False, "status": "closed"}))  # back, changed
    return out


def state(svc: MdmService) -> dict:
    """Everything the store holds that does not depend on how the load was cut into
    transactions: golden records named by their member keys, not their ids."""
    with svc.Session() as s:
        members: dict[str, set[str]] = collections.defaultdict(set)
        for x in s.execute(sa.select(Xref)).scalars():
            members[x.golden_id].add(x.key)
        name = {g: frozenset(m) for g, m in members.items()}
        return {
            "partition": set(name.values()),
            "goldens": {name[g.golden_id]: (g.status, tuple(g.members), values(g.attributes), g.tier, g.kind, g.name,
                                            g.core_name, g.uscc)
                        for g in s.execute(sa.select(Golden).where(Golden.status != "retired")).scalars()},
            "xref": sorted((x.key, x.version, x.content_hash, x.kind, x.name, x.core_name, x.name_norm, x.uscc,
                            x.billing_account, x.parent_billing_account, x.deleted, repr(x.raw), repr(x.std))
                           for x in s.execute(sa.select(Xref)).scalars()),
            "links": sorted((lk.a_key, lk.b_key, lk.weight, lk.probability, lk.decision, lk.hard, repr(lk.evidence))
                            for lk in s.execute(sa.select(Link).where(Link.active.is_(True))).scalars()),
            "key_index": sorted(s.execute(sa.select(KeyIndex.kind, KeyIndex.value, KeyIndex.source_system,
                                                    KeyIndex.source_id)).all()),
            "versions": sorted(s.execute(sa.select(SourceVersion.source_system, SourceVersion.source_id,
                                                   SourceVersion.version, SourceVersion.envelope_id,
                                                   SourceVersion.content_hash, SourceVersion.deleted)).all()),
            # which edges: their evidence may name either side's record, whichever computed it first
            "hierarchy": {(name[h.parent_golden], name[h.child_golden], h.kind) for h in
                          s.execute(sa.select(Hierarchy).where(Hierarchy.active.is_(True))).scalars()},
            "open_tasks": sorted(s.execute(sa.select(Task.a_key, Task.b_key).where(Task.status == "open")).all()),
            # every envelope's outcome ("new:batched" says its batch's events are on another row)
            "inbox": sorted((e, o.removesuffix(":batched"))
                            for e, o in s.execute(sa.select(Inbox.envelope_id, Inbox.outcome)).all()),
        }


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_stores(request, tmp_path, unique) -> tuple[str, str]:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'batches.db'}", f"sqlite:///{tmp_path / 'bulk.db'}"
    urls = []
    for name in ("a", "b"):
        url, drop = fresh_pg_db(request.getfixturevalue("pg_url"), f"mdm_{name}_{unique}")
        request.addfinalizer(drop)
        urls.append(url)
    return urls[0], urls[1]


def test_initial_load_set_at_a_time_gives_the_store_that_loading_batch_by_batch_gives(two_stores):
    records = with_versions(generate(60, seed=6).records)
    batches = MdmService(two_stores[0])
    a = loader.load_parties(batches, records, batch=25, workers=0, bulk=False)
    bulk = MdmService(two_stores[1])
    b = loader.load_parties(bulk, records, batch=25, workers=0)
    assert (a["mode"], b["mode"]) == ("batches", "bulk")
    sa_, sb = state(batches), state(bulk)
    assert len(sa_["partition"]) < len(sa_["xref"]) and sa_["hierarchy"] and sa_["links"]  # the data has all of it
    assert any(v[2] > 1 for v in sa_["versions"]) and any(v[-1] for v in sa_["versions"])
    for part in sa_:
        assert sa_[part] == sb[part], part
    # one created event per golden record, nothing on the way (no merged / updated versions)
    assert b["events"] == len(sb["partition"]) < a["events"]
    with bulk.Session() as s:
        assert set(s.execute(sa.select(Golden.status)).scalars()) <= {"active", "inactive"}


def test_group_and_branch_edges_of_the_bulk_load_are_those_batches_make_and_need_a_tie_beyond_the_name(two_stores):
    street = "广东省深圳市南山区科技园路1号"
    records = [  # members and branches before their group / head office, in batches of two
        party("billing", "M1", "上海华信科技有限公司", uscc=uscc(3, "310100"),
              attributes={"billing_account": "MA", "parent_billing_account": "GA"}),
        party("crm", "M2", "华信科技(天津)有限公司", uscc=uscc(4, "120100"), address=street),
        party("billing", "T", "广州市华信科技有限公司", uscc=uscc(2, "440100"), address="广州市天河区体育西路2号"),
        party("res", "B", "远洋物流有限公司上海办事处", city="上海"),
        party("billing", "G", "深圳市华信科技集团有限公司", uscc=uscc(1), address=street,
              attributes={"billing_account": "GA"}),
        party("crm", "H", "杭州市远洋物流有限公司", uscc=uscc(5, "330100")),
    ]
    batches = MdmService(two_stores[0])
    loader.load_parties(batches, records, batch=2, workers=0, bulk=False)
    bulk = MdmService(two_stores[1])
    assert loader.load_parties(bulk, records, workers=0)["mode"] == "bulk"
    one = {k: frozenset({k}) for k in ("billing:M1", "crm:M2", "billing:G", "res:B", "crm:H")}
    assert state(batches)["hierarchy"] == state(bulk)["hierarchy"] == {
        (one["billing:G"], one["billing:M1"], "billing_parent"), (one["billing:G"], one["billing:M1"], "group_member"),
        (one["billing:G"], one["crm:M2"], "group_member"),  # the group's street
        (one["crm:H"], one["res:B"], "branch"),  # the one 远洋物流有限公司, registered in 杭州
    }  # not billing:T, the same 字号 in another city


def test_the_bulk_load_publishes_one_created_event_per_golden_record_after_it_committed(tmp_path):
    records = generate(30, seed=2).records
    svc = MdmService(f"sqlite:///{tmp_path / 'm.db'}")
    published: list = []

    def publish(evs):
        with svc.Session() as s:  # committed before anything is published
            assert s.execute(sa.select(sa.func.count()).select_from(Golden)).scalar() > 0
        published.extend(evs)

    out = loader.load_parties(svc, records, batch=20, workers=0, publish=publish)
    assert out["mode"] == "bulk" and out["events"] == len(published)
    gids = [e.payload["golden_id"] for e in published]
    assert sorted(gids) == sorted(svc.snapshot()["goldens"]) and len(set(gids)) == len(gids)
    for e in published:
        g = svc.golden(e.payload["golden_id"])
        assert e.type == "party.golden.created.v1" and e.payload["seq"] == 1
        assert e.payload["source_keys"] == g["source_keys"] and e.payload["attributes"] == g["attributes"]


def test_loading_the_same_records_again_changes_nothing_and_returns_the_created_events(tmp_path):
    records = generate(30, seed=4).records
    svc = MdmService(f"sqlite:///{tmp_path / 'm.db'}")
    first: list = []
    loader.load_parties(svc, records, batch=20, workers=0, publish=first.extend)
    before = svc.snapshot()
    again: list = []
    out = loader.load_parties(svc, records, batch=20, workers=0, publish=again.extend)
    assert out["mode"] == "batches"  # the store is not empty any more
    assert svc.snapshot() == before
    assert sorted(e.id for e in again) == sorted(e.id for e in first)
    assert sorted(e.model_dump_json() for e in again) == sorted(e.model_dump_json() for e in first)


def test_a_change_after_the_bulk_load_goes_on_from_the_loaded_golden_record(two_stores):
    records = generate(30, seed=4).records
    svc = MdmService(two_stores[1])
    loader.load_parties(svc, records, batch=20, workers=0)
    changed = records[0].model_copy(update={"status": "suspended"})
    gid = svc.xref(records[0].source_system, records[0].source_id)["golden_id"]
    events = svc.ingest(changed, "later-1")
    assert [(e.payload["golden_id"], e.payload["seq"], e.payload["change"]) for e in events] == [(gid, 2, "updated")]
    # the matcher index the bulk load built is the service's: a new record of a loaded company matches
    twin = records[1].model_copy(update={"source_system": "crm", "source_id": "NEW-1"})
    svc.ingest(twin, "later-2")  # its links get ids after the load's
    assert svc.xref("crm", "NEW-1")["golden_id"] == svc.xref(records[1].source_system, records[1].source_id)["golden_id"]
    with svc.Session() as s:
        ids = s.execute(sa.select(Link.id)).scalars().all()
        assert len(ids) == len(set(ids)) and s.execute(
            sa.select(sa.func.count()).select_from(Link).where(Link.a_key.in_(["crm:NEW-1"]) | (Link.b_key == "crm:NEW-1"))
        ).scalar() > 0


def index_set(svc: MdmService) -> list:
    with svc.Session() as s:
        return s.execute(sa.text("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE type = 'index' "
                                 "ORDER BY name")).all()


def test_the_initial_load_builds_the_indexes_it_dropped_and_a_failed_one_gets_them_back(tmp_path):
    records = generate(20, seed=9).records
    fresh = MdmService(f"sqlite:///{tmp_path / 'fresh.db'}")
    want = index_set(fresh)
    assert len(want) > 20
    svc = MdmService(f"sqlite:///{tmp_path / 'm.db'}")

    def failing():
        yield from records[:30]
        raise OSError("the file went away")

    with pytest.raises(OSError):
        loader.load_parties(svc, failing(), batch=10, workers=0)
    assert index_set(svc) == want
    loader.load_parties(svc, records, batch=10, workers=0)
    assert index_set(svc) == want
    with svc.Session() as s:  # and they are used: a look-up by core name is an index search
        plan = s.execute(sa.text("EXPLAIN QUERY PLAN SELECT * FROM mdm_xref WHERE core_name = 'x'")).all()
        assert "INDEX ix_mdm_xref_core_name" in str(plan)


def test_a_bulk_load_that_fails_leaves_the_store_empty_and_the_matcher_index_as_it_was(tmp_path):
    records = generate(30, seed=9).records
    svc = MdmService(f"sqlite:///{tmp_path / 'm.db'}")

    def failing():
        yield from records[:50]
        raise OSError("the file went away")

    with pytest.raises(OSError, match="went away"):
        loader.load_parties(svc, failing(), batch=20, workers=0)
    assert len(svc.matcher) == 0
    with svc.Session() as s:
        assert s.execute(sa.select(SourceVersion.id).limit(1)).first() is None
    out = loader.load_parties(svc, records, batch=20, workers=0)  # and the next load is a whole one
    assert out["mode"] == "bulk" and len(svc.matcher) == len(records)


def test_a_record_that_cannot_be_standardized_is_reported_and_the_rest_load(tmp_path):
    records = generate(20, seed=3).records
    bad = records[4]

    def picky(p):
        if p.source_id == bad.source_id and p.source_system == bad.source_system:
            raise ValueError("no address parser for this one")
        return standardize(p)

    svc = MdmService(f"sqlite:///{tmp_path / 'm.db'}", standardize=picky)
    out = loader.load_parties(svc, records, batch=10, workers=0)
    assert out["mode"] == "bulk" and len(out["errors"]) == 1
    assert out["errors"][0]["where"] == f"{bad.source_system}:{bad.source_id}"
    assert "no address parser" in out["errors"][0]["message"]
    assert len(svc.snapshot()["xref"]) == len(records) - 1


def test_the_bulk_load_takes_records_standardized_ahead_by_worker_processes(tmp_path, monkeypatch):
    records = generate(40, seed=5).records
    ahead: list[int] = []
    add = BulkLoad.add

    def spy(self, items, errors):
        ahead.append(sum(1 for _p, _e, prep in items if prep.std is not None))
        return add(self, items, errors)

    monkeypatch.setattr(BulkLoad, "add", spy)
    here = MdmService(f"sqlite:///{tmp_path / 'here.db'}")
    pooled = MdmService(f"sqlite:///{tmp_path / 'pooled.db'}")
    loader.load_parties(here, records, batch=30, workers=0)
    ahead.clear()
    loader.load_parties(pooled, records, batch=30, workers=1)
    assert ahead[0] == 0 and all(n > 0 for n in ahead[1:]) and len(ahead) > 1  # the worker took batches 2…
    assert here.snapshot()["xref"] == pooled.snapshot()["xref"]
    assert state(here) == state(pooled)


def test_rows_written_through_the_driver_are_stored_as_sqlalchemy_stores_them(tmp_path):
    import sqlite3
    from datetime import UTC, datetime

    from esbhub.mdm.store import GoldenHistory, stored

    when, naive = datetime(2026, 1, 2, 3, 4, 5, 67, tzinfo=UTC), datetime(2025, 12, 31, 23, 59, 59)
    attrs = {"name": {"value": "华信科技" * 200, "lineage": {"system": "crm"}}}  # big enough to be deflated
    tables = {
        Xref.__table__: [dict(
            source_system="crm", source_id=str(i), golden_id="G1", version=1, first_seen=i, content_hash="h",
            kind="organization", name="华信", core_name="华信", name_norm="华信", uscc=None if i else "91X",
            billing_account=None, parent_billing_account=None, deleted=bool(i % 2),
            raw=stored({"a": [1, "二"]}) if i else {"a": [1, "二"]}, std={"k": None}, received_at=when,
            source_updated_at=None if i else naive, linked_at=when) for i in range(3)],
        GoldenHistory.__table__: [dict(
            golden_id="G1", version=v, change="created", status="active", merged_into=None,
            attributes=stored(attrs, compress=True) if v == 1 else attrs, members=["crm:1"], valid_from=when,
            valid_to=None, actor="engine", reason=None, cause="e1") for v in (1, 2)],
        # keys in another order than the table's columns: bound by name all the same
        KeyIndex.__table__: [dict(source_id="1", source_system="crm", value="+8613800138000", kind="phone")],
        Link.__table__: [dict(a_key="a:1", b_key="b:2", weight=1.5, probability=0.9, decision="match", hard=None,
                              evidence=[{"field": "name", "weight": 2.0}], actor="engine", created_at=when,
                              active=True, superseded_at=None)],
    }

    def dump(path):
        con = sqlite3.connect(path)
        try:
            return {t.name: con.execute(f"SELECT * FROM {t.name} ORDER BY rowid").fetchall() for t in tables}
        finally:
            con.close()

    direct = MdmService(f"sqlite:///{tmp_path / 'direct.db'}")
    with BulkLoad.open(direct) as bl:
        for table, rows in tables.items():
            bl.insert(table, rows)
    plain = MdmService(f"sqlite:///{tmp_path / 'plain.db'}")
    with plain.Session.begin() as s:
        for table, rows in tables.items():
            s.connection().execute(table.insert(), rows)
    got, want = dump(tmp_path / "direct.db"), dump(tmp_path / "plain.db")
    assert got == want and all(got.values())
    assert isinstance(got["mdm_golden_history"][0][6], bytes)  # the deflated form went in as given


def test_rows_validated_in_worker_processes_load_as_rows_validated_here(tmp_path, monkeypatch):
    warned: list[str] = []
    monkeypatch.setattr(loader.log, "warning", lambda event, **kw: warned.append(event))
    records = generate(40, seed=8).records
    lines = [(f"f:{i}", loader.PartyJSON(p.model_dump_json(exclude_none=True).encode())) for i, p in enumerate(records)]
    lines.insert(20, ("f:bad1", loader.PartyJSON(b'{"source_system": "crm"}')))
    lines.insert(70, ("f:bad2", loader.PartyJSON(b"[]")))
    here = MdmService(f"sqlite:///{tmp_path / 'here.db'}")
    pooled = MdmService(f"sqlite:///{tmp_path / 'pooled.db'}")
    a = loader.load(here, iter(lines), batch=30, workers=0)
    b = loader.load(pooled, iter(lines), batch=30, workers=1)
    assert warned == []  # the worker did its batches (a failed one is redone here, with a warning)
    assert a["mode"] == b["mode"] == "bulk" and a["records"] == b["records"] == len(records)
    assert sorted(e["where"] for e in a["errors"]) == sorted(e["where"] for e in b["errors"]) == ["f:bad1", "f:bad2"]
    assert state(here) == state(pooled)
    assert here.snapshot()["xref"] == pooled.snapshot()["xref"]
    parties = MdmService(f"sqlite:///{tmp_path / 'parties.db'}")  # the same records as Party objects
    loader.load_parties(parties, records, batch=30, workers=0)
    assert state(parties) == state(here)


class _Later:
    """A future done only once asked for its result: the pool is always busy when looked at."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def done(self):
        return False

    def result(self):
        return self.fn(*self.args)


class _Now(_Later):
    def __init__(self, fn, args):
        super().__init__(fn, args)
        self.value = fn(*args)

    def done(self):
        return True

    def result(self):
        return self.value


class _FakePool:
    _max_workers = 1

    def __init__(self, future):
        self.future, self.submitted = future, 0

    def submit(self, fn, *args):
        self.submitted += 1
        return self.future(fn, args)


@pytest.mark.parametrize("future", [_Later, _Now], ids=["pool-busy", "pool-ahead"])
def test_golden_records_survived_by_the_pool_or_here_while_it_is_busy_are_the_same(tmp_path, monkeypatch, future):
    import esbhub.mdm.bulk as bulk

    monkeypatch.setattr(bulk, "CHUNK", 7)  # many chunks: shared between the pool and this process
    records = with_versions(generate(40, seed=9).records)
    here = MdmService(f"sqlite:///{tmp_path / 'here.db'}")
    loader.load_parties(here, records, batch=50, workers=0)
    pool = _FakePool(future)
    finish = BulkLoad.finish
    monkeypatch.setattr(BulkLoad, "finish", lambda self, _pool=None: finish(self, pool))
    pooled = MdmService(f"sqlite:///{tmp_path / 'pooled.db'}")
    out = loader.load_parties(pooled, records, batch=50, workers=0)
    chunks = -(-out["events"] // 7)
    # a busy pool gets its first two chunks only, the rest are survived here; one ahead gets them all
    assert pool.submitted == (2 if future is _Later else chunks) and chunks > 4
    assert state(here) == state(pooled)
    ids = [{gid: g[2] for gid, g in svc.snapshot()["goldens"].items()} for svc in (here, pooled)]
    assert ids[0] == ids[1]  # golden ids too: in founding order either way


@pytest.mark.parametrize("shared", ["phone", "address"])
def test_a_value_made_generic_during_the_load_is_generic_for_the_pairs_scored_before_as_in_batches(tmp_path, shared):
    from mdm.test_service import agent_clients, centre_tenants

    if shared == "phone":
        a, b, others = agent_clients()
        records = [a, b, *others]  # the pair is scored while the agent's number still looks specific
    else:
        records = [*centre_tenants()[:2], *centre_tenants()[2:]]  # crm:0 and crm:1 first: the centre looks specific
        a, b = records[0], records[1]
    batches = MdmService(f"sqlite:///{tmp_path / 'batches.db'}")
    loader.load_parties(batches, records, batch=3, workers=0, bulk=False)
    bulk = MdmService(f"sqlite:///{tmp_path / 'bulk.db'}")
    assert loader.load_parties(bulk, records, batch=3, workers=0)["mode"] == "bulk"
    sa_, sb = state(batches), state(bulk)
    for part in sa_:
        assert sa_[part] == sb[part], part
    pair_ = tuple(sorted(f"{p.source_system}:{p.source_id}" for p in (a, b)))
    assert frozenset(pair_) not in sa_["partition"]
    assert [lk[4] for lk in sa_["links"] if lk[:2] == pair_] == (["review"] if shared == "phone" else [])

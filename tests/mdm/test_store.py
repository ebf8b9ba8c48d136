"""The MDM tables: created by the Alembic branch 'mdm' on SQLite and PostgreSQL; counters."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from esbhub.db import engine_for, session_factory, upgrade
from esbhub.mdm.store import ALL_TABLES, golden_id_for, next_value, pair, source_key, split_key
from mdm.fakes import db_fixture_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path, unique) -> str:
    return db_fixture_url(request, tmp_path, unique)


def test_upgrade_creates_every_mdm_table_and_the_migration_matches_the_models(url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from esbhub.db import Base

    upgrade(url)
    eng = engine_for(url)
    assert set(ALL_TABLES) <= set(sa.inspect(eng).get_table_names())
    with eng.connect() as c:
        heads = {r[0] for r in c.execute(sa.text("SELECT version_num FROM alembic_version"))}
        assert "mdm_0007" in heads
        md = sa.MetaData()
        for t in ALL_TABLES:
            Base.metadata.tables[t].to_metadata(md)
        diff = [d for d in compare_metadata(MigrationContext.configure(c), md)
                if not (d[0] == "remove_table" or (isinstance(d, tuple) and d[0].startswith("remove_")))]
    assert diff == []


def test_audit_entries_written_before_mdm_0007_are_found_by_the_records_they_name(url):
    """mdm_0007 lists what each existing audit entry touched, from its target and detail."""
    from datetime import UTC, datetime

    from alembic import command

    from esbhub.db import alembic_config
    from esbhub.mdm.store import Audit
    from mdm.fakes import make_service

    cfg = alembic_config(url)
    entries = [
        ("merge", "G0000000001+G0000000002",
         {"a": "G0000000001", "b": "crm:9", "before": {"G0000000001": ["crm:1"], "G0000000002": ["crm:9"]}}),
        ("unmerge", "G0000000001", {"split": ["crm:9"], "rest": ["crm:1"]}),
        ("decide", "task:3", {"same": False, "a": "crm:1", "b": "res:R1"}),
        ("override", "G0000000002.industry", {"value": "物流"}),
        ("rematch", "*", {"links": 3, "changes": 1, "model": None}),
    ]
    with engine_for(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "mdm_0006")
        conn.execute(sa.insert(Audit.__table__), [
            {"at": datetime(2026, 3, 1, i, tzinfo=UTC), "actor": "alice", "action": action, "target": target,
             "reason": None, "detail": detail} for i, (action, target, detail) in enumerate(entries)])
    svc = make_service(url)  # upgrades to the newest revision

    def found(target: str) -> list[str]:
        return [e["action"] for e in svc.audit(target=target)]

    assert found("crm:9") == ["unmerge", "merge"]
    assert found("crm:1") == ["decide", "unmerge", "merge"]
    assert found("G0000000002") == ["override", "merge"]
    assert found("res:R1") == found("task:3") == ["decide"]
    assert found("*") == ["rematch"]


def test_golden_id_sequence_hands_out_each_value_once_under_concurrency(url):
    upgrade(url)
    Session = session_factory(url)
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(20):
            with Session.begin() as s:
                v = next_value(s, "golden_id")
            with lock:
                got.append(v)

    with Session.begin() as s:
        next_value(s, "golden_id")  # the row exists before the race
    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == list(range(2, 82))


@pytest.mark.parametrize("returning", [True, False], ids=["update-returning", "read-back"])
def test_a_counter_hands_out_blocks_of_values_in_one_statement_or_by_reading_back(url, returning, monkeypatch):
    upgrade(url)
    Session = session_factory(url)
    with Session.begin() as s:
        monkeypatch.setattr(s.get_bind().dialect, "update_returning", returning)
        assert next_value(s, "arrival", 5) == 1  # the row is created with the first block
        assert next_value(s, "arrival", 3) == 6
        assert next_value(s, "arrival") == 9
    with Session.begin() as s:
        assert next_value(s, "arrival", 2) == 10


def test_keys_and_ids_have_one_string_form():
    assert source_key("crm", "a:b") == "crm:a:b" and split_key("crm:a:b") == ("crm", "a:b")
    assert pair("b", "a") == ("a", "b") and golden_id_for(42) == "G0000000042"


def test_json_columns_round_trip_every_value_and_store_chinese_text_as_utf8(url):
    from datetime import UTC, datetime

    from esbhub.mdm.store import Audit

    upgrade(url)
    Session = session_factory(url)
    detail = {"name": "深圳市华信科技有限公司", "n": 3, "f": 0.1, "none": None, "list": [1, "二"]}
    odd: dict = {"big": 2**70 + 1, "digits": "6" * 22, 1: "int key"}  # orjson refuses or rounds these: the stdlib
    if url.startswith("sqlite"):
        odd["nan"] = float("nan")  # PostgreSQL's json type has no NaN at all
    with Session.begin() as s:
        a = Audit(at=datetime.now(UTC), actor="t", action="a", target="x", detail=detail)
        b = Audit(at=datetime.now(UTC), actor="t", action="b", target="x", detail=odd)
        s.add_all([a, b])
        s.flush()
        ids = (a.id, b.id)
    with Session() as s:
        got_a, got_b = (s.get(Audit, i).detail for i in ids)
        assert got_a == detail
        assert got_b["big"] == 2**70 + 1 and type(got_b["big"]) is int  # exact, not a float
        assert got_b["digits"] == "6" * 22 and got_b["1"] == "int key"
        if "nan" in odd:
            assert got_b["nan"] != got_b["nan"]
        cast = "" if url.startswith("sqlite") else "::text"
        text = s.execute(sa.text(f"SELECT detail{cast} FROM mdm_audit WHERE id = :i"), {"i": ids[0]}).scalar_one()
        assert "深圳市华信科技有限公司" in text  # not \\uXXXX escapes: half the bytes or less


def _compressed_kinds() -> dict[str, object]:
    """Values of every kind a CompressedJSON column takes: small ones stay text, large ones deflate."""
    name = "深圳市华信科技有限公司"
    lineage = {"source_system": "crm", "source_id": "CRM00000023", "rule": "trust",
               "source_updated_at": "2026-11-26T09:41:26.300429+00:00"}
    return {
        "none": None,
        "small": {"a": 1},
        "empty_list": [],
        "attributes": {f"f{i}": {"value": f"{name}{i}", "lineage": lineage} for i in range(20)},
        "evidence": [{"field": "name", "level": "canonical_exact", "weight": 16.756, "a": name, "b": name}] * 12,
        "scalars": [None, True, False, 0, -1.5, 2**70, "二" * 400],  # 2**70: orjson refuses, stdlib takes it
        "non_str_keys": {1: "x" * 1200, 2: None},  # stdlib fallback: keys come back as strings
    }


def _expected(v: object) -> object:
    import json

    return json.loads(json.dumps(v))


def test_compressed_json_columns_round_trip_every_value_kind(url):
    from datetime import UTC, datetime

    from esbhub.mdm.store import Inbox

    upgrade(url)
    Session = session_factory(url)
    kinds = _compressed_kinds()
    with Session.begin() as s:
        s.add_all([Inbox(envelope_id=k, at=datetime.now(UTC), outcome="new", events=v) for k, v in kinds.items()])
    with Session() as s:
        got = {r.envelope_id: r.events for r in s.execute(sa.select(Inbox)).scalars()}
    assert got == {k: _expected(v) for k, v in kinds.items()}


def test_large_values_are_stored_deflated_on_sqlite_and_small_ones_as_text(tmp_path):
    import json
    import zlib
    from datetime import UTC, datetime

    from esbhub.mdm.store import COMPRESS_FROM, DEFLATED, Inbox

    url = f"sqlite:///{tmp_path / 'mdm.db'}"
    upgrade(url)
    kinds = _compressed_kinds()
    with session_factory(url).begin() as s:
        s.add_all([Inbox(envelope_id=k, at=datetime.now(UTC), outcome="new", events=v) for k, v in kinds.items()])
    with engine_for(url).connect() as c:
        stored = dict(c.execute(sa.text("SELECT envelope_id, events FROM mdm_inbox")).all())
    for k in ("attributes", "evidence", "scalars", "non_str_keys"):
        v = stored[k]
        assert isinstance(v, bytes) and v[:1] == DEFLATED, k
        text = zlib.decompress(v[1:], -15)
        assert json.loads(text) == _expected(kinds[k])
        assert len(v) < len(text) / 2, k
    for k in ("none", "small", "empty_list"):
        assert isinstance(stored[k], str), k
        assert json.loads(stored[k]) == _expected(kinds[k])
        assert len(stored[k].encode()) < COMPRESS_FROM


def test_a_value_deflate_would_not_shrink_is_stored_as_text(tmp_path, monkeypatch):
    from datetime import UTC, datetime

    from esbhub.mdm import store
    from esbhub.mdm.store import Inbox

    monkeypatch.setattr(store, "COMPRESS_FROM", 1)  # try every value: a tiny one only grows
    url = f"sqlite:///{tmp_path / 'mdm.db'}"
    upgrade(url)
    with session_factory(url).begin() as s:
        s.add(Inbox(envelope_id="e1", at=datetime.now(UTC), outcome="new", events=[{"a": 1}]))
    with engine_for(url).connect() as c:
        assert c.execute(sa.text("SELECT events FROM mdm_inbox")).scalar_one() == '[{"a":1}]'
    with session_factory(url)() as s:
        assert s.get(Inbox, "e1").events == [{"a": 1}]


def test_rows_stored_as_text_before_compression_still_read(tmp_path):
    """A store written before CompressedJSON existed: its JSON text (orjson's, or the stdlib's with
    \\uXXXX escapes) reads unchanged — no data migration."""
    import json

    from esbhub.mdm.store import Golden, GoldenHistory, Inbox, Link, SourceVersion

    url = f"sqlite:///{tmp_path / 'mdm.db'}"
    upgrade(url)
    big = _compressed_kinds()["attributes"]
    ev = _compressed_kinds()["evidence"]
    with engine_for(url).begin() as c:
        c.execute(sa.text(
            "INSERT INTO mdm_golden (golden_id, seq_no, status, version, kind, founder, attributes, members, "
            "created_at, updated_at) VALUES ('G1', 1, 'active', 1, 'organization', 'crm:1', :a, '[\"crm:1\"]', "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"), {"a": json.dumps(big)})
        c.execute(sa.text(
            "INSERT INTO mdm_golden_history (golden_id, version, change, status, attributes, members, valid_from, "
            "actor) VALUES ('G1', 1, 'created', 'active', :a, '[]', '2026-01-01 00:00:00', 'engine')"),
            {"a": json.dumps(big, ensure_ascii=False, separators=(",", ":"))})
        c.execute(sa.text(
            "INSERT INTO mdm_source_version (source_system, source_id, version, content_hash, raw, std, "
            "received_at, deleted) VALUES ('crm', '1', 1, 'h', :r, :s, '2026-01-01 00:00:00', 0)"), {"r": json.dumps(big), "s": json.dumps(ev)})
        c.execute(sa.text(
            "INSERT INTO mdm_link (a_key, b_key, weight, probability, decision, evidence, actor, created_at, active) "
            "VALUES ('a', 'b', 1.0, 0.5, 'match', :e, 'engine', '2026-01-01 00:00:00', 1)"), {"e": json.dumps(ev)})
        c.execute(sa.text("INSERT INTO mdm_inbox (envelope_id, at, outcome, events) "
                          "VALUES ('e1', '2026-01-01 00:00:00', 'new', :e)"), {"e": json.dumps(ev)})
    with session_factory(url)() as s:
        assert s.get(Golden, "G1").attributes == big
        assert s.execute(sa.select(GoldenHistory.attributes)).scalar_one() == big
        assert s.execute(sa.select(SourceVersion.raw, SourceVersion.std)).one() == (big, ev)
        assert s.execute(sa.select(Link.evidence)).scalar_one() == ev
        assert s.get(Inbox, "e1").events == ev


@pytest.mark.postgres
def test_postgresql_stores_compressed_json_columns_as_plain_json(pg_url, tmp_path, unique):
    """PostgreSQL compresses large values itself (TOAST): there the columns hold JSON as before."""
    import json
    from datetime import UTC, datetime

    from esbhub.mdm.store import Inbox
    from mdm.fakes import fresh_pg_db

    url, drop = fresh_pg_db(pg_url, "mdm_" + unique)
    try:
        upgrade(url)
        big = _compressed_kinds()["attributes"]
        with session_factory(url).begin() as s:
            s.add(Inbox(envelope_id="e1", at=datetime.now(UTC), outcome="new", events=big))
        with engine_for(url).connect() as c:
            typ, text = c.execute(sa.text("SELECT json_typeof(events), events::text FROM mdm_inbox")).one()
        assert typ == "object" and json.loads(text) == big
    finally:
        drop()


def test_columns_read_by_raw_sql_are_never_compressed():
    """``bench/mdm_load.py`` reads ``mdm_xref.std`` with ``json_extract`` and ``bench/mdm_realtime.py``
    parses ``mdm_xref.raw`` itself: those columns keep plain JSON text."""
    from esbhub.mdm.store import CompressedJSON, Xref

    for col in Xref.__table__.columns:
        assert not isinstance(col.type, CompressedJSON), col.name


def test_a_fastjson_column_reads_values_stored_deflated(tmp_path):
    """The two types read each other's rows, so a column can move between them without a rewrite."""
    from esbhub.mdm.store import CompressedJSON, FastJSON

    eng = sa.create_engine(f"sqlite:///{tmp_path / 't.db'}")
    value = _compressed_kinds()["attributes"]
    deflating = sa.Table("t", sa.MetaData(), sa.Column("v", CompressedJSON))
    plain = sa.Table("t", sa.MetaData(), sa.Column("v", FastJSON))
    deflating.create(eng)
    with eng.begin() as c:
        c.execute(deflating.insert(), [{"v": value}])
        assert isinstance(c.execute(sa.text("SELECT v FROM t")).scalar_one(), bytes)
    with eng.connect() as c:
        assert c.execute(sa.select(plain.c.v)).scalar_one() == value
    eng.dispose()


def test_insert_rows_leaves_rows_it_cannot_bind_straight_to_sqlalchemy(tmp_path):
    """store.insert_rows binds rows itself only when all have the first row's keys and no column
    left out has a client-side default; otherwise SQLAlchemy takes them: defaults filled in, and
    rows with other keys get SQLAlchemy's own error instead of values bound to the wrong columns."""
    from datetime import UTC, datetime

    from esbhub.mdm.store import Link, insert_rows

    url = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(url)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    link = dict(a_key="a:1", b_key="b:2", weight=1.0, probability=0.5, decision="match", hard=None, evidence=[],
                created_at=when, superseded_at=None)  # no actor, no active: the model's defaults apply
    with session_factory(url).begin() as s:
        insert_rows(s.connection(), Link.__table__, [link])
    with engine_for(url).connect() as c:
        assert c.execute(sa.text("SELECT actor, active FROM mdm_link")).one() == ("engine", 1)
    full = link | {"actor": "engine", "active": True}  # every column with a default given: bound here
    other = {k: v for k, v in full.items() if k != "hard"} | {"id": 99}  # as many keys, not the same ones
    with pytest.raises(sa.exc.StatementError, match="hard"), session_factory(url).begin() as s:
        insert_rows(s.connection(), Link.__table__, [full, other])


def test_any_of_is_an_in_list_on_sqlite_and_one_array_parameter_on_postgresql():
    from sqlalchemy.dialects import postgresql, sqlite

    from esbhub.mdm.store import KeyIndex, any_of

    stmt = sa.select(KeyIndex.source_id).where(KeyIndex.kind == "phone", any_of(KeyIndex.value, "vals"))
    lite = " ".join(str(stmt.compile(dialect=sqlite.dialect())).split())
    assert lite.endswith("mdm_key_index.value IN (__[POSTCOMPILE_vals])")  # no '= 1' after it: the index applies
    pg = " ".join(str(stmt.compile(dialect=postgresql.psycopg.dialect())).split())
    assert pg.endswith("mdm_key_index.value = ANY (%(vals)s::VARCHAR(300)[])")


def test_any_of_selects_the_rows_whose_value_is_in_the_list_whatever_its_length(url):
    from esbhub.mdm.store import KeyIndex, any_of

    upgrade(url)
    Session = session_factory(url)
    stmt = sa.select(KeyIndex.value).where(KeyIndex.kind == "phone", any_of(KeyIndex.value, "vals"))
    with Session.begin() as s:
        s.add_all(KeyIndex(kind="phone", value=f"+8610{i:08d}", source_system="crm", source_id=str(i)) for i in range(5))
    with Session() as s:
        for wanted in ([], ["+861000000003"], ["+861000000001", "+861000000004", "+869999999999"]):
            got = sorted(s.connection().execute(stmt, {"vals": wanted}).scalars())
            assert got == sorted(v for v in wanted if v != "+869999999999")

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
        assert "mdm_0003" in heads
        md = sa.MetaData()
        for t in ALL_TABLES:
            Base.metadata.tables[t].to_metadata(md)
        diff = [d for d in compare_metadata(MigrationContext.configure(c), md)
                if not (d[0] == "remove_table" or (isinstance(d, tuple) and d[0].startswith("remove_")))]
    assert diff == []


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


def test_keys_and_ids_have_one_string_form():
    assert source_key("crm", "a:b") == "crm:a:b" and split_key("crm:a:b") == ("crm", "a:b")
    assert pair("b", "a") == ("a", "b") and golden_id_for(42) == "G0000000042"


def test_json_columns_round_trip_every_value_and_store_chinese_text_as_utf8(url):
    from datetime import UTC, datetime

    from esbhub.mdm.store import Audit

    upgrade(url)
    Session = session_factory(url)
    detail = {"name": "深圳市华信科技有限公司", "n": 3, "f": 0.1, "none": None, "list": [1, "二"]}
    odd: dict = {"big": 2**70}  # orjson refuses these: the stdlib takes over
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
        assert got_b["big"] == 2**70
        if "nan" in odd:
            assert got_b["nan"] != got_b["nan"]
        if url.startswith("sqlite"):
            text = s.execute(sa.text("SELECT detail FROM mdm_audit WHERE id = :i"), {"i": ids[0]}).scalar_one()
            assert "深圳市华信科技有限公司" in text  # not \\uXXXX escapes: a third of the bytes

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
        assert "mdm_0002" in heads
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

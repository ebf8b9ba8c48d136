"""The hub's engine factory on PostgreSQL: pooled connections are pinged only after being idle."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from esbhub import db

pytestmark = pytest.mark.postgres


def _terminate(admin: sa.Engine, pid: int) -> None:
    with admin.connect() as c:
        assert c.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()


def _pid(eng: sa.Engine) -> int:
    with eng.connect() as c:
        return int(c.execute(sa.text("SELECT pg_backend_pid()")).scalar())


@pytest.fixture
def engines(pg_url):
    eng, admin = db.make_engine(pg_url), sa.create_engine(pg_url)
    yield eng, admin
    eng.dispose()
    admin.dispose()


def test_a_connection_idle_past_the_threshold_is_pinged_and_replaced_when_its_backend_is_gone(engines, monkeypatch):
    eng, admin = engines
    pid = _pid(eng)
    _terminate(admin, pid)
    monkeypatch.setattr(db, "PING_IDLE_S", 0.0)  # every checkin is "long ago"
    assert _pid(eng) != pid  # no error: the dead connection was found by the ping and replaced


def test_a_connection_used_a_moment_ago_is_handed_out_without_a_ping(engines, monkeypatch):
    eng, admin = engines
    monkeypatch.setattr(db, "PING_IDLE_S", 3600.0)
    pid = _pid(eng)
    _terminate(admin, pid)
    with pytest.raises(sa.exc.OperationalError), eng.connect() as c:  # not pinged: its first statement fails
        c.execute(sa.text("SELECT 1"))
    assert _pid(eng) != pid  # the pool was invalidated: the next checkout connects afresh


def test_the_ping_leaves_no_transaction_open_on_the_connection(engines, monkeypatch):
    eng, _admin = engines
    _pid(eng)
    monkeypatch.setattr(db, "PING_IDLE_S", 0.0)
    with eng.connect() as c:
        assert c.connection.dbapi_connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

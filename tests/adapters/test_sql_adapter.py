"""SQL adapter against the real PostgreSQL and MariaDB (and SQLite); Oracle by compiled SQL
and the clean error on an unreachable server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from esbhub.adapters.sql import (
    SqlSink,
    SqlSinkConfig,
    SqlSource,
    SqlSourceConfig,
    compile_upsert,
    merge_statement,
    procedure_statement,
)
from esbhub.bus.envelope import Envelope
from esbhub.errors import InvalidMessage, PermanentError, TransientError


def free_port() -> int:
    import socket

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


ENV = {"type": "party.v1", "source": "resource-db"}


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'src.db'}"
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return request.getfixturevalue("mysql_url")


@pytest.fixture
def table(db_url, unique) -> Iterator[str]:
    eng = sa.create_engine(db_url)
    md = sa.MetaData()
    sa.Table(
        unique,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("lease_until", sa.DateTime, nullable=True),
        sa.Column("lease_token", sa.String(40), nullable=True),
        sa.Column("processed_at", sa.DateTime, nullable=True),
    )
    md.create_all(eng)
    yield unique
    md.drop_all(eng)
    eng.dispose()


def insert_rows(url: str, table: str, ids: range, ts: str = "2026-01-01 00:00:00") -> None:
    eng = sa.create_engine(url)
    t = sa.Table(table, sa.MetaData(), autoload_with=eng)
    when = datetime.fromisoformat(ts)
    with eng.begin() as c:
        c.execute(sa.insert(t), [{"id": i, "name": f"客户{i}", "updated_at": when} for i in ids])
    eng.dispose()


class Collector:
    def __init__(self, fail_times: int = 0):
        self.envs: list[Envelope] = []
        self.fail_times = fail_times
        self.lock = threading.Lock()

    def __call__(self, envs):
        with self.lock:
            if self.fail_times > 0:
                self.fail_times -= 1
                raise TransientError("bus down")
            self.envs.extend(envs)


def source(db_url, table, tmp_path, **kw) -> SqlSource:
    cfg = {"url": db_url, "table": table, "envelope": ENV, "state_url": f"sqlite:///{tmp_path / 'state.db'}",
           "batch_size": 7, "timeout": 5}
    cfg.update(kw)
    return SqlSource(SqlSourceConfig(**cfg), name="t")


def drain(src: SqlSource, emit) -> None:
    while src.poll_once(emit) > 0:
        pass


def test_watermark_source_emits_each_row_once_and_resumes_after_restart(db_url, table, tmp_path):
    insert_rows(db_url, table, range(1, 21))
    out = Collector()
    src = source(db_url, table, tmp_path, watermark_column="updated_at")
    drain(src, out)
    assert [e.payload["id"] for e in out.envs] == list(range(1, 21))  # ties on updated_at broken by key
    assert out.envs[0].payload["name"] == "客户1" and out.envs[0].type == "party.v1"
    src.close()
    insert_rows(db_url, table, range(21, 26), ts="2026-01-02 00:00:00")
    src2 = source(db_url, table, tmp_path, watermark_column="updated_at")  # a restarted process
    drain(src2, out)
    src2.close()
    assert [e.payload["id"] for e in out.envs] == list(range(1, 26))


def test_watermark_source_does_not_advance_when_emit_raises_and_rereads_with_same_ids(db_url, table, tmp_path):
    insert_rows(db_url, table, range(1, 6))
    src = source(db_url, table, tmp_path, watermark_column="id")
    failing = Collector(fail_times=1)
    with pytest.raises(TransientError):
        src.poll_once(failing)
    assert src.position() is None
    first_ids = [e.id for e in _peek(src)]
    drain(src, failing)
    assert [e.id for e in failing.envs] == first_ids  # stable ids: the bus dedups a re-read
    src.close()


def _peek(src: SqlSource) -> list[Envelope]:
    seen = Collector(fail_times=0)

    def emit(envs):
        seen.envs.extend(envs)
        raise TransientError("just looking")

    with pytest.raises(TransientError):
        src.poll_once(emit)
    return seen.envs


def test_outbox_two_competing_workers_never_take_the_same_row(db_url, table, tmp_path):
    insert_rows(db_url, table, range(1, 201))
    out = Collector()
    srcs = [source(db_url, table, tmp_path, mode="outbox", batch_size=10) for _ in range(2)]
    ts = [threading.Thread(target=drain, args=(s, out)) for s in srcs]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    ids = [e.payload["id"] for e in out.envs]
    assert sorted(ids) == list(range(1, 201)), "every row exactly once"
    eng = sa.create_engine(db_url)
    with eng.connect() as c:
        assert c.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE processed_at IS NULL")).scalar() == 0
    eng.dispose()
    for s in srcs:
        s.close()


def test_outbox_rows_are_not_marked_done_when_emit_raises(db_url, table, tmp_path):
    insert_rows(db_url, table, range(1, 4))
    src = source(db_url, table, tmp_path, mode="outbox")
    with pytest.raises(TransientError):
        src.poll_once(Collector(fail_times=1))
    out = Collector()
    drain(src, out)  # lease released at once: seen again without waiting for expiry
    assert sorted(e.payload["id"] for e in out.envs) == [1, 2, 3]
    src.close()


def test_outbox_delete_mode_removes_rows_after_emit(db_url, table, tmp_path):
    insert_rows(db_url, table, range(1, 4))
    src = source(db_url, table, tmp_path, mode="outbox", done_column=None)
    out = Collector()
    drain(src, out)
    src.close()
    eng = sa.create_engine(db_url)
    with eng.connect() as c:
        assert c.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar() == 0
    eng.dispose()
    assert len(out.envs) == 3


def sink(db_url, table, **kw) -> SqlSink:
    cfg = {"url": db_url, "table": table, "timeout": 5}
    cfg.update(kw)
    return SqlSink(SqlSinkConfig(**cfg), name="t")


def env(payload) -> Envelope:
    return Envelope.create("party.v1", payload, source="test")


def test_sink_upsert_is_idempotent_and_updates_in_place(db_url, table):
    s = sink(db_url, table, mode="upsert", key_columns=["id"])
    e = env({"id": 1, "name": "A", "updated_at": "2026-01-01T00:00:00"})
    s.send(e)
    s.send(e)  # redelivery
    s.send(env({"id": 1, "name": "B", "updated_at": "2026-01-02T00:00:00"}))
    s.send_many([env({"id": i, "name": f"n{i}", "updated_at": "2026-01-01T00:00:00"}) for i in range(2, 12)])
    with s._engine.connect() as c:
        rows = c.execute(sa.text(f"SELECT id, name FROM {table} ORDER BY id")).all()
    assert rows[0] == (1, "B") and len(rows) == 11
    assert s.health().ok and s.health().count == 13
    s.close()


def test_sink_constraint_violation_is_permanent_with_reason_and_nothing_written(db_url, table):
    s = sink(db_url, table)
    good = env({"id": 1, "name": "ok", "updated_at": "2026-01-01T00:00:00"})
    bad = env({"id": 2, "name": None, "updated_at": "2026-01-01T00:00:00"})
    with pytest.raises(PermanentError) as ei:
        s.send_many([good, bad])
    assert "refused" in str(ei.value) and "name" in str(ei.value).lower()
    with s._engine.connect() as c:
        assert c.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar() == 0  # one transaction
    assert s.breaker.state == "closed"  # the database answered: not a circuit failure
    s.close()


def test_sink_payload_field_that_is_no_column_is_invalid_message(db_url, table):
    s = sink(db_url, table)
    with pytest.raises(InvalidMessage) as ei:
        s.send(env({"id": 1, "name": "x", "updated_at": "2026-01-01T00:00:00", "colour": "red"}))
    assert "colour" in str(ei.value)
    s.close()


def test_sink_to_unreachable_database_is_transient_within_timeout(tmp_path):
    port = free_port()
    s = sink(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x", "t", timeout=2)
    with pytest.raises(TransientError):
        s.send(env({"id": 1}))
    assert not s.health().ok and s.health().last_error


@pytest.mark.postgres
def test_postgres_backend_terminated_midway_sink_and_source_recover(pg_url, unique, tmp_path):
    tbl = unique
    eng = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(sa.text(f"CREATE TABLE {tbl} (id int primary key, name text not null, updated_at timestamp not null)"))
    s = sink(pg_url, tbl, mode="upsert", key_columns=["id"])
    s.name = "kill-" + unique
    s.send(env({"id": 1, "name": "a", "updated_at": "2026-01-01T00:00:00"}))

    def terminate(app: str) -> int:
        with eng.connect() as c:
            return c.execute(
                sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :a"),
                {"a": app},
            ).scalar()

    assert terminate(f"esbhub-{s.name}") >= 1
    s.send(env({"id": 2, "name": "b", "updated_at": "2026-01-01T00:00:00"}))  # pre-ping reconnects
    src = source(pg_url, tbl, tmp_path, watermark_column="id", batch_size=1)
    src.name = "src-" + unique
    out = Collector()
    src.poll_once(out)
    assert terminate(f"esbhub-{src.name}") >= 1
    drain(src, out)
    assert [e.payload["id"] for e in out.envs] == [1, 2]
    s.close()
    src.close()
    with eng.connect() as c:
        c.execute(sa.text(f"DROP TABLE {tbl}"))
    eng.dispose()


@pytest.mark.postgres
def test_postgres_slow_peer_lock_wait_times_out_as_transient(pg_url, unique):
    eng = sa.create_engine(pg_url)
    with eng.begin() as c:
        c.execute(sa.text(f"CREATE TABLE {unique} (id int primary key, name text)"))
        c.execute(sa.text(f"INSERT INTO {unique} VALUES (1, 'a')"))
    s = sink(pg_url, unique, mode="upsert", key_columns=["id"], statement_timeout=0.5)
    s.send(env({"id": 2, "name": "warm"}))
    holder = eng.connect()
    tx = holder.begin()
    holder.execute(sa.text(f"SELECT * FROM {unique} WHERE id = 1 FOR UPDATE"))
    try:
        with pytest.raises(TransientError):
            s.send(env({"id": 1, "name": "blocked"}))
    finally:
        tx.rollback()
        holder.close()
    s.send(env({"id": 1, "name": "after"}))
    s.close()
    with eng.begin() as c:
        c.execute(sa.text(f"DROP TABLE {unique}"))
    eng.dispose()


@pytest.mark.parametrize("which", ["postgresql", "mariadb"])
def test_sink_calls_stored_procedure(which, unique, request):
    url = request.getfixturevalue("pg_url" if which == "postgresql" else "mysql_url")
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.execute(sa.text(f"CREATE TABLE {unique} (id int primary key, amount int)"))
        if which == "postgresql":
            c.execute(sa.text(
                f"CREATE PROCEDURE p_{unique}(a int, b int) LANGUAGE SQL AS $$ INSERT INTO {unique} VALUES (a, b) $$"
            ))
        else:
            c.execute(sa.text(f"CREATE PROCEDURE p_{unique}(a int, b int) INSERT INTO {unique} VALUES (a, b)"))
    s = sink(url, f"p_{unique}", mode="procedure", procedure_params=["id", "money.amount"])
    s.send(env({"id": 7, "money": {"amount": 42}}))
    with eng.begin() as c:
        assert c.execute(sa.text(f"SELECT amount FROM {unique} WHERE id = 7")).scalar() == 42
        c.execute(sa.text(f"DROP PROCEDURE p_{unique}"))
        c.execute(sa.text(f"DROP TABLE {unique}"))
    s.close()
    eng.dispose()


def test_oracle_upsert_compiles_to_merge_and_procedure_to_plsql_block():
    from sqlalchemy.dialects import oracle

    md = sa.MetaData()
    t = sa.Table("customers", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(50)),
                 schema="crm")
    st = compile_upsert(t, [{"id": 1, "name": "x"}], ["id"], "oracle")
    sql = str(st.compile(dialect=oracle.dialect()))
    assert sql.startswith("MERGE INTO crm.customers t USING (SELECT :id AS id, :name AS name FROM dual) s ON (t.id = s.id)")
    assert "WHEN MATCHED THEN UPDATE SET t.name = s.name" in sql
    assert "WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, s.name)" in sql
    assert str(merge_statement(t, ["id"], ["id"])).count("WHEN MATCHED") == 0  # key-only: insert if absent
    assert str(procedure_statement("billing.post_payment", ["a", "b"], "oracle")) == "BEGIN billing.post_payment(:p0, :p1); END;"
    # watermark query renders with Oracle's row limiting
    q = sa.select(t).where(t.c.id > 5).order_by(t.c.id).limit(10)
    assert "FETCH FIRST" in str(q.compile(dialect=oracle.dialect())) or "ROWNUM" in str(q.compile(dialect=oracle.dialect()))


def test_oracle_unreachable_server_is_a_clean_transient_error_within_timeout(monkeypatch):
    monkeypatch.setenv("T_ORA_PASS", "x")
    port = free_port()
    s = sink(f"oracle+oracledb://scott:${{env:T_ORA_PASS}}@127.0.0.1:{port}/?service_name=XE", "customers", timeout=2)
    with pytest.raises(TransientError) as ei:
        s.send(env({"id": 1}))
    assert str(ei.value).startswith("sql ") and "DPY-6005" in str(ei.value)


@pytest.mark.timeout(30)
def test_oracle_blackholed_server_gives_up_after_the_configured_timeout(monkeypatch):
    """A peer that never answers (non-routable address): the connect timeout ends the wait."""
    monkeypatch.setenv("T_ORA_PASS", "x")
    s = sink("oracle+oracledb://scott:${env:T_ORA_PASS}@10.255.255.1:1521/?service_name=XE", "customers", timeout=1)
    with pytest.raises(TransientError):
        s.send(env({"id": 1}))


@pytest.mark.mariadb
def test_mariadb_slow_network_times_out_as_transient_then_cut_connection_recovers(mysql_url, unique):
    """PyMySQL's read timeout bounds a slow peer; a cut connection is replaced on the next send."""
    from waiting import wait_for

    from .peers import TcpProxy

    eng = sa.create_engine(mysql_url)
    with eng.begin() as c:
        c.execute(sa.text(f"CREATE TABLE {unique} (id int primary key, name varchar(50))"))
    proxy = TcpProxy(3306)
    url = mysql_url.replace("127.0.0.1:3306", f"127.0.0.1:{proxy.port}")
    s = sink(url, unique, mode="upsert", key_columns=["id"], timeout=1, circuit={"failure_threshold": 100,
                                                                                  "reset_timeout": 0.5})
    try:
        s.send(env({"id": 1, "name": "a"}))
        proxy.delay = 2.5
        with pytest.raises(TransientError):
            s.send(env({"id": 2, "name": "slow"}))
        proxy.delay = 0
        proxy.cut()

        def ok() -> bool:
            try:
                s.send(env({"id": 3, "name": "after"}))
                return True
            except TransientError:
                return False

        wait_for(ok, 30, interval=0.2, what="sink recovered")
    finally:
        s.close()
        proxy.close()
        with eng.begin() as c:
            c.execute(sa.text(f"DROP TABLE {unique}"))
        eng.dispose()


def test_watermark_settle_window_holds_back_rows_too_recent_to_be_final(db_url, table, tmp_path):
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    insert_rows(db_url, table, range(1, 4), ts=(now - timedelta(hours=1)).isoformat(sep=" "))
    insert_rows(db_url, table, range(4, 6), ts=now.isoformat(sep=" "))  # may still have late-committing peers
    out = Collector()
    src = source(db_url, table, tmp_path, watermark_column="updated_at", settle_seconds=600)
    drain(src, out)
    assert [e.payload["id"] for e in out.envs] == [1, 2, 3]
    src.close()

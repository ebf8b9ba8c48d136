"""SQL databases through SQLAlchemy 2: PostgreSQL (psycopg 3), MySQL/MariaDB (PyMySQL),
SQLite, Oracle (python-oracledb, thin mode — no client libraries).

Source, two modes:
  * ``watermark`` — poll ``SELECT … WHERE (wm, key) > (last_wm, last_key) ORDER BY wm, key``;
    the position is saved in the hub's ``adapter_state`` table only after emit returned.
    Envelope ids are derived from (table, key, watermark), so a row re-read after a crash
    carries the same id and the bus deduplicates it.
  * ``outbox`` — rows are claimed with a lease (``lease_until`` + a unique ``lease_token``);
    PostgreSQL / MariaDB use ``SELECT … FOR UPDATE SKIP LOCKED`` so competing workers never
    take the same row; after emit returns the rows are marked done (or deleted). A worker
    that dies leaves a lease that expires and the rows are claimed again.

Sink: ``insert`` / ``upsert`` (ON CONFLICT / ON DUPLICATE KEY / MERGE on Oracle) /
``procedure`` (CALL, or an anonymous PL/SQL block on Oracle), in one transaction per batch.
Constraint violations and bad statements → PermanentError naming the reason (dead-letter);
connection loss, timeouts, lock timeouts → TransientError (retry).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from pydantic import AfterValidator, Field, model_validator

from esbhub.adapters.base import (
    AdapterConfig,
    AdapterSpec,
    Emit,
    EnvelopeTemplate,
    PollingSource,
    Sink,
    TimeZoneName,
    check_url_secret,
    mapped_errors,
    redact_url,
    resolve_url,
    stable_id,
)
from esbhub.bus.envelope import Envelope
from esbhub.errors import ConfigError, InvalidMessage, PermanentError, TransientError

DbUrl = Annotated[str, AfterValidator(check_url_secret)]

_IDENT_DESC = "A table name, optionally schema-qualified ('sales.orders')."


class SqlConnection(AdapterConfig):
    """Where the database is. The password goes in the URL as a reference:
    ``postgresql+psycopg://app:${env:PGPASS}@db:5432/crm``."""

    url: DbUrl = Field(
        description="SQLAlchemy URL: postgresql+psycopg://, mysql+pymysql://, sqlite:///, oracle+oracledb:// "
        "(password only as ${env:…} / ${file:…})."
    )
    table: str = Field(description=_IDENT_DESC, min_length=1)
    statement_timeout: float | None = Field(
        default=None, gt=0, le=3600, description="Seconds one statement may run (defaults to 'timeout')."
    )


class SqlSourceConfig(SqlConnection):
    """Polls a table by watermark, or drains an outbox table with row leases."""

    mode: Literal["watermark", "outbox"] = Field(default="watermark", description="How new rows are found.")
    key_column: str = Field(default="id", description="Unique key of a row (tie-breaker, lease target, id).")
    watermark_column: str | None = Field(
        default=None, description="watermark mode: monotonically growing column (e.g. updated_at, id)."
    )
    columns: list[str] | None = Field(default=None, description="Columns put in the payload (default: all).")
    batch_size: int = Field(default=500, ge=1, le=100_000, description="Rows read and emitted per batch.")
    poll_interval: float = Field(default=1.0, gt=0, le=86400, description="Seconds between polls when idle.")
    envelope: EnvelopeTemplate = Field(description="Type and source system of the envelopes made from rows.")
    state_url: DbUrl | None = Field(
        default=None, description="watermark mode: database holding the position (default: the hub database)."
    )
    state_key: str | None = Field(default=None, description="watermark mode: position key (default: adapter name + table).")
    settle_seconds: float = Field(
        default=0.0,
        ge=0,
        le=86400,
        description="watermark mode with a timestamp column: read only rows at least this old, so a transaction "
        "that commits late with an earlier timestamp is not skipped.",
    )
    watermark_timezone: TimeZoneName = Field(
        default="UTC", description="Time zone of a timestamp watermark column without zone (e.g. 'Asia/Shanghai')."
    )
    lease_until_column: str = Field(default="lease_until", description="outbox mode: column holding the lease expiry.")
    lease_token_column: str = Field(default="lease_token", description="outbox mode: column holding the lease owner token.")
    done_column: str | None = Field(
        default="processed_at", description="outbox mode: column stamped when emitted; null → rows are deleted."
    )
    lease_seconds: float = Field(default=60, gt=0, le=86400, description="outbox mode: how long a claim lasts.")

    @model_validator(mode="after")
    def _mode_fields(self) -> SqlSourceConfig:
        if self.mode == "watermark" and not self.watermark_column:
            raise ValueError("watermark mode needs 'watermark_column'")
        return self


class SqlSinkConfig(SqlConnection):
    """Writes each envelope's payload (an object, or a list of objects) as rows."""

    mode: Literal["insert", "upsert", "procedure"] = Field(default="insert", description="How rows are written.")
    key_columns: list[str] = Field(
        default_factory=list, description="upsert: the unique key the conflict is detected on."
    )
    columns: dict[str, str] | None = Field(
        default=None,
        description="Column ← payload field (dotted path). Default: payload keys are column names.",
    )
    procedure_params: list[str] = Field(
        default_factory=list, description="procedure: payload fields passed as the procedure's arguments, in order."
    )
    envelope_id_column: str | None = Field(
        default=None, description="Column that receives the envelope id (makes inserts traceable / idempotent)."
    )
    unknown_fields: Literal["error", "ignore"] = Field(
        default="error", description="A payload field that is not a column: InvalidMessage ('error') or dropped."
    )
    batch_size: int = Field(default=500, ge=1, le=100_000, description="Rows per executemany in send_many.")

    @model_validator(mode="after")
    def _mode_fields(self) -> SqlSinkConfig:
        if self.mode == "upsert" and not self.key_columns:
            raise ValueError("upsert mode needs 'key_columns'")
        if self.mode == "procedure" and not self.procedure_params:
            raise ValueError("procedure mode needs 'procedure_params'")
        return self


# ---------------------------------------------------------------------------------------------


def dialect_of(url: str) -> str:
    return sa.engine.make_url(url).get_backend_name()


def create_sql_engine(url: str, *, timeout: float, statement_timeout: float | None = None, app: str = "esbhub") -> sa.Engine:
    """An engine whose every network call is bounded: connect and statement timeouts per driver."""
    real = resolve_url(url)
    backend = dialect_of(real)
    st = statement_timeout or timeout
    args: dict[str, Any] = {}
    kw: dict[str, Any] = {"pool_pre_ping": True, "pool_timeout": timeout, "pool_size": 2, "max_overflow": 4}
    if backend == "postgresql":
        args = {
            "connect_timeout": max(1, int(round(timeout))),
            "application_name": app[:63],
            "options": f"-c statement_timeout={int(st * 1000)} -c lock_timeout={int(st * 1000)}",
            # a peer that vanishes (no RST) is noticed by TCP keepalives, not left hanging
            "keepalives": 1,
            "keepalives_idle": max(1, int(timeout)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": int(timeout * 1000),
        }
    elif backend in ("mysql", "mariadb"):
        args = {"connect_timeout": max(1, int(round(timeout))), "read_timeout": int(st) or 1, "write_timeout": int(st) or 1}
    elif backend == "oracle":
        args = {"tcp_connect_timeout": float(timeout), "retry_count": 0}
    elif backend == "sqlite":
        args = {"timeout": float(st), "check_same_thread": False}
        kw = {}
    return sa.create_engine(real, connect_args=args, **kw)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(v)).decode()
    if isinstance(v, uuid.UUID):
        return str(v)
    return v


def _encode_pos(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return {"t": "datetime", "v": v.isoformat()}
    if isinstance(v, dt.date):
        return {"t": "date", "v": v.isoformat()}
    if isinstance(v, decimal.Decimal):
        return {"t": "decimal", "v": str(v)}
    return v


def _decode_pos(v: Any) -> Any:
    if isinstance(v, dict) and "t" in v:
        if v["t"] == "datetime":
            return dt.datetime.fromisoformat(v["v"])
        if v["t"] == "date":
            return dt.date.fromisoformat(v["v"])
        if v["t"] == "decimal":
            return decimal.Decimal(v["v"])
    return v


def _split_name(name: str) -> tuple[str | None, str]:
    if "." in name:
        schema, _, table = name.partition(".")
        return schema, table
    return None, name


class _TableMixin:
    config: SqlConnection
    _engine: sa.Engine | None
    _table: sa.Table | None
    _lock: threading.Lock

    def _connect(self) -> tuple[sa.Engine, sa.Table]:
        with self._lock:
            if self._engine is None:
                self._engine = create_sql_engine(
                    self.config.url,
                    timeout=self.config.timeout,
                    statement_timeout=self.config.statement_timeout,
                    app=f"esbhub-{getattr(self, 'name', 'sql')}",
                )
            if self._table is None:
                schema, name = _split_name(self.config.table)
                try:
                    with mapped_errors("sql", "reflect"):
                        self._table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=self._engine)
                except sa.exc.NoSuchTableError:
                    raise PermanentError(f"sql: table '{self.config.table}' does not exist") from None
            return self._engine, self._table

    def _column(self, table: sa.Table, name: str, what: str) -> sa.Column[Any]:
        try:
            return table.c[name]
        except KeyError:
            raise ConfigError(f"sql: {what} column '{name}' is not in table '{self.config.table}'") from None

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
            self._engine = None
            self._table = None


class SqlSource(_TableMixin, PollingSource[SqlSourceConfig]):
    adapter_name = "sql"

    def __init__(self, config: SqlSourceConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._engine = None
        self._table = None
        self._lock = threading.Lock()
        self._state: Any = None
        self.state_key = config.state_key or f"sql:{self.name}:{config.table}"

    # -- state --------------------------------------------------------------------------------
    def _state_store(self) -> Any:
        if self._state is None:
            from esbhub.adapters.store import StateStore

            url = self.config.state_url
            if url is None:
                from esbhub.config import Settings

                url = Settings().effective_database_url
            self._state = StateStore(resolve_url(url))
        return self._state

    def position(self) -> tuple[Any, Any] | None:
        raw = self._state_store().get(self.state_key)
        return None if raw is None else (_decode_pos(raw["wm"]), _decode_pos(raw["key"]))

    # -- polling ------------------------------------------------------------------------------
    def poll_once(self, emit: Emit) -> int:
        t0 = time.perf_counter()
        if self.config.mode == "watermark":
            n = self._poll_watermark(emit)
        else:
            n = self._poll_outbox(emit)
        self.tracker.record_success(time.perf_counter() - t0, n)
        return n

    def _selected(self, table: sa.Table) -> list[sa.Column[Any]]:
        if self.config.columns:
            return [self._column(table, c, "payload") for c in self.config.columns]
        return [c for c in table.c if c.name not in (self.config.lease_until_column, self.config.lease_token_column)]

    def _envelopes(self, rows: Sequence[sa.Row[Any]], wm_name: str | None) -> list[Envelope]:
        out = []
        kc = self.config.key_column
        for r in rows:
            m = r._mapping
            payload = {k: _jsonable(v) for k, v in m.items()}
            key = f"{self.config.table}:{m[kc]}" + (f":{_jsonable(m[wm_name])}" if wm_name else "")
            out.append(
                self.config.envelope.make(
                    payload, id=stable_id(key), headers={"sql_table": self.config.table, "sql_key": str(m[kc])}
                )
            )
        return out

    def _poll_watermark(self, emit: Emit) -> int:
        engine, table = self._connect()
        wm = self._column(table, self.config.watermark_column or "", "watermark")
        key = self._column(table, self.config.key_column, "key")
        cols = self._selected(table)
        if wm.name not in {c.name for c in cols}:
            cols.append(wm)
        if key.name not in {c.name for c in cols}:
            cols.append(key)
        q = sa.select(*cols).order_by(wm, key).limit(self.config.batch_size)
        if self.config.settle_seconds and isinstance(wm.type, sa.DateTime):
            from zoneinfo import ZoneInfo

            cutoff = dt.datetime.now(ZoneInfo(self.config.watermark_timezone)) - dt.timedelta(
                seconds=self.config.settle_seconds
            )
            q = q.where(wm <= (cutoff if wm.type.timezone else cutoff.replace(tzinfo=None)))
        pos = self.position()
        if pos is not None:
            last_wm, last_key = pos
            q = q.where(sa.or_(wm > last_wm, sa.and_(wm == last_wm, key > last_key)))
        with mapped_errors("sql", "poll"), engine.connect() as c:
            rows = c.execute(q).all()
        if not rows:
            return 0
        emit(self._envelopes(rows, wm.name))
        last = rows[-1]._mapping
        self._state_store().put(self.state_key, {"wm": _encode_pos(last[wm.name]), "key": _encode_pos(last[key.name])})
        self.tracker.detail["watermark"] = _jsonable(last[wm.name])
        return len(rows)

    def _poll_outbox(self, emit: Emit) -> int:
        engine, table = self._connect()
        key = self._column(table, self.config.key_column, "key")
        lu = self._column(table, self.config.lease_until_column, "lease_until")
        lt = self._column(table, self.config.lease_token_column, "lease_token")
        done = self._column(table, self.config.done_column, "done") if self.config.done_column else None
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        token = uuid.uuid4().hex
        free = sa.or_(lu.is_(None), lu < now)
        if done is not None:
            free = sa.and_(done.is_(None), free)
        pick = sa.select(key).where(free).order_by(key).limit(self.config.batch_size)
        if engine.dialect.name in ("postgresql", "mysql", "mariadb", "oracle"):
            pick = pick.with_for_update(skip_locked=True)
        cols = self._selected(table)
        with mapped_errors("sql", "claim"), engine.begin() as c:
            keys = [r[0] for r in c.execute(pick).all()]
            if not keys:
                return 0
            # the WHERE repeats the 'free' test: on SQLite (no row locks) a row another worker
            # claimed between our SELECT and UPDATE is not taken again
            c.execute(
                sa.update(table)
                .where(key.in_(keys), free)
                .values({lu.name: now + dt.timedelta(seconds=self.config.lease_seconds), lt.name: token})
            )
        with mapped_errors("sql", "read"), engine.connect() as c:
            rows = c.execute(sa.select(*cols).where(lt == token).order_by(key)).all()
        if not rows:
            return 0
        try:
            emit(self._envelopes(rows, None))
        except BaseException:
            self._release(engine, table, lt, lu, token)
            raise
        with mapped_errors("sql", "complete"), engine.begin() as c:
            if done is not None:
                c.execute(sa.update(table).where(lt == token).values({done.name: now, lu.name: None}))
            else:
                c.execute(sa.delete(table).where(lt == token))
        return len(rows)

    def _release(self, engine: sa.Engine, table: sa.Table, lt: Any, lu: Any, token: str) -> None:
        try:
            with engine.begin() as c:
                c.execute(sa.update(table).where(lt == token).values({lu.name: None, lt.name: None}))
        except sa.exc.SQLAlchemyError as exc:  # the lease expires by itself
            self.log.warning("sql_lease_release_failed", error=type(exc).__name__)

    def health(self) -> Any:
        h = super().health()
        h.detail["url"] = redact_url(self.config.url)
        return h


# ---------------------------------------------------------------------------------------------


def _dig(payload: Any, path: str) -> Any:
    cur = payload
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _coerce(col: sa.Column[Any], value: Any, name: str) -> Any:
    """JSON payload values → the column's Python type (ISO text → datetime / date, text → Decimal)."""
    if not isinstance(value, str | int | float):
        return value
    try:
        pt = col.type.python_type
    except NotImplementedError:
        return value
    try:
        if pt is dt.datetime and isinstance(value, str):
            return dt.datetime.fromisoformat(value)
        if pt is dt.date and isinstance(value, str):
            return dt.date.fromisoformat(value)
        if pt is decimal.Decimal and not isinstance(value, float):
            return decimal.Decimal(str(value))
    except (ValueError, decimal.InvalidOperation):
        raise InvalidMessage(f"sql: field '{name}' = {str(value)[:40]!r} is not a valid {pt.__name__}") from None
    return value


def compile_upsert(table: sa.Table, rows: list[dict[str, Any]], key_columns: list[str], dialect: str) -> Any:
    """The dialect's upsert statement for ``rows`` (executemany-able where it can be)."""
    cols = list(rows[0])
    update_cols = [c for c in cols if c not in key_columns]
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        st = pg_insert(table)
        return st.on_conflict_do_update(
            index_elements=key_columns, set_={c: st.excluded[c] for c in update_cols}
        ) if update_cols else st.on_conflict_do_nothing(index_elements=key_columns)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as lite_insert

        st = lite_insert(table)
        return st.on_conflict_do_update(
            index_elements=key_columns, set_={c: st.excluded[c] for c in update_cols}
        ) if update_cols else st.on_conflict_do_nothing(index_elements=key_columns)
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as my_insert

        st = my_insert(table)
        upd = {c: st.inserted[c] for c in update_cols} or {key_columns[0]: st.inserted[key_columns[0]]}
        return st.on_duplicate_key_update(upd)
    if dialect == "oracle":
        return merge_statement(table, cols, key_columns)
    raise ConfigError(f"sql: upsert is not supported on dialect '{dialect}'")


def merge_statement(table: sa.Table, cols: list[str], key_columns: list[str]) -> sa.TextClause:
    """Oracle ``MERGE`` for one row (bind names = column names), identifiers quoted by the dialect."""
    from sqlalchemy.dialects import oracle

    q = oracle.dialect().identifier_preparer
    tname = q.format_table(table)
    src = ", ".join(f":{c} AS {q.quote(c)}" for c in cols)
    on = " AND ".join(f"t.{q.quote(k)} = s.{q.quote(k)}" for k in key_columns)
    upd = ", ".join(f"t.{q.quote(c)} = s.{q.quote(c)}" for c in cols if c not in key_columns)
    ins_cols = ", ".join(q.quote(c) for c in cols)
    ins_vals = ", ".join(f"s.{q.quote(c)}" for c in cols)
    sql = f"MERGE INTO {tname} t USING (SELECT {src} FROM dual) s ON ({on})"
    if upd:
        sql += f" WHEN MATCHED THEN UPDATE SET {upd}"
    sql += f" WHEN NOT MATCHED THEN INSERT ({ins_cols}) VALUES ({ins_vals})"
    return sa.text(sql)


def procedure_statement(name: str, params: list[str], dialect: str) -> sa.TextClause:
    """``CALL proc(:a, :b)``, or ``BEGIN proc(:a, :b); END;`` on Oracle."""
    from sqlalchemy.dialects import mysql, oracle, postgresql

    preparers = {"postgresql": postgresql.dialect(), "mysql": mysql.dialect(), "mariadb": mysql.dialect(), "oracle": oracle.dialect()}
    if dialect not in preparers:
        raise ConfigError(f"sql: stored procedures are not supported on dialect '{dialect}'")
    q = preparers[dialect].identifier_preparer
    pname = ".".join(q.quote(p) for p in name.split("."))
    binds = ", ".join(f":p{i}" for i in range(len(params)))
    if dialect == "oracle":
        return sa.text(f"BEGIN {pname}({binds}); END;")
    return sa.text(f"CALL {pname}({binds})")


class SqlSink(_TableMixin, Sink[SqlSinkConfig]):
    adapter_name = "sql"

    def __init__(self, config: SqlSinkConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._engine = None
        self._table = None
        self._lock = threading.Lock()

    def _connect_for_write(self) -> tuple[sa.Engine, sa.Table | None]:
        if self.config.mode == "procedure":
            with self._lock:
                if self._engine is None:
                    self._engine = create_sql_engine(
                        self.config.url, timeout=self.config.timeout,
                        statement_timeout=self.config.statement_timeout, app=f"esbhub-{self.name}",
                    )
                return self._engine, None
        return self._connect()

    def rows_of(self, envelope: Envelope, table: sa.Table | None) -> list[dict[str, Any]]:
        """The rows an envelope becomes (InvalidMessage if it cannot be)."""
        payload = envelope.payload
        items = payload if isinstance(payload, list) else [payload]
        rows = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidMessage(f"sql: payload item {i} is {type(item).__name__}, expected an object")
            if self.config.mode == "procedure":
                rows.append({f"p{j}": _dig(item, p) for j, p in enumerate(self.config.procedure_params)})
                continue
            if self.config.columns:
                row = {col: _dig(item, path) for col, path in self.config.columns.items()}
            else:
                row = dict(item)
            if self.config.envelope_id_column:
                row[self.config.envelope_id_column] = envelope.id
            assert table is not None
            unknown = [k for k in row if k not in table.c]
            if unknown:
                if self.config.unknown_fields == "error":
                    raise InvalidMessage(
                        f"sql: field(s) {', '.join(sorted(unknown))} are not columns of '{self.config.table}'"
                    )
                row = {k: v for k, v in row.items() if k in table.c}
            rows.append({k: _coerce(table.c[k], v, k) for k, v in row.items()})
        return rows

    def statement(self, table: sa.Table | None, rows: list[dict[str, Any]], dialect: str) -> Any:
        if self.config.mode == "procedure":
            return procedure_statement(self.config.table, self.config.procedure_params, dialect)
        assert table is not None
        if self.config.mode == "upsert":
            return compile_upsert(table, rows, self.config.key_columns, dialect)
        return sa.insert(table)

    def deliver(self, envelope: Envelope) -> dict[str, Any] | None:
        return self.deliver_many([envelope])[0]

    def deliver_many(self, envelopes: Sequence[Envelope]) -> list[dict[str, Any] | None]:
        """All envelopes in one transaction (all-or-nothing), executemany per shape of row."""
        engine, table = self._connect_for_write()
        per_env = [self.rows_of(e, table) for e in envelopes]
        flat = [r for rows in per_env for r in rows]
        if not flat:
            return [{"rows": 0} for _ in envelopes]
        dialect = engine.dialect.name
        try:
            with mapped_errors("sql", self.config.mode), engine.begin() as c:
                groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
                for r in flat:
                    groups.setdefault(tuple(r), []).append(r)
                for shape_rows in groups.values():
                    st = self.statement(table, shape_rows, dialect)
                    for i in range(0, len(shape_rows), self.config.batch_size):
                        c.execute(st, shape_rows[i : i + self.config.batch_size])
        except PermanentError as exc:
            reason = str(exc.__cause__.orig if isinstance(exc.__cause__, sa.exc.DBAPIError) else exc)
            raise PermanentError(f"sql {self.config.mode} into '{self.config.table}' refused: {reason[:500]}") from exc
        except TransientError:
            with self._lock:  # a broken pool is rebuilt on the next call
                if self._engine is not None:
                    self._engine.dispose()
            raise
        return [{"rows": len(rows)} for rows in per_env]

    def health(self) -> Any:
        h = super().health()
        h.detail["url"] = redact_url(self.config.url)
        return h


SPEC = AdapterSpec(
    name="sql",
    config_model=SqlSinkConfig,
    source_config_model=SqlSourceConfig,
    sink_config_model=SqlSinkConfig,
    source_cls=SqlSource,
    sink_cls=SqlSink,
    description="SQL databases (PostgreSQL, MySQL/MariaDB, SQLite, Oracle thin): poll by watermark or "
    "drain an outbox with row leases; insert / upsert / stored procedure in a transaction, batched.",
)

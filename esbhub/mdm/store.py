"""MDM tables (SQLAlchemy 2, on ``esbhub.db.Base``; Alembic branch ``mdm``).

Nothing is ever deleted, so merge and unmerge lose nothing:

* ``mdm_source_version`` — every version of every source record (raw ``party.v1`` JSON,
  standardized JSON, envelope id, received_at). Append-only.
* ``mdm_xref`` — the current version of each source key ``(system, id)`` and the golden id
  it belongs to, plus a few indexed columns (core name, USCC, billing account) for
  search, hierarchy and the 360 view.
* ``mdm_key_index`` — extra look-up keys of the current version (phones, e-mails, names).
* ``mdm_golden`` — the current state of each golden record (active / retired with a
  ``merged_into`` pointer / inactive), attributes with lineage, its founder source key.
* ``mdm_golden_history`` — every version of every golden record with ``valid_from`` /
  ``valid_to`` (as-of queries) and its member keys; ``version`` is the per-golden sequence
  number carried by ``party.golden.*`` events.
* ``mdm_link`` — scored pairs with per-field evidence (engine) — superseded links are kept
  inactive, never deleted.
* ``mdm_constraint`` — steward decisions as pair constraints (``must`` / ``cannot``).
* ``mdm_task`` — the steward review queue; ``mdm_audit`` — who did what, when, why;
  ``mdm_audit_subject`` — the golden ids, source keys and tasks each audit entry touched
  (what ``GET /v1/steward/audit?target=`` finds it by).
* ``mdm_override`` — manual attribute overrides by a steward.
* ``mdm_hierarchy`` — head office ↔ branch, group ↔ member, billing parent edges.
* ``mdm_golden_link`` — accounts, services, bills, payments, alarms that routes attach to a
  golden id or a source key (shown in the 360 view).
* ``mdm_inbox`` — processed envelope ids with the events they produced (idempotent redelivery);
  an event is kept without its golden attributes and member keys, which the history row
  ``(golden_id, seq)`` holds (``esbhub.mdm.service._compact_event``).
* ``mdm_outbox`` — events of steward actions and rematch, and engine events whose publish failed,
  until they are published (in ``id`` order: commit order, :mod:`esbhub.mdm.publication`).
* ``mdm_sequence`` — named counters (golden id sequence, change counter).
* ``mdm_model`` — the match models the links were scored with, one row each time one was
  applied (the newest is the store's): its fingerprint, when, by what, where it was saved.
"""

from __future__ import annotations

import operator
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Integer, String, Text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.sql import visitors

from esbhub.db import Base, json_dumps, json_loads

DEFLATED = b"\x01"
"""First byte of a value stored deflated (:class:`CompressedJSON`): JSON text never starts with it."""

COMPRESS_FROM = 1024
"""Serialized values shorter than this (bytes) are stored as text. Deflating a value costs tens of
microseconds however small it is; below ~1 KiB the row is small anyway and the WAL pages it saves
do not pay for that (measured on a 168k-record store: docs/ARCHITECTURE.md)."""


def _deflate(text: bytes) -> bytes:
    # Level 1, a 4 KiB window and memLevel 4: the values are a few KiB, so a bigger window or hash
    # table only costs set-up time (measured: same size, ~20 % fewer instructions than the defaults).
    c = zlib.compressobj(1, zlib.DEFLATED, -12, 4)
    return DEFLATED + c.compress(text) + c.flush()


def _load(value: Any) -> Any:
    if isinstance(value, bytes):
        if value[:1] == DEFLATED:
            value = zlib.decompress(memoryview(value)[1:], -15)  # raw deflate, any window
    elif not isinstance(value, str):
        return value  # None; or a bare JSON number SQLite's NUMERIC affinity turned into a number
    return json_loads(value)  # orjson; the stdlib where an integer may be beyond 64 bits


def _stored_text(value: Any) -> str:
    return json_dumps(value).decode()


def _stored_deflating(value: Any) -> str | bytes:
    text = json_dumps(value)
    if len(text) >= COMPRESS_FROM:
        packed = _deflate(text)
        if len(packed) < len(text):
            return packed
    return text.decode()


class Stored:
    """A JSON value already in the form a :class:`FastJSON` / :class:`CompressedJSON` column stores
    on SQLite (:func:`stored`): bound as it is. Lets a value written to several rows (a golden
    record's attributes go to its row and its history row) or serialized in another process be
    serialized once. SQLite only: other dialects take the value itself."""

    __slots__ = ("value",)

    def __init__(self, value: str | bytes) -> None:
        self.value = value


def stored(value: Any, *, compress: bool = False) -> Stored:
    """``value`` as a SQLite ``FastJSON`` (or, with ``compress``, ``CompressedJSON``) column stores it."""
    return Stored(_stored_deflating(value) if compress else _stored_text(value))


class FastJSON(sa.types.TypeDecorator):  # type: ignore[type-arg]
    """``JSON`` (same DDL, same values) serialized with orjson where the dialect stores text.

    On SQLite the stock type runs ``json.dumps`` with ``ensure_ascii`` — Chinese text stored as
    ``\\uXXXX`` escapes, three times its UTF-8 size — and ``json.loads`` on every row read; orjson
    writes compact UTF-8 and reads several times faster. Values orjson cannot take (non-string
    keys, NaN, huge ints) fall back to the stdlib; old rows written by the stdlib read the same.
    PostgreSQL keeps the driver's own JSON handling.

    Reads also take values stored by :class:`CompressedJSON`, so a column can move between the two
    types without rewriting its rows.
    """

    impl = JSON
    cache_ok = True
    compress = False

    def bind_processor(self, dialect: Any) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        text = _stored_deflating if self.compress else _stored_text

        def process(value: Any) -> str | bytes:
            return value.value if type(value) is Stored else text(value)

        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        return _load


class CompressedJSON(FastJSON):
    """:class:`FastJSON` whose large values are stored deflated on SQLite.

    A serialized value of :data:`COMPRESS_FROM` bytes or more is stored as a BLOB: the byte
    :data:`DEFLATED`, then the JSON text (UTF-8) deflated (raw, level 1) — when that is smaller.
    Used where values are large: golden attributes with their lineage (~4 KiB, a fifth of that
    deflated) — as text those rows spilled into overflow pages, so every golden update and every
    history row rewrote several pages; and the inbox's rare large event lists. Rows stored as text
    before read as they always did — no data migration; the DDL type stays ``JSON``. PostgreSQL is
    unchanged (it compresses large values itself, TOAST). Raw SQL on these columns
    (``json_extract``) cannot read the deflated rows: columns read that way (``mdm_xref``) stay
    :class:`FastJSON`.
    """

    cache_ok = True
    compress = True


BigId = BigInteger().with_variant(Integer(), "sqlite")
Ts = DateTime(timezone=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every timestamp here is UTC."""
    if ts is None:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def as_utc(ts: datetime) -> datetime:
    """``ts`` in UTC (naive: taken as UTC), to compare with a stored time: SQLite compares the
    stored UTC wall-clock text, so a bound in another zone must be converted, not just labelled."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def source_key(system: str, source_id: str) -> str:
    """The one string form of a source key: ``system:id`` (the system never contains ':')."""
    return f"{system}:{source_id}"


def split_key(key: str) -> tuple[str, str]:
    system, _, sid = key.partition(":")
    return system, sid


def check_source_key(key: str) -> str:
    """``key`` if it has the form of a source key, ``system:id`` as :func:`source_key` writes it
    (both parts as ``party.v1`` takes them: 1–64 characters, no spaces around); else ValueError
    saying what is wrong with it."""
    system, colon, sid = key.partition(":")
    if not colon:
        raise ValueError(f"'{key}' is not a source key: expected 'system:id', e.g. 'crm:1001'")
    for part, what in ((system, "system (before ':')"), (sid, "id (after ':')")):
        if not part.strip():
            raise ValueError(f"'{key}' has no {what}; expected 'system:id', e.g. 'crm:1001'")
        if part != part.strip():
            raise ValueError(f"'{key}': its {what} has spaces around it")
        if len(part) > 64:
            raise ValueError(f"'{key[:80]}…': its {what} is longer than 64 characters")
    return key


def session_xrefs(s: Session) -> dict[str, Any]:
    """The xref rows (key → row object: an ORM :class:`Xref`, or a plain
    :class:`esbhub.mdm.hierarchy.XrefRow` / :class:`NewXref` read or made by the ingest path)
    this session has loaded or added, so a later read of the same rows in the same transaction
    takes them from memory instead of re-reading them and re-parsing their JSON. Sound because
    within a transaction xref rows are only changed through these objects — the ingest path
    then writes those changes itself with Core UPDATEs/INSERTs before anything reads the rows
    back — and a session is one transaction here."""
    return s.info.setdefault("mdm_xrefs", {})  # type: ignore[no-any-return]


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


class SourceVersion(Base):
    __tablename__ = "mdm_source_version"
    __table_args__ = (sa.UniqueConstraint("source_system", "source_id", "version", name="uq_mdm_source_version_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source_system: Mapped[str] = mapped_column(String(64))
    source_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    envelope_id: Mapped[str | None] = mapped_column(String(64), index=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    raw: Mapped[dict[str, Any]] = mapped_column(FastJSON)
    std: Mapped[dict[str, Any]] = mapped_column(FastJSON)
    received_at: Mapped[datetime] = mapped_column(Ts)
    source_updated_at: Mapped[datetime | None] = mapped_column(Ts, nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class Xref(Base):
    __tablename__ = "mdm_xref"

    source_system: Mapped[str] = mapped_column(String(64), primary_key=True)
    source_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    golden_id: Mapped[str] = mapped_column(String(32), index=True)
    version: Mapped[int] = mapped_column(Integer)
    first_seen: Mapped[int] = mapped_column(BigId, index=True)  # id of the first SourceVersion: arrival order
    content_hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), default="organization")
    name: Mapped[str] = mapped_column(String(500))
    core_name: Mapped[str] = mapped_column(String(500), index=True)
    name_norm: Mapped[str] = mapped_column(String(500), index=True)
    uscc: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    billing_account: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    parent_billing_account: Mapped[str | None] = mapped_column(String(64), nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    raw: Mapped[dict[str, Any]] = mapped_column(FastJSON)
    std: Mapped[dict[str, Any]] = mapped_column(FastJSON)
    received_at: Mapped[datetime] = mapped_column(Ts)
    source_updated_at: Mapped[datetime | None] = mapped_column(Ts, nullable=True)
    linked_at: Mapped[datetime] = mapped_column(Ts)

    @property
    def key(self) -> str:
        return source_key(self.source_system, self.source_id)


class NewXref:
    """A new source record's xref row until it is inserted with Core once its golden id is known
    (:meth:`esbhub.mdm.service.MdmService._apply`): the :class:`Xref` columns on a plain object,
    without the ORM instrumentation of every attribute set for a row written once."""

    __slots__ = tuple(c.key for c in Xref.__table__.columns)

    def __init__(self, **values: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, values.get(k))

    @property
    def key(self) -> str:
        return source_key(self.source_system, self.source_id)


class KeyIndex(Base):
    __tablename__ = "mdm_key_index"
    # look-ups by (kind, value) use the primary key, which starts with them (mdm_0004)
    __table_args__ = (sa.Index("ix_mdm_key_index_source", "source_system", "source_id"),)  # a record's keys (mdm_0003)

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # phone | email | name
    value: Mapped[str] = mapped_column(String(300), primary_key=True)
    source_system: Mapped[str] = mapped_column(String(64), primary_key=True)
    source_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class Golden(Base):
    __tablename__ = "mdm_golden"

    golden_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq_no: Mapped[int] = mapped_column(BigId, unique=True)
    status: Mapped[str] = mapped_column(String(16))  # active | retired | inactive
    merged_into: Mapped[str | None] = mapped_column(String(32), nullable=True)
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), default="organization")
    founder: Mapped[str] = mapped_column(String(140), unique=True)  # source key that founded the id
    name: Mapped[str | None] = mapped_column(String(500), nullable=True)
    core_name: Mapped[str | None] = mapped_column(String(500), index=True, nullable=True)
    uscc: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    tier: Mapped[str | None] = mapped_column(String(8), nullable=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(CompressedJSON)
    members: Mapped[list[str]] = mapped_column(FastJSON)
    created_at: Mapped[datetime] = mapped_column(Ts)
    updated_at: Mapped[datetime] = mapped_column(Ts)


class GoldenHistory(Base):
    __tablename__ = "mdm_golden_history"
    __table_args__ = (sa.UniqueConstraint("golden_id", "version", name="uq_mdm_golden_history_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    golden_id: Mapped[str] = mapped_column(String(32))  # indexed by the (golden_id, version) constraint (mdm_0004)
    version: Mapped[int] = mapped_column(Integer)
    change: Mapped[str] = mapped_column(String(16))  # created | updated | merged | unmerged
    status: Mapped[str] = mapped_column(String(16))
    merged_into: Mapped[str | None] = mapped_column(String(32), nullable=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(CompressedJSON)
    members: Mapped[list[str]] = mapped_column(FastJSON)
    valid_from: Mapped[datetime] = mapped_column(Ts)
    valid_to: Mapped[datetime | None] = mapped_column(Ts, nullable=True)
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    cause: Mapped[str | None] = mapped_column(String(64), nullable=True)  # envelope id / task id / operation


class Link(Base):
    __tablename__ = "mdm_link"
    __table_args__ = (
        sa.Index("ix_mdm_link_a_active", "a_key", "active"),
        sa.Index("ix_mdm_link_b_active", "b_key", "active"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    a_key: Mapped[str] = mapped_column(String(140))
    b_key: Mapped[str] = mapped_column(String(140))
    weight: Mapped[float] = mapped_column(Float)
    probability: Mapped[float] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(16))  # match | review
    hard: Mapped[str | None] = mapped_column(String(200), nullable=True)
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(FastJSON)
    actor: Mapped[str] = mapped_column(String(100), default="engine")
    created_at: Mapped[datetime] = mapped_column(Ts)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    superseded_at: Mapped[datetime | None] = mapped_column(Ts, nullable=True)


class Constraint(Base):
    __tablename__ = "mdm_constraint"
    __table_args__ = (sa.Index("ix_mdm_constraint_pair", "a_key", "b_key", "active"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    a_key: Mapped[str] = mapped_column(String(140), index=True)
    b_key: Mapped[str] = mapped_column(String(140), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # must | cannot
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    task_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Ts)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    superseded_at: Mapped[datetime | None] = mapped_column(Ts, nullable=True)


class Task(Base):
    __tablename__ = "mdm_task"
    __table_args__ = (
        sa.Index("ix_mdm_task_pair", "a_key", "b_key", "status"),
        sa.Index("ix_mdm_task_b_key", "b_key", "status"),  # open tasks by either side (mdm_0005)
        sa.Index("ix_mdm_task_goldens", "golden_a", "golden_b", "status"),  # ... or by golden pair
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    a_key: Mapped[str] = mapped_column(String(140))
    b_key: Mapped[str] = mapped_column(String(140))
    golden_a: Mapped[str | None] = mapped_column(String(32), nullable=True)
    golden_b: Mapped[str | None] = mapped_column(String(32), nullable=True)
    weight: Mapped[float] = mapped_column(Float)
    probability: Mapped[float] = mapped_column(Float)
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(FastJSON)
    status: Mapped[str] = mapped_column(String(16), index=True)  # open | decided | obsolete
    created_at: Mapped[datetime] = mapped_column(Ts)
    decided_at: Mapped[datetime | None] = mapped_column(Ts, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    decision: Mapped[str | None] = mapped_column(String(16), nullable=True)  # same | not_same
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Audit(Base):
    """One steward action or rematch. ``id`` is commit order: an entry is written by a transaction
    that holds the MDM writer lock from its start to its commit (:mod:`esbhub.mdm.service`), so the
    audit trail reads newest first by id."""

    __tablename__ = "mdm_audit"
    __table_args__ = (
        # one actor's / one action's entries, newest first, a page at a time (mdm_0007)
        sa.Index("ix_mdm_audit_actor", "actor", "id"),
        sa.Index("ix_mdm_audit_action", "action", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(Ts, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(300))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(FastJSON)


class AuditSubject(Base):
    """A golden id, source key or ``task:<id>`` an audit entry touched (mdm_0007). An entry's
    ``target`` names one thing ("G1+G2" for a merge, "task:7" for a decision); a reviewer asks
    about one record — every entry that touched ``crm:9`` — so each is listed here, and the key
    ``(subject, audit_id)`` gives a record's entries newest first."""

    __tablename__ = "mdm_audit_subject"

    subject: Mapped[str] = mapped_column(String(300), primary_key=True)
    audit_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)


class Override(Base):
    __tablename__ = "mdm_override"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    golden_id: Mapped[str] = mapped_column(String(32), index=True)
    attribute: Mapped[str] = mapped_column(String(64))
    value: Mapped[Any] = mapped_column(FastJSON)
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime] = mapped_column(Ts)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Hierarchy(Base):
    __tablename__ = "mdm_hierarchy"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    parent_golden: Mapped[str] = mapped_column(String(32), index=True)
    child_golden: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # branch | group_member | billing_parent | parent
    evidence: Mapped[dict[str, Any]] = mapped_column(FastJSON)
    created_at: Mapped[datetime] = mapped_column(Ts)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    ended_at: Mapped[datetime | None] = mapped_column(Ts, nullable=True)


class GoldenLink(Base):
    """Something a route attaches to a customer: by golden id, or by source key (resolved via xref)."""

    __tablename__ = "mdm_golden_link"
    __table_args__ = (
        sa.UniqueConstraint("kind", "ref", name="uq_mdm_golden_link_kind_ref"),
        sa.Index("ix_mdm_golden_link_source", "source_system", "source_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    golden_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    source_system: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))  # account | service | bill | payment | alarm | …
    ref: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column(FastJSON)
    at: Mapped[datetime] = mapped_column(Ts)


class Inbox(Base):
    __tablename__ = "mdm_inbox"

    envelope_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime] = mapped_column(Ts)
    outcome: Mapped[str] = mapped_column(String(32))
    events: Mapped[list[dict[str, Any]]] = mapped_column(CompressedJSON)


class Outbox(Base):
    """Events of steward actions and rematch, written in the action's transaction, published
    afterwards (``MdmService.publish_pending``) — so a broker outage delays them but never loses
    them; and events of an ingest whose publish failed after its commit. Written and published
    under the publication lock, so ``id`` order is commit order; every publisher sends what is
    pending before its own events (``MdmService._publish_in_order``)."""

    __tablename__ = "mdm_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    envelope: Mapped[dict[str, Any]] = mapped_column(FastJSON)
    created_at: Mapped[datetime] = mapped_column(Ts)
    published_at: Mapped[datetime | None] = mapped_column(Ts, nullable=True, index=True)


class Sequence(Base):
    __tablename__ = "mdm_sequence"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigId)


class AppliedModel(Base):
    """The match model the store's links were scored with: one row each time one was applied,
    the newest (highest ``id``) is the store's. ``esbhub mdm rematch`` adds one for the model it
    re-scored every pair with (and saved at ``mdm.model_path``); the first MDM write into a store
    without one adds one for the model it scores with. Every MDM writer reads the newest
    fingerprint in the statement that takes the writer lock and scores with that model or not at
    all (:meth:`esbhub.mdm.service.MdmService._begin_write`)."""

    __tablename__ = "mdm_model"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # MatchModel.fingerprint(): sha256 hex
    applied_at: Mapped[datetime] = mapped_column(Ts)
    applied_by: Mapped[str] = mapped_column(String(32))  # "rematch" | "first write"
    path: Mapped[str | None] = mapped_column(String(1000), nullable=True)  # where it was saved; None: nowhere


_BUMP = (sa.update(Sequence.__table__).where(Sequence.__table__.c.name == sa.bindparam("name_"))
         .values(value=Sequence.__table__.c.value + sa.bindparam("n", type_=BigInteger)))
_BUMP_RETURNING = _BUMP.returning(Sequence.__table__.c.value)
_READ = sa.select(Sequence.__table__.c.value).where(Sequence.__table__.c.name == sa.bindparam("name_"))


def next_value(s: Session, name: str, n: int = 1) -> int:
    """Reserve ``n`` values of counter ``name``; returns the first.

    One atomic ``UPDATE … SET value = value + n RETURNING value``: it takes the row lock on
    PostgreSQL and the write lock on SQLite, so concurrent transactions (threads or processes)
    never get the same value. One round trip, through Core (no ORM session execution): a
    one-record MDM transaction takes two or three counters. A database without ``UPDATE …
    RETURNING`` (SQLite before 3.35) reads the value back in the same transaction.
    """
    conn = s.connection()
    params = {"name_": name, "n": n}
    if conn.dialect.update_returning:
        value = conn.execute(_BUMP_RETURNING, params).scalar()
    else:
        value = conn.execute(_READ, params).scalar() if conn.execute(_BUMP, params).rowcount else None
    if value is None:  # no row yet
        try:
            with s.begin_nested():
                s.execute(sa.insert(Sequence).values(name=name, value=n))
            return 1
        except sa.exc.IntegrityError:  # created meanwhile by another transaction
            return next_value(s, name, n)
    return int(value) - n + 1


def current_value(s: Session, name: str) -> int:
    v = s.execute(sa.select(Sequence.value).where(Sequence.name == name)).scalar_one_or_none()
    return int(v or 0)


def golden_id_for(seq_no: int) -> str:
    return f"G{seq_no:010d}"


ALL_TABLES = [
    SourceVersion.__tablename__,
    Xref.__tablename__,
    KeyIndex.__tablename__,
    Golden.__tablename__,
    GoldenHistory.__tablename__,
    Link.__tablename__,
    Constraint.__tablename__,
    Task.__tablename__,
    Audit.__tablename__,
    AuditSubject.__tablename__,
    Override.__tablename__,
    Hierarchy.__tablename__,
    GoldenLink.__tablename__,
    Inbox.__tablename__,
    Outbox.__tablename__,
    Sequence.__tablename__,
    AppliedModel.__tablename__,
]


def _last_kept(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``process`` remembering its last value: a load or a batch stamps whole runs of rows with the
    same time (one ``now``), and SQLite's datetime bind processor formats each anew (~5 % of the
    initial load's write-out). Only for immutable values (the same object, the same text). The
    (value, text) pair is swapped in as one object, so threads sharing a plan never read one
    value's text for another."""
    last: list[tuple[Any, Any]] = [(None, process(None))]

    def kept(value: Any) -> Any:
        seen, out = last[0]
        if value is not seen:
            out = process(value)
            last[0] = (value, out)
        return out

    return kept


_INSERT_PLANS: dict[tuple[str, tuple[str, ...]], tuple[str, list[Any], Any] | None] = {}


class AnyOf(sa.ColumnElement[bool]):
    """``column`` is one of the list bound as ``name`` at execution (:func:`any_of`)."""

    inherit_cache = True
    type = sa.Boolean()
    _is_implicitly_boolean = True  # a comparison: no '= 1' after it where booleans are integers (SQLite)
    _traverse_internals = [("column", visitors.InternalTraversal.dp_clauseelement),
                           ("name", visitors.InternalTraversal.dp_string)]

    def __init__(self, column: Any, name: str) -> None:
        self.column = column
        self.name = name


def any_of(column: Any, name: str) -> AnyOf:
    """``column`` is one of the values of the list parameter ``name``, for statements built once and
    run with lists of any length.

    On SQLite (and other dialects) an expanding ``IN (?, ?, …)``. On PostgreSQL
    ``column = ANY(%(name)s::type[])`` with the list as one array parameter: an expanded ``IN`` is
    another SQL text for every list length, so psycopg converts every such query anew and never
    prepares it, and SQLAlchemy expands it on every call (measured: ~0.15 ms of client work per
    statement, docs/benchmarks.md, "Real-time path — eighth session"); the ``ANY`` form is one text
    per statement. Both use the column's index.
    """
    return AnyOf(column, name)


@compiles(AnyOf)
def _any_of_in(element: AnyOf, compiler: Any, **kw: Any) -> str:
    return compiler.process(element.column.in_(sa.bindparam(element.name, expanding=True)), **kw)  # type: ignore[no-any-return]


@compiles(AnyOf, "postgresql")
def _any_of_array(element: AnyOf, compiler: Any, **kw: Any) -> str:
    param = sa.bindparam(element.name, type_=ARRAY(element.column.type))
    return compiler.process(element.column == sa.any_(param), **kw)  # type: ignore[no-any-return]


def insert_rows(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """``conn.execute(table.insert(), rows)`` for rows that all have the same keys.

    On SQLite straight through the driver's ``executemany`` with each column's own bind
    processor: the values stored are the ones SQLAlchemy stores, without it building and
    processing a parameter dictionary per row (~10 % of the initial load's CPU, ~5 % of a
    real-time batch; a test compares every stored column with SQLAlchemy's insert of the same
    rows). Rows with other keys than the first, a table with a client-side default for a column
    the rows leave out, and other dialects go through SQLAlchemy."""
    if not rows:
        return
    keys = tuple(rows[0])
    n = len(keys)
    plan = None
    if conn.dialect.name == "sqlite" and all(len(r) == n for r in rows):
        k = (table.name, keys)
        if k in _INSERT_PLANS:
            plan = _INSERT_PLANS[k]
        else:
            plan = _INSERT_PLANS[k] = _insert_plan(conn, table, keys)
    if plan is None:
        conn.execute(table.insert(), rows)
        return
    sql, procs, values = plan
    params = []
    try:
        for r in rows:
            row = list(values(r))
            for i, p in procs:
                row[i] = p(row[i])
            params.append(tuple(row))
    except KeyError:  # a row with other keys (same count): SQLAlchemy takes them as they are
        conn.execute(table.insert(), rows)
        return
    conn.exec_driver_sql(sql, params)


def _insert_plan(conn: sa.Connection, table: sa.Table, keys: tuple[str, ...]) -> tuple[str, list[Any], Any] | None:
    if any(c.key not in keys and (c.default is not None or c.server_default is not None) for c in table.columns):
        return None  # SQLAlchemy fills defaults in: leave such rows to it
    compiled = table.insert().compile(dialect=conn.dialect, column_keys=list(keys))
    order = list(compiled.positiontup or [])  # the statement's parameters in its own column order
    if sorted(order) != sorted(keys):
        return None
    procs = [(i, _last_kept(p) if isinstance(table.c[k].type, sa.DateTime) else p)
             for i, k in enumerate(order) if (p := table.c[k].type._cached_bind_processor(conn.dialect))]
    get = operator.itemgetter(*order) if len(order) > 1 else (lambda r, k=order[0]: (r[k],))
    return str(compiled), procs, get

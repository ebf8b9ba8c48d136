"""SQL state of the route engine (Alembic branch ``routes``).

* ``route_versions`` — every version of every route ever applied: who, when, the unified
  diff to the previous version and the full YAML. The active version of a route is its newest
  row; a rollback appends a new row carrying the old content (history is never rewritten).
* ``route_states`` — pause flag per route.
* ``route_aggregate_groups`` / ``route_aggregate_members`` — open aggregation groups, so a
  worker restart loses nothing and a timeout still completes a group after the restart.
* ``route_idempotency`` — business idempotency keys already seen per route.
* ``route_partition_leases`` — which worker process may consume each ordered-route queue
  (the forwarder ``fwd`` and the partitions ``p<k>``): one holder at a time, by lease.

Workers notice a change by polling :meth:`RouteStore.change_stamp` (two indexed MAX queries).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import Boolean, DateTime, Float, Integer, String, Text, UniqueConstraint, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from esbhub.db import Base, engine_for
from esbhub.errors import TransientError


def _now() -> datetime:
    return datetime.now(UTC)


class RouteVersionRow(Base):
    __tablename__ = "route_versions"
    __table_args__ = (UniqueConstraint("route", "version", name="uq_route_versions_route_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    route: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String(64))
    diff: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(200), default="")
    action: Mapped[str] = mapped_column(String(20), default="apply")
    comment: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class RouteStateRow(Base):
    __tablename__ = "route_states"

    route: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    seq: Mapped[int] = mapped_column(Integer, default=0, index=True)
    updated_by: Mapped[str] = mapped_column(String(200), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AggregateGroupRow(Base):
    __tablename__ = "route_aggregate_groups"
    __table_args__ = (UniqueConstraint("route", "step", "open_key", name="uq_route_aggregate_groups_open"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    route: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    group_key: Mapped[str] = mapped_column(String(500))
    open_key: Mapped[str | None] = mapped_column(String(500), nullable=True)  # = group_key while open, NULL after
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[float] = mapped_column(Float)
    deadline: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    completed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AggregateMemberRow(Base):
    __tablename__ = "route_aggregate_members"
    __table_args__ = (UniqueConstraint("route", "step", "message_id", name="uq_route_aggregate_members_msg"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group_id: Mapped[str] = mapped_column(String(64), index=True)
    route: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    message_id: Mapped[str] = mapped_column(String(64))
    data: Mapped[str] = mapped_column(Text)  # JSON of the message view


class IdempotencyRow(Base):
    __tablename__ = "route_idempotency"

    route: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(500), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class PartitionLeaseRow(Base):
    __tablename__ = "route_partition_leases"

    route: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot: Mapped[str] = mapped_column(String(16), primary_key=True)  # 'fwd' or 'p<k>'
    owner: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[float] = mapped_column(Float)


DELETE_ACTION = "delete"


@contextlib.contextmanager
def _tx(engine: Any) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as s, s.begin():
        yield s


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _version_dict(r: RouteVersionRow, *, content: bool = True) -> dict[str, Any]:
    d = {
        "route": r.route,
        "version": r.version,
        "checksum": r.checksum,
        "author": r.author,
        "action": r.action,
        "comment": r.comment,
        "created_at": r.created_at.isoformat() if r.created_at else None,
        "diff": r.diff,
    }
    if content:
        d["content"] = r.content
    return d


class RouteStore:
    """Versions and pause state of routes. Thread-safe (one short transaction per call)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)

    # versions
    def apply(self, name: str, content: str, *, author: str, action: str = "apply", comment: str = "") -> dict[str, Any] | None:
        """Store ``content`` as the next version of ``name``; None if it equals the active version."""
        for _ in range(5):
            try:
                with _tx(self.engine) as c:
                    last = c.execute(
                        select(RouteVersionRow).where(RouteVersionRow.route == name).order_by(RouteVersionRow.version.desc()).limit(1)
                    ).first()
                    prev = last[0] if last else None
                    cs = checksum(content)
                    if prev is not None and prev.checksum == cs:
                        return None
                    diff = "".join(
                        difflib.unified_diff(
                            (prev.content if prev else "").splitlines(keepends=True),
                            content.splitlines(keepends=True),
                            fromfile=f"{name}@v{prev.version}" if prev else "/dev/null",
                            tofile=f"{name}@v{(prev.version if prev else 0) + 1}",
                        )
                    )
                    row = RouteVersionRow(
                        route=name,
                        version=(prev.version if prev else 0) + 1,
                        content=content,
                        checksum=cs,
                        diff=diff,
                        author=author,
                        action=action,
                        comment=comment,
                        created_at=_now(),
                    )
                    c.execute(sa.insert(RouteVersionRow).values(
                        route=row.route, version=row.version, content=row.content, checksum=row.checksum, diff=row.diff,
                        author=row.author, action=row.action, comment=row.comment, created_at=row.created_at,
                    ))
                    return _version_dict(row)
            except IntegrityError:
                continue  # another writer took this version number; read again
        raise TransientError(f"could not store a new version of route '{name}' (concurrent writers)")

    def versions(self, name: str) -> list[dict[str, Any]]:
        with _tx(self.engine) as c:
            rows = c.execute(select(RouteVersionRow).where(RouteVersionRow.route == name).order_by(RouteVersionRow.version)).scalars()
            return [_version_dict(r, content=False) for r in rows]

    def get(self, name: str, version: int | None = None) -> dict[str, Any] | None:
        q = select(RouteVersionRow).where(RouteVersionRow.route == name)
        q = q.where(RouteVersionRow.version == version) if version is not None else q.order_by(RouteVersionRow.version.desc()).limit(1)
        with _tx(self.engine) as c:
            r = c.execute(q).scalars().first()
            return _version_dict(r) if r else None

    def active(self) -> dict[str, dict[str, Any]]:
        """The newest version of every route not deleted."""
        sub = select(RouteVersionRow.route, func.max(RouteVersionRow.version).label("v")).group_by(RouteVersionRow.route).subquery()
        q = select(RouteVersionRow).join(sub, (RouteVersionRow.route == sub.c.route) & (RouteVersionRow.version == sub.c.v))
        q = q.where(RouteVersionRow.action != DELETE_ACTION)
        with _tx(self.engine) as c:
            return {r.route: _version_dict(r) for r in c.execute(q).scalars()}

    def delete(self, name: str, *, by: str, comment: str = "") -> dict[str, Any]:
        """Delete a route: a tombstone version (action ``delete``, no content, who/when) is
        appended — the history stays, workers drain and stop the route. Applying or rolling
        back later makes it live again as a new version. KeyError if no such live route."""
        cur = self.get(name)
        if cur is None or cur["action"] == DELETE_ACTION:
            raise KeyError(name)
        self.set_paused(name, False, by=by)  # a paused route could not drain
        v = self.apply(name, "", author=by, action=DELETE_ACTION, comment=comment or "deleted")
        if v is None:  # cannot happen: a live version has content
            raise KeyError(name)
        return v

    def rollback(self, name: str, to: int | None = None, *, author: str) -> dict[str, Any]:
        """Make version ``to`` (default: the one before the active one) active again, as a new version."""
        vs = self.versions(name)
        if not vs:
            raise KeyError(name)
        if to is None:  # the newest live version before the current one (after a deletion: undo it)
            earlier = [v for v in vs[:-1] if v["action"] != DELETE_ACTION]
            if not earlier:
                raise ValueError(f"route '{name}' has only one version")
            to = earlier[-1]["version"]
        old = self.get(name, to)
        if old is None:
            raise KeyError(f"{name}@v{to}")
        if old["action"] == DELETE_ACTION:
            raise ValueError(f"version {to} of route '{name}' is its deletion")
        new = self.apply(name, old["content"], author=author, action="rollback", comment=f"rollback to v{to}")
        return new or self.get(name)  # type: ignore[return-value]

    # pause / resume
    def set_paused(self, name: str, paused: bool, *, by: str) -> None:
        with _tx(self.engine) as c:
            seq = (c.execute(select(func.max(RouteStateRow.seq))).scalar() or 0) + 1
            n = c.execute(
                update(RouteStateRow).where(RouteStateRow.route == name).values(paused=paused, seq=seq, updated_by=by, updated_at=_now())
            ).rowcount
            if not n:
                c.execute(sa.insert(RouteStateRow).values(route=name, paused=paused, seq=seq, updated_by=by, updated_at=_now()))

    def paused(self) -> set[str]:
        with _tx(self.engine) as c:
            return set(c.execute(select(RouteStateRow.route).where(RouteStateRow.paused.is_(True))).scalars())

    def change_stamp(self) -> tuple[int, int]:
        """Changes whenever a version is added or a route paused/resumed; cheap to poll."""
        with _tx(self.engine) as c:
            a = c.execute(select(func.max(RouteVersionRow.id))).scalar() or 0
            b = c.execute(select(func.max(RouteStateRow.seq))).scalar() or 0
            return int(a), int(b)

    # partition leases (ordering across worker processes)
    def acquire_slot(self, route: str, slot: str, owner: str, ttl: float) -> bool:
        """Take or renew the lease on ``route``/``slot`` for ``owner``: a compare-and-set that
        succeeds if the slot is free, expired or already ``owner``'s. True if ``owner`` holds it."""
        now = time.time()
        with _tx(self.engine) as c:
            n = c.execute(
                update(PartitionLeaseRow)
                .where(PartitionLeaseRow.route == route, PartitionLeaseRow.slot == slot,
                       (PartitionLeaseRow.owner == owner) | (PartitionLeaseRow.expires_at < now))
                .values(owner=owner, expires_at=now + ttl)
            ).rowcount
            if n:
                return True
            if c.execute(select(PartitionLeaseRow.owner).where(PartitionLeaseRow.route == route, PartitionLeaseRow.slot == slot)).first():
                return False
            try:
                with c.begin_nested():
                    c.execute(sa.insert(PartitionLeaseRow).values(route=route, slot=slot, owner=owner, expires_at=now + ttl))
            except IntegrityError:
                return False
            return True

    def release_slot(self, route: str, slot: str, owner: str) -> None:
        """Give the lease up at once (after the consumer stopped), if ``owner`` still holds it."""
        with _tx(self.engine) as c:
            c.execute(
                update(PartitionLeaseRow)
                .where(PartitionLeaseRow.route == route, PartitionLeaseRow.slot == slot, PartitionLeaseRow.owner == owner)
                .values(expires_at=0.0)
            )

    def slot_holders(self, route: str) -> dict[str, str]:
        """slot → owner, for leases not expired."""
        now = time.time()
        with _tx(self.engine) as c:
            rows = c.execute(select(PartitionLeaseRow.slot, PartitionLeaseRow.owner)
                             .where(PartitionLeaseRow.route == route, PartitionLeaseRow.expires_at >= now))
            return {r[0]: r[1] for r in rows}

    # idempotency
    def claim_key(self, route: str, key: str, message_id: str) -> bool:
        """True if ``key`` is new for ``route`` or was claimed by this same message (a redelivery)."""
        with _tx(self.engine) as c:
            row = c.execute(select(IdempotencyRow.message_id).where(IdempotencyRow.route == route, IdempotencyRow.key == key)).first()
            if row is not None:
                return row[0] == message_id
            try:
                with c.begin_nested():
                    c.execute(sa.insert(IdempotencyRow).values(route=route, key=key, message_id=message_id, created_at=_now()))
            except IntegrityError:
                got = c.execute(select(IdempotencyRow.message_id).where(IdempotencyRow.route == route, IdempotencyRow.key == key)).first()
                return bool(got and got[0] == message_id)
            return True


def purge_idempotency(store: RouteStore, older_than_seconds: float) -> int:
    """Forget business keys older than the window (the bus dedup window is the natural choice)."""
    from datetime import timedelta

    cutoff = _now() - timedelta(seconds=older_than_seconds)
    with _tx(store.engine) as c:
        return int(c.execute(sa.delete(IdempotencyRow).where(IdempotencyRow.created_at < cutoff)).rowcount or 0)


@dataclass
class Group:
    id: str
    key: str
    members: list[dict[str, Any]]
    created_at: float
    completed_by: str | None = None


class AggregateStore:
    """Aggregation groups in SQL. ``add`` is one transaction: insert member, decide, maybe complete."""

    def __init__(self, url: str | None = None, *, engine: Any = None) -> None:
        self.engine = engine if engine is not None else engine_for(str(url))

    def add(
        self,
        route: str,
        step: int,
        key: str,
        message_id: str,
        data: dict[str, Any],
        *,
        timeout: float | None,
        complete: Callable[[list[dict[str, Any]]], bool],
        group_id: Callable[[], str],
        now: float | None = None,
    ) -> Group | None:
        """Add a member; return the group if this message completed it (or completed it before: redelivery)."""
        now = time.time() if now is None else now
        try:
            with _tx(self.engine) as c:
                dup = c.execute(
                    select(AggregateMemberRow.group_id).where(
                        AggregateMemberRow.route == route, AggregateMemberRow.step == step, AggregateMemberRow.message_id == message_id
                    )
                ).first()
                if dup is not None:
                    g = c.execute(select(AggregateGroupRow).where(AggregateGroupRow.id == dup[0])).scalars().first()
                    if g is not None and g.status == "completed" and g.completed_by == message_id:
                        return Group(g.id, g.group_key, self._members(c, g.id), g.created_at, g.completed_by)
                    return None
                g = (
                    c.execute(
                        select(AggregateGroupRow).where(
                            AggregateGroupRow.route == route, AggregateGroupRow.step == step, AggregateGroupRow.open_key == key
                        ).with_for_update()
                    )
                    .scalars()
                    .first()
                )
                if g is None:
                    gid = group_id()
                    c.execute(
                        sa.insert(AggregateGroupRow).values(
                            id=gid, route=route, step=step, group_key=key, open_key=key, status="open", created_at=now,
                            deadline=(now + timeout) if timeout else None,
                        )
                    )
                    created_at = now
                else:
                    gid, created_at = g.id, g.created_at
                c.execute(
                    sa.insert(AggregateMemberRow).values(
                        group_id=gid, route=route, step=step, message_id=message_id, data=orjson.dumps(data).decode()
                    )
                )
                members = self._members(c, gid)
                if complete(members):
                    c.execute(
                        update(AggregateGroupRow)
                        .where(AggregateGroupRow.id == gid)
                        .values(status="completed", open_key=None, completed_at=now, completed_by=message_id)
                    )
                    return Group(gid, key, members, created_at, message_id)
                return None
        except IntegrityError as exc:
            raise TransientError(f"aggregation group of route '{route}' changed concurrently; retry") from exc

    @staticmethod
    def _members(c: Any, gid: str) -> list[dict[str, Any]]:
        rows = c.execute(select(AggregateMemberRow.data).where(AggregateMemberRow.group_id == gid).order_by(AggregateMemberRow.id))
        return [orjson.loads(r[0]) for r in rows]

    def expired(self, route: str, step: int, now: float | None = None) -> list[Group]:
        """Open groups whose deadline passed (not yet marked: call :meth:`mark_completed` after emitting)."""
        now = time.time() if now is None else now
        with _tx(self.engine) as c:
            gs = c.execute(
                select(AggregateGroupRow).where(
                    AggregateGroupRow.route == route, AggregateGroupRow.step == step, AggregateGroupRow.status == "open",
                    AggregateGroupRow.deadline.is_not(None), AggregateGroupRow.deadline <= now,
                )
            ).scalars().all()
            return [Group(g.id, g.group_key, self._members(c, g.id), g.created_at) for g in gs]

    def open_groups(self, route: str, step: int) -> list[Group]:
        with _tx(self.engine) as c:
            gs = c.execute(
                select(AggregateGroupRow).where(
                    AggregateGroupRow.route == route, AggregateGroupRow.step == step, AggregateGroupRow.status == "open"
                )
            ).scalars().all()
            return [Group(g.id, g.group_key, self._members(c, g.id), g.created_at) for g in gs]

    def mark_completed(self, group_id: str, *, by: str = "timeout") -> bool:
        with _tx(self.engine) as c:
            n = c.execute(
                update(AggregateGroupRow)
                .where(AggregateGroupRow.id == group_id, AggregateGroupRow.status == "open")
                .values(status="completed", open_key=None, completed_at=time.time(), completed_by=by)
            ).rowcount
            return bool(n)

    def purge_completed(self, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        with _tx(self.engine) as c:
            ids = list(
                c.execute(
                    select(AggregateGroupRow.id).where(AggregateGroupRow.status == "completed", AggregateGroupRow.completed_at < cutoff)
                ).scalars()
            )
            if ids:
                c.execute(sa.delete(AggregateMemberRow).where(AggregateMemberRow.group_id.in_(ids)))
                c.execute(sa.delete(AggregateGroupRow).where(AggregateGroupRow.id.in_(ids)))
            return len(ids)

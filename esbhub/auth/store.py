"""API keys: stored hashed, scoped, revocable.

A key looks like ``esb_<key_id>_<secret>``: ``key_id`` (12 hex characters) is public and
names the row; the whole key is never stored, only ``sha256(key)``, compared in constant
time. Keys carry *scopes* (``ingest``, ``read``, ``admin``, ``steward``, ``routes``;
``admin`` implies all) and the message *types* a system may post (topic patterns, ``#`` =
any). ``org_scope`` is the seam for the organization scopes of a later issue (stored,
not enforced yet).

Verification is on the ingest hot path, so verified keys are cached for ``cache_ttl``
seconds; a revoke through this store drops the cache at once, a revoke from another
process takes effect within ``cache_ttl``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from esbhub.auth.principal import SCOPES, Principal
from esbhub.db import Base, engine_for

KEY_PREFIX = "esb_"
KEY_ID_LEN = 12
MAX_NAME = 128  # the name is the 'source' of the messages the key posts (bus_messages.source)


class ApiKey(Base):
    __tablename__ = "auth_api_keys"

    key_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    key_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    scopes: Mapped[list[str]] = mapped_column(sa.JSON, nullable=False)
    types: Mapped[list[str]] = mapped_column(sa.JSON, nullable=False)
    org_scope: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    created_by: Mapped[str] = mapped_column(sa.String(200), nullable=False, default="")
    revoked_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key_id(key: str) -> str | None:
    """The public key id inside a presented key, or None if it is not shaped like one."""
    if not key.startswith(KEY_PREFIX) or len(key) < len(KEY_PREFIX) + KEY_ID_LEN + 2:
        return None
    kid = key[len(KEY_PREFIX) : len(KEY_PREFIX) + KEY_ID_LEN]
    if key[len(KEY_PREFIX) + KEY_ID_LEN] != "_" or any(c not in "0123456789abcdef" for c in kid):
        return None
    return kid


def _row_dict(r: ApiKey) -> dict[str, Any]:
    return {
        "key_id": r.key_id,
        "name": r.name,
        "scopes": list(r.scopes),
        "types": list(r.types),
        "org_scope": r.org_scope,
        "created_at": r.created_at.isoformat() if r.created_at else None,
        "created_by": r.created_by,
        "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
        "revoked_by": r.revoked_by,
        "active": r.revoked_at is None,
    }


class ApiKeyStore:
    """Create, list, revoke and verify API keys in the hub database."""

    def __init__(self, url: str, *, cache_ttl: float = 5.0, cache_size: int = 10_000) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self._cache: dict[str, tuple[Principal | None, float]] = {}
        self._lock = threading.Lock()

    # ---- admin -----------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        scopes: list[str] | tuple[str, ...] = ("ingest",),
        types: list[str] | tuple[str, ...] = ("#",),
        org_scope: str | None = None,
        created_by: str = "",
    ) -> tuple[str, str]:
        """Create a key; returns ``(key_id, key)``. The key is shown to the caller only now."""
        bad = sorted(set(scopes) - SCOPES)
        if bad:
            raise ValueError(f"unknown scope(s) {', '.join(bad)}; known: {', '.join(sorted(SCOPES))}")
        if not name.strip():
            raise ValueError("a key needs a name (the system that uses it)")
        if len(name.strip()) > MAX_NAME:
            raise ValueError(f"a key name is at most {MAX_NAME} characters (it becomes the message source)")
        kid = secrets.token_hex(KEY_ID_LEN // 2)
        key = f"{KEY_PREFIX}{kid}_{secrets.token_urlsafe(32)}"
        row = {
            "key_id": kid,
            "name": name.strip(),
            "key_hash": hash_key(key),
            "scopes": sorted(set(scopes)),
            "types": list(dict.fromkeys(types)) or ["#"],
            "org_scope": org_scope,
            "created_at": datetime.now(UTC),
            "created_by": created_by,
        }
        with self.engine.begin() as c:
            c.execute(sa.insert(ApiKey).values(**row))
        return kid, key

    def list(self, *, include_revoked: bool = True) -> list[dict[str, Any]]:
        stmt = sa.select(ApiKey).order_by(ApiKey.created_at)
        if not include_revoked:
            stmt = stmt.where(ApiKey.revoked_at.is_(None))
        with self.engine.connect() as c:
            rows = c.execute(stmt).all()
        return [_row_dict(ApiKey(**r._mapping)) for r in rows]

    def get(self, key_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(ApiKey).where(ApiKey.key_id == key_id)).first()
        return _row_dict(ApiKey(**r._mapping)) if r else None

    def revoke(self, key_id: str, *, by: str = "") -> bool:
        """Revoke a key; True if it was active."""
        with self.engine.begin() as c:
            n = c.execute(
                sa.update(ApiKey)
                .where(ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC), revoked_by=by)
            ).rowcount
        with self._lock:
            self._cache.clear()
        return bool(n)

    def has_active_admin(self) -> bool:
        return any("admin" in k["scopes"] for k in self.list(include_revoked=False))

    # ---- hot path --------------------------------------------------------------------------
    def verify(self, key: str) -> Principal | None:
        """The principal a presented key stands for, or None (unknown, wrong, revoked)."""
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        principal = self._lookup(key, digest)
        with self._lock:
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            # unknown keys are cached briefly too, so guessing does not hammer the database
            self._cache[digest] = (principal, now + (self.cache_ttl if principal else min(1.0, self.cache_ttl)))
        return principal

    def _lookup(self, key: str, digest: str) -> Principal | None:
        kid = parse_key_id(key)
        if kid is None:
            return None
        with self.engine.connect() as c:
            r = c.execute(sa.select(ApiKey).where(ApiKey.key_id == kid)).first()
        if r is None:
            return None
        row = ApiKey(**r._mapping)
        if not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
            return None
        return Principal(
            key_id=row.key_id,
            name=row.name,
            scopes=frozenset(row.scopes),
            types=tuple(row.types),
            org_scope=row.org_scope,
        )


def admin_key_path(settings: Any) -> Path:
    return Path(settings.admin_key_file or (Path(settings.data_dir) / "admin.key"))


def ensure_admin_key(store: ApiKeyStore, settings: Any) -> tuple[str | None, Path]:
    """On first start: create an admin key, write it (0600) to the admin key file and return it.

    Returns ``(key, path)``; ``key`` is None when an active admin key already exists — the
    key is shown once only.
    """
    path = admin_key_path(settings)
    if store.has_active_admin():
        return None, path
    _kid, key = store.create("admin", scopes=["admin"], types=["#"], created_by="esbhub serve (first start)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (key + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return key, path

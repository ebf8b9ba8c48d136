"""API keys: hashed at rest, scoped, revocable; the first start creates one admin key."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from esbhub.auth.principal import Principal
from esbhub.auth.store import ApiKey, ApiKeyStore, ensure_admin_key, hash_key
from esbhub.config import Settings
from esbhub.db import engine_for, upgrade


def make_store(tmp_path: Path) -> ApiKeyStore:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    ApiKey.__table__.create(engine_for(url), checkfirst=True)
    return ApiKeyStore(url)


def test_migration_creates_the_api_key_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    cols = {c["name"] for c in sa.inspect(engine_for(url)).get_columns("auth_api_keys")}
    assert {"key_id", "key_hash", "scopes", "types", "org_scope", "revoked_at"} <= cols
    kid, key = ApiKeyStore(url).create("crm")
    assert ApiKeyStore(url).verify(key).key_id == kid


def test_keys_are_stored_only_as_a_hash(tmp_path):
    store = make_store(tmp_path)
    kid, key = store.create("billing", scopes=["ingest"], types=["bill.v1"])
    with store.engine.connect() as c:
        row = c.execute(sa.select(ApiKey.__table__)).mappings().one()
    assert row["key_hash"] == hash_key(key) and key not in json.dumps({k: str(v) for k, v in row.items()})
    assert key.startswith(f"esb_{kid}_") and len(key) > 50


def test_verify_accepts_the_key_and_rejects_a_tampered_one(tmp_path):
    store = make_store(tmp_path)
    kid, key = store.create("bank", scopes=["ingest"], types=["payment.v1"])
    p = store.verify(key)
    assert p == Principal(key_id=kid, name="bank", scopes=frozenset({"ingest"}), types=("payment.v1",))
    assert store.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.verify("not-a-key") is None


def test_revoke_takes_effect_at_once_in_this_process(tmp_path):
    store = make_store(tmp_path)
    kid, key = store.create("bank")
    assert store.verify(key) is not None  # now cached
    assert store.revoke(kid, by="test") is True
    assert store.verify(key) is None
    assert store.revoke(kid) is False
    assert store.get(kid)["active"] is False


def test_principal_scopes_and_types():
    p = Principal("k", "bank", frozenset({"ingest"}), ("payment.*",))
    assert p.has_scope("ingest") and not p.has_scope("admin")
    assert p.may_post("payment.v1") and not p.may_post("bill.v1")
    admin = Principal("a", "admin", frozenset({"admin"}), ("#",))
    assert admin.has_scope("steward") and admin.may_post("party.v1") and admin.org_scope is None


def test_admin_key_is_created_once_and_written_0600(tmp_path):
    settings = Settings(data_dir=tmp_path / "var")
    store = make_store(tmp_path)
    key, path = ensure_admin_key(store, settings)
    assert key and path == settings.data_dir / "admin.key"
    assert path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.verify(key).has_scope("admin")
    again, _ = ensure_admin_key(store, settings)
    assert again is None  # shown once only


@pytest.mark.postgres
def test_api_keys_on_postgresql(pg_url):
    upgrade(pg_url)
    store = ApiKeyStore(pg_url)
    kid, key = store.create("crm-pg", scopes=["ingest", "read"], types=["party.v1"], org_scope="gd")
    p = store.verify(key)
    assert p.key_id == kid and p.org_scope == "gd" and p.scopes == frozenset({"ingest", "read"})
    assert store.revoke(kid) and store.verify(key) is None
    assert any(k["key_id"] == kid and not k["active"] for k in store.list())

"""No open endpoints: 401 without / with a revoked key, 403 for a wrong scope or type."""

from __future__ import annotations

from .doubles import PAYMENT


def _post(api, key=None, type_="payment.v1", headers=None):
    h = {"Content-Type": "application/json"}
    if key is not None:
        h["X-API-Key"] = key
    h.update(headers or {})
    return api.client.post(f"/v1/messages/{type_}", json=PAYMENT, headers=h)


def test_missing_key_is_401_and_nothing_published(api):
    r = _post(api)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert api.broker.published == []


def test_unknown_key_is_401(api):
    assert _post(api, key="esb_0123456789ab_nope").status_code == 401


def test_both_header_forms_are_accepted(api):
    _kid, key = api.keys.create("bank", scopes=["ingest"], types=["payment.v1"])
    assert _post(api, key=key).status_code == 202
    assert _post(api, headers={"Authorization": f"Bearer {key}"}).status_code == 202


def test_key_for_other_types_is_403_and_nothing_published(api):
    _kid, key = api.keys.create("billing", scopes=["ingest"], types=["bill.v1"])
    r = _post(api, key=key)
    assert r.status_code == 403 and r.json()["error"]["code"] == "type_not_allowed"
    assert api.broker.published == []


def test_key_without_ingest_scope_is_403(api):
    _kid, key = api.keys.create("dashboard", scopes=["read"])
    r = _post(api, key=key)
    assert r.status_code == 403 and "ingest" in r.json()["error"]["message"]


def test_revoked_key_is_401(api):
    kid, key = api.keys.create("bank", scopes=["ingest"])
    assert _post(api, key=key).status_code == 202
    r = api.client.delete(f"/v1/keys/{kid}", headers=api.auth())
    assert r.status_code == 200
    assert _post(api, key=key).status_code == 401


def test_admin_endpoints_need_admin_scope(api):
    _kid, ingest = api.keys.create("bank", scopes=["ingest"])
    for method, path in [("get", "/v1/keys"), ("get", "/v1/dlq"), ("post", "/v1/dlq/x/replay"), ("get", "/metrics")]:
        assert api.client.request(method, path).status_code == 401, path
        assert api.client.request(method, path, headers={"X-API-Key": ingest}).status_code == 403, path


def test_ingest_key_sees_only_its_own_messages(api):
    _k1, bank = api.keys.create("bank", scopes=["ingest"])
    _k2, other = api.keys.create("other", scopes=["ingest"])
    mid = _post(api, key=bank).json()["id"]
    assert api.client.get(f"/v1/messages/{mid}", headers={"X-API-Key": bank}).status_code == 200
    assert api.client.get(f"/v1/messages/{mid}", headers={"X-API-Key": other}).status_code == 404


def test_keys_api_creates_a_usable_key_and_audits(api, monkeypatch):
    from esbhub import auth

    seen = []
    monkeypatch.setattr(auth, "AUDIT_HOOKS", [lambda *a: seen.append(a)])
    r = api.client.post("/v1/keys", json={"name": "crm", "scopes": ["ingest"], "types": ["party.v1"]},
                        headers=api.auth())
    assert r.status_code == 201
    key = r.json()["key"]
    assert _post(api, key=key, type_="party.v1", headers={}).status_code in (202, 422)
    assert seen and seen[0][1] == "key_created"
    listed = api.client.get("/v1/keys", headers=api.auth()).json()["items"]
    assert key not in str(listed) and {k["name"] for k in listed} >= {"admin", "crm"}
    bad = api.client.post("/v1/keys", json={"name": "x", "scopes": ["root"]}, headers=api.auth())
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_healthz_is_open_readyz_reports_parts(api):
    assert api.client.get("/healthz").json() == {"status": "ok"}
    r = api.client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["broker"]["ok"] is True
    api.broker.down = True
    r = api.client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["broker"]["ok"] is False and r.headers["retry-after"]


def test_metrics_with_read_key(api):
    r = api.client.post("/v1/messages/payment.v1", json=PAYMENT, headers=api.auth())
    assert r.status_code == 202
    m = api.client.get("/metrics", headers=api.auth())
    assert m.status_code == 200 and 'hub_messages_accepted_total{type="payment.v1"}' in m.text


def test_unexpected_failure_is_a_500_in_the_error_shape(tmp_path):
    from fastapi.testclient import TestClient

    from esbhub.api.app import create_app
    from esbhub.config import Settings

    from .conftest import key_store
    from .doubles import FakeBroker

    class BrokenStore:
        def get_message(self, _id):
            raise RuntimeError("disk on fire")

        def flush(self):
            pass

    settings = Settings(data_dir=tmp_path / "var")
    keys = key_store(settings)
    _k, admin = keys.create("admin", scopes=["admin"])
    app = create_app(settings, broker=FakeBroker(), store=BrokenStore(), keys=keys)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/v1/messages/x", headers={"X-API-Key": admin})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert "disk on fire" not in r.text

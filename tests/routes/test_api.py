"""/v1/routes: list, show with history, PUT validated first, pause/resume/rollback, scopes."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from esbhub.api.app import create_app
from esbhub.auth.store import ApiKeyStore
from esbhub.config import Settings
from esbhub.db import upgrade

ROUTE = "name: apir\nfrom: {topic: party.v1}\nsteps:\n  - type: map\n    values: {headers.v: '1'}\nto: [{topic: out.v1}]\n"


@pytest.fixture
def api(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(url)
    settings = Settings(data_dir=tmp_path / "var", database_url=url, broker_url=f"sqlite:///{tmp_path / 'broker.db'}")
    keys = ApiKeyStore(url)
    _, admin = keys.create("ops", scopes=["admin"])
    _, reader = keys.create("dash", scopes=["read"])
    with TestClient(create_app(settings, keys=keys)) as c:
        yield c, {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {reader}"}


def test_put_validates_stores_versions_and_get_shows_history(api):
    c, admin, reader = api
    r = c.put("/v1/routes/apir", content=ROUTE, headers=admin)
    assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["changed"]
    r = c.put("/v1/routes/apir", content=ROUTE.replace("'1'", "'2'"), headers=admin)
    assert r.json()["version"] == 2 and "+    values: {headers.v: '2'}" in r.json()["diff"]
    listed = c.get("/v1/routes", headers=reader).json()["routes"]
    assert [(x["name"], x["version"], x["author"], x["paused"]) for x in listed] == [("apir", 2, "ops", False)]
    one = c.get("/v1/routes/apir", headers=reader).json()
    assert one["version"] == 2 and "'2'" in one["content"] and [h["version"] for h in one["history"]] == [1, 2]
    assert c.get("/v1/routes/apir/versions/1", headers=reader).json()["content"] == ROUTE


def test_invalid_put_is_refused_with_line_errors_and_the_running_version_stays(api):
    c, admin, _ = api
    c.put("/v1/routes/apir", content=ROUTE, headers=admin)
    r = c.put("/v1/routes/apir", content=ROUTE.replace("type: map", "type: mapp"), headers=admin)
    assert r.status_code == 422
    d = r.json()["error"]["details"][0]
    assert (d["line"], d["loc"], d["hint"]) == (4, "steps[0].type", "did you mean 'map'?")
    assert c.get("/v1/routes/apir", headers=admin).json()["version"] == 1
    r = c.put("/v1/routes/other", content=ROUTE, headers=admin)  # body names another route
    assert r.status_code == 422


def test_pause_resume_rollback_and_scopes(api):
    c, admin, reader = api
    assert c.put("/v1/routes/apir", content=ROUTE, headers=reader).status_code == 403
    c.put("/v1/routes/apir", content=ROUTE, headers=admin)
    assert c.post("/v1/routes/apir/rollback", headers=admin).status_code == 409  # only one version
    c.put("/v1/routes/apir", content=ROUTE.replace("'1'", "'2'"), headers=admin)
    r = c.post("/v1/routes/apir/rollback", params={"to": 1}, headers=admin)
    assert r.json() == {"name": "apir", "version": 3, "comment": "rollback to v1"}
    assert c.post("/v1/routes/apir/pause", headers=admin).json()["paused"] is True
    assert c.get("/v1/routes/apir", headers=reader).json()["paused"] is True
    assert c.post("/v1/routes/apir/resume", headers=admin).json()["paused"] is False
    assert c.post("/v1/routes/nope/pause", headers=admin).status_code == 404
    assert c.get("/v1/routes", headers={}).status_code == 401


def test_delete_keeps_history_audits_who_and_when_and_rollback_brings_it_back(api):
    c, admin, reader = api
    c.put("/v1/routes/apir", content=ROUTE, headers=admin)
    assert c.delete("/v1/routes/apir", headers=reader).status_code == 403
    r = c.delete("/v1/routes/apir", headers=admin)
    assert r.status_code == 200 and r.json()["deleted"] and r.json()["deleted_by"] == "ops" and r.json()["version"] == 2
    assert c.get("/v1/routes", headers=reader).json()["routes"] == []
    one = c.get("/v1/routes/apir", headers=reader).json()
    assert one["deleted"] and one["deleted_by"] == "ops" and one["deleted_at"] and one["content"] is None
    assert [(h["version"], h["action"], h["author"]) for h in one["history"]] == [(1, "apply", "ops"), (2, "delete", "ops")]
    assert c.delete("/v1/routes/apir", headers=admin).status_code == 404  # already deleted
    assert c.post("/v1/routes/apir/pause", headers=admin).status_code == 404
    assert c.delete("/v1/routes/nope", headers=admin).status_code == 404
    r = c.post("/v1/routes/apir/rollback", headers=admin)
    assert r.status_code == 200 and r.json()["version"] == 3 and r.json()["comment"] == "rollback to v1"
    assert c.get("/v1/routes/apir", headers=reader).json()["content"] == ROUTE

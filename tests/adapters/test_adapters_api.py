from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from esbhub.api.app import create_app


@pytest.fixture
def client_and_key(settings):
    from esbhub.db import upgrade

    upgrade(settings.effective_database_url)
    app = create_app(settings)
    with TestClient(app) as c:
        _, key = app.state.keys.create("ops", scopes=["read"])
        yield c, key


def test_adapter_list_needs_a_key_and_names_every_registered_adapter(client_and_key):
    c, key = client_and_key
    assert c.get("/v1/adapters").status_code == 401
    r = c.get("/v1/adapters", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    names = {a["name"] for a in r.json()["adapters"]}
    assert {"sql", "http", "amqp", "mqtt", "nats", "timer", "soap", "ftp", "sftp", "snmp"} <= names


def test_adapter_detail_carries_config_schemas_and_unknown_is_404(client_and_key):
    c, key = client_and_key
    h = {"Authorization": f"Bearer {key}"}
    sql = c.get("/v1/adapters/sql", headers=h).json()
    assert sql["source"] and sql["sink"] and sql["sink_config_schema"]["type"] == "object"
    assert c.get("/v1/adapters/sqll", headers=h).status_code == 404


def test_soap_endpoint_is_mounted_and_serves_its_wsdl(client_and_key):
    c, _ = client_and_key
    r = c.get("/soap/party.v1?wsdl")
    assert r.status_code == 200 and b"definitions" in r.content

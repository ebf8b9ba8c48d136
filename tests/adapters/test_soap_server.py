"""The hub's inbound SOAP endpoint: a zeep client calls it through its WSDL; bad input, hostile
XML and a bus that is down each end in a SOAP Fault that says why."""

from __future__ import annotations

import threading

import httpx
import pytest
import zeep
from fastapi import FastAPI

from esbhub.adapters.soap_server import SoapOperation, SoapServiceConfig, create_router
from esbhub.auth.principal import Principal
from esbhub.errors import BrokerUnavailable

from .peers_daemons import AsgiServer

PARTY = {
    "source_system": "billing", "source_id": "BA-1001", "name": "中国移动通信集团广东有限公司深圳分公司",
    "uscc": "91440300708461136T", "province": "广东",
    "addresses": [{"kind": "billing", "text": "深圳市福田区深南大道1号"}, {"text": "深圳市南山区科技园"}],
    "phones": [{"number": "+8675512345678"}, {"kind": "fax", "number": "0755-88888888"}],
    "attributes": {"billing_account": "BA-1001", "circuit_ids": ["CIRC-1", "CIRC-2"]},
}


class Bus:
    def __init__(self) -> None:
        self.envs: list = []
        self.down = False
        self.lock = threading.Lock()

    def __call__(self, env) -> None:
        if self.down:
            raise BrokerUnavailable("broker down")
        with self.lock:
            self.envs.append(env)


def auth(request, token_password):
    key = token_password or request.headers.get("x-api-key")
    if key == "billing-key":
        return Principal(key_id="k1", name="billing", scopes=frozenset({"ingest"}), types=("party.v1",))
    if key == "alarm-only":
        return Principal(key_id="k2", name="nms", scopes=frozenset({"ingest"}), types=("alarm.v1",))
    raise PermissionError("the API key is unknown or revoked")


SERVICE = SoapServiceConfig(name="billing", operations=[SoapOperation(name="PushCustomer", type="party.v1"),
                                                         SoapOperation(name="PushBill", type="bill.v1")],
                            max_bytes=20_000)


@pytest.fixture(scope="module")
def server():
    bus = Bus()
    app = FastAPI()
    app.include_router(create_router([SERVICE], emit=bus, authenticate=auth))
    with AsgiServer(app) as srv:
        srv.bus = bus
        yield srv


def client(server, key: str = "billing-key", wsse: bool = False) -> zeep.Client:
    import requests
    from zeep.transports import Transport

    s = requests.Session()
    if not wsse:
        s.headers["X-API-Key"] = key
    w = None
    if wsse:
        from zeep.wsse.username import UsernameToken

        w = UsernameToken("billing", key)
    return zeep.Client(f"{server.url}/soap/billing?wsdl", transport=Transport(session=s, timeout=5), wsse=w)


def test_zeep_client_calls_the_endpoint_and_gets_the_message_id_of_the_durable_envelope(server):
    before = len(server.bus.envs)
    resp = client(server).service.PushCustomer(**PARTY)
    assert resp.status == "accepted"
    env = server.bus.envs[before]
    assert env.id == resp.messageId and env.type == "party.v1" and env.source == "billing"
    assert env.payload["name"] == PARTY["name"] and [(p["kind"], p["number"]) for p in env.payload["phones"]] == [
        ("main", "+8675512345678"), ("fax", "0755-88888888")]
    assert [a["text"] for a in env.payload["addresses"]] == ["深圳市福田区深南大道1号", "深圳市南山区科技园"]
    assert env.payload["attributes"]["circuit_ids"] == ["CIRC-1", "CIRC-2"]
    assert env.headers["soap_operation"] == "PushCustomer"


def test_ws_security_usernametoken_carries_the_api_key_and_types_are_enforced(server):
    assert client(server, wsse=True).service.PushCustomer(**PARTY).status == "accepted"
    with pytest.raises(zeep.exceptions.Fault, match="unknown or revoked"):
        client(server, key="wrong", wsse=True).service.PushCustomer(**PARTY)
    with pytest.raises(zeep.exceptions.Fault, match="may not post 'party.v1'"):
        client(server, key="alarm-only").service.PushCustomer(**PARTY)


def test_invalid_payload_is_a_client_fault_naming_the_bad_field_and_nothing_is_emitted(server):
    before = len(server.bus.envs)
    bad = dict(PARTY, source_id="", province="x" * 80)
    with pytest.raises(zeep.exceptions.Fault) as ei:
        client(server).service.PushCustomer(**bad)
    assert ei.value.code.endswith("Client")
    assert "source_id" in ei.value.message and "province" in ei.value.message
    fields = [e.text for e in ei.value.detail.iter("{urn:esbhub:errors}field")]
    assert set(fields) == {"source_id", "province"}
    assert len(server.bus.envs) == before


def test_bus_down_is_a_server_fault_to_retry(server):
    server.bus.down = True
    try:
        with pytest.raises(zeep.exceptions.Fault) as ei:
            client(server).service.PushCustomer(**PARTY)
    finally:
        server.bus.down = False
    assert ei.value.code.endswith("Server") and "retry" in ei.value.message


ENV_HEAD = b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'


@pytest.mark.parametrize(
    "body, expect",
    [
        (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + ENV_HEAD
         + b'<PushCustomer xmlns="urn:esbhub:soap:billing"><name>&e;</name></PushCustomer></soap:Body></soap:Envelope>',
         "DTD"),
        (ENV_HEAD + b"<PushCustomer>" + b"<a>" * 40 + b"</a>" * 40 + b"</PushCustomer></soap:Body></soap:Envelope>",
         "deeper"),
        (ENV_HEAD + b"<PushCustomer><name>x</PushCustomer>", "malformed"),
        (b"<x/>", "not a SOAP 1.1 Envelope"),
        (ENV_HEAD + b"<Nope/></soap:Body></soap:Envelope>", "unknown operation 'Nope'"),
        (ENV_HEAD + b"<PushCustomer>" + b"<name>x</name>" * 2000 + b"</PushCustomer></soap:Body></soap:Envelope>",
         "exceeds the limit"),
    ],
)
def test_hostile_or_malformed_requests_get_a_client_fault(server, body, expect):
    before = len(server.bus.envs)
    r = httpx.post(f"{server.url}/soap/billing", content=body, headers={"X-API-Key": "billing-key",
                   "Content-Type": "text/xml"}, timeout=5)
    assert r.status_code in (413, 500) and b"soap:Client" in r.content and expect.encode() in r.content, r.text
    assert len(server.bus.envs) == before


def test_wsdl_lists_the_operations_and_an_unknown_service_is_404(server):
    r = httpx.get(f"{server.url}/soap/billing?wsdl", timeout=5)
    assert r.status_code == 200 and b'name="PushCustomer"' in r.content and b'name="PushBill"' in r.content
    assert f'location="{server.url}/soap/billing"'.encode() in r.content
    assert httpx.get(f"{server.url}/soap/nope?wsdl", timeout=5).status_code == 404


def test_mounted_in_the_hub_api_a_zeep_call_is_durably_on_the_bus_under_its_api_key(tmp_path):
    from esbhub.adapters import soap_server
    from esbhub.api.app import create_app
    from esbhub.auth.store import ApiKeyStore
    from esbhub.config import Settings
    from esbhub.db import upgrade

    settings = Settings(data_dir=tmp_path / "var", publish_timeout=5)
    upgrade(settings.effective_database_url)
    _kid, key = ApiKeyStore(settings.effective_database_url).create("billing", scopes=["ingest"], types=["party.v1"])
    app = create_app(settings)
    app.include_router(soap_server.router)  # how the API mounts the inbound SOAP services
    with AsgiServer(app, lifespan="on") as srv:
        broker = app.state.hub.broker
        broker.connect()
        broker.declare_queue("soap.test", ["party.v1"])
        import requests
        from zeep.transports import Transport

        s = requests.Session()
        s.headers["X-API-Key"] = key
        c = zeep.Client(f"{srv.url}/soap/party.v1?wsdl", transport=Transport(session=s, timeout=10))
        resp = c.service.PublishParty(**PARTY)
        d = broker.get("soap.test", timeout=10)
        assert d is not None and d.envelope.id == resp.messageId and d.envelope.source == "billing"
        assert d.envelope.payload["name"] == PARTY["name"]
        d.ack()
        r = httpx.post(f"{srv.url}/soap/bill.v1", headers={"X-API-Key": key, "Content-Type": "text/xml"}, timeout=10,
                       content=ENV_HEAD + b'<PublishBill xmlns="urn:esbhub:soap:bill.v1"/></soap:Body></soap:Envelope>')
        assert r.status_code == 403 and b"may not post 'bill.v1'" in r.content
        r = httpx.post(f"{srv.url}/soap/party.v1", headers={"Content-Type": "text/xml"}, timeout=10,
                       content=ENV_HEAD + b'<PublishParty xmlns="urn:esbhub:soap:party.v1"/></soap:Body></soap:Envelope>')
        assert r.status_code == 401 and b"soap:Client" in r.content


def test_a_retry_carrying_the_callers_message_id_header_gets_the_same_envelope_id(server):
    from lxml import etree

    def hdr(value: str):
        el = etree.Element("{urn:esbhub:upstream}MessageId")
        el.text = value
        return el

    c = client(server)
    first = c.service.PushCustomer(**PARTY, _soapheaders=[hdr("BILL-2026-000123")])
    again = c.service.PushCustomer(**PARTY, _soapheaders=[hdr("BILL-2026-000123")])
    other = c.service.PushCustomer(**PARTY, _soapheaders=[hdr("BILL-2026-000124")])
    assert first.messageId == again.messageId != other.messageId
    env = next(e for e in server.bus.envs if e.id == first.messageId)
    assert env.headers["upstream_message_id"] == "BILL-2026-000123"
    with pytest.raises(zeep.exceptions.Fault, match="MessageId header"):
        c.service.PushCustomer(**PARTY, _soapheaders=[hdr("no spaces allowed")])

"""Outbound SOAP (zeep) against SOAP services run here: the hub's own inbound endpoint, and a
small Starlette app answering with canned faults, 5xx, slowness, over plain HTTP and TLS."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest
from fastapi import FastAPI
from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from esbhub.adapters.base import parse_config
from esbhub.adapters.soap import SoapSink, SoapSinkConfig, fault_kind
from esbhub.adapters.soap_server import SoapOperation, SoapServiceConfig, create_router, render_wsdl
from esbhub.bus.envelope import Envelope
from esbhub.errors import ConfigError, InvalidMessage, PermanentError, TransientError

from .peers_daemons import AsgiServer, self_signed_cert
from .test_soap_server import PARTY

SERVICE = SoapServiceConfig(name="crm", operations=[SoapOperation(name="UpdateCustomer", type="party.v1")])
WSSE_NS = "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd}"


def fault(code: str, text: str) -> bytes:
    return (f'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault>'
            f"<faultcode>soap:{code}</faultcode><faultstring>{text}</faultstring></soap:Fault></soap:Body>"
            "</soap:Envelope>").encode()


class Canned:
    """GET → the WSDL; POST → the next planned (status, body, delay) or a success."""

    def __init__(self) -> None:
        self.plan: list[tuple[int, bytes, float]] = []
        self.bodies: list[bytes] = []

        async def wsdl(request: Request) -> Response:
            return Response(render_wsdl(SERVICE, str(request.url.replace(query=""))), media_type="text/xml")

        async def post(request: Request) -> Response:
            self.bodies.append(await request.body())
            status, body, delay = self.plan.pop(0) if self.plan else (200, b"", 0.0)
            if delay:
                await asyncio.sleep(delay)
            if not body:
                body = (b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
                        b'<UpdateCustomerResponse xmlns="urn:esbhub:soap:crm"><messageId>M1</messageId>'
                        b"<status>ok</status></UpdateCustomerResponse></soap:Body></soap:Envelope>")
            return Response(body, status_code=status, media_type="text/xml")

        self.app = Starlette(routes=[Route("/soap/crm", wsdl, methods=["GET"]), Route("/soap/crm", post, methods=["POST"])])


@pytest.fixture(scope="module")
def canned():
    c = Canned()
    with AsgiServer(c.app) as srv:
        c.url = f"{srv.url}/soap/crm"
        yield c


def sink(url: str, **kw) -> SoapSink:
    cfg = {"wsdl": f"{url}?wsdl", "operation": "UpdateCustomer", "timeout": 2}
    cfg.update(kw)
    return SoapSink(parse_config(SoapSinkConfig, cfg), name="crm")


def party_env(**over) -> Envelope:
    return Envelope.create("party.v1", dict(PARTY, **over), source="mdm")


def test_request_is_built_from_the_envelope_and_sent_to_the_hubs_own_soap_endpoint():
    got: list[Envelope] = []
    app = FastAPI()
    app.include_router(create_router([SERVICE], emit=got.append, authenticate=None))
    with AsgiServer(app) as srv:
        s = sink(f"{srv.url}/soap/crm", request="payload", fields={"source_id": "id", "source_system": "'hub'"})
        env = party_env()
        try:
            res = s.send(env)
        finally:
            s.close()
    assert res["response"]["status"] == "accepted" and res["response"]["messageId"] == got[0].id
    assert got[0].payload["source_id"] == env.id and got[0].payload["source_system"] == "hub"
    assert got[0].payload["name"] == PARTY["name"]
    assert s.health().ok and s.health().last_success is not None


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (500, fault("Client", "customer unknown"), PermanentError),
        (500, fault("Server", "database busy"), TransientError),
        (500, fault("Client.Authentication", "bad password"), PermanentError),
        (503, b"<html>maintenance</html>", TransientError),
        (404, b"not here", PermanentError),
    ],
)
def test_faults_and_http_errors_map_to_what_to_do_next(canned, status, body, expected):
    canned.plan = [(status, body, 0.0)]
    s = sink(canned.url)
    with pytest.raises(expected) as ei:
        s.send(party_env())
    assert type(ei.value) is expected
    s.close()


def test_fault_map_is_configurable_by_full_code_then_first_segment(canned):
    s = sink(canned.url, fault_map={"Client.Busy": "transient", "Client": "invalid", "Server": "permanent"})
    canned.plan = [(500, fault("Client.Busy", "try later"), 0.0), (500, fault("Client.Bad", "x"), 0.0),
                   (500, fault("Server", "x"), 0.0)]
    with pytest.raises(TransientError):
        s.send(party_env())
    with pytest.raises(InvalidMessage):
        s.send(party_env())
    with pytest.raises(PermanentError):
        s.send(party_env())
    assert fault_kind("{http://www.w3.org/2003/05/soap-envelope}Receiver", parse_config(
        SoapSinkConfig, {"wsdl": "x", "operation": "o"}).fault_map) is TransientError


def test_slow_service_times_out_as_transient(canned):
    canned.plan = [(200, b"", 3.0)]
    s = sink(canned.url, timeout=0.5)
    s._zeep()  # WSDL loaded before the slow call
    with pytest.raises(TransientError, match="Timeout"):
        s.send(party_env())
    s.close()


def test_request_the_wsdl_does_not_accept_is_invalid_input(canned):
    s = sink(canned.url, fields={"no_such_field": "id"})
    with pytest.raises(InvalidMessage, match="does not fit the WSDL"):
        s.send(party_env())


@pytest.mark.parametrize("digest", [False, True])
def test_ws_security_usernametoken_text_and_digest(canned, monkeypatch, digest):
    monkeypatch.setenv("T_SOAP_PW", "s3cret-pw")
    s = sink(canned.url, wsse={"username": "hub", "password": "${env:T_SOAP_PW}", "digest": digest})
    n = len(canned.bodies)
    s.send(party_env())
    tok = etree.fromstring(canned.bodies[n]).find(f".//{WSSE_NS}UsernameToken")
    assert tok.findtext(f"{WSSE_NS}Username") == "hub"
    pw = tok.find(f"{WSSE_NS}Password")
    if not digest:
        assert pw.text == "s3cret-pw" and pw.get("Type").endswith("#PasswordText")
    else:
        nonce = base64.b64decode(tok.findtext(f"{WSSE_NS}Nonce"))
        created = tok.findtext("{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd}Created")
        want = base64.b64encode(hashlib.sha1(nonce + created.encode() + b"s3cret-pw").digest()).decode()  # noqa: S324
        assert pw.get("Type").endswith("#PasswordDigest") and pw.text == want
        assert b"s3cret-pw" not in canned.bodies[n]


def test_tls_is_verified_by_default_and_a_ca_bundle_makes_it_work(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    c = Canned()
    with AsgiServer(c.app, certfile=cert, keyfile=key) as srv:
        url = f"{srv.url}/soap/crm"
        bad, ok = sink(url), sink(url, ca_file=cert)
        try:
            with pytest.raises(PermanentError, match="TLS verification failed"):
                bad.send(party_env())
            assert ok.send(party_env())["response"]["status"] == "ok"
        finally:
            bad.close()
            ok.close()


def test_config_validates_jmespath_and_refuses_inline_passwords():
    with pytest.raises(ConfigError, match="invalid JMESPath"):
        parse_config(SoapSinkConfig, {"wsdl": "x", "operation": "o", "fields": {"a": "payload.[["}})
    with pytest.raises(ConfigError, match="reference"):
        parse_config(SoapSinkConfig, {"wsdl": "x", "operation": "o", "wsse": {"username": "u", "password": "pw"}})


def test_checked_in_reference_doc_is_up_to_date():
    from pathlib import Path

    from esbhub.adapters.docs import render
    from esbhub.adapters.registry import get_adapter

    path = Path(__file__).resolve().parents[2] / "docs" / "adapters" / "soap.md"
    assert path.read_text(encoding="utf-8") == render(get_adapter("soap")), "run: esbhub adapters docs"


def test_mutual_tls_client_certificate_by_path(tmp_path):
    import ssl

    server_dir, client_dir = tmp_path / "srv", tmp_path / "cli"
    server_dir.mkdir()
    client_dir.mkdir()
    cert, key = self_signed_cert(server_dir)
    ccert, ckey = self_signed_cert(client_dir)
    c = Canned()
    with AsgiServer(c.app, certfile=cert, keyfile=key, ssl_cert_reqs=ssl.CERT_REQUIRED, ssl_ca_certs=ccert) as srv:
        url = f"{srv.url}/soap/crm"
        anonymous, known = sink(url, ca_file=cert), sink(url, ca_file=cert, client_cert=ccert, client_key=ckey)
        try:
            with pytest.raises((TransientError, PermanentError)):
                anonymous.send(party_env())  # the server refuses a client without a certificate
            assert known.send(party_env())["response"]["status"] == "ok"
        finally:
            anonymous.close()
            known.close()

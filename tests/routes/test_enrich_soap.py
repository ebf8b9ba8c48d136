"""``enrich.soap``: a lookup through the soap adapter (zeep) against a SOAP service run here —
a WSDL on GET, document/literal answers and SOAP faults on POST — with the TTL cache, fault
mapping, WS-Security and lint-time checks of the adapter config."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from lxml import etree

from esbhub.errors import PermanentError, TransientError
from esbhub.routes.engine import CompiledRoute
from esbhub.routes.loader import load_text

from .conftest import env, route_of

NS = "urn:test:billing"
WSSE = "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd}"
WSDL = f"""<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:tns="{NS}" targetNamespace="{NS}" name="Billing">
  <types>
    <xsd:schema targetNamespace="{NS}" elementFormDefault="qualified">
      <xsd:element name="GetAccount">
        <xsd:complexType><xsd:sequence>
          <xsd:element name="accountId" type="xsd:string"/>
          <xsd:element name="province" type="xsd:string" minOccurs="0"/>
        </xsd:sequence></xsd:complexType>
      </xsd:element>
      <xsd:element name="GetAccountResponse">
        <xsd:complexType><xsd:sequence>
          <xsd:element name="account">
            <xsd:complexType><xsd:sequence>
              <xsd:element name="accountId" type="xsd:string"/>
              <xsd:element name="tier" type="xsd:string"/>
              <xsd:element name="manager" type="xsd:string"/>
              <xsd:element name="balance" type="xsd:decimal"/>
            </xsd:sequence></xsd:complexType>
          </xsd:element>
        </xsd:sequence></xsd:complexType>
      </xsd:element>
    </xsd:schema>
  </types>
  <message name="GetAccountIn"><part name="parameters" element="tns:GetAccount"/></message>
  <message name="GetAccountOut"><part name="parameters" element="tns:GetAccountResponse"/></message>
  <portType name="BillingPort">
    <operation name="GetAccount"><input message="tns:GetAccountIn"/><output message="tns:GetAccountOut"/></operation>
  </portType>
  <binding name="BillingBinding" type="tns:BillingPort">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <operation name="GetAccount">
      <soap:operation soapAction="GetAccount"/>
      <input><soap:body use="literal"/></input><output><soap:body use="literal"/></output>
    </operation>
  </binding>
  <service name="Billing">
    <port name="BillingPort" binding="tns:BillingBinding"><soap:address location="ADDRESS"/></port>
  </service>
</definitions>"""

ACCOUNTS = {"A-77": ("A", "王经理", "1234.50"), "A-78": ("B", "李经理", "0")}


def _env(body: str) -> bytes:
    return (f'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>{body}'
            "</soap:Body></soap:Envelope>").encode()


def _fault(code: str, text: str) -> bytes:
    return _env(f"<soap:Fault><faultcode>soap:{code}</faultcode><faultstring>{text}</faultstring></soap:Fault>")


class Billing:
    """A SOAP billing service: GetAccount(accountId) → account, faults for unknown / busy accounts."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.users: list[str | None] = []
        svc = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self._send(200, WSDL.replace("ADDRESS", svc.url).encode())

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                doc = etree.fromstring(raw, etree.XMLParser(resolve_entities=False, no_network=True))
                acct = doc.findtext(f".//{{{NS}}}accountId")
                svc.calls.append(acct)
                svc.users.append(doc.findtext(f".//{WSSE}Username"))
                if acct == "BUSY":
                    self._send(500, _fault("Server", "database busy"))
                elif acct not in ACCOUNTS:
                    self._send(500, _fault("Client.NotFound", f"no account {acct}"))
                else:
                    tier, mgr, bal = ACCOUNTS[acct]
                    self._send(200, _env(
                        f'<GetAccountResponse xmlns="{NS}"><account><accountId>{acct}</accountId><tier>{tier}</tier>'
                        f"<manager>{mgr}</manager><balance>{bal}</balance></account></GetAccountResponse>"))

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/xml; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/billing"


@pytest.fixture(scope="module")
def billing() -> Iterator[Billing]:
    b = Billing()
    t = threading.Thread(target=b.srv.serve_forever, daemon=True)
    t.start()
    yield b
    b.srv.shutdown()
    b.srv.server_close()


HEAD = "name: r\nfrom: {topic: party.v1}\nto: [{topic: out.v1, name: out}]\nsteps:\n"


def soap_route(url: str, *, extra_config: str = "", extra: str = "", ttl: float = 60, select: str = "") -> str:
    return HEAD + (
        "  - type: enrich\n    name: account\n    soap:\n"
        f"      config: {{wsdl: '{url}?wsdl', operation: GetAccount, timeout: 2{extra_config}}}\n"
        "      params: {accountId: payload.acct}\n"
        f"{extra}{select and f'      select: {select}{chr(10)}'}    target: payload.account\n    cache: {{ttl: {ttl}}}\n"
    )


def test_soap_lookup_puts_the_selected_response_at_the_target_and_caches_it(billing: Billing):
    cr = CompiledRoute(route_of(soap_route(billing.url)))
    n = len(billing.calls)
    first = cr.run(env("party.v1", {"acct": "A-77"})).outputs[0].envelope
    cr.run(env("party.v1", {"acct": "A-77"}))
    cr.run(env("party.v1", {"acct": "A-78"}))
    assert first.payload["account"] == {"accountId": "A-77", "tier": "A", "manager": "王经理", "balance": "1234.50"}
    assert billing.calls[n:] == ["A-77", "A-78"]  # the second A-77 came from the cache
    # zeep gives a response's single child directly; 'select' picks a part of it
    picked = CompiledRoute(route_of(soap_route(billing.url, select="'{m: manager, t: tier}'")))
    assert picked.run(env("party.v1", {"acct": "A-78"})).outputs[0].envelope.payload["account"] == {"m": "李经理", "t": "B"}


def test_soap_lookup_without_cache_calls_every_time(billing: Billing):
    cr = CompiledRoute(route_of(soap_route(billing.url, ttl=0)))
    n = len(billing.calls)
    for _ in range(2):
        cr.run(env("party.v1", {"acct": "A-78"}))
    assert billing.calls[n:] == ["A-78", "A-78"]


def test_soap_faults_map_to_retry_or_dead_letter_and_not_found_faults_to_missing(billing: Billing):
    cr = CompiledRoute(route_of(soap_route(billing.url)))
    with pytest.raises(TransientError, match="Server"):
        cr.run(env("party.v1", {"acct": "BUSY"}))
    with pytest.raises(PermanentError, match="NotFound"):
        cr.run(env("party.v1", {"acct": "NOPE"}))
    missing = soap_route(billing.url, extra="      not_found_faults: [Client.NotFound]\n") + "    on_missing: 'null'\n"
    out = CompiledRoute(route_of(missing)).run(env("party.v1", {"acct": "NOPE"})).outputs[0].envelope
    assert out.payload == {"acct": "NOPE", "account": None}


def test_soap_lookup_sends_ws_security_with_the_password_by_reference(billing: Billing, monkeypatch):
    monkeypatch.setenv("T_BILLING_PW", "s3cret")
    wsse = ", wsse: {username: hub, password: '${env:T_BILLING_PW}', digest: true}"
    cr = CompiledRoute(route_of(soap_route(billing.url, extra_config=wsse)))
    n = len(billing.calls)
    cr.run(env("party.v1", {"acct": "A-77"}))
    assert billing.users[n:] == ["hub"]


def test_soap_lookup_config_is_checked_against_the_soap_adapter_at_lint_time():
    bad = soap_route("http://127.0.0.1:9/x", extra_config=", operaton: X, wsse: {username: u, password: hunter2}")
    res = load_text(bad.replace("operation: GetAccount, ", ""), "r.yaml")
    msgs = {(e.loc, e.type) for e in res.errors}
    assert any(loc.endswith("soap.config.operaton") for loc, _ in msgs), msgs
    assert any("wsse.password" in loc for loc, _ in msgs), msgs
    assert all(e.file == "r.yaml" and e.line for e in res.errors)
    res = load_text(soap_route("http://x/y", extra_config=", request: payload"), "r.yaml")
    assert [e.type for e in res.errors] == ["extra_forbidden"] and "soap.params" in (res.errors[0].hint or "")
    res = load_text(soap_route("http://x/y", select="'account[['"), "r.yaml")
    assert [e.type for e in res.errors] == ["expression"]

"""Simulated telecom systems around the hub, all built from one :class:`TelecomWorld`.

* :class:`SimServer` — one local HTTP server (``ThreadingHTTPServer``, loopback) playing
  **billing** (its SOAP service ``/billing/soap`` (``?wsdl``): ``PostPayment`` — postings are
  recorded once per payment and account, repeats counted —, ``QueryCustomer`` (customer by
  ``cust_id``) and ``QueryAccount`` (account by ``acct_no``: owner and group agreement
  members with shares), unknown keys answered with the fault ``Client.NotFound``; the same
  queries over HTTP/JSON ``GET /billing/customers/{id}``, ``GET /billing/groups/{account}``;
  provisioning and account creation of service orders) and the **alarm receiver** of the network-operations desk (``POST /notify/alarms``);
* :func:`create_resource_db` — the **resource inventory**: customers, circuits and service
  instances in any SQLAlchemy database (SQLite file in the demo);
* :func:`write_bill_file` / :func:`read_bill_file` — **billing**'s daily bill file (GBK, ``|``
  separated, one line per bill item);
* :func:`write_bank_file` / :func:`read_bank_file` — the **bank**'s payment result file,
  GB18030 fixed-width (read back with the adapters' fixed-width parser, as the SFTP source does);
* native customer-change records of billing, resource and bank (:func:`billing_record` …)
  and the **CRM**'s ``party.v1`` pushes; circuit-down **alarms** as ``alarm.v1``.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from esbhub.adapters.fileformats import CsvFormat, FixedColumn, FixedWidthFormat, parse_records
from esbhub.schemas.party import Party
from esbhub.telecom.world import PERIOD, TelecomWorld

# ------------------------------------------------------------------ native customer records


def _phones(p: Party, k: str = "type", n: str = "no") -> list[dict[str, str]]:
    return [{k: ph.kind, n: ph.number} for ph in p.phones]


def _addrs(p: Party) -> list[dict[str, str]]:
    return [{"type": a.kind, "text": a.text} for a in p.addresses]


def billing_record(p: Party, monthly_fee: Decimal | None = None) -> dict[str, Any]:
    """A billing customer as the billing system's customer service returns it."""
    rec: dict[str, Any] = {
        "cust_id": p.source_id, "cust_name": p.name, "cert_no": p.uscc, "prov": p.province, "city": p.city,
        "tel": _phones(p), "addr": _addrs(p), "acct_no": p.attributes.billing_account,
        "parent_cust_id": p.parent_source_id,
    }
    if monthly_fee is not None:
        rec["monthly_fee"] = str(monthly_fee)
    return rec


def resource_record(p: Party) -> dict[str, Any]:
    return {
        "customer_code": p.source_id, "customer_name": p.name, "uscc": p.uscc, "province": p.province,
        "city": p.city, "contact_phones": _phones(p, "kind", "number"),
        "addresses": [{"kind": a.kind, "text": a.text} for a in p.addresses],
        "circuits": list(p.attributes.circuit_ids), "parent_code": p.parent_source_id,
    }


def bank_record(p: Party) -> dict[str, Any]:
    return {
        "acct_no": p.source_id, "acct_name": p.name, "uscc": p.uscc, "bank_name": p.attributes.bank_name,
        "province": p.province, "city": p.city, "phones": _phones(p, "kind", "number"),
        "addresses": [{"kind": a.kind, "text": a.text} for a in p.addresses], "parent_acct_no": p.parent_source_id,
    }


def crm_party(p: Party) -> dict[str, Any]:
    return p.model_dump(mode="json", exclude_none=True)


def alarm_payload(a: Any) -> dict[str, Any]:
    return {
        "alarm_id": a.alarm_id, "source_address": a.source_address, "kind": "circuit_down", "severity": "critical",
        "trap_oid": "1.3.6.1.4.1.99999.0.1", "circuit_ids": [a.circuit_id], "raised_at": a.raised_at.isoformat(),
        "text": f"circuit {a.circuit_id} down",
    }


# network management: SNMPv2c traps (linkDown with the NMS's alarm id, circuit id and text)
LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"
NMS_ALARM_ID_OID = "1.3.6.1.4.1.99999.1.1"
NMS_CIRCUIT_OID = "1.3.6.1.4.1.99999.1.2"
NMS_TEXT_OID = "1.3.6.1.4.1.99999.1.3"


def trap_packet(a: Any, community: str, request_id: int) -> bytes:
    """One SNMPv2c linkDown trap for alarm ``a`` (BER, as a network element sends it)."""
    from pyasn1.codec.ber import encoder
    from pysnmp.proto.api import v2c

    pdu = v2c.SNMPv2TrapPDU()
    v2c.apiTrapPDU.set_defaults(pdu)
    v2c.apiTrapPDU.set_request_id(pdu, request_id)
    v2c.apiTrapPDU.set_varbinds(pdu, [
        (v2c.ObjectIdentifier("1.3.6.1.2.1.1.3.0"), v2c.TimeTicks(request_id * 100)),
        (v2c.ObjectIdentifier("1.3.6.1.6.3.1.1.4.1.0"), v2c.ObjectIdentifier(LINK_DOWN)),
        (v2c.ObjectIdentifier(NMS_ALARM_ID_OID), v2c.OctetString(a.alarm_id.encode())),
        (v2c.ObjectIdentifier(NMS_CIRCUIT_OID), v2c.OctetString(a.circuit_id.encode())),
        (v2c.ObjectIdentifier(NMS_TEXT_OID), v2c.OctetString(f"电路 {a.circuit_id} 中断 (circuit down)".encode())),
    ])
    msg = v2c.Message()
    v2c.apiMessage.set_defaults(msg)
    v2c.apiMessage.set_community(msg, community)
    v2c.apiMessage.set_pdu(msg, pdu)
    return encoder.encode(msg)


def send_traps(alarms: list[Any], port: int, community: str, host: str = "127.0.0.1", per_second: float = 2000) -> int:
    """Send one trap per alarm over UDP (paced); returns how many were sent."""
    import socket
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i, a in enumerate(alarms):
            sock.sendto(trap_packet(a, community, i + 1), (host, port))
            time.sleep(1.0 / per_second)
    return len(alarms)


def payment_payload(p: dict[str, Any]) -> dict[str, Any]:
    """payment.v1 from one record of the bank file."""
    return {
        "payment_id": p["payment_id"], "bank": p["bank"], "payer_name": p["payer_name"],
        "payer_account": p["payer_account"], "billing_account": p["billing_account"], "amount": p["amount"],
        "currency": "CNY", "paid_at": f"{p['paid_on']}T{p['paid_time'][:2]}:{p['paid_time'][2:4]}:00+08:00",
        "status": "success" if p["status"] == "00" else "failed",
    }


# ------------------------------------------------------------------ resource inventory (SQL)
meta = sa.MetaData()
res_customers = sa.Table(
    "tel_res_customers", meta,
    sa.Column("customer_code", sa.String(64), primary_key=True),
    sa.Column("customer_name", sa.String(500), nullable=False),
    sa.Column("uscc", sa.String(18)),
    sa.Column("city", sa.String(50)),
)
res_circuits = sa.Table(
    "tel_res_circuits", meta,
    sa.Column("circuit_id", sa.String(64), primary_key=True),
    sa.Column("customer_code", sa.String(64), nullable=False, index=True),
    sa.Column("bandwidth_mbps", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
)
res_capacity = sa.Table(
    "tel_res_capacity", meta,
    sa.Column("product", sa.String(32), primary_key=True),
    sa.Column("free_ports", sa.Integer, nullable=False),
)
res_instances = sa.Table(
    "tel_res_service_instances", meta,
    sa.Column("instance_id", sa.String(64), primary_key=True),
    sa.Column("circuit_id", sa.String(64), nullable=False),
    sa.Column("product", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
)
# The inventory's customer change outbox: its application (or a trigger) writes one row per
# customer change, the hub's ``sql`` source claims rows with a lease, emits them and stamps
# processed_at (route telecom-resource-customers). Lists are JSON text.
res_changes = sa.Table(
    "tel_res_customer_changes", meta,
    sa.Column("change_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_code", sa.String(64), nullable=False),
    sa.Column("customer_name", sa.String(500)),
    sa.Column("uscc", sa.String(18)),
    sa.Column("province", sa.String(50)),
    sa.Column("city", sa.String(50)),
    sa.Column("parent_code", sa.String(64)),
    sa.Column("contact_phones", sa.Text),
    sa.Column("addresses", sa.Text),
    sa.Column("circuits", sa.Text),
    sa.Column("changed_at", sa.DateTime, nullable=False),
    sa.Column("lease_until", sa.DateTime),
    sa.Column("lease_token", sa.String(64)),
    sa.Column("processed_at", sa.DateTime),
)


def create_resource_db(world: TelecomWorld, url: str) -> sa.Engine:
    """(Re)create the resource inventory tables at ``url`` and fill them from the world."""
    eng = sa.create_engine(url)
    meta.drop_all(eng)
    meta.create_all(eng)
    with eng.begin() as c:
        c.execute(res_customers.insert(), [
            {"customer_code": p.source_id, "customer_name": p.name, "uscc": p.uscc, "city": p.city}
            for p in world.resource
        ])
        circ = sorted(world.circuits.items())
        c.execute(res_circuits.insert(), [
            {"circuit_id": cid, "customer_code": code, "bandwidth_mbps": 100 * (1 + i % 10), "status": "active"}
            for i, (cid, code) in enumerate(circ)
        ])
        c.execute(res_capacity.insert(), [
            {"product": "MPLS-VPN", "free_ports": 500}, {"product": "DIA", "free_ports": 500}, {"product": "SDH", "free_ports": 50},
        ])
        c.execute(res_instances.insert(), [
            {"instance_id": f"SI-{cid}", "circuit_id": cid, "product": ("MPLS-VPN", "DIA", "SDH")[i % 3],
             "status": "active"}
            for i, (cid, _code) in enumerate(circ)
        ])
    return eng


def write_resource_changes(world: TelecomWorld, url: str) -> list[int]:
    """The inventory records a change for each of its customers in its outbox; returns the change ids."""
    from datetime import UTC, datetime

    eng = sa.create_engine(url)
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        with eng.begin() as c:
            ids = []
            for p in world.resource:
                r = resource_record(p)
                row = {k: r[k] for k in ("customer_code", "customer_name", "uscc", "province", "city", "parent_code")}
                row.update({k: json.dumps(r[k], ensure_ascii=False) for k in ("contact_phones", "addresses", "circuits")})
                ids.append(int(c.execute(res_changes.insert().values(**row, changed_at=now)).inserted_primary_key[0]))
        return ids
    finally:
        eng.dispose()


def resource_changes_pending(url: str) -> tuple[int, int]:
    """(rows in the change outbox, rows the hub has not taken yet)."""
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            total = c.execute(sa.select(sa.func.count()).select_from(res_changes)).scalar_one()
            pending = c.execute(sa.select(sa.func.count()).select_from(res_changes)
                                .where(res_changes.c.processed_at.is_(None))).scalar_one()
        return int(total), int(pending)
    finally:
        eng.dispose()


class BillingSoapClient:
    """Billing pushing its customer changes to the hub's inbound SOAP endpoint as an upstream
    system does: a zeep client built from the hub's WSDL (``/soap/customer.billing.v1?wsdl``),
    the API key in ``X-API-Key``, and its own change id in a ``<MessageId>`` SOAP header so a
    retry after a lost answer is the same message. Each answer's message id is kept."""

    SERVICE = "customer.billing.v1"

    def __init__(self, hub_url: str, api_key: str, *, timeout: float = 10.0) -> None:
        import requests
        from zeep import Client, Settings
        from zeep.transports import Transport

        session = requests.Session()
        session.headers["X-API-Key"] = api_key
        self._session = session
        self.client = Client(f"{hub_url.rstrip('/')}/soap/{self.SERVICE}?wsdl",
                             transport=Transport(session=session, timeout=timeout, operation_timeout=timeout),
                             settings=Settings(strict=True, xml_huge_tree=False))
        self.accepted: dict[str, str] = {}  # billing customer id -> the hub's message id

    def push(self, record: dict[str, Any], change_id: str) -> str:
        from lxml import etree

        hdr = etree.Element("{urn:telecom:billing}MessageId")
        hdr.text = change_id
        body = {k: v for k, v in record.items() if v is not None}
        resp = self.client.service.PublishCustomerBilling(**body, _soapheaders=[hdr])
        if resp is None or resp["status"] != "accepted" or not resp["messageId"]:
            raise RuntimeError(f"billing change {change_id}: the hub did not accept it ({resp!r})")
        self.accepted[str(record["cust_id"])] = str(resp["messageId"])
        return str(resp["messageId"])

    def close(self) -> None:
        self._session.close()


# ------------------------------------------------------------------ bank file (GB18030 fixed width)
CST = timezone(timedelta(hours=8))
BANK_FORMAT = FixedWidthFormat(
    type="fixed", width_unit="bytes", skip_lines=1, skip_trailer_lines=1, record_prefix="D",
    columns=[
        FixedColumn(name="payment_id", start=2, width=16),
        FixedColumn(name="bank", start=18, width=6),
        FixedColumn(name="payer_account", start=24, width=24),
        FixedColumn(name="payer_name", start=48, width=80),
        FixedColumn(name="billing_account", start=128, width=20),
        FixedColumn(name="amount", start=148, width=15, type="decimal", decimal=2),
        FixedColumn(name="paid_on", start=163, width=8, type="date"),
        FixedColumn(name="paid_time", start=171, width=6),
        FixedColumn(name="status", start=177, width=2),
    ],
)


def _field(text: str, width: int, *, right: bool = False) -> bytes:
    raw = text.encode("gb18030")
    if len(raw) > width:  # cut on a character boundary
        while len(raw) > width:
            text = text[:-1]
            raw = text.encode("gb18030")
    pad = b" " * (width - len(raw))
    return pad + raw if right else raw + pad


def bank_file_bytes(world: TelecomWorld) -> bytes:
    lines = [_field(f"H{world.seed:08d}{PERIOD.replace('-', '')}", 40)]
    total = Decimal(0)
    for p in world.payments:
        local = p.paid_at.astimezone(CST)  # booked time, in the bank's local time (UTC+8)
        cents = int((p.amount * 100).to_integral_value())
        total += p.amount
        lines.append(b"D" + _field(p.payment_id, 16) + _field(p.bank, 6) + _field(p.payer_account, 24)
                     + _field(p.payer_name, 80) + _field(p.billing_account, 20) + _field(str(cents), 15, right=True)
                     + _field(local.strftime("%Y%m%d"), 8) + _field(local.strftime("%H%M%S"), 6) + b"00")
    lines.append(_field(f"T{len(world.payments):08d}{int(total * 100):015d}", 40))
    return b"\r\n".join(lines) + b"\r\n"


def write_bank_file(world: TelecomWorld, directory: Path) -> Path:
    """The bank's payment result file, written with a temporary name then renamed."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"PAY_{PERIOD.replace('-', '')}_{world.seed}.txt"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(bank_file_bytes(world))
    tmp.replace(path)
    return path


def read_bank_file(path: Path) -> list[dict[str, Any]]:
    return [rec for _line, rec in parse_records(path.read_bytes(), BANK_FORMAT, "gb18030")]


# ------------------------------------------------------------------ billing's daily bill file (GBK, '|' separated)
BILL_FORMAT = CsvFormat(type="csv", delimiter="|", header=True)
BILL_COLUMNS = ("bill_id", "account", "customer_source_id", "period", "issued_on", "item_code", "item_amount")


def write_bill_file(world: TelecomWorld, directory: Path) -> Path:
    """Billing's daily bill file: one line per bill item, GBK, temporary name then rename."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"BILL_{PERIOD.replace('-', '')}_{world.seed}.txt"
    lines = ["|".join(BILL_COLUMNS)]
    for b in world.bills:
        for it in b["items"]:
            lines.append("|".join((b["bill_id"], b["account"], b["customer_source_id"], b["period"], b["issued_on"],
                                   it["code"], it["amount"])))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(("\r\n".join(lines) + "\r\n").encode("gbk"))
    tmp.replace(path)
    return path


def read_bill_file(path: Path) -> list[dict[str, Any]]:
    """bill.v1 payloads from a bill file (items of one bill grouped, total = their sum)."""
    bills: dict[str, dict[str, Any]] = {}
    for _line, r in parse_records(path.read_bytes(), BILL_FORMAT, "gbk"):
        b = bills.setdefault(r["bill_id"], {
            "bill_id": r["bill_id"], "account": r["account"], "customer_source_id": r["customer_source_id"],
            "period": r["period"], "issued_on": r["issued_on"], "items": [], "total": Decimal(0)})
        b["items"].append({"code": r["item_code"], "amount": r["item_amount"]})
        b["total"] += Decimal(r["item_amount"])
    return [{**b, "total": str(b["total"])} for b in bills.values()]


# ------------------------------------------------------------------ billing + alarm receiver (HTTP)
_SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
_XSD = "http://www.w3.org/2001/XMLSchema"
# billing's query operations: request and response elements (document/literal wrapped)
_QUERY_XSD = """<xsd:schema xmlns:xsd="{xsd}" xmlns:tns="{ns}">
  <xsd:complexType name="BillingPhone"><xsd:sequence>
    <xsd:element name="type" type="xsd:string" minOccurs="0"/><xsd:element name="no" type="xsd:string"/>
  </xsd:sequence></xsd:complexType>
  <xsd:complexType name="BillingAddress"><xsd:sequence>
    <xsd:element name="type" type="xsd:string" minOccurs="0"/><xsd:element name="text" type="xsd:string"/>
  </xsd:sequence></xsd:complexType>
  <xsd:complexType name="BillingCustomer"><xsd:sequence>
    <xsd:element name="cust_id" type="xsd:string"/>
    <xsd:element name="cust_name" type="xsd:string"/>
    <xsd:element name="cert_no" type="xsd:string" minOccurs="0" nillable="true"/>
    <xsd:element name="prov" type="xsd:string" minOccurs="0" nillable="true"/>
    <xsd:element name="city" type="xsd:string" minOccurs="0" nillable="true"/>
    <xsd:element name="tel" type="tns:BillingPhone" minOccurs="0" maxOccurs="unbounded"/>
    <xsd:element name="addr" type="tns:BillingAddress" minOccurs="0" maxOccurs="unbounded"/>
    <xsd:element name="acct_no" type="xsd:string" minOccurs="0" nillable="true"/>
    <xsd:element name="parent_cust_id" type="xsd:string" minOccurs="0" nillable="true"/>
  </xsd:sequence></xsd:complexType>
  <xsd:complexType name="GroupMember"><xsd:sequence>
    <xsd:element name="account" type="xsd:string"/><xsd:element name="share" type="xsd:decimal"/>
  </xsd:sequence></xsd:complexType>
  <xsd:complexType name="BillingAccount"><xsd:sequence>
    <xsd:element name="account" type="xsd:string"/>
    <xsd:element name="cust_id" type="xsd:string" minOccurs="0" nillable="true"/>
    <xsd:element name="members" type="tns:GroupMember" minOccurs="0" maxOccurs="unbounded"/>
  </xsd:sequence></xsd:complexType>
  <xsd:element name="QueryCustomer"><xsd:complexType><xsd:sequence>
    <xsd:element name="cust_id" type="xsd:string"/></xsd:sequence></xsd:complexType></xsd:element>
  <xsd:element name="QueryCustomerResponse"><xsd:complexType><xsd:sequence>
    <xsd:element name="customer" type="tns:BillingCustomer"/></xsd:sequence></xsd:complexType></xsd:element>
  <xsd:element name="QueryAccount"><xsd:complexType><xsd:sequence>
    <xsd:element name="acct_no" type="xsd:string"/></xsd:sequence></xsd:complexType></xsd:element>
  <xsd:element name="QueryAccountResponse"><xsd:complexType><xsd:sequence>
    <xsd:element name="account" type="tns:BillingAccount"/></xsd:sequence></xsd:complexType></xsd:element>
</xsd:schema>"""


def _x(tag: str, value: Any) -> str:
    """One element with escaped text; a None value is omitted (the XSD makes those optional)."""
    from xml.sax.saxutils import escape

    return "" if value is None else f"<{tag}>{escape(str(value))}</{tag}>"


def _soap_fault(code: str, text: str) -> bytes:
    from xml.sax.saxutils import escape

    return (f'<soap:Envelope xmlns:soap="{_SOAP_ENV}"><soap:Body><soap:Fault><faultcode>{escape(code)}</faultcode>'
            f"<faultstring>{escape(text)}</faultstring></soap:Fault></soap:Body></soap:Envelope>").encode()
class SimServer:
    """Billing's HTTP service and the alarm webhook receiver, on one loopback port."""

    def __init__(self, world: TelecomWorld, host: str = "127.0.0.1", port: int = 0) -> None:
        self.world = world
        self.customers = {p.source_id: p for p in world.billing}
        self.postings: dict[str, dict[str, Any]] = {}  # "<payment id>/<account>" -> posting (SOAP PostPayment)
        self.duplicate_posts = 0
        self.alarms: dict[str, dict[str, Any]] = {}  # idempotency key -> alarm delivered
        self.duplicate_alarms = 0
        self.replies: dict[tuple[str, str], Any] = {}  # (path, idempotency key) -> answer given (same answer again)
        self.provisioned: dict[str, str] = {}  # order id -> active / cancelled
        self.accounts: dict[str, str] = {}  # order id -> billing account created
        self.lock = threading.Lock()
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a: Any) -> None:  # quiet
                return

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body, ensure_ascii=False).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts == ["billing", "soap"]:
                    return self._send_xml(200, sim.wsdl())
                if parts[:2] == ["billing", "customers"] and len(parts) == 3:
                    p = sim.customers.get(parts[2])
                    return self._send(200, billing_record(p)) if p else self._send(404, {"error": "no such customer"})
                if parts[:2] == ["billing", "groups"] and len(parts) == 3:
                    g = sim.world.groups.get(parts[2])
                    if not g:
                        return self._send(404, {"error": "no group agreement"})
                    return self._send(200, {"account": parts[2], "members": [
                        {"account": a, "share": str(s)} for a, s in sorted(g.items())]})
                return self._send(404, {"error": "not found"})

            def _send_xml(self, code: int, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/xml; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                if self.path.split("?")[0].rstrip("/") == "/billing/soap":
                    code, answer = sim.soap_call(self.rfile.read(min(n, 1_000_000)))
                    return self._send_xml(code, answer)
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except ValueError:
                    return self._send(400, {"error": "bad json"})
                key = self.headers.get("Idempotency-Key") or json.dumps(body, sort_keys=True)
                path = self.path.split("?")[0].rstrip("/")
                if path in ("/provisioning/orders", "/provisioning/cancel", "/billing/accounts"):
                    with sim.lock:
                        answer = sim.replies.get((path, key))
                        if answer is None:
                            answer = sim.replies[(path, key)] = sim.order_step(path, body)
                    return self._send(200, answer)
                if path == "/notify/alarms":
                    with sim.lock:
                        if key in sim.alarms:
                            sim.duplicate_alarms += 1
                        else:
                            sim.alarms[key] = body
                    return self._send(200, {"status": "received"})
                return self._send(404, {"error": "not found"})

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- billing's SOAP payment service (document/literal, WSDL from the hub's own renderer)
    SOAP_SERVICE = "billing"

    def wsdl(self) -> bytes:
        """PostPayment rendered by the hub's WSDL renderer, plus the query operations (their
        response types are billing's own, so they are added to the same document here)."""
        from lxml import etree

        from esbhub.adapters.soap_server import WSDL, WSDL_SOAP, SoapOperation, SoapServiceConfig, render_wsdl

        svc = SoapServiceConfig(name=self.SOAP_SERVICE, operations=[SoapOperation(name="PostPayment", type="payment.v1")])
        doc = etree.fromstring(render_wsdl(svc, f"{self.url}/billing/soap"),
                               etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False))
        ns = svc.ns
        schema = doc.find(f"{{{WSDL}}}types/{{{_XSD}}}schema")
        for el in etree.fromstring(_QUERY_XSD.format(xsd=_XSD, ns=ns)):
            schema.append(el)
        first_pt = doc.find(f"{{{WSDL}}}portType")
        binding = doc.find(f"{{{WSDL}}}binding")
        for op in ("QueryCustomer", "QueryAccount"):
            for suffix, el in (("Request", op), ("Response", f"{op}Response")):
                msg = etree.Element(f"{{{WSDL}}}message", name=f"{op}{suffix}")
                etree.SubElement(msg, f"{{{WSDL}}}part", name="parameters", element=f"tns:{el}")
                first_pt.addprevious(msg)
            o = etree.SubElement(first_pt, f"{{{WSDL}}}operation", name=op)
            etree.SubElement(o, f"{{{WSDL}}}input", message=f"tns:{op}Request")
            etree.SubElement(o, f"{{{WSDL}}}output", message=f"tns:{op}Response")
            b = etree.SubElement(binding, f"{{{WSDL}}}operation", name=op)
            etree.SubElement(b, f"{{{WSDL_SOAP}}}operation", soapAction=f"{ns}#{op}")
            for io in ("input", "output"):
                etree.SubElement(etree.SubElement(b, f"{{{WSDL}}}{io}"), f"{{{WSDL_SOAP}}}body", use="literal")
        return etree.tostring(doc, xml_declaration=True, encoding="UTF-8", pretty_print=True)

    def soap_call(self, body: bytes) -> tuple[int, bytes]:
        """One SOAP request to billing: the operation is the Body's first element (hardened parse)."""
        from lxml import etree

        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
        try:
            root = etree.fromstring(body, parser)
            req = next(el for el in root.iter() if isinstance(el.tag, str)
                       and etree.QName(el).localname in ("PostPayment", "QueryCustomer", "QueryAccount"))
        except (etree.XMLSyntaxError, StopIteration):
            return 500, _soap_fault("soap:Client", "not a billing request (PostPayment, QueryCustomer, QueryAccount)")
        fields = {etree.QName(el).localname: (el.text or "") for el in req if isinstance(el.tag, str)}
        op = etree.QName(req).localname
        if op == "QueryCustomer":
            return self.soap_query_customer(fields.get("cust_id", ""))
        if op == "QueryAccount":
            return self.soap_query_account(fields.get("acct_no", ""))
        return self.soap_post_payment(fields)

    def soap_query_customer(self, cust_id: str) -> tuple[int, bytes]:
        p = self.customers.get(cust_id)
        if p is None:
            return 500, _soap_fault("soap:Client.NotFound", f"no billing customer {cust_id}")
        r = billing_record(p)
        parts = [_x("cust_id", r["cust_id"]), _x("cust_name", r["cust_name"]), _x("cert_no", r["cert_no"]),
                 _x("prov", r["prov"]), _x("city", r["city"])]
        parts += [f"<tel>{_x('type', t['type'])}{_x('no', t['no'])}</tel>" for t in r["tel"]]
        parts += [f"<addr>{_x('type', a['type'])}{_x('text', a['text'])}</addr>" for a in r["addr"]]
        parts += [_x("acct_no", r["acct_no"]), _x("parent_cust_id", r["parent_cust_id"])]
        return 200, self._soap_answer("QueryCustomerResponse", f"<customer>{''.join(parts)}</customer>")

    def soap_query_account(self, acct_no: str) -> tuple[int, bytes]:
        w = self.world
        owner = w.account_customer.get(acct_no)
        group = w.groups.get(acct_no) or {}
        if owner is None and not group:
            return 500, _soap_fault("soap:Client.NotFound", f"no billing account {acct_no}")
        members = "".join(f"<members>{_x('account', a)}{_x('share', str(sh))}</members>" for a, sh in sorted(group.items()))
        inner = f"<account>{_x('account', acct_no)}{_x('cust_id', owner)}{members}</account>"
        return 200, self._soap_answer("QueryAccountResponse", inner)

    def _soap_answer(self, element: str, inner: str) -> bytes:
        ns = f"urn:esbhub:soap:{self.SOAP_SERVICE}"
        return (f'<soap:Envelope xmlns:soap="{_SOAP_ENV}"><soap:Body><{element} xmlns="{ns}">{inner}</{element}>'
                "</soap:Body></soap:Envelope>").encode()

    def soap_post_payment(self, fields: dict[str, str]) -> tuple[int, bytes]:
        """Record one PostPayment call; the memo carries ``golden_id=…;group=…`` from the hub."""
        memo = dict(kv.split("=", 1) for kv in (fields.get("memo") or "").split(";") if "=" in kv)
        posting = {"payment_id": fields.get("payment_id"), "billing_account": fields.get("billing_account"),
                   "amount": fields.get("amount"), "golden_id": memo.get("golden_id") or None,
                   "group_account": memo.get("group") or None, "bank": fields.get("bank")}
        key = f"{posting['payment_id']}/{posting['billing_account']}"
        with self.lock:
            if key in self.postings:
                self.duplicate_posts += 1
            else:
                self.postings[key] = posting
        return 200, self._soap_answer("PostPaymentResponse", f"{_x('messageId', key)}<status>posted</status>")

    def order_step(self, path: str, order: dict[str, Any]) -> dict[str, Any]:
        """Provisioning and billing-account creation of a service order (business outcome, HTTP 200)."""
        oid = str(order.get("order_id"))
        if path == "/provisioning/orders":
            if any((ln.get("bandwidth_mbps") or 0) > 10_000 for ln in order.get("lines") or []):
                return {"status": "failed", "reason": "bandwidth above 10G cannot be provisioned on this access"}
            self.provisioned[oid] = "active"
            return {"status": "provisioned", "provision_id": f"PRV-{oid}"}
        if path == "/provisioning/cancel":
            if self.provisioned.get(oid) == "active":
                self.provisioned[oid] = "cancelled"
            return {"status": "cancelled", "provision_id": f"PRV-{oid}"}
        if not order.get("customer_golden_id"):
            return {"status": "rejected", "reason": "customer is not a mastered key customer"}
        self.accounts[oid] = acct = f"BA-N-{oid}"
        return {"status": "created", "account": acct}

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> SimServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="telecom-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

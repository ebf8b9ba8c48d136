"""Inbound SOAP 1.1: the hub publishes a document/literal SOAP endpoint with a WSDL for upstream
systems that only speak SOAP (e.g. billing pushing customer changes as ``party.v1``).

    GET  /soap/{service}?wsdl   the WSDL (types generated from the canonical payload schemas)
    POST /soap/{service}        one operation per message type, e.g. ``PublishParty``

A request is read with the hardened parser of :mod:`esbhub.adapters.fileformats` (no entity
expansion, no network, DTDs refused, size and depth limits), turned into a payload guided by the
type's JSON Schema (repeated elements → lists, ``xsi:nil`` → null), validated against the
canonical schema, and emitted **durably** before the answer goes out: the response carries the
message id. Bad input → a ``soap:Client`` Fault whose detail names each bad field; the bus
unavailable → a ``soap:Server`` Fault (retry later).

A caller that may retry after a lost answer puts its own id in a ``<MessageId>`` SOAP header
(any namespace): the envelope id is derived from it (and the caller), so the retry is the same
message and the bus deduplicates it.

Callers authenticate like every other ingest caller — an API key with the ``ingest`` scope,
allowed to post the operation's type — given as ``X-API-Key`` / ``Authorization: Bearer`` or,
for SOAP stacks that cannot set headers, as the password of a WS-Security UsernameToken
(PasswordText).

Mounting: ``create_app`` includes ``esbhub.adapters.api:router``; that module (or the app)
adds ``app.include_router(esbhub.adapters.soap_server.router)`` — the module-level ``router``
serves one service per canonical type (``/soap/party.v1`` with ``PublishParty`` …) and
publishes through the app's ``app.state.hub.batcher``. Embedding applications and tests build
their own with :func:`create_router` (services, an ``emit`` and an ``authenticate``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field

from esbhub.adapters.fileformats import FileFormatError, local_name, parse_xml
from esbhub.bus.envelope import Envelope
from esbhub.errors import ErrorDetail, EsbhubError, InvalidMessage
from esbhub.logging import get_logger

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
WSDL = "http://schemas.xmlsoap.org/wsdl/"
WSDL_SOAP = "http://schemas.xmlsoap.org/wsdl/soap/"
XSD = "http://www.w3.org/2001/XMLSchema"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
PW_TEXT = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText"
ERR_NS = "urn:esbhub:errors"

log = get_logger("esbhub.adapters", adapter="soap_server")


class SoapOperation(BaseModel):
    """One operation: the request element is the payload of one message type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Operation (and request element) name.")
    type: str = Field(description="Message type the request becomes, e.g. 'party.v1'.")


class SoapServiceConfig(BaseModel):
    """A SOAP service the hub publishes at ``/soap/{name}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", description="Service name (URL path segment).")
    namespace: str | None = Field(default=None, description="Target namespace (default 'urn:esbhub:soap:<name>').")
    operations: list[SoapOperation] = Field(min_length=1, description="Operations offered.")
    max_bytes: int = Field(default=1_000_000, ge=1024, description="Largest request accepted, bytes.")
    max_depth: int = Field(default=32, ge=4, le=256, description="Deepest element nesting accepted.")

    @property
    def ns(self) -> str:
        return self.namespace or f"urn:esbhub:soap:{self.name}"


def operation_name(type_name: str) -> str:
    base = type_name.rsplit(".", 1)[0]
    return "Publish" + "".join(p.capitalize() for p in re.split(r"[._\-]", base))


def default_services() -> list[SoapServiceConfig]:
    """One service per canonical type: ``/soap/party.v1`` with operation ``PublishParty`` …"""
    from esbhub.schemas import SCHEMAS

    return [
        SoapServiceConfig(name=t, operations=[SoapOperation(name=operation_name(t), type=t)]) for t in sorted(SCHEMAS)
    ]


# ---------------------------------------------------------------------------------------------
# JSON Schema ↔ XML


def _schema(type_name: str) -> dict[str, Any]:
    from esbhub.schemas import get_schema

    return get_schema(type_name).model_json_schema()


def _split(node: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """(the one non-null variant or None if ambiguous, nullable)."""
    if "anyOf" in node:
        alts = [a for a in node["anyOf"] if a.get("type") != "null"]
        nullable = len(alts) != len(node["anyOf"])
        return (alts[0] if len(alts) == 1 else None), nullable
    return node, False


def _ref(node: dict[str, Any]) -> str | None:
    r = node.get("$ref")
    return r.rsplit("/", 1)[-1] if r else None


_SCALAR = {"integer": "xsd:long", "number": "xsd:decimal", "boolean": "xsd:boolean"}


def _xsd_element(parent: etree._Element, name: str, node: dict[str, Any], required: bool) -> None:
    inner, nullable = _split(node)
    attrs = {"name": name, "minOccurs": "1" if required and not nullable else "0"}
    if nullable:
        attrs["nillable"] = "true"
    if inner is not None and inner.get("type") == "array":
        attrs["minOccurs"] = "0"
        attrs["maxOccurs"] = "unbounded"
        inner, _ = _split(inner.get("items", {}))
    if inner is None:
        attrs["type"] = "xsd:string"
    elif _ref(inner):
        attrs["type"] = f"tns:{_ref(inner)}"
    elif inner.get("type") == "object":
        attrs["type"] = "tns:Map"
    else:
        attrs["type"] = _SCALAR.get(inner.get("type", ""), "xsd:string")
    etree.SubElement(parent, f"{{{XSD}}}element", attrs)


def _xsd_complex(schema_el: etree._Element, name: str, node: dict[str, Any]) -> None:
    ct = etree.SubElement(schema_el, f"{{{XSD}}}complexType", name=name)
    seq = etree.SubElement(ct, f"{{{XSD}}}sequence")
    req = set(node.get("required", []))
    for pname, pnode in node.get("properties", {}).items():
        _xsd_element(seq, pname, pnode, pname in req)


def render_wsdl(service: SoapServiceConfig, location: str) -> bytes:
    """The WSDL 1.1 (document/literal wrapped) of ``service`` with its endpoint at ``location``."""
    ns = service.ns
    nsmap = {None: WSDL, "soap": WSDL_SOAP, "xsd": XSD, "tns": ns}
    svc = re.sub(r"[^A-Za-z0-9_]", "_", service.name)
    d = etree.Element(f"{{{WSDL}}}definitions", nsmap=nsmap, name=svc, targetNamespace=ns)
    types = etree.SubElement(d, f"{{{WSDL}}}types")
    sch = etree.SubElement(types, f"{{{XSD}}}schema", targetNamespace=ns, elementFormDefault="qualified")
    done: set[str] = set()
    # a free-form object: <entry><key/><value/></entry>*
    m = etree.SubElement(sch, f"{{{XSD}}}complexType", name="Map")
    e = etree.SubElement(etree.SubElement(m, f"{{{XSD}}}sequence"), f"{{{XSD}}}element", name="entry", minOccurs="0",
                         maxOccurs="unbounded")
    es = etree.SubElement(etree.SubElement(e, f"{{{XSD}}}complexType"), f"{{{XSD}}}sequence")
    etree.SubElement(es, f"{{{XSD}}}element", name="key", type="xsd:string")
    etree.SubElement(es, f"{{{XSD}}}element", name="value", type="xsd:string", minOccurs="0", nillable="true")
    for op in service.operations:
        js = _schema(op.type)
        for dname, dnode in js.get("$defs", {}).items():
            if dname not in done:
                _xsd_complex(sch, dname, dnode)
                done.add(dname)
        root_name = js.get("title", op.name + "Payload")
        if root_name not in done:
            _xsd_complex(sch, root_name, js)
            done.add(root_name)
        etree.SubElement(sch, f"{{{XSD}}}element", name=op.name, type=f"tns:{root_name}")
        resp = etree.SubElement(sch, f"{{{XSD}}}element", name=f"{op.name}Response")
        rs = etree.SubElement(etree.SubElement(resp, f"{{{XSD}}}complexType"), f"{{{XSD}}}sequence")
        etree.SubElement(rs, f"{{{XSD}}}element", name="messageId", type="xsd:string")
        etree.SubElement(rs, f"{{{XSD}}}element", name="status", type="xsd:string")
    for op in service.operations:
        for suffix, el in (("Request", op.name), ("Response", f"{op.name}Response")):
            msg = etree.SubElement(d, f"{{{WSDL}}}message", name=f"{op.name}{suffix}")
            etree.SubElement(msg, f"{{{WSDL}}}part", name="parameters", element=f"tns:{el}")
    pt = etree.SubElement(d, f"{{{WSDL}}}portType", name=f"{svc}PortType")
    for op in service.operations:
        o = etree.SubElement(pt, f"{{{WSDL}}}operation", name=op.name)
        etree.SubElement(o, f"{{{WSDL}}}input", message=f"tns:{op.name}Request")
        etree.SubElement(o, f"{{{WSDL}}}output", message=f"tns:{op.name}Response")
    b = etree.SubElement(d, f"{{{WSDL}}}binding", name=f"{svc}Binding", type=f"tns:{svc}PortType")
    etree.SubElement(b, f"{{{WSDL_SOAP}}}binding", style="document", transport="http://schemas.xmlsoap.org/soap/http")
    for op in service.operations:
        o = etree.SubElement(b, f"{{{WSDL}}}operation", name=op.name)
        etree.SubElement(o, f"{{{WSDL_SOAP}}}operation", soapAction=f"{ns}#{op.name}")
        for io in ("input", "output"):
            etree.SubElement(etree.SubElement(o, f"{{{WSDL}}}{io}"), f"{{{WSDL_SOAP}}}body", use="literal")
    s = etree.SubElement(d, f"{{{WSDL}}}service", name=svc)
    p = etree.SubElement(s, f"{{{WSDL}}}port", name=f"{svc}Port", binding=f"tns:{svc}Binding")
    etree.SubElement(p, f"{{{WSDL_SOAP}}}address", location=location)
    return etree.tostring(d, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _is_nil(el: etree._Element) -> bool:
    return el.get(f"{{{XSI}}}nil") in ("true", "1")


def xml_to_payload(el: etree._Element, node: dict[str, Any], defs: dict[str, Any]) -> Any:
    """The payload of element ``el`` read as the JSON Schema ``node`` says (lists, objects, maps)."""
    if _is_nil(el):
        return None
    inner, _ = _split(node)
    if inner is not None and _ref(inner):
        inner = defs.get(_ref(inner) or "", {})
    kids = [c for c in el if isinstance(c.tag, str)]
    if inner is not None and inner.get("type") == "object" and "properties" in inner:
        props = inner["properties"]
        out: dict[str, Any] = {}
        for c in kids:
            k = local_name(c.tag)
            pnode = props.get(k, {})
            pin, _ = _split(pnode)
            if pin is not None and pin.get("type") == "array":
                out.setdefault(k, []).append(xml_to_payload(c, pin.get("items", {}), defs))
            else:
                out[k] = xml_to_payload(c, pnode, defs)
        return out
    if inner is not None and inner.get("type") == "object":  # free-form: Map entries
        m: dict[str, Any] = {}
        for entry in kids:
            key = entry.find("{*}key")
            val = entry.find("{*}value")
            if key is not None:
                m[(key.text or "").strip()] = None if val is None or _is_nil(val) else (val.text or "")
        return m
    if kids:  # structure where a value was expected: hand it on, validation names the field
        return {local_name(c.tag): xml_to_payload(c, {}, defs) for c in kids}
    return (el.text or "").strip()


# ---------------------------------------------------------------------------------------------
# envelopes and faults


def soap_envelope(body_child: etree._Element) -> bytes:
    env = etree.Element(f"{{{SOAP11}}}Envelope", nsmap={"soap": SOAP11})
    etree.SubElement(env, f"{{{SOAP11}}}Body").append(body_child)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def fault_response(code: str, message: str, details: list[ErrorDetail] | None = None, status: int = 500) -> Response:
    f = etree.Element(f"{{{SOAP11}}}Fault", nsmap={"soap": SOAP11})
    etree.SubElement(f, "faultcode").text = f"soap:{code}"
    etree.SubElement(f, "faultstring").text = message
    if details:
        det = etree.SubElement(f, "detail")
        errs = etree.SubElement(det, f"{{{ERR_NS}}}errors", nsmap={"esb": ERR_NS})
        for d in details:
            e = etree.SubElement(errs, f"{{{ERR_NS}}}error")
            etree.SubElement(e, f"{{{ERR_NS}}}field").text = d.loc
            etree.SubElement(e, f"{{{ERR_NS}}}message").text = d.msg
    return Response(soap_envelope(f), status_code=status, media_type="text/xml; charset=utf-8")


def _ws_username_token(root: etree._Element) -> tuple[str, str] | None:
    tok = root.find(f"{{{SOAP11}}}Header/{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
    if tok is None:
        return None
    user = tok.findtext(f"{{{WSSE}}}Username") or ""
    pw = tok.find(f"{{{WSSE}}}Password")
    if pw is None or (pw.get("Type") not in (None, PW_TEXT)):
        raise InvalidMessage("WS-Security: only a PasswordText UsernameToken carrying an API key is accepted")
    return user, pw.text or ""


_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _upstream_message_id(root: etree._Element) -> str | None:
    """``<soap:Header><MessageId>…</MessageId>`` (any namespace): the caller's idempotency key."""
    header = root.find(f"{{{SOAP11}}}Header")
    el = header.find("{*}MessageId") if header is not None else None
    if el is None:
        return None
    value = (el.text or "").strip()
    if not _ID_RE.match(value):
        raise InvalidMessage("MessageId header: 1-128 characters of letters, digits and . _ : -")
    return value


# ---------------------------------------------------------------------------------------------
# the router

Emit1 = Callable[[Envelope], Awaitable[None] | None]
Authenticate = Callable[[Request, str | None], Any]


async def _app_emit(request: Request, env: Envelope) -> None:
    await request.app.state.hub.batcher.publish(env)


def _app_authenticate(request: Request, key: str | None) -> Any:
    """The caller by API key (header, or the UsernameToken password)."""
    from esbhub.api.errors import ApiError
    from esbhub.auth import authenticate

    if key is not None and not request.headers.get("x-api-key") and not request.headers.get("authorization"):
        principal = request.app.state.keys.verify(key)
        if principal is None:
            raise ApiError(401, "unauthorized", "the API key is unknown or revoked")
        return principal
    return authenticate(request)


def create_router(
    services: list[SoapServiceConfig] | None = None,
    *,
    emit: Emit1 | None = None,
    authenticate: Authenticate | None = _app_authenticate,
    prefix: str = "/soap",
) -> APIRouter:
    """An APIRouter serving ``services`` (default: one per canonical type).

    ``emit(env)`` must return only once ``env`` is durably on the bus (may be async); default:
    the API app's publish batcher. ``authenticate(request, usernametoken_password)`` returns a
    Principal or raises; ``None`` disables authentication (tests, trusted networks only).
    """
    by_name = {s.name: s for s in (services if services is not None else default_services())}
    router = APIRouter(prefix=prefix, tags=["soap"])

    @router.get("/{service}", summary="WSDL of a SOAP service", response_class=Response)
    async def wsdl(service: str, request: Request) -> Response:
        svc = by_name.get(service)
        if svc is None:
            return Response(f"unknown SOAP service '{service}'", status_code=404, media_type="text/plain")
        location = str(request.url.replace(query=""))
        return Response(render_wsdl(svc, location), media_type="text/xml; charset=utf-8")

    @router.post("/{service}", summary="Call a SOAP operation", response_class=Response)
    async def call(service: str, request: Request) -> Response:
        svc = by_name.get(service)
        if svc is None:
            return fault_response("Client", f"unknown SOAP service '{service}'", status=404)
        length = int(request.headers.get("content-length") or 0)
        if length > svc.max_bytes:
            return fault_response("Client", f"request of {length} bytes exceeds the limit of {svc.max_bytes}", status=413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > svc.max_bytes:
                return fault_response("Client", f"request exceeds the limit of {svc.max_bytes} bytes", status=413)
        try:
            root = parse_xml(body, max_bytes=svc.max_bytes, max_depth=svc.max_depth)
            if root.tag != f"{{{SOAP11}}}Envelope":
                raise InvalidMessage(f"not a SOAP 1.1 Envelope (root element {local_name(root.tag)!r})")
            body_el = root.find(f"{{{SOAP11}}}Body")
            req = next((c for c in (body_el if body_el is not None else []) if isinstance(c.tag, str)), None)
            if req is None:
                raise InvalidMessage("the SOAP Body holds no request element")
            op = next((o for o in svc.operations if o.name == local_name(req.tag)), None)
            if op is None:
                known = ", ".join(o.name for o in svc.operations)
                raise InvalidMessage(f"unknown operation '{local_name(req.tag)}' (known: {known})")
            token = _ws_username_token(root)
            upstream_id = _upstream_message_id(root)
        except FileFormatError as exc:
            return fault_response("Client", f"malformed request: {exc}")
        except InvalidMessage as exc:
            return fault_response("Client", str(exc))
        principal = None
        if authenticate is not None:
            try:
                principal = authenticate(request, token[1] if token else None)
            except EsbhubError as exc:
                return fault_response("Client", str(exc), status=401)
            except Exception as exc:  # noqa: BLE001 - ApiError / refusals of the auth layer become a SOAP fault
                status = int(getattr(exc, "status", getattr(exc, "status_code", 401)) or 401)
                return fault_response("Client", getattr(exc, "message", None) or str(exc) or "unauthorized", status=status)
            if not principal.has_scope("ingest") or not principal.may_post(op.type):
                return fault_response("Client", f"this API key may not post '{op.type}'", status=403)
        from esbhub.schemas import validate_payload

        js = _schema(op.type)
        try:
            payload = validate_payload(op.type, xml_to_payload(req, js, js.get("$defs", {})))
        except InvalidMessage as exc:
            details = [ErrorDetail(loc=d.loc.removeprefix("payload."), msg=d.msg, type=d.type) for d in exc.details]
            fields = ", ".join(f"{d.loc}: {d.msg}" for d in details)
            return fault_response("Client", f"invalid {op.type}: {fields}" if fields else str(exc), details)
        source = getattr(principal, "name", None) or f"soap:{svc.name}"
        headers = {"soap_service": svc.name, "soap_operation": op.name}
        mid = None
        if upstream_id:  # the caller's own id: a retry after a lost answer gets the same envelope id (deduped)
            from esbhub.adapters.base import stable_id

            mid = stable_id(f"soap:{source}:{op.type}:{upstream_id}")
            headers["upstream_message_id"] = upstream_id
        env = Envelope.create(op.type, payload, source=source, id=mid, headers=headers)
        try:
            result = (emit or (lambda e: _app_emit(request, e)))(env)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # noqa: BLE001 - the caller learns to retry; nothing was accepted
            log.warning("soap_emit_failed", service=svc.name, operation=op.name, message_id=env.id,
                        error=type(exc).__name__)
            return fault_response("Server", f"the hub could not accept the message now, retry later ({type(exc).__name__})")
        log.info("soap_message_accepted", service=svc.name, operation=op.name, message_id=env.id, type=op.type)
        resp = etree.Element(f"{{{svc.ns}}}{op.name}Response", nsmap={"tns": svc.ns})
        etree.SubElement(resp, f"{{{svc.ns}}}messageId").text = env.id
        etree.SubElement(resp, f"{{{svc.ns}}}status").text = "accepted"
        return Response(soap_envelope(resp), media_type="text/xml; charset=utf-8")

    return router


router = create_router()
"""One SOAP service per canonical type, publishing through the API app's batcher."""

__all__ = [
    "SoapOperation",
    "SoapServiceConfig",
    "create_router",
    "default_services",
    "fault_response",
    "operation_name",
    "render_wsdl",
    "router",
    "xml_to_payload",
]

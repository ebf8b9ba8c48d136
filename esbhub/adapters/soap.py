"""Outbound SOAP (zeep): call one operation of a WSDL per envelope.

* The request is built from the envelope by a JMESPath expression (``request``, default
  ``payload``) and/or a ``fields`` mapping (request field → JMESPath), evaluated against
  ``{id, type, source, correlation_id, headers, payload}`` — data, never code.
* WS-Security UsernameToken, PasswordText or PasswordDigest (``wsse.digest``), password by
  reference. TLS: verification on by default, a CA bundle, a client certificate + key by path.
* zeep runs hardened: no DTDs, no entities, no external references, no huge trees.
* Errors: a SOAP Fault is mapped by its fault code (``Client``/``Sender`` → PermanentError,
  ``Server``/``Receiver`` → TransientError by default; ``fault_map`` overrides, matching the
  full code such as ``Client.Authentication`` before its first segment); HTTP 5xx / 408 / 429,
  timeouts and connection errors → TransientError; other 4xx → PermanentError; a request the
  WSDL does not accept (unknown or badly typed field) → InvalidMessage.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from esbhub.adapters.base import AdapterConfig, AdapterSpec, Sink
from esbhub.bus.envelope import Envelope
from esbhub.errors import EsbhubError, InvalidMessage, PermanentError, TransientError
from esbhub.secrets import SecretRef, resolve

ErrorKind = Literal["transient", "permanent", "invalid"]
_KIND: dict[str, type[EsbhubError]] = {"transient": TransientError, "permanent": PermanentError, "invalid": InvalidMessage}


class WsseUsernameToken(BaseModel):
    """WS-Security UsernameToken put in the SOAP header."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str = Field(description="User name.")
    password: SecretRef = Field(description="Password, by reference.")
    digest: bool = Field(default=False, description="PasswordDigest (nonce + created + SHA-1) instead of PasswordText.")


class SoapSinkConfig(AdapterConfig):
    """Calls one SOAP operation per envelope."""

    wsdl: str = Field(description="WSDL location: http(s) URL or file path.")
    operation: str = Field(description="Operation name, e.g. 'UpdateCustomer'.")
    service: str | None = Field(default=None, description="Service name in the WSDL (default: the first).")
    port: str | None = Field(default=None, description="Port name in the WSDL (default: the first of the service).")
    address: str | None = Field(default=None, description="Endpoint URL overriding the WSDL's soap:address.")
    request: str | None = Field(
        default="payload",
        description="JMESPath over {id, type, source, correlation_id, headers, payload} giving the request "
        "object (its keys are the operation's parameters); null to use only 'fields'.",
    )
    fields: dict[str, str] = Field(
        default_factory=dict, description="Request parameter → JMESPath (same scope); overrides keys of 'request'."
    )
    wsse: WsseUsernameToken | None = Field(default=None, description="WS-Security UsernameToken.")
    verify_tls: bool = Field(default=True, description="Verify the server certificate.")
    ca_file: str | None = Field(default=None, description="CA bundle (PEM) to verify the server with.")
    client_cert: str | None = Field(default=None, description="Client certificate (PEM path) for mutual TLS.")
    client_key: str | None = Field(default=None, description="Client private key (PEM path, unencrypted) for mutual TLS.")
    http_headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers (no secrets here).")
    fault_map: dict[str, ErrorKind] = Field(
        default_factory=lambda: {"Client": "permanent", "Sender": "permanent", "Server": "transient",
                                 "Receiver": "transient"},
        description="SOAP fault code (local part, e.g. 'Server' or 'Client.Authentication') → what to do next; "
        "unlisted codes are permanent.",
    )
    result: bool = Field(default=True, description="Return the (serialized) response as the send result.")

    @model_validator(mode="after")
    def _request(self) -> SoapSinkConfig:
        if self.request is None and not self.fields:
            raise ValueError("give 'request' and/or 'fields' to build the request")
        import jmespath

        for loc, expr in ([("request", self.request)] if self.request else []) + list(self.fields.items()):
            try:
                jmespath.compile(expr)
            except jmespath.exceptions.JMESPathError as exc:
                raise ValueError(f"{loc}: invalid JMESPath {expr!r}: {exc}") from None
        return self


def _session_class() -> type:
    import requests

    class Session(requests.Session):
        """TLS settings of the adapter win over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (requests lets the
        environment override ``session.verify``, which would silently replace a configured CA bundle)."""

        def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
            out = super().merge_environment_settings(url, proxies, stream, verify, cert)
            out["verify"] = self.verify if verify is None else verify
            return out

    return Session


def _Session() -> Any:  # noqa: N802 - reads like the class it makes
    return _session_class()()


def fault_kind(code: str | None, fault_map: dict[str, ErrorKind]) -> type[EsbhubError]:
    """Error class for a SOAP fault code ('soap:Server', '{ns}Client.Auth', 'env:Receiver' …)."""
    local = (code or "").rsplit("}", 1)[-1].rsplit(":", 1)[-1]
    kind = fault_map.get(local) or fault_map.get(local.split(".", 1)[0])
    return _KIND[kind] if kind else PermanentError


class SoapSink(Sink[SoapSinkConfig]):
    adapter_name = "soap"

    def __init__(self, config: SoapSinkConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._lock = threading.Lock()
        self._tl = threading.local()
        self._client: Any = None
        self._svc: Any = None
        import jmespath

        self._request = jmespath.compile(config.request) if config.request else None
        self._fields = {k: jmespath.compile(v) for k, v in config.fields.items()}

    def _zeep(self) -> Any:
        with self._lock:
            if self._svc is None:
                import zeep
                from zeep.transports import Transport

                c = self.config
                session = _Session()
                session.hooks["response"].append(self._seen_status)
                session.verify = (c.ca_file or True) if c.verify_tls else False
                if c.client_cert:
                    session.cert = (c.client_cert, c.client_key) if c.client_key else c.client_cert
                session.headers.update(c.http_headers)
                wsse = None
                if c.wsse is not None:
                    from zeep.wsse.username import UsernameToken

                    pw = resolve(c.wsse.password, loc="wsse.password").get_secret_value()
                    wsse = UsernameToken(c.wsse.username, pw, use_digest=c.wsse.digest)
                settings = zeep.Settings(
                    strict=True, xml_huge_tree=False, forbid_dtd=True, forbid_entities=True, forbid_external=True
                )
                transport = Transport(session=session, timeout=c.timeout, operation_timeout=c.timeout)
                client = zeep.Client(c.wsdl, transport=transport, wsse=wsse, settings=settings,
                                     service_name=c.service, port_name=c.port)
                if c.address:  # same binding, another endpoint
                    svc = client.create_service(str(client.service._binding.name), c.address)  # noqa: SLF001
                else:
                    svc = client.service
                self._client, self._svc = client, svc
            return self._svc

    def _seen_status(self, response: Any, *args: Any, **kw: Any) -> None:
        self._tl.status = response.status_code

    def build_request(self, envelope: Envelope) -> dict[str, Any]:
        scope = {
            "id": envelope.id, "type": envelope.type, "source": envelope.source,
            "correlation_id": envelope.correlation_id, "headers": dict(envelope.headers), "payload": envelope.payload,
        }
        req: dict[str, Any] = {}
        if self._request is not None:
            base = self._request.search(scope)
            if base is not None and not isinstance(base, dict):
                raise InvalidMessage(f"soap: 'request' expression gave {type(base).__name__}, not an object")
            req.update(base or {})
        for k, expr in self._fields.items():
            req[k] = expr.search(scope)
        return req

    def deliver(self, envelope: Envelope) -> dict[str, Any] | None:
        import requests
        import zeep.exceptions as zx

        req = self.build_request(envelope)
        c = self.config
        t0 = time.perf_counter()
        try:
            svc = self._zeep()
            op = getattr(svc, c.operation, None)
            if op is None:
                raise PermanentError(f"soap: the WSDL has no operation '{c.operation}'")
            resp = op(**req)
        except EsbhubError:
            raise
        except zx.Fault as exc:
            status = getattr(self._tl, "status", 0)
            if not exc.code and status != 500:  # no SOAP fault in the body: an HTTP error page
                cls0: type[EsbhubError] = TransientError if status >= 500 or status in (408, 425, 429) else PermanentError
                raise cls0(f"soap {c.operation}: HTTP {status} without a SOAP fault") from exc
            cls = fault_kind(exc.code, c.fault_map)
            raise cls(f"soap {c.operation}: fault {exc.code}: {str(exc.message)[:300]}") from exc
        except zx.TransportError as exc:
            status = int(exc.status_code or 0)
            cls2: type[EsbhubError] = TransientError if status >= 500 or status in (408, 425, 429) else PermanentError
            raise cls2(f"soap {c.operation}: HTTP {status}") from exc
        except requests.exceptions.SSLError as exc:
            raise PermanentError(f"soap {c.operation}: TLS verification failed: {str(exc)[:200]}") from exc
        except (requests.Timeout, requests.ConnectionError) as exc:
            self._reset()
            raise TransientError(f"soap {c.operation}: {type(exc).__name__}") from exc
        except (TypeError, zx.ValidationError) as exc:
            raise InvalidMessage(f"soap {c.operation}: request does not fit the WSDL: {str(exc)[:300]}") from exc
        except (zx.XMLSyntaxError, zx.XMLParseError, zx.DTDForbidden, zx.EntitiesForbidden,
                zx.ExternalReferenceForbidden) as exc:
            raise PermanentError(f"soap {c.operation}: unusable response: {type(exc).__name__}") from exc
        out: dict[str, Any] = {"ms": round((time.perf_counter() - t0) * 1000, 1)}
        if c.result and resp is not None:
            from zeep.helpers import serialize_object

            out["response"] = _jsonable(serialize_object(resp, dict))
        return out

    def _reset(self) -> None:
        with self._lock:
            self._client = self._svc = None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.transport.session.close()
                finally:
                    self._client = self._svc = None

    def health(self) -> Any:
        h = super().health()
        h.detail["wsdl"] = self.config.wsdl
        h.detail["operation"] = self.config.operation
        return h


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, str | int | float | bool):
        return v
    return str(v)


SPEC = AdapterSpec(
    name="soap",
    config_model=SoapSinkConfig,
    sink_cls=SoapSink,
    description="Outbound SOAP (zeep): one WSDL operation per envelope, request built by JMESPath, WS-Security "
    "UsernameToken (text/digest), TLS verify on by default, SOAP Faults mapped by fault code (Client → "
    "permanent, Server → transient, configurable), HTTP 5xx/timeouts transient. Inbound SOAP endpoint with a "
    "WSDL: esbhub.adapters.soap_server.",
)

"""Outbound HTTP (httpx): POST/PUT/PATCH the payload (or the whole envelope) as JSON.

* auth: basic or bearer, credentials only by reference (resolved when the client is built);
* finite timeouts (connect / read / write / pool) from ``timeout``;
* retry inside one send only on timeouts, connection errors, 5xx and 429, honouring
  ``Retry-After`` (seconds or HTTP date) up to ``max_retry_after`` (tenacity);
* 400 / 422 → InvalidMessage (the request is wrong), other 4xx → PermanentError,
  408 / 429 / 5xx after the retries → TransientError (the route's policy takes over);
* ``Idempotency-Key: <envelope id>`` so a receiver can drop a redelivered request.
"""

from __future__ import annotations

import email.utils
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from esbhub.adapters.base import AdapterConfig, AdapterSpec, Sink
from esbhub.bus.envelope import Envelope
from esbhub.errors import InvalidMessage, PermanentError, TransientError
from esbhub.secrets import SecretRef, is_reference, resolve


class BasicAuth(BaseModel):
    """HTTP basic authentication."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["basic"] = Field(description="Basic authentication.")
    username: str = Field(description="User name.")
    password: SecretRef = Field(description="Password, by reference.")


class BearerAuth(BaseModel):
    """``Authorization: Bearer <token>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["bearer"] = Field(description="Bearer token authentication.")
    token: SecretRef = Field(description="Token, by reference.")


class HttpSinkConfig(AdapterConfig):
    """Calls an HTTP endpoint once per envelope."""

    @field_validator("headers")
    @classmethod
    def _no_inline_credentials(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_headers(v)

    url: str = Field(description="Endpoint URL (http:// or https://).", pattern=r"^https?://")
    method: Literal["POST", "PUT", "PATCH"] = Field(default="POST", description="HTTP method.")
    body: Literal["payload", "envelope"] = Field(default="payload", description="What is sent as the JSON body.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra request headers. A value may be a secret reference (resolved late); headers named like "
        "credentials (Authorization, *token*, *key*, *secret*, Cookie) must be references.",
    )
    auth: BasicAuth | BearerAuth | None = Field(default=None, discriminator="type", description="Authentication.")
    idempotency_header: str | None = Field(
        default="Idempotency-Key", description="Header carrying the envelope id; null to leave it out."
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts within one send (timeouts, 5xx, 429).")
    backoff_initial: float = Field(default=0.2, ge=0, le=60, description="First retry delay, seconds (exponential).")
    max_retry_after: float = Field(
        default=30.0, ge=0, le=3600, description="Longest Retry-After honoured inside a send; longer → TransientError."
    )
    verify_tls: bool = Field(default=True, description="Verify the server certificate.")
    ca_file: str | None = Field(default=None, description="CA bundle (PEM) to verify the server with.")
    client_cert: str | None = Field(default=None, description="Client certificate (PEM) for mutual TLS.")
    client_key: str | None = Field(default=None, description="Client private key file (PEM) for mutual TLS.")
    client_key_password: SecretRef | None = Field(
        default=None, description="Password of an encrypted client key, by reference."
    )


_SECRET_HEADER = re.compile(r"authorization|token|key|secret|password|cookie", re.I)


def _check_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if _SECRET_HEADER.search(name) and not is_reference(value):
            raise ValueError(f"header '{name}' carries a credential: give it as '${{env:NAME}}' / '${{file:PATH}}'")
    return headers


class HttpStatusError(Exception):
    def __init__(self, status: int, retry_after: float | None, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class HttpSink(Sink[HttpSinkConfig]):
    adapter_name = "http"

    def __init__(self, config: HttpSinkConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                c = self.config
                auth: Any = None
                headers = {
                    k: resolve(v, loc=f"headers.{k}").get_secret_value() if is_reference(v) else v
                    for k, v in c.headers.items()
                }
                if isinstance(c.auth, BasicAuth):
                    auth = httpx.BasicAuth(c.auth.username, resolve(c.auth.password, loc="auth.password").get_secret_value())
                elif isinstance(c.auth, BearerAuth):
                    headers["Authorization"] = "Bearer " + resolve(c.auth.token, loc="auth.token").get_secret_value()
                verify: Any = c.verify_tls
                if c.verify_tls and c.ca_file:
                    import ssl

                    verify = ssl.create_default_context(cafile=c.ca_file)
                if c.client_cert:
                    import ssl

                    ctx = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
                    pw = (
                        resolve(c.client_key_password, loc="client_key_password").get_secret_value()
                        if c.client_key_password
                        else None
                    )
                    ctx.load_cert_chain(c.client_cert, c.client_key, pw)
                    verify = ctx
                self._client = httpx.Client(
                    timeout=httpx.Timeout(c.timeout, connect=min(c.timeout, 10.0)),
                    auth=auth,
                    headers=headers,
                    verify=verify,
                    follow_redirects=False,
                )
            return self._client

    def _once(self, envelope: Envelope, body: bytes) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if self.config.idempotency_header:
            headers[self.config.idempotency_header] = envelope.id
        if "traceparent" in envelope.headers:
            headers["traceparent"] = envelope.headers["traceparent"]
        try:
            resp = self._http().request(self.config.method, self.config.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientError(f"http {self.config.method}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"http {self.config.method}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code < 300:
            return resp
        text = resp.text[:300].replace("\n", " ")
        ra = parse_retry_after(resp.headers.get("Retry-After"))
        if resp.status_code in (408, 425, 429) or resp.status_code >= 500:
            err = TransientError(f"http {self.config.method}: HTTP {resp.status_code}: {text}")
            err.retry_after = ra  # type: ignore[attr-defined]
            raise err
        if resp.status_code in (400, 422):
            raise InvalidMessage(f"http {self.config.method}: HTTP {resp.status_code}: {text}")
        raise PermanentError(f"http {self.config.method}: HTTP {resp.status_code}: {text}")

    def deliver(self, envelope: Envelope) -> dict[str, Any] | None:
        import tenacity

        body = orjson.dumps(envelope.payload if self.config.body == "payload" else envelope.model_dump(mode="json"))
        cfg = self.config
        exp = tenacity.wait_random_exponential(multiplier=cfg.backoff_initial, max=max(cfg.backoff_initial * 16, 1))

        def wait(rs: tenacity.RetryCallState) -> float:
            exc = rs.outcome.exception() if rs.outcome else None
            ra = getattr(exc, "retry_after", None)
            return float(ra) if ra is not None else exp(rs)

        def retryable(exc: BaseException) -> bool:
            if not isinstance(exc, TransientError):
                return False
            ra = getattr(exc, "retry_after", None)
            return ra is None or ra <= cfg.max_retry_after

        t0 = time.perf_counter()
        resp: httpx.Response = tenacity.Retrying(
            retry=tenacity.retry_if_exception(retryable),
            stop=tenacity.stop_after_attempt(cfg.max_attempts),
            wait=wait,
            reraise=True,
        )(self._once, envelope, body)
        out: dict[str, Any] = {"status": resp.status_code, "ms": round((time.perf_counter() - t0) * 1000, 1)}
        if resp.headers.get("content-type", "").startswith("application/json") and len(resp.content) <= 65536:
            try:
                out["body"] = resp.json()
            except ValueError:
                pass
        return out

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None

    def health(self) -> Any:
        h = super().health()
        h.detail["url"] = self.config.url
        return h


SPEC = AdapterSpec(
    name="http",
    config_model=HttpSinkConfig,
    sink_cls=HttpSink,
    description="Outbound HTTP (httpx): JSON POST/PUT/PATCH with basic/bearer auth by reference, finite "
    "timeouts, retry on timeouts/5xx/429 honouring Retry-After, Idempotency-Key from the envelope id.",
)

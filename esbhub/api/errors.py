"""One JSON shape for every error the HTTP API returns::

    {"error": {"code": "schema_violation", "message": "…",
               "details": [{"loc": "payload.amount", "msg": "…", "type": "…"}]}}

Raise :class:`ApiError` (or an :class:`~esbhub.errors.EsbhubError`) from a handler; the
exception handlers installed by :func:`install` render it.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from esbhub.errors import (
    BrokerUnavailable,
    ConfigError,
    ErrorDetail,
    EsbhubError,
    InvalidMessage,
    TransientError,
)
from esbhub.logging import get_logger

log = get_logger("esbhub.api")


class ApiError(Exception):
    """An HTTP error with the standard body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[ErrorDetail] | list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = [d.as_dict() if isinstance(d, ErrorDetail) else d for d in (details or [])]
        self.headers = headers or {}
        self.extra = extra or {}


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "details": details or []}
    err.update(extra)
    return {"error": err}


def error_response(exc: ApiError) -> Response:
    return Response(
        orjson.dumps(error_body(exc.code, exc.message, exc.details, **exc.extra)),
        status_code=exc.status,
        media_type="application/json",
        headers=exc.headers,
    )


def from_esbhub_error(exc: EsbhubError) -> ApiError:
    details = [d.as_dict() for d in exc.details]
    if isinstance(exc, InvalidMessage):
        unknown = any(d.get("type") == "unknown_type" for d in details)
        if unknown:
            return ApiError(404, "unknown_type", exc.message, details)
        return ApiError(422, "invalid_message", exc.message, details)
    if isinstance(exc, BrokerUnavailable):
        return ApiError(503, "broker_unavailable", exc.message, details, headers={"Retry-After": "5"})
    if isinstance(exc, TransientError):
        return ApiError(503, exc.code, exc.message, details, headers={"Retry-After": "5"})
    if isinstance(exc, ConfigError):
        return ApiError(422, "config_error", exc.message, details)
    return ApiError(409, exc.code, exc.message, details)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


def install(app: FastAPI) -> None:
    """Install the exception handlers that render every error in the one shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(EsbhubError)
    async def _esbhub_error(_req: Request, exc: EsbhubError) -> Response:
        return error_response(from_esbhub_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> Response:
        details = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()))
            details.append({"loc": loc, "msg": e.get("msg", ""), "type": e.get("type", "invalid")})
        return error_response(ApiError(422, "invalid_request", "the request is not valid", details))

    @app.exception_handler(Exception)
    async def _unhandled(_req: Request, exc: Exception) -> Response:
        log.error("request_failed", error_type=type(exc).__name__, error=str(exc)[:500])
        return error_response(ApiError(500, "internal_error", "the hub failed to handle the request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "error" if exc.status_code >= 500 else "client_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(ApiError(exc.status_code, code, message, headers=dict(exc.headers or {})))

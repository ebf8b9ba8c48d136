"""HTTP ingest: ``POST /v1/messages/{type}`` and ``GET /v1/messages/{id}``.

The hot path is lean on purpose: read the body (size-limited while reading), parse it with
orjson, validate it with the type's pydantic model, publish through the batcher (the
broker groups concurrent publishes into one durable commit), answer ``202 {"id": …}``.
Every bad input gets a precise 4xx naming the field and the reason, and nothing is
published for it.
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from esbhub.api.errors import ApiError
from esbhub.auth import Principal, authenticate, require
from esbhub.bus.envelope import TRACEPARENT_RE, Envelope
from esbhub.errors import ErrorDetail, InvalidMessage
from esbhub.schemas import SCHEMAS, suggest, validate_payload

router = APIRouter(tags=["messages"])

_ERR = {"model": dict, "description": "Error: {'error': {'code', 'message', 'details': [{'loc','msg','type'}]}}"}
JSON = "application/json"
MAX_CORRELATION_ID = 128  # the width of bus_messages.correlation_id


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON, headers=headers)


def check_content_type(request: Request) -> None:
    ct = request.headers.get("content-type")
    if ct is None:
        raise ApiError(
            415,
            "unsupported_media_type",
            "missing Content-Type; send 'application/json'",
            [ErrorDetail(loc="header.content-type", msg="missing; expected 'application/json'", type="missing")],
        )
    mt, _, params = ct.partition(";")
    mt = mt.strip().lower()
    if mt != JSON and not (mt.startswith("application/") and mt.endswith("+json")):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type '{mt}' is not accepted; send 'application/json'",
            [ErrorDetail(loc="header.content-type", msg=f"'{mt}' is not JSON", type="unsupported_media_type")],
        )
    for p in params.split(";"):
        k, _, v = p.partition("=")
        if k.strip().lower() == "charset" and v.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"charset '{v.strip()}' is not accepted; JSON bodies must be UTF-8",
                [ErrorDetail(loc="header.content-type", msg="charset must be utf-8", type="unsupported_charset")],
            )


def parse_json(body: bytes) -> Any:
    """orjson parse with a precise 400: invalid UTF-8 (byte offset) or malformed JSON (line/column)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise ApiError(
                400,
                "invalid_utf8",
                f"the body is not valid UTF-8 (byte {uexc.start})",
                [ErrorDetail(loc="body", msg=f"invalid UTF-8 at byte offset {uexc.start}: {uexc.reason}", type="invalid_utf8")],
            ) from None
        if not body.strip():
            raise ApiError(
                400, "malformed_json", "the body is empty; send a JSON object",
                [ErrorDetail(loc="body", msg="empty body", type="json_invalid")],
            ) from None
        raise ApiError(
            400,
            "malformed_json",
            f"the body is not valid JSON: {exc}",
            [ErrorDetail(loc="body", msg=str(exc), type="json_invalid")],
        ) from None


def known_type(type_name: str) -> None:
    if type_name not in SCHEMAS:
        hint = suggest(type_name, SCHEMAS)
        raise ApiError(
            404,
            "unknown_type",
            f"unknown message type '{type_name}'" + (f"; {hint}" if hint else ""),
            [
                ErrorDetail(
                    loc="path.type",
                    msg=f"unknown message type; known: {', '.join(sorted(SCHEMAS))}",
                    type="unknown_type",
                    hint=hint,
                )
            ],
        )


def sync_wait(request: Request, mode: str | None, timeout: float | None, default: float) -> float | None:
    """Seconds to wait for a reply, or None for the asynchronous (202) mode."""
    wait: float | None = None
    if mode is not None:
        if mode not in ("sync", "async"):
            raise ApiError(
                400, "bad_request", "mode must be 'sync' or 'async'",
                [ErrorDetail(loc="query.mode", msg=f"'{mode}' is not 'sync' or 'async'", type="enum")],
            )
        if mode == "sync":
            wait = timeout if timeout is not None else default
    else:
        prefer = request.headers.get("prefer")
        if prefer:
            for part in prefer.split(","):
                k, _, v = part.strip().partition("=")
                if k.strip().lower() == "wait":
                    try:
                        wait = float(v.strip())
                    except ValueError:
                        raise ApiError(
                            400, "bad_request", "Prefer: wait=<seconds> needs a number",
                            [ErrorDetail(loc="header.prefer", msg=f"'{v}' is not a number", type="float_parsing")],
                        ) from None
    if wait is not None and (not math.isfinite(wait) or wait <= 0 or wait > 300):
        raise ApiError(
            400, "bad_request", "the sync timeout must be between 0 and 300 seconds",
            [ErrorDetail(loc="query.timeout", msg="must be > 0 and ≤ 300", type="range")],
        )
    return wait


def reply_body(request_id: str, reply: Envelope) -> dict[str, Any]:
    return {
        "id": request_id,
        "reply": {
            "id": reply.id,
            "type": reply.type,
            "source": reply.source,
            "correlation_id": reply.correlation_id,
            "payload": reply.payload,
        },
    }


def _query_float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"'{name}' must be a number of seconds",
                       [ErrorDetail(loc=f"query.{name}", msg=f"'{raw}' is not a number", type="float_parsing")]) from None


async def post_message(request: Request) -> Response:
    """``POST /v1/messages/{type}`` — the hot path.

    A plain Starlette endpoint, not a FastAPI-decorated one: FastAPI's per-request
    dependency and parameter solving cost more than parsing, validating and publishing
    together. Its OpenAPI operation is written out in :data:`OPENAPI_OPERATION`.
    """
    principal = authenticate(request)
    if not principal.has_scope("ingest"):
        raise ApiError(403, "forbidden", "this API key lacks the 'ingest' scope")
    type_name: str = request.path_params["type"]
    hub = request.app.state.hub
    known_type(type_name)
    if not principal.may_post(type_name):
        raise ApiError(
            403,
            "type_not_allowed",
            f"this API key may not post '{type_name}'",
            [ErrorDetail(loc="path.type", msg=f"allowed types: {', '.join(principal.types)}", type="forbidden")],
        )
    check_content_type(request)
    wait = None
    if request.scope["query_string"] or "prefer" in request.headers:
        wait = sync_wait(request, request.query_params.get("mode"), _query_float(request, "timeout"),
                         hub.settings.sync_timeout)
    body = await request.body()  # size limit enforced while reading (BodyLimitMiddleware)
    data = parse_json(body)
    try:
        payload = validate_payload(type_name, data)
    except InvalidMessage as exc:
        raise ApiError(422, "schema_violation", exc.message, exc.details) from None

    h = request.headers
    tp = h.get("traceparent")
    if not (tp and TRACEPARENT_RE.match(tp)):
        r = os.urandom(24).hex()  # one syscall for trace id + span id
        tp = f"00-{r[:32]}-{r[32:]}-01"
    headers = {"traceparent": tp}
    corr = h.get("x-correlation-id") or None
    if corr is not None and (len(corr) > MAX_CORRELATION_ID or not corr.isprintable()):
        raise ApiError(400, "bad_request", f"X-Correlation-Id must be at most {MAX_CORRELATION_ID} printable characters",
                       [ErrorDetail(loc="header.x-correlation-id", msg="too long or not printable", type="string_too_long")])
    env = Envelope.create(type_name, payload, source=principal.name, correlation_id=corr, headers=headers)
    location = {"Location": f"/v1/messages/{env.id}"}
    if wait is None:
        await hub.batcher.publish(env)  # BrokerUnavailable → 503 (errors.install)
        return Response(b'{"id":"' + env.id.encode() + b'"}', status_code=202, media_type=JSON, headers=location)

    loop = asyncio.get_running_loop()
    requester = await loop.run_in_executor(hub.sync_pool, hub.requester)
    try:
        # its own pool: sync waits may last minutes and must not starve the default executor
        reply = await loop.run_in_executor(hub.sync_pool, requester.request, env, wait)
    except TimeoutError:
        hub.record_accepted_quietly([env])
        raise ApiError(
            504, "reply_timeout", f"no reply within {wait:g} s; the message was accepted, look it up by id",
            headers=location, extra={"id": env.id},
        ) from None
    hub.record_accepted_quietly([env])
    return _json(reply_body(env.id, reply), 200, location)


def _err_ref(desc: str) -> dict[str, Any]:
    return {"description": desc, "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


OPENAPI_OPERATION: dict[str, Any] = {
    "tags": ["messages"],
    "summary": "Post a message",
    "operationId": "post_message",
    "description": "Validate the body against the schema of `type`, store it durably, answer `202 {id}`. "
    "Sync mode (`?mode=sync&timeout=5` or `Prefer: wait=5`) waits for the reply: `200` with it, "
    "`504` with the id when none came in time. `503` + `Retry-After` when the message could not be "
    "stored durably — never `202` for a message not yet safe. Needs an API key with the 'ingest' "
    "scope that may post `type`.",
    "security": [{"bearer": []}, {"apiKey": []}],
    "parameters": [
        {"name": "type", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "Message type with version, e.g. payment.v1 (see /v1/schemas)."},
        {"name": "mode", "in": "query", "required": False, "schema": {"type": "string", "enum": ["async", "sync"]}},
        {"name": "timeout", "in": "query", "required": False,
         "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
         "description": "Seconds to wait for the reply in sync mode (default settings.sync_timeout)."},
        {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "RFC 7240 'wait=<seconds>' selects sync mode."},
        {"name": "X-Correlation-Id", "in": "header", "required": False, "schema": {"type": "string"}},
        {"name": "traceparent", "in": "header", "required": False, "schema": {"type": "string"}},
    ],
    "requestBody": {
        "required": True,
        "description": "The payload, shaped by the schema of `type` (GET /v1/schemas/{type}).",
        "content": {JSON: {"schema": {"type": "object"}}},
    },
    "responses": {
        "202": {"description": "Accepted and stored durably",
                "content": {JSON: {"schema": {"type": "object", "properties": {"id": {"type": "string"}}}}}},
        "200": {"description": "Sync mode: the reply",
                "content": {JSON: {"schema": {"type": "object", "properties": {
                    "id": {"type": "string"}, "reply": {"type": "object"}}}}}},
        "400": _err_ref("Malformed JSON, invalid UTF-8, bad mode/timeout"),
        "401": _err_ref("Missing, unknown or revoked API key"),
        "403": _err_ref("The key lacks the 'ingest' scope or may not post this type"),
        "404": _err_ref("Unknown message type (with did-you-mean)"),
        "413": _err_ref("Body larger than settings.max_body_bytes"),
        "415": _err_ref("Content-Type is not application/json (UTF-8)"),
        "422": _err_ref("The payload violates the schema; details name each field and why"),
        "503": _err_ref("The message could not be stored durably; retry after Retry-After seconds"),
        "504": _err_ref("Sync mode: no reply in time; the message was accepted (error.id)"),
    },
}

ERROR_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {"type": "object", "required": ["code", "message", "details"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object", "properties": {
            "loc": {"type": "string"}, "msg": {"type": "string"}, "type": {"type": "string"},
            "hint": {"type": "string"}}}}}}},
}


def install(app: Any) -> None:
    """Add the raw ingest route and document it in the app's OpenAPI schema."""
    from starlette.routing import Route

    app.router.routes.append(Route("/v1/messages/{type}", post_message, methods=["POST"], name="post_message"))
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = base_openapi()
        spec.setdefault("paths", {}).setdefault("/v1/messages/{type}", {})["post"] = OPENAPI_OPERATION
        comps = spec.setdefault("components", {})
        comps.setdefault("schemas", {})["ErrorBody"] = ERROR_BODY_SCHEMA
        comps.setdefault("securitySchemes", {}).update({
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        })
        app.openapi_schema = spec
        return spec

    app.openapi = openapi


@router.get(
    "/v1/messages/{message_id}",
    summary="State of a message",
    description="accepted, in_flight, delivered, retrying, dead_lettered (with the reason), per route. "
    "Keys with the 'read' scope see every message; ingest keys see the messages they posted.",
    responses={401: _ERR, 403: _ERR, 404: _ERR},
)
async def get_message(message_id: str, request: Request) -> Response:
    principal = authenticate(request)
    if not (principal.has_scope("read") or principal.has_scope("ingest")):
        raise ApiError(403, "forbidden", "this API key lacks the 'read' scope")
    hub = request.app.state.hub
    msg = await asyncio.to_thread(hub.get_message, message_id)
    if msg is None or (not principal.has_scope("read") and msg.get("source") != principal.name):
        raise ApiError(404, "not_found", f"no message with id '{message_id}'",
                       [ErrorDetail(loc="path.message_id", msg="unknown id", type="not_found")])
    return _json(msg)


@router.get("/v1/schemas", summary="Message types and their JSON Schemas", tags=["schemas"])
async def list_schemas(_p: Principal = Depends(require("read"))) -> Response:
    return _json({"types": sorted(SCHEMAS)})


@router.get("/v1/schemas/{type}", summary="JSON Schema of one message type", tags=["schemas"],
            responses={404: _ERR})
async def get_schema(type: str, request: Request) -> Response:
    authenticate(request)
    known_type(type)
    return _json(SCHEMAS[type].model_json_schema())

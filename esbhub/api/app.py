"""The HTTP API: ``create_app(settings)``.

Routers: ingest and message state (``esbhub.api.ingest``), dead-letter store
(``esbhub.api.dlq``), health and metrics (``esbhub.api.health``), plus the routers other
parts contribute if importable (``esbhub.routes.api``, ``esbhub.mdm.api``,
``esbhub.adapters.api``). Every error has one JSON shape (``esbhub.api.errors``).

The app owns one :class:`Hub` (``app.state.hub``): the broker, the bus store, the API key
store, the publish batcher and — created on the first sync request — the request-reply
client. Tests pass doubles for any of them.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import esbhub
from esbhub.api import errors
from esbhub.api.errors import ApiError, error_body
from esbhub.api.publisher import PublishBatcher
from esbhub.auth.store import ApiKeyStore
from esbhub.config import Settings
from esbhub.errors import ErrorDetail, EsbhubError
from esbhub.logging import get_logger

log = get_logger("esbhub.api")

SYNC_WAITERS = 256  # concurrent sync (request-reply) requests per API process; more wait in line
CONTRIB_ROUTERS = ("esbhub.routes.api", "esbhub.mdm.api", "esbhub.adapters.api")


@dataclass
class Hub:
    """What the API's handlers share in one process."""

    settings: Settings
    broker: Any
    store: Any
    keys: ApiKeyStore
    batcher: PublishBatcher
    requester_factory: Any = None
    _requester: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    sync_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=SYNC_WAITERS, thread_name_prefix="esbhub-sync")
    )

    def requester(self) -> Any:
        """The request-reply client of this process (one private reply queue), started on first use."""
        with self._lock:
            if self._requester is None:
                if self.requester_factory is not None:
                    self._requester = self.requester_factory(self.broker)
                else:
                    from esbhub.bus.reply import RequestReply

                    self._requester = RequestReply(self.broker)
                self._requester.start()
            return self._requester

    def record_accepted_quietly(self, envs: list[Any]) -> None:
        try:
            self.store.record_accepted(envs)
        except Exception as exc:  # noqa: BLE001 — logged, never swallowed quietly
            log.error("accepted_state_not_recorded", error_type=type(exc).__name__, error=str(exc))

    def get_message(self, message_id: str) -> dict[str, Any] | None:
        msg = self.store.get_message(message_id)
        if msg is None:  # accepted a moment ago, still in the store's write batch
            self.store.flush()
            msg = self.store.get_message(message_id)
        return msg

    def close(self) -> None:
        self.sync_pool.shutdown(wait=False, cancel_futures=True)
        if self._requester is not None:
            try:
                self._requester.stop()
            except Exception as exc:  # noqa: BLE001 — logged, never swallowed quietly
                log.warning("requester_stop_failed", error=str(exc))


class BodyLimitMiddleware:
    """413 for bodies over ``limit`` bytes: at once from Content-Length, else while reading.

    Pure ASGI (no BaseHTTPMiddleware) so it costs one function call per body chunk.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            "body_too_large",
            f"the body exceeds the limit of {self.limit} bytes",
            [ErrorDetail(loc="body", msg=f"larger than {self.limit} bytes", type="too_large")],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = -1
                if n > limit:
                    exc = self._too_large()
                    await send({
                        "type": "http.response.start",
                        "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
                    })
                    await send({"type": "http.response.body",
                                "body": orjson.dumps(error_body(exc.code, exc.message, exc.details))})
                    return
                break
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise self._too_large()
            return msg

        await self.app(scope, limited_receive, send)


class HubAPI(FastAPI):
    """FastAPI with a fast lane for ``POST /v1/messages/{type}``.

    At thousands of requests per second the generic stack (telemetry check, exit stacks,
    route matching over every contributed router, dependency solving) costs more than
    validating and publishing a message. The ingest POST therefore goes straight to its
    handler, with the same body limit and the same error shape; everything else — and the
    OpenAPI document, which still lists the ingest operation — is plain FastAPI.
    """

    _fast_ingest: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and self._fast_ingest is not None
            and scope["path"].startswith(INGEST_PREFIX)
            and "/" not in scope["path"][len(INGEST_PREFIX):]
            and len(scope["path"]) > len(INGEST_PREFIX)
        ):
            scope["app"] = self
            scope["path_params"] = {"type": scope["path"][len(INGEST_PREFIX):]}
            await self._fast_ingest(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


INGEST_PREFIX = "/v1/messages/"


async def _fast_ingest_app(scope: Scope, receive: Receive, send: Send) -> None:
    from starlette.requests import Request

    from esbhub.api.ingest import post_message

    request = Request(scope, receive)
    try:
        response = await post_message(request)
    except ApiError as exc:
        response = errors.error_response(exc)
    except EsbhubError as exc:
        response = errors.error_response(errors.from_esbhub_error(exc))
    except Exception as exc:  # noqa: BLE001 — logged; the sender gets a 500 in the one error shape
        log.exception("ingest_failed", error_type=type(exc).__name__)
        response = errors.error_response(ApiError(500, "internal_error", "the hub failed to handle the message"))
    await response(scope, receive, send)


def _telemetry_config() -> dict[str, Any]:
    """FastAPI's native OpenTelemetry only when OpenTelemetry is configured: its per-request
    provider check alone costs measurable ingest throughput."""
    import os

    on = any(os.environ.get(v) for v in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                                        "FASTAPI_OTEL_AUTO_CONFIGURE"))
    return {} if on else {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def _connect(broker: Any) -> None:
    try:
        broker.connect()
    except Exception as exc:  # noqa: BLE001 — not fatal: /readyz says so, ingest answers 503 until it is back
        log.error("broker_connect_failed", error_type=type(exc).__name__, error=str(exc))


def _build_hub(settings: Settings, broker: Any, store: Any, keys: Any, requester_factory: Any) -> Hub:
    if broker is None:
        from esbhub.bus.broker import create_broker

        broker = create_broker(settings.effective_broker_url, exchange=settings.exchange)
    if store is None:
        from esbhub.bus.store import BusStore

        store = BusStore(settings.effective_database_url)
    if keys is None:
        keys = ApiKeyStore(settings.effective_database_url)
    batcher = PublishBatcher(broker, store, timeout=settings.publish_timeout)
    return Hub(settings=settings, broker=broker, store=store, keys=keys, batcher=batcher,
               requester_factory=requester_factory)


def create_app(
    settings: Settings | None = None,
    *,
    broker: Any = None,
    store: Any = None,
    keys: ApiKeyStore | None = None,
    requester_factory: Any = None,
) -> FastAPI:
    """The hub's FastAPI app. ``broker``/``store``/``keys``/``requester_factory`` default to the real ones."""
    settings = settings or Settings()
    hub = _build_hub(settings, broker, store, keys, requester_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Connect in the background: a broker that is down must not keep the API from
        # starting — /readyz says so and ingest answers 503 until publishes succeed again.
        threading.Thread(target=_connect, args=(hub.broker,), name="broker-connect", daemon=True).start()
        await hub.batcher.start()
        log.info("api_started", broker=type(hub.broker).__name__)
        try:
            yield
        finally:
            await hub.batcher.stop()
            hub.close()
            for closer in (getattr(hub.store, "close", None), hub.broker.close):
                if closer is not None:
                    try:
                        closer()
                    except Exception as exc:  # noqa: BLE001 — logged, never swallowed quietly
                        log.warning("shutdown_step_failed", error=str(exc))
            log.info("api_stopped")

    app = HubAPI(
        telemetry=_telemetry_config(),
        title="esbhub",
        version=esbhub.__version__,
        description="Integration hub: post messages, follow their state, manage the dead-letter store. "
        "Every call but /healthz, /readyz and the docs needs an API key "
        "(`Authorization: Bearer <key>` or `X-API-Key`).",
        lifespan=lifespan,
    )
    app.state.hub = hub
    app._fast_ingest = BodyLimitMiddleware(_fast_ingest_app, limit=settings.max_body_bytes)
    app.state.keys = hub.keys
    app.state.settings = settings
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)

    from esbhub.api import dlq, health, ingest
    from esbhub.api import keys as keys_api

    app.include_router(health.router)
    ingest.install(app)  # the raw hot-path route, before the routers
    app.include_router(ingest.router)
    app.include_router(dlq.router)
    app.include_router(keys_api.router)
    for mod in CONTRIB_ROUTERS:
        try:
            router = importlib.import_module(mod).router
        except ModuleNotFoundError as exc:
            if exc.name is not None and mod.startswith(exc.name):
                continue  # that part is not installed
            log.error("router_import_failed", module=mod, error_type=type(exc).__name__, error=str(exc))
            continue
        except Exception as exc:  # noqa: BLE001 — a broken contributed router must not take the ingest API down
            log.error("router_import_failed", module=mod, error_type=type(exc).__name__, error=str(exc))
            continue
        app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (``esbhub serve --http-workers N``): the settings the
    parent resolved travel as JSON in ``ESBHUBSERVE_SETTINGS``; without it, env / defaults."""
    import json
    import os

    from esbhub.logging import configure

    raw = os.environ.get("ESBHUBSERVE_SETTINGS")
    settings = Settings(**json.loads(raw)) if raw else Settings()
    configure(settings.log_level)
    return create_app(settings)

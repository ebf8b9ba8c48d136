"""Structured JSON logs (structlog). Bind ``route``, ``adapter``, ``message_id``,
``correlation_id``; events are snake_case past tense (``message_dead_lettered``).
Payloads are not logged unless ``log_payloads`` is on; secret-looking keys are masked always.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from esbhub.secrets import redact

_configured = False


def _redact_processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    return redact(event)


def configure(level: str = "info", *, json: bool = True) -> None:
    global _configured
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=lvl, format="%(message)s")
    # Client libraries log every request at INFO (httpx: "HTTP Request: …"); the hub logs
    # what matters itself, with ids bound, so they speak only on warnings.
    for noisy in ("httpx", "httpcore", "zeep", "paramiko", "pysnmp", "kombu", "amqp", "urllib3", "alembic"):
        if lvl > logging.DEBUG:
            logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_processor,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _configured = True


def get_logger(name: str | None = None, **bound: Any) -> Any:
    log = structlog.get_logger(name)
    return log.bind(**bound) if bound else log

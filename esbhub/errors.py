"""The error tree every esbhub package maps its failures into.

Callers decide what to do next from the class alone (see STYLE.md, "handle errors by
what to do next")::

    EsbhubError
    ├── TransientError        retry later: peer down, timeout, lock, 5xx, 429
    │   └── BrokerUnavailable the message could not be stored durably (HTTP 503)
    ├── PermanentError        retrying cannot help: dead-letter with the reason
    │   └── CircuitOpen       (subclass of TransientError too: a sink is resting)
    ├── InvalidMessage        bad input: reject at the edge with field + reason
    └── ConfigError           a config / route file is wrong: file, line, path, reason

Each error carries a short machine ``code`` and a human ``message``; ``InvalidMessage``
and ``ConfigError`` also carry a list of ``ErrorDetail`` naming the exact location.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ErrorDetail:
    """One precise problem: where it is (``loc``) and why (``msg``)."""

    loc: str
    msg: str
    type: str = "invalid"
    file: str | None = None
    line: int | None = None
    hint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"loc": self.loc, "msg": self.msg, "type": self.type}
        if self.file is not None:
            d["file"] = self.file
        if self.line is not None:
            d["line"] = self.line
        if self.hint:
            d["hint"] = self.hint
        return d

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{self.loc}: {self.msg}{hint}"


class EsbhubError(Exception):
    code = "error"

    def __init__(self, message: str = "", *, details: list[ErrorDetail] | None = None) -> None:
        super().__init__(message)
        self.message = message or self.__class__.__name__
        self.details: list[ErrorDetail] = list(details or [])

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {d}" for d in self.details)


class TransientError(EsbhubError):
    """Try again later; the same input may succeed."""

    code = "transient"


class BrokerUnavailable(TransientError):
    """The broker could not take the message durably; the caller must not assume it is safe."""

    code = "broker_unavailable"


class PermanentError(EsbhubError):
    """Retrying cannot help; the message goes to the dead-letter store with this reason."""

    code = "permanent"


class CircuitOpen(TransientError):
    """A sink's circuit breaker is open: stop consuming instead of burning retries."""

    code = "circuit_open"

    def __init__(self, message: str = "", *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidMessage(EsbhubError):
    """The input is wrong; ``details`` say which field and why."""

    code = "invalid_message"


class ConfigError(EsbhubError):
    """A configuration or route file is wrong; ``details`` carry file:line and the path."""

    code = "config_error"


@dataclass
class ErrorInfo:
    """What the dead-letter store and message state keep about a failure."""

    kind: str
    type: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        if isinstance(exc, InvalidMessage):
            kind = "invalid"
        elif isinstance(exc, TransientError):
            kind = "transient"
        elif isinstance(exc, PermanentError):
            kind = "permanent"
        else:
            # Unknown exceptions are treated as transient: a bug or an unmapped library
            # error gets retried, then dead-lettered with its type, never swallowed.
            kind = "transient"
        details = [d.as_dict() for d in getattr(exc, "details", [])]
        return cls(kind=kind, type=type(exc).__name__, message=str(exc)[:4000], details=details)

"""The adapter contract: every protocol adapter (SQL, HTTP, AMQP, MQTT, NATS, timer, SOAP,
FTP/SFTP, SNMP …) is a config model plus a :class:`Source` and/or a :class:`Sink`.

Vocabulary (kept small, shared by every adapter)::

    AdapterConfig   pydantic model, extra="forbid", a description on every field;
                    secrets only as SecretRef ('${env:NAME}' / '${file:PATH}'), resolved
                    late (when a connection is opened) with esbhub.secrets.resolve().
    Source          start(emit) → runs in its own thread(s), returns at once; stop(); health().
                    emit(envelopes) returns only when they are durably on the bus (it raises
                    otherwise). A source acknowledges / commits upstream ONLY after emit
                    returned; when emit raises, nothing is acked and the data is seen again.
    Sink            send(envelope) → dict | None (a small result, e.g. {"rows": 1}); idempotent
                    where the protocol allows (upsert, idempotency key = envelope id).
                    Subclasses implement deliver(); send() wraps it with the circuit breaker,
                    error mapping and health bookkeeping.
    Health          ok, last_success, last_error, latency_ms, circuit (cheap: no network call).
    CircuitBreaker  one per sink: closed → open after N consecutive transient failures
                    (send raises CircuitOpen at once, so a route stops consuming instead of
                    burning retries) → half-open probe after a cool-down → closed.

Errors (esbhub.errors) are what a caller decides its next move from::

    TransientError   peer down, timeout, lock, 5xx, 429        → retry with backoff
    PermanentError   constraint violation, 4xx, bad statement  → dead-letter with reason
    InvalidMessage   the envelope cannot be turned into a request → dead-letter / reject

:func:`map_error` / :func:`mapped_errors` turn library exceptions into that tree;
:func:`retry_transient` is the one reconnect-with-backoff helper (tenacity).

Writing a new adapter (module ``esbhub/adapters/<name>.py`` or a package exposing an entry
point in group ``esbhub.adapters``)::

    class FooConfig(AdapterConfig):
        host: str = Field(description="…")
        password: SecretRef | None = Field(default=None, description="…")

    class FooSink(Sink[FooConfig]):
        def deliver(self, envelope): ...

    SPEC = AdapterSpec(name="foo", config_model=FooConfig, sink_cls=FooSink, description="…")
"""

from __future__ import annotations

import abc
import contextlib
import socket
import threading
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from ulid import ULID

from esbhub.bus.envelope import Envelope
from esbhub.errors import (
    CircuitOpen,
    ConfigError,
    ErrorDetail,
    EsbhubError,
    InvalidMessage,
    PermanentError,
    TransientError,
)
from esbhub.logging import get_logger
from esbhub.secrets import _check_ref, check_url_secret, redact_url, resolve_url

# ---------------------------------------------------------------------------------------------
# config


class CircuitPolicy(BaseModel):
    """When a sink's circuit breaker opens and how long it rests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failure_threshold: int = Field(
        default=5, ge=1, le=1000, description="Consecutive transient failures that open the circuit."
    )
    reset_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds the circuit stays open before a half-open probe."
    )


class AdapterConfig(BaseModel):
    """Base of every adapter config: unknown keys refused, every field described.

    ``timeout`` bounds every network call the adapter makes (connect, read, write, ack);
    ``circuit`` configures the sink's circuit breaker (ignored by sources).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float = Field(default=10.0, gt=0, le=600, description="Seconds any one network call may take.")
    circuit: CircuitPolicy = Field(
        default_factory=CircuitPolicy, description="Circuit breaker of the sink (sources ignore it)."
    )


ConfigT = TypeVar("ConfigT", bound=AdapterConfig)


def _check_time_zone(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone '{v}'") from None
    return v


TimeZoneName = Annotated[str, AfterValidator(_check_time_zone)]
"""An IANA time zone name (``Asia/Shanghai``), checked where the config is parsed."""

def _annotation_is_secret(ann: Any) -> bool:
    if typing.get_origin(ann) is typing.Annotated:
        args = typing.get_args(ann)
        if any(getattr(m, "func", None) is _check_ref for m in args[1:]):
            return True
        return _annotation_is_secret(args[0])
    return any(_annotation_is_secret(a) for a in typing.get_args(ann))


def secret_fields(model: type[BaseModel]) -> list[str]:
    """Names of the fields of ``model`` declared as :data:`esbhub.secrets.SecretRef`."""
    out = []
    for name, info in model.model_fields.items():
        if any(getattr(m, "func", None) is _check_ref for m in info.metadata) or _annotation_is_secret(
            info.annotation
        ):
            out.append(name)
        elif (info.json_schema_extra or {}) and isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get(
            "secret"
        ):
            out.append(name)
    return out


def parse_config(model: type[ConfigT], data: Any, *, file: str | None = None, prefix: str = "") -> ConfigT:
    """Validate ``data`` against ``model``; errors become one :class:`ConfigError` with a detail
    per problem (YAML-style path, message, did-you-mean for unknown keys)."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data or {})
    except ValidationError as exc:
        from esbhub.adapters.registry import did_you_mean

        details = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            hint = None
            if err["type"] == "extra_forbidden":
                sugg = did_you_mean(str(err["loc"][-1]), list(model.model_fields))
                hint = f"did you mean '{sugg}'?" if sugg else f"known keys: {', '.join(model.model_fields)}"
            msg = err["msg"].removeprefix("Value error, ")
            details.append(
                ErrorDetail(loc=f"{prefix}{loc}" if prefix else loc, msg=msg, type=err["type"], file=file, hint=hint)
            )
        raise ConfigError(f"invalid {model.__name__}", details=details) from None


# ---------------------------------------------------------------------------------------------
# health


CircuitState = Literal["closed", "open", "half_open"]


class Health(BaseModel):
    """What ``health()`` reports; cheap — built from what the adapter already knows."""

    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(description="Adapter name, e.g. 'sql'.")
    name: str = Field(default="", description="Instance name (route / endpoint) the adapter runs for.")
    ok: bool = Field(description="False when the last operation failed or the circuit is open.")
    running: bool | None = Field(default=None, description="Sources: whether the source loop is running.")
    last_success: datetime | None = Field(default=None, description="When the last operation succeeded (UTC).")
    last_error: str | None = Field(default=None, description="Type and message of the last error (no secrets).")
    last_error_at: datetime | None = Field(default=None, description="When the last error happened (UTC).")
    latency_ms: float | None = Field(default=None, description="Duration of the last successful operation.")
    circuit: CircuitState | None = Field(default=None, description="Sinks: circuit breaker state.")
    consecutive_failures: int = Field(default=0, description="Failures since the last success.")
    count: int = Field(default=0, description="Records / messages handled since start.")
    detail: dict[str, Any] = Field(default_factory=dict, description="Adapter-specific, e.g. watermark, peer.")


class HealthTracker:
    """Thread-safe bookkeeping behind ``health()``: record_success / record_error."""

    def __init__(self, adapter: str, name: str = "") -> None:
        self.adapter = adapter
        self.name = name
        self._lock = threading.Lock()
        self.last_success: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.latency_ms: float | None = None
        self.failures = 0
        self.count = 0
        self.detail: dict[str, Any] = {}

    def record_success(self, latency_s: float | None = None, n: int = 1) -> None:
        with self._lock:
            self.last_success = datetime.now(UTC)
            if latency_s is not None:
                self.latency_ms = round(latency_s * 1000, 3)
            self.failures = 0
            self.count += n

    def record_error(self, exc: BaseException | str) -> None:
        with self._lock:
            self.last_error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {str(exc)[:500]}"
            self.last_error_at = datetime.now(UTC)
            self.failures += 1

    def snapshot(self, *, circuit: CircuitState | None = None, running: bool | None = None) -> Health:
        with self._lock:
            ok = self.failures == 0 and circuit != "open" and running is not False
            return Health(
                adapter=self.adapter,
                name=self.name,
                ok=ok,
                running=running,
                last_success=self.last_success,
                last_error=self.last_error,
                last_error_at=self.last_error_at,
                latency_ms=self.latency_ms,
                circuit=circuit,
                consecutive_failures=self.failures,
                count=self.count,
                detail=dict(self.detail),
            )


# ---------------------------------------------------------------------------------------------
# circuit breaker


class CircuitBreaker:
    """Per-sink breaker. Only transient failures count (a permanent error means the peer
    answered, so it is healthy). Thread-safe; ``clock`` is injectable for tests."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._state: CircuitState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._log = get_logger("esbhub.adapters", circuit=name)

    @classmethod
    def from_policy(cls, policy: CircuitPolicy, *, name: str = "") -> CircuitBreaker:
        return cls(policy.failure_threshold, policy.reset_timeout, name=name)

    @property
    def state(self) -> CircuitState:
        with self._lock:
            if self._state == "open" and self._clock() - self._opened_at >= self.reset_timeout:
                return "half_open"
            return self._state

    def before_call(self) -> None:
        """Raise :class:`CircuitOpen` if no call may go out now; admits one half-open probe."""
        with self._lock:
            if self._state == "closed":
                return
            now = self._clock()
            if self._state == "open":
                remaining = self.reset_timeout - (now - self._opened_at)
                if remaining > 0:
                    raise CircuitOpen(f"circuit '{self.name}' is open", retry_after=remaining)
                self._state = "half_open"
                self._probe_in_flight = False
            if self._probe_in_flight:  # half-open: one probe at a time
                raise CircuitOpen(f"circuit '{self.name}' is half-open, probing", retry_after=min(1.0, self.reset_timeout))
            self._probe_in_flight = True

    def on_success(self) -> None:
        with self._lock:
            if self._state != "closed":
                self._log.info("circuit_closed")
            self._state = "closed"
            self._failures = 0
            self._probe_in_flight = False

    def on_failure(self, exc: BaseException) -> None:
        with self._lock:
            if not isinstance(exc, TransientError) or isinstance(exc, CircuitOpen):
                # the peer answered (permanent / invalid): it is alive
                if self._state == "half_open":
                    self._state = "closed"
                self._failures = 0
                self._probe_in_flight = False
                return
            self._failures += 1
            if self._state == "half_open" or self._failures >= self.failure_threshold:
                if self._state != "open":
                    self._log.warning("circuit_opened", failures=self._failures, error=type(exc).__name__)
                self._state = "open"
                self._opened_at = self._clock()
                self._probe_in_flight = False

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        self.before_call()
        try:
            result = fn(*args, **kw)
        except BaseException as exc:
            self.on_failure(exc)
            raise
        self.on_success()
        return result


# ---------------------------------------------------------------------------------------------
# error mapping

# Library exceptions classified by fully-qualified class name (checked along the MRO) so this
# module does not import every driver. Adapters add their own with map_error(..., extra=...).
_TRANSIENT_NAMES = {
    "sqlalchemy.exc.OperationalError",
    "sqlalchemy.exc.DisconnectionError",
    "sqlalchemy.exc.TimeoutError",
    "sqlalchemy.exc.InterfaceError",
    "sqlalchemy.exc.PendingRollbackError",
    "sqlalchemy.exc.DBAPIError",  # any other driver error: retried, then dead-lettered
    "httpx.TimeoutException",
    "httpx.NetworkError",
    "httpx.RemoteProtocolError",
    "amqp.exceptions.RecoverableConnectionError",
    "amqp.exceptions.RecoverableChannelError",
    "kombu.exceptions.OperationalError",
    "nats.errors.TimeoutError",
    "nats.errors.NoServersError",
    "nats.errors.ConnectionClosedError",
    "nats.errors.StaleConnectionError",
    "nats.errors.OutboundBufferLimitError",
    "nats.js.errors.ServiceUnavailableError",
    "nats.js.errors.NoStreamResponseError",
    "oracledb.exceptions.OperationalError",
}
_PERMANENT_NAMES = {
    "sqlalchemy.exc.IntegrityError",
    "sqlalchemy.exc.DataError",
    "sqlalchemy.exc.ProgrammingError",
    "sqlalchemy.exc.NotSupportedError",
    "sqlalchemy.exc.CompileError",
    "amqp.exceptions.IrrecoverableChannelError",
    "amqp.exceptions.IrrecoverableConnectionError",
    "nats.js.errors.BadRequestError",
    "nats.js.errors.NotFoundError",
}
_INVALID_NAMES = {
    "sqlalchemy.exc.StatementError",  # a parameter of the wrong type (DBAPIError subclasses are matched first)
    "pydantic_core._pydantic_core.ValidationError",
    "json.decoder.JSONDecodeError",
    "orjson.JSONDecodeError",
    "UnicodeDecodeError",
}


def _qualnames(exc: BaseException) -> Iterator[str]:
    for cls in type(exc).__mro__:
        yield f"{cls.__module__}.{cls.__qualname__}" if cls.__module__ != "builtins" else cls.__qualname__


def classify(exc: BaseException) -> type[EsbhubError] | None:
    """The esbhub error class for a library exception, or None if unknown."""
    if isinstance(exc, EsbhubError):
        return type(exc)
    for q in _qualnames(exc):
        if q in _INVALID_NAMES:
            return InvalidMessage
        if q in _PERMANENT_NAMES:
            return PermanentError
        if q in _TRANSIENT_NAMES:
            return TransientError
    if isinstance(exc, TimeoutError | ConnectionError | socket.timeout | socket.gaierror | EOFError):
        return TransientError
    if isinstance(exc, OSError):
        return TransientError
    return None


def map_error(
    exc: BaseException,
    *,
    adapter: str = "",
    operation: str = "",
    extra: dict[type[BaseException], type[EsbhubError]] | None = None,
    default: type[EsbhubError] = TransientError,
) -> EsbhubError:
    """An :class:`EsbhubError` for ``exc`` (returned, not raised; chain with ``from exc``).

    ``extra`` maps adapter-specific exception classes first; unknown exceptions fall back to
    ``default`` (transient: an unmapped error is retried, then dead-lettered — never lost).
    The message names the adapter, the operation and the original type, never a secret.
    """
    if isinstance(exc, EsbhubError):
        return exc
    cls: type[EsbhubError] | None = None
    for k, v in (extra or {}).items():
        if isinstance(exc, k):
            cls = v
            break
    cls = cls or classify(exc) or default
    where = " ".join(p for p in (adapter, operation) if p)
    text = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
    msg = f"{where}: {type(exc).__name__}: {text}" if where else f"{type(exc).__name__}: {text}"
    err = cls(msg)
    err.__cause__ = exc
    return err


@contextlib.contextmanager
def mapped_errors(
    adapter: str = "",
    operation: str = "",
    *,
    extra: dict[type[BaseException], type[EsbhubError]] | None = None,
    default: type[EsbhubError] = TransientError,
) -> Iterator[None]:
    """``with mapped_errors("sql", "insert"):`` — library exceptions leave as the error tree."""
    try:
        yield
    except EsbhubError:
        raise
    except Exception as exc:
        raise map_error(exc, adapter=adapter, operation=operation, extra=extra, default=default) from exc


def retry_transient(
    fn: Callable[[], Any],
    *,
    attempts: int = 5,
    initial: float = 0.2,
    max_delay: float = 5.0,
    deadline: float | None = None,
    stop_event: threading.Event | None = None,
    on_retry: Callable[[BaseException, int], None] | None = None,
) -> Any:
    """Call ``fn`` and retry it on :class:`TransientError` (not :class:`CircuitOpen`) with
    exponential backoff and jitter (tenacity); the last error is re-raised as is.

    The reconnect helper: ``retry_transient(self._connect, attempts=10)``. ``deadline`` caps
    the total seconds; ``stop_event`` ends the waiting early when the adapter is stopping.
    """
    import tenacity

    stops = [tenacity.stop_after_attempt(attempts)]
    if deadline is not None:
        stops.append(tenacity.stop_after_delay(deadline))
    if stop_event is not None:
        stops.append(lambda _rs: stop_event.is_set())

    def _before_sleep(rs: tenacity.RetryCallState) -> None:
        if on_retry and rs.outcome is not None:
            exc = rs.outcome.exception()
            if exc is not None:
                on_retry(exc, rs.attempt_number)

    sleep = (lambda s: stop_event.wait(s)) if stop_event is not None else time.sleep
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, TransientError) and not isinstance(e, CircuitOpen)),
        stop=tenacity.stop_any(*stops),
        wait=tenacity.wait_random_exponential(multiplier=initial, max=max_delay),
        reraise=True,
        before_sleep=_before_sleep,
        sleep=sleep,
    )
    return retrying(fn)


def backoff_delays(initial: float = 0.5, max_delay: float = 30.0, multiplier: float = 2.0) -> Iterator[float]:
    """Endless delays for a source's reconnect loop: initial, ×multiplier, capped, with jitter."""
    import random

    d = initial
    while True:
        yield d * (0.5 + random.random() / 2)
        d = min(max_delay, d * multiplier)


# ---------------------------------------------------------------------------------------------
# envelopes


def stable_id(key: str, at: datetime | None = None) -> str:
    """A deterministic ULID-shaped envelope id for an upstream record, so that re-reading the
    same record (after a crash between emit and ack) yields the same id and the bus dedups it.
    The time part is ``at`` (the record's own time) or 0; the rest is a hash of ``key``."""
    ms = int(at.timestamp() * 1000) if at is not None else 0
    ms = max(0, min(ms, 2**48 - 1))
    return str(ULID.from_bytes(ms.to_bytes(6, "big") + sha256(key.encode()).digest()[:10]))


class EnvelopeTemplate(BaseModel):
    """How a source wraps what it reads: the canonical type and the source system name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="Envelope type of the messages made, e.g. 'party.v1'.")
    source: str = Field(description="Source system name put on the envelopes, e.g. 'resource-db'.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers put on every envelope.")

    def make(self, payload: Any, *, id: str | None = None, headers: dict[str, str] | None = None) -> Envelope:
        h = dict(self.headers)
        h.update(headers or {})
        return Envelope.create(self.type, payload, source=self.source, id=id, headers=h)


class WrapsMessageBodies(BaseModel):
    """Mixin for source configs that read message bodies (``body``) and wrap them with an
    ``envelope`` template: the template is required unless the bodies are envelopes already.
    Checked when the config is parsed, so a route lint names the field."""

    @model_validator(mode="after")
    def _envelope_template_needed(self) -> Any:
        if getattr(self, "body", "envelope") != "envelope" and getattr(self, "envelope", None) is None:
            raise ValueError("'envelope' (type, source) is required unless body is 'envelope'")
        return self


# ---------------------------------------------------------------------------------------------
# sources and sinks

Emit = Callable[[Sequence[Envelope]], None]
"""Put envelopes durably on the bus; returns only when they are safe, raises otherwise."""


def broker_emitter(broker: Any, *, routing_key: str | None = None, timeout: float | None = None) -> Emit:
    """The usual ``emit``: :meth:`Broker.publish_many` (returns after confirm / commit)."""

    def emit(envelopes: Sequence[Envelope]) -> None:
        if envelopes:
            broker.publish_many(list(envelopes), routing_key=routing_key, timeout=timeout)

    return emit


class _Adapter(Generic[ConfigT]):
    adapter_name: ClassVar[str] = "adapter"

    def __init__(self, config: ConfigT, *, name: str = "") -> None:
        self.config = config
        self.name = name or self.adapter_name
        self.tracker = HealthTracker(self.adapter_name, self.name)
        self.log = get_logger("esbhub.adapters", adapter=self.adapter_name, instance=self.name)


class Source(_Adapter[ConfigT], abc.ABC):
    """Reads from a peer and hands envelopes to ``emit``; acks upstream only after emit returns.

    ``start`` returns at once (the source runs in its own thread); ``stop`` ends it, waiting
    for an in-flight emit to finish. After ``emit`` raises the source does not ack; it backs
    off and reads the same data again (redelivery / re-poll).
    """

    @abc.abstractmethod
    def start(self, emit: Emit) -> None: ...

    @abc.abstractmethod
    def stop(self, timeout: float = 10.0) -> None: ...

    @property
    def running(self) -> bool:
        return False

    def health(self) -> Health:
        return self.tracker.snapshot(running=self.running)


class ThreadedSource(Source[ConfigT]):
    """A source that runs :meth:`_loop` on its own thread until :meth:`stop` sets ``_stop``;
    start/stop/running live here once for every threaded source."""

    def __init__(self, config: ConfigT, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def _loop(self, emit: Emit) -> None:
        """Run until ``self._stop`` is set; survive errors (record, back off, go on)."""

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, emit: Emit) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(emit,), name=f"{self.adapter_name}-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


class PollingSource(ThreadedSource[ConfigT]):
    """A source that polls: subclasses implement :meth:`poll_once`; the loop, backoff on
    errors and stopping are here. ``poll_once(emit)`` returns how many records it emitted
    (it loops at once while that equals a full batch). Also callable from a scheduler
    (Celery beat: one poller per source across the cluster)."""

    poll_interval: float = 1.0

    def __init__(self, config: ConfigT, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self.poll_interval = float(getattr(config, "poll_interval", self.poll_interval))

    @abc.abstractmethod
    def poll_once(self, emit: Emit) -> int: ...

    def batch_full(self, n: int) -> bool:
        size = getattr(self.config, "batch_size", None)
        return bool(size) and n >= size

    def close(self) -> None:
        """Release connections (called when the loop ends)."""

    def _loop(self, emit: Emit) -> None:
        delays = None
        self.log.info("source_started")
        try:
            while not self._stop.is_set():
                try:
                    n = self.poll_once(emit)
                    delays = None
                except Exception as exc:  # noqa: BLE001 - the loop must survive: recorded, backed off
                    self.tracker.record_error(exc)
                    self.log.warning("source_poll_failed", error=type(exc).__name__, reason=str(exc)[:300])
                    delays = delays or backoff_delays(min(1.0, self.poll_interval), max(5.0, self.poll_interval * 4))
                    self._stop.wait(next(delays))
                    continue
                if not self.batch_full(n):
                    self._stop.wait(self.poll_interval)
        finally:
            with contextlib.suppress(Exception):
                self.close()
            self.log.info("source_stopped")


class Sink(_Adapter[ConfigT], abc.ABC):
    """Writes envelopes to a peer. Implement :meth:`deliver`; callers use :meth:`send`."""

    def __init__(self, config: ConfigT, *, name: str = "") -> None:
        super().__init__(config, name=name)
        policy = getattr(config, "circuit", None) or CircuitPolicy()
        self.breaker = CircuitBreaker.from_policy(policy, name=f"{self.adapter_name}:{self.name}")

    @abc.abstractmethod
    def deliver(self, envelope: Envelope) -> dict[str, Any] | None:
        """Do the protocol work; raise errors of the tree (use :func:`mapped_errors`)."""

    def deliver_many(self, envelopes: Sequence[Envelope]) -> list[dict[str, Any] | None]:
        """Batch form; adapters that can batch (SQL) override it. All-or-nothing where possible."""
        return [self.deliver(e) for e in envelopes]

    def send(self, envelope: Envelope) -> dict[str, Any] | None:
        """Deliver through the circuit breaker; raises CircuitOpen / TransientError / PermanentError / InvalidMessage."""
        return self._guarded(lambda: self.deliver(envelope), 1)

    def send_many(self, envelopes: Sequence[Envelope]) -> list[dict[str, Any] | None]:
        if not envelopes:
            return []
        return self._guarded(lambda: self.deliver_many(envelopes), len(envelopes))

    def _guarded(self, fn: Callable[[], Any], n: int) -> Any:
        self.breaker.before_call()
        t0 = time.perf_counter()
        try:
            with mapped_errors(self.adapter_name, "send"):
                result = fn()
        except EsbhubError as exc:
            self.breaker.on_failure(exc)
            self.tracker.record_error(exc)
            raise
        self.breaker.on_success()
        self.tracker.record_success(time.perf_counter() - t0, n)
        return result

    def close(self) -> None:
        """Release connections. Idempotent."""

    def health(self) -> Health:
        return self.tracker.snapshot(circuit=self.breaker.state)

    def __enter__(self) -> Sink[ConfigT]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class AdapterSpec:
    """What the registry knows about one adapter."""

    name: str
    config_model: type[AdapterConfig]
    source_cls: type[Source[Any]] | None = None
    sink_cls: type[Sink[Any]] | None = None
    description: str = ""
    source_config_model: type[AdapterConfig] | None = None
    """If the source takes a different config than the sink (e.g. sql poll vs. sql write)."""
    sink_config_model: type[AdapterConfig] | None = None

    def config_for(self, role: Literal["source", "sink"]) -> type[AdapterConfig]:
        if role == "source":
            return self.source_config_model or self.config_model
        return self.sink_config_model or self.config_model

    def parse_config(self, data: Any, role: Literal["source", "sink"] = "sink", **kw: Any) -> AdapterConfig:
        return parse_config(self.config_for(role), data, **kw)

    def source(self, config: Any, *, name: str = "") -> Source[Any]:
        if self.source_cls is None:
            raise ConfigError(f"adapter '{self.name}' cannot be a source (it has no Source)")
        return self.source_cls(self.parse_config(config, "source"), name=name)

    def sink(self, config: Any, *, name: str = "") -> Sink[Any]:
        if self.sink_cls is None:
            raise ConfigError(f"adapter '{self.name}' cannot be a sink (it has no Sink)")
        return self.sink_cls(self.parse_config(config, "sink"), name=name)


__all__ = [
    "AdapterConfig",
    "AdapterSpec",
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitPolicy",
    "ConfigError",
    "Emit",
    "EnvelopeTemplate",
    "Health",
    "HealthTracker",
    "InvalidMessage",
    "PermanentError",
    "PollingSource",
    "Sink",
    "Source",
    "TransientError",
    "backoff_delays",
    "broker_emitter",
    "check_url_secret",
    "classify",
    "map_error",
    "mapped_errors",
    "parse_config",
    "redact_url",
    "resolve_url",
    "retry_transient",
    "secret_fields",
    "stable_id",
]

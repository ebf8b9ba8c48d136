"""Compiled steps: each route step model becomes an object with ``apply(msgs, run) -> msgs``.

Steps work on :class:`Msg` — a mutable view of one message — never on the frozen
:class:`~esbhub.bus.envelope.Envelope`, so a route pays for building an envelope once, at
its sinks. Everything a step needs from outside (aggregation store, request-reply, clock,
lookup mocks) comes from :class:`Deps`, so the same code runs in a worker, in
``routes test`` and in ``routes try``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from esbhub.bus.envelope import TYPE_RE, Envelope
from esbhub.errors import InvalidMessage, PermanentError, TransientError
from esbhub.routes import models as m
from esbhub.routes import registry
from esbhub.routes.expressions import (
    compile_expr,
    evaluate,
    evaluate_all,
    get_path,
    remove_path,
    set_path,
    setter,
    truthy,
)
from esbhub.schemas import SCHEMAS, validate_payload

if TYPE_CHECKING:
    from esbhub.routes.engine import Run
    from esbhub.routes.store import AggregateStore

INLINE_DELAY_MAX = 1.0


class NoRouteMatched(PermanentError):
    """A choice found no matching branch and has no ``otherwise``."""

    code = "no_route_matched"


def copy_json(v: Any) -> Any:
    if v is None or isinstance(v, str | int | float | bool):
        return v
    return orjson.loads(orjson.dumps(v))


_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32, as ULIDs use
_RFC_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _B32.encode())
# what _ulid_ms accepts: 10 Crockford characters (either case) of a timestamp below 2**48
_ULID_HEAD = re.compile(r"[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{9}")
_B32_DEC = {c: i for i, c in enumerate(_B32)} | {c.lower(): i for i, c in enumerate(_B32)}


def _ulid_ms(uid: str) -> int | None:
    """The 48-bit millisecond timestamp of a ULID string, or None if it is not one."""
    if len(uid) != 26:
        return None
    ms = 0
    try:
        for c in uid[:10]:
            ms = (ms << 5) | _B32_DEC[c]
    except KeyError:
        return None
    return ms if ms < (1 << 48) else None


def derive_id(parent: str, *parts: Any) -> str:
    """A deterministic ULID for a message derived from ``parent`` (same input → same id, so
    a redelivered input yields duplicates downstream dedup recognises): the parent's
    timestamp, then 80 bits of a hash of (parent, parts)."""
    h = hashlib.blake2b(("|".join([parent, *map(str, parts)])).encode(), digest_size=10).digest()
    if len(parent) == 26 and _ULID_HEAD.match(parent):
        # the parent's 10 timestamp characters are the encoding of its timestamp (up to case)
        head = parent[:10].upper()
    else:
        ms = int(time.time() * 1000)
        head = "".join([_B32[(ms >> sh) & 31] for sh in range(45, -1, -5)])
    # the 80 hash bits are exactly the last 16 characters: base32 of the 10 bytes (big-endian
    # 5-bit groups, no padding), mapped from the RFC 4648 alphabet to Crockford's
    return head + base64.b32encode(h).translate(_RFC_TO_CROCKFORD).decode()


# An output envelope is the input's with a few fields replaced by values the route already
# checked (a derived ULID, a type matching TYPE_RE, the JSON payload and str headers the steps
# produce): copy the frozen model's field dict directly, as model_copy(update=) does, minus
# its generic copying of extras and private attributes, which Envelope does not have.
_FAST_COPY = not Envelope.__private_attributes__ and Envelope.model_config.get("extra") == "forbid"


def _copy_env(env: Envelope, update: dict[str, Any]) -> Envelope:
    if not _FAST_COPY:
        return env.model_copy(update=update)
    new = Envelope.__new__(Envelope)
    d = env.__dict__.copy()
    d.update(update)
    object.__setattr__(new, "__dict__", d)
    object.__setattr__(new, "__pydantic_fields_set__", env.__pydantic_fields_set__ | update.keys())
    object.__setattr__(new, "__pydantic_extra__", None)
    object.__setattr__(new, "__pydantic_private__", None)
    return new


class Msg:
    """One message inside a route: ``view`` is what expressions see and steps change."""

    __slots__ = ("view", "env", "branch")

    def __init__(self, view: dict[str, Any], env: Envelope, branch: list[str] | None = None) -> None:
        self.view = view
        self.env = env
        self.branch = branch or []

    @classmethod
    def from_envelope(cls, env: Envelope, *, copy: bool = True) -> Msg:
        return cls(
            {
                "id": env.id,
                "type": env.type,
                "source": env.source,
                "correlation_id": env.correlation_id,
                "causation_id": env.causation_id,
                "headers": dict(env.headers),
                "payload": copy_json(env.payload) if copy else env.payload,
                "attempt": env.attempt,
            },
            env,
        )

    def child(self, payload: Any, *, id: str, type: str | None = None, headers: dict[str, str] | None = None) -> Msg:
        h = dict(self.view["headers"])
        h.update(headers or {})
        v = dict(self.view)
        v.update(id=id, payload=payload, headers=h, causation_id=self.view["id"], type=type or self.view["type"], attempt=0)
        return Msg(v, self.env, list(self.branch))

    def to_envelope(
        self, *, id: str | None = None, headers: dict[str, str] | None = None, causation_id: str | None = None, copy: bool = False
    ) -> Envelope:
        v = self.view
        t = v["type"]
        if t != self.env.type and not TYPE_RE.match(str(t)):
            raise PermanentError(f"route set an invalid message type {t!r}")
        h = {**v["headers"], **headers} if headers else (dict(v["headers"]) if copy else v["headers"])
        mid = id or v["id"]
        return _copy_env(
            self.env,
            {
                "id": mid,
                "type": t,
                "payload": copy_json(v["payload"]) if copy else v["payload"],
                "headers": h,
                "causation_id": causation_id or v.get("causation_id"),
                "attempt": 0 if mid != self.env.id else self.env.attempt,
            }
        )

    def snapshot(self) -> dict[str, Any]:
        v = self.view
        return {"id": v["id"], "type": v["type"], "headers": dict(v["headers"]), "payload": copy_json(v["payload"])}


class TTLCache:
    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl, self.max = ttl, max_entries
        self._d: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Any, load: Callable[[], Any]) -> Any:
        if self.ttl <= 0:
            return load()
        now = time.monotonic()
        with self._lock:
            hit = self._d.get(key)
            if hit is not None and hit[0] > now:
                self._d.move_to_end(key)
                self.hits += 1
                return hit[1]
        self.misses += 1
        val = load()
        with self._lock:
            self._d[key] = (now + self.ttl, val)
            self._d.move_to_end(key)
            while len(self._d) > self.max:
                self._d.popitem(last=False)
        return val


@dataclass
class Deps:
    """What steps need from outside; workers, the test runner and ``routes try`` fill it differently."""

    aggregates: AggregateStore | None = None
    call: Callable[[m.CallStep, Envelope], Any] | None = None  # request-reply; returns the reply payload
    mocks: dict[str, Any] = field(default_factory=dict)  # step name or 'mdm:fn' → {results: {...}} / {value: ...}
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall: Callable[[], float] = time.time
    inline_delays: bool = True  # routes test/try: run long delays inline (simulated)
    live_sinks: bool = True  # False in tests / dry runs: a 'call' to an adapter sink needs a mock
    routes: dict[str, Any] = field(default_factory=dict)  # name → CompiledRoute, for in-process 'call' (tests)


class Compiled:
    """Base of compiled steps."""

    index: int = 0  # top-level position (aggregate, delay need it to resume)
    label: str = ""
    spec: Any = None

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        raise NotImplementedError


class Validate(Compiled):
    def __init__(self, s: m.ValidateStep) -> None:
        self.schema, self.normalize = s.schema_, s.normalize

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        for msg in msgs:
            name = self.schema or msg.view["type"]
            model = SCHEMAS.get(name)
            if model is None:
                validate_payload(name, msg.view["payload"])  # raises the unknown-type error
                continue
            payload = msg.view["payload"]
            try:  # the schema's core validator and serializer: what validate_payload does, minus its wrappers
                obj = model.__pydantic_validator__.validate_python(payload)
            except ValidationError:
                validate_payload(name, payload)  # raises InvalidMessage with every wrong field, as before
                raise
            if self.normalize:  # a fresh JSON tree: the payload the route works on from here
                msg.view["payload"] = model.__pydantic_serializer__.to_python(obj, mode="json", exclude_none=True)
        return msgs


class Filter(Compiled):
    def __init__(self, s: m.FilterStep) -> None:
        self.expr = compile_expr(s.if_)

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        kept = [x for x in msgs if truthy(evaluate(self.expr, x.view))]
        run.result.filtered += len(msgs) - len(kept)
        return kept


class Map(Compiled):
    def __init__(self, s: m.MapStep) -> None:
        self.sets = [(t, compile_expr(e)) for t, e in s.set.items()]
        self.exprs = [e for _, e in self.sets]
        self.setters = [setter(t) for t, _ in self.sets]
        self.values = list(s.values.items())
        self.remove = list(s.remove)
        self.rename = list(s.rename.items())
        self.replace = s.replace
        self.simple = not (self.values or self.remove or self.rename or self.replace)

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        for msg in msgs:
            v = msg.view
            if self.simple:  # the common case: only 'set' (values computed first, then written)
                for put, val in zip(self.setters, evaluate_all(self.exprs, v), strict=True):
                    put(v, val)
                continue
            computed = [(t, evaluate(e, v)) for t, e in self.sets]
            if self.replace:
                v["payload"] = {}
            else:
                for old, new in self.rename:
                    found, val = get_path(v, old)
                    if found:
                        remove_path(v, old)
                        set_path(v, new, val)
                for t in self.remove:
                    remove_path(v, t)
            for t, val in computed:
                set_path(v, t, val)
            for t, val in self.values:
                set_path(v, t, copy_json(val))
        return msgs


class Enrich(Compiled):
    def __init__(self, s: m.EnrichStep) -> None:
        self.s = s
        self.cache = TTLCache(s.cache.ttl, s.cache.max_entries)
        self._engine: Any = None
        self._http: Any = None
        if s.mdm:
            self.key_expr = compile_expr(s.mdm.key)
        else:
            lk = s.sql or s.http or s.soap
            self.params = [(k, compile_expr(e)) for k, e in (lk.params if lk else {}).items()]
            self.body = compile_expr(s.http.body) if (s.http and s.http.body) else None
            self.select = compile_expr(s.soap.select) if (s.soap and s.soap.select) else None
        self._soap: Any = None
        self._soap_lock = threading.Lock()

    def _mock(self, run: Run) -> Any:
        names = [self.s.name or "", f"mdm:{self.s.mdm.function}" if self.s.mdm else ""]
        for n in names:
            if n and n in run.deps.mocks:
                return run.deps.mocks[n]
        return None

    def _lookup(self, msg: Msg, run: Run) -> Any:
        s = self.s
        mock = self._mock(run)
        if s.mdm:
            key = evaluate(self.key_expr, msg.view)
            if mock is not None:
                return _from_mock(mock, key)
            fn = registry.lookups().get(s.mdm.function)
            if fn is None:
                raise PermanentError(f"lookup function '{s.mdm.function}' is not registered")
            return self.cache.get(("mdm", orjson.dumps(key)), lambda: fn(key, **s.mdm.args))
        params = {k: evaluate(e, msg.view) for k, e in self.params}
        ckey = orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
        if mock is not None:
            return _from_mock(mock, next(iter(params.values()), None))
        if s.sql:
            return self.cache.get(("sql", ckey), lambda: self._sql(params))
        if s.soap:
            return self.cache.get(("soap", ckey), lambda: self._soap_call(params, msg))
        body = evaluate(self.body, msg.view) if self.body is not None else None
        return self.cache.get(("http", ckey, orjson.dumps(body)), lambda: self._http_call(params, body))

    def _sql(self, params: dict[str, Any]) -> Any:
        import sqlalchemy as sa

        from esbhub.db import make_engine

        q = self.s.sql
        assert q is not None
        if self._engine is None:
            self._engine = make_engine(_resolve_refs(q.url))
        try:
            with self._engine.connect() as c:
                rows = c.execute(sa.text(q.query).execution_options(timeout=q.timeout), params).mappings().all()
        except sa.exc.OperationalError as exc:
            raise TransientError(f"enrich SQL lookup failed: {type(exc.orig).__name__}") from exc
        except sa.exc.SQLAlchemyError as exc:
            raise PermanentError(f"enrich SQL lookup failed: {type(exc).__name__}") from exc
        data = [{k: _jsonable(v) for k, v in r.items()} for r in rows]
        return data if q.many else (data[0] if data else None)

    def _http_call(self, params: dict[str, Any], body: Any) -> Any:
        import httpx

        h = self.s.http
        assert h is not None
        url = h.url
        query = {}
        for k, v in params.items():
            if "{" + k + "}" in url:
                url = url.replace("{" + k + "}", httpx.QueryParams({"v": str(v)})["v"])
            else:
                query[k] = "" if v is None else str(v)
        if self._http is None:
            self._http = httpx.Client(timeout=h.timeout, follow_redirects=False)
        headers = {k: _resolve_refs(v) for k, v in h.headers.items()}
        try:
            r = self._http.request(h.method, url, params=query, json=body if h.method == "POST" else None, headers=headers)
        except httpx.TransportError as exc:
            raise TransientError(f"enrich HTTP lookup failed: {type(exc).__name__}") from exc
        if r.status_code == 404:
            return None
        if r.status_code == 429 or r.status_code >= 500:
            raise TransientError(f"enrich HTTP lookup got {r.status_code}")
        if r.status_code >= 400:
            raise PermanentError(f"enrich HTTP lookup got {r.status_code}")
        try:
            return r.json()
        except ValueError as exc:
            raise PermanentError("enrich HTTP lookup returned no JSON") from exc

    def _soap_sink(self) -> Any:
        with self._soap_lock:
            if self._soap is None:
                from esbhub.adapters.base import parse_config
                from esbhub.adapters.soap import SoapSink, SoapSinkConfig

                assert self.s.soap is not None
                cfg = parse_config(SoapSinkConfig, m.soap_lookup_config(self.s.soap.config), prefix="soap.config")
                self._soap = SoapSink(cfg, name=self.s.name or f"enrich:{self.s.target}")
            return self._soap

    def _soap_call(self, params: dict[str, Any], msg: Msg) -> Any:
        """One SOAP call through the soap adapter (its breaker, fault mapping, TLS, WS-Security)."""
        from esbhub.adapters.soap import fault_kind

        q = self.s.soap
        assert q is not None
        sink = self._soap_sink()
        req = Envelope.create("soap.lookup.v1", params, source="route", correlation_id=msg.view.get("correlation_id"))
        try:
            out = sink.send(req)
        except PermanentError as exc:
            code = getattr(exc.__cause__, "code", None)
            if code and q.not_found_faults and fault_kind(code, dict.fromkeys(q.not_found_faults, "invalid")) is InvalidMessage:
                return None
            raise
        resp = (out or {}).get("response")
        return evaluate(self.select, resp) if self.select is not None else resp

    def close(self) -> None:
        if self._soap is not None:
            self._soap.close()

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        for msg in msgs:
            val = self._lookup(msg, run)
            if val is None or val == []:
                if self.s.on_missing == "fail":
                    raise PermanentError(f"enrich '{self.s.name or self.s.target}' found nothing")
                if self.s.on_missing == "null":
                    set_path(msg.view, self.s.target, None)
                continue
            set_path(msg.view, self.s.target, copy_json(val))
        return msgs


def _from_mock(mock: Any, key: Any) -> Any:
    if isinstance(mock, dict) and "results" in mock:
        return copy_json(mock["results"].get(str(key)))
    if isinstance(mock, dict) and "value" in mock:
        return copy_json(mock["value"])
    return copy_json(mock)


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, str | int | float | bool):
        return v
    return str(v)


def _resolve_refs(text: str) -> str:
    """Replace ``${env:X}`` / ``${file:P}`` inside ``text`` with the secret (used only to connect)."""
    import re

    from esbhub.secrets import resolve

    return re.sub(r"\$\{(env|file):[^}]+\}", lambda mm: resolve(mm.group(0)).get_secret_value(), text)


class Choice(Compiled):
    def __init__(self, s: m.ChoiceStep, compile_steps: Callable[[list[Any], str], list[Compiled]]) -> None:
        self.branches = [
            (compile_expr(w.if_), compile_steps(w.steps, f"{self.label}.when[{i}]"), w.to, f"when[{i}]") for i, w in enumerate(s.when)
        ]
        self.otherwise = (
            (compile_steps(s.otherwise.steps, f"{self.label}.otherwise"), s.otherwise.to) if s.otherwise is not None else None
        )

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        out: list[Msg] = []
        for msg in msgs:
            for expr, b_steps, b_to, b_label in self.branches:
                if truthy(evaluate(expr, msg.view)):
                    steps, to, label = b_steps, b_to, b_label
                    break
            else:
                if self.otherwise is None:
                    raise NoRouteMatched(f"choice '{self.label}' matched no branch and has no otherwise")
                steps, to = self.otherwise
                label = "otherwise"
            msg.branch.append(f"{self.label}:{label}")
            run.branch_taken(self, label)
            res = run.run_steps(steps, [msg])
            if to is not None:
                run.send_all(res, to)
            else:
                out.extend(res)
        return out


class Split(Compiled):
    def __init__(self, s: m.SplitStep) -> None:
        self.expr = compile_expr(s.expression)
        self.type = s.message_type

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        out: list[Msg] = []
        for msg in msgs:
            items = evaluate(self.expr, msg.view)
            if items is None:
                items = []
            if not isinstance(items, list):
                raise PermanentError(f"split '{self.label}': expression gave {type(items).__name__}, not a list")
            if not items:
                run.result.split_empty += 1
                continue
            n = len(items)
            for i, it in enumerate(items):
                out.append(
                    msg.child(
                        copy_json(it),
                        id=derive_id(msg.view["id"], run.route_name, self.label, i),
                        type=self.type,
                        headers={"split-index": str(i), "split-size": str(n), "split-parent": msg.view["id"]},
                    )
                )
        return out


class Aggregate(Compiled):
    def __init__(self, s: m.AggregateStep) -> None:
        self.s = s
        self.corr = compile_expr(s.correlation)
        self.pred = compile_expr(s.complete_when) if s.complete_when else None
        self.output = compile_expr(s.output) if s.output else None

    def _complete(self, members: list[dict[str, Any]]) -> bool:
        if self.s.size is not None and len(members) >= self.s.size:
            return True
        if self.pred is not None:
            data = {"key": members[0].get("_key") if members else None, "items": [x["payload"] for x in members], "count": len(members)}
            return truthy(evaluate(self.pred, data))
        return False

    def build(self, group: Any, run: Run) -> Msg:
        members = group.members
        items = [x["payload"] for x in members]
        data = {"key": group.key, "items": items, "count": len(items)}
        payload = evaluate(self.output, data) if self.output is not None else data
        first = members[0]
        env = run.input_env
        v = {
            "id": derive_id(group.id, run.route_name, "aggregate"),
            "type": self.s.message_type or first["type"],
            "source": first.get("source") or (env.source if env else run.route_name),
            "correlation_id": first.get("correlation_id"),
            "causation_id": first["id"],
            "headers": {**first.get("headers", {}), "aggregate-size": str(len(items)), "aggregate-key": str(group.key)},
            "payload": copy_json(payload),
            "attempt": 0,
        }
        base = env if env is not None else Envelope.create(v["type"], None, source=v["source"], id=v["id"])
        return Msg(v, base)

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        store = run.deps.aggregates
        if store is None:
            raise PermanentError("aggregate step needs an aggregation store")
        out: list[Msg] = []
        for msg in msgs:
            key = evaluate(self.corr, msg.view)
            if key is None:
                raise PermanentError(f"aggregate '{self.label}': correlation expression gave null")
            skey = key if isinstance(key, str) else orjson.dumps(key).decode()
            data = {k: msg.view[k] for k in ("id", "type", "source", "correlation_id", "headers", "payload")}
            data["_key"] = skey
            g = store.add(
                run.route_name,
                self.index,
                skey,
                msg.view["id"],
                data,
                timeout=self.s.timeout,
                complete=self._complete,
                group_id=lambda mid=msg.view["id"], k=skey: derive_id(mid, run.route_name, "group", k),
                now=run.deps.wall(),
            )
            if g is None:
                run.result.aggregated += 1
                continue
            out.append(self.build(g, run))
        return out


class RecipientList(Compiled):
    def __init__(self, s: m.RecipientListStep) -> None:
        self.expr = compile_expr(s.recipients)
        self.allowed = set(s.allowed) if s.allowed is not None else None

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        for msg in msgs:
            r = evaluate(self.expr, msg.view)
            topics = [r] if isinstance(r, str) else (r or [])
            if not isinstance(topics, list) or not all(isinstance(t, str) and t for t in topics):
                raise PermanentError(f"recipient_list '{self.label}': expected topic name(s), got {type(r).__name__}")
            for t in topics:
                if self.allowed is not None and t not in self.allowed:
                    raise PermanentError(f"recipient_list '{self.label}': recipient '{t}' is not allowed")
                run.send(msg, m.SinkSpec(topic=t))
        return msgs


class WireTap(Compiled):
    def __init__(self, s: m.WireTapStep) -> None:
        self.to = s.to

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        for msg in msgs:
            run.send(msg, self.to)
        return msgs


class Throttle(Compiled):
    """Token bucket shared by all threads of this process running the route version."""

    def __init__(self, s: m.ThrottleStep) -> None:
        self.rate, self.burst = s.rate, s.burst
        self.tokens = float(s.burst)
        self.last: float | None = None
        self.lock = threading.Lock()
        self.waited = 0.0

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        for _ in msgs:
            with self.lock:
                now = run.deps.clock()
                if self.last is not None:
                    self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
                self.last = now
                self.tokens -= 1.0
                wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
                if wait > 0:
                    self.waited += wait
                    run.deps.sleep(wait)
        return msgs


class Delay(Compiled):
    def __init__(self, s: m.DelayStep) -> None:
        self.seconds = s.seconds

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        if self.seconds <= 0:
            return msgs
        if self.seconds <= INLINE_DELAY_MAX or run.deps.inline_delays:
            run.deps.sleep(self.seconds)
            return msgs
        for msg in msgs:
            run.defer(msg, self.index + 1, self.seconds)
        return []


class Call(Compiled):
    def __init__(self, s: m.CallStep) -> None:
        self.s = s

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        s = self.s
        for msg in msgs:
            mock_key = f"route:{s.route}" if s.route else (s.name or (s.sink.label if s.sink else ""))
            if mock_key in run.deps.mocks:
                reply = _from_mock(run.deps.mocks[mock_key], None)
            elif s.route is None and s.sink is not None and s.sink.adapter is not None:
                if not run.deps.live_sinks:
                    raise PermanentError(f"call '{self.label}': give a mock '{mock_key}' (sinks are not called in tests)")
                reply = run.call_sink(s.sink, msg)
            elif s.route is not None and s.route in run.deps.routes:
                sub = run.deps.routes[s.route].run(msg.to_envelope(), deps=run.deps)
                reply = sub.reply.payload if sub.reply is not None else None
            elif run.deps.call is not None:
                reply = run.deps.call(s, msg.to_envelope(id=derive_id(msg.view["id"], run.route_name, self.label, "call")))
            else:
                raise TransientError(f"call '{self.label}': no request-reply transport available")
            set_path(msg.view, s.target, copy_json(reply))
        return msgs


class Code(Compiled):
    def __init__(self, s: m.CodeStep) -> None:
        self.s = s
        self.fn: Any = None

    def apply(self, msgs: list[Msg], run: Run) -> list[Msg]:
        if self.fn is None:
            self.fn = registry.steps().get(self.s.function)
            if self.fn is None:
                raise PermanentError(f"code step '{self.s.function}' is not registered")
        out: list[Msg] = []
        for msg in msgs:
            try:
                r = self.fn(msg.view, dict(self.s.config))
            except (InvalidMessage, PermanentError, TransientError):
                raise
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                raise PermanentError(f"code step '{self.s.function}' failed: {type(exc).__name__}: {exc}") from exc
            if r is None:
                run.result.filtered += 1
            elif isinstance(r, list):
                for i, v in enumerate(r):
                    out.append(msg.child(v.get("payload"), id=derive_id(msg.view["id"], run.route_name, self.label, i),
                                         type=v.get("type"), headers=v.get("headers")))
            elif isinstance(r, dict):
                if r is not msg.view:
                    for k in ("payload", "headers", "type"):
                        if k in r:
                            msg.view[k] = r[k]
                out.append(msg)
            else:
                raise PermanentError(f"code step '{self.s.function}' returned {type(r).__name__}")
        return out


SIMPLE: dict[str, Any] = {
    "validate": Validate,
    "filter": Filter,
    "map": Map,
    "enrich": Enrich,
    "split": Split,
    "aggregate": Aggregate,
    "recipient_list": RecipientList,
    "wire_tap": WireTap,
    "throttle": Throttle,
    "delay": Delay,
    "call": Call,
    "code": Code,
}


def compile_steps(steps: list[Any], prefix: str = "steps") -> list[Compiled]:
    out: list[Compiled] = []
    for i, s in enumerate(steps):
        label = f"{prefix}[{i}]" + (f" {s.name}" if s.name else "")
        if s.type == "choice":
            c: Compiled = Choice.__new__(Choice)
            c.label = label
            Choice.__init__(c, s, lambda ss, p: compile_steps(ss, p))  # type: ignore[misc]
        else:
            c = SIMPLE[s.type](s)
        c.label, c.index, c.spec = label, i, s
        out.append(c)
    return out

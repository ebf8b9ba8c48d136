"""Route test runner and dry run: routes executed with in-memory doubles, no broker.

A test case (``tests:`` in the route, or ``<route>.tests.yaml`` beside it) gives input
envelopes and the messages expected at each sink (by sink name: ``name``, else the topic or
adapter name) and at the dead-letter. Every sink is replaced by an in-memory list; a ``call``
to another route of the same run executes that route in-process; lookups and calls can be
mocked (``mocks:``). Time is simulated: delays and throttles do not sleep, and aggregation
groups with a timeout are completed at the end of each case (as if the timeout passed).
A failing step is dead-lettered as the worker would after its retries.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esbhub.bus.envelope import Envelope
from esbhub.errors import ErrorInfo
from esbhub.routes.engine import CompiledRoute, RunResult
from esbhub.routes.loader import LoadedRoute, LoadResult
from esbhub.routes.models import Expected, MessageSpec, Route, RouteTest
from esbhub.routes.steps import Deps


@dataclass
class CaseResult:
    file: str
    route: str
    name: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sinks: dict[str, list[Envelope]] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)

    @property
    def nodeid(self) -> str:
        return f"{self.file}::{self.route}::{self.name}"


@dataclass
class Outcome:
    """Everything one or more inputs produced in a test/dry run."""

    sinks: dict[str, list[Envelope]] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    filtered: int = 0
    duplicates: int = 0
    results: list[RunResult] = field(default_factory=list)

    def collect(self, res: RunResult) -> None:
        self.results.append(res)
        self.filtered += res.filtered
        for o in res.outputs:
            self.sinks.setdefault(o.sink.label, []).append(o.envelope)


class _FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += max(0.0, s)


def _aggregate_store(tmp: Path) -> Any:
    from esbhub.db import make_engine
    from esbhub.routes.store import AggregateGroupRow, AggregateMemberRow, AggregateStore

    eng = make_engine(f"sqlite:///{tmp / 'aggregates.db'}")
    AggregateGroupRow.__table__.create(eng, checkfirst=True)
    AggregateMemberRow.__table__.create(eng, checkfirst=True)
    return AggregateStore(engine=eng)


def envelope_of(spec: MessageSpec) -> Envelope:
    return Envelope.create(spec.type, spec.payload, source=spec.source, headers=dict(spec.headers), id=spec.id)


class Harness:
    """Runs routes with doubles. One per test case (fresh aggregation state and clock)."""

    def __init__(self, routes: dict[str, Route], *, mocks: dict[str, Any] | None = None, tmp: Path | None = None) -> None:
        self._tmpdir = None
        if tmp is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="esbhub-route-test-")
            tmp = Path(self._tmpdir.name)
        self.clock = _FakeClock()
        self.deps = Deps(
            aggregates=_aggregate_store(tmp),
            mocks=dict(mocks or {}),
            clock=self.clock.now,
            sleep=self.clock.sleep,
            wall=self.clock.now,
            inline_delays=True,
            live_sinks=False,
        )
        self.compiled = {n: CompiledRoute(r, 0, self.deps) for n, r in routes.items()}
        self.deps.routes = self.compiled
        self._seen_keys: dict[str, set[str]] = {}

    def close(self) -> None:
        if self.deps.aggregates is not None:
            self.deps.aggregates.engine.dispose()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()

    def run(self, route: str, inputs: list[Envelope], *, trace: bool = False, flush: bool = True) -> Outcome:
        cr = self.compiled[route]
        out = Outcome()
        seen = self._seen_keys.setdefault(route, set())
        for env in inputs:
            try:
                key = cr.idempotency_key(env)
                if key is not None:
                    if key in seen:
                        out.duplicates += 1
                        continue
                    seen.add(key)
                res = cr.run(env, trace=trace)
            except Exception as exc:  # noqa: BLE001 - the test double of the worker's dead-letter
                info = ErrorInfo.from_exception(exc)
                out.dead_letters.append({"id": env.id, "error": info.type, "kind": info.kind, "message": info.message})
                continue
            out.collect(res)
        if flush:
            for _gid, res in cr.complete_groups(force=True, trace=trace):
                out.collect(res)
        return out


def _match(expected: Any, actual: Any, path: str, errs: list[str]) -> None:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            errs.append(f"{path}: expected an object, got {actual!r}")
            return
        for k, v in expected.items():
            if k not in actual:
                errs.append(f"{path}.{k}: missing (expected {v!r})")
            else:
                _match(v, actual[k], f"{path}.{k}", errs)
    elif isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            errs.append(f"{path}: expected {expected!r}, got {actual!r}")
            return
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _match(e, a, f"{path}[{i}]", errs)
    elif expected != actual:
        errs.append(f"{path}: expected {expected!r}, got {actual!r}")


def _check_message(exp: Expected, env: Envelope, where: str, errs: list[str]) -> None:
    if exp.type is not None and exp.type != env.type:
        errs.append(f"{where}.type: expected {exp.type!r}, got {env.type!r}")
    if "payload" in exp.model_fields_set:
        _match(exp.payload, env.payload, f"{where}.payload", errs)
    if exp.headers is not None:
        _match(exp.headers, env.headers, f"{where}.headers", errs)


def check(case: RouteTest, out: Outcome) -> list[str]:
    errs: list[str] = []
    exp = case.expect
    for sink, msgs in exp.sinks.items():
        got = out.sinks.get(sink, [])
        if len(got) != len(msgs):
            errs.append(f"sink '{sink}': expected {len(msgs)} message(s), got {len(got)}")
        for i, (e, a) in enumerate(zip(msgs, got, strict=False)):
            _check_message(e, a, f"sink '{sink}'[{i}]", errs)
    if exp.only_listed:
        for sink, got in out.sinks.items():
            if sink not in exp.sinks and got:
                errs.append(f"sink '{sink}': expected nothing, got {len(got)} message(s)")
    if len(out.dead_letters) != len(exp.dead_letter):
        detail = "; ".join(f"{d['error']}: {d['message'][:200]}" for d in out.dead_letters)
        errs.append(f"dead-letter: expected {len(exp.dead_letter)}, got {len(out.dead_letters)}" + (f" ({detail})" if detail else ""))
    for i, (e, a) in enumerate(zip(exp.dead_letter, out.dead_letters, strict=False)):
        if e.error is not None and e.error != a["error"]:
            errs.append(f"dead-letter[{i}].error: expected {e.error!r}, got {a['error']!r}")
        if e.reason is not None and e.reason not in a["message"]:
            errs.append(f"dead-letter[{i}]: reason {e.reason!r} not in {a['message'][:300]!r}")
    if exp.filtered is not None and exp.filtered != out.filtered + out.duplicates:
        errs.append(f"filtered: expected {exp.filtered}, got {out.filtered + out.duplicates}")
    return errs


def run_case(lr: LoadedRoute, case: RouteTest, routes: dict[str, Route]) -> CaseResult:
    t0 = time.perf_counter()
    h = Harness(routes, mocks=case.mocks)
    try:
        out = h.run(case.route or lr.route.name, [envelope_of(s) for s in case.all_inputs()])
        errs = check(case, out)
    finally:
        h.close()
    return CaseResult(
        file=lr.file,
        route=lr.route.name,
        name=case.name,
        passed=not errs,
        failures=errs,
        seconds=time.perf_counter() - t0,
        sinks=out.sinks,
        dead_letters=out.dead_letters,
    )


def run_tests(loaded: LoadResult, *, keyword: str | None = None) -> list[CaseResult]:
    """Run every test case of every loaded route (``keyword``: only cases whose id contains it)."""
    routes = {lr.route.name: lr.route for lr in loaded.routes}
    results = []
    for lr in loaded.routes:
        for case in lr.route.tests:
            cr = CaseResult(lr.file, lr.route.name, case.name, True)
            if keyword and keyword not in cr.nodeid:
                continue
            results.append(run_case(lr, case, routes))
    return results


def report(results: list[CaseResult], *, seconds: float, verbose: bool = True) -> str:
    lines = ["=" * 20 + " route tests session starts " + "=" * 20, f"collected {len(results)} item(s)", ""]
    if verbose:
        lines += [f"{r.nodeid} {'PASSED' if r.passed else 'FAILED'}" for r in results]
    else:
        lines.append("".join("." if r.passed else "F" for r in results))
    failed = [r for r in results if not r.passed]
    if failed:
        lines += ["", "=" * 25 + " FAILURES " + "=" * 25]
        for r in failed:
            lines.append(f"_____ {r.nodeid} _____")
            lines += [f"E   {f}" for f in r.failures]
    passed = len(results) - len(failed)
    parts = ([f"{len(failed)} failed"] if failed else []) + [f"{passed} passed"]
    lines += ["", "=" * 20 + f" {', '.join(parts)} in {seconds:.2f}s " + "=" * 20]
    return "\n".join(lines)


def dry_run(route: Route, env: Envelope, *, routes: dict[str, Route] | None = None, mocks: dict[str, Any] | None = None) -> Outcome:
    """``routes try``: one message through the route with a trace; nothing is sent anywhere."""
    all_routes = dict(routes or {})
    all_routes[route.name] = route
    h = Harness(all_routes, mocks=mocks)
    try:
        return h.run(route.name, [env], trace=True, flush=False)
    finally:
        h.close()


def format_trace(route: Route, env: Envelope, out: Outcome) -> str:
    import orjson

    def js(v: Any) -> str:
        return orjson.dumps(v, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()

    lines = [f"route {route.name}: message {env.id} ({env.type})", js({"headers": env.headers, "payload": env.payload}), ""]
    for res in out.results:
        for t in res.trace:
            head = f"→ {t.step} [{t.type}]" + (f"  branch: {t.branch}" if t.branch else "")
            if not t.messages:
                head += "  (no message continues)"
            lines.append(head)
            for mm in t.messages:
                lines.append("  " + js({"type": mm["type"], "headers": mm["headers"], "payload": mm["payload"]}).replace("\n", "\n  "))
        if res.split_empty:
            lines.append("  split produced no message (empty list)")
        if res.aggregated:
            lines.append("  held by an aggregate (group not complete yet)")
    lines.append("")
    if out.dead_letters:
        for d in out.dead_letters:
            lines.append(f"✗ dead-lettered: {d['error']}: {d['message']}")
    for sink, envs in out.sinks.items():
        lines.append(f"⇒ sink '{sink}': {len(envs)} message(s)")
    if out.filtered:
        lines.append(f"filtered: {out.filtered}")
    if not out.sinks and not out.dead_letters:
        lines.append("nothing reached a sink")
    return "\n".join(lines)

"""Run a route on one envelope — a pure function of (route, envelope, deps) → :class:`RunResult`.

The engine never talks to a broker: it returns what should be sent where (``outputs``),
what was dropped (``filtered``, ``split_empty``, held by an aggregate), what must come back
later (``deferred``: long delays) and, with ``trace=True``, the message after every step and
the branch taken. The worker runtime (:mod:`esbhub.routes.runtime`), the test runner
(:mod:`esbhub.routes.testing`) and ``routes try`` all call :meth:`CompiledRoute.run`.

Errors propagate as exceptions from :mod:`esbhub.errors` (the worker's retry / dead-letter
policy decides); a choice without a match raises :class:`~esbhub.routes.steps.NoRouteMatched`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from esbhub.bus.envelope import Envelope
from esbhub.errors import PermanentError
from esbhub.routes import models as m
from esbhub.routes.expressions import compile_expr, evaluate
from esbhub.routes.steps import Aggregate, Compiled, Deps, Msg, compile_steps, derive_id

ROUTE_HEADER = "esbhub-route"
RESUME_HEADER = "esbhub-resume-step"
MUTATING = {"map", "enrich", "call", "code", "choice", "validate"}


@dataclass
class Output:
    sink: m.SinkSpec
    envelope: Envelope


@dataclass
class Deferred:
    step: int
    envelope: Envelope
    delay: float


@dataclass
class TraceEntry:
    step: str
    type: str
    branch: str | None
    messages: list[dict[str, Any]]


@dataclass
class RunResult:
    outputs: list[Output] = field(default_factory=list)
    final_msgs: list[Msg] = field(default_factory=list)
    tag: str = ""
    filtered: int = 0
    split_empty: int = 0
    aggregated: int = 0
    deferred: list[Deferred] = field(default_factory=list)
    trace: list[TraceEntry] = field(default_factory=list)

    @property
    def final(self) -> list[Envelope]:
        """The messages that left the last step (built on demand: only requests need them)."""
        return [m.to_envelope(headers={ROUTE_HEADER: self.tag}) for m in self.final_msgs]

    @property
    def reply(self) -> Envelope | None:
        """A route's reply to a request: its first final message."""
        return self.final_msgs[0].to_envelope(headers={ROUTE_HEADER: self.tag}) if self.final_msgs else None


class Run:
    """State of one execution (one input envelope, or one completed aggregation group)."""

    def __init__(self, route: CompiledRoute, deps: Deps, input_env: Envelope | None, trace: bool) -> None:
        self.route = route
        self.route_name = route.name
        self.deps = deps
        self.input_env = input_env
        self.tracing = trace
        self.result = RunResult()
        self._branch: dict[int, str] = {}
        self._sent: dict[tuple[str, str], int] = {}

    def run_steps(self, steps: list[Compiled], msgs: list[Msg]) -> list[Msg]:
        if not self.tracing:
            for s in steps:
                if not msgs:
                    break
                msgs = s.apply(msgs, self)
            return msgs
        for s in steps:
            if not msgs:
                break
            msgs = s.apply(msgs, self)
            self.result.trace.append(
                TraceEntry(s.label, s.spec.type, self._branch.pop(id(s), None), [x.snapshot() for x in msgs])
            )
        return msgs

    def branch_taken(self, step: Compiled, label: str) -> None:
        if self.tracing:
            prev = self._branch.get(id(step))
            self._branch[id(step)] = label if prev is None else f"{prev}, {label}"

    def envelope_for(self, msg: Msg, sink_label: str, *, copy: bool = False) -> Envelope:
        k = (msg.view["id"], sink_label)
        n = self._sent.get(k, 0)
        self._sent[k] = n + 1
        return msg.to_envelope(
            id=derive_id(msg.view["id"], self.route_name, sink_label, n),
            headers={ROUTE_HEADER: self.route.tag},
            causation_id=msg.view["id"],
            copy=copy,  # a copy taken mid-route (wire tap, recipient list): later steps must not change it
        )

    def send(self, msg: Msg, sink: m.SinkSpec, *, copy: bool = True) -> Envelope:
        env = self.envelope_for(msg, sink.label, copy=copy)
        self.result.outputs.append(Output(sink, env))
        return env

    def send_all(self, msgs: list[Msg], sinks: list[m.SinkSpec]) -> None:
        for msg in msgs:
            for s in sinks:
                self.send(msg, s, copy=False)

    def defer(self, msg: Msg, step: int, delay: float) -> None:
        env = msg.to_envelope(
            id=derive_id(msg.view["id"], self.route_name, "defer", step), headers={RESUME_HEADER: str(step)}
        )
        self.result.deferred.append(Deferred(step, env, delay))

    def call_sink(self, sink: m.SinkSpec, msg: Msg) -> Any:
        from esbhub.routes.adapters import build_sink

        assert sink.adapter is not None
        return build_sink(sink.adapter, sink.config).send(self.envelope_for(msg, sink.label))


class CompiledRoute:
    """A route ready to run; one per (route, version) in a process."""

    def __init__(self, route: m.Route, version: int = 0, deps: Deps | None = None) -> None:
        self.route = route
        self.name = route.name
        self.version = version
        self.tag = f"{route.name}@v{version}"
        self.deps = deps or Deps()
        self.steps = compile_steps(route.steps)
        self.copy_payload = any(_mutates(s) for s in route.steps)
        # A first step that validates with normalize replaces the payload with a fresh JSON tree
        # before anything can change it: no copy of the input payload needed then.
        self.copy_from_1 = self.copy_payload and not (
            route.steps and route.steps[0].type == "validate" and route.steps[0].normalize
        )
        self.idempotency = compile_expr(route.idempotency_key) if route.idempotency_key else None
        self.ordering = compile_expr(route.ordering_key) if route.ordering_key else None

    def run(self, env: Envelope, *, start: int | None = None, trace: bool = False, deps: Deps | None = None) -> RunResult:
        """Run the steps (from ``start``; default: the resume header or 0) and collect the outputs."""
        env, start = self._resume_point(env, start)
        run = Run(self, deps or self.deps, env, trace)
        msgs = run.run_steps(self.steps[start:], [self._first_msg(env, start)])
        self._finish(run, msgs)
        return run.result

    def run_many(self, envs: Sequence[Envelope]) -> list[RunResult | Exception]:
        """Several inputs, step by step: every input through step 1, then through step 2, …
        (each step's code and data stay warm in the CPU caches, which a message-at-a-time loop
        interleaved with broker and store work does not get). Each input's result is exactly
        what :meth:`run` gives it, in input order; an input whose step fails gets that exception
        in its place and leaves the run, the others go on. Steps see the inputs in order, so
        side effects (aggregate members, adapter calls of wire taps) keep the inputs' order."""
        out: list[RunResult | Exception] = []
        live: list[tuple[int, Run, int]] = []
        msgs: dict[int, list[Msg]] = {}
        for i, env in enumerate(envs):
            try:
                env, start = self._resume_point(env, None)
                run = Run(self, self.deps, env, False)
                msgs[i] = [self._first_msg(env, start)]
            except Exception as exc:  # noqa: BLE001 - this input's failure
                out.append(exc)
                continue
            out.append(run.result)
            live.append((i, run, start))
        for k, step in enumerate(self.steps):
            for i, run, start in live:
                m = msgs.get(i)
                if not m or k < start:
                    continue
                try:
                    msgs[i] = step.apply(m, run)
                except Exception as exc:  # noqa: BLE001 - this input's failure; the others go on
                    out[i] = exc
                    del msgs[i]
        for i, run, _start in live:
            if i in msgs:
                try:
                    self._finish(run, msgs[i])
                except Exception as exc:  # noqa: BLE001
                    out[i] = exc
        return out

    def _resume_point(self, env: Envelope, start: int | None) -> tuple[Envelope, int]:
        if start is None:
            rs = env.headers.get(RESUME_HEADER)
            start = int(rs) if rs and rs.isdigit() else 0
            if rs is not None:
                env = env.model_copy(update={"headers": {k: v for k, v in env.headers.items() if k != RESUME_HEADER}})
        if start > len(self.steps):
            raise PermanentError(f"route '{self.name}' has no step {start} to resume at")
        return env, start

    def _first_msg(self, env: Envelope, start: int) -> Msg:
        return Msg.from_envelope(env, copy=self.copy_payload if start else self.copy_from_1)

    def _finish(self, run: Run, msgs: list[Msg]) -> None:
        run.send_all(msgs, self.route.to)
        run.result.final_msgs.extend(msgs)
        run.result.tag = self.tag

    def aggregate_steps(self) -> list[Aggregate]:
        return [s for s in self.steps if isinstance(s, Aggregate)]

    def complete_groups(self, *, force: bool = False, deps: Deps | None = None, trace: bool = False) -> list[tuple[str, RunResult]]:
        """Emit aggregation groups whose timeout passed (``force``: every open group with a timeout).

        Returns ``(group_id, result)`` pairs; the caller delivers the outputs, then calls
        ``AggregateStore.mark_completed(group_id)`` (publish-then-mark: a crash in between
        re-emits the same deterministic id, which downstream dedup drops).
        """
        d = deps or self.deps
        store = d.aggregates
        if store is None:
            return []
        out = []
        for agg in self.aggregate_steps():
            if agg.s.timeout is None:
                continue
            groups = store.open_groups(self.name, agg.index) if force else store.expired(self.name, agg.index, d.wall())
            for g in groups:
                run = Run(self, d, None, trace)
                msgs = run.run_steps(self.steps[agg.index + 1 :], [agg.build(g, run)])
                self._finish(run, msgs)
                out.append((g.id, run.result))
        return out

    def idempotency_key(self, env: Envelope) -> str | None:
        if self.idempotency is None:
            return None
        v = evaluate(self.idempotency, Msg.from_envelope(env, copy=False).view)
        return None if v is None else str(v)

    def ordering_key(self, env: Envelope) -> str | None:
        if self.ordering is None:
            return None
        v = evaluate(self.ordering, Msg.from_envelope(env, copy=False).view)
        return None if v is None else str(v)


def _mutates(step: Any) -> bool:
    return step.type in MUTATING or step.type == "split"

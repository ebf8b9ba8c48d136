"""Route files → validated :class:`Route` models, or errors naming file:line, the YAML path
and a "did you mean" hint.

Checks, in order: YAML syntax (with ruamel.yaml so every node keeps its line); the models
(unknown keys, wrong types, unknown step types); then what a model alone cannot know:
expressions compile, schemas and adapters exist (adapter configs validate against the
adapter's own model), registered functions exist, ``aggregate``/``delay`` are top-level, an
at-least-once route has a dead-letter, no inline secrets, route names are unique.
"""

from __future__ import annotations

import io
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from esbhub.errors import ConfigError, ErrorDetail
from esbhub.routes import adapters as adapter_registry
from esbhub.routes import registry
from esbhub.routes.expressions import check_expr
from esbhub.routes.models import (
    STEP_MODELS,
    AggregateStep,
    CallStep,
    ChoiceStep,
    DelayStep,
    EnrichStep,
    FilterStep,
    MapStep,
    RecipientListStep,
    Route,
    RouteTest,
    SinkSpec,
    SplitStep,
    ValidateStep,
    WireTapStep,
    soap_lookup_config,
)
from esbhub.schemas import SCHEMAS, suggest
from esbhub.secrets import is_reference

SECRET_KEY_RE = re.compile(r"(password|passwd|pwd|secret|token|api[_-]?key|private[_-]?key|credential|authorization)", re.I)
EMBEDDED_REF_RE = re.compile(r"\$\{(env|file):[^}]+\}")
URL_PASSWORD_RE = re.compile(r"^[a-z][a-z0-9+.-]*://[^/:@\s]+:([^@\s]+)@", re.I)
SKIP_SECRET_SCAN = {"tests", "set", "rename", "remove", "params", "if", "expression", "correlation"}
# a key naming where a secret lives (a file, a path), not the secret itself: 'private_key_file'
PATH_KEY_RE = re.compile(r"(_file|_path|_dir|_files)$", re.I)


@dataclass
class LoadedRoute:
    """A valid route and where it came from."""

    route: Route
    file: str
    line: int
    text: str  # the route's own YAML (stored as a version's content)


@dataclass
class LoadResult:
    routes: list[LoadedRoute] = field(default_factory=list)
    errors: list[ErrorDetail] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        if self.errors:
            raise ConfigError(f"{len(self.errors)} error(s) in route config", details=list(self.errors))

    def by_name(self) -> dict[str, LoadedRoute]:
        return {r.route.name: r for r in self.routes}


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


def plain(node: Any) -> Any:
    """ruamel's commented containers and scalars → plain Python values."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def dump_yaml(node: Any) -> str:
    buf = io.StringIO()
    _yaml().dump(node, buf)
    return buf.getvalue()


# ---------------------------------------------------------------- locating


def _line_of(node: Any, loc: Iterable[Any], base: int = 0) -> tuple[int | None, list[Any]]:
    """(1-based line of the deepest node ``loc`` reaches, the loc with union tags removed)."""
    line: int | None = None
    clean: list[Any] = []
    cur = node
    loc = list(loc)
    for i, part in enumerate(loc):
        if isinstance(cur, CommentedMap):
            if part in cur:
                try:
                    line = cur.lc.key(part)[0] + 1
                except (KeyError, TypeError, AttributeError):
                    pass
                clean.append(part)
                cur = cur[part]
                continue
            if i < len(loc) - 1:  # a pydantic union tag ('map', 'str', 'list[str]'): not in the YAML
                continue
            clean.append(part)
            if line is None and cur.lc.line is not None:
                line = cur.lc.line + 1
            break
        if isinstance(cur, CommentedSeq) and isinstance(part, int) and 0 <= part < len(cur):
            try:
                line = cur.lc.item(part)[0] + 1
            except (KeyError, TypeError, AttributeError):
                pass
            clean.append(part)
            cur = cur[part]
            continue
        if isinstance(cur, CommentedSeq) and not isinstance(part, int):
            continue
        clean.append(part)
        break
    return line, clean


def fmt_path(loc: Iterable[Any]) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "(root)"


def _unwrap(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        out: list[Any] = []
        for a in typing.get_args(tp):
            out.extend(_unwrap(a))
        return out
    return [tp]


def _models_at(root: type[BaseModel], loc: list[Any]) -> list[type[BaseModel]]:
    """The model class(es) a pydantic error location points into (for "did you mean")."""
    cands: list[Any] = [root]
    for part in loc:
        nxt: list[Any] = []
        for c in cands:
            origin = typing.get_origin(c)
            if isinstance(part, int) and origin is list:
                nxt.extend(_unwrap(typing.get_args(c)[0]))
            elif isinstance(part, str) and origin is dict:
                nxt.extend(_unwrap(typing.get_args(c)[1]))
            elif isinstance(c, type) and issubclass(c, BaseModel):
                for fname, f in c.model_fields.items():
                    if part in (fname, f.alias):
                        nxt.extend(_unwrap(f.annotation))
                        break
                else:
                    tag = c.model_fields.get("type")
                    if tag is not None and typing.get_args(tag.annotation) == (part,):
                        nxt.append(c)
        if nxt:
            cands = nxt
    return [c for c in cands if isinstance(c, type) and issubclass(c, BaseModel)]


def _field_names(models: list[type[BaseModel]]) -> list[str]:
    out: list[str] = []
    for m in models:
        out.extend(f.alias or n for n, f in m.model_fields.items())
    return out


class _Ctx:
    def __init__(self, file: str, node: Any, prefix: list[Any], errors: list[ErrorDetail]) -> None:
        self.file, self.node, self.prefix, self.errors = file, node, prefix, errors

    def add(self, loc: list[Any], msg: str, type: str = "invalid", hint: str | None = None) -> None:
        line, clean = _line_of(self.node, self.prefix + list(loc))
        self.errors.append(ErrorDetail(loc=fmt_path(clean), msg=msg, type=type, file=self.file, line=line, hint=hint))


def _validation_errors(ctx: _Ctx, exc: ValidationError, root: type[BaseModel], base: list[Any]) -> None:
    for e in exc.errors(include_url=False):
        loc = base + list(e["loc"])
        etype = e["type"]
        hint = None
        msg = e["msg"]
        if etype == "extra_forbidden":
            bad = str(loc[-1])
            models = _models_at(root, [p for p in list(e["loc"])[:-1]])
            names = _field_names(models)
            hint = suggest(bad, names)
            msg = f"unknown key '{bad}'" + (f"; allowed: {', '.join(sorted(set(names)))}" if names and not hint else "")
        elif etype in ("union_tag_invalid", "union_tag_not_found"):
            tag = (e.get("ctx") or {}).get("tag")
            if tag is not None:
                msg = f"unknown step type '{tag}'; known: {', '.join(STEP_MODELS)}"
                hint = suggest(str(tag), STEP_MODELS)
                loc = loc + ["type"]
            else:
                msg = f"a step needs 'type' (one of: {', '.join(STEP_MODELS)})"
        elif etype == "missing":
            msg = f"missing required key '{loc[-1]}'"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        ctx.add(loc, msg, type=etype, hint=hint)


# ---------------------------------------------------------------- semantic checks


def _scan_secrets(ctx: _Ctx, node: Any, loc: list[Any]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            ks = str(k)
            if ks in SKIP_SECRET_SCAN:
                continue
            if (
                isinstance(v, str)
                and SECRET_KEY_RE.search(ks)
                and not PATH_KEY_RE.search(ks)
                and v
                and not is_reference(v)
                and not EMBEDDED_REF_RE.search(v)
            ):
                ctx.add(
                    loc + [k],
                    f"inline secret in '{ks}'",
                    type="inline_secret",
                    hint="give it by reference: '${env:NAME}' or '${file:/path}'",
                )
            else:
                _scan_secrets(ctx, v, loc + [k])
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _scan_secrets(ctx, v, loc + [i])
    elif isinstance(node, str):
        m = URL_PASSWORD_RE.match(node)
        if m and not m.group(1).startswith("${"):
            ctx.add(loc, "inline password in a URL", type="inline_secret", hint="write the password as '${env:NAME}'")


def _check_adapter(ctx: _Ctx, loc: list[Any], name: str, config: dict[str, Any], *, kind: str) -> None:
    known = adapter_registry.available()
    info = known.get(name)
    usable = {n for n, i in known.items() if (i.sink if kind == "sink" else i.source)}
    if info is None or name not in usable:
        why = "unknown adapter" if info is None else f"adapter '{name}' cannot be used as a {kind}"
        ctx.add(
            loc + ["adapter"],
            f"{why} '{name}'; available {kind}s: {', '.join(sorted(usable)) or '(none)'}",
            type="unknown_adapter",
            hint=suggest(name, usable),
        )
        return
    model = info.model_for(kind)
    if model is not None:
        try:
            model.model_validate(config)
        except ValidationError as exc:
            _validation_errors(ctx, exc, model, loc + ["config"])


def _check_sink(ctx: _Ctx, loc: list[Any], sink: SinkSpec) -> None:
    if sink.adapter is not None:
        _check_adapter(ctx, loc, sink.adapter, sink.config, kind="sink")


def _check_expr(ctx: _Ctx, loc: list[Any], text: str | None) -> None:
    if text is None:
        return
    err = check_expr(text)
    if err:
        ctx.add(loc, err, type="expression")


def _check_type_name(ctx: _Ctx, loc: list[Any], name: str | None, *, must_exist: bool) -> None:
    if name is None:
        return
    from esbhub.bus.envelope import TYPE_RE

    if not TYPE_RE.match(name):
        ctx.add(loc, f"'{name}' is not a message type (e.g. 'party.v1')", type="type_name")
    elif must_exist and name not in SCHEMAS:
        ctx.add(
            loc,
            f"unknown schema '{name}'; known: {', '.join(sorted(SCHEMAS))}",
            type="unknown_schema",
            hint=suggest(name, SCHEMAS),
        )


def _check_steps(ctx: _Ctx, steps: list[Any], loc: list[Any], *, top: bool) -> None:
    for i, s in enumerate(steps):
        sl = loc + [i]
        if isinstance(s, ValidateStep):
            _check_type_name(ctx, sl + ["schema"], s.schema_, must_exist=True)
        elif isinstance(s, FilterStep):
            _check_expr(ctx, sl + ["if"], s.if_)
        elif isinstance(s, MapStep):
            for k, v in s.set.items():
                _check_expr(ctx, sl + ["set", k], v)
        elif isinstance(s, EnrichStep):
            if s.mdm:
                _check_expr(ctx, sl + ["mdm", "key"], s.mdm.key)
                fns = registry.lookups()
                if s.mdm.function not in fns:
                    ctx.add(
                        sl + ["mdm", "function"],
                        f"unknown lookup function '{s.mdm.function}'; registered: {', '.join(sorted(fns)) or '(none)'}",
                        type="unknown_function",
                        hint=suggest(s.mdm.function, fns),
                    )
            if s.sql:
                for k, v in s.sql.params.items():
                    _check_expr(ctx, sl + ["sql", "params", k], v)
            if s.http:
                for k, v in s.http.params.items():
                    _check_expr(ctx, sl + ["http", "params", k], v)
                _check_expr(ctx, sl + ["http", "body"], s.http.body)
            if s.soap:
                for k, v in s.soap.params.items():
                    _check_expr(ctx, sl + ["soap", "params", k], v)
                _check_expr(ctx, sl + ["soap", "select"], s.soap.select)
                for key in ("request", "fields"):
                    if key in s.soap.config:
                        ctx.add(sl + ["soap", "config", key], f"'{key}' is not used by a SOAP lookup",
                                type="extra_forbidden", hint="give the request parameters as 'soap.params'")
                _check_adapter(ctx, sl + ["soap"], "soap", soap_lookup_config(s.soap.config), kind="sink")
        elif isinstance(s, ChoiceStep):
            for j, w in enumerate(s.when):
                _check_expr(ctx, sl + ["when", j, "if"], w.if_)
                _check_steps(ctx, w.steps, sl + ["when", j, "steps"], top=False)
                for k, t in enumerate(w.to or []):
                    _check_sink(ctx, sl + ["when", j, "to", k], t)
            if s.otherwise:
                _check_steps(ctx, s.otherwise.steps, sl + ["otherwise", "steps"], top=False)
                for k, t in enumerate(s.otherwise.to or []):
                    _check_sink(ctx, sl + ["otherwise", "to", k], t)
        elif isinstance(s, SplitStep):
            _check_expr(ctx, sl + ["expression"], s.expression)
            _check_type_name(ctx, sl + ["message_type"], s.message_type, must_exist=False)
        elif isinstance(s, AggregateStep):
            _check_expr(ctx, sl + ["correlation"], s.correlation)
            _check_expr(ctx, sl + ["complete_when"], s.complete_when)
            _check_expr(ctx, sl + ["output"], s.output)
            _check_type_name(ctx, sl + ["message_type"], s.message_type, must_exist=False)
        elif isinstance(s, RecipientListStep):
            _check_expr(ctx, sl + ["recipients"], s.recipients)
        elif isinstance(s, WireTapStep):
            _check_sink(ctx, sl + ["to"], s.to)
        elif isinstance(s, CallStep):
            if s.sink is not None:
                _check_sink(ctx, sl + ["sink"], s.sink)
        elif s.type == "code":
            fns = registry.steps()
            if s.function not in fns:
                ctx.add(
                    sl + ["function"],
                    f"unknown code step '{s.function}'; registered: {', '.join(sorted(fns)) or '(none)'}",
                    type="unknown_function",
                    hint=suggest(s.function, fns),
                )
        if not top and isinstance(s, AggregateStep | DelayStep):
            ctx.add(sl + ["type"], f"'{s.type}' must be a top-level step (not inside a choice branch)", type="placement")


def check_route(ctx: _Ctx, route: Route) -> None:
    if route.from_.adapter is not None:
        _check_adapter(ctx, ["from"], route.from_.adapter, route.from_.config, kind="source")
    _check_steps(ctx, route.steps, ["steps"], top=True)
    for i, t in enumerate(route.to):
        _check_sink(ctx, ["to", i], t)
    from esbhub.bus.broker import topic_matches

    for i, t in enumerate(route.to):
        if t.topic is not None and any(topic_matches(p, t.topic) for p in route.from_.topics):
            ctx.add(["to", i, "topic"], f"the route consumes what it publishes ('{t.topic}'): every message would loop",
                    type="loop", hint="publish to another topic (e.g. add a suffix: 'party.enriched.v1')")
    _check_expr(ctx, ["idempotency_key"], route.idempotency_key)
    _check_expr(ctx, ["ordering_key"], route.ordering_key)
    if route.delivery == "at_least_once" and route.on_error.dead_letter == "none":
        ctx.add(
            ["on_error", "dead_letter"],
            "an at_least_once route needs a dead-letter: a message that keeps failing must land somewhere",
            type="no_dead_letter",
            hint="use 'dead_letter: store' or declare 'delivery: at_most_once'",
        )
    for i, t in enumerate(route.tests):
        for j, m in enumerate(t.all_inputs()):
            where = ["tests", i, "input"] if (t.input is not None and j == 0) else ["tests", i, "inputs", j - (1 if t.input else 0)]
            _check_type_name(ctx, where + ["type"], m.type, must_exist=False)


# ---------------------------------------------------------------- entry points


def load_text(text: str, file: str = "<string>", *, extra_tests: str | None = None) -> LoadResult:
    """Parse and validate the routes in ``text``."""
    res = LoadResult()
    try:
        doc = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        res.errors.append(ErrorDetail(loc="(yaml)", msg=f"{exc.problem or exc.context}", type="yaml", file=file, line=line))
        return res
    if doc is None:
        res.errors.append(ErrorDetail(loc="(root)", msg="empty route file", type="empty", file=file, line=1))
        return res
    if isinstance(doc, CommentedMap) and "routes" in doc:
        items = doc["routes"]
        if not isinstance(items, CommentedSeq) or not items:
            _Ctx(file, doc, [], res.errors).add(["routes"], "'routes' must be a non-empty list", type="list_type")
            return res
        entries = [(items[i], ["routes", i], doc) for i in range(len(items))]
    elif isinstance(doc, CommentedMap):
        entries = [(doc, [], doc)]
    else:
        res.errors.append(ErrorDetail(loc="(root)", msg="a route file holds a mapping (one route) or 'routes: [...]'", file=file, line=1))
        return res
    for node, prefix, root in entries:
        sub = _Ctx(file, root, prefix, res.errors)
        _scan_secrets(sub, node, [])
        if not isinstance(node, CommentedMap):
            sub.add([], "a route must be a mapping")
            continue
        try:
            route = Route.model_validate(plain(node))
        except ValidationError as exc:
            _validation_errors(sub, exc, Route, [])
            continue
        n_before = len(res.errors)
        check_route(sub, route)
        if len(res.errors) == n_before:
            line = (node.lc.line + 1) if node.lc.line is not None else 1
            own = text if node is doc else dump_yaml(node)  # a one-route file is stored verbatim (comments kept)
            res.routes.append(LoadedRoute(route=route, file=file, line=line, text=own))
    seen: dict[str, LoadedRoute] = {}
    for lr in res.routes:
        if lr.route.name in seen:
            res.errors.append(
                ErrorDetail(loc="name", msg=f"route '{lr.route.name}' is defined twice (also {seen[lr.route.name].file}:{seen[lr.route.name].line})",
                            type="duplicate", file=lr.file, line=lr.line)
            )
        seen[lr.route.name] = lr
    if extra_tests is not None:
        _attach_tests(res, extra_tests)
    return res


def _attach_tests(res: LoadResult, tests_file: str) -> None:
    """Add the cases of a ``<route>.tests.yaml`` (``tests: [...]``, each naming ``route`` when ambiguous)."""
    text = Path(tests_file).read_text(encoding="utf-8")
    try:
        doc = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        res.errors.append(ErrorDetail(loc="(yaml)", msg=str(exc.problem), type="yaml", file=tests_file, line=mark.line + 1 if mark else None))
        return
    ctx = _Ctx(tests_file, doc, [], res.errors)
    cases = doc.get("tests") if isinstance(doc, CommentedMap) else None
    if not isinstance(cases, CommentedSeq):
        ctx.add(["tests"], "a tests file holds 'tests: [...]'")
        return
    names = res.by_name()
    for i, c in enumerate(cases):
        try:
            t = RouteTest.model_validate(plain(c))
        except ValidationError as exc:
            _validation_errors(ctx, exc, RouteTest, ["tests", i])
            continue
        target = t.route or (res.routes[0].route.name if len(res.routes) == 1 else None)
        if target is None or target not in names:
            ctx.add(["tests", i, "route"], f"test names unknown route '{target}'", hint=suggest(str(target), names))
            continue
        lr = names[target]
        lr.route = lr.route.model_copy(update={"tests": [*lr.route.tests, t]})


def route_files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(
                sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml") and not f.name.endswith((".tests.yaml", ".tests.yml")))
            )
        else:
            out.append(p)
    return out


def tests_file_for(path: Path) -> Path | None:
    for ext in (".tests.yaml", ".tests.yml"):
        cand = path.with_name(path.name[: -len(path.suffix)] + ext)
        if cand.exists():
            return cand
    return None


def load_paths(paths: Iterable[str | Path]) -> LoadResult:
    """Load every route file under ``paths`` (files or directories); names must be unique across them."""
    total = LoadResult()
    for f in route_files(paths):
        try:
            text = f.read_text(encoding="utf-8")
        except OSError as exc:
            total.errors.append(ErrorDetail(loc="(file)", msg=f"cannot read: {exc.strerror}", file=str(f)))
            continue
        tf = tests_file_for(f)
        r = load_text(text, str(f), extra_tests=str(tf) if tf else None)
        total.routes.extend(r.routes)
        total.errors.extend(r.errors)
    seen: dict[str, LoadedRoute] = {}
    for lr in total.routes:
        prev = seen.get(lr.route.name)
        if prev is not None and prev.file != lr.file:
            total.errors.append(
                ErrorDetail(loc="name", msg=f"route '{lr.route.name}' is also defined in {prev.file}:{prev.line}",
                            type="duplicate", file=lr.file, line=lr.line)
            )
        seen[lr.route.name] = lr
    return total

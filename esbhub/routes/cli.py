"""``esbhub routes …`` — lint, schema, docs, test, try, apply, rollback, delete, list, history, pause, resume.

Offline commands (lint, schema, docs, test, try) need no hub; the others use the hub database
(``--database-url`` / settings): a change is validated, stored as a new version, and every
worker swaps to it within its poll interval.
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from esbhub.routes.loader import LoadResult, load_paths


def _settings(ctx: click.Context) -> Any:
    obj = ctx.find_root().obj
    s = getattr(obj, "settings", None)
    if s is not None:
        return s
    from esbhub.config import Settings

    return Settings()


def _default_paths(ctx: click.Context, paths: tuple[str, ...]) -> list[str]:
    if paths:
        return list(paths)
    s = _settings(ctx)
    if s.routes_dir:
        return [str(s.routes_dir)]
    return ["routes"]


def _print_errors(res: LoadResult) -> None:
    for e in res.errors:
        click.echo(str(e), err=True)


def _store(ctx: click.Context) -> Any:
    from sqlalchemy import inspect

    from esbhub.db import engine_for, upgrade
    from esbhub.routes.store import RouteStore

    url = _settings(ctx).effective_database_url
    if not inspect(engine_for(url)).has_table("route_versions"):
        upgrade(url)
    return RouteStore(url)


def _author(author: str | None) -> str:
    if author:
        return author
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


@click.group("routes")
def routes() -> None:
    """Declarative routes: write, lint, test, try, apply, roll back."""


@routes.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.pass_context
def lint(ctx: click.Context, paths: tuple[str, ...]) -> None:
    """Validate route files (default: the routes directory); exit 1 on any error."""
    res = load_paths(_default_paths(ctx, paths))
    _print_errors(res)
    if res.errors:
        click.echo(f"{len(res.errors)} error(s)", err=True)
        sys.exit(1)
    click.echo(f"{len(res.routes)} route(s) OK")


@routes.command()
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
def schema(out: str | None) -> None:
    """Export the JSON Schema of route files (for editors: yaml-language-server)."""
    from esbhub.routes.models import json_schema

    text = json.dumps(json_schema(), indent=2, ensure_ascii=False)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    else:
        click.echo(text)


@routes.command()
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@click.option("--update", type=click.Path(dir_okay=False, exists=True),
              help="Regenerate the reference part of this Markdown file (after its marker line).")
def docs(out: str | None, update: str | None) -> None:
    """Generate the step reference (Markdown) from the step models."""
    from esbhub.routes.docs import reference_markdown, update_file

    if update:
        click.echo(f"{update}: {'updated' if update_file(update) else 'up to date'}")
        return
    text = reference_markdown()
    if out:
        Path(out).write_text(text, encoding="utf-8")
    else:
        click.echo(text)


@routes.command("test")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("-k", "keyword", help="Only test cases whose id contains this text.")
@click.option("-q", "quiet", is_flag=True, help="One character per case.")
@click.pass_context
def test_cmd(ctx: click.Context, paths: tuple[str, ...], keyword: str | None, quiet: bool) -> None:
    """Run the test cases kept beside routes (tests: blocks and <route>.tests.yaml)."""
    from esbhub.routes.testing import report, run_tests

    t0 = time.perf_counter()
    res = load_paths(_default_paths(ctx, paths))
    if res.errors:
        _print_errors(res)
        sys.exit(2)
    results = run_tests(res, keyword=keyword)
    click.echo(report(results, seconds=time.perf_counter() - t0, verbose=not quiet))
    if any(not r.passed for r in results):
        sys.exit(1)


@routes.command("try")
@click.argument("name")
@click.option("--message", "-m", "message", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A YAML/JSON file: {type, payload, headers?, source?} (an envelope).")
@click.option("--path", "-p", "paths", multiple=True, type=click.Path(exists=True),
              help="Route files/dirs to look in (default: the routes directory; then the hub's active version).")
@click.pass_context
def try_cmd(ctx: click.Context, name: str, message: str, paths: tuple[str, ...]) -> None:
    """Dry run: show each step with the message after it and the branch taken. Nothing is sent."""
    import yaml

    from esbhub.routes.models import MessageSpec
    from esbhub.routes.testing import dry_run, envelope_of, format_trace

    candidates = _default_paths(ctx, paths)
    res = load_paths([p for p in candidates if Path(p).exists()])
    routes_by_name = {lr.route.name: lr.route for lr in res.routes}
    route = routes_by_name.get(name)
    if route is None:
        from esbhub.routes.loader import load_text

        v = _store(ctx).get(name)
        if v is None:
            from esbhub.schemas import suggest

            hint = suggest(name, routes_by_name)
            raise click.ClickException(f"no route '{name}'" + (f" ({hint})" if hint else ""))
        r2 = load_text(v["content"], f"{name}@v{v['version']}")
        r2.raise_for_errors()
        route = r2.routes[0].route
    data = yaml.safe_load(Path(message).read_text(encoding="utf-8"))
    try:
        spec = MessageSpec.model_validate(data)
    except Exception as exc:  # noqa: BLE001 - report a bad message file plainly
        raise click.ClickException(f"{message}: not an envelope ({exc})") from None
    env = envelope_of(spec)
    out = dry_run(route, env, routes=routes_by_name)
    click.echo(format_trace(route, env, out))


@routes.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--author", help="Who applies (default: the OS user).")
@click.pass_context
def apply(ctx: click.Context, files: tuple[str, ...], author: str | None) -> None:
    """Validate and store new versions; running workers swap to them. Refused as a whole on any error."""
    from esbhub.routes.runtime import apply_paths

    r = apply_paths(_store(ctx), list(files), author=_author(author))
    if r.errors:
        for e in r.errors:
            click.echo(str(e), err=True)
        click.echo("refused: nothing applied, running versions unchanged", err=True)
        sys.exit(1)
    for v in r.applied:
        click.echo(f"{v['route']}: v{v['version']} applied")
    for n in r.unchanged:
        click.echo(f"{n}: unchanged")


@routes.command()
@click.argument("name")
@click.option("--to", "to", type=int, help="Version to return to (default: the one before the active one).")
@click.option("--author", help="Who rolls back (default: the OS user).")
@click.pass_context
def rollback(ctx: click.Context, name: str, to: int | None, author: str | None) -> None:
    """Make an earlier version active again (stored as a new version)."""
    try:
        v = _store(ctx).rollback(name, to, author=_author(author))
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    click.echo(f"{name}: v{v['version']} active ({v['comment']})")


@routes.command()
@click.argument("name")
@click.option("--author", help="Who deletes (default: the OS user).")
@click.option("--comment", default="", help="Why (kept in the history).")
@click.pass_context
def delete(ctx: click.Context, name: str, author: str | None, comment: str) -> None:
    """Delete a route: workers drain its queue (everything accepted before now is processed), then
    stop it and remove its queue. The version history stays, ending with the deletion (who, when);
    `routes rollback NAME` brings the last version back. Remove its file from routes_dir too, or
    the file watcher applies it again."""
    try:
        v = _store(ctx).delete(name, by=_author(author), comment=comment)
    except KeyError:
        raise click.ClickException(f"no route '{name}'") from None
    click.echo(f"{name}: deleted (v{v['version']} by {v['author']} at {v['created_at']}); workers drain it, then stop it")


@routes.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Routes in the hub: active version, who applied it and when, paused or not."""
    st = _store(ctx)
    paused = st.paused()
    rows = [
        {"route": n, "version": v["version"], "author": v["author"], "created_at": v["created_at"], "paused": n in paused}
        for n, v in sorted(st.active().items())
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['route']:<30} v{r['version']:<4} {'PAUSED ' if r['paused'] else ''}{r['author']} {r['created_at']}")


@routes.command()
@click.argument("name")
@click.option("--diff", "show_diff", is_flag=True, help="Show each version's diff.")
@click.pass_context
def history(ctx: click.Context, name: str, show_diff: bool) -> None:
    """Every version of a route: who, when, what changed."""
    vs = _store(ctx).versions(name)
    if not vs:
        raise click.ClickException(f"no route '{name}'")
    for v in vs:
        click.echo(f"v{v['version']} {v['action']} by {v['author']} at {v['created_at']} {v['comment']}")
        if show_diff:
            click.echo(v["diff"])


def _set_paused(ctx: click.Context, name: str, paused: bool, author: str | None) -> None:
    st = _store(ctx)
    if st.get(name) is None:
        raise click.ClickException(f"no route '{name}'")
    st.set_paused(name, paused, by=_author(author))
    click.echo(f"{name}: {'paused' if paused else 'resumed'}")


@routes.command()
@click.argument("name")
@click.option("--author")
@click.pass_context
def pause(ctx: click.Context, name: str, author: str | None) -> None:
    """Stop consuming a route's queue (messages wait in it)."""
    _set_paused(ctx, name, True, author)


@routes.command()
@click.argument("name")
@click.option("--author")
@click.pass_context
def resume(ctx: click.Context, name: str, author: str | None) -> None:
    """Resume consuming a paused route."""
    _set_paused(ctx, name, False, author)

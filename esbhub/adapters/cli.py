"""``esbhub adapters list|docs|config-schema`` — what adapters exist and how to configure them."""

from __future__ import annotations

import json

import click

from esbhub.adapters.registry import available_adapters, get_adapter
from esbhub.errors import ConfigError


@click.group("adapters")
def adapters() -> None:
    """Protocol adapters (sources and sinks) that routes use in `from` / `to`."""


@adapters.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """List the adapters available in this installation (built-ins + entry points)."""
    specs = available_adapters()
    rows = [
        {
            "name": n,
            "source": s.source_cls is not None,
            "sink": s.sink_cls is not None,
            "description": s.description.strip().splitlines()[0] if s.description.strip() else "",
        }
        for n, s in specs.items()
    ]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for r in rows:
        roles = "/".join(x for x in ("source", "sink") if r[x])
        click.echo(f"{r['name']:<8} {roles:<12} {r['description']}")


@adapters.command("docs")
@click.option("--out", "out_dir", default="docs/adapters", show_default=True, help="Directory to write into.")
@click.argument("names", nargs=-1)
def docs_cmd(out_dir: str, names: tuple[str, ...]) -> None:
    """Write docs/adapters/<name>.md from each adapter's config model."""
    from esbhub.adapters.docs import write_docs

    for n in names:
        get_adapter(n)  # unknown name → did-you-mean
    for p in write_docs(out_dir, list(names) or None):
        click.echo(str(p))


@adapters.command("schema")
@click.argument("name")
@click.option("--role", type=click.Choice(["source", "sink"]), default="sink", show_default=True)
def schema_cmd(name: str, role: str) -> None:
    """Print the JSON Schema of an adapter's config (for editors)."""
    try:
        spec = get_adapter(name)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(spec.config_for(role).model_json_schema(), ensure_ascii=False, indent=2))  # type: ignore[arg-type]

"""Reference docs and the `esbhub adapters` commands come from the config models."""

from __future__ import annotations

import json

from click.testing import CliRunner

from esbhub.adapters.cli import adapters
from esbhub.adapters.docs import render
from esbhub.adapters.registry import get_adapter


def test_rendered_doc_lists_fields_types_defaults_and_marks_secrets():
    doc = render(get_adapter("http"))
    assert doc.startswith("# Adapter `http`")
    assert "| `url` | str | **required** |" in doc
    assert "| `max_attempts` | int | `3` |" in doc
    assert "| `circuit.failure_threshold` | int | `5` |" in doc
    sql = render(get_adapter("sql"))
    assert "## Source config (`SqlSourceConfig`)" in sql and "## Sink config (`SqlSinkConfig`)" in sql
    mqtt = render(get_adapter("mqtt"))
    assert [ln for ln in mqtt.splitlines() if ln.startswith("| `password`")][0].count("yes (") == 1


def test_cli_list_docs_and_schema(tmp_path):
    r = CliRunner().invoke(adapters, ["list", "--json"])
    assert r.exit_code == 0, r.output
    names = {row["name"] for row in json.loads(r.output)}
    assert {"sql", "http", "amqp", "mqtt", "nats", "timer"} <= names
    r = CliRunner().invoke(adapters, ["docs", "--out", str(tmp_path), "sql", "timer"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sql.md", "timer.md"]
    r = CliRunner().invoke(adapters, ["docs", "--out", str(tmp_path), "sqll"])
    assert r.exit_code != 0 and "did you mean 'sql'" in str(r.exception)
    r = CliRunner().invoke(adapters, ["schema", "nats", "--role", "source"])
    assert r.exit_code == 0 and "durable" in json.loads(r.output)["properties"]
    r = CliRunner().invoke(adapters, ["schema", "natz"])
    assert r.exit_code != 0 and "did you mean 'nats'" in r.output

"""`esbhub routes …` end to end with click's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from esbhub.cli import main

from .conftest import EXAMPLES

GOOD = "name: clir\nfrom: {topic: party.v1}\nsteps:\n  - type: map\n    values: {headers.v: '1'}\nto: [{topic: out.v1}]\n"


@pytest.fixture
def cli(tmp_path: Path):
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'hub.db'}"

    def invoke(*args: str):
        return runner.invoke(main, ["--data-dir", str(tmp_path / "var"), "--database-url", db, "routes", *args],
                             catch_exceptions=False)

    return invoke


def test_lint_passes_good_files_and_exits_non_zero_with_file_line_errors(cli, tmp_path: Path):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    r = cli("lint", str(good))
    assert r.exit_code == 0 and "1 route(s) OK" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("type: map", "type: mapp"))
    r = cli("lint", str(bad))
    assert r.exit_code == 1
    assert f"{bad}:4: steps[0].type: unknown step type 'mapp'" in r.output and "did you mean 'map'?" in r.output


def test_lint_and_test_pass_on_the_example_routes(cli):
    assert cli("lint", str(EXAMPLES)).exit_code == 0
    r = cli("test", str(EXAMPLES))
    assert r.exit_code == 0, r.output
    assert "FAILED" not in r.output and " passed in " in r.output and "vip-parties::gold customer" in r.output


def test_test_command_reports_a_failing_case_pytest_style(cli, tmp_path: Path):
    f = tmp_path / "r.yaml"
    f.write_text(GOOD + "tests:\n  - name: wrong header\n    input: {type: party.v1, payload: {}}\n"
                 "    expect:\n      sinks:\n        out.v1: [{headers: {v: '2'}}]\n")
    r = cli("test", str(f))
    assert r.exit_code == 1
    assert "r.yaml::clir::wrong header FAILED" in r.output
    assert "E   sink 'out.v1'[0].headers.v: expected '2', got '1'" in r.output and "1 failed, 0 passed" in r.output


def test_try_prints_each_step_the_branch_and_the_sinks(cli, tmp_path: Path):
    m = tmp_path / "m.yaml"
    m.write_text("type: party.v1\npayload: {source_system: billing, source_id: C1, name: 某公司, attributes: {monthly_revenue: 200000}}\n")
    r = cli("try", "vip-parties", "--message", str(m), "--path", str(EXAMPLES))
    assert r.exit_code == 0, r.output
    out = r.output
    assert "→ steps[0] check-party [validate]" in out and "→ steps[3] by-tier [choice]  branch: when[0]" in out
    assert '"revenue_band": "A"' in out and "⇒ sink 'crm-gold': 1 message(s)" in out


def test_schema_and_docs_are_generated_from_the_models(cli, tmp_path: Path):
    r = cli("schema")
    assert r.exit_code == 0 and "Route" in json.loads(r.output)["$defs"]
    r = cli("docs")
    assert "#### `aggregate`" in r.output and "| `correlation` |" in r.output


def test_apply_rollback_list_history_pause_resume(cli, tmp_path: Path):
    f = tmp_path / "r.yaml"
    f.write_text(GOOD)
    r = cli("apply", str(f), "--author", "alice")
    assert r.exit_code == 0 and "clir: v1 applied" in r.output
    assert "clir: unchanged" in cli("apply", str(f)).output
    f.write_text(GOOD.replace("'1'", "'2'"))
    assert "clir: v2 applied" in cli("apply", str(f), "--author", "bob").output
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("values", "valuez"))
    r = cli("apply", str(bad))
    assert r.exit_code == 1 and "refused" in r.output and "did you mean 'values'?" in r.output
    r = cli("rollback", "clir", "--author", "carol")
    assert r.exit_code == 0 and "v3 active (rollback to v1)" in r.output
    hist = cli("history", "clir", "--diff").output
    assert "v1 apply by alice" in hist and "v3 rollback by carol" in hist and "+    values: {headers.v: '2'}" in hist
    assert cli("pause", "clir").exit_code == 0
    rows = json.loads(cli("list", "--json").output)
    assert rows == [{"route": "clir", "version": 3, "author": "carol", "created_at": rows[0]["created_at"], "paused": True}]
    assert cli("resume", "clir").exit_code == 0 and not json.loads(cli("list", "--json").output)[0]["paused"]
    assert cli("pause", "nope").exit_code != 0
    r = cli("delete", "clir", "--author", "dave", "--comment", "replaced by clir2")
    assert r.exit_code == 0 and "clir: deleted (v4 by dave" in r.output
    assert json.loads(cli("list", "--json").output) == []
    assert "v4 delete by dave" in cli("history", "clir").output and "replaced by clir2" in cli("history", "clir").output
    assert cli("delete", "clir").exit_code != 0  # already deleted


def test_docs_reference_in_the_repo_is_up_to_date(tmp_path: Path):
    from esbhub.routes.docs import update_file

    doc = Path(__file__).resolve().parents[2] / "docs" / "routes.md"
    copy = tmp_path / "routes.md"
    copy.write_text(doc.read_text(encoding="utf-8"), encoding="utf-8")
    assert not update_file(str(copy)), "run: esbhub routes docs --update docs/routes.md"

"""The telecom reference routes lint clean and their own route tests pass."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from esbhub.cli import main

ROUTES = Path(__file__).resolve().parents[2] / "routes" / "telecom"


def test_telecom_routes_lint_clean() -> None:
    r = CliRunner().invoke(main, ["routes", "lint", str(ROUTES)])
    assert r.exit_code == 0, r.output
    assert "10 route(s) OK" in r.output


def test_telecom_route_tests_pass() -> None:
    r = CliRunner().invoke(main, ["routes", "test", str(ROUTES)])
    assert r.exit_code == 0, r.output
    assert "= 29 passed in" in r.output

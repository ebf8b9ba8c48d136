"""`esbhub docs generate` regenerates every reference doc from the models; `--check` catches drift."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, Field, StringConstraints

from esbhub.cli import main
from esbhub.config import Settings
from esbhub.docs import generate, render_schemas
from esbhub.routes.docs import MARKER
from esbhub.schemas import SCHEMAS

REPO_DOCS = Path(__file__).resolve().parents[1] / "docs"


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["docs", "generate", *args])
    return r.exit_code, r.output


def test_generated_docs_in_the_repo_are_up_to_date():
    code, out = _run("--check", "--out", str(REPO_DOCS))
    assert code == 0, f"{out}\nrun: esbhub docs generate (make docs) and commit the result"


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    (tmp_path / "routes.md").write_text("# Routes\n\nHand-written tutorial.\n\n" + MARKER + "\nold reference\n",
                                        encoding="utf-8")
    written = generate(tmp_path)
    assert {p.name for p in written} >= {"schemas.md", "configuration.md", "routes.md", "sql.md"}
    return tmp_path


def test_a_changed_setting_description_makes_check_fail_naming_only_that_file(generated: Path, monkeypatch):
    assert _run("--check", "--out", str(generated)) == (0, "all generated docs are up to date\n")

    monkeypatch.setattr(Settings.model_fields["port"], "description", "Port the API listens on.")
    code, out = _run("--check", "--out", str(generated))
    assert code == 1
    assert f"stale: {generated / 'configuration.md'}" in out
    assert "schemas.md" not in out and "routes.md" not in out
    assert "Port the API listens on." not in (generated / "configuration.md").read_text(encoding="utf-8")

    assert _run("--out", str(generated))[0] == 0  # generate brings it back in line
    assert "| Port the API listens on. |" in (generated / "configuration.md").read_text(encoding="utf-8")
    assert _run("--check", "--out", str(generated))[0] == 0


def test_a_changed_schema_description_makes_check_fail_naming_schemas_md(generated: Path, monkeypatch):
    monkeypatch.setattr(SCHEMAS["payment.v1"].model_fields["amount"], "description", "Paid amount, CNY.")
    code, out = _run("--check", "--out", str(generated))
    assert code == 1
    assert f"stale: {generated / 'schemas.md'}" in out and "configuration.md" not in out


def test_routes_doc_keeps_its_hand_written_part_and_gets_the_generated_reference(generated: Path):
    text = (generated / "routes.md").read_text(encoding="utf-8")
    assert text.startswith("# Routes\n\nHand-written tutorial.\n\n" + MARKER)
    assert "old reference" not in text and "## Reference" in text


class _Line(BaseModel):
    code: Annotated[str, StringConstraints(min_length=2, max_length=8)] = Field(description="Line code.")
    qty: int = Field(default=1, ge=1, le=99, description="How many.")


class _Order(BaseModel):
    """A test order."""

    ref: Annotated[str, StringConstraints(pattern=r"^(A|B)[0-9]+$")] | None = Field(default=None, description="Ref.")
    lines: list[_Line] = Field(min_length=1, description="Order lines.")
    tags: list[Annotated[str, StringConstraints(max_length=5)]] = Field(default_factory=lambda: ["x"])
    at: datetime = Field(default_factory=datetime.now, description="When.")


def test_a_registered_type_is_documented_with_nested_fields_and_constraints(monkeypatch):
    monkeypatch.setitem(SCHEMAS, "test_order.v1", _Order)
    text = render_schemas()
    assert "| [`test_order.v1`](#test_orderv1) | `_Order` | A test order. |" in text
    assert "## test_order.v1" in text
    assert "| `ref` | string \\| null | no | `null` | pattern `^(A\\|B)[0-9]+$` | Ref. |" in text
    assert "| `lines` | list[_Line] | yes | — | min length 1 | Order lines. |" in text
    assert "| `lines[].code` | string | yes | — | min length 2, max length 8 | Line code. |" in text
    assert "| `lines[].qty` | integer | no | `1` | ≥ 1, ≤ 99 | How many. |" in text
    assert "| `tags` | list[string] | no | `[\"x\"]` | items: max length 5 |  |" in text
    # a factory giving a fresh value each time is named, not called (output stays deterministic)
    assert "| `at` | date-time | no | generated at creation (`now()`) |  | When. |" in text
    assert render_schemas() == text


def test_golden_events_and_the_envelope_are_in_the_schema_reference():
    text = render_schemas()
    for t in ("party.golden.created.v1", "party.golden.merged.v1", "party.golden.unmerged.v1"):
        assert f"`{t}`" in text
    assert "## Envelope" in text and "| `correlation_id` | string \\| null | no | `null` |" in text
    assert "esbhub schema export" in text

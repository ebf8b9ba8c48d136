"""`esbhub mdm …` commands end to end on the embedded defaults."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from click.testing import CliRunner

from esbhub.cli import main
from esbhub.config import Settings
from esbhub.mdm.service import service_for
from mdm.fakes import uscc

ROWS = [
    {"source_system": "crm", "source_id": "1", "name": "深圳市华信科技有限公司", "uscc": uscc(1), "phones": "0755-88886666",
     "city": "深圳", "address": "广东省深圳市南山区科技园路1号", "segment": "gold"},
    {"source_system": "billing", "source_id": "A1", "name": "华信科技(深圳)有限责任公司", "uscc": uscc(1),
     "phones": "0755 8888 6666", "city": "深圳", "billing_account": "BA1", "monthly_revenue": "1200000"},
    {"source_system": "crm", "source_id": "9", "name": "广州市远洋物流有限公司", "uscc": uscc(2), "city": "广州"},
    {"source_system": "crm", "source_id": "bad", "name": "", "uscc": "123"},
]


def write_csv(path: Path) -> Path:
    cols = sorted({k for r in ROWS for k in r})
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(ROWS)
    return path


def run(tmp_path: Path, *args: str):
    return CliRunner().invoke(main, ["--data-dir", str(tmp_path / "var"), "mdm", *args], catch_exceptions=False)


def test_load_reports_bad_rows_by_line_and_loads_the_rest_idempotently(tmp_path):
    f = write_csv(tmp_path / "parties.csv")
    r = run(tmp_path, "load", str(f))
    assert r.exit_code == 1
    assert "parties.csv:5" in r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["records"] == 3 and summary["errors"] == 1
    assert summary["events"] == 2  # one batch: one version per golden record (crm:1 + billing:A1, crm:9)
    svc = service_for(Settings(data_dir=tmp_path / "var"))
    before, versions = svc.snapshot(), len(svc.history("G0000000001"))
    again = run(tmp_path, "load", str(f))
    assert again.exit_code == 1  # the bad row again; the good ones are already there
    assert svc.snapshot() == before and len(svc.history("G0000000001")) == versions == 1
    xref = run(tmp_path, "export-xref")
    rows = list(csv.DictReader(xref.stdout.splitlines()))
    assert {(r["source_system"], r["source_id"], r["golden_id"]) for r in rows} == {
        ("crm", "1", "G0000000001"), ("billing", "A1", "G0000000001"), ("crm", "9", "G0000000002")}


def test_explain_prints_per_field_evidence_for_two_source_keys_or_golden_ids(tmp_path):
    run(tmp_path, "load", str(write_csv(tmp_path / "p.csv")))
    r = run(tmp_path, "explain", "crm:1", "billing:A1")
    assert r.exit_code == 0 and "uscc" in r.stdout and "decision match" in r.stdout
    r = run(tmp_path, "explain", "G0000000001", "G0000000002", "--json")
    body = json.loads(r.stdout)
    assert body["cannot_link"] == "cannot_link:uscc_conflict" and body["evidence"]
    r = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "var"), "mdm", "explain", "crm:1", "nope:2"])
    assert r.exit_code == 1 and "nope:2" in r.output


def test_rematch_keeps_the_partition_and_ids(tmp_path):
    run(tmp_path, "load", str(write_csv(tmp_path / "p.csv")))
    before = run(tmp_path, "export-xref").stdout
    r = run(tmp_path, "rematch")
    assert r.exit_code == 0 and json.loads(r.stdout)["changed_golden_records"] == 0
    assert run(tmp_path, "export-xref").stdout == before

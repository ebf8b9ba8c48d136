"""`esbhub mdm …` commands end to end on the embedded defaults."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from click.testing import CliRunner

from esbhub.cli import main
from esbhub.config import Settings
from esbhub.mdm.service import MdmService, service_for
from esbhub.mdm.settings import MdmSettings
from esbhub.mdm.store import Xref
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


def test_load_reads_parquet_and_sql_tables_like_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import sqlalchemy as sa

    good = [r for r in ROWS if r["name"]]
    cols = sorted({k for r in good for k in r})
    pq.write_table(pa.table({c: [r.get(c) for r in good[:2]] for c in cols}), tmp_path / "p.parquet")
    src = f"sqlite:///{tmp_path / 'src.db'}"
    eng = sa.create_engine(src)
    with eng.begin() as c:
        c.execute(sa.text("CREATE TABLE customers (source_system TEXT, source_id TEXT, name TEXT, uscc TEXT, city TEXT)"))
        c.execute(sa.text("INSERT INTO customers VALUES ('crm', '9', :n, :u, '广州')"), {"n": good[2]["name"], "u": good[2]["uscc"]})
    eng.dispose()
    r = run(tmp_path, "load", str(tmp_path / "p.parquet"), "--sql", src, "--table", "customers")
    assert r.exit_code == 0, r.output
    xref = {(x["source_system"], x["source_id"]): x["golden_id"] for x in csv.DictReader(run(tmp_path, "export-xref").stdout.splitlines())}
    assert xref == {("crm", "1"): "G0000000001", ("billing", "A1"): "G0000000001", ("crm", "9"): "G0000000002"}


def test_load_via_bus_publishes_one_party_message_per_row(tmp_path, unique):
    from esbhub.bus.broker import create_broker

    settings = Settings(data_dir=tmp_path / "var")
    broker = create_broker(settings.effective_broker_url)
    broker.connect()
    broker.declare_queue(unique, ["party.v1"])
    r = run(tmp_path, "load", str(write_csv(tmp_path / "p.csv")), "--via-bus")
    assert r.exit_code == 1 and json.loads(r.stdout.strip().splitlines()[-1])["published"] == 3
    got = []
    while (d := broker.get(unique, timeout=0.2)) is not None:
        got.append(d.envelope.payload["source_id"])
        d.ack()
    broker.close()
    assert sorted(got) == ["1", "9", "A1"]


def test_load_reads_party_json_lines_with_nested_fields_and_reports_bad_lines(tmp_path):
    from esbhub.mdm.synth import generate

    records = generate(12, seed=3).records
    lines = [p.model_dump_json(exclude_none=True) for p in records]
    lines[3:3] = ["{not json", "[1, 2]", json.dumps({"source_system": "crm", "source_id": "x"})]  # lines 4, 5, 6
    f = tmp_path / "parties.jsonl"
    f.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    r = run(tmp_path, "load", str(f))
    assert r.exit_code == 1
    assert "parties.jsonl:4: not JSON" in r.stderr and "parties.jsonl:5: a party.v1 record is a JSON object" in r.stderr
    assert "parties.jsonl:6: name:" in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["records"] == len(records)
    svc = service_for(Settings(data_dir=tmp_path / "var"))
    with svc.Session() as s:  # nested fields arrive whole
        for p in records:
            assert s.get(Xref, (p.source_system, p.source_id)).raw == p.model_dump(mode="json", exclude_none=True)
    # batch by batch into another store: the same golden records
    r2 = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "var2"), "mdm", "load", "--batches", str(f)])
    assert r2.exit_code == 1
    other = service_for(Settings(data_dir=tmp_path / "var2"))
    assert svc.partition_now() == other.partition_now()


def test_train_writes_a_candidate_beside_the_hub_model_with_term_frequencies_only_when_asked(tmp_path):
    from esbhub.mdm.match import MatchModel
    from esbhub.mdm.synth import generate

    f = tmp_path / "synth.jsonl"
    f.write_text("".join(p.model_dump_json(exclude_none=True) + "\n" for p in generate(40, seed=3).records),
                 encoding="utf-8")
    assert run(tmp_path, "load", str(f)).exit_code == 0
    plain = run(tmp_path, "train", "--out", str(tmp_path / "plain.json"))
    assert plain.exit_code == 0, plain.output
    assert MatchModel.from_json((tmp_path / "plain.json").read_text(encoding="utf-8")).term_frequencies is None
    tf = run(tmp_path, "train", "--term-frequencies")
    assert tf.exit_code == 0, tf.output
    candidate = tmp_path / "var" / "mdm_model.candidate.json"
    out = json.loads(tf.stdout)
    assert (out["model"], out["next"]) == (str(candidate), f"esbhub mdm rematch --model {candidate}")
    model = MatchModel.from_json(candidate.read_text(encoding="utf-8"))
    assert model.term_frequencies is not None and model.term_frequencies.records == out["records"]
    assert not (tmp_path / "var" / "mdm_model.json").exists()  # what the hub scores with is unchanged


def test_train_then_rematch_makes_the_candidate_the_model_every_process_scores_with(tmp_path):
    from esbhub.mdm.match import MatchModel
    from esbhub.mdm.synth import generate

    f = tmp_path / "synth.jsonl"
    f.write_text("".join(p.model_dump_json(exclude_none=True) + "\n" for p in generate(40, seed=3).records),
                 encoding="utf-8")
    assert run(tmp_path, "load", str(f)).exit_code == 0
    hub = tmp_path / "var" / "mdm_model.json"
    r = fails(tmp_path, "train", "--out", str(hub), code=2)  # never over the hub's model
    assert f"Invalid value for '--out': '{hub}' is mdm.model_path, the model the hub scores with" in r.stderr
    assert not hub.exists()
    candidate = json.loads(run(tmp_path, "train").stdout)["model"]
    r = run(tmp_path, "rematch", "--model", candidate)
    assert r.exit_code == 0, r.output
    applied = MatchModel.from_file(Path(candidate))
    assert MatchModel.from_file(hub) == applied
    assert json.loads(r.stdout)["model"]["fingerprint"] == applied.fingerprint()
    assert json.loads(r.stdout)["model"]["path"] == str(hub)
    fresh = MdmService(Settings(data_dir=tmp_path / "var").effective_database_url, settings=MdmSettings(model_path=hub))
    assert fresh.model_fingerprint == applied.fingerprint()


def test_load_and_train_use_the_mdm_section_of_the_config_file(tmp_path):
    from esbhub.mdm.synth import generate

    cfg = tmp_path / "hub.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\n"
                   "mdm:\n  tiering: {thresholds: {top: 1000000}, below: rest}\n"
                   f"  model_path: {tmp_path / 'models' / 'm.json'}\n", encoding="utf-8")
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("\n".join(p.model_dump_json(exclude_none=True) for p in generate(12, seed=3).records),
                     encoding="utf-8")
    for f in (write_csv(tmp_path / "p.csv"), jsonl):  # the initial (set at a time) load, then batch by batch
        assert CliRunner().invoke(main, ["--config", str(cfg), "mdm", "load", str(f)]).exit_code in (0, 1)
    svc = service_for(Settings.load(cfg))
    assert svc.golden(svc.resolve_id("billing:A1"))["tier"] == "top"
    assert svc.golden(svc.resolve_id("crm:9"))["tier"] == "rest"
    r = CliRunner().invoke(main, ["--config", str(cfg), "mdm", "train"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == str(tmp_path / "models" / "m.candidate.json")
    assert (tmp_path / "models" / "m.candidate.json").exists() and not (tmp_path / "models" / "m.json").exists()


def fails(tmp_path: Path, *args: str, code: int = 1):
    """Run ``esbhub mdm ARGS`` expecting a clean failure: the exit code and no traceback."""
    r = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "var"), "mdm", *args])
    assert r.exit_code == code, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    return r


def stored(tmp_path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(run(tmp_path, "export-xref").stdout.splitlines()))


def test_load_from_a_missing_sql_table_names_table_and_database_with_the_password_masked(tmp_path):
    import sqlalchemy as sa

    src = f"sqlite:///{tmp_path / 'src.db'}"
    eng = sa.create_engine(src)
    with eng.begin() as c:
        c.execute(sa.text("CREATE TABLE customers (source_system TEXT, source_id TEXT, name TEXT)"))
    eng.dispose()
    r = fails(tmp_path, "load", "--sql", src, "--table", "nope")
    assert f"Error: no table 'nope' in {src} (its tables: customers); nothing was loaded" in r.stderr
    r = fails(tmp_path, "load", "--sql", f"sqlite:///{tmp_path / 'typo.db'}", "--table", "customers")
    assert "no database file" in r.stderr and not (tmp_path / "typo.db").exists()  # not made by looking
    r = fails(tmp_path, "load", "--sql", "postgresql+psycopg://hub:s3cr3t@127.0.0.1:1/crm", "--table", "customers")
    assert "cannot read table 'customers' in postgresql+psycopg://hub:***@127.0.0.1:1/crm" in r.stderr
    assert "s3cr3t" not in r.output
    f = write_csv(tmp_path / "p.csv")
    assert "--table needs --sql" in fails(tmp_path, "load", str(f), "--table", "customers", code=2).stderr


def test_a_tsv_file_is_read_tab_separated_and_a_tab_separated_csv_by_its_header(tmp_path):
    cols = sorted({k for r in ROWS for k in r})
    text = "\n".join(["\t".join(cols), *("\t".join(str(r.get(c, "")) for c in cols) for r in ROWS)]) + "\n"
    (tmp_path / "p.tsv").write_text(text, encoding="utf-8")
    r = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "var"), "mdm", "load", str(tmp_path / "p.tsv")])
    assert r.exit_code == 1 and "source_id: Field required" not in r.stderr  # the one bad row: its own faults
    assert "p.tsv:5: name:" in r.stderr and json.loads(r.stdout.strip().splitlines()[-1])["records"] == 3
    (tmp_path / "tabs.csv").write_text(text, encoding="utf-8")
    r = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "var2"), "mdm", "load", str(tmp_path / "tabs.csv")])
    assert json.loads(r.stdout.strip().splitlines()[-1])["records"] == 3
    (tmp_path / "mac.tsv").write_text(text.replace("\n", "\r"), encoding="utf-8")  # lines ended by CR alone
    r = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "var3"), "mdm", "load", str(tmp_path / "mac.tsv")])
    assert "mac.tsv:5: name:" in r.stderr and json.loads(r.stdout.strip().splitlines()[-1])["records"] == 3


def test_a_header_without_a_required_column_names_the_column_the_file_and_the_line(tmp_path):
    f = tmp_path / "nosid.csv"
    f.write_text("source_system,name\ncrm,深圳市华信科技有限公司\n", encoding="utf-8")
    r = fails(tmp_path, "load", str(write_csv(tmp_path / "good.csv")), str(f))
    assert f"{f}:1: no column 'source_id'; the columns are: 'source_system', 'name'; nothing was loaded" in r.stderr
    assert stored(tmp_path) == []  # the good file before it was not loaded either
    f.write_text("source_id,name\n1,深圳市华信科技有限公司\n", encoding="utf-8")
    assert "no column 'source_system' (or give a default system: --system)" in fails(tmp_path, "load", str(f)).stderr
    assert run(tmp_path, "load", "--system", "crm", str(f)).exit_code == 0


def test_sources_that_cannot_be_read_are_named_with_why_and_load_nothing(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "latin.csv").write_bytes("source_system,source_id,nam\xe9\n".encode("latin-1"))
    (tmp_path / "p.xlsx").write_bytes(b"PK")
    (tmp_path / "p.parquet").write_bytes(b"not parquet")
    assert "empty.csv: empty file: the first line must name the columns" in fails(
        tmp_path, "load", str(tmp_path / "empty.csv")).stderr
    assert "latin.csv:1: the header line is not UTF-8 text: byte 28 of the line is b'\\xe9'" in fails(
        tmp_path, "load", str(tmp_path / "latin.csv")).stderr
    assert "p.xlsx: unknown file type '.xlsx'; known: .csv .tsv .txt" in fails(
        tmp_path, "load", str(tmp_path / "p.xlsx")).stderr
    assert "p.parquet: not a Parquet file" in fails(tmp_path, "load", str(tmp_path / "p.parquet")).stderr


def test_rows_that_cannot_be_read_are_reported_by_line_and_the_rest_loaded(tmp_path):
    f = tmp_path / "p.csv"
    f.write_bytes(
        b"source_system,source_id,name\n"
        + "crm,1,深圳市华信科技有限公司\n".encode()
        + "crm,2,广州市远洋物流有限公司\n".encode("gb18030")  # line 3: not UTF-8
        + b"crm,3," + b"x" * 200_000 + b"\n"  # line 4: a value beyond the csv module's limit
        + "crm,4,杭州市西湖电子有限公司,extra\n".encode()  # line 5: one value more than the header
        + "crm,5,南京市玄武软件有限公司\n".encode()
    )
    r = fails(tmp_path, "load", "--no-publish", str(f))
    assert f"{f}:3: not UTF-8 text: byte 7 of the line" in r.stderr
    assert f"{f}:4: not CSV: field larger than field limit" in r.stderr
    assert f"{f}:5: 1 value(s) more than the header has columns ('extra')" in r.stderr
    assert {x["source_id"] for x in stored(tmp_path)} == {"1", "5"}


def test_explain_of_one_record_with_itself_is_a_clean_error(tmp_path):
    run(tmp_path, "load", str(write_csv(tmp_path / "p.csv")))
    r = fails(tmp_path, "explain", "crm:9", "crm:9")
    assert "Error: nothing to compare: 'crm:9' and 'crm:9' are one and the same source record crm:9" in r.stderr
    assert "B: no golden record or source key 'nope:2'" in fails(tmp_path, "explain", "crm:9", "nope:2").stderr


def test_a_model_file_that_is_not_json_or_not_a_match_model_is_named_with_its_line_or_field(tmp_path):
    run(tmp_path, "load", str(write_csv(tmp_path / "p.csv")))
    m = tmp_path / "m.json"
    m.write_text('{\n  "merge_threshold": 0.99,\n  oops\n}', encoding="utf-8")
    r = fails(tmp_path, "rematch", "--model", str(m))
    assert f"--model: match model {m} is not JSON; nothing was re-matched\n  - {m}:3: (json): " in r.stderr
    m.write_text('{"merge_threshold": "high", "colour": 1}', encoding="utf-8")
    r = fails(tmp_path, "rematch", "--model", str(m))
    assert f"{m}: merge_threshold: Input should be a valid number" in r.stderr
    assert f"{m}: colour: Extra inputs are not permitted" in r.stderr
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mdm_model.json").write_text("[]", encoding="utf-8")  # a hub's own model, broken
    r = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "other"), "mdm", "explain", "crm:1", "crm:9"])
    assert r.exit_code == 1 and r.exception is None or isinstance(r.exception, SystemExit)
    assert f"{tmp_path / 'other' / 'mdm_model.json'}: (root): Input should be a valid dictionary" in r.stderr


def test_a_rematch_whose_events_cannot_be_published_says_it_committed_and_they_wait_in_the_outbox(tmp_path, monkeypatch):
    from esbhub.errors import BrokerUnavailable
    from esbhub.mdm import cli as mdm_cli
    from esbhub.mdm.match import MatchModel

    run(tmp_path, "load", str(write_csv(tmp_path / "p.csv")))
    (tmp_path / "m.json").write_text(MatchModel(merge_threshold=1.0, review_threshold=1.0).model_dump_json())
    real_broker = mdm_cli._broker

    def down() -> None:
        raise BrokerUnavailable("RabbitMQ unavailable (connect): ConnectionRefusedError")

    monkeypatch.setattr(mdm_cli, "_broker", down)
    r = fails(tmp_path, "rematch", "--model", str(tmp_path / "m.json"))
    out = json.loads(r.stdout)
    assert {k: out[k] for k in ("changed_golden_records", "events_published", "events_pending")} == {
        "changed_golden_records": 2, "events_published": 0, "events_pending": 2}
    assert ("the rematch committed (2 golden records changed), but publishing its events failed: BrokerUnavailable: "
            "RabbitMQ unavailable") in r.stderr
    assert "They stay in the MDM outbox (2 pending) and go out with 'esbhub mdm publish-pending'" in r.stderr
    svc = service_for(Settings(data_dir=tmp_path / "var"))
    assert svc.audit()[0]["action"] == "rematch" and len({x["golden_id"] for x in stored(tmp_path)}) == 3
    monkeypatch.setattr(mdm_cli, "_broker", real_broker)
    r = run(tmp_path, "publish-pending")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"events_published": 2, "events_pending": 0}


def test_writing_the_xref_or_a_model_where_it_cannot_be_written_is_a_clean_error(tmp_path):
    from esbhub.mdm.synth import generate

    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(p.model_dump_json(exclude_none=True) for p in generate(12, seed=3).records), encoding="utf-8")
    run(tmp_path, "load", str(f))
    (tmp_path / "file").write_text("")
    r = fails(tmp_path, "export-xref", "--out", str(tmp_path / "file" / "x.csv"))
    assert f"--out: cannot write '{tmp_path / 'file' / 'x.csv'}': Not a directory" in r.stderr
    r = fails(tmp_path, "train", "--out", str(tmp_path / "file" / "m.json"))
    assert f"--out: cannot write the model to '{tmp_path / 'file' / 'm.json'}'" in r.stderr

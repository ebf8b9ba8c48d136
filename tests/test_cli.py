"""The `esbhub` command: help, keys, schema export, db upgrade, and `serve` end to end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from waiting import wait_for

from esbhub.cli import main

PAYMENT = {"payment_id": "TX-9", "bank": "ICBC", "payer_name": "A", "amount": "10.00", "paid_at": "2026-11-25T10:00:00Z"}


def run(*args: str, data_dir: Path | None = None, input: str | None = None):
    pre = ["--data-dir", str(data_dir)] if data_dir else []
    return CliRunner().invoke(main, [*pre, *args], input=input, catch_exceptions=False)


def test_help_lists_every_command():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("serve", "worker", "send", "dlq", "schema", "db", "keys"):
        assert f"  {cmd} " in r.output, cmd
    sub = run("dlq", "--help").output
    assert all(c in sub for c in ("list", "show", "edit", "replay", "discard"))
    assert "--port" in run("serve", "--help").output


def test_keys_create_list_revoke(tmp_path):
    assert run("db", "upgrade", data_dir=tmp_path).exit_code == 0
    r = run("keys", "create", "billing", "--scope", "ingest", "--type", "bill.v1", data_dir=tmp_path)
    assert r.exit_code == 0, r.output
    kid = r.output.split("key id:")[1].split()[0]
    key = r.output.split("key:")[1].split()[0]
    listed = json.loads(run("keys", "list", "--json", data_dir=tmp_path).output)
    assert [k["key_id"] for k in listed] == [kid] and key not in json.dumps(listed)
    assert run("keys", "revoke", kid, data_dir=tmp_path).exit_code == 0
    assert run("keys", "revoke", kid, data_dir=tmp_path).exit_code != 0
    assert json.loads(run("keys", "list", "--json", data_dir=tmp_path).output)[0]["active"] is False


def test_schema_export_writes_one_file_per_type(tmp_path):
    r = run("schema", "export", "--out", str(tmp_path / "s"))
    assert r.exit_code == 0
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert "payment.v1.json" in names and "party.v1.json" in names
    assert "amount" in json.loads((tmp_path / "s" / "payment.v1.json").read_text())["properties"]


def test_invalid_settings_are_a_clear_usage_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("port: 99999\n")
    r = CliRunner().invoke(main, ["--config", str(cfg), "keys", "list"])
    assert r.exit_code == 2 and "port" in r.output


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def served(tmp_path, unique):
    """Start `esbhub serve` on a free port (embedded defaults, one worker); stop it with SIGTERM."""
    procs = []

    def start():
        port = free_port()
        out = tmp_path / f"serve-{len(procs)}.out"
        fh = out.open("wb")
        p = subprocess.Popen(
            [sys.executable, "-m", "esbhub.cli", "--data-dir", str(tmp_path / "var"), "serve", "--port", str(port)],
            stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        procs.append(p)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _healthy(url) or p.poll() is not None, 30, "esbhub serve to answer /healthz", interval=0.1)
        finally:
            if p.poll() is not None:
                raise AssertionError(out.read_text())
        return p, url, out

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(p) -> int:
    p.send_signal(signal.SIGTERM)
    return p.wait(20)


def test_serve_starts_prints_url_answers_and_stops_cleanly_on_sigterm(served, tmp_path):
    p, url, out = served()
    key = (tmp_path / "var" / "admin.key").read_text().strip()
    text = out.read_text()
    assert url in text and key in text
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    assert httpx.post(f"{url}/v1/messages/payment.v1", json=PAYMENT, timeout=5).status_code == 401
    r = httpx.post(f"{url}/v1/messages/payment.v1", json=PAYMENT, headers={"X-API-Key": key}, timeout=5)
    assert r.status_code == 202
    mid = r.json()["id"]
    state = httpx.get(f"{url}/v1/messages/{mid}", headers={"X-API-Key": key}, timeout=5).json()
    assert state["id"] == mid and state["type"] == "payment.v1"
    # `esbhub send` finds the admin key in the data dir
    sent = run("send", "payment.v1", "-", "--url", url, data_dir=tmp_path / "var", input=json.dumps(PAYMENT))
    assert sent.exit_code == 0 and json.loads(sent.output)["id"]
    wait_for(lambda: "worker_started" in out.read_text(), 30, "the worker process to start", interval=0.1)
    assert _stop(p) == 0
    text = out.read_text()
    assert "worker_stopped" in text and "esbhub stopped" in text  # workers stopped before serve exits


def test_serve_prints_the_admin_key_on_first_start_only(tmp_path, monkeypatch):
    import esbhub.cli as cli

    monkeypatch.setattr(cli, "_run_http", lambda settings, n: None)  # everything but the HTTP server
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    first = run("serve", "--no-worker", data_dir=tmp_path / "var")
    key = (tmp_path / "var" / "admin.key").read_text().strip()
    assert first.exit_code == 0 and key in first.output and "shown once" in first.output
    second = run("serve", "--no-worker", data_dir=tmp_path / "var")
    assert second.exit_code == 0 and key not in second.output and "admin.key" in second.output


def test_dlq_commands_list_show_edit_replay_discard(tmp_path, unique):
    from esbhub.bus.broker import create_broker
    from esbhub.bus.envelope import Envelope
    from esbhub.bus.store import BusStore
    from esbhub.errors import ErrorInfo, PermanentError

    data = tmp_path / "var"
    assert run("db", "upgrade", data_dir=data).exit_code == 0
    store = BusStore(f"sqlite:///{data / 'hub.db'}")
    broker = create_broker(f"sqlite:///{data / 'broker.db'}")
    broker.connect()
    broker.declare_queue(f"route.{unique}", [])  # as the worker of that route would
    ids = [store.dead_letter(Envelope.create("payment.v1", {**PAYMENT, "payment_id": f"TX-{i}"}, source="bank"),
                             unique, ErrorInfo.from_exception(PermanentError("no such bank")), attempts=2)
           for i in range(3)]
    listed = run("dlq", "list", "--subscription", unique, data_dir=data)
    assert listed.exit_code == 0 and all(i in listed.output for i in ids) and "no such bank" in listed.output
    shown = json.loads(run("dlq", "show", ids[0], data_dir=data).output)
    assert shown["envelope"]["payload"]["payment_id"] == "TX-0"
    bad = run("dlq", "edit", ids[0], "-", data_dir=data, input=json.dumps({**PAYMENT, "amount": "x"}))
    assert bad.exit_code != 0 and "payload.amount" in bad.output
    assert run("dlq", "edit", ids[0], "-", data_dir=data, input=json.dumps({**PAYMENT, "payment_id": "FIXED"})).exit_code == 0
    assert "replayed 1" in run("dlq", "replay", ids[0], data_dir=data).output
    assert "discarded 1" in run("dlq", "discard", ids[1], "--reason", "dup", data_dir=data).output
    assert "replayed 1" in run("dlq", "replay", "--all-matching", "--subscription", unique, "--rate", "100",
                               data_dir=data).output
    assert run("dlq", "replay", data_dir=data).exit_code == 2  # neither ids nor --all-matching
    assert broker.queue_depth(f"route.{unique}") == 2
    first = broker.get(f"route.{unique}", timeout=1)
    assert first.envelope.payload["payment_id"] == "FIXED"
    broker.close()
    store.close()


def test_send_direct_validates_and_publishes_without_http(tmp_path, unique):
    from esbhub.bus.broker import create_broker

    data = tmp_path / "var"
    assert run("db", "upgrade", data_dir=data).exit_code == 0
    broker = create_broker(f"sqlite:///{data / 'broker.db'}")
    broker.connect()
    broker.declare_queue(f"route.{unique}", ["payment.v1"])
    bad = run("send", "payment.v1", "-", "--direct", data_dir=data, input=json.dumps({**PAYMENT, "amount": "-1"}))
    assert bad.exit_code != 0 and "payload.amount" in bad.output
    assert broker.queue_depth(f"route.{unique}") == 0
    ok = run("send", "payment.v1", "-", "--direct", "--source", "bank", data_dir=data, input=json.dumps(PAYMENT))
    assert ok.exit_code == 0, ok.output
    d = broker.get(f"route.{unique}", timeout=2)
    assert d.envelope.id == json.loads(ok.output)["id"] and d.envelope.source == "bank"
    d.ack()
    broker.close()


def test_send_over_http_without_a_key_is_a_usage_error(tmp_path):
    r = run("send", "payment.v1", "-", "--url", "http://127.0.0.1:9", data_dir=tmp_path / "v", input="{}")
    assert r.exit_code == 2 and "API key" in r.output


def test_config_file_settings_are_used(tmp_path):
    data = tmp_path / "from-yaml"
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(f"data_dir: {data}\n")
    r = CliRunner().invoke(main, ["--config", str(cfg), "db", "upgrade"], catch_exceptions=False)
    assert r.exit_code == 0 and (data / "hub.db").exists()


def test_worker_makes_its_settings_the_process_settings_its_sinks_read(tmp_path, monkeypatch):
    """`esbhub worker --config hub.yaml`: an mdm_link sink or an enrich.mdm look-up (not handed the
    settings) reads the file's database and mdm section, not the environment alone."""
    from esbhub.bus.worker import Worker
    from esbhub.config import process_settings, set_process_settings

    cfg = tmp_path / "hub.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\nmdm: {{tiering: {{thresholds: {{gold: 5}}}}}}\n", encoding="utf-8")
    seen = []
    monkeypatch.setattr(Worker, "run_forever", lambda self: seen.append(process_settings()))
    before = set_process_settings(None)
    try:
        r = CliRunner().invoke(main, ["--config", str(cfg), "worker"], catch_exceptions=False)
    finally:
        set_process_settings(before)
    assert r.exit_code == 0, r.output
    [s] = seen
    assert s.data_dir == tmp_path / "var" and s.mdm.tiering.thresholds == {"gold": 5}

"""``esbhub serve --demo``: the real hub (API + worker process) runs the demo and prints a checked summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def test_serve_demo_prints_url_key_and_a_reconciled_summary(tmp_path: Path, free_tcp_port: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESBHUB_")}
    env.update(ESBHUB_DEMO_EXIT="1", ESBHUB_DEMO_COMPANIES="30", ESBHUB_DEMO_SEED="7")
    p = subprocess.run(
        [sys.executable, "-m", "esbhub.cli", "--data-dir", str(tmp_path), "--log-level", "warning",
         "serve", "--demo", "--port", str(free_tcp_port)],
        env=env, capture_output=True, text=True, timeout=150,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "FAILED" not in out, out[-3000:]
    assert f"hub: http://127.0.0.1:{free_tcp_port}" in out
    assert "admin key: esb_" in out
    assert "false merges 0" in out
    assert "missing 0, unexpected 0, wrong amount 0" in out
    assert "→ reconciled; dead letters 0" in out
    assert "0 left inconsistent" in out
    assert "files: bank over SFTP, archived; bills over FTP, archived" in out  # through the workers' sftp/ftp sources
    # billing's changes through the API's /soap endpoint (zeep client, its own API key), resource's
    # from the inventory's outbox table through the workers' sql source: all of them, none another way
    soap = re.search(r"billing customer changes over SOAP (\d+)/(\d+)", out)
    sql = re.search(r"resource customer changes by SQL polling (\d+)/(\d+)", out)
    assert soap and sql, out[-3000:]
    assert soap.group(1) == soap.group(2) != "0" and sql.group(1) == sql.group(2) != "0", out[-3000:]
    assert (tmp_path / "demo" / "bank-sftp" / "outbox" / "archive").is_dir()
    assert (tmp_path / "demo" / "hub.db").exists()  # the demo ran in its own fresh data dir

"""The built-in ``enrich.mdm`` look-ups (esbhub/routes/lookups.py) read the process's MDM."""

from __future__ import annotations

import pytest

from esbhub.config import Settings, set_process_settings
from esbhub.routes import lookups


@pytest.fixture
def fresh_lookups():
    lookups._svc = None
    yield
    lookups._svc = None


def test_lookups_read_the_database_and_mdm_settings_the_worker_runs_with(tmp_path, fresh_lookups):
    worker = Settings(data_dir=tmp_path, mdm={"tiering": {"thresholds": {"gold": 1.0}}})
    before = set_process_settings(worker)
    try:
        svc = lookups._service()
    finally:
        set_process_settings(before)
    assert svc.url == worker.effective_database_url and svc.settings.tiering == worker.mdm.tiering

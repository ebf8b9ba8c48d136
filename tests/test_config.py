from __future__ import annotations

import pytest
from pydantic import ValidationError

from esbhub.config import RetryPolicy, Settings
from esbhub.errors import ConfigError
from esbhub.secrets import redact_url, resolve_url


@pytest.mark.parametrize("field", ["broker_url", "database_url"])
def test_settings_refuse_an_inline_password_in_a_url(field, tmp_path):
    with pytest.raises(ValidationError, match="must be a reference"):
        Settings(data_dir=tmp_path, **{field: "postgresql+psycopg://hub:hunter2@db/hub"})


def test_settings_accept_a_password_reference_and_embedded_defaults_live_in_data_dir(tmp_path):
    s = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://hub:${env:PGPASS}@db/hub")
    assert s.database_url.endswith("${env:PGPASS}@db/hub")
    assert s.embedded and s.effective_broker_url == f"sqlite:///{tmp_path / 'broker.db'}"


def test_url_password_reference_is_resolved_url_quoted_and_redacted_for_logs(monkeypatch):
    monkeypatch.setenv("PGPASS", "p@ss/word")
    url = "postgresql+psycopg://hub:${env:PGPASS}@db:5432/hub"
    assert resolve_url(url) == "postgresql+psycopg://hub:p%40ss%2Fword@db:5432/hub"
    assert redact_url(resolve_url(url)) == "postgresql+psycopg://hub:***@db:5432/hub"


def test_unset_password_reference_is_a_config_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match="NOPE_NOT_SET"):
        resolve_url("amqp://hub:${env:NOPE_NOT_SET}@mq//")


def test_database_engine_resolves_the_password_reference(monkeypatch, pg_url):
    import sqlalchemy as sa

    from esbhub.db import make_engine

    monkeypatch.setenv("ESBHUB_TEST_PG_PW", "anything")  # trust auth here: any password connects
    ref_url = pg_url.replace("postgres@", "postgres:${env:ESBHUB_TEST_PG_PW}@", 1)
    eng = make_engine(ref_url)
    try:
        with eng.connect() as c:
            assert c.execute(sa.text("select 1")).scalar() == 1
        assert eng.url.password == "anything"
    finally:
        eng.dispose()


def test_retry_delay_grows_exponentially_with_jitter_and_is_capped():
    p = RetryPolicy(initial_delay=1, multiplier=2, max_delay=5, jitter=0.2)
    assert p.delay_for(1, rand=0.5) == 1
    assert p.delay_for(3, rand=0.5) == 4
    assert p.delay_for(10, rand=0.5) == 5
    assert 0.8 <= p.delay_for(1, rand=0.0) < p.delay_for(1, rand=0.99) <= 1.2


# ------------------------------------------------------------------------- the mdm section
def _yaml(tmp_path, text: str):
    path = tmp_path / "hub.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_documented_mdm_example_loads_from_the_config_file_with_its_tiers_and_trust(tmp_path):
    from esbhub.mdm.settings import EXAMPLE_YAML

    s = Settings.load(_yaml(tmp_path, EXAMPLE_YAML), data_dir=str(tmp_path))
    assert s.mdm.tiering.thresholds == {"A": 2_000_000, "B": 200_000, "C": 20_000}
    assert s.mdm.tiering.tier(150_000) == "C"
    assert s.mdm.survivorship.rule_for("address").trust == {"crm": 100, "resource": 80, "billing": 60, "*": 30}
    assert s.mdm.survivorship.rule_for("industry").rules == ["override", "trust", "recency"]


def test_the_mdm_section_comes_from_the_environment_as_json_like_retry(monkeypatch, tmp_path):
    monkeypatch.setenv("ESBHUB_MDM", '{"tiering": {"thresholds": {"gold": 500000}, "below": "std"}, "search_limit": 5}')
    s = Settings(data_dir=tmp_path)
    assert s.mdm.tiering.tier(600_000) == "gold" and s.mdm.tiering.tier(10) == "std" and s.mdm.search_limit == 5


@pytest.mark.parametrize(("mdm_yaml", "loc", "msg"), [
    ("tiering: {thresholds: {gold: -5, silver: 100}}", ("mdm", "tiering", "thresholds", "gold"),
     "greater than or equal to 0"),
    ("tiering: {thresholds: {gold: 100, silver: 100}}", ("mdm", "tiering", "thresholds"),
     "tiers 'gold' and 'silver' have the same threshold 100"),
    ("tiering: {thresholds: {A: 100}, below: A}", ("mdm", "tiering", "below"), "'A' is also a tier of 'thresholds'"),
    ("tiering: {thresholds: {platinum+: 100}}", ("mdm", "tiering", "thresholds", "platinum+", "[key]"),
     "at most 8 characters"),
    ("survivorship: {attributes: {address: {rules: [trust, newest]}}}",
     ("mdm", "survivorship", "attributes", "address", "rules", 1), "'override', 'trust', 'valid'"),
    ("survivorship: {attributes: {address: {rules: [trust, recency, trust]}}}",
     ("mdm", "survivorship", "attributes", "address", "rules"), "'trust' is listed twice"),
    ("survivorship: {attributes: {nmae: {trust: {crm: 100}}}}", ("mdm", "survivorship", "attributes", "nmae", "[key]"),
     "no golden attribute 'nmae' (did you mean 'name'?)"),
    ("survivorship: {attributes: {address: {trust: {crm: 101}}}}",
     ("mdm", "survivorship", "attributes", "address", "trust", "crm"), "less than or equal to 100"),
    ("survivorship: {default: {trust: {crm: -1}}}", ("mdm", "survivorship", "default", "trust", "crm"),
     "greater than or equal to 0"),
    ("survivorship: {attributes: {name: {collect: true}}}", ("mdm", "survivorship", "attributes"),
     "name.collect: 'name' is a single value"),
])
def test_a_bad_mdm_setting_is_refused_at_load_naming_where_and_why(tmp_path, mdm_yaml, loc, msg):
    with pytest.raises(ValidationError) as info:
        Settings.load(_yaml(tmp_path, f"mdm:\n  {mdm_yaml}\n"), data_dir=str(tmp_path))
    [err] = info.value.errors()
    assert err["loc"] == loc and msg in err["msg"]


def test_a_bad_mdm_setting_stops_esbhub_at_startup_with_its_path(tmp_path):
    from click.testing import CliRunner

    from esbhub.cli import main

    cfg = _yaml(tmp_path, "mdm:\n  tiering:\n    thresholds: {gold: -5}\n"
                          "  survivorship:\n    attributes:\n      address: {trust: {crm: 150}}\n")
    r = CliRunner().invoke(main, ["--config", str(cfg), "--data-dir", str(tmp_path), "mdm", "export-xref"])
    assert r.exit_code == 2 and "invalid settings" in r.output
    assert "mdm.tiering.thresholds.gold: Input should be greater than or equal to 0" in r.output
    assert "mdm.survivorship.attributes.address.trust.crm: Input should be less than or equal to 100" in r.output


def test_process_settings_are_the_ones_set_else_those_of_the_config_file_esbhub_config_names(monkeypatch, tmp_path):
    from esbhub.config import process_settings, set_process_settings

    monkeypatch.setenv("ESBHUB_CONFIG", str(_yaml(tmp_path, f"data_dir: {tmp_path}\nmdm: {{queue: mdm-east}}\n")))
    assert process_settings().mdm.queue == "mdm-east" and process_settings().data_dir == tmp_path
    mine = Settings(data_dir=tmp_path / "other")
    before = set_process_settings(mine)
    try:
        assert process_settings() is mine
    finally:
        set_process_settings(before)
    assert process_settings().mdm.queue == "mdm-east"


def test_the_mdm_section_survives_the_json_trip_to_the_http_worker_processes(tmp_path):
    """``esbhub serve --http-workers`` hands its settings over as JSON (``ESBHUBSERVE_SETTINGS``)."""
    import json

    from esbhub.mdm.settings import EXAMPLE_YAML

    s = Settings.load(_yaml(tmp_path, EXAMPLE_YAML + "  model_path: models/v2.json\n"), data_dir=str(tmp_path))
    assert Settings(**json.loads(s.model_dump_json())).mdm == s.mdm


def test_the_production_example_loads_with_its_mdm_section():
    from pathlib import Path

    s = Settings.load(Path(__file__).resolve().parents[1] / "deploy" / "production.example.yaml")
    assert s.mdm.tiering.tier(150_000) == "B"
    assert s.mdm.survivorship.rule_for("account_manager").trust["crm"] == 100
    assert s.mdm.survivorship.rule_for("account_manager").rules == ["override", "trust", "recency"]  # kept

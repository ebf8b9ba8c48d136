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

"""Shared fixtures. Real services run on this machine (scripts/services.sh starts them):
PostgreSQL 5432, MariaDB 3306, RabbitMQ 5672, Mosquitto 1883, NATS 4222, Redis 6379."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from esbhub.config import Settings

RABBIT_URL = os.environ.get("ESBHUB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
PG_ADMIN_URL = os.environ.get("ESBHUB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN_URL = os.environ.get("ESBHUB_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unique() -> str:
    """A short unique name for queues, exchanges, tables of one test."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-default settings in a fresh data dir."""
    return Settings(data_dir=tmp_path / "var")


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    if not port_open(5672):
        pytest.fail("RabbitMQ is not running on 127.0.0.1:5672 (run scripts/services.sh)")
    return RABBIT_URL


@pytest.fixture(params=["embedded", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every behaviour test runs against both broker backends."""
    if request.param == "embedded":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return request.getfixturevalue("rabbit_url")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    import sqlalchemy as sa

    if not port_open(5432):
        pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 (run scripts/services.sh)")
    name = f"esbhub_test_{os.getpid()}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    from esbhub.db import _engines

    for url, eng in list(_engines.items()):
        if name in url:
            eng.dispose()
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def mysql_url() -> str:
    if not port_open(3306):
        pytest.fail("MariaDB is not running on 127.0.0.1:3306 (run scripts/services.sh)")
    return MYSQL_ADMIN_URL


@pytest.fixture(autouse=True)
def _adapter_registry_restored() -> Iterator[None]:
    """Adapters a test registers (registry.register) do not leak into later tests."""
    from esbhub.adapters import registry

    before = None if registry._cache is None else dict(registry._cache)
    yield
    with registry._lock:
        registry._cache = before

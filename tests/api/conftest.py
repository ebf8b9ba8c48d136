from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from esbhub.api.app import create_app
from esbhub.auth.store import ApiKey, ApiKeyStore
from esbhub.config import Settings
from esbhub.db import engine_for

from .doubles import FakeBroker, FakeRequester, FakeStore


@dataclass
class ApiHarness:
    client: TestClient
    broker: Any
    store: Any
    keys: ApiKeyStore
    admin: str
    settings: Settings
    replies: dict

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin}"}


def key_store(settings: Settings) -> ApiKeyStore:
    url = settings.effective_database_url
    ApiKey.__table__.create(engine_for(url), checkfirst=True)
    return ApiKeyStore(url)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    """The app over a fake broker/store (to see exactly what was published) and real API keys."""
    settings = Settings(data_dir=tmp_path / "var", max_body_bytes=4096)
    broker, store, keys = FakeBroker(), FakeStore(), key_store(settings)
    _kid, admin = keys.create("admin", scopes=["admin"])
    replies: dict = {}

    def requester(b: Any) -> FakeRequester:
        return FakeRequester(b, lambda env: replies.get("reply") and replies["reply"](env))

    app = create_app(settings, broker=broker, store=store, keys=keys, requester_factory=requester)
    with TestClient(app) as client:
        yield ApiHarness(client, broker, store, keys, admin, settings, replies)

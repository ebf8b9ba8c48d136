"""Hub settings: one pydantic-settings model, read from ``ESBHUB_*`` environment variables
or a YAML file (``--config``). Embedded defaults need no external service: SQLite files
under ``data_dir`` for both the broker and the hub database.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from esbhub.mdm.settings import MdmSettings
from esbhub.secrets import check_url_secret

CONFIG_ENV = "ESBHUB_CONFIG"
"""The environment variable naming the YAML settings file (the ``--config`` option's)."""


class RetryPolicy(BaseModel):
    """Redelivery policy: exponential backoff with jitter, then dead-letter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=5, ge=1, le=100, description="Attempts in all (the first one included).")
    initial_delay: float = Field(default=1.0, ge=0, le=3600, description="Delay before the second attempt, seconds.")
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0, description="Backoff factor per attempt.")
    max_delay: float = Field(default=300.0, ge=0, le=86400, description="Cap on any one delay, seconds.")
    jitter: float = Field(default=0.2, ge=0, le=1.0, description="± fraction of random jitter on each delay.")
    retry_on: list[Literal["transient", "permanent", "invalid"]] = Field(
        default_factory=lambda: ["transient"], description="Which error kinds are retried; others dead-letter at once."
    )

    def delay_for(self, attempt: int, rand: float = 0.5) -> float:
        """Delay before attempt ``attempt + 1`` (``attempt`` ≥ 1 attempts already made); ``rand`` in [0, 1)."""
        base = min(self.max_delay, self.initial_delay * (self.multiplier ** max(0, attempt - 1)))
        return max(0.0, base * (1 + self.jitter * (2 * rand - 1)))


class Settings(BaseSettings):
    """Everything the hub needs to start. Environment: ``ESBHUB_<FIELD>`` (e.g. ``ESBHUB_BROKER_URL``)."""

    model_config = SettingsConfigDict(env_prefix="ESBHUB_", extra="forbid")

    data_dir: Path = Field(default=Path("./var"), description="Where embedded databases and state live.")
    broker_url: str = Field(
        default="",
        description="'sqlite:///PATH' (embedded, default under data_dir) or 'amqp://user@host:5672//' (RabbitMQ). "
        "Passwords by reference: 'amqp://guest:${env:AMQP_PASSWORD}@host//'.",
    )
    database_url: str = Field(
        default="", description="SQLAlchemy URL of the hub database; default SQLite under data_dir."
    )
    exchange: str = Field(default="esbhub", description="Name of the topic exchange messages are published to.")
    host: str = Field(default="127.0.0.1", description="HTTP listen address.")
    port: int = Field(default=8080, ge=1, le=65535, description="HTTP listen port.")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest accepted HTTP body.")
    sync_timeout: float = Field(default=10.0, gt=0, le=300, description="Default wait for a sync reply, seconds.")
    publish_timeout: float = Field(default=5.0, gt=0, le=60, description="Longest wait for a durable publish.")
    prefetch: int = Field(default=64, ge=1, le=10000, description="Unacked messages a consumer may hold.")
    dedup_window_seconds: int = Field(default=7 * 86400, ge=60, description="How long processed ids are remembered.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Default retry policy of a subscription.")
    routes_dir: Path | None = Field(default=None, description="Directory of route YAML files.")
    workers: int = Field(default=1, ge=0, le=64, description="Worker processes 'serve' starts beside the API.")
    log_level: str = Field(default="info", description="Log level: debug, info, warning or error.")
    log_payloads: bool = Field(default=False, description="Log message payloads (off: they may hold personal data).")
    admin_key_file: Path | None = Field(default=None, description="Where the first admin key is written (0600).")
    mdm: MdmSettings = Field(
        default_factory=MdmSettings,
        description="Master data: survivorship rules and source trust per attribute, key-account tier "
        "thresholds, match model, search limit, queue.",
    )

    @field_validator("broker_url", "database_url")
    @classmethod
    def _no_inline_password(cls, v: str) -> str:
        return check_url_secret(v)

    @field_validator("data_dir")
    @classmethod
    def _abs(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or f"sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'hub.db'}"

    @property
    def embedded(self) -> bool:
        return self.effective_broker_url.startswith("sqlite")

    @classmethod
    def from_environment(cls) -> Settings:
        """What ``esbhub`` loads without command-line options: the YAML file named by
        ``ESBHUB_CONFIG``, if set, over the ``ESBHUB_*`` variables."""
        return cls.load(os.environ.get(CONFIG_ENV) or None)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Settings:
        data: dict[str, Any] = {}
        if path:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


_process_settings: Settings | None = None


def set_process_settings(settings: Settings | None) -> Settings | None:
    """Make ``settings`` what :func:`process_settings` returns in this process (None: forget them);
    returns the ones set before. ``esbhub worker`` sets the settings it was started with."""
    global _process_settings
    before, _process_settings = _process_settings, settings
    return before


def process_settings() -> Settings:
    """The settings of this process, for the parts of it that are not handed them (a sink's MDM
    service, the MDM look-ups of routes): those of :func:`set_process_settings`, else
    :meth:`Settings.from_environment`. So an ``mdm_link`` sink in a worker started with
    ``--config hub.yaml`` sees the file's database and ``mdm`` section, as the worker's consumer does."""
    return _process_settings if _process_settings is not None else Settings.from_environment()

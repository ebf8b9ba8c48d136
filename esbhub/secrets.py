"""Secrets by reference: ``${env:NAME}`` and ``${file:PATH}``, resolved late, never logged.

Config models declare secret fields as :class:`SecretRef`; the text in a config file is
the *reference*, so a route or adapter file never holds a password. ``resolve()`` reads
the value when a connection is opened and returns a ``SecretStr`` whose repr is masked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, SecretStr

from esbhub.errors import ConfigError, ErrorDetail

REF_RE = re.compile(r"^\$\{(env|file):([^}]+)\}$")


def is_reference(value: str) -> bool:
    return bool(REF_RE.match(value.strip()))


def _check_ref(value: str) -> str:
    if not is_reference(value):
        raise ValueError(
            "secrets must be given by reference, '${env:NAME}' or '${file:/path}', never inline"
        )
    return value.strip()


SecretRef = Annotated[str, AfterValidator(_check_ref)]
"""A config field holding a reference to a secret (validated: inline values are refused)."""


def resolve(ref: str, *, loc: str = "secret") -> SecretStr:
    """Read the secret a reference points to. Raises :class:`ConfigError` naming the reference."""
    m = REF_RE.match(ref.strip())
    if not m:
        raise ConfigError(
            "secret is not a reference", details=[ErrorDetail(loc=loc, msg="expected '${env:NAME}' or '${file:PATH}'")]
        )
    kind, name = m.group(1), m.group(2)
    if kind == "env":
        val = os.environ.get(name)
        if val is None:
            raise ConfigError(
                f"environment variable '{name}' is not set",
                details=[ErrorDetail(loc=loc, msg=f"environment variable '{name}' is not set")],
            )
        return SecretStr(val)
    path = Path(name).expanduser()
    try:
        return SecretStr(path.read_text(encoding="utf-8").rstrip("\r\n"))
    except OSError as exc:
        raise ConfigError(
            f"secret file '{path}' cannot be read",
            details=[ErrorDetail(loc=loc, msg=f"secret file '{path}' cannot be read: {exc.strerror}")],
        ) from None


def resolve_optional(ref: str | None, *, loc: str = "secret") -> SecretStr | None:
    return None if ref is None else resolve(ref, loc=loc)


def redact(obj: Any) -> Any:
    """A copy of ``obj`` fit for a log line: secret-looking keys masked."""
    if isinstance(obj, dict):
        return {
            k: ("***" if any(s in str(k).lower() for s in ("password", "secret", "token", "key", "passphrase")) else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, SecretStr):
        return "***"
    return obj

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


_URL_PASSWORD_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/]*):(?P<pw>[^@/]*)@")


def check_url_secret(url: str) -> str:
    """Validator for URL fields: a password inside the URL must itself be a reference.

    ``postgresql+psycopg://app:${env:PGPASS}@db/x`` is fine; ``…//app:hunter2@db/x`` is refused.
    """
    m = _URL_PASSWORD_RE.match(url)
    if m and m.group("pw") and not REF_RE.match(m.group("pw")):
        raise ValueError(
            "the password in this URL must be a reference, e.g. 'scheme://user:${env:NAME}@host/…', never inline"
        )
    return url


def resolve_url(url: str, *, loc: str = "url") -> str:
    """The URL with a ``${env:…}`` / ``${file:…}`` password replaced by the secret (URL-quoted)."""
    from urllib.parse import quote

    m = _URL_PASSWORD_RE.match(url)
    if not m or not REF_RE.match(m.group("pw")):
        return url
    secret = resolve(m.group("pw"), loc=loc).get_secret_value()
    return f"{m.group('scheme')}{m.group('user')}:{quote(secret, safe='')}@" + url[m.end():]


def redact_url(url: str) -> str:
    """The URL fit for a log line or health output (password masked)."""
    m = _URL_PASSWORD_RE.match(url)
    if not m:
        return url
    return f"{m.group('scheme')}{m.group('user')}:***@" + url[m.end():]

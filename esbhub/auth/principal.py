"""Who is calling: the identity an API key stands for."""

from __future__ import annotations

from dataclasses import dataclass, field

from esbhub.bus.broker import topic_matches

SCOPES = frozenset({"ingest", "read", "admin", "steward", "routes"})


@dataclass(frozen=True)
class Principal:
    """The caller behind an API key.

    ``scopes``: what it may do (``admin`` implies every scope). ``types``: topic patterns of
    the message types it may post (``#`` = any). ``org_scope``: the organization the caller
    is limited to — the seam for organization scopes (a later issue); not enforced yet.
    """

    key_id: str
    name: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    types: tuple[str, ...] = ("#",)
    org_scope: str | None = None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def may_post(self, type_name: str) -> bool:
        return any(p == "#" or p == type_name or topic_matches(p, type_name) for p in self.types)

    @property
    def actor(self) -> str:
        """How this caller is named in audit records and DLQ edit history."""
        return f"key:{self.key_id}:{self.name}"

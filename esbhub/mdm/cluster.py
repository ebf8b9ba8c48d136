"""Cannot-link constraints for clustering (stub: being filled in)."""

from __future__ import annotations

from esbhub.mdm.standardize import StdParty


def can_link(a: StdParty, b: StdParty) -> str | None:
    """None when a and b may be merged; else the reason they must not be."""
    raise NotImplementedError

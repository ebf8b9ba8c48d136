"""The message bus: envelope, broker seam, consumers, retries, dead-letter store."""

from esbhub.bus.envelope import Envelope, new_id

__all__ = ["Envelope", "new_id"]

"""Protocol adapters: sources that bring data onto the bus and sinks that deliver it.

The contract is in :mod:`esbhub.adapters.base`; the registry in :mod:`esbhub.adapters.registry`.
"""

from esbhub.adapters.base import AdapterConfig, AdapterSpec, Health, Sink, Source
from esbhub.adapters.registry import available_adapters, get_adapter

__all__ = ["AdapterConfig", "AdapterSpec", "Health", "Sink", "Source", "available_adapters", "get_adapter"]

"""asyncio adapters that carry the bytes of :mod:`dispy_core.protocol`."""

"""Shared protocol, transport, serialization and scheduling engine for dispy."""

__version__ = "0.1.0"

"""Relay dispy discovery between networks (the `dispy-relay` service)."""

__all__ = ["__version__"]
__version__ = "0.1.0"

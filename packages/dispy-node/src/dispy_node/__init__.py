"""Run a dispy compute node."""

__version__ = "0.1.0"

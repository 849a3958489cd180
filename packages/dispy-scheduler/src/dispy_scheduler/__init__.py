"""Share dispy nodes among many clients (the `dispy-scheduler` service)."""

__all__ = ["__version__"]
__version__ = "0.1.0"

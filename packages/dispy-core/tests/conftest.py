"""Shared settings for dispy-core's unit tests."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Same examples on every run (deterministic CI); HYPOTHESIS_PROFILE=explore searches more.
settings.register_profile(
    "dispy",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", max_examples=2000, deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dispy"))

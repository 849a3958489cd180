"""Run coroutine tests without a pytest plugin, each with its own deadline."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec

P = ParamSpec("P")


def async_test(
    timeout: float = 10.0,
) -> Callable[[Callable[P, Coroutine[Any, Any, None]]], Callable[P, None]]:
    """Decorate an ``async def`` test so that pytest runs it in a fresh event loop.

    The test fails with ``TimeoutError`` after ``timeout`` seconds instead of hanging (keep
    it below pytest-timeout's limit). Fixtures work as usual: the wrapper keeps the test's
    signature.

    Example:
        >>> @async_test(timeout=1.0)
        ... async def test_sleep_zero() -> None:
        ...     await asyncio.sleep(0)
        >>> test_sleep_zero()
    """

    def decorate(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
        @functools.wraps(test)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
            async def bounded() -> None:
                async with asyncio.timeout(timeout):
                    await test(*args, **kwargs)

            asyncio.run(bounded())

        return wrapper

    return decorate

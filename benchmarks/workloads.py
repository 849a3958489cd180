"""The jobs the benchmarks run; importable by worker processes of the local pool too."""

from __future__ import annotations


def noop(x: int) -> int:
    return x


def echo_bytes(data: bytes) -> bytes:
    return data


def busy(seconds: float) -> int:
    import time

    # Pure-Python work on one core for about ``seconds`` (calibrated by the caller).
    count = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            count += 1
    return count

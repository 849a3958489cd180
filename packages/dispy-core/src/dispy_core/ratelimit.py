"""Token buckets, alone or one per key in a table of bounded size (sans-I/O: time comes in).

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens per second; each event takes
one. A :class:`KeyedLimiter` keeps one bucket per key (a source address, say) and forgets the
least recently used key when it holds ``max_keys``, so a flood from many addresses costs a
bounded amount of memory. A forgotten key starts again with a full bucket: the table bounds
memory, and a global bucket (kept by the caller) bounds what any number of keys may cause.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class TokenBucket:
    """``burst`` events at once, then ``rate`` per second on average."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def take(self, now: float) -> bool:
        """Take one token if there is one; False when the rate is exceeded."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def ready_in(self, now: float) -> float:
        """Seconds until a token is available (0 if one is now)."""
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self.rate)


class KeyedLimiter:
    """One :class:`TokenBucket` per key, for at most ``max_keys`` keys (LRU eviction)."""

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def take(self, key: Hashable, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


class Once:
    """At most one event per key per ``interval`` seconds, for at most ``max_keys`` keys,
    and at most ``burst`` events per ``interval`` in all (for log lines a flood must not
    multiply)."""

    def __init__(self, interval: float, max_keys: int, burst: int = 10) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: OrderedDict[Hashable, float] = OrderedDict()
        self._all = TokenBucket(burst / interval, burst)

    def __call__(self, key: Hashable, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        if not self._all.take(now):
            return False
        self._last.pop(key, None)
        if len(self._last) >= self.max_keys:
            self._last.popitem(last=False)
        self._last[key] = now
        return True

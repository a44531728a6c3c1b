"""Per-user publish rate limit: a token bucket per user, in this worker's memory."""
from __future__ import annotations

import math
import time


class TooManyRequests(Exception):
    """A user posts faster than the limit (429 with Retry-After)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many messages; retry in {retry_after}s")
        self.retry_after = retry_after


class RateLimiter:
    """`rate` messages per second with bursts of `burst`; rate 0 turns it off.

    Buckets live per worker: a user posting through two workers gets twice the rate,
    which is fine for flood protection and needs no shared state.
    """

    MAX_KEYS = 100_000

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def retry_after(self, key: str) -> int:
        """0 and one token taken if `key` may go on; else whole seconds until it may."""
        if self.rate <= 0:
            return 0
        now = self.clock()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > self.MAX_KEYS:
                self._forget_idle(now)
            return 0
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1 - tokens) / self.rate))

    def check(self, key: str) -> None:
        """Take a token for `key` or raise TooManyRequests."""
        wait = self.retry_after(key)
        if wait:
            raise TooManyRequests(wait)

    def _forget_idle(self, now: float) -> None:
        # A bucket that has refilled completely holds no information: drop it.
        full = [k for k, (t, last) in self._buckets.items()
                if t + (now - last) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]

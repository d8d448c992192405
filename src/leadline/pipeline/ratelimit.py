"""A token bucket per channel, so a burst of sends never trips the provider's throughput limit.

It paces this process only (it is about politeness to the provider, not about correctness): with several
worker processes, configure each channel's rate divided by their number.
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, rate_per_second: float, *, burst: float | None = None):
        self.rate = rate_per_second
        self.capacity = burst if burst is not None else max(rate_per_second, 1.0)
        self._tokens = self.capacity
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.rate <= 0:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)

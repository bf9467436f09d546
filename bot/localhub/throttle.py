"""Token buckets for the `--bandwidth` option: one for downloads and one for uploads,
shared by all transfers in that direction, like a full-duplex link.

`reserve(n)` books `n` bytes and returns how long the caller must wait before sending or
accepting them; bookings queue up, so concurrent transfers share the rate fairly in total.
"""

from __future__ import annotations

import asyncio
import threading
import time


class TokenBucket:
    """Rate limit in bytes per second with a small burst (1/50 s of traffic, >= 16 KiB)."""

    def __init__(self, bytes_per_second: float) -> None:
        if bytes_per_second <= 0:
            raise ValueError("bandwidth must be positive")
        self.rate = float(bytes_per_second)
        self.capacity = max(self.rate / 50, 16 * 1024)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> float:
        """Book `nbytes`; return the seconds to wait before using them."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= nbytes
            return max(0.0, -self._tokens / self.rate)

    async def consume(self, nbytes: int) -> None:
        delay = self.reserve(nbytes)
        if delay > 0:
            await asyncio.sleep(delay)


async def throttle(bucket: TokenBucket | None, nbytes: int) -> None:
    """Wait for `nbytes` of bandwidth (no-op without a bucket)."""
    if bucket is not None:
        await bucket.consume(nbytes)

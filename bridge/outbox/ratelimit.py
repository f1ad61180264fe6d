"""Token bucket used for per-upstream send rates and per-account mail rates."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second, bursts up to ``burst``; ``rate <= 0`` means unlimited."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.clock = clock
        self.tokens = self.burst
        self.updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def try_take(self) -> bool:
        if self.rate <= 0:
            return True
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a token; waiters are served in order."""
        if self.rate <= 0:
            return
        async with self._lock:
            while not self.try_take():  # noqa: ASYNC110 - waiting for time, not for an event
                await asyncio.sleep((1 - self.tokens) / self.rate)


class SlidingWindowCounter:
    """At most ``limit`` events per ``window`` seconds per key (the per-account mail rate)."""

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._events: dict[str, list[float]] = {}

    def allow(self, key: str, limit: int) -> bool:
        if limit <= 0:
            return True
        now = self.clock()
        events = [t for t in self._events.get(key, []) if t > now - self.window]
        if len(events) >= limit:
            self._events[key] = events
            return False
        events.append(now)
        self._events[key] = events
        return True

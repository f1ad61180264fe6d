"""The bridge's rate limiting: a token bucket per upstream (the dispatcher's), a sliding
window per account (mail rates).

An upstream's bucket paces the dispatcher's sends at the operator's ``rate_per_second``. A
provider that states a limit on *all* its calls (Devino: 10 requests per second, sends,
polls, session and balance calls together) declares it as a capability
(``requests_per_second``); its bucket then becomes the upstream's request gate, which every
request of that upstream waits on, whoever makes it (:func:`limiter_for`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bridge.upstreams.base import requests_per_second

#: A provider's own limit is kept with requests evenly spaced at this share of it: ten
#: requests at 9 per second span 1.11 s, so one up to ~0.1 s slower on its way than the next
#: still cannot put an eleventh into one second of the provider's count.
PROVIDER_LIMIT_SHARE = 0.9


class TokenBucket:
    """``rate`` tokens per second, bursts up to ``burst``; ``rate <= 0`` means unlimited.
    ``spaced``: no bursts, each token ``1 / rate`` seconds after the previous one."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic,
        *, spaced: bool = False,
    ) -> None:
        self.rate = rate
        self.spaced = spaced
        self.burst = 1.0 if spaced else burst if burst is not None else max(1.0, rate)
        self.clock = clock
        self.tokens = self.burst
        self.updated = clock()
        self._lock = asyncio.Lock()

    def set_rate(self, rate: float) -> None:
        """A new rate (a cluster's share of it); the burst follows unless ``spaced``."""
        self.rate = rate
        self.burst = 1.0 if self.spaced else max(1.0, rate)

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


def limiter_for(upstream: object, configured_rate: float) -> TokenBucket:
    """The bucket of one upstream: the operator's ``rate_per_second`` (0: unlimited), and
    where the provider states a limit on all its calls, that limit too, spaced evenly; the
    upstream then waits on it before every request (its ``request_gate``), so that polls and
    session calls count as well as the dispatcher's sends."""
    limit = requests_per_second(upstream)
    if limit <= 0:
        return TokenBucket(configured_rate)
    ceiling = limit * PROVIDER_LIMIT_SHARE
    bucket = TokenBucket(min(configured_rate, ceiling) if configured_rate > 0 else ceiling,
                         spaced=True)
    upstream.request_gate = bucket  # type: ignore[attr-defined]
    return bucket


def gates_requests(upstream: object) -> bool:
    """Whether ``upstream`` waits on its bucket itself before every request (so the
    dispatcher does not take a token for it again)."""
    return requests_per_second(upstream) > 0


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

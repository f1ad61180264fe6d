"""A provider session id shared by every call of one upstream (Devino's REST and SOAP APIs).

The id is fetched once, renewed a margin before its life ends, and renewed again when a call
is refused for it. One renewal serves every call that saw the same id fail: a call remembers
the generation it used and renews only if nobody renewed since (the others wait on the lock
and take the new id). A call refused for its session was not processed, so repeating it
once with a fresh id cannot send twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bridge.errors import UpstreamError

T = TypeVar("T")


class SessionKeeper:
    """The cached session id of one upstream. ``login(attempt)`` asks the provider for a new
    one; ``lifetime`` is how long one is used (its life less the renewal margin)."""

    def __init__(self, login: Callable[[int], Awaitable[str]], lifetime: float) -> None:
        self._login = login
        self.lifetime = lifetime
        #: Monotonic clock for the session's life; tests may replace it.
        self.clock: Callable[[], float] = time.monotonic
        self._id: str | None = None
        self._renew_at = 0.0
        self._generation = 0
        self._lock = asyncio.Lock()

    def _fresh(self, stale: int | None) -> bool:
        return (self._id is not None and self.clock() < self._renew_at
                and (stale is None or stale != self._generation))

    async def get(self, attempt: int = 1, *, stale: int | None = None) -> tuple[str, int]:
        """The session id and its generation; renewed when due, or when ``stale`` is the
        generation a call just saw refused."""
        if not self._fresh(stale):
            async with self._lock:
                if not self._fresh(stale):
                    self._id = await self._login(attempt)
                    self._renew_at = self.clock() + self.lifetime
                    self._generation += 1
        assert self._id is not None
        return self._id, self._generation

    async def call(self, attempt: int, call: Callable[[str], Awaitable[T]],
                   refused: Callable[[UpstreamError], bool]) -> T:
        """``call(session_id)``; when it fails ``refused`` (the session was not accepted),
        once more with a renewed id. A second refusal is raised as it is."""
        session, generation = await self.get(attempt)
        try:
            return await call(session)
        except UpstreamError as exc:
            if not refused(exc):
                raise
        session, _ = await self.get(attempt, stale=generation)
        return await call(session)

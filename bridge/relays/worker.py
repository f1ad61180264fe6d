"""The loop shared by the relay workers: claim a batch from the store, handle it, and when
there was nothing to claim wait for a wake-up or the poll interval."""

from __future__ import annotations

import asyncio
import contextlib

from bridge.errors import StoreUnavailable


class ClaimLoop:
    poll_interval: float = 1.0

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def claim_and_handle(self) -> bool:
        """Claim due work and handle it; False when there was none."""
        raise NotImplementedError

    def idle_timeout(self) -> float:
        """How long to wait for a wake-up when there was nothing to claim."""
        return self.poll_interval

    async def run(self) -> None:
        while not self._stopping:
            try:
                busy = await self.claim_and_handle()
            except StoreUnavailable:
                busy = False
            if busy:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.idle_timeout()):
                    await self._wake.wait()
            self._wake.clear()

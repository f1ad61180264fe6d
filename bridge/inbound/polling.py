"""The inbound poller: subscribers' SMS fetched from providers that offer polling rather than
(or besides) pushing them, fed to the inbound service as pushed ones are."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from bridge.errors import StoreUnavailable, UpstreamError
from bridge.models import InboundMessage, InboundRecord
from bridge.settings import Settings
from bridge.store.base import OutboxStore
from bridge.upstreams.base import InboundPolling, Upstream

log = logging.getLogger(__name__)


class InboundPoller:
    """Fetches inbound SMS from upstreams that offer polling and feeds them to the inbound
    pipeline. The cursor is saved after the messages are recorded: after a crash in between,
    the provider hands the same messages again and deduplication by ``sms_id`` drops them, so
    polling resumes without gaps or duplicates."""

    def __init__(self, store: OutboxStore, upstreams: dict[str, Upstream], settings: Settings,
                 accept: Callable[[InboundMessage], Awaitable[InboundRecord]],
                 *, owner: str = "") -> None:
        self.owner = owner
        self.store = store
        self.accept = accept
        self.upstreams = {name: u for name, u in upstreams.items()
                          if isinstance(u, InboundPolling)
                          and settings.upstreams[name].inbound_poll_interval > 0}
        self.intervals = {name: settings.upstreams[name].inbound_poll_interval
                          for name in self.upstreams}
        self._stopping = asyncio.Event()

    async def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        if not self.upstreams:
            return
        try:
            await asyncio.gather(*(self._loop(name, upstream)
                                   for name, upstream in self.upstreams.items()))
        finally:
            for name in self.upstreams:  # a clean stop hands polling over at once
                with contextlib.suppress(StoreUnavailable):
                    await self.store.release_lease(f"inbound-poll:{name}", self.owner)

    async def _loop(self, name: str, upstream: Upstream) -> None:
        interval = self.intervals[name]
        while not self._stopping.is_set():
            try:
                # One process of the cluster polls each upstream; the others stand by.
                if await self.store.acquire_lease(f"inbound-poll:{name}", self.owner,
                                                  time.time(), 3 * interval + 10):
                    while await self.poll_once(name, upstream):
                        pass  # a full page: ask again at once
            except (UpstreamError, StoreUnavailable) as exc:
                log.warning("inbound poll failed", extra={"upstream": name, "error": str(exc)})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.intervals[name]):
                    await self._stopping.wait()

    async def poll_once(self, name: str, upstream: Upstream) -> int:
        """One poll; returns how many messages came (0 when the cursor did not move)."""
        assert isinstance(upstream, InboundPolling)
        key = f"inbound_cursor:{name}"
        cursor = await self.store.get_meta(key)
        messages, new_cursor = await upstream.poll_inbound(cursor)
        for message in messages:
            await self.accept(message)
        if new_cursor is not None and new_cursor != cursor:
            await self.store.set_meta(key, new_cursor)
            return len(messages)
        return 0

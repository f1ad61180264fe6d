"""Polling workers: delivery statuses of sent SMS, and inbound SMS, for providers that do not
push them (or as a fallback when pushes are lost)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from bridge import metrics
from bridge.errors import StoreUnavailable, UpstreamError
from bridge.models import InboundMessage, InboundRecord
from bridge.settings import Settings
from bridge.store.base import OutboxStore
from bridge.store.common import FINAL_STATUSES
from bridge.upstreams.base import InboundPolling, StatusPolling, Upstream

log = logging.getLogger(__name__)


def next_poll_delay(interval: float, polls: int, cap: float = 3600.0) -> float:
    """Polls back off: interval, 2×, 4× … up to an hour between polls."""
    return float(min(cap, interval * (2 ** min(polls, 16))))


class StatusPoller:
    """Asks polling-capable upstreams for the status of sent messages until it is final
    (or ``status_poll_max`` seconds have passed since the first poll was due)."""

    BATCH = 100

    def __init__(self, store: OutboxStore, upstreams: dict[str, Upstream], settings: Settings,
                 *, tick: float = 1.0) -> None:
        self.store = store
        self.settings = settings
        self.tick = tick
        self.upstreams = {name: u for name, u in upstreams.items()
                          if isinstance(u, StatusPolling)
                          and settings.upstreams[name].status_poll_interval > 0}
        self._stopping = asyncio.Event()

    async def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            for name, upstream in self.upstreams.items():
                with contextlib.suppress(StoreUnavailable):
                    await self.poll_once(name, upstream)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick):
                    await self._stopping.wait()

    async def poll_once(self, name: str, upstream: Upstream) -> int:
        assert isinstance(upstream, StatusPolling)
        now = time.time()
        due = await self.store.due_status_polls(name, now, self.BATCH)
        if not due:
            return 0
        ids = [provider_id for _, provider_ids, _ in due for provider_id in provider_ids]
        try:
            reports = await upstream.poll_statuses(ids)
        except UpstreamError as exc:
            log.warning("status poll failed", extra={"upstream": name, "error": str(exc)})
            reports = []
        if reports:
            await self.store.record_delivery_reports(f"poll:{name}", reports, now)
            metrics.DELIVERY_REPORTS.labels(matched="poll").inc(len(reports))
        final = {r.provider_id for r in reports if r.status in FINAL_STATUSES}
        config = self.settings.upstreams[name]
        schedule: list[tuple[int, float | None]] = []
        for message_id, provider_ids, polls in due:
            done = bool(provider_ids) and all(p in final for p in provider_ids)
            delay = next_poll_delay(config.status_poll_interval, polls + 1)
            elapsed = sum(next_poll_delay(config.status_poll_interval, n) for n in range(polls + 1))
            stop = done or elapsed + delay > config.status_poll_max
            schedule.append((message_id, None if stop else now + delay))
        await self.store.reschedule_status_polls(schedule)
        return len(reports)


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

"""The status poller: delivery statuses of sent SMS, for providers that do not push them (or
as a fallback when pushes are lost). Inbound SMS are polled by :mod:`bridge.inbound.polling`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from bridge import metrics
from bridge.errors import StoreUnavailable, UpstreamError
from bridge.settings import Settings
from bridge.store.base import OutboxStore
from bridge.store.common import FINAL_STATUSES
from bridge.upstreams.base import StatusPolling, Upstream

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

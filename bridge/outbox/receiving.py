"""Upstreams that hold their own connection (SMPP binds): their lifetime in the bridge, and
the sink through which their delivery receipts and subscribers' SMS reach the store and the
inbound pipeline — the seam that keeps provider modules free of both."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from bridge import metrics
from bridge.errors import StoreUnavailable
from bridge.models import DeliveryReport, InboundMessage, InboundRecord
from bridge.store.base import OutboxStore
from bridge.upstreams.base import ReceivingUpstream, Upstream

log = logging.getLogger(__name__)


class StoreSink:
    """Receipts go to the store as HTTP delivery reports do (a report for an id not yet
    recorded is kept and applied when the send is); messages enter the inbound pipeline as
    polled ones do. Both return after the commit, or raise."""

    def __init__(self, store: OutboxStore,
                 accept: Callable[[InboundMessage], Awaitable[InboundRecord]],
                 *, owner: str) -> None:
        self.store = store
        self.accept = accept
        self.owner = owner

    async def delivery_reports(self, upstream: str, reports: Sequence[DeliveryReport]) -> None:
        matched = await self.store.record_delivery_reports(f"upstream:{upstream}", reports,
                                                           time.time())
        metrics.DELIVERY_REPORTS.labels(matched="yes").inc(matched)
        metrics.DELIVERY_REPORTS.labels(matched="no").inc(len(reports) - matched)

    async def inbound_message(self, message: InboundMessage) -> None:
        await self.accept(message)

    async def claim_receiver(self, upstream: str, ttl: float) -> bool:
        """A named lease in the store the cluster shares (as inbound polling has one)."""
        try:
            return await self.store.acquire_lease(f"receiver:{upstream}", self.owner,
                                                  time.time(), ttl)
        except StoreUnavailable as exc:
            log.warning("cannot claim the receiver", extra={"upstream": upstream,
                                                            "error": str(exc)})
            return False

    async def release_receiver(self, upstream: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.store.release_lease(f"receiver:{upstream}", self.owner)


class UpstreamReceivers:
    """Runs ``run(sink)`` of every receiving upstream until :meth:`stop`; a run that fails
    unexpectedly is logged and started again."""

    RESTART_DELAY = 5.0

    def __init__(self, upstreams: dict[str, Upstream], sink: StoreSink) -> None:
        self.upstreams: dict[str, ReceivingUpstream] = {
            name: u for name, u in upstreams.items() if isinstance(u, ReceivingUpstream)}
        self.sink = sink
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(*(self._keep(name, upstream)
                               for name, upstream in self.upstreams.items()))

    async def _keep(self, name: str, upstream: ReceivingUpstream) -> None:
        while not self._stopping.is_set():
            try:
                await upstream.run(self.sink)
            except Exception:
                log.exception("upstream %s stopped unexpectedly; starting it again", name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.RESTART_DELAY):
                    await self._stopping.wait()

    async def stop(self) -> None:
        """Unbind (each upstream's ``aclose`` ends its ``run``)."""
        self._stopping.set()
        await asyncio.gather(*(u.aclose() for u in self.upstreams.values()),
                             return_exceptions=True)

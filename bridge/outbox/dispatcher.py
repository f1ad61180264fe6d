"""The dispatcher: claims due messages from the store and hands them to upstreams.

Each claim carries a lease; a process killed mid-send leaves ``sending`` rows whose lease
expires, and whichever dispatcher runs next claims them again. Where the upstream honours an
idempotency key the resend cannot duplicate; otherwise it is at most one more copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from bridge import metrics
from bridge.errors import StoreUnavailable, TransientUpstreamError, UpstreamError
from bridge.models import OutboundMail, StoredMessage
from bridge.outbox.leases import make_owner
from bridge.outbox.ratelimit import TokenBucket
from bridge.outbox.retry import Action, RetryPolicy
from bridge.settings import DispatcherSettings, Settings
from bridge.store.base import OutboxStore
from bridge.upstreams.base import (
    BatchSending,
    OutboundSms,
    SendReceipt,
    StatusPolling,
    Upstream,
)

log = logging.getLogger(__name__)

BounceBuilder = Callable[[StoredMessage, str], OutboundMail | None]


class Dispatcher:
    def __init__(
        self,
        store: OutboxStore,
        upstreams: dict[str, Upstream],
        settings: Settings,
        *,
        bridge_id: str,
        bounce: BounceBuilder | None = None,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.upstreams = upstreams
        self.config: DispatcherSettings = settings.dispatcher
        self.policy = RetryPolicy(
            self.config.retry_base, self.config.retry_max, self.config.give_up_after
        )
        self.bridge_id = bridge_id
        self.bounce = bounce
        self.clock = clock
        self.owner = owner or make_owner()
        self._semaphores = {
            name: asyncio.Semaphore(settings.upstreams[name].concurrency) for name in upstreams
        }
        self._configured_rate = {
            name: settings.upstreams[name].rate_per_second for name in upstreams
        }
        self._buckets = {name: TokenBucket(rate) for name, rate in self._configured_rate.items()}
        self._configured_batch = {
            name: settings.upstreams[name].batch_size for name in upstreams
        }
        # Worked out once: isinstance() on a runtime-checkable Protocol inspects every
        # member, too slow for once per message.
        self._batch_sizes = {name: self._batch_size(name) for name in upstreams}
        self._default_originator = {
            name: settings.upstreams[name].originator for name in upstreams
        }
        # Where statuses are polled, the first poll comes one interval after the send.
        self._poll_interval = {
            name: settings.upstreams[name].status_poll_interval
            for name, upstream in upstreams.items() if isinstance(upstream, StatusPolling)
        }
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """New work was committed: look now rather than at the next poll."""
        self._wake.set()

    def set_cluster_size(self, processes: int) -> None:
        """Rate limits hold for the cluster as a whole: each of ``processes`` live bridge
        processes sends at most its share of an upstream's ``rate_per_second``."""
        for name, bucket in self._buckets.items():
            rate = self._configured_rate[name] / max(1, processes)
            bucket.rate, bucket.burst = rate, max(1.0, rate)

    async def run(self) -> None:
        while not self._stopping:
            free = self.config.batch_size - len(self._inflight)
            claimed: list[StoredMessage] = []
            if free > 0:
                try:
                    claimed = await self.store.claim_due(
                        self.owner, self.clock(), free, self.config.lease_seconds
                    )
                except StoreUnavailable as exc:
                    log.warning("dispatcher cannot claim: %s", exc)
            for work in self._plan(claimed):
                task = asyncio.create_task(work)
                self._inflight.add(task)
                task.add_done_callback(self._done)
            if claimed and len(claimed) == free:
                await asyncio.sleep(0)
                continue
            await self._idle()

    def _plan(self, claimed: list[StoredMessage]) -> list[Coroutine[Any, Any, None]]:
        """One task per message, except that messages for an upstream with a batch
        endpoint go in requests of up to its ``max_batch``."""
        work: list[Coroutine[Any, Any, None]] = []
        batches: dict[str, list[StoredMessage]] = {}
        for message in claimed:
            if self._batch_sizes.get(message.upstream, 1) > 1:
                batches.setdefault(message.upstream, []).append(message)
            else:
                work.append(self._deliver(message))
        for name, messages in batches.items():
            size = self._batch_sizes[name]
            for start in range(0, len(messages), size):
                chunk = messages[start:start + size]
                work.append(self._deliver_batch(name, chunk) if len(chunk) > 1
                            else self._deliver(chunk[0]))
        return work

    def _batch_size(self, name: str) -> int:
        """The provider's batch limit, capped by the operator's ``batch_size``; rate limits
        and concurrency count requests, so a smaller batch also spreads the load."""
        upstream = self.upstreams[name]
        limit = upstream.max_batch if isinstance(upstream, BatchSending) else 1
        configured = self._configured_batch.get(name)
        return min(limit, configured) if configured else limit

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())
        self._wake.set()

    async def _idle(self) -> None:
        timeout = self.config.poll_interval
        with contextlib.suppress(StoreUnavailable):
            due = await self.store.next_due_at()
            if due is not None:
                timeout = max(0.0, min(timeout, due - self.clock()))
        if timeout <= 0 and self._inflight:
            # Due work waits on capacity, not on time.
            timeout = self.config.poll_interval
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        self._wake.clear()

    async def stop(self, grace: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in pending:
                task.cancel()  # its lease expires; the message is claimed again later

    def _sms(self, message: StoredMessage) -> OutboundSms:
        options = message.options
        return OutboundSms(
            message_id=message.id,
            idempotency_key=f"{self.bridge_id}-{message.id}",
            attempt=message.attempts,
            phone=message.phone,
            text=message.text,
            encoding=message.encoding,
            originator=options.get("originator"),
            flash=bool(options.get("flash")),
            max_parts=int(options.get("max_parts") or 255),
            validity=options.get("validity"),
            transliterate=bool(options.get("transliterate")),
            two_byte_concat=bool(options.get("two_byte_concat")),
        )

    def _for(self, name: str, sms: OutboundSms) -> OutboundSms:
        """The account's originator, else the upstream's default sender, if it has one."""
        if sms.originator is None and self._default_originator.get(name):
            return dataclasses.replace(sms, originator=self._default_originator[name])
        return sms

    async def _send_via(self, name: str, sms: OutboundSms) -> SendReceipt:
        upstream = self.upstreams.get(name)
        if upstream is None:
            raise TransientUpstreamError(f"upstream {name!r} is not configured")
        sms = self._for(name, sms)
        async with self._semaphores[name]:
            await self._buckets[name].take()
            started = time.perf_counter()
            try:
                receipt = await upstream.send(sms)
            except UpstreamError as exc:
                kind = "transient" if isinstance(exc, TransientUpstreamError) else "permanent"
                metrics.SENDS.labels(upstream=name, outcome=kind).inc()
                raise
            finally:
                metrics.SEND_SECONDS.labels(upstream=name).observe(time.perf_counter() - started)
            metrics.SENDS.labels(upstream=name, outcome="sent").inc()
            return receipt

    async def _deliver_batch(self, name: str, messages: list[StoredMessage]) -> None:
        """Several messages in one request to a batch endpoint; each outcome is recorded
        on its own message as if it had been sent alone."""
        upstream = self.upstreams[name]
        assert isinstance(upstream, BatchSending)
        async with self._semaphores[name]:
            await self._buckets[name].take()  # provider rate limits count requests
            started = time.perf_counter()
            try:
                results: list[SendReceipt | UpstreamError] = await upstream.send_batch(
                    [self._for(name, self._sms(m)) for m in messages])
                if len(results) != len(messages):
                    raise TransientUpstreamError(
                        f"{name}: batch answered {len(results)} results for {len(messages)}",
                        ambiguous=True)
            except UpstreamError as exc:
                results = [exc] * len(messages)
            except Exception as exc:  # a bug in a provider module must not lose messages
                log.exception("upstream %s raised unexpectedly in a batch", name)
                results = [TransientUpstreamError(f"{name}: internal error "
                                                  f"{type(exc).__name__}")] * len(messages)
            finally:
                metrics.SEND_SECONDS.labels(upstream=name).observe(time.perf_counter() - started)
        for message, result in zip(messages, results, strict=True):
            if isinstance(result, SendReceipt):
                metrics.SENDS.labels(upstream=name, outcome="sent").inc()
                await self._sent(message, name, result)
                continue
            kind = "transient" if isinstance(result, TransientUpstreamError) else "permanent"
            metrics.SENDS.labels(upstream=name, outcome=kind).inc()
            await self._failed(message, 0, result, [name, *message.fallbacks])

    async def _sent(self, message: StoredMessage, name: str, receipt: SendReceipt) -> None:
        now = self.clock()
        interval = self._poll_interval.get(name, 0.0)
        await self._persist(
            functools.partial(self.store.mark_sent, message.id, self.owner, name,
                              receipt.provider_ids, now, now + interval if interval else None)
        )
        if log.isEnabledFor(logging.INFO):  # no per-message dict when the level is higher
            log.info(
                "sms sent",
                extra={"message_id": message.id, "upstream": name, "parts": message.parts,
                       "provider_ids": list(receipt.provider_ids)},
            )

    async def _failed(self, message: StoredMessage, index: int, exc: UpstreamError,
                      chain: list[str]) -> None:
        """A send through ``chain[index]`` failed: fall back, retry later or fail."""
        decision = self.policy.decide(
            exc,
            attempt=message.attempts,
            age=self.clock() - message.created_at,
            has_fallback=index + 1 < len(chain),
        )
        log.warning(
            "send failed",
            extra={"message_id": message.id, "upstream": chain[index], "error": str(exc),
                   "action": decision.action.value, "attempt": message.attempts},
        )
        if decision.action is Action.FALLBACK:
            await self._deliver(message, start=index + 1)
        else:
            await self._record_failure(message, decision.action, decision.delay, str(exc))

    async def _deliver(self, message: StoredMessage, start: int = 0) -> None:
        """Send one message through ``chain[start]``; a failure decides what comes next
        (``_failed``), which may be the next upstream of the account's chain."""
        chain = [message.upstream, *message.fallbacks]
        name = chain[start]
        try:
            receipt = await self._send_via(name, self._sms(message))
        except UpstreamError as exc:
            await self._failed(message, start, exc, chain)
            return
        except Exception as exc:  # a bug in a provider module must not lose the message
            log.exception("upstream %s raised unexpectedly", name)
            error = TransientUpstreamError(f"{name}: internal error {type(exc).__name__}")
            await self._record_failure(
                message, Action.RETRY, self.policy.backoff(message.attempts), str(error)
            )
            return
        await self._sent(message, name, receipt)

    async def _record_failure(
        self, message: StoredMessage, action: Action, delay: float, error: str
    ) -> None:
        now = self.clock()
        if action is Action.FAIL or now + delay - message.created_at > self.config.give_up_after:
            bounce = None
            try:
                bounce = self.bounce(message, error) if self.bounce else None
            except Exception:  # the failure is recorded even if its bounce cannot be built
                log.exception("could not build the bounce for message %s", message.id)
            await self._persist(
                lambda: self.store.mark_failed(message.id, self.owner, error, now, bounce))
            metrics.FAILED.labels(upstream=message.upstream).inc()
            log.warning("sms failed for good",
                        extra={"message_id": message.id, "error": error,
                               "bounce": bounce is not None})
        else:
            await self._persist(
                lambda: self.store.schedule_retry(message.id, self.owner, error, now + delay, now))

    async def _persist(self, write: Callable[[], Awaitable[None]]) -> None:
        """Record an outcome, retrying while the store is briefly unavailable.

        Giving up early would leave the row ``sending`` until its lease expires and then send
        it again; so keep trying for most of the lease.
        """
        deadline = time.monotonic() + self.config.lease_seconds * 0.8
        delay = 0.05
        while True:
            try:
                await write()
                return
            except StoreUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

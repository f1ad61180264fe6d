"""The dispatcher: claims due messages from the store and hands them to upstreams.

Every SMS is sent once, as far as its upstream allows, through crashes and store outages:

* one provider request is one intent, recorded before the call (its messages with their
  claims' epochs, the request's fingerprint), and one outcome commit: every outcome of the
  request (a batch's together) in one transaction;
* a claim is a lease with a fencing token (``lease_epoch``): renewed while this process has
  sends in flight, never taken back by its own owner, and an outcome counts only under the
  claim that holds the message now. An outcome the store cannot take waits in memory and is
  tried again, however long the store is away; a process killed mid-send leaves its intent
  without an outcome, and whichever dispatcher claims the message next sees that doubt;
* ``attempts`` counts the tries that ended (the provider answered, or failed to) and drives
  the backoff: a re-claim after a crash raises neither. ``maybe_sent`` counts the requests of
  unknown fate (an intent left open, an ambiguous failure) and decides what a resend may do
  (:func:`bridge.outbox.ambiguity.resend_allowed`): an upstream with an idempotency key or a
  lookup by client id sends (it looks the SMS up first); otherwise the account's
  ``ambiguous`` policy resends once at most, or holds the message as ``ambiguous`` and tells
  its sender, until ``sms-bridge resolve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from bridge import metrics
from bridge.errors import (
    PermanentUpstreamError,
    StoreUnavailable,
    TransientUpstreamError,
    UpstreamError,
)
from bridge.models import OutboundMail, SendIntent, SendOutcome, StoredMessage
from bridge.outbox.ambiguity import request_fingerprint, resend_allowed
from bridge.outbox.leases import make_owner
from bridge.outbox.ratelimit import gates_requests, limiter_for
from bridge.outbox.retry import Action, RetryPolicy
from bridge.relays.email import build_held_notice
from bridge.settings import DispatcherSettings, Settings
from bridge.store.base import OutboxStore
from bridge.upstreams.base import (
    BatchSending,
    OutboundSms,
    SendReceipt,
    StatusPolling,
    Upstream,
    finds_earlier_sends,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# (message, reason) -> the mail to its sender, or None: a bounce, or a held message's notice.
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
        notice: BounceBuilder | None = None,
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
        # A held message's sender is told, like a failed one's: from the same mail settings.
        self.notice = notice or functools.partial(build_held_notice, settings.mail,
                                                  settings.smtp.hostname)
        self._policies = {login.lower(): account.ambiguous
                          for login, account in settings.accounts.items()}
        # Per upstream, worked out once: can a message of unknown fate go to it again without
        # a second copy (an idempotency key, or a lookup before the send)?
        self._idempotent = {name: upstream.idempotent for name, upstream in upstreams.items()}
        self._looks_up = {name: finds_earlier_sends(upstream)
                          for name, upstream in upstreams.items()}
        self.clock = clock
        self.owner = owner or make_owner()
        self._semaphores = {
            name: asyncio.Semaphore(settings.upstreams[name].concurrency) for name in upstreams
        }
        self._configured_rate = {
            name: settings.upstreams[name].rate_per_second for name in upstreams
        }
        self._buckets = {name: limiter_for(upstreams[name], rate)
                         for name, rate in self._configured_rate.items()}
        # The rate each bucket keeps for the whole cluster (a provider's limit may lower it).
        self._full_rate = {name: bucket.rate for name, bucket in self._buckets.items()}
        # Upstreams that wait on their bucket before every request themselves.
        self._gated = {name for name, upstream in upstreams.items() if gates_requests(upstream)}
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
        # Metric children resolved once: labels() costs a lock and a dict lookup per call.
        self._send_seconds = {name: metrics.SEND_SECONDS.labels(upstream=name)
                              for name in upstreams}
        self._sends = {(name, kind): metrics.SENDS.labels(upstream=name, outcome=kind)
                       for name in upstreams for kind in ("sent", "transient", "permanent")}
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._keeper: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """New work was committed: look now rather than at the next poll."""
        self._wake.set()

    def set_cluster_size(self, processes: int) -> None:
        """Rate limits hold for the cluster as a whole: each of ``processes`` live bridge
        processes sends at most its share of an upstream's ``rate_per_second``."""
        for name, bucket in self._buckets.items():
            bucket.set_rate(self._full_rate[name] / max(1, processes))

    async def run(self) -> None:
        if self._stopping:
            return  # stopped before it ran (a start that failed): no keeper to leave behind
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_leases(), name="lease-keeper")
        try:
            await self._claim_loop()
        finally:
            if not self._stopping:  # cancelled: nobody will stop() the keeper
                self._keeper.cancel()

    async def _claim_loop(self) -> None:
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
                work.append(self._guarded([message]))
        for name, messages in batches.items():
            size = self._batch_sizes[name]
            for start in range(0, len(messages), size):
                work.append(self._guarded(messages[start:start + size]))
        return work

    async def _guarded(self, messages: list[StoredMessage]) -> None:
        """:meth:`_request`, and should it fail (a bug), the messages queued again: this
        process never claims back its own rows, so left ``sending`` they would wait for its
        restart. A doubt the request raised stays counted (``record_intent`` did)."""
        try:
            await self._request(messages, 0)
        except Exception as exc:
            log.exception("delivery failed unexpectedly")
            retry_at = self.clock() + self.policy.backoff(1)
            with contextlib.suppress(StoreUnavailable):
                await self.store.record_outcomes(self.owner, None, [
                    SendOutcome(m.id, m.lease_epoch, "queued", next_attempt_at=retry_at,
                                error=f"internal error {type(exc).__name__}")
                    for m in messages], self.clock())

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
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep_leases(self) -> None:
        """Renew this process's claims while it has sends in flight, a third of a lease
        apart: a send slower than the lease, or an outcome waiting for the store, must not
        let another process claim the message and send it again. (A renewal the store
        cannot take is skipped: the next one comes a third of a lease later.)"""
        while True:
            await asyncio.sleep(self.config.lease_seconds / 3)
            if not self._inflight:
                continue
            try:
                await self.store.renew_leases(self.owner, self.clock(),
                                              self.config.lease_seconds)
            except StoreUnavailable as exc:
                log.info("cannot renew the leases of the sends in flight: %s", exc)

    def _sms(self, message: StoredMessage) -> OutboundSms:
        return OutboundSms(
            message_id=message.id,
            idempotency_key=f"{self.bridge_id}-{message.id}",
            attempt=message.attempts + 1,
            phone=message.phone,
            text=message.text,
            encoding=message.encoding,
            options=message.options,
            maybe_sent=message.maybe_sent,
        )

    def _for(self, name: str, sms: OutboundSms) -> OutboundSms:
        """The account's originator, else the upstream's default sender, if it has one."""
        if sms.options.originator is None and self._default_originator.get(name):
            options = dataclasses.replace(sms.options,
                                          originator=self._default_originator[name])
            return dataclasses.replace(sms, options=options)
        return sms

    @staticmethod
    def _chain(message: StoredMessage) -> list[str]:
        return [message.upstream, *message.fallbacks]

    def _may_resend(self, message: StoredMessage, name: str, doubts: int) -> bool:
        """Whether ``message``, with ``doubts`` requests of unknown fate, may go to upstream
        ``name`` (again)."""
        return resend_allowed(doubts, idempotent=self._idempotent.get(name, False),
                              looks_up=self._looks_up.get(name, False),
                              policy=self._policies.get(message.account.lower(), "resend"))

    async def _request(self, messages: list[StoredMessage], index: int) -> None:
        """One provider request for ``messages`` (one, or a batch), all through the upstream
        at ``index`` of their chains: the intent, the call, the outcomes in one commit; then
        the messages whose failure allows it go on to their next upstream, one by one.
        Messages that may not be sent again are held first, with no request."""
        name = self._chain(messages[0])[index]
        held = [m for m in messages if not self._may_resend(m, name, m.maybe_sent)]
        if held:
            await self._commit(None, [self._held(
                m, m.maybe_sent, f"{m.maybe_sent} earlier request(s) to {name} may have sent "
                "it; that upstream has no idempotency key and no lookup") for m in held])
            held_ids = {m.id for m in held}
            messages = [m for m in messages if m.id not in held_ids]
        if not messages:
            return
        upstream = self.upstreams.get(name)
        if upstream is None:  # queued under an older configuration: no request is made
            error = TransientUpstreamError(f"upstream {name!r} is not configured")
            outcomes = [self._outcome(m, error, name, index) for m in messages]
            await self._commit(None, [outcome for outcome, _ in outcomes])
            await self._go_on(messages, outcomes, index)
            return
        batch = [self._for(name, self._sms(m)) for m in messages]
        intent = await self._intend(name, messages, batch)
        if intent is None:
            return  # every claim was taken over meanwhile: the new holders decide
        if len(intent.message_ids) < len(messages):
            kept = set(intent.message_ids)
            batch = [sms for sms in batch if sms.message_id in kept]
            messages = [m for m in messages if m.id in kept]
        results = await self._call(name, upstream, batch)
        outcomes = [self._outcome(m, result, name, index)
                    for m, result in zip(messages, results, strict=True)]
        await self._commit(intent.id, [outcome for outcome, _ in outcomes])
        await self._go_on(messages, outcomes, index)

    async def _go_on(self, messages: list[StoredMessage],
                     outcomes: list[tuple[SendOutcome, bool]], index: int) -> None:
        """The messages whose failure surely sent nothing, to their next upstream now (the
        failure counted as an attempt)."""
        for message, (_, onward) in zip(messages, outcomes, strict=True):
            if onward:
                await self._request([dataclasses.replace(message,
                                                         attempts=message.attempts + 1)],
                                    index + 1)

    async def _call(self, name: str, upstream: Upstream,
                    batch: list[OutboundSms]) -> list[SendReceipt | UpstreamError]:
        """One request: a receipt or an error per SMS, in order. A failure of the whole
        request is each SMS's error."""
        async with self._semaphores[name]:
            if name not in self._gated:  # a gated upstream waits on it per request itself
                await self._buckets[name].take()  # provider rate limits count requests
            started = time.perf_counter()
            try:
                if len(batch) == 1:
                    results: list[SendReceipt | UpstreamError] = [await upstream.send(batch[0])]
                else:
                    assert isinstance(upstream, BatchSending)
                    results = await upstream.send_batch(batch)
                    if len(results) != len(batch):
                        raise TransientUpstreamError(
                            f"{name}: batch answered {len(results)} results for {len(batch)}",
                            ambiguous=True)
            except UpstreamError as exc:
                results = [exc] * len(batch)
            except Exception as exc:  # a bug in a provider module must not lose messages
                log.exception("upstream %s raised unexpectedly", name)
                # It may have failed after the provider took the request.
                results = [TransientUpstreamError(f"{name}: internal error "
                                                  f"{type(exc).__name__}", ambiguous=True)
                           ] * len(batch)
            finally:
                self._send_seconds[name].observe(time.perf_counter() - started)
        for result in results:
            kind = ("sent" if isinstance(result, SendReceipt) else
                    "transient" if isinstance(result, TransientUpstreamError) else "permanent")
            self._sends[name, kind].inc()
        return results

    def _outcome(self, message: StoredMessage, result: SendReceipt | UpstreamError, name: str,
                 index: int) -> tuple[SendOutcome, bool]:
        """What to record for one message after its request, and whether it goes on to the
        next upstream of its chain now."""
        now = self.clock()
        if isinstance(result, SendReceipt):
            interval = self._poll_interval.get(name, 0.0)
            if log.isEnabledFor(logging.INFO):  # no per-message dict when the level is higher
                log.info("sms sent", extra={"message_id": message.id, "upstream": name,
                                            "parts": message.parts,
                                            "provider_ids": list(result.provider_ids)})
            return SendOutcome(message.id, message.lease_epoch, "sent", upstream=name,
                               provider_ids=tuple(result.provider_ids),
                               poll_at=now + interval if interval else None), False
        error, unknown = result, result.ambiguous
        doubts = message.maybe_sent + int(unknown)
        chain = self._chain(message)
        attempt = message.attempts + 1
        decision = self.policy.decide(
            error, attempt=attempt, age=now - message.created_at,
            # Only while nothing may have been taken may another provider send it.
            has_fallback=index + 1 < len(chain) and doubts == 0)
        log.warning("send failed", extra={
            "message_id": message.id, "upstream": name, "error": str(error),
            "action": decision.action.value, "attempt": attempt, "maybe_sent": doubts})
        tried = dataclasses.replace(message, attempts=attempt)
        if decision.action is Action.FALLBACK:
            return SendOutcome(message.id, message.lease_epoch, "sending", upstream=name,
                               error=str(error)), True
        if not isinstance(error, PermanentUpstreamError) and not self._may_resend(
                message, name, doubts):
            return self._held(tried, doubts, str(error), unknown=unknown), False
        if decision.action is Action.FAIL or \
                now + decision.delay - message.created_at > self.config.give_up_after:
            return self._failed(tried, str(error), unknown=unknown), False
        return SendOutcome(message.id, message.lease_epoch, "queued", upstream=name,
                           error=str(error), next_attempt_at=now + decision.delay,
                           unknown=unknown), False

    def _failed(self, message: StoredMessage, error: str, *, unknown: bool) -> SendOutcome:
        bounce = None
        try:
            bounce = self.bounce(message, error) if self.bounce else None
        except Exception:  # the failure is recorded even if its bounce cannot be built
            log.exception("could not build the bounce for message %s", message.id)
        metrics.FAILED.labels(upstream=message.upstream).inc()
        log.warning("sms failed for good", extra={"message_id": message.id, "error": error,
                                                  "bounce": bounce is not None})
        return SendOutcome(message.id, message.lease_epoch, "failed", error=error,
                           mail=bounce, unknown=unknown)

    def _held(self, message: StoredMessage, doubts: int, reason: str, *,
              unknown: bool = False) -> SendOutcome:
        """Held as ``ambiguous``: sending it again could make a copy the account does not
        allow. Its sender is told; nothing more is sent until ``sms-bridge resolve``."""
        policy = self._policies.get(message.account.lower(), "resend")
        error = (f"may have been sent ({doubts} request(s) of unknown fate; account policy "
                 f"{policy!r}): {reason}")
        notice = None
        try:
            notice = self.notice(message, error)
        except Exception:  # held even if its notice cannot be built
            log.exception("could not build the notice for message %s", message.id)
        log.warning("sms held as ambiguous", extra={"message_id": message.id, "error": error,
                                                    "notice": notice is not None})
        return SendOutcome(message.id, message.lease_epoch, "ambiguous", error=error,
                           mail=notice, unknown=unknown)

    async def _intend(self, name: str, messages: list[StoredMessage],
                      batch: list[OutboundSms]) -> SendIntent | None:
        leases = [(m.id, m.lease_epoch) for m in messages]
        fingerprint = request_fingerprint(name, batch)
        return await self._durably(lambda: self.store.record_intent(
            self.owner, name, leases, fingerprint, self.clock()), "the intent of a request")

    async def _commit(self, intent_id: int | None, outcomes: list[SendOutcome]) -> None:
        if not outcomes:
            return
        recorded = await self._durably(lambda: self.store.record_outcomes(
            self.owner, intent_id, outcomes, self.clock()), "the outcomes of a request")
        if len(recorded) < len(outcomes):
            kept = set(recorded)
            log.warning("outcomes not recorded: their claims were taken over", extra={
                "message_ids": [o.message_id for o in outcomes if o.message_id not in kept]})

    async def _durably(self, write: Callable[[], Awaitable[T]], what: str) -> T:
        """``write`` until the store takes it. Given up, it would leave its messages
        ``sending`` until their leases ran out and another claim sent them again: it waits
        in memory instead, however long the store is away, while the lease keeper holds the
        claims. Tried again at growing intervals, at most a quarter of a lease apart."""
        delay, cap = 0.05, max(0.05, min(2.0, self.config.lease_seconds / 4))
        warned = False
        while True:
            try:
                return await write()
            except StoreUnavailable as exc:
                if not warned:
                    log.warning("store unavailable: %s waits in memory: %s", what, exc)
                    warned = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap)

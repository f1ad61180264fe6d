"""Traces of sends for the operators' console: each HTTP request a send makes to its
provider and the provider's answer (redacted, capped), and each upstream's health (last
success, last error, consecutive failures, paused until).

Nothing in the upstream modules or the dispatcher knows of it. :meth:`TraceRecorder.install`
wraps each upstream's ``send`` (and ``send_batch``) on the instance, so that the call's
messages are known in a context variable while it runs, and hooks the shared provider
client: its request and response hooks see every HTTP exchange made within the call, and
the answer's bytes are copied as the upstream reads them (the upstream's own byte cap still
governs the read). Exchanges outside a send (status polls, inbound polls, balance) are not
traced. The recorder collects in memory and writes every ``flush_interval`` seconds in one
store operation, off the send path; what a crash loses is a second of diagnostics.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from bridge.errors import UpstreamError
from bridge.redact import redact_exchange, redact_text, redact_url
from bridge.store.base import OutboxStore
from bridge.store.console import (
    MAX_TRACE_BYTES,
    ProviderExchange,
    UpstreamOutcome,
    fold_outcomes,
)

log = logging.getLogger(__name__)


@dataclass
class _Exchange:
    method: str
    url: str
    request: bytes
    started: float
    at: float
    status: int | None = None
    response: bytearray = field(default_factory=bytearray)
    finished: float | None = None


@dataclass
class _Call:
    """A send in progress: its upstream, messages and the HTTP exchanges it made."""

    upstream: str
    message_ids: tuple[int, ...]
    exchanges: list[_Exchange] = field(default_factory=list)


_T = TypeVar("_T")
_CURRENT: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "bridge_trace_call", default=None)


class _TeeStream(httpx.AsyncByteStream):
    """The provider's answer as the upstream reads it, its first bytes copied."""

    def __init__(self, inner: httpx.AsyncByteStream, exchange: _Exchange) -> None:
        self._inner = inner
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            room = MAX_TRACE_BYTES - len(self._exchange.response)
            if room > 0:
                self._exchange.response += chunk[:room]
            yield chunk

    async def aclose(self) -> None:
        self._exchange.finished = time.monotonic()
        await self._inner.aclose()


class TraceRecorder:
    """Collects provider exchanges and send outcomes, and writes them to the store."""

    def __init__(self, store: OutboxStore, *, enabled: bool = True,
                 flush_interval: float = 1.0) -> None:
        self.store = store
        self.enabled = enabled
        self.flush_interval = flush_interval
        self._exchanges: list[ProviderExchange] = []
        self._outcomes: dict[str, UpstreamOutcome] = {}
        self._by_request: weakref.WeakKeyDictionary[httpx.Request, _Exchange] = \
            weakref.WeakKeyDictionary()
        self._wake = asyncio.Event()
        self._stopping = False

    # -- installation -----------------------------------------------------------------------

    def install(self, client: httpx.AsyncClient, upstreams: dict[str, Any]) -> None:
        """Hook ``client`` and wrap the sends of ``upstreams`` (before the dispatcher runs)."""
        hooks = client.event_hooks
        hooks.setdefault("request", []).append(self._on_request)
        hooks.setdefault("response", []).append(self._on_response)
        client.event_hooks = hooks
        for name, upstream in upstreams.items():
            upstream.send = self._wrap_one(name, upstream.send)
            batch = getattr(upstream, "send_batch", None)
            if batch is not None:
                upstream.send_batch = self._wrap_batch(name, batch)

    async def _traced(self, call: _Call, work: Awaitable[_T]) -> _T:
        """Await ``work`` (a send) with ``call`` as the current call, so the HTTP hooks file
        its exchanges under it; a failure or cancellation ends the call here."""
        token = _CURRENT.set(call)
        try:
            return await work
        except asyncio.CancelledError:
            self._finish(call, None, outcome=False)
            raise
        except Exception as exc:
            self._finish(call, exc)
            raise
        finally:
            _CURRENT.reset(token)

    def _wrap_one(self, name: str, send: Callable[[Any], Awaitable[Any]]
                  ) -> Callable[[Any], Awaitable[Any]]:
        async def traced_send(sms: Any) -> Any:
            call = _Call(name, (int(sms.message_id),))
            receipt = await self._traced(call, send(sms))
            self._finish(call, None)
            return receipt

        return traced_send

    def _wrap_batch(self, name: str, send_batch: Callable[[Sequence[Any]], Awaitable[Any]]
                    ) -> Callable[[Sequence[Any]], Awaitable[Any]]:
        async def traced_send_batch(batch: Sequence[Any]) -> Any:
            call = _Call(name, tuple(int(sms.message_id) for sms in batch))
            results = await self._traced(call, send_batch(batch))
            errors = [r for r in results if isinstance(r, UpstreamError)]
            # The upstream answered: a success unless every message of the batch failed.
            self._finish(call, errors[0] if errors and len(errors) == len(results) else None)
            return results

        return traced_send_batch

    # -- the client's hooks -----------------------------------------------------------------

    async def _on_request(self, request: httpx.Request) -> None:
        call = _CURRENT.get()
        if call is None or not self.enabled:
            return
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = b"[streamed body not kept]"
        exchange = _Exchange(request.method, redact_url(str(request.url)),
                             redact_exchange(body, MAX_TRACE_BYTES), time.monotonic(),
                             time.time())
        call.exchanges.append(exchange)
        self._by_request[request] = exchange

    async def _on_response(self, response: httpx.Response) -> None:
        exchange = self._by_request.pop(response.request, None)
        if exchange is None:
            return
        exchange.status = response.status_code
        if isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _TeeStream(response.stream, exchange)

    # -- recording --------------------------------------------------------------------------

    def _finish(self, call: _Call, error: BaseException | None, *, outcome: bool = True) -> None:
        now = time.time()
        text = redact_text(f"{type(error).__name__}: {error}")[:500] if error else None
        if self.enabled:
            for ex in call.exchanges:
                answered = ex.status is not None
                response = bytes(ex.response)
                if "sessionid" in ex.url.lower().partition("?")[0]:
                    # A login: the answer is the session id, a credential.
                    response = b"[session id not kept]" if response else response
                self._exchanges.append(ProviderExchange(
                    at=ex.at, upstream=call.upstream, message_ids=call.message_ids,
                    method=ex.method, url=ex.url, request=ex.request, status=ex.status,
                    response=redact_exchange(response, MAX_TRACE_BYTES),
                    error=None if answered else (text or "no answer"),
                    duration=round((ex.finished or time.monotonic()) - ex.started, 4)))
        if outcome:
            paused = None
            if isinstance(error, UpstreamError) and error.retry_after:
                paused = now + float(error.retry_after)
            fold_outcomes(self._outcomes, call.upstream, now, text, paused)
        if len(self._exchanges) >= 200:
            self._wake.set()

    async def flush(self) -> None:
        exchanges, self._exchanges = self._exchanges, []
        outcomes, self._outcomes = self._outcomes, {}
        if exchanges:
            await self.store.record_exchanges(exchanges)
        if outcomes:
            await self.store.record_upstream_outcomes(outcomes)

    async def run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # diagnostics must never stop the bridge
                log.warning("could not store send traces: %s", redact_text(str(exc)))

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(Exception):
            await self.flush()

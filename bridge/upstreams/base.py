"""The upstream interface: one small protocol every SMS provider module implements.

Modelled on httpx's transports: the dispatcher holds an :class:`Upstream` and calls
``send``; it neither knows nor cares which provider is behind it. Providers map their wire
errors to :class:`TransientUpstreamError` or :class:`PermanentUpstreamError` at this boundary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Protocol, runtime_checkable

import httpx

from bridge.bounded_http import AnswerRefused, request_bounded
from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.models import DeliveryReport, InboundMessage
from bridge.models import OutboundSms as OutboundSms
from bridge.upstreams.config import UpstreamSettings


@dataclass(frozen=True)
class SendReceipt:
    """The provider accepted the SMS: its ids (one per message, or per part)."""

    provider_ids: tuple[str, ...]


class Upstream(Protocol):
    name: str
    kind: str
    # True when the provider honours an idempotency key, so a retry after an ambiguous
    # failure cannot send twice.
    idempotent: bool

    async def send(self, sms: OutboundSms) -> SendReceipt: ...

    async def aclose(self) -> None: ...


def finds_earlier_sends(upstream: Upstream) -> bool:
    """Whether ``upstream``, given an SMS with ``maybe_sent``, first asks the provider by the
    client id the earlier request carried and sends only if the provider does not know it
    (:attr:`HttpUpstream.finds_earlier_sends`; upstreams of other kinds do not)."""
    return bool(getattr(upstream, "finds_earlier_sends", False))


class RequestGate(Protocol):
    """What an upstream waits on before each request to its provider (the dispatcher's rate
    limiter, :func:`bridge.outbox.ratelimit.limiter_for`)."""

    async def take(self) -> None: ...


def requests_per_second(upstream: object) -> float:
    """The most requests per second ``upstream``'s provider takes over *all* its calls
    (sends, polls, session and balance calls), as the provider's spec states it; 0 when it
    states none (:attr:`HttpUpstream.requests_per_second`)."""
    return float(getattr(upstream, "requests_per_second", 0.0))


def provider_client() -> httpx.AsyncClient:
    """The HTTP client the upstreams share (the service's and ``sms-bridge balance``'s).
    ``trust_env=False``: a proxy from the environment must not silently carry provider
    traffic and credentials elsewhere."""
    return httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
        headers={"User-Agent": "sms-bridge"},
    )


@runtime_checkable
class BatchSending(Protocol):
    """An upstream that can send several SMS in one request (batch/bulk endpoints).

    The dispatcher hands it up to ``max_batch`` messages at once. The result list has one
    entry per message, in order: a :class:`SendReceipt`, or the :class:`UpstreamError` for
    that message alone. A failure of the whole request is raised instead.
    """

    max_batch: int

    async def send_batch(self, batch: Sequence[OutboundSms]) -> list[SendReceipt | UpstreamError]:
        ...


@runtime_checkable
class StatusPolling(Protocol):
    """An upstream whose delivery statuses can be asked for (for providers without
    callbacks, or as a fallback when callbacks are lost)."""

    async def poll_statuses(self, provider_ids: Sequence[str]) -> list[DeliveryReport]:
        """Current status of each id the provider knows; ids it does not know are left out.
        Raises an :class:`UpstreamError` when the provider cannot answer now."""
        ...


@runtime_checkable
class InboundPolling(Protocol):
    """An upstream that offers inbound SMS by polling instead of (or besides) pushing."""

    async def poll_inbound(self, cursor: str | None) -> tuple[list[InboundMessage], str | None]:
        """Messages after ``cursor`` (None: from the provider's earliest), and the cursor to
        pass next time. The messages' ``source`` is the upstream's name; each must carry the
        provider's ``sms_id`` so that a message seen twice (around a restart) is recorded
        once. Raises an :class:`UpstreamError` when the provider cannot answer now."""
        ...


@runtime_checkable
class BalanceQuery(Protocol):
    """An upstream whose account balance can be asked for (``sms-bridge balance``)."""

    async def balance(self) -> Decimal:
        """The account's balance as the provider states it (it may be negative). Raises an
        :class:`UpstreamError` when the provider cannot answer now."""
        ...


class InboundSink(Protocol):
    """Where a :class:`ReceivingUpstream` hands what its provider pushes over the upstream's
    own connection. Each call returns once what it was given is committed; an exception
    means it was not, and the upstream asks the provider to deliver it again."""

    async def delivery_reports(self, upstream: str, reports: Sequence[DeliveryReport]) -> None:
        ...

    async def inbound_message(self, message: InboundMessage) -> None:
        """An SMS from a subscriber (``message.source`` is the upstream's name): the same
        routes, forwarding and deduplication as one pushed over HTTP."""
        ...

    async def claim_receiver(self, upstream: str, ttl: float) -> bool:
        """Take, or renew for ``ttl`` seconds, the right to hold ``upstream``'s receiving
        connection: one process of a cluster of bridges holds it at a time. False when
        another does (or when that cannot be known now)."""
        ...

    async def release_receiver(self, upstream: str) -> None: ...


@runtime_checkable
class ReceivingUpstream(Protocol):
    """An upstream holding a long-lived connection (an SMPP bind) for the life of the
    process: ``run`` connects, reconnects and feeds ``sink`` until ``aclose`` is called."""

    async def run(self, sink: InboundSink) -> None: ...

    async def aclose(self) -> None: ...


class HttpUpstream:
    """Shared HTTP plumbing: primary/backup hosts, overall deadline, error mapping.

    002, "Надёжность и отказоустойчивость" (line 88): on connection problems with the main
    host, send to the backup host. A connection that could not be opened carried nothing, so
    the backup is tried at once; after an answer that may have been processed (5xx, read
    timeout) the next attempt goes to the other host.
    """

    kind: ClassVar[str] = ""
    idempotent: ClassVar[bool] = False
    # True when a send with ``maybe_sent`` first looks the SMS up by the client id the
    # earlier request carried, and sends only if the provider does not know it.
    finds_earlier_sends: ClassVar[bool] = False
    #: A capability: the most requests per second the provider takes from one account over
    #: every call (0: no limit stated). Where it is set, the dispatcher's rate limiter is
    #: handed to the upstream as its :attr:`request_gate`, which every request waits on.
    requests_per_second: ClassVar[float] = 0.0
    #: The most of one answer read (on the wire and decoded). Providers' largest answers are
    #: lists: 1000 inbound messages or statuses of a page take well under 1 MiB.
    max_answer_bytes: ClassVar[int] = 8 * 1024 * 1024

    def __init__(self, name: str, settings: UpstreamSettings, client: httpx.AsyncClient) -> None:
        self.name = name
        self.settings = settings
        self.client = client
        self.request_gate: RequestGate | None = None

    @classmethod
    def validate(cls, name: str, settings: UpstreamSettings) -> None:
        """Raise ``ValueError`` naming the first key of ``upstreams.NAME`` that is missing or
        wrong; the provider's settings model knows its keys."""
        settings.check(name)

    def _hosts(self, attempt: int) -> list[str]:
        """The hosts in the order to try; ``attempt`` is the turn (a send passes
        :attr:`OutboundSms.host_turn`): on an even one the backup comes first."""
        assert self.settings.base_url is not None
        hosts = [self.settings.base_url.rstrip("/")]
        if self.settings.backup_url:
            hosts.append(self.settings.backup_url.rstrip("/"))
            if attempt % 2 == 0:
                hosts.reverse()
        return hosts

    async def request(self, attempt: int, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One logical call: the first reachable host, within ``timeout`` overall.

        httpx timeouts apply per socket operation: a server dripping one byte at a time
        passes a 2 s timeout for 8 s, so ``asyncio.timeout`` bounds the whole call; and the
        client's default (5 s) would still govern every phase a call does not set, so the
        upstream's ``timeout`` is given to each. The answer is read with a cap on the bytes
        received and decoded (:mod:`bridge.bounded_http`): ``response.content`` would inflate
        a 100 KB gzip answer to 100 MB on the event loop.
        """
        if self.request_gate is not None:
            # Once per call: a switch to the backup host after a refused connection is not
            # counted again, nothing reached the provider.
            await self.request_gate.take()
        last: Exception | None = None
        for host in self._hosts(attempt):
            try:
                async with asyncio.timeout(self.settings.timeout):
                    response = await request_bounded(
                        self.client, method, host + path, max_bytes=self.max_answer_bytes,
                        timeout=self.settings.timeout, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                last = exc
                continue
            except AnswerRefused as exc:
                # The provider answered, so it may have acted on the request.
                raise TransientUpstreamError(f"{self.name}: {exc}", "answer_refused",
                                             ambiguous=True) from exc
            except (TimeoutError, httpx.TimeoutException) as exc:
                raise TransientUpstreamError(
                    f"no answer from {self.name} within {self.settings.timeout}s", ambiguous=True
                ) from exc
            except httpx.HTTPError as exc:
                raise TransientUpstreamError(
                    f"{self.name}: {type(exc).__name__}", ambiguous=True
                ) from exc
            self._check_status(response)
            return response
        raise TransientUpstreamError(f"cannot connect to {self.name}: {type(last).__name__}")

    def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 429:
            raise TransientUpstreamError(
                f"{self.name}: HTTP 429 too many requests",
                "http_429",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 500:
            raise TransientUpstreamError(f"{self.name}: HTTP {status}", f"http_{status}",
                                         ambiguous=True)
        if status in (401, 403):
            raise PermanentUpstreamError(f"{self.name}: HTTP {status} access denied",
                                         f"http_{status}")

    async def aclose(self) -> None:
        return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            import time

            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None

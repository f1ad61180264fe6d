"""Provider answers are read with a cap, asked for without compression, and a provider's
``timeout`` governs every phase of its calls (not httpx's 5 s default).

The provider here is a hostile HTTP server on an ephemeral port: it answers the SMS Traffic
v1 send (``POST /multi.php``, 002 line 794) with a gzip bomb, an endless body, or late.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from bridge.errors import TransientUpstreamError
from bridge.settings import upstream_settings
from bridge.upstreams.base import provider_client
from bridge.upstreams.smstraffic.v1 import SmsTrafficV1Upstream
from tests.sms import outbound_sms

ACCEPTED = (b'<?xml version="1.0" encoding="windows-1251"?><reply><result>OK</result>'
            b"<code>0</code><description>queued 1 messages</description>"
            b"<message_infos><message_info><phone>79161234567</phone><sms_id>1000001</sms_id>"
            b"</message_info></message_infos></reply>")


class HostileProvider:
    def __init__(self) -> None:
        self.mode = "bomb"
        self.delay = 0.0
        self.accept_encoding: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""
        # 100 MB of zeros, about 100 KB compressed: made once.
        self.bomb = gzip.compress(b"\0" * (100 * 1024 * 1024), compresslevel=9)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.accept_encoding.append(request.headers.get("Accept-Encoding", ""))
        if self.mode == "bomb":
            return web.Response(body=self.bomb, headers={"Content-Encoding": "gzip",
                                                         "Content-Type": "text/xml"})
        if self.mode == "endless":
            response = web.StreamResponse(headers={"Content-Type": "text/xml"})
            await response.prepare(request)
            chunk = b"<" * 65536
            for _ in range(1024):  # 64 MiB unless the client stops reading
                await response.write(chunk)
            return response
        await asyncio.sleep(self.delay)
        return web.Response(body=ACCEPTED, content_type="text/xml")

    async def __aenter__(self) -> HostileProvider:
        app = web.Application()
        app.router.add_post("/multi.php", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def provider() -> AsyncIterator[HostileProvider]:
    async with HostileProvider() as p:
        yield p


def upstream(url: str, client: httpx.AsyncClient, timeout: float = 2.0) -> SmsTrafficV1Upstream:
    settings = upstream_settings(kind="smstraffic_v1", base_url=url, login="acme",
                                password=SecretStr("s3cret"), timeout=timeout)
    return SmsTrafficV1Upstream("st", settings, client)


SMS = outbound_sms(message_id=1, idempotency_key="b-1", attempt=1, phone="79161234567",
                  text="hello", encoding="gsm7")


async def test_a_gzip_bomb_from_a_provider_is_refused_within_bounded_memory(
    provider: HostileProvider,
) -> None:
    async with provider_client() as client:
        tracemalloc.start()
        try:
            with pytest.raises(TransientUpstreamError) as caught:
                await upstream(provider.url, client).send(SMS)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert caught.value.ambiguous  # the provider answered: it may have acted
    assert "larger than" in str(caught.value)
    assert peak < 32 * 1024 * 1024, peak  # 100 MB inflated whole before the cap
    assert provider.accept_encoding == ["identity"]


async def test_an_endless_provider_answer_is_cut_at_the_cap(provider: HostileProvider) -> None:
    provider.mode = "endless"
    async with provider_client() as client:
        with pytest.raises(TransientUpstreamError, match="larger than"):
            await upstream(provider.url, client, timeout=10.0).send(SMS)


async def test_a_provider_timeout_above_five_seconds_is_honoured(
    provider: HostileProvider,
) -> None:
    """httpx's client default (5 s per phase) must not cut a call the upstream allows 8 s."""
    provider.mode, provider.delay = "slow", 5.5
    async with provider_client() as client:
        started = time.monotonic()
        receipt = await upstream(provider.url, client, timeout=8.0).send(SMS)
    assert receipt.provider_ids == ("1000001",)
    assert time.monotonic() - started >= 5.5

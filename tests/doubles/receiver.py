"""An HTTP receiver double: plays a webhook endpoint or a short-code reply script.

An aiohttp server on an ephemeral loopback port that records every request and answers
from a queue of scripted responses (status, body, delay, headers); the default answer is 200.
A scripted body can be sent in chunks with a pause between them, as a slow or hostile
server would, and with whatever headers it likes (``Content-Encoding: gzip`` whatever the
client asked for in ``Accept-Encoding``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web


@dataclass
class Received:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes
    at: float = 0.0  # loop.time() when it arrived


@dataclass
class Scripted:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    chunk_size: int = 0  # > 0: the body goes out in chunks of this size ...
    chunk_pause: float = 0.0  # ... with this pause between them


class HttpReceiver:
    def __init__(self, default: Scripted | None = None, *, port: int = 0) -> None:
        self.port = port
        self.default = default or Scripted()
        self.requests: list[Received] = []
        self.script: deque[Scripted] = deque()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()

    def then(self, *answers: Scripted) -> None:
        self.script.extend(answers)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Received(request.method, request.path_qs,
                                      {k.lower(): v for k, v in request.headers.items()}, body,
                                      asyncio.get_running_loop().time()))
        async with self._changed:
            self._changed.notify_all()
        answer = self.script.popleft() if self.script else self.default
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if not answer.chunk_size:
            return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        await response.prepare(request)
        try:
            for start in range(0, len(answer.body), answer.chunk_size):
                await response.write(answer.body[start:start + answer.chunk_size])
                if answer.chunk_pause:
                    await asyncio.sleep(answer.chunk_pause)
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass  # the client stopped reading, as a capped reader should
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(lambda: len(self.requests) >= count)
        except TimeoutError:
            raise AssertionError(
                f"receiver got {len(self.requests)} requests, expected {count}") from None
        return list(self.requests)

    async def __aenter__(self) -> HttpReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

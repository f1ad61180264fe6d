"""What every HTTP provider double shares: an aiohttp app on 127.0.0.1 (a given port, or a
free one), start/stop, ``async with``, and a condition to await what it records."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Self

from aiohttp import web


class LoopbackDouble:
    #: appended to ``url`` (an API root below the host, e.g. "/rest")
    url_suffix = ""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.url = ""
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        """Listen on ``127.0.0.1``; sets :attr:`url` (and :attr:`port`)."""
        app = web.Application()
        self.add_routes(app)
        # A short shutdown timeout: stop() must not hang on a handler still in a "delay".
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.port = port
        self.url = f"http://{host}:{port}{self.url_suffix}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _wait(self, predicate: Callable[[], bool], seconds: float) -> None:
        async with asyncio.timeout(seconds):
            async with self._changed:
                await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

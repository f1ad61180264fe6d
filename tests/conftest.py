"""Shared fixtures: a bridge on ephemeral ports with its store in a temporary directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.settings import Settings, load_settings

BridgeFactory = Callable[..., Awaitable[Bridge]]


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test bridge: ports 0, SQLite under ``tmp_path``, fast dispatcher."""
    smtp = {"port": 0, "timeout": 10.0, **overrides.pop("smtp", {})}
    http = {"port": 0, **overrides.pop("http", {})}
    store = {"url": f"sqlite:///{tmp_path / 'bridge.sqlite3'}", **overrides.pop("store", {})}
    dispatcher = {"poll_interval": 0.2, "retry_base": 0.05, "retry_max": 0.2,
                  **overrides.pop("dispatcher", {})}
    return load_settings(None, smtp=smtp, http=http, store=store, dispatcher=dispatcher,
                         log_format="text", **overrides)


@pytest.fixture
async def bridge_factory(tmp_path: Path) -> AsyncIterator[BridgeFactory]:
    """``await bridge_factory(**settings)`` starts a bridge; all are stopped at teardown."""
    started: list[Bridge] = []

    async def factory(**overrides: Any) -> Bridge:
        bridge = Bridge(make_settings(tmp_path, **overrides))
        await bridge.start()
        started.append(bridge)
        return bridge

    yield factory
    for bridge in reversed(started):
        await bridge.stop()

"""Shared fixtures: a bridge on ephemeral ports with its store in a temporary directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.settings import Settings, load_settings
from bridge.store import OutboxStore, open_store
from bridge.store.memory import MemoryStore
from tests.doubles.mailbox import MailboxDouble

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
def store_backend(request: pytest.FixtureRequest) -> str:
    """"sqlite" unless a module parametrizes it (indirect) with "postgres" too."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
async def store_url(store_backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """The store of the test's bridges: SQLite under ``tmp_path``, or a fresh PostgreSQL
    database that is dropped afterwards."""
    if store_backend == "postgres":
        from tests.pg import fresh_database

        async with fresh_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'bridge.sqlite3'}"


@pytest.fixture
async def bridge_factory(tmp_path: Path, store_url: str) -> AsyncIterator[BridgeFactory]:
    """``await bridge_factory(**settings)`` starts a bridge; all are stopped at teardown."""
    started: list[Bridge] = []

    async def factory(**overrides: Any) -> Bridge:
        overrides.setdefault("store", {})
        overrides["store"] = {"url": store_url, **overrides["store"]}
        bridge = Bridge(make_settings(tmp_path, **overrides))
        await bridge.start()
        started.append(bridge)
        return bridge

    yield factory
    for bridge in reversed(started):
        await bridge.stop()


# Not a URL open_store knows: the store fixture opens the in-memory store for it.
MEMORY_URL = "memory:"

BOTH_STORES = pytest.mark.parametrize("store_backend", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[OutboxStore]:
    """The store at ``store_url``, opened (and migrated) for one test; the in-memory store
    (:mod:`bridge.store.memory`) for :data:`MEMORY_URL`."""
    opened: OutboxStore | MemoryStore = (MemoryStore() if store_url == MEMORY_URL
                                         else open_store(store_url))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def mailbox() -> AsyncIterator[MailboxDouble]:
    """An SMTP sink on an ephemeral port: the smarthost and the helpdesk mailbox."""
    async with MailboxDouble() as box:
        yield box

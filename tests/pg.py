"""PostgreSQL for tests: is a server there, and a throw-away database per test.

The server is ``postgresql://postgres@127.0.0.1:5432`` (trust auth) unless
``BRIDGE_TEST_POSTGRES`` names another admin URL. Outside CI, tests that need it are skipped
when it is not reachable; with ``CI=true`` they fail, so a CI job that lost its database
cannot pass by skipping everything.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

ADMIN_URL = os.environ.get("BRIDGE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
_CONNECT_TIMEOUT = 2.0


def _server_url(database: str) -> str:
    """``ADMIN_URL`` with another database name."""
    base, _, query = ADMIN_URL.partition("?")
    server = base.rsplit("/", 1)[0]
    return f"{server}/{database}" + (f"?{query}" if query else "")


async def _probe() -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(ADMIN_URL, timeout=_CONNECT_TIMEOUT)
    await conn.close()


@functools.cache
def _availability() -> str | None:
    """None when the server answers, else why not. Runs in its own thread and event loop,
    so it can be called from sync code and from inside a running loop alike."""
    outcome: list[str | None] = ["no answer"]

    def probe() -> None:
        try:
            asyncio.run(asyncio.wait_for(_probe(), _CONNECT_TIMEOUT + 1))
            outcome[0] = None
        except ImportError:
            outcome[0] = "asyncpg is not installed"
        except Exception as exc:
            outcome[0] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_CONNECT_TIMEOUT + 2)
    return outcome[0]


def postgres_available() -> bool:
    """True if PostgreSQL at ``ADMIN_URL`` accepts a connection now (checked once)."""
    return _availability() is None


def require_postgres() -> None:
    """Skip the calling test without PostgreSQL, or fail it when ``CI=true``."""
    reason = _availability()
    if reason is None:
        return
    message = f"PostgreSQL is not reachable at {ADMIN_URL} ({reason})"
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"{message}; CI=true requires it (start PostgreSQL or set "
                    "BRIDGE_TEST_POSTGRES)", pytrace=False)
    pytest.skip(message)


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new empty database for one test, dropped afterwards: yields its URL."""
    import asyncpg

    require_postgres()
    name = f"bridge_test_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL, timeout=_CONNECT_TIMEOUT)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _server_url(name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()

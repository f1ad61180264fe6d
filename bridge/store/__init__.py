"""Persistence behind one interface (:class:`OutboxStore`); the URL picks the engine."""

from __future__ import annotations

from bridge.store.base import OutboxStore, Store
from bridge.store.sqlite import SqliteStore

__all__ = ["OutboxStore", "SqliteStore", "Store", "open_store"]


def open_store(url: str, *, busy_timeout: float = 5.0) -> Store:
    """The store for a URL (``sqlite:///PATH``, ``postgresql://…`` or ``postgres://…``);
    call ``await store.open()`` before use."""
    if url.startswith("sqlite:///"):
        return SqliteStore.from_url(url, busy_timeout=busy_timeout)
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here: asyncpg is only needed by deployments that use PostgreSQL.
        from bridge.store.postgres import PostgresStore

        return PostgresStore.from_url(url, busy_timeout=busy_timeout)
    raise ValueError(f"unsupported store URL {url!r}")

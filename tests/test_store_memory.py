"""What the in-memory store does beyond the contract tests, which run on it as on both
engines (tests/test_store_contract.py, parametrized with "memory")."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.errors import StoreUnavailable
from bridge.store.memory import MemoryStore


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    opened = MemoryStore()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_bridge_id_is_made_once(store: MemoryStore) -> None:
    first = await store.bridge_id()
    assert len(first) == 12 and await store.bridge_id() == first


async def test_leases_of_dead_owners_end(store: MemoryStore) -> None:
    from bridge.models import OutboundMail

    await store.queue_mail(OutboundMail("bounce", "a@example.org", b"x"), 100.0)
    await store.claim_mails("dead", 100.0, 10, 60.0)
    assert await store.claim_mails("alive", 101.0, 10, 60.0) == []
    assert await store.expire_leases(lambda owner: owner == "dead") == 1
    assert [m[0] for m in await store.claim_mails("alive", 101.0, 10, 60.0)] == [1]


async def test_a_closed_store_is_unavailable(store: MemoryStore) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()

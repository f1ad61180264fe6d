"""The in-memory store keeps the contract of the roles it implements: the contract tests of
those roles (tests/test_store_contract.py) run on it here, as they run on both engines."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.errors import StoreUnavailable
from bridge.store.memory import MemoryStore
from tests.test_store_contract import (  # noqa: F401 (collected here, on the store below)
    test_a_pending_answer_is_read_and_taken_over_once_its_hold_ran_out,
    test_complete_inbound_first_answer_wins,
    test_meta,
    test_named_leases_and_heartbeats,
    test_outgoing_mail_jobs,
    test_record_inbound_insert_or_fetch_by_sms_id,
    test_record_inbound_many_at_once_each_with_its_own_jobs,
    test_record_inbound_without_sms_id_uses_content_window,
    test_reply_scripts_crud,
)


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

"""PostgreSQL group commit: concurrent writes share a transaction, yet each keeps its own
outcome (an operation that fails undoes only itself)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from bridge.errors import StoreUnavailable
from bridge.models import MailEnvelope, ReplyRequest, SendRequest
from tests.pg import fresh_database, require_postgres

NOW = 1_700_000_000.0
WINDOW = 600.0


def req(phone: str) -> SendRequest:
    return SendRequest(account="acc", upstream="up", phone=phone, text="hello", parts=1,
                       encoding="gsm7")


def env(message_id: str | None) -> MailEnvelope:
    return MailEnvelope(mail_from="alice@example.org", recipients=("sms@bridge",),
                        message_id=message_id, peer="127.0.0.1", format="v1")


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    require_postgres()
    async with fresh_database() as url:
        yield url


async def test_a_failing_write_undoes_only_itself(pg_url: str) -> None:
    from bridge.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    await store.open()
    try:
        class Unwritable(ReplyRequest):
            def payload(self, message_ids: Sequence[int]) -> bytes:
                raise ValueError("the answer cannot be written")

        broken = Unwritable("a@example.org", "s", None, None, False, ("+79990000000",))

        async def one(n: int) -> object:
            return await store.enqueue(
                env(f"<m{n}@example.org>"), [(f"<m{n}@example.org>|r", [req(f"+7999{n:07d}")])],
                now=NOW, dedup_window=WINDOW, reply=broken if n % 7 == 3 else None)

        results = await asyncio.gather(*(one(n) for n in range(60)), return_exceptions=True)
        failed = [n for n, r in enumerate(results) if isinstance(r, BaseException)]
        assert failed == [n for n in range(60) if n % 7 == 3]
        assert all(isinstance(results[n], ValueError) for n in failed)
        stored = await store.list_messages(limit=100)
        assert len(stored) == 60 - len(failed)
        assert {m.phone for m in stored} == {f"+7999{n:07d}" for n in range(60)
                                             if n not in failed}
        # The failed mails committed nothing, not even their deduplication keys.
        again = await store.enqueue(env("<m3@example.org>"), [("<m3@example.org>|r",
                                                                [req("+79990000003")])],
                                    now=NOW, dedup_window=WINDOW)
        assert not again.duplicate and len(again.message_ids) == 1
        # Repeats within one group are still repeats.
        twice = await asyncio.gather(*(store.enqueue(
            env("<same@example.org>"), [("<same@example.org>|r", [req("+79990000099")])],
            now=NOW, dedup_window=WINDOW) for _ in range(5)))
        assert sum(not r.duplicate for r in twice) == 1
    finally:
        await store.close()
    with pytest.raises(StoreUnavailable):
        await store.enqueue(env(None), [(None, [req("+79990000001")])], now=NOW,
                            dedup_window=WINDOW)


async def test_a_row_refused_inside_a_combined_statement_fails_only_its_own_write(
    pg_url: str,
) -> None:
    """Mails and inbound messages of one group share one statement; a row the server
    refuses (here a part count beyond int4) sends the group's writes to run one by one, so
    only that row's write fails."""
    from bridge.models import ForwardJob, InboundMessage, StoredResponse
    from bridge.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    await store.open()
    try:
        def request(n: int) -> SendRequest:
            return SendRequest(account="acc", upstream="up", phone=f"+7999{n:07d}", text="hi",
                               parts=2**40 if n == 5 else 1, encoding="gsm7")

        async def mail(n: int) -> object:
            return await store.enqueue(env(f"<c{n}@x>"), [(f"<c{n}@x>|r", [request(n)])],
                                       now=NOW, dedup_window=WINDOW)

        async def sms(n: int) -> object:
            message = InboundMessage(source="src", kind="mo", sms_id=f"s{n}", phone="7916",
                                     text=f"t{n}", recipient=None, raw=b"", charset="utf-8")
            return await store.record_inbound(
                message, now=NOW, dedup_window=WINDOW, state="routed",
                response=StoredResponse(200, b"OK", "text/plain"),
                jobs=[ForwardJob("email", "desk@example.org", b"{}")], forward_deadline=NOW + 1)

        results = await asyncio.gather(*(mail(n) for n in range(12)),
                                       *(sms(n) for n in range(12)), return_exceptions=True)
        failed = [n for n, r in enumerate(results) if isinstance(r, BaseException)]
        assert failed == [5]
        assert isinstance(results[5], StoreUnavailable)
        assert len(await store.list_messages(limit=100)) == 11
        assert len(await store.list_inbound(limit=100)) == 12
        assert len(await store.list_forward_jobs(limit=100)) == 12
    finally:
        await store.close()

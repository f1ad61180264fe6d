"""The console's and the admin API's store queries, alike on both engines: searches, a
message's trace, an inbound SMS's detail, counts, traces, the audit log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.models import DeliveryReport, OutboundMail
from bridge.store import OutboxStore, open_store
from bridge.store.console import (
    AuditEntry,
    InboundFilter,
    MessageFilter,
    ProviderExchange,
    UpstreamOutcome,
)
from tests.outcomes import mark_failed
from tests.pg import fresh_database
from tests.test_store_contract import LEASE, NOW, WINDOW, env, mo, record, req, sent_message


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OutboxStore]:
    async def opened(url: str) -> AsyncIterator[OutboxStore]:
        store = open_store(url)
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    if request.param == "sqlite":
        async for found in opened(f"sqlite:///{tmp_path / 'store.sqlite3'}"):
            yield found
    else:
        async with fresh_database() as url:
            async for found in opened(url):
                yield found


async def test_searches_find_messages_and_inbound_sms(store: OutboxStore) -> None:
    sent = await sent_message(store, ["p-1"], phone="+79161234567")
    (queued,) = (await store.enqueue(env(None), [(None, [req("+79990000009")])],
                                     now=NOW + 1, dedup_window=WINDOW)).message_ids
    assert [m.id for m in await store.search_messages(MessageFilter())] == [queued, sent]
    assert [m.id for m in await store.search_messages(MessageFilter(phone="916 123"))] \
        == [sent]
    assert [m.id for m in await store.search_messages(MessageFilter(status="sent"))] == [sent]
    assert [m.id for m in await store.search_messages(MessageFilter(text="HELLO",
                                                                    before_id=queued))] \
        == [sent]
    first = await record(store, mo("s1", text="Привет мир"))
    second = await record(store, mo("s2", text="other"))
    found = await store.search_inbound(InboundFilter(text="привет"))
    assert [i["id"] for i in found] == [first.id]
    assert found[0]["forwards"] == 2 and found[0]["delivered"] == 0 and found[0]["dead"] == 0
    assert [i["id"] for i in await store.search_inbound(InboundFilter())] \
        == [second.id, first.id]


async def test_a_message_trace_has_its_mail_history_reports_exchanges_and_bounce(
    store: OutboxStore,
) -> None:
    message_id = await sent_message(store, ["p-1"])
    await store.record_delivery_reports("up", [DeliveryReport("p-1", "delivered", "D")],
                                        NOW + 5)
    await store.record_exchanges([ProviderExchange(
        NOW, "up", (message_id,), "POST", "http://up/send", b"req", 200, b"resp", None, 0.1)])
    trace = await store.message_trace(message_id)
    assert trace is not None
    assert trace["message"].id == message_id and trace["mail"]["mail_from"] == "alice@example.org"
    assert [e["status"] for e in trace["events"]] == ["queued", "sent", "delivered"]
    assert [r["provider_id"] for r in trace["reports"]] == ["p-1"]
    assert [(x["upstream"], x["request"]) for x in trace["exchanges"]] == [("up", b"req")]
    assert trace["bounce"] is None and trace["siblings"] == []
    # Listed by its outbox status and by the provider's.
    for status in ("sent", "delivered"):
        assert [m.id for m in await store.list_messages(status=status)] == [message_id]
    assert await store.list_messages(status="failed") == []
    assert await store.message_trace(message_id + 100) is None

    (failing,) = (await store.enqueue(env(None), [(None, [req()])], now=NOW,
                                      dedup_window=WINDOW)).message_ids
    await store.claim_due("o1", NOW, 10, LEASE)
    bounce = OutboundMail("bounce", "alice@example.org", b"bounce-bytes")
    assert await mark_failed(store, failing, "o1", "rejected", NOW + 7, bounce)
    trace = await store.message_trace(failing)
    assert trace is not None and trace["bounce"]["content"] == b"bounce-bytes"


async def test_inbound_detail_lists_forwards_with_their_attempts(store: OutboxStore) -> None:
    inbound = await record(store, mo("s1"))
    (job, *_) = await store.claim_forward_jobs("w", NOW, 10, LEASE, kinds=("webhook",))
    await store.forward_retry(job.id, "w", "HTTP 500", NOW + 60, now=NOW + 1)
    detail = await store.inbound_detail(inbound.id)
    assert detail is not None and detail["raw"] == b"a=1&b=%F2"
    attempts = {f["kind"]: f["attempt_history"] for f in detail["forwards"]}
    assert [a["outcome"] for a in attempts["webhook"]] == ["retry"] and attempts["email"] == []
    assert await store.inbound_detail(inbound.id + 100) is None
    listed = await store.list_forwards(status="queued")
    assert {f["kind"] for f in listed} == {"email", "webhook"}
    assert listed[0]["phone"] == "+79990000001" and listed[0]["source"] == "prov"
    assert [f["id"] for f in await store.list_forwards(before_id=listed[0]["id"])] \
        == [listed[1]["id"]]


async def test_dead_letters_resolved_leave_the_list(store: OutboxStore) -> None:
    await record(store, mo("s1"))
    jobs = await store.claim_forward_jobs("w", NOW, 10, LEASE)
    for job in jobs:
        await store.forward_dead(job.id, "w", "gone", now=NOW + 1)
    assert await store.resolve_dead_letters([jobs[0].id, jobs[0].id + 100]) == 1
    assert [j["status"] for j in await store.list_forward_jobs()] == ["dead", "resolved"]


async def test_counts_per_minute_health_pruning_and_audit(store: OutboxStore) -> None:
    await sent_message(store, ["p-1"])
    await record(store, mo("s1"), now=NOW + 30)
    stats = await store.console_stats(NOW + 60)
    assert stats["messages"]["sent"] == 1 and stats["forwards"]["queued"] == 2
    assert sum(stats["sent_per_minute"]) == 1 and sum(stats["inbound_per_minute"]) == 1

    await store.record_upstream_outcomes({"up": UpstreamOutcome(last_error_at=NOW,
                                                                last_error="boom",
                                                                failures=2)})
    await store.record_upstream_outcomes({"up": UpstreamOutcome(failures=1)})
    (health,) = await store.upstream_health()
    assert (health["upstream"], health["consecutive_failures"], health["last_error"]) \
        == ("up", 3, "boom")

    message_id = (await store.search_messages(MessageFilter()))[0].id
    await store.record_exchanges([ProviderExchange(
        NOW, "up", (message_id,), "POST", "http://up", b"", 200, b"", None, 0.1)])
    await store.set_meta("console_signed_out:1", str(NOW))
    assert await store.prune_traces(NOW + 1) == 1  # the exchange (the mail kept no raw)
    assert await store.get_meta("console_signed_out:1") is None
    trace = await store.message_trace(message_id)
    assert trace is not None and trace["exchanges"] == []

    for n in range(3):
        await store.record_audit(AuditEntry(NOW + n, "admin", "redeliver", str(n),
                                            via="api"))
    audit = await store.list_audit(limit=2)
    assert [a["target"] for a in audit] == ["2", "1"] and audit[0]["via"] == "api"
    assert [a["target"] for a in await store.list_audit(before_id=audit[-1]["id"])] == ["0"]

"""The store contract: every OutboxStore engine behaves the same (SQLite and PostgreSQL).

Tests go through the interface only. The last section runs two PostgreSQL stores (two pools,
standing for two bridge instances) against one database at once.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.errors import StoreUnavailable
from bridge.models import (
    DeliveryReport,
    ForwardJob,
    InboundMessage,
    InboundRecord,
    MailEnvelope,
    OutboundMail,
    ReplyRequest,
    SendOptions,
    SendRequest,
    StoredResponse,
)
from bridge.settings import load_settings
from bridge.store import OutboxStore, open_store
from tests.conftest import MEMORY_URL
from tests.outcomes import mark_failed, mark_sent, schedule_retry
from tests.pg import fresh_database

NOW = 1_700_000_000.0
WINDOW = 600.0
LEASE = 60.0


def req(phone: str = "+79990000001", **options: object) -> SendRequest:
    return SendRequest(account="acc", upstream="up", phone=phone, text="hello", parts=1,
                       encoding="gsm7", options=SendOptions(**options))  # type: ignore[arg-type]


def env(message_id: str | None = "<m1@example.org>") -> MailEnvelope:
    return MailEnvelope(mail_from="alice@example.org", recipients=("sms@bridge",),
                        message_id=message_id, peer="127.0.0.1", format="v1")


def mo(sms_id: str | None = "s1", text: str = "hi there", source: str = "prov") -> InboundMessage:
    return InboundMessage(source=source, kind="mo", sms_id=sms_id, phone="+79990000001",
                          text=text, recipient="1234", raw=b"a=1&b=%F2", charset="utf-8")


JOBS = (ForwardJob("email", "ops@example.org", b"mail-bytes"),
        ForwardJob("webhook", "crm", b'{"x": 1}'))
OK = StoredResponse(200, b"OK", "text/plain")


async def record(store: OutboxStore, message: InboundMessage, *, now: float = NOW,
                 state: str = "routed", response: StoredResponse | None = OK,
                 jobs: Sequence[ForwardJob] = JOBS) -> InboundRecord:
    return await store.record_inbound(message, now=now, dedup_window=WINDOW, state=state,
                                      response=response, jobs=jobs,
                                      forward_deadline=now + 86400)


async def sent_message(store: OutboxStore, provider_ids: Sequence[str],
                       poll_at: float | None = None, phone: str = "+79990000001") -> int:
    (message_id,) = (await store.enqueue(env(None), [(None, [req(phone)])], now=NOW,
                                         dedup_window=WINDOW)).message_ids
    claimed = await store.claim_due("o1", NOW, 100, LEASE)
    assert [m.id for m in claimed] == [message_id]
    await mark_sent(store, message_id, "o1", "up", provider_ids, NOW, poll_at=poll_at)
    return message_id


async def statuses(store: OutboxStore, message_id: int) -> list[str]:
    return [event["status"] for event in await store.message_events(message_id)]


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres", "memory"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "memory":
        # A test that opens the store by its URL (files, schema versions, two processes on
        # one database) is about a real engine's nature; the others run on memory too.
        if {"store_url", "two_instances"} & set(inspect.signature(request.function).parameters):
            pytest.skip("about a real engine: the in-memory store has no URL")
        yield MEMORY_URL
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
    else:
        async with fresh_database() as url:
            yield url


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


@pytest.fixture
async def two_instances(store_url: str) -> AsyncIterator[tuple[OutboxStore, OutboxStore]]:
    """Two stores on one database: two instances on PostgreSQL, or two workers of
    ``serve --workers 2`` on one SQLite file (each with its own writer)."""
    first, second = open_store(store_url), open_store(store_url)
    await asyncio.gather(first.open(), second.open())  # migrations race: one waits
    try:
        yield first, second
    finally:
        await asyncio.gather(first.close(), second.close())


# -- outbox ---------------------------------------------------------------------------------


async def test_enqueue_claim_mark_sent_and_events(store: OutboxStore) -> None:
    reply = ReplyRequest("alice@example.org", "s", "<m1@example.org>", None, True,
                         ("+79990000001", "+79990000002"))
    result = await store.enqueue(
        env(), [("k1", [req("+79990000001", originator="Shop", fallbacks=("b",)),
                        req("+79990000002")])],
        now=NOW, dedup_window=WINDOW, reply=reply)
    assert not result.duplicate and len(result.message_ids) == 2
    [answer] = await store.list_mails()
    assert answer["kind"] == "v2_answer"
    assert ReplyRequest.from_payload(bytes(answer["content"])) == (reply, result.message_ids)
    assert await store.next_due_at() == NOW

    claimed = await store.claim_due("o1", NOW, 10, LEASE)
    assert [m.id for m in claimed] == sorted(result.message_ids)
    first, second = claimed
    # A claim is no attempt: attempts counts the tries that ended (issue 12).
    assert (first.status, first.attempts, first.mail_from) == ("sending", 0, "alice@example.org")
    assert first.options.originator == "Shop" and first.fallbacks == ["b"]
    assert (first.phone, first.text, first.parts, first.created_at) == (
        "+79990000001", "hello", 1, NOW)
    assert await store.claim_due("o2", NOW, 10, LEASE) == []
    assert await store.next_due_at() == NOW + LEASE

    await mark_sent(store, first.id, "o1", "up", ["p1", "p2"], NOW + 1)
    await schedule_retry(store, second.id, "o1", "busy", NOW + 30, NOW + 1)
    (sent,) = await store.list_messages(status="sent")
    assert (sent.id, sent.upstream_used, sent.upstream_ids) == (first.id, "up", ["p1", "p2"])
    events = await store.message_events(first.id)
    assert [(e["status"], e["detail"]) for e in events] == [
        ("queued", None), ("sent", "up: p1, p2")]
    assert events[1]["at"] == NOW + 1
    (queued,) = await store.list_messages(status="queued")
    assert (queued.id, queued.last_error, queued.next_attempt_at) == (second.id, "busy", NOW + 30)
    assert await store.next_due_at() == NOW + 30

    (again,) = await store.claim_due("o1", NOW + 30, 10, LEASE)
    assert (again.id, again.attempts) == (second.id, 1)
    await mark_failed(store, second.id, "o1", "bad number", NOW + 31,
                            OutboundMail("bounce", "alice@example.org", b"bounce"))
    assert await statuses(store, second.id) == ["queued", "retry", "failed"]
    assert [m["kind"] for m in await store.list_mails()] == ["bounce", "v2_answer"]
    assert await store.next_due_at() is None
    assert [m.id for m in await store.list_messages(limit=1)] == [second.id]


async def test_message_id_dedup_window(store: OutboxStore) -> None:
    key = "<m1@example.org>\0sms@bridge"  # what the SMTP handler uses: NUL separated
    first = await store.enqueue(env(), [(key, [req()])], now=NOW, dedup_window=WINDOW)
    assert not first.duplicate and len(first.message_ids) == 1
    again = await store.enqueue(env(), [(key, [req()])], now=NOW + 10, dedup_window=WINDOW)
    assert again.duplicate and again.message_ids == ()
    # A mail to two recipients, one seen already: only the other's sends are queued.
    mixed = await store.enqueue(env(), [(key, [req()]), ("k2", [req("+79990000002")]),
                                        (None, [req("+79990000003")])],
                                now=NOW + 20, dedup_window=WINDOW)
    assert not mixed.duplicate and len(mixed.message_ids) == 2
    # After the window the key counts as new again.
    late = await store.enqueue(env(), [(key, [req()])], now=NOW + WINDOW + 1,
                               dedup_window=WINDOW)
    assert not late.duplicate
    assert len(await store.list_messages()) == 4
    # purge forgets old keys: after it, even a huge window finds nothing.
    await store.enqueue(env(), [("k3", [req()])], now=NOW, dedup_window=WINDOW)
    await store.purge(NOW + WINDOW + 5, WINDOW)
    fresh = await store.enqueue(env(), [("k3", [req()])], now=NOW + WINDOW + 5,
                                dedup_window=1e9)
    assert not fresh.duplicate
    kept = await store.enqueue(env(), [(key, [req()])], now=NOW + WINDOW + 6,
                               dedup_window=WINDOW)
    assert kept.duplicate


async def test_enqueue_many_at_once_keeps_each_mail_its_own(store: OutboxStore) -> None:
    """Concurrent mails share a group commit (one statement on PostgreSQL): each gets its
    own message ids in order, a key repeated inside the group is taken once, and windows
    may differ between callers."""
    await store.enqueue(env(), [("old", [req()])], now=NOW, dedup_window=WINDOW)

    def phones(n: int) -> list[SendRequest]:
        return [req(f"+7999{n:04d}{k:03d}", originator=f"o{n}") for k in range(n % 3 + 1)]

    results = await asyncio.gather(*(
        store.enqueue(env(f"<{n}@x>"),
                      [(f"k{n % 5}" if n % 2 else None, phones(n)),
                       *([("old", [req("+79990000009")])] if n == 7 else [])],
                      now=NOW + 1, dedup_window=WINDOW if n != 9 else WINDOW / 2)
        for n in range(20)))
    messages = {m.id: m for m in await store.list_messages(limit=1000)}
    for n, result in enumerate(results):
        if n % 2 == 0 or n < 10:  # keyless, or the first mail with its key
            assert not result.duplicate
            got = [messages[i] for i in result.message_ids]
            assert [m.phone for m in got] == [r.phone for r in phones(n)]
            assert {m.options.originator for m in got} == {f"o{n}"}
            assert list(result.message_ids) == sorted(result.message_ids)
        else:
            assert result.duplicate and result.message_ids == ()
    assert len(messages) == 1 + sum(len(phones(n)) for n in range(20) if n % 2 == 0 or n < 10)
    for message_id in messages:
        assert await statuses(store, message_id) == ["queued"]


async def test_claim_respects_due_time_and_leases(store: OutboxStore) -> None:
    (later,) = (await store.enqueue(env(None), [(None, [req(not_before=NOW + 100)])], now=NOW,
                                    dedup_window=WINDOW)).message_ids
    assert await store.claim_due("o1", NOW + 99, 10, LEASE) == []
    assert await store.next_due_at() == NOW + 100
    (claimed,) = await store.claim_due("o1", NOW + 100, 10, LEASE)
    assert claimed.id == later and claimed.next_attempt_at == NOW + 100
    # A live lease is not claimed again; an expired one is, by anybody.
    assert await store.claim_due("o2", NOW + 100 + LEASE - 1, 10, LEASE) == []
    (taken,) = await store.claim_due("o2", NOW + 100 + LEASE, 10, LEASE)
    # Neither claim counts as an attempt (the first holder may have died before sending).
    assert (taken.id, taken.attempts) == (later, 0)
    # The first holder's outcomes no longer count.
    await mark_sent(store, later, "o1", "up", ["late"], NOW + 200)
    await schedule_retry(store, later, "o1", "x", NOW + 300, NOW + 200)
    await mark_failed(store, later, "o1", "x", NOW + 200,
                            OutboundMail("bounce", "alice@example.org", b"b"))
    (row,) = await store.list_messages()
    assert (row.status, row.upstream_ids) == ("sending", [])
    assert await statuses(store, later) == ["queued"]
    assert await store.list_mails() == []
    await mark_sent(store, later, "o2", "up", ["p9"], NOW + 201)
    assert await statuses(store, later) == ["queued", "sent"]


async def test_claim_limit_and_order(store: OutboxStore) -> None:
    ids = (await store.enqueue(env(None), [(None, [req(f"+7999000000{i}") for i in range(5)])],
                               now=NOW, dedup_window=WINDOW)).message_ids
    first = await store.claim_due("o1", NOW, 2, LEASE)
    second = await store.claim_due("o1", NOW, 10, LEASE)
    assert [m.id for m in first] == list(ids[:2])
    assert [m.id for m in second] == list(ids[2:])


async def test_expire_leases_of_dead_owners(store: OutboxStore) -> None:
    await store.enqueue(env(None), [(None, [req("+79990000001"), req("+79990000002")])],
                        now=NOW, dedup_window=WINDOW)
    (dead_msg,) = await store.claim_due("dead:1", NOW, 1, LEASE)
    (live_msg,) = await store.claim_due("live:2", NOW, 1, LEASE)
    await record(store, mo("s1"))
    assert len(await store.claim_forward_jobs("dead:1", NOW, 1, LEASE)) == 1
    await store.queue_mail(OutboundMail("bounce", "a@b", b"x"), NOW)
    assert len(await store.claim_mails("dead:1", NOW, 10, LEASE)) == 1

    assert await store.expire_leases(lambda owner: owner.startswith("dead:")) == 3
    assert [m.id for m in await store.claim_due("o3", NOW + 1, 10, LEASE)] == [dead_msg.id]
    assert len(await store.claim_forward_jobs("o3", NOW + 1, 10, LEASE)) == 2
    assert len(await store.claim_mails("o3", NOW + 1, 10, LEASE)) == 1
    assert live_msg.id != dead_msg.id
    assert await store.expire_leases(lambda owner: False) == 0


async def test_outgoing_mail_jobs(store: OutboxStore) -> None:
    mail = OutboundMail("bounce", "alice@example.org", b"\x00binary\xff")
    await store.queue_mail(mail, NOW)
    (claimed,) = await store.claim_mails("o1", NOW, 10, LEASE)
    mail_id, got, attempts = claimed
    assert (got, attempts) == (mail, 1)
    assert await store.claim_mails("o2", NOW + 1, 10, LEASE) == []
    ((again_id, _, again_attempts),) = await store.claim_mails("o2", NOW + LEASE, 10, LEASE)
    assert (again_id, again_attempts) == (mail_id, 2)
    await store.mail_retry(mail_id, "o1", "stale holder", NOW + 50)  # o2 holds it now
    await store.mail_retry(mail_id, "o2", "smarthost down", NOW + 500)
    assert await store.claim_mails("o1", NOW + 499, 10, LEASE) == []
    ((_, _, third),) = await store.claim_mails("o1", NOW + 500, 10, LEASE)
    assert third == 3
    await store.mail_done(mail_id, "o2", NOW + 501)  # not the holder: ignored
    (row,) = await store.list_mails()
    assert row["status"] == "sending"
    await store.mail_done(mail_id, "o1", NOW + 501)
    (row,) = await store.list_mails()
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 3, None)
    assert bytes(row["content"]) == mail.content
    assert await store.claim_mails("o1", NOW + 10_000, 10, LEASE) == []

    await store.queue_mail(OutboundMail("reply", "bob@example.org", b"r"), NOW)
    ((other, _, _),) = await store.claim_mails("o1", NOW, 10, LEASE)
    await store.mail_retry(other, "o1", "gave up", None)
    assert [(m["status"], m["last_error"]) for m in await store.list_mails()] == [
        ("failed", "gave up"), ("sent", None)]


# -- inbound --------------------------------------------------------------------------------


async def test_record_inbound_insert_or_fetch_by_sms_id(store: OutboxStore) -> None:
    first = await record(store, mo("s1"))
    assert (first.duplicate, first.state, first.response, first.received_at) == (
        False, "routed", OK, NOW)
    other = StoredResponse(500, b"other", "text/html")
    again = await record(store, mo("s1", text="changed"), now=NOW + 99_999, response=other,
                         state="unrouted")
    assert (again.id, again.duplicate, again.state, again.response) == (
        first.id, True, "routed", OK)
    assert again.received_at == NOW
    assert await store.get_inbound("prov", "s1") == again
    assert await store.get_inbound("prov", "s2") is None
    assert await store.get_inbound("other", "s1") is None
    elsewhere = await record(store, mo("s1", source="other"))
    assert not elsewhere.duplicate and elsewhere.id != first.id
    # An id with a NUL and non-ASCII survives as a key on every engine.
    odd = await record(store, mo("a\x00b-é"))
    assert not odd.duplicate
    assert (await record(store, mo("a\x00b-é"))).id == odd.id
    assert (await store.get_inbound("prov", "a\x00b-é")) is not None
    assert len(await store.list_forward_jobs()) == 6
    rows = await store.list_inbound()
    assert [r["id"] for r in rows] == [odd.id, elsewhere.id, first.id]
    assert (rows[2]["text"], rows[2]["forwards"], rows[2]["delivered"]) == ("hi there", 2, 0)


async def test_record_inbound_many_at_once_each_with_its_own_jobs(store: OutboxStore) -> None:
    """Concurrent messages share a group commit (one statement on PostgreSQL): each keeps its
    own forwarding jobs and each sms_id is inserted once, repeats inside the group too."""
    await record(store, mo("s7"), jobs=(ForwardJob("webhook", "t-s7", b"old"),))
    records = await asyncio.gather(*(
        record(store, mo(f"s{n % 10}", text=f"text {n}"),
               jobs=(ForwardJob("email", f"e-s{n % 10}", b"m"),
                     ForwardJob("webhook", f"t-s{n % 10}", str(n).encode())))
        for n in range(30)))
    by_id: dict[int, set[str]] = {}
    for n, rec in enumerate(records):
        by_id.setdefault(rec.id, set()).add(f"s{n % 10}")
    assert all(len(ids) == 1 for ids in by_id.values()) and len(by_id) == 10
    assert sum(not r.duplicate for r in records) == 9  # s7 was there before
    jobs = await store.list_forward_jobs()
    assert len(jobs) == 1 + 9 * 2
    for job in jobs:
        assert by_id[job["inbound_id"]] == {job["target"].partition("-")[2]}
    texts = {row["sms_id"]: row["text"] for row in await store.list_inbound()}
    assert texts["s3"] == "text 3" and texts["s7"] == "hi there"


async def test_record_inbound_without_sms_id_uses_content_window(store: OutboxStore) -> None:
    first = await record(store, mo(None))
    assert not first.duplicate
    again = await record(store, mo(None), now=NOW + 10, response=None)
    assert (again.id, again.duplicate, again.response) == (first.id, True, OK)
    assert not (await record(store, mo(None, text="other"), now=NOW + 10)).duplicate
    # An id-carrying message with the same content is not a repeat of one without.
    assert not (await record(store, mo("x1"), now=NOW + 10)).duplicate
    late = await record(store, mo(None), now=NOW + WINDOW + 1)
    assert not late.duplicate and late.id != first.id
    assert len(await store.list_inbound()) == 4


async def test_complete_inbound_first_answer_wins(store: OutboxStore) -> None:
    pending = await record(store, mo("sc1"), state="pending", response=None, jobs=())
    assert pending.response is None and pending.state == "pending"
    first = StoredResponse(200, b"thanks", "text/plain")
    assert await store.complete_inbound(pending.id, first, None) == first
    late = StoredResponse(200, b"fallback", "text/plain")
    assert await store.complete_inbound(pending.id, late, "timeout") == first
    stored = await store.get_inbound("prov", "sc1")
    assert stored is not None and (stored.state, stored.response) == ("answered", first)
    # An answer recorded with the message stands too.
    routed = await record(store, mo("sc2"))
    assert await store.complete_inbound(routed.id, late, None) == OK


async def test_a_pending_answer_is_read_and_taken_over_once_its_hold_ran_out(
    store: OutboxStore,
) -> None:
    """A repeat of a pending short-code hit polls for its answer; the call is taken over only
    after the caller's hold (``lease`` seconds from the hit, then from each take-over)."""
    pending = await record(store, mo("sc1"), state="pending", response=None, jobs=())
    assert await store.inbound_answer(pending.id) is None
    assert not await store.claim_inbound_answer(pending.id, NOW + 9.9, 10.0)
    assert await store.claim_inbound_answer(pending.id, NOW + 10.0, 10.0)
    assert not await store.claim_inbound_answer(pending.id, NOW + 19.9, 10.0)  # held again
    assert await store.claim_inbound_answer(pending.id, NOW + 20.0, 10.0)
    answer = StoredResponse(200, b"thanks", "text/plain")
    assert await store.complete_inbound(pending.id, answer, None) == answer
    assert await store.inbound_answer(pending.id) == answer
    assert not await store.claim_inbound_answer(pending.id, NOW + 1e6, 10.0)  # answered
    routed = await record(store, mo("sc2"))
    assert await store.inbound_answer(routed.id) == OK
    assert not await store.claim_inbound_answer(routed.id, NOW + 1e6, 10.0)


async def test_forward_jobs_lifecycle(store: OutboxStore) -> None:
    inbound = await record(store, mo("s1"))
    (hook,) = await store.claim_forward_jobs("o1", NOW, 10, LEASE, kinds=("webhook",))
    assert (hook.inbound_id, hook.kind, hook.target, hook.payload, hook.attempts,
            hook.deadline) == (inbound.id, "webhook", "crm", b'{"x": 1}', 1, NOW + 86400)
    assert await store.claim_forward_jobs("o1", NOW, 10, LEASE, kinds=("webhook",)) == []
    assert await store.claim_forward_jobs("o1", NOW, 10, LEASE, kinds=()) == []
    (mail,) = await store.claim_forward_jobs("o1", NOW, 10, LEASE)
    assert mail.kind == "email"

    await store.forward_done(hook.id, "someone-else", NOW + 1)  # not the holder: ignored
    await store.forward_done(hook.id, "o1", NOW + 1)
    await store.forward_retry(mail.id, "o1", "smtp down", NOW + 100)
    jobs = {j["id"]: j for j in await store.list_forward_jobs()}
    assert jobs[hook.id]["status"] == "delivered"
    assert (jobs[mail.id]["status"], jobs[mail.id]["last_error"]) == ("queued", "smtp down")
    assert (await store.list_inbound())[0]["delivered"] == 1
    assert await store.claim_forward_jobs("o1", NOW + 99, 10, LEASE) == []
    (retried,) = await store.claim_forward_jobs("o2", NOW + 100, 10, LEASE)
    assert (retried.id, retried.attempts) == (mail.id, 2)
    # An expired lease is taken over; the old holder's outcome is then ignored.
    (taken,) = await store.claim_forward_jobs("o3", NOW + 100 + LEASE, 10, LEASE)
    assert (taken.id, taken.attempts) == (mail.id, 3)
    await store.forward_dead(mail.id, "o2", "late")
    assert (await store.list_forward_jobs(status="sending"))[0]["id"] == mail.id
    await store.forward_dead(mail.id, "o3", "gave up")
    (dead,) = await store.list_forward_jobs(status="dead")
    assert (dead["id"], dead["last_error"]) == (mail.id, "gave up")
    assert (await store.queue_stats(NOW))["dead_letters"] == 1.0

    assert await store.redeliver([hook.id], NOW + 500, NOW + 9999) == 0  # not dead
    assert await store.redeliver([mail.id, mail.id], NOW + 500, NOW + 9999) == 1
    assert await store.claim_forward_jobs("o4", NOW + 499, 10, LEASE) == []
    (back,) = await store.claim_forward_jobs("o4", NOW + 500, 10, LEASE)
    assert (back.id, back.attempts, back.deadline) == (mail.id, 1, NOW + 9999)
    await store.forward_dead(mail.id, "o4", "again")
    assert await store.redeliver(None, NOW + 600, NOW + 9999) == 1
    assert await store.list_forward_jobs(status="dead") == []


# -- delivery reports and status polls ------------------------------------------------------


async def test_delivery_reports_matched_unmatched_and_early(store: OutboxStore) -> None:
    message_id = await sent_message(store, ["p1"], poll_at=NOW + 30)
    matched = await store.record_delivery_reports("prov", [
        DeliveryReport("p1", "delivered", "DELIVRD"),
        DeliveryReport("nobody", "delivered", "DELIVRD"),
    ], NOW + 5)
    assert matched == 1
    events = await store.message_events(message_id)
    assert (events[-1]["status"], events[-1]["detail"], events[-1]["at"]) == (
        "delivered", "DELIVRD (p1)", NOW + 5)
    # A final status ends polling.
    assert await store.due_status_polls("up", NOW + 10_000, 10) == []

    # A report that comes before mark_sent recorded the provider's id is kept, then applied.
    (early_id,) = (await store.enqueue(env(None), [(None, [req("+79990000009")])], now=NOW,
                                       dedup_window=WINDOW)).message_ids
    await store.claim_due("o1", NOW, 10, LEASE)
    assert await store.record_delivery_reports("prov", [
        DeliveryReport("p2", "undelivered", "UNDELIV", error_code=34)], NOW + 1) == 0
    await mark_sent(store, early_id, "o1", "up", ["p2"], NOW + 2, poll_at=NOW + 30)
    assert await statuses(store, early_id) == ["queued", "sent", "undelivered"]
    assert (await store.message_events(early_id))[-1]["detail"] == "UNDELIV (p2) error 34"
    assert await store.due_status_polls("up", NOW + 10_000, 10) == []
    # Once matched, the early report is not applied a second time.
    assert await store.record_delivery_reports("prov", [
        DeliveryReport("p2", "undelivered", "UNDELIV")], NOW + 3) == 1
    assert await statuses(store, early_id) == ["queued", "sent", "undelivered", "undelivered"]
    # Listed newest first; the unmatched ones alone on request.
    listed = await store.list_delivery_reports()
    assert [(r["provider_id"], r["message_id"]) for r in listed] == [
        ("p2", early_id), ("p2", early_id), ("nobody", None), ("p1", message_id)]
    assert (listed[1]["status"], listed[1]["raw_status"], listed[1]["error_code"],
            listed[1]["source"], listed[1]["received_at"]) == (
        "undelivered", "UNDELIV", 34, "prov", NOW + 1)
    [unmatched] = await store.list_delivery_reports(unmatched=True)
    assert unmatched["provider_id"] == "nobody"
    assert len(await store.list_delivery_reports(limit=2)) == 2


async def test_reports_command_lists_unmatched_reports(
    store: OutboxStore, store_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bridge.cli import main

    await sent_message(store, ["p1"])
    await store.record_delivery_reports("prov", [
        DeliveryReport("p1", "delivered", "DELIVRD"),
        DeliveryReport("lost-42", "undelivered", "UNDELIV", error_code=11)], NOW + 5)
    monkeypatch.setenv("BRIDGE_STORE__URL", store_url)
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["reports", "--unmatched", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["provider_id"], row["message_id"], row["error_code"]) == ("lost-42", None, 11)
    assert await asyncio.to_thread(main, ["reports"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("2 delivery report(s)")
    assert "lost-42" in table and "undelivered (UNDELIV) error 11" in table


async def test_read_commands_neither_create_nor_migrate_the_store(
    store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run in the wrong directory, or by a newer sms-bridge than the servers, a command that
    only reads must not create an empty store or upgrade a shared one: it says what to do."""
    import asyncpg  # type: ignore[import-untyped]

    from bridge.cli import main

    monkeypatch.setenv("BRIDGE_STORE__URL", store_url)
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    for command in (["reports"], ["messages"], ["inbound"], ["dead-letters"]):
        assert await asyncio.to_thread(main, command) == 1
        err = capsys.readouterr().err
        assert err.startswith("sms-bridge: ") and "sms-bridge migrate" in err
        assert "Traceback" not in err and err.count("\n") == 1
    if store_url.startswith("sqlite:///"):
        assert not os.path.exists(store_url.removeprefix("sqlite:///"))  # noqa: ASYNC240
    else:
        conn = await asyncpg.connect(store_url)
        try:
            assert await conn.fetchval("SELECT to_regclass('schema_version')") is None
        finally:
            await conn.close()
    assert await asyncio.to_thread(main, ["migrate"]) == 0
    assert await asyncio.to_thread(main, ["reports"]) == 0
    out = capsys.readouterr().out
    assert ": created at schema version " in out and "0 delivery report(s)" in out


async def test_multipart_status_aggregates_parts(store: OutboxStore) -> None:
    message_id = await sent_message(store, ["a", "b"], poll_at=NOW + 30)
    await store.record_delivery_reports("prov", [DeliveryReport("a", "delivered", "D")], NOW)
    # One part of two delivered: still on its way, still polled.
    due = await store.due_status_polls("up", NOW + 30, 10)
    assert due == [(message_id, ["a", "b"], 0)]
    await store.reschedule_status_polls([(message_id, NOW + 40)])
    await store.record_delivery_reports("prov", [DeliveryReport("b", "delivered", "D")], NOW)
    assert await store.due_status_polls("up", NOW + 10_000, 10) == []

    failed = await sent_message(store, ["c", "d"], poll_at=NOW + 30, phone="+79990000002")
    await store.record_delivery_reports("prov", [DeliveryReport("c", "rejected", "R")], NOW)
    assert await store.due_status_polls("up", NOW + 10_000, 10) == []  # one failed: final
    assert (await statuses(store, failed))[-1] == "rejected"


async def test_status_polls_due_and_rescheduled(store: OutboxStore) -> None:
    message_id = await sent_message(store, ["p1"], poll_at=NOW + 30)
    await sent_message(store, ["p2"], phone="+79990000002")  # no poll_at: never polled
    assert await store.due_status_polls("up", NOW + 29, 10) == []
    assert await store.due_status_polls("other", NOW + 30, 10) == []
    assert await store.due_status_polls("up", NOW + 30, 10) == [(message_id, ["p1"], 0)]
    # Claimed: nobody else polls it until rescheduled or until the claim's time is up.
    assert await store.due_status_polls("up", NOW + 31, 10) == []
    assert await store.due_status_polls("up", NOW + 30 + LEASE, 10, LEASE) == [
        (message_id, ["p1"], 0)]
    await store.reschedule_status_polls([(message_id, NOW + 100)])
    assert await store.due_status_polls("up", NOW + 99, 10) == []
    assert await store.due_status_polls("up", NOW + 100, 10) == [(message_id, ["p1"], 1)]
    await store.reschedule_status_polls([(message_id, None)])
    assert await store.due_status_polls("up", NOW + 1e6, 10) == []
    await store.reschedule_status_polls([(message_id, NOW + 200)])  # stopped stays stopped
    assert await store.due_status_polls("up", NOW + 1e6, 10) == []
    await store.reschedule_status_polls([])


# -- small things ---------------------------------------------------------------------------


async def test_named_leases_and_heartbeats(store: OutboxStore) -> None:
    name = "inbound-poll:x"
    assert await store.acquire_lease(name, "a", NOW, 30)
    assert not await store.acquire_lease(name, "b", NOW + 10, 30)
    assert await store.acquire_lease(name, "a", NOW + 10, 30)  # renewed until NOW + 40
    assert not await store.acquire_lease(name, "b", NOW + 39, 30)
    assert await store.acquire_lease("other", "b", NOW + 39, 30)
    assert await store.acquire_lease(name, "b", NOW + 40, 30)  # expired: taken over
    await store.release_lease(name, "a")  # not the holder: nothing happens
    assert not await store.acquire_lease(name, "a", NOW + 41, 30)
    await store.release_lease(name, "b")
    assert await store.acquire_lease(name, "a", NOW + 42, 30)

    assert await store.heartbeat("host:1:a", NOW, 15) == 1
    assert await store.heartbeat("host:2:b", NOW + 5, 15) == 2
    assert await store.heartbeat("host:1:a", NOW + 10, 15) == 2
    assert await store.heartbeat("host:1:a", NOW + 21, 15) == 1  # b's mark is too old


async def test_meta(store: OutboxStore) -> None:
    assert await store.get_meta("inbound_cursor:x") is None
    await store.set_meta("inbound_cursor:x", "42")
    await store.set_meta("inbound_cursor:x", "43")
    await store.set_meta("other", "1")
    assert await store.get_meta("inbound_cursor:x") == "43"


async def test_reply_scripts_crud(store: OutboxStore) -> None:
    assert await store.list_reply_scripts() == []
    script = {"shortcode": "1234", "keyword": "win", "url": "http://h/s", "method": "POST",
              "timeout": 2.5, "secret": None}
    created = await store.save_reply_script(script, NOW)
    assert created is not None
    assert {k: created[k] for k in script} == script
    assert (created["created_at"], created["updated_at"]) == (NOW, NOW)
    updated = await store.save_reply_script({**script, "keyword": None, "secret": "s"},
                                            NOW + 1, created["id"])
    assert updated is not None and (updated["keyword"], updated["secret"]) == (None, "s")
    assert (updated["created_at"], updated["updated_at"]) == (NOW, NOW + 1)
    assert await store.save_reply_script(script, NOW, 9999) is None
    assert await store.list_reply_scripts() == [updated]
    assert await store.delete_reply_script(created["id"]) is True
    assert await store.delete_reply_script(created["id"]) is False
    assert await store.list_reply_scripts() == []


async def test_queue_stats(store: OutboxStore) -> None:
    assert await store.queue_stats(NOW) == {"messages_queued": 0.0, "oldest_queued_age": 0.0,
                                            "forwards_queued": 0.0, "dead_letters": 0.0}
    await store.enqueue(env(None), [(None, [req()])], now=NOW, dedup_window=WINDOW)
    await store.enqueue(env(None), [(None, [req()])], now=NOW + 5, dedup_window=WINDOW)
    await store.claim_due("o1", NOW + 5, 1, LEASE)
    await record(store, mo("s1"))
    (job,) = await store.claim_forward_jobs("o1", NOW, 1, LEASE, kinds=("webhook",))
    await store.forward_dead(job.id, "o1", "x")
    assert await store.queue_stats(NOW + 10) == {"messages_queued": 2.0,
                                                 "oldest_queued_age": 10.0,
                                                 "forwards_queued": 1.0, "dead_letters": 1.0}


async def test_bridge_id_is_stable(store: OutboxStore, store_url: str) -> None:
    first = await store.bridge_id()
    assert first and await store.bridge_id() == first
    await store.ping()
    await store.close()
    reopened = open_store(store_url)
    await reopened.open()
    try:
        assert await reopened.bridge_id() == first
    finally:
        await reopened.close()


async def test_a_store_of_the_previous_schema_is_migrated_with_its_data(
    store_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    engine = sys.modules[type(open_store(store_url)).__module__]
    current = list(engine.MIGRATIONS)
    monkeypatch.setattr(engine, "MIGRATIONS", current[:-1])
    old = open_store(store_url)
    await old.open()
    first = await record(old, mo(None))
    await old.close()
    monkeypatch.setattr(engine, "MIGRATIONS", current)
    upgraded = open_store(store_url)
    await upgraded.open()
    try:
        again = await record(upgraded, mo(None), now=NOW + 10)
        assert (again.id, again.duplicate) == (first.id, True)
        assert not (await record(upgraded, mo("with-id"))).duplicate
        assert len(await upgraded.list_inbound()) == 2
    finally:
        await upgraded.close()


async def test_closed_store_is_unavailable(store: OutboxStore) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()


def test_store_urls_pick_the_engine(tmp_path: Path) -> None:
    from bridge.store.postgres import PostgresStore
    from bridge.store.sqlite import SqliteStore

    assert isinstance(open_store(f"sqlite:///{tmp_path}/x.db"), SqliteStore)
    assert isinstance(open_store("postgresql://u@h/db"), PostgresStore)
    assert isinstance(open_store("postgres://u@h/db"), PostgresStore)
    with pytest.raises(ValueError, match="unsupported"):
        open_store("mysql://u@h/db")
    for url in ("sqlite:///x.db", "postgresql://u@h:5432/db", "postgres://u@h/db"):
        assert load_settings(None, store={"url": url}).store.url == url
    with pytest.raises(ValidationError, match=r"sqlite:///PATH.*postgresql://.*postgres://"):
        load_settings(None, store={"url": "mysql://u@h/db"})


# -- PostgreSQL only: schema versions, failures, several instances --------------------------


async def test_postgres_newer_schema_refuses_to_open(pg_url: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    from bridge.store.postgres import MIGRATIONS

    store = open_store(pg_url)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT MAX(version) FROM schema_migrations") \
            == len(MIGRATIONS)
        await conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    finally:
        await conn.close()
    newer = open_store(pg_url)
    with pytest.raises(StoreUnavailable, match=rf"version 99.*\({len(MIGRATIONS)}\)"):
        await newer.open()
    with pytest.raises(StoreUnavailable):
        await newer.ping()  # did not stay half-open


async def test_postgres_unreachable_is_store_unavailable() -> None:
    from bridge.store.postgres import PostgresStore

    store = PostgresStore("postgresql://postgres@127.0.0.1:1/none", busy_timeout=1.0)
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        await store.open()


async def test_postgres_lost_connections_are_store_unavailable(pg_url: str) -> None:
    import asyncpg

    from bridge.store.postgres import PostgresStore

    store = PostgresStore(pg_url, max_size=1)
    await store.open()
    try:
        await store.ping()
        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await admin.close()
        try:
            await store.ping()  # either reconnects at once or answers "try later" ...
        except StoreUnavailable:
            pass
        await store.ping()  # ... and then works again
        assert await store.get_meta("x") is None
    finally:
        await store.close()


async def test_two_instances_never_claim_the_same_message(
    two_instances: tuple[OutboxStore, OutboxStore], store_url: str,
) -> None:
    first, second = two_instances
    ids = (await first.enqueue(env(None), [(None, [req(f"+7999{i:07d}") for i in range(200)])],
                               now=NOW, dedup_window=WINDOW)).message_ids
    assert len(ids) == 200

    async def drain(store: OutboxStore, owner: str) -> list[int]:
        got: list[int] = []
        while batch := await store.claim_due(owner, NOW, 7, LEASE):
            got.extend(m.id for m in batch)
        return got

    results = await asyncio.gather(*(drain(s, f"{name}:{n}") for n in range(4)
                                     for name, s in (("one", first), ("two", second))))
    by_first = [i for r in results[0::2] for i in r]
    by_second = [i for r in results[1::2] for i in r]
    assert len(by_first) + len(by_second) == 200  # nobody claimed anything twice
    assert set(by_first) | set(by_second) == set(ids)
    assert not set(by_first) & set(by_second)
    if store_url.startswith("postgresql"):
        # Concurrent claims do interleave there; one SQLite writer may take them all.
        assert by_first and by_second


async def test_two_instances_record_one_inbound_per_sms_id(
    two_instances: tuple[OutboxStore, OutboxStore],
) -> None:
    first, second = two_instances
    responses = [StoredResponse(200, f"answer {n}".encode(), "text/plain") for n in range(50)]
    records = await asyncio.gather(*(
        record(first if n % 2 else second, mo("same"), response=responses[n])
        for n in range(50)))
    assert sum(not r.duplicate for r in records) == 1
    (winner,) = [r for r in records if not r.duplicate]
    assert {r.id for r in records} == {winner.id}
    assert {r.response for r in records} == {winner.response}
    assert len(await first.list_inbound()) == 1
    assert len(await second.list_forward_jobs()) == len(JOBS)

    # Without sms_id the content window holds across instances too.
    unnamed = await asyncio.gather(*(record(first if n % 2 else second, mo(None, text="x"))
                                     for n in range(20)))
    assert sum(not r.duplicate for r in unnamed) == 1
    assert len({r.id for r in unnamed}) == 1
    assert len(await first.list_forward_jobs()) == 2 * len(JOBS)


async def test_two_instances_take_a_pending_answer_over_once(
    two_instances: tuple[OutboxStore, OutboxStore],
) -> None:
    first, second = two_instances
    pending = await record(first, mo("sc"), state="pending", response=None, jobs=())
    claims = await asyncio.gather(*(
        (first if n % 2 else second).claim_inbound_answer(pending.id, NOW + 10, 10.0)
        for n in range(20)))
    assert claims.count(True) == 1


async def test_two_instances_enqueue_one_mail_per_message_id(
    two_instances: tuple[OutboxStore, OutboxStore],
) -> None:
    first, second = two_instances
    results = await asyncio.gather(*(
        (first if n % 2 else second).enqueue(
            env(), [("<dup@x>\0sms@bridge", [req(), req("+79990000002")])],
            now=NOW, dedup_window=WINDOW)
        for n in range(20)))
    assert sum(not r.duplicate for r in results) == 1
    assert all(r.message_ids == () for r in results if r.duplicate)
    assert len(await second.list_messages()) == 2


async def test_two_instances_one_named_lease_holder(
    two_instances: tuple[OutboxStore, OutboxStore],
) -> None:
    first, second = two_instances
    got = await asyncio.gather(*(
        (first if n % 2 else second).acquire_lease("inbound-poll:x", f"owner{n}", NOW, 30)
        for n in range(20)))
    assert sum(got) == 1

"""Delivery statuses under repeated and out-of-order reports, on both stores and through the
real DLR endpoint.

Providers repeat reports (a callback retried, a poll answering again) and deliver them out
of order (a push overtaking a poll, an intermediate status arriving late). A final status
never returns to a non-final one; between two different finals the provider's later
timestamp wins; without a timestamp the first final stays; every report stays in the
history.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest

from bridge.models import DeliveryReport, MailEnvelope, SendRequest
from bridge.store import OutboxStore
from bridge.store.common import FINAL_STATUSES, report_time
from tests.conftest import BOTH_STORES, BridgeFactory
from tests.doubles.smstraffic import SmsTrafficDouble
from tests.outcomes import mark_sent
from tests.test_smtp_intake import send

NOW = 1_700_000_000.0
LEASE = 60.0


def req(phone: str) -> SendRequest:
    return SendRequest(account="acc", upstream="up", phone=phone, text="hello", parts=1,
                       encoding="gsm7")


async def sent_messages(store: OutboxStore, parts: Sequence[Sequence[str]]) -> list[int]:
    """One sent message per entry of ``parts`` (its provider ids), in one mail."""
    envelope = MailEnvelope(mail_from="a@example.org", recipients=("sms@bridge",),
                            message_id=None, peer="127.0.0.1", format="v1")
    result = await store.enqueue(
        envelope, [(None, [req(f"+7999{n:07d}") for n in range(len(parts))])],
        now=NOW, dedup_window=600.0)
    ids = list(result.message_ids)
    claimed = await store.claim_due("o1", NOW, len(ids), LEASE)
    assert sorted(m.id for m in claimed) == sorted(ids)
    await asyncio.gather(*(mark_sent(store, message_id, "o1", "up", provider_ids, NOW)
                           for message_id, provider_ids in zip(ids, parts, strict=True)))
    return ids


async def delivery_statuses(store: OutboxStore) -> dict[int, str | None]:
    return {m.id: m.delivery_status for m in await store.list_messages(limit=10_000)}


def distinct_orders(reports: Sequence[DeliveryReport]) -> list[tuple[DeliveryReport, ...]]:
    """Every order of ``reports`` (repeats included once per distinct order)."""
    return sorted(set(itertools.permutations(reports)), key=repr)


def renamed(report: DeliveryReport, suffix: str) -> DeliveryReport:
    return DeliveryReport(f"{report.provider_id}-{suffix}", report.status, report.raw_status,
                          report.error_code, report.at)


async def apply_every_order(
    store: OutboxStore, parts: Sequence[str], reports: Sequence[DeliveryReport],
) -> tuple[list[int], set[str]]:
    """Each distinct order of ``reports`` on its own message (all orders advance together,
    one report per message and step). After each step, no message whose status was final
    has a non-final one. Returns the message ids and the statuses they ended with."""
    orders = distinct_orders(reports)
    ids = await sent_messages(store, [[f"{p}-{n}" for p in parts] for n in range(len(orders))])
    before = await delivery_statuses(store)
    for step in range(len(reports)):
        await store.record_delivery_reports(
            "prov", [renamed(order[step], str(n)) for n, order in enumerate(orders)],
            NOW + step)
        after = await delivery_statuses(store)
        regressed = {message_id: (before[message_id], after[message_id]) for message_id in ids
                     if before[message_id] in FINAL_STATUSES
                     and after[message_id] not in FINAL_STATUSES}
        assert regressed == {}, f"final status went back at step {step}"
        before = after
    return ids, {before[message_id] or "" for message_id in ids}


@BOTH_STORES
async def test_one_part_shuffled_and_repeated_reports_end_on_the_latest_final(
    store: OutboxStore,
) -> None:
    # SMS Traffic: callbacks give "YYYY-MM-DD hh:mm:ss" in UTC+3 (002 line 1115), polls
    # RFC 3339 (line 356); 09:32Z is 12:32 in UTC+3, the latest of the finals.
    reports = [
        DeliveryReport("p", "sent", "Buffered SMSC", at="2025-12-06 12:30:00"),
        DeliveryReport("p", "sent", "Buffered SMSC", at="2025-12-06 12:30:00"),
        DeliveryReport("p", "undelivered", "Non Delivered", at="2025-12-06 12:31:00"),
        DeliveryReport("p", "expired", "Expired", at="2025-12-06 12:31:30"),
        DeliveryReport("p", "delivered", "Delivered", at="2025-12-06T09:32:00Z"),
        DeliveryReport("p", "delivered", "Delivered", at="2025-12-06T09:32:00Z"),
    ]
    ids, finals = await apply_every_order(store, ["p"], reports)
    assert len(ids) == 6 * 5 * 4 * 3 * 2 // (2 * 2)
    assert finals == {"delivered"}
    # Every report is in the history: the message's events and the report list.
    for message_id in (ids[0], ids[-1]):
        events = [e["status"] for e in await store.message_events(message_id)]
        assert events[:2] == ["queued", "sent"]
        assert sorted(events[2:]) == sorted(r.status for r in reports)
    assert len(await store.list_delivery_reports(limit=100_000)) == len(ids) * len(reports)


@BOTH_STORES
async def test_multipart_message_is_delivered_when_every_part_is_in_any_order(
    store: OutboxStore,
) -> None:
    reports = [
        DeliveryReport("a", "sent", "Buffered SMSC", at="2025-12-06 12:00:00"),
        DeliveryReport("a", "undelivered", "Non Delivered", at="2025-12-06 12:01:00"),
        DeliveryReport("a", "undelivered", "Non Delivered", at="2025-12-06 12:01:00"),
        DeliveryReport("a", "delivered", "Delivered", at="2025-12-06 12:03:00"),
        DeliveryReport("b", "delivered", "Delivered", at="2025-12-06 12:02:00"),
    ]
    ids, finals = await apply_every_order(store, ["a", "b"], reports)
    assert len(ids) == 5 * 4 * 3 * 2 // 2
    assert finals == {"delivered"}


@BOTH_STORES
async def test_a_later_final_wins_and_without_timestamps_the_first_final_stays(
    store: OutboxStore,
) -> None:
    cases: list[tuple[list[DeliveryReport], str]] = [
        # Later timestamp wins, whichever arrives first.
        ([DeliveryReport("p", "delivered", "Delivered", at="2025-12-06 12:02:00"),
          DeliveryReport("p", "undelivered", "Non Delivered", at="2025-12-06 12:05:00")],
         "undelivered"),
        ([DeliveryReport("p", "undelivered", "Non Delivered", at="2025-12-06 12:05:00"),
          DeliveryReport("p", "delivered", "Delivered", at="2025-12-06 12:02:00")],
         "undelivered"),
        # No timestamp on one side: the first final stays.
        ([DeliveryReport("p", "delivered", "Delivered"),
          DeliveryReport("p", "undelivered", "Non Delivered")], "delivered"),
        ([DeliveryReport("p", "undelivered", "Non Delivered"),
          DeliveryReport("p", "delivered", "Delivered")], "undelivered"),
        ([DeliveryReport("p", "delivered", "Delivered"),
          DeliveryReport("p", "undelivered", "Non Delivered", at="2025-12-06 12:05:00")],
         "delivered"),
        ([DeliveryReport("p", "rejected", "Rejected", at="2025-12-06 12:05:00"),
          DeliveryReport("p", "delivered", "Delivered")], "rejected"),
        # A non-final report never undoes a final one, even a later one.
        ([DeliveryReport("p", "delivered", "Delivered", at="2025-12-06 12:02:00"),
          DeliveryReport("p", "sent", "Buffered SMSC", at="2025-12-06 12:09:00")],
         "delivered"),
    ]
    ids = await sent_messages(store, [[f"p-{n}"] for n in range(len(cases))])
    for step in range(2):  # each report in a call of its own
        await store.record_delivery_reports(
            "prov", [renamed(reports[step], str(n)) for n, (reports, _) in enumerate(cases)],
            NOW + step)
    got = await delivery_statuses(store)
    assert [got[message_id] for message_id in ids] == [expected for _, expected in cases]
    for message_id in ids:
        assert len(await store.message_events(message_id)) == 4  # queued, sent, 2 reports


@BOTH_STORES
async def test_a_message_once_final_is_not_made_pending_again_by_another_part(
    store: OutboxStore,
) -> None:
    """A failed part makes a multi-part message final at once (its status polls stop). A
    later delivered report for that part does not make the message "sent" again while the
    other part has not reported."""
    [message_id] = await sent_messages(store, [["c", "d"]])
    await store.record_delivery_reports(
        "prov", [DeliveryReport("c", "rejected", "Rejected", at="2025-12-06 12:00:00")], NOW)
    assert (await delivery_statuses(store))[message_id] == "rejected"
    await store.record_delivery_reports(
        "prov", [DeliveryReport("c", "delivered", "Delivered", at="2025-12-06 12:01:00")], NOW)
    assert (await delivery_statuses(store))[message_id] == "rejected"
    await store.record_delivery_reports(
        "prov", [DeliveryReport("d", "delivered", "Delivered", at="2025-12-06 12:02:00")], NOW)
    assert (await delivery_statuses(store))[message_id] == "delivered"


@BOTH_STORES
async def test_reports_before_the_send_was_recorded_obey_the_same_order(
    store: OutboxStore,
) -> None:
    """Reports kept unmatched (they came before ``mark_sent``) are applied by the same rule."""
    envelope = MailEnvelope(mail_from="a@example.org", recipients=("sms@bridge",),
                            message_id=None, peer="127.0.0.1", format="v1")
    (message_id,) = (await store.enqueue(envelope, [(None, [req("+79990000001")])], now=NOW,
                                         dedup_window=600.0)).message_ids
    await store.claim_due("o1", NOW, 10, LEASE)
    await store.record_delivery_reports("prov", [
        DeliveryReport("early", "delivered", "Delivered", at="2025-12-06 12:02:00"),
        DeliveryReport("early", "sent", "Buffered SMSC", at="2025-12-06 12:01:00"),
        DeliveryReport("early", "undelivered", "Non Delivered", at="2025-12-06 12:01:30"),
    ], NOW)
    await mark_sent(store, message_id, "o1", "up", ["early"], NOW + 1)
    assert (await delivery_statuses(store))[message_id] == "delivered"
    assert len(await store.message_events(message_id)) == 5


@pytest.mark.parametrize(("at", "expected"), [
    ("", None),
    ("garbage", None),
    ("2020-05-09 17:04:00", 1589033040.0),  # 002 line 1126, UTC+3
    ("2025-11-27T13:56:42.341+03:00", 1764241002.341),  # 002 line 391
    ("2025-11-27T10:56:42.341Z", 1764241002.341),
    ("2020-05-09T15:19:00", 1589026740.0),  # 002 line 1718 (SOAP), UTC+3
    ("09.05.2020 17:04:00", 1589033040.0),  # SMSC's DD.MM.YYYY hh:mm:ss
    ("1477417294667", 1477417294.667),  # milliseconds since the epoch
    ("1477417294", 1477417294.0),
])
def test_report_time_reads_the_providers_formats(at: str, expected: float | None) -> None:
    assert report_time(at) == (pytest.approx(expected) if expected is not None else None)


# -- end to end: the DLR endpoint -------------------------------------------------------------


@pytest.fixture
async def provider() -> AsyncIterator[SmsTrafficDouble]:
    async with SmsTrafficDouble(login="acme", password="s3cret") as double:
        yield double


@BOTH_STORES
async def test_reports_through_the_dlr_endpoint_never_go_back(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble,
) -> None:
    bridge = await bridge_factory(
        inbound={"sources": {"st": {"secret": "src-secret"}}},
        upstreams={"st": {"kind": "smstraffic_v1", "base_url": provider.url, "login": "acme",
                          "password": "s3cret"}},
        accounts={"ops": {"password": "pw", "upstream": "st"}},
    )
    code, _ = await send(bridge.smtp_port, b"Subject: x\r\n\r\nhello\r\n",
                         recipients=["79161234567.ops@x"])
    assert code == 250
    [accepted] = await provider.wait_for_accepted(1)
    async with asyncio.timeout(10):
        while not await bridge.store.list_messages(status="sent"):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    dlr = f"http://127.0.0.1:{bridge.http_port}/in/st/src-secret/dlr"
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    def v1(status: str, date: str) -> dict[str, Any]:
        # The spec's own example is not URL-encoded (002 line 1126).
        return {"content": f"sms_id={accepted.sms_id}&status={status}&delivery_date={date}",
                "headers": form}

    def v2(status: str, date: str) -> dict[str, Any]:
        return {"json": [{"sms_id": accepted.sms_id, "status": status,
                          "delivery_date": date}]}

    async with httpx.AsyncClient() as client:
        async def post(request: dict[str, Any]) -> str | None:
            answer = await client.post(dlr, **request)
            assert answer.status_code == 200
            [message] = await bridge.store.list_messages()
            return message.delivery_status

        seen = [
            await post(v1("Delivered", "2020-05-09 17:04:00")),
            await post(v2("Buffered SMSC", "2020-05-09 17:01:00")),  # late intermediate
            await post(v1("Non Delivered", "2020-05-09 17:02:00")),  # older final
            await post(v1("Delivered", "2020-05-09 17:04:00")),  # a repeat
            await post(v2("Buffered SMSC", "2020-05-09 17:05:00")),  # non-final, even later
            await post(v2("Non Delivered", "2020-05-09 17:06:00")),  # a later final
        ]
    assert seen == ["delivered"] * 5 + ["undelivered"]
    [message] = await bridge.store.list_messages()
    events = [e["status"] for e in await bridge.store.message_events(message.id)]
    assert events == ["queued", "sent", "delivered", "sent", "undelivered", "delivered",
                      "sent", "undelivered"]
    assert len(await bridge.store.list_delivery_reports()) == 6

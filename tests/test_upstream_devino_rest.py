"""Devino Telecom REST upstream (``bridge/upstreams/devino/rest.py``) against its test double,
and end to end through a bridge. Spec: ``003_2ae1dc9e2c3c1732.txt``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from pydantic import SecretStr

from bridge.app import Bridge
from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.outbox.ratelimit import limiter_for
from bridge.settings import upstream_settings
from bridge.upstreams import registry
from bridge.upstreams.base import BatchSending, InboundPolling, OutboundSms, SendReceipt
from bridge.upstreams.devino.common import InboundCursor
from bridge.upstreams.devino.rest import (
    SESSION_LIFETIME,
    DevinoRestUpstream,
    parse_error,
)
from tests.conftest import BridgeFactory
from tests.doubles.devino_rest import FIRST_SMS_ID, DevinoRestDouble
from tests.doubles.mailbox import MailboxDouble
from tests.sms import outbound_sms
from tests.test_smtp_intake import mail, send
from tests.test_upstream_devino_soap import busiest_second

LOGIN, PASSWORD = "acme", "a+b==13!"  # the password of the spec's encoding example (l. 39)


@pytest.fixture
async def double() -> AsyncIterator[DevinoRestDouble]:
    async with DevinoRestDouble(login=LOGIN, password=PASSWORD) as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


def make(double: DevinoRestDouble, client: httpx.AsyncClient, **extra: Any) -> DevinoRestUpstream:
    config: dict[str, Any] = {"timeout": 2.0, **extra}
    settings = upstream_settings(kind="devino_rest", base_url=double.url, login=LOGIN,
                                password=SecretStr(PASSWORD), **config)
    upstream = registry.build("dv", settings, client)
    assert isinstance(upstream, DevinoRestUpstream)
    return upstream


def sms(phone: str = "79161234567", text: str = "hello", *, message_id: int = 1,
        originator: str | None = "DEVINO", validity: int | None = None,
        attempt: int = 1) -> OutboundSms:
    return outbound_sms(message_id=message_id, idempotency_key=f"b-{message_id}",
                       attempt=attempt, phone=phone, text=text, encoding="gsm7",
                       originator=originator, validity=validity)


def ids(first: int, count: int) -> tuple[str, ...]:
    return tuple(str(FIRST_SMS_ID + first + n) for n in range(count))


# ---------------------------------------------------------------------- (a) exact requests


async def test_send_one_logs_in_then_posts_the_table_3_form(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client)
    receipt = await upstream.send(sms(text="Привет, мир", validity=3600))
    assert receipt == SendReceipt(ids(0, 1))
    login, sent = double.requests
    assert (login.method, login.path) == ("GET", "/rest/user/sessionid")
    # Табл. 1 names; "+" and "=" percent-encoded as at l. 45.
    assert login.query == "Login=acme&Password=a%2Bb%3D%3D13%21"
    assert (sent.method, sent.path) == ("POST", "/rest/Sms/Send")
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded; charset=utf-8"
    assert sent.query == ""
    session = next(iter(double.sessions))
    assert parse_qsl(sent.raw_body.decode("ascii")) == [
        ("SessionID", session), ("DestinationAddress", "79161234567"),
        ("Data", "Привет, мир"), ("SourceAddress", "DEVINO"), ("Validity", "60"),
    ]
    [accepted] = double.accepted
    assert (accepted.text, accepted.source, accepted.validity) == ("Привет, мир", "DEVINO", 60)


async def test_validity_is_rounded_up_to_minutes_and_omitted_when_unset(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client)
    await upstream.send(sms(validity=90))
    await upstream.send(sms())
    assert [a.validity for a in double.accepted] == [2, None]
    assert "Validity" not in double.calls("sms/send")[1].names


async def test_client_id_is_the_default_sender_and_a_sender_is_required(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    await make(double, client, client_id="ACME").send(sms(originator=None))
    assert double.accepted[0].source == "ACME"
    with pytest.raises(PermanentUpstreamError) as caught:
        await make(double, client).send(sms(originator=None))
    assert caught.value.code == "no_source_address"
    assert len(double.calls("sms/send")) == 1


async def test_send_batch_groups_one_text_per_sendbulk_and_maps_segment_ids(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client)
    assert isinstance(upstream, BatchSending)
    long_text = "x" * 200  # 2 segments of 153
    batch = [sms("79160000001", long_text, message_id=1),
             sms("79160000002", "short", message_id=2),
             sms("79160000003", long_text, message_id=3),
             sms("79160000004", long_text, message_id=4)]
    results = await upstream.send_batch(batch)
    assert results == [SendReceipt(ids(0, 2)), SendReceipt(ids(6, 1)),
                       SendReceipt(ids(2, 2)), SendReceipt(ids(4, 2))]
    [bulk] = double.calls("sms/sendbulk")
    params = parse_qsl(bulk.raw_body.decode("ascii"))
    assert [v for k, v in params if k == "DestinationAddresses"] == [
        "79160000001", "79160000003", "79160000004"]
    assert [k for k, _ in params] == ["SessionID", "DestinationAddresses", "DestinationAddresses",
                                      "DestinationAddresses", "Data", "SourceAddress"]
    [single] = double.calls("sms/send")
    assert single.get("DestinationAddress") == ["79160000002"]
    assert [(a.endpoint, a.phone, len(a.ids)) for a in double.accepted] == [
        ("sms/sendbulk", "79160000001", 2), ("sms/sendbulk", "79160000003", 2),
        ("sms/sendbulk", "79160000004", 2), ("sms/send", "79160000002", 1)]


async def test_send_batch_maps_ids_of_a_gsm_text_with_accents(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    """é and Δ are GSM 03.38: the provider makes one segment of 100 of them, so each number
    gets one id, although the bridge's own part count (an upper bound) says UCS-2."""
    upstream = make(double, client)
    text = "é" * 50 + "Δ" * 50
    batch = [sms("79160000001", text, message_id=1), sms("79160000002", text, message_id=2)]
    results = await upstream.send_batch(batch)
    assert results == [SendReceipt(ids(0, 1)), SendReceipt(ids(1, 1))]


async def test_send_batch_puts_a_repeated_phone_in_another_request(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client)
    batch = [sms("79160000001", message_id=1), sms("79160000001", message_id=2),
             sms("79160000002", message_id=3)]
    results = await upstream.send_batch(batch)
    assert results == [SendReceipt(ids(0, 1)), SendReceipt(ids(2, 1)), SendReceipt(ids(1, 1))]
    assert len(double.calls("sms/sendbulk")) == 1 and len(double.calls("sms/send")) == 1


async def test_send_batch_raises_when_its_one_request_fails(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    double.fail_next(1, "error", code=6, desc="Invalid source address", endpoint="sms/sendbulk")
    with pytest.raises(PermanentUpstreamError) as caught:
        await make(double, client).send_batch([sms("79160000001"), sms("79160000002")])
    assert caught.value.code == 6


async def test_send_batch_fails_only_the_messages_of_a_failed_request(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    double.fail_next(1, "error", code=8, endpoint="sms/sendbulk")
    results = await make(double, client).send_batch(
        [sms("79160000001", "a"), sms("79160000002", "a"), sms("79160000003", "b")])
    first, second, third = results
    assert isinstance(first, TransientUpstreamError) and first.code == 8 and first.ambiguous
    assert isinstance(second, TransientUpstreamError) and second is not first
    assert third == SendReceipt(ids(0, 1))


# ---------------------------------------------------------------------- (c) segment ids


@pytest.mark.parametrize(("text", "parts"), [
    ("x" * 160, 1), ("x" * 161, 2), ("{" * 80, 1), ("{" * 81, 2), ("ж" * 70, 1), ("ж" * 71, 2),
    ("ж" * 135, 3),
])
async def test_one_id_per_segment_is_kept(
    double: DevinoRestDouble, client: httpx.AsyncClient, text: str, parts: int
) -> None:
    receipt = await make(double, client).send(sms(text=text))
    assert receipt.provider_ids == ids(0, parts)


async def test_bulk_ids_that_do_not_match_the_segment_count_are_split_evenly_or_not_at_all(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client)
    double.fail_next(1, "reply", body='["1", "2", "3", "4"]', endpoint="sms/sendbulk")
    even = await upstream.send_batch([sms("79160000001"), sms("79160000002")])
    assert [r.provider_ids for r in even if isinstance(r, SendReceipt)] == [("1", "2"),
                                                                            ("3", "4")]
    double.fail_next(1, "reply", body='["1", "2", "3"]', endpoint="sms/sendbulk")
    odd = await upstream.send_batch([sms("79160000001"), sms("79160000002")])
    assert all(isinstance(r, SendReceipt) and r.provider_ids == ()
               for r in odd)


async def test_numeric_and_bare_ids_are_accepted(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client)
    double.fail_next(1, "reply", body="[579700854169272358]")
    assert (await upstream.send(sms())).provider_ids == ("579700854169272358",)
    double.fail_next(1, "reply", body='"42"')
    assert (await upstream.send(sms())).provider_ids == ("42",)


# ---------------------------------------------------------------------- (b) errors


@pytest.mark.parametrize(("code", "cls", "ambiguous"), [
    (1, PermanentUpstreamError, False), (2, PermanentUpstreamError, False),
    (5, TransientUpstreamError, False), (6, PermanentUpstreamError, False),
    (7, PermanentUpstreamError, False), (8, TransientUpstreamError, True),
    (9, TransientUpstreamError, True),
])
@pytest.mark.parametrize("style", ["spec", "json"])
async def test_table_10_codes_map_by_code(
    double: DevinoRestDouble, client: httpx.AsyncClient, code: int,
    cls: type[UpstreamError], ambiguous: bool, style: str
) -> None:
    double.error_style = style
    double.fail_next(1, "error", code=code)
    with pytest.raises(UpstreamError) as caught:
        await make(double, client).send(sms())
    assert type(caught.value) is cls
    assert (caught.value.code, caught.value.ambiguous) == (code, ambiguous)
    assert double.accepted == []


async def test_an_error_body_with_http_200_is_still_an_error(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    double.fail_next(1, "reply", body='{ Code: 2, Desc: "Invalid argument" }')
    with pytest.raises(PermanentUpstreamError) as caught:
        await make(double, client).send(sms())
    assert caught.value.code == 2


@pytest.mark.parametrize(("body", "expected"), [
    ('{\n  Code: 4,\n  Desc: "Invalid user login or password"\n}',
     (4, "Invalid user login or password")),
    ('{"Code":6,"Desc":"Invalid source address"}', (6, "Invalid source address")),
    ('{"code":"3","desc":"x"}', (3, "x")),
    # l. 584-591: a line break inside the text, unquoted keys
    ('{\nCode: 9,\nDesc: "The parameters dictionary contains a null entry for parameter\n'
     "'maxDateUtc' of non-nullable type\"\n}", (9, "The parameters dictionary contains a null "
                                               "entry for parameter 'maxDateUtc' of "
                                               "non-nullable type")),
    ('{ Code: 2, Desc: "a, b: c" }', (2, "a, b: c")),
    ('{"State": 0}', None), ("[\"1\"]", None), ("<html>", None),
])
def test_error_bodies_are_parsed_tolerantly(body: str, expected: tuple[int, str] | None) -> None:
    assert parse_error(body.encode()) == expected


@pytest.mark.parametrize(("mode", "kw", "cls", "code", "ambiguous"), [
    ("http500", {}, TransientUpstreamError, "http_500", True),
    ("http429", {"retry_after": 3}, TransientUpstreamError, "http_429", False),
    ("malformed", {}, TransientUpstreamError, "malformed", True),
    ("reply", {"body": "[]"}, TransientUpstreamError, "malformed", True),
    ("reply", {"body": "not found", "status": 404}, PermanentUpstreamError, "http_404", False),
    ("reply", {"body": '{ Code: 77, Desc: "new" }', "status": 503}, TransientUpstreamError, 77,
     True),
    ("drop", {}, TransientUpstreamError, None, True),
])
async def test_http_failures_and_malformed_replies(
    double: DevinoRestDouble, client: httpx.AsyncClient, mode: str, kw: dict[str, Any],
    cls: type[UpstreamError], code: object, ambiguous: bool
) -> None:
    double.fail_next(1, mode, **kw)
    with pytest.raises(UpstreamError) as caught:
        await make(double, client).send(sms())
    assert type(caught.value) is cls
    assert (caught.value.code, caught.value.ambiguous) == (code, ambiguous)
    if mode == "http429":
        assert caught.value.retry_after == 3


async def test_no_answer_within_the_timeout_is_ambiguous(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client, timeout=0.3)
    await upstream.send(sms())  # log in first
    double.fail_next(1, "delay", seconds=1.0)
    with pytest.raises(TransientUpstreamError) as caught:
        await upstream.send(sms())
    assert caught.value.ambiguous


async def test_bad_credentials_are_permanent_code_4_without_a_send(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    double.password = "other"
    with pytest.raises(PermanentUpstreamError) as caught:
        await make(double, client).send(sms())
    assert caught.value.code == 4
    assert [r.endpoint for r in double.requests] == ["user/sessionid"]


def test_validate_names_the_missing_setting() -> None:
    with pytest.raises(ValueError, match=r"upstreams\.dv\.password"):
        registry.validate("dv", upstream_settings(kind="devino_rest", base_url="http://x",
                                                 login="a"))


# ---------------------------------------------------------------------- session


@pytest.mark.parametrize("code", [3, 4])
async def test_a_refused_session_is_renewed_once_and_the_call_repeated(
    double: DevinoRestDouble, client: httpx.AsyncClient, code: int
) -> None:
    upstream = make(double, client)
    await upstream.send(sms())
    double.expire_sessions(code)
    await upstream.send(sms())
    assert [r.endpoint for r in double.requests] == [
        "user/sessionid", "sms/send", "sms/send", "user/sessionid", "sms/send"]
    assert len(double.accepted) == 2


@pytest.mark.parametrize(("code", "cls"), [(3, TransientUpstreamError),
                                           (4, PermanentUpstreamError)])
async def test_a_session_refused_twice_is_not_renewed_again(
    double: DevinoRestDouble, client: httpx.AsyncClient, code: int, cls: type[UpstreamError]
) -> None:
    upstream = make(double, client)
    double.fail_next(2, "error", code=code)
    with pytest.raises(UpstreamError) as caught:
        await upstream.send(sms())
    assert type(caught.value) is cls and caught.value.code == code
    assert [r.endpoint for r in double.requests] == [
        "user/sessionid", "sms/send", "user/sessionid", "sms/send"]


async def test_twenty_concurrent_sends_after_expiry_share_one_renewal(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client)
    await upstream.send(sms())
    double.expire_sessions()
    receipts = await asyncio.gather(*(upstream.send(sms(f"7916000{n:04d}", message_id=n))
                                      for n in range(20)))
    assert len({r.provider_ids for r in receipts}) == 20
    assert len(double.calls("user/sessionid")) == 2  # the first login and one renewal
    assert len(double.accepted) == 21


async def test_every_call_of_one_upstream_stays_within_10_requests_per_second(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    """Devino takes 10 requests per second per account (001 line 34, the same backend):
    sends, bulk sends, status and inbound polls, balance and session calls together, kept by
    the rate limiter the dispatcher hands the upstream for the limit it declares."""
    upstream = make(double, client)
    assert upstream.requests_per_second == 10
    limiter_for(upstream, 0.0)
    receipt = await upstream.send(sms())
    await asyncio.gather(
        *(upstream.send(sms(f"7916000{n:04d}", message_id=n)) for n in range(8)),
        upstream.send_batch([sms("79160000101", "A"), sms("79160000102", "A")]),
        upstream.poll_statuses(list(receipt.provider_ids) * 3),
        upstream.poll_inbound(None),
        upstream.balance(),
    )
    assert len(double.requests) >= 15
    assert busiest_second([r.at for r in double.requests]) <= 10


async def test_twenty_concurrent_first_sends_log_in_once(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client)
    await asyncio.gather(*(upstream.send(sms(message_id=n)) for n in range(20)))
    assert len(double.calls("user/sessionid")) == 1


async def test_the_session_is_renewed_before_its_120_minutes_end(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    now = [1000.0]
    upstream = make(double, client)
    upstream.sessions.clock = lambda: now[0]
    double.clock = lambda: now[0]
    await upstream.send(sms())
    now[0] += SESSION_LIFETIME - 10 * 60
    await upstream.send(sms())
    assert len(double.calls("user/sessionid")) == 1
    now[0] += 6 * 60  # 116 minutes: renewed before use, no refused call
    await upstream.send(sms())
    assert [r.endpoint for r in double.requests] == [
        "user/sessionid", "sms/send", "sms/send", "user/sessionid", "sms/send"]


# ---------------------------------------------------------------------- statuses


@pytest.mark.parametrize(("state", "status"), [
    (-1, "sent"), (-2, "sent"), (47, "undelivered"), (-98, "rejected"), (0, "delivered"),
    (10, "rejected"), (11, "rejected"), (41, "rejected"), (42, "rejected"), (46, "expired"),
    (48, "rejected"), (69, "rejected"), (99, "unknown"), (255, "sent"), (-7, "sent"),
    (123, "unknown"),
])
async def test_table_11_states_map_to_bridge_statuses(
    double: DevinoRestDouble, client: httpx.AsyncClient, state: int, status: str
) -> None:
    upstream = make(double, client)
    [provider_id] = (await upstream.send(sms())).provider_ids
    double.set_status(provider_id, state)
    [report] = await upstream.poll_statuses([provider_id])
    assert (report.provider_id, report.status, report.raw_status) == (provider_id, status,
                                                                      str(state))
    assert report.error_code is None


async def test_status_poll_asks_once_per_segment_id(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client)
    receipt = await upstream.send(sms(text="x" * 300))
    double.set_status(receipt.provider_ids[0], 0)
    reports = await upstream.poll_statuses([*receipt.provider_ids, "999"])
    assert [(r.provider_id, r.status) for r in reports] == [
        (receipt.provider_ids[0], "delivered"), (receipt.provider_ids[1], "sent"),
        ("999", "sent")]
    # ReportedDateUtc when delivered; TimeStampUtc else; the .NET "no date" of l. 487 → "".
    assert reports[0].at.startswith(str(datetime.now(UTC).year)) and reports[1].at
    assert reports[2].at == ""
    calls = double.calls("sms/state")
    assert [(c.method, c.names, c.get("messageId")) for c in calls] == [
        ("GET", ["SessionID", "messageId"], [pid]) for pid in (*receipt.provider_ids, "999")]


async def test_status_poll_leaves_out_refused_ids_and_raises_when_nothing_answers(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client)
    await upstream.send(sms())
    double.fail_next(1, "error", code=1, endpoint="sms/state")
    reports = await upstream.poll_statuses(["1", "2"])
    assert len(reports) == 1
    double.fail_next(2, "http500", endpoint="sms/state")
    with pytest.raises(TransientUpstreamError):
        await upstream.poll_statuses(["1", "2"])


# ---------------------------------------------------------------------- inbound and balance


async def test_inbound_poll_windows_cursor_and_fields(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client)
    assert isinstance(upstream, InboundPolling)
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    upstream.now = lambda: now
    first = double.add_incoming("+79260000001", "Привет", created=now - timedelta(days=30))
    messages, cursor = await upstream.poll_inbound(None)
    # The next window starts 35 minutes back; the first message is older: not remembered.
    assert InboundCursor.load(cursor) == InboundCursor(now - timedelta(minutes=35), frozenset())
    [call] = double.calls("sms/in")
    assert call.names == ["SessionID", "maxDateUTC"]  # no cursor: the provider's earliest
    assert call.get("maxDateUTC") == ["2030-01-02T03:14:05"]
    [message] = messages
    assert (message.source, message.kind, message.sms_id, message.phone, message.text,
            message.recipient, message.charset) == ("dv", "mo", str(first.id), "79260000001",
                                                    "Привет", "7916000000", "utf-8")
    assert json.loads(message.raw)["ID"] == first.id

    now += timedelta(minutes=1)
    second = double.add_incoming("79260000002", "two", created=now - timedelta(seconds=30))
    messages, cursor = await upstream.poll_inbound(cursor)
    assert [m.sms_id for m in messages] == [str(second.id)]
    assert double.calls("sms/in")[1].get("minDateUTC") == ["2030-01-02T02:29:05"]
    assert InboundCursor.load(cursor) == InboundCursor(datetime(2030, 1, 2, 2, 30, 5, tzinfo=UTC),
                                                       frozenset({str(second.id)}))
    # The overlap is not handed out again: the cursor remembers its ids, in this process
    # and after a restart (a new upstream).
    assert (await upstream.poll_inbound(cursor))[0] == []
    restarted = make(double, client)
    restarted.now = lambda: now
    assert (await restarted.poll_inbound(cursor))[0] == []
    # A cursor stored before it kept ids (the bare date of the last poll) is re-read 35
    # minutes back: the pipeline drops what was handed out already.
    legacy, cursor = await restarted.poll_inbound("2030-01-02T03:05:05")
    assert [m.sms_id for m in legacy] == [str(second.id)]
    assert double.calls("sms/in")[-1].get("minDateUTC") == ["2030-01-02T02:30:05"]


@pytest.mark.parametrize("late_by", [25, 30])
async def test_a_message_visible_up_to_30_minutes_late_is_fetched_once(
    double: DevinoRestDouble, client: httpx.AsyncClient, late_by: int
) -> None:
    upstream = make(double, client)
    now = datetime(2030, 1, 2, 3, 0, 0, tzinfo=UTC)
    upstream.now = lambda: now
    _, cursor = await upstream.poll_inbound(None)
    now += timedelta(seconds=30)
    on_time = double.add_incoming("79260000001", "on time", created=now - timedelta(seconds=5))
    messages, cursor = await upstream.poll_inbound(cursor)
    assert [m.sms_id for m in messages] == [str(on_time.id)]
    # Created late_by minutes before this poll, long before the polls so far; visible only now.
    late = double.add_incoming("79260000002", "late", created=now - timedelta(minutes=late_by))
    now += timedelta(seconds=30)
    messages, cursor = await upstream.poll_inbound(cursor)
    assert [(m.sms_id, m.text) for m in messages] == [(str(late.id), "late")]
    for _ in range(4):  # still inside the overlapping windows: never handed out again
        now += timedelta(seconds=30)
        again, cursor = await upstream.poll_inbound(cursor)
        assert again == []
    assert len(double.calls("sms/in")) == 7


async def test_the_inbound_cursor_is_bounded_and_hands_nothing_out_twice(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client)
    upstream.max_seen_inbound = 3
    now = datetime(2030, 1, 2, 3, 0, 0, tzinfo=UTC)
    upstream.now = lambda: now
    added = [double.add_incoming(f"7926000000{age}", f"{age} min",
                                 created=now - timedelta(minutes=age)) for age in (5, 4, 3, 2, 1)]
    messages, cursor = await upstream.poll_inbound(None)
    assert [m.sms_id for m in messages] == [str(m.id) for m in added]
    state = InboundCursor.load(cursor)
    assert state is not None and len(state.seen) <= 3
    # What is forgotten is no longer asked for: the window starts after the third newest.
    assert state == InboundCursor(now - timedelta(minutes=3) + timedelta(seconds=1),
                                  frozenset({str(added[3].id), str(added[4].id)}))
    for _ in range(2):
        now += timedelta(seconds=30)
        again, cursor = await upstream.poll_inbound(cursor)
        assert again == []


async def test_inbound_poll_errors(double: DevinoRestDouble, client: httpx.AsyncClient) -> None:
    upstream = make(double, client)
    double.fail_next(1, "reply", body='[{"Data": "x"}]', endpoint="sms/in")
    with pytest.raises(TransientUpstreamError) as caught:
        await upstream.poll_inbound(None)
    assert caught.value.code == "malformed"
    double.fail_next(1, "error", code=9, endpoint="sms/in")
    with pytest.raises(TransientUpstreamError) as caught:
        await upstream.poll_inbound(None)
    assert caught.value.code == 9


async def test_balance(double: DevinoRestDouble, client: httpx.AsyncClient) -> None:
    assert await make(double, client).balance() == 1234.5
    assert double.requests[-1].path == "/rest/User/Balance"
    assert double.requests[-1].names == ["SessionID"]


# ---------------------------------------------------------------------- (d) end to end


def delivery(bridge: Bridge) -> list[tuple[str | None, str | None]]:
    path = bridge.settings.store.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT delivery_status, delivery_detail FROM messages").fetchall()


def upstream_config(double: DevinoRestDouble, **extra: Any) -> dict[str, Any]:
    return {"kind": "devino_rest", "base_url": double.url, "login": LOGIN,
            "password": PASSWORD, "client_id": "ACME", **extra}


async def test_end_to_end_status_delivered_by_polling(
    bridge_factory: BridgeFactory, double: DevinoRestDouble
) -> None:
    bridge = await bridge_factory(
        upstreams={"p": upstream_config(double, status_poll_interval=0.2)},
        accounts={"alerts": {"password": "pw", "upstream": "p"}})
    code, reply = await send(bridge.smtp_port, mail("79161234567.alerts@x", "", "text"))
    assert code == 250, reply
    [accepted] = await double.wait_for_accepted(1)
    assert (accepted.endpoint, accepted.phone, accepted.text, accepted.source) == (
        "sms/send", "79161234567", "text", "ACME")
    [request] = double.calls("sms/send")
    assert request.names == ["SessionID", "DestinationAddress", "Data", "SourceAddress"]
    await double.wait_for_requests(1, "sms/state")
    double.set_status(accepted.ids[0], 0)
    async with asyncio.timeout(10):
        # The status is written by the status poller's task; no event marks that commit.
        while delivery(bridge) != [("delivered", f"0 ({accepted.ids[0]})")]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    [message] = await bridge.store.list_messages()
    assert message.status == "sent" and message.upstream_ids == accepted.ids


async def test_end_to_end_inbound_mailed_exactly_once_across_a_restart(
    bridge_factory: BridgeFactory, double: DevinoRestDouble
) -> None:
    async with MailboxDouble() as box:
        settings: dict[str, Any] = {
            "upstreams": {"p": upstream_config(double, inbound_poll_interval=0.2)},
            "accounts": {"alerts": {"password": "pw", "upstream": "p"}},
            "inbound": {"routes": [{"emails": ["desk@example.com"]}]},
            "mail": {"smarthost": "127.0.0.1", "smarthost_port": box.port},
        }
        bridge = await bridge_factory(**settings)
        double.add_incoming("79260000001", "first")
        double.add_incoming("79260000002", "second")
        await box.wait_for(2)
        await bridge.stop()
        double.add_incoming("79260000003", "third")
        double.add_incoming("79260000004", "fourth")
        polls = len(double.calls("sms/in"))
        second = await bridge_factory(**settings)
        await box.wait_for(4)
        # Two more polls of the restarted bridge: the first saw all four (the old ones are still
        # in the provider's window) and recorded them before the next began.
        await double.wait_for_requests(polls + 2, "sms/in")
        path = second.settings.store.url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            [(inbound,)] = conn.execute("SELECT count(*) FROM inbound").fetchall()
            [(jobs,)] = conn.execute("SELECT count(*) FROM forward_jobs").fetchall()
        assert (inbound, jobs) == (4, 4)
        texts = sorted(bytes(m.message.get_payload(decode=True)).decode()
                       for m in box.mails)
        assert [t.strip() for t in texts] == ["first", "fourth", "second", "third"]
        assert all(m.rcpt_tos == ["desk@example.com"] for m in box.mails)
        # The restarted bridge resumed from the stored cursor, not from the provider's earliest.
        assert "minDateUTC" in double.calls("sms/in")[polls].names


async def test_the_double_is_strict_about_names_methods_and_content_types(
    double: DevinoRestDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double, client)
    await upstream.send(sms())
    session = next(iter(double.sessions))
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    base = f"{double.url}/Sms/Send"
    fields = f"sessionId={session}&DestinationAddress=79161234567&Data=x&SourceAddress=DEVINO"
    typo = await client.post(base, content=fields + "&Validty=5", headers=form)
    as_json = await client.post(base, json={"SessionID": session, "Data": "x"})
    by_get = await client.get(f"{base}?{fields}")
    lower = f"sessionid={session}&destinationaddress=79161234567&data=x&sourceaddress=DEVINO"
    any_case = await client.post(base, content=lower, headers=form)
    assert (typo.status_code, parse_error(typo.content)) == (400, (2, "Unknown parameter "
                                                                      "'validty'"))
    assert as_json.status_code == 400 and parse_error(as_json.content) is not None
    assert by_get.status_code == 405
    assert any_case.status_code == 200 and len(double.accepted) == 2

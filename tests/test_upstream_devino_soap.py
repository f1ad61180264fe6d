"""Devino SOAP 1.2 upstream against its spec-built double (spec 001_600c633d74a81c97.txt)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from defusedxml import ElementTree as SafeET

from bridge.app import Bridge
from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.outbox.ratelimit import limiter_for
from bridge.settings import upstream_settings
from bridge.upstreams.base import (
    BatchSending,
    InboundPolling,
    OutboundSms,
    SendReceipt,
    StatusPolling,
)
from bridge.upstreams.devino.common import InboundCursor
from bridge.upstreams.devino.soap import DevinoSoapUpstream
from tests.conftest import BridgeFactory
from tests.doubles.devino_soap import DevinoSoapDouble
from tests.doubles.mailbox import MailboxDouble
from tests.sms import outbound_sms
from tests.test_smtp_intake import mail, send

LOGIN, PASSWORD = "acme", "s3cret"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"


@pytest.fixture
async def double() -> AsyncIterator[DevinoSoapDouble]:
    async with DevinoSoapDouble(login=LOGIN, password=PASSWORD) as provider:
        yield provider


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as http:
        yield http


def make(url: str, client: httpx.AsyncClient, **extra: Any) -> DevinoSoapUpstream:
    config: dict[str, Any] = {"kind": "devino_soap", "base_url": url, "login": LOGIN,
                              "password": PASSWORD, "timeout": 2.0, **extra}
    return DevinoSoapUpstream("p", upstream_settings(**config), client)


@pytest.fixture
def upstream(double: DevinoSoapDouble, client: httpx.AsyncClient) -> DevinoSoapUpstream:
    return make(double.url, client)


def sms(phone: str = "79161234567", text: str = "hello", *, originator: str | None = "Alerts",
        validity: int | None = None, attempt: int = 1, mid: int = 1) -> OutboundSms:
    return outbound_sms(message_id=mid, idempotency_key=f"b-{mid}", attempt=attempt, phone=phone,
                       text=text, encoding="gsm7", originator=originator, validity=validity)


def ids_of(result: SendReceipt | UpstreamError) -> tuple[str, ...]:
    assert isinstance(result, SendReceipt), result
    return result.provider_ids


# ------------------------------------------------------------------------ (a) requests


def test_capabilities_and_required_settings(client: httpx.AsyncClient) -> None:
    upstream = make("http://127.0.0.1:1", client)
    for capability in (BatchSending, StatusPolling, InboundPolling):
        assert isinstance(upstream, capability)
    assert upstream.max_batch == 1000
    assert DevinoSoapUpstream.kind == "devino_soap" and DevinoSoapUpstream.idempotent is False
    with pytest.raises(ValueError, match=r"upstreams\.p\.password"):
        DevinoSoapUpstream.validate("p", upstream_settings(kind="devino_soap",
                                                          base_url="http://127.0.0.1:1",
                                                          login="x"))


async def test_send_one_is_a_soap12_envelope_with_the_examples_names(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    receipt = await upstream.send(sms())
    [accepted] = double.accepted
    assert receipt.provider_ids == tuple(accepted.ids) and len(accepted.ids) == 1
    login, sending = double.requests
    for request, method in ((login, "GetSessionID"), (sending, "SendMessage")):
        assert (request.method, request.path, request.action) == ("POST", "/SmsService.asmx",
                                                                  method)
        assert request.headers["content-type"] == (
            f'application/soap+xml; charset=utf-8; action="http://ws.devinosms.com/{method}"')
        root = SafeET.fromstring(request.raw_body)
        assert root.tag == f"{{{SOAP12}}}Envelope"
        assert root[0][0].tag == f"{{http://ws.devinosms.com}}{method}"
    # The names of the examples (lines 65-66, 229-239), not Табл. 1's Login / Табл. 4's SessionID.
    assert login.params == {"login": LOGIN, "password": PASSWORD}
    assert sending.params == {
        "sessionID": double.sessions_issued[0], "Data": "hello",
        "DestinationAddresses": ["79161234567"], "SourceAddress": "Alerts",
        "ReceiptRequested": "true", "@message": True,
    }
    assert (accepted.phone, accepted.text, accepted.source) == ("79161234567", "hello", "Alerts")


async def post(client: httpx.AsyncClient, double: DevinoSoapDouble, method: str,
               inner: str) -> httpx.Response:
    """A hand-written SOAP 1.2 request (the envelope of the examples, e.g. lines 58-69)."""
    body = ('<?xml version="1.0" encoding="utf-8"?>'
            f'<soap12:Envelope xmlns:soap12="{SOAP12}"><soap12:Body>'
            f'<{method} xmlns="http://ws.devinosms.com">{inner}</{method}>'
            "</soap12:Body></soap12:Envelope>")
    return await client.post(f"{double.url}/SmsService.asmx", content=body.encode(),
                             headers={"Content-Type": "application/soap+xml; charset=utf-8"})


async def test_the_double_binds_only_the_examples_element_names(
    double: DevinoSoapDouble, client: httpx.AsyncClient
) -> None:
    """As an XmlSerializer (ASMX) service: an element in another case is skipped, so its
    parameter is null and the call fails as for a null value."""
    tables = await post(client, double, "GetSessionID",
                        f"<Login>{LOGIN}</Login><Password>{PASSWORD}</Password>")
    assert tables.status_code == 500 and b"soap:Receiver" in tables.content
    assert b"Invalid user login or password" in tables.content
    assert double.requests[-1].ignored == ["Login", "Password"]
    examples = await post(client, double, "GetSessionID",
                          f"<login>{LOGIN}</login><password>{PASSWORD}</password>")
    assert examples.status_code == 200 and double.sessions_issued
    session = double.sessions_issued[0]
    window = "<maxDateUTC>2030-01-01T00:00:00</maxDateUTC><minDateUTC>2000-01-01T00:00:00" \
             "</minDateUTC>"
    for method, inner in (("GetBalance", f"<SessionID>{session}</SessionID>"),
                          ("GetMessageState", f"<SessionID>{session}</SessionID>"
                                              "<messageID>1</messageID>"),
                          ("GetIncomingMessages", f"<sessionId>{session}</sessionId>{window}")):
        refused = await post(client, double, method, inner)
        assert refused.status_code == 500, method
        assert b"SessionID can not be null or empty" in refused.content, method
    message = ("<{data}>x</{data}><DestinationAddresses><string>79161234567</string>"
               "</DestinationAddresses><SourceAddress>Alerts</SourceAddress>")
    lower = await post(client, double, "SendMessage", f"<sessionID>{session}</sessionID>"
                       f"<message>{message.format(data='data')}</message>")
    assert b"Data can not be null or empty" in lower.content
    capital = await post(client, double, "SendMessage", f"<sessionID>{session}</sessionID>"
                         f"<Message>{message.format(data='Data')}</Message>")
    assert b"Message can not be null or empty" in capital.content
    assert double.accepted == []
    for method, inner in (("GetBalance", f"<sessionID>{session}</sessionID>"),
                          ("GetIncomingMessages", f"<sessionID>{session}</sessionID>{window}"),
                          ("SendMessage", f"<sessionID>{session}</sessionID>"
                                          f"<message>{message.format(data='Data')}</message>")):
        assert (await post(client, double, method, inner)).status_code == 200, method
    assert len(double.accepted) == 1


async def test_every_call_sends_only_names_the_service_binds(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    [provider_id] = (await upstream.send(sms())).provider_ids
    await upstream.send_batch([sms("79160000001", mid=2), sms("79160000002", mid=3)])
    double.set_status(provider_id, 0, "Доставлено")
    [report] = await upstream.poll_statuses([provider_id])
    assert report.status == "delivered"
    double.add_incoming("79161112233", "hi")
    messages, _ = await upstream.poll_inbound(None)
    assert [m.text for m in messages] == ["hi"]
    assert await upstream.balance() == Decimal("1234.50")
    assert len(double.accepted) == 3
    assert [r.action for r in double.requests] == [
        "GetSessionID", "SendMessage", "SendMessage", "GetMessageState", "GetIncomingMessages",
        "GetBalance"]
    assert [(r.action, r.ignored) for r in double.requests if r.ignored] == []
    assert all(r.bound == r.params for r in double.requests)


async def test_validity_goes_in_minutes_and_text_is_escaped(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    text = 'a<b & c>d "q" \'s\' ]]> Привет'
    await upstream.send(sms(text=text, validity=3601, originator="R.D-1"))
    [request] = double.calls("SendMessage")
    assert request.params["Validity"] == "61"
    assert request.params["Data"] == text and request.params["SourceAddress"] == "R.D-1"
    assert double.accepted[0].text == text


async def test_send_without_originator_fails_before_any_request(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    with pytest.raises(PermanentUpstreamError) as caught:
        await upstream.send(sms(originator=None))
    assert caught.value.code == "no_source_address"
    assert double.requests == []


async def test_session_is_fetched_once_for_concurrent_first_sends(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    receipts = await asyncio.gather(*(upstream.send(sms(f"7916123456{i}", mid=i))
                                      for i in range(5)))
    assert len(double.calls("GetSessionID")) == 1
    assert {r.provider_ids for r in receipts} == {tuple(a.ids) for a in double.accepted}
    assert len(double.accepted) == 5


async def test_a_refused_session_is_renewed_once_for_concurrent_sends(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    await upstream.send(sms())
    double.expire_sessions()  # the provider forgets the session (its 120 minutes ran out)
    await asyncio.gather(*(upstream.send(sms(f"7916123456{i}", mid=i)) for i in range(6)))
    assert len(double.calls("GetSessionID")) == 2
    assert len(double.accepted) == 7
    fresh = double.sessions_issued[1]
    accepted_with = [r.params["sessionID"] for r in double.calls("SendMessage")
                     if r.params["sessionID"] == fresh]
    assert len(accepted_with) == 6


async def test_session_is_renewed_before_its_expiry(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    upstream.sessions.lifetime = 0.0  # every call finds the cached session due for renewal
    await upstream.send(sms())
    await upstream.send(sms())
    assert len(double.calls("GetSessionID")) == 2
    assert len(double.calls("SendMessage")) == 2  # no call was refused first


async def test_a_session_refused_twice_is_transient(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    double.fail_next(2, "fault", message="SessionID expired")
    with pytest.raises(TransientUpstreamError) as caught:
        await upstream.send(sms())
    assert caught.value.code == "Receiver" and not caught.value.ambiguous
    assert len(double.calls("GetSessionID")) == 2 and double.accepted == []


# ------------------------------------------------------------------------ request rate


def busiest_second(times: list[float]) -> int:
    """The most requests that arrived within any closed window of one second."""
    ordered = sorted(times)
    return max((sum(1 for t in ordered[i:] if t <= start + 1.0)
                for i, start in enumerate(ordered)), default=0)


async def test_every_call_of_one_upstream_stays_within_10_requests_per_second(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    """Line 34: 10 requests per second — sends, batches, status and inbound polls, balance
    and session calls of one upstream together, kept by the rate limiter the dispatcher
    hands the upstream for the limit it declares."""
    assert upstream.requests_per_second == 10
    limiter_for(upstream, 0.0)
    first = await asyncio.gather(
        *(upstream.send(sms(f"791600000{i:02d}", mid=i)) for i in range(8)),
        upstream.send_batch([sms("79160000101", "A", mid=101), sms("79160000102", "B", mid=102)]),
        upstream.poll_statuses([str(6098210000001 + i) for i in range(3)]),
        upstream.poll_inbound(None),
        upstream.balance(),
    )
    double.expire_sessions()  # each send below is refused, then one renewal, then repeated
    second = await asyncio.gather(*(upstream.send(sms(f"791600001{i:02d}", mid=200 + i))
                                    for i in range(4)))
    assert len(first) == 12 and len(second) == 4 and len(double.accepted) == 14
    assert len(double.calls("GetSessionID")) == 2
    assert len(double.requests) == 25
    assert busiest_second([r.at for r in double.requests]) <= 10


# ------------------------------------------------------------------------ (c) batches, parts


async def test_batch_groups_by_text_and_originator_and_maps_ids_back(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    batch = [sms("79160000001", "A", mid=1), sms("79160000002", "B", mid=2),
             sms("79160000003", "A", mid=3), sms("79160000004", "A", originator="Other", mid=4),
             sms("79160000005", "A", validity=600, mid=5), sms("79160000006", "A", mid=6)]
    results = await upstream.send_batch(batch)
    requests = double.calls("SendMessage")
    assert [(r.params["Data"], r.params["SourceAddress"], r.params["DestinationAddresses"])
            for r in requests] == [
        ("A", "Alerts", ["79160000001", "79160000003", "79160000006"]),
        ("B", "Alerts", ["79160000002"]), ("A", "Other", ["79160000004"]),
        ("A", "Alerts", ["79160000005"]),
    ]
    assert requests[3].params["Validity"] == "10"
    by_phone = {a.phone: tuple(a.ids) for a in double.accepted}
    assert [ids_of(r) for r in results] == [by_phone[m.phone] for m in batch]


async def test_multipart_texts_give_each_address_its_parts_ids(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    latin = "x" * 200  # 2 parts of 153 (line 189: 160 Latin characters per SMS)
    results = await upstream.send_batch([sms("79160000001", latin, mid=1),
                                         sms("79160000002", latin, mid=2)])
    first, second = double.accepted
    assert [ids_of(r) for r in results] == [tuple(first.ids), tuple(second.ids)]
    assert len(first.ids) == 2 and set(first.ids).isdisjoint(second.ids)
    receipt = await upstream.send(sms(text="Ж" * 150))  # 3 parts of 67
    assert receipt.provider_ids == tuple(double.accepted[2].ids) and len(receipt.provider_ids) == 3


async def test_more_than_1000_addresses_take_two_requests(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    batch = [sms(f"7916{i:07d}", mid=i) for i in range(1001)]
    results = await upstream.send_batch(batch)
    assert [len(r.params["DestinationAddresses"]) for r in double.calls("SendMessage")] == [1000, 1]
    assert len({ids_of(r) for r in results}) == 1001


async def test_a_batch_that_is_one_request_raises_its_failure(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    double.fail_next(1, "http500")
    with pytest.raises(TransientUpstreamError) as caught:
        await upstream.send_batch([sms("79160000001"), sms("79160000002")])
    assert caught.value.code == "http_500" and caught.value.ambiguous


async def test_a_failed_group_fails_only_its_messages(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    double.fail_next(1, "fault", message="Invalid source address")
    results = await upstream.send_batch([sms("79160000001", "A", originator="Bad"),
                                         sms("79160000002", "B"), sms("79160000003", "C",
                                                                      originator=None)])
    assert isinstance(results[0], PermanentUpstreamError) and results[0].code == "Receiver"
    assert ids_of(results[1]) == tuple(double.accepted[0].ids)
    assert isinstance(results[2], PermanentUpstreamError)
    assert results[2].code == "no_source_address"


# ------------------------------------------------------------------------ (b) errors


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("mode", "kw", "error", "code", "ambiguous"),
    [
        ("fault", {"message": "Invalid source address"}, PermanentUpstreamError, "Receiver",
         False),
        ("fault", {"message": "Invalid destination address"}, PermanentUpstreamError,
         "Receiver", False),
        ("fault", {"message": "Forbidden"}, PermanentUpstreamError, "Receiver", False),
        ("fault", {"message": "Not enough credits"}, TransientUpstreamError, "Receiver", False),
        ("fault", {"message": "Gateway error"}, TransientUpstreamError, "Receiver", True),
        ("fault", {"message": "Object reference not set"}, TransientUpstreamError, "Receiver",
         True),
        ("fault", {"message": "Server was unable to read request.", "code": "Sender",
                   "status": 400}, PermanentUpstreamError, "Sender", False),
        ("fault", {"message": "Wrong version", "code": "VersionMismatch"},
         PermanentUpstreamError, "VersionMismatch", False),
        # Another prefix, HTTP 200: the fault is read by its local names.
        ("fault", {"message": "Invalid user login or password", "prefix": "env",
                   "status": 200}, PermanentUpstreamError, "Receiver", False),
        ("http500", {}, TransientUpstreamError, "http_500", True),
        ("http429", {"retry_after": 3}, TransientUpstreamError, "http_429", False),
        ("malformed", {}, TransientUpstreamError, "malformed", True),
        ("drop", {}, TransientUpstreamError, None, True),
        ("accept_then_500", {}, TransientUpstreamError, "http_500", True),
    ],
)
async def test_send_errors_are_classified_by_fault_code(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble, mode: str, kw: dict[str, Any],
    error: type[UpstreamError], code: str | None, ambiguous: bool,
) -> None:
    double.fail_next(1, mode, **kw)
    with pytest.raises(UpstreamError) as caught:
        await upstream.send(sms())
    assert isinstance(caught.value, error)
    assert (caught.value.code, caught.value.ambiguous) == (code, ambiguous)
    if mode == "http429":
        assert caught.value.retry_after == 3.0


async def test_wrong_credentials_are_permanent(
    double: DevinoSoapDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double.url, client, password="wrong")
    with pytest.raises(PermanentUpstreamError) as caught:
        await upstream.send(sms())
    assert caught.value.code == "Receiver" and "login or password" in caught.value.text
    assert double.calls("SendMessage") == []


async def test_a_slow_answer_is_an_ambiguous_timeout(
    double: DevinoSoapDouble, client: httpx.AsyncClient
) -> None:
    upstream = make(double.url, client, timeout=0.2)
    await upstream.sessions.get()
    double.fail_next(1, "delay", seconds=0.5)
    with pytest.raises(TransientUpstreamError) as caught:
        await upstream.send(sms())
    assert caught.value.ambiguous
    await double.wait_for_accepted(1)  # the provider did act: a retry may send twice


async def test_connection_errors_and_wrong_paths(
    double: DevinoSoapDouble, client: httpx.AsyncClient
) -> None:
    with pytest.raises(TransientUpstreamError) as refused:
        await make(closed_port_url(), client).send(sms())
    assert not refused.value.ambiguous
    backup = make(closed_port_url(), client, backup_url=double.url)
    assert len((await backup.send(sms())).provider_ids) == 1
    with pytest.raises(PermanentUpstreamError) as missing:
        await make(double.url + "/wrong", client).send(sms())
    assert missing.value.code == "http_404"


# ------------------------------------------------------------------------ statuses


async def test_poll_statuses_maps_table_16_and_both_spellings(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    states = ["0", "-1", "0x0000000B", "46", "47", "42", "InProcess", "InProgress",
              "Delivered_To_Recipient", "255", "-20", "8"]
    results = await upstream.send_batch([sms(f"791600000{i:02d}", mid=i)
                                         for i in range(len(states))])
    ids = [ids_of(r)[0] for r in results]
    for provider_id, state in zip(ids, states, strict=True):
        double.set_status(provider_id, state, "описание")
    reports = await upstream.poll_statuses([*ids, "999"])
    got = {r.provider_id: (r.status, r.error_code) for r in reports}
    expected = [("delivered", None), ("sent", None), ("rejected", 11), ("expired", 46),
                ("expired", 47), ("rejected", 42), ("sent", None), ("sent", None),
                ("delivered", None), None, ("sent", None), ("undelivered", 8)]
    assert got == {i: e for i, e in zip(ids, expected, strict=True) if e is not None}
    assert reports[0].raw_status == "0 описание" and reports[0].at
    request = double.calls("GetMessageState")[0]
    assert request.params == {"sessionID": double.sessions_issued[0], "messageID": ids[0]}


async def test_poll_statuses_raises_when_the_provider_cannot_answer(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    [provider_id] = (await upstream.send(sms())).provider_ids
    double.fail_next(1, "http500", method="GetMessageState")
    with pytest.raises(TransientUpstreamError):
        await upstream.poll_statuses([provider_id])
    double.fail_next(1, "fault", method="GetMessageState", message="Invalid argument")
    with pytest.raises(PermanentUpstreamError):
        await upstream.poll_statuses([provider_id])
    [report] = await upstream.poll_statuses([provider_id])
    assert (report.status, report.raw_status) == ("sent", "-1 Отправлено")


# ------------------------------------------------------------------------ inbound, balance


async def test_poll_inbound_hands_each_message_out_once_and_resumes(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble, client: httpx.AsyncClient
) -> None:
    now = datetime.now(UTC)
    double.add_incoming("79161112233", "Привет & <ok>", created=now - timedelta(minutes=30))
    double.add_incoming("+79161112244", "twin", created=now)
    double.add_incoming("+79161112244", "twin", created=now)  # identical record, twice
    double.add_incoming("79161112255", "too old", created=now - timedelta(days=2))
    messages, cursor = await upstream.poll_inbound(None)
    assert [(m.phone, m.text, m.recipient, m.kind, m.source) for m in messages] == [
        ("79161112233", "Привет & <ok>", "79037654321", "mo", "p"),
        ("79161112244", "twin", "79037654321", "mo", "p"),
        ("79161112244", "twin", "79037654321", "mo", "p"),
    ]
    assert len({m.sms_id for m in messages}) == 3
    assert json.loads(messages[0].raw)["Data"] == "Привет & <ok>"
    request = double.calls("GetIncomingMessages")[0]
    assert set(request.params) == {"sessionID", "maxDateUTC", "minDateUTC"}
    stamp = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
    assert stamp.fullmatch(request.params["minDateUTC"])
    assert stamp.fullmatch(request.params["maxDateUTC"])
    repeated, cursor = await upstream.poll_inbound(cursor)
    assert repeated == []
    # A restart: a new upstream instance resumes from the saved cursor.
    restarted = make(double.url, client)
    double.add_incoming("79161112266", "after restart")
    again, cursor2 = await restarted.poll_inbound(cursor)
    assert [m.text for m in again] == ["after restart"]
    # Ids are stable: the same records polled from scratch get the same ids.
    fresh, _ = await make(double.url, client).poll_inbound(None)
    assert {m.sms_id for m in fresh} == {m.sms_id for m in [*messages, *again]}
    state = InboundCursor.load(cursor2)
    assert state is not None and state.since >= datetime.now(UTC) - timedelta(minutes=36)


@pytest.mark.parametrize("late_by", [25, 30])
async def test_a_message_visible_up_to_30_minutes_late_is_fetched_once(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble, client: httpx.AsyncClient,
    late_by: int
) -> None:
    double.add_incoming("79161112200", "on time")
    first, cursor = await upstream.poll_inbound(None)
    assert [m.text for m in first] == ["on time"]
    polled = datetime.now(UTC)
    # Created late_by minutes before now, long before the first poll; visible only now.
    late = double.add_incoming("79161112233", "late", created=polled - timedelta(minutes=late_by))
    second, cursor = await upstream.poll_inbound(cursor)
    assert [(m.phone, m.text) for m in second] == [(late.source, "late")]
    for _ in range(3):  # the message stays in the overlapping windows: never handed out again
        again, cursor = await upstream.poll_inbound(cursor)
        assert again == []
    restarted, _ = await make(double.url, client).poll_inbound(cursor)
    assert restarted == []
    assert len(double.calls("GetIncomingMessages")) == 6


async def test_the_inbound_cursor_is_bounded_and_hands_nothing_out_twice(
    upstream: DevinoSoapUpstream, double: DevinoSoapDouble
) -> None:
    upstream.max_seen_inbound = 3
    now = datetime.now(UTC).replace(microsecond=0)
    for age in (5, 4, 3, 2, 1):
        double.add_incoming(f"7916111220{age}", f"{age} min", created=now - timedelta(minutes=age))
    messages, cursor = await upstream.poll_inbound(None)
    assert [m.text for m in messages] == ["5 min", "4 min", "3 min", "2 min", "1 min"]
    state = InboundCursor.load(cursor)
    assert state is not None and len(state.seen) <= 3
    # What is forgotten is no longer asked for: the window starts after the third newest.
    assert now - timedelta(minutes=3) < state.since <= now - timedelta(minutes=2)
    for _ in range(2):
        again, cursor = await upstream.poll_inbound(cursor)
        assert again == []


async def test_balance(upstream: DevinoSoapUpstream, double: DevinoSoapDouble) -> None:
    assert await upstream.balance() == Decimal("1234.50")
    [request] = double.calls("GetBalance")
    assert request.params == {"sessionID": double.sessions_issued[0]}


# ------------------------------------------------------------------------ (d) end to end


def store_rows(bridge: Bridge, sql: str) -> list[tuple[Any, ...]]:
    path = bridge.settings.store.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def upstream_config(double: DevinoSoapDouble, **extra: Any) -> dict[str, Any]:
    return {"kind": "devino_soap", "base_url": double.url, "login": LOGIN,
            "password": PASSWORD, **extra}


async def test_end_to_end_mail_to_sms_then_delivered_by_polling(
    bridge_factory: BridgeFactory, double: DevinoSoapDouble
) -> None:
    bridge = await bridge_factory(
        upstreams={"p": upstream_config(double, status_poll_interval=0.2)},
        # SourceAddress is mandatory (Табл. 4): the account names its sender.
        accounts={"alerts": {"password": "pw", "upstream": "p", "originator": "Alerts"}},
    )
    code, reply = await send(bridge.smtp_port, mail("79161234567.alerts@x", "", "text"))
    assert code == 250, reply
    [accepted] = await double.wait_for_accepted(1)
    [request] = double.calls("SendMessage")
    assert request.params["DestinationAddresses"] == ["79161234567"]
    assert (request.params["Data"], request.params["SourceAddress"]) == ("text", "Alerts")
    assert request.params["sessionID"] == double.sessions_issued[0]
    await double.wait_for_requests(1, action="GetMessageState")
    double.set_status(accepted.ids[0], 0, "Доставлено")
    async with asyncio.timeout(10):
        # The status is written by the status poller's task; no event marks that commit.
        while store_rows(bridge, "SELECT delivery_status FROM messages") != [("delivered",)]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    [message] = await bridge.store.list_messages()
    assert message.upstream_ids == accepted.ids
    [(detail,)] = store_rows(bridge, "SELECT delivery_detail FROM messages")
    assert detail.startswith("0 Доставлено")


async def test_end_to_end_inbound_is_mailed_once_across_a_restart(
    bridge_factory: BridgeFactory, double: DevinoSoapDouble
) -> None:
    async with MailboxDouble() as box:
        config: dict[str, Any] = {
            "upstreams": {"p": upstream_config(double, inbound_poll_interval=0.2)},
            "accounts": {"alerts": {"password": "pw", "upstream": "p"}},
            "inbound": {"routes": [{"emails": ["desk@example.com"]}]},
            "mail": {"smarthost": "127.0.0.1", "smarthost_port": box.port},
        }
        bridge = await bridge_factory(**config)
        double.add_incoming("79161112233", "first")
        double.add_incoming("79161112244", "second")
        await box.wait_for(2)
        await bridge.stop()
        polls = len(double.calls("GetIncomingMessages"))
        double.add_incoming("79161112255", "third")  # the old two stay visible to the poll
        double.add_incoming("79161112266", "fourth")
        second = await bridge_factory(**config)
        await box.wait_for(4)
        # Two more polls after the mails: any duplicate would have been picked up by now.
        await double.wait_for_requests(polls + 3, action="GetIncomingMessages")
        assert store_rows(second, "SELECT COUNT(*) FROM inbound") == [(4,)]
        assert store_rows(second, "SELECT COUNT(*) FROM forward_jobs") == [(4,)]
    payloads = [m.message.get_payload(decode=True) for m in box.mails]
    assert all(isinstance(p, bytes) for p in payloads)
    texts = sorted(p.decode().strip() for p in payloads if isinstance(p, bytes))
    assert texts == ["first", "fourth", "second", "third"]
    assert len({m.message["X-SMS-Id"] for m in box.mails}) == 4
    assert all(m.rcpt_tos == ["desk@example.com"] for m in box.mails)

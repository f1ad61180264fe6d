"""Kcell JSONv2 upstream (spec 000_11f12833dd23f0e5.txt) against its test double, and end to
end through a bridge: send, batch, errors, status polling and delivery-report callbacks."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from bridge.app import Bridge
from bridge.errors import (
    InboundError,
    PermanentUpstreamError,
    TransientUpstreamError,
    UpstreamError,
)
from bridge.settings import upstream_settings
from bridge.upstreams.base import BatchSending, OutboundSms, SendReceipt, StatusPolling
from bridge.upstreams.kcell import KcellUpstream, map_status, parse_delivery_reports
from tests.conftest import BridgeFactory
from tests.doubles.kcell import KcellDouble
from tests.sms import outbound_sms
from tests.test_smtp_intake import db_rows, mail, send, wait_status

CREDENTIALS = {"login": "kc-user", "password": "kc-pass", "client_id": "acme"}
BASIC = "Basic " + base64.b64encode(b"kc-user:kc-pass").decode()

MakeUpstream = Callable[..., Awaitable[KcellUpstream]]


@pytest.fixture
async def double() -> AsyncIterator[KcellDouble]:
    async with KcellDouble(login="kc-user", password="kc-pass", client_id="acme") as provider:
        yield provider


@pytest.fixture
async def make_upstream(double: KcellDouble) -> AsyncIterator[MakeUpstream]:
    clients: list[httpx.AsyncClient] = []

    async def factory(**overrides: Any) -> KcellUpstream:
        values: dict[str, Any] = {"kind": "kcell", "base_url": double.url, **CREDENTIALS,
                                  "callback_url": "https://bridge.example/in/kcell/s/dlr",
                                  **overrides}
        settings = upstream_settings(**values)
        KcellUpstream.validate("p", settings)
        client = httpx.AsyncClient()
        clients.append(client)
        return KcellUpstream("p", settings, client)

    yield factory
    for client in clients:
        await client.aclose()


def sms(phone: str = "79161234567", text: str = "hello", *, key: str = "b1-1",
        attempt: int = 1, originator: str | None = "ACME", validity: int | None = None,
        maybe_sent: int = 0) -> OutboundSms:
    return outbound_sms(message_id=1, idempotency_key=key, attempt=attempt, phone=phone,
                       text=text, encoding="gsm7", originator=originator, validity=validity,
                       maybe_sent=maybe_sent)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- (a) the requests on the wire --------------------------------------------------------------


async def test_send_one_is_a_spec_request(double: KcellDouble,
                                          make_upstream: MakeUpstream) -> None:
    upstream = await make_upstream()
    receipt = await upstream.send(sms(text="Диск заполнен", validity=600))
    [request] = double.requests
    assert request.method == "POST" and request.path == "/acme/json2/simple"
    assert request.headers["authorization"] == BASIC
    assert request.headers["content-type"] == "application/json"
    assert request.json == {
        "phone_number": 79161234567,
        "extra_id": "b1-1",
        "callback_url": "https://bridge.example/in/kcell/s/dlr",
        "channels": ["sms"],
        "channel_options": {"sms": {"text": "Диск заполнен", "alpha_name": "ACME", "ttl": 600}},
    }
    assert "Диск".encode() in request.raw_body  # UTF-8, not \\u escapes
    [accepted] = double.accepted
    assert receipt == SendReceipt((accepted.message_id,))
    assert accepted.extra_id == "b1-1" and accepted.text == "Диск заполнен"


@pytest.mark.parametrize(("validity", "ttl"),
                         [(None, 259200), (5, 15), (600, 600), (10**7, 259200)])
async def test_ttl_is_the_validity_clamped_to_15_259200(
    double: KcellDouble, make_upstream: MakeUpstream, validity: int | None, ttl: int
) -> None:
    upstream = await make_upstream()
    await upstream.send(sms(validity=validity))
    assert double.requests[0].json["channel_options"]["sms"]["ttl"] == ttl


async def test_without_callback_url_and_long_key(double: KcellDouble,
                                                 make_upstream: MakeUpstream) -> None:
    upstream = await make_upstream(callback_url=None)
    key = "k" * 80
    await upstream.send(sms(key=key))
    body = double.requests[0].json
    assert "callback_url" not in body
    assert len(body["extra_id"]) == 64 and body["extra_id"] != key[:64]


@pytest.mark.parametrize("originator", ["TwelveChars!", "Отправитель"])
async def test_bad_alpha_name_is_refused_without_a_request(
    double: KcellDouble, make_upstream: MakeUpstream, originator: str
) -> None:
    upstream = await make_upstream()
    with pytest.raises(PermanentUpstreamError) as caught:
        await upstream.send(sms(originator=originator))
    assert caught.value.code == 36015
    assert double.requests == []


async def test_forbidden_alpha_name_is_permanent_36055(make_upstream: MakeUpstream,
                                                      double: KcellDouble) -> None:
    double.alpha_names = {"ACME"}
    upstream = await make_upstream()
    with pytest.raises(PermanentUpstreamError) as caught:
        await upstream.send(sms(originator="OTHER"))
    assert caught.value.code == 36055
    assert double.accepted == []


async def test_validate_names_the_missing_key() -> None:
    with pytest.raises(ValueError, match=r"upstreams\.p\.client_id"):
        KcellUpstream.validate("p", upstream_settings(kind="kcell", base_url="http://127.0.0.1:9",
                                                     login="a", password="b"))
    with pytest.raises(ValueError, match=r"upstreams\.p\.callback_url"):
        KcellUpstream.validate("p", upstream_settings(
            kind="kcell", base_url="http://127.0.0.1:9", login="a", password="b",
            client_id="c", callback_url="https://x/" + "a" * 300))


async def test_send_batch_groups_per_alpha_and_ttl_and_maps_ids_back(
    double: KcellDouble, make_upstream: MakeUpstream
) -> None:
    upstream = await make_upstream()
    assert isinstance(upstream, BatchSending) and upstream.max_batch >= 2
    batch = [
        sms("79161234567", "first", key="b1-1"),
        sms("79161234567", "second, same phone", key="b1-2"),
        sms("79169999999", "other alpha", key="b1-3", originator="INFO"),
        sms("77011234567", "third", key="b1-4"),
    ]
    results = await upstream.send_batch(batch)
    requests = [r for r in double.requests if r.path == "/acme/json2/batch/sync"]
    assert len(requests) == 2
    assert requests[0].headers["authorization"] == BASIC
    assert requests[0].headers["content-type"] == "application/json"
    assert requests[0].json == {
        "messages": [
            {"phone_number": 79161234567, "extra_id": "b1-1", "text": "first"},
            {"phone_number": 79161234567, "extra_id": "b1-2", "text": "second, same phone"},
            {"phone_number": 77011234567, "extra_id": "b1-4", "text": "third"},
        ],
        "callback_url": "https://bridge.example/in/kcell/s/dlr",
        "channels": ["sms"],
        "channel_options": {"sms": {"alpha_name": "ACME", "ttl": 259200}},
    }
    assert requests[1].json["channel_options"] == {"sms": {"alpha_name": "INFO", "ttl": 259200}}
    by_extra = {a.extra_id: a for a in double.accepted}
    for message, result in zip(batch, results, strict=True):
        assert isinstance(result, SendReceipt)
        accepted = by_extra[message.idempotency_key]
        assert result.provider_ids == (accepted.message_id,)
        assert accepted.text == message.text and accepted.phone == message.phone


async def test_batch_entry_refused_is_an_error_for_that_message_only(
    double: KcellDouble, make_upstream: MakeUpstream
) -> None:
    upstream = await make_upstream()
    results = await upstream.send_batch([sms("79161234567", key="a"), sms("123", key="b"),
                                         sms("79161234568", key="c")])
    assert isinstance(results[0], SendReceipt) and isinstance(results[2], SendReceipt)
    assert isinstance(results[1], PermanentUpstreamError) and results[1].code == 36024
    assert [a.extra_id for a in double.accepted] == ["a", "c"]


async def test_batch_whole_request_failure_is_raised(double: KcellDouble,
                                                    make_upstream: MakeUpstream) -> None:
    upstream = await make_upstream()
    double.fail_next(1, "error", code=36071, http_status=503)
    with pytest.raises(TransientUpstreamError) as caught:
        await upstream.send_batch([sms(key="a"), sms("79161234568", key="b")])
    assert caught.value.code == 36071


async def test_batch_failure_of_one_group_keeps_the_others_receipts(
    double: KcellDouble, make_upstream: MakeUpstream
) -> None:
    upstream = await make_upstream()
    double.fail_next(1, "http500", after=1)  # the second request (alpha name INFO) fails
    results = await upstream.send_batch([sms(key="a"), sms(key="b", originator="INFO")])
    assert isinstance(results[0], SendReceipt)
    assert isinstance(results[1], TransientUpstreamError) and results[1].ambiguous
    assert len(double.accepted) == 1


# -- (b) every error class --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "permanent"),
    [(36024, True), (10243, True), (36014, True), (36015, True), (36017, True),
     (36019, True), (36027, True), (36048, True), (36049, True), (36054, True),
     (36055, True), (36058, True), (36065, True),
     (36057, False), (10229, False), (36071, False), (36020, False), (10216, False),
     (99999, False)],
)
@pytest.mark.parametrize("http_status", [200, 400, 500])
async def test_error_codes_decide_whatever_the_http_status(
    double: KcellDouble, make_upstream: MakeUpstream, code: int, permanent: bool,
    http_status: int
) -> None:
    upstream = await make_upstream()
    double.fail_next(1, "error", code=code, http_status=http_status)
    with pytest.raises(UpstreamError) as caught:
        await upstream.send(sms())
    expected = PermanentUpstreamError if permanent else TransientUpstreamError
    assert type(caught.value) is expected
    assert caught.value.code == code
    assert not caught.value.ambiguous  # the platform answered with a refusal


async def test_double_validation_codes_reach_the_caller(double: KcellDouble,
                                                        make_upstream: MakeUpstream) -> None:
    upstream = await make_upstream()
    double.error_http_status = 400
    with pytest.raises(PermanentUpstreamError) as caught:
        await upstream.send(sms(phone="123"))
    assert caught.value.code == 36024
    with pytest.raises(PermanentUpstreamError) as caught:
        await upstream.send(sms(text=""))
    assert caught.value.code == 36054


@pytest.mark.parametrize(
    ("mode", "kw", "code", "ambiguous"),
    [("http500", {}, "http_500", True), ("http429", {"retry_after": 3}, "http_429", False),
     ("malformed", {}, "malformed", True), ("drop", {}, None, True)],
)
async def test_http_failures_are_transient(
    double: KcellDouble, make_upstream: MakeUpstream, mode: str, kw: dict[str, Any],
    code: str | None, ambiguous: bool
) -> None:
    upstream = await make_upstream()
    double.fail_next(1, mode, **kw)
    with pytest.raises(TransientUpstreamError) as caught:
        await upstream.send(sms())
    assert caught.value.code == code and caught.value.ambiguous is ambiguous
    if mode == "http429":
        assert caught.value.retry_after == 3


async def test_slow_reply_hits_the_deadline(double: KcellDouble,
                                            make_upstream: MakeUpstream) -> None:
    upstream = await make_upstream(timeout=0.3)
    double.fail_next(1, "delay", seconds=1.0)
    with pytest.raises(TransientUpstreamError) as caught:
        await upstream.send(sms())
    assert caught.value.ambiguous


async def test_wrong_credentials_and_client_id_are_permanent(
    double: KcellDouble, make_upstream: MakeUpstream
) -> None:
    upstream = await make_upstream(password="wrong")
    with pytest.raises(PermanentUpstreamError) as caught:
        await upstream.send(sms())
    assert caught.value.code == "http_401"
    upstream = await make_upstream(client_id="other")
    with pytest.raises(PermanentUpstreamError) as caught:
        await upstream.send(sms())
    assert caught.value.code == "http_404"
    assert double.accepted == []


async def test_retry_after_ambiguous_failure_finds_the_earlier_message_by_extra_id(
    double: KcellDouble, make_upstream: MakeUpstream
) -> None:
    upstream = await make_upstream()
    double.fail_next(1, "accept_then_500")
    with pytest.raises(TransientUpstreamError) as caught:
        await upstream.send(sms(key="b1-7"))
    assert caught.value.ambiguous
    # The dispatcher counts that failure in maybe_sent.
    receipt = await upstream.send(sms(key="b1-7", attempt=2, maybe_sent=1))
    [accepted] = double.accepted
    assert receipt.provider_ids == (accepted.message_id,)
    assert double.requests[-1].path == "/acme/dr/external/b1-7/simple"
    # A retry of a message the platform does not know is sent.
    receipt = await upstream.send(sms(key="b1-8", attempt=2, maybe_sent=1))
    assert len(double.accepted) == 2 and receipt.provider_ids == (double.accepted[1].message_id,)


@pytest.mark.parametrize("not_found_body", [
    {"error_code": 36020, "error_text": "Message not found"},  # the double's default
    None,  # a bare 404
])
async def test_lookup_answered_404_means_unknown_so_the_retry_sends(
    double: KcellDouble, make_upstream: MakeUpstream, not_found_body: dict[str, Any] | None
) -> None:
    # A process killed with attempt 1 in flight left it of unknown fate: look up first.
    double.dr_not_found_body = not_found_body
    upstream = await make_upstream()
    receipt = await upstream.send(sms(key="b1-9", maybe_sent=1))
    assert [r.path for r in double.requests] == ["/acme/dr/external/b1-9/simple",
                                                 "/acme/json2/simple"]
    [accepted] = double.accepted
    assert receipt.provider_ids == (accepted.message_id,)


@pytest.mark.parametrize("http_status", [200, 500])
async def test_lookup_answered_36020_stays_transient_and_sends_nothing(
    double: KcellDouble, make_upstream: MakeUpstream, http_status: int
) -> None:
    # Table 11 (l. 1196, 1317): 36020 is an internal error; only HTTP 404 says "unknown".
    upstream = await make_upstream()
    double.fail_next(1, "error", target="dr", code=36020, http_status=http_status)
    with pytest.raises(TransientUpstreamError) as caught:
        await upstream.send(sms(key="b1-10", attempt=2, maybe_sent=1))
    assert caught.value.code == 36020
    assert [r.path for r in double.requests] == ["/acme/dr/external/b1-10/simple"]
    assert double.accepted == []


async def test_retry_after_429_sends_without_a_lookup(
    double: KcellDouble, make_upstream: MakeUpstream
) -> None:
    upstream = await make_upstream()
    double.fail_next(1, "http429", retry_after=1)
    with pytest.raises(TransientUpstreamError) as caught:
        await upstream.send(sms(key="b1-11"))
    assert not caught.value.ambiguous
    receipt = await upstream.send(sms(key="b1-11", attempt=2))
    assert [r.path for r in double.requests] == ["/acme/json2/simple", "/acme/json2/simple"]
    [accepted] = double.accepted
    assert receipt.provider_ids == (accepted.message_id,)


async def test_retry_after_connection_refused_sends_without_a_lookup(
    make_upstream: MakeUpstream
) -> None:
    port = free_port()
    upstream = await make_upstream(base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(TransientUpstreamError) as caught:
        await upstream.send(sms(key="b1-12"))
    assert not caught.value.ambiguous
    async with KcellDouble(login="kc-user", password="kc-pass", client_id="acme",
                           port=port) as later:
        receipt = await upstream.send(sms(key="b1-12", attempt=2))
        assert [r.path for r in later.requests] == ["/acme/json2/simple"]
        assert receipt.provider_ids == (later.accepted[0].message_id,)


async def test_retry_after_an_unambiguous_then_an_ambiguous_failure_looks_up(
    double: KcellDouble, make_upstream: MakeUpstream
) -> None:
    # After a 429 (nothing sent: maybe_sent stays 0) and then a 500 (maybe_sent 1), attempt 3
    # must look up.
    upstream = await make_upstream()
    double.fail_next(1, "http429")
    double.fail_next(1, "accept_then_500")
    for attempt in (1, 2):
        with pytest.raises(TransientUpstreamError):
            await upstream.send(sms(key="b1-13", attempt=attempt))
    receipt = await upstream.send(sms(key="b1-13", attempt=3, maybe_sent=1))
    [accepted] = double.accepted
    assert receipt.provider_ids == (accepted.message_id,)
    assert [r.path for r in double.requests] == [
        "/acme/json2/simple", "/acme/json2/simple", "/acme/dr/external/b1-13/simple"]


async def test_lookup_follows_maybe_sent_not_the_attempt_number(
    double: KcellDouble, make_upstream: MakeUpstream
) -> None:
    """A first attempt re-claimed after a crash (attempt 1, one intent without an outcome)
    looks up; a third attempt after failures that surely sent nothing (maybe_sent 0) does
    not. Both single and batched."""
    upstream = await make_upstream()
    await upstream.send(sms(key="c-1"))  # the request the crashed process made
    receipt = await upstream.send(sms(key="c-1", attempt=1, maybe_sent=1))
    assert receipt.provider_ids == (double.accepted[0].message_id,)
    await upstream.send(sms(key="c-2", attempt=3, maybe_sent=0))
    results = await upstream.send_batch([sms(key="c-1", maybe_sent=1),
                                         sms("79161234568", key="c-3", attempt=4)])
    assert [r.provider_ids for r in results if isinstance(r, SendReceipt)] == [
        (double.accepted[0].message_id,), (double.accepted[2].message_id,)]
    assert [r.path for r in double.requests] == [
        "/acme/json2/simple", "/acme/dr/external/c-1/simple", "/acme/json2/simple",
        "/acme/dr/external/c-1/simple", "/acme/json2/batch/sync"]
    assert len(double.accepted) == 3


async def test_batch_retry_after_429_sends_without_lookups(
    double: KcellDouble, make_upstream: MakeUpstream
) -> None:
    upstream = await make_upstream()
    double.fail_next(1, "http429")
    batch = [sms(key="a"), sms("79161234568", key="b")]
    with pytest.raises(TransientUpstreamError):
        await upstream.send_batch(batch)
    results = await upstream.send_batch([sms(key="a", attempt=2),
                                         sms("79161234568", key="b", attempt=2)])
    assert all(isinstance(r, SendReceipt) for r in results)
    assert [r.path for r in double.requests] == ["/acme/json2/batch/sync"] * 2
    assert sorted(a.extra_id or "" for a in double.accepted) == ["a", "b"]


# -- (c) multi-segment ------------------------------------------------------------------------


async def test_long_text_has_one_message_id(double: KcellDouble,
                                            make_upstream: MakeUpstream) -> None:
    upstream = await make_upstream()
    receipt = await upstream.send(sms(text="x" * 700))
    [accepted] = double.accepted
    assert receipt.provider_ids == (accepted.message_id,)
    [report] = await upstream.poll_statuses([accepted.message_id])
    assert report.status == "sent" and report.raw_status == "-1/-/-"


# -- statuses: polling and callbacks -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "raw"),
    [("delivered", "delivered", "2/23/23011"), ("expired", "expired", "3/35/35015"),
     ("undelivered", "undelivered", "3/36/36031"), ("rejected", "rejected", "3/10/36051"),
     ("enroute", "sent", "1/12/36011"), ("accepted", "sent", "1/12/12011"),
     ("unknown", "unknown", "3/36/36041"), ("deleted", "undelivered", "3/36/36021"),
     ("pending", "sent", "-1/-/-")],
)
async def test_poll_statuses_maps_the_status_tables(
    double: KcellDouble, make_upstream: MakeUpstream, name: str, status: str, raw: str
) -> None:
    upstream = await make_upstream()
    assert isinstance(upstream, StatusPolling)
    receipt = await upstream.send(sms())
    [message_id] = receipt.provider_ids
    double.set_status(message_id, name)
    [report] = await upstream.poll_statuses([message_id, "00000000-0000-0000-0000-000000000000"])
    assert report.provider_id == message_id
    assert (report.status, report.raw_status) == (status, raw)
    assert report.at.endswith("+00:00")
    assert double.requests[-2].path == f"/acme/dr/{message_id}/simple"
    assert double.requests[-2].headers["authorization"] == BASIC


async def test_poll_statuses_raises_when_the_provider_cannot_answer(
    double: KcellDouble, make_upstream: MakeUpstream
) -> None:
    upstream = await make_upstream()
    ids = [(await upstream.send(sms(key=k))).provider_ids[0] for k in ("a", "b")]
    double.fail_next(2, "http500", target="dr")
    with pytest.raises(TransientUpstreamError):
        await upstream.poll_statuses(ids)
    double.fail_next(1, "error", target="dr", code=36071)
    reports = await upstream.poll_statuses(ids)  # one answered: no raise, the other left out
    assert len(reports) == 1 and reports[0].provider_id in ids


@pytest.mark.parametrize(
    ("fields", "expected"),
    [((2, 23, 23011, None), "delivered"), ((3, 35, 35015, None), "expired"),
     ((None, None, None, 35015), "expired"), ((3, 36, 36065, 36065), "undelivered"),
     ((3, None, 36024, None), "rejected"), ((None, 10, None, None), "rejected"),
     ((1, None, None, None), "sent"), ((3, None, None, None), "undelivered"),
     ((3, 24, None, None), "expired"), ((1, 12, 36011, None), "sent"),
     ((3, 77, 77777, None), "rejected"), ((None, None, None, None), None)],
)
def test_status_precedence(fields: tuple[Any, Any, Any, Any], expected: str | None) -> None:
    assert map_status(*fields) == expected


def test_callback_single_object_and_batched_array() -> None:
    single = json.dumps({"number": 79651111111, "time": 1477417294667, "status": 2,
                         "substatus": 23, "msg_status": 23011,
                         "message_id": "9f60ac8f-e721-5027-b838-e6fcb95fcd7a",
                         "extra_id": "AD-6640-7006", "sent_via": "sms"}).encode()
    [report] = parse_delivery_reports("application/json", b"", single, "windows-1251")
    assert report.provider_id == "9f60ac8f-e721-5027-b838-e6fcb95fcd7a"
    assert report.status == "delivered" and report.raw_status == "2/23/23011"
    assert report.at == "2016-10-25T17:41:34.667+00:00"
    batched = json.dumps([
        {"number": "79651111111", "time": 1477417294667, "status": 2, "substatus": 23,
         "msg_status": 23011, "message_id": "m1", "extra_id": "e1", "sent_via": "sms"},
        {"number": "79652222222", "time": 1477417299000, "status": 3, "substatus": 35,
         "msg_status": 35015, "message_id": "m2", "extra_id": "e2", "sent_via": "sms"},
    ]).encode()
    reports = parse_delivery_reports("text/plain", b"", batched, "utf-8")
    assert [(r.provider_id, r.status) for r in reports] == [("m1", "delivered"),
                                                             ("m2", "expired")]
    assert parse_delivery_reports("application/json", b"", b"[]", "utf-8") == []


@pytest.mark.parametrize(
    ("body", "field"),
    [(b"not json", "body"), (b'"text"', "body"), (b"[1]", "[0]"),
     (b'{"status": 2}', "message_id"), (b'[{"message_id": "m", "status": 2}, {"status": 2}]',
                                        "[1].message_id"),
     (b'{"message_id": "m"}', "status")],
)
def test_malformed_callback_is_400_naming_the_field(body: bytes, field: str) -> None:
    with pytest.raises(InboundError) as caught:
        parse_delivery_reports("application/json", b"", body, "utf-8")
    assert caught.value.status == 400 and caught.value.field == field


# -- (d) end to end through a bridge -----------------------------------------------------------


def delivery(bridge: Bridge) -> list[tuple[Any, ...]]:
    return db_rows(bridge, "SELECT id, delivery_status, delivery_detail FROM messages ORDER BY id")


async def wait_delivered(bridge: Bridge, count: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        # The status is written by another task (poller, HTTP view); no event marks it.
        while sum(row[1] == "delivered" for row in delivery(bridge)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_end_to_end_send_and_status_by_polling(
    bridge_factory: BridgeFactory, double: KcellDouble
) -> None:
    bridge = await bridge_factory(
        upstreams={"p": {"kind": "kcell", "base_url": double.url, **CREDENTIALS,
                         "status_poll_interval": 0.2}},
        accounts={"alerts": {"password": "pw", "upstream": "p", "originator": "ACME"}})
    code, reply = await send(bridge.smtp_port, mail("79161234567.alerts@x", "", "text"))
    assert code == 250, reply
    [accepted] = await double.wait_for_accepted(1)
    [request] = [r for r in double.requests if r.path == "/acme/json2/simple"]
    assert request.headers["authorization"] == BASIC
    assert request.json["phone_number"] == 79161234567
    assert request.json["channel_options"]["sms"] == {"text": "text", "alpha_name": "ACME",
                                                      "ttl": 259200}
    assert "callback_url" not in request.json
    double.set_status(accepted.message_id, "delivered")
    await wait_delivered(bridge, 1)
    [message] = await bridge.store.list_messages()
    assert message.upstream_ids == [accepted.message_id]
    [(_, status, detail)] = delivery(bridge)
    assert status == "delivered" and "2/23/23011" in detail
    assert any(r.path == f"/acme/dr/{accepted.message_id}/simple" for r in double.requests)


async def test_end_to_end_status_by_callback_single_and_batched(
    bridge_factory: BridgeFactory, double: KcellDouble
) -> None:
    port = free_port()
    callback = f"http://127.0.0.1:{port}/in/kcell/s/dlr"
    bridge = await bridge_factory(
        http={"port": port},
        upstreams={"p": {"kind": "kcell", "base_url": double.url, **CREDENTIALS,
                         "callback_url": callback, "status_poll_interval": 0}},
        accounts={"alerts": {"password": "pw", "upstream": "p", "originator": "ACME"}},
        inbound={"sources": {"kcell": {"secret": "s", "dlr_format": "kcell"}}})
    code, reply = await send(bridge.smtp_port, mail("79161234567.alerts@x", "", "text"))
    assert code == 250, reply
    [first] = await double.wait_for_accepted(1)
    assert first.callback_url == callback
    double.set_status(first.message_id, "delivered")
    assert await double.push_reports([first.message_id]) == 200  # to the request's callback_url
    await wait_delivered(bridge, 1)

    code, reply = await send(bridge.smtp_port,
                             mail("alerts@x", "79161234568, 79161234569", "two"))
    assert code == 250, reply
    accepted = await double.wait_for_accepted(3)
    ids = [a.message_id for a in accepted[1:]]
    double.set_status(ids[0], "delivered")
    double.set_status(ids[1], "expired")
    assert await double.push_reports(ids, batched=True) == 200
    # A report may come before the bridge recorded the send reply: it is kept and applied
    # when the send is recorded, so every status arrives.
    async with asyncio.timeout(10):
        while [row[1] for row in delivery(bridge)] != [  # noqa: ASYNC110
                "delivered", "delivered", "expired"]:
            await asyncio.sleep(0.05)
    sources = db_rows(bridge, "SELECT DISTINCT source FROM delivery_reports")
    assert sources == [("kcell",)]
    # Status polling is off for this upstream: only the callbacks moved the statuses.
    assert not any("/dr/" in r.path for r in double.requests)
    async with httpx.AsyncClient() as client:
        response = await client.post(callback, content=b'[{"status": 2}]',
                                     headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["field"] == "[0].message_id"


@pytest.mark.parametrize(("mode", "lookups"), [("http500", 1), ("http429", 0)])
async def test_end_to_end_retry_after_a_transient_failure_sends_once(
    bridge_factory: BridgeFactory, double: KcellDouble, mode: str, lookups: int
) -> None:
    bridge = await bridge_factory(
        upstreams={"p": {"kind": "kcell", "base_url": double.url, **CREDENTIALS,
                         "status_poll_interval": 0}},
        accounts={"alerts": {"password": "pw", "upstream": "p", "originator": "ACME"}})
    double.fail_next(1, mode)
    code, reply = await send(bridge.smtp_port, mail("79161234567.alerts@x", "", "text"))
    assert code == 250, reply
    await wait_status(bridge, 1, "sent")
    [accepted] = double.accepted
    [message] = await bridge.store.list_messages()
    assert message.upstream_ids == [accepted.message_id]
    paths = [r.path for r in double.requests]
    assert paths.count("/acme/json2/simple") == 2
    assert sum(p.startswith("/acme/dr/external/") for p in paths) == lookups

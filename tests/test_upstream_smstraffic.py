"""SMS Traffic upstreams against the double: v1 batches, statuses and inbound; v2 statuses;
the SOAP protocol (spec 002_e7d2ff51d5c777f0.txt)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from email.message import Message
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bridge.app import Bridge
from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.parsing.text import count_segments
from bridge.settings import UpstreamSettings, upstream_settings
from bridge.upstreams._soap import SOAP12
from bridge.upstreams.base import BatchSending, InboundPolling, OutboundSms, SendReceipt
from bridge.upstreams.smstraffic.soap import (
    SERVICE_NS,
    SmsTrafficSoapUpstream,
    parse_send_response,
    parse_status_response,
)
from bridge.upstreams.smstraffic.v1 import (
    INBOUND_OVERLAP,
    MSK,
    InboundCursor,
    SmsTrafficV1Upstream,
    parse_v1_statuses,
    push_id_for,
)
from bridge.upstreams.smstraffic.v2 import SmsTrafficV2Upstream
from tests.conftest import BridgeFactory
from tests.doubles.mailbox import MailboxDouble
from tests.doubles.smstraffic import RecordedRequest, SmsTrafficDouble
from tests.sms import outbound_sms
from tests.test_smtp_intake import mail, send

LOGIN, PASSWORD, KEY = "acme", "s3cret", "77/key"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
async def double() -> AsyncIterator[SmsTrafficDouble]:
    async with SmsTrafficDouble(login=LOGIN, password=PASSWORD, api_key=KEY,
                                split_parts=True) as d:
        yield d


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as c:
        yield c


def config(kind: str, url: str, **extra: Any) -> UpstreamSettings:
    return upstream_settings(kind=kind, base_url=url, login=LOGIN, password=SecretStr(PASSWORD),
                            api_key=SecretStr(KEY), timeout=2.0, **extra)


def v1(double: SmsTrafficDouble, client: httpx.AsyncClient, **extra: Any) -> SmsTrafficV1Upstream:
    return SmsTrafficV1Upstream("st", config("smstraffic_v1", double.url, **extra), client)


def v2(double: SmsTrafficDouble, client: httpx.AsyncClient) -> SmsTrafficV2Upstream:
    return SmsTrafficV2Upstream("st2", config("smstraffic_v2", double.url), client)


def soap(double: SmsTrafficDouble, client: httpx.AsyncClient,
         url: str | None = None) -> SmsTrafficSoapUpstream:
    return SmsTrafficSoapUpstream("soap", config("smstraffic_soap", url or double.url), client)


def sms(n: int = 1, **kw: Any) -> OutboundSms:
    values: dict[str, Any] = {"message_id": n, "idempotency_key": f"b1d9-{n}", "attempt": 1,
                              "phone": f"7916123456{n % 10}", "text": f"hello {n}",
                              "encoding": "gsm7"}
    values.update(kw)
    return outbound_sms(**values)


def form_of(request: RecordedRequest) -> list[tuple[str, str]]:
    """The body's parameters in order, decoded as UTF-8 (rus=5)."""
    return urllib.parse.parse_qsl(request.raw_body.decode("ascii"), keep_blank_values=True)


def soap_body(request: RecordedRequest) -> ET.Element:
    root = ET.fromstring(request.raw_body)
    assert root.tag == f"{{{SOAP12}}}Envelope"
    body = root.find(f"{{{SOAP12}}}Body")
    assert body is not None
    return body[0]


def tag(name: str) -> str:
    return f"{{{SERVICE_NS}}}{name}"


# --------------------------------------------------------------------------- v1 send

async def test_v1_send_one_exact_request(double: SmsTrafficDouble,
                                         client: httpx.AsyncClient) -> None:
    receipt = await v1(double, client).send(sms(originator="ACME", validity=3600, flash=True))
    [request] = double.requests
    assert (request.method, request.path, request.headers["content-type"]) == (
        "POST", "/multi.php", FORM)
    assert form_of(request) == [
        ("login", LOGIN), ("password", PASSWORD), ("phones", "79161234561"),
        ("message", "hello 1"), ("rus", "0"), ("want_sms_ids", "1"), ("max_parts", "255"),
        ("originator", "ACME"), ("flash", "1"), ("timeout", "3600"),
    ]
    assert receipt.provider_ids == (double.accepted[0].sms_id,)


async def test_v1_send_long_text_collects_every_part_id(double: SmsTrafficDouble,
                                                        client: httpx.AsyncClient) -> None:
    receipt = await v1(double, client).send(sms(text="x" * 300))
    [accepted] = double.accepted
    assert len(accepted.part_ids) == 2  # 300 Latin characters: 153 + 147
    assert receipt.provider_ids == tuple(accepted.part_ids)


async def test_v1_ascii_text_goes_latin_and_the_part_count_agrees_with_the_provider(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """002 l. 811-813: rus=0 (windows-1251, 160/153) for text that Latin mode carries; rus=5
    otherwise, 70/67 per part even for Latin-only text by the stricter reading, which the
    double applies. The bridge's own count (``count_segments``, recorded as ``parts``) must
    be the provider's."""
    upstream = v1(double, client)
    cases = [("a" * 282, "0"), ("{x}" * 60, "0"), ("é" * 100, "5"), ("Δ" + "a" * 99, "5"),
             ("`" + "a" * 99, "5"), ("Привет " * 12, "5")]
    for text, rus in cases:
        receipt = await upstream.send(sms(text=text))
        form = dict(form_of(double.requests[-1]))
        assert form["rus"] == rus, text
        accepted = double.accepted[-1]
        assert accepted.message == text
        assert len(receipt.provider_ids) == len(accepted.part_ids) == count_segments(text).parts


# --------------------------------------------------------------------------- v1 batch

async def test_v1_batch_one_request_with_push_ids_and_part_ids(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    upstream = v1(double, client)
    assert isinstance(upstream, BatchSending) and upstream.max_batch > 1
    batch = [sms(1, text="y" * 200), sms(2, text="two\nlines"), sms(3, text="Привет мир"),
             sms(4, text="Пока")]
    results = await upstream.send_batch(batch)
    latin, cyrillic = double.requests  # one request per rus value (spec l. 811-813)
    form = dict(form_of(latin))
    assert {k: form[k] for k in ("individual_messages", "with_push_id", "want_sms_ids", "rus")} \
        == {"individual_messages": "1", "with_push_id": "1", "want_sms_ids": "1", "rus": "0"}
    assert "message" not in form
    delimiter = form["delimiter"]  # a text holds a line break (spec l. 829)
    assert form["phones"].split(delimiter) == [
        f"b1d9-1:79161234561 {'y' * 200}", "b1d9-2:79161234562 two\nlines"]
    form = dict(form_of(cyrillic))
    assert (form["rus"], form["individual_messages"]) == ("5", "1")
    assert "delimiter" not in form
    assert form["phones"] == "b1d9-3:79161234563 Привет мир\nb1d9-4:79161234564 Пока"
    assert [(a.phone, a.message, a.params["push_id"]) for a in double.accepted] == [
        ("79161234561", "y" * 200, "b1d9-1"), ("79161234562", "two\nlines", "b1d9-2"),
        ("79161234563", "Привет мир", "b1d9-3"), ("79161234564", "Пока", "b1d9-4")]
    assert all(isinstance(r, SendReceipt) for r in results)
    ids = [r.provider_ids for r in results if isinstance(r, SendReceipt)]
    assert ids == [tuple(a.part_ids) for a in double.accepted]
    assert [len(i) for i in ids] == [2, 1, 1, 1]


async def test_v1_batch_without_line_breaks_uses_the_default_separator(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    await v1(double, client).send_batch([sms(1), sms(2)])
    form = dict(form_of(double.requests[0]))
    assert "delimiter" not in form
    assert form["phones"] == "b1d9-1:79161234561 hello 1\nb1d9-2:79161234562 hello 2"


def test_push_id_drops_colons() -> None:
    assert push_id_for(sms(idempotency_key="a:b c-1")) == "abc-1"


async def test_v1_batch_groups_by_request_options_and_fails_groups_alone(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    double.fail_next(1, "error", code=1000)  # the first group's request
    batch = [sms(1, originator="ACME"), sms(2), sms(3, originator="ACME"), sms(4)]
    results = await v1(double, client).send_batch(batch)
    assert len(double.requests) == 2
    assert [dict(form_of(r)).get("originator") for r in double.requests] == ["ACME", None]
    assert isinstance(results[0], TransientUpstreamError) and results[0].code == 1000
    assert isinstance(results[2], TransientUpstreamError) and results[2].code == 1000
    assert [a.phone for a in double.accepted] == ["79161234562", "79161234564"]
    assert [r.provider_ids for r in (results[1], results[3]) if isinstance(r, SendReceipt)] == [
        (double.accepted[0].sms_id,), (double.accepted[1].sms_id,)]


async def test_v1_batch_failure_of_its_only_request_is_raised(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    double.fail_next(1, "http500")
    with pytest.raises(TransientUpstreamError) as info:
        await v1(double, client).send_batch([sms(1), sms(2)])
    assert info.value.ambiguous and info.value.code == "http_500"


async def test_v1_batch_phone_error_sends_one_per_request(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    batch = [sms(1), sms(2, phone="12345"), sms(3)]
    results = await v1(double, client).send_batch(batch)
    assert len(double.requests) == 4  # the batch (428, nothing sent), then one each
    assert isinstance(results[1], PermanentUpstreamError) and results[1].code == 428
    assert [a.phone for a in double.accepted] == ["79161234561", "79161234563"]
    assert isinstance(results[0], SendReceipt) and isinstance(results[2], SendReceipt)


async def test_v1_batch_size_follows_the_operators_setting(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    assert v1(double, client, batch_size=1).max_batch == 1
    assert v1(double, client, batch_size=50).max_batch == 50
    assert v1(double, client).max_batch == 200


# --------------------------------------------------------------------------- v1 errors

@pytest.mark.parametrize(("code", "transient"), [
    (1000, True), (415, True), (411, False), (428, False), (436, False), (421, False)])
async def test_v1_error_codes(double: SmsTrafficDouble, client: httpx.AsyncClient,
                              code: int, transient: bool) -> None:
    double.fail_next(1, "error", code=code)
    with pytest.raises(UpstreamError) as info:
        await v1(double, client).send(sms())
    assert isinstance(info.value, TransientUpstreamError) is transient
    assert isinstance(info.value, PermanentUpstreamError) is not transient
    assert info.value.code == code


@pytest.mark.parametrize(("mode", "code", "ambiguous"), [
    ("http500", "http_500", True), ("http429", "http_429", False),
    ("malformed", "malformed", True), ("drop", None, True)])
async def test_v1_http_failures_are_transient(double: SmsTrafficDouble,
                                              client: httpx.AsyncClient, mode: str,
                                              code: str | None, ambiguous: bool) -> None:
    double.fail_next(1, mode)
    with pytest.raises(TransientUpstreamError) as info:
        await v1(double, client).send(sms())
    assert info.value.code == code
    assert info.value.ambiguous is ambiguous


async def test_v1_timeout_is_transient_and_ambiguous(double: SmsTrafficDouble,
                                                     client: httpx.AsyncClient) -> None:
    double.fail_next(1, "delay", seconds=0.8)
    upstream = SmsTrafficV1Upstream(
        "st", config("smstraffic_v1", double.url).model_copy(update={"timeout": 0.3}), client)
    with pytest.raises(TransientUpstreamError) as info:
        await upstream.send(sms())
    assert info.value.ambiguous


# --------------------------------------------------------------------------- statuses

STATUS_TABLE = [  # spec l. 2048
    ("Delivered", "delivered"), ("Non Delivered", "undelivered"), ("Rejected", "rejected"),
    ("Expired", "expired"), ("Deleted", "undelivered"), ("Unknown status", "unknown"),
    ("Buffered SMSC", "sent"), ("", "sent"), ("Clicked", "delivered"),
    ("Checked", "delivered"), ("Read", "delivered"),
]


async def test_v1_poll_statuses_maps_the_table_and_leaves_unknown_ids_out(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    upstream = v1(double, client)
    results = await upstream.send_batch([sms(n) for n in range(len(STATUS_TABLE))])
    ids = [r.provider_ids[0] for r in results if isinstance(r, SendReceipt)]
    for sms_id, (raw, _) in zip(ids, STATUS_TABLE, strict=True):
        double.set_status(sms_id, raw, "3" if raw == "Non Delivered" else "")
    reports = await upstream.poll_statuses([*ids, "82877133031"])
    request = double.requests[-1]
    assert dict(form_of(request)) == {"login": LOGIN, "password": PASSWORD,
                                      "operation": "status",
                                      "sms_id": ",".join([*ids, "82877133031"])}
    assert [(r.provider_id, r.raw_status, r.status) for r in reports] == [
        (i, raw, mapped) for i, (raw, mapped) in zip(ids, STATUS_TABLE, strict=True)]
    assert [r.error_code for r in reports][:2] == [None, 3]
    assert all(r.at for r in reports)


async def test_v1_poll_statuses_single_id_form(double: SmsTrafficDouble,
                                               client: httpx.AsyncClient) -> None:
    upstream = v1(double, client)
    receipt = await upstream.send(sms())
    double.set_status(receipt.provider_ids[0], "Expired")
    [report] = await upstream.poll_statuses(receipt.provider_ids)
    assert (report.status, report.raw_status) == ("expired", "Expired")
    assert await upstream.poll_statuses(["1"]) == []  # single unknown id: left out


def test_v1_status_replies_of_the_spec_parse() -> None:
    """The spec's own examples (l. 1040-1048 and l. 1069-1097), formatting kept."""
    single = b"""<reply>
  <submission_date>2020-05-09 14:11:39</submission_date>
  <send_date>2020-05-09 14:11:39</send_date>
  <last_status_change_date>2020-05-09 14:12:00</last_status_change_date>
  <status>Delivered</status>
  <error></error>
  <sms_id>8287713301</sms_id>
</reply>"""
    several = b"""<?xml version="1.0" ?>
<reply>
  <sms>
    <error></error>
    <sms_id>8287713301</sms_id>
    <status>Expired</status>
  </sms>
  <sms>
    <error>
      no such message or this message does not belong to you
    </error>
    <sms_id>82877133031</sms_id>
  </sms>
</reply>"""
    assert [(r.provider_id, r.status, r.at) for r in parse_v1_statuses(single)[2]] == [
        ("8287713301", "delivered", "2020-05-09 14:12:00")]
    assert [(r.provider_id, r.status) for r in parse_v1_statuses(several)[2]] == [
        ("8287713301", "expired")]


@pytest.mark.parametrize(("mode", "kw", "error"), [
    ("error", {"code": 411}, PermanentUpstreamError), ("error", {"code": 1000},
                                                        TransientUpstreamError),
    ("malformed", {}, TransientUpstreamError), ("http500", {}, TransientUpstreamError)])
async def test_v1_poll_statuses_errors(double: SmsTrafficDouble, client: httpx.AsyncClient,
                                       mode: str, kw: dict[str, Any],
                                       error: type[UpstreamError]) -> None:
    double.fail_next(1, mode, on="status", **kw)
    with pytest.raises(error) as info:
        await v1(double, client).poll_statuses(["1000472891"])
    assert info.value.code == kw.get("code", info.value.code)


async def test_v1_poll_statuses_whole_request_434_means_none_known(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    double.fail_next(1, "error", on="status", code=434)
    assert await v1(double, client).poll_statuses(["5"]) == []
    assert double.requests[-1].form["operation"] == "status"


async def test_v2_poll_statuses_exact_request_and_mapping(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    upstream = v2(double, client)
    first = await upstream.send(sms(1))
    second = await upstream.send(sms(2))
    double.set_status(first.provider_ids[0], "Non Delivered", "3")
    double.set_status(second.provider_ids[0], "Buffered SMSC")
    reports = await upstream.poll_statuses([*first.provider_ids, *second.provider_ids, "9"])
    request = double.requests[-1]
    assert (request.path, request.headers["authorization"], request.headers["content-type"]) \
        == ("/v2/statuses/list", f"Bearer {KEY}", "application/json")
    assert request.json == {"ids": [*first.provider_ids, *second.provider_ids, "9"],
                            "extendedInfo": True}
    assert [(r.status, r.raw_status, r.error_code) for r in reports] == [
        ("undelivered", "Non Delivered", 3), ("sent", "Buffered SMSC", None)]


async def test_v2_poll_statuses_errors(double: SmsTrafficDouble,
                                       client: httpx.AsyncClient) -> None:
    upstream = v2(double, client)
    double.fail_next(1, "error", on="status", code=1000)
    with pytest.raises(TransientUpstreamError):
        await upstream.poll_statuses(["1"])
    double.fail_next(1, "malformed", on="status")
    with pytest.raises(TransientUpstreamError) as info:
        await upstream.poll_statuses(["1"])
    assert info.value.code == "malformed"
    wrong_key = SmsTrafficV2Upstream(
        "st2", config("smstraffic_v2", double.url).model_copy(
            update={"api_key": SecretStr("77/other")}), client)
    with pytest.raises(PermanentUpstreamError) as denied:
        await wrong_key.poll_statuses(["1"])
    assert denied.value.code == "http_403"


# --------------------------------------------------------------------------- v2 retries

def clocks(double: SmsTrafficDouble, upstream: SmsTrafficV2Upstream) -> list[float]:
    """One controllable clock for the double's restrictiveId window and the upstream's."""
    now = [1000.0]
    double.clock = lambda: now[0]
    upstream.clock = lambda: now[0]
    return now


@pytest.mark.parametrize("lost", ["accept_then_drop", "accept_then_500"])
async def test_v2_retry_refused_as_duplicate_recovers_the_provider_id(
    double: SmsTrafficDouble, client: httpx.AsyncClient, lost: str
) -> None:
    """The first send is accepted but its answer lost; the retry (same restrictiveId) gets 105
    (002 l. 163): the id comes from ``/v2/statuses/list`` by ``trackingData`` (l. 160, 314)."""
    upstream = v2(double, client)
    double.fail_next(1, lost)
    with pytest.raises(TransientUpstreamError) as info:
        await upstream.send(sms(1))
    assert info.value.ambiguous
    # The dispatcher counts that failure in maybe_sent.
    receipt = await upstream.send(sms(1, attempt=2, maybe_sent=1))
    [accepted] = double.accepted
    assert receipt.provider_ids == (accepted.sms_id,)
    assert [r.path for r in double.requests] == ["/v2/send", "/v2/send", "/v2/statuses/list"]
    first, second, lookup = (r.json for r in double.requests)
    assert first == second
    assert first["restrictiveId"] == "b1d9-1"
    assert first["destinations"] == [{"to": 79161234561, "trackingData": "b1d9-1"}]
    assert lookup == {"trackingData": ["b1d9-1"]}
    assert accepted.params["trackingData"] == "b1d9-1"


async def test_v2_retry_after_the_restrictive_window_looks_up_and_does_not_resend(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """restrictiveId refuses repeats for an hour only (002 l. 163): a later retry looks the
    message up by trackingData first and, finding it, sends nothing."""
    upstream = v2(double, client)
    now = clocks(double, upstream)
    double.fail_next(1, "accept_then_500")
    with pytest.raises(TransientUpstreamError):
        await upstream.send(sms(1))
    now[0] += 3601  # the double would now accept the same restrictiveId again
    receipt = await upstream.send(sms(1, attempt=2, maybe_sent=1))
    [accepted] = double.accepted
    assert receipt.provider_ids == (accepted.sms_id,)
    assert [r.path for r in double.requests] == ["/v2/send", "/v2/statuses/list"]


async def test_v2_retry_after_the_window_sends_when_the_lookup_finds_nothing(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    upstream = v2(double, client)
    now = clocks(double, upstream)
    double.fail_next(1, "drop")  # closed before processing: nothing was sent
    with pytest.raises(TransientUpstreamError) as info:
        await upstream.send(sms(1))
    assert info.value.ambiguous  # which the bridge cannot know
    now[0] += 3601
    receipt = await upstream.send(sms(1, attempt=2, maybe_sent=1))
    [accepted] = double.accepted
    assert receipt.provider_ids == (accepted.sms_id,)
    assert [r.path for r in double.requests] == ["/v2/send", "/v2/statuses/list", "/v2/send"]


async def test_v2_retry_by_a_process_that_did_not_see_the_first_attempt_looks_up_first(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """After a restart (or on another instance) the time of the first attempt is unknown: it
    may be more than an hour ago, so the retry looks up before sending."""
    double.fail_next(1, "accept_then_500")
    with pytest.raises(TransientUpstreamError):
        await v2(double, client).send(sms(1))
    receipt = await v2(double, client).send(sms(1, attempt=3, maybe_sent=1))
    [accepted] = double.accepted
    assert receipt.provider_ids == (accepted.sms_id,)
    assert [r.path for r in double.requests] == ["/v2/send", "/v2/statuses/list"]


@pytest.mark.parametrize(("mode", "kw"), [("http429", {"retry_after": 0}), ("drop", {}),
                                        ("error", {"code": 1000})])
async def test_v2_retry_after_a_failure_that_sent_nothing_does_not_look_up(
    double: SmsTrafficDouble, client: httpx.AsyncClient, mode: str, kw: dict[str, Any]
) -> None:
    """A 429, a connection closed before the answer, an error answer: the retry sends at
    once (within the hour restrictiveId still guards it) without a lookup first."""
    upstream = v2(double, client)
    double.fail_next(1, mode, **kw)
    with pytest.raises(TransientUpstreamError) as info:
        await upstream.send(sms(1))
    # The dispatcher counts the dropped connection in maybe_sent (it may have been taken).
    receipt = await upstream.send(sms(1, attempt=2, maybe_sent=int(info.value.ambiguous)))
    [accepted] = double.accepted
    assert receipt.provider_ids == (accepted.sms_id,)
    assert [r.path for r in double.requests] == ["/v2/send", "/v2/send"]


async def test_v2_duplicate_refusal_with_a_failed_lookup_never_sends_again(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """105, then the lookup fails (HTTP 500): the attempt fails for now; the next one only
    looks up — the provider already holds the SMS."""
    upstream = v2(double, client)
    double.fail_next(1, "accept_then_500")
    with pytest.raises(TransientUpstreamError):
        await upstream.send(sms(1))
    double.fail_next(1, "http500", on="status")
    with pytest.raises(TransientUpstreamError) as info:
        await upstream.send(sms(1, attempt=2, maybe_sent=1))
    assert not info.value.ambiguous and "earlier attempt" in info.value.text
    # This request's 105 took nothing new: the doubt of the first one remains.
    receipt = await upstream.send(sms(1, attempt=3, maybe_sent=1))
    [accepted] = double.accepted
    assert receipt.provider_ids == (accepted.sms_id,)
    assert [r.path for r in double.requests] == [
        "/v2/send", "/v2/send", "/v2/statuses/list", "/v2/statuses/list"]


async def test_v2_duplicate_refusal_without_a_listed_message_is_still_sent(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """105 on a retry proves an earlier attempt was accepted: never resend, even if the
    lookup does not list it (yet): sent, without an id."""
    upstream = v2(double, client)
    double.fail_next(1, "http500")
    with pytest.raises(TransientUpstreamError):
        await upstream.send(sms(1))
    double.fail_next(1, "error", code=105, text="Duplicated request")
    receipt = await upstream.send(sms(1, attempt=2, maybe_sent=1))
    assert receipt.provider_ids == ()
    assert double.accepted == []
    assert [r.path for r in double.requests] == ["/v2/send", "/v2/send", "/v2/statuses/list"]


async def test_v2_doubt_follows_maybe_sent_not_the_attempt_number(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """A first attempt re-claimed after a crash (attempt 1, an intent without an outcome)
    looks up and finds what its killed predecessor sent; a third attempt after failures that
    surely sent nothing (maybe_sent 0) cannot be answered 105 for an earlier acceptance, so a
    105 then is the error it says, and the SMS is not recorded as sent."""
    await v2(double, client).send(sms(1))  # the request of the process that was killed
    receipt = await v2(double, client).send(sms(1, attempt=1, maybe_sent=1))
    assert receipt.provider_ids == (double.accepted[0].sms_id,)
    assert [r.path for r in double.requests] == ["/v2/send", "/v2/statuses/list"]
    double.fail_next(1, "error", code=105, text="Invalid request format")
    with pytest.raises(PermanentUpstreamError) as info:
        await v2(double, client).send(sms(2, attempt=3))
    assert info.value.code == 105
    assert [r.path for r in double.requests][2:] == ["/v2/send"]
    assert len(double.accepted) == 1


# --------------------------------------------------------------------------- inbound

async def test_v1_poll_inbound_request_cursor_and_overlap(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    upstream = v1(double, client)
    assert isinstance(upstream, InboundPolling)
    now = datetime.now(MSK).replace(microsecond=0)
    double.add_incoming("79031234567", "too old", sms_id="1", delivery_date=now - timedelta(3))
    double.add_incoming("79031234567", "first", sms_id="2", delivery_date=now - timedelta(hours=1))
    double.add_incoming("+79037654321", "second", sms_id="3", delivery_date=now)
    messages, cursor = await upstream.poll_inbound(None)
    form = dict(form_of(double.requests[-1]))
    assert form.keys() == {"login", "password", "operation", "from_date", "want_sms_ids",
                           "count"}
    assert (form["operation"], form["want_sms_ids"]) == ("incoming", "1")
    since = datetime.strptime(form["from_date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=MSK)
    assert abs(since - (now - timedelta(days=2))) < timedelta(seconds=5)
    assert [(m.sms_id, m.phone, m.text, m.source, m.kind, m.charset) for m in messages] == [
        ("2", "79031234567", "first", "st", "mo", "utf-8"),
        ("3", "79037654321", "second", "st", "mo", "utf-8")]
    assert json.loads(messages[0].raw)["from_phone"] == "79031234567"
    assert cursor is not None
    # The next poll starts INBOUND_OVERLAP before the newest date seen; "3" is listed again
    # but not handed out again, and the cursor holds.
    again, same = await upstream.poll_inbound(cursor)
    assert dict(form_of(double.requests[-1]))["from_date"] == (
        now - INBOUND_OVERLAP).strftime("%Y-%m-%d %H:%M:%S")
    assert again == [] and same == cursor
    double.add_incoming("79031234567", "third", sms_id="4", delivery_date=now + timedelta(1 / 24))
    newer, moved = await upstream.poll_inbound(cursor)
    assert [m.sms_id for m in newer] == ["4"]
    assert dict(form_of(double.requests[-1]))["from_date"] == (
        now - INBOUND_OVERLAP).strftime("%Y-%m-%d %H:%M:%S")
    _, after = await upstream.poll_inbound(moved)
    assert dict(form_of(double.requests[-1]))["from_date"] == (
        now + timedelta(hours=1) - INBOUND_OVERLAP).strftime("%Y-%m-%d %H:%M:%S")
    # The ids kept are those of the overlap before the newest date: "3" aged out.
    assert InboundCursor.load(after).seen.keys() == {"4"}


async def test_v1_poll_inbound_reads_a_cursor_of_the_earlier_format(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    now = datetime.now(MSK).replace(microsecond=0)
    double.add_incoming("79031234567", "first", sms_id="2", delivery_date=now)
    messages, _ = await v1(double, client).poll_inbound(now.strftime("%Y-%m-%d %H:%M:%S"))
    assert [m.sms_id for m in messages] == ["2"]
    assert dict(form_of(double.requests[-1]))["from_date"] == (
        now - INBOUND_OVERLAP).strftime("%Y-%m-%d %H:%M:%S")


async def test_v1_poll_inbound_pages_through_a_backlog(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """A full page (``count``) is followed by one from its last date; nothing is handed out
    twice although the pages overlap in that second."""
    upstream = v1(double, client)
    upstream.inbound_page = 4  # type: ignore[misc]
    start = datetime.now(MSK).replace(microsecond=0) - timedelta(hours=1)
    for n in range(10):
        double.add_incoming("79031234567", f"m{n}", sms_id=str(n),
                            delivery_date=start + timedelta(seconds=n // 2))
    messages, cursor = await upstream.poll_inbound(None)
    assert [m.sms_id for m in messages] == [str(n) for n in range(10)]
    assert len(double.requests) >= 3
    again, _ = await upstream.poll_inbound(cursor)
    assert again == []


async def test_v1_poll_inbound_fetches_a_message_listed_30_minutes_late_once(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """A message dated ~28 min back that the provider lists only after a poll moved past
    it is fetched by the next poll, and handed out once however often it is listed again."""
    upstream = v1(double, client)
    now = datetime.now(MSK).replace(microsecond=0)
    double.add_incoming("79031234567", "on time", sms_id="1", delivery_date=now)
    messages, cursor = await upstream.poll_inbound(None)
    assert [m.sms_id for m in messages] == ["1"]
    double.add_incoming("79035550000", "late", sms_id="2",
                        delivery_date=now - timedelta(minutes=28))
    handed_out: list[str] = []
    for _ in range(4):
        messages, cursor = await upstream.poll_inbound(cursor)
        handed_out.extend(m.sms_id or "" for m in messages)
    assert handed_out == ["2"]
    assert cursor is not None


async def test_v1_poll_inbound_errors(double: SmsTrafficDouble,
                                      client: httpx.AsyncClient) -> None:
    upstream = v1(double, client)
    double.fail_next(1, "error", on="incoming", code=411)
    with pytest.raises(PermanentUpstreamError):
        await upstream.poll_inbound(None)
    double.fail_next(1, "malformed", on="incoming")
    with pytest.raises(TransientUpstreamError):
        await upstream.poll_inbound("2020-05-09 06:02:18")


# --------------------------------------------------------------------------- SOAP

async def test_soap_send_exact_request(double: SmsTrafficDouble,
                                       client: httpx.AsyncClient) -> None:
    receipt = await soap(double, client).send(
        sms(text="Привет " * 20, encoding="ucs2", originator="ACME", validity=600))
    [request] = double.requests
    assert (request.path, request.headers["content-type"]) == (
        "/soap.php", "application/soap+xml; charset=utf-8")
    operation = soap_body(request)
    assert operation.tag == tag("BulkSms")
    assert [child.tag for child in operation] == [tag("Options"), tag("Message"), tag("Phone")]
    options = operation.find(tag("Options"))
    assert options is not None
    assert [(o.tag.split("}")[1], o.text) for o in options] == [
        ("Login", LOGIN), ("Password", PASSWORD), ("Originator", "ACME"),
        ("WantSmsIds", "true"), ("LatinEncoding", "false"), ("Timeout", "600"),
        ("MaxParts", "255")]
    [accepted] = double.accepted
    assert (accepted.api, accepted.phone, accepted.message) == (
        "soap", "79161234561", "Привет " * 20)
    assert len(accepted.part_ids) == 3  # 140 characters of UCS-2: 67 + 67 + 6
    assert receipt.provider_ids == tuple(accepted.part_ids)


async def test_soap_gsm7_text_goes_latin_and_service_url_is_accepted(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    upstream = soap(double, client, url=f"{double.url}/soap.php")
    await upstream.send(sms(text="a" * 160))
    options = soap_body(double.requests[0]).find(tag("Options"))
    assert options is not None and options.findtext(tag("LatinEncoding")) == "true"
    assert len(double.accepted[0].part_ids) == 1


@pytest.mark.parametrize(("mode", "kw", "error", "code", "ambiguous"), [
    ("fault", {"code": "Sender", "text": "bad"}, PermanentUpstreamError, "soap:Sender", False),
    ("fault", {"code": "Receiver"}, TransientUpstreamError, "soap:Receiver", True),
    ("error", {"code": 411}, PermanentUpstreamError, 411, False),
    ("error", {"code": 1000}, TransientUpstreamError, 1000, False),
    ("malformed", {}, TransientUpstreamError, "malformed", True),
    ("http500", {}, TransientUpstreamError, "http_500", True),
    ("http429", {}, TransientUpstreamError, "http_429", False),
])
async def test_soap_send_errors(double: SmsTrafficDouble, client: httpx.AsyncClient, mode: str,
                                kw: dict[str, Any], error: type[UpstreamError], code: Any,
                                ambiguous: bool) -> None:
    double.fail_next(1, mode, **kw)
    with pytest.raises(error) as info:
        await soap(double, client).send(sms())
    assert info.value.code == code
    assert info.value.ambiguous is ambiguous


async def test_soap_real_auth_phone_and_unroutable_errors(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    with pytest.raises(PermanentUpstreamError) as bad_phone:
        await soap(double, client).send(sms(phone="123"))
    assert bad_phone.value.code == 428
    double.unroutable.add("79161234561")
    with pytest.raises(PermanentUpstreamError) as unroutable:
        await soap(double, client).send(sms())
    assert unroutable.value.code == "Unroutable"
    wrong = SmsTrafficSoapUpstream("soap", config("smstraffic_soap", double.url).model_copy(
        update={"password": SecretStr("nope")}), client)
    with pytest.raises(PermanentUpstreamError) as denied:
        await wrong.poll_statuses(["1"])
    assert denied.value.code == 411
    assert double.accepted == []


async def test_soap_poll_statuses(double: SmsTrafficDouble, client: httpx.AsyncClient) -> None:
    upstream = soap(double, client)
    receipt = await upstream.send(sms())
    double.set_status(receipt.provider_ids[0], "Rejected", "11")
    reports = await upstream.poll_statuses([*receipt.provider_ids, "1"])
    operation = soap_body(double.requests[-1])
    assert operation.tag == tag("StatusRequest")
    assert [(c.tag.split("}")[1], c.text) for c in operation] == [
        ("Login", LOGIN), ("Password", PASSWORD), ("SmsId", receipt.provider_ids[0]),
        ("SmsId", "1")]
    assert [(r.provider_id, r.status, r.raw_status, r.error_code) for r in reports] == [
        (receipt.provider_ids[0], "rejected", "Rejected", 11)]
    double.fail_next(1, "fault", on="status", code="Receiver")
    with pytest.raises(TransientUpstreamError) as info:
        await upstream.poll_statuses(receipt.provider_ids)
    assert info.value.code == "soap:Receiver" and not info.value.ambiguous


def test_soap_replies_of_the_spec_parse() -> None:
    """The examples write ``<IsSuccess>>true</IsSuccess>`` (l. 1619, 1709)."""
    head = (f'<?xml version="1.0" encoding="UTF-8"?>\n<env:Envelope xmlns:env="{SOAP12}"\n'
            f'xmlns="{SERVICE_NS}">\n  <env:Body>\n')
    tail = "  </env:Body>\n</env:Envelope>\n"
    status = ("<Status>\n<IsSuccess>>true</IsSuccess>\n<Code>0</Code>\n"
              "<Description>queued 3 messages</Description>\n</Status>\n")
    sent = (head + "<SmsResponse>" + status + "</SmsResponse>" + tail).encode()
    assert parse_send_response(sent) == (0, "queued 3 messages", [])
    statuses = (head + "<StatusResponse>" + status + """
      <SmsInfo>
        <SmsId>27374567618</SmsId>
        <Error></Error>
        <SubmissionDate>2020-05-09T15:19:00</SubmissionDate>
        <LastStatusChangeDate>2020-05-09T15:19:00</LastStatusChangeDate>
        <Status>Expired</Status>
      </SmsInfo>
      <SmsInfo>
        <SmsId>1</SmsId>
        <Error>no such message or this message does not belong to you</Error>
      </SmsInfo>
    </StatusResponse>""" + tail).encode()
    _, _, reports = parse_status_response(statuses)
    assert [(r.provider_id, r.status, r.at) for r in reports] == [
        ("27374567618", "expired", "2020-05-09T15:19:00")]


# --------------------------------------------------------------------------- end to end

def mail_text(message: Message) -> str:
    """Subject and every decoded text part of a forwarded mail."""
    parts = [str(message["Subject"] or "")]
    for part in message.walk():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            parts.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
    return "\n".join(parts)


def delivery(bridge: Bridge) -> list[tuple[str | None, str | None]]:
    path = bridge.settings.store.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT delivery_status, delivery_detail FROM messages ORDER BY id")
        return [(row[0], row[1]) for row in rows]


async def wait_delivery(bridge: Bridge, status: str, timeout: float = 8.0) -> None:
    async with asyncio.timeout(timeout):
        # The status is written by the status poller's task; no event marks that commit.
        while [s for s, _ in delivery(bridge)] != [status]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind", ["smstraffic_v1", "smstraffic_v2", "smstraffic_soap"])
async def test_end_to_end_status_delivered_by_polling(
    bridge_factory: BridgeFactory, double: SmsTrafficDouble, kind: str
) -> None:
    credentials = ({"api_key": KEY} if kind == "smstraffic_v2"
                   else {"login": LOGIN, "password": PASSWORD})
    bridge = await bridge_factory(
        upstreams={"p": {"kind": kind, "base_url": double.url, **credentials,
                         "status_poll_interval": 0.2}},
        accounts={"alerts": {"password": "pw", "upstream": "p"}},
    )
    code, reply = await send(bridge.smtp_port, mail("79161234567.alerts@x", "", "text"))
    assert code == 250, reply
    [accepted] = await double.wait_for_accepted(1)
    double.set_status(accepted.sms_id, "Buffered SMSC")
    send_request = double.requests[0]
    if kind == "smstraffic_v1":
        assert send_request.form["phones"] == "79161234567"
        assert send_request.form["message"] == "text"
        assert send_request.headers["content-type"] == FORM
    elif kind == "smstraffic_v2":
        assert send_request.path == "/v2/send"
        assert send_request.json["destinations"] == [
            {"to": 79161234567, "trackingData": send_request.json["restrictiveId"]}]
    else:
        assert send_request.path == "/soap.php"
        assert b"79161234567" in send_request.raw_body
    await wait_delivery(bridge, "sent")
    double.set_status(accepted.sms_id, "Delivered")
    await wait_delivery(bridge, "delivered")
    [(_, detail)] = delivery(bridge)
    assert detail == f"Delivered ({accepted.sms_id})"
    polls = [r for r in double.requests
             if r.form.get("operation") == "status" or r.path == "/v2/statuses/list"
             or (r.path == "/soap.php" and r is not send_request)]
    assert len(polls) >= 2


async def test_end_to_end_inbound_polled_mailed_once_across_restart(
    bridge_factory: BridgeFactory, double: SmsTrafficDouble
) -> None:
    async with MailboxDouble() as box:
        settings: dict[str, Any] = {
            "upstreams": {"p": {"kind": "smstraffic_v1", "base_url": double.url,
                                "login": LOGIN, "password": PASSWORD,
                                "inbound_poll_interval": 0.2}},
            "accounts": {"alerts": {"password": "pw", "upstream": "p"}},
            "inbound": {"routes": [{"emails": ["desk@example.com"]}]},
            "mail": {"smarthost": "127.0.0.1", "smarthost_port": box.port},
        }
        now = datetime.now(MSK)
        double.add_incoming("79031234567", "inbound-one", delivery_date=now - timedelta(seconds=30))
        double.add_incoming("79037654321", "inbound-two", delivery_date=now)
        bridge = await bridge_factory(**settings)
        await box.wait_for(2)
        await bridge.stop()
        # Listed again by the provider for the date range, and new ones, one of them
        # listed 28 minutes late: dated well before the newest date seen.
        double.add_incoming("79031234567", "inbound-three", delivery_date=now + timedelta(1e-5))
        double.add_incoming("79035550000", "inbound-late",
                            delivery_date=now - timedelta(minutes=28))
        polls = len([r for r in double.requests if r.form.get("operation") == "incoming"])
        await bridge_factory(**settings)
        await box.wait_for(4)
        # Two more polls by the new bridge: any repeat would have been forwarded by now.
        await double.wait_for_requests(len(double.requests) + 2)
        await box.wait_for(4)
        assert len([r for r in double.requests if r.form.get("operation") == "incoming"]) > polls
        texts = [mail_text(m.message) for m in box.mails]
        for text in ("inbound-one", "inbound-two", "inbound-three", "inbound-late"):
            assert sum(text in content for content in texts) == 1, (text, texts)
        assert len(box.mails) == 4
        store = bridge.settings.store.url.removeprefix("sqlite:///")
        with sqlite3.connect(store) as conn:
            assert sorted(r[0] for r in conn.execute("SELECT sms_id FROM inbound")) == sorted(
                m.sms_id for m in double.incoming)
        assert all(m.rcpt_tos == ["desk@example.com"] for m in box.mails)

"""SMS Traffic against the examples of its spec (002_e7d2ff51d5c777f0.txt), table-driven:
each canned answer in testdata/ → the receipt, reports or error the bridge makes of it; each
canned request → the same fields as the bridge writes them. Line numbers are the spec's."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
import httpx
import pytest
from pydantic import SecretStr

from bridge.errors import PermanentUpstreamError, UpstreamError
from bridge.models import DeliveryReport
from bridge.upstreams.base import HttpUpstream, OutboundSms, SendReceipt
from bridge.upstreams.smstraffic.settings import (
    SmsTrafficSoapSettings,
    SmsTrafficV1Settings,
    SmsTrafficV2Settings,
)
from bridge.upstreams.smstraffic.soap import SmsTrafficSoapUpstream
from bridge.upstreams.smstraffic.v1 import RUS_CHARSET, SmsTrafficV1Upstream
from bridge.upstreams.smstraffic.v2 import SmsTrafficV2Upstream
from tests.sms import outbound_sms
from tests.upstreams.canned import Canned, payload

URL = "http://smstraffic.test"


def data(name: str) -> bytes:
    return payload("smstraffic", name)


def sms(phone: str = "78001234567", text: str = "test", *, key: str = "k1",
        maybe_sent: int = 0) -> OutboundSms:
    return outbound_sms(message_id=1, idempotency_key=key, attempt=1 + maybe_sent, phone=phone,
                       text=text, encoding="gsm7", maybe_sent=maybe_sent)


def make(kind: str, client: httpx.AsyncClient, login: str = "mylogin",
         password: str = "mypassword") -> HttpUpstream:
    if kind == "v1":
        return SmsTrafficV1Upstream("st", SmsTrafficV1Settings(
            base_url=URL, login=login, password=SecretStr(password)), client)
    if kind == "v2":
        return SmsTrafficV2Upstream("st", SmsTrafficV2Settings(
            base_url=URL, api_key=SecretStr("1837/key")), client)
    return SmsTrafficSoapUpstream("st", SmsTrafficSoapSettings(
        base_url=URL, login=login, password=SecretStr(password)), client)


Call = Callable[[Any], Awaitable[Any]]

ANSWERS: list[tuple[str, str, str, Call, object]] = [
    # (interface, testdata, where in 002, the call, what the bridge makes of the answer)
    ("v1", "v1_send_ok.xml", "l. 857-867", lambda u: u.send(sms()), SendReceipt(())),
    ("v1", "v1_send_sms_ids.xml", "l. 925-948", lambda u: u.send(sms()),
     SendReceipt(("1000472891", "1000472892"))),
    ("v1", "v1_send_error_401.xml", "l. 899-909", lambda u: u.send(sms()),
     PermanentUpstreamError("login param is missing", 401)),
    ("v1", "v1_send_push_ids.xml", "l. 967-996",
     lambda u: u.send_batch([sms("79051112233", key="a"), sms("79261112233", key="b")]),
     [SendReceipt(("8287366071", "8287366073")), SendReceipt(("8287366075",))]),
    ("v1", "v1_status_one.xml", "l. 1036-1048", lambda u: u.poll_statuses(["8287713301"]),
     [DeliveryReport("8287713301", "delivered", "Delivered", None, "2020-05-09 14:12:00")]),
    ("v1", "v1_status_many.xml", "l. 1064-1087",
     lambda u: u.poll_statuses(["8287713301", "8287713303"]),
     [DeliveryReport("8287713301", "expired", "Expired", None, "2020-05-09 14:12:00"),
      DeliveryReport("8287713303", "delivered", "Delivered", None, "2020-05-09 14:12:00")]),
    # l. 1089-1098 continue that reply with an id the provider does not know: left out
    ("v1", "v1_status_unknown_id.xml", "l. 1064-1098",
     lambda u: u.poll_statuses(["8287713301", "8287713303", "82877133031"]),
     [DeliveryReport("8287713301", "expired", "Expired", None, "2020-05-09 14:12:00"),
      DeliveryReport("8287713303", "delivered", "Delivered", None, "2020-05-09 14:12:00")]),
    ("v1", "v1_account.xml", "l. 1232-1240", lambda u: u.balance(), Decimal("10025")),
    ("v2", "v2_send.json", "l. 261-289", lambda u: u.send(sms()),
     PermanentUpstreamError("blocked phone: 78000000002. No messages has been sent", 432)),
    ("v2", "v2_error_105_format.json", "l. 414-425", lambda u: u.send(sms()),
     PermanentUpstreamError("Invalid request format", 105)),
    ("v2", "v2_statuses.json", "l. 371-410",
     lambda u: u.poll_statuses(["1046379029789147161", "1046379029789147162"]),
     [DeliveryReport("1046379029789147161", "delivered", "Delivered", None,
                     "2025-11-27T13:56:42.341+03:00"),
      DeliveryReport("1046379029789147162", "undelivered", "Non Delivered", 3,
                     "2025-11-27T13:59:42.341+03:00")]),
    ("v2", "v2_account.json", "l. 609-619", lambda u: u.balance(), Decimal("12520.35")),
    ("soap", "soap_send_response.xml", "l. 1612-1626", lambda u: u.send(sms()),
     SendReceipt(())),
    ("soap", "soap_status_response.xml", "l. 1702-1728",
     lambda u: u.poll_statuses(["27374567618", "1"]),
     [DeliveryReport("27374567618", "expired", "Expired", None, "2020-05-09T15:19:00")]),
]


@pytest.mark.parametrize(("kind", "name", "where", "call", "expected"), ANSWERS,
                         ids=[row[1] for row in ANSWERS])
async def test_answer(kind: str, name: str, where: str, call: Call, expected: object) -> None:
    canned = Canned(data(name), content_type="application/json" if name.endswith(".json")
                    else "text/xml")
    async with canned.client() as client:
        upstream = make(kind, client)
        if isinstance(expected, UpstreamError):
            with pytest.raises(type(expected)) as caught:
                await call(upstream)
            assert caught.value.code == expected.code, where
            assert expected.text in caught.value.text, where
        else:
            assert await call(upstream) == expected, where


async def test_a_duplicate_answer_to_a_resend_takes_the_earlier_copys_id() -> None:
    """A send whose answer was lost (HTTP 500), then l. 293-304 (105 "Duplicated request")
    to its resend within the hour, then the lookup by trackingData answered with the item of
    l. 371-410 that carries it: the message was accepted before; its id is taken."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/send":
            if len(canned.requests) == 1:
                return httpx.Response(500)
            return httpx.Response(200, content=data("v2_error_105_duplicate.json"))
        asked = json.loads(request.content)["trackingData"]
        reply = json.loads(data("v2_statuses.json"))
        reply["data"] = [item for item in reply["data"] if item.get("trackingData") in asked]
        return httpx.Response(200, json=reply)

    canned = Canned(answer=answer)
    key = "108c3492-98ef-44b4-ab17-ee20c864584a"
    async with canned.client() as client:
        upstream = make("v2", client)
        with pytest.raises(UpstreamError):
            await upstream.send(sms(key=key))
        receipt = await upstream.send(sms(key=key, maybe_sent=1))
    assert receipt == SendReceipt(("1046379029789147161",))
    assert [r.url.path for r in canned.requests] == ["/v2/send", "/v2/send",
                                                     "/v2/statuses/list"]


def elements(body: bytes) -> list[tuple[str, str]]:
    """(local name, text) of every element inside the SOAP Body, in document order."""
    root: Element = SafeET.fromstring(body)
    soap_body = next(e for e in root if e.tag.endswith("}Body"))
    return [(e.tag.rsplit("}", 1)[-1], (e.text or "").strip()) for e in soap_body.iter()
            if e is not soap_body]


async def test_v1_send_request_carries_the_examples_fields() -> None:
    """l. 847-853: ``login``, ``password``, ``phones``, ``message`` (the example's message is
    "test тест" in windows-1251; the bridge declares its charset by ``rus``)."""
    example = dict(parse_qsl(data("v1_send_request.form").decode().strip(), encoding="cp1251"))
    canned = Canned(data("v1_send_ok.xml"))
    async with canned.client() as client:
        await make("v1", client).send(sms(example["phones"], example["message"]))
    form = canned.requests[0].content.decode("ascii")
    sent = dict(parse_qsl(form, encoding=RUS_CHARSET[dict(parse_qsl(form))["rus"]]))
    assert {key: sent[key] for key in example} == example


async def test_soap_requests_are_the_examples() -> None:
    """l. 1591-1608 (BulkSms: the example's Options, Message and Phone) and l. 1685-1698
    (StatusRequest, element for element)."""
    async with Canned().client() as client:
        upstream = make("soap", client, login="example", password="p@ssw0rd!")
        assert isinstance(upstream, SmsTrafficSoapUpstream)
        sent = elements(upstream.send_envelope(sms("78003336655", "hello world")))
        status = elements(upstream.status_envelope(["27371658818", "1"]))
    example = elements(data("soap_send_request.xml"))
    wanted = [item for item in example if item[0] != "Phone"] + [("Phone", "78003336655")]
    assert all(item in sent for item in wanted)
    assert status == elements(data("soap_status_request.xml"))


def test_the_json_examples_are_json() -> None:
    for name in ("v2_send.json", "v2_statuses.json", "v2_account.json",
                 "v2_error_105_duplicate.json", "v2_error_105_format.json"):
        json.loads(data(name))

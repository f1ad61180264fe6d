"""Devino SOAP against the examples of its spec (001_600c633d74a81c97.txt), table-driven.

The spec's examples are the service's templates (an ASMX help page): each value is its type's
name (``string``, ``int``, ``dateTime``, ``decimal``, ``boolean``). They are kept verbatim in
testdata/; the table fills the placeholders, in document order, with values of those types.
Each answer → the receipt, reports, messages or error the bridge makes of it; each request →
the elements of the template, in its order. Line numbers are the spec's."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
import httpx
import pytest
from pydantic import SecretStr

from bridge.errors import PermanentUpstreamError, UpstreamError
from bridge.models import DeliveryReport
from bridge.upstreams.base import OutboundSms, SendReceipt
from bridge.upstreams.devino.settings import DevinoSoapSettings
from bridge.upstreams.devino.soap import DevinoSoapUpstream
from tests.sms import outbound_sms
from tests.upstreams.canned import Canned, payload

PLACEHOLDER = re.compile(rb">(string|int|dateTime|decimal|boolean)<")
SESSION = "e9c5b3d4-5a1f-4d2b-9c1a-1f2e3d4c5b6a"


def data(name: str) -> bytes:
    return payload("devino_soap", name)


def fill(name: str, *values: str) -> bytes:
    """The template ``name`` with its placeholders replaced by ``values`` in order."""
    supply = iter(values)
    body = PLACEHOLDER.sub(lambda _: b">" + next(supply).encode() + b"<", data(name))
    assert next(supply, None) is None, "more values than placeholders"
    return body


def sms(phone: str = "79161234567", text: str = "hello", *,
        validity: int | None = None) -> OutboundSms:
    return outbound_sms(message_id=1, idempotency_key="k", attempt=1, phone=phone, text=text,
                       encoding="gsm7", originator="Alerts", validity=validity)


def canned(answer: bytes, *, session: bytes | None = None) -> Canned:
    def reply(request: httpx.Request) -> httpx.Response:
        if b"<GetSessionID " in request.content:
            body = session if session is not None else fill("get_session_id_response.xml",
                                                            SESSION)
        else:
            body = answer
        status = 500 if b"Fault" in body else 200
        return httpx.Response(status, content=body,
                              headers={"Content-Type": "application/soap+xml; charset=utf-8"})

    return Canned(answer=reply)


def make(client: httpx.AsyncClient) -> DevinoSoapUpstream:
    return DevinoSoapUpstream("dv", DevinoSoapSettings(
        base_url="http://devino.test", login="acme", password=SecretStr("s3cret")), client)


Call = Callable[[DevinoSoapUpstream], Awaitable[Any]]


async def inbound(upstream: DevinoSoapUpstream) -> list[tuple[str, str, str | None]]:
    messages, _ = await upstream.poll_inbound(None)
    return [(m.phone, m.text, m.recipient) for m in messages]


ANSWERS: list[tuple[str, Sequence[str], str, Call, object]] = [
    # (testdata, its placeholders' values, where in 001, the call, what the bridge makes)
    ("send_message_response.xml", ("6098210000001", "6098210000002"), "l. 259-281",
     lambda u: u.send(sms(text="x" * 200)), SendReceipt(("6098210000001", "6098210000002"))),
    ("send_message_response.xml", ("6098210000001", "6098210000002"), "l. 259-281",
     lambda u: u.send_batch([sms("79161234567"), sms("79161234568")]),
     [SendReceipt(("6098210000001",)), SendReceipt(("6098210000002",))]),
    ("get_message_state_response.xml",
     ("0", "2012-01-18T23:59:00", "2012-01-18T23:59:01", "2012-01-18T23:59:30", "Delivered",
      "0.45"), "l. 380-401", lambda u: u.poll_statuses(["6098210000001"]),
     [DeliveryReport("6098210000001", "delivered", "0 Delivered", None,
                     "2012-01-18T23:59:30")]),
    ("get_message_state_response.xml",
     ("46", "2012-01-18T23:59:00", "2012-01-18T23:59:01", "2012-01-20T23:59:00", "Expired",
      "0.45"), "l. 380-401", lambda u: u.poll_statuses(["6098210000001"]),
     [DeliveryReport("6098210000001", "expired", "46 Expired", 46, "2012-01-20T23:59:00")]),
    ("get_incoming_messages_response.xml",
     ("stop", "79161234567", "4242", "2012-01-18T23:59:00",
      "start", "79161234568", "4242", "2012-01-18T23:59:05"), "l. 519-551", inbound,
     [("79161234567", "stop", "4242"), ("79161234568", "start", "4242")]),
    ("get_balance_response.xml", ("1534.20",), "l. 122-136", lambda u: u.balance(),
     Decimal("1534.20")),
    # l. 36-48: the fault fragment in its envelope; an answer to a call with a session
    ("fault_login.xml", (), "l. 36-48", lambda u: u.send(sms()),
     PermanentUpstreamError("Invalid user login or password", "Receiver")),
]


@pytest.mark.parametrize(("name", "values", "where", "call", "expected"), ANSWERS,
                         ids=[f"{row[0]}-{i}" for i, row in enumerate(ANSWERS)])
async def test_answer(name: str, values: Sequence[str], where: str, call: Call,
                      expected: object) -> None:
    async with canned(fill(name, *values)).client() as client:
        upstream = make(client)
        if isinstance(expected, UpstreamError):
            with pytest.raises(type(expected)) as caught:
                await call(upstream)
            assert caught.value.code == expected.code, where
            assert expected.text in caught.value.text, where
        else:
            assert await call(upstream) == expected, where


async def test_a_refused_login_is_permanent() -> None:
    """l. 36-48 in answer to ``GetSessionID`` (l. 50)."""
    answers = canned(b"", session=data("fault_login.xml"))
    with pytest.raises(PermanentUpstreamError) as caught:
        async with answers.client() as client:
            await make(client).send(sms())
    assert "Invalid user login or password" in caught.value.text


def tags(body: bytes) -> list[str]:
    """The local names of the elements inside the SOAP Body, in document order."""
    root: Element = SafeET.fromstring(body)
    soap_body = next(e for e in root if e.tag.endswith("}Body"))
    return [e.tag.rsplit("}", 1)[-1] for e in soap_body.iter() if e is not soap_body]


async def test_requests_have_the_templates_elements() -> None:
    """``GetSessionID`` (l. 58-69), ``SendMessage`` (l. 218-244; ``DelayUntilUtc`` is not
    sent: the bridge holds a scheduled message itself), ``GetMessageState`` (l. 358-370),
    ``GetIncomingMessages`` (l. 495-508): the element names the service binds, in order."""
    answers = canned(fill("send_message_response.xml", "1", "2"))
    async with answers.client() as client:
        upstream = make(client)
        await upstream.send_batch([sms("79161234567", validity=600),
                                   sms("79161234568", validity=600)])
    login, send = (request.content for request in answers.requests)
    assert tags(login) == tags(data("get_session_id_request.xml"))
    assert tags(send) == [tag for tag in tags(data("send_message_request.xml"))
                          if tag != "DelayUntilUtc"]
    for method, name in (("GetMessageState", "get_message_state_request.xml"),
                         ("GetIncomingMessages", "get_incoming_messages_request.xml")):
        answers = canned(b"")
        async with answers.client() as client:
            upstream = make(client)
            with pytest.raises(UpstreamError):  # the empty answer: only the request counts
                await (upstream.message_state("1") if method == "GetMessageState"
                       else upstream.poll_inbound(None))
        assert tags(answers.requests[-1].content) == tags(data(name))

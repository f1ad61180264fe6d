"""Kcell JSONv2 against the examples of its spec (000_11f12833dd23f0e5.txt), table-driven:
each canned answer in testdata/ → the receipt, reports or error the bridge makes of it; each
canned request → the same JSON as the bridge writes it. Line numbers are the spec's. (The
spec's examples are laid out by a PDF converter: the array report of l. 490-562 is put back
together from its fields.)"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from bridge.errors import PermanentUpstreamError, UpstreamError
from bridge.models import DeliveryReport
from bridge.upstreams.base import OutboundSms, SendReceipt
from bridge.upstreams.kcell.settings import KcellSettings
from bridge.upstreams.kcell.upstream import KcellUpstream, parse_delivery_reports
from tests.sms import outbound_sms
from tests.upstreams.canned import Canned, payload

FIRST = "9f60ac8f-e721-5027-b838-e6fcb95fcd7a"
SECOND = "e5ea7286-6849-52d7-9e1b-8719b736283e"
DELIVERED = DeliveryReport(FIRST, "delivered", "2/23/23011", None,
                           "2016-10-25T17:41:34.667+00:00")
EXPIRED = DeliveryReport(SECOND, "expired", "3/35/35015", None,
                         "2016-10-25T17:41:39.000+00:00")


def data(name: str) -> bytes:
    return payload("kcell", name)


def sms(phone: str = "79651111111", text: str = "Text for SMS", *,
        key: str = "AD-6640-7006") -> OutboundSms:
    return outbound_sms(message_id=1, idempotency_key=key, attempt=1, phone=phone, text=text,
                       encoding="gsm7", originator="Test", validity=300)


def make(client: Any) -> KcellUpstream:
    return KcellUpstream("kc", KcellSettings(
        base_url="http://kcell.test", login="acme", password=SecretStr("p"), client_id="acme",
        callback_url="https://send-dr-here.com"), client)


Call = Callable[[KcellUpstream], Awaitable[Any]]

ANSWERS: list[tuple[str, str, Call, object]] = [
    # (testdata, where in 000, the call, what the bridge makes of the answer)
    ("simple_reply.json", "l. 121-125", lambda u: u.send(sms()), SendReceipt((FIRST,))),
    ("simple_error_36024.json", "l. 127-131", lambda u: u.send(sms()),
     PermanentUpstreamError("Phone number incorrect", 36024)),
    ("batch_sync_reply.json", "l. 320-360",
     lambda u: u.send_batch([sms(key="AD-6640-7006"),
                             sms("79652222222", "Text, recipient #79652222222",
                                 key="AD-6640-7007")]),
     [SendReceipt((FIRST,)), SendReceipt((SECOND,))]),
    ("dr_reply.json", "l. 614-638", lambda u: u.poll_statuses([FIRST]), [DELIVERED]),
]


@pytest.mark.parametrize(("name", "where", "call", "expected"), ANSWERS,
                         ids=[row[0] for row in ANSWERS])
async def test_answer(name: str, where: str, call: Call, expected: object) -> None:
    canned = Canned(data(name), content_type="application/json")
    async with canned.client() as client:
        upstream = make(client)
        if isinstance(expected, UpstreamError):
            with pytest.raises(type(expected)) as caught:
                await call(upstream)
            assert caught.value.code == expected.code, where
            assert expected.text in caught.value.text, where
        else:
            assert await call(upstream) == expected, where


@pytest.mark.parametrize(("name", "reports"), [
    ("dr_callback_one.json", [DeliveryReport(FIRST, "delivered", "2/23/23011", None,
                                             "2016-10-25T17:41:34.667+00:00")]),
    ("dr_callback_array.json", [DELIVERED, EXPIRED]),
])
def test_delivery_report_callbacks(name: str, reports: list[DeliveryReport]) -> None:
    """3.1 (l. 450-476, one object) and 3.2 (l. 480-562, an array)."""
    assert parse_delivery_reports("application/json", b"", data(name), "utf-8") == reports


# Not sent: ``start_time`` and ``tag`` (the module docstring says why).
UNUSED = ("start_time", "tag")


async def test_requests_are_the_examples() -> None:
    """1.1 (l. 86-120) and 2.1 (l. 179-229), as the bridge writes them for the same
    messages."""
    async with Canned().client() as client:
        upstream = make(client)
        simple = upstream.simple_body(sms())
        batch = upstream.batch_body([sms(key="AD-6640-7006", text="Text, recipient #79651111111"),
                                     sms("79652222222", "Text, recipient #79652222222",
                                         key="AD-6640-7007")])
    for body, name in ((simple, "simple_request.json"), (batch, "batch_request.json")):
        example = json.loads(data(name))
        assert body == {key: value for key, value in example.items() if key not in UNUSED}

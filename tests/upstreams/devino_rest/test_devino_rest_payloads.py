"""Devino REST against the examples of its spec (003_2ae1dc9e2c3c1732.txt), table-driven:
each canned answer in testdata/ → the receipt, reports, messages or error the bridge makes of
it; each canned request → the same parameters as the bridge sends them. Line numbers are the
spec's. The session call is answered by l. 80 throughout."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.models import DeliveryReport
from bridge.upstreams.base import OutboundSms, SendReceipt
from bridge.upstreams.devino.rest import DevinoRestUpstream
from bridge.upstreams.devino.settings import DevinoRestSettings
from tests.sms import outbound_sms
from tests.upstreams.canned import Canned, payload

SESSION = "Z5CYSZEKDL1DPICU37WENQVOYKP0T1GSLHX1"
ONE_PART = "test"
TWO_PARTS = "x" * 200  # two segments of 153 (l. 223)


def data(name: str) -> bytes:
    return payload("devino_rest", name)


def sms(phone: str = "79161002030", text: str = ONE_PART) -> OutboundSms:
    return outbound_sms(message_id=1, idempotency_key="k", attempt=1, phone=phone, text=text,
                       encoding="gsm7", originator="DEVIN0")


def canned(name: str, *, session: str = "session_id.json") -> Canned:
    def answer(request: httpx.Request) -> httpx.Response:
        body = data(session if request.url.path.endswith("/user/sessionid") else name)
        return httpx.Response(200, content=body,
                              headers={"Content-Type": "application/json; charset=utf-8"})

    return Canned(answer=answer)


def make(client: httpx.AsyncClient) -> DevinoRestUpstream:
    return DevinoRestUpstream("dv", DevinoRestSettings(
        base_url="http://devino.test/rest", login="test", password=SecretStr("11111")), client)


Call = Callable[[DevinoRestUpstream], Awaitable[Any]]


async def inbound(upstream: DevinoRestUpstream) -> list[tuple[str | None, str, str, str | None]]:
    messages, _ = await upstream.poll_inbound(None)
    return [(m.sms_id, m.phone, m.text, m.recipient) for m in messages]


ANSWERS: list[tuple[str, str, Call, object]] = [
    # (testdata, where in 003, the call, what the bridge makes of the answer)
    ("send_ids.json", "l. 215-220", lambda u: u.send(sms()),
     SendReceipt(("579700854169272358",))),
    ("send_ids_two_parts.json", "l. 224-226", lambda u: u.send(sms(text=TWO_PARTS)),
     SendReceipt(("579700854169272358", "579700854169272359"))),
    # l. 402-405: all segments of one number, then all of the next
    ("sendbulk_ids.json", "l. 402-405",
     lambda u: u.send_batch([sms("79001234567", TWO_PARTS), sms("79160000000", TWO_PARTS)]),
     [SendReceipt(("579700854169272358", "579700854169272359")),
      SendReceipt(("579700854169272360", "579700854169272361"))]),
    # 255 right after a send: not in the database yet, still on its way; "no date" (year 1)
    ("state_255.json", "l. 482-487", lambda u: u.poll_statuses(["579700854169272358"]),
     [DeliveryReport("579700854169272358", "sent", "255", None, "")]),
    ("in.json", "l. 555-569", inbound,
     [("539187174", "7926000000", "test1", "7916000000"),
      ("539187214", "79260000001", "test2", "7916000000")]),
    ("error_9_in.txt", "l. 583-591", inbound,
     TransientUpstreamError("The parameters dictionary contains a null entry", 9)),
    ("error_4_session_expired.txt", "l. 155-159", lambda u: u.balance(),
     PermanentUpstreamError("SessionID expired", 4)),
]


@pytest.mark.parametrize(("name", "where", "call", "expected"), ANSWERS,
                         ids=[row[0] for row in ANSWERS])
async def test_answer(name: str, where: str, call: Call, expected: object) -> None:
    async with canned(name).client() as client:
        upstream = make(client)
        if isinstance(expected, UpstreamError):
            with pytest.raises(type(expected)) as caught:
                await call(upstream)
            assert caught.value.code == expected.code, where
            assert expected.text in caught.value.text, where
        else:
            assert await call(upstream) == expected, where


async def test_a_refused_login_is_permanent() -> None:
    """l. 92-99: ``{Code: 4, Desc: "Invalid user login or password"}`` to the session call."""
    with pytest.raises(PermanentUpstreamError) as caught:
        async with canned("send_ids.json", session="error_4_login.txt").client() as client:
            await make(client).send(sms())
    assert caught.value.code == 4 and "Invalid user login or password" in caught.value.text


def parameters(request: httpx.Request) -> dict[str, str]:
    """A request's parameters, query and form together, names in lower case (the service
    binds them case-insensitively, as the spec's own examples show)."""
    pairs = parse_qsl(request.url.query.decode()) + parse_qsl(request.content.decode())
    return {key.lower(): value for key, value in pairs}


def example(name: str) -> dict[str, str]:
    return {key.lower(): value
            for key, value in parse_qsl(urlsplit(data(name).decode().strip()).query)}


async def test_requests_carry_the_examples_parameters() -> None:
    """l. 51 (``user/sessionid``) and l. 175 (``Sms/Send``; the example's ``Validity=0`` is
    "no validity", which the bridge leaves out)."""
    answers = canned("send_ids.json", session="session_id.json")
    async with answers.client() as client:
        await make(client).send(sms())
    login, send = answers.requests
    assert parameters(login) == example("sessionid_request.url")
    wanted = {**example("send_request.url"), "sessionid": SESSION}
    wanted.pop("validity")
    assert parameters(send) == wanted

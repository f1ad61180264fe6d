"""Dispatcher behaviour against a misbehaving provider: retries, failover, rate, bounce."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.app import Bridge
from tests.conftest import BOTH_STORES, BridgeFactory
from tests.doubles.mailbox import MailboxDouble
from tests.doubles.smstraffic import SmsTrafficDouble
from tests.test_smtp_intake import mail, send, wait_status

# The behaviour holds on both stores.
pytestmark = BOTH_STORES


@pytest.fixture
async def provider() -> AsyncIterator[SmsTrafficDouble]:
    async with SmsTrafficDouble(login="acme", password="s3cret", api_key="77/key") as double:
        yield double


def closed_port_url() -> str:
    """A loopback URL where nothing listens: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def v1(url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "smstraffic_v1", "base_url": url, "login": "acme", "password": "s3cret",
            **extra}


def v2(url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "smstraffic_v2", "base_url": url, "api_key": "77/key", **extra}


async def start(bridge_factory: BridgeFactory, upstreams: dict[str, Any],
                **overrides: Any) -> Bridge:
    account = {"password": "pw", "upstream": "main", **overrides.pop("account", {})}
    return await bridge_factory(upstreams=upstreams, accounts={"alerts": account}, **overrides)


async def submit(bridge: Bridge, phone: str = "79161234567", text: str = "hello") -> None:
    code, reply = await send(bridge.smtp_port, mail(f"{phone}.alerts@x", "", text))
    assert code == 250, reply


# Failures that surely sent nothing are retried until sent. After one that may have sent
# the SMS (HTTP 500, a malformed reply, a dropped connection), v1 - no idempotency key, no
# lookup - risks one resend under the default ``ambiguous = "resend"``; a second such failure
# holds the message (tests/test_sent_once.py).
@pytest.mark.parametrize(
    ("mode", "kw", "failures"),
    [("http500", {}, 1), ("error", {"code": 1000}, 2), ("malformed", {}, 1), ("drop", {}, 1),
     ("http429", {"retry_after": 0}, 2)],
)
async def test_transient_failures_are_retried_until_sent(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble, mode: str, kw: dict[str, Any],
    failures: int,
) -> None:
    bridge = await start(bridge_factory, {"main": v1(provider.url)})
    provider.fail_next(failures, mode, **kw)
    await submit(bridge)
    [sms] = await provider.wait_for_accepted(1)
    assert sms.phone == "79161234567"
    await wait_status(bridge, 1, "sent")
    [message] = await bridge.store.list_messages()
    assert message.attempts == failures + 1
    events = [e["status"] for e in await bridge.store.message_events(message.id)]
    assert events == ["queued", *["retry"] * failures, "sent"]
    assert len([r for r in provider.requests if r.path == "/multi.php"]) == failures + 1


async def test_retry_after_of_429_is_honoured(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await start(bridge_factory, {"main": v1(provider.url)},
                         dispatcher={"retry_base": 0.01, "retry_max": 5})
    provider.fail_next(1, "http429", retry_after=1)
    started = time.monotonic()
    await submit(bridge)
    await provider.wait_for_accepted(1)
    assert time.monotonic() - started >= 1.0


async def test_permanent_error_fails_once_and_bounces_to_the_sender(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    async with MailboxDouble() as box:
        bridge = await start(bridge_factory, {"main": v1(provider.url)},
                             mail={"smarthost": "127.0.0.1", "smarthost_port": box.port})
        provider.fail_next(1, "error", code=432, text="blocked phone")
        await submit(bridge, text="never delivered")
        [bounce] = await box.wait_for(1)
    assert bounce.mail_from in ("", "<>")  # null reverse-path
    assert bounce.rcpt_tos == ["monitor@example.com"]
    message = bounce.message
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    human = next(p for p in message.walk() if not p.is_multipart())
    text = human.get_payload(decode=True).decode()
    assert "432" in text and "blocked phone" in text and "never delivered" in text
    assert b"Status: 5.0.0" in bounce.content and b"Action: failed" in bounce.content
    [stored] = await bridge.store.list_messages()
    assert stored.status == "failed" and stored.attempts == 1
    assert len(provider.requests) == 1


async def test_connection_refused_fails_over_to_backup_host(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await start(bridge_factory,
                         {"main": v1(closed_port_url(), backup_url=provider.url)})
    await submit(bridge)
    await provider.wait_for_accepted(1)
    await wait_status(bridge, 1, "sent")
    [message] = await bridge.store.list_messages()
    assert message.attempts == 1


async def test_after_5xx_the_next_attempt_uses_the_backup_host(
    bridge_factory: BridgeFactory,
) -> None:
    async with SmsTrafficDouble(login="acme", password="s3cret") as primary, \
            SmsTrafficDouble(login="acme", password="s3cret") as backup:
        primary.fail_next(5, "http500")
        bridge = await start(bridge_factory, {"main": v1(primary.url, backup_url=backup.url)})
        await submit(bridge)
        await backup.wait_for_accepted(1)
        assert len(primary.requests) == 1 and primary.accepted == []


async def test_fallback_upstream_takes_over_when_the_first_cannot_connect(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await start(
        bridge_factory,
        {"main": v1(closed_port_url()), "spare": v2(provider.url)},
        account={"fallback_upstreams": ["spare"]},
    )
    await submit(bridge)
    [sms] = await provider.wait_for_accepted(1)
    assert sms.api == "v2"
    await wait_status(bridge, 1, "sent")
    [message] = await bridge.store.list_messages()
    assert message.upstream_used == "spare"


@pytest.mark.parametrize("lost", ["accept_then_500", "accept_then_drop"])
async def test_v2_retry_after_ambiguous_failure_does_not_send_twice(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble, lost: str
) -> None:
    """The first send is accepted but its answer lost; the retry is refused as a duplicate
    (restrictiveId, 002 l. 163) and the provider's id is found by trackingData (l. 160):
    one SMS, recorded with its id so that its status can be known."""
    bridge = await start(bridge_factory, {"main": v2(provider.url)})
    provider.fail_next(1, lost)
    await submit(bridge)
    await wait_status(bridge, 1, "sent")
    [accepted] = provider.accepted
    sends = [r for r in provider.requests if r.path == "/v2/send"]
    assert len(sends) == 2
    assert sends[0].json["restrictiveId"] == sends[1].json["restrictiveId"]
    assert sends[0].headers["Authorization"] == "Bearer 77/key"
    [destination] = sends[0].json["destinations"]
    assert destination["to"] == 79161234567
    assert destination["trackingData"] == sends[0].json["restrictiveId"]
    [message] = await bridge.store.list_messages()
    assert message.upstream_ids == [accepted.sms_id]


async def test_slow_provider_hits_the_overall_deadline_and_is_retried(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await start(bridge_factory, {"main": v2(provider.url, timeout=0.5)})
    provider.fail_next(1, "delay", seconds=2)
    await submit(bridge)
    await wait_status(bridge, 1, "sent", timeout=15)
    # The slow first call was accepted late; the retry carried the same restrictiveId.
    assert len(provider.accepted) == 1
    [message] = await bridge.store.list_messages()
    assert message.attempts >= 2


async def test_upstream_rate_limit_spaces_the_sends(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    # One SMS per request: the rate limit counts requests.
    bridge = await start(bridge_factory,
                         {"main": v1(provider.url, rate_per_second=10, batch_size=1)})
    started = time.monotonic()
    for index in range(3):
        code, _ = await send(
            bridge.smtp_port,
            mail("alerts@x", ", ".join(f"7916123{index}{n:03d}" for n in range(5)), "burst"),
        )
        assert code == 250
    await provider.wait_for_accepted(15)
    # 15 sends at 10/s with a burst of 10: at least 0.5 s for the last five.
    assert time.monotonic() - started >= 0.45


async def test_upstream_concurrency_is_bounded(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await start(bridge_factory, {"main": v1(provider.url, concurrency=2, batch_size=1)})
    in_flight = 0
    peak = 0
    original = provider._v1_send

    async def counting(form: dict[str, str]) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.05)
            return await original(form)
        finally:
            in_flight -= 1

    provider._v1_send = counting  # type: ignore[method-assign]
    code, _ = await send(bridge.smtp_port,
                         mail("alerts@x", ", ".join(f"791612340{n:02d}" for n in range(8)), "c"))
    assert code == 250
    await provider.wait_for_accepted(8)
    assert peak == 2


async def test_start_date_holds_the_message_until_due(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    from datetime import datetime, timedelta

    from bridge.parsing.requests import PROVIDER_TZ

    bridge = await start(bridge_factory, {"main": v1(provider.url)})
    due = datetime.now(PROVIDER_TZ).replace(microsecond=0) + timedelta(seconds=2)
    body = (f"login: alerts\n\npassword: pw\n\nphones: 79161234567\n\nmessage: later\n\n"
            f"start_date: {due:%Y-%m-%d %H:%M:%S}\n")
    code, text = await send(bridge.smtp_port, mail("multi@x", "s", body))
    assert code == 250, text
    await provider.wait_for_accepted(1, timeout=10)
    assert time.time() >= due.timestamp()


async def test_v2_request_carries_originator_validity_and_max_parts(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await start(bridge_factory, {"main": v2(provider.url)})
    body = ("login: alerts\n\npassword: pw\n\nphones: 79161234567\n\nmessage: Привет\n\n"
            "originator: MyCompany\n\ntimeout: 3600\n\nmax_parts: 2\n")
    code, text = await send(bridge.smtp_port, mail("multi@x", "s", body))
    assert code == 250, text
    await provider.wait_for_accepted(1)
    [request] = [r for r in provider.requests if r.path == "/v2/send"]
    assert request.headers["Content-Type"] == "application/json"
    assert request.json["originator"] == "MyCompany"
    assert request.json["channels"]["sms"] == {
        "message": "Привет", "maxParts": 2, "transliterate": False, "timeout": 3600}


async def test_v1_latin_text_goes_rus_0_and_the_recorded_parts_are_the_providers(
    bridge_factory: BridgeFactory,
) -> None:
    """002 l. 811-813: ASCII text as rus=0 (160/153), other text as rus=5, 70/67 per part by
    the stricter reading even when Latin; the part count the bridge records and limits by
    ``max_parts`` is the one the provider (the double, splitting per the spec) bills."""
    latin = ("abcdefghi " * 29)[:281] + "z"  # 282 ASCII characters: 2 parts in Latin mode
    accented = ("café crème " * 10).strip()  # 109 characters; é is not in windows-1251
    async with SmsTrafficDouble(login="acme", password="s3cret", split_parts=True) as double:
        bridge = await start(bridge_factory, {"main": v1(double.url, batch_size=1)})
        await submit(bridge, "79161234567", latin)
        await submit(bridge, "79161234568", accented)
        accepted = await double.wait_for_accepted(2)
        await wait_status(bridge, 2, "sent")
        by_phone = {a.phone: a for a in accepted}
        assert by_phone["79161234567"].message == latin
        assert by_phone["79161234567"].params["rus"] == "0"
        assert by_phone["79161234568"].message == accented
        assert by_phone["79161234568"].params["rus"] == "5"
        messages = {m.phone: m for m in await bridge.store.list_messages()}
        assert {p: m.parts for p, m in messages.items()} == {
            p: len(a.part_ids) for p, a in by_phone.items()}
        assert messages["79161234567"].parts == 2 and messages["79161234568"].parts == 2
        assert sorted(messages["79161234568"].upstream_ids) == sorted(
            by_phone["79161234568"].part_ids)
        # The SMTP intake limits by the same count: 2 parts do not fit max_parts 1.
        body = f"login: alerts\n\npassword: pw\n\nphones: 79161234569\n\nmessage: {accented}\n\n"
        code, reply = await send(bridge.smtp_port, mail("multi@x", "s", body + "max_parts: 1\n"))
        assert code == 550 and "2 parts" in reply, reply

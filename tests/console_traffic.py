"""A bridge with real traffic for the console and admin API tests: mails sent over SMTP to
an SMS Traffic v1 double (one delivered and reported, one refused for good and bounced to
the mailbox double, one v2 mail with its password), an inbound SMS whose e-mail forward the
mailbox refused (a dead letter), a short code with a reply script (an HTTP receiver
double), and an operator account besides the admin token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx

from bridge.app import Bridge
from tests.conftest import make_settings
from tests.doubles.mailbox import MailboxDouble
from tests.doubles.receiver import HttpReceiver, Scripted
from tests.doubles.smstraffic import SmsTrafficDouble

ADMIN_TOKEN = "admin-token-1234"
OPERATOR, OPERATOR_PASSWORD = "anna", "anna-password-42"
ACCOUNT_PASSWORD = "acct-pass-9876"
SOURCE_SECRET = "src-secret-5555"
SHORTCODE_PASSWORD = "sc-pass-7777"
PROVIDER_PASSWORD = "provider-pw-3141"
V2_PASSWORD = "v2-password-2718"
# Every secret of the configuration: none may appear in a page or an API answer.
SECRETS = (ADMIN_TOKEN, OPERATOR_PASSWORD, ACCOUNT_PASSWORD, SOURCE_SECRET,
           SHORTCODE_PASSWORD, PROVIDER_PASSWORD, V2_PASSWORD)
DELIVERED_PHONE = "79161234567"
FAILED_PHONE = "79035550000"
V2_PHONE = "79267654321"
CUSTOMER_PHONE = "79169998877"


@dataclass
class Traffic:
    bridge: Bridge
    provider: SmsTrafficDouble
    mailbox: MailboxDouble
    script: HttpReceiver
    ids: dict[str, int] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.bridge.http_port}"


async def send_mail(port: int, to: str, body: str, *, subject: str = "",
                    sender: str = "monitor@example.com", raw: bytes | None = None) -> str:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="monitor.example")
    message.set_content(body)
    reply = await aiosmtplib.send(raw or message.as_bytes(), sender=sender, recipients=[to],
                                  hostname="127.0.0.1", port=port, timeout=10)
    return str(reply[1])


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll the store: the bridge's workers commit their outcomes with no event to await."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (no event marks a commit)
            await asyncio.sleep(0.03)


def settings_for(tmp_path: Path, provider: SmsTrafficDouble, mailbox: MailboxDouble,
                 script: HttpReceiver, **overrides: Any) -> dict[str, Any]:
    return {
        "http": {"admin_token": ADMIN_TOKEN, "operators": {OPERATOR: OPERATOR_PASSWORD}},
        "upstreams": {"st1": {"kind": "smstraffic_v1", "base_url": provider.url,
                              "login": "mylogin", "password": PROVIDER_PASSWORD}},
        "accounts": {"alerts": {"password": ACCOUNT_PASSWORD, "upstream": "st1"},
                     "billing": {"password": V2_PASSWORD, "upstream": "st1"}},
        "mail": {"smarthost": "127.0.0.1", "smarthost_port": mailbox.port},
        "inbound": {
            "sources": {"st": {"secret": SOURCE_SECRET}},
            "shortcodes": {"4444": {"password": SHORTCODE_PASSWORD, "max_parts": 1,
                                    "fallback_reply": "Try later"}},
            "routes": [{"emails": ["desk@help.example"]}],
            "egress_allowed_networks": ["127.0.0.0/8"],
            "forward_retry_base": 0.05, "forward_retry_max": 0.2,
            "forward_retry_period": 30.0,
        },
        "dispatcher": {"poll_interval": 0.1, "retry_base": 0.05, "retry_max": 0.2,
                       "give_up_after": 30.0},
        **overrides,
    }


@asynccontextmanager
async def traffic(tmp_path: Path, *, text: str = "Disk full on db-1",
                  inbound_text: str = "Where is my order 1234?",
                  store_url: str | None = None, **overrides: Any) -> AsyncIterator[Traffic]:
    """A started bridge after the traffic above; ``text`` is the delivered SMS's text and
    ``inbound_text`` the customer's (hostile texts go through every page this way)."""
    async with SmsTrafficDouble(password=PROVIDER_PASSWORD) as provider, \
            HttpReceiver(Scripted(200, b"Your balance: <b>100</b> RUB")) as script:
        mailbox = MailboxDouble()
        await mailbox.start()
        config = settings_for(tmp_path, provider, mailbox, script, **overrides)
        if store_url is not None:
            config["store"] = {"url": store_url}
        bridge = Bridge(make_settings(tmp_path, **config))
        await bridge.start()
        try:
            world = Traffic(bridge, provider, mailbox, script)
            await make_traffic(world, text, inbound_text)
            yield world
        finally:
            await bridge.stop()
            await mailbox.stop()


async def make_traffic(world: Traffic, text: str, inbound_text: str) -> None:
    bridge, provider, mailbox = world.bridge, world.provider, world.mailbox
    store = bridge.store
    port = bridge.smtp_port
    # 1. Sent and reported delivered by the provider's callback.
    reply = await send_mail(port, f"{DELIVERED_PHONE}.alerts@sms.example", text)
    assert reply.startswith("2.0.0 Queued"), reply
    [accepted] = await provider.wait_for_accepted(1)
    await wait_until(lambda: _status(bridge, DELIVERED_PHONE, "sent"))
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"{world.base}/in/st/{SOURCE_SECRET}/dlr",
            content=f"sms_id={accepted.sms_id}&status=Delivered"
                    "&delivery_date=2026-12-03 14:05:00".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert answer.status_code == 200
    await wait_until(lambda: _status(bridge, DELIVERED_PHONE, "delivered", delivery=True))
    # 2. Refused for good (428: invalid number): failed, and bounced to the sender.
    provider.fail_next(1, "error", code=428, text="Invalid phone number")
    reply = await send_mail(port, f"{FAILED_PHONE}.alerts@sms.example", "Will not arrive",
                            sender="ops@example.com")
    assert reply.startswith("2.0.0 Queued"), reply
    await wait_until(lambda: _status(bridge, FAILED_PHONE, "failed"))
    await mailbox.wait_for(1)
    # 3. A v2 mail: its password must not be kept.
    body = (f"login: billing\n\npassword: {V2_PASSWORD}\n\nphones: {V2_PHONE}\n\n"
            "message: Invoice 17 is due\n")
    reply = await send_mail(port, "multi@sms.example", body)
    assert reply.startswith("2.0.0 Queued"), reply
    await wait_until(lambda: _status(bridge, V2_PHONE, "sent"))
    # 4. An inbound SMS whose mail forward the helpdesk's server refuses: a dead letter.
    mailbox.refuse("DATA", "554 5.7.1 Message refused by policy")
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{world.base}/in/st/{SOURCE_SECRET}/mo", params={
            "phone": CUSTOMER_PHONE, "message": inbound_text, "sms_id": "mo-1", "to": "4444"})
        assert answer.status_code == 200
    await wait_until(lambda: _forward_status(bridge, "dead"))
    messages = await store.list_messages(limit=10_000)
    for phone in (DELIVERED_PHONE, FAILED_PHONE, V2_PHONE):
        world.ids[phone] = next(m.id for m in messages if m.phone == phone)
    [inbound] = await store.list_inbound(limit=10)
    world.ids["inbound"] = inbound["id"]
    [dead] = await store.list_forward_jobs(status="dead")
    world.ids["dead"] = dead["id"]
    # The traces are written once a second: wait for the delivered message's exchange.
    assert bridge.traces is not None
    await bridge.traces.flush()


async def _status(bridge: Bridge, phone: str, status: str, *, delivery: bool = False) -> bool:
    for message in await bridge.store.list_messages(limit=10_000):
        if message.phone == phone:
            return (message.delivery_status if delivery else message.status) == status
    return False


async def _forward_status(bridge: Bridge, status: str) -> bool:
    return any(job["status"] == status
               for job in await bridge.store.list_forward_jobs(limit=100))

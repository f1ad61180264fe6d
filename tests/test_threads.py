"""Threads per customer, answers from the number the customer texted, and complete bounces.

* Each conversation (provider, the number the customer texted, the customer's phone) is one
  thread: its first forwarded mail is the root, every later one carries ``In-Reply-To`` and
  ``References`` naming it (RFC 5322 §3.6.4), until the conversation has been idle for
  ``inbound.thread_idle`` seconds. The thread is kept in the store: it survives restarts, and
  a retried forward carries the same headers.
* The Reply-To of a forwarded SMS names the number the customer texted; the agent's answer
  goes out from it (002 line 816-817: "Если указан цифровой отправитель, абонент может
  отправить ответное сообщение"), where the sender rules of 002 line 69 allow it.
* A bounce (RFC 3464) refers to the mail it answers and carries that mail's header block as a
  ``text/rfc822-headers`` part.

Everything runs through real sockets: the provider double, the mailbox double (the
smarthost), the bridge's SMTP intake and inbound HTTP endpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from email.message import Message
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bridge.app import Bridge
from bridge.models import ForwardJob, InboundMessage
from bridge.parsing.mail import capped_header_block, parse_mail, parse_recipient, receiver_tag
from bridge.parsing.requests import build_v1_requests, reply_originator
from bridge.settings import AccountSettings
from bridge.store import open_store
from tests.conftest import BOTH_STORES, BridgeFactory
from tests.doubles.mailbox import MailboxDouble, ReceivedMail
from tests.doubles.smstraffic import SmsTrafficDouble
from tests.test_smtp_intake import send

CUSTOMER = "77011234567"  # Kazakhstan (Kcell), 002 line 55: numeric senders are allowed
RUSSIAN_CUSTOMER = "79161234567"  # 002 line 69: Russian phones take alphanumeric senders only
OUR_NUMBER = "74957873595"  # the number customers text (002 line 817's example)
OTHER_NUMBER = "74957873596"
NOW = 1_700_000_000.0


@pytest.fixture
async def provider() -> AsyncIterator[SmsTrafficDouble]:
    async with SmsTrafficDouble(login="acme", password="s3cret") as double:
        yield double


async def start(bridge_factory: BridgeFactory, mailbox: MailboxDouble,
                provider: SmsTrafficDouble | None = None, *,
                inbound: dict[str, Any] | None = None, **account: Any) -> Bridge:
    upstreams: dict[str, Any] = {"dryrun": {"kind": "dryrun"}}
    if provider is not None:
        upstreams["st"] = {"kind": "smstraffic_v1", "base_url": provider.url, "login": "acme",
                           "password": "s3cret"}
    return await bridge_factory(
        inbound={
            "sources": {"st": {"secret": "src-secret"}},
            "routes": [{"emails": ["help@desk.example"]}],
            "reply_account": "helpdesk",
            "reply_domain": "sms.example",
            "forward_retry_base": 0.05,
            "forward_retry_max": 0.2,
            **(inbound or {}),
        },
        upstreams=upstreams,
        accounts={"helpdesk": {"password": "hd", "upstream": "st" if provider else "dryrun",
                               "allowed_senders": ["*@desk.example"], "originator": "Acme",
                               "trim_quoted": True, **account},
                  "alerts": {"password": "al", "upstream": "st" if provider else "dryrun",
                             "allowed_senders": ["monitor@example.com"]}},
        mail={"smarthost": "127.0.0.1", "smarthost_port": mailbox.port,
              "from_address": "sms-bridge@sms.example"},
    )


async def text_in(bridge: Bridge, sms_id: str, *, phone: str = CUSTOMER,
                  to: str = OUR_NUMBER, text: str = "Где мой заказ?") -> None:
    """A customer's SMS, pushed by the provider (002 line 1897) with the number it was sent
    to."""
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            f"http://127.0.0.1:{bridge.http_port}/in/st/src-secret/mo",
            params={"phone": phone, "message": text, "sms_id": sms_id, "to": to},
        )
    assert answer.status_code == 200


async def forwarded(bridge: Bridge, mailbox: MailboxDouble, sms_id: str,
                    **sms: Any) -> Message:
    """The mail the helpdesk receives for one more SMS."""
    count = len(mailbox.mails) + 1
    await text_in(bridge, sms_id, **sms)
    return (await mailbox.wait_for(count))[count - 1].message


def assert_starts_a_thread(mail: Message) -> None:
    assert mail["Message-ID"]
    assert mail["In-Reply-To"] is None and mail["References"] is None


def assert_in_thread(mail: Message, root: Message) -> None:
    assert mail["Message-ID"] != root["Message-ID"]
    assert mail["In-Reply-To"] == root["Message-ID"]
    assert mail["References"] == root["Message-ID"]


# --- threads --------------------------------------------------------------------------------


@BOTH_STORES
async def test_two_sms_from_one_phone_arrive_in_one_thread(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble,
) -> None:
    bridge = await start(bridge_factory, mailbox)
    first = await forwarded(bridge, mailbox, "t-1")
    second = await forwarded(bridge, mailbox, "t-2", text="И ещё вопрос")
    assert_starts_a_thread(first)
    assert_in_thread(second, first)
    assert second["Subject"] == first["Subject"]  # clients that also match subjects group them


async def test_an_sms_after_the_idle_time_starts_a_new_thread(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble,
) -> None:
    bridge = await start(bridge_factory, mailbox, inbound={"thread_idle": 1.0})
    first = await forwarded(bridge, mailbox, "i-1")
    second = await forwarded(bridge, mailbox, "i-2")
    await asyncio.sleep(1.2)  # the conversation goes idle: a time, not an event to await
    third = await forwarded(bridge, mailbox, "i-3")
    fourth = await forwarded(bridge, mailbox, "i-4")
    assert_starts_a_thread(first)
    assert_in_thread(second, first)
    assert_starts_a_thread(third)
    assert_in_thread(fourth, third)


async def test_each_receiving_number_and_each_customer_has_its_own_thread(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble,
) -> None:
    bridge = await start(bridge_factory, mailbox)
    ours = await forwarded(bridge, mailbox, "n-1")
    other_number = await forwarded(bridge, mailbox, "n-2", to=OTHER_NUMBER)
    other_customer = await forwarded(bridge, mailbox, "n-3", phone="77017654321")
    ours_again = await forwarded(bridge, mailbox, "n-4")
    other_number_again = await forwarded(bridge, mailbox, "n-5", to=OTHER_NUMBER)
    for root in (ours, other_number, other_customer):
        assert_starts_a_thread(root)
    assert_in_thread(ours_again, ours)
    assert_in_thread(other_number_again, other_number)


@BOTH_STORES
async def test_the_thread_survives_a_restart(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble,
) -> None:
    before = await start(bridge_factory, mailbox)
    first = await forwarded(before, mailbox, "r-1")
    await before.stop()
    after = await start(bridge_factory, mailbox)  # the same store, opened again
    second = await forwarded(after, mailbox, "r-2")
    assert_in_thread(second, first)


async def test_a_forward_sent_again_carries_the_same_thread_headers(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble,
) -> None:
    bridge = await start(bridge_factory, mailbox)
    first = await forwarded(bridge, mailbox, "s-1")
    # The mailbox takes the second mail and drops the connection before its 250: the bridge
    # cannot know it arrived and sends it again (RFC 5321 §4.1.1.4).
    mailbox.drop_next = 1
    await text_in(bridge, "s-2")
    *_, taken, again = await mailbox.wait_for(3)
    assert again.content == taken.content
    assert_in_thread(again.message, first)


@BOTH_STORES
async def test_instances_deciding_at_once_agree_on_one_thread(store_url: str) -> None:
    """Two stores on one database (two bridge instances) decide the threads of six forwards
    of one conversation at once, each forward twice (its lease taken over): one root, and
    each forward gets one answer."""
    first, second = open_store(store_url), open_store(store_url)
    await first.open()
    await second.open()
    try:
        for n in range(6):
            await first.record_inbound(
                InboundMessage(source="st", kind="mo", sms_id=f"c-{n}", phone=CUSTOMER,
                               text=f"sms {n}", recipient=OUR_NUMBER),
                now=NOW + n, dedup_window=600.0, state="routed", response=None,
                jobs=[ForwardJob("email", "help@desk.example", b"{}")],
                forward_deadline=NOW + 86400)
        jobs = await first.claim_forward_jobs("owner", NOW + 10, 10, 60.0)
        assert len(jobs) == 6
        decisions = await asyncio.gather(*(
            store.assign_thread(job.id, "conversation", f"<m{job.id}@x>", NOW + n, 3600.0)
            for n, job in enumerate(jobs) for store in (first, second)))
        roots = set(decisions)
        assert len(roots) == 1 and roots <= {f"<m{job.id}@x>" for job in jobs}
        # Asked again later (a retry), each forward keeps its answer, whatever time it names.
        again = await second.assign_thread(jobs[0].id, "conversation", f"<m{jobs[0].id}@x>",
                                           NOW + 10 * 86400, 3600.0)
        assert again in roots
    finally:
        await first.close()
        await second.close()


# --- the answer goes out from the number the customer texted ---------------------------------


async def agent_answers(bridge: Bridge, reply_to: str, text: str = "Заказ в пути.") -> None:
    raw = (
        f"From: anna@desk.example\r\nTo: {reply_to}\r\nSubject: Re: SMS\r\n"
        "Message-ID: <answer-1@desk.example>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{text}\r\n"
    ).encode()
    code, reply = await send(bridge.smtp_port, raw, sender="anna@desk.example",
                             recipients=[reply_to])
    assert code == 250, reply


async def test_the_agents_answer_goes_out_from_the_number_the_customer_texted(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, provider: SmsTrafficDouble,
) -> None:
    bridge = await start(bridge_factory, mailbox, provider)
    mail = await forwarded(bridge, mailbox, "o-1")
    reply_to = str(mail["Reply-To"])
    tag = receiver_tag("hd", "helpdesk", CUSTOMER, OUR_NUMBER)
    assert reply_to == f"{CUSTOMER}.helpdesk+{OUR_NUMBER}-{tag}@sms.example"
    await agent_answers(bridge, reply_to)
    [sms] = await provider.wait_for_accepted(1)
    assert (sms.phone, sms.message, sms.originator) == (CUSTOMER, "Заказ в пути.", OUR_NUMBER)


@pytest.mark.parametrize("forged", [
    f"{CUSTOMER}.helpdesk+74950000000@sms.example",  # no tag: typed by hand
    # the tag of another number, and of the same number for another customer
    f"{CUSTOMER}.helpdesk+74950000000-{receiver_tag('hd', 'helpdesk', CUSTOMER, OUR_NUMBER)}"
    "@sms.example",
    f"{CUSTOMER}.helpdesk+{OUR_NUMBER}-{receiver_tag('hd', 'helpdesk', '77017654321', OUR_NUMBER)}"
    "@sms.example",
])
async def test_a_reply_address_the_bridge_did_not_write_cannot_choose_the_sender(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, provider: SmsTrafficDouble,
    forged: str,
) -> None:
    """Anyone who may mail the reply account could otherwise send from any number."""
    bridge = await start(bridge_factory, mailbox, provider)
    await agent_answers(bridge, forged)
    [sms] = await provider.wait_for_accepted(1)
    assert (sms.phone, sms.originator) == (CUSTOMER, "Acme")


async def test_a_reply_address_without_the_number_still_answers_from_the_account(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, provider: SmsTrafficDouble,
) -> None:
    bridge = await start(bridge_factory, mailbox, provider)
    await agent_answers(bridge, f"{CUSTOMER}.helpdesk@sms.example")  # written before the change
    [sms] = await provider.wait_for_accepted(1)
    assert (sms.phone, sms.originator) == (CUSTOMER, "Acme")


async def test_a_russian_customer_is_answered_from_the_accounts_alphanumeric_sender(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, provider: SmsTrafficDouble,
) -> None:
    bridge = await start(bridge_factory, mailbox, provider)
    mail = await forwarded(bridge, mailbox, "o-2", phone=RUSSIAN_CUSTOMER)
    tag = receiver_tag("hd", "helpdesk", RUSSIAN_CUSTOMER, OUR_NUMBER)
    assert mail["Reply-To"] == f"{RUSSIAN_CUSTOMER}.helpdesk+{OUR_NUMBER}-{tag}@sms.example"
    await agent_answers(bridge, str(mail["Reply-To"]))
    [sms] = await provider.wait_for_accepted(1)
    assert (sms.phone, sms.originator) == (RUSSIAN_CUSTOMER, "Acme")


@pytest.mark.parametrize(
    ("address", "login", "phone", "receiver"),
    [
        ("77011234567.helpdesk+74957873595@d", "helpdesk", "77011234567", "74957873595"),
        ("77011234567.helpdesk+74957873595-0123456789ab@d", "helpdesk", "77011234567",
         "74957873595"),
        ("77011234567.helpdesk@d", "helpdesk", "77011234567", None),
        ("77011234567.help.desk+4444@d", "help.desk", "77011234567", "4444"),
        # Not a number of at most 15 digits: the local part stays the login (no such account).
        ("77011234567.helpdesk+1234567890123456@d", "helpdesk+1234567890123456",
         "77011234567", None),
        ("77011234567.helpdesk+74x@d", "helpdesk+74x", "77011234567", None),
        # Without the phone in the address there is no answer to give from a number.
        ("helpdesk+74957873595@d", "helpdesk+74957873595", None, None),
    ],
)
def test_parse_recipient_reads_the_receiving_number(
    address: str, login: str, phone: str | None, receiver: str | None,
) -> None:
    recipient = parse_recipient(address)
    assert (recipient.login, recipient.phone, recipient.receiver) == (login, phone, receiver)


@pytest.mark.parametrize(
    ("receiver", "phone", "longest", "expected"),
    [
        (OUR_NUMBER, CUSTOMER, 15, OUR_NUMBER),
        ("4444", CUSTOMER, 15, "4444"),  # a short code
        (OUR_NUMBER, RUSSIAN_CUSTOMER, 15, None),  # 002 line 69: alphanumeric only
        ("375291234567", CUSTOMER, 11, None),  # longer than Kcell's 11-character alpha_name
        ("375291234567", CUSTOMER, 15, "375291234567"),
        (None, CUSTOMER, 15, None),
    ],
)
def test_reply_originator(receiver: str | None, phone: str, longest: int,
                          expected: str | None) -> None:
    tag = receiver_tag("hd", "helpdesk", phone, receiver) if receiver else None
    assert reply_originator(receiver, phone, longest, tag=tag, key="hd",
                            login="helpdesk") == expected
    assert reply_originator(receiver, phone, longest, tag=None, key="hd",
                            login="helpdesk") is None  # untagged: never


def test_v1_requests_answer_from_the_receiving_number_within_the_upstreams_limit() -> None:
    account = AccountSettings(password=SecretStr("hd"), originator="Acme")
    mail = parse_mail(b"Subject: x\r\n\r\nok\r\n", legacy_charset="cp1251",
                      max_header_bytes=65536)
    tag = receiver_tag("hd", "helpdesk", CUSTOMER, "375291234567")
    recipient = parse_recipient(f"{CUSTOMER}.helpdesk+375291234567-{tag}@d")
    [wide] = build_v1_requests("helpdesk", account, recipient, mail)
    [narrow] = build_v1_requests("helpdesk", account, recipient, mail, numeric_originator_max=11)
    assert (wide.options.originator, narrow.options.originator) == ("375291234567", "Acme")


# --- bounces ----------------------------------------------------------------------------------

ORIGINAL_HEADERS = (
    "From: Monitoring <monitor@example.com>\r\n"
    "To: 77011234567.alerts@sms.example\r\n"
    "Subject: disk full on db-1\r\n"
    "Message-ID: <alert-1@example.com>\r\n"
    "References: <alert-0@example.com>\r\n"
    "X-Ticket: 42;\r\n"
    "\tfolded on to a second line\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
)


def parts_of(mail: ReceivedMail) -> list[Message]:
    payload = mail.message.get_payload()
    assert isinstance(payload, list)
    return payload


@BOTH_STORES
async def test_a_bounce_refers_to_the_mail_and_carries_its_headers(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, provider: SmsTrafficDouble,
) -> None:
    bridge = await start(bridge_factory, mailbox, provider)
    provider.fail_next(1, "error", code=432, text="blocked phone")
    raw = (ORIGINAL_HEADERS + "\r\nthe disk is full\r\n").encode()
    code, reply = await send(bridge.smtp_port, raw, sender="monitor@example.com",
                             recipients=["77011234567.alerts@sms.example"])
    assert code == 250, reply
    [bounce] = await mailbox.wait_for(1)
    report = bounce.message
    assert report.get_content_type() == "multipart/report"
    assert report["In-Reply-To"] == "<alert-1@example.com>"
    assert report["References"] == "<alert-0@example.com> <alert-1@example.com>"
    human, status, headers = parts_of(bounce)  # RFC 3464 §2 / RFC 6522 §3: in this order
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert headers.get_content_type() == "text/rfc822-headers"
    block = headers.get_payload(decode=True)
    assert isinstance(block, bytes)
    assert block.replace(b"\r\n", b"\n") == ORIGINAL_HEADERS.replace("\r\n", "\n").encode()
    assert b"the disk is full" not in block


def test_the_stored_header_block_is_capped_at_whole_fields() -> None:
    fields = [f"X-Filler-{n}: {'x' * 990}\r\n".encode() for n in range(40)]
    raw = b"Subject: big\r\n" + b"".join(fields) + b"\r\nbody\r\n"
    block = capped_header_block(raw, 16384)
    assert 15000 < len(block) <= 16384
    assert block.startswith(b"Subject: big\r\n")
    assert block.endswith(b"x\r\n") and block.count(b"\r\n") == block.count(b"X-Filler") + 1
    assert capped_header_block(b"Subject: s\r\n\r\nbody", 16384) == b"Subject: s\r\n"
    # A field folded over the limit is left out whole, continuation lines included.
    folded = b"A: 1\r\nB: 2\r\n" + b"\t" + b"y" * 100 + b"\r\n\r\n"
    assert capped_header_block(folded, 20) == b"A: 1\r\n"

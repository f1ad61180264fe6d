"""The SMTP v2 ``reply_to_email`` answer (002 line 1811) is committed in the transaction of
the mail's messages, as data (:class:`bridge.models.ReplyRequest`), and rendered by the
mail relay when it sends it: no SMS goes out without its answer, and no mail is built
inside the store's transaction."""

from __future__ import annotations

import pytest

from bridge.errors import StoreUnavailable
from bridge.models import (
    V2_ANSWER_KIND,
    MailEnvelope,
    OutboundMail,
    ReplyRequest,
    SendOptions,
    SendRequest,
)
from bridge.relays.email import render_v2_answer
from bridge.settings import MailSettings
from bridge.store import OutboxStore
from tests.conftest import BridgeFactory
from tests.doubles.mailbox import MailboxDouble
from tests.test_smtp_intake import mail, send

NOW = 1_700_000_000.0
BODY = ("login: alerts\n\npassword: pw\n\nphones: 79161234567,79161234568\n\n"
        "message: hi\n\nwant_sms_ids: 1\n\nreply_to_email: 1\n")
# Both engines: the answer must be in the messages' transaction on each.
both_engines = pytest.mark.parametrize("store_backend", ["sqlite", "postgres"], indirect=True)


def request(**changes: object) -> ReplyRequest:
    fields: dict[str, object] = {
        "mail_to": "erp@example.com", "subject": "s", "message_id": "<m1@example.com>",
        "references": None, "want_sms_ids": True, "phones": ("79161234567", "79161234568")}
    fields.update(changes)
    return ReplyRequest(**fields)  # type: ignore[arg-type]


def send_request(phone: str) -> SendRequest:
    return SendRequest(account="alerts", upstream="dryrun", phone=phone, text="hi", parts=1,
                       encoding="gsm7", options=SendOptions())


@both_engines
async def test_the_answer_is_queued_even_when_the_store_refuses_a_later_write(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store taking the messages but no write after them (a crash, a full disk) must not
    leave SMS going out with their answer lost: the client's retry is a duplicate and would
    queue none either."""
    bridge = await bridge_factory(accounts={"alerts": {"password": "pw", "upstream": "dryrun"}},
                                  mail={"smarthost": "127.0.0.1",
                                        "smarthost_port": mailbox.port})

    async def refused(mail: OutboundMail, now: float) -> None:
        raise StoreUnavailable("the store takes no write after the messages' commit")

    monkeypatch.setattr(bridge.store, "queue_mail", refused)
    code, text = await send(bridge.smtp_port, mail("multi@x", "s", BODY),
                            sender="erp@example.com")
    assert code == 250, text
    ids = sorted(m.id for m in await bridge.store.list_messages())
    assert len(ids) == 2
    [reply] = await mailbox.wait_for(1)
    xml = reply.message.get_payload(decode=True)
    assert isinstance(xml, bytes)
    assert all(f"<sms_id>{i}</sms_id>".encode() in xml for i in ids)


@both_engines
async def test_the_answer_reaches_the_mailbox_with_each_phone_and_sms_id(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble,
) -> None:
    bridge = await bridge_factory(accounts={"alerts": {"password": "pw", "upstream": "dryrun"}},
                                  mail={"smarthost": "127.0.0.1",
                                        "smarthost_port": mailbox.port})
    code, text = await send(bridge.smtp_port, mail("multi@x", "s", BODY),
                            sender="erp@example.com")
    assert code == 250, text
    [reply] = await mailbox.wait_for(1)
    message = reply.message
    xml = message.get_payload(decode=True)
    assert isinstance(xml, bytes)
    messages = sorted(await bridge.store.list_messages(), key=lambda m: m.id)
    infos = "".join(f"<message_info><phone>{m.phone}</phone><sms_id>{m.id}</sms_id>"
                    "</message_info>" for m in messages)
    assert infos in "".join(xml.decode().split())
    assert b"<result>OK</result>" in xml and b"queued 2 messages" in xml
    assert message["To"] == "erp@example.com" and message["Subject"] == "Re: s"
    [row] = await bridge.store.list_mails()
    assert row["kind"] == V2_ANSWER_KIND
    assert str(message["Message-ID"]).startswith(f"<v2-answer.{row['id']}.")


@both_engines
async def test_the_answer_commits_with_the_messages_and_not_with_a_duplicate(
    store: OutboxStore,
) -> None:
    envelope = MailEnvelope(mail_from="erp@example.com", recipients=("multi@x",),
                            message_id="<m1@example.com>", peer="127.0.0.1", format="v2")
    batches = [("<m1@example.com>\0multi@x",
                [send_request("79161234567"), send_request("79161234568")])]
    result = await store.enqueue(envelope, batches, now=NOW, dedup_window=600.0,
                                 reply=request())
    again = await store.enqueue(envelope, batches, now=NOW + 1, dedup_window=600.0,
                                reply=request())
    assert again.duplicate
    [row] = await store.list_mails()
    assert (row["kind"], row["mail_to"], row["status"]) == (
        V2_ANSWER_KIND, "erp@example.com", "queued")
    stored, ids = ReplyRequest.from_payload(bytes(row["content"]))
    assert stored == request() and ids == result.message_ids


def test_the_rendered_answer_keeps_its_message_id_across_attempts() -> None:
    settings = MailSettings(from_address="sms-bridge@bridge.example")
    content = request(references="<r0@example.com>").payload([7, 8])
    first = render_v2_answer(settings, 41, content).content
    second = render_v2_answer(settings, 41, content).content
    other = render_v2_answer(settings, 42, content).content

    def header(raw: bytes, name: bytes) -> bytes:
        return next(line for line in raw.splitlines() if line.startswith(name + b": "))

    assert header(first, b"Message-ID") == header(second, b"Message-ID")
    assert header(first, b"Message-ID") != header(other, b"Message-ID")
    assert header(first, b"Message-ID").endswith(b"@bridge.example>")
    assert header(first, b"In-Reply-To") == b"In-Reply-To: <m1@example.com>"
    assert header(first, b"References") == b"References: <r0@example.com> <m1@example.com>"
    no_ids = render_v2_answer(settings, 43, request(want_sms_ids=False).payload([7, 8]))
    assert b"<sms_id>" not in no_ids.content and b"queued 2 messages" in no_ids.content

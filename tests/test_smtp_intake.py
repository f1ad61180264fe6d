"""SMTP intake end to end: real SMTP clients → bridge → SMS Traffic test double."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import aiosmtplib
import pytest

from bridge.app import Bridge
from tests.conftest import BridgeFactory
from tests.doubles.mailbox import MailboxDouble
from tests.doubles.smstraffic import SmsTrafficDouble
from tests.smtp_client import RawSmtp


@pytest.fixture
async def provider() -> AsyncIterator[SmsTrafficDouble]:
    async with SmsTrafficDouble(login="acme", password="s3cret") as double:
        yield double


def upstreams(provider: SmsTrafficDouble) -> dict[str, Any]:
    return {
        "st": {"kind": "smstraffic_v1", "base_url": provider.url, "login": "acme",
               "password": "s3cret"},
    }


def accounts(**extra: Any) -> dict[str, Any]:
    base = {"password": "pw1", "upstream": "st", "originator": "ACME"}
    return {"alerts": {**base, **extra}}


@pytest.fixture
async def bridge(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble, mailbox: MailboxDouble
) -> Bridge:
    return await bridge_factory(
        upstreams=upstreams(provider),
        accounts=accounts(),
        mail={"smarthost": "127.0.0.1", "smarthost_port": mailbox.port},
    )


def mail(to: str, subject: str, body: str, **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "monitor@example.com"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = headers.pop("message_id", make_msgid())
    for key, value in headers.items():
        message[key.replace("_", "-")] = value
    message.set_content(body)
    return message


async def send(port: int, message: EmailMessage | bytes, *, sender: str = "monitor@example.com",
               recipients: list[str] | None = None) -> tuple[int, str]:
    """Send one mail; return the final reply (the first refusal, or the DATA reply)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
    await client.connect()
    try:
        if isinstance(message, EmailMessage):
            data = message.as_bytes()
            recipients = recipients or [str(message["To"])]
        else:
            data = message
            assert recipients is not None
        await client.ehlo()
        await client.mail(sender)
        for rcpt in recipients:
            code, text = await _rcpt(client, rcpt)
            if code >= 400:
                return code, text
        response = await client.data(data)
        return response.code, response.message
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        try:
            await client.quit()
        except aiosmtplib.SMTPException:
            pass


async def _rcpt(client: aiosmtplib.SMTP, rcpt: str) -> tuple[int, str]:
    try:
        response = await client.rcpt(rcpt)
    except aiosmtplib.SMTPRecipientRefused as exc:
        return exc.code, exc.message
    return response.code, response.message


def db_rows(bridge: Bridge, sql: str) -> list[tuple[Any, ...]]:
    path = bridge.settings.store.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_v1_phone_in_subject_reaches_provider_as_spec_request(
    bridge: Bridge, provider: SmsTrafficDouble
) -> None:
    code, text = await send(bridge.smtp_port, mail("alerts@sms.example", "+7 (916) 123-45-67",
                                                   "Диск заполнен на 91%\n"))
    assert code == 250, text
    [sms] = await provider.wait_for_accepted(1)
    assert sms.api == "v1"
    assert sms.phone == "79161234567"
    assert sms.message == "Диск заполнен на 91%"
    assert sms.originator == "ACME"
    [request] = [r for r in provider.requests if r.path == "/multi.php"]
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.form["login"] == "acme" and request.form["password"] == "s3cret"
    assert request.form["rus"] == "5" and request.form["want_sms_ids"] == "1"
    await wait_status(bridge, 1, "sent")
    [message] = await bridge.store.list_messages(limit=1)
    assert message.upstream_ids == [sms.sms_id]
    assert message.encoding == "ucs2" and message.parts == 1


async def wait_status(bridge: Bridge, count: int, status: str, timeout: float = 10.0) -> None:
    """Wait until ``count`` messages have ``status`` (the dispatcher records after the call)."""
    async with asyncio.timeout(timeout):
        # The status is written after the provider answered; no event marks that commit.
        while len(await bridge.store.list_messages(limit=1000, status=status)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_v1_phone_in_address_ignores_subject(
    bridge: Bridge, provider: SmsTrafficDouble
) -> None:
    code, _ = await send(bridge.smtp_port,
                         mail("79161234567.alerts@sms.example", "not a number", "hello"))
    assert code == 250
    [sms] = await provider.wait_for_accepted(1)
    assert (sms.phone, sms.message) == ("79161234567", "hello")


async def test_several_numbers_and_recipients_make_one_send_each(
    bridge: Bridge, provider: SmsTrafficDouble
) -> None:
    message = mail("alerts@sms.example", "79161234567, 8 916 123 45 68 79161234569", "ping")
    code, text = await send(
        bridge.smtp_port, message,
        recipients=["alerts@sms.example", "79031112233.alerts@sms.example"],
    )
    assert code == 250, text
    accepted = await provider.wait_for_accepted(4)
    assert sorted(s.phone for s in accepted) == [
        "79031112233", "79161234567", "79161234568", "79161234569",
    ]
    await asyncio.sleep(0)
    assert len(provider.accepted) == 4


async def test_v2_mail_with_reply_to_email_mails_back_the_xml(
    bridge: Bridge, provider: SmsTrafficDouble, mailbox: MailboxDouble
) -> None:
    body = (
        "login: alerts\n\npassword: pw1\n\nphones: 79161234567,79161234568\n\n"
        "message: Invoice of $17.65 is due.\nCall 1234567.\n\noriginator: MyCompany\n\n"
        "want_sms_ids: 1\n\nflash: 1\n\nmax_parts: 3\n\nreply_to_email: 1\n"
    )
    code, text = await send(bridge.smtp_port, mail("multi@sms.example", "ignored", body),
                            sender="erp@example.com")
    assert code == 250, text
    accepted = await provider.wait_for_accepted(2)
    assert {s.phone for s in accepted} == {"79161234567", "79161234568"}
    assert all(s.message == "Invoice of $17.65 is due.\nCall 1234567." for s in accepted)
    assert all(s.originator == "MyCompany" for s in accepted)
    assert all(s.params.get("flash") == "1" and s.params.get("max_parts") == "3"
               for s in accepted)
    [reply] = await mailbox.wait_for(1)
    assert reply.rcpt_tos == ["erp@example.com"]
    xml = reply.message.get_payload(decode=True)
    assert isinstance(xml, bytes)
    assert b"<result>OK</result>" in xml and b"<code>0</code>" in xml
    assert b"queued 2 messages" in xml and b"<phone>79161234568</phone>" in xml
    ids = [str(m.id) for m in await bridge.store.list_messages()]
    assert all(f"<sms_id>{i}</sms_id>".encode() in xml for i in ids)


async def test_v2_error_is_mailed_back_to_an_authenticated_sender(
    bridge: Bridge, mailbox: MailboxDouble
) -> None:
    body = "login: alerts\n\npassword: pw1\n\nphones: 123\n\nmessage: x\n\nreply_to_email: 1\n"
    code, text = await send(bridge.smtp_port, mail("multi@sms.example", "s", body),
                            sender="erp@example.com")
    assert code == 550 and "428" in text
    [reply] = await mailbox.wait_for(1)
    xml = reply.message.get_payload(decode=True)
    assert isinstance(xml, bytes)
    assert b"<result>ERROR</result>" in xml and b"<code>428</code>" in xml


@pytest.mark.parametrize(
    ("recipient", "subject", "body", "expected"),
    [
        ("nobody@sms.example", "79161234567", "x", (550, "5.1.1")),
        ("alerts@sms.example", "12ab", "x", (550, "428")),
        ("alerts@sms.example", "79161234567", "\n\n", (550, "405")),
        ("alerts@sms.example", "", "x", (550, "403")),
        ("multi@sms.example", "s",
         "login: alerts\n\npassword: wrong\n\nphones: 79161234567\n\nmessage: x", (550, "411")),
        ("multi@sms.example", "s",
         "login: alerts\n\npassword: pw1\n\nphones: 79161234567\n\nmax_parts: 1\n\nmessage: "
         + "x" * 161, (550, "420")),
        ("multi@sms.example", "s",
         "login: alerts\n\npassword: pw1\n\nphones: 79161234567\n\nmessage: x\n\nmessage: y",
         (550, "442")),
    ],
)
async def test_refusals_carry_smtp_and_spec_codes(
    bridge: Bridge, provider: SmsTrafficDouble, recipient: str, subject: str, body: str,
    expected: tuple[int, str],
) -> None:
    code, text = await send(bridge.smtp_port, mail(recipient, subject, body))
    assert code == expected[0]
    assert expected[1] in text
    assert db_rows(bridge, "SELECT COUNT(*) FROM messages") == [(0,)]
    assert provider.requests == []


async def test_sender_and_network_restrictions(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await bridge_factory(
        upstreams=upstreams(provider),
        accounts={
            "alerts": {"password": "p", "upstream": "st", "allowed_senders": ["*@example.com"]},
            "lan": {"password": "p", "upstream": "st", "allowed_networks": ["10.0.0.0/8"]},
        },
    )
    ok = mail("alerts@sms.example", "79161234567", "x")
    assert (await send(bridge.smtp_port, ok))[0] == 250
    code, text = await send(bridge.smtp_port, ok, sender="evil@elsewhere.org")
    assert (code, text.split()[0]) == (550, "5.7.1")
    code, text = await send(bridge.smtp_port, mail("lan@sms.example", "79161234567", "x"))
    assert (code, text.split()[0]) == (550, "5.7.1")


async def test_allowed_prefixes_refuse_other_numbers_at_rcpt(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await bridge_factory(upstreams=upstreams(provider),
                                  accounts=accounts(allowed_prefixes=["7916"]))
    code, text = await send(bridge.smtp_port, mail("79031234567.alerts@x", "", "hi"))
    assert code == 550 and "419" in text


async def test_accepted_domains(bridge_factory: BridgeFactory, provider: SmsTrafficDouble) -> None:
    bridge = await bridge_factory(upstreams=upstreams(provider), accounts=accounts(),
                                  smtp={"accepted_domains": ["sms.example"]})
    assert (await send(bridge.smtp_port, mail("alerts@sms.example", "79161234567", "x")))[0] == 250
    code, _ = await send(bridge.smtp_port, mail("alerts@other.example", "79161234567", "x"))
    assert code == 550


async def test_mail_rate_limit_answers_451_then_recovers_nothing_lost(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await bridge_factory(upstreams=upstreams(provider),
                                  accounts=accounts(mail_rate_per_minute=3))
    codes = [
        (await send(bridge.smtp_port, mail("alerts@x", "79161234567", f"n{i}")))
        for i in range(4)
    ]
    assert [c for c, _ in codes] == [250, 250, 250, 451]
    assert codes[3][1].startswith("4.7.1")
    await provider.wait_for_accepted(3)
    assert db_rows(bridge, "SELECT COUNT(*) FROM messages") == [(3,)]


async def test_store_unavailable_answers_451_4_3_0(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await bridge_factory(upstreams=upstreams(provider), accounts=accounts(),
                                  store={"busy_timeout": 0.2})
    path = bridge.settings.store.url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        code, text = await send(bridge.smtp_port, mail("alerts@x", "79161234567", "x"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert code == 451 and text.startswith("4.3.0")
    # Once the store is back the resent mail is accepted and sent.
    assert (await send(bridge.smtp_port, mail("alerts@x", "79161234567", "x")))[0] == 250
    await provider.wait_for_accepted(1)


async def test_unexpected_error_is_451_without_internals(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(bridge.store, "enqueue", broken)
    client = await RawSmtp.connect(bridge.smtp_port)
    await client.cmd("EHLO t")
    await client.cmd("MAIL FROM:<a@example.com>")
    await client.cmd("RCPT TO:<alerts@x>")
    assert (await client.cmd("DATA"))[0] == 354
    await client.write(b"Subject: 79161234567\r\n\r\nhello\r\n.\r\n")
    code, text = await client.reply()
    await client.close()
    assert code == 451 and "secret" not in text and "RuntimeError" not in text


async def test_resent_mail_with_same_message_id_is_sent_once(
    bridge: Bridge, provider: SmsTrafficDouble
) -> None:
    message = mail("alerts@x", "79161234567", "only once", message_id="<fixed-1@example.com>")
    first = await send(bridge.smtp_port, message)
    second = await send(bridge.smtp_port, message)
    assert first[0] == 250 and second[0] == 250
    assert "duplicate" in second[1].lower()
    await provider.wait_for_accepted(1)
    # A different recipient of the same Message-ID is a different send.
    other = await send(bridge.smtp_port, message, recipients=["79031112233.alerts@x"])
    assert other[0] == 250
    await provider.wait_for_accepted(2)
    assert db_rows(bridge, "SELECT COUNT(*) FROM messages") == [(2,)]


async def test_long_lines_from_legacy_clients_are_accepted(
    bridge: Bridge, provider: SmsTrafficDouble
) -> None:
    text = "A" * 3000
    raw = (f"Subject: 79161234567\r\nMessage-ID: <long@x>\r\n\r\n{text}\r\n").encode()
    code, _ = await send(bridge.smtp_port, raw, recipients=["alerts@x"])
    assert code == 250
    [sms] = await provider.wait_for_accepted(1)
    assert sms.message == text


@pytest.mark.parametrize(
    "smuggle",
    [b"\n.\r\n", b"\n.\n", b"\r\n.\n", b"\r.\r\n"],
    ids=["LF.CRLF", "LF.LF", "CRLF.LF", "CR.CRLF"],
)
async def test_smtp_smuggling_does_not_inject_a_second_mail(
    bridge: Bridge, provider: SmsTrafficDouble, smuggle: bytes
) -> None:
    client = await RawSmtp.connect(bridge.smtp_port)
    await client.cmd("EHLO attacker")
    await client.cmd("MAIL FROM:<a@example.com>")
    assert (await client.cmd("RCPT TO:<alerts@x>"))[0] == 250
    assert (await client.cmd("DATA"))[0] == 354
    payload = (
        b"Subject: 79161234567\r\n\r\nfirst mail"
        + smuggle
        + b"MAIL FROM:<a@example.com>\r\nRCPT TO:<79035550000.alerts@x>\r\nDATA\r\n"
        b"Subject: x\r\n\r\nsmuggled\r\n.\r\n"
    )
    await client.write(payload)
    code, text = await client.reply()
    # Whatever the client sends next is a command of this session, not a second mail.
    await client.cmd("QUIT")
    await client.close()
    phones = db_rows(bridge, "SELECT phone FROM messages")
    if smuggle == b"\r\n.\n":
        # aiosmtpd un-stuffs "." + LF as a dot-stuffed line: no trace is left in the data, and
        # the smuggled lines are only text of the one mail.
        assert code == 250, text
        assert phones == [("79161234567",)]
        [sms] = await provider.wait_for_accepted(1)
        assert "smuggled" in sms.message
    else:
        assert code == 550, text
        assert phones == []
        assert provider.requests == []


async def test_smuggled_block_inside_v2_body_is_refused(
    bridge: Bridge, provider: SmsTrafficDouble
) -> None:
    body = (
        "login: alerts\n\npassword: pw1\n\nphones: 79161234567\n\nmessage: hi\n\n"
        "MAIL FROM:<a@example.com>\nRCPT TO:<multi@x>\n"
    )
    code, text = await send(bridge.smtp_port, mail("multi@x", "s", body))
    assert code == 550 and "441" in text
    assert provider.requests == []


async def test_bare_lf_client_times_out_and_queues_nothing(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await bridge_factory(upstreams=upstreams(provider), accounts=accounts(),
                                  smtp={"timeout": 1.0})
    client = await RawSmtp.connect(bridge.smtp_port)
    await client.cmd("EHLO legacy")
    await client.cmd("MAIL FROM:<a@example.com>")
    await client.cmd("RCPT TO:<alerts@x>")
    assert (await client.cmd("DATA"))[0] == 354
    await client.write(b"Subject: 79161234567\n\nbare LF body\n.\n")
    # A bare-LF end of data is not an end of data: the session times out and closes.
    with pytest.raises(ConnectionError):
        await client.reply(timeout=10)
    await client.close()
    assert db_rows(bridge, "SELECT COUNT(*) FROM messages") == [(0,)]


async def test_idle_timeout_counts_from_the_last_command(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await bridge_factory(upstreams=upstreams(provider), accounts=accounts(),
                                  smtp={"timeout": 0.6})
    client = await RawSmtp.connect(bridge.smtp_port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for pause in (0.25, 0.25, 0.25, 0.25, 0.0):  # busy longer than the timeout, idle less
        await asyncio.sleep(pause)
        assert (await client.cmd("NOOP"))[0] == 250
    last = loop.time()
    assert last - started > 0.9
    with pytest.raises(ConnectionError):
        await client.reply(timeout=10)  # idle now: closed about one timeout later
    assert 0.5 < loop.time() - last < 3.0
    await client.close()


async def test_windows_1251_body_and_encoded_subject(
    bridge: Bridge, provider: SmsTrafficDouble
) -> None:
    raw = (
        b"Subject: =?windows-1251?B?Nzk=?= =?utf-8?Q?161234567?=\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=windows-1251\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
    ) + "Сервер недоступен\r\n".encode("cp1251") + b"\r\n"
    code, text = await send(bridge.smtp_port, raw, recipients=["alerts@x"])
    assert code == 250, text
    [sms] = await provider.wait_for_accepted(1)
    assert (sms.phone, sms.message) == ("79161234567", "Сервер недоступен")


async def test_huge_mail_is_refused_with_552(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await bridge_factory(upstreams=upstreams(provider), accounts=accounts(),
                                  smtp={"max_message_size": 4096})
    raw = b"Subject: 79161234567\r\n\r\n" + b"x" * 900 + b"\r\n" + (b"y" * 900 + b"\r\n") * 6
    code, _ = await send(bridge.smtp_port, raw, recipients=["alerts@x"])
    assert code == 552
    assert provider.requests == []


async def test_auth_plain_on_loopback_and_wrong_password_gets_535(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await bridge_factory(
        upstreams=upstreams(provider),
        accounts={**accounts(), "other": {"password": "p", "upstream": "st"}},
    )
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=bridge.smtp_port, timeout=10)
    await client.connect()
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
        await client.login("alerts", "wrong")
    assert refused.value.code == 535
    await client.login("alerts", "pw1")
    await client.sendmail("anyone@anywhere.org", ["79161234567.alerts@x"], b"Subject: s\r\n\r\nhi")
    # Authenticated as alerts, the session may not use another account.
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as other:
        await client.sendmail("anyone@anywhere.org", ["79161234567.other@x"], b"\r\nhi")
    assert "5.7.1" in str(other.value)
    await client.quit()
    await provider.wait_for_accepted(1)


async def test_auth_attempts_per_connection_are_capped(bridge: Bridge) -> None:
    client = await RawSmtp.connect(bridge.smtp_port)
    await client.cmd("EHLO t")
    codes = []
    for _ in range(5):
        try:
            codes.append((await client.cmd("AUTH PLAIN AGFsZXJ0cwB3cm9uZw=="))[0])
        except ConnectionError:
            break
    await client.close()
    assert codes[:3] == [535, 535, 535]
    assert 421 in codes[3:]


async def test_auth_requires_tls_when_loopback_exception_is_off(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await bridge_factory(upstreams=upstreams(provider), accounts=accounts(),
                                  smtp={"auth_allow_plaintext_on_loopback": False})
    client = await RawSmtp.connect(bridge.smtp_port)
    _, ehlo = await client.cmd("EHLO t")
    code, _ = await client.cmd("AUTH PLAIN AGFsZXJ0cwBwdzE=")
    await client.close()
    assert "AUTH" not in ehlo
    assert code == 538


async def test_connections_per_address_are_capped(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await bridge_factory(upstreams=upstreams(provider), accounts=accounts(),
                                  smtp={"max_connections_per_ip": 2})
    first = await RawSmtp.connect(bridge.smtp_port)
    second = await RawSmtp.connect(bridge.smtp_port)
    # Clients that spoke keep their slots (a silent one would be closed to make room:
    # test_smtp_hostile.py::test_an_idle_flood_leaves_room_for_a_client_that_speaks).
    assert (await first.cmd("EHLO a"))[0] == 250
    assert (await second.cmd("EHLO b"))[0] == 250
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.smtp_port)
    greeting = await reader.readline()
    writer.close()
    assert greeting.startswith(b"421 4.7.0")
    await first.close()
    await second.close()


async def test_address_forms_and_mail_parameters(bridge: Bridge) -> None:
    client = await RawSmtp.connect(bridge.smtp_port)
    await client.cmd("EHLO t")
    # Parameters after a plain path are still seen by aiosmtpd (SIZE over the limit).
    code, _ = await client.cmd("MAIL FROM:<a@example.com> SIZE=999999999")
    assert code == 552
    assert (await client.cmd("MAIL FROM:<a@example.com> SIZE=100"))[0] == 250
    # Forms outside the fast path go to aiosmtpd's full parser.
    assert (await client.cmd("RCPT TO:< alerts@x >"))[0] == 250
    assert (await client.cmd('RCPT TO:<"john doe"@x>'))[0] == 550
    assert (await client.cmd("RCPT TO:<broken"))[0] >= 500
    await client.cmd("QUIT")
    await client.close()

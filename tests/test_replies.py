"""A helpdesk agent's e-mail reply to a forwarded SMS becomes an SMS with only the agent's words.

The corpus in ``tests/replies/`` holds replies written the way Thunderbird, Gmail, Outlook
(desktop, web, mobile), Apple Mail, Yandex and Mail.ru write them, in English and Russian,
top-posted, bottom-posted and interleaved, in the MIME shapes and charsets those clients send;
``tests/replies/expected.toml`` gives the exact SMS text for each. Every reply goes through a
real SMTP conversation with the bridge, to the Reply-To address of a real forwarded SMS, and
must reach the provider double as exactly that text.
"""

from __future__ import annotations

import base64
import binascii
import time
import tomllib
from collections.abc import AsyncIterator
from email import message_from_bytes
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bridge.app import Bridge
from bridge.errors import IntakeError
from bridge.models import StoredMessage
from bridge.parsing.mail import parse_mail, parse_recipient
from bridge.parsing.replies import (
    ReplyTrimming,
    empty_reply_message,
    extract_reply,
    html_reply_text,
    unflow,
)
from bridge.parsing.requests import build_v1_requests
from bridge.parsing.text import html_to_text
from bridge.relays.email import build_bounce, thread_headers
from bridge.settings import AccountSettings, MailSettings
from tests.conftest import BridgeFactory
from tests.doubles.mailbox import MailboxDouble
from tests.doubles.smstraffic import SmsTrafficDouble
from tests.test_smtp_intake import send

CORPUS = Path(__file__).parent / "replies"
EXPECTED: dict[str, dict[str, Any]] = tomllib.loads(
    (CORPUS / "expected.toml").read_text(encoding="utf-8")
)
CUSTOMER = "79161234567"
REPLY_ADDRESS = f"{CUSTOMER}.helpdesk@sms.example"


def corpus_mail(case: str) -> bytes:
    return (CORPUS / f"{case}.eml").read_bytes()


@pytest.fixture
async def provider() -> AsyncIterator[SmsTrafficDouble]:
    async with SmsTrafficDouble(login="acme", password="s3cret") as double:
        yield double


def helpdesk_account(**extra: Any) -> dict[str, Any]:
    """The account replies come in through, trimming as the README recommends."""
    return {"password": "hd", "upstream": "st", "allowed_senders": ["*@desk.example"],
            "trim_quoted": True, "trim_signature": True, **extra}


async def start(bridge_factory: BridgeFactory, mailbox: MailboxDouble,
                provider: SmsTrafficDouble, **account: Any) -> Bridge:
    return await bridge_factory(
        inbound={
            "sources": {"st": {"secret": "src-secret"}},
            "routes": [{"emails": ["help@desk.example"]}],
            "reply_account": "helpdesk",
            "reply_domain": "sms.example",
        },
        upstreams={"st": {"kind": "smstraffic_v1", "base_url": provider.url, "login": "acme",
                          "password": "s3cret"}},
        accounts={"helpdesk": helpdesk_account(**account)},
        mail={"smarthost": "127.0.0.1", "smarthost_port": mailbox.port,
              "from_address": "sms-bridge@sms.example"},
    )


async def forwarded_sms(bridge: Bridge, mailbox: MailboxDouble) -> str:
    """A customer's SMS arrives and is forwarded to the helpdesk; its Reply-To is returned."""
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            f"http://127.0.0.1:{bridge.http_port}/in/st/src-secret/mo",
            params={"phone": CUSTOMER, "message": "Где мой заказ 1234?", "sms_id": "loop-1"},
        )
    assert answer.status_code == 200
    [forwarded] = await mailbox.wait_for(1)
    reply_to = str(forwarded.message["Reply-To"])
    assert reply_to == REPLY_ADDRESS
    return reply_to


# --- the corpus ---------------------------------------------------------------------------


def test_corpus_covers_every_client_language_style_and_mime_variant() -> None:
    assert len(EXPECTED) >= 30
    assert {path.stem for path in CORPUS.glob("*.eml")} == set(EXPECTED)
    pairs = {(entry["client"], entry["language"]) for entry in EXPECTED.values()}
    for client in ("thunderbird", "gmail", "outlook", "outlook-web", "apple", "yandex", "mailru"):
        assert {(client, "en"), (client, "ru")} <= pairs, client
    assert {entry["style"] for entry in EXPECTED.values()} == {"top", "bottom", "interleaved"}
    variants = {v for entry in EXPECTED.values() for v in entry["variants"]}
    assert {"html-only", "multipart/alternative", "quoted-printable", "base64", "cp1251",
            "koi8-r", "flowed", "delsp", "wrapped-attribution"} <= variants
    for case, entry in EXPECTED.items():
        message = message_from_bytes(corpus_mail(case))
        assert message["To"] == REPLY_ADDRESS, case
        assert entry["sms"] and entry["sms"] == entry["sms"].strip(), case


@pytest.mark.parametrize("case", sorted(EXPECTED))
async def test_corpus_reply_reaches_the_customer_as_exactly_the_agents_words(
    case: str, bridge_factory: BridgeFactory, mailbox: MailboxDouble,
    provider: SmsTrafficDouble,
) -> None:
    entry = EXPECTED[case]
    bridge = await start(bridge_factory, mailbox, provider, **entry.get("account", {}))
    reply_to = await forwarded_sms(bridge, mailbox)
    code, text = await send(bridge.smtp_port, corpus_mail(case), sender="anna@desk.example",
                            recipients=[reply_to])
    assert code == 250, text
    [sms] = await provider.wait_for_accepted(1)
    assert (sms.phone, sms.message) == (CUSTOMER, entry["sms"])


# --- a reply with nothing of the agent's own ----------------------------------------------


async def test_a_reply_that_is_only_the_quote_is_refused_quoting_what_was_received(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, provider: SmsTrafficDouble,
) -> None:
    bridge = await start(bridge_factory, mailbox, provider)
    reply_to = await forwarded_sms(bridge, mailbox)
    raw = (
        f"From: anna@desk.example\r\nTo: {reply_to}\r\nSubject: Re: SMS\r\n"
        "Message-ID: <empty-1@desk.example>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "On 03.12.2026 14:05, sms-bridge@sms.example wrote:\r\n"
        "> Где мой заказ 1234?\r\n\r\n-- \r\nAnna\r\n"
    ).encode()
    code, text = await send(bridge.smtp_port, raw, sender="anna@desk.example",
                            recipients=[reply_to])
    assert code == 550
    assert text == (
        "5.6.0 405 No text of your own left to send as an SMS: the reply holds only quoted "
        "text or a signature. Write your answer above or below the quote. Received: "
        '"On 03.12.2026 14:05, sms-bridge@sms.example wrote: > Gde moy zakaz 1234? -- Anna"'
    )
    assert provider.accepted == []


# --- the same corpus through the pure functions -------------------------------------------


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_corpus_reply_is_extracted_by_the_parsing_functions(case: str) -> None:
    entry = EXPECTED[case]
    mail = parse_mail(corpus_mail(case), legacy_charset="windows-1251", max_header_bytes=65536)
    account = AccountSettings(**{**helpdesk_account(**entry.get("account", {})),
                                 "password": SecretStr("hd")})
    [request] = build_v1_requests("helpdesk", account, parse_recipient(REPLY_ADDRESS), mail)
    assert request.text == entry["sms"]


# --- the extractor, line by line ----------------------------------------------------------

QUOTED = ReplyTrimming(quoted=True)
BOTH = ReplyTrimming(quoted=True, signature=True)
SIGNATURE = ReplyTrimming(signature=True)
CLOSING = ReplyTrimming(quoted=True, signature=True, signature_starts=("С уважением",))

EXTRACTOR_TABLE: list[tuple[str, ReplyTrimming, str, str]] = [
    # (what it shows, trimming, text, expected)
    ("no trimming asked: unchanged", ReplyTrimming(), "a\n\n\n> b\n-- \nc\n",
     "a\n\n\n> b\n-- \nc\n"),
    ("quote lines dropped, text kept", QUOTED, "Yes, agreed.\n> Can you?\n>> earlier\nThanks",
     "Yes, agreed.\nThanks"),
    ("top-posting", BOTH,
     "Yes.\n\nOn 03.12.2026 14:05, X wrote:\n> Can you?", "Yes."),
    ("bottom-posting", BOTH,
     "On 03.12.2026 14:05, X wrote:\n> Can you?\n\nYes.\n-- \nAnna", "Yes."),
    ("interleaving keeps every answer", BOTH,
     "On 03.12.2026 14:05, X wrote:\n> One?\nFirst.\n> Two?\n\nSecond.", "First.\n\nSecond."),
    ("an unquoted original after the attribution is dropped", QUOTED,
     "New reply\n\n1 января 2024 г., Иван писал(а):\nold text\nmore old text", "New reply"),
    ("Thunderbird RU", QUOTED, "03.12.2026 14:05, Иван Петров пишет:\n> Где?\n\nЗдесь.",
     "Здесь."),
    ("Gmail EN", QUOTED,
     "Here.\n\nOn Thu, Dec 3, 2026 at 2:05 PM Ivan <i@x.ru> wrote:\n\n> Where?\n>", "Here."),
    ("Gmail EN wrapped", QUOTED,
     "Here.\n\nOn Thu, Dec 3, 2026 at 2:05 PM Ivan Petrov <\nivan@example.com> wrote:\n> Where?",
     "Here."),
    ("Gmail RU", QUOTED, "Здесь.\n\nчт, 3 дек. 2026 г. в 14:05, Иван <i@x.ru>:\n\n> Где?",
     "Здесь."),
    ("Gmail RU wrapped", QUOTED,
     "Здесь.\n\nчт, 3 дек. 2026 г. в 14:05, Иван Петров <\ni@x.ru>:\n\n> Где?", "Здесь."),
    ("Apple Mail RU", QUOTED,
     "3 дек. 2026 г., в 14:05, Иван <i@x.ru> написал(а):\n\n> Где?\n\nЗдесь.", "Здесь."),
    ("Yandex", QUOTED, '03.12.2026, 14:05, "Иван" <i@x.ru>:\n> Где?\n\nЗдесь.', "Здесь."),
    ("Mail.ru RU", QUOTED,
     "Четверг, 3 декабря 2026, 14:05 +03:00 от Иван <i@x.ru>:\n>Где?\nЗдесь.", "Здесь."),
    ("Mail.ru without angle brackets", QUOTED,
     "Здесь.\n\nЧетверг, 3 декабря 2026, 14:05 +03:00 от i@x.ru:\n>Где?", "Здесь."),
    ("German, from mail-parser-reply's patterns", QUOTED,
     "Hier.\n\nAm 03.12.2026 um 14:05 schrieb Ivan <i@x.ru>:\n> Wo?", "Hier."),
    ("French, from mail-parser-reply's patterns", QUOTED,
     "Ici.\n\nLe 3 déc. 2026 à 14:05, Ivan <i@x.ru> a écrit :\n> Où ?", "Ici."),
    ("Outlook EN header block", QUOTED,
     "Done.\n\nFrom: X <x@y.ru>\nSent: Thursday, December 3, 2026 2:05 PM\nTo: h@d.ru\n"
     "Subject: SMS\n\nold", "Done."),
    ("Outlook RU header block", QUOTED,
     "Готово.\n\nОт: X <x@y.ru>\nОтправлено: 3 декабря 2026 г. 14:05\nКому: h@d.ru\n"
     "Тема: SMS\n\nстарое", "Готово."),
    ("Outlook for Mac: Date instead of Sent, bold names", QUOTED,
     "Done.\n\n*From:* X <x@y.ru>\n*Date:* Thursday, 3 December 2026 at 14:05\n*To:* h@d.ru\n"
     "\nold", "Done."),
    ("Outlook separator EN", QUOTED, "Done.\n-----Original Message-----\nold", "Done."),
    ("Outlook separator RU with spaces", QUOTED, "Готово.\n----- Исходное сообщение -----\nold",
     "Готово."),
    ("Outlook web underscores before a header block", QUOTED,
     "Done.\n\n________________________________\nFrom: X <x@y.ru>\nSent: Thu\nTo: h@d.ru\nold",
     "Done."),
    ("underscores without a header block are text", QUOTED,
     "Sign here:\n____________________\nThanks", "Sign here:\n____________________\nThanks"),
    ("opening hours are not a header block", QUOTED,
     "We are open\nFrom: Monday to Friday\nTo: Saturday closed",
     "We are open\nFrom: Monday to Friday\nTo: Saturday closed"),
    ("a lone From: line is text", QUOTED, "Hello\nFrom: John <j@x>\nold text",
     "Hello\nFrom: John <j@x>\nold text"),
    ("an attribution needs a date", QUOTED,
     "On Monday the courier wrote:\nall good", "On Monday the courier wrote:\nall good"),
    ("an undated 'Name wrote:' (a Thunderbird setting) only before a quote", QUOTED,
     "Yes.\n\nAnna Smirnova wrote:\n\n> Q?\nThe customer пишет:\nplease call",
     "Yes.\n\nThe customer пишет:\nplease call"),
    ("a sentence before a one-line attribution stays", QUOTED,
     "Order 1234 is ready.\n03.12.2026 14:05, Ivan пишет:\n> Where?", "Order 1234 is ready."),
    ("a time and an address in the agent's text are not an attribution", QUOTED,
     "Call us at 10:00 or write to help@acme.ru: we answer fast.",
     "Call us at 10:00 or write to help@acme.ru: we answer fast."),
    ("signature separator", SIGNATURE, "Hello\nworld\n-- \nJohn\n+7 916", "Hello\nworld"),
    ("bare double dash", SIGNATURE, "Hello\n--\nJohn", "Hello"),
    ("dashes inside lines are text", SIGNATURE, "Price -- 10 rub\n--- not a separator\n -- neither",
     "Price -- 10 rub\n--- not a separator\n -- neither"),
    ("without quote trimming a signature runs to the end", SIGNATURE,
     "Yes.\n-- \nAnna\nOn 03.12.2026 14:05, X wrote:\n> Q?\nmore", "Yes."),
    ("a signature above the quote ends at the quote (Gmail bottom-post)", BOTH,
     "-- \nAnna\n\nOn 03.12.2026 14:05, X wrote:\n> Q?\n\nAnswer.", "Answer."),
    ("Sent from my iPhone", BOTH, "Yes.\n\nSent from my iPhone\n\n> On 3 Dec 2026 X wrote:\n> Q?",
     "Yes."),
    ("Отправлено с iPhone", BOTH, "Да.\n\nОтправлено с iPhone", "Да."),
    ("Mail.ru mobile footer", BOTH, "Да.\n\nОтправлено из мобильной Почты Mail.ru", "Да."),
    ("Get Outlook for Android", BOTH, "Yes.\n\nGet Outlook for Android<https://aka.ms/x>", "Yes."),
    ("a footer phrase inside a sentence is text", BOTH,
     "Отправлено из Москвы сегодня, курьер позвонит.",
     "Отправлено из Москвы сегодня, курьер позвонит."),
    ("a footer only with signature trimming", QUOTED, "Да.\n\nОтправлено с iPhone",
     "Да.\n\nОтправлено с iPhone"),
    ("С уважением, when the account asks", CLOSING,
     "Готово.\n\nС уважением,\nАнна\n\nОт: X <x@y.ru>\nОтправлено: 3 дек\nКому: h@d.ru\nстарое",
     "Готово."),
    ("С уважением kept when the account does not ask", BOTH, "Готово.\n\nС уважением,\nАнна",
     "Готово.\n\nС уважением,\nАнна"),
    ("mail-parser-reply's closing heuristics are not used", BOTH,
     "Hello Ivan.\nThanks, we will call you tomorrow.\n- 2 pizzas\n-79161234567",
     "Hello Ivan.\nThanks, we will call you tomorrow.\n- 2 pizzas\n-79161234567"),
    ("blank runs become one, edges trimmed", BOTH, "\n\nA\n\n\n\nB  \n\n", "A\n\nB"),
    ("only a quote leaves nothing", BOTH, "On 03.12.2026 14:05, X wrote:\n> Q?\n-- \nAnna", ""),
]


@pytest.mark.parametrize(("trimming", "text", "expected"),
                         [row[1:] for row in EXTRACTOR_TABLE],
                         ids=[row[0] for row in EXTRACTOR_TABLE])
def test_extract_reply(trimming: ReplyTrimming, text: str, expected: str) -> None:
    assert extract_reply(text, trimming) == expected


@pytest.mark.parametrize(
    "attribution",
    [
        "On Mon, 1 Jan 2024 at 10:00, John <j@x> wrote:",
        "1 января 2024 г., Иван писал(а):",
        "Пн, 1 янв. 2024 Иван написал(а):",
        "-----Original Message-----",
        "----- Исходное сообщение -----",
        "From: John <j@x>\nSent: Monday, January 1, 2024 10:00\nTo: desk@x",
    ],
)
def test_an_unquoted_original_after_an_attribution_or_header_is_dropped(attribution: str) -> None:
    text = f"New reply\n\n{attribution}\nold text\nmore old text"
    assert extract_reply(text, QUOTED) == "New reply"
    assert extract_reply(f"{text}\n", ReplyTrimming()) == f"{text}\n"  # nothing asked


def test_crafted_attribution_like_lines_cannot_stall_the_intake() -> None:
    """mail-parser-reply's patterns backtrack: these 6,000 lines took 6 s without the caps."""
    lines = [(f"On {n} " + "a " * 95)[:190] + ":" for n in range(6000)]
    started = time.perf_counter()
    assert extract_reply("\n".join([*lines, "Answer."]), BOTH).endswith("Answer.")
    assert time.perf_counter() - started < 2.0


UNFLOW_TABLE: list[tuple[str, str, bool, str]] = [
    ("soft break joined", "call you \nbefore delivery.", False, "call you before delivery."),
    ("hard break kept", "one\ntwo", False, "one\ntwo"),
    ("DelSp=yes deletes the added space", "за \nчас, arri\u0020\nval", True, "зачас, arrival"),
    ("DelSp=yes keeps a space of the text", "за  \nчас", True, "за час"),
    ("quoted lines join at the same depth", "> long \n> line\n>> other", False,
     "> long line\n>> other"),
    ("a flowed line before another depth is fixed", "text \n> quote", False, "text \n> quote"),
    ("space-stuffing removed", " From here\n >not a quote", False, "From here\n>not a quote"),
    ("the signature separator is not flowed", "-- \nAnna", False, "-- \nAnna"),
    ("CRLF", "a \r\nb\r\n", False, "ab\n".replace("ab", "a b")),
    ("last line flowed", "end ", False, "end"),
]


@pytest.mark.parametrize(("text", "delsp", "expected"), [row[1:] for row in UNFLOW_TABLE],
                         ids=[row[0] for row in UNFLOW_TABLE])
def test_unflow(text: str, delsp: bool, expected: str) -> None:
    assert unflow(text, delsp=delsp) == expected


@pytest.mark.parametrize("cte", ["8bit", "quoted-printable", "base64"])
@pytest.mark.parametrize("multipart", [False, True])
def test_flowed_mail_is_joined_whatever_its_transfer_encoding(cte: str, multipart: bool) -> None:
    text = "Курьер позвонит за \r\nчас, arri\r\nval.\r\n> цитата  \r\n> дальше\r\n"
    text = text.replace("arri\r\n", "arri \r\n")
    data = text.encode("utf-8")
    if cte == "quoted-printable":
        data = binascii.b2a_qp(data.replace(b"\r\n", b"\n"), istext=True).replace(b"\n", b"\r\n")
    elif cte == "base64":
        data = base64.encodebytes(data).replace(b"\n", b"\r\n")
    part = ("Content-Type: text/plain; charset=utf-8; format=flowed; DelSp=Yes\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode() + data
    if multipart:
        part = (b"Content-Type: multipart/alternative; boundary=B\r\n\r\n--B\r\n" + part
                + b"\r\n--B\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--B--\r\n")
    raw = b"Subject: x\r\nMIME-Version: 1.0\r\n" + part
    mail = parse_mail(raw, legacy_charset="windows-1251", max_header_bytes=65536)
    assert mail.text == "Курьер позвонит зачас, arrival.\n> цитата дальше"


def test_trailing_spaces_without_format_flowed_are_hard_breaks() -> None:
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"\r\nline one \r\nline two\r\n")
    assert parse_mail(raw, legacy_charset="cp1251", max_header_bytes=65536).text == (
        "line one\nline two")


def test_html_reply_text_marks_blockquotes_and_keeps_the_rest_readable() -> None:
    markup = (
        "<html><head><style>p{}</style></head><body><div>Answer&nbsp;one</div>"
        "<div class='gmail_quote'><div>On Thu, Dec 3, 2026 at 2:05 PM X &lt;x@y.ru&gt; wrote:"
        "<br></div><blockquote>Q1<br>still Q1<blockquote>older</blockquote></blockquote></div>"
        "<p>Answer two</p><hr><script>evil()</script></body></html>"
    )
    text = html_reply_text(markup)
    assert text == (
        "Answer\u00a0one\n\nOn Thu, Dec 3, 2026 at 2:05 PM X <x@y.ru> wrote:\n\n> Q1\n"
        "> still Q1\n>> older\n\nAnswer two"
    )
    # The same lines as the plain conversion, only marked.
    unmarked = "\n".join(line.lstrip("> ") for line in text.split("\n"))
    assert unmarked == html_to_text(markup).strip("\n")


@pytest.mark.parametrize(
    ("received", "excerpt"),
    [
        ("> Где мой заказ?", '"> Gde moy zakaz?"'),
        ('He said "hi"\r\n\tthere', "\"He said 'hi' there\""),
        ("x" * 300, '"' + "x" * 117 + '..."'),
        ("\u2603 snow", '"? snow"'),
    ],
)
def test_empty_reply_message_quotes_a_short_ascii_excerpt(received: str, excerpt: str) -> None:
    message = empty_reply_message(received)
    assert message.endswith(f"Received: {excerpt}")
    assert message.isascii() and "\n" not in message
    assert len(IntakeError(550, "5.6.0", message, 405).smtp_reply()) <= 410


# --- mails the bridge answers with ---------------------------------------------------------


@pytest.mark.parametrize("valid", [True, False])
async def test_v2_answer_refers_to_the_mail_it_answers(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, provider: SmsTrafficDouble,
    valid: bool,
) -> None:
    bridge = await start(bridge_factory, mailbox, provider)
    phones = CUSTOMER if valid else "123"
    raw = (
        "From: erp@desk.example\r\nTo: multi@sms.example\r\nSubject: batch 7\r\n"
        "Message-ID: <batch-7@desk.example>\r\nReferences: <batch-1@desk.example>\r\n\r\n"
        f"login: helpdesk\r\n\r\npassword: hd\r\n\r\nphones: {phones}\r\n\r\n"
        "message: hello\r\n\r\nreply_to_email: 1\r\n"
    ).encode()
    code, _ = await send(bridge.smtp_port, raw, sender="erp@desk.example",
                         recipients=["multi@sms.example"])
    assert code == (250 if valid else 550)
    [answer] = await mailbox.wait_for(1)
    assert answer.rcpt_tos == ["erp@desk.example"]
    assert answer.message["In-Reply-To"] == "<batch-7@desk.example>"
    assert answer.message["References"] == "<batch-1@desk.example> <batch-7@desk.example>"


def test_bounce_final_recipient_is_an_address() -> None:
    message = StoredMessage(
        id=7, account="alerts", upstream="st", phone="79165550000", text="x", parts=1,
        encoding="gsm7", status="failed", attempts=1, created_at=0.0,
        mail_from="monitor@example.com",
    )
    bounce = build_bounce(MailSettings(), "bridge.example", message, "432 blocked phone")
    assert bounce is not None
    report = message_from_bytes(bounce.content)
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    fields = [part for part in status.get_payload() if part.get("Final-Recipient")]
    [per_recipient] = fields
    kind, _, address = per_recipient["Final-Recipient"].partition(";")
    assert kind == "rfc822"
    assert address.strip() == "79165550000.alerts@bridge.example"
    assert parseaddr(address.strip()) == ("", "79165550000.alerts@bridge.example")
    assert per_recipient["Action"] == "failed" and per_recipient["Status"] == "5.0.0"


@pytest.mark.parametrize(
    ("message_id", "references", "expected"),
    [
        ("<a@x>", None, {"In-Reply-To": "<a@x>", "References": "<a@x>"}),
        ("<b@x>", "<r1@x>\t<r2@x> junk <b@x>",
         {"In-Reply-To": "<b@x>", "References": "<r1@x> <r2@x> <b@x>"}),
        ("<c@x>", " ".join(f"<r{n}@x>" for n in range(30)),
         {"In-Reply-To": "<c@x>",
          "References": " ".join([*(f"<r{n}@x>" for n in range(21, 30)), "<c@x>"])}),
        (None, "<r@x>", {}),
        ("no-brackets@x", None, {}),
        ("<a@x> <b@x>", None, {}),
        ("<a@x>", "<r@x>\r\nBcc: victim@x", {"In-Reply-To": "<a@x>", "References": "<r@x> <a@x>"}),
    ],
)
def test_thread_headers(message_id: str | None, references: str | None,
                        expected: dict[str, str]) -> None:
    assert thread_headers(message_id, references) == expected

"""Mails the bridge sends itself: bounces (DSN) and SMTP v2 ``reply_to_email`` answers.

They are committed with the decision (so none is lost) and sent later by
:class:`MailRelay` through the configured smarthost with aiosmtplib. Bounces and v2 error
replies are queued as built mails; the answer about queued v2 messages is queued as data in
the transaction of those messages (kind ``v2_answer``) and rendered here when it is sent
(:func:`render_v2_answer`), so the store builds no mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import quopri
import re
import time
from collections.abc import Sequence
from datetime import UTC
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, make_msgid
from xml.sax.saxutils import escape

import aiosmtplib

from bridge import metrics
from bridge.errors import StoreUnavailable
from bridge.models import V2_ANSWER_KIND, OutboundMail, ReplyRequest, StoredMessage
from bridge.outbox.retry import RetryPolicy
from bridge.parsing.mail import raw_headers_map
from bridge.redact import redact_text
from bridge.relays.worker import ClaimLoop
from bridge.settings import MailSettings
from bridge.store.base import OutboxStore

log = logging.getLogger(__name__)


def render_reply_xml(
    code: int, description: str, infos: Sequence[tuple[str, str]] = (), *, ok: bool
) -> bytes:
    """The HTTP API v1 reply (002 line 794), as SMTP v2 ``reply_to_email`` mails it back."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<reply>",
        f"  <result>{'OK' if ok else 'ERROR'}</result>",
        f"  <code>{code}</code>",
        f"  <description>{escape(description)}</description>",
    ]
    if infos:
        lines.append("  <message_infos>")
        for phone, sms_id in infos:
            lines += [
                "    <message_info>",
                f"      <phone>{escape(phone)}</phone>",
                f"      <sms_id>{escape(sms_id)}</sms_id>",
                "    </message_info>",
            ]
        lines.append("  </message_infos>")
    lines.append("</reply>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _base_message(settings: MailSettings, to: str, subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.from_address
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime_now()
    message["Message-ID"] = make_msgid(domain=settings.from_address.rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-replied"
    return message


def format_datetime_now() -> str:
    from datetime import datetime

    return format_datetime(datetime.now(UTC))


_MSG_ID = re.compile(r"<[^<>\s]+>")
_MAX_REFERENCES = 10  # RFC 5322 §3.6.4 lets a long References list be shortened


def thread_headers(message_id: str | None, references: str | None) -> dict[str, str]:
    """``In-Reply-To`` and ``References`` of an answer to the mail with these headers.

    RFC 5322 §3.6.4: In-Reply-To is the parent's Message-ID; References is the parent's
    References (or In-Reply-To) followed by its Message-ID. Only well-formed ``<id>`` tokens
    are copied, so nothing else of the incoming header reaches ours.
    """
    parent = _MSG_ID.findall(message_id or "")
    if len(parent) != 1:
        return {}
    chain = [ref for ref in _MSG_ID.findall(references or "") if ref != parent[0]]
    chain = [*chain[-(_MAX_REFERENCES - 1):], parent[0]]
    return {"In-Reply-To": parent[0], "References": " ".join(chain)}


def build_v2_reply(
    settings: MailSettings, to: str, xml: bytes, original_subject: str, *,
    message_id: str | None = None, references: str | None = None,
    own_message_id: str | None = None,
) -> OutboundMail:
    """The ``reply_to_email`` answer, threaded to the request mail (``message_id`` and
    ``references`` are that mail's headers); ``own_message_id`` is the answer's own
    Message-ID (a fresh one if None)."""
    message = _base_message(settings, to, f"Re: {original_subject}".strip()[:200])
    if own_message_id is not None:
        message.replace_header("Message-ID", own_message_id)
    for name, value in thread_headers(message_id, references).items():
        message[name] = value
    message.set_content(xml.decode("utf-8"), subtype="xml", charset="utf-8")
    return OutboundMail("v2_reply", to, message.as_bytes())


def render_v2_answer(settings: MailSettings, mail_id: int, content: bytes) -> OutboundMail:
    """The mail of a queued ``v2_answer`` row (a :class:`bridge.models.ReplyRequest` and the
    ids of the messages it answers for, 002 line 1811): the HTTP API v1 XML listing each
    message's phone and sms_id when they were asked for. Its Message-ID comes from the row
    (its id, and a digest of its content so that two bridges' stores do not collide), so
    every attempt to send it is the same mail to the receiving side (RFC 5322 §3.6.4)."""
    request, ids = ReplyRequest.from_payload(content)
    infos = ([(phone, str(i)) for phone, i in zip(request.phones, ids, strict=True)]
             if request.want_sms_ids else [])
    xml = render_reply_xml(0, f"queued {len(ids)} messages", infos, ok=True)
    domain = settings.from_address.rpartition("@")[2] or "localhost"
    digest = hashlib.sha256(content).hexdigest()[:16]
    return build_v2_reply(settings, request.mail_to, xml, request.subject,
                          message_id=request.message_id, references=request.references,
                          own_message_id=f"<v2-answer.{mail_id}.{digest}@{domain}>")


def _original_headers_part(block: bytes) -> Message:
    """The failed mail's header block as ``text/rfc822-headers`` (RFC 6522 §3.3, the
    optional third part of a report, RFC 3464 §2). As received, in 7bit when it is ASCII
    in lines SMTP can carry (RFC 5321 §4.5.3.1.6: 998 octets), else quoted-printable."""
    part = Message()
    part.set_type("text/rfc822-headers")
    del part["MIME-Version"]
    text = block.replace(b"\r\n", b"\n")
    if text.isascii() and all(len(line) <= 998 for line in text.split(b"\n")):
        part.set_payload(text.decode("ascii"))
        part["Content-Transfer-Encoding"] = "7bit"
    else:
        part.set_payload(quopri.encodestring(text).decode("ascii"))
        part["Content-Transfer-Encoding"] = "quoted-printable"
    return part


def build_bounce(settings: MailSettings, hostname: str, message: StoredMessage,
                 error: str) -> OutboundMail | None:
    """A delivery status notification (RFC 3464) to the envelope sender of a failed SMS,
    threaded to the mail the SMS came from (``In-Reply-To``, ``References``: RFC 5322
    §3.6.4) and carrying that mail's stored header block."""
    reason = " ".join(redact_text(error).split())[:300]  # the sender sees no secret
    return _status_report(
        settings, hostname, message, "bounce", f"Undelivered SMS to +{message.phone}",
        f"Your message to {message.phone} could not be sent as an SMS.\n\n"
        f"Reason: {reason}\nMessage id: {message.id}\nAttempts: {message.attempts}\n\n"
        f"Text:\n{message.text[:1000]}\n",
        action="failed", status="5.0.0", reason=reason)


def build_held_notice(settings: MailSettings, hostname: str, message: StoredMessage,
                      error: str) -> OutboundMail | None:
    """A notice to the envelope sender of an SMS held as ``ambiguous``: it may or may not
    have been sent, and it is not sent again until an operator says so. RFC 3464 has no
    "unknown" action: ``delayed`` (4.0.0) is the nearest, as the SMS waits for a decision."""
    reason = " ".join(redact_text(error).split())[:300]
    return _status_report(
        settings, hostname, message, "held", f"SMS to +{message.phone} may have been sent",
        f"Your message to {message.phone} may or may not have been sent as an SMS: the "
        "provider's answer to an earlier request was lost, and this provider cannot be "
        "asked whether it took the SMS. It is not sent again, so that the phone does not "
        "get it twice; an operator of the bridge settles it with "
        f"`sms-bridge resolve {message.id} --sent` or `--resend`.\n\n"
        f"Reason: {reason}\nMessage id: {message.id}\nAttempts: {message.attempts}\n\n"
        f"Text:\n{message.text[:1000]}\n",
        action="delayed", status="4.0.0", reason=reason)


def _status_report(settings: MailSettings, hostname: str, message: StoredMessage, kind: str,
                   subject: str, human: str, *, action: str, status: str,
                   reason: str) -> OutboundMail | None:
    """A multipart/report (RFC 3464) about one SMS to its mail's envelope sender."""
    to = message.mail_from
    if not settings.bounces or not to or to == "<>":
        return None  # a null sender must never get a bounce (RFC 5321 §4.5.5)
    original = message.mail_headers.encode("utf-8", "surrogateescape")
    references = raw_headers_map(original).get(b"references")
    report = MIMEMultipart("report", report_type="delivery-status")
    for key, value in _base_message(settings, to, subject).items():
        report[key] = value
    for key, value in thread_headers(
            message.mail_message_id,
            references.decode("ascii", "replace") if references else None).items():
        report[key] = value
    report.attach(MIMEText(human, "plain", "utf-8"))
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_recipient = Message()
    # RFC 3464 §2.3.2 wants an address of the named type, and a bare phone number is no
    # rfc822 address: the bridge's own v1 address for this SMS is given, PHONE.login@host
    # (002 line 1768), which names both the number and the account.
    per_recipient["Final-Recipient"] = f"rfc822; {message.phone}.{message.account}@{hostname}"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    per_recipient["Diagnostic-Code"] = f"x-sms; {reason.encode('ascii', 'replace').decode()}"
    report_part = Message()
    report_part.set_type("message/delivery-status")
    del report_part["MIME-Version"]
    report_part.set_payload([per_message, per_recipient])
    report.attach(report_part)
    if original:
        report.attach(_original_headers_part(original))
    return OutboundMail(kind, to, report.as_bytes())


async def send_via_smarthost(
    settings: MailSettings, to: str, content: bytes, *, sender: str = ""
) -> aiosmtplib.SMTPResponse:
    """One mail through the configured smarthost; the smarthost's reply to the data (RFC
    5321 §4.1.1.4: the reply that says the mail was taken). The default null reverse-path
    means a bounce, a reply or a forwarded SMS can never bounce back to the bridge (RFC
    5321)."""
    if settings.smarthost is None:
        raise aiosmtplib.SMTPException("no smarthost configured ([mail] smarthost)")
    password = settings.password.get_secret_value() if settings.password else None
    client = aiosmtplib.SMTP(
        hostname=settings.smarthost,
        port=settings.smarthost_port,
        start_tls=settings.starttls,
        username=settings.username,
        password=password,
        timeout=settings.command_timeout,
    )
    # Everything up to the data within command_timeout; then up to mail.timeout for the
    # reply to the data (RFC 5321 §4.5.3.2.6: 10 minutes). The commands are sent one by
    # one, so each refusal comes with its own reply code (see is_permanent_smtp_error).
    try:
        async with asyncio.timeout(settings.command_timeout):
            await client.connect()  # greeting, EHLO, STARTTLS, AUTH
            await client.mail(sender)
            await client.rcpt(to)
        # aiosmtplib's timeout is per read or write: the whole DATA phase gets one deadline.
        async with asyncio.timeout(settings.timeout):
            taken = await client.data(content, timeout=settings.timeout)
    except BaseException:
        client.close()
        raise
    # The mail is taken: a QUIT that fails or hangs changes nothing and is not an error.
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
        async with asyncio.timeout(settings.command_timeout):
            await client.quit()
    client.close()
    return taken


def is_permanent_smtp_error(exc: BaseException) -> bool:
    """A 5yz reply at any stage (RFC 5321 §4.2.1: "permanent negative completion"):
    connecting, EHLO, AUTH, MAIL, RCPT or DATA. aiosmtplib raises a different class at each
    (``SMTPConnectResponseError``, ``SMTPHeloError``, ``SMTPAuthenticationError``,
    ``SMTPSenderRefused``, ``SMTPRecipientRefused``, ``SMTPDataError``, all
    ``SMTPResponseException`` with a ``code``; and ``sendmail`` wraps refused recipients
    in ``SMTPRecipientsRefused``, which has none): the reply code decides, not the class.
    4yz, timeouts and dropped connections are transient."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return bool(exc.recipients) and all(is_permanent_smtp_error(r) for r in exc.recipients)
    return isinstance(exc, aiosmtplib.SMTPResponseException) and 500 <= exc.code < 600


class MailRelay(ClaimLoop):
    """Sends queued outgoing mail through the smarthost, retrying with backoff."""

    def __init__(self, store: OutboxStore, settings: MailSettings, poll_interval: float = 1.0,
                 max_attempts: int = 20, *, owner: str) -> None:
        super().__init__()
        self.owner = owner
        self.store = store
        self.settings = settings
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.policy = RetryPolicy(base=5.0, cap=900.0)

    async def claim_and_handle(self) -> bool:
        batch = await self.store.claim_mails(self.owner, time.time(), 20, 120.0)
        for mail_id, mail, attempts in batch:
            await self._send(mail_id, mail, attempts)
        return bool(batch)

    async def _send(self, mail_id: int, mail: OutboundMail, attempts: int) -> None:
        if mail.kind == V2_ANSWER_KIND:
            try:
                mail = render_v2_answer(self.settings, mail_id, mail.content)
            except (ValueError, KeyError, TypeError) as exc:  # a row no sending can mend
                log.error("unreadable v2 answer row", extra={"mail_id": mail_id,
                                                             "error": str(exc)})
                with contextlib.suppress(StoreUnavailable):
                    await self.store.mail_retry(mail_id, self.owner,
                                                f"unreadable v2 answer: {exc}"[:500], None)
                return
        try:
            await send_via_smarthost(self.settings, mail.mail_to, mail.content)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            give_up = is_permanent_smtp_error(exc) or attempts >= self.max_attempts
            log.warning("outgoing mail failed", extra={"mail_id": mail_id, "kind": mail.kind,
                                                       "error": str(exc), "give_up": give_up})
            metrics.OUTGOING_MAIL.labels(outcome="failed" if give_up else "retry").inc()
            next_at = None if give_up else time.time() + self.policy.backoff(attempts)
            with contextlib.suppress(StoreUnavailable):
                await self.store.mail_retry(mail_id, self.owner, str(exc)[:500], next_at)
            return
        metrics.OUTGOING_MAIL.labels(outcome="sent").inc()
        log.info("outgoing mail sent", extra={"mail_id": mail_id, "kind": mail.kind})
        with contextlib.suppress(StoreUnavailable):
            await self.store.mail_done(mail_id, self.owner, time.time())

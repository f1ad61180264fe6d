"""Mails the bridge sends itself: bounces (DSN) and SMTP v2 ``reply_to_email`` answers.

They are built while the decision is committed (so none is lost) and sent later by
:class:`MailRelay` through the configured smarthost with aiosmtplib.
"""

from __future__ import annotations

import contextlib
import logging
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
from bridge.models import OutboundMail, StoredMessage
from bridge.outbox.retry import RetryPolicy
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


def build_v2_reply(
    settings: MailSettings, to: str, xml: bytes, original_subject: str
) -> OutboundMail:
    message = _base_message(settings, to, f"Re: {original_subject}".strip()[:200])
    message.set_content(xml.decode("utf-8"), subtype="xml", charset="utf-8")
    return OutboundMail("v2_reply", to, message.as_bytes())


def build_bounce(settings: MailSettings, hostname: str, message: StoredMessage,
                 error: str) -> OutboundMail | None:
    """A delivery status notification (RFC 3464) to the envelope sender of a failed SMS."""
    to = message.mail_from
    if not settings.bounces or not to or to == "<>":
        return None  # a null sender must never get a bounce (RFC 5321 §4.5.5)
    reason = " ".join(error.split())[:300]
    report = MIMEMultipart("report", report_type="delivery-status")
    for key, value in _base_message(settings, to, f"Undelivered SMS to +{message.phone}").items():
        report[key] = value
    report.attach(MIMEText(
        f"Your message to {message.phone} could not be sent as an SMS.\n\n"
        f"Reason: {reason}\nMessage id: {message.id}\nAttempts: {message.attempts}\n\n"
        f"Text:\n{message.text[:1000]}\n",
        "plain",
        "utf-8",
    ))
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_recipient = Message()
    per_recipient["Final-Recipient"] = f"rfc822; {message.phone}"
    per_recipient["Action"] = "failed"
    per_recipient["Status"] = "5.0.0"
    per_recipient["Diagnostic-Code"] = f"x-sms; {reason.encode('ascii', 'replace').decode()}"
    status = Message()
    status.set_type("message/delivery-status")
    del status["MIME-Version"]
    status.set_payload([per_message, per_recipient])
    report.attach(status)
    return OutboundMail("bounce", to, report.as_bytes())


async def send_via_smarthost(
    settings: MailSettings, to: str, content: bytes, *, sender: str = ""
) -> None:
    """One mail through the configured smarthost. The default null reverse-path means a
    bounce, a reply or a forwarded SMS can never bounce back to the bridge (RFC 5321)."""
    if settings.smarthost is None:
        raise aiosmtplib.SMTPException("no smarthost configured ([mail] smarthost)")
    password = settings.password.get_secret_value() if settings.password else None
    client = aiosmtplib.SMTP(
        hostname=settings.smarthost,
        port=settings.smarthost_port,
        start_tls=settings.starttls,
        username=settings.username,
        password=password,
        timeout=settings.timeout,
    )
    async with client:
        await client.sendmail(sender, [to], content)


def is_permanent_smtp_error(exc: BaseException) -> bool:
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

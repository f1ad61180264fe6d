"""The SMTP intake handler: aiosmtpd calls its ``handle_*`` hooks; it validates, persists and
replies — nothing is delivered inside the SMTP transaction.

Refusals come at the earliest stage that can know them (RCPT for the address, DATA for the
content), with a standard reply code and the spec's API error code in the text
(002 line 1988). 250 is answered only after the sends are committed to the store.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bridge import metrics
from bridge.errors import IntakeError, StoreUnavailable
from bridge.models import EnqueueResult, MailEnvelope, ReplyRequest, SendRequest
from bridge.outbox.ratelimit import SlidingWindowCounter
from bridge.parsing.mail import (
    ParsedMail,
    Recipient,
    capped_header_block,
    parse_mail,
    parse_recipient,
    parse_v2_body,
)
from bridge.parsing.phones import normalize_phone
from bridge.parsing.requests import (
    authenticate_v2,
    build_v1_requests,
    build_v2_requests,
    check_phone_allowed,
    numeric_originator_max,
)
from bridge.redact import redact_mail
from bridge.relays.email import build_v2_reply, render_reply_xml
from bridge.settings import AccountSettings, Settings
from bridge.store.base import OutboxStore
from bridge.store.console import MAX_TRACE_BYTES

log = logging.getLogger(__name__)

TEMPFAIL = "451 4.3.0 Temporary local problem, please try again later"

# An end-of-data marker written with a bare LF or CR (``<LF>.<CR><LF>`` and variants) is the
# SMTP smuggling trick: aiosmtpd 1.4.6 keeps it inside one body, and a relay that treats it
# as the end would see a second mail. Such a body is refused, never split or guessed at.
_SMUGGLED_END = re.compile(rb"(?<!\r)\n\.(?:\r?\n|\r)|\r\n\.(?:\n|\r(?!\n))|\r(?!\n)\.(?:\r?\n)")


def smuggled_end(raw: bytes) -> bool:
    """Whether ``raw`` holds a bare CR or LF around a ``.`` line (:data:`_SMUGGLED_END`).
    Each such sequence holds ``\\n.`` or ``\\r.``: a substring test, far cheaper than the
    regex's lookarounds over every byte, spares the regex the mails without one."""
    return (b"\n." in raw or b"\r." in raw) and _SMUGGLED_END.search(raw) is not None


# Metric children resolved once, not per mail.
_ACCEPTED_BY_FORMAT = {fmt: metrics.MAILS_ACCEPTED.labels(format=fmt) for fmt in ("v1", "v2")}

_UNANSWERED_MAX = 10_000

# The most of a mail's header block the store keeps, for the bounce (whole fields).
MAX_STORED_HEADERS = 16 * 1024


@dataclass
class _Unanswered:
    task: asyncio.Future[EnqueueResult]
    since: float  # time.monotonic() when the client was answered without the outcome


@dataclass
class _Rcpt:
    recipient: Recipient
    login: str | None
    account: AccountSettings | None


def in_networks(peer_ip: str | None, networks: list[str]) -> bool:
    """Whether the client address lies in one of ``networks`` (none given: no)."""
    try:
        address = ipaddress.ip_address(peer_ip or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)


def sender_allowed(account: AccountSettings, mail_from: str, peer_ip: str | None) -> bool:
    """Envelope-sender patterns and client networks; each list, when set, must match."""
    if account.allowed_senders:
        sender = mail_from.lower()
        if not any(fnmatch.fnmatchcase(sender, p.lower()) for p in account.allowed_senders):
            return False
    return not account.allowed_networks or in_networks(peer_ip, account.allowed_networks)


class IntakeHandler:
    def __init__(
        self,
        settings: Settings,
        store: OutboxStore,
        *,
        on_enqueued: Callable[[], None] = lambda: None,
        on_mail_queued: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.on_enqueued = on_enqueued
        self.on_mail_queued = on_mail_queued
        self.clock = clock
        self.mail_rate = SlidingWindowCounter(60.0)
        # Live bridge processes sharing the store: each allows its share of an account's
        # mail rate, so the limit holds for the cluster as a whole.
        self.cluster_size = 1
        self.domains = {d.lower() for d in settings.smtp.accepted_domains}
        # Per account (by canonical login), worked out at its first mail: the settings do
        # not change while the handler lives.
        self._numeric_max: dict[str, int] = {}
        # Enqueues that outlived ``store_deadline`` (answered 451) or their connection, by a
        # digest of the mail and its envelope. They are not cancelled - a store call given
        # up may still commit - so the client's retry is matched with its earlier attempt:
        # the mail is queued once, with or without a Message-ID for the store to dedup on.
        self._unanswered: dict[bytes, _Unanswered] = {}

    # -- hooks ----------------------------------------------------------------------------

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default answers "500 Error: (Class) text": permanent, and leaks internals.
        log.exception("unexpected error in SMTP session", exc_info=error)
        metrics.MAILS_REJECTED.labels(reason="internal").inc()
        return TEMPFAIL

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        try:
            rcpt = self._check_rcpt(session, envelope, address)
        except IntakeError as exc:
            metrics.MAILS_REJECTED.labels(reason=exc.reason).inc()
            log.info("recipient refused", extra={"rcpt": address, "reply": exc.smtp_reply()})
            return exc.smtp_reply()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        rcpts: list[_Rcpt] = getattr(envelope, "bridge_rcpts", [])
        rcpts.append(rcpt)
        envelope.bridge_rcpts = rcpts
        return "250 2.1.5 OK"

    def _check_rcpt(self, session: Any, envelope: Any, address: str) -> _Rcpt:
        recipient = parse_recipient(address)
        if self.domains and recipient.domain not in self.domains:
            raise IntakeError(550, "5.7.1", f"Relaying to {recipient.domain} is not allowed")
        if recipient.is_v2:
            if any(r.recipient.is_v2 for r in getattr(envelope, "bridge_rcpts", [])):
                raise IntakeError(452, "4.5.3", "One multi@ recipient per mail")
            return _Rcpt(recipient, None, None)
        assert recipient.login is not None
        account = self.settings.account(recipient.login)
        if account is None:
            raise IntakeError(550, "5.1.1", f"No such account: {recipient.login[:64]}")
        login = self.settings.canonical_login(recipient.login)
        self._check_sender(session, envelope, login, account)
        if recipient.phone is not None:
            check_phone_allowed(account, normalize_phone(recipient.phone))
        self._check_rate(login, account)
        return _Rcpt(recipient, login, account)

    def _check_sender(
        self, session: Any, envelope: Any, login: str, account: AccountSettings
    ) -> None:
        auth_login = session.auth_data if getattr(session, "authenticated", False) else None
        if isinstance(auth_login, str):
            if auth_login.lower() != login.lower():
                raise IntakeError(550, "5.7.1", f"Authenticated as {auth_login}, not {login}")
            return  # AUTH proved the identity; sender lists are for unauthenticated clients
        peer = session.peer[0] if isinstance(session.peer, tuple) else None
        if not sender_allowed(account, envelope.mail_from or "", peer):
            raise IntakeError(550, "5.7.1", "Sender is not allowed to use this account")

    def _check_rate(self, login: str, account: AccountSettings) -> None:
        # 002 line 1768: "не более 100 писем в минуту" is the recommended limit.
        limit = account.mail_rate_per_minute
        if limit > 0:
            limit = max(1, limit // self.cluster_size)
        if not self.mail_rate.allow(login, limit):
            raise IntakeError(451, "4.7.1", "Mail rate limit exceeded, try again later")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        try:
            return await self._accept(session, envelope)
        except IntakeError as exc:
            metrics.MAILS_REJECTED.labels(reason=exc.reason).inc()
            log.info("mail refused", extra={"mail_from": envelope.mail_from,
                                            "reply": exc.smtp_reply()})
            if exc.reply is not None:
                try:
                    async with asyncio.timeout(self.settings.smtp.store_deadline):
                        await self.store.queue_mail(exc.reply, self.clock())
                    self.on_mail_queued()
                except (StoreUnavailable, TimeoutError):
                    log.warning("could not queue the v2 error reply")
            return exc.smtp_reply()
        except StoreUnavailable as exc:
            metrics.MAILS_REJECTED.labels(reason="store_unavailable").inc()
            log.warning("mail deferred: %s", exc)
            return "451 4.3.0 Message store unavailable, please try again later"

    # -- the mail -------------------------------------------------------------------------

    async def _accept(self, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content or b""
        if smuggled_end(raw):
            raise IntakeError(550, "5.6.0", "Bare CR or LF around '.' in message data refused")
        rcpts: list[_Rcpt] = getattr(envelope, "bridge_rcpts", [])
        now = self.clock()
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        mail_from = envelope.mail_from or ""
        legacy = next((r.account.legacy_charset for r in rcpts if r.account), "windows-1251")
        mail = parse_mail(raw, legacy_charset=legacy,
                          max_header_bytes=self.settings.smtp.max_header_bytes)

        batches: list[tuple[str | None, list[SendRequest]]] = []
        reply: ReplyRequest | None = None
        fmt = "v1"
        for rcpt in rcpts:
            if rcpt.recipient.is_v2:
                fmt = "v2"
                requests, reply = self._v2(session, envelope, mail, now)
            else:
                assert rcpt.login is not None and rcpt.account is not None
                longest = self._numeric_max.get(rcpt.login)
                if longest is None:
                    longest = self._numeric_max[rcpt.login] = numeric_originator_max(
                        self.settings, rcpt.account)
                requests = build_v1_requests(rcpt.login, rcpt.account, rcpt.recipient, mail,
                                             numeric_originator_max=longest)
            key = None
            if mail.message_id:
                key = f"{mail.message_id}\0{rcpt.recipient.address.lower()}"
            batches.append((key, requests))

        envelope_info = MailEnvelope(
            mail_from=mail_from,
            recipients=tuple(envelope.rcpt_tos),
            message_id=mail.message_id,
            peer=peer,
            format=fmt,
            headers=capped_header_block(raw, MAX_STORED_HEADERS),
            # For the operators' console: the mail as received, redacted and capped.
            raw=redact_mail(raw, v2_text=mail.text if fmt == "v2" else None,
                            limit=MAX_TRACE_BYTES)
            if self.settings.store.trace_retention_days > 0 else b"",
            raw_size=len(raw),
        )
        digest = hashlib.sha256(b"\0".join(
            [mail_from.encode("utf-8", "surrogateescape"),
             *(r.encode("utf-8", "surrogateescape") for r in envelope.rcpt_tos), raw]
        )).digest()

        def enqueue() -> Awaitable[EnqueueResult]:
            return self._enqueue(envelope_info, batches, now, reply)

        result, earlier = await self._enqueue_within_deadline(
            digest, enqueue, fmt=fmt, replies=reply is not None)
        if earlier and not result.duplicate:
            log.info("retry of a mail queued after its attempt was answered 451",
                     extra={"messages": list(result.message_ids), "mail_from": mail_from})
            return (f"250 2.0.0 Queued by an earlier attempt ({len(result.message_ids)} "
                    "messages), not sent twice")
        if result.duplicate:
            metrics.MAILS_DUPLICATE.inc()
            log.info("duplicate mail recognised", extra={"message_id_hdr": mail.message_id})
            return "250 2.0.0 Already queued (duplicate Message-ID), not sent twice"
        _ACCEPTED_BY_FORMAT[fmt].inc()
        metrics.MESSAGES_QUEUED.inc(len(result.message_ids))
        self.on_enqueued()
        if reply is not None:
            self.on_mail_queued()
        ids = ",".join(str(i) for i in result.message_ids[:20])
        more = "…" if len(result.message_ids) > 20 else ""
        if log.isEnabledFor(logging.INFO):  # no per-mail dict when the level is higher
            log.info("mail queued", extra={"format": fmt, "messages": list(result.message_ids),
                                           "mail_from": mail_from})
        return f"250 2.0.0 Queued {len(result.message_ids)} messages: {ids}{more}"

    async def _enqueue(
        self, envelope: MailEnvelope,
        batches: list[tuple[str | None, list[SendRequest]]], now: float,
        reply: ReplyRequest | None,
    ) -> EnqueueResult:
        """Commit the mail's sends and, in the same transaction, the v2 answer it asked for
        (as data: the mail relay renders it), so no SMS goes out without its answer."""
        return await self.store.enqueue(envelope, batches, now=now,
                                        dedup_window=self.settings.smtp.duplicate_window,
                                        reply=reply)

    async def _enqueue_within_deadline(
        self, digest: bytes, enqueue: Callable[[], Awaitable[EnqueueResult]], *, fmt: str,
        replies: bool,
    ) -> tuple[EnqueueResult, bool]:
        """The store's answer within ``store_deadline``, else StoreUnavailable (451 4.3.0):
        a store stuck on a lock (another process's transaction, a PostgreSQL table lock)
        would otherwise keep the client waiting as long as the lock is held.

        Returns the result and whether it belongs to an earlier attempt of the same mail
        (one that was answered 451, or lost its connection, and committed afterwards)."""
        earlier = self._unanswered.get(digest)
        if earlier is not None and earlier.task.done() and (
            earlier.task.cancelled() or earlier.task.exception() is not None
        ):
            del self._unanswered[digest]  # it failed: this attempt starts afresh
            earlier = None
        task = earlier.task if earlier is not None else asyncio.ensure_future(enqueue())
        try:
            async with asyncio.timeout(self.settings.smtp.store_deadline):
                result = await asyncio.shield(task)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if earlier is None:
                self._remember_unanswered(digest, task, fmt, replies)
            if isinstance(exc, asyncio.CancelledError):
                raise  # the connection is gone; the retry will find the attempt
            log.warning("store did not answer within store_deadline: mail deferred",
                        extra={"deadline": self.settings.smtp.store_deadline})
            raise StoreUnavailable("store did not answer in time") from None
        except StoreUnavailable:
            if earlier is not None:
                self._unanswered.pop(digest, None)
            raise
        return result, earlier is not None

    def _remember_unanswered(self, digest: bytes, task: asyncio.Future[EnqueueResult],
                             fmt: str, replies: bool) -> None:
        unanswered = self._unanswered
        unanswered[digest] = _Unanswered(task, time.monotonic())
        # Kept as long as a resent Message-ID is recognised; the oldest go first past a cap
        # (each entry holds one small result once its store call has ended).
        horizon = time.monotonic() - self.settings.smtp.duplicate_window
        while unanswered:
            oldest_key = next(iter(unanswered))
            oldest = unanswered[oldest_key]
            if oldest.since > horizon and len(unanswered) <= _UNANSWERED_MAX:
                break
            del unanswered[oldest_key]

        def committed(done: asyncio.Future[EnqueueResult]) -> None:
            # What the SMTP transaction would have done after a timely commit.
            if done.cancelled() or done.exception() is not None:
                log.warning("a mail answered 451 was not queued; the client's retry will be")
                return
            result = done.result()
            if result.duplicate:
                return
            log.info("mail queued after its attempt was answered",
                     extra={"format": fmt, "messages": list(result.message_ids)})
            _ACCEPTED_BY_FORMAT[fmt].inc()
            metrics.MESSAGES_QUEUED.inc(len(result.message_ids))
            self.on_enqueued()
            if replies:
                self.on_mail_queued()

        task.add_done_callback(committed)

    def _v2(
        self, session: Any, envelope: Any, mail: ParsedMail, now: float
    ) -> tuple[list[SendRequest], ReplyRequest | None]:
        fields = parse_v2_body(mail.text)
        login, account = authenticate_v2(self.settings, fields)
        self._check_sender(session, envelope, login, account)
        self._check_rate(login, account)
        mail_from = envelope.mail_from or ""
        wants_reply = fields.get("reply_to_email", "").strip() == "1" and bool(mail_from)
        try:
            v2 = build_v2_requests(fields, login, account, now)
        except IntakeError as exc:
            if wants_reply:
                # The XML error goes back too (002 line 1811), but only once the sender has
                # authenticated: answering anyone would make the bridge a backscatter source.
                xml = render_reply_xml(exc.api_code or 0, exc.text, ok=False)
                exc.reply = build_v2_reply(self.settings.mail, mail_from, xml, mail.subject,
                                           message_id=mail.message_id,
                                           references=mail.references)
            raise
        if not v2.reply_to_email or not mail_from:
            return v2.requests, None
        reply = ReplyRequest(
            mail_to=mail_from, subject=mail.subject, message_id=mail.message_id,
            references=mail.references, want_sms_ids=v2.want_sms_ids,
            phones=tuple(r.phone for r in v2.requests))
        return v2.requests, reply

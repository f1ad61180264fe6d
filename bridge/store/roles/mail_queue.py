"""Mails the bridge sends itself (:class:`bridge.store.base.MailQueue`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from bridge.models import V2_ANSWER_KIND, OutboundMail, ReplyRequest
from bridge.redact import redact_text
from bridge.store.queries import Op, SqlRoles, count, rows, single
from bridge.store.rows import ClaimedMail, MailListing

MAIL_LIST_KEYS = ("id", "kind", "mail_to", "status", "attempts", "last_error", "created_at",
                  "content")


def insert_mail(mail: OutboundMail, now: float) -> Op[None]:
    yield count("insert_mail", mail.kind, mail.mail_to, mail.content, now, now)


def insert_v2_answer(reply: ReplyRequest, message_ids: Sequence[int], now: float) -> Op[None]:
    """The answer a v2 mail asked for, as data (see :class:`bridge.models.ReplyRequest`):
    queued in the transaction of the mail's messages."""
    yield from insert_mail(
        OutboundMail(V2_ANSWER_KIND, reply.mail_to, reply.payload(message_ids)), now)


def claim_mails(owner: str, now: float, limit: int,
                lease_seconds: float) -> Op[list[ClaimedMail]]:
    found = yield rows("claim_mails", owner, now + lease_seconds, now, now, limit)
    found = sorted(found, key=lambda r: (float(r[5]), int(r[0])))
    return [ClaimedMail(int(r[0]), OutboundMail(r[1], r[2], bytes(r[3])), int(r[4]))
            for r in found]


def mail_retry(mail_id: int, owner: str, error: str,
               next_attempt_at: float | None) -> Op[None]:
    error = redact_text(error)
    if next_attempt_at is None:
        yield count("mail_failed", error, mail_id, owner)
    else:
        yield count("mail_requeued", next_attempt_at, error, mail_id, owner)


def list_mails(limit: int) -> Op[list[MailListing]]:
    return [cast(MailListing, dict(zip(MAIL_LIST_KEYS, tuple(r), strict=True)))
            for r in (yield rows("list_mails", limit))]


class MailQueueMethods(SqlRoles):
    async def queue_mail(self, mail: OutboundMail, now: float) -> None:
        await self._write_op(lambda: insert_mail(mail, now))

    async def claim_mails(
        self, owner: str, now: float, limit: int, lease_seconds: float
    ) -> list[ClaimedMail]:
        return await self._lock_op(lambda: claim_mails(owner, now, limit, lease_seconds))

    async def mail_done(self, mail_id: int, owner: str, now: float) -> None:
        await self._write_op(lambda: single(count("mail_done", mail_id, owner)))

    async def mail_retry(
        self, mail_id: int, owner: str, error: str, next_attempt_at: float | None
    ) -> None:
        await self._write_op(lambda: mail_retry(mail_id, owner, error, next_attempt_at))

    async def list_mails(self, *, limit: int = 50) -> list[MailListing]:
        return await self._read_op(lambda: list_mails(limit))

"""Plain value types passed between the bridge's parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class MessageStatus(StrEnum):
    """The life of one outbound SMS (one phone) in the outbox."""

    QUEUED = "queued"  # committed, waiting for its time or its turn
    SENDING = "sending"  # claimed by a dispatcher under a lease
    SENT = "sent"  # the provider accepted it
    FAILED = "failed"  # failed for good; a bounce was queued if configured


@dataclass(frozen=True)
class SendRequest:
    """One SMS to one phone, as parsed from a mail, before it is stored."""

    account: str
    upstream: str
    phone: str
    text: str
    parts: int
    encoding: str
    originator: str | None = None
    flash: bool = False
    max_parts: int = 255
    not_before: float | None = None  # epoch seconds (v2 ``start_date``)
    validity: int | None = None  # seconds (v2 ``timeout``)
    transliterate: bool = False
    two_byte_concat: bool = False
    push_id: str | None = None
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class MailEnvelope:
    """What the bridge keeps of the mail a batch of sends came from."""

    mail_from: str
    recipients: tuple[str, ...]
    message_id: str | None
    peer: str
    format: str  # "v1" or "v2"
    reply_to_email: bool = False
    want_sms_ids: bool = False


@dataclass(frozen=True)
class OutboundMail:
    """A mail the bridge itself sends (bounce, ``reply_to_email`` answer)."""

    kind: str
    mail_to: str
    content: bytes


@dataclass
class StoredMessage:
    """One row of the outbox as the dispatcher and the CLI see it."""

    id: int
    account: str
    upstream: str
    phone: str
    text: str
    parts: int
    encoding: str
    status: str
    attempts: int
    created_at: float
    options: dict[str, Any] = field(default_factory=dict)
    upstream_ids: list[str] = field(default_factory=list)
    last_error: str | None = None
    mail_from: str = ""
    next_attempt_at: float = 0.0
    upstream_used: str | None = None

    @property
    def fallbacks(self) -> list[str]:
        return list(self.options.get("fallbacks", []))


@dataclass(frozen=True)
class EnqueueResult:
    """What a committed mail produced: message ids in order, or a recognised duplicate."""

    message_ids: tuple[int, ...]
    duplicate: bool = False

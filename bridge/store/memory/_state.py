"""The rows of the in-memory store (:mod:`bridge.store.memory`): one dictionary per table,
the rows as small mutable records, the same columns the engines' tables have."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.errors import StoreUnavailable
from bridge.models import (
    InboundMessage,
    InboundRecord,
    MailEnvelope,
    OutboundMail,
    SendOptions,
    StoredMessage,
    StoredResponse,
)
from bridge.store.rows import MessageEvent, ReplyScript, ReportListing


@dataclass
class Mail:
    id: int
    mail: OutboundMail
    created_at: float
    status: str = "queued"
    attempts: int = 0
    next_attempt_at: float = 0.0
    lease_owner: str | None = None
    lease_until: float | None = None
    last_error: str | None = None


@dataclass
class Inbound:
    id: int
    source: str
    message: InboundMessage
    content_hash: str
    state: str
    response: StoredResponse | None
    received_at: float
    script_error: str | None = None
    answer_until: float | None = None

    def record(self, *, duplicate: bool) -> InboundRecord:
        return InboundRecord(self.id, duplicate, self.state, self.response, self.received_at,
                             self.content_hash)


@dataclass
class Job:
    """A forwarding job of an inbound SMS."""

    id: int
    inbound_id: int
    kind: str
    target: str
    payload: bytes
    created_at: float
    next_attempt_at: float
    deadline: float
    status: str = "queued"
    attempts: int = 0
    last_error: str | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    thread_root: str | None = None


@dataclass
class Message:
    """An SMS of the outbox."""

    id: int
    mail_id: int
    account: str
    upstream: str
    phone: str
    text: str
    parts: int
    encoding: str
    options: SendOptions
    created_at: float
    next_attempt_at: float
    status: str = "queued"
    attempts: int = 0
    upstream_ids: list[str] = field(default_factory=list)
    last_error: str | None = None
    upstream_used: str | None = None
    delivery_status: str | None = None
    delivery_detail: str | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    lease_epoch: int = 0
    maybe_sent: int = 0
    next_poll_at: float | None = None
    poll_count: int = 0

    def holds(self, owner: str, epoch: int) -> bool:
        """Whether the claim ``(owner, epoch)`` still holds this message."""
        return (self.status == "sending" and self.lease_owner == owner
                and self.lease_epoch == epoch)

    def stored(self, envelope: MailEnvelope | None, *, headers: bool) -> StoredMessage:
        return StoredMessage(
            id=self.id, account=self.account, upstream=self.upstream, phone=self.phone,
            text=self.text, parts=self.parts, encoding=self.encoding, status=self.status,
            attempts=self.attempts, created_at=self.created_at, options=self.options,
            upstream_ids=list(self.upstream_ids), last_error=self.last_error,
            mail_from=envelope.mail_from if envelope else "",
            next_attempt_at=self.next_attempt_at, upstream_used=self.upstream_used,
            delivery_status=self.delivery_status,
            mail_message_id=envelope.message_id if envelope else None,
            mail_headers=(envelope.headers or b"").decode("utf-8", "surrogateescape")
            if headers and envelope else "",
            maybe_sent=self.maybe_sent, lease_epoch=self.lease_epoch)


class MemoryState:
    """The tables, and what every role checks first: that the store is open."""

    def __init__(self) -> None:
        self.schema_change: tuple[int, int] | None = None
        self._open = False
        self._mails: dict[int, Mail] = {}
        self._scripts: dict[int, ReplyScript] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._processes: dict[str, float] = {}
        self._meta: dict[str, str] = {}
        self._inbound: dict[int, Inbound] = {}
        self._jobs: dict[int, Job] = {}
        self._attempts: dict[int, list[tuple[int, float, str, str]]] = {}
        self._threads: dict[str, tuple[str, float]] = {}
        self._received: dict[int, tuple[MailEnvelope, float]] = {}
        self._messages: dict[int, Message] = {}
        self._events: dict[int, list[tuple[int, MessageEvent]]] = {}
        self._dedup: dict[str, tuple[int, float]] = {}
        self._intents: dict[int, dict[str, object]] = {}
        self._provider_ids: dict[str, int] = {}
        self._reports: dict[int, ReportListing] = {}
        self._next_id = 0

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _check(self) -> None:
        if not self._open:
            raise StoreUnavailable("store is not open")

    def _event(self, message_id: int, at: float, status: str, detail: str | None) -> None:
        self._events.setdefault(message_id, []).append(
            (self._id(), MessageEvent(at=at, status=status, detail=detail)))

    def _insert_mail(self, mail: OutboundMail, now: float) -> None:
        mail_id = self._id()
        self._mails[mail_id] = Mail(mail_id, mail, now, next_attempt_at=now)

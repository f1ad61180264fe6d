"""Plain value types passed between the bridge's parts."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class MessageStatus(StrEnum):
    """The life of one outbound SMS (one phone) in the outbox."""

    QUEUED = "queued"  # committed, waiting for its time or its turn
    SENDING = "sending"  # claimed by a dispatcher under a lease
    SENT = "sent"  # the provider accepted it
    FAILED = "failed"  # failed for good; a bounce was queued if configured
    # Held: an earlier request may have sent it and sending again could make a copy the
    # account does not allow (``ambiguous = "hold"``, or a second doubt under "resend");
    # nothing is sent until ``sms-bridge resolve`` says what happened.
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class SendOptions:
    """How one SMS is to be sent, beyond its phone and text: one value from the mail it came
    in to the provider's request. Parsed at intake (:class:`SendRequest`), stored with the
    message through one codec (:meth:`to_json`, :meth:`from_json`), read back with it
    (:class:`StoredMessage`) and handed to the provider (:class:`OutboundSms`)."""

    originator: str | None = None
    flash: bool = False
    max_parts: int = 255
    not_before: float | None = None  # epoch seconds (v2 ``start_date``)
    validity: int | None = None  # seconds (v2 ``timeout``)
    transliterate: bool = False
    two_byte_concat: bool = False
    push_id: str | None = None  # v2 ``with_push_id``: the sender's own id of this SMS
    fallbacks: tuple[str, ...] = ()  # the account's next upstreams, in order

    def to_json(self) -> str:
        """The options as the store keeps them: a JSON object, one key per field."""
        return json.dumps({
            "originator": self.originator,
            "flash": self.flash,
            "max_parts": self.max_parts,
            "not_before": self.not_before,
            "validity": self.validity,
            "transliterate": self.transliterate,
            "two_byte_concat": self.two_byte_concat,
            "push_id": self.push_id,
            "fallbacks": list(self.fallbacks),
        })

    @classmethod
    def from_json(cls, text: str | bytes) -> SendOptions:
        """The options :meth:`to_json` wrote; a key a row lacks (written before the field
        existed) or holds as null reads as the field's default."""
        if cls is SendOptions:
            return _options_from_json(text)
        return cls._decode(text)

    @classmethod
    def _decode(cls, text: str | bytes) -> SendOptions:
        stored: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in stored.items()
                  if key in known and value is not None}
        if "fallbacks" in values:
            values["fallbacks"] = tuple(values["fallbacks"])
        return cls(**values)


# Most messages carry the same few options (often all defaults): the frozen value of a
# stored text is worked out once, not once per message claimed.
@functools.lru_cache(maxsize=256)
def _options_from_json(text: str | bytes) -> SendOptions:
    return SendOptions._decode(text)


@dataclass(frozen=True)
class SendRequest:
    """One SMS to one phone, as parsed from a mail, before it is stored."""

    account: str
    upstream: str
    phone: str
    text: str
    parts: int
    encoding: str
    options: SendOptions = SendOptions()


@dataclass(frozen=True)
class MailEnvelope:
    """What the bridge keeps of the mail a batch of sends came from."""

    mail_from: str
    recipients: tuple[str, ...]
    message_id: str | None
    peer: str
    format: str  # "v1" or "v2"
    # The mail's header block, capped (a bounce carries it as text/rfc822-headers, RFC 3464).
    headers: bytes = b""
    # The mail as received, redacted and capped, for the operators' console (empty: not
    # kept), and its full size in bytes.
    raw: bytes = b""
    raw_size: int = 0


@dataclass(frozen=True)
class OutboundMail:
    """A mail the bridge itself sends (bounce, ``reply_to_email`` answer)."""

    kind: str
    mail_to: str
    content: bytes


V2_ANSWER_KIND = "v2_answer"


@dataclass(frozen=True)
class ReplyRequest:
    """The SMTP v2 ``reply_to_email`` answer a mail asks for (002 line 1811), as data.

    The store keeps it with the mail's messages in one transaction, as a row of the mail
    queue of kind :data:`V2_ANSWER_KIND` holding :meth:`payload` (this and the committed
    message ids): no SMS goes out without its answer queued. The mail relay renders the
    mail when it sends it (``bridge.relays.email.render_v2_answer``)."""

    mail_to: str
    subject: str
    message_id: str | None
    references: str | None
    want_sms_ids: bool
    phones: tuple[str, ...]

    def payload(self, message_ids: Sequence[int]) -> bytes:
        """The queue row's content: this request and the message ids, one per phone."""
        return json.dumps({
            "mail_to": self.mail_to, "subject": self.subject, "message_id": self.message_id,
            "references": self.references, "want_sms_ids": self.want_sms_ids,
            "phones": list(self.phones), "message_ids": [int(i) for i in message_ids],
        }, ensure_ascii=False).encode("utf-8")

    @staticmethod
    def from_payload(content: bytes) -> tuple[ReplyRequest, tuple[int, ...]]:
        data = json.loads(content.decode("utf-8"))
        request = ReplyRequest(
            mail_to=str(data["mail_to"]), subject=str(data["subject"]),
            message_id=data["message_id"], references=data["references"],
            want_sms_ids=bool(data["want_sms_ids"]),
            phones=tuple(str(p) for p in data["phones"]))
        return request, tuple(int(i) for i in data["message_ids"])


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
    options: SendOptions = SendOptions()
    upstream_ids: list[str] = field(default_factory=list)
    last_error: str | None = None
    mail_from: str = ""
    next_attempt_at: float = 0.0
    upstream_used: str | None = None
    delivery_status: str | None = None  # from the provider: delivered, undelivered …
    mail_message_id: str | None = None  # the Message-ID of the mail the SMS came from
    # That mail's stored header block (bytes as str, surrogateescape): only on claimed
    # messages, for the bounce.
    mail_headers: str = ""
    # Requests of this message whose fate is unknown: an intent left without an outcome (its
    # process died with the request in flight) or answered by an ambiguous failure (a
    # timeout, HTTP 5xx, a dropped connection). ``attempts`` counts the tries that ended.
    maybe_sent: int = 0
    # The claim's fencing token: each claim raises it, and an outcome is recorded only with
    # the owner and epoch of the claim that holds the message now.
    lease_epoch: int = 0

    @property
    def fallbacks(self) -> list[str]:
        return list(self.options.fallbacks)


@dataclass(frozen=True)
class OutboundSms:
    """One SMS to one phone, as handed to a provider: the stored message's text and
    :class:`SendOptions`, with what this attempt adds (its key, its number, the doubts)."""

    message_id: int
    idempotency_key: str  # unique per message and bridge; constant across retries
    attempt: int  # 1 for the first try: the tries that ended (a provider answered) + 1
    phone: str
    text: str
    encoding: str  # "gsm7" or "ucs2"
    options: SendOptions = SendOptions()
    # Earlier requests of this SMS whose fate is unknown: a process died with one in flight,
    # or one ended in an ambiguous failure (timeout, HTTP 5xx, dropped connection). While it
    # is 0 no earlier request can have been taken, whatever ``attempt`` says: no lookup is
    # needed, and a "duplicate" answer cannot mean "accepted before".
    maybe_sent: int = 0

    @property
    def host_turn(self) -> int:
        """Which host comes first (``HttpUpstream.request``): the primary while no earlier
        request may have been taken there, then the other one after each such."""
        return self.maybe_sent + 1


@dataclass(frozen=True)
class SendIntent:
    """A provider request about to be made, recorded durably before it is: the messages it
    may carry (those whose claim still held when it was recorded)."""

    id: int
    message_ids: tuple[int, ...]


@dataclass(frozen=True)
class SendOutcome:
    """What became of one message, committed with the other outcomes of the same request
    (and of no other) in one transaction, only while the claim ``lease_epoch`` holds.

    ``status``: ``sent``; ``queued`` (tried again at ``next_attempt_at``); ``failed`` (for
    good; ``mail`` is its bounce); ``ambiguous`` (held; ``mail`` is the notice to the sender);
    ``sending`` (the claim goes on: the account's next upstream is tried now). ``unknown``:
    the request may have sent it (an ambiguous failure), so the doubt it raised stays."""

    message_id: int
    lease_epoch: int
    status: str
    upstream: str = ""
    provider_ids: tuple[str, ...] = ()
    error: str | None = None
    next_attempt_at: float | None = None
    poll_at: float | None = None
    mail: OutboundMail | None = None
    unknown: bool = False


@dataclass(frozen=True)
class EnqueueResult:
    """What a committed mail produced: message ids in order, or a recognised duplicate."""

    message_ids: tuple[int, ...]
    duplicate: bool = False


@dataclass(frozen=True)
class InboundMessage:
    """An SMS pushed (or polled) from a provider: mobile-originated or a short-code hit."""

    source: str
    kind: str  # "mo" or "shortcode"
    sms_id: str | None
    phone: str
    text: str
    recipient: str | None = None  # receiving number or short code
    raw: bytes = b""  # the request's parameters as received
    charset: str = ""
    charset_error: bool = False

    @property
    def keyword(self) -> str:
        """The first word, case-insensitive (route and reply-script matching)."""
        words = self.text.split(maxsplit=1)
        return words[0].casefold() if words else ""


@dataclass(frozen=True)
class ForwardJob:
    """One delivery of an inbound message to one target, committed with the message."""

    kind: str  # "email" or "webhook"
    target: str  # address, or webhook name
    payload: bytes


@dataclass(frozen=True)
class StoredResponse:
    """The answer given to the first request with an ``sms_id``; replays get it again."""

    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True)
class InboundRecord:
    id: int
    duplicate: bool  # an earlier request had this sms_id (or content, without one)
    state: str  # "routed", "unrouted", "pending" (reply script running), "answered"
    response: StoredResponse | None
    received_at: float
    content_hash: str = ""  # of the stored message: a repeat with other content shows


@dataclass(frozen=True)
class DeliveryReport:
    """A provider's status for one sent SMS (002 lines 427 and 1100)."""

    provider_id: str
    status: str  # the bridge's status: delivered, undelivered, expired, rejected, unknown, sent
    raw_status: str
    error_code: int | None = None
    at: str = ""


@dataclass(frozen=True)
class ClaimedForward:
    id: int
    inbound_id: int
    kind: str
    target: str
    payload: bytes
    attempts: int
    deadline: float

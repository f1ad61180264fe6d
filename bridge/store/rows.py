"""What the store returns, typed: listings as typed dictionaries (the CLI, the console and the
admin API print them or send them as JSON, unchanged), claims as named tuples (their callers
unpack them). Messages and inbound records are the frozen dataclasses of
:mod:`bridge.models` (``StoredMessage``, ``InboundRecord``)."""

from __future__ import annotations

from typing import NamedTuple, TypedDict

from bridge.models import OutboundMail


class MessageEvent(TypedDict):
    """One entry of a message's status history."""

    at: float
    status: str
    detail: str | None


class ClaimedMail(NamedTuple):
    """A mail the bridge sends itself, claimed: its id, the mail, and this attempt's number."""

    id: int
    mail: OutboundMail
    attempts: int


class DuePoll(NamedTuple):
    """A sent message whose status is due to be asked for."""

    message_id: int
    provider_ids: list[str]
    polls: int


class MailListing(TypedDict):
    id: int
    kind: str
    mail_to: str
    status: str
    attempts: int
    last_error: str | None
    created_at: float
    content: bytes


class InboundListing(TypedDict):
    id: int
    source: str
    kind: str
    sms_id: str | None
    phone: str
    recipient: str | None
    text: str
    charset_error: int
    state: str
    script_error: str | None
    received_at: float
    forwards: int
    delivered: int


class ForwardJobListing(TypedDict):
    id: int
    inbound_id: int
    kind: str
    target: str
    status: str
    attempts: int
    last_error: str | None
    created_at: float


class ReportListing(TypedDict):
    id: int
    source: str
    provider_id: str
    message_id: int | None
    status: str
    raw_status: str
    error_code: int | None
    received_at: float
    reported_at: float | None


class ReplyScript(TypedDict):
    id: int
    shortcode: str
    keyword: str | None
    url: str
    method: str
    timeout: float
    secret: str | None
    created_at: float
    updated_at: float

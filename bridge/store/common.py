"""Store logic shared by every engine: status aggregation and inbound identity."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from bridge.models import (
    InboundMessage,
    InboundRecord,
    SendOptions,
    SendOutcome,
    SendRequest,
    StoredMessage,
    StoredResponse,
)
from bridge.redact import redact_text

FINAL_STATUSES = frozenset({"delivered", "undelivered", "expired", "rejected", "unknown"})

FAILED_STATUSES = ("rejected", "undelivered", "expired")


def aggregate_status(part_statuses: Sequence[str]) -> str:
    """One status for a message from its parts' latest statuses (several provider ids when
    a long text was split): delivered when every part is, the failure when one failed,
    unknown when all are final otherwise, sent while any part is still on its way."""
    if part_statuses and all(s == "delivered" for s in part_statuses):
        return "delivered"
    for failed in FAILED_STATUSES:
        if failed in part_statuses:
            return failed
    if part_statuses and all(s in FINAL_STATUSES for s in part_statuses):
        return "unknown"
    return "sent"


# Provider times without a zone are UTC+3: SMS Traffic says so of every date it sends
# (002 line 1018: "Все даты передаются в формате «ГГГГ-ММ-ДД ЧЧ:ММ:СС», часовой пояс
# UTC+3"), and its polls give the same instants in RFC 3339 with "+03:00" (line 391), which
# must compare right with its callbacks' zone-less dates (line 1126). Other providers' naive
# times are only ever compared with their own.
PROVIDER_ZONE = timezone(timedelta(hours=3))
_EPOCH_NUMBER = re.compile(r"\d{9,13}(?:\.\d+)?")


def report_time(at: str) -> float | None:
    """The provider's time of a status report (``DeliveryReport.at``) as a Unix time, or
    None when it gives none or none that can be read. Read: ISO 8601 / RFC 3339 (with or
    without zone, ``T`` or space), ``DD.MM.YYYY hh:mm:ss`` (SMSC), and Unix times in seconds
    or milliseconds."""
    text = at.strip()
    if not text:
        return None
    if _EPOCH_NUMBER.fullmatch(text):
        number = float(text)
        return number / 1000 if number > 1e11 else number
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        try:
            when = datetime.strptime(text, "%d.%m.%Y %H:%M:%S")
        except ValueError:
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=PROVIDER_ZONE)
    try:
        return when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True)
class PartReport:
    """A stored delivery report, as the status rules read it: ``id`` gives the arrival
    order, ``reported_at`` the provider's time (None: it gave none)."""

    id: int
    provider_id: str
    status: str
    reported_at: float | None


def standing_report(reports: Iterable[PartReport]) -> PartReport | None:
    """The report that stands for one part, from its reports in arrival order.

    Reports come repeated and out of order. A final status never gives way to a non-final
    one; between two finals the one with the provider's later time stands, and when either
    has no time the one already standing stays (the first final). Before any final, the
    latest arrival stands."""
    standing: PartReport | None = None
    for report in reports:
        if standing is None or standing.status not in FINAL_STATUSES:
            standing = report
        elif (report.status in FINAL_STATUSES and report.reported_at is not None
              and standing.reported_at is not None
              and report.reported_at > standing.reported_at):
            standing = report
    return standing


def settle_delivery(
    parts: Sequence[str], reports: Sequence[PartReport], current: str | None,
) -> tuple[str, dict[str, PartReport]]:
    """A message's delivery status from all its reports (arrival order) and the reports that
    stand for its parts. ``current`` is the status stored before: once final, the message
    is never made non-final again, even when a part's later final (a failure overtaken by a
    delivery) leaves another part still on its way."""
    by_part: dict[str, list[PartReport]] = {}
    for report in reports:
        by_part.setdefault(report.provider_id, []).append(report)
    standing = {part: found for part, found in
                ((part, standing_report(by_part.get(part, ()))) for part in parts)
                if found is not None}
    overall = aggregate_status([standing[p].status if p in standing else "sent"
                                for p in parts])
    if overall not in FINAL_STATUSES and current in FINAL_STATUSES:
        overall = current
    return overall, standing


# What an outcome writes to the message's history: (event status, detail).
_OUTCOME_EVENTS = {"sent": "sent", "queued": "retry", "failed": "failed",
                   "ambiguous": "ambiguous", "sending": "fallback"}


def outcome_event(outcome: SendOutcome) -> tuple[str, str | None]:
    """The history entry of an outcome; error texts keep no secret (:func:`redact_text`)."""
    if outcome.status not in _OUTCOME_EVENTS:
        raise ValueError(f"unknown outcome status {outcome.status!r}")
    if outcome.status == "sent":
        return "sent", f"{outcome.upstream}: {', '.join(outcome.provider_ids)}"
    return _OUTCOME_EVENTS[outcome.status], outcome_error(outcome)


def outcome_error(outcome: SendOutcome) -> str | None:
    return None if outcome.error is None else redact_text(outcome.error)


def intent_summary(outcomes: Sequence[SendOutcome], recorded: Sequence[int]) -> str:
    """How an intent ended, kept with it: each message's outcome status, or ``lost`` where
    its claim no longer held (a newer holder decides)."""
    kept = set(recorded)
    return json.dumps({str(o.message_id): o.status if o.message_id in kept else "lost"
                       for o in outcomes})


def options_json(req: SendRequest) -> str:
    """The per-message options of a send request, as both engines store them."""
    return req.options.to_json()


def inbound_content_hash(message: InboundMessage) -> str:
    """Identity of a message that came without ``sms_id``: same source, kind, sender,
    receiving number and text within the window count as one (a provider's retry)."""
    # Each part followed by NUL, hashed in one go (the same digest as part by part).
    parts = (message.kind, message.phone, message.recipient or "", message.text, "")
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


# The columns of a message as the searches select them (the named blocks of bridge/store/sql/
# write them out in the same order: row_to_message reads them by place).
MESSAGE_COLUMNS = (
    "m.id, m.account, m.upstream, m.phone, m.text, m.parts, m.encoding, m.status, m.attempts, "
    "m.created_at, m.options, m.upstream_ids, m.last_error, COALESCE(ml.mail_from, ''), "
    "m.next_attempt_at, m.upstream_used, m.delivery_status, ml.message_id"
)
# ``status`` filters of list_messages that name a provider status rather than an outbox one.
DELIVERY_STATUSES = frozenset({"delivered", "undelivered", "expired", "rejected", "unknown"})
REPORT_KEYS = ("id", "source", "provider_id", "message_id", "status", "raw_status",
               "error_code", "received_at", "reported_at")
INBOUND_COLUMNS = (
    "id, state, response_status, response_body, response_type, received_at, content_hash"
)


def row_to_message(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(
        id=row[0],
        account=row[1],
        upstream=row[2],
        phone=row[3],
        text=row[4],
        parts=row[5],
        encoding=row[6],
        status=row[7],
        attempts=row[8],
        created_at=row[9],
        options=SendOptions.from_json(row[10]),
        upstream_ids=json.loads(row[11]),
        last_error=row[12],
        mail_from=row[13],
        next_attempt_at=row[14],
        upstream_used=row[15],
        delivery_status=row[16],
        mail_message_id=row[17],
        mail_headers=bytes(row[18] or b"").decode("utf-8", "surrogateescape")
        if len(row) > 18 else "",
        maybe_sent=int(row[19]) if len(row) > 20 else 0,
        lease_epoch=int(row[20]) if len(row) > 20 else 0,
    )


def row_to_inbound(row: Sequence[Any], *, duplicate: bool) -> InboundRecord:
    response = None
    if row[2] is not None:
        response = StoredResponse(int(row[2]), bytes(row[3] or b""), str(row[4]))
    return InboundRecord(int(row[0]), duplicate, str(row[1]), response, float(row[5]),
                         str(row[6]))

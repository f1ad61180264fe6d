"""Store logic shared by every engine: status aggregation and inbound identity."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from bridge.models import (
    InboundMessage,
    InboundRecord,
    SendRequest,
    StoredMessage,
    StoredResponse,
)

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


def options_json(req: SendRequest) -> str:
    """The per-message options of a send request, as both engines store them."""
    return json.dumps({
        "originator": req.originator,
        "flash": req.flash,
        "max_parts": req.max_parts,
        "not_before": req.not_before,
        "validity": req.validity,
        "transliterate": req.transliterate,
        "two_byte_concat": req.two_byte_concat,
        "push_id": req.push_id,
        "fallbacks": list(req.fallbacks),
    })


def inbound_content_hash(message: InboundMessage) -> str:
    """Identity of a message that came without ``sms_id``: same source, kind, sender,
    receiving number and text within the window count as one (a provider's retry)."""
    # Each part followed by NUL, hashed in one go (the same digest as part by part).
    parts = (message.kind, message.phone, message.recipient or "", message.text, "")
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


# Columns and row mapping shared by the engines (their SQL selects the same columns).
MESSAGE_COLUMNS = (
    "m.id, m.account, m.upstream, m.phone, m.text, m.parts, m.encoding, m.status, m.attempts, "
    "m.created_at, m.options, m.upstream_ids, m.last_error, COALESCE(ml.mail_from, ''), "
    "m.next_attempt_at, m.upstream_used, m.delivery_status"
)
# ``status`` filters of list_messages that name a provider status rather than an outbox one.
DELIVERY_STATUSES = frozenset({"delivered", "undelivered", "expired", "rejected", "unknown"})
REPORT_KEYS = ("id", "source", "provider_id", "message_id", "status", "raw_status",
               "error_code", "received_at")
REPORT_COLUMNS = ", ".join(REPORT_KEYS)
INBOUND_COLUMNS = (
    "id, state, response_status, response_body, response_type, received_at, content_hash"
)
SCRIPT_KEYS = ("id", "shortcode", "keyword", "url", "method", "timeout", "secret",
               "created_at", "updated_at")
SCRIPT_COLUMNS = ", ".join(SCRIPT_KEYS)


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
        options=json.loads(row[10]),
        upstream_ids=json.loads(row[11]),
        last_error=row[12],
        mail_from=row[13],
        next_attempt_at=row[14],
        upstream_used=row[15],
        delivery_status=row[16],
    )


def row_to_inbound(row: Sequence[Any], *, duplicate: bool) -> InboundRecord:
    response = None
    if row[2] is not None:
        response = StoredResponse(int(row[2]), bytes(row[3] or b""), str(row[4]))
    return InboundRecord(int(row[0]), duplicate, str(row[1]), response, float(row[5]),
                         str(row[6]))


def row_to_script(row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(SCRIPT_KEYS, row, strict=True))

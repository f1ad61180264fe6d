"""Store logic shared by every engine: status aggregation and inbound identity."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from bridge.models import InboundMessage

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


def inbound_content_hash(message: InboundMessage) -> str:
    """Identity of a message that came without ``sms_id``: same source, kind, sender,
    receiving number and text within the window count as one (a provider's retry)."""
    digest = hashlib.sha256()
    for part in (message.kind, message.phone, message.recipient or "", message.text):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


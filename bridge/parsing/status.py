"""SMS Traffic's delivery statuses in the bridge's terms: one table for the reports pushed to
the bridge (``bridge/inbound/parsing.py``) and those the provider answers to a poll
(``bridge/upstreams/smstraffic``). Pure: no I/O, nothing of the bridge's services."""

from __future__ import annotations

# 002, "Справка по статусам СМС сообщений" (line 2048) → the bridge's statuses.
_STATUS_MAP = {
    "": "sent",
    "buffered smsc": "sent",
    "delivered": "delivered",
    "non delivered": "undelivered",
    "rejected": "rejected",
    "expired": "expired",
    "deleted": "undelivered",
    "unknown status": "unknown",
    "clicked": "delivered",
    "checked": "delivered",
    "read": "delivered",
}


def map_status(raw_status: str) -> str:
    """002, "Справка по статусам СМС сообщений": a raw status (any case, any spacing) →
    sent, delivered, undelivered, rejected, expired or unknown."""
    return _STATUS_MAP.get(" ".join(raw_status.lower().split()), "unknown")

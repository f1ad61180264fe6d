"""Prometheus metrics (served at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MAILS_ACCEPTED = Counter("bridge_mails_accepted_total", "Mails committed to the outbox", ["format"])
MAILS_REJECTED = Counter("bridge_mails_rejected_total", "Mails or recipients refused", ["reason"])
MAILS_DUPLICATE = Counter(
    "bridge_mails_duplicate_total", "Resent mails recognised by Message-ID and not sent twice"
)
MESSAGES_QUEUED = Counter("bridge_messages_queued_total", "SMS committed to the outbox")
SENDS = Counter("bridge_sends_total", "Upstream send calls", ["upstream", "outcome"])
SEND_SECONDS = Histogram("bridge_send_seconds", "Upstream send call latency", ["upstream"])
FAILED = Counter("bridge_messages_failed_total", "SMS failed for good", ["upstream"])
OUTGOING_MAIL = Counter("bridge_outgoing_mail_total", "Bounces and replies sent", ["outcome"])
QUEUE_DEPTH = Gauge("bridge_queue_depth", "SMS waiting in the outbox (sampled)")

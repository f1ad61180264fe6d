"""Prometheus metrics (served at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MAILS_ACCEPTED = Counter("bridge_mails_accepted_total", "Mails committed to the outbox", ["format"])
MAILS_REJECTED = Counter("bridge_mails_rejected_total", "Mails or recipients refused", ["reason"])
MAILS_DUPLICATE = Counter(
    "bridge_mails_duplicate_total", "Resent mails recognised by Message-ID and not sent twice"
)
SMTP_AUTH_FAILURES = Counter(
    "bridge_smtp_auth_failures_total",
    "SMTP AUTH refused: invalid credentials (535), or throttled (454) by the client address's "
    "or the login's failure window", ["reason"])
SMTP_SILENT_CLOSED = Counter(
    "bridge_smtp_silent_connections_closed_total",
    "SMTP connections closed before their first command: first-command timeout, or evicted "
    "to make room for a new client", ["reason"])
MESSAGES_QUEUED = Counter("bridge_messages_queued_total", "SMS committed to the outbox")
SENDS = Counter("bridge_sends_total", "Upstream send calls", ["upstream", "outcome"])
SEND_SECONDS = Histogram("bridge_send_seconds", "Upstream send call latency", ["upstream"])
FAILED = Counter("bridge_messages_failed_total", "SMS failed for good", ["upstream"])
OUTGOING_MAIL = Counter("bridge_outgoing_mail_total", "Bounces and replies sent", ["outcome"])
QUEUE_DEPTH = Gauge("bridge_queue_depth", "SMS waiting in the outbox (sampled)")
INBOUND = Counter("bridge_inbound_total", "Inbound requests accepted", ["kind"])
INBOUND_REJECTED = Counter("bridge_inbound_rejected_total", "Inbound requests refused",
                           ["reason"])
INBOUND_DUPLICATES = Counter("bridge_inbound_duplicates_total",
                             "Repeated sms_id (or content) given the first answer again", ["kind"])
INBOUND_CONFLICTS = Counter("bridge_inbound_conflicting_repeats_total",
                            "Repeated sms_id with other content (answered as a repeat, logged)",
                            ["kind"])
DELIVERY_REPORTS = Counter("bridge_delivery_reports_total", "Delivery reports received",
                           ["matched"])
FORWARDS = Counter("bridge_forwards_total", "Forwarding attempts", ["kind", "outcome"])
REPLY_SCRIPTS = Counter("bridge_reply_script_calls_total", "Reply script calls", ["outcome"])
FORWARDS_QUEUED = Gauge("bridge_forwards_queued", "Forwarding jobs waiting (sampled)")
DEAD_LETTERS = Gauge("bridge_dead_letters", "Forwarding jobs dead-lettered (sampled)")
QUEUE_AGE = Gauge("bridge_queue_oldest_seconds", "Age of the oldest queued SMS (sampled)")
FORWARD_TARGETS_DISABLED = Gauge(
    "bridge_forward_targets_disabled",
    "Webhook targets disabled after 410 Gone (sms-bridge targets; enable-target to undo)")

"""Prometheus metrics (served at ``GET /metrics``).

Under ``serve --workers N`` each worker is a process of its own, and a scrape reaches
whichever worker the kernel hands the connection to. So that every scrape shows the whole
bridge, the supervisor gives its workers a fresh directory in ``PROMETHEUS_MULTIPROC_DIR``
(prometheus-client's multiprocess mode): each worker's metrics live in files there, and
:func:`exposition` sums them. A worker that dies leaves its files, so the counters it
counted stay in the totals and never go back.

The sampled gauges (queue depth and age, forwards waiting, dead letters, disabled targets)
are read from the shared store, whichever worker samples them: in multiprocess mode the
most recent sample is the value (``multiprocess_mode="mostrecent"``), not one series per
worker.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# prometheus-client reads this variable when it is first imported: the supervisor sets it
# before it starts the workers, which inherit it.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def exposition() -> bytes:
    """The text of a scrape: this process's metrics, or under ``serve --workers N`` those
    of every worker of this run, summed."""
    directory = os.environ.get(MULTIPROCESS_DIR)
    if not directory:
        return generate_latest()
    registry = CollectorRegistry()
    # prometheus-client leaves this constructor unannotated.
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


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
QUEUE_DEPTH = Gauge("bridge_queue_depth", "SMS waiting in the outbox (sampled)",
                    multiprocess_mode="mostrecent")
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
FORWARDS_QUEUED = Gauge("bridge_forwards_queued", "Forwarding jobs waiting (sampled)",
                        multiprocess_mode="mostrecent")
DEAD_LETTERS = Gauge("bridge_dead_letters", "Forwarding jobs dead-lettered (sampled)",
                     multiprocess_mode="mostrecent")
QUEUE_AGE = Gauge("bridge_queue_oldest_seconds", "Age of the oldest queued SMS (sampled)",
                  multiprocess_mode="mostrecent")
FORWARD_TARGETS_DISABLED = Gauge(
    "bridge_forward_targets_disabled",
    "Webhook targets disabled after 410 Gone (sms-bridge targets; enable-target to undo)",
    multiprocess_mode="mostrecent")

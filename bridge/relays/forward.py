"""Forwarding inbound SMS to mailboxes and webhooks, from the durable store.

The jobs are committed with the inbound message (before the provider gets its answer) and
delivered here at least once: a target that is down delays delivery, it loses nothing; after
``forward_retry_period`` a job is dead-lettered, listed by ``sms-bridge dead-letters`` and
queued again by ``sms-bridge redeliver``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime, make_msgid
from urllib.parse import urlsplit

import httpx
import phonenumbers

from bridge import metrics
from bridge.errors import BridgeError, StoreUnavailable
from bridge.inbound.routing import select_route
from bridge.models import ClaimedForward, ForwardJob, InboundMessage
from bridge.outbox.retry import RetryPolicy
from bridge.relays.egress import EgressPolicy, EgressRefused, guarded_request
from bridge.relays.email import is_permanent_smtp_error, send_via_smarthost
from bridge.relays.signing import signature_headers
from bridge.relays.worker import ClaimLoop
from bridge.settings import Settings
from bridge.store.base import OutboxStore

log = logging.getLogger(__name__)


class WebhookFailed(BridgeError):
    """The webhook receiver did not answer 2xx."""


def pretty_phone(phone: str) -> str:
    """``79161234567`` → ``+7 916 123-45-67`` for people; digits unchanged if unknown."""
    try:
        number = phonenumbers.parse("+" + phone, None)
    except phonenumbers.NumberParseException:
        return "+" + phone
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL))


def reply_address(settings: Settings, phone: str) -> str | None:
    """``PHONE.login@domain``: a reply to it re-enters the SMTP intake as SMTP v1 and goes
    back to the customer as an SMS (002 line 1768)."""
    login = settings.inbound.reply_account
    if login is None:
        return None
    return f"{phone}.{settings.canonical_login(login)}@{settings.inbound.reply_domain}"


def _header_safe(value: str | None) -> str | None:
    """Provider-given values go into headers only as printable ASCII (no injection)."""
    if value and value.isascii() and value.isprintable():
        return value
    return None


def build_inbound_email(settings: Settings, message: InboundMessage, to: str) -> bytes:
    """The mail a helpdesk receives for an inbound SMS.

    Written directly as bytes: the email package's header registry and generator were most
    of the inbound path's CPU in the benchmark profile. Every header value is ASCII without
    CR/LF; the Subject is an RFC 2047 word when it is not ASCII; the body is base64 UTF-8."""
    kind = "Short code" if message.kind == "shortcode" else "SMS"
    subject = f"{kind} from {pretty_phone(message.phone)}"
    headers = [
        ("From", settings.mail.from_address),
        ("To", to),
        ("Subject", subject if subject.isascii() else Header(subject, "utf-8").encode()),
        ("Date", format_datetime(datetime.now(UTC))),
        ("Message-ID", make_msgid(domain=settings.mail.from_address.rpartition("@")[2] or None)),
        ("Auto-Submitted", "auto-generated"),
        ("Reply-To", reply_address(settings, message.phone)),
        ("X-SMS-From", _header_safe(message.phone)),
        ("X-SMS-Id", _header_safe(message.sms_id)),
        ("X-SMS-To", _header_safe(message.recipient)),
        ("X-SMS-Charset-Error", message.charset if message.charset_error else None),
        ("MIME-Version", "1.0"),
        ("Content-Type", 'text/plain; charset="utf-8"'),
        ("Content-Transfer-Encoding", "base64"),
    ]
    body = message.text
    if message.charset_error:
        body += (f"\n\n[The provider's bytes were not valid {message.charset}; "
                 "undecodable characters are shown as \ufffd. The raw request is stored.]")
    head = "".join(f"{name}: {value}\r\n" for name, value in headers if value)
    encoded = base64.encodebytes((body + "\n").encode("utf-8")).replace(b"\n", b"\r\n")
    return head.encode("ascii") + b"\r\n" + encoded


def message_payload(message: InboundMessage) -> bytes:
    """What an e-mail job stores: the message's fields. The mail is rendered when it is
    sent, off the request path."""
    return json.dumps({
        "source": message.source, "kind": message.kind, "sms_id": message.sms_id,
        "phone": message.phone, "text": message.text, "recipient": message.recipient,
        "charset": message.charset, "charset_error": message.charset_error,
    }, ensure_ascii=False).encode("utf-8")


def message_from_payload(payload: bytes) -> InboundMessage:
    data = json.loads(payload)
    return InboundMessage(
        source=data["source"], kind=data["kind"], sms_id=data["sms_id"], phone=data["phone"],
        text=data["text"], recipient=data["recipient"], charset=data["charset"],
        charset_error=data["charset_error"],
    )


def build_webhook_payload(message: InboundMessage, received_at: float) -> bytes:
    data = {
        "type": "sms.received" if message.kind == "mo" else "shortcode.received",
        "timestamp": datetime.fromtimestamp(received_at, UTC).isoformat(),
        "data": {
            "source": message.source,
            "sms_id": message.sms_id,
            "from": message.phone,
            "to": message.recipient,
            "text": message.text,
            "charset": message.charset,
            "charset_error": message.charset_error,
        },
    }
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def plan_forwarding(
    settings: Settings, message: InboundMessage, received_at: float
) -> tuple[list[ForwardJob], bool]:
    """Jobs for the first matching route, and whether a route claimed the message."""
    route = select_route(settings.inbound.routes, message)
    if route is None:
        return [], False
    jobs = []
    if route.emails:
        fields = message_payload(message)
        jobs += [ForwardJob("email", address, fields) for address in route.emails]
    if route.webhooks:
        payload = build_webhook_payload(message, received_at)
        jobs += [ForwardJob("webhook", name, payload) for name in route.webhooks]
    return jobs, True


class ForwardWorker(ClaimLoop):
    """Claims due forwarding jobs and delivers them, with backoff and dead-lettering."""

    def __init__(self, store: OutboxStore, settings: Settings, client: httpx.AsyncClient,
                 *, owner: str, bridge_id: str = "", poll_interval: float = 1.0,
                 concurrency: int = 16) -> None:
        super().__init__()
        self.owner = owner
        # Webhook ids must be unique beyond this store: a new database restarts job ids.
        self.bridge_id = bridge_id
        self.store = store
        self.settings = settings
        self.client = client
        self.poll_interval = poll_interval
        self.concurrency = concurrency
        config = settings.inbound
        self.policy = RetryPolicy(config.forward_retry_base, config.forward_retry_max,
                                  config.forward_retry_period)
        self.egress = EgressPolicy(config.egress_allowed_networks)
        # Without a smarthost, e-mail jobs stay queued (nothing lost) until one is configured.
        self.kinds: tuple[str, ...] = (
            ("email", "webhook") if settings.mail.smarthost else ("webhook",)
        )
        if settings.mail.smarthost is None and any(r.emails for r in config.routes):
            log.warning("inbound routes name e-mail targets but [mail] smarthost is not set: "
                        "those forwards wait in the store until it is")

    def notify(self, jobs: Sequence[ForwardJob]) -> None:
        """New jobs were committed: wake up if this worker takes any of them."""
        if any(job.kind in self.kinds for job in jobs):
            self._wake.set()

    async def claim_and_handle(self) -> bool:
        jobs = await self.store.claim_forward_jobs(self.owner, time.time(), self.concurrency,
                                                   120.0, self.kinds)
        await asyncio.gather(*(self._deliver(job) for job in jobs))
        return bool(jobs)

    async def _deliver(self, job: ClaimedForward) -> None:
        try:
            if job.kind == "email":
                content = build_inbound_email(self.settings, message_from_payload(job.payload),
                                              job.target)
                await send_via_smarthost(self.settings.mail, job.target, content)
            else:
                await self._post_webhook(job)
        except Exception as exc:  # every failure is recorded; none may lose the job
            permanent = isinstance(exc, EgressRefused | LookupError) or is_permanent_smtp_error(exc)
            await self._failed(job, f"{type(exc).__name__}: {exc}"[:500], permanent)
            return
        metrics.FORWARDS.labels(kind=job.kind, outcome="delivered").inc()
        log.info("forwarded", extra={"job": job.id, "kind": job.kind, "target": job.target,
                                     "inbound_id": job.inbound_id})
        with contextlib.suppress(StoreUnavailable):
            await self.store.forward_done(job.id, self.owner, time.time())

    async def check_targets(self) -> None:
        """Warn at start about webhook URLs the egress guard will refuse, instead of finding
        out from the first dead letter."""
        for name, webhook in self.settings.inbound.webhooks.items():
            parts = urlsplit(webhook.url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                await self.egress.resolve(parts.hostname or "", port)
            except EgressRefused as exc:
                log.warning("webhook target refused by the egress guard (see "
                            "inbound.egress_allowed_networks)",
                            extra={"webhook": name, "error": str(exc)})

    async def _post_webhook(self, job: ClaimedForward) -> None:
        webhook = self.settings.inbound.webhooks.get(job.target)
        if webhook is None:
            raise LookupError(f"webhook {job.target!r} is no longer configured")
        # The id is stable across retries so the receiver can deduplicate (Standard Webhooks).
        headers = signature_headers(webhook.secret.get_secret_value(),
                                    f"msg_{self.bridge_id}_{job.id}",
                                    job.payload)
        headers["Content-Type"] = "application/json"
        response = await guarded_request(self.client, self.egress, "POST", webhook.url,
                                         timeout=webhook.timeout, content=job.payload,
                                         headers=headers)
        if not 200 <= response.status_code < 300:
            # Any other answer (3xx included: redirects are not followed) is retried.
            raise WebhookFailed(f"webhook answered HTTP {response.status_code}")

    async def _failed(self, job: ClaimedForward, error: str, permanent: bool) -> None:
        now = time.time()
        delay = self.policy.backoff(job.attempts)
        dead = permanent or now + delay > job.deadline
        metrics.FORWARDS.labels(kind=job.kind, outcome="dead" if dead else "retry").inc()
        log.warning("forwarding failed", extra={"job": job.id, "kind": job.kind,
                                                "target": job.target, "error": error,
                                                "dead_letter": dead})
        with contextlib.suppress(StoreUnavailable):
            if dead:
                await self.store.forward_dead(job.id, self.owner, error)
            else:
                await self.store.forward_retry(job.id, self.owner, error, now + delay)

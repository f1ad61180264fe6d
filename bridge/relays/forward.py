"""Forwarding inbound SMS to mailboxes and webhooks, from the durable store.

The jobs are committed with the inbound message (before the provider gets its answer) and
delivered here at least once: a target that is down delays delivery, it loses nothing; after
``forward_retry_period`` a job is dead-lettered, listed by ``sms-bridge dead-letters`` and
queued again by ``sms-bridge redeliver``.

At least once means a receiver may see a forward twice (a 250 that came too late, a
connection lost after the data, a webhook answer lost on the way): every attempt of one
forward carries the same identity, so the receiver can drop the copy. A mail keeps its
``Message-ID`` (and its ``Date:``, the time the SMS arrived, and its thread's ``In-Reply-To``
and ``References``, decided once in the store); a webhook its ``webhook-id``.

Retry classes: a target that cannot take the forward now (timeouts, dropped connections,
4yz SMTP replies, a host name that does not resolve, HTTP 5xx, 429 and every other non-2xx)
is tried again with exponential backoff, no earlier than a ``Retry-After`` on 429 and 503.
What can never succeed is a dead letter at once: a 5yz SMTP reply at any stage, a URL the
egress guard refuses, a target no longer configured, and HTTP 410 Gone, which also disables
the webhook (as Standard Webhooks senders do) until ``sms-bridge enable-target NAME``.

Each attempt's outcome is recorded with what the target answered (the webhook's HTTP status
and the start of its body, the smarthost's SMTP reply) or the error, for the operators'
console.

Each target (a mailbox address, a webhook) has its own ``forward_concurrency_per_target``
attempts in flight at most, and an attempt has a deadline (the webhook's ``timeout``;
``mail.command_timeout`` + ``mail.timeout`` for a mail): a slow target delays only its own
forwards.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime, make_msgid, parsedate_to_datetime
from json.encoder import encode_basestring
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib
import httpx
import phonenumbers

from bridge import metrics
from bridge.errors import (
    EgressRefused,
    PermanentForwardError,
    ResolutionFailed,
    StoreUnavailable,
    TargetDisabled,
    TargetGone,
    TargetNotConfigured,
    WebhookFailed,
)
from bridge.models import ClaimedForward, ForwardJob, InboundMessage
from bridge.outbox.retry import RetryPolicy
from bridge.parsing.mail import receiver_tag
from bridge.redact import redact_exchange
from bridge.relays.egress import EgressPolicy, guarded_request
from bridge.relays.email import is_permanent_smtp_error, send_via_smarthost
from bridge.relays.routing import select_route
from bridge.relays.signing import signature_headers
from bridge.relays.worker import ClaimLoop
from bridge.settings import Settings
from bridge.store.base import OutboxStore

log = logging.getLogger(__name__)


# What an attempt's history keeps of a webhook's answer body: its first bytes, enough for an
# error page's message.
ANSWER_EXCERPT_BYTES = 512


def webhook_answer(response: httpx.Response) -> str:
    """A webhook's answer as an attempt's history shows it: ``HTTP 500: <the first 512
    bytes of the body>``, credentials in the body masked."""
    excerpt = redact_exchange(response.content, ANSWER_EXCERPT_BYTES)
    text = excerpt.decode("utf-8", "replace")  # a character cut at the end shows as U+FFFD
    return f"HTTP {response.status_code}: {text}" if text else f"HTTP {response.status_code}"


def smtp_answer(reply: aiosmtplib.SMTPResponse | aiosmtplib.SMTPResponseException) -> str:
    """An SMTP reply as an attempt's history shows it: ``SMTP 550 5.1.1 …`` (the lines of a
    multiline reply joined)."""
    return f"SMTP {reply.code} {' '.join(reply.message.split())}"


def is_permanent_forward_error(exc: BaseException) -> bool:
    """Whether no later attempt of a forward can succeed, so it is dead-lettered at once: a
    :class:`~bridge.errors.PermanentForwardError`, a target the egress guard refuses (not a
    name that does not resolve now), or a 5yz reply of the smarthost. Anything else, an
    exception outside the tree in :mod:`bridge.errors` included (a ``KeyError`` is a
    ``LookupError`` too), is retried until the forward's deadline."""
    return (isinstance(exc, PermanentForwardError)
            or (isinstance(exc, EgressRefused) and not isinstance(exc, ResolutionFailed))
            or is_permanent_smtp_error(exc))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 §10.2.3: ``delay-seconds``
    or an ``HTTP-date``); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value) if len(value) <= 12 else math.inf
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # an HTTP-date is always GMT
    return max(0.0, when.timestamp() - now)


def disabled_key(name: str) -> str:
    """The ``meta`` key that marks webhook ``name`` disabled (a JSON value; "" = enabled)."""
    return f"forward_target_disabled:webhook:{name}"


async def read_disabled(store: OutboxStore, name: str) -> dict[str, Any] | None:
    """Why and since when webhook ``name`` is disabled, or None when it is not."""
    value = await store.get_meta(disabled_key(name))
    if not value:
        return None
    try:
        info = json.loads(value)
    except ValueError:
        info = None
    return info if isinstance(info, dict) else {"reason": value}


async def enable_target(store: OutboxStore, name: str) -> bool:
    """Enable webhook ``name`` again; False when it was not disabled."""
    if await read_disabled(store, name) is None:
        return False
    await store.set_meta(disabled_key(name), "")
    return True


def forward_message_id(bridge_id: str, job_id: int, from_address: str) -> str:
    """The Message-ID of one forward, the same on every attempt (RFC 5322 §3.6.4: it
    identifies the message; a resent copy is the same message): from the store's id and
    the job's, unique per inbound message and target."""
    domain = from_address.rpartition("@")[2] or "sms-bridge.invalid"
    token = re.sub(r"[^A-Za-z0-9]", "", bridge_id) or "bridge"
    return f"<sms-forward.{token}.{job_id}@{domain}>"


def pretty_phone(phone: str) -> str:
    """``79161234567`` → ``+7 916 123-45-67`` for people; digits unchanged if unknown."""
    try:
        number = phonenumbers.parse("+" + phone, None)
    except phonenumbers.NumberParseException:
        return "+" + phone
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL))


def reply_address(settings: Settings, phone: str, receiver: str | None = None) -> str | None:
    """``PHONE.login+NUMBER-TAG@domain``: a reply to it re-enters the SMTP intake as SMTP v1 and
    goes back to the customer as an SMS (002 line 1768), sent from NUMBER, the number the
    customer texted, where a numeric sender is allowed (002 line 817: only then "абонент
    может отправить ответное сообщение"). Without a receiving number of at most 15 digits
    (002 line 69) it is ``PHONE.login@domain``, the form older forwards carry. TAG
    (:func:`~bridge.parsing.mail.receiver_tag`) proves the bridge wrote the address."""
    login = settings.inbound.reply_account
    if login is None:
        return None
    login = settings.canonical_login(login)
    number = (receiver or "").removeprefix("+")
    via = ""
    if number.isascii() and number.isdigit() and len(number) <= 15:
        key = settings.accounts[login].password.get_secret_value()
        via = f"+{number}-{receiver_tag(key, login, phone, number)}"
    return f"{phone}.{login}{via}@{settings.inbound.reply_domain}"


def thread_key(message: InboundMessage, target: str) -> str:
    """One conversation as a mailbox sees it: the provider, the number the customer texted,
    the customer's phone, and the mailbox (a thread's first mail must be one it received)."""
    return json.dumps([message.source, message.recipient or "", message.phone, target.lower()])


def _header_safe(value: str | None) -> str | None:
    """Provider-given values go into headers only as printable ASCII (no injection)."""
    if value and value.isascii() and value.isprintable():
        return value
    return None


def build_inbound_email(settings: Settings, message: InboundMessage, to: str, *,
                        message_id: str | None = None, received_at: float | None = None,
                        thread_root: str | None = None) -> bytes:
    """The mail a helpdesk receives for an inbound SMS.

    ``message_id`` is the forward's own (the same on every attempt) and ``received_at`` the
    time the SMS arrived, which ``Date:`` carries (RFC 5322 §3.6.1: when the message was
    ready; mails delayed by an outage then still sort in the order the SMS came).
    ``thread_root``: the Message-ID of the first mail of the customer's conversation, which
    ``In-Reply-To`` and ``References`` name (RFC 5322 §3.6.4), so mail clients and ticket
    systems put the customer's SMS in one thread.

    Written directly as bytes: the email package's header registry and generator were most
    of the inbound path's CPU in the benchmark profile. Every header value is ASCII without
    CR/LF; the Subject is an RFC 2047 word when it is not ASCII; the body is base64 UTF-8."""
    kind = "Short code" if message.kind == "shortcode" else "SMS"
    subject = f"{kind} from {pretty_phone(message.phone)}"
    date = datetime.fromtimestamp(received_at if received_at is not None else time.time(), UTC)
    headers = [
        ("From", settings.mail.from_address),
        ("To", to),
        ("Subject", subject if subject.isascii() else Header(subject, "utf-8").encode()),
        ("Date", format_datetime(date)),
        ("Message-ID", message_id or make_msgid(
            domain=settings.mail.from_address.rpartition("@")[2] or None)),
        ("Auto-Submitted", "auto-generated"),
        ("In-Reply-To", _header_safe(thread_root)),
        ("References", _header_safe(thread_root)),
        ("Reply-To", reply_address(settings, message.phone, message.recipient)),
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


def message_payload(message: InboundMessage, received_at: float | None = None) -> bytes:
    """What an e-mail job stores: the message's fields and when it arrived. The mail is
    rendered when it is sent, off the request path.

    The bytes ``json.dumps`` (``ensure_ascii=False``) gives for the same object, written
    out directly: one call per new SMS on the request path, without building a dict and an
    encoder for it."""
    return (
        f'{{"source": {_json_text(message.source)}, "kind": {_json_text(message.kind)}, '
        f'"sms_id": {_json_text(message.sms_id)}, "phone": {_json_text(message.phone)}, '
        f'"text": {_json_text(message.text)}, "recipient": {_json_text(message.recipient)}, '
        f'"charset": {_json_text(message.charset)}, '
        f'"charset_error": {_json_value(message.charset_error)}, '
        f'"received_at": {_json_value(received_at)}}}'
    ).encode()


def _json_text(value: str | None) -> str:
    if value is None:
        return "null"
    if type(value) is str:
        return encode_basestring(value)
    return _JSON.encode(value)


def _json_value(value: object) -> str:
    """A bool, a finite float or None as ``json.dumps`` writes it; anything else through
    the encoder itself."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return _JSON.encode(value)


# ``json.dumps(..., ensure_ascii=False)``'s encoder, made once.
_JSON = json.JSONEncoder(ensure_ascii=False)


def payload_received_at(payload: bytes) -> float | None:
    """When the SMS of an e-mail job arrived (None for a job stored without it)."""
    value = json.loads(payload).get("received_at")
    return float(value) if isinstance(value, int | float) else None


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
    return _JSON.encode(data).encode("utf-8")


def plan_forwarding(
    settings: Settings, message: InboundMessage, received_at: float
) -> tuple[list[ForwardJob], bool]:
    """Jobs for the first matching route, and whether a route claimed the message."""
    route = select_route(settings.inbound.routes, message)
    if route is None:
        return [], False
    jobs = []
    if route.emails:
        fields = message_payload(message, received_at)
        jobs += [ForwardJob("email", address, fields) for address in route.emails]
    if route.webhooks:
        payload = build_webhook_payload(message, received_at)
        jobs += [ForwardJob("webhook", name, payload) for name in route.webhooks]
    return jobs, True


class ForwardWorker(ClaimLoop):
    """Claims due forwarding jobs and delivers them, with backoff and dead-lettering.

    Each claimed job runs as its own task, under its target's limit of attempts in flight:
    a claim leaves out the targets that have ``forward_concurrency_per_target`` jobs in
    hand already, so a slow target neither holds the claim loop nor takes the places of the
    others' jobs."""

    DISABLED_REFRESH = 2.0  # seconds between reads of which webhooks are disabled

    def __init__(self, store: OutboxStore, settings: Settings, client: httpx.AsyncClient,
                 *, owner: str, bridge_id: str = "", poll_interval: float = 1.0,
                 concurrency: int = 64) -> None:
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
        self.per_target = config.forward_concurrency_per_target
        self.policy = RetryPolicy(config.forward_retry_base, config.forward_retry_max,
                                  config.forward_retry_period)
        self.egress = EgressPolicy(config.egress_allowed_networks, config.egress_allowed_ports)
        # Without a smarthost, e-mail jobs stay queued (nothing lost) until one is configured.
        self.kinds: tuple[str, ...] = (
            ("email", "webhook") if settings.mail.smarthost else ("webhook",)
        )
        if settings.mail.smarthost is None and any(r.emails for r in config.routes):
            log.warning("inbound routes name e-mail targets but [mail] smarthost is not set: "
                        "those forwards wait in the store until it is")
        # The longest an attempt takes: the mail's (commands, data, QUIT) or a webhook's.
        # A claimed job waits for at most one attempt of its target before its own (a claim
        # takes at most per_target jobs, only for targets with fewer in hand): the lease
        # covers both, so no other process takes over a job still being tried here.
        mail = settings.mail
        longest = max([2 * mail.command_timeout + mail.timeout if "email" in self.kinds else 0.0,
                       *(hook.timeout for hook in config.webhooks.values()), 1.0])
        self.lease_seconds = 2 * longest + 60.0
        self._in_hand: dict[tuple[str, str], int] = {}
        self._slots: dict[tuple[str, str], asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._retries_due: list[float] = []  # heap: when retries scheduled here fall due
        self._disabled: dict[str, dict[str, Any]] = {}
        self._disabled_read_at = -math.inf

    def notify(self, jobs: Sequence[ForwardJob]) -> None:
        """New jobs were committed: wake up if this worker takes any of them."""
        if any(job.kind in self.kinds for job in jobs):
            self._wake.set()

    def idle_timeout(self) -> float:
        """Until the next retry scheduled here falls due, or the poll interval."""
        now = time.time()
        while self._retries_due and self._retries_due[0] <= now:
            heapq.heappop(self._retries_due)
        if self._retries_due:
            return max(0.005, min(self.poll_interval, self._retries_due[0] - now))
        return self.poll_interval

    async def claim_and_handle(self) -> bool:
        free = self.concurrency - len(self._tasks)
        if free <= 0:
            return False  # a finished attempt wakes the loop
        await self._refresh_disabled()
        busy = [key for key, count in self._in_hand.items() if count >= self.per_target]
        jobs = await self.store.claim_forward_jobs(
            self.owner, time.time(), min(free, self.per_target), self.lease_seconds,
            self.kinds, exclude_targets=busy)
        for job in jobs:
            key = (job.kind, job.target)
            self._in_hand[key] = self._in_hand.get(key, 0) + 1
            task = asyncio.create_task(self._attempt(job), name=f"forward-{job.id}")
            self._tasks.add(task)
            task.add_done_callback(self._attempt_done)
        return bool(jobs)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()  # its target (and a place) is free: claim again

    async def run(self) -> None:
        try:
            await super().run()
            if self._tasks:  # stopping: let attempts in flight record their outcome
                await asyncio.wait(set(self._tasks))
        finally:
            for task in list(self._tasks):
                task.cancel()  # its lease expires and another attempt is made later

    async def _attempt(self, job: ClaimedForward) -> None:
        key = (job.kind, job.target)
        slot = self._slots.setdefault(key, asyncio.Semaphore(self.per_target))
        try:
            async with slot:
                await self._deliver(job)
        finally:
            self._in_hand[key] -= 1
            if not self._in_hand[key]:
                del self._in_hand[key]
                self._slots.pop(key, None)

    async def _deliver(self, job: ClaimedForward) -> None:
        try:
            if job.kind == "email":
                answer = await self._send_mail(job)
            else:
                answer = await self._post_webhook(job)
        except Exception as exc:  # every failure is recorded; none may lose the job
            await self._failed(job, exc)
            return
        metrics.FORWARDS.labels(kind=job.kind, outcome="delivered").inc()
        log.info("forwarded", extra={"job": job.id, "kind": job.kind, "target": job.target,
                                     "inbound_id": job.inbound_id})
        with contextlib.suppress(StoreUnavailable):
            await self.store.forward_done(job.id, self.owner, time.time(), detail=answer)

    async def check_targets(self) -> None:
        """Warn at start about webhook URLs the egress guard will refuse, and webhooks
        disabled after a 410, instead of finding out from the first dead letter."""
        for name, webhook in self.settings.inbound.webhooks.items():
            parts = urlsplit(webhook.url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                await self.egress.resolve(parts.hostname or "", port)
            except EgressRefused as exc:
                log.warning("webhook target refused by the egress guard (see "
                            "inbound.egress_allowed_networks)",
                            extra={"webhook": name, "error": str(exc)})
        await self._refresh_disabled()
        for name, info in self._disabled.items():
            log.warning("webhook disabled after 410 Gone: its forwards are dead letters "
                        "until `sms-bridge enable-target NAME`",
                        extra={"webhook": name, "reason": info.get("reason")})

    async def _send_mail(self, job: ClaimedForward) -> str:
        """Send the job's mail; the smarthost's reply (:func:`smtp_answer`)."""
        mail = self.settings.mail
        message = message_from_payload(job.payload)
        message_id = forward_message_id(self.bridge_id, job.id, mail.from_address)
        received_at = payload_received_at(job.payload)
        content = build_inbound_email(
            self.settings, message, job.target, message_id=message_id,
            received_at=received_at,
            thread_root=await self._thread_root(job, message, message_id, received_at))
        # send_via_smarthost bounds each phase (mail.command_timeout, mail.timeout).
        return smtp_answer(await send_via_smarthost(mail, job.target, content))

    async def _thread_root(self, job: ClaimedForward, message: InboundMessage,
                           message_id: str, received_at: float | None) -> str | None:
        """The Message-ID of the first mail of the conversation this mail continues, or None
        when it starts one. Decided in the store on the first attempt and kept with the job:
        every attempt of a forward carries the same headers, across restarts and instances."""
        idle = self.settings.inbound.thread_idle
        if not idle:
            return None
        at = received_at if received_at is not None else time.time()
        root = await self.store.assign_thread(job.id, thread_key(message, job.target),
                                              message_id, at, idle)
        return None if root == message_id else root

    async def _post_webhook(self, job: ClaimedForward) -> str:
        """Post the job's payload; the webhook's 2xx answer (:func:`webhook_answer`)."""
        webhook = self.settings.inbound.webhooks.get(job.target)
        if webhook is None:
            raise TargetNotConfigured(f"webhook {job.target!r} is no longer configured")
        if job.target in self._disabled:
            info = await self._disabled_now(job.target)
            if info is not None:
                raise TargetDisabled(
                    f"webhook {job.target!r} is disabled ({info.get('reason', '?')}): "
                    f"`sms-bridge enable-target {job.target}`, then `sms-bridge redeliver`")
        # The id is stable across retries so the receiver can deduplicate (Standard Webhooks).
        headers = signature_headers(webhook.secret.get_secret_value(),
                                    f"msg_{self.bridge_id}_{job.id}",
                                    job.payload)
        headers["Content-Type"] = "application/json"
        # The status decides; the answer's body is read up to the cap, and its start kept
        # for the attempt's history.
        response = await guarded_request(self.client, self.egress, "POST", webhook.url,
                                         timeout=webhook.timeout, content=job.payload,
                                         headers=headers, truncate_answer=True)
        status = response.status_code
        answer = webhook_answer(response)
        if 200 <= status < 300:
            return answer
        if status == 410:
            await self._disable(job)
            raise TargetGone("webhook answered HTTP 410 Gone: target disabled", answer)
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
        # Any other answer (3xx included: redirects are not followed) is retried.
        raise WebhookFailed(status, retry_after, answer)

    async def _refresh_disabled(self) -> None:
        """Which webhooks are disabled, read from the store every few seconds (another
        process or the CLI may have changed it); the gauge follows."""
        now = time.monotonic()
        if now - self._disabled_read_at < self.DISABLED_REFRESH:
            return
        disabled: dict[str, dict[str, Any]] = {}
        try:
            for name in self.settings.inbound.webhooks:
                info = await read_disabled(self.store, name)
                if info is not None:
                    disabled[name] = info
        except StoreUnavailable:
            return
        self._disabled, self._disabled_read_at = disabled, now
        metrics.FORWARD_TARGETS_DISABLED.set(len(disabled))

    async def _disabled_now(self, name: str) -> dict[str, Any] | None:
        """Read again before refusing a forward: the target may have been enabled since."""
        info = await read_disabled(self.store, name)
        if info is None:
            self._disabled.pop(name, None)
            metrics.FORWARD_TARGETS_DISABLED.set(len(self._disabled))
        return info

    async def _disable(self, job: ClaimedForward) -> None:
        info = {"at": time.time(), "reason": "HTTP 410 Gone", "job": job.id}
        with contextlib.suppress(StoreUnavailable):
            await self.store.set_meta(disabled_key(job.target), json.dumps(info))
        self._disabled[job.target] = info
        metrics.FORWARD_TARGETS_DISABLED.set(len(self._disabled))
        log.warning("webhook answered 410 Gone: disabled until `sms-bridge enable-target "
                    "NAME`", extra={"webhook": job.target, "job": job.id})

    async def _failed(self, job: ClaimedForward, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"[:500]
        permanent = is_permanent_forward_error(exc)
        now = time.time()
        delay = self.policy.backoff(job.attempts)
        if isinstance(exc, WebhookFailed) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)  # RFC 9110 §10.2.3: not before
        dead = permanent or now + delay > job.deadline
        metrics.FORWARDS.labels(kind=job.kind, outcome="dead" if dead else "retry").inc()
        log.warning("forwarding failed", extra={"job": job.id, "kind": job.kind,
                                                "target": job.target, "error": error,
                                                "dead_letter": dead})
        # What the attempt's history shows: the target's answer where it gave one.
        if isinstance(exc, WebhookFailed | TargetGone) and exc.answer:
            detail = exc.answer
        elif isinstance(exc, aiosmtplib.SMTPResponseException):
            detail = smtp_answer(exc)
        else:
            detail = error
        with contextlib.suppress(StoreUnavailable):
            if dead:
                await self.store.forward_dead(job.id, self.owner, error, now=now,
                                              detail=detail)
            else:
                await self.store.forward_retry(job.id, self.owner, error, now + delay,
                                               now=now, detail=detail)
                heapq.heappush(self._retries_due, now + delay)

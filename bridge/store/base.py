"""The store interface: everything the bridge persists goes through these methods, one
protocol per role; :class:`Store` is their union.

Every method that returns normally has committed durably. Implementations raise
:class:`bridge.errors.StoreUnavailable` when they cannot, so callers answer "try later"
(SMTP 451 4.3.0) and promise nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bridge.models import (
    ClaimedForward,
    DeliveryReport,
    EnqueueResult,
    ForwardJob,
    InboundMessage,
    InboundRecord,
    MailEnvelope,
    OutboundMail,
    ReplyRequest,
    SendIntent,
    SendOutcome,
    SendRequest,
    StoredMessage,
    StoredResponse,
)
from bridge.store.console import (
    AuditEntry,
    InboundFilter,
    MessageFilter,
    ProviderExchange,
    UpstreamOutcome,
)
from bridge.store.rows import (
    ClaimedMail,
    DuePoll,
    ForwardJobListing,
    InboundListing,
    MailListing,
    MessageEvent,
    ReplyScript,
    ReportListing,
)


class Lifecycle(Protocol):
    """Opening, closing and probing the store."""

    # Set by open(migrate=True): the schema version found and the one left (equal when
    # there was nothing to do; found 0: a new store), for ``sms-bridge migrate`` to report.
    schema_change: tuple[int, int] | None

    async def open(self, *, migrate: bool = True) -> None:
        """Connect and bring the schema up to date; with ``migrate=False`` (the read-only
        commands) a missing or older schema is refused with a message naming
        ``sms-bridge migrate`` instead of being created or upgraded."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store can commit a write now (``/readyz``):
        answering reads is not enough (a full disk, a read-only database)."""


class Outbox(Protocol):
    """The SMS sends: queued from a mail, claimed, sent once, their status history and
    status polls."""

    async def enqueue(
        self,
        envelope: MailEnvelope,
        batches: Sequence[tuple[str | None, Sequence[SendRequest]]],
        *,
        now: float,
        dedup_window: float,
        reply: ReplyRequest | None = None,
    ) -> EnqueueResult:
        """Commit a mail's sends in one transaction.

        ``batches`` pairs a deduplication key (Message-ID + recipient, or ``None``) with the
        sends for that recipient. A key already seen within ``dedup_window`` seconds skips its
        sends: an MTA resending a mail whose 250 it missed sends nothing twice. ``reply``, if
        given, is queued in the same transaction as the sends, with their new ids (a mail
        queue row of kind ``v2_answer``; the mail relay renders it): no SMS of the mail
        goes out without its answer queued. No mail is built here.
        """
        ...

    async def claim_due(
        self, owner: str, now: float, limit: int, lease_seconds: float
    ) -> list[StoredMessage]:
        """Claim queued messages that are due, and ``sending`` ones whose lease expired
        unless ``owner`` holds them (an owner's own rows are in flight there: their outcome
        may be waiting for the store). Each claim raises the message's ``lease_epoch``; it
        does not count as an attempt."""
        ...

    async def renew_leases(self, owner: str, now: float, lease_seconds: float) -> int:
        """Extend every outbox lease ``owner`` holds to ``now + lease_seconds`` (its sends are
        still in flight); returns how many."""
        ...

    async def record_intent(
        self, owner: str, upstream: str, leases: Sequence[tuple[int, int]],
        fingerprint: str, now: float,
    ) -> SendIntent | None:
        """Before a provider request: record it (messages with the claims' ``lease_epoch``,
        the request's fingerprint) and count it in the ``maybe_sent`` of each message whose
        claim still holds. Only those may be sent; None when no claim holds."""
        ...

    async def record_outcomes(
        self, owner: str, intent_id: int | None, outcomes: Sequence[SendOutcome], now: float,
    ) -> list[int]:
        """Commit the outcomes of one request (``intent_id``), or of none (held before any
        request: None), in one transaction, each only while the claim it names holds; end
        the intent. An outcome of a request counts one attempt and, unless ``unknown``,
        takes the request's doubt back from ``maybe_sent``. Returns the ids recorded."""
        ...

    async def resolve_ambiguous(self, message_id: int, *, sent: bool, now: float) -> bool:
        """An operator settles a held (``ambiguous``) message: it was sent (``sent``), or it
        is to be sent again now, its doubts cleared. False when it is not held."""
        ...

    async def next_due_at(self) -> float | None:
        """When the earliest queued message becomes due, or ``None`` if none is queued."""
        ...

    async def list_messages(
        self, *, limit: int = 50, status: str | None = None
    ) -> list[StoredMessage]:
        """Newest first; ``status`` is an outbox status (queued, sending, sent, failed,
        ambiguous) or a provider's (delivered, undelivered, expired, rejected, unknown)."""
        ...

    async def message_events(self, message_id: int) -> list[MessageEvent]: ...

    async def message_events_of(
        self, message_ids: Sequence[int]
    ) -> dict[int, list[MessageEvent]]:
        """The status history of each of ``message_ids`` (oldest event first), in one query
        (``messages --json`` lists hundreds)."""
        ...

    async def due_status_polls(
        self, upstream: str, now: float, limit: int, lease_seconds: float = 60.0
    ) -> list[DuePoll]:
        """Claim the messages whose status poll is due (once per cluster)."""
        ...

    async def reschedule_status_polls(
        self, schedule: Sequence[tuple[int, float | None]]
    ) -> None: ...

    async def purge(self, now: float, dedup_window: float) -> None:
        """Forget deduplication keys older than the window."""
        ...

    async def queue_stats(self, now: float) -> dict[str, float]: ...


class MailQueue(Protocol):
    """Mails the bridge sends itself (replies, bounces), queued and claimed."""

    async def queue_mail(self, mail: OutboundMail, now: float) -> None:
        """Queue a mail on its own (a v2 error reply, which has no sends)."""
        ...

    async def claim_mails(
        self, owner: str, now: float, limit: int, lease_seconds: float
    ) -> list[ClaimedMail]:
        """Claim outgoing mails that are due: ``(id, mail, attempts)``."""
        ...

    async def mail_done(self, mail_id: int, owner: str, now: float) -> None:
        """Record a sent mail; only the lease holder's outcome counts."""
        ...

    async def mail_retry(
        self, mail_id: int, owner: str, error: str, next_attempt_at: float | None
    ) -> None:
        """Retry at ``next_attempt_at``, or give up (``None``) and keep the row as failed."""
        ...

    async def list_mails(self, *, limit: int = 50) -> list[MailListing]: ...


class InboundLog(Protocol):
    """Inbound SMS, deduplicated by ``(source, sms_id)``, and short-code answers."""

    async def record_inbound(
        self,
        message: InboundMessage,
        *,
        now: float,
        dedup_window: float,
        state: str,
        response: StoredResponse | None,
        jobs: Sequence[ForwardJob],
        forward_deadline: float,
    ) -> InboundRecord:
        """Insert-or-fetch on (source, sms_id): the first request commits the message, its
        answer and its forwarding jobs in one transaction; a repeat gets the stored record
        (``duplicate=True``) and commits nothing. Without ``sms_id`` the same content within
        ``dedup_window`` seconds counts as a repeat."""
        ...

    async def get_inbound(self, source: str, sms_id: str) -> InboundRecord | None: ...

    async def complete_inbound(
        self, inbound_id: int, response: StoredResponse, script_error: str | None
    ) -> StoredResponse:
        """Store a short-code answer unless one was stored first; return the one that stands."""
        ...

    async def inbound_answer(self, inbound_id: int) -> StoredResponse | None:
        """The stored answer of a short-code hit; None while it is pending (polled by the
        repeats that wait for the caller of its reply script)."""
        ...

    async def claim_inbound_answer(self, inbound_id: int, now: float, lease: float) -> bool:
        """Take over the reply-script call of a pending short-code hit whose caller's hold
        ran out: the hold lasts ``lease`` seconds from the hit (``received_at``) or from the
        last take-over. True for the one caller that got it: a caller that died mid-call is
        replaced once per hold, never by two at once."""
        ...

    async def list_inbound(self, *, limit: int = 50) -> list[InboundListing]: ...


class ForwardQueue(Protocol):
    """The forwarding jobs of inbound SMS (e-mail, webhooks) and their threads."""

    async def claim_forward_jobs(
        self, owner: str, now: float, limit: int, lease_seconds: float,
        kinds: Sequence[str] = ("email", "webhook"),
        exclude_targets: Sequence[tuple[str, str]] = (),
    ) -> list[ClaimedForward]:
        """Due jobs of ``kinds``, leased to ``owner``; none for the ``(kind, target)`` pairs
        of ``exclude_targets`` (targets the caller has enough of in flight already)."""
        ...

    async def forward_done(self, job_id: int, owner: str, now: float, *,
                           detail: str = "") -> None:
        """Record an outcome; only the current lease holder's outcome is recorded. Each
        outcome recorded adds, in its transaction, an attempt to the job's history (kept for
        the console: its last ones, pruned with the traces), ``at`` ``now`` (the time of the
        call when not given) with ``detail``: the target's answer (an HTTP status and the
        start of the body, an SMTP reply), by default the error; redacted by the store."""
        ...

    async def forward_retry(
        self, job_id: int, owner: str, error: str, next_attempt_at: float, *,
        now: float | None = None, detail: str | None = None,
    ) -> None: ...

    async def forward_dead(self, job_id: int, owner: str, error: str, *,
                           now: float | None = None, detail: str | None = None) -> None: ...

    async def assign_thread(
        self, job_id: int, thread_key: str, message_id: str, at: float, idle: float
    ) -> str:
        """The Message-ID of the first mail of the thread the mail of forwarding job
        ``job_id`` (Message-ID ``message_id``, for an SMS received ``at``) belongs to;
        ``message_id`` itself when it starts one. The thread of ``thread_key`` goes on while
        its last SMS is less than ``idle`` seconds older than this one, else this mail starts
        a new one. Decided once per job: every later call for it returns the same answer."""
        ...

    async def list_forward_jobs(
        self, *, status: str | None = None, limit: int = 100
    ) -> list[ForwardJobListing]: ...

    async def redeliver(
        self, job_ids: Sequence[int] | None, now: float, deadline: float
    ) -> int: ...


class DeliveryReports(Protocol):
    """Providers' delivery reports, matched to the messages they name."""

    async def record_delivery_reports(
        self, source: str, reports: Sequence[DeliveryReport], now: float
    ) -> int: ...

    async def list_delivery_reports(
        self, *, unmatched: bool = False, limit: int = 100
    ) -> list[ReportListing]:
        """Delivery reports, newest first; ``unmatched``: only those whose provider id names
        no message sent here (yet)."""
        ...


class ScriptRegistry(Protocol):
    """Reply scripts registered through the admin API."""

    async def list_reply_scripts(self) -> list[ReplyScript]: ...

    async def save_reply_script(
        self, script: dict[str, Any], now: float, script_id: int | None = None
    ) -> ReplyScript | None: ...

    async def delete_reply_script(self, script_id: int) -> bool: ...


class Coordination(Protocol):
    """What the processes of a cluster share: named leases, who is alive, leases of
    the dead ended, the store's id and small settings (``meta``)."""

    async def acquire_lease(self, name: str, owner: str, now: float, ttl: float) -> bool:
        """A named lease held by one process of the cluster at a time."""
        ...

    async def release_lease(self, name: str, owner: str) -> None: ...

    async def heartbeat(self, owner: str, now: float, ttl: float) -> int:
        """Record this process as alive; return how many are."""
        ...

    async def expire_leases(self, is_dead: Callable[[str], bool]) -> int:
        """End the leases (outbox, forwarding jobs, outgoing mail) of owners ``is_dead`` says
        are gone, so their rows are claimed at once instead of after the lease time. Returns
        how many were released."""
        ...

    async def bridge_id(self) -> str:
        """A random id made once per store; prefixes the idempotency keys sent upstream."""
        ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...


class ConsoleQueries(Protocol):
    """The operators' console and the admin API (see :mod:`bridge.store.console`)."""

    async def search_messages(self, search: MessageFilter, *, limit: int = 50
                              ) -> list[StoredMessage]:
        """Messages matching ``search``, newest first."""
        ...

    async def message_trace(self, message_id: int) -> dict[str, Any] | None:
        """A message with its mail (headers, capped raw mail), status history, delivery
        reports, provider exchanges, the other messages of its mail and its bounce."""
        ...

    async def search_inbound(self, search: InboundFilter, *, limit: int = 50
                             ) -> list[dict[str, Any]]: ...

    async def inbound_detail(self, inbound_id: int) -> dict[str, Any] | None:
        """An inbound SMS with its stored request and answer and its forwarding jobs."""
        ...

    async def list_forwards(self, *, status: str | None = None, before_id: int | None = None,
                            limit: int = 100) -> list[dict[str, Any]]: ...

    async def resolve_dead_letters(self, job_ids: Sequence[int]) -> int:
        """Dead letters an operator dealt with: status ``resolved``, never sent again."""
        ...

    async def console_stats(self, now: float) -> dict[str, Any]:
        """Message and forwarding counts now; sends and inbound SMS per minute over the
        last hour (60 counts, oldest first)."""
        ...

    async def record_exchanges(self, exchanges: Sequence[ProviderExchange]) -> None: ...

    async def record_upstream_outcomes(self, outcomes: dict[str, UpstreamOutcome]) -> None: ...

    async def upstream_health(self) -> list[dict[str, Any]]: ...

    async def prune_traces(self, before: float) -> int:
        """Forget raw mails, provider exchanges and forward attempts older than ``before``."""
        ...

    async def record_audit(self, entry: AuditEntry) -> None: ...

    async def list_audit(self, *, before_id: int | None = None, limit: int = 100
                         ) -> list[dict[str, Any]]: ...


class Store(Lifecycle, Outbox, MailQueue, InboundLog, ForwardQueue, DeliveryReports,
            ScriptRegistry, Coordination, ConsoleQueries, Protocol):
    """Every role of the store: what an engine implements, and what the bridge holds."""


# The name the callers have used for the whole store.
OutboxStore = Store

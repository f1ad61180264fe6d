"""What the operators' console and the admin API read and write, shared by both engines:
search filters (turned into SQL for either placeholder style), the traces kept for a
message's timeline (provider exchanges, upstream health) and audit entries.

Traces are diagnostics, not the outbox: they are capped (:data:`MAX_TRACE_BYTES`), redacted
before they are handed to the store, written in groups off the hot path, and pruned after
``store.trace_retention_days``. A forward's attempts (``forward_attempts``) are written with
the outcome of each attempt, in its transaction, and pruned with the traces.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bridge.models import MessageStatus

# The most of one mail, one provider request or one provider answer a trace keeps.
MAX_TRACE_BYTES = 64 * 1024

# Outbox statuses and the provider's: a status filter names one or the other.
OUTBOX_STATUSES = tuple(status.value for status in MessageStatus)
PROVIDER_STATUSES = ("delivered", "undelivered", "expired", "rejected", "unknown")

# Meta keys of signed-out console sessions (the value: when the session would have ended).
REVOKED_SESSION = "console_signed_out:"

# Rows of the search lists: at most this many per page.
MAX_PAGE = 500

# A forward's attempts kept (its history on the inbound page): the last ones of each job, a
# job retried for a day can make hundreds. Each attempt's detail (the target's answer or
# the error) is cut at MAX_ATTEMPT_DETAIL characters.
MAX_ATTEMPTS_KEPT = 50
MAX_ATTEMPT_DETAIL = 1024
ATTEMPT_KEYS = ("at", "outcome", "detail")


@dataclass(frozen=True)
class MessageFilter:
    """A search of outbound messages; every field narrows it, None leaves it open.

    ``phone``: digits (anything else is dropped, so ``+7 916 123-45-67`` works); eleven or
    more digits match the number exactly, fewer match numbers containing them. ``text``:
    a case-insensitive substring. ``since``/``until``: Unix times of the message's
    creation (inclusive / exclusive). ``before_id``: the next page after that id."""

    phone: str | None = None
    account: str | None = None
    status: str | None = None
    since: float | None = None
    until: float | None = None
    text: str | None = None
    before_id: int | None = None


@dataclass(frozen=True)
class InboundFilter:
    """A search of inbound SMS, as :class:`MessageFilter` (``state``: routed, unrouted,
    pending, answered; ``source``: the configured source or polling upstream)."""

    phone: str | None = None
    source: str | None = None
    state: str | None = None
    since: float | None = None
    until: float | None = None
    text: str | None = None
    before_id: int | None = None


@dataclass(frozen=True)
class ProviderExchange:
    """One HTTP request to a provider and its answer, redacted and capped, with the
    outbound messages it carried (several for a batch request)."""

    at: float
    upstream: str
    message_ids: tuple[int, ...]
    method: str
    url: str
    request: bytes
    status: int | None
    response: bytes
    error: str | None
    duration: float


@dataclass
class UpstreamOutcome:
    """The outcomes of an upstream's sends since the last flush, folded: the store adds
    them to what it has (``failures`` continue the run of consecutive failures unless a
    success came after them)."""

    last_success_at: float | None = None
    last_error_at: float | None = None
    last_error: str | None = None
    failures: int = 0  # consecutive failures after the last success of this fold
    paused_until: float | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One operator action: who (operator name, or ``admin`` for the shared token, with
    ``via``: console or api), what, on what, and from where."""

    at: float
    who: str
    action: str
    target: str = ""
    detail: str = ""
    remote: str = ""
    via: str = "console"


AUDIT_KEYS = ("id", "at", "who", "via", "action", "target", "detail", "remote")
HEALTH_KEYS = ("upstream", "last_success_at", "last_error_at", "last_error",
               "consecutive_failures", "paused_until")
EXCHANGE_KEYS = ("id", "at", "upstream", "method", "url", "request", "status", "response",
                 "error", "duration")
MAIL_KEYS = ("id", "received_at", "mail_from", "message_id", "peer", "format", "headers",
             "raw", "raw_size", "rcpt_to")
FORWARD_KEYS = ("id", "inbound_id", "kind", "target", "status", "attempts", "last_error",
                "created_at", "next_attempt_at", "deadline")
INBOUND_LIST_KEYS = ("id", "source", "kind", "sms_id", "phone", "recipient", "text",
                     "charset_error", "state", "script_error", "received_at", "forwards",
                     "delivered", "dead")
INBOUND_DETAIL_KEYS = ("id", "source", "kind", "sms_id", "phone", "recipient", "text",
                       "charset", "charset_error", "state", "script_error", "received_at",
                       "raw", "response_status", "response_body", "response_type")
BOUNCE_KEYS = ("id", "kind", "mail_to", "status", "attempts", "last_error", "created_at",
               "content")

_NOT_DIGITS = re.compile(r"\D")


def phone_digits(value: str) -> str:
    return _NOT_DIGITS.sub("", value)


def like_pattern(value: str) -> str:
    """``value`` as a LIKE pattern matching it anywhere (``\\`` escapes ``%`` and ``_``)."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


Placeholders = Callable[[], str]


def numbered(start: int = 1) -> Placeholders:
    """PostgreSQL's ``$1, $2 …``."""
    counter: Iterator[int] = iter(range(start, 1 << 30))
    return lambda: f"${next(counter)}"


def question_marks() -> str:
    """SQLite's ``?``."""
    return "?"


@dataclass
class Where:
    """Conditions joined by AND, with their parameters in order."""

    mark: Placeholders
    conditions: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, condition: str, *values: Any) -> None:
        """``condition`` with ``{}`` for each value's placeholder."""
        marks = [self.mark() for _ in values]
        self.conditions.append(condition.format(*marks))
        self.params.extend(values)

    def sql(self) -> str:
        return ("WHERE " + " AND ".join(self.conditions)) if self.conditions else ""


def message_where(search: MessageFilter, mark: Placeholders, *, fold: str) -> Where:
    """The WHERE of a message search over ``messages m``. ``fold`` is the SQL function
    that case-folds text (a Unicode-aware one registered on SQLite; ``lower`` on
    PostgreSQL)."""
    where = Where(mark)
    digits = phone_digits(search.phone or "")
    if digits:
        if len(digits) >= 11:
            where.add("m.phone = {}", digits)
        else:
            where.add("m.phone LIKE {}", like_pattern(digits))
    if search.account:
        where.add("m.account = {}", search.account)
    if search.status:
        column = "m.delivery_status" if search.status in PROVIDER_STATUSES else "m.status"
        where.add(f"{column} = {{}}", search.status)
    if search.since is not None:
        where.add("m.created_at >= {}", search.since)
    if search.until is not None:
        where.add("m.created_at < {}", search.until)
    if search.text:
        where.add(f"{fold}(m.text) LIKE {fold}({{}}) ESCAPE '\\'", like_pattern(search.text))
    if search.before_id is not None:
        where.add("m.id < {}", search.before_id)
    return where


def inbound_where(search: InboundFilter, mark: Placeholders, *, fold: str) -> Where:
    """The WHERE of an inbound search over ``inbound i`` (see :func:`message_where`)."""
    where = Where(mark)
    digits = phone_digits(search.phone or "")
    if digits:
        if len(digits) >= 11:
            where.add("i.phone = {}", digits)
        else:
            where.add("i.phone LIKE {}", like_pattern(digits))
    if search.source:
        where.add("i.source = {}", search.source)
    if search.state:
        where.add("i.state = {}", search.state)
    if search.since is not None:
        where.add("i.received_at >= {}", search.since)
    if search.until is not None:
        where.add("i.received_at < {}", search.until)
    if search.text:
        where.add(f"{fold}(i.text) LIKE {fold}({{}}) ESCAPE '\\'", like_pattern(search.text))
    if search.before_id is not None:
        where.add("i.id < {}", search.before_id)
    return where


def per_minute(times: list[float], now: float, minutes: int = 60) -> list[int]:
    """Counts per minute for the last ``minutes`` minutes, oldest first; the last bucket is
    the minute that ends now."""
    counts = [0] * minutes
    start = now - minutes * 60
    for at in times:
        if start <= at <= now:
            counts[min(int((at - start) // 60), minutes - 1)] += 1
    return counts


def fold_outcomes(into: dict[str, UpstreamOutcome], upstream: str, at: float,
                  error: str | None, paused_until: float | None) -> None:
    """Add one send outcome to the pending fold of ``upstream``."""
    outcome = into.setdefault(upstream, UpstreamOutcome())
    if error is None:
        outcome.last_success_at = at
        outcome.failures = 0
    else:
        outcome.last_error_at = at
        outcome.last_error = error
        outcome.failures += 1
    if paused_until is not None:
        outcome.paused_until = max(paused_until, outcome.paused_until or 0.0)


def merge_health(stored: dict[str, Any] | None, upstream: str,
                 fold: UpstreamOutcome) -> dict[str, Any]:
    """An upstream's health row after the outcomes of ``fold``."""
    row: dict[str, Any] = dict(stored) if stored else dict.fromkeys(HEALTH_KEYS)
    row["upstream"] = upstream
    failures = int(row.get("consecutive_failures") or 0)
    if fold.last_success_at is not None:
        row["last_success_at"] = max(fold.last_success_at, row["last_success_at"] or 0.0)
        failures = fold.failures
    else:
        failures += fold.failures
    row["consecutive_failures"] = failures
    if fold.last_error_at is not None:
        row["last_error_at"] = fold.last_error_at
        row["last_error"] = fold.last_error
    if fold.paused_until is not None:
        row["paused_until"] = max(fold.paused_until, row["paused_until"] or 0.0)
    return row

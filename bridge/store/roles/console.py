"""The operators' console and the admin API (:class:`bridge.store.base.ConsoleQueries`):
searches, a message's trace, an inbound SMS's detail, counts, traces and the audit log.

Searches make their WHERE at run time (:mod:`bridge.store.console`); text is case-folded by
the engine's ``FOLD`` function (a Unicode-aware one registered on SQLite, whose ``lower``
folds ASCII only; ``lower`` on PostgreSQL, by the database's locale)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bridge.models import StoredMessage
from bridge.store.common import MESSAGE_COLUMNS, REPORT_KEYS, row_to_message
from bridge.store.console import (
    ATTEMPT_KEYS,
    AUDIT_KEYS,
    BOUNCE_KEYS,
    EXCHANGE_KEYS,
    FORWARD_KEYS,
    HEALTH_KEYS,
    INBOUND_DETAIL_KEYS,
    INBOUND_LIST_KEYS,
    MAIL_KEYS,
    OUTBOX_STATUSES,
    AuditEntry,
    InboundFilter,
    MessageFilter,
    ProviderExchange,
    UpstreamOutcome,
    inbound_where,
    merge_health,
    message_where,
    per_minute,
    question_marks,
)
from bridge.store.queries import Array, Op, SqlRoles, count, query, row, rows, value

INBOUND_LIST_SQL = (
    "SELECT i.id, i.source, i.kind, i.sms_id, i.phone, i.recipient, i.text, "
    "i.charset_error, i.state, i.script_error, i.received_at, "
    "(SELECT COUNT(*) FROM forward_jobs f WHERE f.inbound_id = i.id), "
    "(SELECT COUNT(*) FROM forward_jobs f WHERE f.inbound_id = i.id "
    " AND f.status = 'delivered'), "
    "(SELECT COUNT(*) FROM forward_jobs f WHERE f.inbound_id = i.id AND f.status = 'dead') "
    "FROM inbound i"
)


def _keyed(keys: Sequence[str], found: Any) -> dict[str, Any]:
    # A boolean column comes back as 0 or 1 from either engine.
    return dict(zip(keys, (int(v) if isinstance(v, bool) else v for v in tuple(found)),
                    strict=True))


def search_messages(search: MessageFilter, limit: int, fold: str) -> Op[list[StoredMessage]]:
    where = message_where(search, question_marks, fold=fold)
    found = yield query(f"SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN mails ml "
                        f"ON ml.id = m.mail_id {where.sql()} ORDER BY m.id DESC LIMIT ?",
                        *where.params, limit)
    return [row_to_message(tuple(r)) for r in found]


def message_trace(message_id: int) -> Op[dict[str, Any] | None]:
    """Everything kept of one message: the message, the mail it came from (headers and the
    capped raw mail), its status history, delivery reports, the provider requests and
    answers that carried it, the other messages of its mail and its bounce."""
    found = yield row("message_trace", message_id)
    if found is None:
        return None
    values = tuple(found)
    message = row_to_message(values[:18])
    mail_id, delivery_detail, updated_at = values[18], values[19], values[20]
    mail = None
    siblings: list[dict[str, Any]] = []
    if mail_id is not None:
        mail_row = yield row("trace_mail", mail_id)
        mail = _keyed(MAIL_KEYS, mail_row) if mail_row else None
        siblings = [{"id": r[0], "phone": r[1], "status": r[2]}
                    for r in (yield rows("trace_siblings", mail_id, message_id))]
    events = [{"at": r[0], "status": r[1], "detail": r[2]}
              for r in (yield rows("message_events", message_id))]
    reports = [_keyed(REPORT_KEYS, r) for r in (yield rows("trace_reports", message_id))]
    exchanges = [_keyed(EXCHANGE_KEYS, r)
                 for r in (yield rows("trace_exchanges", message_id))]
    bounce = None
    failed_at = [e["at"] for e in events if e["status"] == "failed"]
    if message.status == "failed" and failed_at:
        bounce_row = yield row("trace_bounce", failed_at[-1], message.mail_from)
        bounce = _keyed(BOUNCE_KEYS, bounce_row) if bounce_row else None
    return {"message": message, "delivery_detail": delivery_detail, "updated_at": updated_at,
            "mail": mail, "siblings": siblings, "events": events, "reports": reports,
            "exchanges": exchanges, "bounce": bounce}


def search_inbound(search: InboundFilter, limit: int, fold: str) -> Op[list[dict[str, Any]]]:
    where = inbound_where(search, question_marks, fold=fold)
    found = yield query(f"{INBOUND_LIST_SQL} {where.sql()} ORDER BY i.id DESC LIMIT ?",
                        *where.params, limit)
    return [_keyed(INBOUND_LIST_KEYS, r) for r in found]


def inbound_detail(inbound_id: int) -> Op[dict[str, Any] | None]:
    """One inbound SMS with the request as stored (secrets masked), its answer, and its
    forwarding jobs with their attempts."""
    found = yield row("inbound_detail", inbound_id)
    if found is None:
        return None
    detail = _keyed(INBOUND_DETAIL_KEYS, found)
    detail["forwards"] = [_keyed(FORWARD_KEYS, r)
                          for r in (yield rows("inbound_forwards", inbound_id))]
    history: dict[int, list[dict[str, Any]]] = {f["id"]: [] for f in detail["forwards"]}
    for r in (yield rows("inbound_attempts", inbound_id)):
        history[r[0]].append(_keyed(ATTEMPT_KEYS, tuple(r)[1:]))
    for forward in detail["forwards"]:
        forward["attempt_history"] = history[forward["id"]]
    return detail


def list_forwards(status: str | None, before_id: int | None,
                  limit: int) -> Op[list[dict[str, Any]]]:
    """Forwarding jobs, newest first, with the inbound SMS's sender."""
    conditions: list[str] = []
    params: list[Any] = []
    if status:
        conditions.append("f.status = ?")
        params.append(status)
    if before_id is not None:
        conditions.append("f.id < ?")
        params.append(before_id)
    where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
    found = yield query(
        f"SELECT {', '.join('f.' + k for k in FORWARD_KEYS)}, i.phone, i.source "
        f"FROM forward_jobs f JOIN inbound i ON i.id = f.inbound_id {where} "
        "ORDER BY f.id DESC LIMIT ?", *params, limit)
    return [_keyed((*FORWARD_KEYS, "phone", "source"), r) for r in found]


def console_stats(now: float) -> Op[dict[str, Any]]:
    """Counts now, and sends and inbound SMS per minute over the last hour."""
    counts = dict.fromkeys(OUTBOX_STATUSES, 0)
    for status, number in (yield rows("count_by_status")):
        counts[str(status)] = int(number)
    counts["unknown"] = int((yield value("count_delivery_unknown")))
    start = now - 3600
    sent = [r[0] for r in (yield rows("sent_since", start))]
    # Inbound ids grow with time: read back from the newest in pages, stopping an hour back
    # (no index on the time, which every inbound insert would pay for).
    received: list[float] = []
    below: int | None = None
    while True:
        page = yield rows("inbound_page", below, below)
        received.extend(r[1] for r in page if r[1] >= start - 60)
        if len(page) < 2000 or page[-1][1] < start - 60:
            break
        below = page[-1][0]
    forwards = {status: 0 for status in ("queued", "sending", "dead")}
    for status, number in (yield rows("count_forwards")):
        forwards[str(status)] = int(number)
    return {"messages": counts, "forwards": forwards,
            "sent_per_minute": per_minute(sent, now),
            "inbound_per_minute": per_minute(received, now)}


def record_exchanges(exchanges: Sequence[ProviderExchange]) -> Op[None]:
    for ex in exchanges:
        exchange_id = yield value("insert_exchange", ex.at, ex.upstream, ex.method, ex.url,
                                  ex.request, ex.status, ex.response, ex.error, ex.duration)
        if ex.message_ids:
            yield count("link_exchange", Array(ex.message_ids), exchange_id)


def record_upstream_outcomes(outcomes: dict[str, UpstreamOutcome]) -> Op[None]:
    for upstream, fold in sorted(outcomes.items()):
        yield count("ensure_health", upstream)
        stored = yield row("health_of", upstream)
        merged = merge_health(_keyed(HEALTH_KEYS, stored), upstream, fold)
        yield count("update_health", merged["last_success_at"], merged["last_error_at"],
                    merged["last_error"], merged["consecutive_failures"],
                    merged["paused_until"], upstream)


def upstream_health() -> Op[list[dict[str, Any]]]:
    return [_keyed(HEALTH_KEYS, r) for r in (yield rows("upstream_health"))]


def prune_traces(before: float) -> Op[int]:
    mails = yield count("prune_raw_mails", before)
    yield count("prune_exchange_links", before)
    exchanges = yield count("prune_exchanges", before)
    attempts = yield count("prune_attempts", before)
    yield count("prune_signed_out", before)
    return int(mails + exchanges + attempts)


def record_audit(entry: AuditEntry) -> Op[None]:
    yield count("insert_audit", entry.at, entry.who, entry.via, entry.action, entry.target,
                entry.detail, entry.remote)


def list_audit(before_id: int | None, limit: int) -> Op[list[dict[str, Any]]]:
    return [_keyed(AUDIT_KEYS, r) for r in (yield rows("list_audit", before_id, before_id,
                                                       limit))]


def resolve_dead_letters(job_ids: Sequence[int]) -> Op[int]:
    return int((yield count("resolve_dead_letters", Array(job_ids))))


class ConsoleMethods(SqlRoles):
    async def search_messages(self, search: MessageFilter, *, limit: int = 50
                              ) -> list[StoredMessage]:
        return await self._read_op(lambda: search_messages(search, limit, self.FOLD))

    async def message_trace(self, message_id: int) -> dict[str, Any] | None:
        return await self._read_op(lambda: message_trace(message_id))

    async def search_inbound(self, search: InboundFilter, *, limit: int = 50
                             ) -> list[dict[str, Any]]:
        return await self._read_op(lambda: search_inbound(search, limit, self.FOLD))

    async def inbound_detail(self, inbound_id: int) -> dict[str, Any] | None:
        return await self._read_op(lambda: inbound_detail(inbound_id))

    async def list_forwards(self, *, status: str | None = None, before_id: int | None = None,
                            limit: int = 100) -> list[dict[str, Any]]:
        return await self._read_op(lambda: list_forwards(status, before_id, limit))

    async def resolve_dead_letters(self, job_ids: Sequence[int]) -> int:
        """Dead letters an operator dealt with: they leave the dead-letter list without
        being sent again."""
        return await self._lock_op(lambda: resolve_dead_letters(job_ids))

    async def console_stats(self, now: float) -> dict[str, Any]:
        return await self._read_op(lambda: console_stats(now))

    async def record_exchanges(self, exchanges: Sequence[ProviderExchange]) -> None:
        await self._lock_op(lambda: record_exchanges(exchanges))

    async def record_upstream_outcomes(self, outcomes: dict[str, UpstreamOutcome]) -> None:
        await self._lock_op(lambda: record_upstream_outcomes(outcomes))

    async def upstream_health(self) -> list[dict[str, Any]]:
        return await self._read_op(upstream_health)

    async def prune_traces(self, before: float) -> int:
        """Forget the raw mails, provider exchanges and forward attempts older than
        ``before``."""
        return await self._lock_op(lambda: prune_traces(before))

    async def record_audit(self, entry: AuditEntry) -> None:
        await self._lock_op(lambda: record_audit(entry))

    async def list_audit(self, *, before_id: int | None = None, limit: int = 100
                         ) -> list[dict[str, Any]]:
        return await self._read_op(lambda: list_audit(before_id, limit))

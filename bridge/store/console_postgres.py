"""The PostgreSQL store's queries for the operators' console and the admin API (see
:mod:`bridge.store.console`), mixed into :class:`bridge.store.postgres.PostgresStore`.

PostgreSQL's ``lower`` folds by the database's locale (ASCII only under the C locale); the
SQLite store folds every script."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from bridge.models import StoredMessage
from bridge.store.common import MESSAGE_COLUMNS, REPORT_COLUMNS, REPORT_KEYS, row_to_message
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
    REVOKED_SESSION,
    AuditEntry,
    InboundFilter,
    MessageFilter,
    ProviderExchange,
    UpstreamOutcome,
    inbound_where,
    merge_health,
    message_where,
    numbered,
    per_minute,
)

T = TypeVar("T")
Conn = Any  # asyncpg.Connection

INBOUND_LIST_SQL = (
    "SELECT i.id, i.source, i.kind, i.sms_id, i.phone, i.recipient, i.text, "
    "i.charset_error, i.state, i.script_error, i.received_at, "
    "(SELECT COUNT(*) FROM forward_jobs f WHERE f.inbound_id = i.id), "
    "(SELECT COUNT(*) FROM forward_jobs f WHERE f.inbound_id = i.id "
    " AND f.status = 'delivered'), "
    "(SELECT COUNT(*) FROM forward_jobs f WHERE f.inbound_id = i.id AND f.status = 'dead') "
    "FROM inbound i"
)


def _text(value: str) -> str:
    """PostgreSQL text holds no NUL and asyncpg encodes no lone surrogate."""
    return value.replace("\0", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _bool(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


class PostgresConsoleQueries:
    """Reads and writes of the console; ``_run`` is the store's."""

    _run: Callable[..., Awaitable[Any]]

    async def search_messages(self, search: MessageFilter, *, limit: int = 50
                              ) -> list[StoredMessage]:
        where = message_where(search, numbered(2), fold="lower")

        async def op(conn: Conn) -> list[StoredMessage]:
            rows = await conn.fetch(
                f"SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN mails ml "
                f"ON ml.id = m.mail_id {where.sql()} ORDER BY m.id DESC LIMIT $1",
                limit, *where.params)
            return [row_to_message(row) for row in rows]

        result: list[StoredMessage] = await self._run(op, write=False)
        return result

    async def message_trace(self, message_id: int) -> dict[str, Any] | None:
        async def op(conn: Conn) -> dict[str, Any] | None:
            row = await conn.fetchrow(
                f"SELECT {MESSAGE_COLUMNS}, m.mail_id, m.delivery_detail, m.updated_at "
                "FROM messages m LEFT JOIN mails ml ON ml.id = m.mail_id WHERE m.id = $1",
                message_id)
            if row is None:
                return None
            values = tuple(row)
            message = row_to_message(values[:18])
            mail_id, delivery_detail, updated_at = values[18], values[19], values[20]
            mail = None
            siblings: list[dict[str, Any]] = []
            if mail_id is not None:
                found = await conn.fetchrow(
                    f"SELECT {', '.join(MAIL_KEYS)} FROM mails WHERE id = $1", mail_id)
                mail = dict(zip(MAIL_KEYS, tuple(found), strict=True)) if found else None
                siblings = [{"id": r[0], "phone": r[1], "status": r[2]} for r in await conn.fetch(
                    "SELECT id, phone, status FROM messages WHERE mail_id = $1 AND id != $2 "
                    "ORDER BY id LIMIT 100", mail_id, message_id)]
            events = [{"at": r[0], "status": r[1], "detail": r[2]} for r in await conn.fetch(
                "SELECT at, status, detail FROM message_events WHERE message_id = $1 "
                "ORDER BY id", message_id)]
            reports = [dict(zip(REPORT_KEYS, tuple(r), strict=True)) for r in await conn.fetch(
                f"SELECT {REPORT_COLUMNS} FROM delivery_reports WHERE message_id = $1 "
                "ORDER BY id", message_id)]
            exchanges = [dict(zip(EXCHANGE_KEYS, tuple(r), strict=True)) for r in await conn.fetch(
                f"SELECT {', '.join('e.' + k for k in EXCHANGE_KEYS)} "
                "FROM provider_exchange_messages x JOIN provider_exchanges e "
                "ON e.id = x.exchange_id WHERE x.message_id = $1 ORDER BY e.id", message_id)]
            bounce = None
            if message.status == "failed":
                failed_at = [e["at"] for e in events if e["status"] == "failed"]
                if failed_at:
                    found = await conn.fetchrow(
                        f"SELECT {', '.join(BOUNCE_KEYS)} FROM outgoing_mail WHERE "
                        "kind = 'bounce' AND created_at = $1 AND mail_to = $2 "
                        "ORDER BY id LIMIT 1", failed_at[-1], message.mail_from)
                    bounce = dict(zip(BOUNCE_KEYS, tuple(found), strict=True)) if found else None
            return {"message": message, "delivery_detail": delivery_detail,
                    "updated_at": updated_at, "mail": mail, "siblings": siblings,
                    "events": events, "reports": reports, "exchanges": exchanges,
                    "bounce": bounce}

        result: dict[str, Any] | None = await self._run(op, write=False)
        return result

    async def search_inbound(self, search: InboundFilter, *, limit: int = 50
                             ) -> list[dict[str, Any]]:
        where = inbound_where(search, numbered(2), fold="lower")

        async def op(conn: Conn) -> list[dict[str, Any]]:
            rows = await conn.fetch(
                f"{INBOUND_LIST_SQL} {where.sql()} ORDER BY i.id DESC LIMIT $1",
                limit, *where.params)
            return [dict(zip(INBOUND_LIST_KEYS, map(_bool, tuple(row)), strict=True))
                    for row in rows]

        result: list[dict[str, Any]] = await self._run(op, write=False)
        return result

    async def inbound_detail(self, inbound_id: int) -> dict[str, Any] | None:
        async def op(conn: Conn) -> dict[str, Any] | None:
            row = await conn.fetchrow(
                f"SELECT {', '.join(INBOUND_DETAIL_KEYS)} FROM inbound WHERE id = $1",
                inbound_id)
            if row is None:
                return None
            detail = dict(zip(INBOUND_DETAIL_KEYS, map(_bool, tuple(row)), strict=True))
            detail["forwards"] = [
                dict(zip(FORWARD_KEYS, tuple(r), strict=True)) for r in await conn.fetch(
                    f"SELECT {', '.join(FORWARD_KEYS)} FROM forward_jobs WHERE inbound_id = $1 "
                    "ORDER BY id", inbound_id)]
            history: dict[int, list[dict[str, Any]]] = {f["id"]: [] for f in detail["forwards"]}
            for r in await conn.fetch(
                    f"SELECT a.job_id, {', '.join('a.' + k for k in ATTEMPT_KEYS)} "
                    "FROM forward_attempts a JOIN forward_jobs f ON f.id = a.job_id "
                    "WHERE f.inbound_id = $1 ORDER BY a.id", inbound_id):
                history[r[0]].append(dict(zip(ATTEMPT_KEYS, tuple(r)[1:], strict=True)))
            for forward in detail["forwards"]:
                forward["attempt_history"] = history[forward["id"]]
            return detail

        result: dict[str, Any] | None = await self._run(op, write=False)
        return result

    async def list_forwards(self, *, status: str | None = None, before_id: int | None = None,
                            limit: int = 100) -> list[dict[str, Any]]:
        mark = numbered(2)
        conditions: list[str] = []
        params: list[Any] = []
        if status:
            conditions.append(f"f.status = {mark()}")
            params.append(status)
        if before_id is not None:
            conditions.append(f"f.id < {mark()}")
            params.append(before_id)
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""

        async def op(conn: Conn) -> list[dict[str, Any]]:
            rows = await conn.fetch(
                f"SELECT {', '.join('f.' + k for k in FORWARD_KEYS)}, i.phone, i.source "
                f"FROM forward_jobs f JOIN inbound i ON i.id = f.inbound_id {where} "
                "ORDER BY f.id DESC LIMIT $1", limit, *params)
            return [dict(zip((*FORWARD_KEYS, "phone", "source"), tuple(r), strict=True))
                    for r in rows]

        result: list[dict[str, Any]] = await self._run(op, write=False)
        return result

    async def resolve_dead_letters(self, job_ids: Sequence[int]) -> int:
        async def op(conn: Conn) -> int:
            rows = await conn.fetch(
                "UPDATE forward_jobs SET status = 'resolved' WHERE status = 'dead' "
                "AND id = ANY($1::bigint[]) RETURNING id", list(job_ids))
            return len(rows)

        result: int = await self._run(op)
        return result

    async def console_stats(self, now: float) -> dict[str, Any]:
        async def op(conn: Conn) -> dict[str, Any]:
            counts = dict.fromkeys(OUTBOX_STATUSES, 0)
            for status, count in await conn.fetch(
                    "SELECT status, COUNT(*) FROM messages GROUP BY status"):
                counts[str(status)] = int(count)
            counts["unknown"] = int(await conn.fetchval(
                "SELECT COUNT(*) FROM messages WHERE delivery_status = 'unknown'"))
            start = now - 3600
            sent = [r[0] for r in await conn.fetch(
                "SELECT at FROM message_events WHERE status = 'sent' AND at >= $1", start)]
            # Inbound ids grow with time: read back from the newest in pages, stopping an
            # hour back (no index on the time, which every inbound insert would pay for).
            received: list[float] = []
            below: int | None = None
            while True:
                page = await conn.fetch(
                    "SELECT id, received_at FROM inbound WHERE ($1::bigint IS NULL OR id < $1) "
                    "ORDER BY id DESC LIMIT 2000", below)
                received.extend(r[1] for r in page if r[1] >= start - 60)
                if len(page) < 2000 or page[-1][1] < start - 60:
                    break
                below = page[-1][0]
            forwards = {status: 0 for status in ("queued", "sending", "dead")}
            for status, count in await conn.fetch(
                    "SELECT status, COUNT(*) FROM forward_jobs WHERE status IN "
                    "('queued', 'sending', 'dead') GROUP BY status"):
                forwards[str(status)] = int(count)
            return {"messages": counts, "forwards": forwards,
                    "sent_per_minute": per_minute(sent, now),
                    "inbound_per_minute": per_minute(received, now)}

        result: dict[str, Any] = await self._run(op, write=False)
        return result

    # -- traces ---------------------------------------------------------------------------

    async def record_exchanges(self, exchanges: Sequence[ProviderExchange]) -> None:
        async def op(conn: Conn) -> None:
            for ex in exchanges:
                exchange_id = await conn.fetchval(
                    "INSERT INTO provider_exchanges (at, upstream, method, url, request, status, "
                    "response, error, duration) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                    "RETURNING id",
                    ex.at, _text(ex.upstream), _text(ex.method), _text(ex.url), ex.request,
                    ex.status, ex.response, None if ex.error is None else _text(ex.error),
                    ex.duration)
                if ex.message_ids:
                    await conn.execute(
                        "INSERT INTO provider_exchange_messages (message_id, exchange_id) "
                        "SELECT unnest($1::bigint[]), $2 ON CONFLICT DO NOTHING",
                        list(ex.message_ids), exchange_id)

        await self._run(op)

    async def record_upstream_outcomes(self, outcomes: dict[str, UpstreamOutcome]) -> None:
        async def op(conn: Conn) -> None:
            for upstream, fold in sorted(outcomes.items()):
                await conn.execute(
                    "INSERT INTO upstream_health (upstream) VALUES ($1) "
                    "ON CONFLICT (upstream) DO NOTHING", _text(upstream))
                row = await conn.fetchrow(
                    f"SELECT {', '.join(HEALTH_KEYS)} FROM upstream_health WHERE upstream = $1 "
                    "FOR UPDATE", _text(upstream))
                merged = merge_health(dict(zip(HEALTH_KEYS, tuple(row), strict=True)),
                                      _text(upstream), fold)
                await conn.execute(
                    "UPDATE upstream_health SET last_success_at = $2, last_error_at = $3, "
                    "last_error = $4, consecutive_failures = $5, paused_until = $6 "
                    "WHERE upstream = $1",
                    merged["upstream"], merged["last_success_at"], merged["last_error_at"],
                    None if merged["last_error"] is None else _text(merged["last_error"]),
                    merged["consecutive_failures"], merged["paused_until"])

        await self._run(op)

    async def upstream_health(self) -> list[dict[str, Any]]:
        async def op(conn: Conn) -> list[dict[str, Any]]:
            return [dict(zip(HEALTH_KEYS, tuple(r), strict=True)) for r in await conn.fetch(
                f"SELECT {', '.join(HEALTH_KEYS)} FROM upstream_health ORDER BY upstream")]

        result: list[dict[str, Any]] = await self._run(op, write=False)
        return result

    async def prune_traces(self, before: float) -> int:
        async def op(conn: Conn) -> int:
            mails = await conn.fetch("UPDATE mails SET raw = NULL WHERE raw IS NOT NULL AND "
                                     "received_at < $1 RETURNING id", before)
            await conn.execute("DELETE FROM provider_exchange_messages WHERE exchange_id IN "
                               "(SELECT id FROM provider_exchanges WHERE at < $1)", before)
            exchanges = await conn.fetch("DELETE FROM provider_exchanges WHERE at < $1 "
                                         "RETURNING id", before)
            attempts = await conn.fetch("DELETE FROM forward_attempts WHERE at < $1 "
                                        "RETURNING id", before)
            # Signed-out console sessions, once they would have expired anyway.
            await conn.execute(f"DELETE FROM meta WHERE key LIKE '{REVOKED_SESSION}%' "
                               "AND CAST(value AS DOUBLE PRECISION) < $1", before)
            return len(mails) + len(exchanges) + len(attempts)

        result: int = await self._run(op)
        return result

    # -- audit ----------------------------------------------------------------------------

    async def record_audit(self, entry: AuditEntry) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO audit_log (at, who, via, action, target, detail, remote) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                entry.at, _text(entry.who), _text(entry.via), _text(entry.action),
                _text(entry.target), _text(entry.detail), _text(entry.remote))

        await self._run(op)

    async def list_audit(self, *, before_id: int | None = None, limit: int = 100
                         ) -> list[dict[str, Any]]:
        async def op(conn: Conn) -> list[dict[str, Any]]:
            return [dict(zip(AUDIT_KEYS, tuple(r), strict=True)) for r in await conn.fetch(
                f"SELECT {', '.join(AUDIT_KEYS)} FROM audit_log "
                "WHERE ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $1",
                limit, before_id)]

        result: list[dict[str, Any]] = await self._run(op, write=False)
        return result

"""The SQLite store's queries for the operators' console and the admin API (see
:mod:`bridge.store.console`), mixed into :class:`bridge.store.sqlite.SqliteStore`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
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
    per_minute,
    question_marks,
)

T = TypeVar("T")

# SQLite's lower() and LIKE fold ASCII only: "Привет" would not find "привет".
_FOLD = "bridge_casefold"


def _casefold(value: str | None) -> str | None:
    return value.casefold() if isinstance(value, str) else value


def _with_fold(conn: sqlite3.Connection) -> None:
    conn.create_function(_FOLD, 1, _casefold, deterministic=True)


INBOUND_LIST_SQL = (
    "SELECT i.id, i.source, i.kind, i.sms_id, i.phone, i.recipient, i.text, "
    "i.charset_error, i.state, i.script_error, i.received_at, "
    "(SELECT COUNT(*) FROM forward_jobs f WHERE f.inbound_id = i.id), "
    "(SELECT COUNT(*) FROM forward_jobs f WHERE f.inbound_id = i.id "
    " AND f.status = 'delivered'), "
    "(SELECT COUNT(*) FROM forward_jobs f WHERE f.inbound_id = i.id AND f.status = 'dead') "
    "FROM inbound i"
)


class SqliteConsoleQueries:
    """Reads and writes of the console; ``_read`` and ``_call`` are the store's."""

    _read: Callable[..., Any]
    _call: Callable[..., Any]

    async def search_messages(self, search: MessageFilter, *, limit: int = 50
                              ) -> list[StoredMessage]:
        where = message_where(search, question_marks, fold=_FOLD)

        def op(conn: sqlite3.Connection) -> list[StoredMessage]:
            _with_fold(conn)
            rows = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN mails ml "
                f"ON ml.id = m.mail_id {where.sql()} ORDER BY m.id DESC LIMIT ?",
                (*where.params, limit),
            ).fetchall()
            return [row_to_message(row) for row in rows]

        result: list[StoredMessage] = await self._read(op)
        return result

    async def message_trace(self, message_id: int) -> dict[str, Any] | None:
        """Everything kept of one message: the message, the mail it came from (headers and
        the capped raw mail), its status history, delivery reports, the provider requests
        and answers that carried it, the other messages of its mail and its bounce."""

        def op(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                f"SELECT {MESSAGE_COLUMNS}, m.mail_id, m.delivery_detail, m.updated_at "
                "FROM messages m LEFT JOIN mails ml ON ml.id = m.mail_id WHERE m.id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                return None
            message = row_to_message(row[:18])
            mail_id, delivery_detail, updated_at = row[18], row[19], row[20]
            mail = None
            siblings: list[dict[str, Any]] = []
            if mail_id is not None:
                found = conn.execute(f"SELECT {', '.join(MAIL_KEYS)} FROM mails WHERE id = ?",
                                     (mail_id,)).fetchone()
                mail = dict(zip(MAIL_KEYS, found, strict=True)) if found else None
                siblings = [{"id": r[0], "phone": r[1], "status": r[2]} for r in conn.execute(
                    "SELECT id, phone, status FROM messages WHERE mail_id = ? AND id != ? "
                    "ORDER BY id LIMIT 100", (mail_id, message_id))]
            events = [{"at": r[0], "status": r[1], "detail": r[2]} for r in conn.execute(
                "SELECT at, status, detail FROM message_events WHERE message_id = ? "
                "ORDER BY id", (message_id,))]
            reports = [dict(zip(REPORT_KEYS, r, strict=True)) for r in conn.execute(
                f"SELECT {REPORT_COLUMNS} FROM delivery_reports WHERE message_id = ? "
                "ORDER BY id", (message_id,))]
            exchanges = [dict(zip(EXCHANGE_KEYS, r, strict=True)) for r in conn.execute(
                f"SELECT {', '.join('e.' + k for k in EXCHANGE_KEYS)} "
                "FROM provider_exchange_messages x JOIN provider_exchanges e "
                "ON e.id = x.exchange_id WHERE x.message_id = ? ORDER BY e.id",
                (message_id,))]
            bounce = None
            if message.status == "failed":
                # A bounce is queued in the transaction that records the failure, with the
                # same time: that time and the sender find it.
                failed_at = [e["at"] for e in events if e["status"] == "failed"]
                if failed_at:
                    found = conn.execute(
                        f"SELECT {', '.join(BOUNCE_KEYS)} FROM outgoing_mail WHERE "
                        "kind = 'bounce' AND created_at = ? AND mail_to = ? "
                        "ORDER BY id LIMIT 1",
                        (failed_at[-1], message.mail_from)).fetchone()
                    bounce = dict(zip(BOUNCE_KEYS, found, strict=True)) if found else None
            return {"message": message, "delivery_detail": delivery_detail,
                    "updated_at": updated_at, "mail": mail, "siblings": siblings,
                    "events": events, "reports": reports, "exchanges": exchanges,
                    "bounce": bounce}

        result: dict[str, Any] | None = await self._read(op)
        return result

    async def search_inbound(self, search: InboundFilter, *, limit: int = 50
                             ) -> list[dict[str, Any]]:
        where = inbound_where(search, question_marks, fold=_FOLD)

        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            _with_fold(conn)
            rows = conn.execute(f"{INBOUND_LIST_SQL} {where.sql()} ORDER BY i.id DESC LIMIT ?",
                                (*where.params, limit)).fetchall()
            return [dict(zip(INBOUND_LIST_KEYS, row, strict=True)) for row in rows]

        result: list[dict[str, Any]] = await self._read(op)
        return result

    async def inbound_detail(self, inbound_id: int) -> dict[str, Any] | None:
        """One inbound SMS with the request as stored (secrets masked), its answer, and its
        forwarding jobs."""

        def op(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                f"SELECT {', '.join(INBOUND_DETAIL_KEYS)} FROM inbound WHERE id = ?",
                (inbound_id,)).fetchone()
            if row is None:
                return None
            detail = dict(zip(INBOUND_DETAIL_KEYS, row, strict=True))
            detail["forwards"] = [dict(zip(FORWARD_KEYS, r, strict=True)) for r in conn.execute(
                f"SELECT {', '.join(FORWARD_KEYS)} FROM forward_jobs WHERE inbound_id = ? "
                "ORDER BY id", (inbound_id,))]
            history: dict[int, list[dict[str, Any]]] = {f["id"]: [] for f in detail["forwards"]}
            for r in conn.execute(
                    f"SELECT a.job_id, {', '.join('a.' + k for k in ATTEMPT_KEYS)} "
                    "FROM forward_attempts a JOIN forward_jobs f ON f.id = a.job_id "
                    "WHERE f.inbound_id = ? ORDER BY a.id", (inbound_id,)):
                history[r[0]].append(dict(zip(ATTEMPT_KEYS, r[1:], strict=True)))
            for forward in detail["forwards"]:
                forward["attempt_history"] = history[forward["id"]]
            return detail

        result: dict[str, Any] | None = await self._read(op)
        return result

    async def list_forwards(self, *, status: str | None = None, before_id: int | None = None,
                            limit: int = 100) -> list[dict[str, Any]]:
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

        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                f"SELECT {', '.join('f.' + k for k in FORWARD_KEYS)}, i.phone, i.source "
                f"FROM forward_jobs f JOIN inbound i ON i.id = f.inbound_id {where} "
                "ORDER BY f.id DESC LIMIT ?", (*params, limit)).fetchall()
            return [dict(zip((*FORWARD_KEYS, "phone", "source"), r, strict=True))
                    for r in rows]

        result: list[dict[str, Any]] = await self._read(op)
        return result

    async def resolve_dead_letters(self, job_ids: Sequence[int]) -> int:
        """Mark dead letters as resolved by an operator: they leave the dead-letter list
        without being sent again."""

        def op(conn: sqlite3.Connection) -> int:
            return sum(conn.execute(
                "UPDATE forward_jobs SET status = 'resolved' WHERE status = 'dead' AND id = ?",
                (job_id,)).rowcount for job_id in job_ids)

        result: int = await self._call(op)
        return result

    async def console_stats(self, now: float) -> dict[str, Any]:
        """Counts now, and sends and inbound SMS per minute over the last hour."""

        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            counts = dict.fromkeys(OUTBOX_STATUSES, 0)
            for status, count in conn.execute(
                    "SELECT status, COUNT(*) FROM messages GROUP BY status"):
                counts[str(status)] = int(count)
            (unknown,) = conn.execute(
                "SELECT COUNT(*) FROM messages WHERE delivery_status = 'unknown'").fetchone()
            counts["unknown"] = int(unknown)
            start = now - 3600
            sent = [r[0] for r in conn.execute(
                "SELECT at FROM message_events WHERE status = 'sent' AND at >= ?", (start,))]
            # Inbound ids grow with time: read back from the newest, stopping an hour back
            # (no index on the time, which every inbound insert would pay for).
            received: list[float] = []
            for (at,) in conn.execute("SELECT received_at FROM inbound ORDER BY id DESC"):
                if at < start - 60:
                    break
                received.append(at)
            forwards = {status: 0 for status in ("queued", "sending", "dead")}
            for status, count in conn.execute(
                    "SELECT status, COUNT(*) FROM forward_jobs WHERE status IN "
                    "('queued', 'sending', 'dead') GROUP BY status"):
                forwards[str(status)] = int(count)
            return {"messages": counts, "forwards": forwards,
                    "sent_per_minute": per_minute(sent, now),
                    "inbound_per_minute": per_minute(received, now)}

        result: dict[str, Any] = await self._read(op)
        return result

    # -- traces ---------------------------------------------------------------------------

    async def record_exchanges(self, exchanges: Sequence[ProviderExchange]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for ex in exchanges:
                exchange_id = conn.execute(
                    "INSERT INTO provider_exchanges (at, upstream, method, url, request, status, "
                    "response, error, duration) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ex.at, ex.upstream, ex.method, ex.url, ex.request, ex.status, ex.response,
                     ex.error, ex.duration)).lastrowid
                conn.executemany(
                    "INSERT INTO provider_exchange_messages (exchange_id, message_id) "
                    "VALUES (?, ?)", [(exchange_id, m) for m in ex.message_ids])

        await self._call(op)

    async def record_upstream_outcomes(self, outcomes: dict[str, UpstreamOutcome]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for upstream, fold in outcomes.items():
                row = conn.execute(
                    f"SELECT {', '.join(HEALTH_KEYS)} FROM upstream_health WHERE upstream = ?",
                    (upstream,)).fetchone()
                merged = merge_health(
                    dict(zip(HEALTH_KEYS, row, strict=True)) if row else None, upstream, fold)
                conn.execute(
                    f"INSERT OR REPLACE INTO upstream_health ({', '.join(HEALTH_KEYS)}) "
                    "VALUES (?, ?, ?, ?, ?, ?)", [merged[k] for k in HEALTH_KEYS])

        await self._call(op)

    async def upstream_health(self) -> list[dict[str, Any]]:
        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [dict(zip(HEALTH_KEYS, r, strict=True)) for r in conn.execute(
                f"SELECT {', '.join(HEALTH_KEYS)} FROM upstream_health ORDER BY upstream")]

        result: list[dict[str, Any]] = await self._read(op)
        return result

    async def prune_traces(self, before: float) -> int:
        """Forget the raw mails, provider exchanges and forward attempts older than
        ``before``."""

        def op(conn: sqlite3.Connection) -> int:
            mails = conn.execute("UPDATE mails SET raw = NULL WHERE raw IS NOT NULL AND "
                                 "received_at < ?", (before,)).rowcount
            conn.execute("DELETE FROM provider_exchange_messages WHERE exchange_id IN "
                         "(SELECT id FROM provider_exchanges WHERE at < ?)", (before,))
            exchanges = conn.execute("DELETE FROM provider_exchanges WHERE at < ?",
                                     (before,)).rowcount
            attempts = conn.execute("DELETE FROM forward_attempts WHERE at < ?",
                                    (before,)).rowcount
            # Signed-out console sessions, once they would have expired anyway.
            conn.execute(f"DELETE FROM meta WHERE key LIKE '{REVOKED_SESSION}%' "
                         "AND CAST(value AS REAL) < ?", (before,))
            return int(mails + exchanges + attempts)

        result: int = await self._call(op)
        return result

    # -- audit ----------------------------------------------------------------------------

    async def record_audit(self, entry: AuditEntry) -> None:
        await self._call(lambda conn: conn.execute(
            "INSERT INTO audit_log (at, who, via, action, target, detail, remote) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry.at, entry.who, entry.via, entry.action, entry.target, entry.detail,
             entry.remote)))

    async def list_audit(self, *, before_id: int | None = None, limit: int = 100
                         ) -> list[dict[str, Any]]:
        where, params = ("WHERE id < ?", [before_id]) if before_id is not None else ("", [])

        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [dict(zip(AUDIT_KEYS, r, strict=True)) for r in conn.execute(
                f"SELECT {', '.join(AUDIT_KEYS)} FROM audit_log {where} ORDER BY id DESC "
                "LIMIT ?", (*params, limit))]

        result: list[dict[str, Any]] = await self._read(op)
        return result

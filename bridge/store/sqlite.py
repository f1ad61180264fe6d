"""SQLite store: the embedded default, on one file.

What SQLite does its own way: the writer thread and its group commit
(:mod:`bridge.store.sqlite_writer`), claims and the sent-once records as several statements
in the writer's transaction, and point lookups on the event loop's own read connection.
Everything else is written once for both engines (:mod:`bridge.store.roles`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from bridge.errors import StoreUnavailable
from bridge.models import (
    ClaimedForward,
    EnqueueResult,
    InboundRecord,
    MessageStatus,
    OutboundMail,
    SendIntent,
    SendOutcome,
    SendRequest,
    StoredMessage,
    StoredResponse,
)
from bridge.store import migrations, queries
from bridge.store.common import (
    CLAIM_COLUMNS,
    INBOUND_COLUMNS,
    inbound_content_hash,
    intent_summary,
    options_json,
    outcome_error,
    outcome_event,
    row_to_inbound,
    row_to_message,
)
from bridge.store.migrations import Migration
from bridge.store.roles import RoleMethods, inbound_log, mail_queue, reports
from bridge.store.roles.forward_queue import ForwardClaim
from bridge.store.roles.inbound_log import NewInbound
from bridge.store.roles.outbox import NewMail
from bridge.store.rows import DuePoll
from bridge.store.sqlite_writer import SQL, SqliteConnections

log = logging.getLogger(__name__)
T = TypeVar("T")

# The schema: bridge/store/migrations/ (read at open, so a test can hold one back).
MIGRATIONS: list[Migration] = migrations.load("sqlite")





class _MigrationConnection:
    """The writer's connection as :func:`bridge.store.migrations.migrate` uses it (in the
    transaction :meth:`SqliteStore._migrate` began), each statement on a thread."""

    dialect: Literal["sqlite"] = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def script(self, sql: str) -> None:
        def run() -> None:
            for statement in migrations.statements(sql):
                self.conn.execute(statement)

        await asyncio.to_thread(run)

    async def execute(self, sql: str, *params: Any) -> None:
        await asyncio.to_thread(self.conn.execute, sql, params)

    async def value(self, sql: str, *params: Any) -> Any:
        row = await asyncio.to_thread(lambda: self.conn.execute(sql, params).fetchone())
        return None if row is None else row[0]

    async def has_table(self, name: str) -> bool:
        return await self.value("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                "AND name = ?", name) is not None

    async def legacy_version(self) -> int:
        return int(await self.value("PRAGMA user_version"))

    async def set_legacy_version(self, version: int) -> None:
        await self.execute(f"PRAGMA user_version = {int(version)}")


class SqliteStore(SqliteConnections, RoleMethods):
    """:class:`bridge.store.base.OutboxStore` on one SQLite file."""

    @classmethod
    def from_url(cls, url: str, *, busy_timeout: float = 5.0) -> SqliteStore:
        return cls(url.removeprefix("sqlite:///"), busy_timeout=busy_timeout)

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        if self._thread is not None:
            return
        if not migrate and not await asyncio.to_thread(Path(self.path).is_file):
            raise StoreUnavailable(f"no store at {self.path}: run `sms-bridge migrate` (or "
                                   "serve) with this configuration first")
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = await asyncio.to_thread(self._connect)
        await self._migrate(conn, migrate)
        # From now on the writer waits for the lock itself (see _begin).
        await asyncio.to_thread(conn.execute, "PRAGMA busy_timeout = 0")
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="sqlite-store", daemon=True
        )
        self._thread.start()
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
        self._reader_conn = await asyncio.get_running_loop().run_in_executor(
            self._reader, self._connect_reader)

    async def _migrate(self, conn: sqlite3.Connection, migrate: bool = True) -> None:
        await asyncio.to_thread(self._begin, conn)
        try:
            self.schema_change = await migrations.migrate(
                _MigrationConnection(conn), MIGRATIONS, apply=migrate, where=self.path,
                now=time.time())
            await asyncio.to_thread(conn.execute, "COMMIT")
        except BaseException:
            await asyncio.to_thread(conn.execute, "ROLLBACK")
            conn.close()
            raise

    async def close(self) -> None:
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
        reader, self._reader = self._reader, None
        if reader is not None:
            if self._reader_conn is not None:
                await asyncio.get_running_loop().run_in_executor(reader, self._reader_conn.close)
                self._reader_conn = None
            reader.shutdown(wait=True)
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(thread.join)

    # Pages a readiness probe writes: the store is ready while that much more fits.
    PROBE_PAGES = 8

    async def ping(self) -> None:
        """Whether a write can be committed now: a row of ``PROBE_PAGES`` pages is written
        and deleted in one of the writer's transactions. A database that cannot grow (a
        full disk) or cannot be written fails here, where ``SELECT 1`` would succeed."""

        def op(conn: sqlite3.Connection) -> None:
            (page_size,) = conn.execute("PRAGMA page_size").fetchone()
            conn.execute("INSERT OR REPLACE INTO meta (key, value) "
                         "VALUES ('readiness_probe', zeroblob(?))",
                         (page_size * self.PROBE_PAGES,))
            conn.execute("DELETE FROM meta WHERE key = 'readiness_probe'")

        await self._call(op)

    # -- outbox ---------------------------------------------------------------------------

    async def _enqueue(self, mail: NewMail) -> EnqueueResult:
        envelope, batches, now, dedup_window, reply = (
            mail.envelope, mail.batches, mail.now, mail.dedup_window, mail.reply)
        def op(conn: sqlite3.Connection) -> EnqueueResult:
            fresh: list[tuple[str | None, Sequence[SendRequest]]] = []
            for key, requests in batches:
                if key is not None:
                    row = conn.execute(
                        "SELECT seen_at FROM mail_dedup WHERE key = ?", (key,)
                    ).fetchone()
                    if row is not None and row[0] >= now - dedup_window:
                        continue
                fresh.append((key, requests))
            if not fresh:
                return EnqueueResult((), duplicate=True)
            mail_id = conn.execute(
                "INSERT INTO mails (received_at, mail_from, message_id, peer, format, headers, "
                "raw, raw_size, rcpt_to) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, envelope.mail_from, envelope.message_id, envelope.peer, envelope.format,
                 envelope.headers, envelope.raw or None, envelope.raw_size,
                 json.dumps(envelope.recipients)),
            ).lastrowid
            ids: list[int] = []
            for key, requests in fresh:
                if key is not None:
                    conn.execute(
                        "INSERT OR REPLACE INTO mail_dedup (key, mail_id, seen_at) "
                        "VALUES (?, ?, ?)",
                        (key, mail_id, now),
                    )
                for req in requests:
                    ids.append(self._insert_message(conn, mail_id, req, now))
            if reply is not None:
                mail = reply(ids)
                if mail is not None:
                    _insert_mail(conn, mail, now)
            return EnqueueResult(tuple(ids))

        return await self._call(op)

    @staticmethod
    def _insert_message(
        conn: sqlite3.Connection, mail_id: int | None, req: SendRequest, now: float
    ) -> int:
        due = max(now, req.not_before or now)
        message_id = conn.execute(
            "INSERT INTO messages (mail_id, account, upstream, phone, text, parts, encoding, "
            "options, status, next_attempt_at, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
            (
                mail_id, req.account, req.upstream, req.phone, req.text, req.parts,
                req.encoding, options_json(req), due, now, now,
            ),
        ).lastrowid
        assert message_id is not None
        conn.execute(
            "INSERT INTO message_events (message_id, at, status, detail) VALUES (?, ?, ?, ?)",
            (message_id, now, MessageStatus.QUEUED.value, None),
        )
        return message_id

    async def claim_due(
        self, owner: str, now: float, limit: int, lease_seconds: float
    ) -> list[StoredMessage]:
        def op(conn: sqlite3.Connection) -> list[StoredMessage]:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM ("
                    " SELECT id, next_attempt_at AS k FROM messages"
                    "  WHERE status = 'queued' AND next_attempt_at <= ?"
                    " UNION ALL"
                    " SELECT id, lease_until AS k FROM messages"
                    "  WHERE status = 'sending' AND lease_until <= ? AND lease_owner IS NOT ?"
                    ") ORDER BY k, id LIMIT ?",
                    (now, now, owner, limit),
                )
            ]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            conn.execute(
                f"UPDATE messages SET status = 'sending', lease_owner = ?, lease_until = ?, "
                f"lease_epoch = lease_epoch + 1, updated_at = ? WHERE id IN ({marks})",
                (owner, now + lease_seconds, now, *ids),
            )
            rows = conn.execute(
                f"SELECT {CLAIM_COLUMNS} FROM messages m LEFT JOIN mails ml "
                f"ON ml.id = m.mail_id WHERE m.id IN ({marks}) ORDER BY m.id",
                ids,
            ).fetchall()
            return [row_to_message(row) for row in rows]

        return await self._call(op)

    async def record_intent(
        self, owner: str, upstream: str, leases: Sequence[tuple[int, int]],
        fingerprint: str, now: float,
    ) -> SendIntent | None:
        def op(conn: sqlite3.Connection) -> SendIntent | None:
            held = [(message_id, epoch) for message_id, epoch in leases if conn.execute(
                "UPDATE messages SET maybe_sent = maybe_sent + 1, updated_at = ? "
                f"{_HELD}", (now, message_id, owner, epoch)).rowcount]
            if not held:
                return None
            intent_id = conn.execute(
                "INSERT INTO send_intents (upstream, owner, fingerprint, messages, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (upstream, owner, fingerprint, json.dumps(held), now)).lastrowid
            assert intent_id is not None
            return SendIntent(intent_id, tuple(message_id for message_id, _ in held))

        return await self._call(op)

    async def record_outcomes(
        self, owner: str, intent_id: int | None, outcomes: Sequence[SendOutcome], now: float,
    ) -> list[int]:
        def op(conn: sqlite3.Connection) -> list[int]:
            recorded = [o.message_id for o in outcomes
                        if _record_outcome(conn, owner, o, now, requested=intent_id is not None)]
            if intent_id is not None:
                conn.execute(
                    "UPDATE send_intents SET finished_at = ?, outcome = ? WHERE id = ?",
                    (now, intent_summary(outcomes, recorded), intent_id))
            return recorded

        return await self._call(op)

    # -- inbound SMS ----------------------------------------------------------------------

    async def _record_inbound(self, new: NewInbound) -> InboundRecord:
        message, now, dedup_window, state, response, jobs, forward_deadline = (
            new.message, new.now, new.dedup_window, new.state, new.response, new.jobs,
            new.forward_deadline)
        content_hash = inbound_content_hash(message)

        def op(conn: sqlite3.Connection) -> InboundRecord:
            if message.sms_id is not None:
                row = conn.execute(
                    f"SELECT {INBOUND_COLUMNS} FROM inbound WHERE source = ? AND dedup_key = ?",
                    (message.source, f"id:{message.sms_id}"),
                ).fetchone()
            else:
                row = conn.execute(
                    f"SELECT {INBOUND_COLUMNS} FROM inbound WHERE source = ? AND "
                    "content_hash = ? AND sms_id IS NULL AND received_at >= ? "
                    "ORDER BY id DESC LIMIT 1",
                    (message.source, content_hash, now - dedup_window),
                ).fetchone()
            if row is not None:
                return row_to_inbound(row, duplicate=True)
            key = (f"id:{message.sms_id}" if message.sms_id is not None
                   else f"noid:{uuid.uuid4().hex}")
            inbound_id = conn.execute(
                "INSERT INTO inbound (source, kind, dedup_key, sms_id, content_hash, phone, "
                "recipient, text, raw, charset, charset_error, state, response_status, "
                "response_body, response_type, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message.source, message.kind, key, message.sms_id, content_hash,
                    message.phone, message.recipient, message.text, message.raw,
                    message.charset, int(message.charset_error), state,
                    response.status if response else None,
                    response.body if response else None,
                    response.content_type if response else None,
                    now,
                ),
            ).lastrowid
            assert inbound_id is not None
            conn.executemany(
                "INSERT INTO forward_jobs (inbound_id, kind, target, payload, status, "
                "next_attempt_at, created_at, deadline) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                [(inbound_id, job.kind, job.target, job.payload, now, now, forward_deadline)
                 for job in jobs],
            )
            return InboundRecord(inbound_id, False, state, response, now, content_hash)

        return await self._call(op)

    async def get_inbound(self, source: str, sms_id: str) -> InboundRecord | None:
        return self._point_read(lambda: inbound_log.get_inbound(source, sms_id))

    async def inbound_answer(self, inbound_id: int) -> StoredResponse | None:
        """The stored answer of a short-code hit, None while it is pending (a point
        lookup)."""
        return self._point_read(lambda: inbound_log.inbound_answer(inbound_id))

    # -- forwarding jobs ------------------------------------------------------------------

    async def _claim_forward_jobs(self, claim: ForwardClaim) -> list[ClaimedForward]:
        owner, now, limit, lease_seconds, kinds, exclude_targets = (
            claim.owner, claim.now, claim.limit, claim.lease_seconds, claim.kinds,
            claim.exclude_targets)
        excluded = [f"{kind} {target}" for kind, target in exclude_targets]
        # A kind has no space: "kind target" names one pair unambiguously.
        skip = (f" AND kind || ' ' || target NOT IN ({','.join('?' * len(excluded))})"
                if excluded else "")

        def op(conn: sqlite3.Connection) -> list[ClaimedForward]:
            # One indexed range per kind, plus expired leases: no scan of the jobs of kinds
            # this worker does not take (e-mail jobs waiting for a smarthost).
            parts = [
                "SELECT id, next_attempt_at AS k FROM forward_jobs WHERE status = 'queued' "
                "AND kind = ? AND next_attempt_at <= ?" + skip
                for _ in kinds
            ]
            parts.append("SELECT id, lease_until AS k FROM forward_jobs WHERE status = "
                         "'sending' AND lease_until <= ?" + skip)
            params: list[Any] = [v for kind in kinds for v in (kind, now, *excluded)]
            params += [now, *excluded]
            ids = [row[0] for row in conn.execute(
                f"SELECT id FROM ({' UNION ALL '.join(parts)}) ORDER BY k LIMIT ?",
                (*params, limit),
            )]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            rows = conn.execute(
                "SELECT id, inbound_id, kind, target, payload, attempts, deadline "
                f"FROM forward_jobs WHERE id IN ({marks}) AND kind IN "
                f"({','.join('?' * len(kinds))})",
                (*ids, *kinds),
            ).fetchall()
            conn.executemany(
                "UPDATE forward_jobs SET status = 'sending', lease_owner = ?, lease_until = ?, "
                "attempts = attempts + 1 WHERE id = ?",
                [(owner, now + lease_seconds, row[0]) for row in rows],
            )
            return [ClaimedForward(r[0], r[1], r[2], r[3], bytes(r[4]), r[5] + 1, r[6])
                    for r in rows]

        return await self._call(op)

    async def _due_status_polls(self, upstream: str, now: float, limit: int,
                                lease_seconds: float) -> list[DuePoll]:
        def op(conn: sqlite3.Connection) -> list[DuePoll]:
            rows = conn.execute(
                "SELECT id, upstream_ids, poll_count FROM messages WHERE upstream_used = ? "
                "AND next_poll_at IS NOT NULL AND next_poll_at <= ? ORDER BY next_poll_at "
                "LIMIT ?",
                (upstream, now, limit),
            ).fetchall()
            conn.executemany("UPDATE messages SET next_poll_at = ? WHERE id = ?",
                             [(now + lease_seconds, row[0]) for row in rows])
            return [DuePoll(row[0], json.loads(row[1]), row[2]) for row in rows]

        return await self._call(op)

# The claim an outcome (or an intent) names must still hold: the row is sending, leased to
# this owner, under the same epoch. A process whose lease was taken over (it stalled, or
# lost the store for longer than the lease) cannot overwrite the new holder's result.
_HELD = "WHERE id = ? AND status = 'sending' AND lease_owner = ? AND lease_epoch = ?"

# What each outcome status sets, besides the counters and the lease.
_OUTCOME_SET = {
    "sent": "status = 'sent', upstream_used = ?, upstream_ids = ?, last_error = NULL, "
            "next_poll_at = ?",
    "queued": "status = 'queued', next_attempt_at = ?, last_error = ?",
    "failed": "status = 'failed', last_error = ?",
    "ambiguous": "status = 'ambiguous', last_error = ?",
    "sending": "last_error = ?",  # the claim goes on with the next upstream
}


def _record_outcome(conn: sqlite3.Connection, owner: str, outcome: SendOutcome, now: float,
                    *, requested: bool) -> bool:
    """One message's outcome, if its claim still holds (see ``record_outcomes``)."""
    event, detail = outcome_event(outcome)
    error = outcome_error(outcome)
    params: tuple[Any, ...]
    if outcome.status == "sent":
        ids = list(outcome.provider_ids)
        params = (outcome.upstream, json.dumps(ids), outcome.poll_at if ids else None)
    elif outcome.status == "queued":
        params = (outcome.next_attempt_at, error)
    else:
        params = (error,)
    lease = "" if outcome.status == "sending" else ", lease_owner = NULL, lease_until = NULL"
    if not conn.execute(
            f"UPDATE messages SET {_OUTCOME_SET[outcome.status]}{lease}, "
            "attempts = attempts + ?, maybe_sent = max(0, maybe_sent - ?), updated_at = ? "
            + _HELD,
            (*params, int(requested), int(requested and not outcome.unknown), now,
             outcome.message_id, owner, outcome.lease_epoch)).rowcount:
        log.warning("message %s: lease lost before its result was recorded",
                    outcome.message_id)
        return False
    conn.execute(
        "INSERT INTO message_events (message_id, at, status, detail) VALUES (?, ?, ?, ?)",
        (outcome.message_id, now, event, detail))
    if outcome.mail is not None:
        _insert_mail(conn, outcome.mail, now)
    if outcome.status == "sent" and outcome.provider_ids:
        _index_provider_ids(conn, outcome.message_id, outcome.provider_ids)
    return True


def _insert_mail(conn: sqlite3.Connection, mail: OutboundMail, now: float) -> None:
    queries.run_sync(conn, functools.partial(mail_queue.insert_mail, mail, now), SQL)


def _index_provider_ids(conn: sqlite3.Connection, message_id: int,
                        provider_ids: Sequence[str]) -> None:
    # Delivery reports name the provider's id; this finds the message from it.
    conn.executemany(
        "INSERT OR REPLACE INTO provider_ids (provider_id, message_id) VALUES (?, ?)",
        [(provider_id, message_id) for provider_id in provider_ids],
    )
    # A provider may report before its send reply was recorded here: such reports were kept
    # unmatched, and are applied now, in the order they came.
    marks = ",".join("?" * len(provider_ids))
    early = conn.execute(
        "SELECT id, provider_id, status, raw_status, error_code, received_at "
        f"FROM delivery_reports WHERE message_id IS NULL AND provider_id IN ({marks}) "
        "ORDER BY id",
        list(provider_ids),
    ).fetchall()
    for report_id, provider_id, status, raw_status, error_code, received_at in early:
        conn.execute("UPDATE delivery_reports SET message_id = ? WHERE id = ?",
                     (message_id, report_id))
        queries.run_sync(conn, functools.partial(
            reports.apply_report, message_id, report_id, provider_id, status, raw_status,
            error_code, received_at), SQL)

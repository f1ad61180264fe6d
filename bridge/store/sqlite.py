"""SQLite store: the embedded default, on one file.

What SQLite does its own way: the writer thread and its group commit
(:mod:`bridge.store.sqlite_writer`), claims and the sent-once records as several statements
in the writer's transaction, and point lookups on the event loop's own read connection.
Everything else is written once for both engines (:mod:`bridge.store.roles`).
"""

from __future__ import annotations

import asyncio
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
    SendIntent,
    SendOutcome,
    SendRequest,
    StoredMessage,
    StoredResponse,
)
from bridge.store import migrations
from bridge.store.common import (
    inbound_content_hash,
    intent_summary,
    options_json,
    outcome_error,
    outcome_event,
    row_to_inbound,
    row_to_message,
)
from bridge.store.migrations import Migration
from bridge.store.queries import Array, Op, count, many, query, row, rows, value
from bridge.store.roles import RoleMethods, inbound_log, mail_queue, outbox, reports
from bridge.store.roles.forward_queue import ForwardClaim
from bridge.store.roles.inbound_log import NewInbound
from bridge.store.roles.outbox import NewMail
from bridge.store.rows import DuePoll
from bridge.store.sqlite_writer import SqliteConnections

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
        await self._write_op(lambda: _probe(self.PROBE_PAGES))

    async def next_due_at(self) -> float | None:
        # In the writer's queue, after the writes queued before it (the dispatcher asks
        # right after its own claims and outcomes).
        return await self._write_op(outbox.next_due_at)

    async def _enqueue(self, mail: NewMail) -> EnqueueResult:
        return await self._write_op(lambda: _enqueue(mail))

    async def claim_due(
        self, owner: str, now: float, limit: int, lease_seconds: float
    ) -> list[StoredMessage]:
        return await self._write_op(lambda: _claim_due(owner, now, limit, lease_seconds))

    async def record_intent(
        self, owner: str, upstream: str, leases: Sequence[tuple[int, int]],
        fingerprint: str, now: float,
    ) -> SendIntent | None:
        return await self._write_op(
            lambda: _record_intent(owner, upstream, leases, fingerprint, now))

    async def record_outcomes(
        self, owner: str, intent_id: int | None, outcomes: Sequence[SendOutcome], now: float,
    ) -> list[int]:
        return await self._write_op(lambda: _record_outcomes(owner, intent_id, outcomes, now))

    async def _record_inbound(self, new: NewInbound) -> InboundRecord:
        return await self._write_op(lambda: _record_inbound(new))

    async def get_inbound(self, source: str, sms_id: str) -> InboundRecord | None:
        return self._point_read(lambda: inbound_log.get_inbound(source, sms_id))

    async def inbound_answer(self, inbound_id: int) -> StoredResponse | None:
        """The stored answer of a short-code hit, None while it is pending (a point
        lookup)."""
        return self._point_read(lambda: inbound_log.inbound_answer(inbound_id))

    async def _claim_forward_jobs(self, claim: ForwardClaim) -> list[ClaimedForward]:
        return await self._write_op(lambda: _claim_forward_jobs(claim))

    async def _due_status_polls(self, upstream: str, now: float, limit: int,
                                lease_seconds: float) -> list[DuePoll]:
        return await self._write_op(
            lambda: _due_status_polls(upstream, now, limit, lease_seconds))


# The operations SQLite runs its own way, in the writer's transaction (sql/*.sqlite.sql).


def _probe(pages: int) -> Op[None]:
    page_size = yield value("page_size")
    yield count("write_probe", int(page_size) * pages)
    yield count("drop_probe")


def _enqueue(mail: NewMail) -> Op[EnqueueResult]:
    fresh: list[tuple[str | None, Sequence[SendRequest]]] = []
    for key, requests in mail.batches:
        if key is not None:
            seen = yield value("dedup_seen", key)
            if seen is not None and seen >= mail.now - mail.dedup_window:
                continue
        fresh.append((key, requests))
    if not fresh:
        return EnqueueResult((), duplicate=True)
    now, envelope = mail.now, mail.envelope
    mail_id = yield value(
        "insert_received_mail", now, envelope.mail_from, envelope.message_id, envelope.peer,
        envelope.format, envelope.headers, envelope.raw or None, envelope.raw_size,
        json.dumps(envelope.recipients))
    ids: list[int] = []
    for key, requests in fresh:
        if key is not None:
            yield count("take_dedup_key", key, mail_id, now)
        for req in requests:
            message_id = yield value(
                "insert_message", mail_id, req.account, req.upstream, req.phone, req.text,
                req.parts, req.encoding, options_json(req), max(now, req.options.not_before or now),
                now, now)
            yield count("insert_event", message_id, now, MessageStatus.QUEUED.value, None)
            ids.append(int(message_id))
    if mail.reply is not None:
        yield from mail_queue.insert_v2_answer(mail.reply, ids, now)
    return EnqueueResult(tuple(ids))


def _claim_due(owner: str, now: float, limit: int,
               lease_seconds: float) -> Op[list[StoredMessage]]:
    ids = Array(r[0] for r in (yield rows("due_messages", now, now, owner, limit)))
    if not ids:
        return []
    yield count("lease_messages", owner, now + lease_seconds, now, ids)
    return [row_to_message(tuple(r)) for r in (yield rows("claimed_messages", ids))]


def _record_intent(owner: str, upstream: str, leases: Sequence[tuple[int, int]],
                   fingerprint: str, now: float) -> Op[SendIntent | None]:
    held = []
    for message_id, epoch in leases:
        if (yield count("count_intent", now, message_id, owner, epoch)):
            held.append((message_id, epoch))
    if not held:
        return None
    intent_id = yield value("insert_intent", upstream, owner, fingerprint, json.dumps(held),
                            now)
    return SendIntent(int(intent_id), tuple(message_id for message_id, _ in held))


def _record_outcomes(owner: str, intent_id: int | None, outcomes: Sequence[SendOutcome],
                     now: float) -> Op[list[int]]:
    recorded = []
    for outcome in outcomes:
        if (yield from _record_outcome(owner, outcome, now, intent_id is not None)):
            recorded.append(outcome.message_id)
    if intent_id is not None:
        yield count("end_intent", now, intent_summary(outcomes, recorded), intent_id)
    return recorded


# The update of each outcome status (outbox.sqlite.sql).
_OUTCOME_UPDATES = {"sent": "outcome_sent", "queued": "outcome_queued",
                    "failed": "outcome_failed", "ambiguous": "outcome_ambiguous",
                    "sending": "outcome_sending"}


def _record_outcome(owner: str, outcome: SendOutcome, now: float,
                    requested: bool) -> Op[bool]:
    """One message's outcome, if its claim still holds (see ``record_outcomes``)."""
    event, detail = outcome_event(outcome)
    error = outcome_error(outcome)
    changes: tuple[Any, ...]
    if outcome.status == "sent":
        ids = list(outcome.provider_ids)
        changes = (outcome.upstream, json.dumps(ids), outcome.poll_at if ids else None)
    elif outcome.status == "queued":
        changes = (outcome.next_attempt_at, error)
    else:
        changes = (error,)
    if not (yield count(_OUTCOME_UPDATES[outcome.status], *changes, int(requested),
                        int(requested and not outcome.unknown), now, outcome.message_id,
                        owner, outcome.lease_epoch)):
        log.warning("message %s: lease lost before its result was recorded",
                    outcome.message_id)
        return False
    yield count("insert_event", outcome.message_id, now, event, detail)
    if outcome.mail is not None:
        yield from mail_queue.insert_mail(outcome.mail, now)
    if outcome.status == "sent" and outcome.provider_ids:
        yield from _index_provider_ids(outcome.message_id, outcome.provider_ids)
    return True


def _index_provider_ids(message_id: int, provider_ids: Sequence[str]) -> Op[None]:
    yield many("index_provider_id", [(p, message_id) for p in provider_ids])
    # A provider may report before its send reply was recorded here: such reports were kept
    # unmatched, and are applied now, in the order they came.
    early = yield rows("early_reports", Array(provider_ids))
    for report_id, provider_id, status, raw_status, error_code, received_at in early:
        yield count("attach_report", message_id, report_id)
        yield from reports.apply_report(message_id, report_id, provider_id, status,
                                        raw_status, error_code, received_at)


def _record_inbound(new: NewInbound) -> Op[InboundRecord]:
    message, now, response = new.message, new.now, new.response
    content_hash = inbound_content_hash(message)
    if message.sms_id is not None:
        found = yield row("inbound_by_key", message.source, f"id:{message.sms_id}")
    else:
        found = yield row("inbound_by_content", message.source, content_hash,
                          now - new.dedup_window)
    if found is not None:
        return row_to_inbound(tuple(found), duplicate=True)
    key = f"id:{message.sms_id}" if message.sms_id is not None else f"noid:{uuid.uuid4().hex}"
    inbound_id = int((yield value(
        "insert_inbound_row", message.source, message.kind, key, message.sms_id, content_hash,
        message.phone, message.recipient, message.text, message.raw, message.charset,
        int(message.charset_error), new.state, response.status if response else None,
        response.body if response else None, response.content_type if response else None,
        now)))
    yield many("insert_forward_job", [
        (inbound_id, job.kind, job.target, job.payload, now, now, new.forward_deadline)
        for job in new.jobs])
    return InboundRecord(inbound_id, False, new.state, response, now, content_hash)


def _claim_forward_jobs(claim: ForwardClaim) -> Op[list[ClaimedForward]]:
    # A kind has no space: "kind target" names one pair unambiguously.
    excluded = [f"{kind} {target}" for kind, target in claim.exclude_targets]
    skip = (f" AND kind || ' ' || target NOT IN ({','.join('?' * len(excluded))})"
            if excluded else "")
    # One indexed range per kind, plus expired leases: no scan of the jobs of kinds this
    # worker does not take (e-mail jobs waiting for a smarthost).
    parts = ["SELECT id, next_attempt_at AS k FROM forward_jobs WHERE status = 'queued' "
             "AND kind = ? AND next_attempt_at <= ?" + skip for _ in claim.kinds]
    parts.append("SELECT id, lease_until AS k FROM forward_jobs WHERE status = 'sending' "
                 "AND lease_until <= ?" + skip)
    params: list[Any] = [v for kind in claim.kinds for v in (kind, claim.now, *excluded)]
    params += [claim.now, *excluded]
    ids = Array(r[0] for r in (yield query(
        f"SELECT id FROM ({' UNION ALL '.join(parts)}) ORDER BY k LIMIT ?",
        *params, claim.limit)))
    if not ids:
        return []
    found = yield rows("claimed_forward_jobs", ids, Array(claim.kinds))
    yield many("lease_forward_job",
               [(claim.owner, claim.now + claim.lease_seconds, r[0]) for r in found])
    return [ClaimedForward(r[0], r[1], r[2], r[3], bytes(r[4]), r[5] + 1, r[6]) for r in found]


def _due_status_polls(upstream: str, now: float, limit: int,
                      lease_seconds: float) -> Op[list[DuePoll]]:
    """Claimed for ``lease_seconds``: another process does not poll them too."""
    found = yield rows("due_polls", upstream, now, limit)
    yield many("poll_lease", [(now + lease_seconds, r[0]) for r in found])
    return [DuePoll(r[0], json.loads(r[1]), r[2]) for r in found]

"""SQLite store: the embedded default.

Durability: WAL journal with ``synchronous=FULL``; ``NORMAL`` survives a process crash but may
lose the last commits on power loss, and a 250 promises more than that.

Throughput: one writer thread owns the connection and commits in groups. Operations queued
while a commit is in progress are run in the next transaction, each inside its own SAVEPOINT
so one failing operation does not undo the others, and one fsync serves them all. Write
transactions begin with ``BEGIN IMMEDIATE``: a deferred transaction that reads then writes
fails at once with "database is locked" whatever ``busy_timeout`` says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from bridge.errors import StoreUnavailable
from bridge.models import (
    ClaimedForward,
    DeliveryReport,
    EnqueueResult,
    ForwardJob,
    InboundMessage,
    InboundRecord,
    MailEnvelope,
    MessageStatus,
    OutboundMail,
    SendIntent,
    SendOutcome,
    SendRequest,
    StoredMessage,
    StoredResponse,
)
from bridge.redact import redact_text
from bridge.store import migrations
from bridge.store.base import ReplyBuilder
from bridge.store.common import (
    CLAIM_COLUMNS,
    DELIVERY_STATUSES,
    FINAL_STATUSES,
    INBOUND_COLUMNS,
    LIST_COLUMNS,
    REPORT_COLUMNS,
    REPORT_KEYS,
    SCRIPT_COLUMNS,
    PartReport,
    inbound_content_hash,
    intent_summary,
    options_json,
    outcome_error,
    outcome_event,
    report_time,
    row_to_inbound,
    row_to_message,
    row_to_script,
    settle_delivery,
)
from bridge.store.console import MAX_ATTEMPT_DETAIL, MAX_ATTEMPTS_KEPT
from bridge.store.console_sqlite import SqliteConsoleQueries
from bridge.store.migrations import Migration

log = logging.getLogger(__name__)
T = TypeVar("T")

# The schema: bridge/store/migrations/ (read at open, so a test can hold one back).
MIGRATIONS: list[Migration] = migrations.load("sqlite")





_Op = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def _resolve_all(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in items:
        _resolve(future, result, error)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _unavailable(exc: Exception) -> Exception:
    """... unless the database could not do it (full disk, I/O error, lock): then nothing was
    written, and the caller answers "try later" (451 / 503) like for any store outage."""
    if isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError:
        return StoreUnavailable(f"store unavailable: {exc}")
    return exc


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


class SqliteStore(SqliteConsoleQueries):
    """:class:`bridge.store.base.OutboxStore` on one SQLite file."""

    MAX_GROUP = 512

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Reads run on their own connection and thread: in WAL mode they see every committed
        # write without waiting behind the writer's group commits (and their fsync).
        self._reader: ThreadPoolExecutor | None = None
        self._reader_conn: sqlite3.Connection | None = None
        self._loop_conn: sqlite3.Connection | None = None
        self.schema_change: tuple[int, int] | None = None

    @classmethod
    def from_url(cls, url: str, *, busy_timeout: float = 5.0) -> SqliteStore:
        return cls(url.removeprefix("sqlite:///"), busy_timeout=busy_timeout)

    # -- the writer thread -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        # Switching a new file to WAL takes an exclusive lock without calling the busy
        # handler: workers opening one new file together wait here instead.
        self._retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL"))
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _run(self, conn: sqlite3.Connection) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self.MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run_group(conn, batch)
        conn.close()

    def _run_group(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        outcomes: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            self._begin(conn)
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = op[0](conn)
                except Exception as exc:  # an operation's own error stays its own ...
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((op, None, _unavailable(exc)))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((op, result, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.warning("store transaction failed: %s", exc)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            error = StoreUnavailable(f"store unavailable: {exc}")
            outcomes = [(op, None, error) for op in batch]
        # One wake-up of the event loop per group, not one per operation.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
        for (_, future, loop), result, err in outcomes:
            by_loop.setdefault(loop, []).append((future, result, err))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_resolve_all, items)

    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, waiting in short steps while another process (a worker of
        ``serve --workers N`` on the same file) holds the write lock. SQLite's own busy
        handler sleeps 1, 2, 5, 10, 15 … ms between tries, far longer than another group
        commit holds the lock, so the writer connection has none (busy_timeout 0) and
        retries here every 0.1 ms at first, for at most ``busy_timeout`` seconds."""
        self._retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))

    def _retry_busy(self, statement: Callable[[], object]) -> None:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.0001
        while True:
            try:
                statement()
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 1.5, 0.002)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None or self._reader_conn is None:
            raise StoreUnavailable("store is not open")
        conn = self._reader_conn
        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader, fn, conn)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise StoreUnavailable("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, future, loop))
        return await future

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

    def _connect_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA query_only = 1")
        return conn

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

    async def enqueue(
        self,
        envelope: MailEnvelope,
        batches: Sequence[tuple[str | None, Sequence[SendRequest]]],
        *,
        now: float,
        dedup_window: float,
        reply: ReplyBuilder | None = None,
    ) -> EnqueueResult:
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
                    self._insert_mail(conn, mail, now)
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

    @staticmethod
    def _insert_mail(conn: sqlite3.Connection, mail: OutboundMail, now: float) -> None:
        conn.execute(
            "INSERT INTO outgoing_mail (kind, mail_to, content, status, next_attempt_at, "
            "created_at) VALUES (?, ?, ?, 'queued', ?, ?)",
            (mail.kind, mail.mail_to, mail.content, now, now),
        )

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

    async def expire_leases(self, is_dead: Callable[[str], bool]) -> int:
        def op(conn: sqlite3.Connection) -> int:
            released = 0
            for table in ("messages", "forward_jobs", "outgoing_mail"):
                owners = [
                    row[0]
                    for row in conn.execute(
                        f"SELECT DISTINCT lease_owner FROM {table} WHERE status = 'sending'"
                    )
                    if row[0] and is_dead(row[0])
                ]
                for owner in owners:
                    released += conn.execute(
                        f"UPDATE {table} SET lease_until = 0 WHERE status = 'sending' "
                        "AND lease_owner = ?",
                        (owner,),
                    ).rowcount
            return released

        return await self._call(op)

    async def renew_leases(self, owner: str, now: float, lease_seconds: float) -> int:
        return await self._call(lambda conn: conn.execute(
            "UPDATE messages SET lease_until = ? WHERE status = 'sending' AND lease_owner = ?",
            (now + lease_seconds, owner)).rowcount)

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

    async def resolve_ambiguous(self, message_id: int, *, sent: bool, now: float) -> bool:
        if sent:
            change, detail = "status = 'sent'", "sent (by the operator)"
        else:
            change = "status = 'queued', next_attempt_at = ?, maybe_sent = 0"
            detail = "to be sent again (by the operator)"

        def op(conn: sqlite3.Connection) -> bool:
            params: tuple[Any, ...] = (now, message_id) if sent else (now, now, message_id)
            if not conn.execute(f"UPDATE messages SET {change}, updated_at = ? "
                                "WHERE id = ? AND status = 'ambiguous'", params).rowcount:
                return False
            conn.execute(
                "INSERT INTO message_events (message_id, at, status, detail) VALUES (?,?,?,?)",
                (message_id, now, "resolved", detail))
            return True

        return await self._call(op)

    async def next_due_at(self) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT MIN(k) FROM (SELECT MIN(next_attempt_at) AS k FROM messages "
                "WHERE status = 'queued' UNION ALL SELECT MIN(lease_until) FROM messages "
                "WHERE status = 'sending')"
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._call(op)

    async def list_messages(
        self, *, limit: int = 50, status: str | None = None
    ) -> list[StoredMessage]:
        def op(conn: sqlite3.Connection) -> list[StoredMessage]:
            column = "m.delivery_status" if status in DELIVERY_STATUSES else "m.status"
            where, params = (f"WHERE {column} = ?", [status]) if status else ("", [])
            rows = conn.execute(
                f"SELECT {LIST_COLUMNS} FROM messages m LEFT JOIN mails ml "
                f"ON ml.id = m.mail_id {where} ORDER BY m.id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [row_to_message(row) for row in rows]

        return await self._read(op)

    async def message_events(self, message_id: int) -> list[dict[str, Any]]:
        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT at, status, detail FROM message_events WHERE message_id = ? ORDER BY id",
                (message_id,),
            ).fetchall()
            return [{"at": r[0], "status": r[1], "detail": r[2]} for r in rows]

        return await self._read(op)

    async def message_events_of(
        self, message_ids: Sequence[int]
    ) -> dict[int, list[dict[str, Any]]]:
        def op(conn: sqlite3.Connection) -> dict[int, list[dict[str, Any]]]:
            # The ids as one JSON array: a listing may name more messages than SQLite
            # takes parameters in one statement.
            rows = conn.execute(
                "SELECT message_id, at, status, detail FROM message_events "
                "WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY message_id, id",
                (json.dumps(list(message_ids)),),
            ).fetchall()
            events: dict[int, list[dict[str, Any]]] = {}
            for r in rows:
                events.setdefault(r[0], []).append({"at": r[1], "status": r[2], "detail": r[3]})
            return events

        return await self._read(op)

    # -- mails the bridge sends -----------------------------------------------------------

    async def queue_mail(self, mail: OutboundMail, now: float) -> None:
        await self._call(lambda conn: self._insert_mail(conn, mail, now))

    async def claim_mails(
        self, owner: str, now: float, limit: int, lease_seconds: float
    ) -> list[tuple[int, OutboundMail, int]]:
        def op(conn: sqlite3.Connection) -> list[tuple[int, OutboundMail, int]]:
            rows = conn.execute(
                "SELECT id, kind, mail_to, content, attempts FROM outgoing_mail "
                "WHERE (status = 'queued' AND next_attempt_at <= ?) "
                "OR (status = 'sending' AND lease_until <= ?) ORDER BY next_attempt_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            for row in rows:
                conn.execute(
                    "UPDATE outgoing_mail SET status = 'sending', lease_owner = ?, "
                    "lease_until = ?, attempts = attempts + 1 WHERE id = ?",
                    (owner, now + lease_seconds, row[0]),
                )
            return [(r[0], OutboundMail(r[1], r[2], bytes(r[3])), r[4] + 1) for r in rows]

        return await self._call(op)

    async def mail_done(self, mail_id: int, owner: str, now: float) -> None:
        await self._call(
            lambda conn: conn.execute(
                "UPDATE outgoing_mail SET status = 'sent', lease_until = NULL, last_error = NULL "
                "WHERE id = ? AND status = 'sending' AND lease_owner = ?",
                (mail_id, owner),
            )
        )

    async def mail_retry(
        self, mail_id: int, owner: str, error: str, next_attempt_at: float | None
    ) -> None:
        error = redact_text(error)
        if next_attempt_at is None:
            sql, params = "status = 'failed', last_error = ?", (error, mail_id, owner)
        else:
            sql = "status = 'queued', next_attempt_at = ?, last_error = ?"
            params = (next_attempt_at, error, mail_id, owner)  # type: ignore[assignment]
        await self._call(
            lambda conn: conn.execute(
                f"UPDATE outgoing_mail SET {sql}, lease_until = NULL WHERE id = ? "
                "AND status = 'sending' AND lease_owner = ?", params
            )
        )

    async def list_mails(self, *, limit: int = 50) -> list[dict[str, Any]]:
        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT id, kind, mail_to, status, attempts, last_error, created_at, content "
                "FROM outgoing_mail ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            keys = ("id", "kind", "mail_to", "status", "attempts", "last_error", "created_at",
                    "content")
            return [dict(zip(keys, row, strict=True)) for row in rows]

        return await self._read(op)

    async def list_delivery_reports(
        self, *, unmatched: bool = False, limit: int = 100
    ) -> list[dict[str, Any]]:
        where = "WHERE message_id IS NULL " if unmatched else ""

        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                f"SELECT {REPORT_COLUMNS} FROM delivery_reports {where}ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [dict(zip(REPORT_KEYS, row, strict=True)) for row in rows]

        return await self._read(op)

    async def purge(self, now: float, dedup_window: float) -> None:
        await self._call(
            lambda conn: conn.execute(
                "DELETE FROM mail_dedup WHERE seen_at < ?", (now - dedup_window,)
            )
        )

    async def bridge_id(self) -> str:
        """A random id of this store, made once: prefixes idempotency keys sent upstream."""

        def op(conn: sqlite3.Connection) -> str:
            import secrets

            row = conn.execute("SELECT value FROM meta WHERE key = 'bridge_id'").fetchone()
            if row:
                return str(row[0])
            value = secrets.token_hex(6)
            conn.execute("INSERT INTO meta (key, value) VALUES ('bridge_id', ?)", (value,))
            return value

        return await self._call(op)

    # -- inbound SMS ----------------------------------------------------------------------

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
        """A point lookup on the unique key, run on the event loop's own read connection:
        it takes microseconds, less than a hop to a thread, and a WAL reader never waits
        for the writer."""
        if self._loop_conn is None:
            if self._thread is None:
                raise StoreUnavailable("store is not open")
            self._loop_conn = self._connect_reader()
        try:
            row = self._loop_conn.execute(
                f"SELECT {INBOUND_COLUMNS} FROM inbound WHERE source = ? AND dedup_key = ?",
                (source, f"id:{sms_id}"),
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc
        return None if row is None else row_to_inbound(row, duplicate=True)

    async def complete_inbound(
        self, inbound_id: int, response: StoredResponse, script_error: str | None
    ) -> StoredResponse:
        """Store the answer of a short-code hit, unless one was stored first; return the
        answer that stands."""
        script_error = redact_text(script_error) if script_error else script_error

        def op(conn: sqlite3.Connection) -> StoredResponse:
            conn.execute(
                "UPDATE inbound SET state = 'answered', response_status = ?, response_body = ?, "
                "response_type = ?, script_error = ? WHERE id = ? AND state = 'pending'",
                (response.status, response.body, response.content_type, script_error,
                 inbound_id),
            )
            row = conn.execute(
                "SELECT response_status, response_body, response_type FROM inbound WHERE id = ?",
                (inbound_id,),
            ).fetchone()
            return StoredResponse(row[0], bytes(row[1]), row[2])

        return await self._call(op)

    async def inbound_answer(self, inbound_id: int) -> StoredResponse | None:
        """The stored answer of a short-code hit, None while it is pending: a point lookup
        on the event loop's read connection, as :meth:`get_inbound`."""
        if self._loop_conn is None:
            if self._thread is None:
                raise StoreUnavailable("store is not open")
            self._loop_conn = self._connect_reader()
        try:
            row = self._loop_conn.execute(
                "SELECT response_status, response_body, response_type FROM inbound "
                "WHERE id = ?", (inbound_id,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc
        if row is None or row[0] is None:
            return None
        return StoredResponse(int(row[0]), bytes(row[1] or b""), str(row[2]))

    async def claim_inbound_answer(self, inbound_id: int, now: float, lease: float) -> bool:
        """Take over the script call of a pending short-code hit whose caller's hold ran
        out (``lease`` seconds from the hit, or from the last take-over); True for the one
        caller that got it."""

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "UPDATE inbound SET answer_until = ? WHERE id = ? AND state = 'pending' "
                "AND COALESCE(answer_until, received_at + ?) <= ?",
                (now + lease, inbound_id, lease, now),
            ).rowcount == 1

        return await self._call(op)

    async def list_inbound(self, *, limit: int = 50) -> list[dict[str, Any]]:
        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT i.id, i.source, i.kind, i.sms_id, i.phone, i.recipient, i.text, "
                "i.charset_error, i.state, i.script_error, i.received_at, "
                "(SELECT COUNT(*) FROM forward_jobs f WHERE f.inbound_id = i.id), "
                "(SELECT COUNT(*) FROM forward_jobs f WHERE f.inbound_id = i.id "
                " AND f.status = 'delivered') "
                "FROM inbound i ORDER BY i.id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            keys = ("id", "source", "kind", "sms_id", "phone", "recipient", "text",
                    "charset_error", "state", "script_error", "received_at", "forwards",
                    "delivered")
            return [dict(zip(keys, row, strict=True)) for row in rows]

        return await self._read(op)

    # -- forwarding jobs ------------------------------------------------------------------

    async def claim_forward_jobs(
        self, owner: str, now: float, limit: int, lease_seconds: float,
        kinds: Sequence[str] = ("email", "webhook"),
        exclude_targets: Sequence[tuple[str, str]] = (),
    ) -> list[ClaimedForward]:
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

    # Outcomes are recorded only by the lease holder: a worker whose lease expired and was
    # taken over must not overwrite the new holder's result (e.g. put a delivered job back).
    _FORWARD_HELD = "WHERE id = ? AND status = 'sending' AND lease_owner = ?"

    async def forward_done(self, job_id: int, owner: str, now: float, *,
                           detail: str = "") -> None:
        await self._forward_outcome(
            "UPDATE forward_jobs SET status = 'delivered', lease_until = NULL, last_error = NULL "
            + self._FORWARD_HELD, (job_id, owner), job_id, now, "delivered", detail)

    async def forward_retry(
        self, job_id: int, owner: str, error: str, next_attempt_at: float, *,
        now: float | None = None, detail: str | None = None,
    ) -> None:
        error = redact_text(error)
        await self._forward_outcome(
            "UPDATE forward_jobs SET status = 'queued', next_attempt_at = ?, last_error = ?, "
            "lease_until = NULL " + self._FORWARD_HELD, (next_attempt_at, error, job_id, owner),
            job_id, time.time() if now is None else now, "retry",
            error if detail is None else detail)

    async def forward_dead(self, job_id: int, owner: str, error: str, *,
                           now: float | None = None, detail: str | None = None) -> None:
        error = redact_text(error)
        await self._forward_outcome(
            "UPDATE forward_jobs SET status = 'dead', last_error = ?, lease_until = NULL "
            + self._FORWARD_HELD, (error, job_id, owner),
            job_id, time.time() if now is None else now, "dead",
            error if detail is None else detail)

    async def _forward_outcome(self, update: str, params: tuple[Any, ...], job_id: int,
                               at: float, outcome: str, detail: str) -> None:
        """The job's outcome and, in the same transaction, its attempt in the history (only
        when the caller holds the lease: an outcome ignored leaves no attempt either); the
        job keeps its last MAX_ATTEMPTS_KEPT attempts."""
        detail = redact_text(detail)[:MAX_ATTEMPT_DETAIL]

        def op(conn: sqlite3.Connection) -> None:
            if not conn.execute(update, params).rowcount:
                return
            conn.execute("INSERT INTO forward_attempts (job_id, at, outcome, detail) "
                         "VALUES (?, ?, ?, ?)", (job_id, at, outcome, detail))
            conn.execute(
                "DELETE FROM forward_attempts WHERE job_id = ? AND id <= (SELECT id FROM "
                "forward_attempts WHERE job_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (job_id, job_id, MAX_ATTEMPTS_KEPT))

        await self._call(op)

    async def assign_thread(
        self, job_id: int, thread_key: str, message_id: str, at: float, idle: float
    ) -> str:
        def op(conn: sqlite3.Connection) -> str:
            decided = conn.execute("SELECT thread_root FROM forward_jobs WHERE id = ?",
                                   (job_id,)).fetchone()
            if decided is not None and decided[0] is not None:
                return str(decided[0])
            thread = conn.execute(
                "SELECT root_message_id, last_activity FROM mail_threads WHERE thread_key = ?",
                (thread_key,)).fetchone()
            if thread is not None and at - float(thread[1]) < idle:
                root = str(thread[0])
            else:
                root = message_id
            conn.execute(
                "INSERT INTO mail_threads (thread_key, root_message_id, last_activity) "
                "VALUES (?, ?, ?) ON CONFLICT (thread_key) DO UPDATE SET "
                "root_message_id = excluded.root_message_id, "
                "last_activity = max(last_activity, excluded.last_activity)",
                (thread_key, root, at))
            conn.execute("UPDATE forward_jobs SET thread_root = ? WHERE id = ?", (root, job_id))
            return root

        return await self._call(op)

    async def list_forward_jobs(
        self, *, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            where, params = ("WHERE status = ?", [status]) if status else ("", [])
            rows = conn.execute(
                f"SELECT id, inbound_id, kind, target, status, attempts, last_error, created_at "
                f"FROM forward_jobs {where} ORDER BY id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            keys = ("id", "inbound_id", "kind", "target", "status", "attempts", "last_error",
                    "created_at")
            return [dict(zip(keys, row, strict=True)) for row in rows]

        return await self._read(op)

    async def redeliver(self, job_ids: Sequence[int] | None, now: float, deadline: float) -> int:
        """Queue dead letters again (all of them when ``job_ids`` is None)."""

        def op(conn: sqlite3.Connection) -> int:
            sql = ("UPDATE forward_jobs SET status = 'queued', next_attempt_at = ?, "
                   "deadline = ?, attempts = 0 WHERE status = 'dead'")
            if job_ids is None:
                return conn.execute(sql, (now, deadline)).rowcount
            return sum(conn.execute(sql + " AND id = ?", (now, deadline, job_id)).rowcount
                       for job_id in job_ids)

        return await self._call(op)

    # -- delivery reports -----------------------------------------------------------------

    async def record_delivery_reports(
        self, source: str, reports: Sequence[DeliveryReport], now: float
    ) -> int:
        """Attach reports to their messages' status history; return how many matched.
        Unmatched reports are kept too (``delivery_reports.message_id`` is NULL)."""

        def op(conn: sqlite3.Connection) -> int:
            matched = 0
            for report in reports:
                row = conn.execute(
                    "SELECT message_id FROM provider_ids WHERE provider_id = ?",
                    (report.provider_id,),
                ).fetchone()
                message_id = row[0] if row else None
                report_id = conn.execute(
                    "INSERT INTO delivery_reports (source, provider_id, message_id, status, "
                    "raw_status, error_code, received_at, reported_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (source, report.provider_id, message_id, report.status, report.raw_status,
                     report.error_code, now, report_time(report.at)),
                ).lastrowid
                if message_id is None:
                    continue
                assert report_id is not None
                matched += 1
                _apply_report(conn, message_id, report_id, report.provider_id, report.status,
                              report.raw_status, report.error_code, now)
            return matched

        return await self._call(op)

    # -- reply scripts registered through the API ----------------------------------------

    async def list_reply_scripts(self) -> list[dict[str, Any]]:
        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(f"SELECT {SCRIPT_COLUMNS} FROM reply_scripts ORDER BY id")
            return [row_to_script(row) for row in rows]

        return await self._read(op)

    async def save_reply_script(
        self, script: dict[str, Any], now: float, script_id: int | None = None
    ) -> dict[str, Any] | None:
        """Create (``script_id`` None) or replace a reply script; None if it does not exist."""

        def op(conn: sqlite3.Connection) -> dict[str, Any] | None:
            values = (script["shortcode"], script.get("keyword"), script["url"],
                      script["method"], script["timeout"], script.get("secret"))
            if script_id is None:
                new_id = conn.execute(
                    "INSERT INTO reply_scripts (shortcode, keyword, url, method, timeout, secret, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, now, now),
                ).lastrowid
            else:
                new_id = script_id
                if conn.execute(
                    "UPDATE reply_scripts SET shortcode = ?, keyword = ?, url = ?, method = ?, "
                    "timeout = ?, secret = ?, updated_at = ? WHERE id = ?",
                    (*values, now, script_id),
                ).rowcount == 0:
                    return None
            row = conn.execute(
                f"SELECT {SCRIPT_COLUMNS} FROM reply_scripts WHERE id = ?", (new_id,)
            ).fetchone()
            return row_to_script(row)

        return await self._call(op)

    async def delete_reply_script(self, script_id: int) -> bool:
        return bool(await self._call(lambda conn: conn.execute(
            "DELETE FROM reply_scripts WHERE id = ?", (script_id,)).rowcount))

    # -- status polling and polling cursors ------------------------------------------------

    async def due_status_polls(
        self, upstream: str, now: float, limit: int, lease_seconds: float = 60.0
    ) -> list[tuple[int, list[str], int]]:
        """Claim sent messages of ``upstream`` whose status is due to be asked for:
        ``(message id, provider ids, polls so far)``. Their next poll moves ``lease_seconds``
        ahead, so another process does not poll them too; ``reschedule_status_polls`` then
        sets the real next time."""

        def op(conn: sqlite3.Connection) -> list[tuple[int, list[str], int]]:
            rows = conn.execute(
                "SELECT id, upstream_ids, poll_count FROM messages WHERE upstream_used = ? "
                "AND next_poll_at IS NOT NULL AND next_poll_at <= ? ORDER BY next_poll_at "
                "LIMIT ?",
                (upstream, now, limit),
            ).fetchall()
            conn.executemany("UPDATE messages SET next_poll_at = ? WHERE id = ?",
                             [(now + lease_seconds, row[0]) for row in rows])
            return [(row[0], json.loads(row[1]), row[2]) for row in rows]

        return await self._call(op)

    async def acquire_lease(self, name: str, owner: str, now: float, ttl: float) -> bool:
        """Hold a named lease (e.g. "poll inbound from upstream X") for ``ttl`` seconds: True
        if it was free, expired, or already ours. One process of a cluster does the job."""
        return bool(await self._call(lambda conn: conn.execute(
            "INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
            "expires_at = excluded.expires_at "
            "WHERE leases.owner = excluded.owner OR leases.expires_at <= ?",
            (name, owner, now + ttl, now)).rowcount))

    async def release_lease(self, name: str, owner: str) -> None:
        """Give a named lease up (on a clean stop), if we hold it."""
        await self._call(lambda conn: conn.execute(
            "DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner)))

    async def heartbeat(self, owner: str, now: float, ttl: float) -> int:
        """Record that ``owner`` is alive; return how many processes are (the cluster's
        size, which divides rate limits so that they hold for the cluster as a whole)."""

        def op(conn: sqlite3.Connection) -> int:
            conn.execute(
                "INSERT INTO processes (owner, seen_at) VALUES (?, ?) "
                "ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at", (owner, now))
            conn.execute("DELETE FROM processes WHERE seen_at < ?", (now - ttl,))
            (count,) = conn.execute("SELECT COUNT(*) FROM processes").fetchone()
            return int(count)

        return await self._call(op)

    async def reschedule_status_polls(
        self, schedule: Sequence[tuple[int, float | None]]
    ) -> None:
        """Next poll time per message (None: stop polling it)."""
        await self._call(lambda conn: conn.executemany(
            "UPDATE messages SET next_poll_at = ?, poll_count = poll_count + 1 "
            "WHERE id = ? AND next_poll_at IS NOT NULL",
            [(at, message_id) for message_id, at in schedule]))

    async def get_meta(self, key: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._read(op)

    async def set_meta(self, key: str, value: str) -> None:
        await self._call(lambda conn: conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value)))

    async def queue_stats(self, now: float) -> dict[str, float]:
        def op(conn: sqlite3.Connection) -> dict[str, float]:
            queued, oldest = conn.execute(
                "SELECT COUNT(*), MIN(created_at) FROM messages "
                "WHERE status IN ('queued', 'sending')"
            ).fetchone()
            forwards, dead = conn.execute(
                "SELECT SUM(status IN ('queued', 'sending')), SUM(status = 'dead') "
                "FROM forward_jobs"
            ).fetchone()
            return {
                "messages_queued": float(queued),
                "oldest_queued_age": float(now - oldest) if oldest is not None else 0.0,
                "forwards_queued": float(forwards or 0),
                "dead_letters": float(dead or 0),
            }

        return await self._read(op)




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
        SqliteStore._insert_mail(conn, outcome.mail, now)
    if outcome.status == "sent" and outcome.provider_ids:
        _index_provider_ids(conn, outcome.message_id, outcome.provider_ids)
    return True


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
        _apply_report(conn, message_id, report_id, provider_id, status, raw_status,
                      error_code, received_at)


def _apply_report(conn: sqlite3.Connection, message_id: int, report_id: int,
                  provider_id: str, status: str, raw_status: str, error_code: int | None,
                  at: float) -> None:
    """A stored delivery report (``report_id``, already attached to the message) into the
    message's history and status. The status is settled from all the message's reports by
    :func:`bridge.store.common.settle_delivery` (repeats and late arrivals never take a
    final status back); a final one ends status polling for the message. Every report
    goes into the history, the detail follows the reports that stand."""
    detail = f"{raw_status} ({provider_id})"
    if error_code:
        detail += f" error {error_code}"
    ids_json, current = conn.execute(
        "SELECT upstream_ids, delivery_status FROM messages WHERE id = ?", (message_id,)
    ).fetchone()
    reports = [PartReport(*row) for row in conn.execute(
        "SELECT id, provider_id, status, reported_at FROM delivery_reports "
        "WHERE message_id = ? ORDER BY id", (message_id,))]
    parts = json.loads(ids_json) or [provider_id]
    overall, standing = settle_delivery(parts, reports, current)
    stands = provider_id in standing and standing[provider_id].id == report_id
    conn.execute(
        "UPDATE messages SET delivery_status = ?, "
        "delivery_detail = CASE WHEN ? THEN ? ELSE delivery_detail END, "
        "next_poll_at = CASE WHEN ? THEN NULL ELSE next_poll_at END WHERE id = ?",
        (overall, stands, detail, overall in FINAL_STATUSES, message_id),
    )
    conn.execute(
        "INSERT INTO message_events (message_id, at, status, detail) VALUES (?, ?, ?, ?)",
        (message_id, at, status, detail),
    )






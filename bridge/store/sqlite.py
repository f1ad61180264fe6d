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
import functools
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
from bridge.store import migrations, queries
from bridge.store.base import ReplyBuilder
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
from bridge.store.console import MAX_ATTEMPT_DETAIL, MAX_ATTEMPTS_KEPT
from bridge.store.migrations import Migration
from bridge.store.queries import OpFactory
from bridge.store.roles import RoleMethods, inbound_log, reports

log = logging.getLogger(__name__)
T = TypeVar("T")

# The schema: bridge/store/migrations/ (read at open, so a test can hold one back).
MIGRATIONS: list[Migration] = migrations.load("sqlite")
# The named SQL blocks (bridge/store/sql/) as SQLite runs them.
SQL = queries.load("sqlite")





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


def _casefold(value: str | None) -> str | None:
    return value.casefold() if isinstance(value, str) else value


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


class SqliteStore(RoleMethods):
    """:class:`bridge.store.base.OutboxStore` on one SQLite file."""

    MAX_GROUP = 512
    # SQLite's lower() and LIKE fold ASCII only: "Привет" would not find "привет". Searches
    # fold with Python's casefold, registered on the read connections.
    FOLD = "bridge_casefold"

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

    # Where the operations written once (bridge.store.roles) run: reads on the reader
    # thread, writes in the writer's group commit.

    async def _read_op(self, make: OpFactory[T]) -> T:
        return await self._read(lambda conn: queries.run_sync(conn, make, SQL))

    async def _write_op(self, make: OpFactory[T]) -> T:
        return await self._call(lambda conn: queries.run_sync(conn, make, SQL))

    _lock_op = _write_op

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
        conn.create_function(self.FOLD, 1, _casefold, deterministic=True)
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

    # -- mails the bridge sends -----------------------------------------------------------

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

    def _point_read(self, make: OpFactory[T]) -> T:
        """A point lookup on the unique key, run on the event loop's own read connection:
        it takes microseconds, less than a hop to a thread, and a WAL reader never waits
        for the writer."""
        if self._loop_conn is None:
            if self._thread is None:
                raise StoreUnavailable("store is not open")
            self._loop_conn = self._connect_reader()
        try:
            return queries.run_sync(self._loop_conn, make, SQL)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc

    async def get_inbound(self, source: str, sms_id: str) -> InboundRecord | None:
        return self._point_read(lambda: inbound_log.get_inbound(source, sms_id))

    async def inbound_answer(self, inbound_id: int) -> StoredResponse | None:
        """The stored answer of a short-code hit, None while it is pending (a point
        lookup)."""
        return self._point_read(lambda: inbound_log.inbound_answer(inbound_id))

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

    # -- delivery reports -----------------------------------------------------------------

    # -- reply scripts registered through the API ----------------------------------------

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
        queries.run_sync(conn, functools.partial(
            reports.apply_report, message_id, report_id, provider_id, status, raw_status,
            error_code, received_at), SQL)

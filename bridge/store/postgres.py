"""PostgreSQL store: several bridge instances share one database.

Same behaviour as :class:`bridge.store.sqlite.SqliteStore`, made safe across instances:

* every write the SQLite store commits in one transaction is one PostgreSQL transaction;
* claims lock their rows with ``FOR UPDATE SKIP LOCKED`` and lease them to an owner, so two
  instances never claim the same row, and outcomes are recorded only by the lease holder;
* deduplication (Message-ID keys, ``(source, sms_id)``) is ``INSERT … ON CONFLICT``: a
  concurrent second inserter waits for the first and then sees its row;
  checks that have no unique key to conflict on (the content window of inbound messages
  without ``sms_id``, delivery reports racing a recorded send) hold a transaction-scoped
  advisory lock on what they check;
* migrations run at :meth:`PostgresStore.open` under an advisory lock, so instances starting
  together do not race, and a schema newer than this code refuses to open.

Timestamps are ``double precision`` epoch seconds, like SQLite's REAL. PostgreSQL text cannot
hold NUL (nor lone surrogates, which asyncpg cannot encode): deduplication keys are stored as
``bytea`` (exact), and other free text has such characters replaced by U+FFFD.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

import asyncpg

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
from bridge.redact import redact_text, redact_url
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
from bridge.store.queries import Array, OpFactory, single, value
from bridge.store.roles import RoleMethods, reports

log = logging.getLogger(__name__)
T = TypeVar("T")
Conn = Any  # asyncpg.Connection (asyncpg ships no type information)

# Key of the advisory lock held while migrating (one 64-bit key space) ...
_MIGRATION_LOCK = 0x736D735F62726467  # "sms_brdg"
# ... and namespaces of the two-key locks (a separate key space; hashtext() gives the second).
_LOCK_INBOUND_CONTENT = 1
_LOCK_PROVIDER_ID = 2

# The schema: bridge/store/migrations/ (read at open, so a test can hold one back).
MIGRATIONS: list[Migration] = migrations.load("postgres")
# The named SQL blocks (bridge/store/sql/) as PostgreSQL runs them.
SQL = queries.load("postgres")


# Errors that mean "the store cannot answer now": the caller answers 451 / 503 and promises
# nothing. Server-side errors are all of them: a statement that fails commits nothing.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # e.g. a reply to a query arriving on a dying connection
    OSError,
    TimeoutError,
)
# Deadlocks and serialization failures: the transaction is run again from the start.
_RETRYABLE: tuple[type[BaseException], ...] = (asyncpg.TransactionRollbackError,)
_UNAVAILABLE_OR_CANCELLED: tuple[type[BaseException], ...] = (
    *_UNAVAILABLE, asyncio.CancelledError)
_ATTEMPTS = 3
# Group commit (PostgresStore._writer): most operations one transaction takes, and how many
# writers (each with its own connection, besides the pool) commit groups at once.
_GROUP_MAX = 64
_WRITERS = 3
# Runs the rows of several operations of one kind in one statement; one result per row.
RunMany = Callable[[Conn, list[Any]], Awaitable[list[Any]]]


@dataclasses.dataclass(frozen=True)
class _Op:
    """A queued write: the operation, the future its caller awaits and, for an operation
    that can share one statement with others of its kind, how (``run_many``) and its row."""

    fn: Callable[[Conn], Awaitable[Any]]
    future: asyncio.Future[Any]
    run_many: RunMany | None = None
    row: Any = None


def _text(value: str) -> str:
    """``value`` storable in a PostgreSQL text column (no NUL, no lone surrogates)."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def _opt(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _key(value: str) -> bytes:
    """A deduplication key, exactly (NUL separators and surrogates included)."""
    return value.encode("utf-8", "surrogatepass")


def _rowcount(status: str) -> int:
    """Rows affected, from a command tag such as ``UPDATE 3``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0








async def _keep_session(conn: Conn) -> None:
    """No session reset when a connection goes back to the pool: asyncpg's default runs
    reset statements on every release (5-7 % of the bridge's CPU in the profile). Nothing
    here leaves session state behind: every statement runs in a transaction block, and the
    advisory locks taken are transaction-scoped."""
    return None


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1``, ``$2`` …"""
    count = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(count)}", sql)


class _MigrationConnection:
    """A pooled connection as :func:`bridge.store.migrations.migrate` uses it (in the
    transaction and under the advisory lock of :meth:`PostgresStore._migrate`)."""

    dialect: Literal["postgres"] = "postgres"

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def script(self, sql: str) -> None:
        await self.conn.execute(sql)

    async def execute(self, sql: str, *params: Any) -> None:
        await self.conn.execute(_numbered(sql), *params)

    async def value(self, sql: str, *params: Any) -> Any:
        return await self.conn.fetchval(_numbered(sql), *params)

    async def has_table(self, name: str) -> bool:
        return bool(await self.conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))

    async def legacy_version(self) -> int:
        if not await self.has_table("schema_version"):
            return 0
        return int(await self.conn.fetchval("SELECT version FROM schema_version") or 0)

    async def set_legacy_version(self, version: int) -> None:
        await self.conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id), version INTEGER NOT NULL);"
            f"INSERT INTO schema_version (id, version) VALUES (TRUE, {int(version)}) "
            "ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version")


class PostgresStore(RoleMethods):
    """:class:`bridge.store.base.OutboxStore` on a PostgreSQL database (asyncpg pool)."""

    def __init__(
        self, dsn: str, *, busy_timeout: float = 5.0, min_size: int = 1, max_size: int = 10
    ) -> None:
        self.dsn = dsn
        # How long to wait for a pooled connection (or to connect) before "try later".
        self.busy_timeout = busy_timeout
        self.min_size = min_size
        self.max_size = max_size
        self._pool: Any = None
        # Group commit: the hot writes queue here; one writer task runs what is queued in
        # one transaction on its own connection (see _writer).
        self._queue: asyncio.Queue[_Op | None] | None = None
        self._writers: list[asyncio.Task[None]] = []
        self._writer_conns: dict[int, Conn] = {}
        self._reruns: set[asyncio.Task[None]] = set()
        self.schema_change: tuple[int, int] | None = None

    @classmethod
    def from_url(cls, url: str, *, busy_timeout: float = 5.0) -> PostgresStore:
        return cls(url, busy_timeout=busy_timeout)

    def _where(self) -> str:
        """The DSN without its password, for messages."""
        return redact_url(self.dsn)

    # -- running operations ---------------------------------------------------------------

    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, write: bool = True) -> T:
        """``fn`` on a pooled connection, in one transaction when ``write``."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("store is not open")
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with pool.acquire(timeout=self.busy_timeout) as conn:
                    if not write:
                        return await fn(conn)
                    async with conn.transaction():
                        return await fn(conn)
            except _RETRYABLE as exc:
                if attempt == _ATTEMPTS:
                    raise StoreUnavailable(f"store unavailable: {exc}") from exc
                log.info("store transaction rolled back (%s), running it again", exc)
            except _UNAVAILABLE as exc:
                log.warning("store unavailable: %s: %s", type(exc).__name__, exc)
                raise StoreUnavailable(f"store unavailable: {exc}") from exc
        raise AssertionError("unreachable")

    async def _write(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """``fn`` in the next group commit (see :meth:`_writer`): the same outcome as
        ``self._run(fn)``, sharing one transaction and one WAL flush with the writes queued
        meanwhile.

        Only for operations that take no lock another transaction could hold for long: their
        waits stall the whole group (claims and reads stay on the pool). A wait that turns
        into a deadlock is broken by PostgreSQL, and the group's operations then run again
        one by one."""
        return await self._queue_write(fn)  # type: ignore[no-any-return]

    async def _write_combined(self, run_many: RunMany, row: Any) -> Any:
        """One row for ``run_many`` in the next group commit: the group's rows of the same
        ``run_many`` go to the server together, in one statement (one round trip for all),
        and each caller gets its row's result. Alone (a rerun) the row is a list of one."""

        async def alone(conn: Conn) -> Any:
            return (await run_many(conn, [row]))[0]

        return await self._queue_write(alone, run_many, row)

    async def _queue_write(self, fn: Callable[[Conn], Awaitable[Any]],
                           run_many: RunMany | None = None, row: Any = None) -> Any:
        queue = self._queue
        if self._pool is None or queue is None or not self._writers:
            raise StoreUnavailable("store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Op(fn, future, run_many, row))
        return await future

    async def _writer(self, queue: asyncio.Queue[_Op | None], slot: int) -> None:
        """Group commit: one of ``_WRITERS`` tasks, each with a connection of its own. It
        takes everything queued (up to ``_GROUP_MAX``), runs it in one transaction and
        commits once; what is queued meanwhile goes to the next free writer, so commits
        overlap with the next groups' statements."""
        try:
            while True:
                item = await queue.get()
                if item is None:
                    queue.put_nowait(None)  # the other writers stop too
                    break
                batch = [item]
                while len(batch) < _GROUP_MAX and not queue.empty():
                    nxt = queue.get_nowait()
                    if nxt is None:
                        queue.put_nowait(None)
                        break
                    batch.append(nxt)
                # A caller that gave up before its turn: its write is not made.
                batch = [op for op in batch if not op.future.done()]
                if not batch:
                    continue
                try:
                    await self._run_group(slot, batch)
                except Exception as exc:  # a bug here must not leave callers waiting
                    log.exception("store writer failed")
                    self._fail_group(batch, exc)
                    await self._reset_writer_conn(slot)
        finally:
            await self._close_writer_conn(slot)

    async def _connect_writer(self, slot: int) -> Conn:
        conn = self._writer_conns.get(slot)
        if conn is not None and not conn.is_closed():
            return conn
        self._writer_conns.pop(slot, None)
        conn = await asyncpg.connect(
            self.dsn,
            timeout=max(self.busy_timeout, 5.0),
            server_settings={"application_name": "sms-bridge"},
        )
        self._writer_conns[slot] = conn
        return conn

    async def _close_writer_conn(self, slot: int) -> None:
        conn = self._writer_conns.pop(slot, None)
        if conn is None:
            return
        try:
            await asyncio.wait_for(conn.close(), timeout=5.0)
        except _UNAVAILABLE_OR_CANCELLED:
            conn.terminate()

    async def _run_group(self, slot: int, batch: list[_Op]) -> None:
        """``batch`` in one transaction; the operations that can share a statement with
        others of their kind (``run_many``) run as one statement per kind. No savepoints (a
        round trip each): operations fail rarely, and when one does the transaction is
        rolled back and each operation of the group runs again alone, in its own
        transaction, where its error is its own."""
        results: list[Any] = [None] * len(batch)
        combined: dict[RunMany, list[int]] = {}
        for index, op in enumerate(batch):
            if op.run_many is not None:
                combined.setdefault(op.run_many, []).append(index)
        # A group that is one statement needs no BEGIN and COMMIT (two round trips): a
        # statement is atomic by itself, and its outcome is unknown only while it runs.
        single = len(combined) == 1 and len(combined[next(iter(combined))]) == len(batch) \
            and next(iter(combined)) in _ONE_WRITE_STATEMENT
        committing = single
        try:
            conn = await self._connect_writer(slot)
            if not single:
                await conn.execute("BEGIN")
            for index, op in enumerate(batch):
                if op.run_many is None:
                    results[index] = await op.fn(conn)
            for run_many, indexes in combined.items():
                outcomes = await run_many(conn, [batch[i].row for i in indexes])
                for index, outcome in zip(indexes, outcomes, strict=True):
                    results[index] = outcome
            if not single:
                committing = True
                await conn.execute("COMMIT")
        except _RETRYABLE as exc:
            log.info("store group rolled back (%s), running its operations alone", exc)
            await self._reset_writer_conn(slot)
            self._run_each_alone(batch)
            return
        except (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
                TimeoutError, asyncio.CancelledError) as exc:
            # The connection broke (the outcome of a COMMIT in flight is unknown): "try later".
            self._fail_group(batch, exc)
            await self._reset_writer_conn(slot)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        except asyncpg.PostgresConnectionError as exc:
            self._fail_group(batch, exc)
            await self._reset_writer_conn(slot)
            return
        except Exception as exc:
            # The server refused a statement (or an operation raised): nothing of the group
            # was committed (a COMMIT answered with an error commits nothing either) - unless
            # the server ended the session meanwhile, when a COMMIT's outcome is unknown.
            lost = committing and self._writer_conns[slot].is_closed()
            await self._reset_writer_conn(slot)
            if lost:
                self._fail_group(batch, exc)
                return
            if len(batch) > 1 or committing:
                self._run_each_alone(batch)
                return
            future = batch[0].future
            if not future.done():
                if isinstance(exc, asyncpg.PostgresError):
                    log.warning("store unavailable: %s: %s", type(exc).__name__, exc)
                    error = StoreUnavailable(f"store unavailable: {exc}")
                    error.__cause__ = exc
                    future.set_exception(error)
                else:
                    future.set_exception(exc)
            return
        for op, result in zip(batch, results, strict=True):
            if not op.future.done():
                op.future.set_result(result)

    def _run_each_alone(self, batch: list[_Op]) -> None:
        for op in batch:
            if not op.future.done():
                task = asyncio.ensure_future(self._run_alone(op.fn, op.future))
                self._reruns.add(task)
                task.add_done_callback(self._reruns.discard)

    async def _run_alone(self, fn: Callable[[Conn], Awaitable[Any]],
                         future: asyncio.Future[Any]) -> None:
        try:
            result = await self._run(fn)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)

    @staticmethod
    def _fail_group(batch: list[_Op], exc: BaseException) -> None:
        log.warning("store unavailable: %s: %s", type(exc).__name__, exc)
        for op in batch:
            future = op.future
            if not future.done():
                error = StoreUnavailable(f"store unavailable: {exc}")
                error.__cause__ = exc
                future.set_exception(error)

    async def _reset_writer_conn(self, slot: int) -> None:
        """After a failed group: roll back if the connection still works, else drop it (the
        next group connects again)."""
        conn = self._writer_conns.get(slot)
        if conn is None:
            return
        try:
            if not conn.is_closed() and conn.is_in_transaction():
                await asyncio.wait_for(conn.execute("ROLLBACK"), timeout=self.busy_timeout)
        except _UNAVAILABLE_OR_CANCELLED:
            conn.terminate()
        if conn.is_closed():
            self._writer_conns.pop(slot, None)

    # Where the operations written once (bridge.store.roles) run: reads on the pool,
    # writes that wait on no lock in the group commit, the others in a transaction of their
    # own on the pool.

    async def _read_op(self, make: OpFactory[T]) -> T:
        return await self._run(lambda conn: queries.run_async(conn, make, SQL, _text),
                               write=False)

    async def _write_op(self, make: OpFactory[T]) -> T:
        return await self._write(lambda conn: queries.run_async(conn, make, SQL, _text))

    async def _lock_op(self, make: OpFactory[T]) -> T:
        return await self._run(lambda conn: queries.run_async(conn, make, SQL, _text))

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                timeout=max(self.busy_timeout, 5.0),
                server_settings={"application_name": "sms-bridge"},
                reset=_keep_session,
            )
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot connect to {self._where()}: {exc}") from exc
        self._pool = pool
        try:
            await self._run(lambda conn: self._migrate(conn, migrate))
            for slot in range(_WRITERS):
                await self._connect_writer(slot)
        except _UNAVAILABLE as exc:
            self._pool = None
            pool.terminate()
            raise StoreUnavailable(f"cannot connect to {self._where()}: {exc}") from exc
        except BaseException:
            self._pool = None
            pool.terminate()
            raise
        self._queue = asyncio.Queue()
        self._writers = [asyncio.create_task(self._writer(self._queue, slot),
                                             name=f"postgres-store-writer-{slot}")
                         for slot in range(_WRITERS)]

    async def _migrate(self, conn: Conn, apply: bool) -> None:
        # Instances starting together wait here for each other; the lock ends with the
        # transaction.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        self.schema_change = await migrations.migrate(
            _MigrationConnection(conn), MIGRATIONS, apply=apply, where=self._where(),
            now=time.time())
        if self.schema_change[0] != self.schema_change[1]:
            log.info("store schema migrated from version %d to %d", *self.schema_change)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # Writes queued before now are made (or refused) before the pool goes.
        queue, self._queue = self._queue, None
        writers, self._writers = self._writers, []
        if queue is not None and writers:
            queue.put_nowait(None)
            _, late = await asyncio.wait(writers, timeout=10.0)
            for task in late:
                task.cancel()
        if self._reruns:
            await asyncio.wait(set(self._reruns), timeout=10.0)
        for slot in list(self._writer_conns):
            await self._close_writer_conn(slot)
        try:
            await asyncio.wait_for(pool.close(), timeout=10.0)
        except _UNAVAILABLE:
            pool.terminate()

    async def ping(self) -> None:
        """Whether a write can be committed now: a row is inserted and deleted in one
        transaction. A database that only reads (a standby after a failover,
        ``default_transaction_read_only``, a full disk) fails here, where ``SELECT 1``
        would succeed."""

        async def op(conn: Conn) -> None:
            key = f"readiness:{uuid.uuid4().hex}"  # its own row: probes never wait on locks
            await conn.execute("INSERT INTO meta (key, value) VALUES ($1, '')", key)
            await conn.execute("DELETE FROM meta WHERE key = $1", key)

        await self._run(op)

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
        if reply is None:
            # Mails of the same moment share one statement (see _enqueue_rows).
            return await self._write_combined(  # type: ignore[no-any-return]
                _enqueue_rows, _EnqueueRow(envelope, batches, now, dedup_window))
        keys = sorted({key for key, _ in batches if key is not None})

        async def op(conn: Conn) -> EnqueueResult:
            mail_id = int(await conn.fetchval(
                "SELECT nextval(pg_get_serial_sequence('mails', 'id'))"))
            # Take each key unless it was seen within the window. A concurrent transaction
            # inserting the same key makes this wait for its outcome (sorted: no deadlock).
            owned: set[str] = set()
            for key in keys:
                taken = await conn.fetchval(
                    "INSERT INTO mail_dedup (key, mail_id, seen_at) VALUES ($1, $2, $3) "
                    "ON CONFLICT (key) DO UPDATE SET mail_id = EXCLUDED.mail_id, "
                    "seen_at = EXCLUDED.seen_at WHERE mail_dedup.seen_at < $4 "
                    "RETURNING TRUE",
                    _key(key), mail_id, now, now - dedup_window,
                )
                if taken:
                    owned.add(key)
            fresh = [(key, requests) for key, requests in batches
                     if key is None or key in owned]
            if not fresh:
                return EnqueueResult((), duplicate=True)
            await conn.execute(
                "INSERT INTO mails (id, received_at, mail_from, message_id, peer, format, "
                "headers, raw, raw_size, rcpt_to) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                mail_id, now, _text(envelope.mail_from), _opt(envelope.message_id),
                _text(envelope.peer), envelope.format, envelope.headers,
                envelope.raw or None, envelope.raw_size,
                _text(json.dumps(envelope.recipients)),
            )
            ids: list[int] = []
            for _, requests in fresh:
                for req in requests:
                    ids.append(await self._insert_message(conn, mail_id, req, now))
            if reply is not None:
                mail = reply(ids)
                if mail is not None:
                    await self._insert_mail(conn, mail, now)
            return EnqueueResult(tuple(ids))

        return await self._write(op)

    @staticmethod
    async def _insert_message(conn: Conn, mail_id: int, req: SendRequest, now: float) -> int:
        options = options_json(req)
        due = max(now, req.not_before or now)
        return int(await conn.fetchval(
            "WITH m AS ("
            " INSERT INTO messages (mail_id, account, upstream, phone, text, parts, encoding,"
            " options, status, next_attempt_at, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING id)"
            " INSERT INTO message_events (message_id, at, status)"
            " SELECT id, $11, $9 FROM m RETURNING message_id",
            mail_id, _text(req.account), _text(req.upstream), _text(req.phone), _text(req.text),
            req.parts, _text(req.encoding), options, MessageStatus.QUEUED.value,
            due, now,
        ))

    @staticmethod
    async def _insert_mail(conn: Conn, mail: OutboundMail, now: float) -> None:
        await conn.execute(
            "INSERT INTO outgoing_mail (kind, mail_to, content, status, next_attempt_at, "
            "created_at) VALUES ($1, $2, $3, 'queued', $4, $4)",
            _text(mail.kind), _text(mail.mail_to), mail.content, now,
        )

    async def claim_due(
        self, owner: str, now: float, limit: int, lease_seconds: float
    ) -> list[StoredMessage]:
        async def op(conn: Conn) -> list[StoredMessage]:
            rows = await conn.fetch(
                "WITH due AS ("
                " SELECT id FROM messages"
                " WHERE (status = 'queued' AND next_attempt_at <= $1)"
                "  OR (status = 'sending' AND lease_until <= $1"
                "   AND lease_owner IS DISTINCT FROM $3)"
                " ORDER BY CASE WHEN status = 'queued' THEN next_attempt_at"
                "  ELSE lease_until END, id"
                " LIMIT $2 FOR UPDATE SKIP LOCKED),"
                " claimed AS ("
                " UPDATE messages m SET status = 'sending', lease_owner = $3,"
                " lease_until = $4, lease_epoch = m.lease_epoch + 1, updated_at = $1"
                " FROM due WHERE m.id = due.id RETURNING m.*)"
                f" SELECT {CLAIM_COLUMNS} FROM claimed m"
                " LEFT JOIN mails ml ON ml.id = m.mail_id ORDER BY m.id",
                now, limit, owner, now + lease_seconds,
            )
            return [row_to_message(row) for row in rows]

        return await self._run(op)

    async def record_intent(
        self, owner: str, upstream: str, leases: Sequence[tuple[int, int]],
        fingerprint: str, now: float,
    ) -> SendIntent | None:
        # The intents recorded at the same moment share two statements (see _intent_rows).
        return await self._write_combined(  # type: ignore[no-any-return]
            _intent_rows, _IntentRow(owner, _text(upstream), tuple(leases), fingerprint, now))

    async def record_outcomes(
        self, owner: str, intent_id: int | None, outcomes: Sequence[SendOutcome], now: float,
    ) -> list[int]:
        # The requests ended at the same moment share a few statements (see _outcome_rows).
        return await self._write_combined(  # type: ignore[no-any-return]
            _outcome_rows, _OutcomeRow(owner, intent_id, tuple(outcomes), now))

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
        source = _text(message.source)

        def row(key: bytes) -> _InboundRow:
            return _InboundRow(
                (source, _text(message.kind), key, _opt(message.sms_id), content_hash,
                 _text(message.phone), _opt(message.recipient), _text(message.text),
                 message.raw, _text(message.charset), int(message.charset_error), state,
                 response.status if response else None, response.body if response else None,
                 response.content_type if response else None, now, forward_deadline),
                [(_text(job.kind), _text(job.target), job.payload) for job in jobs],
                InboundRecord(0, False, state, response, now, content_hash),
            )

        if message.sms_id is not None:
            # Requests of the same moment share one INSERT (see _insert_inbound_rows).
            return await self._write_combined(  # type: ignore[no-any-return]
                _insert_inbound_rows, row(_key(f"id:{message.sms_id}")))

        async def op(conn: Conn) -> InboundRecord:
            # No unique key to conflict on: the window check and the insert run under a lock
            # on (source, content) so instances cannot both miss each other's row.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                _LOCK_INBOUND_CONTENT, f"{source}:{content_hash}",
            )
            found = await conn.fetchrow(
                f"SELECT {INBOUND_COLUMNS} FROM inbound WHERE source = $1 AND "
                "content_hash = $2 AND sms_id IS NULL AND received_at >= $3 "
                "ORDER BY id DESC LIMIT 1",
                source, content_hash, now - dedup_window,
            )
            if found is not None:
                return row_to_inbound(found, duplicate=True)
            [record] = await _insert_inbound_rows(conn, [row(_key(f"noid:{uuid.uuid4().hex}"))])
            return record

        return await self._write(op)

    # -- forwarding jobs ------------------------------------------------------------------

    async def claim_forward_jobs(
        self, owner: str, now: float, limit: int, lease_seconds: float,
        kinds: Sequence[str] = ("email", "webhook"),
        exclude_targets: Sequence[tuple[str, str]] = (),
    ) -> list[ClaimedForward]:
        # A kind has no space: "kind target" names one pair unambiguously.
        excluded = [_text(f"{kind} {target}") for kind, target in exclude_targets]

        async def op(conn: Conn) -> list[ClaimedForward]:
            rows = await conn.fetch(
                "WITH due AS ("
                " SELECT id FROM forward_jobs WHERE kind = ANY($2::text[]) AND"
                " ((status = 'queued' AND next_attempt_at <= $1)"
                "  OR (status = 'sending' AND lease_until <= $1))"
                " AND kind || ' ' || target <> ALL($6::text[])"
                " ORDER BY CASE WHEN status = 'queued' THEN next_attempt_at"
                "  ELSE lease_until END, id"
                " LIMIT $3 FOR UPDATE SKIP LOCKED)"
                " UPDATE forward_jobs f SET status = 'sending', lease_owner = $4,"
                " lease_until = $5, attempts = f.attempts + 1"
                " FROM due WHERE f.id = due.id"
                " RETURNING f.id, f.inbound_id, f.kind, f.target, f.payload, f.attempts,"
                " f.deadline",
                now, list(kinds), limit, owner, now + lease_seconds, excluded,
            )
            return [ClaimedForward(int(r[0]), int(r[1]), r[2], r[3], bytes(r[4]), int(r[5]),
                                   float(r[6]))
                    for r in sorted(rows, key=lambda r: int(r[0]))]

        return await self._run(op)

    # Outcomes are recorded only by the lease holder: a worker whose lease expired and was
    # taken over must not overwrite the new holder's result (e.g. put a delivered job back).
    _FORWARD_HELD = "WHERE id = $1 AND status = 'sending' AND lease_owner = $2"

    async def forward_done(self, job_id: int, owner: str, now: float, *,
                           detail: str = "") -> None:
        await self._forward_outcome(
            "UPDATE forward_jobs SET status = 'delivered', lease_until = NULL, "
            "last_error = NULL " + self._FORWARD_HELD, (), job_id, owner, now, "delivered",
            detail)

    async def forward_retry(
        self, job_id: int, owner: str, error: str, next_attempt_at: float, *,
        now: float | None = None, detail: str | None = None,
    ) -> None:
        error = redact_text(error)
        await self._forward_outcome(
            "UPDATE forward_jobs SET status = 'queued', next_attempt_at = $6, last_error = $7, "
            "lease_until = NULL " + self._FORWARD_HELD, (next_attempt_at, _text(error)),
            job_id, owner, time.time() if now is None else now, "retry",
            error if detail is None else detail)

    async def forward_dead(self, job_id: int, owner: str, error: str, *,
                           now: float | None = None, detail: str | None = None) -> None:
        error = redact_text(error)
        await self._forward_outcome(
            "UPDATE forward_jobs SET status = 'dead', last_error = $6, lease_until = NULL "
            + self._FORWARD_HELD, (_text(error),), job_id, owner,
            time.time() if now is None else now, "dead", error if detail is None else detail)

    async def _forward_outcome(self, update: str, extra: tuple[Any, ...], job_id: int,
                               owner: str, at: float, outcome: str, detail: str) -> None:
        """The job's outcome (``update``: $1 job, $2 owner, $6… ``extra``) and its attempt in
        the history, in one statement: only when the caller holds the lease (an outcome
        ignored leaves no attempt either). The job keeps its last MAX_ATTEMPTS_KEPT attempts:
        the DELETE sees the rows as they were before the statement (one snapshot for all its
        parts), so it keeps the newest MAX_ATTEMPTS_KEPT - 1 of them besides the new one."""
        detail = _text(redact_text(detail)[:MAX_ATTEMPT_DETAIL])
        statement = (
            f"WITH held AS ({update} RETURNING id), "
            "added AS (INSERT INTO forward_attempts (job_id, at, outcome, detail) "
            " SELECT id, $3::double precision, $4::text, $5::text FROM held) "
            "DELETE FROM forward_attempts WHERE job_id IN (SELECT id FROM held) "
            "AND id <= (SELECT id FROM forward_attempts WHERE job_id = $1 "
            f" ORDER BY id DESC LIMIT 1 OFFSET {MAX_ATTEMPTS_KEPT - 1})")
        await self._write(lambda conn: conn.execute(
            statement, job_id, owner, at, outcome, detail, *extra))

    # -- delivery reports -----------------------------------------------------------------

    # -- reply scripts registered through the API ----------------------------------------

    # -- status polling and polling cursors ------------------------------------------------

    async def due_status_polls(
        self, upstream: str, now: float, limit: int, lease_seconds: float = 60.0
    ) -> list[tuple[int, list[str], int]]:
        """Claim sent messages of ``upstream`` whose status is due to be asked for:
        ``(message id, provider ids, polls so far)``. Their next poll moves ``lease_seconds``
        ahead, so another instance does not poll them too; ``reschedule_status_polls`` then
        sets the real next time (after a crash, the lease ends and anyone polls them)."""

        async def op(conn: Conn) -> list[tuple[int, list[str], int]]:
            rows = await conn.fetch(
                "WITH due AS ("
                " SELECT id, next_poll_at FROM messages WHERE upstream_used = $1"
                " AND next_poll_at IS NOT NULL AND next_poll_at <= $2"
                " ORDER BY next_poll_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)"
                " UPDATE messages m SET next_poll_at = $4 FROM due WHERE m.id = due.id"
                " RETURNING m.id, m.upstream_ids, m.poll_count, due.next_poll_at",
                _text(upstream), now, limit, now + lease_seconds,
            )
            rows = sorted(rows, key=lambda r: (float(r[3]), int(r[0])))
            return [(int(r[0]), list(json.loads(r[1])), int(r[2])) for r in rows]

        return await self._run(op)

@dataclasses.dataclass(frozen=True)
class _EnqueueRow:
    """One mail to enqueue (without a ``reply_to_email`` answer, which needs its message
    ids before the insert and so runs as an operation of its own)."""

    envelope: MailEnvelope
    batches: Sequence[tuple[str | None, Sequence[SendRequest]]]
    now: float
    dedup_window: float


# Many mails in one statement. Each mail takes its deduplication keys unless one was seen
# within the window (a concurrent transaction inserting the same key makes this wait for its
# outcome); a batch goes in when it has no key or took its key, a mail when any batch did.
# Mail and message ids are drawn first, so each message is returned with its place.
_ENQUEUE = (
    "WITH mu AS (SELECT u.*, nextval(pg_get_serial_sequence('mails', 'id')) AS id"
    " FROM unnest($1::int[], $2::float8[], $3::text[], $4::text[], $5::text[], $6::text[],"
    " $7::bool[], $22::bytea[], $23::bytea[], $24::int[], $25::text[])"
    " AS u(n, received_at, mail_from, message_id, peer, format, keyless, headers, raw,"
    " raw_size, rcpt_to)),"
    " ku AS (SELECT * FROM unnest($8::bytea[], $9::int[]) AS k(key, n)),"
    " d AS (INSERT INTO mail_dedup (key, mail_id, seen_at)"
    " SELECT ku.key, mu.id, mu.received_at FROM ku JOIN mu ON mu.n = ku.n ORDER BY ku.key"
    " ON CONFLICT (key) DO UPDATE SET mail_id = EXCLUDED.mail_id, seen_at = EXCLUDED.seen_at"
    " WHERE mail_dedup.seen_at < EXCLUDED.seen_at - $10 RETURNING key),"
    " taken AS (SELECT ku.n FROM ku JOIN d ON d.key = ku.key),"
    " su AS (SELECT o.*, nextval(pg_get_serial_sequence('messages', 'id')) AS id"
    " FROM (SELECT s.*, mu.id AS mail_id"
    " FROM unnest($11::int[], $12::int[], $13::bytea[], $14::text[], $15::text[],"
    " $16::text[], $17::text[], $18::int[], $19::text[], $20::text[], $21::float8[])"
    " AS s(n, p, key, account, upstream, phone, text, parts, encoding, options, due)"
    " JOIN mu ON mu.n = s.n WHERE s.key IS NULL OR s.key IN (SELECT key FROM d)"
    " ORDER BY s.n, s.p) o),"
    " mi AS (INSERT INTO mails (id, received_at, mail_from, message_id, peer, format,"
    " headers, raw, raw_size, rcpt_to) SELECT id, received_at, mail_from, message_id, peer,"
    " format, headers, raw, raw_size, rcpt_to FROM mu"
    " WHERE mu.keyless OR mu.n IN (SELECT n FROM taken)),"
    " m AS (INSERT INTO messages (id, mail_id, account, upstream, phone, text, parts,"
    " encoding, options, status, next_attempt_at, created_at, updated_at)"
    " SELECT su.id, su.mail_id, su.account, su.upstream, su.phone, su.text, su.parts,"
    " su.encoding, su.options, 'queued', su.due, mu.received_at, mu.received_at"
    " FROM su JOIN mu ON mu.n = su.n ORDER BY su.id),"
    " e AS (INSERT INTO message_events (message_id, at, status)"
    " SELECT su.id, mu.received_at, 'queued' FROM su JOIN mu ON mu.n = su.n ORDER BY su.id)"
    " SELECT n, p, id FROM su UNION ALL SELECT n, -1, NULL FROM taken"
)


async def _enqueue_rows(conn: Conn, rows: list[_EnqueueRow]) -> list[EnqueueResult]:
    """:meth:`PostgresStore.enqueue` for many mails: one round trip whatever their number."""
    windows = sorted({row.dedup_window for row in rows})
    if len(windows) > 1:
        # One window per statement (a process has one window; this is for safety): then
        # several statements, which must commit together.
        if not conn.is_in_transaction():
            async with conn.transaction():
                return await _enqueue_rows(conn, rows)
        results: list[EnqueueResult | None] = [None] * len(rows)
        for window in windows:
            indexes = [i for i, row in enumerate(rows) if row.dedup_window == window]
            for i, result in zip(indexes, await _enqueue_rows(conn, [rows[i] for i in indexes]),
                                 strict=True):
                results[i] = result
        return results  # type: ignore[return-value]
    mails: list[tuple[Any, ...]] = []
    keys: list[tuple[bytes, int]] = []
    messages: list[tuple[Any, ...]] = []
    seen: set[bytes] = set()
    for n, row in enumerate(rows, start=1):
        env = row.envelope
        mails.append((n, row.now, _text(env.mail_from), _opt(env.message_id), _text(env.peer),
                      env.format, any(key is None for key, _ in row.batches)))
        # A key twice in one statement: the first mail takes it (if it may), and the later
        # one is a repeat, as it would be one transaction later.
        repeats: set[str] = set()
        for named in sorted({key for key, _ in row.batches if key is not None}):
            encoded = _key(named)
            if encoded in seen:
                repeats.add(named)
            else:
                seen.add(encoded)
                keys.append((encoded, n))
        place = 0
        for key, requests in row.batches:
            if key in repeats:
                continue
            for req in requests:
                messages.append((
                    n, place, None if key is None else _key(key), _text(req.account),
                    _text(req.upstream), _text(req.phone), _text(req.text), req.parts,
                    _text(req.encoding), options_json(req),
                    max(row.now, req.not_before or row.now)))
                place += 1

    def columns(values: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
        return [list(c) for c in zip(*values, strict=True)] if values else [[]] * width

    out = await conn.fetch(_ENQUEUE, *columns(mails, 7), *columns(keys, 2), windows[0],
                           *columns(messages, 11), [row.envelope.headers for row in rows],
                           [row.envelope.raw or None for row in rows],
                           [row.envelope.raw_size for row in rows],
                           [_text(json.dumps(row.envelope.recipients)) for row in rows])
    fresh = {row[0] for row in out if row[1] == -1}
    placed: dict[int, list[tuple[int, int]]] = {}
    for n, place, message_id in out:
        if place >= 0:
            placed.setdefault(n, []).append((place, message_id))
    enqueued: list[EnqueueResult] = []
    for n, row in enumerate(rows, start=1):
        if n in fresh or any(key is None for key, _ in row.batches):
            enqueued.append(EnqueueResult(tuple(i for _, i in sorted(placed.get(n, [])))))
        else:
            enqueued.append(EnqueueResult((), duplicate=True))
    return enqueued


@dataclasses.dataclass(frozen=True)
class _InboundRow:
    """One inbound message to insert: its column values (in ``_INSERT_INBOUND`` order, the
    forwarding deadline last), its forwarding jobs (kind, target, payload) and its record if
    it turns out new."""

    values: tuple[Any, ...]
    jobs: list[tuple[str, str, bytes]]
    record: InboundRecord


# Many messages and their forwarding jobs in one statement: the jobs of the rows that were
# inserted go in with them; a row whose (source, dedup_key) exists is skipped, and a
# concurrent transaction inserting the same key makes this wait for its outcome.
_INSERT_INBOUND = (
    "WITH u AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[],"
    " $5::text[], $6::text[], $7::text[], $8::text[], $9::bytea[], $10::text[], $11::int[],"
    " $12::text[], $13::int[], $14::bytea[], $15::text[], $16::float8[], $17::float8[])"
    " WITH ORDINALITY AS u(source, kind, dedup_key, sms_id, content_hash, phone, recipient,"
    " text, raw, charset, charset_error, state, response_status, response_body,"
    " response_type, received_at, deadline, n)),"
    " i AS (INSERT INTO inbound (source, kind, dedup_key, sms_id, content_hash, phone,"
    " recipient, text, raw, charset, charset_error, state, response_status, response_body,"
    " response_type, received_at)"
    " SELECT source, kind, dedup_key, sms_id, content_hash, phone, recipient, text, raw,"
    " charset, charset_error, state, response_status, response_body, response_type,"
    " received_at FROM u ORDER BY n"
    " ON CONFLICT (source, dedup_key) DO NOTHING RETURNING id, source, dedup_key),"
    " j AS (INSERT INTO forward_jobs (inbound_id, kind, target, payload, status,"
    " next_attempt_at, created_at, deadline)"
    " SELECT i.id, f.kind, f.target, f.payload, 'queued', u.received_at, u.received_at,"
    " u.deadline FROM i JOIN u ON u.source = i.source AND u.dedup_key = i.dedup_key"
    " JOIN unnest($18::bigint[], $19::text[], $20::text[], $21::bytea[]) WITH ORDINALITY"
    " AS f(row_n, kind, target, payload, n) ON f.row_n = u.n ORDER BY f.n)"
    " SELECT id, source, dedup_key FROM i"
)


async def _insert_inbound_rows(conn: Conn, rows: list[_InboundRow]) -> list[InboundRecord]:
    """Insert-or-fetch of many inbound messages: two round trips whatever their number (one
    when none is a repeat). Each row's record: new, or the stored one (``duplicate``)."""
    # One statement cannot insert a key twice: a repeat within the group waits for the
    # first one's outcome like a repeat from outside. Sorted keys: two groups inserting
    # overlapping keys take their locks in the same order.
    first: dict[tuple[str, bytes], int] = {}
    for index, row in enumerate(rows):
        first.setdefault((row.values[0], row.values[2]), index)
    order = sorted(first.items())
    leaders = [rows[index] for _, index in order]
    columns: list[list[Any]] = [list(column) for column in zip(*(r.values for r in leaders),
                                                                strict=True)]
    job_rows = [(n, *job) for n, row in enumerate(leaders, start=1) for job in row.jobs]
    job_columns = [list(c) for c in zip(*job_rows, strict=True)] if job_rows else [[]] * 4
    inserted = {(str(r[1]), bytes(r[2])): int(r[0])
                for r in await conn.fetch(_INSERT_INBOUND, *columns, *job_columns)}
    results: list[InboundRecord | None] = [None] * len(rows)
    for key, index in order:
        if key in inserted:
            results[index] = dataclasses.replace(rows[index].record, id=inserted[key])
    missing = [i for i, result in enumerate(results) if result is None]
    if missing:
        keys = sorted({(rows[i].values[0], rows[i].values[2]) for i in missing})
        stored = {
            (str(r[-2]), bytes(r[-1])): row_to_inbound(r, duplicate=True)
            for r in await conn.fetch(
                f"SELECT {INBOUND_COLUMNS}, i.source, i.dedup_key FROM inbound i"
                " JOIN unnest($1::text[], $2::bytea[]) AS k(source, dedup_key)"
                " ON i.source = k.source AND i.dedup_key = k.dedup_key",
                [k[0] for k in keys], [k[1] for k in keys],
            )
        }
        for i in missing:
            results[i] = stored[(rows[i].values[0], rows[i].values[2])]
    return results  # type: ignore[return-value]


#: Combined operations that write with one statement (reads may follow it): a group made
#: only of one of them runs without a transaction block. Should a read after the committed
#: write fail, the operations run again alone and find their rows as repeats: nothing is
#: written twice.
_ONE_WRITE_STATEMENT: frozenset[RunMany] = frozenset({_insert_inbound_rows, _enqueue_rows})


async def _lock_provider_ids(conn: Conn, provider_ids: Sequence[str]) -> None:
    """The locks ``record_delivery_reports`` takes on provider ids (see reports.sql)."""
    await queries.run_async(conn, lambda: single(value(
        "lock_provider_ids", Array(sorted(set(provider_ids))))), SQL, _text)


@dataclasses.dataclass(frozen=True)
class _SentRow:
    """One send to record (an outcome ``sent`` of :meth:`PostgresStore.record_outcomes`)."""

    message_id: int
    owner: str
    epoch: int
    upstream: str
    provider_ids: list[str]
    now: float
    poll_at: float | None
    detail: str
    answered: int  # 1: an outcome of a request (one attempt more)
    settle: int  # 1: the request's doubt is taken back from maybe_sent


# Many sends recorded in one statement, each only while its claim holds (owner and epoch):
# status, counters, history, the provider-id index, and the delivery reports that came
# before the send was recorded.
_MARK_SENT = (
    "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],"
    " $5::float8[], $6::float8[], $7::text[], $10::bigint[], $11::int[], $12::int[])"
    " AS u(id, owner, upstream, ids_json, at, poll_at, detail, epoch, answered, settle)),"
    " upd AS (UPDATE messages m SET status = 'sent', upstream_used = u.upstream,"
    " upstream_ids = u.ids_json, last_error = NULL, next_poll_at = u.poll_at,"
    " lease_owner = NULL, lease_until = NULL, updated_at = u.at,"
    " attempts = m.attempts + u.answered, maybe_sent = GREATEST(0, m.maybe_sent - u.settle)"
    " FROM u WHERE m.id = u.id AND m.status = 'sending' AND m.lease_owner = u.owner"
    " AND m.lease_epoch = u.epoch RETURNING m.id),"
    " ev AS (INSERT INTO message_events (message_id, at, status, detail)"
    " SELECT u.id, u.at, 'sent', u.detail FROM u JOIN upd ON upd.id = u.id ORDER BY u.id),"
    " pi AS (INSERT INTO provider_ids (provider_id, message_id)"
    " SELECT p.provider_id, p.message_id FROM unnest($8::text[], $9::bigint[])"
    " AS p(provider_id, message_id) JOIN upd ON upd.id = p.message_id"
    " ON CONFLICT (provider_id) DO UPDATE SET message_id = EXCLUDED.message_id)"
    " SELECT 0 AS report_id, id, NULL::text, NULL::text, NULL::text, NULL::int,"
    " NULL::float8 FROM upd"
    " UNION ALL SELECT r.id, NULL, r.provider_id, r.status, r.raw_status, r.error_code,"
    " r.received_at FROM delivery_reports r"
    " WHERE r.message_id IS NULL AND r.provider_id = ANY($8::text[])"
    " ORDER BY 1"
)


async def _mark_sent_rows(conn: Conn, rows: list[_SentRow]) -> list[bool]:
    """Record many sends: one round trip for the provider-id locks, one for the rest (more
    only for delivery reports that came before their send was recorded). True for each
    send recorded (its claim held)."""
    # Serialises with record_delivery_reports for these ids: a report committed meanwhile is
    # either matched there or found here as an early one. Taken before the messages' row
    # locks, in the same order as there (no deadlock).
    await _lock_provider_ids(conn, [p for row in rows for p in row.provider_ids])
    # An id named twice in one statement: the later send owns it, as it would one
    # transaction later.
    owner_of = {p: row.message_id for row in rows for p in row.provider_ids}
    out = await conn.fetch(
        _MARK_SENT,
        [r.message_id for r in rows], [r.owner for r in rows], [r.upstream for r in rows],
        [json.dumps(r.provider_ids) for r in rows], [r.now for r in rows],
        [r.poll_at for r in rows], [_text(r.detail) for r in rows],
        list(owner_of), list(owner_of.values()),
        [r.epoch for r in rows], [r.answered for r in rows], [r.settle for r in rows],
    )
    updated = {int(r[1]) for r in out if r[0] == 0}
    # A provider may report before its send reply was recorded here: such reports were kept
    # unmatched, and are applied now, in the order they came.
    for report_id, _, provider_id, status, raw_status, error_code, received_at in out:
        message_id = owner_of.get(provider_id) if report_id else None
        if message_id is None or message_id not in updated:
            continue
        await conn.execute("UPDATE delivery_reports SET message_id = $1 WHERE id = $2",
                           message_id, report_id)
        await queries.run_async(conn, functools.partial(
            reports.apply_report, message_id, int(report_id), provider_id, status, raw_status,
            error_code, received_at), SQL, _text)
    return [row.message_id in updated for row in rows]


@dataclasses.dataclass(frozen=True)
class _IntentRow:
    """One request to record before it is made (:meth:`PostgresStore.record_intent`)."""

    owner: str
    upstream: str
    leases: tuple[tuple[int, int], ...]
    fingerprint: str
    now: float


# The claims that still hold (owner and epoch) count the request in maybe_sent.
_HOLD_FOR_INTENT = (
    "WITH u AS (SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::text[],"
    " $5::float8[]) AS u(n, id, epoch, owner, at))"
    " UPDATE messages m SET maybe_sent = m.maybe_sent + 1, updated_at = u.at FROM u"
    " WHERE m.id = u.id AND m.status = 'sending' AND m.lease_owner = u.owner"
    " AND m.lease_epoch = u.epoch RETURNING u.n, m.id"
)
# The intents, their ids drawn first so that each row gets its own back.
_INSERT_INTENTS = (
    "WITH r AS (SELECT nextval(pg_get_serial_sequence('send_intents', 'id')) AS id, x.*"
    " FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[])"
    " AS x(n, upstream, owner, fingerprint, messages, at)),"
    " i AS (INSERT INTO send_intents (id, upstream, owner, fingerprint, messages, created_at)"
    " SELECT id, upstream, owner, fingerprint, messages, at FROM r)"
    " SELECT n, id FROM r"
)


async def _intent_rows(conn: Conn, rows: list[_IntentRow]) -> list[SendIntent | None]:
    """:meth:`PostgresStore.record_intent` for many requests: two round trips."""
    leases = [(n, message_id, epoch, row.owner, row.now)
              for n, row in enumerate(rows) for message_id, epoch in row.leases]
    if not leases:
        return [None] * len(rows)
    held: dict[int, set[int]] = {}
    for n, message_id in await conn.fetch(
            _HOLD_FOR_INTENT, *[list(column) for column in zip(*leases, strict=True)]):
        held.setdefault(int(n), set()).add(int(message_id))
    kept = {n: [(i, e) for i, e in row.leases if i in held[n]]
            for n, row in enumerate(rows) if n in held}
    if not kept:
        return [None] * len(rows)
    out = await conn.fetch(
        _INSERT_INTENTS, list(kept), [rows[n].upstream for n in kept],
        [rows[n].owner for n in kept], [rows[n].fingerprint for n in kept],
        [json.dumps(pairs) for pairs in kept.values()], [rows[n].now for n in kept])
    ids = {int(n): int(intent_id) for n, intent_id in out}
    return [SendIntent(ids[n], tuple(i for i, _ in kept[n])) if n in kept else None
            for n in range(len(rows))]


@dataclasses.dataclass(frozen=True)
class _OutcomeRow:
    """The outcomes of one request to commit (:meth:`PostgresStore.record_outcomes`)."""

    owner: str
    intent_id: int | None
    outcomes: tuple[SendOutcome, ...]
    now: float


# Outcomes other than ``sent`` in one statement, each only while its claim holds: status,
# counters, the lease (kept when the claim goes on with the next upstream), history.
_RECORD_OUTCOMES = (
    "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[],"
    " $5::float8[], $6::text[], $7::int[], $8::int[], $9::float8[], $10::text[], $11::text[])"
    " AS u(id, owner, epoch, status, next_at, error, answered, settle, at, event, detail)),"
    " upd AS (UPDATE messages m SET status = u.status,"
    " next_attempt_at = COALESCE(u.next_at, m.next_attempt_at), last_error = u.error,"
    " lease_owner = CASE WHEN u.status = 'sending' THEN m.lease_owner END,"
    " lease_until = CASE WHEN u.status = 'sending' THEN m.lease_until END,"
    " attempts = m.attempts + u.answered, maybe_sent = GREATEST(0, m.maybe_sent - u.settle),"
    " updated_at = u.at"
    " FROM u WHERE m.id = u.id AND m.status = 'sending' AND m.lease_owner = u.owner"
    " AND m.lease_epoch = u.epoch RETURNING m.id),"
    " ev AS (INSERT INTO message_events (message_id, at, status, detail)"
    " SELECT u.id, u.at, u.event, u.detail FROM u JOIN upd ON upd.id = u.id ORDER BY u.id)"
    " SELECT id FROM upd"
)


async def _outcome_rows(conn: Conn, rows: list[_OutcomeRow]) -> list[list[int]]:
    """:meth:`PostgresStore.record_outcomes` for many requests, in the transaction of the
    group: the sends in one statement (after the provider-id locks), the other outcomes in
    another, then the mails they queue and the intents they end."""
    sends: list[tuple[int, _SentRow]] = []
    others: list[tuple[int, SendOutcome, _OutcomeRow]] = []
    for n, row in enumerate(rows):
        requested = int(row.intent_id is not None)
        for o in row.outcomes:
            settle = int(requested and not o.unknown)
            if o.status == "sent":
                ids = [_text(p) for p in o.provider_ids]
                sends.append((n, _SentRow(
                    o.message_id, row.owner, o.lease_epoch, _text(o.upstream), ids, row.now,
                    o.poll_at if ids else None, outcome_event(o)[1] or "", requested,
                    settle)))
            else:
                outcome_event(o)  # refuses an unknown status before anything is written
                others.append((n, o, row))
    recorded: list[set[int]] = [set() for _ in rows]
    if sends:
        for (n, sent), held in zip(sends, await _mark_sent_rows(conn, [r for _, r in sends]),
                                   strict=True):
            if held:
                recorded[n].add(sent.message_id)
    if others:
        columns: list[list[Any]] = [[] for _ in range(11)]
        for _, o, row in others:
            requested = int(row.intent_id is not None)
            event, detail = outcome_event(o)
            error = outcome_error(o)
            for column, value in zip(columns, (
                    o.message_id, row.owner, o.lease_epoch, o.status,
                    o.next_attempt_at if o.status == "queued" else None, _opt(error),
                    requested, int(requested and not o.unknown), row.now, event,
                    _opt(detail)), strict=True):
                column.append(value)
        updated = {int(r[0]) for r in await conn.fetch(_RECORD_OUTCOMES, *columns)}
        for n, o, row in others:
            if o.message_id in updated:
                recorded[n].add(o.message_id)
                if o.mail is not None:
                    await PostgresStore._insert_mail(conn, o.mail, row.now)
    results: list[list[int]] = []
    ended: list[tuple[int, float, str]] = []
    for n, row in enumerate(rows):
        done = [o.message_id for o in row.outcomes if o.message_id in recorded[n]]
        for o in row.outcomes:
            if o.message_id not in recorded[n]:
                log.warning("message %s: lease lost before its result was recorded",
                            o.message_id)
        if row.intent_id is not None:
            ended.append((row.intent_id, row.now, intent_summary(row.outcomes, done)))
        results.append(done)
    if ended:
        await conn.execute(
            "UPDATE send_intents i SET finished_at = u.at, outcome = u.outcome"
            " FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS u(id, at, outcome)"
            " WHERE i.id = u.id", *[list(column) for column in zip(*ended, strict=True)])
    return results

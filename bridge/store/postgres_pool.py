"""PostgreSQL: the pool and the group commit every PostgreSQL store operation runs through.

Reads and claims run on pooled connections; the hot writes queue for a few writer tasks, each
with a connection of its own, which run what is queued in one transaction and commit once
(:meth:`PostgresPool._writer`). Operations that can share one statement with others of their
kind (the combined statements of :mod:`bridge.store.postgres_batch`) go to the server
together. Every failure to answer becomes :class:`bridge.errors.StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from bridge.errors import StoreUnavailable
from bridge.redact import redact_url
from bridge.store import queries
from bridge.store.queries import OpFactory, SqlRoles

log = logging.getLogger("bridge.store.postgres")
T = TypeVar("T")
Conn = Any  # asyncpg.Connection (asyncpg ships no type information)
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


class PostgresPool(SqlRoles):
    """The connections of a PostgreSQL store and how its operations run on them."""

    # Combined operations (run_many) that are one write statement: a group made only of
    # them commits without BEGIN and COMMIT (see _run_group).
    _ONE_STATEMENT: frozenset[RunMany] = frozenset()

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
            and next(iter(combined)) in self._ONE_STATEMENT
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


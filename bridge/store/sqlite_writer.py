"""SQLite: the connections of a store on one file, and its writer thread.

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
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bridge.errors import StoreUnavailable
from bridge.store import queries
from bridge.store.queries import OpFactory, SqlRoles

log = logging.getLogger("bridge.store.sqlite")
T = TypeVar("T")
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


class SqliteConnections(SqlRoles):
    """The writer thread (group commit) and the read connections of a SQLite store."""

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

    def _connect_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA query_only = 1")
        conn.create_function(self.FOLD, 1, _casefold, deterministic=True)
        return conn

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


"""SQL written once, run by either engine.

The SQL lives in named blocks (``-- name: claim_mails``) in ``bridge/store/sql/*.sql``:
``ROLE.sql`` holds what both dialects agree on (``?`` placeholders, numbered ``$1``, ``$2``
… for PostgreSQL when loaded), ``ROLE.sqlite.sql`` / ``ROLE.postgres.sql`` what one of them
writes its own way (in its own placeholders), and a dialect's block replaces a shared one
of the same name.

The logic around the SQL is written once too, as an operation: a generator that yields
:class:`Statement` values (a block's name, its parameters, what to fetch) and is sent each
one's result. An engine runs it with :func:`run_sync` (SQLite's writer thread) or
:func:`run_async` (an asyncpg connection), inside the transaction it chose; the operation
never sees a connection, so the same one runs on both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from bridge.store.migrations import Dialect

T = TypeVar("T")
Fetch = Literal["rows", "row", "value", "count", "many"]
_FOLDER = Path(__file__).parent / "sql"
_FILE = re.compile(r"(\w+?)(?:\.(sqlite|postgres))?\.sql")
_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of an operation: the named block, its parameters (for ``many``: one
    tuple per run) and what its result is: all ``rows``, the first ``row`` or None, the
    first column of it (``value``), the rows changed (``count``)."""

    name: str
    params: tuple[Any, ...]
    fetch: Fetch
    # SQL made at run time (a search's WHERE), with ``?`` placeholders, instead of a block.
    sql: str | None = None


Op = Generator[Statement, Any, T]
OpFactory = Callable[[], Op[T]]


def rows(name: str, *params: Any) -> Statement:
    return Statement(name, params, "rows")


def row(name: str, *params: Any) -> Statement:
    return Statement(name, params, "row")


def value(name: str, *params: Any) -> Statement:
    return Statement(name, params, "value")


def count(name: str, *params: Any) -> Statement:
    return Statement(name, params, "count")


def many(name: str, runs: Sequence[tuple[Any, ...]]) -> Statement:
    return Statement(name, tuple(runs), "many")


def query(sql: str, *params: Any) -> Statement:
    """All rows of SQL made at run time (``?`` placeholders, in both dialects' syntax)."""
    return Statement("", params, "rows", sql)


def single(statement: Statement) -> Op[Any]:
    """An operation of one statement: its result."""
    return (yield statement)


class Exact(str):
    """Text compared byte for byte (deduplication keys: NUL separators, lone surrogates):
    PostgreSQL keeps it as ``bytea``, SQLite as text."""

    __slots__ = ()


class Array(tuple[Any, ...]):
    """A list for ``IN``: an array for PostgreSQL (``= ANY($1::bigint[])``), a JSON array
    for SQLite (``IN (SELECT value FROM json_each(?))``, which takes any number)."""

    __slots__ = ()


def _blocks(text: str, source: str) -> dict[str, str]:
    marks = list(_NAME.finditer(text))
    ends = [m.start() for m in marks[1:]] + [len(text)]
    found: dict[str, str] = {}
    for mark, end in zip(marks, ends, strict=True):
        if mark.group(1) in found:
            raise ValueError(f"{source}: block {mark.group(1)} named twice")
        found[mark.group(1)] = text[mark.end():end].strip().rstrip(";")
    return found


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1``, ``$2`` … in order."""
    counter = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def load(dialect: Dialect) -> dict[str, str]:
    """Every named block as ``dialect`` runs it."""
    shared: dict[str, str] = {}
    own: dict[str, str] = {}
    for path in sorted(_FOLDER.glob("*.sql")):
        match = _FILE.fullmatch(path.name)
        if match is None:
            raise ValueError(f"query file {path.name} is not ROLE[.dialect].sql")
        blocks = _blocks(path.read_text("utf-8"), path.name)
        if match.group(2) is None:
            clash = shared.keys() & blocks.keys()
            shared.update({name: numbered(sql) if dialect == "postgres" else sql
                           for name, sql in blocks.items()})
        elif match.group(2) == dialect:
            clash = own.keys() & blocks.keys()
            own.update(blocks)
        else:
            continue
        if clash:
            raise ValueError(f"{path.name}: blocks named in another file too: {clash}")
    return shared | own


def run_sync(conn: Any, make: OpFactory[T], sql: Mapping[str, str]) -> T:
    """Run an operation on a ``sqlite3`` connection."""
    op = make()
    result: Any = None
    try:
        while True:
            statement = op.send(result)
            params = [_sqlite_param(p) for p in statement.params] \
                if statement.fetch != "many" else None
            text = statement.sql or sql[statement.name]
            if statement.fetch == "many":
                conn.executemany(text, [[_sqlite_param(p) for p in run]
                                        for run in statement.params])
                result = None
                continue
            cursor = conn.execute(text, params)
            if statement.fetch == "count":
                result = cursor.rowcount
                continue
            found = cursor.fetchall()
            if statement.fetch == "rows":
                result = found
            elif statement.fetch == "row":
                result = found[0] if found else None
            else:
                result = found[0][0] if found else None
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def _sqlite_param(param: Any) -> Any:
    if isinstance(param, Array):
        return json.dumps(list(param))
    if isinstance(param, Exact):
        return str(param)
    return param


async def run_async(conn: Any, make: OpFactory[T], sql: Mapping[str, str],
                    text_param: Callable[[str], str]) -> T:
    """Run an operation on an asyncpg connection; ``text_param`` makes free text storable
    (PostgreSQL text holds no NUL)."""

    def param(value: Any) -> Any:
        if isinstance(value, Exact):
            return value.encode("utf-8", "surrogatepass")
        if isinstance(value, Array):
            return [text_param(v) if isinstance(v, str) else v for v in value]
        if isinstance(value, str):
            return text_param(value)
        return value

    op = make()
    result: Any = None
    try:
        while True:
            statement = op.send(result)
            text = numbered(statement.sql) if statement.sql else sql[statement.name]
            if statement.fetch == "many":
                await conn.executemany(text, [[param(p) for p in run]
                                              for run in statement.params])
                result = None
                continue
            params = [param(p) for p in statement.params]
            if statement.fetch == "rows":
                result = await conn.fetch(text, *params)
            elif statement.fetch == "row":
                result = await conn.fetchrow(text, *params)
            elif statement.fetch == "value":
                result = await conn.fetchval(text, *params)
            else:
                status = await conn.execute(text, *params)
                tail = status.rsplit(" ", 1)[-1]
                result = int(tail) if tail.isdigit() else 0
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class SqlRoles:
    """What the role mixins (bridge/store/roles/) need of an engine: the SQL function that
    case-folds text for searches (``FOLD``), and where to run an operation.
    ``_read_op``: a read, on a connection that sees every commit; ``_write_op``: a write the
    engine may commit together with others (group commit), for operations that wait on no
    lock; ``_lock_op``: a write in a transaction of its own (claims, which may wait for
    rows another transaction holds)."""

    FOLD = "lower"

    async def _read_op(self, make: OpFactory[T]) -> T:
        raise NotImplementedError

    async def _write_op(self, make: OpFactory[T]) -> T:
        raise NotImplementedError

    async def _lock_op(self, make: OpFactory[T]) -> T:
        raise NotImplementedError

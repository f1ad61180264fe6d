"""The store's schema: numbered migrations in files, one runner for both engines.

Each migration is a file ``NNNN_name.sql`` in this folder, or, where the dialects differ, a
pair ``NNNN_name.sqlite.sql`` / ``NNNN_name.postgres.sql``; one numbering serves both
engines. The migrations applied are rows of ``schema_migrations`` (version, name, time).
Never edit a migration that shipped: add the next number.

Stores made before the migrations were files counted their steps in ``PRAGMA user_version``
(SQLite) or the ``schema_version`` table (PostgreSQL), with numbers that disagreed between
the engines. Migration 0001 holds those steps (``-- step: N``): such a store runs the steps
after the one it recorded, and is then numbered here, its data kept
(:func:`migrate`). Afterwards the old counter is set to :data:`LEGACY_GUARD`, so that an
older sms-bridge refuses the store ("newer than this sms-bridge knows") instead of using
it without the tables it does not know.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from bridge.errors import StoreUnavailable

Dialect = Literal["sqlite", "postgres"]

# What an older sms-bridge finds in its counter once a store is numbered here: more than
# any it knows, so it refuses to open the store.
LEGACY_GUARD = 1000
_FOLDER = Path(__file__).parent
_FILE = re.compile(r"(\d{4})_(\w+?)(?:\.(sqlite|postgres))?\.sql")
_STEP = re.compile(r"^-- step: (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    """One numbered migration as one dialect runs it."""

    number: int
    name: str
    sql: str

    def steps(self) -> list[tuple[int, str]]:
        """The ``-- step: N`` parts (migration 0001 only), in order; the whole as step 0
        when it has none."""
        marks = list(_STEP.finditer(self.sql))
        if not marks:
            return [(0, self.sql)]
        ends = [m.start() for m in marks[1:]] + [len(self.sql)]
        return [(int(m.group(1)), self.sql[m.end():end]) for m, end in zip(marks, ends,
                                                                           strict=True)]


def load(dialect: Dialect) -> list[Migration]:
    """The migrations of ``dialect`` in order: a dialect's own file where there is one,
    else the shared one. The numbers run 1, 2, 3 … without a gap."""
    shared: dict[int, tuple[str, Path]] = {}
    own: dict[int, tuple[str, Path]] = {}
    for path in _FOLDER.glob("*.sql"):
        match = _FILE.fullmatch(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name} is not NNNN_name[.dialect].sql")
        number, name, only = int(match.group(1)), match.group(2), match.group(3)
        if only is None:
            shared[number] = (name, path)
        elif only == dialect:
            own[number] = (name, path)
    found = shared | own
    numbers = sorted(found)
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"migration numbers must run 1, 2, 3 …: {numbers}")
    return [Migration(n, found[n][0], found[n][1].read_text("utf-8")) for n in numbers]


def statements(script: str) -> list[str]:
    """The statements of a script, for a driver that runs one at a time: whole-line ``--``
    comments dropped (they may hold a ``;``), split at ``;``."""
    kept = "\n".join(line for line in script.splitlines()
                     if not line.lstrip().startswith("--"))
    return [s.strip() for s in kept.split(";") if s.strip()]


class MigrationConnection(Protocol):
    """What the runner needs of an engine's connection, inside the transaction the engine
    opened (and, for PostgreSQL, the advisory lock it took). SQL uses ``?`` placeholders."""

    @property
    def dialect(self) -> Dialect: ...

    async def script(self, sql: str) -> None:
        """Run several statements."""
        ...

    async def execute(self, sql: str, *params: Any) -> None: ...

    async def value(self, sql: str, *params: Any) -> Any:
        """The first column of the first row, or None."""
        ...

    async def has_table(self, name: str) -> bool: ...

    async def legacy_version(self) -> int:
        """The step count of the numbering before (0: none)."""
        ...

    async def set_legacy_version(self, version: int) -> None: ...


# The steps of the numbering before, per engine (migration 0001 holds them).
LEGACY_STEPS: dict[Dialect, int] = {"sqlite": 8, "postgres": 7}


def _newer(where: str, found: int, known: int) -> StoreUnavailable:
    return StoreUnavailable(
        f"the store {where} has schema version {found}, newer than this sms-bridge knows "
        f"({known}); upgrade sms-bridge")


async def migrate(conn: MigrationConnection, migrations: Sequence[Migration], *,
                  apply: bool, where: str, now: float) -> tuple[int, int]:
    """Bring the schema of the store ``where`` names up to the last of ``migrations``;
    return the version found and the one left. A store of the numbering before counts as
    version 1 (its remaining steps run first). With ``apply=False`` (the read-only
    commands) a missing or older schema is refused with a message naming
    ``sms-bridge migrate``, and nothing is written."""
    latest = migrations[-1].number if migrations else 0
    legacy = 0
    if await conn.has_table("schema_migrations"):
        found = int(await conn.value("SELECT MAX(version) FROM schema_migrations") or 0)
    else:
        legacy = await conn.legacy_version()
        if legacy > LEGACY_STEPS[conn.dialect]:
            raise _newer(where, legacy, latest)
        found = 1 if legacy else 0
    if found > latest:
        raise _newer(where, found, latest)
    pending = [m for m in migrations if m.number > found]
    if legacy and migrations:
        pending.insert(0, migrations[0])
    if not pending:
        return found, latest
    if not apply:
        raise StoreUnavailable(
            f"the store {where} has schema version {found}, older than this sms-bridge's "
            f"({latest}); run `sms-bridge migrate`")
    await conn.script(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at "
        + ("REAL" if conn.dialect == "sqlite" else "DOUBLE PRECISION") + " NOT NULL)")
    for migration in pending:
        for step, sql in migration.steps():
            if step == 0 or step > legacy:
                await conn.script(sql)
        await conn.execute("INSERT INTO schema_migrations (version, name, applied_at) "
                           "VALUES (?, ?, ?)", migration.number, migration.name, now)
    await conn.set_legacy_version(LEGACY_GUARD)
    return found, latest

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
import functools
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import asyncpg

from bridge.errors import StoreUnavailable
from bridge.models import (
    ClaimedForward,
    EnqueueResult,
    InboundRecord,
    SendIntent,
    SendOutcome,
    StoredMessage,
)
from bridge.store import migrations, queries
from bridge.store import postgres_batch as batch
from bridge.store.common import (
    inbound_content_hash,
    options_json,
    row_to_inbound,
    row_to_message,
)
from bridge.store.console import MAX_ATTEMPTS_KEPT
from bridge.store.migrations import Migration
from bridge.store.postgres_pool import (
    _UNAVAILABLE,
    _WRITERS,
    SQL,
    Conn,
    PostgresPool,
    _keep_session,
    _key,
    _opt,
    _text,
)
from bridge.store.queries import Array, Op, count, rows, single
from bridge.store.roles import RoleMethods, mail_queue
from bridge.store.roles.forward_queue import ForwardClaim, ForwardOutcome
from bridge.store.roles.inbound_log import NewInbound
from bridge.store.roles.outbox import NewMail
from bridge.store.rows import DuePoll

log = logging.getLogger(__name__)
T = TypeVar("T")

# Key of the advisory lock held while migrating (one 64-bit key space) ...
_MIGRATION_LOCK = 0x736D735F62726467  # "sms_brdg"
# (The two-key locks of a separate key space take namespace 1 for inbound content and 2 for
# provider ids: inbound_log.postgres.sql, reports.postgres.sql.)

# The schema: bridge/store/migrations/ (read at open, so a test can hold one back).
MIGRATIONS: list[Migration] = migrations.load("postgres")


class _MigrationConnection:
    """A pooled connection as :func:`bridge.store.migrations.migrate` uses it (in the
    transaction and under the advisory lock of :meth:`PostgresStore._migrate`)."""

    dialect: Literal["postgres"] = "postgres"

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def script(self, sql: str) -> None:
        await self.conn.execute(sql)

    async def execute(self, sql: str, *params: Any) -> None:
        await self.conn.execute(queries.numbered(sql), *params)

    async def value(self, sql: str, *params: Any) -> Any:
        return await self.conn.fetchval(queries.numbered(sql), *params)

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


class PostgresStore(PostgresPool, RoleMethods):
    """:class:`bridge.store.base.OutboxStore` on a PostgreSQL database (asyncpg pool)."""

    _ONE_STATEMENT = batch.ONE_WRITE_STATEMENT

    @classmethod
    def from_url(cls, url: str, *, busy_timeout: float = 5.0) -> PostgresStore:
        return cls(url, busy_timeout=busy_timeout)

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

        key = f"readiness:{uuid.uuid4().hex}"  # its own row: probes never wait on locks
        await self._lock_op(lambda: _probe(key))

    # -- outbox ---------------------------------------------------------------------------

    async def _enqueue(self, mail: NewMail) -> EnqueueResult:
        envelope, batches, now, dedup_window, reply = (
            mail.envelope, mail.batches, mail.now, mail.dedup_window, mail.reply)
        if reply is None:
            # Mails of the same moment share one statement (see batch.enqueue_rows).
            return await self._write_combined(  # type: ignore[no-any-return]
                batch.enqueue_rows, batch.EnqueueRow(envelope, batches, now, dedup_window))
        keys = sorted({key for key, _ in batches if key is not None})

        async def op(conn: Conn) -> EnqueueResult:
            mail_id = int(await conn.fetchval(SQL["next_mail_id"]))
            # Take each key unless it was seen within the window (sorted: no deadlock).
            owned = {key for key in keys if await conn.fetchval(
                SQL["take_key_within_window"], _key(key), mail_id, now, now - dedup_window)}
            fresh = [(key, requests) for key, requests in batches
                     if key is None or key in owned]
            if not fresh:
                return EnqueueResult((), duplicate=True)
            await conn.execute(
                SQL["insert_mail_with_id"], mail_id, now, _text(envelope.mail_from),
                _opt(envelope.message_id), _text(envelope.peer), envelope.format,
                envelope.headers, envelope.raw or None, envelope.raw_size,
                _text(json.dumps(envelope.recipients)))
            ids = [int(await conn.fetchval(
                SQL["insert_queued_message"], mail_id, _text(req.account), _text(req.upstream),
                _text(req.phone), _text(req.text), req.parts, _text(req.encoding),
                options_json(req), max(now, req.options.not_before or now), now))
                for _, requests in fresh for req in requests]
            await queries.run_async(conn, functools.partial(
                mail_queue.insert_v2_answer, reply, ids, now), SQL, _text)
            return EnqueueResult(tuple(ids))

        return await self._write(op)

    async def claim_due(
        self, owner: str, now: float, limit: int, lease_seconds: float
    ) -> list[StoredMessage]:
        return await self._lock_op(lambda: _claim_due(owner, now, limit, lease_seconds))

    async def record_intent(
        self, owner: str, upstream: str, leases: Sequence[tuple[int, int]],
        fingerprint: str, now: float,
    ) -> SendIntent | None:
        # The intents recorded at the same moment share two statements (see batch.intent_rows).
        return await self._write_combined(  # type: ignore[no-any-return]
            batch.intent_rows,
            batch.IntentRow(owner, _text(upstream), tuple(leases), fingerprint, now))

    async def record_outcomes(
        self, owner: str, intent_id: int | None, outcomes: Sequence[SendOutcome], now: float,
    ) -> list[int]:
        # The requests ended at the same moment share a few statements (see batch.outcome_rows).
        return await self._write_combined(  # type: ignore[no-any-return]
            batch.outcome_rows, batch.OutcomeRow(owner, intent_id, tuple(outcomes), now))

    # -- inbound SMS ----------------------------------------------------------------------

    async def _record_inbound(self, new: NewInbound) -> InboundRecord:
        message, now, dedup_window, state, response, jobs, forward_deadline = (
            new.message, new.now, new.dedup_window, new.state, new.response, new.jobs,
            new.forward_deadline)
        content_hash = inbound_content_hash(message)
        source = _text(message.source)

        def row(key: bytes) -> batch.InboundRow:
            return batch.InboundRow(
                (source, _text(message.kind), key, _opt(message.sms_id), content_hash,
                 _text(message.phone), _opt(message.recipient), _text(message.text),
                 message.raw, _text(message.charset), int(message.charset_error), state,
                 response.status if response else None, response.body if response else None,
                 response.content_type if response else None, now, forward_deadline),
                [(_text(job.kind), _text(job.target), job.payload) for job in jobs],
                InboundRecord(0, False, state, response, now, content_hash),
            )

        if message.sms_id is not None:
            # Requests of the same moment share one INSERT (see batch.insert_inbound_rows).
            return await self._write_combined(  # type: ignore[no-any-return]
                batch.insert_inbound_rows, row(_key(f"id:{message.sms_id}")))

        async def op(conn: Conn) -> InboundRecord:
            await conn.execute(SQL["lock_inbound_content"], f"{source}:{content_hash}")
            found = await conn.fetchrow(SQL["inbound_by_content"], source, content_hash,
                                        now - dedup_window)
            if found is not None:
                return row_to_inbound(found, duplicate=True)
            [record] = await batch.insert_inbound_rows(
                conn, [row(_key(f"noid:{uuid.uuid4().hex}"))])
            return record

        return await self._write(op)

    # -- forwarding jobs ------------------------------------------------------------------

    async def _claim_forward_jobs(self, claim: ForwardClaim) -> list[ClaimedForward]:
        # A kind has no space: "kind target" names one pair unambiguously.
        excluded = [f"{kind} {target}" for kind, target in claim.exclude_targets]

        return await self._lock_op(lambda: _claim_forward_jobs(claim, excluded))

    async def _forward_outcome(self, outcome: ForwardOutcome) -> None:
        """The outcome, its attempt and the pruning of older ones in one statement (see
        forward_queue.postgres.sql)."""
        await self._write_op(lambda: single(count(
            "forward_outcome_recorded", outcome.job_id, outcome.owner, outcome.at,
            outcome.outcome, outcome.kept_detail(), MAX_ATTEMPTS_KEPT - 1,
            *outcome.changes())))

    async def _due_status_polls(self, upstream: str, now: float, limit: int,
                                lease_seconds: float) -> list[DuePoll]:
        return await self._lock_op(
            lambda: _claim_status_polls(upstream, now, limit, lease_seconds))


# The operations PostgreSQL runs its own way (sql/*.postgres.sql).


def _probe(key: str) -> Op[None]:
    yield count("write_probe_row", key)
    yield count("drop_probe_row", key)


def _claim_due(owner: str, now: float, limit: int,
               lease_seconds: float) -> Op[list[StoredMessage]]:
    found = yield rows("claim_messages", now, limit, owner, now + lease_seconds)
    return [row_to_message(tuple(r)) for r in found]


def _claim_forward_jobs(claim: ForwardClaim,
                        excluded: Sequence[str]) -> Op[list[ClaimedForward]]:
    found = yield rows("claim_forward_jobs", claim.now, Array(claim.kinds), claim.limit,
                       claim.owner, claim.now + claim.lease_seconds, Array(excluded))
    return [ClaimedForward(int(r[0]), int(r[1]), r[2], r[3], bytes(r[4]), int(r[5]),
                           float(r[6]))
            for r in sorted(found, key=lambda r: int(r[0]))]


def _claim_status_polls(upstream: str, now: float, limit: int,
                        lease_seconds: float) -> Op[list[DuePoll]]:
    found = yield rows("claim_status_polls", upstream, now, limit, now + lease_seconds)
    found = sorted(found, key=lambda r: (float(r[3]), int(r[0])))
    return [DuePoll(int(r[0]), list(json.loads(r[1])), int(r[2])) for r in found]

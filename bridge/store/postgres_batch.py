"""PostgreSQL's combined statements: the hot writes of many callers (enqueued mails,
inbound SMS, sent-once intents and outcomes) that one group commit runs as one statement per
kind, one round trip for all (see :meth:`bridge.store.postgres_pool.PostgresPool._run_group`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Sequence
from typing import Any

from bridge.models import (
    EnqueueResult,
    InboundRecord,
    MailEnvelope,
    SendIntent,
    SendOutcome,
    SendRequest,
)
from bridge.store import queries
from bridge.store.common import (
    INBOUND_COLUMNS,
    intent_summary,
    options_json,
    outcome_error,
    outcome_event,
    row_to_inbound,
)
from bridge.store.postgres_pool import SQL, Conn, RunMany, _key, _opt, _text
from bridge.store.queries import Array, single, value
from bridge.store.roles import mail_queue, reports

log = logging.getLogger("bridge.store.postgres")


@dataclasses.dataclass(frozen=True)
class EnqueueRow:
    """One mail to enqueue (without a ``reply_to_email`` answer: that one is queued with
    the message ids the insert returns, in an operation of its own)."""

    envelope: MailEnvelope
    batches: Sequence[tuple[str | None, Sequence[SendRequest]]]
    now: float
    dedup_window: float


async def enqueue_rows(conn: Conn, rows: list[EnqueueRow]) -> list[EnqueueResult]:
    """:meth:`PostgresStore.enqueue` for many mails: one round trip whatever their number."""
    windows = sorted({row.dedup_window for row in rows})
    if len(windows) > 1:
        # One window per statement (a process has one window; this is for safety): then
        # several statements, which must commit together.
        if not conn.is_in_transaction():
            async with conn.transaction():
                return await enqueue_rows(conn, rows)
        results: list[EnqueueResult | None] = [None] * len(rows)
        for window in windows:
            indexes = [i for i, row in enumerate(rows) if row.dedup_window == window]
            for i, result in zip(indexes, await enqueue_rows(conn, [rows[i] for i in indexes]),
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
                    max(row.now, req.options.not_before or row.now)))
                place += 1

    def columns(values: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
        return [list(c) for c in zip(*values, strict=True)] if values else [[]] * width

    out = await conn.fetch(SQL["enqueue_mails"], *columns(mails, 7), *columns(keys, 2), windows[0],
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
class InboundRow:
    """One inbound message to insert: its column values (in ``SQL["insert_inbound"]`` order, the
    forwarding deadline last), its forwarding jobs (kind, target, payload) and its record if
    it turns out new."""

    values: tuple[Any, ...]
    jobs: list[tuple[str, str, bytes]]
    record: InboundRecord


async def insert_inbound_rows(conn: Conn, rows: list[InboundRow]) -> list[InboundRecord]:
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
                for r in await conn.fetch(SQL["insert_inbound"], *columns, *job_columns)}
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
ONE_WRITE_STATEMENT: frozenset[RunMany] = frozenset({insert_inbound_rows, enqueue_rows})


async def lock_provider_ids(conn: Conn, provider_ids: Sequence[str]) -> None:
    """The locks ``record_delivery_reports`` takes on provider ids (see reports.sql)."""
    await queries.run_async(conn, lambda: single(value(
        "lock_provider_ids", Array(sorted(set(provider_ids))))), SQL, _text)


@dataclasses.dataclass(frozen=True)
class SentRow:
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


async def mark_sent_rows(conn: Conn, rows: list[SentRow]) -> list[bool]:
    """Record many sends: one round trip for the provider-id locks, one for the rest (more
    only for delivery reports that came before their send was recorded). True for each
    send recorded (its claim held)."""
    # Serialises with record_delivery_reports for these ids: a report committed meanwhile is
    # either matched there or found here as an early one. Taken before the messages' row
    # locks, in the same order as there (no deadlock).
    await lock_provider_ids(conn, [p for row in rows for p in row.provider_ids])
    # An id named twice in one statement: the later send owns it, as it would one
    # transaction later.
    owner_of = {p: row.message_id for row in rows for p in row.provider_ids}
    out = await conn.fetch(
        SQL["mark_sent"],
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
class IntentRow:
    """One request to record before it is made (:meth:`PostgresStore.record_intent`)."""

    owner: str
    upstream: str
    leases: tuple[tuple[int, int], ...]
    fingerprint: str
    now: float


async def intent_rows(conn: Conn, rows: list[IntentRow]) -> list[SendIntent | None]:
    """:meth:`PostgresStore.record_intent` for many requests: two round trips."""
    leases = [(n, message_id, epoch, row.owner, row.now)
              for n, row in enumerate(rows) for message_id, epoch in row.leases]
    if not leases:
        return [None] * len(rows)
    held: dict[int, set[int]] = {}
    for n, message_id in await conn.fetch(
            SQL["hold_for_intent"], *[list(column) for column in zip(*leases, strict=True)]):
        held.setdefault(int(n), set()).add(int(message_id))
    kept = {n: [(i, e) for i, e in row.leases if i in held[n]]
            for n, row in enumerate(rows) if n in held}
    if not kept:
        return [None] * len(rows)
    out = await conn.fetch(
        SQL["insert_intents"], list(kept), [rows[n].upstream for n in kept],
        [rows[n].owner for n in kept], [rows[n].fingerprint for n in kept],
        [json.dumps(pairs) for pairs in kept.values()], [rows[n].now for n in kept])
    ids = {int(n): int(intent_id) for n, intent_id in out}
    return [SendIntent(ids[n], tuple(i for i, _ in kept[n])) if n in kept else None
            for n in range(len(rows))]


@dataclasses.dataclass(frozen=True)
class OutcomeRow:
    """The outcomes of one request to commit (:meth:`PostgresStore.record_outcomes`)."""

    owner: str
    intent_id: int | None
    outcomes: tuple[SendOutcome, ...]
    now: float


async def outcome_rows(conn: Conn, rows: list[OutcomeRow]) -> list[list[int]]:
    """:meth:`PostgresStore.record_outcomes` for many requests, in the transaction of the
    group: the sends in one statement (after the provider-id locks), the other outcomes in
    another, then the mails they queue and the intents they end."""
    sends: list[tuple[int, SentRow]] = []
    others: list[tuple[int, SendOutcome, OutcomeRow]] = []
    for n, row in enumerate(rows):
        requested = int(row.intent_id is not None)
        for o in row.outcomes:
            settle = int(requested and not o.unknown)
            if o.status == "sent":
                ids = [_text(p) for p in o.provider_ids]
                sends.append((n, SentRow(
                    o.message_id, row.owner, o.lease_epoch, _text(o.upstream), ids, row.now,
                    o.poll_at if ids else None, outcome_event(o)[1] or "", requested,
                    settle)))
            else:
                outcome_event(o)  # refuses an unknown status before anything is written
                others.append((n, o, row))
    recorded: list[set[int]] = [set() for _ in rows]
    if sends:
        for (n, sent), held in zip(sends, await mark_sent_rows(conn, [r for _, r in sends]),
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
        updated = {int(r[0]) for r in await conn.fetch(SQL["record_outcomes"], *columns)}
        for n, o, row in others:
            if o.message_id in updated:
                recorded[n].add(o.message_id)
                if o.mail is not None:
                    await queries.run_async(conn, functools.partial(
                        mail_queue.insert_mail, o.mail, row.now), SQL, _text)
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

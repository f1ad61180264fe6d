"""The store's one migration numbering (bridge/store/migrations/), and stores made before it.

A store made by the sms-bridge that numbered its schema in ``PRAGMA user_version`` (SQLite)
or ``schema_version`` (PostgreSQL) — frozen in tests/store_legacy/ — holding a row in every
table, is opened by this one: every row is still there and the store works on it."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import StoreUnavailable
from bridge.models import InboundMessage
from bridge.store import OutboxStore, migrations, open_store
from tests.pg import fresh_database
from tests.store_legacy import postgres_schema, sqlite_schema

pytestmark = pytest.mark.parametrize("engine", ["sqlite", "postgres"])

NOW = 1_700_000_000.0

# One row in every table of the schema before (the last step's tables included); ``?``
# placeholders. Times are around NOW; the message is queued and due, its mail's reply
# waits in outgoing_mail, the inbound SMS has a forwarding job, a named lease and a
# process mark are in meta as "lease:NAME" = "OWNER|UNTIL" and "alive:OWNER" = "TIME".
ROWS: list[tuple[str, dict[str, Any]]] = [
    ("meta", {"key": "bridge_id", "value": "0123abcd4567"}),
    ("meta", {"key": "inbound_cursor:prov", "value": "42"}),
    ("meta", {"key": "lease:inbound-poll:prov", "value": f"host:1|a|{NOW + 30!r}"}),
    ("meta", {"key": "alive:host:1|a", "value": repr(NOW)}),
    ("mails", {"id": 1, "received_at": NOW, "mail_from": "a@example.org",
               "message_id": "<m1@example.org>", "peer": "127.0.0.1", "format": "v1",
               "headers": b"Subject: hi\r\n", "raw": b"raw mail", "rcpt_to": '["+7999"]',
               "raw_size": 8}),
    ("messages", {"id": 1, "mail_id": 1, "account": "acc", "upstream": "up",
                  "phone": "+79990000001", "text": "hello", "parts": 1, "encoding": "gsm7",
                  "options": '{"originator": null, "flash": false, "max_parts": null, '
                             '"not_before": null, "validity": null, "transliterate": false, '
                             '"two_byte_concat": false, "push_id": null, "fallbacks": []}',
                  "status": "queued", "attempts": 0, "next_attempt_at": NOW,
                  "upstream_ids": "[]", "created_at": NOW, "updated_at": NOW,
                  "poll_count": 0, "maybe_sent": 0, "lease_epoch": 0}),
    ("messages", {"id": 2, "mail_id": 1, "account": "acc", "upstream": "up",
                  "phone": "+79990000002", "text": "sent", "parts": 1, "encoding": "gsm7",
                  "options": "{}", "status": "sent", "attempts": 1, "next_attempt_at": NOW,
                  "upstream_used": "up", "upstream_ids": '["p-2"]', "created_at": NOW,
                  "updated_at": NOW, "delivery_status": None, "next_poll_at": NOW + 60,
                  "poll_count": 0, "maybe_sent": 0, "lease_epoch": 1}),
    ("message_events", {"id": 1, "message_id": 1, "at": NOW, "status": "queued",
                        "detail": None}),
    ("mail_dedup", {"key": "<m1@example.org>\0+79990000001", "mail_id": 1, "seen_at": NOW}),
    ("outgoing_mail", {"id": 1, "kind": "reply", "mail_to": "a@example.org",
                       "content": b"From: bridge\r\n\r\nok", "status": "queued", "attempts": 0,
                       "next_attempt_at": NOW, "created_at": NOW}),
    ("provider_ids", {"provider_id": "p-2", "message_id": 2}),
    ("delivery_reports", {"id": 1, "source": "up", "provider_id": "p-9", "message_id": None,
                          "status": "delivered", "raw_status": "DELIVRD", "error_code": None,
                          "received_at": NOW, "reported_at": NOW}),
    ("inbound", {"id": 1, "source": "prov", "kind": "sms", "dedup_key": "id:s1",
                 "sms_id": "s1", "content_hash": "h", "phone": "+79990000003",
                 "recipient": "1234", "text": "hi there", "raw": b"raw", "charset": "utf-8",
                 "charset_error": 0, "state": "done", "response_status": 200,
                 "response_body": b"OK", "response_type": "text/plain",
                 "received_at": NOW}),
    ("forward_jobs", {"id": 1, "inbound_id": 1, "kind": "webhook", "target": "hook",
                      "payload": b"{}", "status": "queued", "attempts": 0,
                      "next_attempt_at": NOW, "created_at": NOW, "deadline": NOW + 3600,
                      "thread_root": None}),
    ("reply_scripts", {"id": 1, "shortcode": "1234", "keyword": "INFO",
                       "url": "http://127.0.0.1:1/info", "method": "GET", "timeout": 5.0,
                       "secret": None, "created_at": NOW, "updated_at": NOW}),
    ("mail_threads", {"thread_key": "+79990000003 a@example.org",
                      "root_message_id": "<t1@bridge>", "last_activity": NOW}),
    ("provider_exchanges", {"id": 1, "at": NOW, "upstream": "up", "method": "POST",
                            "url": "http://up/send", "request": b"req", "status": 200,
                            "response": b"resp", "error": None, "duration": 0.1}),
    ("provider_exchange_messages", {"message_id": 2, "exchange_id": 1}),
    ("upstream_health", {"upstream": "up", "last_success_at": NOW, "last_error_at": None,
                         "last_error": None, "consecutive_failures": 0,
                         "paused_until": None}),
    ("audit_log", {"id": 1, "at": NOW, "who": "admin", "via": "api", "action": "redeliver",
                   "target": "1", "detail": "{}", "remote": "127.0.0.1"}),
    ("send_intents", {"id": 1, "upstream": "up", "owner": "host:1|a", "fingerprint": "f",
                      "messages": "[[2, 1]]", "created_at": NOW, "finished_at": NOW,
                      "outcome": '{"2": "sent"}'}),
    ("forward_attempts", {"id": 1, "job_id": 1, "at": NOW, "outcome": "retry",
                          "detail": "HTTP 500"}),
]
# Tables the steps before the last one already have (a store one sms-bridge older).
LAST_STEP_TABLES = {"forward_attempts"}
MOVED = {"lease:inbound-poll:prov", "alive:host:1|a"}


# PostgreSQL keeps deduplication keys as bytea.
BYTEA_KEYS = {("mail_dedup", "key"), ("inbound", "dedup_key")}


def _params(engine: str, table: str, row: dict[str, Any]) -> list[Any]:
    return [v.encode() if engine == "postgres" and (table, k) in BYTEA_KEYS else v
            for k, v in row.items()]


def _insert(engine: str, table: str, row: dict[str, Any]) -> str:
    marks = ", ".join(f"${i}" if engine == "postgres" else "?"
                      for i in range(1, len(row) + 1))
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})"


def _rows(steps: int) -> list[tuple[str, dict[str, Any]]]:
    return [(t, r) for t, r in ROWS if steps == 0 or t not in LAST_STEP_TABLES]


@pytest.fixture
async def url(engine: str, tmp_path: Path) -> AsyncIterator[str]:
    if engine == "postgres":
        async with fresh_database() as found:
            yield found
    else:
        yield f"sqlite:///{tmp_path / 'old.sqlite3'}"


async def make_legacy_store(engine: str, url: str, *, held_back: int = 0) -> None:
    """A store as the sms-bridge before made it (all its steps but the last ``held_back``),
    with the rows of ``ROWS`` (those its tables have)."""
    rows = _rows(held_back)
    if engine == "sqlite":
        steps = sqlite_schema.MIGRATIONS[:len(sqlite_schema.MIGRATIONS) - held_back]
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            for step in steps:
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {len(steps)}")
            for table, row in rows:
                conn.execute(_insert(engine, table, row), _params(engine, table, row))
        return
    import asyncpg  # type: ignore[import-untyped]

    steps = postgres_schema.MIGRATIONS[:len(postgres_schema.MIGRATIONS) - held_back]
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE schema_version (id BOOLEAN PRIMARY KEY DEFAULT TRUE "
                           "CHECK (id), version INTEGER NOT NULL)")
        for step in steps:
            await conn.execute(step)
        await conn.execute("INSERT INTO schema_version VALUES (TRUE, $1)", len(steps))
        for table, row in rows:
            await conn.execute(_insert(engine, table, row), *_params(engine, table, row))
    finally:
        await conn.close()


async def table_rows(engine: str, url: str, table: str) -> list[tuple[Any, ...]]:
    if engine == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1")]
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY 1")]
    finally:
        await conn.close()


@pytest.mark.parametrize("held_back", [0, 1], ids=["latest", "one-step-older"])
async def test_a_store_numbered_before_keeps_every_row_and_works(
    engine: str, url: str, held_back: int,
) -> None:
    await make_legacy_store(engine, url, held_back=held_back)
    tables = sorted({t for t, _ in _rows(held_back)})
    before = {t: await table_rows(engine, url, t) for t in tables}

    store = open_store(url)
    await store.open()
    try:
        # Numbered here now: the baseline (its remaining steps run) and what came after.
        assert store.schema_change == (1, len(migrations.load(engine)))  # type: ignore[arg-type]
        await check_usable(store)
    finally:
        await store.close()

    for table in tables:
        after = await table_rows(engine, url, table)
        if table == "meta":  # its leases and process marks moved to their tables
            kept = [r for r in before[table] if r[0] not in MOVED]
            assert [r for r in after if r[0] in {k for k, *_ in kept}] == kept
        elif table in CLAIMED:  # claimed above: the same rows, a lease more
            assert [r[0] for r in after] == [r[0] for r in before[table]], table
        else:
            assert after == before[table], table
    # The last step's table exists in a store that lacked it.
    assert await table_rows(engine, url, "forward_attempts") == (
        [] if held_back else [tuple(r) for r in before["forward_attempts"]])


# Tables whose rows the claims of check_usable change.
CLAIMED = {"messages", "outgoing_mail", "forward_jobs"}


async def check_usable(store: OutboxStore) -> None:
    """The store answers from the rows it found, and keeps working."""
    assert await store.bridge_id() == "0123abcd4567"
    assert await store.get_meta("inbound_cursor:prov") == "42"
    # The lease moved from meta: still held by its owner until it expires.
    assert not await store.acquire_lease("inbound-poll:prov", "other", NOW + 10, 30)
    assert await store.acquire_lease("inbound-poll:prov", "host:1|a", NOW + 10, 30)
    assert await store.acquire_lease("inbound-poll:prov", "other", NOW + 41, 30)
    # The process mark moved too: two alive with this one.
    assert await store.heartbeat("host:2|b", NOW + 1, 15) == 2
    listed = {m.id: m for m in await store.list_messages()}
    assert set(listed) == {1, 2} and listed[2].upstream_ids == ["p-2"]
    assert [e["status"] for e in await store.message_events(1)] == ["queued"]
    claimed = await store.claim_due("w", NOW + 1, 10, 30)
    assert [m.id for m in claimed] == [1] and claimed[0].mail_message_id == "<m1@example.org>"
    assert [mail_id for mail_id, *_ in await store.claim_mails("w", NOW + 1, 10, 30)] == [1]
    found = await store.get_inbound("prov", "s1")
    assert found is not None and found.id == 1 and found.duplicate
    again = await store.record_inbound(
        InboundMessage(source="prov", kind="sms", phone="+79990000003", text="hi there",
                       sms_id="s1", recipient="1234", raw=b"raw"),
        now=NOW + 2, dedup_window=60, state="done", response=None, jobs=(),
        forward_deadline=NOW + 60)
    assert (again.id, again.duplicate) == (1, True)
    assert [j.id for j in await store.claim_forward_jobs("w", NOW + 1, 10, 30)] == [1]
    assert [s["id"] for s in await store.list_reply_scripts()] == [1]
    assert [r["provider_id"] for r in await store.list_delivery_reports(unmatched=True)] \
        == ["p-9"]
    assert [a["action"] for a in await store.list_audit()] == ["redeliver"]
    assert [h["upstream"] for h in await store.upstream_health()] == ["up"]
    trace = await store.message_trace(2)
    assert trace is not None and trace["message"].id == 2


async def test_a_store_of_a_newer_numbering_is_refused(engine: str, url: str) -> None:
    store = open_store(url)
    await store.open()
    await store.close()
    if engine == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    else:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            await conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
        finally:
            await conn.close()
    newer = open_store(url)
    with pytest.raises(StoreUnavailable, match=r"version 99, newer .*\(3\)"):
        await newer.open()


async def test_an_older_sms_bridge_refuses_a_store_numbered_here(
    engine: str, url: str,
) -> None:
    """The counter of the numbering before is left beyond any step it had, so an older
    sms-bridge says "newer than this sms-bridge knows" instead of using the store."""
    store = open_store(url)
    await store.open()
    await store.close()
    if engine == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
    else:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            version = await conn.fetchval("SELECT version FROM schema_version")
        finally:
            await conn.close()
    assert version == migrations.LEGACY_GUARD

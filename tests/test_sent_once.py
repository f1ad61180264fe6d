"""Every SMS sent once under crashes and store outages (issue 12).

One provider request is one intent, recorded before the call, and one outcome commit.
``maybe_sent`` counts a message's requests whose fate is unknown (an intent left without an
outcome by a crash, or answered by an ambiguous failure); ``attempts`` counts the tries that
ended here and drives the backoff. Where neither an idempotency key nor a lookup by client id
settles the doubt (SMS Traffic v1), the account's ``ambiguous`` policy decides: ``resend``
risks at most one extra copy, ``hold`` none (the message waits as ``ambiguous`` for
``sms-bridge resolve``).

The process tests SIGKILL real ``sms-bridge serve`` processes, on both stores.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from bridge.app import Bridge
from bridge.models import MailEnvelope, OutboundMail, SendOutcome, SendRequest
from bridge.outbox.ambiguity import resend_allowed
from bridge.settings import load_settings
from bridge.store import OutboxStore, open_store
from tests.conftest import BOTH_STORES, BridgeFactory
from tests.doubles.mailbox import MailboxDouble
from tests.doubles.smstraffic import SmsTrafficDouble
from tests.pg import ADMIN_URL, fresh_database
from tests.test_crash_restart import BridgeProcess, free_port
from tests.test_smtp_intake import mail, send, wait_status

# -- helpers: stores, configurations, processes -----------------------------------------------


@asynccontextmanager
async def store_url_for(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "postgres":
        async with fresh_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'bridge.sqlite3'}"


async def query(store_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` read straight from the store of another process."""
    if store_url.startswith("sqlite:///"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn:
            return [tuple(row) for row in conn.execute(sql)]
    conn = await asyncpg.connect(store_url)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


async def messages(store_url: str) -> dict[str, tuple[int, str, int]]:
    """phone -> (id, status, maybe_sent)."""
    rows = await query(store_url, "SELECT phone, id, status, maybe_sent FROM messages")
    return {row[0]: (int(row[1]), str(row[2]), int(row[3])) for row in rows}


async def wait_settled(store_url: str, count: int, timeout: float = 20.0) -> None:
    """Until ``count`` messages exist and none is queued or sending."""
    async with asyncio.timeout(timeout):
        # The bridge is another process: its store is the only thing to watch.
        while True:
            found = await messages(store_url)
            if len(found) >= count and all(status not in ("queued", "sending")
                                           for _, status, _ in found.values()):
                return
            await asyncio.sleep(0.05)


async def open_intents(store_url: str) -> int:
    """Message-requests recorded as intents that never got an outcome (their process was
    killed with the request in flight)."""
    rows = await query(store_url,
                       "SELECT messages FROM send_intents WHERE finished_at IS NULL")
    return sum(len(json.loads(row[0])) for row in rows)


def v1_upstream(provider: SmsTrafficDouble, **extra: Any) -> str:
    lines = ['kind = "smstraffic_v1"', f'base_url = "{provider.url}"', 'login = "mylogin"',
             'password = "mypassword"', *(f"{k} = {json.dumps(v)}" for k, v in extra.items())]
    return "\n".join(lines)


def write_config(tmp_path: Path, store_url: str, smtp_port: int, upstream: str, *,
                 ambiguous: str = "resend", lease_seconds: float = 5.0,
                 name: str = "bridge.toml") -> Path:
    config = tmp_path / name
    config.write_text("\n".join([
        'log_format = "json"',
        "[smtp]", 'host = "127.0.0.1"', f"port = {smtp_port}",
        "[http]", 'host = "127.0.0.1"', f"port = {free_port()}",
        "[store]", f'url = "{store_url}"',
        "[dispatcher]", "poll_interval = 0.1", "retry_base = 0.05", "retry_max = 0.2",
        f"lease_seconds = {lease_seconds}",
        "[upstreams.main]", upstream,
        "[accounts.alerts]", 'password = "pw"', 'upstream = "main"',
        "mail_rate_per_minute = 0", *([f'ambiguous = "{ambiguous}"'] if ambiguous != "resend"
                                      else []),
    ]) + "\n")
    return config


@pytest.fixture
async def processes() -> AsyncIterator[list[BridgeProcess]]:
    started: list[BridgeProcess] = []
    yield started
    for process in started:
        await process.terminate()


async def serve(config: Path, processes: list[BridgeProcess]) -> BridgeProcess:
    process = BridgeProcess(config)
    processes.append(process)
    await process.start()
    return process


async def cli(config: Path, *args: str) -> tuple[int, str, str]:
    """``sms-bridge --config CONFIG ARGS…`` in a child process: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "--config", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgres"])


# -- SIGKILL of real processes, SMS Traffic v1 (no idempotency key, no lookup) ----------------


@BACKENDS
async def test_a_batch_killed_in_flight_twice_is_sent_at_most_twice(
    tmp_path: Path, backend: str, processes: list[BridgeProcess],
) -> None:
    """A 20-SMS request killed in flight, its resend killed in flight again: the provider
    took both. Before intents, the third process sent all 20 a third time."""
    phones = [f"7916100{n:04d}" for n in range(20)]
    async with store_url_for(backend, tmp_path) as store_url, SmsTrafficDouble() as provider:
        smtp_port = free_port()
        config = write_config(tmp_path, store_url, smtp_port, v1_upstream(provider))
        provider.fail_next(1, "delay", seconds=1.0)
        first = await serve(config, processes)
        code, reply = await send(smtp_port, mail("alerts@x", ", ".join(phones), "twice at most"))
        assert code == 250, reply
        await provider.wait_for_requests(1)
        await first.kill()  # the 20-SMS request is in flight ...
        await provider.wait_for_accepted(20)  # ... and the provider takes it
        provider.fail_next(1, "delay", seconds=1.0)
        second = await serve(config, processes)
        await provider.wait_for_requests(2)
        await second.kill()  # the resend is in flight too, and taken
        await provider.wait_for_accepted(40)
        await serve(config, processes)
        await wait_settled(store_url, 20)
        copies = collections.Counter(sms.phone for sms in provider.accepted)
        assert set(copies) == set(phones)  # nothing lost
        assert max(copies.values()) <= 2, copies
        second_copies = sum(count - 1 for count in copies.values())
        assert second_copies <= await open_intents(store_url) == 40
        stored = await messages(store_url)
        # Both requests may have been taken: a third copy is not risked; the message waits
        # for the operator (sms-bridge resolve), and its sender is told.
        assert {status for _, status, _ in stored.values()} == {"ambiguous"}
        assert {maybe for _, _, maybe in stored.values()} == {2}
        notices = await query(store_url, "SELECT mail_to FROM outgoing_mail WHERE kind = 'held'")
        assert sorted(notices) == [("monitor@example.com",)] * 20
        assert len([r for r in provider.requests if r.path == "/multi.php"]) == 2


@BACKENDS
async def test_kills_under_smtp_load_lose_nothing_and_send_no_sms_more_than_twice(
    tmp_path: Path, backend: str, processes: list[BridgeProcess],
) -> None:
    """An MTA offers 60 mails until each is answered 250, while the bridge is SIGKILLed four
    times with requests in flight (each send takes the provider 0.3 s)."""
    count, kills = 60, 4
    async with store_url_for(backend, tmp_path) as store_url, SmsTrafficDouble() as provider:
        smtp_port = free_port()
        config = write_config(tmp_path, store_url, smtp_port, v1_upstream(provider))
        provider.fail_next(10_000, "delay", seconds=0.3)
        current = await serve(config, processes)
        acknowledged: set[int] = set()

        async def offer(index: int) -> None:
            message = mail(f"791620{index:05d}.alerts@x", "", f"load {index}",
                           message_id=make_msgid(f"load{index}"))
            while True:
                try:
                    code, _ = await send(smtp_port, message)
                except (OSError, ConnectionError, TimeoutError):
                    code = 0  # down: the MTA tries again
                if code == 250:
                    acknowledged.add(index)
                    return
                await asyncio.sleep(0.05)

        async def offer_all() -> None:
            for start in range(0, count, 6):
                await asyncio.gather(*(offer(i) for i in range(start, min(start + 6, count))))

        load = asyncio.create_task(offer_all())
        for _ in range(kills):
            seen = len(provider.requests)
            await provider.wait_for_requests(seen + 1, timeout=20)
            await current.kill()  # with at least one request in flight
            current = await serve(config, processes)
        await asyncio.wait_for(load, 60)
        await wait_settled(store_url, count, timeout=30)
        assert acknowledged == set(range(count))
        copies = collections.Counter(sms.phone for sms in provider.accepted)
        stored = await messages(store_url)
        assert len(stored) == count  # every acknowledged mail once (Message-ID dedup)
        # Nothing lost: every message reached the provider, or is held as `ambiguous` after
        # two requests of unknown fate (the default policy's limit of one extra copy: a
        # second kill with its resend in flight). A held message is not silently dropped:
        # its sender is told and `sms-bridge resolve` settles it.
        unsent = set(stored) - set(copies)
        assert all(stored[phone][1] == "ambiguous" and stored[phone][2] >= 2
                   for phone in unsent), {phone: stored[phone] for phone in unsent}
        assert max(copies.values()) <= 2, copies
        assert sum(c - 1 for c in copies.values()) <= await open_intents(store_url)
        assert {status for _, status, _ in stored.values()} <= {"sent", "ambiguous"}


@BACKENDS
async def test_hold_policy_sends_nothing_twice_and_resolve_settles_what_it_held(
    tmp_path: Path, backend: str, processes: list[BridgeProcess],
) -> None:
    """``ambiguous = "hold"``: a request killed in flight is never sent again by the bridge;
    its messages wait as ``ambiguous`` until ``sms-bridge resolve`` says what happened."""
    phones = [f"7916300{n:04d}" for n in range(5)]
    async with store_url_for(backend, tmp_path) as store_url, SmsTrafficDouble() as provider:
        smtp_port = free_port()
        config = write_config(tmp_path, store_url, smtp_port, v1_upstream(provider),
                              ambiguous="hold")
        provider.fail_next(1, "delay", seconds=1.0)
        first = await serve(config, processes)
        code, _ = await send(smtp_port, mail("alerts@x", ", ".join(phones), "one time code"))
        assert code == 250
        await provider.wait_for_requests(1)
        await first.kill()
        await provider.wait_for_accepted(5)
        await serve(config, processes)
        await wait_settled(store_url, 5)
        stored = await messages(store_url)
        assert {status for _, status, _ in stored.values()} == {"ambiguous"}
        assert len(provider.accepted) == 5  # nothing sent twice

        code, listing, err = await cli(config, "messages", "--status", "ambiguous")
        assert code == 0, err
        assert sorted(line.split()[0] for line in listing.splitlines()[1:]) == sorted(
            str(stored[p][0]) for p in phones)
        sent_id, resend_id = stored[phones[0]][0], stored[phones[1]][0]
        code, out, err = await cli(config, "resolve", str(sent_id), "--sent")
        assert (code, out) == (0, f"message {sent_id}: recorded as sent\n"), err
        code, out, err = await cli(config, "resolve", str(resend_id), "--resend")
        assert (code, out) == (0, f"message {resend_id}: queued to be sent again\n"), err
        accepted = await provider.wait_for_accepted(6)  # the operator asked for it
        assert [s.phone for s in accepted[5:]] == [phones[1]]
        code, out, err = await cli(config, "resolve", str(sent_id), "--resend")
        assert code == 1 and f"message {sent_id} is not ambiguous" in err
        async with asyncio.timeout(10):
            while (await messages(store_url))[phones[1]][1] != "sent":  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        final = await messages(store_url)
        assert [final[p][1] for p in phones] == ["sent", "sent", "ambiguous", "ambiguous",
                                                 "ambiguous"]


# -- in one process: leases, outages, counters, the policy -----------------------------------


def v1(url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "smstraffic_v1", "base_url": url, "login": "mylogin",
            "password": "mypassword", **extra}


def v2(url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "smstraffic_v2", "base_url": url, "api_key": "1837/secretkey", **extra}


async def start(bridge_factory: BridgeFactory, upstream: dict[str, Any], *,
                ambiguous: str = "resend", **overrides: Any) -> Bridge:
    account: dict[str, Any] = {"password": "pw", "upstream": "main", "mail_rate_per_minute": 0}
    if ambiguous != "resend":  # the default
        account["ambiguous"] = ambiguous
    return await bridge_factory(upstreams={"main": upstream}, accounts={"alerts": account},
                                **overrides)


@asynccontextmanager
async def store_outage(store_url: str) -> AsyncIterator[None]:
    """No write reaches the store meanwhile: SQLite's write lock is held by another
    connection; PostgreSQL refuses connections to the database and ends the open ones."""
    if store_url.startswith("sqlite:///"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"), timeout=5,
                               isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    name = store_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = $1 AND pid <> pg_backend_pid()", name)
        try:
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()


@BOTH_STORES
async def test_a_store_outage_of_two_leases_during_sends_sends_each_sms_once(
    bridge_factory: BridgeFactory, store_url: str,
) -> None:
    """The provider answers while the store is unreachable: the outcomes wait in memory,
    the leases do not lapse under the running sends, nothing is claimed and sent again."""
    lease = 0.5
    phones = [f"7916400{n:04d}" for n in range(5)]
    async with SmsTrafficDouble() as provider:
        bridge = await start(bridge_factory, v1(provider.url, batch_size=1),
                             dispatcher={"lease_seconds": lease},
                             store={"busy_timeout": 0.05})
        provider.fail_next(5, "delay", seconds=0.3)
        code, _ = await send(bridge.smtp_port, mail("alerts@x", ", ".join(phones), "outage"))
        assert code == 250
        await provider.wait_for_requests(5)  # all five in flight
        async with store_outage(store_url):
            await provider.wait_for_accepted(5)  # answered during the outage
            await asyncio.sleep(2 * lease)
        await wait_status(bridge, 5, "sent")
        await asyncio.sleep(lease)  # a re-claim would have sent by now
    assert sorted(s.phone for s in provider.accepted) == phones


@BOTH_STORES
async def test_a_send_slower_than_the_lease_stays_with_its_live_owner(
    bridge_factory: BridgeFactory,
) -> None:
    """Two bridges on one store; a send takes four leases: the lease is renewed while it is
    in flight, so the other bridge does not claim the message and send it again."""
    async with SmsTrafficDouble() as provider:
        first = await start(bridge_factory, v1(provider.url), dispatcher={"lease_seconds": 0.3})
        await start(bridge_factory, v1(provider.url), dispatcher={"lease_seconds": 0.3})
        provider.fail_next(1, "delay", seconds=1.2)
        code, _ = await send(first.smtp_port, mail("79164000100.alerts@x", "", "slow"))
        assert code == 250
        await wait_status(first, 1, "sent")
    assert len(provider.accepted) == 1
    assert len([r for r in provider.requests if r.path == "/multi.php"]) == 1


@BOTH_STORES
async def test_crash_reclaims_raise_neither_attempts_nor_backoff(
    bridge_factory: BridgeFactory, store_url: str,
) -> None:
    """A message claimed by five processes that died: the first provider error is retried
    after the first backoff step (retry_base), not after the sixth."""
    store = open_store(store_url)
    await store.open()
    try:
        (message_id,) = (await store.enqueue(
            MailEnvelope("monitor@example.com", ("sms@x",), None, "127.0.0.1", "v1"),
            [(None, [SendRequest("alerts", "main", "79164000200", "hi", 1, "gsm7")])],
            now=time.time(), dedup_window=60)).message_ids
        for n in range(5):  # each holder died right after its claim
            (claimed,) = await store.claim_due(f"gone:{n}", time.time(), 1, lease_seconds=0.0)
            assert claimed.attempts == 0
    finally:
        await store.close()
    async with SmsTrafficDouble() as provider:
        provider.fail_next(1, "error", code=1000)  # "temporary problems": nothing sent
        bridge = await start(bridge_factory, v2(provider.url),
                             dispatcher={"retry_base": 1.0, "retry_max": 100.0})
        await provider.wait_for_accepted(1, timeout=4)  # the 6th step would wait 16-32 s
        await wait_status(bridge, 1, "sent")
    (message,) = await bridge.store.list_messages()
    assert (message.id, message.attempts) == (message_id, 2)


@BOTH_STORES
async def test_resend_policy_risks_one_extra_copy_then_holds_and_tells_the_sender(
    bridge_factory: BridgeFactory,
) -> None:
    """v1 answers HTTP 500 after taking the SMS, twice: one resend is risked (the default
    ``resend``); after the second unknown outcome a third copy is not."""
    async with SmsTrafficDouble() as provider, MailboxDouble() as box:
        bridge = await start(bridge_factory, v1(provider.url),
                             mail={"smarthost": "127.0.0.1", "smarthost_port": box.port})
        provider.fail_next(3, "accept_then_500")
        await send(bridge.smtp_port, mail("79164000300.alerts@x", "", "your code 1234"))
        [notice] = await box.wait_for(1)
        await wait_status(bridge, 1, "ambiguous")
    assert len(provider.accepted) == 2
    (message,) = await bridge.store.list_messages(status="ambiguous")
    assert (message.attempts, message.maybe_sent) == (2, 2)
    events = [e["status"] for e in await bridge.store.message_events(message.id)]
    assert events == ["queued", "retry", "ambiguous"]
    assert notice.rcpt_tos == ["monitor@example.com"]
    report = notice.message
    assert report.get_content_type() == "multipart/report"
    assert "79164000300" in str(report["Subject"]) and "may have been sent" in str(
        report["Subject"])
    text = next(p for p in report.walk() if not p.is_multipart()).get_payload(decode=True)
    assert b"sms-bridge resolve" in text and b"your code 1234" in text
    assert b"Action: delayed" in notice.content and b"Status: 4.0.0" in notice.content


@BOTH_STORES
async def test_hold_policy_holds_after_one_unknown_outcome_and_resolve_resends(
    bridge_factory: BridgeFactory, store_url: str, tmp_path: Path,
) -> None:
    async with SmsTrafficDouble() as provider:
        bridge = await start(bridge_factory, v1(provider.url), ambiguous="hold")
        provider.fail_next(1, "accept_then_drop")
        await send(bridge.smtp_port, mail("79164000400.alerts@x", "", "otp 9876"))
        await wait_status(bridge, 1, "ambiguous")
        assert len(provider.accepted) == 1
        (held,) = await bridge.store.list_messages()
        config = tmp_path / "cli.toml"
        config.write_text(f'[store]\nurl = "{store_url}"\n')
        code, out, err = await cli(config, "resolve", str(held.id), "--resend")
        assert (code, out) == (0, f"message {held.id}: queued to be sent again\n"), err
        await wait_status(bridge, 1, "sent")
        assert len(provider.accepted) == 2
    events = [e["status"] for e in await bridge.store.message_events(held.id)]
    assert events == ["queued", "ambiguous", "resolved", "sent"]


# -- the store: intents, fenced outcomes, resolve ---------------------------------------------

NOW = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OutboxStore]:
    async with store_url_for(request.param, tmp_path) as url:
        opened = open_store(url)
        await opened.open()
        try:
            yield opened
        finally:
            await opened.close()


async def enqueue(store: OutboxStore, count: int) -> list[int]:
    envelope = MailEnvelope("alice@example.org", ("sms@x",), None, "127.0.0.1", "v1")
    requests = [SendRequest("acc", "up", f"7999000{n:04d}", "hi", 1, "gsm7")
                for n in range(count)]
    return list((await store.enqueue(envelope, [(None, requests)], now=NOW,
                                     dedup_window=60)).message_ids)


async def test_an_intent_counts_until_an_outcome_settles_it(store: OutboxStore) -> None:
    ids = await enqueue(store, 3)
    claimed = await store.claim_due("o1", NOW, 10, 60)
    assert [(m.attempts, m.maybe_sent) for m in claimed] == [(0, 0)] * 3
    intent = await store.record_intent("o1", "up", [(m.id, m.lease_epoch) for m in claimed],
                                       "f1", NOW)
    assert intent is not None and intent.message_ids == tuple(ids)
    a, b, c = claimed
    written = await store.record_outcomes("o1", intent.id, [
        SendOutcome(a.id, a.lease_epoch, "sent", upstream="up", provider_ids=("p1",)),
        SendOutcome(b.id, b.lease_epoch, "queued", error="HTTP 500", next_attempt_at=NOW + 1,
                    unknown=True),
        SendOutcome(c.id, c.lease_epoch, "queued", error="HTTP 429", next_attempt_at=NOW + 1),
    ], NOW)
    assert sorted(written) == ids
    again = {m.id: m for m in await store.claim_due("o1", NOW + 1, 10, 60)}
    # attempts: one answer each; maybe_sent: only the ambiguous answer leaves a doubt.
    assert [(again[i].attempts, again[i].maybe_sent) for i in (b.id, c.id)] == [(1, 1), (1, 0)]
    assert again[b.id].lease_epoch > b.lease_epoch
    # A crash between intent and outcome: the next holder finds the doubt in maybe_sent.
    await store.record_intent("o1", "up", [(b.id, again[b.id].lease_epoch)], "f2", NOW + 1)
    crashed = {m.id: m for m in await store.claim_due("o2", NOW + 100, 10, 60)}
    assert (crashed[b.id].attempts, crashed[b.id].maybe_sent) == (1, 2)
    assert (crashed[c.id].attempts, crashed[c.id].maybe_sent) == (1, 0)


async def test_a_stale_holder_can_neither_start_nor_record_a_request(
    store: OutboxStore,
) -> None:
    (message_id,) = await enqueue(store, 1)
    (old,) = await store.claim_due("o1", NOW, 10, 1.0)
    (new,) = await store.claim_due("o2", NOW + 2, 10, 60)  # o1's lease had expired
    assert new.lease_epoch != old.lease_epoch
    assert await store.record_intent("o1", "up", [(old.id, old.lease_epoch)], "f", NOW) is None
    sent = SendOutcome(message_id, old.lease_epoch, "sent", upstream="up", provider_ids=("x",))
    assert await store.record_outcomes("o1", None, [sent], NOW + 3) == []
    # The same owner with an older epoch (a process resumed after its lease was re-taken by
    # itself) is refused too.
    assert await store.record_outcomes("o2", None, [sent], NOW + 3) == []
    (row,) = await store.list_messages()
    assert (row.status, row.upstream_ids) == ("sending", [])
    fresh = SendOutcome(message_id, new.lease_epoch, "sent", upstream="up",
                        provider_ids=("y",))
    assert await store.record_outcomes("o2", None, [fresh], NOW + 3) == [message_id]
    (row,) = await store.list_messages()
    assert (row.status, row.upstream_ids) == ("sent", ["y"])


async def test_leases_are_renewed_for_their_owner_only(store: OutboxStore) -> None:
    mine, theirs = await enqueue(store, 2)
    await store.claim_due("o1", NOW, 1, 10)
    await store.claim_due("o2", NOW, 1, 10)
    assert await store.renew_leases("o1", NOW + 9, 10) == 1
    # o2's lease expired at NOW + 10, o1's now runs to NOW + 19.
    (taken,) = await store.claim_due("o3", NOW + 11, 10, 10)
    assert (taken.id, taken.lease_epoch) == (theirs, 2)
    # An owner never takes its own rows back by expiry: they are in flight there.
    assert [m.id for m in await store.claim_due("o1", NOW + 30, 10, 10)] == [theirs]
    assert [m.id for m in await store.claim_due("o2", NOW + 30, 10, 10)] == [mine]


async def test_resolve_settles_only_held_messages(store: OutboxStore) -> None:
    first, second = await enqueue(store, 2)
    claimed = await store.claim_due("o1", NOW, 10, 60)
    notice = OutboundMail("held", "alice@example.org", b"notice")
    await store.record_outcomes("o1", None, [
        SendOutcome(m.id, m.lease_epoch, "ambiguous", error="may have been sent",
                    mail=notice if m.id == first else None)
        for m in claimed], NOW)
    assert [m.id for m in await store.list_messages(status="ambiguous")] == [second, first]
    assert [m["kind"] for m in await store.list_mails()] == ["held"]
    assert await store.resolve_ambiguous(first, sent=True, now=NOW + 1)
    assert not await store.resolve_ambiguous(first, sent=False, now=NOW + 2)
    assert await store.resolve_ambiguous(second, sent=False, now=NOW + 2)
    rows = {m.id: m for m in await store.list_messages()}
    assert rows[first].status == "sent" and rows[second].status == "queued"
    (queued,) = await store.claim_due("o1", NOW + 3, 10, 60)
    assert (queued.id, queued.maybe_sent) == (second, 0)


# -- the policy and its setting ----------------------------------------------------------------


@pytest.mark.parametrize(("maybe_sent", "idempotent", "looks_up", "policy", "allowed"), [
    (0, False, False, "hold", True),  # no doubt: send
    (1, True, False, "hold", True),  # the provider refuses a repeated key
    (3, False, True, "hold", True),  # the provider is asked first
    (1, False, False, "resend", True),  # one extra copy at most ...
    (2, False, False, "resend", False),  # ... not a third
    (1, False, False, "hold", False),  # at most once
])
def test_resend_policy(maybe_sent: int, idempotent: bool, looks_up: bool, policy: str,
                       allowed: bool) -> None:
    assert resend_allowed(maybe_sent, idempotent=idempotent, looks_up=looks_up,
                          policy=policy) is allowed


def test_ambiguous_is_resend_or_hold() -> None:
    accounts = {"a": {"password": "p", "ambiguous": "hold"}}
    assert load_settings(None, accounts=accounts).accounts["a"].ambiguous == "hold"
    assert load_settings(None, accounts={"a": {"password": "p"}}).accounts["a"].ambiguous == \
        "resend"
    with pytest.raises(ValidationError, match="ambiguous"):
        load_settings(None, accounts={"a": {"password": "p", "ambiguous": "drop"}})


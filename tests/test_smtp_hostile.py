"""Hostile SMTP clients and a hanging store, over real sockets: AUTH brute force throttled
per client address and per login, idle floods that leave room for a client that speaks, a
store stuck on a lock answered with 451 within a deadline, malformed mail refused."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import REGISTRY

from bridge.app import Bridge
from bridge.smtp.throttle import client_key
from tests.conftest import BOTH_STORES, BridgeFactory
from tests.doubles.smstraffic import SmsTrafficDouble
from tests.smtp_client import RawSmtp
from tests.test_smtp_intake import accounts, db_rows, mail, send, upstreams


@pytest.fixture
async def provider() -> AsyncIterator[SmsTrafficDouble]:
    async with SmsTrafficDouble(login="acme", password="s3cret") as double:
        yield double


@pytest.fixture
async def bridge(bridge_factory: BridgeFactory, provider: SmsTrafficDouble) -> Bridge:
    return await bridge_factory(upstreams=upstreams(provider), accounts=accounts())


# --- AUTH brute force -----------------------------------------------------------------------


def test_limits_count_an_ipv6_64_as_one_address() -> None:
    # A host owning a /64 would otherwise have 2**64 addresses to rotate through.
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.7") == client_key("192.0.2.7") == "192.0.2.7"


def auth_failures(reason: str) -> float:
    return REGISTRY.get_sample_value("bridge_smtp_auth_failures_total", {"reason": reason}) or 0.0


async def auth(port: int, login: str, password: str, *, source: str = "127.0.0.1"
               ) -> tuple[int, str]:
    """One AUTH PLAIN on a fresh connection from ``source``."""
    client = await RawSmtp.connect(port, source=source)
    try:
        await client.cmd("EHLO t")
        return await client.auth_plain(login, password)
    finally:
        await client.close()


async def test_auth_failures_from_one_address_are_throttled_then_the_login_works_again(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble, caplog: pytest.LogCaptureFixture
) -> None:
    window, per_ip = 1.0, 4
    bridge = await bridge_factory(
        upstreams=upstreams(provider), accounts=accounts(),
        smtp={"auth_failure_window": window, "auth_failures_per_ip": per_ip,
              "auth_failures_per_login": 1000},
    )
    caplog.set_level(logging.INFO, logger="bridge")
    invalid_before = auth_failures("invalid")
    port = bridge.smtp_port
    # An unknown login and a wrong password get the same answer: logins cannot be probed.
    unknown = await auth(port, "nobody", "guess")
    wrong = await auth(port, "alerts", "guess")
    assert unknown == wrong and unknown[0] == 535
    throttled_before = auth_failures("throttled_address")

    # Hammer from one address for 2 s, three attempts per connection (the per-connection cap),
    # as fast as the server answers.
    loop = asyncio.get_running_loop()
    started = loop.time()
    refused: list[int] = []
    while loop.time() - started < 2.0:
        client = await RawSmtp.connect(port)
        await client.cmd("EHLO attacker")
        for _ in range(3):
            try:
                refused.append((await client.auth_plain("alerts", "guess"))[0])
            except ConnectionError:
                break
        await client.close()
    elapsed = loop.time() - started
    failures = refused.count(535)
    # Failures the server evaluated: at most per_ip per window (plus the two above).
    assert failures <= per_ip * (elapsed / window + 1), (failures, elapsed)
    assert refused.count(454) > 10 * failures  # the rest never reached a password check
    assert set(refused) == {535, 454}
    assert auth_failures("throttled_address") - throttled_before == refused.count(454)

    # After a quiet window, exactly per_ip failures are evaluated again; then even the right
    # password gets 454 4.7.0, like an unknown login.
    await asyncio.sleep(window)
    assert [(await auth(port, "alerts", "guess"))[0] for _ in range(per_ip)] == [535] * per_ip
    right = await auth(port, "alerts", "pw1")
    assert right[0] == 454 and right[1].startswith("4.7.0"), right
    assert await auth(port, "nobody", "guess") == right
    # One window after the last failure the legitimate login gets in again.
    await asyncio.sleep(window)
    assert (await auth(port, "alerts", "pw1"))[0] == 235

    # Logged: each failure, and each time the window fills (the throttled knocks are only
    # counted, at DEBUG in the log); never a password.
    records = [r for r in caplog.records if r.name.startswith("bridge")]
    fills = [r for r in records if r.getMessage().startswith("SMTP AUTH failures reached")]
    assert fills and all(vars(r)["peer"] == "127.0.0.1" for r in fills)
    failed_lines = len([r for r in records if r.getMessage() == "SMTP AUTH failed"])
    assert failed_lines == auth_failures("invalid") - invalid_before
    assert not any("guess" in str(vars(r)) or "pw1" in str(vars(r)) for r in records)


async def test_a_login_locked_by_outsiders_still_admits_its_allowed_network(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await bridge_factory(
        upstreams=upstreams(provider),
        accounts=accounts(allowed_networks=["127.0.0.2/32"]),
        smtp={"auth_failure_window": 30.0, "auth_failures_per_ip": 1000,
              "auth_failures_per_login": 3},
    )
    port = bridge.smtp_port
    # Failures from several outside addresses lock the login ...
    for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
        assert (await auth(port, "alerts", "guess", source=source))[0] == 535
    before = auth_failures("throttled_login")
    code, text = await auth(port, "alerts", "pw1", source="127.0.0.6")
    assert (code, text.split()[0]) == (454, "4.7.0")
    assert auth_failures("throttled_login") == before + 1
    # ... but the monitoring system inside the account's network is throttled per IP only.
    assert (await auth(port, "alerts", "pw1", source="127.0.0.2"))[0] == 235
    client = await RawSmtp.connect(port, source="127.0.0.2")
    await client.cmd("EHLO monitor")
    assert (await client.auth_plain("alerts", "pw1"))[0] == 235
    assert (await client.cmd("MAIL FROM:<monitor@example.com>"))[0] == 250
    assert (await client.cmd("RCPT TO:<79161234567.alerts@x>"))[0] == 250
    assert (await client.cmd("DATA"))[0] == 354
    await client.write(b"Subject: s\r\n\r\nstill alerting\r\n.\r\n")
    assert (await client.reply())[0] == 250
    await client.close()
    [sms] = await provider.wait_for_accepted(1)
    assert sms.message == "still alerting"


# --- idle floods ----------------------------------------------------------------------------


@pytest.mark.parametrize("cap", ["per_address", "total"])
async def test_an_idle_flood_leaves_room_for_a_client_that_speaks(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble, cap: str
) -> None:
    limits = ({"max_connections_per_ip": 5} if cap == "per_address"
              else {"max_connections": 5, "max_connections_per_ip": 100})
    bridge = await bridge_factory(upstreams=upstreams(provider), accounts=accounts(),
                                  smtp={**limits, "first_command_timeout": 30.0})
    # From this address, or (total cap) from five others.
    sources = ["127.0.0.1"] * 5 if cap == "per_address" else [f"127.0.0.{n}" for n in range(2, 7)]
    silent = [await RawSmtp.connect(bridge.smtp_port, source=source) for source in sources]
    # Every slot is held by a connection that never sent a command; a client that speaks is
    # served at once, the oldest silent connection making room.
    async with asyncio.timeout(3):
        code, text = await send(bridge.smtp_port, mail("alerts@x", "79161234567", "served"))
    assert code == 250, text
    code, text = await silent[0].reply(timeout=3)
    assert code == 421 and text.startswith("4.7.0"), text
    with pytest.raises(ConnectionError):
        await silent[0].reply(timeout=3)
    for client in silent[1:]:  # the younger ones were left alone
        assert (await client.cmd("NOOP"))[0] == 250
        await client.close()
    [sms] = await provider.wait_for_accepted(1)
    assert sms.message == "served"


async def test_a_silent_connection_is_closed_after_the_first_command_timeout(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble
) -> None:
    bridge = await bridge_factory(upstreams=upstreams(provider), accounts=accounts(),
                                  smtp={"timeout": 10.0, "first_command_timeout": 0.3})
    loop = asyncio.get_running_loop()
    silent = await RawSmtp.connect(bridge.smtp_port)
    started = loop.time()
    with pytest.raises(ConnectionError):
        await silent.reply(timeout=3)  # closed long before the 10 s idle timeout
    assert 0.2 < loop.time() - started < 2.0
    await silent.close()
    # A client that spoke is held to the ordinary idle timeout.
    speaking = await RawSmtp.connect(bridge.smtp_port)
    assert (await speaking.cmd("EHLO t"))[0] == 250
    await asyncio.sleep(0.6)
    assert (await speaking.cmd("NOOP"))[0] == 250
    await speaking.close()


# --- a store that hangs on a lock -------------------------------------------------------------


@asynccontextmanager
async def store_locked(store_url: str) -> AsyncIterator[None]:
    """Another connection holds a write lock on the bridge's store until the block ends."""
    if store_url.startswith("sqlite:///"):
        blocker = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        return
    import asyncpg

    conn = await asyncpg.connect(store_url)
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("LOCK TABLE mails IN EXCLUSIVE MODE")  # no INSERT gets through
        try:
            yield
        finally:
            await transaction.rollback()
    finally:
        await conn.close()


@BOTH_STORES
async def test_a_store_hanging_on_a_lock_gets_451_within_the_deadline_and_the_retry_sends_once(
    bridge_factory: BridgeFactory, provider: SmsTrafficDouble, store_url: str
) -> None:
    deadline = 0.5
    bridge = await bridge_factory(upstreams=upstreams(provider), accounts=accounts(),
                                  store={"busy_timeout": 30.0},
                                  smtp={"store_deadline": deadline})
    # No Message-ID: nothing in the store could recognise the retry as the same mail.
    raw = b"From: monitor@example.com\r\nSubject: 79161234567\r\n\r\nlocked out\r\n"
    loop = asyncio.get_running_loop()
    async with store_locked(store_url):
        started = loop.time()
        async with asyncio.timeout(10):
            code, text = await send(bridge.smtp_port, raw, recipients=["alerts@x"])
        assert loop.time() - started < deadline + 1.5
        assert code == 451 and text.startswith("4.3.0"), text
    # The client tries again once the lock is gone: the mail is sent, and only once.
    code, text = await send(bridge.smtp_port, raw, recipients=["alerts@x"])
    assert code == 250, text
    [sms] = await provider.wait_for_accepted(1)
    assert sms.message == "locked out"
    assert len(await bridge.store.list_messages(limit=10)) == 1


# --- malformed mail ---------------------------------------------------------------------------

_B64_HEAD = (b"Subject: 79161234567\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n")


@pytest.mark.parametrize(
    "raw",
    [
        # One character more than a multiple of four: undecodable, the parser returns the
        # base64 text itself.
        _B64_HEAD + b"\r\n0J/RgNC40LLQtdGCX\r\n",
        # Not base64 at all: the parser drops the strange characters and decodes the rest
        # into bytes no charset makes sense of.
        _B64_HEAD + b"\r\n@@@@ this is not base64 at all!\r\n",
        # The same inside a multipart mail.
        b"Subject: 79161234567\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"0J/RgNC40LLQtdGCX\r\n--b--\r\n",
        # A NUL in a header name: the parser ends the header block there, and the rest of
        # the headers would become the SMS text.
        _B64_HEAD.replace(b"MIME-Version", b"X-Bad\x00Name: v\r\nMIME-Version")
        + b"\r\n0J/RgNC40LLQtdGC\r\n",
    ],
    ids=["base64-length", "base64-alphabet", "multipart-base64", "nul-in-header-name"],
)
async def test_malformed_mail_is_refused_with_550_5_6_0_and_nothing_is_queued(
    bridge: Bridge, provider: SmsTrafficDouble, raw: bytes
) -> None:
    code, text = await send(bridge.smtp_port, raw, recipients=["alerts@x"])
    assert code == 550 and text.startswith("5.6.0"), text
    assert len(text) > len("5.6.0 ") + 10  # with a reason
    assert db_rows(bridge, "SELECT COUNT(*) FROM messages") == [(0,)]
    assert provider.requests == []


async def test_base64_with_only_whitespace_defects_is_accepted(
    bridge: Bridge, provider: SmsTrafficDouble
) -> None:
    # Trailing blanks on base64 lines are a defect the parser records, but they are only
    # whitespace (RFC 2045 6.8): the text is intact and the mail is accepted.
    code, text = await send(bridge.smtp_port, _B64_HEAD + b"\r\n0J/RgNC4 \r\n0LLQtdGC\t\r\n",
                            recipients=["alerts@x"])
    assert code == 250, text
    [sms] = await provider.wait_for_accepted(1)
    assert sms.message == "Привет"

"""One answer per short-code ``sms_id``, and one reply-script call, whatever happens.

002 line 1976: "В случае повторного поступления запроса с одним и тем же sms_id необходимо
дать абоненту точно такой же ответ". The first request to record an ``sms_id`` calls the
script; repeats in other processes and instances wait for its stored answer; an answer
(the fallback too) is stored before it is given. Real processes (``serve --workers 2``, two
instances on one PostgreSQL) play the bridge; an HTTP server plays the reply script.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import BOTH_STORES, BridgeFactory
from tests.doubles.receiver import HttpReceiver, Scripted
from tests.pg import fresh_database
from tests.serve_workers import serve_workers
from tests.test_crash_restart import BridgeProcess, free_port

FALLBACK = b"Sorry, try again later"
HIT = {"phone": "79161234567", "message": "code", "shortcode": "4444", "password": "sc-pass",
       "sms_id": "sc-1"}


@pytest.fixture
async def script() -> AsyncIterator[HttpReceiver]:
    # Slow enough that concurrent repeats arrive while the first call is in flight.
    async with HttpReceiver(Scripted(200, b"Your code: 42", delay=0.4)) as receiver:
        yield receiver


def shortcode_config(script: HttpReceiver, budget: float) -> dict[str, object]:
    return {
        "sources": {"st": {"secret": "src"}},
        "shortcodes": {"4444": {"password": "sc-pass",
                                "fallback_reply": FALLBACK.decode()}},
        "reply_scripts": [{"shortcode": "4444", "url": script.url + "/code", "timeout": 2.0}],
        "egress_allowed_networks": ["127.0.0.0/8"],
        "reply_budget": budget,
    }


def write_config(path: Path, store_url: str, script: HttpReceiver, *, budget: float = 3.0,
                 http_port: int | None = None) -> tuple[Path, int]:
    port = http_port or free_port()
    path.write_text("\n".join([
        'log_format = "json"',
        f"[smtp]\nport = {free_port()}", f"[http]\nport = {port}",
        f'[store]\nurl = "{store_url}"',
        '[upstreams.main]\nkind = "dryrun"',
        '[accounts.alerts]\npassword = "pw"\nupstream = "main"',
        f'[inbound]\negress_allowed_networks = ["127.0.0.0/8"]\nreply_budget = {budget}',
        '[inbound.sources.st]\nsecret = "src"',
        f'[inbound.shortcodes."4444"]\npassword = "sc-pass"\n'
        f'fallback_reply = "{FALLBACK.decode()}"',
        f'[[inbound.reply_scripts]]\nshortcode = "4444"\nurl = "{script.url}/code"\n'
        "timeout = 2.0",
    ]) + "\n")
    return path, port


async def hit_all(ports: list[int], count: int, sms_ids: int = 1,
                  pace: float = 0.0) -> list[httpx.Response]:
    """``count`` hits for each of ``sms_ids`` ids, each on a connection of its own, the
    ids in turn; the hits for one id go to each of ``ports`` in turn. ``pace``: seconds
    between the starts of two hits (else all start at once)."""
    limits = httpx.Limits(max_connections=count * sms_ids, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        hits = []
        for n in range(count * sms_ids):
            port = ports[n // sms_ids % len(ports)]
            hits.append(asyncio.create_task(client.get(
                f"http://127.0.0.1:{port}/in/st/src/shortcode",
                params={**HIT, "sms_id": f"sc-{n % sms_ids}"})))
            if pace:
                await asyncio.sleep(pace)
        return await asyncio.gather(*hits)


def answers(responses: list[httpx.Response]) -> set[tuple[int, bytes]]:
    return {(r.status_code, r.content) for r in responses}


def calls_per_sms_id(script: HttpReceiver) -> dict[str, int]:
    calls: dict[str, int] = {}
    for request in script.requests:
        sms_id = parse_qs(urlsplit(request.path_qs).query)["sms_id"][0]
        calls[sms_id] = calls.get(sms_id, 0) + 1
    return calls


async def test_a_fallback_given_after_the_budget_is_the_answer_every_retry_gets(
    bridge_factory: BridgeFactory, tmp_path: Path,
) -> None:
    """The first hit cannot be recorded within the reply budget (another process holds the
    SQLite write lock): it is answered with the fallback, and the provider's retry gets
    the very same bytes, not a new call's answer."""
    async with HttpReceiver(Scripted(200, b"")) as script:  # the script would answer ""
        budget = 0.5
        bridge = await bridge_factory(inbound=shortcode_config(script, budget))
        shortcode = f"http://127.0.0.1:{bridge.http_port}/in/st/src/shortcode"
        locker = sqlite3.connect(tmp_path / "bridge.sqlite3", isolation_level=None)
        async with httpx.AsyncClient(timeout=30) as client:
            locker.execute("BEGIN IMMEDIATE")
            try:
                first = asyncio.create_task(client.get(shortcode, params=HIT))
                # Held past the budget (or until the hit is answered, whichever comes first).
                await asyncio.wait({first}, timeout=budget * 2)
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            first_answer = await first
            retries = [await client.get(shortcode, params=HIT) for _ in range(3)]
    assert first_answer.status_code == 200 and first_answer.content == FALLBACK
    assert answers(retries) == {(200, FALLBACK)}
    assert len(script.requests) <= 1
    [listed] = await bridge.store.list_inbound()
    assert listed["state"] == "answered" and listed["script_error"]


@BOTH_STORES
async def test_two_workers_call_the_script_once_and_answer_alike(
    tmp_path: Path, store_url: str, script: HttpReceiver,
) -> None:
    config, port = write_config(tmp_path / "bridge.toml", store_url, script)
    async with serve_workers(config) as run:
        # The workers share the listening socket: a worker woken by a connection accepts
        # every one already waiting, so a burst goes to one worker. Hits 2 ms apart are
        # shared out between them; 16 ids x 5 hits take 160 ms, less than the first call
        # of an id (0.4 s), so every repeat comes while that call is in flight.
        got = await hit_all([port], 5, sms_ids=16, pace=0.002)
        later = await hit_all([port], 2, sms_ids=16)
    assert answers(got) == answers(later) == {(200, b"Your code: 42")}
    assert calls_per_sms_id(script) == {f"sc-{n}": 1 for n in range(16)}
    recorded_by = {r["pid"] for r in run.lines if r.get("msg") == "inbound sms"}
    assert recorded_by == run.started  # both workers took hits


async def test_two_instances_on_one_postgresql_call_the_script_once(
    tmp_path: Path, script: HttpReceiver,
) -> None:
    async with fresh_database() as store_url:
        first_config, first_port = write_config(tmp_path / "one.toml", store_url, script)
        second_config, second_port = write_config(tmp_path / "two.toml", store_url, script)
        instances = [BridgeProcess(first_config), BridgeProcess(second_config)]
        await instances[0].start()  # the first applies the migrations
        await instances[1].start()
        try:
            got = await hit_all([first_port, second_port], 8, sms_ids=10)
            later = await hit_all([second_port, first_port], 2, sms_ids=10)
        finally:
            for instance in instances:
                await instance.terminate()
    assert answers(got) == answers(later) == {(200, b"Your code: 42")}
    assert calls_per_sms_id(script) == {f"sc-{n}": 1 for n in range(10)}


async def test_a_caller_killed_mid_call_is_replaced_once(tmp_path: Path) -> None:
    """The process that called the script dies before storing its answer: a retry after
    that caller's hold on the call ran out (twice the reply budget) calls the script once
    more, and every later retry gets that answer."""
    budget = 1.0
    async with HttpReceiver(Scripted(200, b"Your code: 42")) as script:
        script.then(Scripted(200, b"never stored", delay=30))  # the first call hangs
        store_url = f"sqlite:///{tmp_path / 'bridge.sqlite3'}"
        config, port = write_config(tmp_path / "bridge.toml", store_url, script,
                                    budget=budget)
        bridge = BridgeProcess(config)
        await bridge.start()
        limits = httpx.Limits(max_keepalive_connections=0)
        try:
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:
                shortcode = f"http://127.0.0.1:{port}/in/st/src/shortcode"
                first = asyncio.create_task(client.get(shortcode, params=HIT))
                [call] = await script.wait_for(1)  # the call is in flight ...
                await bridge.kill()  # ... and its caller dies
                with pytest.raises(httpx.TransportError):
                    await first
                await bridge.start()
                # The dead caller's hold on the call is a time, not an event.
                loop = asyncio.get_running_loop()
                await asyncio.sleep(max(0.0, call.at + 2 * budget + 0.1 - loop.time()))
                retries = [await client.get(shortcode, params=HIT) for _ in range(4)]
        finally:
            await bridge.terminate()
    assert answers(retries) == {(200, b"Your code: 42")}
    assert len(script.requests) == 2

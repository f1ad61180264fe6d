"""``sms-bridge serve --workers 2``: two processes share the ports and the store (SQLite
file or PostgreSQL database)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import asyncpg
import httpx

from tests.conftest import BOTH_STORES
from tests.doubles.receiver import HttpReceiver
from tests.doubles.smstraffic import SmsTrafficDouble
from tests.serve_workers import serve_workers
from tests.test_crash_restart import free_port
from tests.test_smtp_intake import mail, send


async def count(store_url: str, table: str) -> int:
    """Rows in a table of the bridge's store, whichever engine."""
    if store_url.startswith("sqlite:///"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    conn = await asyncpg.connect(store_url)
    try:
        return int(await conn.fetchval(f"SELECT COUNT(*) FROM {table}"))
    finally:
        await conn.close()


@BOTH_STORES
async def test_two_workers_share_the_ports_and_send_each_mail_once(
    tmp_path: Path, store_url: str
) -> None:
    smtp_port, http_port = free_port(), free_port()
    async with SmsTrafficDouble(api_key="1/k") as provider, HttpReceiver() as hook:
        config = tmp_path / "bridge.toml"
        config.write_text("\n".join([
            'log_format = "json"',
            f'[smtp]\nport = {smtp_port}', f'[http]\nport = {http_port}',
            f'[store]\nurl = "{store_url}"',
            "[dispatcher]\npoll_interval = 0.2",
            f'[upstreams.main]\nkind = "smstraffic_v2"\nbase_url = "{provider.url}"\n'
            'api_key = "1/k"',
            '[accounts.alerts]\npassword = "pw"\nupstream = "main"\nmail_rate_per_minute = 0',
            '[inbound]\negress_allowed_networks = ["127.0.0.0/8"]',
            '[inbound.sources.st]\nsecret = "src"',
            f'[inbound.webhooks.crm]\nurl = "{hook.url}/hook"\nsecret = "hook-secret"',
            '[[inbound.routes]]\nwebhooks = ["crm"]',
        ]) + "\n")
        async with serve_workers(config) as run:
            phones = [f"7916123{n:04d}" for n in range(60)]
            replies = await asyncio.gather(*(
                send(smtp_port, mail(f"{phone}.alerts@x", "", f"to {phone}")) for phone in phones
            ))
            assert {code for code, _ in replies} == {250}
            async with httpx.AsyncClient() as client:
                answers = await asyncio.gather(*(
                    client.get(f"http://127.0.0.1:{http_port}/in/st/src/mo",
                               params={"phone": "79161234567", "message": f"m{n % 20}",
                                       "sms_id": f"id-{n % 20}"})
                    for n in range(60)
                ))
            assert {a.status_code for a in answers} == {200}
            accepted = await provider.wait_for_accepted(60)
            await hook.wait_for(20)
    assert sorted(s.phone for s in accepted) == phones
    queued_by = {r["pid"] for r in run.lines if r.get("msg") == "mail queued"}
    assert queued_by <= run.started and len(queued_by) == 2  # the kernel spread the connections
    assert sorted(json.loads(r.body)["data"]["sms_id"] for r in hook.requests) == sorted(
        f"id-{n}" for n in range(20))
    assert await count(store_url, "messages") == 60
    assert await count(store_url, "forward_jobs") == 20

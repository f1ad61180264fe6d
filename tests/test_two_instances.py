"""Two bridge processes on one PostgreSQL store, one of them killed and restarted midway:
every mail is sent once, every inbound sms_id is forwarded once, every replay gets the first
answer. Clients behave like an MTA with two MX hosts: what one instance does not answer
with a final reply is offered to the other."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Coroutine
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.doubles.receiver import HttpReceiver
from tests.doubles.smstraffic import SmsTrafficDouble
from tests.pg import fresh_database
from tests.test_crash_restart import BridgeProcess, free_port
from tests.test_smtp_intake import mail, send

MAILS = 1000
POSTS = 1000  # half of them replays of an sms_id already posted


def write_config(path: Path, store_url: str, smtp_port: int, http_port: int,
                 provider: SmsTrafficDouble, hook: HttpReceiver) -> Path:
    path.write_text("\n".join([
        'log_format = "json"',
        f"[smtp]\nport = {smtp_port}", f"[http]\nport = {http_port}",
        f'[store]\nurl = "{store_url}"',
        "[dispatcher]\npoll_interval = 0.2\nlease_seconds = 5.0\nretry_base = 0.1\n"
        "retry_max = 0.5",
        f'[upstreams.main]\nkind = "smstraffic_v2"\nbase_url = "{provider.url}"\n'
        'api_key = "1/k"\nconcurrency = 16',
        '[accounts.alerts]\npassword = "pw"\nupstream = "main"\nmail_rate_per_minute = 0',
        '[inbound]\negress_allowed_networks = ["127.0.0.0/8"]\nforward_retry_base = 0.1\n'
        "forward_retry_max = 0.5",
        '[inbound.sources.st]\nsecret = "src"',
        f'[inbound.webhooks.crm]\nurl = "{hook.url}/hook"\nsecret = "hook-secret"',
        '[[inbound.routes]]\nwebhooks = ["crm"]',
    ]) + "\n")
    return path


async def test_two_instances_one_killed_midway_send_and_forward_exactly_once(
    tmp_path: Path,
) -> None:
    async with fresh_database() as store_url, \
            SmsTrafficDouble(api_key="1/k") as provider, HttpReceiver() as hook:
        ports = [(free_port(), free_port()), (free_port(), free_port())]
        configs = [write_config(tmp_path / f"bridge{n}.toml", store_url, smtp, http,
                                provider, hook) for n, (smtp, http) in enumerate(ports)]
        instances = [BridgeProcess(config) for config in configs]
        await instances[0].start()  # the first applies the migrations
        await instances[1].start()
        halfway = asyncio.Event()
        done = 0

        async def deliver(index: int) -> None:
            nonlocal done
            phone = f"7916{index:07d}"
            message = mail(f"{phone}.alerts@x", "", f"message {index}",
                           message_id=make_msgid(f"m{index}"))
            for attempt in range(200):
                smtp_port = ports[(index + attempt) % 2][0]
                try:
                    code, _ = await send(smtp_port, message)
                except (OSError, ConnectionError, TimeoutError):
                    code = 0  # that MX is down: try the other
                if code == 250:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"mail {index} was never accepted")
            done += 1
            if done == MAILS // 2:
                halfway.set()

        answers: dict[str, set[tuple[int, bytes]]] = collections.defaultdict(set)

        async def post(client: httpx.AsyncClient, index: int) -> None:
            sms_id = f"s{index // 2}"
            for attempt in range(200):
                http_port = ports[(index + attempt) % 2][1]
                try:
                    answer = await client.get(
                        f"http://127.0.0.1:{http_port}/in/st/src/mo",
                        params={"phone": "79161234567", "message": f"text {sms_id}",
                                "sms_id": sms_id})
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
                    continue
                if answer.status_code < 500:
                    answers[sms_id].add((answer.status_code, answer.content))
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"post {index} was never answered")

        killed_at: list[int] = []

        async def kill_and_restart() -> None:
            await halfway.wait()
            await instances[1].kill()
            killed_at.append(done)
            await instances[1].start()

        semaphore = asyncio.Semaphore(24)

        async def limited(job: Coroutine[Any, Any, None]) -> None:
            async with semaphore:
                await job

        try:
            async with httpx.AsyncClient(timeout=10) as client:
                await asyncio.gather(
                    kill_and_restart(),
                    *(limited(deliver(i)) for i in range(MAILS)),
                    *(limited(post(client, i)) for i in range(POSTS)),
                )
            accepted = await provider.wait_for_accepted(MAILS, timeout=60)
            await hook.wait_for(POSTS // 2, timeout=60)
            conn = await asyncpg.connect(store_url)
            try:
                inbound = await conn.fetchval("SELECT COUNT(*) FROM inbound")
                jobs = await conn.fetchval("SELECT COUNT(*) FROM forward_jobs")
                async with asyncio.timeout(60):
                    # The instances record outcomes after the provider answered.
                    while await conn.fetchval(  # noqa: ASYNC110
                            "SELECT COUNT(*) FROM messages WHERE status = 'sent'") < MAILS:
                        await asyncio.sleep(0.2)
            finally:
                await conn.close()
        finally:
            for instance in instances:
                await instance.terminate()

    assert killed_at and killed_at[0] < MAILS  # the kill came while mails were in flight
    per_phone = collections.Counter(s.phone for s in accepted)
    assert len(per_phone) == MAILS and set(per_phone.values()) == {1}
    assert inbound == POSTS // 2 and jobs == POSTS // 2
    assert all(found == {(200, b"OK")} for found in answers.values())
    assert len(answers) == POSTS // 2
    forwarded = collections.Counter(json.loads(r.body)["data"]["sms_id"] for r in hook.requests)
    assert set(forwarded) == {f"s{n}" for n in range(POSTS // 2)}
    # Webhooks are at least once: a forward in flight when its instance was killed is sent
    # again under the same webhook-id, which the receiver deduplicates.
    by_id = collections.defaultdict(set)
    for request in hook.requests:
        by_id[request.headers["webhook-id"]].add(json.loads(request.body)["data"]["sms_id"])
    assert len(by_id) == POSTS // 2 and all(len(ids) == 1 for ids in by_id.values())

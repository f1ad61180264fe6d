"""Kill -9 of a real ``sms-bridge serve`` process: nothing accepted is lost or sent twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.doubles.receiver import HttpReceiver
from tests.doubles.smstraffic import SmsTrafficDouble
from tests.test_smtp_intake import mail, send


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BridgeProcess:
    """``python -m bridge --config FILE serve`` in a child process."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "--config", str(self.config), "serve",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
        )
        assert self.proc.stderr is not None
        async with asyncio.timeout(20):
            while True:  # the start-up log line is the event that the ports are bound
                line = await self.proc.stderr.readline()
                if not line:
                    raise AssertionError("bridge exited during start-up")
                if b"sms-bridge started" in line:
                    break
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def terminate(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


def write_config(tmp_path: Path, smtp_port: int, upstream: str, *, http_port: int = 0,
                 extra: str = "", **dispatcher: float) -> Path:
    config = tmp_path / "bridge.toml"
    lines = [
        'log_format = "json"',
        "[smtp]", 'host = "127.0.0.1"', f"port = {smtp_port}",
        "[http]", 'host = "127.0.0.1"', f"port = {http_port or free_port()}",
        "[store]", f'url = "sqlite:///{tmp_path / "bridge.sqlite3"}"',
        "[dispatcher]", "poll_interval = 0.2", "retry_base = 0.05", "retry_max = 0.2",
        *(f"{key} = {value}" for key, value in dispatcher.items()),
        "[upstreams.main]", upstream,
        "[accounts.alerts]", 'password = "pw"', 'upstream = "main"',
        extra,
    ]
    config.write_text("\n".join(lines) + "\n")
    return config


def statuses(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "bridge.sqlite3") as conn:
        return [row[0] for row in conn.execute("SELECT status FROM messages ORDER BY id")]


@pytest.fixture
async def processes() -> AsyncIterator[list[BridgeProcess]]:
    started: list[BridgeProcess] = []
    yield started
    for process in started:
        await process.terminate()


async def wait_all_sent(tmp_path: Path, count: int, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        # The bridge is another process: its store is the only thing to watch.
        while statuses(tmp_path).count("sent") < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_mails_queued_before_a_kill_are_sent_once_after_restart(
    tmp_path: Path, processes: list[BridgeProcess]
) -> None:
    provider_port = free_port()  # nobody listens yet: every send attempt is refused
    smtp_port = free_port()
    upstream = (f'kind = "smstraffic_v2"\nbase_url = "http://127.0.0.1:{provider_port}"\n'
                'api_key = "1/k"')
    config = write_config(tmp_path, smtp_port, upstream)
    first = BridgeProcess(config)
    processes.append(first)
    await first.start()
    phones = [f"7916123{n:04d}" for n in range(20)]
    for phone in phones:
        code, text = await send(smtp_port, mail(f"{phone}.alerts@x", "", f"to {phone}"))
        assert code == 250, text
    await first.kill()
    assert set(statuses(tmp_path)) <= {"queued", "sending"}

    async with SmsTrafficDouble(api_key="1/k", port=provider_port) as provider:
        second = BridgeProcess(config)
        processes.append(second)
        await second.start()
        await provider.wait_for_accepted(20)
        await wait_all_sent(tmp_path, 20)
        assert sorted(s.phone for s in provider.accepted) == phones
        assert all(s.message == f"to {s.phone}" for s in provider.accepted)


async def test_kill_during_the_upstream_call_does_not_send_twice(
    tmp_path: Path, processes: list[BridgeProcess]
) -> None:
    smtp_port = free_port()
    async with SmsTrafficDouble(api_key="1/k") as provider:
        upstream = f'kind = "smstraffic_v2"\nbase_url = "{provider.url}"\napi_key = "1/k"'
        config = write_config(tmp_path, smtp_port, upstream, lease_seconds=1.0)
        provider.fail_next(1, "delay", seconds=1.0)
        first = BridgeProcess(config)
        processes.append(first)
        await first.start()
        code, _ = await send(smtp_port, mail("79161234567.alerts@x", "", "exactly once"))
        assert code == 250
        await provider.wait_for_requests(1)  # the call is in flight now
        await first.kill()
        await provider.wait_for_accepted(1)  # the provider finishes the call it had
        assert statuses(tmp_path) == ["sending"]

        second = BridgeProcess(config)
        processes.append(second)
        await second.start()
        await wait_all_sent(tmp_path, 1)
        paths = [r.path for r in provider.requests]
        # The restarted process did not see the first attempt: it looks the SMS up by
        # trackingData first, finds it, and does not send again.
        assert paths == ["/v2/send", "/v2/statuses/list"]
        assert len(provider.accepted) == 1


async def test_kill_before_forwarding_loses_nothing_and_replays_stay_answered(
    tmp_path: Path, processes: list[BridgeProcess]
) -> None:
    hook_port, http_port = free_port(), free_port()  # the webhook receiver is down at first
    inbound = "\n".join([
        "[inbound]", 'egress_allowed_networks = ["127.0.0.0/8"]',
        "forward_retry_base = 0.05", "forward_retry_max = 0.2",
        "[inbound.sources.st]", 'secret = "src"',
        "[inbound.webhooks.crm]", f'url = "http://127.0.0.1:{hook_port}/hook"',
        'secret = "hook-secret"',
        "[[inbound.routes]]", 'webhooks = ["crm"]',
    ])
    config = write_config(tmp_path, free_port(), 'kind = "dryrun"', http_port=http_port,
                          extra=inbound)
    first = BridgeProcess(config)
    processes.append(first)
    await first.start()
    mo = f"http://127.0.0.1:{http_port}/in/st/src/mo"
    params = {"phone": "79161234567", "message": "hello", "sms_id": "k-1"}
    async with httpx.AsyncClient() as client:
        answer = await client.get(mo, params=params)
        assert answer.status_code == 200
        await first.kill()
        async with HttpReceiver(port=hook_port) as hook:
            second = BridgeProcess(config)
            processes.append(second)
            await second.start()
            [call] = await hook.wait_for(1)
            replay = await client.get(mo, params=params)
            assert (replay.status_code, replay.content) == (answer.status_code, answer.content)
            with sqlite3.connect(tmp_path / "bridge.sqlite3") as conn:
                assert conn.execute("SELECT COUNT(*) FROM forward_jobs").fetchone() == (1,)
    assert json.loads(call.body)["data"]["sms_id"] == "k-1"
    assert len(hook.requests) == 1

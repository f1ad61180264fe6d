"""``serve --workers 2``: ``GET /metrics`` lands on either worker, and every scrape shows
the counters of both summed — also after a worker was killed and replaced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.test_crash_restart import free_port
from tests.test_smtp_intake import mail, send


async def scrape(http_port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """One scrape on a new connection (the kernel picks the worker), as samples by name."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        answer = await client.get(f"http://127.0.0.1:{http_port}/metrics")
    assert answer.status_code == 200
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


class Serve:
    """``sms-bridge serve --workers 2`` and what it says on stderr (JSON log records, and
    the supervisor's plain lines)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.records: list[dict[str, object]] = []
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            text = line.decode().rstrip("\n")
            async with self._changed:
                self.lines.append(text)
                try:
                    self.records.append(json.loads(text))
                except json.JSONDecodeError:
                    pass
                self._changed.notify_all()

    def pids(self, msg: str) -> list[object]:
        """The process of each record with this message, in order."""
        return [r["pid"] for r in self.records if r.get("msg") == msg]

    def started(self) -> list[object]:
        return self.pids("sms-bridge started")

    async def wait_for(self, msg: str, count: int) -> None:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.pids(msg)) >= count), 30)

    async def wait_started(self, count: int) -> None:
        await self.wait_for("sms-bridge started", count)

    async def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await self.process.wait()
        await self._reader


async def test_every_scrape_sums_the_workers_counters_and_never_goes_back(
    tmp_path: Path,
) -> None:
    smtp_port, http_port = free_port(), free_port()
    config = tmp_path / "bridge.toml"
    config.write_text("\n".join([
        'log_format = "json"',
        f"[smtp]\nport = {smtp_port}", f"[http]\nport = {http_port}",
        f'[store]\nurl = "sqlite:///{tmp_path / "bridge.sqlite3"}"',
        "[dispatcher]\npoll_interval = 0.2",
        "[workers]\nrestart_delay = 0.1",
        '[upstreams.dryrun]\nkind = "dryrun"',
        '[accounts.alerts]\npassword = "pw-long-enough"\nmail_rate_per_minute = 0',
    ]) + "\n")
    temporary = tmp_path / "tmp"  # where serve makes the directory of its workers' metrics
    temporary.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BRIDGE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(temporary)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "--config", str(config), "serve", "--workers", "2",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env)
    serve = Serve(process)
    try:
        await serve.wait_started(2)
        first = await asyncio.gather(*(
            send(smtp_port, mail(f"7916123{n:04d}.alerts@x", "", f"to {n}")) for n in range(40)))
        assert {code for code, _ in first} == {250}
        await serve.wait_for("mail queued", 40)
        assert len(set(serve.pids("mail queued"))) == 2, "one worker took every connection"

        seen: list[float] = []
        for _ in range(10):
            samples = await scrape(http_port)
            seen.append(total(samples, "bridge_mails_accepted_total"))
            assert total(samples, "bridge_messages_queued_total") == 40
            # A sampled gauge is one series, not one per worker.
            assert len(samples["bridge_queue_depth"]) == 1, samples["bridge_queue_depth"]
        assert seen == [40] * 10
        (metrics_dir,) = temporary.iterdir()
        assert metrics_dir.name.startswith("sms-bridge-metrics-")

        # A worker killed mid-run takes nothing back from the totals.
        victim = serve.started()[0]
        assert isinstance(victim, int)
        os.kill(victim, signal.SIGKILL)
        await serve.wait_started(3)
        for _ in range(6):
            assert total(await scrape(http_port), "bridge_mails_accepted_total") == 40
        second = await asyncio.gather(*(
            send(smtp_port, mail(f"7916124{n:04d}.alerts@x", "", f"to {n}")) for n in range(10)))
        assert {code for code, _ in second} == {250}
        for _ in range(6):
            assert total(await scrape(http_port), "bridge_mails_accepted_total") == 50
    finally:
        await serve.stop()
    assert process.returncode == 0, serve.lines[-5:]
    assert list(temporary.iterdir()) == []  # this run's metrics go with it

"""``sms-bridge serve --workers N`` in a child process, for the tests that need real workers.

The JSON log lines of every worker are collected: tests tell the workers apart by ``pid``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class WorkersRun:
    process: asyncio.subprocess.Process
    started: set[object] = field(default_factory=set)  # pids of the workers that started
    lines: list[dict[str, object]] = field(default_factory=list)  # every log line after


@asynccontextmanager
async def serve_workers(config: Path, workers: int = 2) -> AsyncIterator[WorkersRun]:
    """Start ``serve --workers``, wait until each worker has logged its start (its ports are
    bound then), collect the log lines while the test runs, stop with SIGTERM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "--config", str(config), "serve",
        "--workers", str(workers),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env)
    assert process.stderr is not None
    stderr = process.stderr
    run = WorkersRun(process)
    collector: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(30):
            while len(run.started) < workers:
                line = await stderr.readline()
                assert line, "the workers exited during start-up"
                record = json.loads(line)
                if record["msg"] == "sms-bridge started":
                    run.started.add(record["pid"])

        async def collect() -> None:
            while line := await stderr.readline():
                run.lines.append(json.loads(line))

        collector = asyncio.create_task(collect())
        yield run
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()
        if collector is not None:
            await collector

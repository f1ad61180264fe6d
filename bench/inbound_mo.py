"""Inbound MO benchmark: the bridge's HTTP endpoint against a bare aiohttp handler, same run.

What it measures
    Requests per second, per-request latency (p50/p99 of one ``GET``, body read included) and
    failures (any answer other than ``200 OK``, or an exception) of a provider pushing
    mobile-originated SMS to

    * ``bare``   - an aiohttp ``web.Application`` whose one ``GET /in/{source}/{secret}/mo``
      route answers ``200 OK`` (``AppRunner`` with ``access_log=None``);
    * ``bridge`` - the real :class:`bridge.app.Bridge` answering
      ``GET /in/bench/bench-secret/mo?phone=...&message=...&sms_id=...``. Its source ``bench``
      decodes windows-1251 and its one route forwards every message to a mailbox, so a first
      request commits the inbound row and its forwarding job (SQLite WAL, ``synchronous=FULL``,
      group commit) before it is answered. There is no smarthost: the forwarder fails each job
      and retries it in the background, which is part of the load. A repeated ``sms_id`` is
      answered from the store without committing anything.

    The message is Cyrillic ("Здравствуйте, где мой заказ номер N?") encoded as windows-1251
    and percent-encoded, as the provider sends it. Two modes, each measured against bare:

    * ``unique``   - every request carries a new ``sms_id``;
    * ``replay50`` - every odd request repeats an ``sms_id`` that was already answered 200
      earlier in the run (the warm-up's first, then the measured ones, oldest first), so half
      of the requests are provider retries.

    Then it prints the ratio bridge/bare of req/s per mode: ``unique`` is PASS/FAIL against
    0.4; ``replay50`` is compared with 0.8 for information only. After each bridge phase, once
    the bridge has stopped, its store is read (read-only ``sqlite3``): the ``inbound`` table
    must hold exactly the distinct ``sms_id`` values sent (warm-up included) with the text
    sent, and ``forward_jobs`` the same number of rows; any mismatch is a FAIL.

How
    Each server runs in its own process (``multiprocessing``, start method ``spawn``) on
    127.0.0.1 with an ephemeral port it reports back through a ``Pipe``. The load generator is
    this process: asyncio + one aiohttp ``ClientSession`` (keep-alive), ``C`` workers sharing
    one counter of ``N`` requests. Each server first gets a warm-up (200 requests with new
    ``sms_id`` values, not measured). Each phase stops by itself after ``--phase-timeout``
    seconds (default 120); requests not sent by then count as failures. The pairs bare/bridge
    of every mode are measured ``--rounds`` times (default 3), each with fresh server processes
    and a fresh store, and the medians are compared. The table also shows the CPU used by the
    server process (all its threads) and by the load generator, as a share of the phase's wall
    time: a load generator near 100 % means the client, not the server, set the pace.

    A server's stderr (its JSON log, ``WARNING`` and up, set up as ``sms-bridge serve`` does)
    goes to a file in the round's temporary directory; the report counts its lines by level
    and message (the forwarder's "forwarding failed" warnings are expected).

Run
    python bench/inbound_mo.py [--requests N] [--concurrency C] [--mode unique|replay50|both]
                               [--rounds R] [--warmup W] [--phase-timeout S] [--json]

    defaults: 5000 requests, 50 concurrent workers, both modes, 3 rounds. ``--json`` prints
    one JSON object instead of the table (progress goes to stderr). The exit status is 0 on
    PASS, 1 on FAIL (with ``--mode replay50`` alone only failures and the store check count).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import yarl

HOST = "127.0.0.1"
MODES = ("unique", "replay50")
TARGET_UNIQUE = 0.4  # PASS/FAIL
TARGET_REPLAY = 0.8  # informational
WARMUP_REQUESTS = 200
PHASE_TIMEOUT = 120.0
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 30.0
SOURCE = "bench"
SECRET = "bench-secret"
PHONE = "79161234567"
ROUTE_EMAIL = "desk@example.com"
CHARSET = "cp1251"


def message_text(index: int) -> str:
    return f"Здравствуйте, где мой заказ номер {index}?"


# -- servers (child processes) ------------------------------------------------------------


def _bridge_settings(workdir: str) -> Any:
    from bridge.settings import load_settings

    return load_settings(
        None,
        smtp={"port": 0},
        http={"port": 0, "host": HOST},
        store={"url": f"sqlite:///{workdir}/bench.sqlite3"},
        log_level="WARNING",
        log_format="json",
        inbound={
            "sources": {SOURCE: {"secret": SECRET}},
            "routes": [{"emails": [ROUTE_EMAIL]}],
        },
    )


async def _start_bare() -> tuple[Any, int]:
    from aiohttp import web

    async def mo(request: web.Request) -> web.Response:
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_get("/in/{source}/{secret}/mo", mo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def _serve(kind: str, conn: multiprocessing.connection.Connection, workdir: str) -> None:
    from bridge.logs import setup_logging

    setup_logging("WARNING", "json")  # as ``sms-bridge serve`` does with these settings
    loop = asyncio.get_running_loop()
    bridge: Any = None
    runner: Any = None
    if kind == "bridge":
        from bridge.app import Bridge

        bridge = Bridge(_bridge_settings(workdir))
        await bridge.start()
        port = bridge.http_port
    else:
        runner, port = await _start_bare()
    conn.send(("ready", port))
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "cpu":  # all threads of this process (the SQLite writer included)
            conn.send(("cpu", time.process_time()))
        elif command == "stop":
            break
    if bridge is not None:
        await bridge.stop()
    if runner is not None:
        await runner.cleanup()
    conn.send(("stopped", None))


def _server_main(kind: str, conn: multiprocessing.connection.Connection, workdir: str) -> None:
    # The server's log goes to a file: thousands of expected forwarder warnings would
    # otherwise drown the report. Writing it is still part of the server's work.
    fd = os.open(Path(workdir) / f"{kind}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        asyncio.run(_serve(kind, conn, workdir))
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))
        raise


class ServerProcess:
    """One server in a spawned child process, driven through a Pipe."""

    def __init__(self, kind: str, workdir: str) -> None:
        self.kind = kind
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_server_main, args=(kind, child, workdir), name=f"bench-{kind}", daemon=True
        )
        self.process.start()
        child.close()
        self.port = int(self._expect("ready", START_TIMEOUT))

    def _expect(self, tag: str, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.kind} server: no {tag!r} within {timeout:.0f} s")
        got, value = self.conn.recv()
        if got == "error":
            raise RuntimeError(f"{self.kind} server failed:\n{value}")
        if got != tag:
            raise RuntimeError(f"{self.kind} server: expected {tag!r}, got {got!r}")
        return value

    def cpu(self) -> float:
        self.conn.send("cpu")
        return float(self._expect("cpu", 10.0))

    def stop(self) -> None:
        try:
            if self.process.is_alive():
                self.conn.send("stop")
                self._expect("stopped", 60.0)
        finally:
            self.process.join(15.0)
            if self.process.is_alive():  # our own child only
                self.process.terminate()
                self.process.join(5.0)
            self.conn.close()


# -- load generator -----------------------------------------------------------------------


@dataclass
class PhaseResult:
    mode: str
    server: str
    requests: int
    concurrency: int
    ok: int = 0
    failures: int = 0
    replays: int = 0
    elapsed_s: float = 0.0
    req_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    timed_out: bool = False
    warmup_failures: int = 0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    log_lines: dict[str, int] = field(default_factory=dict)


class IdPlan:
    """The ``sms_id`` of every request of one server, warm-up and measurement.

    ``sent`` maps each distinct id sent to its text; ``answered`` holds ids answered 200 and
    not replayed yet, oldest first: a replay takes the oldest, so every replay repeats an id
    whose first request has already been answered.
    """

    def __init__(self, run: str) -> None:
        self.run = run
        self.sent: dict[str, str] = {}
        self.answered: collections.deque[str] = collections.deque()
        self.new_answer: asyncio.Event | None = None

    def start(self) -> None:
        """At the start of each phase: an event bound to this phase's loop."""
        self.new_answer = asyncio.Event()

    def new(self, phase: str, index: int) -> str:
        sms_id = f"{self.run}-{phase}-{index}"
        self.sent[sms_id] = message_text(index)
        return sms_id

    async def replay(self) -> str:
        while not self.answered:  # only without warm-up: wait for a first answer
            assert self.new_answer is not None
            self.new_answer.clear()
            await self.new_answer.wait()
        return self.answered.popleft()

    def done(self, sms_id: str) -> None:
        self.answered.append(sms_id)
        if self.new_answer is not None:
            self.new_answer.set()


def _url(port: int, sms_id: str, text: str) -> yarl.URL:
    message = quote_from_bytes(text.encode(CHARSET), safe="")
    return yarl.URL(
        f"http://{HOST}:{port}/in/{SOURCE}/{SECRET}/mo"
        f"?phone={PHONE}&message={message}&sms_id={sms_id}",
        encoded=True,  # sent byte for byte as built
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


async def _load(
    port: int,
    plan: IdPlan,
    server: str,
    mode: str,
    phase: str,
    requests: int,
    concurrency: int,
    phase_timeout: float,
) -> PhaseResult:
    if requests < 1:
        return PhaseResult(mode=mode, server=server, requests=0, concurrency=concurrency)
    latencies: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    counter = iter(range(requests))
    replays = 0
    plan.start()

    async def one(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal replays
        replay = mode == "replay50" and index % 2 == 1
        if replay:
            sms_id = await plan.replay()
            replays += 1
        else:
            sms_id = plan.new(phase, index)
        url = _url(port, sms_id, plan.sent[sms_id])
        started = time.perf_counter()
        try:
            async with session.get(url) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
            return
        elapsed = time.perf_counter() - started
        if status != 200 or body != b"OK":
            failures[f"HTTP {status} {body[:80]!r}"[:120]] += 1
            return
        latencies.append(elapsed)
        if not replay:
            plan.done(sms_id)

    async def worker(session: aiohttp.ClientSession) -> None:
        for index in counter:
            await one(session, index)

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu0 = time.process_time()
        started = time.perf_counter()
        tasks = [asyncio.create_task(worker(session)) for _ in range(min(concurrency, requests))]
        _done, pending = await asyncio.wait(tasks, timeout=phase_timeout)
        elapsed = time.perf_counter() - started
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                failures[f"worker crashed: {task.exception()!r}"[:120]] += 1
        client_cpu = time.process_time() - cpu0

    ok = len(latencies)
    counted = ok + sum(failures.values())
    if counted < requests:  # never attempted (phase timeout) or lost with a crashed worker
        failures["not sent: phase timeout or worker crash"] += requests - counted
    latencies.sort()
    return PhaseResult(
        mode=mode,
        server=server,
        requests=requests,
        concurrency=concurrency,
        ok=ok,
        failures=max(0, requests - ok),
        replays=replays,
        elapsed_s=elapsed,
        req_per_s=ok / elapsed if elapsed > 0 else 0.0,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] * 1000 if latencies else 0.0),
        timed_out=bool(pending),
        client_cpu_s=client_cpu,
        failure_kinds=dict(failures.most_common(10)),
    )


def _log_summary(path: Path) -> dict[str, int]:
    """Lines of a server's log by level and message."""
    counts: collections.Counter[str] = collections.Counter()
    with contextlib.suppress(FileNotFoundError), path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
                counts[f"{entry.get('level')}: {entry.get('msg')}"[:100]] += 1
            except (ValueError, AttributeError):
                counts[f"(not JSON) {line.strip()}"[:100]] += 1
    return dict(counts.most_common(10))


def _run_server(
    kind: str, mode: str, args: argparse.Namespace, workdir: Path, run: str
) -> tuple[PhaseResult, IdPlan]:
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"[{mode} {kind}] starting server process")
    server = ServerProcess(kind, str(workdir))
    plan = IdPlan(run)
    try:
        log(f"[{mode} {kind}] listening on {HOST}:{server.port}; warm-up {args.warmup} requests")
        warm = asyncio.run(
            _load(
                server.port,
                plan,
                kind,
                "unique",
                "w",
                args.warmup,
                args.concurrency,
                args.phase_timeout,
            )
        )
        if warm.failures:
            log(f"[{mode} {kind}] warm-up failures: {warm.failures} {warm.failure_kinds}")
        cpu0 = server.cpu()
        log(f"[{mode} {kind}] measuring {args.requests} requests")
        result = asyncio.run(
            _load(
                server.port,
                plan,
                kind,
                mode,
                "m",
                args.requests,
                args.concurrency,
                args.phase_timeout,
            )
        )
        result.server_cpu_s = server.cpu() - cpu0
        kinds = collections.Counter(result.failure_kinds) + collections.Counter(warm.failure_kinds)
        result.failure_kinds = dict(kinds)
        result.warmup_failures = warm.failures
    finally:
        server.stop()
    result.log_lines = _log_summary(workdir / f"{kind}.log")
    log(f"[{mode} {kind}] {result.req_per_s:.0f} req/s, {result.failures} failures")
    return result, plan


# -- store check --------------------------------------------------------------------------


@dataclass
class StoreCheck:
    expected: int  # distinct sms_id values sent, warm-up included
    inbound: int = 0
    forward_jobs: int = 0
    missing: int = 0  # sent, not stored
    unexpected: int = 0  # stored, never sent
    wrong_text: int = 0  # stored text differs from the text sent (charset handling)
    charset_errors: int = 0
    jobs_by_status: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.inbound == self.expected == self.forward_jobs
            and not (self.missing or self.unexpected or self.wrong_text or self.charset_errors)
        )

    def describe(self) -> str:
        if self.error is not None:
            return f"store unreadable: {self.error}"
        status = ", ".join(f"{k}={v}" for k, v in sorted(self.jobs_by_status.items()))
        text = (
            f"inbound {self.inbound}, forward_jobs {self.forward_jobs} "
            f"(expected {self.expected} distinct sms_id); jobs: {status}"
        )
        if self.missing or self.unexpected or self.wrong_text or self.charset_errors:
            text += (
                f"; missing {self.missing}, unexpected {self.unexpected}, "
                f"wrong text {self.wrong_text}, charset errors {self.charset_errors}"
            )
        return text


def _check_store(db: Path, sent: dict[str, str]) -> StoreCheck:
    check = StoreCheck(expected=len(sent))
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        check.error = str(exc)
        return check
    try:
        check.inbound = int(conn.execute("SELECT COUNT(*) FROM inbound").fetchone()[0])
        check.forward_jobs = int(conn.execute("SELECT COUNT(*) FROM forward_jobs").fetchone()[0])
        check.jobs_by_status = dict(
            conn.execute("SELECT status, COUNT(*) FROM forward_jobs GROUP BY status")
        )
        stored: dict[str, tuple[str, int]] = {
            sms_id: (text, charset_error)
            for sms_id, text, charset_error in conn.execute(
                "SELECT sms_id, text, charset_error FROM inbound WHERE source = ?", (SOURCE,)
            )
        }
    except sqlite3.Error as exc:
        check.error = str(exc)
        return check
    finally:
        conn.close()
    check.missing = len(sent.keys() - stored.keys())
    check.unexpected = len(stored.keys() - sent.keys())
    for sms_id, (text, charset_error) in stored.items():
        if sms_id in sent and text != sent[sms_id]:
            check.wrong_text += 1
        check.charset_errors += bool(charset_error)
    return check


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- report -------------------------------------------------------------------------------


@dataclass
class Round:
    number: int
    mode: str
    bare: PhaseResult
    bridge: PhaseResult
    store: StoreCheck

    @property
    def ratio(self) -> float:
        return self.bridge.req_per_s / self.bare.req_per_s if self.bare.req_per_s else 0.0


def _median_result(results: list[PhaseResult]) -> PhaseResult:
    first = results[0]
    return PhaseResult(
        mode=first.mode,
        server=first.server,
        requests=first.requests,
        concurrency=first.concurrency,
        ok=sum(r.ok for r in results),
        failures=sum(r.failures for r in results),
        replays=sum(r.replays for r in results),
        elapsed_s=statistics.median(r.elapsed_s for r in results),
        req_per_s=statistics.median(r.req_per_s for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        max_ms=max(r.max_ms for r in results),
        timed_out=any(r.timed_out for r in results),
        warmup_failures=sum(r.warmup_failures for r in results),
        server_cpu_s=statistics.median(r.server_cpu_s for r in results),
        client_cpu_s=statistics.median(r.client_cpu_s for r in results),
    )


def _row(label: str, r: PhaseResult) -> str:
    srv = 100 * r.server_cpu_s / r.elapsed_s if r.elapsed_s else 0.0
    cli = 100 * r.client_cpu_s / r.elapsed_s if r.elapsed_s else 0.0
    return (
        f"{r.mode:<9} {r.server:<7} {label:>5} {r.requests:>8} {r.concurrency:>5} "
        f"{r.req_per_s:>9.1f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.failures:>8} "
        f"{srv:>8.0f} {cli:>8.0f}"
    )


def _table(rounds: list[Round], medians: dict[str, tuple[PhaseResult, PhaseResult]]) -> str:
    header = (
        f"{'mode':<9} {'server':<7} {'round':>5} {'requests':>8} {'conc':>5} {'req/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'failures':>8} {'srv cpu%':>8} {'cli cpu%':>8}"
    )
    lines = [header, "-" * len(header)]
    for mode, (bare, bridge) in medians.items():
        mode_rounds = [rnd for rnd in rounds if rnd.mode == mode]
        for rnd in mode_rounds:
            lines.append(_row(str(rnd.number), rnd.bare))
            lines.append(_row(str(rnd.number), rnd.bridge))
        if len(mode_rounds) > 1:
            lines.append(_row("med", bare))
            lines.append(_row("med", bridge))
        lines.append("-" * len(header))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=5000, help="measured requests per server")
    parser.add_argument("--concurrency", type=int, default=50, help="concurrent workers")
    parser.add_argument(
        "--mode",
        choices=(*MODES, "both"),
        default="both",
        help="unique: every sms_id new; replay50: every odd request repeats an answered one",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="bare/bridge pairs per mode, each with fresh processes; medians are compared",
    )
    parser.add_argument("--warmup", type=int, default=WARMUP_REQUESTS, help="warm-up requests")
    parser.add_argument(
        "--phase-timeout",
        type=float,
        default=PHASE_TIMEOUT,
        help="hard cap in seconds for each load phase",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--requests, --concurrency and --rounds must be >= 1, --warmup >= 0")
    if args.phase_timeout <= 0:
        parser.error("--phase-timeout must be > 0")
    modes = MODES if args.mode == "both" else (args.mode,)

    run = uuid.uuid4().hex[:12]
    rounds: list[Round] = []
    for number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="inbound-mo-") as tmpdir:
            log(f"round {number}/{args.rounds}")
            for mode in modes:
                workdir = Path(tmpdir) / mode
                bare, _ = _run_server("bare", mode, args, workdir / "bare", f"{run}-{number}")
                bridge, plan = _run_server(
                    "bridge", mode, args, workdir / "bridge", f"{run}-{number}"
                )
                store = _check_store(workdir / "bridge" / "bench.sqlite3", plan.sent)
                log(f"[{mode} bridge] store: {store.describe()}")
                rounds.append(Round(number, mode, bare, bridge, store))

    medians: dict[str, tuple[PhaseResult, PhaseResult]] = {}
    ratios: dict[str, float] = {}
    for mode in modes:
        mode_rounds = [rnd for rnd in rounds if rnd.mode == mode]
        bare = _median_result([rnd.bare for rnd in mode_rounds])
        bridge = _median_result([rnd.bridge for rnd in mode_rounds])
        medians[mode] = (bare, bridge)
        ratios[mode] = bridge.req_per_s / bare.req_per_s if bare.req_per_s else 0.0

    reasons: list[str] = []
    if "unique" in ratios and ratios["unique"] < TARGET_UNIQUE:
        reasons.append(f"unique: ratio {ratios['unique']:.3f} < target {TARGET_UNIQUE}")
    for mode, pair in medians.items():
        for r in pair:
            if r.failures or r.warmup_failures:
                reasons.append(
                    f"{mode} {r.server}: {r.failures} failures (+{r.warmup_failures} in warm-up)"
                )
    for rnd in rounds:
        if not rnd.store.ok:
            reasons.append(f"round {rnd.number} {rnd.mode}: {rnd.store.describe()}")
    verdict = "FAIL" if reasons else "PASS"

    if args.json:
        print(
            json.dumps(
                {
                    "rounds": [
                        {
                            "round": rnd.number,
                            "mode": rnd.mode,
                            "bare": asdict(rnd.bare),
                            "bridge": asdict(rnd.bridge),
                            "ratio": round(rnd.ratio, 4),
                            "bridge_store": {**asdict(rnd.store), "ok": rnd.store.ok},
                        }
                        for rnd in rounds
                    ],
                    "median": {
                        mode: {"bare": asdict(bare), "bridge": asdict(bridge)}
                        for mode, (bare, bridge) in medians.items()
                    },
                    "ratios": {mode: round(value, 4) for mode, value in ratios.items()},
                    "targets": {"unique": TARGET_UNIQUE, "replay50 (informational)": TARGET_REPLAY},
                    "requests": args.requests,
                    "concurrency": args.concurrency,
                    "warmup": args.warmup,
                    "verdict": verdict,
                    "reasons": reasons,
                    "cpus": os.cpu_count(),
                },
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        print(_table(rounds, medians))
        for rnd in rounds:
            for r in (rnd.bare, rnd.bridge):
                for kind, count in r.failure_kinds.items():
                    print(f"  round {rnd.number} {rnd.mode} {r.server} failure x{count}: {kind}")
        for mode, ratio in ratios.items():
            per_round = ", ".join(f"{rnd.ratio:.3f}" for rnd in rounds if rnd.mode == mode)
            if mode == "unique":
                met = "PASS" if ratio >= TARGET_UNIQUE else "FAIL"
                target = f"target: >= {TARGET_UNIQUE}   {met}"
            else:
                above = "met" if ratio >= TARGET_REPLAY else "not met"
                target = f"informational target: >= {TARGET_REPLAY} ({above})"
            print(
                f"{mode:<9} ratio bridge/bare req/s: {ratio:.3f} (per round: {per_round})   "
                f"{target}"
            )
        for rnd in rounds:
            print(
                f"round {rnd.number} {rnd.mode} bridge store: {rnd.store.describe()}   "
                f"{'ok' if rnd.store.ok else 'MISMATCH'}"
            )
        for rnd in rounds:
            lines = ", ".join(f"{n} x {msg}" for msg, n in rnd.bridge.log_lines.items())
            print(f"round {rnd.number} {rnd.mode} bridge log: {lines or 'empty'}")
        print(f"verdict: {verdict}")
        for reason in reasons:
            print(f"  FAIL reason: {reason}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

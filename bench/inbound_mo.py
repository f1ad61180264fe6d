"""Inbound MO benchmark: the bridge's HTTP endpoint against a bare aiohttp handler, same run.

What it measures
    Requests per second, latency (p50/p99) and failures (any answer other than ``200``, or
    a socket error) of a provider pushing mobile-originated SMS as form POSTs
    (``phone=...&message=...&sms_id=...``, ``application/x-www-form-urlencoded``) to

    * ``bare``   - a stock aiohttp ``web.Application`` whose handler reads the form
      (``await request.post()``) and answers ``200 OK`` (``AppRunner``, ``access_log=None``);
    * ``bridge`` - the real :class:`bridge.app.Bridge` at ``POST /in/bench/bench-secret/mo``.
      Its source ``bench`` decodes windows-1251 and its one route forwards every message to a
      mailbox, so a first request commits the inbound row and its forwarding job (SQLite WAL,
      ``synchronous=FULL``, group commit) before it is answered. There is no smarthost: the
      forwarding jobs wait in the store. A repeated ``sms_id`` is answered from the
      process's memory of answers (or, by a worker that did not answer it first, from the
      store) without committing anything.

    Both servers run on the same event loop (``--loop asyncio`` or ``uvloop``), so the ratio
    compares like with like. The message is Cyrillic ("Здравствуйте, где мой заказ номер
    N?") encoded as windows-1251 and percent-encoded, as the provider sends it. Modes:

    * ``unique`` - every request carries a new ``sms_id``; target bridge/bare >= 0.5;
    * ``replay`` - every request repeats an ``sms_id`` answered 200 in the warm-up (cycling
      through them): the provider-retry path alone; target >= 0.9.

    After each bridge phase, once the bridge has stopped, its store is read (read-only,
    SQLite or PostgreSQL): every ``inbound`` row must carry the text its ``sms_id`` was sent
    with, with one ``forward_jobs`` row each, and their number must be the warm-up's plus
    the requests answered 200 (plus at most the requests still in flight when the load
    stopped); replay adds none.

How
    Each server runs in its own process (``multiprocessing`` ``spawn``) on 127.0.0.1, pinned
    to core 0 (``--no-pin`` to leave it), and reports its CPU time (all threads) before and
    after the measured phase: ``cpu us/req`` is what the server spent per answered request,
    whichever side set the pace. The load generator, pinned to core 1, is

    * ``--load wrk`` (default when ``wrk`` is installed): ``wrk -t1 -cC -dD --latency -s
      bench/mo_post.lua URL -- MODE RUN PREFIX REPLAYS`` (one thread, ``C`` keep-alive
      connections, ``D`` seconds; the Lua script builds each form body);
    * ``--load python``: asyncio + one aiohttp ``ClientSession``, ``C`` workers sharing one
      counter of ``N`` requests (about 10x more CPU per request than wrk: it paces a fast
      server).

    The load generator's CPU is shown as a share of the phase's wall time (``cli cpu%``); a
    phase where it passed 80 % of its core is marked ``paced`` (the load, not the server, may
    have set the rate). Each server first gets a warm-up (``--warmup`` requests with new
    ``sms_id`` values, by the Python client, not measured). The pairs bare/bridge of each
    mode are measured ``--rounds`` times (default 3), alternating, each with fresh server
    processes and a fresh store, and the medians are compared.

    A server's stderr (its JSON log, ``WARNING`` and up, set up as ``sms-bridge serve`` does)
    goes to a file in the round's temporary directory; the report counts its lines by level
    and message.

Run
    python bench/inbound_mo.py [--load wrk|python] [--duration S] [--requests N]
                               [--concurrency C] [--mode unique|replay|all] [--rounds R]
                               [--warmup W] [--loop asyncio|uvloop] [--no-pin]
                               [--phase-timeout S] [--json] [--store sqlite|postgres]
                               [--store-url URL] [--workers N]

    defaults: wrk for 3 s per phase (python: 5000 requests), 50 connections, both modes, 3
    rounds, asyncio, pinned, a fresh SQLite file per phase (``--store postgres``: a fresh
    PostgreSQL database per phase, dropped afterwards). ``--workers N``: the bridge as N
    processes sharing one fixed port (SO_REUSEPORT; not pinned); the bare baseline stays one
    process. ``--json`` prints one JSON object instead of the table (progress goes to
    stderr). The exit status is 0 on PASS, 1 on FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import _common
import aiohttp
from _common import HOST, log

MODES = ("unique", "replay")
TARGET_UNIQUE = 0.5  # PASS/FAIL
TARGET_REPLAY = 0.9  # PASS/FAIL, mode "replay"
TARGETS: dict[str, float | None] = {"unique": TARGET_UNIQUE, "replay": TARGET_REPLAY}
WARMUP_REQUESTS = 200
DURATION = 3  # seconds of each wrk phase
LUA = Path(__file__).resolve().parent / "mo_post.lua"
PHASE_TIMEOUT = 120.0
REQUEST_TIMEOUT = 30.0
SOURCE = "bench"
SECRET = "bench-secret"
PHONE = "79161234567"
ROUTE_EMAIL = "desk@example.com"
CHARSET = "cp1251"


TEXT_PREFIX = "Здравствуйте, где мой заказ номер "


def message_text(index: int) -> str:
    return f"{TEXT_PREFIX}{index}?"


def text_of(sms_id: str) -> str | None:
    """The text a request with ``sms_id`` carried (its trailing number), by either load."""
    number = sms_id.rpartition("-")[2]
    return message_text(int(number)) if number.isdigit() else None


def form_body(sms_id: str, text: str) -> bytes:
    message = quote_from_bytes(text.encode(CHARSET), safe="")
    return f"phone={PHONE}&message={message}&sms_id={sms_id}".encode("ascii")


# -- servers (child processes) ------------------------------------------------------------


def _bridge_settings(url: str, port: int = 0) -> Any:
    from bridge.settings import load_settings

    return load_settings(
        None,
        smtp={"port": 0},
        http={"port": port, "host": HOST},
        store={"url": url},
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
        await request.post()  # the form read and decoded, as a stock handler does
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_post("/in/{source}/{secret}/mo", mo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def _start(kind: str, url: str, port: int = 0) -> _common.Started:
    """In the child: the bare server or the bridge (see ``_common.ServerProcess``). A bridge
    given a fixed ``port`` binds it with ``SO_REUSEPORT`` (one of ``--workers N``)."""
    _common.setup_server_logging()
    if kind == "bridge":
        from bridge.app import Bridge

        bridge = Bridge(_bridge_settings(url, port), reuse_port=port != 0)
        await bridge.start()
        return bridge.http_port, bridge.stop, {}
    runner, port = await _start_bare()
    return port, runner.cleanup, {}


# -- load generator -----------------------------------------------------------------------


@dataclass(kw_only=True)
class PhaseResult(_common.PhaseResult):
    mode: str
    requests: int
    replays: int = 0
    req_per_s: float = 0.0
    log_lines: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.req_per_s


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


def _url(port: int) -> str:
    return f"http://{HOST}:{port}/in/{SOURCE}/{SECRET}/mo"


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


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
    url = _url(port)

    async def one(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal replays
        replay = mode == "replay"
        if replay:
            sms_id = await plan.replay()
            replays += 1
        else:
            sms_id = plan.new(phase, index)
        body = form_body(sms_id, plan.sent[sms_id])
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=FORM) as response:
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
        plan.done(sms_id)  # "replay" cycles through the warm-up's ids

    async def worker(session: aiohttp.ClientSession) -> None:
        for index in counter:
            await one(session, index)

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        workers = await _common.run_workers(
            lambda: worker(session), min(concurrency, requests), phase_timeout, failures
        )
    common = _common.summarize(latencies, failures, requests, workers)
    return PhaseResult(
        mode=mode,
        server=server,
        requests=requests,
        concurrency=concurrency,
        replays=replays,
        req_per_s=common["ok"] / workers.elapsed_s if workers.elapsed_s > 0 else 0.0,
        **common,
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


def wrk_command(port: int, mode: str, run: str, args: argparse.Namespace) -> list[str]:
    """The wrk command line of one measured phase (printed in the report)."""
    prefix = quote_from_bytes(TEXT_PREFIX.encode(CHARSET), safe="")
    return [
        "wrk", "-t1", f"-c{args.concurrency}", f"-d{args.duration:g}s", "--latency",
        "--timeout", f"{REQUEST_TIMEOUT:g}s", "-s", str(LUA), _url(port), "--",
        mode, run, prefix, str(max(1, args.warmup)),
    ]  # fmt: skip


def _wrk_phase(port: int, server: str, mode: str, run: str,
               args: argparse.Namespace) -> PhaseResult:
    """One measured phase driven by wrk (this process's child, so on the load core)."""
    command = wrk_command(port, mode, run, args)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=args.duration + args.phase_timeout)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    summary: dict[str, int] = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            summary = json.loads(line)
    if done.returncode != 0 or not summary:
        raise RuntimeError(f"wrk failed (exit {done.returncode}): {done.stderr.strip()[:300]}")
    requests = summary["requests"]
    errors = sum(summary[k] for k in ("connect", "read", "write", "timeout"))
    failed = summary["non2xx"] + errors
    kinds = {k: summary[k] for k in ("non2xx", "connect", "read", "write", "timeout")
             if summary[k]}
    duration = summary["duration_us"] / 1e6
    return PhaseResult(
        mode=mode, server=server, requests=requests, concurrency=args.concurrency,
        replays=requests if mode == "replay" else 0,
        req_per_s=(requests - failed) / duration if duration else 0.0,
        ok=requests - failed, failures=failed, elapsed_s=duration,
        p50_ms=summary["p50_us"] / 1000, p99_ms=summary["p99_us"] / 1000,
        max_ms=summary["max_us"] / 1000, client_cpu_s=cpu * duration / elapsed,
        failure_kinds=kinds,
    )  # fmt: skip


def _run_server(
    kind: str, mode: str, args: argparse.Namespace, workdir: Path, run: str, url: str
) -> tuple[PhaseResult, IdPlan]:
    workdir.mkdir(parents=True, exist_ok=True)
    label = f"{mode} {kind}"
    workers = args.workers if kind == "bridge" else 1
    log(f"[{label}] starting {workers} server process(es)")
    port = _common.free_port() if workers > 1 else 0
    server = _common.ServerGroup(
        kind,
        _start,
        lambda index: (kind, url, port),
        workers,
        log_path_of=lambda index: workdir / f"{kind}.log",  # O_APPEND: one file for all
    )
    plan = IdPlan(run)

    async def load(warmup: bool) -> PhaseResult:
        phase_mode, phase, requests = (
            ("unique", "w", args.warmup) if warmup else (mode, "m", args.requests)
        )
        return await _load(
            server.port,
            plan,
            kind,
            phase_mode,
            phase,
            requests,
            args.concurrency,
            args.phase_timeout,
        )

    try:
        if args.load == "wrk":
            log(f"[{label}] listening on {HOST}:{server.port}; warm-up {args.warmup} requests")
            warm = _common.run_on(_common.LOAD_LOOP, load(True))
            cpu0 = server.cpu()
            log(f"[{label}] wrk for {args.duration:g} s")
            result = _wrk_phase(server.port, kind, mode, run, args)
            result.server_cpu_s = server.cpu() - cpu0
            result.warmup_failures = warm.failures
            result.failure_kinds = {**warm.failure_kinds, **result.failure_kinds}
        else:
            result = _common.warm_and_measure(
                server, label, "requests", args.warmup, args.requests, load
            )
    finally:
        server.stop()
    result.log_lines = _log_summary(workdir / f"{kind}.log")
    log(f"[{label}] {result.req_per_s:.0f} req/s, {result.failures} failures, "
        f"load cpu {result.client_cpu_pct:.0f} %")
    return result, plan


# -- store check --------------------------------------------------------------------------


@dataclass
class StoreCheck:
    expected_min: int  # distinct sms_id values answered 200, warm-up included
    expected_max: int  # ... plus those sent and not answered (in flight at the end)
    inbound: int = 0
    forward_jobs: int = 0
    missing: int = 0  # answered, not stored (known with the Python load only)
    unexpected: int = 0  # stored, never sent
    wrong_text: int = 0  # stored text differs from the text sent (charset handling)
    charset_errors: int = 0
    jobs_by_status: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.expected_min <= self.inbound <= self.expected_max
            and self.inbound == self.forward_jobs
            and not (self.missing or self.unexpected or self.wrong_text or self.charset_errors)
        )

    def describe(self) -> str:
        if self.error is not None:
            return f"store unreadable: {self.error}"
        status = ", ".join(f"{k}={v}" for k, v in sorted(self.jobs_by_status.items()))
        expected = (str(self.expected_min) if self.expected_min == self.expected_max
                    else f"{self.expected_min}..{self.expected_max}")
        text = (
            f"inbound {self.inbound}, forward_jobs {self.forward_jobs} "
            f"(expected {expected} distinct sms_id); jobs: {status}"
        )
        if self.missing or self.unexpected or self.wrong_text or self.charset_errors:
            text += (
                f"; missing {self.missing}, unexpected {self.unexpected}, "
                f"wrong text {self.wrong_text}, charset errors {self.charset_errors}"
            )
        return text


def _check_store(url: str, run: str, answered: set[str], expected_min: int,
                 expected_max: int) -> StoreCheck:
    """``answered``: ids known to be answered 200 (all of them with the Python load, the
    warm-up's with wrk); every stored id must be of this run, with its text."""
    check = StoreCheck(expected_min=expected_min, expected_max=expected_max)
    try:
        with _common.connect_readonly(url) as reader:
            check.inbound = int(reader.scalar("SELECT COUNT(*) FROM inbound"))
            check.forward_jobs = int(reader.scalar("SELECT COUNT(*) FROM forward_jobs"))
            check.jobs_by_status = dict(
                reader.rows("SELECT status, COUNT(*) FROM forward_jobs GROUP BY status")
            )
            stored: dict[str, tuple[str, int]] = {
                sms_id: (text, charset_error)
                for sms_id, text, charset_error in reader.rows(
                    "SELECT sms_id, text, charset_error FROM inbound WHERE source = ?", (SOURCE,)
                )
            }
    except _common.StoreReadError as exc:
        check.error = str(exc)
        return check
    check.missing = len(answered - stored.keys())
    for sms_id, (text, charset_error) in stored.items():
        if not sms_id.startswith(f"{run}-"):
            check.unexpected += 1
        elif text != text_of(sms_id):
            check.wrong_text += 1
        check.charset_errors += bool(charset_error)
    return check


# -- report -------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Round(_common.Round):
    mode: str
    bare: PhaseResult
    bridge: PhaseResult
    store: StoreCheck


def _median_result(results: list[PhaseResult]) -> PhaseResult:
    first = results[0]
    return _common.median_result(
        results,
        "req_per_s",
        mode=first.mode,
        requests=first.requests,
        replays=sum(r.replays for r in results),
    )


def _row(label: str, r: PhaseResult) -> str:
    return f"{r.mode:<9} {r.server:<7} {label:>5} {r.requests:>8} {r.concurrency:>5} {r.columns()}"


def _table(rounds: list[Round], medians: dict[str, tuple[PhaseResult, PhaseResult]]) -> str:
    header = (
        f"{'mode':<9} {'server':<7} {'round':>5} {'requests':>8} {'conc':>5} "
        f"{_common.header_columns('req/s')}"
    )
    lines = [header, "-" * len(header)]
    for mode, (bare, bridge) in medians.items():
        mode_rounds = [rnd for rnd in rounds if rnd.mode == mode]
        lines += _common.pair_rows(mode_rounds, bare, bridge, _row)
        lines.append("-" * len(header))
    return "\n".join(lines)


CLI: dict[str, Any] = {
    "count": ("requests", 5000, "measured requests per server"),
    "concurrency": "concurrent workers",
    "rounds": "bare/bridge pairs per mode, each with fresh processes; medians are compared",
    "warmup": (WARMUP_REQUESTS, "warm-up requests"),
    "phase_timeout": PHASE_TIMEOUT,
    "store": "per phase",
}


def main(argv: list[str] | None = None) -> int:
    parser = _common.new_parser(__doc__, CLI)
    parser.add_argument(
        "--mode",
        choices=(*MODES, "all"),
        default="all",
        help="unique: every sms_id new; replay: every request repeats a warm-up one",
    )
    parser.add_argument(
        "--load", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python",
        help="load generator: wrk with bench/mo_post.lua (default where installed) or "
        "the Python client",
    )
    parser.add_argument("--duration", type=int, default=DURATION,
                        help="seconds of each measured wrk phase (whole seconds)")
    _common.add_workers_option(parser)
    _common.add_run_options(parser)
    args = parser.parse_args(argv)
    _common.apply_run_options(args.loop, args.pin and args.workers == 1)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    template = _common.resolve_store(args.store, args.store_url)
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--requests, --concurrency and --rounds must be >= 1, --warmup >= 0")
    if args.phase_timeout <= 0:
        parser.error("--phase-timeout must be > 0")
    modes = MODES if args.mode == "all" else (args.mode,)
    if "replay" in modes and args.warmup < 1:
        parser.error("--mode replay needs a warm-up (--warmup >= 1)")

    run = uuid.uuid4().hex[:12]
    rounds: list[Round] = []
    for number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="inbound-mo-") as tmpdir:
            log(f"round {number}/{args.rounds}")
            for mode in modes:
                workdir = Path(tmpdir) / mode
                unused = _common.store_url(None, workdir / "bare")
                bare, _ = _run_server(
                    "bare", mode, args, workdir / "bare", f"{run}-{number}", unused
                )
                (workdir / "bridge").mkdir(parents=True, exist_ok=True)
                with _common.fresh_store(template, workdir / "bridge") as url:
                    bridge, plan = _run_server(
                        "bridge", mode, args, workdir / "bridge", f"{run}-{number}", url
                    )
                    answered = set(plan.sent)
                    expected_max = len(answered)
                    if args.load == "wrk" and mode == "unique":
                        expected_max += bridge.requests + args.concurrency
                    store = _check_store(url, f"{run}-{number}", answered,
                                         len(answered) + (bridge.ok if args.load == "wrk"
                                                          and mode == "unique" else 0),
                                         expected_max)
                log(f"[{mode} bridge] store: {store.describe()}")
                rounds.append(
                    Round(number=number, mode=mode, bare=bare, bridge=bridge, store=store)
                )

    medians: dict[str, tuple[PhaseResult, PhaseResult]] = {}
    ratios: dict[str, float] = {}
    for mode in modes:
        mode_rounds = [rnd for rnd in rounds if rnd.mode == mode]
        bare = _median_result([rnd.bare for rnd in mode_rounds])
        bridge = _median_result([rnd.bridge for rnd in mode_rounds])
        medians[mode] = (bare, bridge)
        ratios[mode] = bridge.req_per_s / bare.req_per_s if bare.req_per_s else 0.0

    checks: list[str] = []  # everything but the targets
    for mode, pair in medians.items():
        for r in pair:
            if r.failures or r.warmup_failures:
                checks.append(
                    f"{mode} {r.server}: {r.failures} failures (+{r.warmup_failures} in warm-up)"
                )
    for rnd in rounds:
        if not rnd.store.ok:
            checks.append(f"round {rnd.number} {rnd.mode}: {rnd.store.describe()}")
    reasons: list[str] = []
    for mode, ratio in ratios.items():
        wanted = TARGETS[mode]
        if wanted is not None and ratio < wanted:
            reasons.append(f"{mode}: ratio {ratio:.3f} < target {wanted}")
    reasons += checks
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
                    "targets": TARGETS,
                    "requests": args.requests,
                    "concurrency": args.concurrency,
                    "warmup": args.warmup,
                    "verdict": verdict,
                    "reasons": reasons,
                    "checks": checks,
                    "store": _common.store_kind(template),
                    "workers": args.workers,
                    "cpus": os.cpu_count(),
                    "load": args.load,
                    "loop": args.loop,
                    "pinned": _common.RUN.pin,
                    "placement": _common.placement(),
                    "wrk_command": " ".join(wrk_command(0, "MODE", "RUN", args)).replace(
                        ":0/", ":PORT/") if args.load == "wrk" else None,
                },
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        print(
            f"store: {_common.store_kind(template)}; load: {args.load}; "
            f"{_common.placement()}; bridge: {args.workers} process(es) "
            "sharing the port; bare: 1 process"
        )
        print(_table(rounds, medians))
        for rnd in rounds:
            for r in (rnd.bare, rnd.bridge):
                for kind, count in r.failure_kinds.items():
                    print(f"  round {rnd.number} {rnd.mode} {r.server} failure x{count}: {kind}")
        for mode, ratio in ratios.items():
            per_round = ", ".join(f"{rnd.ratio:.3f}" for rnd in rounds if rnd.mode == mode)
            wanted = TARGETS[mode]
            target = ("information" if wanted is None
                      else f"target: >= {wanted}   {'PASS' if ratio >= wanted else 'FAIL'}")
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

"""SMTP ingest benchmark: the bridge against a bare aiosmtpd server, in the same run.

What it measures
    Mails per second, per-mail latency (p50/p99 of MAIL, RCPT, DATA and the message; on a
    fresh connection EHLO too) and failures (any reply other than the one expected) for

    * ``bare``   - aiosmtpd's stock ``Controller`` (its own thread and event loop, of the
      same kind as the bridge's: ``--loop``) with a handler whose ``handle_DATA`` answers
      ``250 OK``;
    * ``bridge`` - the real :class:`bridge.app.Bridge` (SQLite WAL, ``synchronous=FULL``, group
      commit: its 250 follows a durable commit), with its dispatcher draining the outbox to the
      ``dryrun`` upstream in the background as in production.

    Then it prints the ratio bridge/bare of mails/s and PASS/FAIL against the target ratio
    (0.9). After the bridge has stopped, the rows in its ``messages`` table are counted
    (read-only, ``connect_readonly()``: SQLite or PostgreSQL) and compared with the number of
    mails sent (warm-up included).

How
    Each server runs in its own process (``multiprocessing`` ``spawn``) on 127.0.0.1, pinned
    to core 0 (``--no-pin`` to leave it); the load generator is this process, pinned to core
    1: ``C`` workers on asyncio (uvloop where installed), each with a raw-socket SMTP client
    (:class:`RawSmtp`: one command written, its reply code checked; a fraction of the
    server's CPU per mail), sharing one counter of ``N`` mails. With connection reuse
    (default) each worker keeps one connection and sends its mails one after the other;
    with ``--no-reuse`` every mail gets its own connection (connect, EHLO, mail, QUIT). Each
    server first gets a warm-up (100 mails, not measured). Each phase stops by itself after
    ``--phase-timeout`` seconds (default 120); mails not sent by then count as failures. The
    pair bare/bridge is measured ``--rounds`` times (default 3), alternating, each with fresh
    server processes and a fresh store, and the medians are compared. The table shows the
    server's CPU (all its threads) as a share of the phase and per mail (``us/op``), and the
    load generator's CPU as a share of its core (``cli cpu%``; above 80 % the row is marked
    ``paced``: the load, not the server, may have set the rate).

    The default ``demo`` account allows 100 mails per minute (``mail_rate_per_minute``); the
    benchmark lifts that limit (0 = unlimited) so the bridge's ingest path is measured rather
    than its 451 refusals. ``--keep-rate-limit`` keeps the stock limit.

Run
    python bench/smtp_ingest.py [--mails N] [--concurrency C] [--reuse | --no-reuse] [--json]
                                [--rounds R] [--warmup W] [--phase-timeout S] [--keep-rate-limit]
                                [--loop asyncio|uvloop] [--no-pin]
                                [--store sqlite|postgres] [--store-url URL] [--workers N]

    defaults: 2000 mails, 50 concurrent connections, reuse on, asyncio, pinned, the bridge's
    store a fresh SQLite file in a temporary directory per round (``--store postgres``: a
    fresh PostgreSQL database per round on the local server, dropped afterwards;
    ``--store-url``: another SQLite URL or PostgreSQL server). ``--workers N``: the bridge as
    N processes sharing one fixed port (SO_REUSEPORT; not pinned) and the store; the bare
    baseline stays one process. ``--json`` prints one JSON object instead of the table
    (progress goes to stderr). The exit status is 0 on PASS, 1 on FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import _common
from _common import HOST, log

TARGET_RATIO = 0.9
WARMUP_MAILS = 100
PHASE_TIMEOUT = 120.0
SMTP_TIMEOUT = 30.0
MAIL_FROM = "bench@example.com"
RCPT_TO = "demo@localhost"
BODY = "Alert: disk usage 91% on host-17"


# -- servers (child processes) ------------------------------------------------------------


def _bridge_settings(port: int, url: str, keep_rate_limit: bool) -> Any:
    from bridge.settings import load_settings

    overrides: dict[str, Any] = {}
    if not keep_rate_limit:
        overrides["accounts"] = {
            "demo": {"password": "demo", "upstream": "dryrun", "mail_rate_per_minute": 0}
        }
    return load_settings(
        None,
        smtp={"port": port, "host": HOST},
        http={"port": 0},
        store={"url": url},
        log_level="WARNING",
        log_format="json",
        dispatcher={"poll_interval": 1.0},
        **overrides,
    )


class _BareHandler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def _start_bare() -> tuple[Any, int]:
    """aiosmtpd's stock ``Controller`` (its own thread and loop, of the same kind as the
    bridge's), with a handler answering 250 to every mail."""
    from aiosmtpd.controller import Controller

    port = _common.free_port()
    controller = Controller(_BareHandler(), hostname=HOST, port=port,
                            loop=_common.loop_factory(_common.RUN.loop)())
    controller.start()
    return controller, port


async def _start(kind: str, url: str, keep_rate_limit: bool, port: int = 0) -> _common.Started:
    """In the child: the bare server or the bridge (see ``_common.ServerProcess``). A bridge
    given a fixed ``port`` binds it with ``SO_REUSEPORT`` (one of ``--workers N``)."""
    from bridge.logs import setup_logging

    settings = _bridge_settings(port, url, keep_rate_limit)
    setup_logging(settings.log_level, settings.log_format)  # as ``sms-bridge serve`` does
    if kind == "bridge":
        from bridge.app import Bridge

        bridge = Bridge(settings, reuse_port=port != 0)
        await bridge.start()
        return bridge.smtp_port, bridge.stop, {}
    controller, port = _start_bare()

    async def stop() -> None:
        await asyncio.to_thread(controller.stop)

    return port, stop, {}


# -- load generator -----------------------------------------------------------------------


@dataclass(kw_only=True)
class PhaseResult(_common.PhaseResult):
    mails: int
    reuse: bool
    mails_per_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.mails_per_s


def _message(run: str, phase: str, index: int) -> bytes:
    phone = f"7916{(1_000_000 + index) % 10_000_000:07d}"
    return (
        f"From: Bench <{MAIL_FROM}>\r\n"
        f"To: {RCPT_TO}\r\n"
        f"Subject: {phone}\r\n"
        f"Message-ID: <bench-{run}-{phase}-{index}@example.com>\r\n"
        "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{BODY}\r\n"
    ).encode()


class SmtpError(Exception):
    """An SMTP reply other than the one expected, or a connection lost."""


class RawSmtp(asyncio.Protocol):
    """A minimal SMTP client on a raw socket: one command written, its reply awaited; no
    parsing beyond the reply code. Its CPU per mail is a fraction of the server's (about
    a tenth of aiosmtplib's), so the server, not the load, sets the pace."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[bytes] | None = None
        self.early: bytes | None = None  # a reply come before anyone waited for it
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        # A reply is complete when its last line ("ddd text") is: no "ddd-" continuation.
        if buffer.endswith(b"\r\n"):
            start = buffer.rfind(b"\n", 0, len(buffer) - 2) + 1
            if buffer[start + 3:start + 4] != b"-":
                self.buffer = b""
                if self.waiter is not None and not self.waiter.done():
                    self.waiter.set_result(buffer)
                else:
                    self.early = buffer
                return
        self.buffer = buffer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(SmtpError("connection lost"))

    async def reply(self, expected: bytes, line: bytes | None = None) -> None:
        """Write ``line`` (if any) and wait for a reply starting with ``expected``."""
        assert self.transport is not None
        if self.early is not None:  # the greeting, sent as the connection opened
            answer, self.early = self.early, None
        else:
            self.waiter = asyncio.get_running_loop().create_future()
            if line is not None:
                self.transport.write(line)
            if self.closed:
                raise SmtpError("connection lost")
            async with asyncio.timeout(SMTP_TIMEOUT):
                answer = await self.waiter
        if not answer.startswith(expected):
            raise SmtpError(answer.split(b"\r\n", 1)[0].decode("ascii", "replace")[:120])

    async def sendmail(self, message: bytes) -> None:
        await self.reply(b"250", f"MAIL FROM:<{MAIL_FROM}>\r\n".encode())
        await self.reply(b"250", f"RCPT TO:<{RCPT_TO}>\r\n".encode())
        await self.reply(b"354", b"DATA\r\n")
        await self.reply(b"250", message + b".\r\n")


async def _connect(port: int) -> RawSmtp:
    loop = asyncio.get_running_loop()
    _transport, client = await loop.create_connection(RawSmtp, HOST, port)
    await client.reply(b"220")
    await client.reply(b"250", b"EHLO bench-client\r\n")
    return client


async def _load(
    port: int,
    server: str,
    phase: str,
    run: str,
    mails: int,
    concurrency: int,
    reuse: bool,
    phase_timeout: float,
) -> PhaseResult:
    latencies: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    counter = iter(range(mails))

    async def worker() -> None:
        smtp: RawSmtp | None = None
        try:
            for index in counter:
                if smtp is None or smtp.closed:
                    try:
                        smtp = await _connect(port)
                    except (SmtpError, OSError, TimeoutError) as exc:
                        failures[f"connect: {type(exc).__name__}: {exc}"[:120]] += 1
                        smtp = None
                        continue
                message = _message(run, phase, index)
                started = time.perf_counter()
                try:
                    await smtp.sendmail(message)
                except (SmtpError, OSError, TimeoutError) as exc:
                    failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
                    if smtp.transport is not None:
                        smtp.transport.close()
                    smtp = None
                    continue
                latencies.append(time.perf_counter() - started)
                if not reuse:
                    with contextlib.suppress(SmtpError, OSError, TimeoutError):
                        await smtp.reply(b"221", b"QUIT\r\n")
                    if smtp.transport is not None:
                        smtp.transport.close()
                    smtp = None
        finally:
            if smtp is not None and smtp.transport is not None and not smtp.closed:
                with contextlib.suppress(SmtpError, OSError, TimeoutError):
                    await smtp.reply(b"221", b"QUIT\r\n")
                smtp.transport.close()

    workers = await _common.run_workers(worker, min(concurrency, mails), phase_timeout, failures)
    common = _common.summarize(latencies, failures, mails, workers)
    return PhaseResult(
        server=server,
        mails=mails,
        concurrency=concurrency,
        reuse=reuse,
        mails_per_s=common["ok"] / workers.elapsed_s if workers.elapsed_s > 0 else 0.0,
        **common,
    )


def _run_server(kind: str, args: argparse.Namespace, url: str, run: str) -> PhaseResult:
    workers = args.workers if kind == "bridge" else 1
    log(f"[{kind}] starting {workers} server process(es)")
    port = _common.free_port() if workers > 1 else 0
    server = _common.ServerGroup(
        kind, _start, lambda index: (kind, url, args.keep_rate_limit, port), workers
    )

    async def load(warmup: bool) -> PhaseResult:
        phase, mails = ("warmup", args.warmup) if warmup else ("measure", args.mails)
        return await _load(
            server.port,
            kind,
            phase,
            run,
            mails,
            args.concurrency,
            args.reuse,
            args.phase_timeout,
        )

    try:
        result = _common.warm_and_measure(server, kind, "mails", args.warmup, args.mails, load)
    finally:
        server.stop()
    log(f"[{kind}] {result.mails_per_s:.0f} mails/s, {result.failures} failures")
    return result


def _count_rows(url: str) -> tuple[int, dict[str, int]]:
    """Rows in the bridge's ``messages`` table, in all and by status (-1: unreadable)."""
    try:
        with _common.connect_readonly(url) as reader:
            total = int(reader.scalar("SELECT COUNT(*) FROM messages"))
            by_status = dict(reader.rows("SELECT status, COUNT(*) FROM messages GROUP BY status"))
    except _common.StoreReadError as exc:
        log(f"store unreadable: {exc}")
        return -1, {"unreadable": 1}
    return total, by_status


# -- report -------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Round(_common.Round):
    bare: PhaseResult
    bridge: PhaseResult
    store_messages: int
    store_by_status: dict[str, int]


def _median_result(results: list[PhaseResult]) -> PhaseResult:
    first = results[0]
    return _common.median_result(results, "mails_per_s", mails=first.mails, reuse=first.reuse)


def _row(label: str, r: PhaseResult) -> str:
    return (
        f"{r.server:<8} {label:>5} {r.mails:>6} {r.concurrency:>5} "
        f"{'on' if r.reuse else 'off':>5} {r.columns()}"
    )


def _table(rounds: list[Round], bare: PhaseResult, bridge: PhaseResult) -> str:
    header = (
        f"{'server':<8} {'round':>5} {'mails':>6} {'conc':>5} {'reuse':>5} "
        f"{_common.header_columns('mails/s')}"
    )
    lines = [header, "-" * len(header)]
    lines += _common.pair_rows(rounds, bare, bridge, _row, rule="-" * len(header))
    return "\n".join(lines)


CLI: dict[str, Any] = {
    "count": ("mails", 2000, "measured mails per server"),
    "concurrency": "concurrent connections",
    "rounds": "bare/bridge pairs, each with fresh processes; medians are compared",
    "warmup": (WARMUP_MAILS, "warm-up mails"),
    "phase_timeout": PHASE_TIMEOUT,
    "store": "per round",
}


def main(argv: list[str] | None = None) -> int:
    parser = _common.new_parser(__doc__, CLI)
    parser.add_argument(
        "--reuse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send many mails per connection (default) or one per connection",
    )
    parser.add_argument(
        "--keep-rate-limit",
        action="store_true",
        help="keep the demo account's stock 100 mails/minute limit",
    )
    _common.add_workers_option(parser)
    _common.add_run_options(parser)
    args = parser.parse_args(argv)
    _common.apply_run_options(args.loop, args.pin and args.workers == 1)
    if args.mails < 1 or args.concurrency < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--mails, --concurrency and --rounds must be >= 1, --warmup >= 0")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    template = _common.resolve_store(args.store, args.store_url)

    run = uuid.uuid4().hex[:12]
    rounds: list[Round] = []
    for number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="smtp-ingest-") as tmpdir:
            log(f"round {number}/{args.rounds}")
            unused = _common.store_url(None, tmpdir, "bare-unused.sqlite3")
            bare_result = _run_server("bare", args, unused, f"{run}-{number}")
            with _common.fresh_store(template, tmpdir) as url:
                bridge_result = _run_server("bridge", args, url, f"{run}-{number}")
                queued, by_status = _count_rows(url)
        rounds.append(
            Round(
                number=number,
                bare=bare_result,
                bridge=bridge_result,
                store_messages=queued,
                store_by_status=by_status,
            )
        )

    bare = _median_result([r.bare for r in rounds])
    bridge = _median_result([r.bridge for r in rounds])
    expected = args.mails + args.warmup
    ratio = bridge.mails_per_s / bare.mails_per_s if bare.mails_per_s else 0.0
    checks: list[str] = []  # everything but the target
    for r in (bare, bridge):
        if r.failures or r.warmup_failures:
            checks.append(f"{r.server}: {r.failures} failures (+{r.warmup_failures} in warm-up)")
    for rnd in rounds:
        if rnd.store_messages != expected:
            checks.append(
                f"round {rnd.number}: bridge store holds {rnd.store_messages} "
                f"messages, expected {expected}"
            )
    reasons = list(checks)
    if ratio < TARGET_RATIO:
        reasons.insert(0, f"ratio {ratio:.3f} < target {TARGET_RATIO}")
    verdict = "FAIL" if reasons else "PASS"

    if args.json:
        print(
            json.dumps(
                {
                    "rounds": [
                        {
                            "round": rnd.number,
                            "bare": asdict(rnd.bare),
                            "bridge": asdict(rnd.bridge),
                            "ratio": round(rnd.ratio, 4),
                            "bridge_messages_in_store": rnd.store_messages,
                            "bridge_messages_by_status": rnd.store_by_status,
                        }
                        for rnd in rounds
                    ],
                    "median": {"bare": asdict(bare), "bridge": asdict(bridge)},
                    "mails": args.mails,
                    "concurrency": args.concurrency,
                    "reuse": args.reuse,
                    "warmup": args.warmup,
                    "store": _common.store_kind(template),
                    "workers": args.workers,
                    "ratio": round(ratio, 4),
                    "target_ratio": TARGET_RATIO,
                    "verdict": verdict,
                    "reasons": reasons,
                    "checks": checks,
                    "bridge_messages_expected_per_round": expected,
                    "cpus": os.cpu_count(),
                    "loop": args.loop,
                    "pinned": _common.RUN.pin,
                    "placement": _common.placement(),
                },
                indent=2,
            )
        )
    else:
        print(
            f"store: {_common.store_kind(template)}; {_common.placement()}; "
            f"bridge: {args.workers} process(es) "
            "sharing the port; bare: 1 process"
        )
        print(_table(rounds, bare, bridge))
        for rnd in rounds:
            for r in (rnd.bare, rnd.bridge):
                for kind, count in r.failure_kinds.items():
                    print(f"  round {rnd.number} {r.server} failure x{count}: {kind}")
        per_round = ", ".join(f"{rnd.ratio:.3f}" for rnd in rounds)
        print(
            f"ratio bridge/bare mails/s: {ratio:.3f} (per round: {per_round})   "
            f"target: >= {TARGET_RATIO}   {verdict}"
        )
        for reason in reasons:
            print(f"  FAIL reason: {reason}")
        for rnd in rounds:
            status = ", ".join(f"{k}={v}" for k, v in sorted(rnd.store_by_status.items()))
            print(
                f"round {rnd.number} bridge store: {rnd.store_messages} messages queued "
                f"(expected {expected} = {args.mails} + {args.warmup} warm-up); {status}"
            )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

"""SMTP ingest benchmark: the bridge against a bare aiosmtpd server, in the same run.

What it measures
    Mails per second, per-mail latency (p50/p99 of the ``sendmail`` call: MAIL, RCPT, DATA
    and, on a fresh connection, EHLO) and failures (any reply other than 250) for

    * ``bare``   - an aiosmtpd ``SMTP`` protocol on ``loop.create_server`` whose handler's
      ``handle_DATA`` only answers ``250 OK``, with the bridge's aiosmtpd settings (hostname,
      ident, size and line limits, SMTPUTF8, command call limit; no AUTH, no TLS);
    * ``bridge`` - the real :class:`bridge.app.Bridge` (SQLite WAL, ``synchronous=FULL``, group
      commit: its 250 follows a durable commit), with its dispatcher draining the outbox to the
      ``dryrun`` upstream in the background as in production.

    Then it prints the ratio bridge/bare of mails/s and PASS/FAIL against the target ratio
    (0.5). After the bridge has stopped, the rows in its ``messages`` table are counted
    (read-only ``sqlite3``) and compared with the number of mails sent (warm-up included).

How
    Each server runs in its own process (``multiprocessing``, start method ``spawn``) on
    127.0.0.1 with an ephemeral port it reports back through a ``Pipe``; the load generator is
    this process: asyncio + aiosmtplib, ``C`` workers sharing one counter of ``N`` mails. With
    connection reuse (default) each worker keeps one connection and sends its mails one after
    the other; with ``--no-reuse`` every mail gets its own connection (connect, sendmail,
    QUIT). Each server first gets a warm-up (100 mails, not measured). Each phase stops by
    itself after ``--phase-timeout`` seconds (default 120); mails not sent by then count as
    failures. A 2000-mail phase lasts about a second, so the pair bare/bridge is measured
    ``--rounds`` times (default 3), each with fresh server processes and a fresh store, and the
    medians are compared. The table also shows the CPU used by the server process (all its
    threads) and by the load generator, as a share of the phase's wall time: a load generator
    near 100 % means the client, not the server, set the pace.

    The default ``demo`` account allows 100 mails per minute (``mail_rate_per_minute``); the
    benchmark lifts that limit (0 = unlimited) so the bridge's ingest path is measured rather
    than its 451 refusals. ``--keep-rate-limit`` keeps the stock limit.

Run
    python bench/smtp_ingest.py [--mails N] [--concurrency C] [--reuse | --no-reuse] [--json]
                                [--rounds R] [--warmup W] [--phase-timeout S] [--keep-rate-limit]

    defaults: 2000 mails, 50 concurrent connections, reuse on. ``--json`` prints one JSON
    object instead of the table (progress goes to stderr). The exit status is 0 on PASS, 1 on
    FAIL.
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

import aiosmtplib

HOST = "127.0.0.1"
TARGET_RATIO = 0.5
WARMUP_MAILS = 100
PHASE_TIMEOUT = 120.0
START_TIMEOUT = 60.0
SMTP_TIMEOUT = 30.0
MAIL_FROM = "bench@example.com"
RCPT_TO = "demo@localhost"
BODY = "Alert: disk usage 91% on host-17"


# -- servers (child processes) ------------------------------------------------------------


def _bridge_settings(port: int, tmpdir: str, keep_rate_limit: bool) -> Any:
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
        store={"url": f"sqlite:///{tmpdir}/bench.sqlite3"},
        log_level="WARNING",
        log_format="json",
        dispatcher={"poll_interval": 1.0},
        **overrides,
    )


class _BareHandler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


async def _start_bare(settings: Any) -> tuple[asyncio.Server, int]:
    from aiosmtpd.smtp import SMTP

    config = settings.smtp
    loop = asyncio.get_running_loop()
    handler = _BareHandler()

    class BareSMTP(SMTP):  # type: ignore[misc]
        line_length_limit = config.max_line_length  # as the bridge's BridgeSMTP

    def factory() -> BareSMTP:
        return BareSMTP(
            handler,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            hostname=config.hostname,
            ident="sms-bridge ESMTP",
            timeout=config.timeout,
            command_call_limit={"AUTH": config.auth_attempts_per_connection, "*": 100_000},
            loop=loop,
        )

    server = await loop.create_server(factory, host=HOST, port=0)
    return server, server.sockets[0].getsockname()[1]


async def _serve(
    kind: str, conn: multiprocessing.connection.Connection, tmpdir: str, keep_rate_limit: bool
) -> None:
    from bridge.logs import setup_logging

    settings = _bridge_settings(0, tmpdir, keep_rate_limit)
    setup_logging(settings.log_level, settings.log_format)  # as ``sms-bridge serve`` does
    loop = asyncio.get_running_loop()
    bridge: Any = None
    server: asyncio.Server | None = None
    if kind == "bridge":
        from bridge.app import Bridge

        bridge = Bridge(settings)
        await bridge.start()
        port = bridge.smtp_port
    else:
        server, port = await _start_bare(settings)
    conn.send(("ready", port))
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "cpu":  # all threads of this process (the SQLite writer included)
            conn.send(("cpu", time.process_time()))
        elif command == "stop":
            break
    if bridge is not None:
        await bridge.stop()
    if server is not None:
        server.close()
        await server.wait_closed()
    conn.send(("stopped", None))


def _server_main(
    kind: str, conn: multiprocessing.connection.Connection, tmpdir: str, keep_rate_limit: bool
) -> None:
    try:
        asyncio.run(_serve(kind, conn, tmpdir, keep_rate_limit))
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))
        raise


class ServerProcess:
    """One server in a spawned child process, driven through a Pipe."""

    def __init__(self, kind: str, tmpdir: str, keep_rate_limit: bool) -> None:
        self.kind = kind
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_server_main,
            args=(kind, child, tmpdir, keep_rate_limit),
            name=f"bench-{kind}",
            daemon=True,
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
    server: str
    mails: int
    concurrency: int
    reuse: bool
    ok: int = 0
    failures: int = 0
    elapsed_s: float = 0.0
    mails_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    timed_out: bool = False
    warmup_failures: int = 0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    failure_kinds: dict[str, int] = field(default_factory=dict)


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


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        return f"RCPT {first.code} {first.message}"[:120]
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{type(exc).__name__} {exc.code} {exc.message}"[:120]
    return f"{type(exc).__name__}: {exc}"[:120]


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

    def client() -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=HOST,
            port=port,
            local_hostname="bench-client",
            timeout=SMTP_TIMEOUT,
            start_tls=False,
        )

    async def send(smtp: aiosmtplib.SMTP, index: int) -> bool:
        message = _message(run, phase, index)
        started = time.perf_counter()
        try:
            refused, _reply = await smtp.sendmail(MAIL_FROM, [RCPT_TO], message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            failures[_describe(exc)] += 1
            return False
        latencies.append(time.perf_counter() - started)
        if refused:  # sendmail returns the refused recipients if some were accepted
            failures[f"refused: {refused}"[:120]] += 1
            latencies.pop()
            return False
        return True

    async def worker() -> None:
        smtp: aiosmtplib.SMTP | None = None
        try:
            for index in counter:
                if smtp is None or not smtp.is_connected:
                    smtp = client()
                    try:
                        await smtp.connect()
                    except (aiosmtplib.SMTPException, OSError) as exc:
                        failures[_describe(exc)] += 1
                        smtp = None
                        continue
                if not await send(smtp, index) or not reuse:
                    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                        await smtp.quit()
                    smtp.close()
                    smtp = None
        finally:
            if smtp is not None and smtp.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await smtp.quit()
                smtp.close()

    cpu0 = time.process_time()
    started = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(min(concurrency, mails))]
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
    if counted < mails:  # never attempted (phase timeout) or lost with a crashed worker
        failures["not sent: phase timeout or worker crash"] += mails - counted
    latencies.sort()
    return PhaseResult(
        server=server,
        mails=mails,
        concurrency=concurrency,
        reuse=reuse,
        ok=ok,
        failures=max(0, mails - ok),
        elapsed_s=elapsed,
        mails_per_s=ok / elapsed if elapsed > 0 else 0.0,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] * 1000 if latencies else 0.0),
        timed_out=bool(pending),
        client_cpu_s=client_cpu,
        failure_kinds=dict(failures.most_common(10)),
    )


def _run_server(kind: str, args: argparse.Namespace, tmpdir: str, run: str) -> PhaseResult:
    log(f"[{kind}] starting server process")
    server = ServerProcess(kind, tmpdir, args.keep_rate_limit)
    try:
        log(f"[{kind}] listening on {HOST}:{server.port}; warm-up {args.warmup} mails")
        warm = asyncio.run(
            _load(
                server.port,
                kind,
                "warmup",
                run,
                args.warmup,
                args.concurrency,
                args.reuse,
                args.phase_timeout,
            )
        )
        if warm.failures:
            log(f"[{kind}] warm-up failures: {warm.failures} {warm.failure_kinds}")
        cpu0 = server.cpu()
        log(f"[{kind}] measuring {args.mails} mails")
        result = asyncio.run(
            _load(
                server.port,
                kind,
                "measure",
                run,
                args.mails,
                args.concurrency,
                args.reuse,
                args.phase_timeout,
            )
        )
        result.server_cpu_s = server.cpu() - cpu0
        result.failure_kinds = {
            k: result.failure_kinds.get(k, 0) + warm.failure_kinds.get(k, 0)
            for k in {**result.failure_kinds, **warm.failure_kinds}
        }
        result.warmup_failures = warm.failures
    finally:
        server.stop()
    log(f"[{kind}] {result.mails_per_s:.0f} mails/s, {result.failures} failures")
    return result


def _count_rows(db: Path) -> tuple[int, dict[str, int]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        total = int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        by_status = dict(conn.execute("SELECT status, COUNT(*) FROM messages GROUP BY status"))
    finally:
        conn.close()
    return total, by_status


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- report -------------------------------------------------------------------------------


@dataclass
class Round:
    number: int
    bare: PhaseResult
    bridge: PhaseResult
    store_messages: int
    store_by_status: dict[str, int]

    @property
    def ratio(self) -> float:
        return self.bridge.mails_per_s / self.bare.mails_per_s if self.bare.mails_per_s else 0.0


def _median_result(results: list[PhaseResult]) -> PhaseResult:
    first = results[0]
    return PhaseResult(
        server=first.server,
        mails=first.mails,
        concurrency=first.concurrency,
        reuse=first.reuse,
        ok=sum(r.ok for r in results),
        failures=sum(r.failures for r in results),
        elapsed_s=statistics.median(r.elapsed_s for r in results),
        mails_per_s=statistics.median(r.mails_per_s for r in results),
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
        f"{r.server:<8} {label:>5} {r.mails:>6} {r.concurrency:>5} "
        f"{'on' if r.reuse else 'off':>5} {r.mails_per_s:>9.1f} {r.p50_ms:>8.2f} "
        f"{r.p99_ms:>8.2f} {r.failures:>8} {srv:>8.0f} {cli:>8.0f}"
    )


def _table(rounds: list[Round], bare: PhaseResult, bridge: PhaseResult) -> str:
    header = (
        f"{'server':<8} {'round':>5} {'mails':>6} {'conc':>5} {'reuse':>5} "
        f"{'mails/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failures':>8} {'srv cpu%':>8} "
        f"{'cli cpu%':>8}"
    )
    lines = [header, "-" * len(header)]
    for rnd in rounds:
        lines.append(_row(str(rnd.number), rnd.bare))
        lines.append(_row(str(rnd.number), rnd.bridge))
    if len(rounds) > 1:
        lines.append("-" * len(header))
        lines.append(_row("med", bare))
        lines.append(_row("med", bridge))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mails", type=int, default=2000, help="measured mails per server")
    parser.add_argument("--concurrency", type=int, default=50, help="concurrent connections")
    parser.add_argument(
        "--reuse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send many mails per connection (default) or one per connection",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="bare/bridge pairs, each with fresh processes; medians are compared",
    )
    parser.add_argument("--warmup", type=int, default=WARMUP_MAILS, help="warm-up mails")
    parser.add_argument(
        "--phase-timeout",
        type=float,
        default=PHASE_TIMEOUT,
        help="hard cap in seconds for each load phase",
    )
    parser.add_argument(
        "--keep-rate-limit",
        action="store_true",
        help="keep the demo account's stock 100 mails/minute limit",
    )
    args = parser.parse_args(argv)
    if args.mails < 1 or args.concurrency < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--mails, --concurrency and --rounds must be >= 1, --warmup >= 0")

    run = uuid.uuid4().hex[:12]
    rounds: list[Round] = []
    for number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="smtp-ingest-") as tmpdir:
            log(f"round {number}/{args.rounds}")
            bare_result = _run_server("bare", args, tmpdir, f"{run}-{number}")
            bridge_result = _run_server("bridge", args, tmpdir, f"{run}-{number}")
            queued, by_status = _count_rows(Path(tmpdir) / "bench.sqlite3")
        rounds.append(Round(number, bare_result, bridge_result, queued, by_status))

    bare = _median_result([r.bare for r in rounds])
    bridge = _median_result([r.bridge for r in rounds])
    expected = args.mails + args.warmup
    ratio = bridge.mails_per_s / bare.mails_per_s if bare.mails_per_s else 0.0
    reasons: list[str] = []
    if ratio < TARGET_RATIO:
        reasons.append(f"ratio {ratio:.3f} < target {TARGET_RATIO}")
    for r in (bare, bridge):
        if r.failures or r.warmup_failures:
            reasons.append(f"{r.server}: {r.failures} failures (+{r.warmup_failures} in warm-up)")
    for rnd in rounds:
        if rnd.store_messages != expected:
            reasons.append(
                f"round {rnd.number}: bridge store holds {rnd.store_messages} "
                f"messages, expected {expected}"
            )
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
                    "ratio": round(ratio, 4),
                    "target_ratio": TARGET_RATIO,
                    "verdict": verdict,
                    "reasons": reasons,
                    "bridge_messages_expected_per_round": expected,
                    "cpus": os.cpu_count(),
                },
                indent=2,
            )
        )
    else:
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

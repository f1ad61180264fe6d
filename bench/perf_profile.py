"""The whole performance profile in one command: SMTP ingest and inbound MO against their
bare servers on both event loops, and dispatch, on SQLite (with PostgreSQL beside it as
information).

What it measures
    Runs ``bench/smtp_ingest.py``, ``bench/inbound_mo.py`` and ``bench/dispatch.py``, each
    case as its own ``python`` process with ``--json``, and prints ONE table: every figure
    beside its baseline (the bare server measured in the same run, on the same event loop)
    or target, with PASS/FAIL (``info`` rows have no target), the server CPU per mail or
    request (bridge / bare) and the load generator's CPU as a share of its core (bridge /
    bare; a figure whose load passed 80 % is marked ``paced`` and cannot PASS). One bridge
    process; servers pinned to core 0 and the load generator to core 1 (``taskset``
    semantics, ``os.sched_setaffinity``) where both exist. A pinned server saturates its
    core; one whose CPU stayed below 85 % of it shared the core with other work, and its
    row is ``VOID`` (run again on a quiet machine): ``cpu us/op`` and its bare/bridge ratio,
    CPU time per operation, still compare the two sides on a busy machine.

    For each event loop (``asyncio``, ``uvloop``), SQLite (a fresh file per bridge run):

    * smtp_ingest, bridge/bare mails/s, 50 connections reused, the bare server aiosmtpd's
      stock ``Controller`` answering 250, the load a raw-socket client: target >= 0.9;
    * inbound_mo, bridge/bare req/s, 50 connections, the bare server an aiohttp handler
      reading the form and answering 200, the load ``wrk`` with ``bench/mo_post.lua``
      (the Python client where wrk is not installed): ``unique`` sms_id >= 0.5, ``replay``
      (every request a provider retry) >= 0.9;

    each the median of ``--rounds`` alternating bare/bridge pairs. Then, as information,
    the same on PostgreSQL (asyncio, one pair; PostgreSQL itself is not pinned: it runs on
    whichever core is free, so it competes with the load generator), and dispatch (SQLite):
    sends/s without batching (info), with batching (>= 1,000/s), at 200 ms provider latency
    (>= 0.9 x concurrency / latency), bridge peak RSS with 100,000 queued (< 150 MB).
    ``--extended`` adds, as information: SMTP without connection reuse, at 1 and 10
    connections, and with 2 bridge workers; inbound with 2 workers.

    A script's other checks (failures, store contents read back, every message sent) are
    listed under the table; a script that fails them, or exits abnormally, makes the
    profile FAIL too. Every missed target is listed with the amount by which it is missed.

Run
    python bench/perf_profile.py [--quick] [--rounds R] [--loops asyncio,uvloop]
                                 [--stores sqlite,postgres] [--postgres-url URL]
                                 [--cases smtp,inbound,dispatch] [--extended] [--json]

    ``--rounds`` (default 3) applies to every case with a target. ``--postgres-url`` names
    the PostgreSQL server and an admin database to connect to (default
    ``postgresql://postgres@127.0.0.1:5432/postgres``, or ``BENCH_POSTGRES``). ``--quick``
    uses tiny sizes and one round (a smoke test: about 40 s). The full profile takes about
    5 minutes on 2 cores. The exit status is 0 only if every target and every check passes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import DEFAULT_POSTGRES_URL, log

BENCH = Path(__file__).resolve().parent
TIMEOUT = 600.0  # per script run
STORES = ("sqlite", "postgres")
LOOPS = ("asyncio", "uvloop")
CASES = {"smtp": "smtp_ingest", "inbound": "inbound_mo", "dispatch": "dispatch"}
TARGET_SMTP = 0.9  # bridge/bare mails/s at 50 connections, reused
TARGET_UNIQUE = 0.5  # bridge/bare req/s, new sms_id
TARGET_REPLAY = 0.9  # bridge/bare req/s, every request a replay
PACED = 80.0  # load generator CPU (% of its core) above which a figure is marked paced
#: Server CPU (% of its core) below which a pinned server did not saturate its core: the
#: core was shared with other work (or the load was short), so its rate says little.
SATURATED = 85.0

#: Sizes per profile: SMTP mails (many connections / 1 connection), inbound requests,
#: dispatch arguments.
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "mails": 4000, "mails_c1": 500, "duration": "3", "requests": 5000, "warmup": "200",
        "dispatch": ["--messages", "6000", "--latency-messages", "1000",
                     "--memory-messages", "100000"],
    },
    "quick": {
        "mails": 300, "mails_c1": 100, "duration": "1", "requests": 300, "warmup": "50",
        "dispatch": ["--messages", "1000", "--latency-messages", "200",
                     "--memory-messages", "5000", "--memory-batches", "2"],
    },
}  # fmt: skip


@dataclass
class Case:
    """One run of one script."""

    script: str
    store: str
    workers: int
    label: str
    args: list[str]
    target: float | None = None  # smtp_ingest: the ratio target; None = info
    loop: str = "asyncio"
    info: bool = False  # every row information (no target)


@dataclass
class Row:
    case: str
    store: str
    workers: str
    measurement: str
    value: str
    baseline: str
    ratio: str
    target: str
    verdict: str  # PASS, FAIL, info
    shortfall: str = ""  # for FAIL: by how much
    cpu: str = "-"  # server CPU per mail/request, bridge / bare (µs, medians of the rounds)
    load: str = "-"  # load generator CPU % of its core, bridge / bare (medians)
    loop: str = "-"
    busy: str = "-"  # server CPU % of a core, bridge / bare (medians)


@dataclass
class Outcome:
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _cases(args: argparse.Namespace) -> list[Case]:
    size = SIZES["quick" if args.quick else "full"]
    rounds = "1" if args.quick else str(args.rounds)
    cases: list[Case] = []
    for store in args.stores:
        # PostgreSQL: information, one pair on the first loop.
        info = store == "postgres"
        loops = args.loops[:1] if info else args.loops
        pairs = "1" if info else rounds
        for loop in loops:
            cases.append(Case(
                "smtp_ingest", store, 1, "50 conn, reuse on",
                ["--mails", str(size["mails"]), "--concurrency", "50", "--rounds", pairs],
                TARGET_SMTP, loop, info))
            inbound = ["--rounds", pairs, "--warmup", size["warmup"]]
            inbound += (["--duration", size["duration"]] if shutil.which("wrk")
                        else ["--load", "python", "--requests", str(size["requests"])])
            cases.append(Case("inbound_mo", store, 1, "unique, replay", inbound, None, loop,
                              info))
        if args.extended:
            loop = args.loops[0]
            for label, workers, extra in (
                ("50 conn, reuse off", 1, ["--concurrency", "50", "--no-reuse"]),
                ("10 conn, reuse on", 1, ["--concurrency", "10"]),
                ("1 conn, reuse on", 1, ["--concurrency", "1", "--mails",
                                         str(size["mails_c1"])]),
                ("50 conn, reuse on", 2, ["--concurrency", "50"]),
            ):
                base = ["--mails", str(size["mails"]), "--rounds", "1"]
                cases.append(Case("smtp_ingest", store, workers, label,
                                  [*base, *extra, "--workers", str(workers)], None, loop, True))
            cases.append(Case("inbound_mo", store, 2, "unique, replay",
                              ["--rounds", "1", "--workers", "2", "--duration",
                               size["duration"]], None, loop, True))
        if store == "sqlite":
            cases.append(Case("dispatch", store, 1, "a, b, c", list(size["dispatch"])))
    return cases


def _store_args(store: str, postgres_url: str) -> list[str]:
    return ["--store-url", postgres_url] if store == "postgres" else ["--store", "sqlite"]


def _run(case: Case, postgres_url: str) -> tuple[dict[str, Any] | None, int, str]:
    command = [
        sys.executable,
        str(BENCH / f"{case.script}.py"),
        "--json",
        *case.args,
        *_store_args(case.store, postgres_url),
        *(["--loop", case.loop] if case.script != "dispatch" else []),
    ]
    log(f"== {' '.join(command[1:])}")
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=None, text=True, timeout=TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return None, -1, f"no result within {TIMEOUT:.0f} s"
    log(f"== {case.script}: exit {done.returncode} after {time.monotonic() - started:.0f} s")
    try:
        return json.loads(done.stdout), done.returncode, ""
    except ValueError:
        return None, done.returncode, f"no JSON on stdout (exit {done.returncode})"


def _judge(ratio: float, target: float | None, paced: bool = False,
           idle: str = "") -> tuple[str, str, str]:
    """(target text, verdict, shortfall) of a ratio; a paced figure cannot PASS, nor one
    whose servers did not saturate their core (``idle`` says which: VOID)."""
    if target is None:
        return "info", "info", ""
    if paced:
        return f">= {target}", "FAIL", "paced: the load generator passed 80 % of its core"
    if idle:
        return f">= {target}", "VOID", (f"{idle} below {SATURATED:.0f} % of its core: the "
                                        "core was shared, the rates compare nothing; "
                                        "run again on a quiet machine")
    if ratio >= target:
        return f">= {target}", "PASS", ""
    return f">= {target}", "FAIL", f"{ratio:.3f} < {target} (short by {target - ratio:.3f})"


def _medians(rounds: list[dict[str, Any]], mode: str | None,
             value: Any) -> tuple[float | None, float | None]:
    """Bridge and bare medians over the rounds of ``value(phase)``."""
    def median(side: str) -> float | None:
        values = [value(rnd[side]) for rnd in rounds
                  if (mode is None or rnd.get("mode") == mode) and rnd[side].get("ok")]
        return statistics.median(values) if values else None

    return median("bridge"), median("bare")


def _cpu_per_op(rounds: list[dict[str, Any]], mode: str | None = None) -> str:
    """Server CPU time per mail or request (all the server's threads), bridge and bare,
    each the median over the rounds: what each side spends, whichever set the pace."""
    bridge, bare = _medians(rounds, mode, lambda p: p["server_cpu_s"] / p["ok"] * 1e6)
    if bridge is None or bare is None:
        return "-"
    # bare/bridge CPU per operation: the ratio the rates would show with each server
    # saturating its core, whatever else ran on the machine.
    return f"{bridge:.0f} / {bare:.0f} ({bare / bridge:.2f})" if bridge else "-"


def _load_cpu(rounds: list[dict[str, Any]], mode: str | None = None) -> tuple[str, bool]:
    """The load generator's CPU (% of its core), bridge / bare phases, medians; and whether
    any round of either was paced (above 80 %)."""
    def pct(phase: dict[str, Any]) -> float:
        return 100 * phase["client_cpu_s"] / phase["elapsed_s"] if phase["elapsed_s"] else 0.0

    bridge, bare = _medians(rounds, mode, pct)
    paced = any(pct(rnd[side]) > PACED for rnd in rounds for side in ("bridge", "bare")
                if mode is None or rnd.get("mode") == mode)
    if bridge is None or bare is None:
        return "-", paced
    return f"{bridge:.0f} / {bare:.0f}" + (" paced" if paced else ""), paced


def _server_busy(rounds: list[dict[str, Any]], mode: str | None = None) -> tuple[str, str]:
    """The servers' CPU (% of a core), bridge / bare, medians; and which side, if any, did
    not saturate its core (only meaningful when pinned: one core each)."""
    def pct(phase: dict[str, Any]) -> float:
        return 100 * phase["server_cpu_s"] / phase["elapsed_s"] if phase["elapsed_s"] else 0.0

    bridge, bare = _medians(rounds, mode, pct)
    if bridge is None or bare is None:
        return "-", ""
    idle = [side for side, value in (("bridge", bridge), ("bare", bare))
            if value < SATURATED]
    text = f"{bridge:.0f} / {bare:.0f}"
    return text, " and ".join(idle) + (" server" if idle else "") if _pinned() else ""


def _smtp_rows(case: Case, data: dict[str, Any]) -> list[Row]:
    bare = data["median"]["bare"]["mails_per_s"]
    bridge = data["median"]["bridge"]["mails_per_s"]
    ratio = float(data["ratio"])
    rounds = len(data["rounds"])
    load, paced = _load_cpu(data["rounds"])
    busy, idle = _server_busy(data["rounds"])
    target, verdict, short = _judge(ratio, None if case.info else case.target, paced, idle)
    what = f"{case.label}: mails/s" + (f" (median of {rounds})" if rounds > 1 else "")
    return [
        Row("smtp_ingest", case.store, str(case.workers), what, f"{bridge:.0f}",
            f"bare {bare:.0f}", f"{ratio:.3f}", target, verdict, short,
            _cpu_per_op(data["rounds"]), load, case.loop, busy)
    ]  # fmt: skip


def _inbound_rows(case: Case, data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    targets = {"unique": TARGET_UNIQUE, "replay": TARGET_REPLAY}
    for mode, pair in data["median"].items():
        ratio = float(data["ratios"][mode])
        load, paced = _load_cpu(data["rounds"], mode)
        busy, idle = _server_busy(data["rounds"], mode)
        target, verdict, short = _judge(ratio, None if case.info else targets.get(mode),
                                        paced, idle)
        rounds = sum(1 for rnd in data["rounds"] if rnd["mode"] == mode)
        what = f"{mode}: req/s" + (f" (median of {rounds})" if rounds > 1 else "")
        rows.append(
            Row("inbound_mo", case.store, str(case.workers), what,
                f"{pair['bridge']['req_per_s']:.0f}", f"bare {pair['bare']['req_per_s']:.0f}",
                f"{ratio:.3f}", target, verdict, short, _cpu_per_op(data["rounds"], mode),
                load, case.loop, busy)
        )  # fmt: skip
    return rows


def _dispatch_rows(case: Case, data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for m in data["measurements"]:
        verdict = m["verdict"]
        short = ""
        if verdict == "FAIL":
            short = f"{m['value']:.1f} {m['unit']}, target {m['target']}"
        name = m["name"].split(" (")[0] if m["key"] != "c_memory" else m["name"]
        share = m["details"].get("share_of_ideal")
        ideal = m["details"].get("ideal_per_s")
        rows.append(
            Row("dispatch", case.store, str(case.workers), name, f"{m['value']:.1f} {m['unit']}",
                f"ideal {ideal:.0f}/s" if ideal else "-",
                f"{share:.3f}" if share is not None else "-", m["target"], verdict, short)
        )  # fmt: skip
    return rows


ROWS = {"smtp_ingest": _smtp_rows, "inbound_mo": _inbound_rows, "dispatch": _dispatch_rows}


def _outcome(case: Case, data: dict[str, Any] | None, code: int, error: str) -> Outcome:
    where = f"{case.script} [{case.store}, {case.workers} worker(s), {case.label}]"
    out = Outcome()
    if data is None:
        out.rows.append(
            Row(case.script, case.store, str(case.workers), f"{case.label}: (no result)", "-",
                "-", "-", "-", "FAIL", error,
                loop=case.loop if case.script != "dispatch" else "-")
        )  # fmt: skip
        out.problems.append(f"{where}: {error}")
        return out
    out.rows = ROWS[case.script](case, data)
    if case.script == "dispatch":  # its reasons: problems first, then missed targets
        checks = [r for m in data["measurements"] for r in m["problems"]]
    else:
        checks = list(data.get("checks", []))
    out.problems += [f"{where}: {check}" for check in checks]
    if code not in (0, 1):
        out.problems.append(f"{where}: exit status {code}")
    return out


def _table(rows: list[Row]) -> str:
    heads = ("case", "store", "loop", "wk", "measurement", "value", "baseline", "ratio",
             "target", "verdict", "srv cpu %", "cpu us/op", "load cpu %")  # fmt: skip
    cells = [
        (r.case, r.store, r.loop, r.workers, r.measurement, r.value, r.baseline, r.ratio,
         r.target, r.verdict, r.busy, r.cpu, r.load)
        for r in rows
    ]  # fmt: skip
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    right = {5, 6, 7, 10, 11, 12}

    def line(values: tuple[str, ...]) -> str:
        return " ".join(
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    header = line(heads)
    lines = [header, "-" * len(header)]
    previous = ""
    for c in cells:
        if previous and c[0] != previous:
            lines.append("")
        previous = c[0]
        lines.append(line(c))
    return "\n".join(lines)


def _pinned() -> bool:
    try:
        return {0, 1} <= os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of every case with a target"
    )
    parser.add_argument(
        "--stores",
        default=",".join(STORES),
        help="comma-separated subset of sqlite,postgres (default: both)",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="PostgreSQL server + admin database; a fresh database is made per bridge run",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--loops", default=",".join(LOOPS),
                        help="comma-separated subset of asyncio,uvloop (default: both)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated subset of smtp,inbound,dispatch (default: all)")
    parser.add_argument("--extended", action="store_true",
                        help="also SMTP without reuse, at 1 and 10 connections, and both "
                        "benches with 2 workers (information)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    args.loops = [s.strip() for s in args.loops.split(",") if s.strip()]
    args.cases = [s.strip() for s in args.cases.split(",") if s.strip()]
    if not args.cases or any(s not in CASES for s in args.cases):
        parser.error("--cases takes smtp, inbound and/or dispatch")
    if not args.stores or any(s not in STORES for s in args.stores) or args.rounds < 1:
        parser.error("--stores takes sqlite and/or postgres; --rounds must be >= 1")
    if not args.loops or any(s not in LOOPS for s in args.loops):
        parser.error("--loops takes asyncio and/or uvloop")
    if "uvloop" in args.loops and importlib.util.find_spec("uvloop") is None:
        log("uvloop is not installed (pip install 'sms-bridge[fast]'): asyncio only")
        args.loops = [loop for loop in args.loops if loop != "uvloop"] or ["asyncio"]

    rows: list[Row] = []
    problems: list[str] = []
    raw: list[dict[str, Any]] = []
    started = time.monotonic()
    scripts = {CASES[name] for name in args.cases}
    for case in [c for c in _cases(args) if c.script in scripts]:
        data, code, error = _run(case, args.postgres_url)
        raw.append({**asdict(case), "result": data, "exit": code})
        outcome = _outcome(case, data, code, error)
        rows += outcome.rows
        problems += outcome.problems
    missed = [r for r in rows if r.verdict in ("FAIL", "VOID")]
    verdict = "FAIL" if missed or problems else "PASS"
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows], "verdict": verdict,
                          "problems": problems, "elapsed_s": round(elapsed, 1),
                          "results": raw}, indent=2, ensure_ascii=False))  # fmt: skip
        return 0 if verdict == "PASS" else 1
    print(_table(rows))
    http_load = ("wrk -t1 -c50 with bench/mo_post.lua" if shutil.which("wrk")
                 else "the Python aiohttp client (wrk not installed)")
    print()
    print(
        "targets (1 bridge process, SQLite): smtp_ingest bridge/bare mails/s >= 0.9 (50 "
        "connections reused); inbound_mo bridge/bare req/s unique >= 0.5, replay >= 0.9;\n"
        "         dispatch batching >= 1000/s, 200 ms latency >= 0.9 x C/latency, "
        "peak RSS < 150 MB with 100,000 queued. PostgreSQL rows: information."
    )
    print(
        "baselines: aiosmtpd's stock Controller answering 250; an aiohttp handler reading the "
        "form and answering 200; each on the same loop as the bridge beside it.\n"
        f"load: SMTP a raw-socket client; HTTP {http_load}; "
        f"{'servers pinned to core 0, load to core 1' if _pinned() else 'not pinned'}; "
        "PostgreSQL unpinned.\n"
        "srv cpu % = the server process's CPU as a share of one core, bridge / bare (pinned, "
        f"below {SATURATED:.0f} %: its core was shared, the row is VOID);\n"
        "cpu us/op = CPU time of the server process (all threads) per mail or request, "
        "bridge / bare (bare/bridge: the ratio at equal CPU, robust to other load on the\n"
        "machine); load cpu % = the load generator's CPU as a share of its core, "
        "bridge / bare phases\n(paced: above 80 %, the load may have set the rate: no PASS)."
    )
    for r in missed:
        print(f"  MISSED: {r.case} [{r.store}, {r.loop}, {r.workers} wk] {r.measurement}: "
              f"{r.shortfall}")
    for problem in problems:
        print(f"  CHECK FAILED: {problem}")
    print(f"profile: {verdict} in {elapsed:.0f} s "
          f"({len(missed)} target(s) missed, {len(problems)} check(s) failed)")  # fmt: skip
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

"""The whole performance profile in one command: SMTP ingest, inbound MO and dispatch, on
SQLite and PostgreSQL, with the bridge as 1 and 2 worker processes.

What it measures
    Runs ``bench/smtp_ingest.py``, ``bench/inbound_mo.py`` and ``bench/dispatch.py``, each
    case as its own ``python`` process with ``--json`` and modest sizes, and prints ONE table:
    every figure beside its baseline (the bare server measured in the same run) or target,
    with PASS/FAIL (``info`` rows have no target). For each store (``sqlite``: a fresh file
    per bridge run; ``postgres``: a fresh database ``bench_<uuid8>`` per bridge run, dropped
    ``WITH (FORCE)`` afterwards):

    * smtp_ingest, bridge/bare mails/s: 50 connections with connection reuse on and off, 1
      and 10 connections (reuse on), each with 1 bridge worker; 50 connections (reuse on)
      with 2 workers. Target at 50 connections: >= 0.7; 1 and 10 connections: info;
    * inbound_mo, bridge/bare req/s, 1 and 2 workers: ``unique`` sms_id >= 0.5, ``replay``
      (every request a provider retry) >= 0.8, ``replay50`` (every other request a retry):
      info;
    * dispatch (1 bridge process): sends/s without batching (info), with batching
      (>= 1,000/s), at 200 ms provider latency (>= 0.9 x concurrency / latency), bridge peak
      RSS with 100,000 queued (< 150 MB).

    With 2 workers the bridge runs as 2 processes on one fixed port with ``SO_REUSEPORT``
    (each ``Bridge(settings, reuse_port=True)``, as ``sms-bridge serve --workers 2``), sharing
    the store (one SQLite file, or one PostgreSQL database). The bare baseline is always ONE
    process. The machine's cores are shared by the load generator, the servers and
    PostgreSQL, so the figures compare runs on this machine only. Beside each SMTP and
    inbound figure the table shows the CPU time the server processes spent per mail or
    request, bridge and bare (``cpu us/op``): where the single load generator, not the
    server, sets the pace (its CPU near 100 %, as against a bare server), the rates compare
    less than that.

    A script's other checks (failures, store contents read back through
    ``connect_readonly()``, every message sent) are listed under the table; a script that fails
    them, or exits abnormally, makes the profile FAIL too. Every missed target is listed with
    the amount by which it is missed.

Run
    python bench/perf_profile.py [--quick] [--rounds R] [--stores sqlite,postgres]
                                 [--postgres-url URL] [--json]

    ``--rounds`` (default 3) applies to every case with a target (SMTP at 50 connections,
    inbound); the medians are compared. The others run once. ``--postgres-url`` names the
    PostgreSQL server and an admin database to connect to (default
    ``postgresql://postgres@127.0.0.1:5432/postgres``, or ``BENCH_POSTGRES``). ``--quick``
    uses smaller sizes and one round (a smoke test). The whole profile takes about 5-6 minutes
    on 2 cores. The exit status is 0 only if every target and every check passes.
"""

from __future__ import annotations

import argparse
import json
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
TARGET_SMTP = 0.7  # bridge/bare mails/s at 50 connections
TARGET_UNIQUE = 0.5  # bridge/bare req/s, new sms_id
TARGET_REPLAY = 0.8  # bridge/bare req/s, every request a replay

#: Sizes per profile: SMTP mails (many connections / 1 connection), inbound requests,
#: dispatch arguments.
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "mails": 4000, "mails_c1": 500, "requests": 5000,
        "dispatch": ["--messages", "6000", "--latency-messages", "1000",
                     "--memory-messages", "100000"],
    },
    "quick": {
        "mails": 500, "mails_c1": 150, "requests": 600,
        "dispatch": ["--messages", "2000", "--latency-messages", "300",
                     "--memory-messages", "20000"],
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


@dataclass
class Outcome:
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _cases(args: argparse.Namespace) -> list[Case]:
    size = SIZES["quick" if args.quick else "full"]
    rounds = "1" if args.quick else str(args.rounds)
    cases: list[Case] = []
    for store in args.stores:
        smtp = [
            ("50 conn, reuse on", 1, ["--concurrency", "50", "--rounds", rounds], TARGET_SMTP),
            ("50 conn, reuse off", 1, ["--concurrency", "50", "--no-reuse", "--rounds", rounds],
             TARGET_SMTP),
            ("10 conn, reuse on", 1, ["--concurrency", "10"], None),
            ("1 conn, reuse on", 1, ["--concurrency", "1", "--mails", str(size["mails_c1"])],
             None),
            ("50 conn, reuse on", 2, ["--concurrency", "50", "--rounds", rounds], TARGET_SMTP),
        ]  # fmt: skip
        for label, workers, extra, target in smtp:
            base = ["--mails", str(size["mails"]), *([] if "--rounds" in extra else
                                                     ["--rounds", "1"])]
            cases.append(
                Case("smtp_ingest", store, workers, label,
                     [*base, *extra, "--workers", str(workers)], target)
            )  # fmt: skip
        for workers in (1, 2):
            cases.append(
                Case("inbound_mo", store, workers, "unique, replay, replay50",
                     ["--requests", str(size["requests"]), "--rounds", rounds,
                      "--workers", str(workers)])
            )  # fmt: skip
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


def _judge(ratio: float, target: float | None) -> tuple[str, str, str]:
    """(target text, verdict, shortfall) of a ratio."""
    if target is None:
        return "info", "info", ""
    if ratio >= target:
        return f">= {target}", "PASS", ""
    return f">= {target}", "FAIL", f"{ratio:.3f} < {target} (short by {target - ratio:.3f})"


def _cpu_per_op(rounds: list[dict[str, Any]], mode: str | None = None) -> str:
    """Server CPU time per mail or request (all the server's processes and threads), bridge
    and bare, each the median over the rounds: what each side spends, whichever side of the
    loopback set the pace."""
    def median(side: str) -> float | None:
        values = [rnd[side]["server_cpu_s"] / rnd[side]["ok"] * 1e6 for rnd in rounds
                  if (mode is None or rnd.get("mode") == mode) and rnd[side].get("ok")]
        return statistics.median(values) if values else None

    bridge, bare = median("bridge"), median("bare")
    if bridge is None or bare is None:
        return "-"
    return f"{bridge:.0f} / {bare:.0f}"


def _smtp_rows(case: Case, data: dict[str, Any]) -> list[Row]:
    bare = data["median"]["bare"]["mails_per_s"]
    bridge = data["median"]["bridge"]["mails_per_s"]
    ratio = float(data["ratio"])
    rounds = len(data["rounds"])
    target, verdict, short = _judge(ratio, case.target)
    what = f"{case.label}: mails/s" + (f" (median of {rounds})" if rounds > 1 else "")
    return [
        Row("smtp_ingest", case.store, str(case.workers), what, f"{bridge:.0f}",
            f"bare {bare:.0f}", f"{ratio:.3f}", target, verdict, short,
            _cpu_per_op(data["rounds"]))
    ]  # fmt: skip


def _inbound_rows(case: Case, data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    targets = {"unique": TARGET_UNIQUE, "replay": TARGET_REPLAY, "replay50": None}
    for mode, pair in data["median"].items():
        ratio = float(data["ratios"][mode])
        target, verdict, short = _judge(ratio, targets[mode])
        rounds = sum(1 for rnd in data["rounds"] if rnd["mode"] == mode)
        what = f"{mode}: req/s" + (f" (median of {rounds})" if rounds > 1 else "")
        rows.append(
            Row("inbound_mo", case.store, str(case.workers), what,
                f"{pair['bridge']['req_per_s']:.0f}", f"bare {pair['bare']['req_per_s']:.0f}",
                f"{ratio:.3f}", target, verdict, short, _cpu_per_op(data["rounds"], mode))
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
                "-", "-", "-", "FAIL", error)
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
    heads = ("case", "store", "wk", "measurement", "value", "baseline", "ratio", "target",
             "verdict", "cpu us/op")  # fmt: skip
    cells = [
        (r.case, r.store, r.workers, r.measurement, r.value, r.baseline, r.ratio, r.target,
         r.verdict, r.cpu)
        for r in rows
    ]  # fmt: skip
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    right = {4, 5, 6, 9}

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
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not args.stores or any(s not in STORES for s in args.stores) or args.rounds < 1:
        parser.error("--stores takes sqlite and/or postgres; --rounds must be >= 1")

    rows: list[Row] = []
    problems: list[str] = []
    raw: list[dict[str, Any]] = []
    started = time.monotonic()
    for case in _cases(args):
        data, code, error = _run(case, args.postgres_url)
        raw.append({**asdict(case), "result": data, "exit": code})
        outcome = _outcome(case, data, code, error)
        rows += outcome.rows
        problems += outcome.problems
    missed = [r for r in rows if r.verdict == "FAIL"]
    verdict = "FAIL" if missed or problems else "PASS"
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows], "verdict": verdict,
                          "problems": problems, "elapsed_s": round(elapsed, 1),
                          "results": raw}, indent=2, ensure_ascii=False))  # fmt: skip
        return 0 if verdict == "PASS" else 1
    print(_table(rows))
    print()
    print(
        "targets: smtp_ingest bridge/bare mails/s >= 0.7 at 50 connections (1 and 10: info); "
        "inbound_mo bridge/bare req/s unique >= 0.5, replay >= 0.8 (replay50: info);\n"
        "         dispatch batching >= 1000/s, 200 ms latency >= 0.9 x C/latency, "
        "peak RSS < 150 MB with 100,000 queued."
    )
    print(
        "wk = bridge worker processes sharing the port (SO_REUSEPORT); the bare baseline is "
        "always 1 process; ratio = bridge/bare (dispatch b: share of ideal C/latency).\n"
        "cpu us/op = CPU time of the server processes per mail or request, bridge / bare "
        "(PostgreSQL's own not included): what each side spends, whichever set the pace."
    )
    for r in missed:
        print(f"  MISSED: {r.case} [{r.store}, {r.workers} wk] {r.measurement}: {r.shortfall}")
    for problem in problems:
        print(f"  CHECK FAILED: {problem}")
    print(f"profile: {verdict} in {elapsed:.0f} s "
          f"({len(missed)} target(s) missed, {len(problems)} check(s) failed)")  # fmt: skip
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

"""The whole performance profile in one command: SMTP ingest, inbound MO and dispatch.

What it measures
    Runs ``bench/smtp_ingest.py``, ``bench/inbound_mo.py`` and ``bench/dispatch.py``, each as
    its own ``python`` process with ``--json`` and modest sizes (so that the whole profile
    takes a few minutes), and prints one table: each figure beside its baseline or target
    and PASS/FAIL (``info`` rows have no target). A script's other checks (failures, store
    contents, every message sent) are listed under the table; a script that fails them, or
    exits abnormally, makes the profile FAIL too.

    * smtp_ingest: bridge/bare mails/s (median of ``--rounds``), target >= 0.5;
    * inbound_mo: bridge/bare req/s, ``unique`` target >= 0.4, ``replay50`` >= 0.8 (info);
    * dispatch: sends/s without batching (info), with batching (>= 1,000/s), at 200 ms
      provider latency (>= 0.9 x C / latency), bridge peak RSS with 100,000 queued (< 150 MB).

Run
    python bench/perf_profile.py [--rounds R] [--store-url URL] [--json] [--quick]

    ``--store-url`` is passed to all three scripts (default: each uses a fresh SQLite file in a
    temporary directory; a ``postgresql://`` URL is for later: the scripts' store checks read
    SQLite only, see ``connect_readonly()`` in ``bench/_common.py``). ``--quick`` uses smaller
    sizes (a smoke test, under a minute or two). The exit status is 0 only if every target and
    every check passes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import log

BENCH = Path(__file__).resolve().parent
TIMEOUT = 600.0  # per script

SIZES: dict[str, dict[str, list[str]]] = {
    "full": {
        "smtp_ingest": ["--mails", "2000"],
        "inbound_mo": ["--requests", "3000"],
        "dispatch": ["--messages", "20000", "--latency-messages", "2000"],
    },
    "quick": {
        "smtp_ingest": ["--mails", "500", "--rounds", "1"],
        "inbound_mo": ["--requests", "1000", "--rounds", "1"],
        "dispatch": [
            "--messages", "3000", "--latency-messages", "400", "--memory-messages", "20000",
        ],
    },
}  # fmt: skip


@dataclass
class Row:
    script: str
    measurement: str
    value: str
    target: str
    verdict: str  # PASS, FAIL, info


def _run(script: str, extra: list[str]) -> tuple[dict[str, Any] | None, int, str]:
    command = [sys.executable, str(BENCH / f"{script}.py"), "--json", *extra]
    log(f"== {' '.join(command[1:])}")
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=None, text=True, timeout=TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return None, -1, f"{script}: no result within {TIMEOUT:.0f} s"
    log(f"== {script}: exit {done.returncode} after {time.monotonic() - started:.0f} s")
    try:
        return json.loads(done.stdout), done.returncode, ""
    except ValueError:
        return None, done.returncode, f"{script}: no JSON on stdout (exit {done.returncode})"


def _smtp_rows(data: dict[str, Any]) -> list[Row]:
    median = data["median"]
    rows = [
        Row("smtp_ingest", f"{server} mails/s (median)", f"{median[server]['mails_per_s']:.0f}",
            "baseline" if server == "bare" else "", "info")
        for server in ("bare", "bridge")
    ]  # fmt: skip
    ok = data["ratio"] >= data["target_ratio"]
    rows.append(Row("smtp_ingest", "ratio bridge/bare mails/s", f"{data['ratio']:.3f}",
                    f">= {data['target_ratio']}", "PASS" if ok else "FAIL"))  # fmt: skip
    return rows


def _inbound_rows(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    targets = data["targets"]
    for mode, pair in data["median"].items():
        for server in ("bare", "bridge"):
            rows.append(Row("inbound_mo", f"{mode} {server} req/s (median)",
                            f"{pair[server]['req_per_s']:.0f}",
                            "baseline" if server == "bare" else "", "info"))  # fmt: skip
        ratio = data["ratios"][mode]
        if mode == "unique":
            target = targets["unique"]
            verdict = "PASS" if ratio >= target else "FAIL"
            text = f">= {target}"
        else:
            target = targets["replay50 (informational)"]
            verdict = "info"
            text = f">= {target} (info, {'met' if ratio >= target else 'not met'})"
        rows.append(Row("inbound_mo", f"{mode} ratio bridge/bare req/s", f"{ratio:.3f}", text,
                        verdict))  # fmt: skip
    return rows


def _dispatch_rows(data: dict[str, Any]) -> list[Row]:
    return [
        Row("dispatch", m["name"], f"{m['value']:.1f} {m['unit']}", m["target"],
            "FAIL" if m["problems"] else m["verdict"])
        for m in data["measurements"]
    ]  # fmt: skip


ROWS = {"smtp_ingest": _smtp_rows, "inbound_mo": _inbound_rows, "dispatch": _dispatch_rows}


def _table(rows: list[Row]) -> str:
    width = max(len(r.measurement) for r in rows)
    header = f"{'script':<11} {'measurement':<{width}} {'value':>12} {'target':<28} verdict"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.script:<11} {r.measurement:<{width}} {r.value:>12} {r.target:<28} {r.verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of smtp_ingest")
    parser.add_argument("--store-url", default=None, help="passed to every script")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    sizes = SIZES["quick" if args.quick else "full"]
    rows: list[Row] = []
    reasons: list[str] = []
    raw: dict[str, Any] = {}
    started = time.monotonic()
    for script, extra in sizes.items():
        extra = list(extra)
        if script == "smtp_ingest" and "--rounds" not in extra:
            extra += ["--rounds", str(args.rounds)]
        if script == "inbound_mo" and "--rounds" not in extra:
            extra += ["--rounds", "1"]
        if args.store_url is not None:
            extra += ["--store-url", args.store_url]
        data, code, error = _run(script, extra)
        raw[script] = data
        if data is None:
            reasons.append(error)
            rows.append(Row(script, "(no result)", "-", "-", "FAIL"))
            continue
        rows += ROWS[script](data)
        reasons += [f"{script}: {reason}" for reason in data.get("reasons", [])]
        if code != 0 and not data.get("reasons"):
            reasons.append(f"{script}: exit status {code}")
    failed = bool(reasons) or any(r.verdict == "FAIL" for r in rows)
    verdict = "FAIL" if failed else "PASS"
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows], "verdict": verdict,
                          "reasons": reasons, "elapsed_s": round(elapsed, 1),
                          "results": raw}, indent=2, ensure_ascii=False))  # fmt: skip
    else:
        print(_table(rows))
        for reason in reasons:
            print(f"  FAIL reason: {reason}")
        print(f"profile: {verdict} in {elapsed:.0f} s")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

"""Dispatch benchmark: how fast the bridge's dispatcher drains its outbox to a provider.

What it measures
    (a) throughput against a provider test double that answers at once: ``N`` messages
        (default 20,000) are put in the outbox through the store API (``enqueue``, one mail of
        1,000 messages at a time) before the bridge starts; then a :class:`bridge.app.Bridge`
        starts and its dispatcher sends them all. Sends/s = messages ``sent`` / (time of the
        last ``sent`` event in ``message_events`` - the moment ``Bridge.start()`` was
        called). Run twice: an upstream WITHOUT batching (``smstraffic_v2``, one HTTP request
        per SMS; informational) and one WITH batching (``kcell`` by default, ``/json2/batch``
        with up to ``batch_size`` messages per request; or ``--batch-kind smsc``, whose
        batches need messages sharing one text, so all its texts are the same). Target with
        batching: >= 1,000 sends/s.
    (b) the same with a provider that answers every send after ``--latency`` (200 ms; the
        double's ``fail_next(..., "delay")``), upstream ``concurrency`` ``C`` (20), no batching,
        ``--latency-messages`` (2,000) messages: sends/s against the ideal ``C / latency``;
        target >= 0.9 x ideal.
    (c) memory: the resident set of the bridge process with ``--memory-messages`` (100,000)
        queued while its dispatcher runs against a provider that refuses connections (a closed
        loopback port: nothing is sent, every message is retried later). Once it has claimed
        and failed at least ``--memory-batches`` (5) batches, its ``VmRSS`` is sampled and its
        peak ``VmHWM`` (``/proc/self/status``, read in the bridge process) is compared with the
        target: < 150 MB (the dispatcher streams the queue in batches, it never loads it).

How
    The provider double (``tests/doubles``; the repository root is put on ``sys.path``) and
    the bridge each run in their own process (``multiprocessing`` ``spawn``, driven through a
    ``Pipe`` by ``bench/_common.py``), on 127.0.0.1 only. The bridge: SQLite store in a fresh
    temporary directory per measurement, ``dispatcher.poll_interval`` 0.2 s,
    ``dispatcher.batch_size`` ``--batch-size`` (500), status polling off, log level WARNING
    to a file in that directory. This process only polls the store (read-only ``sqlite3``,
    every 0.1 s) until no message is ``queued`` or ``sending``. The CPU used by the bridge and
    by the double over each measurement is shown as a share of its wall time (2 CPUs shared by
    both: a double near 100 % sets the pace, not the bridge). Every measurement stops by
    itself after ``--phase-timeout`` seconds (default 180).

Run
    python bench/dispatch.py [--messages N] [--batch-kind kcell|smsc] [--batch-size B]
                             [--latency-messages N] [--latency S] [--concurrency C]
                             [--memory-messages N] [--memory-batches K] [--only a,b,c]
                             [--phase-timeout S] [--store sqlite|postgres]
                             [--store-url URL] [--json]

    ``--json`` prints one JSON object instead of the table (progress goes to stderr). The exit
    status is 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _common
from _common import HOST, log

ROOT = Path(__file__).resolve().parents[1]
TARGET_BATCHED = 1000.0  # sends/s
TARGET_LATENCY_SHARE = 0.9  # of C / latency
TARGET_RSS_MB = 150.0
PHASE_TIMEOUT = 180.0
ENQUEUE_CHUNK = 1000
ENQUEUE_PARALLEL = 4
POLL = 0.1
ACCOUNT = "bench"
UPSTREAM = "p"

#: Provider doubles: module, class, and the upstream settings that match them.
DOUBLES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "smstraffic_v2": (
        "tests.doubles.smstraffic",
        "SmsTrafficDouble",
        {"api_key": "1837/secretkey"},
    ),
    "kcell": (
        "tests.doubles.kcell",
        "KcellDouble",
        {"login": "kc-user", "password": "kc-pass", "client_id": "acme", "originator": "ACME"},
    ),
    "smsc": ("tests.doubles.smsc", "SmscDouble", {"login": "acme", "password": "s3cret"}),
}


# -- child processes ----------------------------------------------------------------------


async def _start_double(kind: str, delay: float, delayed: int) -> _common.Started:
    """In the child: the provider double of ``kind``; with ``delay``, its next ``delayed``
    sends are each answered after ``delay`` seconds."""
    import importlib

    sys.path.insert(0, str(ROOT))
    module, name, _ = DOUBLES[kind]
    double = getattr(importlib.import_module(module), name)()
    await double.start()
    if delay > 0:
        double.fail_next(delayed, "delay", seconds=delay)
    commands = {
        "accepted": lambda: len(double.accepted),
        "requests": lambda: len(double.requests),
    }
    return int(double.url.rsplit(":", 1)[1]), double.stop, commands


async def _start_bridge(overrides: dict[str, Any]) -> _common.Started:
    """In the child: a bridge; ``t0`` is when ``Bridge.start()`` was called (epoch s)."""
    _common.setup_server_logging()
    rss_before = _common.rss_kib()
    from bridge.app import Bridge
    from bridge.settings import load_settings

    bridge = Bridge(load_settings(None, **overrides))
    t0 = time.time()
    await bridge.start()
    commands = {"t0": lambda: t0, "rss": _common.rss_kib, "rss_before": lambda: rss_before}
    return bridge.http_port, bridge.stop, commands


def _settings(url: str, upstream: dict[str, Any], batch_size: int) -> dict[str, Any]:
    return {
        "smtp": {"port": 0, "host": HOST},
        "http": {"port": 0, "host": HOST},
        "store": {"url": url},
        "log_level": "WARNING",
        "log_format": "json",
        "upstreams": {UPSTREAM: {"status_poll_interval": 0, **upstream}},
        "accounts": {ACCOUNT: {"password": "pw", "upstream": UPSTREAM}},
        "dispatcher": {"poll_interval": 0.2, "batch_size": batch_size},
    }


# -- the outbox ---------------------------------------------------------------------------


async def _enqueue(url: str, count: int, same_text: bool) -> None:
    """``count`` queued messages, through the store API, 1,000 per mail (up to
    :data:`ENQUEUE_PARALLEL` mails at once: PostgreSQL takes them in parallel)."""
    from bridge.models import MailEnvelope, SendRequest
    from bridge.store import open_store

    store = open_store(url)
    await store.open()
    try:
        envelope = MailEnvelope(
            mail_from="bench@example.com",
            recipients=(f"{ACCOUNT}@localhost",),
            message_id=None,
            peer=HOST,
            format="v1",
        )
        gate = asyncio.Semaphore(ENQUEUE_PARALLEL)

        async def one(start: int) -> None:
            requests = [
                SendRequest(
                    account=ACCOUNT,
                    upstream=UPSTREAM,
                    phone=f"7916{index:07d}",
                    text="Bench alert: disk usage 91%" if same_text else f"Bench alert {index}",
                    parts=1,
                    encoding="gsm7",
                )
                for index in range(start, min(count, start + ENQUEUE_CHUNK))
            ]
            async with gate:
                await store.enqueue(envelope, [(None, requests)], now=time.time(), dedup_window=0)

        await asyncio.gather(*(one(start) for start in range(0, count, ENQUEUE_CHUNK)))
    finally:
        await store.close()


def _status_counts(reader: _common.StoreReader) -> dict[str, int]:
    return dict(reader.rows("SELECT status, COUNT(*) FROM messages GROUP BY status"))


def _last_sent_at(reader: _common.StoreReader) -> float | None:
    value = reader.scalar("SELECT MAX(at) FROM message_events WHERE status = 'sent'")
    return None if value is None else float(value)


def _retried(reader: _common.StoreReader) -> int:
    query = "SELECT COUNT(*) FROM messages WHERE status = 'queued' AND attempts > 0"
    return int(reader.scalar(query))


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed): connections are refused."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- measurements -------------------------------------------------------------------------


@dataclass
class Measurement:
    key: str
    name: str
    value: float
    unit: str
    target: str
    verdict: str  # PASS, FAIL or info
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _throughput(
    args: argparse.Namespace,
    kind: str,
    count: int,
    *,
    concurrency: int,
    delay: float = 0.0,
) -> dict[str, Any]:
    """Enqueue ``count``, start the double and the bridge, wait until nothing is left to
    send; returns the figures."""
    with (
        tempfile.TemporaryDirectory(prefix="dispatch-") as tmpdir,
        _common.fresh_store(args.store_template, tmpdir) as url,
    ):
        log(f"[{kind}] enqueueing {count} messages")
        asyncio.run(_enqueue(url, count, same_text=kind == "smsc"))
        double = _common.ServerProcess(f"{kind} double", _start_double, (kind, delay, 3 * count))
        bridge: _common.ServerProcess | None = None
        reader: _common.StoreReader | None = None
        try:
            upstream = {
                "kind": kind,
                "base_url": f"http://{HOST}:{double.port}",
                "concurrency": concurrency,
                **DOUBLES[kind][2],
            }
            settings = _settings(url, upstream, args.batch_size)
            log(f"[{kind}] starting the bridge (delay {delay:g} s, concurrency {concurrency})")
            double_cpu0 = double.cpu()
            bridge = _common.ServerProcess(
                "bridge", _start_bridge, (settings,), log_path=Path(tmpdir) / "bridge.log"
            )
            t0 = float(bridge.call("t0"))
            reader = _common.connect_readonly(url)
            deadline = time.monotonic() + args.phase_timeout
            counts: dict[str, int] = {}
            while time.monotonic() < deadline:
                counts = _status_counts(reader)
                if not counts.get("queued") and not counts.get("sending"):
                    break
                time.sleep(POLL)
            timed_out = bool(counts.get("queued") or counts.get("sending"))
            bridge_cpu = bridge.cpu()
            double_cpu = double.cpu() - double_cpu0
            requests = int(double.call("requests"))
            accepted = int(double.call("accepted"))
            end = _last_sent_at(reader) or time.time()
        finally:
            if reader is not None:
                reader.close()
            if bridge is not None:
                bridge.stop()
            double.stop()
        log_lines = _log_lines(Path(tmpdir) / "bridge.log")
    elapsed = max(end - t0, 1e-9)
    sent = counts.get("sent", 0)
    figures = {
        "kind": kind,
        "messages": count,
        "sent": sent,
        "by_status": counts,
        "elapsed_s": round(elapsed, 3),
        "sends_per_s": sent / elapsed,
        "provider_requests": requests,
        "provider_accepted": accepted,
        "messages_per_request": round(accepted / requests, 1) if requests else 0.0,
        "bridge_cpu_pct": round(100 * bridge_cpu / elapsed),
        "double_cpu_pct": round(100 * double_cpu / elapsed),
        "timed_out": timed_out,
        "bridge_log": log_lines,
    }
    log(f"[{kind}] {figures['sends_per_s']:.0f} sends/s, {sent}/{count} sent in {elapsed:.1f} s")
    return figures


def _log_lines(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    key = f"{entry.get('level')}: {entry.get('msg')}"[:100]
                except (ValueError, AttributeError):
                    key = f"(not JSON) {line.strip()}"[:100]
                counts[key] = counts.get(key, 0) + 1
    except FileNotFoundError:
        pass
    return dict(sorted(counts.items(), key=lambda item: -item[1])[:5])


def _completeness(figures: dict[str, Any]) -> list[str]:
    if figures["sent"] == figures["messages"] and not figures["timed_out"]:
        return []
    return [
        f"{figures['kind']}: {figures['sent']} of {figures['messages']} sent "
        f"({figures['by_status']}){' - phase timeout' if figures['timed_out'] else ''}"
    ]


def measure_unbatched(args: argparse.Namespace) -> Measurement:
    figures = _throughput(args, "smstraffic_v2", args.messages, concurrency=args.concurrency)
    return Measurement(
        "a_unbatched",
        f"a. sends/s, no batching (smstraffic_v2, N={args.messages}, C={args.concurrency})",
        figures["sends_per_s"],
        "/s",
        "info",
        "info",
        figures,
        _completeness(figures),
    )


def measure_batched(args: argparse.Namespace) -> Measurement:
    kind = args.batch_kind
    figures = _throughput(args, kind, args.messages, concurrency=args.concurrency)
    ok = figures["sends_per_s"] >= TARGET_BATCHED
    return Measurement(
        "a_batched",
        f"a. sends/s, batching ({kind}, N={args.messages}, batch <= {args.batch_size})",
        figures["sends_per_s"],
        "/s",
        f">= {TARGET_BATCHED:.0f}/s",
        "PASS" if ok else "FAIL",
        figures,
        _completeness(figures),
    )


def measure_latency(args: argparse.Namespace) -> Measurement:
    ideal = args.concurrency / args.latency
    target = TARGET_LATENCY_SHARE * ideal
    figures = _throughput(
        args,
        "smstraffic_v2",
        args.latency_messages,
        concurrency=args.concurrency,
        delay=args.latency,
    )
    figures["ideal_per_s"] = ideal
    figures["share_of_ideal"] = round(figures["sends_per_s"] / ideal, 3)
    ok = figures["sends_per_s"] >= target
    return Measurement(
        "b_latency",
        f"b. sends/s, {args.latency * 1000:.0f} ms provider, C={args.concurrency} "
        f"(N={args.latency_messages}; ideal {ideal:.0f}/s)",
        figures["sends_per_s"],
        "/s",
        f">= {target:.0f}/s (0.9 x C/latency)",
        "PASS" if ok else "FAIL",
        figures,
        _completeness(figures),
    )


def measure_memory(args: argparse.Namespace) -> Measurement:
    count = args.memory_messages
    threshold = min(count, args.memory_batches * args.batch_size)
    problems: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="dispatch-mem-") as tmpdir,
        _common.fresh_store(args.store_template, tmpdir) as url,
    ):
        log(f"[memory] enqueueing {count} messages")
        asyncio.run(_enqueue(url, count, same_text=False))
        upstream = {
            "kind": "smstraffic_v2",
            "base_url": f"http://{HOST}:{_closed_port()}",
            "concurrency": args.concurrency,
            **DOUBLES["smstraffic_v2"][2],
        }
        settings = _settings(url, upstream, args.batch_size)
        log("[memory] starting the bridge against a refusing provider")
        bridge = _common.ServerProcess(
            "bridge", _start_bridge, (settings,), log_path=Path(tmpdir) / "bridge.log"
        )
        reader: _common.StoreReader | None = None
        try:
            reader = _common.connect_readonly(url)
            rss_before = bridge.call("rss_before")
            started = time.monotonic()
            deadline = started + args.phase_timeout
            retried = 0
            while time.monotonic() < deadline:
                retried = _retried(reader)
                if retried >= threshold and time.monotonic() - started >= 2.0:
                    break
                time.sleep(0.25)
            if retried < threshold:
                problems.append(f"only {retried} messages retried, expected >= {threshold}")
            samples = []
            for _ in range(5):
                samples.append(bridge.call("rss"))
                time.sleep(0.2)
            running_s = time.monotonic() - started
            counts = _status_counts(reader)
            retried = _retried(reader)
        finally:
            if reader is not None:
                reader.close()
            bridge.stop()
        log_lines = _log_lines(Path(tmpdir) / "bridge.log")
    rss_mb = max(s["VmRSS"] for s in samples) / 1024
    peak_mb = max(s["VmHWM"] for s in samples) / 1024
    if counts.get("sent"):
        problems.append(f"{counts['sent']} messages sent to a refusing provider")
    figures = {
        "messages": count,
        "by_status": counts,
        "retried": retried,
        "retried_threshold": threshold,
        "running_s": round(running_s, 1),
        "rss_mb": round(rss_mb, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "rss_before_bridge_mb": round(rss_before["VmRSS"] / 1024, 1),
        "bridge_log": log_lines,
    }
    log(f"[memory] RSS {rss_mb:.1f} MB (peak {peak_mb:.1f} MB), {retried} retried")
    return Measurement(
        "c_memory",
        f"c. bridge peak RSS (VmHWM), {count} queued, provider refusing",
        peak_mb,
        "MB",
        f"< {TARGET_RSS_MB:.0f} MB",
        "PASS" if peak_mb < TARGET_RSS_MB else "FAIL",
        figures,
        problems,
    )


# -- report -------------------------------------------------------------------------------


def _table(results: list[Measurement]) -> str:
    width = max(len(m.name) for m in results)
    header = f"{'measurement':<{width}} {'value':>12} {'target':<28} verdict"
    lines = [header, "-" * len(header)]
    for m in results:
        value = f"{m.value:.1f} {m.unit}"
        verdict = m.verdict if not m.problems or m.verdict == "FAIL" else "FAIL"
        lines.append(f"{m.name:<{width}} {value:>12} {m.target:<28} {verdict}")
    return "\n".join(lines)


def _details(m: Measurement) -> str:
    d = m.details
    if m.key == "c_memory":
        return (
            f"  {m.key}: RSS now {d['rss_mb']} MB, peak {d['peak_rss_mb']} MB, before "
            f"Bridge() {d['rss_before_bridge_mb']} MB; {d['retried']} messages retried after "
            f"{d['running_s']} s; statuses {d['by_status']}"
        )
    extra = f", {d['share_of_ideal']:.2f} of ideal" if "share_of_ideal" in d else ""
    return (
        f"  {m.key}: {d['sent']}/{d['messages']} sent in {d['elapsed_s']} s{extra}; "
        f"{d['provider_requests']} provider requests ({d['messages_per_request']} msgs/request); "
        f"cpu bridge {d['bridge_cpu_pct']} %, double {d['double_cpu_pct']} %"
    )


MEASUREMENTS = {
    "a": (measure_unbatched, measure_batched),
    "b": (measure_latency,),
    "c": (measure_memory,),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000, help="(a) messages per run")
    parser.add_argument("--batch-kind", choices=("kcell", "smsc"), default="kcell")
    parser.add_argument("--batch-size", type=int, default=500, help="dispatcher.batch_size")
    parser.add_argument("--concurrency", type=int, default=20, help="upstream concurrency C")
    parser.add_argument("--latency", type=float, default=0.2, help="(b) provider latency, s")
    parser.add_argument("--latency-messages", type=int, default=2000, help="(b) messages")
    parser.add_argument("--memory-messages", type=int, default=100_000, help="(c) queued")
    parser.add_argument(
        "--memory-batches", type=int, default=5, help="(c) batches failed before sampling"
    )
    parser.add_argument("--only", default="a,b,c", help="which of a, b, c to run")
    parser.add_argument(
        "--phase-timeout", type=float, default=PHASE_TIMEOUT, help="cap per measurement, s"
    )
    _common.add_store_options(parser, "fresh per measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    args.store_template = _common.resolve_store(args.store, args.store_url)
    only = [part.strip() for part in args.only.split(",") if part.strip()]
    if not only or any(part not in MEASUREMENTS for part in only):
        parser.error("--only takes a comma-separated subset of a, b, c")
    sizes = (args.messages, args.latency_messages, args.memory_messages, args.batch_size)
    if min(sizes) < 1 or args.concurrency < 1 or args.latency <= 0:
        parser.error("counts, --batch-size and --concurrency must be >= 1, --latency > 0")

    results = [measure(args) for part in only for measure in MEASUREMENTS[part]]
    reasons = [p for m in results for p in m.problems]
    reasons += [
        f"{m.name}: {m.value:.1f} {m.unit}, target {m.target}"
        for m in results
        if m.verdict == "FAIL"
    ]
    verdict = "FAIL" if reasons else "PASS"
    if args.json:
        print(
            json.dumps(
                {
                    "measurements": [asdict(m) for m in results],
                    "verdict": verdict,
                    "reasons": reasons,
                    "store": _common.store_kind(args.store_template),
                    "cpus": os.cpu_count(),
                },
                indent=2,
            )
        )
    else:
        print(f"store: {_common.store_kind(args.store_template)}")
        print(_table(results))
        for m in results:
            print(_details(m))
        print(f"verdict: {verdict}")
        for reason in reasons:
            print(f"  FAIL reason: {reason}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

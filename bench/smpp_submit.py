"""SMPP submit benchmark: submit_sm/s from the ``smpp`` upstream to the test SMSC.

What it measures
    The test SMSC (``tests/doubles/smpp_smsc.py``, answering every submit_sm at once, no
    throttling) runs in its own process (``spawn``). In this process one
    :class:`bridge.upstreams.smpp.SmppUpstream` binds as a transceiver with ``--window``
    (10) submit_sm outstanding at most, and ``--senders`` (50) tasks call its ``send`` —
    as the dispatcher's concurrent deliveries do — until ``--count`` (20,000) one-part
    GSM 03.38 messages are accepted. submit_sm/s = accepted / wall time from the first
    ``send`` to the last resp. Rounds (``--rounds``, 3) are each a fresh bind; the median
    is reported with the CPU seconds of both processes. Target: >= 1,000 submit_sm/s
    with a window of 10 (the provider's recommended 20 SMS/s is a rate limit of the
    account, set by ``rate_per_second``, not the ceiling of the code).

    The check after each round: the SMSC double saw exactly ``count`` submit_sm, all
    accepted, no protocol violation; the session never had more than ``window`` submit_sm
    awaiting their resp (its peak is printed).

    Then, for information, the whole bridge: ``--bridge-count`` (5,000) messages put in a
    fresh SQLite outbox through the store API (as ``bench/dispatch.py`` does), a bridge
    started with the ``smpp`` upstream (``concurrency`` 20) against the same SMSC, and
    sends/s = messages ``sent`` / (last ``sent`` event - ``Bridge.start()``): the
    dispatcher's claim, the intent written before each request and the outcome committed
    after it are part of that figure.

Run
    .venv/bin/python bench/smpp_submit.py [--count 20000] [--window 10] [--senders 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _common

ROOT = Path(__file__).resolve().parent.parent
LOGIN, PASSWORD = "bench", "bench"


async def _start_smsc(hold: int) -> _common.Started:
    """In the child: the test SMSC; ``stats`` reports what it saw."""
    sys.path.insert(0, str(ROOT))
    from tests.doubles.smpp_smsc import ROK, SmppSmscDouble

    double = SmppSmscDouble(system_id=LOGIN, password=PASSWORD)
    await double.start()

    def stats() -> dict[str, Any]:
        seen = {"submits": len(double.submits),
                "accepted": sum(1 for s in double.submits if s.status == ROK),
                "violations": double.violations[:5]}
        double.submits.clear()  # the next round starts from zero
        return seen

    return double.port, double.stop, {"stats": stats}


async def _round(port: int, count: int, window: int, senders: int) -> tuple[float, int]:
    sys.path.insert(0, str(ROOT))
    from pydantic import SecretStr

    from bridge.settings import upstream_settings
    from bridge.upstreams.base import OutboundSms
    from bridge.upstreams.smpp import SmppUpstream

    class NoSink:
        async def delivery_reports(self, upstream: str, reports: Any) -> None:
            return None

        async def inbound_message(self, message: Any) -> None:
            return None

        async def claim_receiver(self, upstream: str, ttl: float) -> bool:
            return True

        async def release_receiver(self, upstream: str) -> None:
            return None

    settings = upstream_settings(kind="smpp", base_url=f"smpp://127.0.0.1:{port}",
                                login=LOGIN, password=SecretStr(PASSWORD), window=window,
                                timeout=30.0)
    upstream = SmppUpstream("bench", settings)
    runner = asyncio.create_task(upstream.run(NoSink()))
    # The first send waits for the bind; timing starts after it.
    await upstream.send(OutboundSms(0, "warm-0", 1, "79160000000", "warm up", "gsm7"))
    next_id = iter(range(1, count + 1))

    async def sender() -> None:
        for message_id in next_id:
            await upstream.send(OutboundSms(message_id, f"k-{message_id}", 1, "79161234567",
                                            f"Benchmark message number {message_id}", "gsm7"))

    session = upstream._sender
    assert session is not None
    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    elapsed = time.perf_counter() - started
    await upstream.aclose()
    await runner
    return elapsed, session.peak_outstanding


def _through_bridge(smsc: _common.ServerProcess, count: int, window: int) -> None:
    import tempfile

    import dispatch

    with tempfile.TemporaryDirectory() as tmpdir:
        url = f"sqlite:///{Path(tmpdir) / 'bench.sqlite3'}"
        asyncio.run(dispatch._enqueue(url, count, same_text=False))
        upstream = {"kind": "smpp", "base_url": f"smpp://127.0.0.1:{smsc.port}",
                    "login": LOGIN, "password": PASSWORD, "window": window,
                    "concurrency": 20}
        bridge = _common.ServerProcess("bridge", dispatch._start_bridge,
                                       (dispatch._settings(url, upstream, 200),),
                                       log_path=Path(tmpdir) / "bridge.log")
        try:
            t0 = float(bridge.call("t0"))
            reader = _common.connect_readonly(url)
            deadline = time.monotonic() + 300
            counts: dict[str, int] = {}
            while time.monotonic() < deadline:
                counts = dispatch._status_counts(reader)
                if not counts.get("queued") and not counts.get("sending"):
                    break
                time.sleep(0.2)
            last = dispatch._last_sent_at(reader)
            reader.close()
        finally:
            bridge.stop()
        seen = smsc.call("stats")
        sent = counts.get("sent", 0)
        rate = sent / (last - t0) if last else 0.0
        _common.log(f"whole bridge (SQLite outbox, dispatcher, smpp upstream): {sent} of "
                    f"{count} sent, {rate:,.0f} sends/s; the SMSC accepted {seen['accepted']}"
                    f" submit_sm, violations {seen['violations']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="messages per round")
    parser.add_argument("--window", type=int, default=10, help="submit_sm outstanding at most")
    parser.add_argument("--senders", type=int, default=50, help="concurrent send() callers")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--bridge-count", type=int, default=5_000,
                        help="messages through the whole bridge (0: skip that phase)")
    args = parser.parse_args()
    smsc = _common.ServerProcess("smsc", _start_smsc, (0,))
    rates: list[float] = []
    cpu_client: list[float] = []
    cpu_smsc: list[float] = []
    try:
        for round_number in range(1, args.rounds + 1):
            smsc.call("stats")  # forget the previous round's warm-up
            smsc_cpu0, client_cpu0 = smsc.cpu(), time.process_time()
            elapsed, peak = asyncio.run(_round(smsc.port, args.count, args.window,
                                               args.senders))
            cpu_client.append(time.process_time() - client_cpu0)
            cpu_smsc.append(smsc.cpu() - smsc_cpu0)
            seen = smsc.call("stats")
            # +1: the warm-up message of the round.
            if seen["accepted"] != args.count + 1 or seen["submits"] != args.count + 1 \
                    or seen["violations"] or peak > args.window:
                _common.log(f"round {round_number}: CHECK FAILED {seen}")
                return 1
            rates.append(args.count / elapsed)
            _common.log(f"round {round_number}: {args.count} submit_sm in {elapsed:.2f} s = "
                        f"{rates[-1]:,.0f}/s (client CPU {cpu_client[-1]:.2f} s, SMSC CPU "
                        f"{cpu_smsc[-1]:.2f} s, peak outstanding {peak})")
        if args.bridge_count:
            _through_bridge(smsc, args.bridge_count, args.window)
    finally:
        smsc.stop()
    median = statistics.median(rates)
    print(f"smpp submit_sm/s, window {args.window}, {args.senders} senders, "
          f"{args.count} messages x {args.rounds} rounds: median {median:,.0f}/s "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}); target >= 1,000/s: "
          f"{'met' if median >= 1000 else 'NOT met'}")
    return 0 if median >= 1000 else 1


if __name__ == "__main__":
    sys.exit(main())

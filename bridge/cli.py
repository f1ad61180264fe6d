"""``sms-bridge`` command line: serve, check-config, messages, resolve, mails, inbound,
reports, balance, dead-letters, redeliver, targets, enable-target, migrate.

The only place that exits the process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bridge import __version__
from bridge.errors import BridgeError, ListenError, StoreUnavailable
from bridge.listen import Listeners, bind_listeners
from bridge.logs import setup_logging
from bridge.redact import redact_text, redact_url, register_settings
from bridge.settings import Settings, load_settings, masked_dump, unknown_environment
from bridge.store.base import OutboxStore

log = logging.getLogger(__name__)

# tomllib ends each message with where it stopped: "Invalid value (at line 3, column 8)".
_TOML_WHERE = re.compile(r"^(?P<what>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)$")


def _load(args: argparse.Namespace) -> Settings:
    path = args.config or os.environ.get("BRIDGE_CONFIG") or None
    try:
        settings = load_settings(Path(path) if path else None)
        # Whatever a command prints or logs, a configured secret is masked in it.
        register_settings(settings)
        return settings
    except FileNotFoundError as exc:
        print(f"sms-bridge: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    except tomllib.TOMLDecodeError as exc:
        # One line naming the place, not tomllib's traceback.
        where = _TOML_WHERE.match(str(exc))
        place = (f"{path}, line {where['line']}, column {where['column']}: invalid TOML: "
                 f"{where['what']}" if where else f"{path}: invalid TOML: {exc}")
        print(f"sms-bridge: {place}", file=sys.stderr)
        raise SystemExit(2) from exc
    except UnicodeDecodeError as exc:
        if path is None:
            raise
        line = exc.object[:exc.start].count(b"\n") + 1
        print(f"sms-bridge: {path}: not UTF-8 text (line {line}, byte {exc.start}); a TOML "
              "file is UTF-8", file=sys.stderr)
        raise SystemExit(2) from exc
    except ValidationError as exc:
        print("sms-bridge: invalid configuration:", file=sys.stderr)
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "(top level)"
            print(f"  {key}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from exc


_STABLE_RUN = 60.0  # a worker that served this long before it exited ends a row of crashes
_MAX_RESTART_DELAY = 60.0


def _serve_workers(settings: Settings, config: str | None, workers: int) -> int:
    """``serve --workers N``: N processes serve the SMTP and HTTP ports, so one machine's
    cores are all used. This process binds the ports once, without SO_REUSEPORT, and hands
    the sockets to the workers (:mod:`bridge.listen`): the kernel gives each connection to
    one of them, and a second bridge on the same ports is refused instead of silently taking
    a share of the mail. They share the store: SQLite serialises their writes (``BEGIN
    IMMEDIATE`` with a busy timeout), PostgreSQL claims with ``FOR UPDATE SKIP LOCKED``.

    A worker that exits is started again after ``workers.restart_delay``, doubled for each
    crash in a row (up to a minute); after ``workers.max_restarts`` crashes in a row the
    others are stopped and serve exits 1 - a worker failing at start (a store it cannot
    open) fails the same way every time.

    The workers count their metrics in a directory of this run (:mod:`bridge.metrics`),
    made empty here and removed at the end, so that a scrape of any worker shows the sum
    of all and no counter of an earlier run."""
    import multiprocessing
    import shutil
    import tempfile
    from multiprocessing.connection import wait

    from bridge.metrics import MULTIPROCESS_DIR

    if settings.smtp.port == 0 or settings.http.port == 0:
        print("sms-bridge: --workers needs fixed smtp.port and http.port", file=sys.stderr)
        return 2
    try:
        listeners = bind_listeners(settings)
    except ListenError as exc:
        print(f"sms-bridge: {exc}", file=sys.stderr)
        return 1
    metrics_dir = tempfile.mkdtemp(prefix="sms-bridge-metrics-")
    os.environ[MULTIPROCESS_DIR] = metrics_dir  # inherited by every worker started below
    context = multiprocessing.get_context("spawn")
    policy = settings.workers
    stopping = False
    exit_code = 0

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker_main, args=(config, listeners), daemon=False)
        process.start()
        return process

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    slots: list[multiprocessing.process.BaseProcess | None] = [start() for _ in range(workers)]
    started_at = [time.monotonic()] * workers
    restart_at: dict[int, float] = {}  # slot -> when its next worker starts
    crashes = 0  # in a row, across the slots
    while not stopping:
        running = [process for process in slots if process is not None]
        pause = min([0.5, *(at - time.monotonic() for at in restart_at.values())])
        if running:
            wait([process.sentinel for process in running], timeout=max(pause, 0.0))
        else:
            time.sleep(max(pause, 0.0))
        now = time.monotonic()
        for index, process in enumerate(slots):
            if process is None or process.exitcode is None or stopping:
                continue
            slots[index] = None
            crashes = 1 if now - started_at[index] >= _STABLE_RUN else crashes + 1
            if crashes > policy.max_restarts:
                print(f"sms-bridge: workers crashed {crashes} times in a row; giving up",
                      file=sys.stderr)
                stopping, exit_code = True, 1
                break
            delay = min(policy.restart_delay * 2 ** (crashes - 1), _MAX_RESTART_DELAY)
            print(f"sms-bridge: worker {process.pid} exited with {process.exitcode}; "
                  f"starting another in {delay:g} s", file=sys.stderr)
            restart_at[index] = now + delay
        for index, at in list(restart_at.items()):
            if not stopping and at <= now:
                del restart_at[index]
                slots[index] = start()
                started_at[index] = time.monotonic()
    for process in slots:
        if process is not None and process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    for process in slots:
        if process is not None:
            process.join(timeout=30)
    listeners.close()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return exit_code


def _worker_main(config: str | None, listeners: Listeners) -> None:
    """One worker of ``serve --workers N``, on the sockets its parent bound. What stops it
    from serving (a store it cannot open) is one line on stderr and exit 1: the parent
    decides whether to start another."""
    settings = load_settings(Path(config) if config else None)
    setup_logging(settings.log_level, settings.log_format, access_log=settings.http.access_log)
    try:
        from bridge.app import run_serving

        run_serving(_serve(settings, listeners=listeners))
    except BridgeError as exc:
        print(f"sms-bridge: worker {os.getpid()}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


async def _serve(settings: Settings, *, listeners: Listeners | None = None) -> None:
    from bridge.app import Bridge

    bridge = Bridge(settings, listeners=listeners)
    await bridge.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await bridge.stop()


@contextlib.asynccontextmanager
async def _opened_store(settings: Settings, *, migrate: bool = False
                        ) -> AsyncIterator[OutboxStore]:
    """The configured store, opened for one command, then closed. Only ``migrate`` creates or
    upgrades the schema: a command that reads (run in the wrong directory, or by a newer
    sms-bridge than the servers) must not create an empty store or migrate a shared one."""
    from bridge.store import open_store

    store = open_store(settings.store.url, busy_timeout=settings.store.busy_timeout)
    await store.open(migrate=migrate)
    try:
        yield store
    finally:
        await store.close()


async def _messages(settings: Settings, limit: int, status: str | None, as_json: bool) -> None:
    async with _opened_store(settings) as store:
        rows = await store.list_messages(limit=limit, status=status)
        if as_json:
            # Every listed message's history in one query, not one query per message.
            events = await store.message_events_of([row.id for row in rows])
            _print_json([{**vars(row), "events": events.get(row.id, [])} for row in rows])
            return
        print(f"{'id':>6}  {'created (UTC)':19}  {'status':9} {'delivery':11} {'att':>3}  "
              f"{'upstream':12} {'phone':15} {'parts':>5}  text / error")
        for row in rows:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row.created_at))
            text = " ".join(row.text.split())
            detail = text[:40] + ("…" if len(text) > 40 else "")
            if row.last_error:
                detail += f"  [{redact_text(row.last_error)[:60]}]"
            if row.upstream_ids:
                detail += f"  ids={','.join(row.upstream_ids)}"
            print(f"{row.id:>6}  {created}  {row.status:9} {row.delivery_status or '-':11} "
                  f"{row.attempts:>3}  "
                  f"{(row.upstream_used or row.upstream):12} {row.phone:15} {row.parts:>5}  "
                  f"{detail}")


def _print_json(rows: Sequence[Mapping[str, Any]]) -> None:
    """A listing's ``--json``: an array of objects. Stored errors are redacted when written;
    older rows are redacted here."""
    print(redact_text(json.dumps(rows, ensure_ascii=False, indent=2, default=str)))


async def _mails(settings: Settings, limit: int, as_json: bool) -> None:
    async with _opened_store(settings) as store:
        rows = await store.list_mails(limit=limit)
    if as_json:  # without the mail itself (bytes; a bounce quotes the SMS)
        _print_json([{k: v for k, v in row.items() if k != "content"} for row in rows])
        return
    print(f"{len(rows)} mail(s)")
    print(f"{'id':>6}  {'created (UTC)':19}  {'kind':9} {'status':7} {'att':>3}  {'to':30} "
          "error")
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["created_at"]))
        print(f"{row['id']:>6}  {created}  {row['kind']:9} {row['status']:7} "
              f"{row['attempts']:>3}  {row['mail_to']:30} "
              f"{redact_text(row['last_error'] or '')}")


async def _inbound(settings: Settings, limit: int, as_json: bool) -> None:
    async with _opened_store(settings) as store:
        rows = await store.list_inbound(limit=limit)
    if as_json:
        _print_json([{**row, "charset_error": bool(row["charset_error"])} for row in rows])
        return
    print(f"{'id':>6}  {'received (UTC)':19}  {'source':8} {'kind':9} {'state':9} "
          f"{'from':15} {'to':8} {'fwd':>5}  text")
    for row in rows:
        received = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["received_at"]))
        text = " ".join(row["text"].split())[:40]
        if row["charset_error"]:
            text += "  [charset error: raw bytes stored]"
        if row["script_error"]:
            text += f"  [script: {redact_text(row['script_error'])[:40]}]"
        print(f"{row['id']:>6}  {received}  {row['source']:8} {row['kind']:9} "
              f"{row['state']:9} {row['phone']:15} {row['recipient'] or '':8} "
              f"{row['delivered']}/{row['forwards']:<3}  {text}")


async def _dead_letters(settings: Settings, limit: int, as_json: bool) -> None:
    async with _opened_store(settings) as store:
        rows = await store.list_forward_jobs(status="dead", limit=limit)
        if as_json:
            _print_json(rows)
            return
        print(f"{len(rows)} dead letter(s)")
        for row in rows:
            print(f"{row['id']:>6}  inbound {row['inbound_id']:<6} {row['kind']:7} "
                  f"{row['target']:30} attempts={row['attempts']}  "
                  f"{redact_text(row['last_error'] or '')}")


async def _reports(settings: Settings, limit: int, unmatched: bool, as_json: bool) -> None:
    async with _opened_store(settings) as store:
        rows = await store.list_delivery_reports(unmatched=unmatched, limit=limit)
    if as_json:
        _print_json(rows)
        return
    print(f"{len(rows)} {'unmatched ' if unmatched else ''}delivery report(s)")
    print(f"{'id':>6}  {'received (UTC)':19}  {'source':12} {'provider id':24} {'message':>7}  "
          "status")
    for row in rows:
        received = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["received_at"]))
        status = f"{row['status']} ({row['raw_status']})"
        if row["error_code"]:
            status += f" error {row['error_code']}"
        print(f"{row['id']:>6}  {received}  {row['source']:12} {row['provider_id']:24} "
              f"{row['message_id'] or '-':>7}  {status}")


async def _balance(settings: Settings, names: list[str], as_json: bool) -> int:
    """Each named (default: every configured) upstream's account balance, asked of the
    provider now; 1 when one could not be read. ``--json``: the balance as a decimal
    string (exact), null where the provider has no balance query or did not answer."""
    from bridge.errors import UpstreamError
    from bridge.upstreams import registry
    from bridge.upstreams.base import BalanceQuery, provider_client

    unknown = [name for name in names if name not in settings.upstreams]
    if unknown:
        print(f"sms-bridge: no such upstream: {', '.join(unknown)} "
              f"(configured: {', '.join(sorted(settings.upstreams))})", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    async with provider_client() as client:
        for name in names or sorted(settings.upstreams):
            config = settings.upstreams[name]
            upstream = registry.build(name, config, client)
            row: dict[str, Any] = {"upstream": name, "kind": config.kind, "balance": None,
                                   "supported": isinstance(upstream, BalanceQuery),
                                   "error": None}
            rows.append(row)
            try:
                if isinstance(upstream, BalanceQuery):
                    row["balance"] = await upstream.balance()
            except UpstreamError as exc:
                row["error"] = redact_text(str(exc))
            finally:
                await upstream.aclose()
            if as_json:
                continue
            if not row["supported"]:
                print(f"{name:16} {config.kind:16} -  (this provider offers no balance query)")
            elif row["error"] is not None:
                print(f"{name:16} {config.kind:16} ?  ({row['error']})")
            else:
                print(f"{name:16} {config.kind:16} {row['balance']}")
    if as_json:
        _print_json(rows)
    return 1 if any(row["error"] is not None for row in rows) else 0


async def _resolve(settings: Settings, message_id: int, sent: bool) -> int:
    """Settle a message held as ``ambiguous``: it was sent (``--sent``: recorded so, never
    sent again), or it is to be sent again now (``--resend``: the operator takes the risk of
    a second copy). 1 when the message is not held."""
    async with _opened_store(settings) as store:
        if not await store.resolve_ambiguous(message_id, sent=sent, now=time.time()):
            print(f"sms-bridge: message {message_id} is not ambiguous (see `sms-bridge "
                  "messages --status ambiguous`)", file=sys.stderr)
            return 1
    print(f"message {message_id}: " + ("recorded as sent" if sent
                                       else "queued to be sent again"))
    return 0


async def _redeliver(settings: Settings, ids: list[int], everything: bool) -> int:
    """Queue dead letters again; 1 when an id given is not a dead letter (mistyped, or
    queued again already)."""
    async with _opened_store(settings) as store:
        now = time.time()
        missing: list[int] = []
        if not everything:
            dead = {row["id"] for row in await store.list_forward_jobs(status="dead",
                                                                       limit=1_000_000)}
            missing = [job_id for job_id in ids if job_id not in dead]
        count = await store.redeliver(None if everything else ids, now,
                                      now + settings.inbound.forward_retry_period)
    print(f"{count} dead letter(s) queued again")
    if missing:
        print(f"sms-bridge: not dead letters: {', '.join(map(str, missing))}", file=sys.stderr)
        return 1
    return 0


async def _targets(settings: Settings, as_json: bool) -> None:
    """Every configured webhook, and whether it is disabled (after a 410 Gone)."""
    from bridge.relays.forward import read_disabled

    async with _opened_store(settings) as store:
        found = [(name, await read_disabled(store, name))
                 for name in sorted(settings.inbound.webhooks)]
        if as_json:
            _print_json([{"name": name, "enabled": info is None,
                          **({"disabled_at": info.get("at"), "reason": info.get("reason"),
                              "job": info.get("job")} if info is not None else {})}
                         for name, info in found])
            return
        for name, info in found:
            if info is None:
                print(f"{name:20} enabled")
                continue
            since = info.get("at")
            when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
                    if isinstance(since, int | float) else "?")
            print(f"{name:20} disabled since {when}: {info.get('reason', '?')}"
                  f" (job {info.get('job', '?')})")


async def _enable_targets(settings: Settings, names: list[str]) -> int:
    """Enable webhooks disabled after a 410; 1 when one was not disabled."""
    from bridge.relays.forward import enable_target

    failed = False
    async with _opened_store(settings) as store:
        dead = [row for row in await store.list_forward_jobs(status="dead", limit=1_000_000)
                if row["kind"] == "webhook"]
        for name in names:
            if not await enable_target(store, name):
                print(f"sms-bridge: webhook {name!r} is not disabled", file=sys.stderr)
                failed = True
                continue
            ids = sorted(row["id"] for row in dead if row["target"] == name)
            print(f"webhook {name} enabled")
            if ids:
                print(f"  {len(ids)} dead letter(s) for it; to send them: "
                      f"sms-bridge redeliver {' '.join(map(str, ids))}")
    return 1 if failed else 0


async def _migrate(settings: Settings) -> None:
    async with _opened_store(settings, migrate=True) as store:  # opening migrates
        before, after = store.schema_change or (0, 0)
    where = f"store {redact_url(settings.store.url)}"
    if before == after:
        print(f"{where} is already at schema version {after}; nothing to do")
    elif before == 0:
        print(f"{where}: created at schema version {after}")
    else:
        print(f"{where}: migrated from schema version {before} to {after}")


def _positive(value: str) -> int:
    """A count of at least 1. argparse names a failed ``type`` callable in its message
    ("invalid _positive value"): the message here says what is expected instead."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {value!r}")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sms-bridge", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (or BRIDGE_CONFIG)")
    parser.add_argument("--version", action="version", version=f"sms-bridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the SMTP and HTTP listeners and the dispatcher")
    serve.add_argument("--workers", type=_positive, default=1,
                       help="processes serving the ports this one binds; default 1")
    commands.add_parser("check-config", help="print the effective configuration, secrets masked")
    messages = commands.add_parser("messages", help="list outbound SMS and their status")
    messages.add_argument("--limit", type=_positive, default=50)
    messages.add_argument("--status", choices=["queued", "sending", "sent", "failed", "ambiguous",
                                               "delivered", "undelivered", "expired", "rejected",
                                               "unknown"])
    messages.add_argument("--json", action="store_true", help="with status history")
    resolve = commands.add_parser(
        "resolve", help="settle an SMS held as ambiguous (it may have been sent)")
    resolve.add_argument("id", type=int, help="message id (messages --status ambiguous)")
    outcome = resolve.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--sent", action="store_true", help="it was sent: record it so")
    outcome.add_argument("--resend", action="store_true", help="send it again now")
    mails = commands.add_parser("mails", help="list mails the bridge sends (bounces, replies)")
    mails.add_argument("--limit", type=_positive, default=50)
    mails.add_argument("--json", action="store_true")
    inbound = commands.add_parser("inbound", help="list inbound SMS and short-code hits")
    inbound.add_argument("--limit", type=_positive, default=50)
    inbound.add_argument("--json", action="store_true")
    dead = commands.add_parser("dead-letters", help="list forwards that gave up")
    dead.add_argument("--limit", type=_positive, default=100)
    dead.add_argument("--json", action="store_true")
    balance = commands.add_parser("balance", help="ask the providers for the account balance")
    balance.add_argument("upstreams", nargs="*", help="upstream names (default: all)")
    balance.add_argument("--json", action="store_true")
    reports = commands.add_parser("reports", help="list delivery reports, newest first")
    reports.add_argument("--unmatched", action="store_true",
                         help="only reports naming no message sent here")
    reports.add_argument("--limit", type=_positive, default=100)
    reports.add_argument("--json", action="store_true")
    redeliver = commands.add_parser("redeliver", help="queue dead letters again")
    redeliver.add_argument("ids", type=int, nargs="*", help="dead-letter ids")
    redeliver.add_argument("--all", action="store_true", help="every dead letter")
    targets = commands.add_parser("targets",
                                  help="list webhook targets, and which are disabled (410)")
    targets.add_argument("--json", action="store_true")
    enable = commands.add_parser("enable-target",
                                 help="enable webhooks disabled after a 410 Gone")
    enable.add_argument("names", nargs="+", help="webhook names")
    commands.add_parser("migrate", help="create or upgrade the store schema")
    args = parser.parse_args(argv)

    settings = _load(args)
    # pydantic-settings reads only the BRIDGE_… variables of known sections: a misspelt one
    # would leave its defaults in force without a word.
    ignored = unknown_environment(os.environ)
    if args.command == "check-config":
        for warning in ignored:
            print(f"sms-bridge: warning: {warning}", file=sys.stderr)
        print(json.dumps(masked_dump(settings), indent=2, ensure_ascii=False))
        return 0
    setup_logging(settings.log_level, settings.log_format, access_log=settings.http.access_log)
    for warning in ignored:
        log.warning(warning)
    try:
        if args.command == "serve":
            if args.workers > 1:
                return _serve_workers(settings, args.config or os.environ.get("BRIDGE_CONFIG"),
                                      args.workers)
            from bridge.app import LoopUnavailable, run_serving

            try:
                run_serving(_serve(settings))
            except LoopUnavailable as exc:
                print(f"sms-bridge: {exc}", file=sys.stderr)
                return 1
        elif args.command == "messages":
            asyncio.run(_messages(settings, args.limit, args.status, args.json))
        elif args.command == "mails":
            asyncio.run(_mails(settings, args.limit, args.json))
        elif args.command == "inbound":
            asyncio.run(_inbound(settings, args.limit, args.json))
        elif args.command == "dead-letters":
            asyncio.run(_dead_letters(settings, args.limit, args.json))
        elif args.command == "balance":
            return asyncio.run(_balance(settings, args.upstreams, args.json))
        elif args.command == "reports":
            asyncio.run(_reports(settings, args.limit, args.unmatched, args.json))
        elif args.command == "resolve":
            return asyncio.run(_resolve(settings, args.id, args.sent))
        elif args.command == "redeliver":
            if not args.ids and not args.all:
                parser.error("redeliver: give dead-letter ids or --all")
            return asyncio.run(_redeliver(settings, args.ids, args.all))
        elif args.command == "targets":
            asyncio.run(_targets(settings, args.json))
        elif args.command == "enable-target":
            return asyncio.run(_enable_targets(settings, args.names))
        elif args.command == "migrate":
            asyncio.run(_migrate(settings))
    except (StoreUnavailable, ListenError) as exc:
        # A store that cannot be reached, or whose schema does not fit, or a port in use:
        # one line, no trace.
        print(f"sms-bridge: {exc}", file=sys.stderr)
        return 1
    return 0

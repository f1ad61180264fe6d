"""Plumbing shared by the benchmarks in ``bench/`` (not a benchmark itself).

* :class:`ServerProcess` - one server (bare, bridge, provider double) in a ``spawn`` child
  driven through a ``Pipe``: the child reports ``("ready", port)``, answers ``cpu`` (its
  ``time.process_time()``, all threads) and any extra commands its start function offers,
  and stops on ``stop``;
* :func:`run_workers` / :func:`summarize` - the load-generator skeleton: ``C`` asyncio
  workers, one hard phase timeout, failures counted by kind, latency percentiles;
* :class:`PhaseResult` / :class:`Round` - the common part of a measured phase and of a
  bare/bridge pair, medians over rounds, and the CPU columns of the tables;
* :class:`ServerGroup` / :func:`free_port` - N bridge processes sharing one fixed port with
  ``SO_REUSEPORT`` (``--workers N``, as ``sms-bridge serve --workers N``);
* :class:`RunOptions` / :func:`add_run_options` / :func:`apply_run_options` - the servers'
  event loop (``--loop asyncio|uvloop``, the bare and the bridge alike) and pinning
  (``--pin``: servers on core 0, the load generator and its children, wrk, on core 1);
* stores: ``--store sqlite|postgres`` / ``--store-url``; :func:`fresh_store` gives every bridge
  run a fresh store (a SQLite file in a fresh directory, or a database ``bench_<uuid8>``
  created on the PostgreSQL server and dropped ``WITH (FORCE)`` afterwards), and
  :func:`connect_readonly` reads either engine for the store checks.

The scripts are run as ``python bench/<script>.py``, so ``sys.path[0]`` is ``bench/`` and
``import _common`` works; a spawned child gets the parent's ``sys.path`` and imports it too.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import socket
import sqlite3
import statistics
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HOST = "127.0.0.1"
#: Load generator CPU (% of one core) above which a figure is marked ``paced``.
PACED_PCT = 80.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0

Connection = multiprocessing.connection.Connection
#: What a server's start function returns: its port, how to stop it, extra commands.
Started = tuple[int, Callable[[], Awaitable[None]], dict[str, Callable[[], Any]]]
StartFn = Callable[..., Awaitable[Started]]
R = TypeVar("R", bound="PhaseResult")
T = TypeVar("T")


# -- event loop and cores -----------------------------------------------------------------

#: The event loop of every server process (bare and bridge alike, so that a ratio compares
#: the same loop): ``asyncio`` or ``uvloop``. Set from ``--loop`` by :func:`apply_run_options`.
LOOPS = ("asyncio", "uvloop")
SERVER_CORE = 0  # the servers' core when pinning
LOAD_CORE = 1  # the load generator's (this process, and wrk, which inherits it)


@dataclass
class RunOptions:
    """How servers and load are placed: the servers' event loop and the cores."""

    loop: str = "asyncio"
    pin: bool = False  # servers on SERVER_CORE, load on LOAD_CORE


RUN = RunOptions()


def _load_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


#: The Python load generators' own loop: uvloop where installed (less CPU per request).
LOAD_LOOP = _load_loop()


def can_pin() -> bool:
    """Pinning needs two cores this process may run on (``taskset`` semantics)."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return False
    return {SERVER_CORE, LOAD_CORE} <= allowed


def apply_run_options(loop: str, pin: bool) -> None:
    """Record the loop and pinning for the server processes started from now on, and pin
    this process (the load generator) to :data:`LOAD_CORE`."""
    RUN.loop = loop
    RUN.pin = pin and can_pin()
    if RUN.pin:
        os.sched_setaffinity(0, {LOAD_CORE})


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A new event loop of ``kind`` (``asyncio`` or ``uvloop``)."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_on(kind: str, coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a loop of ``kind``."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(coro)


def placement() -> str:
    """One line saying where servers and load ran, for the reports."""
    cores = (f"servers pinned to core {SERVER_CORE}, load generator to core {LOAD_CORE}"
             if RUN.pin else "not pinned")
    return f"server loop {RUN.loop}; {cores}; {os.cpu_count()} CPUs"


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--loop`` and ``--pin/--no-pin``; apply them with :func:`apply_run_options`."""
    parser.add_argument("--loop", choices=LOOPS, default="asyncio",
                        help="event loop of every server process, bare and bridge alike")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help=f"pin servers to core {SERVER_CORE} and the load generator to "
                        f"core {LOAD_CORE} (when both are available)")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def rss_kib() -> dict[str, int]:
    """This process's resident set now (VmRSS) and at its peak (VmHWM), in KiB."""
    values: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


# -- store URLs ---------------------------------------------------------------------------

#: The PostgreSQL server ``--store postgres`` uses (an admin URL: any database to connect to).
DEFAULT_POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_TIMEOUT = 10.0


def is_postgres(url: str) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL."""
    return url.startswith(("postgresql://", "postgres://"))


def _with_database(url: str, database: str) -> str:
    """``url`` (a PostgreSQL URL) naming another database, its query string kept."""
    base, sep, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    server = rest.split("/", 1)[0]
    return f"{scheme}://{server}/{database}{sep}{query}"


def store_url(template: str | None, workdir: str | Path, name: str = "bench.sqlite3") -> str:
    """The store URL of one bridge: by default a SQLite file in ``workdir`` (fresh per round);
    ``template`` (``--store-url``) may name ``{workdir}``. A PostgreSQL URL is returned as
    given: use :func:`fresh_store` to get a fresh database on that server."""
    if template is None:
        return f"sqlite:///{Path(workdir) / name}"
    return template.replace("{workdir}", str(workdir))


def resolve_store(store: str, store_url_option: str | None) -> str | None:
    """The ``--store-url`` template from ``--store sqlite|postgres`` and ``--store-url``: an
    explicit URL wins; ``postgres`` means :data:`DEFAULT_POSTGRES_URL`."""
    if store_url_option is not None:
        return store_url_option
    return DEFAULT_POSTGRES_URL if store == "postgres" else None


def store_kind(template: str | None) -> str:
    """``postgres`` or ``sqlite`` (for tables)."""
    return "postgres" if template is not None and is_postgres(template) else "sqlite"


async def _admin(url: str, statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url, timeout=PG_TIMEOUT)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_store(
    template: str | None, workdir: str | Path, name: str = "bench.sqlite3"
) -> Iterator[str]:
    """The store URL of one bridge run, fresh.

    SQLite: :func:`store_url` (a new file in ``workdir``, which the caller makes fresh).
    PostgreSQL: ``template`` names a server and a database to connect to as administrator
    (e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``); a database ``bench_<uuid8>`` is
    created there, its URL yielded, and it is dropped ``WITH (FORCE)`` on exit, so the store
    checks must run inside the ``with`` block. Call it outside any running event loop.
    """
    url = store_url(template, workdir, name)
    if not is_postgres(url):
        yield url
        return
    database = f"bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(url, f'CREATE DATABASE "{database}"'))
    log(f"[store] created PostgreSQL database {database}")
    try:
        yield _with_database(url, database)
    finally:
        asyncio.run(_admin(url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


class StoreReadError(Exception):
    """A store check could not read the store (either engine)."""


class StoreReader:
    """Read-only queries for the store checks, on SQLite (``sqlite3``) or PostgreSQL
    (``asyncpg`` on a private event loop, ``default_transaction_read_only``).

    SQL is written once with ``?`` placeholders; for PostgreSQL they become ``$1, $2, …``.
    Rows are plain tuples. Errors of either engine are raised as :class:`StoreReadError`.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pg: Any = None
        try:
            if url.startswith("sqlite:///"):
                path = url.removeprefix("sqlite:///")
                self._sqlite = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
            elif is_postgres(url):
                import asyncpg

                self._loop = asyncio.new_event_loop()
                self._pg = self._loop.run_until_complete(
                    asyncpg.connect(
                        url,
                        timeout=PG_TIMEOUT,
                        server_settings={
                            "default_transaction_read_only": "on",
                            "application_name": "bench-check",
                        },
                    )
                )
            else:
                raise StoreReadError(f"no reader for {url.split(':', 1)[0]}:// URLs")
        except StoreReadError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise StoreReadError(f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _numbered(sql: str) -> str:
        parts = sql.split("?")
        return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of one query."""
        try:
            if self._sqlite is not None:
                return [tuple(row) for row in self._sqlite.execute(sql, tuple(params))]
            assert self._loop is not None and self._pg is not None
            records = self._loop.run_until_complete(
                self._pg.fetch(self._numbered(sql), *params, timeout=PG_TIMEOUT)
            )
            return [tuple(record) for record in records]
        except Exception as exc:
            raise StoreReadError(f"{type(exc).__name__}: {exc}") from exc

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row (None without rows)."""
        found = self.rows(sql, params)
        return found[0][0] if found else None

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        if self._loop is not None:
            if self._pg is not None:
                with contextlib.suppress(Exception):
                    self._loop.run_until_complete(self._pg.close(timeout=PG_TIMEOUT))
                self._pg = None
            self._loop.close()
            self._loop = None

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_readonly(url: str) -> StoreReader:
    """A read-only reader for the store checks, made after (or beside) the bridge: SQLite
    (``mode=ro``) or PostgreSQL (asyncpg, read-only transactions); see :class:`StoreReader`."""
    return StoreReader(url)


# -- server processes ---------------------------------------------------------------------


async def _child(start: StartFn, conn: Connection, args: tuple[Any, ...]) -> None:
    port, stop, commands = await start(*args)
    loop = asyncio.get_running_loop()
    conn.send(("ready", port))
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "stop":
            break
        if command == "cpu":  # all threads of this process (the SQLite writer included)
            conn.send(("cpu", time.process_time()))
        elif command in commands:
            conn.send((command, commands[command]()))
        else:
            conn.send(("error", f"unknown command {command!r}"))
    await stop()
    conn.send(("stopped", None))


def _child_main(
    start: StartFn, conn: Connection, args: tuple[Any, ...], log_path: str | None,
    run: RunOptions,
) -> None:
    if run.pin:
        os.sched_setaffinity(0, {SERVER_CORE})
    RUN.loop, RUN.pin = run.loop, run.pin
    if log_path is not None:
        # The server's log goes to a file: thousands of expected warnings would otherwise
        # drown the report. Writing it is still part of the server's work.
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        run_on(run.loop, _child(start, conn, args))
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))
        raise


class ServerProcess:
    """One server in a spawned child process, driven through a Pipe.

    ``start(*args)`` runs in the child (a module-level coroutine function, so that it can
    be pickled) and returns ``(port, stop, commands)``.
    """

    def __init__(
        self,
        kind: str,
        start: StartFn,
        args: tuple[Any, ...] = (),
        *,
        log_path: str | Path | None = None,
        start_timeout: float = START_TIMEOUT,
        wait: bool = True,
    ) -> None:
        self.kind = kind
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_child_main,
            args=(start, child, args, None if log_path is None else str(log_path), RUN),
            name=f"bench-{kind}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.port = 0
        self.start_timeout = start_timeout
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait for the child's ``("ready", port)`` (done by ``__init__`` unless ``wait=False``,
        which lets several children start at once); stops the child on failure."""
        try:
            self.port = int(self._expect("ready", self.start_timeout))
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def _expect(self, tag: str, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.kind} server: no {tag!r} within {timeout:.0f} s")
        got, value = self.conn.recv()
        if got == "error":
            raise RuntimeError(f"{self.kind} server failed:\n{value}")
        if got != tag:
            raise RuntimeError(f"{self.kind} server: expected {tag!r}, got {got!r}")
        return value

    def call(self, command: str, timeout: float = 10.0) -> Any:
        self.conn.send(command)
        return self._expect(command, timeout)

    def cpu(self) -> float:
        return float(self.call("cpu"))

    def stop(self) -> None:
        try:
            if self.process.is_alive():
                self.conn.send("stop")
                self._expect("stopped", STOP_TIMEOUT)
        finally:
            self.process.join(15.0)
            if self.process.is_alive():  # our own child only
                self.process.terminate()
                self.process.join(5.0)
            self.conn.close()


class ServerGroup:
    """``count`` servers of one kind started together, each in its own child process; they
    share one port when ``start`` binds it with ``SO_REUSEPORT`` (the bridge's
    ``serve --workers N``). ``cpu()`` sums the children's CPU; ``call()`` asks the first."""

    def __init__(
        self,
        kind: str,
        start: StartFn,
        args_of: Callable[[int], tuple[Any, ...]],
        count: int,
        *,
        log_path_of: Callable[[int], str | Path | None] = lambda index: None,
    ) -> None:
        self.kind = kind
        self.servers: list[ServerProcess] = []
        try:
            for index in range(count):
                label = kind if count == 1 else f"{kind}#{index + 1}"
                self.servers.append(
                    ServerProcess(
                        label, start, args_of(index), log_path=log_path_of(index), wait=False
                    )
                )
            for server in self.servers:
                server.wait_ready()
        except BaseException:
            self.stop()
            raise
        ports = {server.port for server in self.servers}
        if len(ports) != 1:
            self.stop()
            raise RuntimeError(f"{kind}: workers listen on different ports {sorted(ports)}")
        self.port = ports.pop()

    @property
    def pids(self) -> list[int]:
        return [server.pid for server in self.servers if server.pid is not None]

    def cpu(self) -> float:
        return sum(server.cpu() for server in self.servers)

    def call(self, command: str, timeout: float = 10.0) -> Any:
        return self.servers[0].call(command, timeout)

    def stop(self) -> None:
        errors: list[BaseException] = []
        for server in self.servers:
            try:
                server.stop()
            except Exception as exc:  # stop the others all the same
                errors.append(exc)
        if errors:
            raise errors[0]


def free_port() -> int:
    """A loopback TCP port free now (bound, then closed), for workers sharing one port."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def setup_server_logging() -> None:
    """JSON log, ``WARNING`` and up, as ``sms-bridge serve`` does with the benches' settings."""
    from bridge.logs import setup_logging

    setup_logging("WARNING", "json")


# -- load generator -----------------------------------------------------------------------


@dataclass
class WorkerRun:
    elapsed_s: float
    client_cpu_s: float
    timed_out: bool


async def run_workers(
    worker: Callable[[], Coroutine[Any, Any, None]],
    count: int,
    timeout: float,
    failures: collections.Counter[str],
) -> WorkerRun:
    """``count`` workers at once, cancelled after ``timeout`` s; a crash counts as a failure."""
    cpu0 = time.process_time()
    started = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(count)]
    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    elapsed = time.perf_counter() - started
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            failures[f"worker crashed: {task.exception()!r}"[:120]] += 1
    return WorkerRun(elapsed, time.process_time() - cpu0, bool(pending))


def summarize(
    latencies: list[float], failures: collections.Counter[str], planned: int, run: WorkerRun
) -> dict[str, Any]:
    """The common fields of a :class:`PhaseResult` from one phase's raw figures."""
    ok = len(latencies)
    counted = ok + sum(failures.values())
    if counted < planned:  # never attempted (phase timeout) or lost with a crashed worker
        failures["not sent: phase timeout or worker crash"] += planned - counted
    latencies.sort()
    return {
        "ok": ok,
        "failures": max(0, planned - ok),
        "elapsed_s": run.elapsed_s,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] * 1000 if latencies else 0.0),
        "timed_out": run.timed_out,
        "client_cpu_s": run.client_cpu_s,
        "failure_kinds": dict(failures.most_common(10)),
    }


# -- results ------------------------------------------------------------------------------


@dataclass(kw_only=True)
class PhaseResult:
    """What every load phase measures; a script's subclass adds its count and rate fields."""

    server: str
    concurrency: int
    ok: int = 0
    failures: int = 0
    elapsed_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    timed_out: bool = False
    warmup_failures: int = 0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    failure_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:  # mails/s, req/s: per script
        raise NotImplementedError

    @property
    def client_cpu_pct(self) -> float:
        """The load generator's CPU as a share of one core over the phase."""
        return 100 * self.client_cpu_s / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def paced(self) -> bool:
        """The load generator used more than :data:`PACED_PCT` of its core: it, not the
        server, may have set the rate."""
        return self.client_cpu_pct > PACED_PCT

    @property
    def cpu_us_per_op(self) -> float:
        """Server CPU time per answered mail or request, in microseconds."""
        return self.server_cpu_s / self.ok * 1e6 if self.ok else 0.0

    def columns(self) -> str:
        """The table's last columns: rate, latency, failures, then the server's and the load
        generator's CPU as a share of the phase's wall time."""
        srv = 100 * self.server_cpu_s / self.elapsed_s if self.elapsed_s else 0.0
        paced = " paced" if self.paced else ""
        return (
            f"{self.rate:>9.1f} {self.p50_ms:>8.2f} {self.p99_ms:>8.2f} {self.failures:>8} "
            f"{srv:>8.0f} {self.cpu_us_per_op:>8.0f} {self.client_cpu_pct:>8.0f}{paced}"
        )


def header_columns(rate: str) -> str:
    """The headers of :meth:`PhaseResult.columns`."""
    return (f"{rate:>9} {'p50 ms':>8} {'p99 ms':>8} {'failures':>8} {'srv cpu%':>8} "
            f"{'us/op':>8} {'cli cpu%':>8}")


def median_fields(results: Sequence[PhaseResult]) -> dict[str, Any]:
    """The common fields of the median of several rounds' results (sums for counts)."""
    first = results[0]
    return {
        "server": first.server,
        "concurrency": first.concurrency,
        "ok": sum(r.ok for r in results),
        "failures": sum(r.failures for r in results),
        "elapsed_s": statistics.median(r.elapsed_s for r in results),
        "p50_ms": statistics.median(r.p50_ms for r in results),
        "p99_ms": statistics.median(r.p99_ms for r in results),
        "max_ms": max(r.max_ms for r in results),
        "timed_out": any(r.timed_out for r in results),
        "warmup_failures": sum(r.warmup_failures for r in results),
        "server_cpu_s": statistics.median(r.server_cpu_s for r in results),
        "client_cpu_s": statistics.median(r.client_cpu_s for r in results),
    }


def median_result(results: Sequence[R], rate_field: str, **fields: Any) -> R:
    """The median of several rounds' results: the script's own fields given, its rate the
    median of the rounds' rates."""
    rate = statistics.median(r.rate for r in results)
    return type(results[0])(**median_fields(results), **{rate_field: rate}, **fields)


def pair_rows(
    rounds: Sequence[Round],
    bare: R,
    bridge: R,
    row: Callable[[str, R], str],
    rule: str | None = None,
) -> list[str]:
    """Table rows: bare and bridge of each round, then (and ``rule`` before them) the
    medians when there are several rounds."""
    lines: list[str] = []
    for rnd in rounds:
        lines.append(row(str(rnd.number), rnd.bare))  # type: ignore[arg-type]
        lines.append(row(str(rnd.number), rnd.bridge))  # type: ignore[arg-type]
    if len(rounds) > 1:
        if rule is not None:
            lines.append(rule)
        lines.append(row("med", bare))
        lines.append(row("med", bridge))
    return lines


@dataclass(kw_only=True)
class Round:
    """One bare/bridge pair, each with fresh server processes (and a fresh store)."""

    number: int
    bare: PhaseResult
    bridge: PhaseResult

    @property
    def ratio(self) -> float:
        return self.bridge.rate / self.bare.rate if self.bare.rate else 0.0


def warm_and_measure(
    server: ServerProcess | ServerGroup,
    label: str,
    what: str,
    warmup: int,
    measured: int,
    load: Callable[[bool], Awaitable[R]],
) -> R:
    """A warm-up phase (``load(True)``, not measured), then the measured one, with the
    server's CPU over the measured phase; failure kinds of both are added up."""
    log(f"[{label}] listening on {HOST}:{server.port}; warm-up {warmup} {what}")
    warm = run_on(LOAD_LOOP, load(True))
    if warm.failures:
        log(f"[{label}] warm-up failures: {warm.failures} {warm.failure_kinds}")
    cpu0 = server.cpu()
    log(f"[{label}] measuring {measured} {what}")
    result = run_on(LOAD_LOOP, load(False))
    result.server_cpu_s = server.cpu() - cpu0
    kinds = collections.Counter(result.failure_kinds) + collections.Counter(warm.failure_kinds)
    result.failure_kinds = dict(kinds)
    result.warmup_failures = warm.failures
    return result


# -- command line -------------------------------------------------------------------------


def new_parser(doc: str | None, spec: dict[str, Any]) -> argparse.ArgumentParser:
    """The options every bench takes, from one ``spec`` per script: ``count`` (name, default
    and help of ``--mails``/``--requests``), ``concurrency``, ``rounds``, ``warmup`` (default
    and help), ``phase_timeout`` and ``store`` (helps); then the script adds its own."""
    count, count_default, count_help = spec["count"]
    warmup, warmup_help = spec["warmup"]
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument(f"--{count}", type=int, default=count_default, help=count_help)
    parser.add_argument("--concurrency", type=int, default=50, help=spec["concurrency"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=3, help=spec["rounds"])
    parser.add_argument("--warmup", type=int, default=warmup, help=warmup_help)
    parser.add_argument(
        "--phase-timeout",
        type=float,
        default=spec["phase_timeout"],
        help="hard cap in seconds for each load phase",
    )
    add_store_options(parser, spec["store"])
    return parser


def add_store_options(parser: argparse.ArgumentParser, when: str) -> None:
    """``--store sqlite|postgres`` and ``--store-url`` (see :func:`fresh_store`); read the
    template with :func:`resolve_store`."""
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="sqlite: a fresh SQLite file in a temporary directory; postgres: a fresh "
        f"database bench_<uuid8> on {DEFAULT_POSTGRES_URL} (env BENCH_POSTGRES), dropped "
        f"WITH (FORCE) afterwards; {when}",
    )
    parser.add_argument(
        "--store-url",
        default=None,
        help="overrides --store: a SQLite URL ('{workdir}' is replaced by the fresh temp "
        "dir), or a PostgreSQL server URL (postgresql://user@host:port/admin_db) on which a "
        "fresh database is created per bridge run and dropped afterwards",
    )


def add_workers_option(parser: argparse.ArgumentParser) -> None:
    """``--workers N``: the bridge side as N processes sharing one port (SO_REUSEPORT)."""
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="bridge processes sharing one fixed port with SO_REUSEPORT, as "
        "'sms-bridge serve --workers N' (they share the store); the bare baseline stays "
        "one process",
    )

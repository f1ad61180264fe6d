"""Real ``sms-bridge serve`` processes: a second instance on the ports of a running one is
refused (not handed half of the mail), a busy port is one line and exit 1, workers that keep
crashing are restarted with a growing delay and then given up on, and the Docker image's
entry command honours a mounted configuration file (run outside Docker, with the image's
environment: no engine runs here)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import pytest

from bridge.settings import load_settings
from tests.test_crash_restart import free_port
from tests.test_smtp_intake import mail, send

ROOT = Path(__file__).resolve().parent.parent


def write_config(path: Path, smtp_port: int, http_port: int, store: Path, extra: str = ""
                 ) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([
        'log_format = "json"',
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}',
        f'[http]\nhost = "127.0.0.1"\nport = {http_port}',
        f'[store]\nurl = "sqlite:///{store}"',
        '[accounts.alerts]\npassword = "pw"\nupstream = "dryrun"\nmail_rate_per_minute = 0',
        extra,
    ]) + "\n")
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return {**env, **extra}


async def serve(config: Path, *args: str, env: dict[str, str] | None = None
                ) -> asyncio.subprocess.Process:
    # A session of its own: what is left of it (workers) can be killed as a group.
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "--config", str(config), "serve", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env=env or clean_env(), start_new_session=True)


def kill_group(process: asyncio.subprocess.Process) -> None:
    """SIGKILL to the process and its workers (asyncio's wait() also waits for the pipes,
    which orphaned workers would hold open)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def exits(process: asyncio.subprocess.Process, timeout: float) -> tuple[int, list[str]]:
    """Wait for the process to end; its exit code and stderr lines."""
    assert process.stderr is not None
    try:
        async with asyncio.timeout(timeout):
            err = await process.stderr.read()
            code = await process.wait()
    except TimeoutError:
        kill_group(process)
        await process.wait()
        raise AssertionError(f"still running after {timeout} s") from None
    return code, err.decode().splitlines()


async def wait_started(process: asyncio.subprocess.Process, count: int) -> set[int]:
    """Read JSON log lines until ``count`` processes logged "sms-bridge started"."""
    assert process.stderr is not None
    started: set[int] = set()
    async with asyncio.timeout(30):
        while len(started) < count:
            line = await process.stderr.readline()
            assert line, "the bridge exited during start-up"
            record = json.loads(line)
            if record["msg"] == "sms-bridge started":
                started.add(record["pid"])
    return started


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, as an operator stops the bridge; the group is killed if that fails."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                await process.wait()
        except TimeoutError:
            kill_group(process)
            await process.wait()
            raise


def messages_in(store: Path) -> int:
    with sqlite3.connect(store) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])


async def test_a_second_instance_on_the_ports_of_a_running_one_is_refused(tmp_path: Path
                                                                          ) -> None:
    smtp_port, http_port = free_port(), free_port()
    first_store, second_store = tmp_path / "a" / "bridge.sqlite3", tmp_path / "b" / "b.sqlite3"
    first = await serve(write_config(tmp_path / "a" / "bridge.toml", smtp_port, http_port,
                                     first_store), "--workers", "2")
    drain: asyncio.Task[bytes] | None = None
    try:
        await wait_started(first, 2)
        assert first.stderr is not None
        drain = asyncio.create_task(first.stderr.read())
        second = await serve(write_config(tmp_path / "b" / "bridge.toml", smtp_port, http_port,
                                          second_store), "--workers", "2")
        code, lines = await exits(second, 15)
        assert code == 1
        assert lines == [f"sms-bridge: cannot listen for SMTP on 127.0.0.1:{smtp_port}: "
                         "address already in use"]
        # Every mail goes to the instance that holds the port, none to the refused one.
        replies = await asyncio.gather(*(
            send(smtp_port, mail(f"7916123000{n}.alerts@x", "", f"m{n}")) for n in range(6)))
        assert [code for code, _ in replies] == [250] * 6
        assert messages_in(first_store) == 6
        assert not second_store.exists()
    finally:
        await stop(first)
        if drain is not None:
            await drain


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_serve_on_a_busy_port_says_so_in_one_line_and_exits_1(
    tmp_path: Path, workers: str
) -> None:
    with socket.socket() as held:  # another program's listener, without SO_REUSEPORT
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        store = tmp_path / "bridge.sqlite3"
        process = await serve(write_config(tmp_path / "bridge.toml", port, free_port(), store),
                              "--workers", workers)
        code, lines = await exits(process, 15)
    assert code == 1
    assert lines == [f"sms-bridge: cannot listen for SMTP on 127.0.0.1:{port}: "
                     "address already in use"]
    assert not store.exists()  # checked before anything else is done


async def test_workers_that_keep_crashing_are_restarted_later_each_time_then_given_up(
    tmp_path: Path
) -> None:
    # A store of a newer sms-bridge: every worker refuses it at start and exits 1.
    store = tmp_path / "bridge.sqlite3"
    with sqlite3.connect(store) as conn:
        conn.execute("PRAGMA user_version = 999")
    config = write_config(tmp_path / "bridge.toml", free_port(), free_port(), store,
                          "[workers]\nrestart_delay = 0.2\nmax_restarts = 3")
    loop = asyncio.get_running_loop()
    started = loop.time()
    code, lines = await exits(await serve(config, "--workers", "2"), 30)
    assert code == 1
    assert not any("Traceback" in line for line in lines), lines
    delays = [float(m.group(1)) for line in lines
              if (m := re.search(r"starting another in ([0-9.]+) s", line))]
    assert delays == [0.2, 0.4, 0.8]  # doubled for each crash in a row
    assert lines[-1] == "sms-bridge: workers crashed 4 times in a row; giving up"
    crashes = [line for line in lines if "schema version 999" in line]
    assert len(crashes) == 4 and all(line.startswith("sms-bridge: worker ") for line in crashes)
    assert loop.time() - started >= 0.8  # the waits were made


# --- the Docker image's entry command, outside Docker ---------------------------------------


def dockerfile() -> dict[str, list[str]]:
    """The Dockerfile's instructions, continuation lines joined: name → argument texts."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    found: dict[str, list[str]] = {}
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, rest = line.strip().partition(" ")
            found.setdefault(name.upper(), []).append(rest.strip())
    return found


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for argument in dockerfile().get("ENV", []):
        for pair in shlex.split(argument):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def exec_form(argument: str) -> list[str]:
    """A JSON-array ("exec form") argument; a shell-form one runs through /bin/sh -c."""
    if argument.startswith("["):
        return list(json.loads(argument))
    return ["/bin/sh", "-c", argument]


def image_commands() -> tuple[list[str], list[str]]:
    """The container's command (ENTRYPOINT + CMD) and its health check command."""
    instructions = dockerfile()
    command = exec_form(instructions["ENTRYPOINT"][-1]) + exec_form(instructions["CMD"][-1])
    health = instructions["HEALTHCHECK"][-1]
    health_command = health[health.index("CMD ") + len("CMD "):].strip()
    return command, exec_form(health_command)


def container_env(config: Path, **extra: str) -> dict[str, str]:
    """The image's environment, the configuration "mounted" where BRIDGE_CONFIG points, and
    this virtualenv first on PATH (the image's ``python`` and ``sms-bridge``)."""
    env = {**clean_env(), **image_env()}
    env["BRIDGE_CONFIG"] = str(config)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


async def test_the_image_entry_command_uses_the_mounted_files_store_ports_and_hosts(
    tmp_path: Path
) -> None:
    smtp_port, http_port = free_port(), free_port()
    assert 8080 not in (smtp_port, http_port)
    store = tmp_path / "mounted.sqlite3"
    config = write_config(tmp_path / "bridge.toml", smtp_port, http_port, store)
    command, health = image_commands()
    env = container_env(config)
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
        cwd=tmp_path, start_new_session=True)
    assert process.stderr is not None
    try:
        async with asyncio.timeout(30):
            while True:
                line = await process.stderr.readline()
                assert line, "the container command exited during start-up"
                record = json.loads(line)
                if record["msg"] == "sms-bridge started":
                    break
        drain = asyncio.create_task(process.stderr.read())
        # The file's listen addresses and store, not the image's.
        assert record["smtp"] == f"127.0.0.1:{smtp_port}"
        assert record["http"] == f"127.0.0.1:{http_port}"
        assert record["store"] == f"sqlite:///{store}"
        code, text = await send(smtp_port, mail("79161234567.alerts@x", "", "hello"))
        assert code == 250, text
        assert messages_in(store) == 1
        # The health check asks the configured port.
        check = await asyncio.create_subprocess_exec(*health, env=env, cwd=tmp_path)
        async with asyncio.timeout(15):
            assert await check.wait() == 0
    finally:
        await stop(process)
    await drain
    check = await asyncio.create_subprocess_exec(*health, env=env, cwd=tmp_path)
    async with asyncio.timeout(15):
        assert await check.wait() != 0  # nothing listens there any more


async def test_the_operators_variables_still_win_over_the_mounted_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bridge.toml", 2626, 8181, tmp_path / "mounted.sqlite3")
    other = f"sqlite:///{tmp_path / 'other.sqlite3'}"
    env = container_env(config, BRIDGE_STORE__URL=other, BRIDGE_SMTP__HOST="0.0.0.0")
    process = await asyncio.create_subprocess_exec(
        "sms-bridge", "check-config", stdout=asyncio.subprocess.PIPE, env=env, cwd=tmp_path)
    out, _ = await process.communicate()
    effective = json.loads(out)
    assert effective["store"]["url"] == other
    assert effective["smtp"]["host"] == "0.0.0.0"
    assert effective["smtp"]["port"] == 2626 and effective["http"]["port"] == 8181


def test_the_image_without_a_mounted_file_listens_on_all_interfaces_and_keeps_data_in_a_volume(
) -> None:
    # The image's own configuration sits where BRIDGE_CONFIG points (a mounted file replaces
    # it); it listens on the ports the image exposes and keeps the store in the volume.
    env = image_env()
    assert not any(key.startswith("BRIDGE_") and key != "BRIDGE_CONFIG" for key in env)
    copies = [argument.split() for argument in dockerfile()["COPY"]]
    [source] = [c[0] for c in copies if c[-1] == env["BRIDGE_CONFIG"]]
    settings = load_settings(ROOT / source)
    assert (settings.smtp.host, settings.http.host) == ("0.0.0.0", "0.0.0.0")
    exposed = {int(p) for argument in dockerfile()["EXPOSE"] for p in argument.split()}
    assert {settings.smtp.port, settings.http.port} == exposed
    [volume] = json.loads(dockerfile()["VOLUME"][-1])
    assert settings.store.url.startswith(f"sqlite:///{volume}/")

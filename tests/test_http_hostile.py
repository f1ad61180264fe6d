"""Hostile HTTP clients against a real bridge on a real socket: oversized and malformed
request lines and headers, raw 8-bit bytes, polluted parameters, secrets where they do not
belong. Every refusal must be the bridge's own JSON, no secret may reach a log, a stored
text or the CLI's output, and the input real providers send must be accepted.

Requests go over raw sockets: HTTP clients escape what a hostile (or sloppy) client sends
as it is.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_from_bytes, quote_plus

import httpx
import pytest

from bridge.app import Bridge
from tests.conftest import BOTH_STORES, BridgeFactory, make_settings
from tests.test_crash_restart import free_port
from tests.test_smtp_intake import mail, send

# Every configured secret, each with characters that need escaping in a URL: the source
# secret holds a "/", which a provider's URL template carries as %2F.
SOURCE_SECRET = "src/Sec-7f3a9"
SC_PASSWORD = "sc-Pass-91c2e"
ADMIN_TOKEN = "adm-Token-5d7e1"
ACCOUNT_PASSWORD = "acct-Pw-33b1f"
UPSTREAM_PASSWORD = "up-Pw-8e2c4"
UPSTREAM_URL_PASSWORD = "up-UrlPw-6b0d2"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"hostile-webhook-secret-32-bytes!").decode()
SCRIPT_SECRET = "script-Sec-4a4a2"
SECRETS = (SOURCE_SECRET, SC_PASSWORD, ADMIN_TOKEN, ACCOUNT_PASSWORD, UPSTREAM_PASSWORD,
           UPSTREAM_URL_PASSWORD, WEBHOOK_SECRET, SCRIPT_SECRET)

IN_PATH = "/in/st/" + quote(SOURCE_SECRET, safe="")  # /in/st/src%2FSec-7f3a9
HIT = f"phone=79161234567&shortcode=4444&password={SC_PASSWORD}"
CYRILLIC = "Привет, мир! Ёлка №5"


def spellings(secret: str) -> set[str]:
    """The ways a secret can appear in a log: as it is and percent-encoded."""
    return {secret, quote(secret, safe=""), quote_plus(secret, safe=""), quote(secret)}


def leaked(text: str | bytes) -> list[str]:
    data = text.decode("latin-1") if isinstance(text, bytes) else text
    return sorted(s for secret in SECRETS for s in spellings(secret) if s in data)


# -- a raw HTTP client ---------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def read_answer(reader: asyncio.StreamReader, timeout: float = 5.0) -> Answer:
    """One response: its head, and its body by Content-Length."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(status, headers, body)


async def raw_request(port: int, data: bytes, *, timeout: float = 5.0) -> Answer:
    """Send ``data`` as it is and read one response."""
    return (await raw_requests(port, [data], timeout=timeout))[0]


async def raw_requests(port: int, requests: list[bytes], *, timeout: float = 5.0
                       ) -> list[Answer]:
    """Send each request as it is on one connection, after the answer to the one before."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        answers = []
        for data in requests:
            writer.write(data)
            await writer.drain()
            answers.append(await read_answer(reader, timeout))
        return answers
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


def get(target: bytes | str, *headers: str, close: bool = True) -> bytes:
    if isinstance(target, str):
        target = target.encode("ascii")
    head = [b"GET " + target + b" HTTP/1.1", b"Host: bridge",
            *([b"Connection: close"] if close else []),
            *(h.encode("latin-1") for h in headers)]
    return b"\r\n".join(head) + b"\r\n\r\n"


def post(target: str, body: bytes, *headers: str) -> bytes:
    head = [f"POST {target} HTTP/1.1", "Host: bridge", "Connection: close",
            "Content-Type: application/x-www-form-urlencoded", *headers]
    if not any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body


# -- the hostile requests ------------------------------------------------------------------

HOSTILE: dict[str, tuple[bytes, int]] = {
    # A long SMS by GET, with the secret in the path and the password in the query.
    "url over 8190 bytes": (
        get(f"{IN_PATH}/shortcode?{HIT}&sms_id=h1&message=" + "a" * 9000), 200),
    "url over 64 KiB": (
        get(f"{IN_PATH}/shortcode?{HIT}&sms_id=h2&message=" + "a" * 70000), 414),
    "raw cp1251 bytes in the query": (
        get(f"{IN_PATH}/shortcode?{HIT}&sms_id=h3&message=".encode() + CYRILLIC.encode("cp1251")),
        200),
    "raw utf-8 bytes in the query": (
        get(f"{IN_PATH}/shortcode?{HIT}&sms_id=h4&message=".encode() + CYRILLIC.encode()), 200),
    "raw 8-bit byte in the path": (
        get(f"{IN_PATH}".encode() + b"\xff/mo?" + HIT.encode() + b"&message=x"), 403),
    "secret with %2F, request refused": (get(f"{IN_PATH}/mo?message=x&password={SC_PASSWORD}"),
                                         400),
    "wrong password holding the right one": (
        get(f"{IN_PATH}/shortcode?phone=79161234567&shortcode=4444&message=x&sms_id=h5"
            f"&password=x{SC_PASSWORD}x"), 403),
    "control character in the target": (get(f"{IN_PATH}/mo?{HIT}&x=\x01"), 400),
    "invalid method": (get(f"{IN_PATH}/mo?{HIT}").replace(b"GET", b"G\x01T", 1), 400),
    "unknown method": (get(f"{IN_PATH}/mo?{HIT}").replace(b"GET", b"BREW", 1), 400),
    "bad version": (get(f"{IN_PATH}/mo?{HIT}").replace(b"HTTP/1.1", b"HTTP/9.x", 1), 400),
    "header line too long": (
        get(f"{IN_PATH}/mo?{HIT}", f"X-Bridge-Secret: {SOURCE_SECRET}" + "A" * 9000), 431),
    "too many headers": (
        get(f"{IN_PATH}/mo?{HIT}", *(f"X-H{n}: {SOURCE_SECRET}" for n in range(200))), 431),
    "body too large": (post(f"{IN_PATH}/mo?{HIT}", b"", "Content-Length: 10000000"), 413),
    "not found": (get(f"/nowhere/{quote(SOURCE_SECRET, safe='')}?{HIT}"), 404),
    "method not allowed": (get(f"{IN_PATH}/mo?{HIT}").replace(b"GET", b"DELETE", 1), 405),
    "tls on the http port": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32)
                             + b"\r\n\r\n", 400),
    "http/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "bad content-length": (post(f"{IN_PATH}/mo?{HIT}", b"x", "Content-Length: 1x"), 400),
    "content-length and chunked": (
        post(f"{IN_PATH}/mo?{HIT}", b"0\r\n\r\n", "Content-Length: 5",
             "Transfer-Encoding: chunked"), 400),
    "bad chunk size": (
        post(f"{IN_PATH}/mo?{HIT}", b"zz\r\nphone=1\r\n0\r\n\r\n", "Transfer-Encoding: chunked"),
        400),
    "phone twice in the query": (
        get(f"{IN_PATH}/mo?phone=79161234567&phone=79990000000&message=x&sms_id=d1"), 400),
    "phone in query and body": (
        post(f"{IN_PATH}/mo?phone=79161234567&sms_id=d2", b"phone=79990000000&message=x"), 400),
    "too many fields": (
        get(f"{IN_PATH}/mo?phone=79161234567&message=x&sms_id=d3&"
            + "&".join(f"f{n}=1" for n in range(1500))), 400),
    "wrong admin token": (
        get("/api/v1/reply-scripts", f"Authorization: Bearer {ADMIN_TOKEN}x"), 401),
}
REFUSALS = {name: case for name, case in HOSTILE.items() if case[1] >= 400}


def bridge_config(webhook_url: str, upstream_port: int) -> dict[str, Any]:
    return {
        "inbound": {
            "sources": {"st": {"secret": SOURCE_SECRET}},
            "shortcodes": {"4444": {"password": SC_PASSWORD, "fallback_reply": "Try later"}},
            "webhooks": {"crm": {"url": webhook_url, "secret": WEBHOOK_SECRET, "timeout": 1.0}},
            "routes": [{"webhooks": ["crm"]}],
            "egress_allowed_networks": ["127.0.0.0/8"],
            "forward_retry_base": 0.05,
            "forward_retry_max": 0.1,
            "forward_retry_period": 0.5,
        },
        "upstreams": {"st": {
            "kind": "smstraffic_v1", "login": "acme", "password": UPSTREAM_PASSWORD,
            "base_url": f"http://acme:{UPSTREAM_URL_PASSWORD}@127.0.0.1:{upstream_port}"}},
        "accounts": {"alerts": {"password": ACCOUNT_PASSWORD, "upstream": "st"}},
        "http": {"admin_token": ADMIN_TOKEN, "access_log": True, "max_body_bytes": 4096},
    }


# -- capturing the whole log ---------------------------------------------------------------


class WholeLog(logging.Handler):
    """Every record of every logger, rendered in full: message, arguments, extra fields
    and exception with its text — whatever a formatter could ever print."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.buffer = io.StringIO()
        self.plain = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception as exc:  # a broken record still shows its parts
            message = f"{record.msg!r} % {record.args!r} ({exc!r})"
        self.buffer.write(f"{record.name} {record.levelname} {message} {vars(record)!r}\n")
        if record.exc_info:
            self.buffer.write(self.plain.formatException(record.exc_info) + "\n")
        if record.stack_info:
            self.buffer.write(record.stack_info + "\n")

    @property
    def text(self) -> str:
        return self.buffer.getvalue()


@pytest.fixture
def whole_log() -> Iterator[WholeLog]:
    """The root logger at DEBUG with every logger passing everything up to it."""
    handler = WholeLog()
    root = logging.getLogger()
    saved_root = root.level
    saved = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
             if isinstance(logger, logging.Logger)}
    for name in saved:
        logging.getLogger(name).setLevel(logging.NOTSET)
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture
async def hostile_bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    bridge = Bridge(make_settings(tmp_path, **bridge_config(
        f"http://127.0.0.1:{free_port()}/hook?token={SCRIPT_SECRET}", free_port())))
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop()


# -- 1. no secret in the log ---------------------------------------------------------------


async def test_no_hostile_request_puts_a_secret_in_the_log(
    tmp_path: Path, whole_log: WholeLog
) -> None:
    """The bridge's own request handling never logs a request line, a query or a secret:
    the whole log of every hostile request, at DEBUG, from every logger, with no redacting
    filter in between."""
    bridge = Bridge(make_settings(tmp_path, **bridge_config(
        f"http://127.0.0.1:{free_port()}/hook", free_port())))
    await bridge.start()
    try:
        answers = {name: await raw_request(bridge.http_port, data)
                   for name, (data, _) in HOSTILE.items()}
    finally:
        await bridge.stop()  # every handler has finished (and logged) by now
    assert {name: a.status for name, a in answers.items()} == {
        name: status for name, (_, status) in HOSTILE.items()}
    assert "http request refused" in whole_log.text  # the refusals were logged ...
    assert leaked(whole_log.text) == []  # ... without a secret


# -- 5. every refusal is the bridge's JSON -------------------------------------------------


@pytest.mark.parametrize("name", sorted(REFUSALS))
async def test_every_refusal_is_the_bridges_json_without_internals(
    hostile_bridge: Bridge, name: str
) -> None:
    data, status = REFUSALS[name]
    answer = await raw_request(hostile_bridge.http_port, data)
    assert answer.status == status, answer.body[:300]
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert isinstance(body, dict) and isinstance(body["error"], str) and body["error"]
    assert answer.headers.get("server") == "sms-bridge"
    shown = answer.body.decode("latin-1").lower()
    for internal in ("traceback", "aiohttp", "python", "exception", "\\x"):
        assert internal not in shown
    assert leaked(answer.body) == []
    if status == 405:
        assert "GET" in answer.headers["allow"]


async def test_a_store_outage_answers_503_with_retry_after(hostile_bridge: Bridge) -> None:
    await hostile_bridge.store.close()
    answer = await raw_request(hostile_bridge.http_port,
                               get(f"{IN_PATH}/mo?phone=79161234567&message=x&sms_id=o1"))
    ready = await raw_request(hostile_bridge.http_port, get("/readyz"))
    assert (answer.status, answer.json()) == (503, {"error": "store unavailable, retry later"})
    assert int(answer.headers["retry-after"]) > 0
    assert ready.status == 503 and int(ready.headers["retry-after"]) > 0


async def test_a_hostile_run_leaves_no_secret_in_the_log_the_cli_or_the_store(
    tmp_path: Path,
) -> None:
    """A real ``sms-bridge serve`` at DEBUG takes every hostile request, a short-code hit
    whose reply script is down, a webhook that is down until its job is dead-lettered and
    an SMS whose provider is down until it fails for good. Then its whole log, the output
    of every listing command and the store file hold no configured secret."""
    http_port, smtp_port = free_port(), free_port()
    db = tmp_path / "bridge.sqlite3"
    config = tmp_path / "bridge.toml"
    config.write_text("\n".join([
        'log_level = "DEBUG"', 'log_format = "json"',
        "[smtp]", f"port = {smtp_port}",
        "[http]", f"port = {http_port}", f'admin_token = "{ADMIN_TOKEN}"', "access_log = true",
        "max_body_bytes = 4096",
        "[store]", f'url = "sqlite:///{db}"',
        "[dispatcher]", "poll_interval = 0.1", "retry_base = 0.05", "retry_max = 0.1",
        "give_up_after = 0.5",
        "[inbound]", 'egress_allowed_networks = ["127.0.0.0/8"]', "forward_retry_base = 0.05",
        "forward_retry_max = 0.1", "forward_retry_period = 0.5", "reply_budget = 2.0",
        "[inbound.sources.st]", f'secret = "{SOURCE_SECRET}"',
        '[inbound.shortcodes."4444"]', f'password = "{SC_PASSWORD}"',
        'fallback_reply = "Try later"',
        "[[inbound.reply_scripts]]", 'shortcode = "4444"',
        f'url = "http://127.0.0.1:{free_port()}/script?token={SCRIPT_SECRET}"',
        f'secret = "{SCRIPT_SECRET}"', "timeout = 0.5",
        "[inbound.webhooks.crm]", f'url = "http://127.0.0.1:{free_port()}/hook/{WEBHOOK_SECRET}"',
        f'secret = "{WEBHOOK_SECRET}"', "timeout = 0.5",
        "[[inbound.routes]]", 'webhooks = ["crm"]',
        "[upstreams.st]", 'kind = "smstraffic_v1"', 'login = "acme"',
        f'password = "{UPSTREAM_PASSWORD}"',
        f'base_url = "http://acme:{UPSTREAM_URL_PASSWORD}@127.0.0.1:{free_port()}"',
        "[accounts.alerts]", f'password = "{ACCOUNT_PASSWORD}"', 'upstream = "st"',
    ]) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    log_path = tmp_path / "serve.log"

    async def command(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "--config", str(config), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
        output, _ = await proc.communicate()
        return output.decode("utf-8", "replace")

    def store_rows(sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(db) as conn:
            return conn.execute(sql).fetchall()

    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "--config", str(config), "serve",
            stdout=log_file, stderr=log_file, env=env)
        try:
            async with asyncio.timeout(20):
                while b"sms-bridge started" not in log_path.read_bytes():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # another process: its log is what to watch
            for data, status in HOSTILE.values():
                assert (await raw_request(http_port, data)).status == status
            async with httpx.AsyncClient() as client:
                listed = await client.get(f"http://127.0.0.1:{http_port}/api/v1/reply-scripts",
                                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                assert listed.status_code == 200
            code, _ = await send(smtp_port, mail("79161234567.alerts@example.com", "", "hi"))
            assert code == 250
            async with asyncio.timeout(20):
                while (store_rows("SELECT status FROM messages") != [("failed",)]  # noqa: ASYNC110
                       or {r[0] for r in store_rows("SELECT status FROM forward_jobs")}
                       != {"dead"}):
                    await asyncio.sleep(0.1)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
    commands = (("messages",), ("messages", "--json"), ("mails",), ("inbound",),
                ("dead-letters",), ("reports",), ("check-config",), ("balance",))
    outputs = dict(zip((" ".join(args) for args in commands),
                       await asyncio.gather(*(command(*args) for args in commands)),
                       strict=True))
    # What is grepped holds the failures: errors, dead letters, the masked configuration.
    assert "failed" in outputs["messages"] and "webhook crm" in outputs["dead-letters"]
    assert "[script: " in outputs["inbound"] and '"********"' in outputs["check-config"]
    assert "st " in outputs["balance"] and "bounce" in outputs["mails"]
    assert store_rows("SELECT COUNT(*) FROM inbound WHERE script_error IS NOT NULL") != [(0,)]
    assert all(r[0] for r in store_rows("SELECT last_error FROM forward_jobs"))
    log_text = log_path.read_text("utf-8", "replace")
    assert '"http request refused"' in log_text and "forwarding failed" in log_text
    assert leaked(log_text) == []
    assert {name: leaked(text) for name, text in outputs.items()} == {
        name: [] for name in outputs}
    assert leaked(store_files(tmp_path)) == []


def store_files(directory: Path) -> bytes:
    """The SQLite store's files (database, WAL) as they are on disk."""
    return b"".join(path.read_bytes() for path in sorted(directory.glob("bridge.sqlite3*")))


# -- 2. the short-code password is not stored ----------------------------------------------


async def stored_inbound(bridge: Bridge) -> list[tuple[bytes, str]]:
    """Each inbound row's stored request and the whole row as text."""
    url = bridge.settings.store.url
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return [(bytes(row[0]), repr(row)) for row in
                    conn.execute("SELECT raw, * FROM inbound ORDER BY id")]
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url)
    try:
        return [(bytes(row[0]), repr(tuple(row))) for row in
                await conn.fetch("SELECT raw, * FROM inbound ORDER BY id")]
    finally:
        await conn.close()


def conflicts(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith('bridge_inbound_conflicting_repeats_total{kind="shortcode"}'):
            return float(line.split()[-1])
    return 0.0


@BOTH_STORES
async def test_the_short_code_password_is_not_stored_and_repeats_are_still_recognised(
    bridge_factory: BridgeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    config = bridge_config(f"http://127.0.0.1:{free_port()}/hook", free_port())
    first = await bridge_factory(**config)
    hit = f"{IN_PATH}/shortcode?{HIT}&sms_id=p1&message=balance"

    async def metrics(bridge: Bridge) -> float:
        return conflicts((await raw_request(bridge.http_port, get("/metrics"))).body.decode())

    before = await metrics(first)
    answer = await raw_request(first.http_port, get(hit))
    again = await raw_request(first.http_port, get(hit))
    with caplog.at_level(logging.WARNING, logger="bridge.inbound.views"):
        other = await raw_request(first.http_port, get(hit.replace("balance", "other")))
    assert answer.status == 200 and answer.body == b"Try later"
    assert (again.status, again.body) == (other.status, other.body) == (200, b"Try later")
    assert await metrics(first) == before + 1  # the other content was noticed
    assert any("other content" in r.getMessage() for r in caplog.records)
    [(raw, row)] = await stored_inbound(first)
    assert SC_PASSWORD not in row and SC_PASSWORD.encode() not in raw
    assert b"phone=79161234567" in raw and b"password=" in raw  # the rest is kept as sent
    await first.stop()
    second = await bridge_factory(**config)  # a restart: only the store remembers
    replay = await raw_request(second.http_port, get(hit))
    assert (replay.status, replay.body) == (200, b"Try later")
    assert await metrics(second) == before + 1  # the very same request: no conflict
    assert len(await stored_inbound(second)) == 1


# -- 3. what providers really send ---------------------------------------------------------


def inbound_rows(bridge: Bridge) -> list[tuple[Any, ...]]:
    with sqlite3.connect(bridge.settings.store.url.removeprefix("sqlite:///")) as conn:
        return conn.execute(
            "SELECT sms_id, text, charset, charset_error FROM inbound ORDER BY id").fetchall()


async def test_a_get_with_raw_cp1251_bytes_is_decoded_to_the_exact_cyrillic(
    hostile_bridge: Bridge,
) -> None:
    """002 line 1897: windows-1251 by default; some providers do not escape it."""
    target = (f"{IN_PATH}/mo?phone=79161234567&sms_id=c1&message=".encode()
              + CYRILLIC.encode("cp1251"))
    answer = await raw_request(hostile_bridge.http_port, get(target))
    assert (answer.status, answer.body) == (200, b"OK")
    assert inbound_rows(hostile_bridge) == [("c1", CYRILLIC, "windows-1251", 0)]


def mo_get(sms_id: str, text: bytes, *, close: bool = True) -> bytes:
    """A MO pushed by GET with the text's bytes as they are (not escaped)."""
    return get(f"{IN_PATH}/mo?phone=79161234567&sms_id={sms_id}&message=".encode() + text,
               close=close)


async def test_raw_bytes_are_read_on_a_kept_alive_connection_after_other_requests(
    hostile_bridge: Bridge,
) -> None:
    """A request line is looked at where a request begins: also after other requests on
    the same connection, one by one or pipelined in one write."""
    cp1251 = CYRILLIC.encode("cp1251")
    writes = [(mo_get("k1", b"hello", close=False), 1),
              (mo_get("k2", b"one", close=False) + mo_get("k3", b"two", close=False), 2),
              (mo_get("k4", cp1251, close=False), 1),
              (mo_get("k5", b"after", close=False) + mo_get("k6", cp1251), 2)]
    reader, writer = await asyncio.open_connection("127.0.0.1", hostile_bridge.http_port)
    answers = []
    try:
        for data, count in writes:
            writer.write(data)
            answers += [await read_answer(reader) for _ in range(count)]
    finally:
        writer.close()
    assert [(a.status, a.body) for a in answers] == [(200, b"OK")] * 6
    assert [(sms_id, text) for sms_id, text, *_ in inbound_rows(hostile_bridge)] == [
        ("k1", "hello"), ("k2", "one"), ("k3", "two"), ("k4", CYRILLIC), ("k5", "after"),
        ("k6", CYRILLIC)]


async def test_a_request_line_arriving_in_pieces_is_read_whole(hostile_bridge: Bridge) -> None:
    """Its first piece holds no 8-bit byte yet: the line is looked at once it is whole."""
    request = mo_get("p1", CYRILLIC.encode("cp1251"))
    cut = request.index(b"message=") + len(b"message=")
    reader, writer = await asyncio.open_connection("127.0.0.1", hostile_bridge.http_port)
    try:
        writer.write(request[:cut])
        await writer.drain()
        # Nothing to wait for: the server answers only a whole request. A pause lets the
        # first piece arrive (and be read) on its own.
        await asyncio.sleep(0.1)
        writer.write(request[cut:])
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert (answer.status, answer.body) == (200, b"OK")
    assert inbound_rows(hostile_bridge) == [("p1", CYRILLIC, "windows-1251", 0)]


@pytest.mark.parametrize("escaped", [False, True])
async def test_utf8_sent_to_a_cp1251_source_is_decoded_as_utf8_and_flagged(
    hostile_bridge: Bridge, escaped: bool
) -> None:
    text = CYRILLIC.encode()
    target = (f"{IN_PATH}/mo?phone=79161234567&sms_id=u1&message=".encode()
              + (quote_from_bytes(text).encode() if escaped else text))
    answer = await raw_request(hostile_bridge.http_port, get(target))
    assert answer.status == 200
    assert inbound_rows(hostile_bridge) == [("u1", CYRILLIC, "utf-8", 1)]


async def test_the_longest_sms_by_get_is_accepted(hostile_bridge: Bridge) -> None:
    """The longest text the spec allows, 17,085 characters in windows-1251, percent-encoded:
    a request line of about 52 KB."""
    text = ("Съешь ещё этих мягких французских булок, да выпей же чаю. " * 300)[:17085]
    target = (f"{IN_PATH}/mo?phone=79161234567&sms_id=l1&message="
              + quote_from_bytes(text.encode("cp1251")))
    assert 50_000 < len(target) < 65_536
    answer = await raw_request(hostile_bridge.http_port, get(target))
    assert (answer.status, answer.body) == (200, b"OK")
    assert inbound_rows(hostile_bridge) == [("l1", text, "windows-1251", 0)]


async def test_a_request_line_over_64_kib_gets_a_json_414(hostile_bridge: Bridge) -> None:
    answer = await raw_request(hostile_bridge.http_port, HOSTILE["url over 64 KiB"][0])
    assert answer.status == 414
    assert answer.json() == {"error": "request line longer than 65536 bytes"}
    assert inbound_rows(hostile_bridge) == []


# -- 4. ambiguous requests -----------------------------------------------------------------


@pytest.mark.parametrize(("request_bytes", "field"), [
    (HOSTILE["phone twice in the query"][0], "phone"),
    (HOSTILE["phone in query and body"][0], "phone"),
    (get(f"{IN_PATH}/mo?phone=79161234567&%70hone=79990000000&message=x"), "phone"),
    (get(f"{IN_PATH}/mo?phone=79161234567&message=x&sms_id=a&sms_id=b"), "sms_id"),
    (get(f"{IN_PATH}/shortcode?{HIT}&message=x&sms_id=s&password=other"), "password"),
], ids=["query twice", "query and body", "escaped name", "sms_id", "short-code password"])
async def test_a_parameter_given_twice_is_refused_naming_it(
    hostile_bridge: Bridge, request_bytes: bytes, field: str
) -> None:
    answer = await raw_request(hostile_bridge.http_port, request_bytes)
    assert answer.status == 400
    assert answer.json() == {"error": f"parameter {field!r} given more than once",
                             "field": field}
    assert inbound_rows(hostile_bridge) == []


@pytest.mark.parametrize(("count", "status"), [(100, 200), (101, 400), (400, 400)])
async def test_more_than_100_fields_are_refused_naming_the_limit(
    hostile_bridge: Bridge, count: int, status: int
) -> None:
    fields = ["phone=79161234567", "message=x", "sms_id=f1",
              *(f"f{n}=1" for n in range(count - 3))]
    answer = await raw_request(hostile_bridge.http_port,
                               post(f"{IN_PATH}/mo", "&".join(fields).encode()))
    assert answer.status == status
    if status == 400:
        assert answer.json() == {"error": "more than 100 parameters"}
    assert len(inbound_rows(hostile_bridge)) == (status == 200)


# -- 5. readiness means the store can commit -----------------------------------------------


async def test_readiness_is_false_while_sqlite_cannot_commit(hostile_bridge: Bridge) -> None:
    """A full disk, made real for SQLite: the database may not grow by one more page."""
    from bridge.store.sqlite import SqliteStore

    port = hostile_bridge.http_port
    store = hostile_bridge.store
    assert isinstance(store, SqliteStore)
    assert (await raw_request(port, get("/readyz"))).status == 200

    def limit(pages: int) -> Callable[[sqlite3.Connection], None]:
        return lambda conn: conn.execute(f"PRAGMA max_page_count = {pages}").close()

    await store._call(limit(1))  # SQLite keeps the current size: nothing more fits
    body = ("phone=79161234567&message=" + "x" * 3000 + "&sms_id=").encode()
    statuses = []
    for n in range(50):  # the free pages left fill up
        answer = await raw_request(port, post(f"{IN_PATH}/mo", body + b"full%d" % n))
        statuses.append(answer.status)
        if answer.status != 200:
            assert answer.json() == {"error": "store unavailable, retry later"}
            break
    assert statuses[-1] == 503
    ready = await raw_request(port, get("/readyz"))
    assert ready.status == 503 and ready.json()["status"] == "unavailable"
    assert int(ready.headers["retry-after"]) > 0
    await store._call(limit(1_000_000))  # space again
    assert (await raw_request(port, get("/readyz"))).status == 200


@pytest.mark.parametrize("store_backend", ["postgres"], indirect=True)
async def test_readiness_is_false_while_postgres_refuses_writes(
    bridge_factory: BridgeFactory,
) -> None:
    """A database that only reads (a standby after a failover, or one set read-only) answers
    ``SELECT 1`` but commits nothing."""
    import asyncpg

    bridge = await bridge_factory(**bridge_config(f"http://127.0.0.1:{free_port()}/h", 1))
    port = bridge.http_port
    url = bridge.settings.store.url
    admin = await asyncpg.connect(url)

    async def read_only(on: bool) -> None:
        database = url.rsplit("/", 1)[1]
        await admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only '
                            f"= {'on' if on else 'off'}")
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()")

    try:
        assert (await raw_request(port, get("/readyz"))).status == 200
        await read_only(True)
        answers = [await raw_request(port, get("/readyz")) for _ in range(4)]
        assert [a.status for a in answers] == [503] * 4  # reconnected, and still refused
        await read_only(False)
        async with asyncio.timeout(10):
            # The pool replaces its closed connections on use: each probe is the event.
            while (await raw_request(port, get("/readyz"))).status != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await admin.close()


# -- the one redactor ----------------------------------------------------------------------


@pytest.mark.parametrize(("target", "shown"), [
    (f"{IN_PATH}/mo?{HIT}", "/in/st/********/mo"),
    ("/in/st/src/Sec-7f3a9/shortcode", "/in/st/********/shortcode"),  # "/" sent as it is
    ("/in/st/mo?password=x", "/in/st/mo"),  # the secret came in a header
    (f"{IN_PATH}", "/in/st/********"),
    (f"http://bridge{IN_PATH}/dlr#x", "/in/st/********/dlr"),  # absolute form
    (f"/wrong/{quote(SOURCE_SECRET, safe='')}/mo", "/wrong/…"),
    ("/api/v1/reply-scripts/12", "/api/v1/reply-scripts/12"),
    ("/readyz?x=1", "/readyz"),
])
def test_a_logged_path_shows_no_secret_and_no_query(target: str, shown: str) -> None:
    from bridge.redact import redact_path

    assert redact_path(target) == shown


def test_urls_texts_and_stored_parameters_lose_their_secrets() -> None:
    from bridge.redact import redact_params, redact_text, redact_url, register_secrets

    register_secrets([SOURCE_SECRET, "abc"])  # too short to be masked in free text
    assert redact_url("postgresql://bridge:pw@db/x?sslpassword=k&psw=s&phone=1") == (
        "postgresql://bridge:********@db/x?sslpassword=k&psw=********&phone=1")
    assert redact_text(f"GET /in/st/{quote(SOURCE_SECRET, safe='')}/mo failed, abc") == (
        "GET /in/st/********/mo failed, abc")
    assert redact_text("see http://u:p4ss@h/x?token=t0k&a=1") == (
        "see http://u:********@h/x?token=********&a=1")
    raw = b"phone=7916&PassWord=" + quote_from_bytes(b"\xcf\xe0").encode() + b"&message=a%20b"
    assert redact_params(raw) == b"phone=7916&PassWord=********&message=a%20b"
    assert redact_params(b"phone=1&message=x") == b"phone=1&message=x"


def test_the_log_filter_masks_secrets_in_messages_fields_and_exceptions() -> None:
    from bridge.logs import JsonFormatter, RedactingFilter
    from bridge.redact import register_secrets

    register_secrets([UPSTREAM_PASSWORD])
    try:
        raise ValueError(f"cannot reach http://acme:{UPSTREAM_PASSWORD}@provider/")
    except ValueError:
        record = logging.getLogger("test").makeRecord(
            "test", logging.ERROR, __file__, 1, "call with %s failed", (UPSTREAM_PASSWORD,),
            sys.exc_info(), extra={"url": f"http://p/?psw={UPSTREAM_PASSWORD}"})
    assert RedactingFilter().filter(record)
    line = JsonFormatter().format(record)
    assert UPSTREAM_PASSWORD not in line
    assert "call with ******** failed" in line and "ValueError" in line

"""``sms-bridge`` as a new user meets it: version, JSON listings, clear refusals of bad
arguments and bad configuration, what ``migrate`` did, and the embedded demo source."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

import bridge
from bridge.cli import main
from bridge.models import (
    DeliveryReport,
    ForwardJob,
    InboundMessage,
    MailEnvelope,
    OutboundMail,
    SendRequest,
    StoredResponse,
)
from bridge.store import open_store
from bridge.store import postgres as postgres_store
from bridge.store import sqlite as sqlite_store
from tests.conftest import BOTH_STORES
from tests.test_crash_restart import free_port

NOW = 1_700_000_000.0


def config_file(tmp_path: Path, store_url: str, extra: str = "") -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(f'log_format = "json"\n[store]\nurl = "{store_url}"\n{extra}')
    return path


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``sms-bridge ARGV`` in this process (in a thread: it runs its own event loop);
    its exit status, stdout and stderr."""
    try:
        code: object = await asyncio.to_thread(main, list(argv))
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert isinstance(code, int)
    return code, captured.out, captured.err


def send_request(phone: str) -> SendRequest:
    return SendRequest(account="alerts", upstream="dryrun", phone=phone, text=f"to {phone}",
                       parts=1, encoding="gsm7")


async def fill_store(store_url: str, messages: int = 3) -> None:
    """One of each thing a listing shows: messages, a bounce mail, an inbound SMS whose
    webhook forward is a dead letter, and a delivery report naming no message."""
    store = open_store(store_url)
    await store.open(migrate=True)
    try:
        envelope = MailEnvelope(mail_from="monitor@example.com", recipients=("alerts@x",),
                                message_id=None, peer="127.0.0.1", format="v1")
        requests = [send_request(f"+7916{n:07d}") for n in range(messages)]
        await store.enqueue(envelope, [(None, requests)], now=NOW, dedup_window=0)
        await store.queue_mail(OutboundMail("bounce", "monitor@example.com", b"Subject: x\r\n"),
                               NOW)
        await store.record_inbound(
            InboundMessage(source="st", kind="mo", sms_id="s1", phone="+79161234567",
                           text="hello from a phone", recipient="4444"),
            now=NOW, dedup_window=600, state="routed",
            response=StoredResponse(200, b"OK", "text/plain"),
            jobs=[ForwardJob("webhook", "crm", b"{}")], forward_deadline=NOW + 60)
        (job,) = await store.claim_forward_jobs("cli-test", NOW, 10, 60)
        await store.forward_dead(job.id, "cli-test", "410 Gone")
        await store.record_delivery_reports(
            "st", [DeliveryReport("unknown-id", "delivered", "Delivered")], NOW)
    finally:
        await store.close()


# -- --version ------------------------------------------------------------------------------

async def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await cli(capsys, "--version")
    assert code == 0
    assert out.strip() == f"sms-bridge {bridge.__version__}"


# -- --json on every listing ----------------------------------------------------------------

@BOTH_STORES
async def test_every_listing_command_has_json(
    tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill_store(store_url)
    config = config_file(tmp_path, store_url, "\n".join([
        '[upstreams.dryrun]\nkind = "dryrun"',
        '[accounts.alerts]\npassword = "pw-long-enough"',
        '[inbound.sources.st]\nsecret = "source-secret"',
        '[inbound.webhooks.crm]\nurl = "https://crm.example.com/h"\n'
        'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"',
    ]) + "\n")
    listings: dict[str, Any] = {}
    for command in ("messages", "mails", "inbound", "dead-letters", "reports", "targets",
                    "balance"):
        code, out, err = await cli(capsys, "--config", str(config), command, "--json")
        assert code == 0, (command, err)
        listings[command] = json.loads(out)
        assert isinstance(listings[command], list), command
    assert sorted(m["phone"] for m in listings["messages"]) == [
        "+79160000000", "+79160000001", "+79160000002"]
    assert [(m["kind"], m["mail_to"], m["status"]) for m in listings["mails"]] == [
        ("bounce", "monitor@example.com", "queued")]
    assert [(i["source"], i["text"], i["forwards"], i["delivered"])
            for i in listings["inbound"]] == [("st", "hello from a phone", 1, 0)]
    assert [(d["kind"], d["target"], d["last_error"]) for d in listings["dead-letters"]] == [
        ("webhook", "crm", "410 Gone")]
    assert [(r["provider_id"], r["status"]) for r in listings["reports"]] == [
        ("unknown-id", "delivered")]
    assert [(t["name"], t["enabled"]) for t in listings["targets"]] == [("crm", True)]
    assert [(b["upstream"], b["kind"], b["balance"]) for b in listings["balance"]] == [
        ("dryrun", "dryrun", None)]


@BOTH_STORES
async def test_messages_json_reads_every_status_history_in_one_query(
    tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``messages --json`` shows each message's status history; it used to ask the store
    once per message (300 queries for 300 messages)."""
    await fill_store(store_url, messages=300)
    config = config_file(tmp_path, store_url)
    queries: list[str] = []
    if store_url.startswith("sqlite:///"):
        connect = sqlite3.connect

        def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn = connect(*args, **kwargs)
            conn.set_trace_callback(queries.append)
            return conn

        monkeypatch.setattr(sqlite3, "connect", traced_connect)
    else:
        fetch = asyncpg.connection.Connection.fetch

        async def counted_fetch(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            queries.append(query)
            return await fetch(self, query, *args, **kwargs)

        monkeypatch.setattr(asyncpg.connection.Connection, "fetch", counted_fetch)
    code, out, err = await cli(capsys, "--config", str(config), "messages", "--json",
                               "--limit", "1000")
    assert code == 0, err
    listed = json.loads(out)
    assert len(listed) == 300
    assert all([e["status"] for e in m["events"]] == ["queued"] for m in listed)
    event_queries = [q for q in queries if "message_events" in q]
    assert len(event_queries) == 1, f"{len(event_queries)} queries of message_events"


# -- arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["messages", "mails", "inbound", "dead-letters", "reports"])
async def test_a_limit_that_is_not_a_number_is_refused_clearly(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, _, err = await cli(capsys, command, "--limit", "abc")
    assert code == 2
    assert "argument --limit: must be a whole number of at least 1, not 'abc'" in err
    assert "_positive" not in err and "invalid" not in err
    code, _, err = await cli(capsys, command, "--limit", "0")
    assert code == 2 and "argument --limit: must be a whole number of at least 1, not '0'" in err


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_serve_refuses_workers_under_one(tmp_path: Path, workers: str) -> None:
    """Run as a process: before the fix ``--workers 0`` served (one process) instead of
    exiting, and the 10 s timeout ends the test with ``TimeoutExpired``."""
    import subprocess

    config = config_file(tmp_path, f"sqlite:///{tmp_path / 's.sqlite3'}",
                         "[smtp]\nport = 0\n[http]\nport = 0\n")
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "--config", str(config), "serve", "--workers", workers],
        capture_output=True, text=True, timeout=10, cwd=tmp_path, env=clean_environment())
    assert done.returncode == 2
    assert f"argument --workers: must be a whole number of at least 1, not '{workers}'" \
        in done.stderr


# -- mails ----------------------------------------------------------------------------------

async def test_mails_says_when_there_are_none_and_heads_its_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_url = f"sqlite:///{tmp_path / 's.sqlite3'}"
    config = config_file(tmp_path, store_url)
    assert (await cli(capsys, "--config", str(config), "migrate"))[0] == 0
    code, out, _ = await cli(capsys, "--config", str(config), "mails")
    assert code == 0
    assert out.splitlines()[0] == "0 mail(s)"
    assert out.splitlines()[1].split() == ["id", "created", "(UTC)", "kind", "status", "att",
                                           "to", "error"]
    await fill_store(store_url)
    code, out, _ = await cli(capsys, "--config", str(config), "mails")
    assert out.splitlines()[0] == "1 mail(s)"
    assert "bounce" in out.splitlines()[2] and "monitor@example.com" in out.splitlines()[2]


# -- migrate --------------------------------------------------------------------------------

@BOTH_STORES
async def test_migrate_says_what_it_did(
    tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    latest = len(sqlite_store.MIGRATIONS if store_url.startswith("sqlite")
                 else postgres_store.MIGRATIONS)
    config = config_file(tmp_path, store_url)
    code, out, _ = await cli(capsys, "--config", str(config), "migrate")
    assert code == 0
    assert "created" in out and f"schema version {latest}" in out
    assert "up to date" not in out
    code, out, _ = await cli(capsys, "--config", str(config), "migrate")
    assert code == 0
    assert "already at schema version" in out and f"version {latest}" in out


async def test_migrate_names_the_versions_it_upgraded_between(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "s.sqlite3"
    latest = len(sqlite_store.MIGRATIONS)
    # A store made by an sms-bridge one migration older.
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", sqlite_store.MIGRATIONS[:latest - 1])
    older = sqlite_store.SqliteStore(path)
    await older.open()
    await older.close()
    monkeypatch.undo()
    config = config_file(tmp_path, f"sqlite:///{path}")
    code, out, _ = await cli(capsys, "--config", str(config), "migrate")
    assert code == 0
    assert f"migrated from schema version {latest - 1} to {latest}" in out


# -- configuration errors -------------------------------------------------------------------

async def test_a_toml_syntax_error_is_one_line_naming_file_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('[smtp]\nport = 2525\nhost = \n')
    for command in ("check-config", "serve", "messages"):
        code, out, err = await cli(capsys, "--config", str(path), command)
        assert code == 2, command
        assert err == f"sms-bridge: {path}, line 3, column 8: invalid TOML: Invalid value\n"
        assert out == ""


async def test_a_configuration_file_that_is_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bridge.toml"
    path.write_bytes('[smtp]\nhostname = "шлюз"\n'.encode("cp1251"))
    code, _, err = await cli(capsys, "--config", str(path), "check-config")
    assert code == 2
    assert err.startswith(f"sms-bridge: {path}: not UTF-8 text") and err.count("\n") == 1


async def test_a_misspelled_environment_section_is_named_with_the_closest_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.upper().startswith("BRIDGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BRIDGE_SMPT__PORT", "2626")
    monkeypatch.setenv("BRIDGE_UPSTREAM__MAIN__KIND", "dryrun")
    monkeypatch.setenv("BRIDGE_STORE__BUSY_TIMEOUT", "7")  # a real section: no warning
    config = config_file(tmp_path, f"sqlite:///{tmp_path / 's.sqlite3'}")
    code, out, err = await cli(capsys, "--config", str(config), "check-config")
    assert code == 0
    assert json.loads(out)["store"]["busy_timeout"] == 7
    assert ("sms-bridge: warning: BRIDGE_SMPT__PORT is ignored: no setting section 'smpt' "
            "(did you mean BRIDGE_SMTP__…?)") in err.splitlines()
    assert ("sms-bridge: warning: BRIDGE_UPSTREAM__MAIN__KIND is ignored: no setting section "
            "'upstream' (did you mean BRIDGE_UPSTREAMS__…?)") in err.splitlines()
    assert "STORE" not in err
    # Commands that log (JSON here) warn in a log record.
    code, _, err = await cli(capsys, "--config", str(config), "migrate")
    assert code == 0
    records = [json.loads(line) for line in err.splitlines()]
    assert any(r["level"] == "warning" and "BRIDGE_SMPT__PORT" in r["msg"]
               and "BRIDGE_SMTP__" in r["msg"] for r in records)


# -- the demo source ------------------------------------------------------------------------

def clean_environment(**settings: str) -> dict[str, str]:
    """This environment without ``BRIDGE_…`` variables, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE_")}
    return {**env, **settings}


async def test_the_bare_defaults_have_a_demo_source_whose_url_serve_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No file, only ports and a store in the environment: ``serve`` prints the demo source's
    URL, an SMS pushed to it is taken in, and ``sms-bridge inbound`` lists it."""
    store_url = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    env = clean_environment(BRIDGE_SMTP__PORT=str(free_port()),
                            BRIDGE_HTTP__PORT=str(free_port()),
                            BRIDGE_STORE__URL=store_url, BRIDGE_LOG_FORMAT="json")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "serve", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    said: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not said or said[-1] != "sms-bridge started":
                line = await process.stderr.readline()
                assert line, f"serve exited: {said}"
                said.append(json.loads(line)["msg"])
        urls = [m for line in said for m in re.findall(r"http://\S+/in/\S+/mo", line)]
        assert urls, f"no demo source URL in {said}"
        async with httpx.AsyncClient() as client:
            answer = await client.get(urls[0], params={
                "phone": "79161234567", "message": "hello bridge", "sms_id": "tour-1"})
        assert answer.status_code == 200, answer.text
    finally:
        process.terminate()
        async with asyncio.timeout(20):
            await process.wait()
    for name, value in env.items():
        if name.startswith("BRIDGE_"):
            monkeypatch.setenv(name, value)
    code, out, err = await cli(capsys, "inbound", "--json")
    assert code == 0, err
    assert [(i["source"], i["phone"], i["text"]) for i in json.loads(out)] == [
        ("demo", "79161234567", "hello bridge")]


def test_a_configured_bridge_has_no_demo_source(tmp_path: Path) -> None:
    from bridge.settings import load_settings

    bare = load_settings(None)
    assert sorted(bare.inbound.sources) == ["demo"]
    # Only loopback clients may use its well-known secret.
    assert bare.inbound.sources["demo"].allowed_networks == ["127.0.0.0/8", "::1/128"]
    configured: Sequence[dict[str, Any]] = [
        {"accounts": {"a": {"password": "pw-long-enough"}}},
        {"upstreams": {"x": {"kind": "dryrun"}}},
        {"inbound": {"sources": {"prov": {"secret": "source-secret"}}}},
    ]
    for overrides in configured:
        assert "demo" not in load_settings(None, **overrides).inbound.sources, overrides

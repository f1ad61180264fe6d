"""Forwarding inbound SMS that a receiver can trust (issue 13), end to end through sockets.

An aiosmtpd mailbox double plays the smarthost (refusing at MAIL, RCPT or DATA, answering
late, dropping the connection after the data); aiohttp receivers play webhook targets and
reply scripts (slow ones, hostile ones answering gzip bombs or megabytes); a real HTTP
client plays the provider pushing MO SMS and short-code hits.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import itertools
import socket
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from bridge.app import Bridge
from bridge.cli import main
from bridge.models import OutboundMail
from bridge.relays.egress import EgressPolicy, EgressRefused, guarded_request
from tests.conftest import BOTH_STORES, BridgeFactory, make_settings
from tests.doubles.mailbox import MailboxDouble
from tests.doubles.receiver import HttpReceiver, Scripted
from tests.test_inbound import WEBHOOK_SECRET, url

FALLBACK = "Sorry, try again later"
HIT = {"phone": "79161234567", "message": "balance", "shortcode": "4444",
       "password": "sc-pass", "sms_id": "hit-1"}
ANSWER_CAP = 64 * 1024  # what the bridge reads of any reply-script or webhook answer
HELPDESK = "help@desk.example"


@pytest.fixture
async def hook() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver(Scripted(204)) as receiver:
        yield receiver


@pytest.fixture
async def other_hook() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver(Scripted(204)) as receiver:
        yield receiver


@pytest.fixture
async def script() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver(Scripted(200, b"Your balance: 100 RUB")) as receiver:
        yield receiver


def config(mailbox: MailboxDouble, script: HttpReceiver, *,
           webhooks: dict[str, str] | None = None, routes: list[dict[str, Any]] | None = None,
           mail: dict[str, Any] | None = None, **inbound: Any) -> dict[str, Any]:
    """Settings overrides: one source, short code 4444 with a reply script, the webhooks
    named (all signed with WEBHOOK_SECRET) and quick retries."""
    return {
        "inbound": {
            "sources": {"st": {"secret": "src-secret"}},
            "shortcodes": {"4444": {"password": "sc-pass", "max_parts": 1,
                                    "fallback_reply": FALLBACK}},
            "reply_scripts": [{"shortcode": "4444", "url": script.url + "/balance",
                               "timeout": 2.0}],
            "webhooks": {name: {"url": target, "secret": WEBHOOK_SECRET, "timeout": 10.0}
                         for name, target in (webhooks or {}).items()},
            "routes": routes or [],
            "egress_allowed_networks": ["127.0.0.0/8"],
            "forward_retry_base": 0.05,
            "forward_retry_max": 0.2,
            "forward_retry_period": 30.0,
            "reply_budget": 3.0,
            **inbound,
        },
        "mail": {"smarthost": "127.0.0.1", "smarthost_port": mailbox.port, **(mail or {})},
        "http": {"admin_token": "admin-token"},
    }


async def send_mo(bridge: Bridge, sms_id: str, text: str = "hello") -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.get(url(bridge, "/in/st/src-secret/mo"),
                                  params={"phone": "79161234567", "message": text,
                                          "sms_id": sms_id})
    assert answer.status_code == 200


async def wait_jobs(bridge: Bridge, done: Callable[[list[dict[str, Any]]], bool],
                    timeout: float = 5.0) -> list[dict[str, Any]]:
    """The forwarding jobs (oldest first) once ``done`` holds for them."""
    jobs: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                jobs = sorted(await bridge.store.list_forward_jobs(limit=1000),
                              key=lambda job: job["id"])
                if done(jobs):
                    return jobs
                # The worker commits an outcome after the target answered; no event marks it.
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"jobs never reached the expected state: {jobs}") from None


def settled(count: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda jobs: len(jobs) == count and all(
        job["status"] in ("dead", "delivered") for job in jobs)


@functools.cache
def gzip_bomb() -> bytes:
    """About 100 KB of gzip that inflates to 100 MB."""
    return gzip.compress(bytes(100 * 2**20), compresslevel=9)


# --- denial of service: every answer read is capped ------------------------------------------

async def test_a_gzip_bomb_from_a_reply_script_is_cut_at_the_cap_while_healthz_answers(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, script: HttpReceiver,
) -> None:
    bomb = gzip_bomb()
    assert len(bomb) < 150_000
    # Sent gzipped whatever the bridge asked for, slowly, so /healthz is probed meanwhile.
    script.then(Scripted(200, bomb, headers={"Content-Type": "text/plain; charset=utf-8",
                                             "Content-Encoding": "gzip"},
                         chunk_size=16384, chunk_pause=0.05))
    bridge = await bridge_factory(**config(mailbox, script))
    loop = asyncio.get_running_loop()
    answered = asyncio.Event()
    async with httpx.AsyncClient(timeout=120) as client:
        # /healthz is asked every 10 ms until the hit is answered; a frozen event loop shows
        # as a long wait between two of its answers, whether or not a probe was in flight.
        answers_at = [loop.time()]

        async def probe_health() -> None:
            while not answered.is_set():
                health = await client.get(url(bridge, "/healthz"))
                assert health.status_code == 200
                answers_at.append(loop.time())
                await asyncio.sleep(0.01)  # the probe's cadence

        tracemalloc.start()
        try:
            prober = asyncio.create_task(probe_health())
            answer = await client.get(url(bridge, "/in/st/src-secret/shortcode"), params=HIT)
            answered.set()
            await prober
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    gaps = [later - earlier for earlier, later in itertools.pairwise(answers_at)]
    assert gaps and max(gaps) < 0.5, gaps
    assert peak < 8 * 2**20, f"{peak} bytes allocated at the peak"
    assert answer.status_code == 200 and answer.content == FALLBACK.encode()
    [listed] = await bridge.store.list_inbound()
    assert f"larger than {ANSWER_CAP} bytes" in listed["script_error"]
    [call] = script.requests
    assert call.headers["accept-encoding"] == "identity"


async def test_an_oversized_plain_reply_script_answer_is_refused_at_the_cap(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, script: HttpReceiver,
) -> None:
    body = b"a" * (8 * 2**20)  # plain text, chunked (no Content-Length to refuse it early)
    script.then(Scripted(200, body, headers={"Content-Type": "text/plain"}, chunk_size=65536))
    bridge = await bridge_factory(**config(mailbox, script))
    async with httpx.AsyncClient(timeout=60) as client:
        tracemalloc.start()
        try:
            answer = await client.get(url(bridge, "/in/st/src-secret/shortcode"), params=HIT)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert answer.content == FALLBACK.encode()
    [listed] = await bridge.store.list_inbound()
    assert f"larger than {ANSWER_CAP} bytes" in listed["script_error"]
    assert peak < 2 * 2**20, f"{peak} bytes allocated at the peak"


async def test_a_webhook_answering_a_gzip_bomb_is_delivered_reading_at_most_the_cap(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    hook.then(Scripted(200, gzip_bomb(), headers={"Content-Encoding": "gzip"},
                       chunk_size=16384))
    bridge = await bridge_factory(**config(mailbox, script, webhooks={"crm": hook.url + "/h"},
                                           routes=[{"webhooks": ["crm"]}]))
    tracemalloc.start()
    try:
        await send_mo(bridge, "bomb-1")
        [job] = await wait_jobs(bridge, settled(1), timeout=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert job["status"] == "delivered" and job["attempts"] == 1
    assert peak < 8 * 2**20, f"{peak} bytes allocated at the peak"
    assert hook.requests[0].headers["accept-encoding"] == "identity"


# --- mail forwards are idempotent --------------------------------------------------------------

def assert_same_forward(copies: list[Any], before: float, after: float) -> None:
    """Every copy is the same mail: one Message-ID, and Date is when the SMS arrived."""
    ids = {copy.message["Message-ID"] for copy in copies}
    assert len(ids) == 1, ids
    for copy in copies:
        date = parsedate_to_datetime(copy.message["Date"]).timestamp()
        assert int(before) <= date <= after, (copy.message["Date"], before, after)


async def test_a_late_250_gives_copies_with_one_message_id_and_the_arrival_date(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, script: HttpReceiver,
) -> None:
    mailbox.late_next, mailbox.late_delay = 1, 1.5  # past the bridge's wait for the reply
    bridge = await bridge_factory(**config(mailbox, script, routes=[{"emails": [HELPDESK]}],
                                           mail={"timeout": 0.5}))
    before = time.time()
    await send_mo(bridge, "late-1")
    after = time.time()
    await wait_jobs(bridge, settled(1))
    copies = await mailbox.wait_for(2)
    assert len(copies) == 2
    assert_same_forward(copies, before, after)


async def test_a_disconnect_after_data_gives_copies_with_one_message_id(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, script: HttpReceiver,
) -> None:
    mailbox.drop_next = 1
    bridge = await bridge_factory(**config(mailbox, script, routes=[{"emails": [HELPDESK]}]))
    before = time.time()
    await send_mo(bridge, "drop-1")
    after = time.time()
    [job] = await wait_jobs(bridge, settled(1))
    assert job["status"] == "delivered" and job["attempts"] == 2
    copies = await mailbox.wait_for(2)
    assert_same_forward(copies, before, after)


async def test_the_date_of_a_mail_forwarded_after_an_outage_is_the_arrival_time(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, script: HttpReceiver,
) -> None:
    mailbox.reject_next = 10**6  # 451 to every DATA until the outage ends
    bridge = await bridge_factory(**config(mailbox, script, routes=[{"emails": [HELPDESK]}]))
    before = time.time()
    await send_mo(bridge, "outage-1")
    after = time.time()
    await asyncio.sleep(2.1)  # the outage: two seconds of refusals
    mailbox.reject_next = 0
    [copy] = await mailbox.wait_for(1)
    assert time.time() - before > 2
    assert_same_forward([copy], before, after)


def test_the_wait_for_the_reply_to_data_defaults_to_rfc_5321s_ten_minutes(
    tmp_path: Path,
) -> None:
    mail = make_settings(tmp_path).mail
    assert mail.timeout == 600.0  # RFC 5321 §4.5.3.2.6, "DATA Termination: 10 minutes"
    assert mail.command_timeout <= 300.0  # connect, greeting, EHLO, MAIL, RCPT: sensible


# --- retry classes -----------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "reply"), [
    ("MAIL", "553 5.1.8 Sender address rejected: Domain not found"),
    ("RCPT", "550 5.1.1 <help@desk.example>: Recipient address rejected: User unknown"),
    ("DATA", "554 5.7.1 Message refused"),
])
async def test_a_5xx_at_any_smtp_stage_dead_letters_the_forward_at_once(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, script: HttpReceiver,
    command: str, reply: str,
) -> None:
    mailbox.refuse(command, reply)
    bridge = await bridge_factory(**config(mailbox, script, routes=[{"emails": [HELPDESK]}]))
    await send_mo(bridge, "perm-1")
    [job] = await wait_jobs(bridge, settled(1))
    assert (job["status"], job["attempts"]) == ("dead", 1)
    assert reply.split()[0] in job["last_error"]
    assert mailbox.mails == [] and mailbox.commands[command] == 1


@pytest.mark.parametrize(("command", "reply"), [
    ("MAIL", "451 4.3.0 Local error in processing"),
    ("RCPT", "450 4.2.1 Mailbox busy"),
    ("DATA", "452 4.3.1 Insufficient system storage"),
])
async def test_a_4xx_at_any_smtp_stage_is_retried(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, script: HttpReceiver,
    command: str, reply: str,
) -> None:
    mailbox.refuse(command, reply)
    bridge = await bridge_factory(**config(mailbox, script, routes=[{"emails": [HELPDESK]}]))
    await send_mo(bridge, "temp-1")
    [job] = await wait_jobs(bridge, settled(1))
    assert (job["status"], job["attempts"]) == ("delivered", 2)
    assert len(mailbox.mails) == 1


async def test_a_bounce_refused_with_554_at_rcpt_is_given_up_at_once(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, script: HttpReceiver,
) -> None:
    mailbox.refuse("RCPT", "554 5.7.1 <sender@desk.example>: Relay access denied")
    bridge = await bridge_factory(**config(mailbox, script))
    await bridge.store.queue_mail(
        OutboundMail("bounce", "sender@desk.example", b"Subject: x\r\n\r\nundelivered\r\n"),
        time.time())
    assert bridge.relay is not None
    bridge.relay.wake()
    async with asyncio.timeout(5):
        while (await bridge.store.list_mails())[0]["status"] != "failed":  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    [mail] = await bridge.store.list_mails()
    assert mail["attempts"] == 1 and "554" in mail["last_error"]


async def test_a_dns_failure_of_a_webhook_host_is_retried_not_dead_lettered(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver, monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    real_getaddrinfo = loop.getaddrinfo
    resolver_down = True

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "crm.example":
            return await real_getaddrinfo(host, port, *args, **kwargs)
        if resolver_down:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 ("127.0.0.1", int(port)))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    webhook = hook.url.replace("127.0.0.1", "crm.example") + "/hook"
    bridge = await bridge_factory(**config(mailbox, script, webhooks={"crm": webhook},
                                           routes=[{"webhooks": ["crm"]}]))
    await send_mo(bridge, "dns-1")
    [job] = await wait_jobs(bridge, lambda jobs: bool(jobs and jobs[0]["last_error"]))
    assert job["status"] != "dead", job
    assert "resolve" in job["last_error"]
    resolver_down = False
    [job] = await wait_jobs(bridge, settled(1))
    assert job["status"] == "delivered"
    assert len(hook.requests) == 1


def write_config(tmp_path: Path, bridge: Bridge) -> str:
    """A configuration file for the CLI: the bridge's store and its webhook names."""
    path = tmp_path / "cli.toml"
    lines = [f'[store]\nurl = "{bridge.settings.store.url}"\n']
    for name, webhook in bridge.settings.inbound.webhooks.items():
        lines.append(f'[inbound.webhooks.{name}]\nurl = "{webhook.url}"\n'
                     f'secret = "{webhook.secret.get_secret_value()}"\n')
    path.write_text("\n".join(lines))
    return str(path)


async def test_410_gone_dead_letters_at_once_and_disables_the_target_until_enabled(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    other_hook: HttpReceiver, script: HttpReceiver, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hook.then(Scripted(410))
    bridge = await bridge_factory(**config(
        mailbox, script, webhooks={"crm": hook.url + "/h", "erp": other_hook.url + "/h"},
        routes=[{"webhooks": ["crm", "erp"]}]))
    await send_mo(bridge, "gone-1")
    jobs = await wait_jobs(bridge, settled(2))
    crm = next(job for job in jobs if job["target"] == "crm")
    assert (crm["status"], crm["attempts"]) == ("dead", 1)
    assert "410" in crm["last_error"]
    # The next SMS: the disabled target gets no request, its forward is a dead letter at
    # once; the other target is not affected.
    await send_mo(bridge, "gone-2")
    jobs = await wait_jobs(bridge, settled(4))
    assert [job["status"] for job in jobs if job["target"] == "crm"] == ["dead", "dead"]
    assert [job["status"] for job in jobs if job["target"] == "erp"] == ["delivered"] * 2
    assert len(hook.requests) == 1
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(url(bridge, "/metrics"))).text
    assert "bridge_forward_targets_disabled 1.0" in metrics
    # Listed by the CLI, enabled again by the CLI; the dead letters then go out.
    cli = ["--config", write_config(tmp_path, bridge)]
    capsys.readouterr()
    assert await asyncio.to_thread(main, [*cli, "targets"]) == 0
    listing = capsys.readouterr().out
    crm_line = next(line for line in listing.splitlines() if line.startswith("crm"))
    erp_line = next(line for line in listing.splitlines() if line.startswith("erp"))
    assert "disabled" in crm_line and "410" in crm_line and "disabled" not in erp_line
    assert await asyncio.to_thread(main, [*cli, "enable-target", "crm"]) == 0
    assert "redeliver" in capsys.readouterr().out
    assert await asyncio.to_thread(main, [*cli, "enable-target", "crm"]) == 1  # not disabled
    assert await asyncio.to_thread(main, [*cli, "redeliver", "--all"]) == 0
    assert bridge.forwarder is not None
    bridge.forwarder.wake()
    await wait_jobs(bridge, lambda jobs: all(job["status"] == "delivered" for job in jobs))
    assert len(hook.requests) == 3


@pytest.mark.parametrize("status", [503, 429])
async def test_retry_after_on_503_and_429_is_honoured(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver, status: int,
) -> None:
    # delta-seconds for 503, an HTTP-date for 429 (RFC 9110 §10.2.3 allows both).
    retry_after = "2" if status == 503 else format_datetime(
        datetime.fromtimestamp(time.time() + 3, UTC), usegmt=True)
    hook.then(Scripted(status, headers={"Retry-After": retry_after}))
    bridge = await bridge_factory(**config(mailbox, script, webhooks={"crm": hook.url + "/h"},
                                           routes=[{"webhooks": ["crm"]}]))
    await send_mo(bridge, "ra-1")
    first, second = await hook.wait_for(2)
    assert second.at - first.at >= 1.9  # the backoff alone would be 0.05 s
    [job] = await wait_jobs(bridge, settled(1))
    assert job["status"] == "delivered"


async def test_a_webhook_timeout_longer_than_the_clients_default_is_honoured(
    hook: HttpReceiver,
) -> None:
    hook.then(Scripted(204, delay=0.6))
    # The client's own default timeout (httpx: 5 s) is shorter than the call's: it must not win.
    async with httpx.AsyncClient(trust_env=False, timeout=0.2) as client:
        response = await guarded_request(client, EgressPolicy(["127.0.0.0/8"]), "POST",
                                         hook.url + "/hook", timeout=3.0, content=b"{}")
    assert response.status_code == 204


# --- one slow target does not stall the others -------------------------------------------------

@pytest.mark.parametrize("slow_kind", ["webhook", "email"])
async def test_a_slow_target_does_not_delay_another_targets_forward(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    other_hook: HttpReceiver, script: HttpReceiver, slow_kind: str,
) -> None:
    slow_delay = 3.0
    if slow_kind == "webhook":
        hook.default = Scripted(204, delay=slow_delay)
        routes = [{"webhooks": ["slow", "fast"]}]
    else:
        mailbox.late_next, mailbox.late_delay = 1, slow_delay
        routes = [{"emails": [HELPDESK], "webhooks": ["fast"]}]
    bridge = await bridge_factory(**config(
        mailbox, script, webhooks={"slow": hook.url + "/h", "fast": other_hook.url + "/h"},
        routes=routes))
    loop = asyncio.get_running_loop()
    await send_mo(bridge, "iso-1")
    await other_hook.wait_for(1)
    if slow_kind == "webhook":
        await hook.wait_for(1)
    else:
        await mailbox.wait_for(1)  # the data is in; its 250 comes 3 s later
    sent = loop.time()
    await send_mo(bridge, "iso-2")
    await other_hook.wait_for(2)
    assert other_hook.requests[1].at - sent < 1.0


# --- validation at start and at the admin API -------------------------------------------------

@pytest.mark.parametrize("address", [
    "help@desk.example\r\nBcc: spy@evil.example", "", "no-at-sign", "two words@desk.example",
    "<help@desk.example>", "help@",
])
def test_route_email_addresses_are_validated_at_start(tmp_path: Path, address: str) -> None:
    with pytest.raises(ValidationError) as refused:
        make_settings(tmp_path, inbound={"routes": [{"emails": [address]}]})
    assert refused.value.errors()[0]["loc"] == ("inbound", "routes", 0, "emails", 0)


@pytest.mark.parametrize("secret", ["whsec_not*base64!", "whsec_", "whsec_abc"])
def test_a_malformed_whsec_secret_is_refused_at_start(tmp_path: Path, secret: str) -> None:
    with pytest.raises(ValidationError) as refused:
        make_settings(tmp_path, inbound={
            "webhooks": {"crm": {"url": "https://crm.example.com/h", "secret": secret}}})
    assert refused.value.errors()[0]["loc"] == ("inbound", "webhooks", "crm", "secret")
    assert "whsec_" in refused.value.errors()[0]["msg"]


def test_an_egress_network_with_host_bits_is_refused_alike_by_check_config_and_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "s.sqlite3"}"\n'
                    '[inbound]\negress_allowed_networks = ["127.0.0.1/8"]\n')
    messages = []
    for command in ("check-config", "serve"):
        with pytest.raises(SystemExit) as refused:
            main(["--config", str(path), command])
        assert refused.value.code == 2
        messages.append(capsys.readouterr().err)
    assert messages[0] == messages[1]
    assert "inbound.egress_allowed_networks" in messages[0] and "127.0.0.0/8" in messages[0]
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        EgressPolicy(["127.0.0.1/8"])


@pytest.mark.parametrize(("field", "value"), [
    ("url", "{script}/x\r\nX-Injected: 1"),
    ("url", "http://127.0.0.1:6379/x"),
    ("keyword", "bal\r\nance"),
    ("secret", "whsec_not*base64!"),
])
async def test_the_admin_api_refuses_a_bad_reply_script_field_naming_it(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, script: HttpReceiver,
    field: str, value: str,
) -> None:
    bridge = await bridge_factory(**config(mailbox, script))
    body = {"shortcode": "4444", "url": script.url + "/x", field: value.format(script=script.url)}
    async with httpx.AsyncClient() as client:
        created = await client.post(url(bridge, "/api/v1/reply-scripts"), json=body,
                                    headers={"Authorization": "Bearer admin-token"})
    assert created.status_code == 400, created.text
    assert created.json()["field"] == field
    assert await bridge.store.list_reply_scripts() == []


async def test_egress_to_well_known_non_http_ports_is_refused_unless_allowed(
    tmp_path: Path,
) -> None:
    loopback = EgressPolicy(["127.0.0.0/8"])
    for port in (25, 6379, 5432):
        with pytest.raises(EgressRefused, match=f"port {port}"):
            await loopback.resolve("127.0.0.1", port)
    assert await loopback.resolve("127.0.0.1", 8080) == ["127.0.0.1"]
    opened = EgressPolicy(["127.0.0.0/8"], allowed_ports=[6379])
    assert await opened.resolve("127.0.0.1", 6379) == ["127.0.0.1"]
    webhook = {"crm": {"url": "http://crm.example.com:25/h", "secret": WEBHOOK_SECRET}}
    with pytest.raises(ValidationError, match=r"webhooks\.crm\.url.*port 25"):
        make_settings(tmp_path, inbound={"webhooks": webhook})
    make_settings(tmp_path, inbound={"webhooks": webhook, "egress_allowed_ports": [25]})


@pytest.mark.parametrize("answer", [
    "<b>" + "<a" * 32768, "<a" * 32768, "<b>x</b>" * 8192, "<b>" + "<" * 65536,
])
def test_cleaning_a_hostile_reply_takes_linear_time(answer: str) -> None:
    from bridge.inbound.parsing import clean_reply

    started = time.perf_counter()
    text = clean_reply(answer, 1)
    assert time.perf_counter() - started < 0.5
    assert 0 < len(text) <= 160


@BOTH_STORES
async def test_a_claim_can_leave_out_the_targets_busy_in_this_process(store_url: str) -> None:
    from bridge.models import ForwardJob, InboundMessage
    from bridge.store import open_store

    store = open_store(store_url)
    await store.open()
    try:
        now = time.time()
        jobs = [ForwardJob("webhook", "slow", b"{}"), ForwardJob("webhook", "fast", b"{}"),
                ForwardJob("email", "slow", b"{}")]
        for sms_id in ("x1", "x2"):
            message = InboundMessage(source="st", kind="mo", sms_id=sms_id, phone="7916",
                                     text="hi", raw=b"a=1")
            await store.record_inbound(message, now=now, dedup_window=0, state="routed",
                                       response=None, jobs=jobs, forward_deadline=now + 60)
        claimed = await store.claim_forward_jobs("o1", now, 10, 60.0,
                                                 exclude_targets=[("webhook", "slow")])
        assert sorted((job.kind, job.target) for job in claimed) == [
            ("email", "slow"), ("email", "slow"), ("webhook", "fast"), ("webhook", "fast")]
        # An expired lease is left out the same way.
        later = await store.claim_forward_jobs("o2", now + 61, 10, 60.0,
                                               exclude_targets=[("email", "slow"),
                                                                ("webhook", "slow")])
        assert sorted((job.kind, job.target) for job in later) == [("webhook", "fast")] * 2
        rest = await store.claim_forward_jobs("o3", now + 61, 10, 60.0)
        assert sorted((job.kind, job.target) for job in rest) == [
            ("email", "slow"), ("email", "slow"), ("webhook", "slow"), ("webhook", "slow")]
    finally:
        await store.close()


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(("headers", "body", "expected"), [
    ({}, b"plain answer", b"plain answer"),
    ({"Content-Encoding": "gzip"}, gzip.compress(b"zipped answer"), b"zipped answer"),
    ({"Content-Encoding": "x-gzip"}, gzip.compress(b"zipped answer"), b"zipped answer"),
    ({"Content-Encoding": "deflate"}, zlib.compress(b"zlib answer"), b"zlib answer"),
    ({"Content-Encoding": "deflate"}, _raw_deflate(b"raw deflate"), b"raw deflate"),
    ({"Content-Encoding": "identity"}, b"as is", b"as is"),
])
async def test_a_bounded_read_decodes_what_fits(
    hook: HttpReceiver, headers: dict[str, str], body: bytes, expected: bytes,
) -> None:
    from bridge.bounded_http import request_bounded

    hook.then(Scripted(200, body, headers=headers))
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await request_bounded(client, "GET", hook.url + "/x", max_bytes=1024,
                                         timeout=5)
    assert response.content == expected
    assert "content-encoding" not in response.headers
    assert hook.requests[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(("headers", "body", "refusal"), [
    ({}, b"x" * 2000, "larger than 1024 bytes"),  # Content-Length says so: nothing read
    ({"Content-Encoding": "gzip"}, gzip.compress(b"x" * 2000), "larger than 1024 bytes"),
    ({"Content-Encoding": "br"}, b"\x0b\x02\x80hello\x03", "content coding 'br'"),
    ({"Content-Encoding": "gzip, gzip"}, gzip.compress(gzip.compress(b"x")), "stacked"),
    ({"Content-Encoding": "gzip"}, b"not gzip at all", "not valid gzip"),
])
async def test_a_bounded_read_refuses_what_does_not_fit(
    hook: HttpReceiver, headers: dict[str, str], body: bytes, refusal: str,
) -> None:
    from bridge.bounded_http import AnswerRefused, request_bounded

    hook.then(Scripted(200, body, headers=headers))
    async with httpx.AsyncClient(trust_env=False) as client:
        with pytest.raises(AnswerRefused, match=refusal):
            await request_bounded(client, "GET", hook.url + "/x", max_bytes=1024, timeout=5)


async def test_a_bounded_read_can_cut_at_the_cap_instead(hook: HttpReceiver) -> None:
    from bridge.bounded_http import request_bounded

    hook.then(Scripted(200, b"0123456789" * 1000, chunk_size=300))
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await request_bounded(client, "GET", hook.url + "/x", max_bytes=1024,
                                         truncate=True, timeout=5)
    assert response.content == (b"0123456789" * 1000)[:1024]

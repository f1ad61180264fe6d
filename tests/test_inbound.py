"""Inbound SMS end to end: a real HTTP client plays the provider; an SMTP sink plays the
helpdesk smarthost; aiohttp receivers play the webhook and the reply script."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import pytest

from bridge.app import Bridge
from bridge.inbound.answers import AnswerCache
from bridge.models import StoredResponse
from bridge.relays.signing import verify
from tests.conftest import BridgeFactory
from tests.doubles.mailbox import MailboxDouble
from tests.doubles.receiver import HttpReceiver, Scripted
from tests.doubles.smstraffic import SmsTrafficDouble
from tests.test_smtp_intake import send

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def cp1251(text: str) -> str:
    return quote_from_bytes(text.encode("cp1251"))


@pytest.fixture
async def hook() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
async def script() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver(Scripted(200, b"<b>Your balance:</b>\n  100 RUB")) as receiver:
        yield receiver


@pytest.fixture
async def provider() -> AsyncIterator[SmsTrafficDouble]:
    async with SmsTrafficDouble(login="acme", password="s3cret") as double:
        yield double


def inbound_config(hook: HttpReceiver, script: HttpReceiver, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "sources": {"st": {"secret": "src-secret"}},
        "shortcodes": {"4444": {"password": "sc-pass", "max_parts": 1,
                                "fallback_reply": "Sorry, try again later"}},
        "reply_scripts": [{"shortcode": "4444", "url": script.url + "/balance",
                           "timeout": 1.0, "secret": "script-secret"}],
        "webhooks": {"crm": {"url": hook.url + "/hook", "secret": WEBHOOK_SECRET,
                             "timeout": 2.0}},
        "routes": [
            {"to": ["4444"], "webhooks": ["crm"]},
            {"emails": ["help@desk.example"], "webhooks": ["crm"]},
        ],
        "egress_allowed_networks": ["127.0.0.0/8"],
        "reply_account": "helpdesk",
        "reply_domain": "sms.example",
        "forward_retry_base": 0.05,
        "forward_retry_max": 0.2,
        "reply_budget": 3.0,
    }
    config.update(extra)
    return config


async def start(bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
                script: HttpReceiver, provider: SmsTrafficDouble | None = None,
                **extra: Any) -> Bridge:
    upstreams = {"dryrun": {"kind": "dryrun"}}
    if provider is not None:
        upstreams["st"] = {"kind": "smstraffic_v1", "base_url": provider.url, "login": "acme",
                           "password": "s3cret"}
    return await bridge_factory(
        inbound=inbound_config(hook, script, **extra.pop("inbound", {})),
        upstreams=upstreams,
        accounts={"helpdesk": {"password": "hd", "upstream": "st" if provider else "dryrun",
                               "allowed_senders": ["*@desk.example"], "trim_quoted": True,
                               "trim_signature": True}},
        mail={"smarthost": "127.0.0.1", "smarthost_port": mailbox.port},
        http={"admin_token": "admin-token", **extra.pop("http", {})},
        **extra,
    )


def url(bridge: Bridge, path: str) -> str:
    return f"http://127.0.0.1:{bridge.http_port}{path}"


def rows(bridge: Bridge, sql: str) -> list[tuple[Any, ...]]:
    path = bridge.settings.store.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def wait_delivered(bridge: Bridge, count: int) -> None:
    async with asyncio.timeout(10):
        # The worker commits "delivered" after the target answered; no event marks it.
        while len(await bridge.store.list_forward_jobs(status="delivered")) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_mo_in_windows_1251_reaches_mailbox_and_signed_webhook_once(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script)
    body = f"phone=79161234567&message={cp1251('Здравствуйте, где мой заказ?')}&sms_id=9001"
    async with httpx.AsyncClient() as client:
        answers = [
            await client.post(url(bridge, "/in/st/src-secret/mo"), content=body,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
            for _ in range(5)
        ]
    assert {(a.status_code, a.content) for a in answers} == {(200, b"OK")}
    [mail] = await mailbox.wait_for(1)
    [call] = await hook.wait_for(1)
    await wait_delivered(bridge, 2)
    message = mail.message
    assert mail.rcpt_tos == ["help@desk.example"]
    assert message["Subject"] == "SMS from +7 916 123-45-67"
    assert message["X-SMS-Id"] == "9001" and message["X-SMS-From"] == "79161234567"
    assert message["Reply-To"] == "79161234567.helpdesk@sms.example"
    text = message.get_payload(decode=True).decode(message.get_content_charset())
    assert text.strip() == "Здравствуйте, где мой заказ?"
    assert verify(WEBHOOK_SECRET, call.headers, call.body)
    payload = json.loads(call.body)
    assert payload["data"]["text"] == "Здравствуйте, где мой заказ?"
    assert payload["data"]["sms_id"] == "9001" and payload["data"]["charset_error"] is False
    assert rows(bridge, "SELECT COUNT(*) FROM inbound") == [(1,)]
    assert rows(bridge, "SELECT COUNT(*) FROM forward_jobs") == [(2,)]
    assert len(mailbox.mails) == 1 and len(hook.requests) == 1


async def test_fifty_identical_requests_at_once_give_one_forward_and_one_answer(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script)
    query = f"?message={cp1251('Привет')}&phone=79161234567&sms_id=777"
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=50)) as client:
        answers = await asyncio.gather(*(
            client.get(url(bridge, "/in/st/src-secret/mo") + query) for _ in range(50)
        ))
    assert {(a.status_code, a.content) for a in answers} == {(200, b"OK")}
    await wait_delivered(bridge, 2)
    assert rows(bridge, "SELECT COUNT(*), MIN(text) FROM inbound") == [(1, "Привет")]
    assert len(hook.requests) == 1 and len(mailbox.mails) == 1


async def test_replay_after_restart_gets_the_same_answer_and_forwards_nothing(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    first = await start(bridge_factory, mailbox, hook, script)
    query = "?message=hello&phone=79161234567&sms_id=r-1"
    async with httpx.AsyncClient() as client:
        before = await client.get(url(first, "/in/st/src-secret/mo") + query)
        await wait_delivered(first, 2)
        await first.stop()
        second = await start(bridge_factory, mailbox, hook, script)
        after = await client.get(url(second, "/in/st/src-secret/mo") + query)
    assert (before.status_code, before.content) == (after.status_code, after.content)
    assert rows(second, "SELECT COUNT(*) FROM forward_jobs") == [(2,)]


@pytest.mark.parametrize("cache_size", [20000, 0])
async def test_answered_sms_ids_are_answered_from_memory_while_the_store_is_down(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver, cache_size: int,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script,
                         inbound={"answer_cache_size": cache_size})
    mo = url(bridge, "/in/st/src-secret/mo") + "?message=hello&phone=79161234567&sms_id=m-1"
    hit = {"phone": "79161234567", "message": "balance", "shortcode": "4444",
           "password": "sc-pass", "sms_id": "s-9"}
    async with httpx.AsyncClient() as client:
        first_mo = await client.get(mo)
        first_hit = await client.get(url(bridge, "/in/st/src-secret/shortcode"), params=hit)
        assert first_hit.content == b"Your balance: 100 RUB"
        await bridge.store.close()
        new = await client.get(mo.replace("m-1", "m-2"))
        again_mo = await client.get(mo)
        again_hit = await client.get(url(bridge, "/in/st/src-secret/shortcode"), params=hit)
    assert new.status_code == 503 and new.json() == {"error": "store unavailable, retry later"}
    if cache_size:
        # The first answers were committed and never change: memory answers the retries.
        assert (again_mo.status_code, again_mo.content) == (200, first_mo.content)
        assert (again_hit.status_code, again_hit.content) == (200, first_hit.content)
        assert again_hit.headers["Content-Type"] == first_hit.headers["Content-Type"]
    else:
        assert again_mo.status_code == 503 and again_hit.status_code == 503
    assert len(script.requests) == 1


def test_answer_cache_keeps_the_latest_answers() -> None:
    cache = AnswerCache(2)
    answers = [StoredResponse(200, str(n).encode(), "text/plain") for n in range(3)]
    for n, answer in enumerate(answers):
        cache.put("st", "mo", f"id-{n}", answer, b"sms_id=id-%d" % n)
    cache.put("st", "mo", None, answers[0], b"x")  # no sms_id: deduplicated by the store
    cache.put("st", "mo", "pending", None, b"y")  # no final answer yet
    assert len(cache) == 2
    assert cache.get("st", "mo", b"sms_id=id-0") is None  # the oldest went first
    assert cache.get("st", "mo", b"sms_id=id-2") is answers[2]
    assert cache.get("other", "mo", b"sms_id=id-2") is None
    assert cache.get("st", "shortcode", b"sms_id=id-2") is None
    # The same sms_id with other bytes is not the same request: the store decides (and
    # notices the conflict).
    assert cache.get("st", "mo", b"sms_id=id-2&message=other") is None
    assert cache.get("st", "mo", b"x") is None
    assert cache.get("st", "mo", b"y") is None


async def test_a_repeated_sms_id_with_other_content_is_logged_and_answered_as_a_repeat(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver, caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script)
    mo = url(bridge, "/in/st/src-secret/mo")
    first = {"phone": "79161234567", "message": "first text", "sms_id": "reused"}
    async with httpx.AsyncClient() as client:
        answers = [await client.get(mo, params=first)]
        answers.append(await client.get(mo, params=first))  # a plain retry
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bridge.inbound.views"):
            # Logged once per conflicting request: its own retries are answered from memory.
            for text in ("other", "other", "third"):
                answers.append(await client.get(mo, params={**first, "message": text}))
        metrics_text = (await client.get(url(bridge, "/metrics"))).text
    assert {(a.status_code, a.content) for a in answers} == {(200, b"OK")}
    warnings = [r for r in caplog.records if "other content" in r.getMessage()]
    assert len(warnings) == 2 and warnings[0].sms_id == "reused"  # type: ignore[attr-defined]
    assert 'bridge_inbound_conflicting_repeats_total{kind="mo"} 2.0' in metrics_text
    await wait_delivered(bridge, 2)
    assert rows(bridge, "SELECT COUNT(*), MIN(text) FROM inbound") == [(1, "first text")]
    assert len(hook.requests) == 1 and len(mailbox.mails) == 1


async def test_without_sms_id_the_same_content_within_the_window_is_one_message(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script)
    async with httpx.AsyncClient() as client:
        for text in ("same", "same", "other"):
            answer = await client.get(url(bridge, "/in/st/src-secret/mo"),
                                      params={"phone": "79161234567", "message": text})
            assert answer.status_code == 200
    assert rows(bridge, "SELECT text FROM inbound ORDER BY id") == [("same",), ("other",)]


async def test_bytes_invalid_in_the_declared_charset_are_stored_raw_and_flagged(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script,
                         inbound={"sources": {"st": {"secret": "src-secret", "charset": "utf-8"}}})
    raw = f"phone=79161234567&sms_id=b1&message={cp1251('Привет')}".encode()
    async with httpx.AsyncClient() as client:
        answer = await client.post(url(bridge, "/in/st/src-secret/mo"), content=raw,
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200
    [call] = await hook.wait_for(1)
    assert json.loads(call.body)["data"]["charset_error"] is True
    [(stored_raw, flagged)] = rows(bridge, "SELECT raw, charset_error FROM inbound")
    assert stored_raw == raw and flagged == 1


async def test_unescaped_8bit_bytes_are_decoded_with_the_charset_or_flagged(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    """Some providers post windows-1251 bytes without percent-escaping them."""
    bridge = await start(bridge_factory, mailbox, hook, script)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    plain = b"phone=79161234567&sms_id=u1&message=" + "Привет, мир".encode("cp1251")
    invalid = b"phone=79161234567&sms_id=u2&message=" + "Привет".encode("cp1251")
    async with httpx.AsyncClient() as client:
        first = await client.post(url(bridge, "/in/st/src-secret/mo"), content=plain,
                                  headers=form)
        second = await client.post(url(bridge, "/in/st/src-secret/mo"), content=invalid,
                                   headers={"Content-Type": form["Content-Type"]
                                            + "; charset=utf-8"})
    assert first.status_code == second.status_code == 200
    calls = await hook.wait_for(2)
    data = {d["sms_id"]: d for d in (json.loads(c.body)["data"] for c in calls)}
    assert (data["u1"]["text"], data["u1"]["charset_error"]) == ("Привет, мир", False)
    assert data["u2"]["charset_error"] is True and "\ufffd" in data["u2"]["text"]
    assert rows(bridge, "SELECT sms_id, charset_error FROM inbound ORDER BY id") == [
        ("u1", 0), ("u2", 1)]


async def test_declared_charset_wins_over_the_source_default(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script)
    body = "phone=79161234567&sms_id=u1&message=" + quote_from_bytes("Ёлка".encode())
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            url(bridge, "/in/st/src-secret/mo"), content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    assert answer.status_code == 200
    assert rows(bridge, "SELECT text, charset_error FROM inbound") == [("Ёлка", 0)]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/in/st/wrong/mo", {}, 403),
        ("/in/nosuch/src-secret/mo", {}, 403),
        ("/in/st/mo", {}, 403),
        ("/in/st/mo", {"X-Bridge-Secret": "wrong"}, 403),
        ("/in/st/mo", {"X-Bridge-Secret": "src-secret"}, 200),
        ("/in/st/mo", {"X-Bridge-Secret": "sécret".encode()}, 403),
    ],
)
async def test_source_secret_in_path_or_header(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver, path: str, headers: dict[str, Any], status: int,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script)
    async with httpx.AsyncClient() as client:
        answer = await client.get(url(bridge, path), headers=headers,
                                  params={"phone": "79161234567", "message": "x", "sms_id": "1"})
    assert answer.status_code == status
    if status == 403:
        assert answer.json() == {"error": "forbidden"}
        assert rows(bridge, "SELECT COUNT(*) FROM inbound") == [(0,)]


async def test_allowed_networks_refuse_other_clients(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script, inbound={"sources": {
        "st": {"secret": "src-secret", "allowed_networks": ["192.0.2.0/24"]}}})
    async with httpx.AsyncClient() as client:
        answer = await client.get(url(bridge, "/in/st/src-secret/mo"),
                                  params={"phone": "79161234567", "message": "x"})
    assert answer.status_code == 403
    assert rows(bridge, "SELECT COUNT(*) FROM inbound") == [(0,)]


async def test_missing_field_and_oversized_body(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script, http={"max_body_bytes": 2048})
    async with httpx.AsyncClient() as client:
        missing = await client.get(url(bridge, "/in/st/src-secret/mo"),
                                   params={"message": "x", "sms_id": "1"})
        huge = await client.post(url(bridge, "/in/st/src-secret/mo"),
                                 content=b"phone=1&message=" + b"a" * 5000,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert missing.status_code == 400
    assert missing.json() == {"error": "missing parameter 'phone'", "field": "phone"}
    assert huge.status_code == 413 and "error" in huge.json()
    assert rows(bridge, "SELECT COUNT(*) FROM inbound") == [(0,)]


async def test_unrouted_messages_are_kept(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script, inbound={"routes": []})
    async with httpx.AsyncClient() as client:
        answer = await client.get(url(bridge, "/in/st/src-secret/mo"),
                                  params={"phone": "79161234567", "message": "lost?"})
    assert answer.status_code == 200
    [listed] = await bridge.store.list_inbound()
    assert (listed["state"], listed["text"], listed["forwards"]) == ("unrouted", "lost?", 0)


async def test_routes_match_keyword_and_sender_prefix(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script, inbound={"routes": [
        {"keyword": "stop", "webhooks": ["crm"]},
        {"sender_prefixes": ["7903"], "emails": ["vip@desk.example"]},
        {"emails": ["help@desk.example"]},
    ]})
    async with httpx.AsyncClient() as client:
        for phone, text, sms_id in (("79161234567", "STOP please", "k1"),
                                    ("79031234567", "hello", "k2"),
                                    ("79161234567", "hello", "k3")):
            await client.get(url(bridge, "/in/st/src-secret/mo"),
                             params={"phone": phone, "message": text, "sms_id": sms_id})
    assert rows(bridge, "SELECT i.sms_id, f.kind, f.target FROM forward_jobs f "
                        "JOIN inbound i ON i.id = f.inbound_id ORDER BY f.id") == [
        ("k1", "webhook", "crm"), ("k2", "email", "vip@desk.example"),
        ("k3", "email", "help@desk.example")]


async def test_webhook_down_then_up_is_delivered_with_a_stable_id(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    hook.then(Scripted(500), Scripted(503), Scripted(200))
    bridge = await start(bridge_factory, mailbox, hook, script)
    async with httpx.AsyncClient() as client:
        await client.get(url(bridge, "/in/st/src-secret/mo"),
                         params={"phone": "79161234567", "message": "x", "sms_id": "w1"})
    calls = await hook.wait_for(3)
    await wait_delivered(bridge, 2)
    assert len({c.headers["webhook-id"] for c in calls}) == 1
    assert all(verify(WEBHOOK_SECRET, c.headers, c.body) for c in calls)


async def test_dead_letters_are_listed_and_redelivered(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    from bridge.cli import main

    hook.default = Scripted(500)
    bridge = await start(bridge_factory, mailbox, hook, script,
                         inbound={"forward_retry_period": 0.3, "routes": [{"webhooks": ["crm"]}]})
    async with httpx.AsyncClient() as client:
        await client.get(url(bridge, "/in/st/src-secret/mo"),
                         params={"phone": "79161234567", "message": "x", "sms_id": "d1"})
    async with asyncio.timeout(10):
        while not await bridge.store.list_forward_jobs(status="dead"):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    failed_calls = len(hook.requests)
    assert failed_calls >= 1
    hook.default = Scripted(204)
    env = {"BRIDGE_STORE__URL": bridge.settings.store.url}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        assert await asyncio.to_thread(main, ["dead-letters"]) == 0
        assert await asyncio.to_thread(main, ["redeliver", "--all"]) == 0
        # An id that is not a dead letter (mistyped, or queued again already) is said so.
        assert await asyncio.to_thread(main, ["redeliver", "999999"]) == 1
        with pytest.raises(SystemExit) as refused:
            await asyncio.to_thread(main, ["dead-letters", "--limit", "0"])
        assert refused.value.code == 2
    bridge.forwarder.wake()  # type: ignore[union-attr]
    await hook.wait_for(failed_calls + 1)
    await wait_delivered(bridge, 1)


async def test_short_code_reply_script_answers_once_per_sms_id(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script)
    params = {"phone": "79161234567", "message": "balance", "shortcode": "4444",
              "password": "sc-pass", "sms_id": "s-1"}
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=20)) as client:
        answers = await asyncio.gather(*(
            client.get(url(bridge, "/in/st/src-secret/shortcode"), params=params)
            for _ in range(20)
        ))
        later = await client.get(url(bridge, "/in/st/src-secret/shortcode"), params=params)
    assert {(a.status_code, a.content) for a in [*answers, later]} == {
        (200, b"Your balance: 100 RUB")}
    assert later.headers["Content-Type"] == "text/plain; charset=windows-1251"
    [call] = script.requests
    assert call.method == "GET" and call.path_qs.startswith("/balance?message=balance&")
    assert "shortcode=4444" in call.path_qs and "sms_id=s-1" in call.path_qs
    signed = call.path_qs.partition("?")[2].encode()
    assert verify("script-secret", call.headers, signed)
    assert "password" not in call.path_qs


async def test_short_code_password_is_checked(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script)
    async with httpx.AsyncClient() as client:
        for shortcode, password in (("4444", "wrong"), ("5555", "sc-pass"), ("4444", "")):
            answer = await client.get(url(bridge, "/in/st/src-secret/shortcode"), params={
                "phone": "79161234567", "message": "x", "shortcode": shortcode,
                "password": password, "sms_id": "p"})
            assert answer.status_code == 403
            assert answer.json()["field"] == "password"
    assert script.requests == []
    assert rows(bridge, "SELECT COUNT(*) FROM inbound") == [(0,)]


@pytest.mark.parametrize("failure", [Scripted(500, b"oops"), Scripted(200, b"late", delay=3)])
async def test_failing_or_slow_script_yields_the_fallback_within_the_budget(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver, failure: Scripted,
) -> None:
    script.then(failure)
    bridge = await start(bridge_factory, mailbox, hook, script)
    params = {"phone": "79161234567", "message": "x", "shortcode": "4444",
              "password": "sc-pass", "sms_id": "f-1"}
    async with httpx.AsyncClient() as client:
        started = asyncio.get_running_loop().time()
        answer = await client.get(url(bridge, "/in/st/src-secret/shortcode"), params=params)
        elapsed = asyncio.get_running_loop().time() - started
        again = await client.get(url(bridge, "/in/st/src-secret/shortcode"), params=params)
    assert answer.content == again.content == b"Sorry, try again later"
    assert elapsed < 3.0  # reply_budget
    assert len(script.requests) == 1
    [listed] = await bridge.store.list_inbound()
    assert listed["script_error"]


async def test_reply_script_on_a_private_address_is_refused_without_an_allowance(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script,
                         inbound={"egress_allowed_networks": []})
    async with httpx.AsyncClient() as client:
        answer = await client.get(url(bridge, "/in/st/src-secret/shortcode"), params={
            "phone": "79161234567", "message": "x", "shortcode": "4444", "password": "sc-pass",
            "sms_id": "ssrf"})
        created = await client.post(
            url(bridge, "/api/v1/reply-scripts"),
            json={"shortcode": "4444", "url": "http://127.1:9/x"},
            headers={"Authorization": "Bearer admin-token"})
    assert answer.content == b"Sorry, try again later"
    assert script.requests == []
    [listed] = await bridge.store.list_inbound()
    assert "EgressRefused" in listed["script_error"]
    assert created.status_code == 400 and created.json()["field"] == "url"


async def test_reply_scripts_admin_api(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script)
    base = url(bridge, "/api/v1/reply-scripts")
    auth = {"Authorization": "Bearer admin-token"}
    async with httpx.AsyncClient() as client:
        assert (await client.get(base)).status_code == 401
        assert (await client.get(base, headers={"Authorization": "Bearer nope"})).status_code == 401
        bad = await client.post(base, headers=auth, json={"shortcode": "4444", "url": "ftp://x"})
        assert bad.status_code == 400 and bad.json()["field"] == "url"
        unknown = await client.post(base, headers=auth,
                                    json={"shortcode": "9999", "url": script.url})
        assert unknown.status_code == 400 and unknown.json()["field"] == "shortcode"
        created = await client.post(base, headers=auth, json={
            "shortcode": "4444", "keyword": "help", "url": script.url + "/help",
            "method": "POST", "timeout": 1.0, "secret": "kw-secret"})
        assert created.status_code == 201
        item = created.json()
        assert "secret" not in item and item["has_secret"] is True
        listing = (await client.get(base, headers=auth)).json()["reply_scripts"]
        assert [s["source"] for s in listing] == ["config", "api"]
        script.then(Scripted(200, b"Help text"))
        hit = await client.post(url(bridge, "/in/st/src-secret/shortcode"), data={
            "phone": "79161234567", "message": "HELP me", "shortcode": "4444",
            "password": "sc-pass", "sms_id": "api-1"})
        assert hit.content == b"Help text"
        assert script.requests[-1].method == "POST" and script.requests[-1].path_qs == "/help"
        updated = await client.put(f"{base}/{item['id']}", headers=auth, json={
            "shortcode": "4444", "keyword": "help", "url": script.url + "/help2"})
        assert updated.status_code == 200 and updated.json()["url"].endswith("/help2")
        assert (await client.delete(f"{base}/{item['id']}", headers=auth)).status_code == 204
        assert (await client.get(f"{base}/{item['id']}", headers=auth)).status_code == 404
        assert (await client.delete(f"{base}/config:0", headers=auth)).status_code == 404


async def test_delivery_reports_v1_form_and_v2_json_update_the_message(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver, provider: SmsTrafficDouble,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script, provider)
    for phone in ("79161234567", "79161234568"):
        code, _ = await send(bridge.smtp_port, b"Subject: x\r\n\r\nhello\r\n",
                             sender="agent@desk.example", recipients=[f"{phone}.helpdesk@x"])
        assert code == 250
    first, second = await provider.wait_for_accepted(2)
    async with asyncio.timeout(10):
        while len(await bridge.store.list_messages(status="sent")) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    async with httpx.AsyncClient() as client:
        # The spec's own example: not URL-encoded, no error_code.
        form = await client.post(
            url(bridge, "/in/st/src-secret/dlr"),
            content=f"sms_id={first.sms_id}&status=Delivered&delivery_date=2020-05-09 17:04:00",
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        batch = await client.post(url(bridge, "/in/st/src-secret/dlr"), json=[
            {"login": "acme", "sms_id": second.sms_id, "phone_number": second.phone,
             "status": "Non Delivered", "delivery_date": "2025-12-06 12:31:00",
             "channel": "sms", "err_code": 3},
            {"sms_id": "424242", "status": "Delivered"},
        ])
        broken = await client.post(url(bridge, "/in/st/src-secret/dlr"),
                                   content=b"[{", headers={"Content-Type": "application/json"})
    assert form.status_code == 200 and batch.status_code == 200
    assert broken.status_code == 400
    statuses = dict(rows(bridge, "SELECT phone, delivery_status FROM messages"))
    assert statuses == {first.phone: "delivered", second.phone: "undelivered"}
    delivered = await bridge.store.list_messages(status="delivered")
    assert [(m.phone, m.delivery_status) for m in delivered] == [(first.phone, "delivered")]
    events = [e["status"] for m in await bridge.store.list_messages()
              for e in await bridge.store.message_events(m.id)]
    assert events.count("delivered") == 1 and events.count("undelivered") == 1
    assert rows(bridge, "SELECT COUNT(*) FROM delivery_reports WHERE message_id IS NULL") == [(1,)]


async def test_helpdesk_reply_to_the_forwarded_mail_goes_back_as_an_sms(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver, provider: SmsTrafficDouble,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script, provider)
    async with httpx.AsyncClient() as client:
        await client.get(url(bridge, "/in/st/src-secret/mo") +
                         f"?message={cp1251('Где мой заказ?')}&phone=79161234567&sms_id=loop")
    [forwarded] = await mailbox.wait_for(1)
    original = forwarded.message
    reply = (
        f"From: agent@desk.example\r\nTo: {original['Reply-To']}\r\n"
        f"Subject: Re: {original['Subject']}\r\nIn-Reply-To: {original['Message-ID']}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "Заказ отправлен сегодня.\r\n\r\n"
        "On Mon, 23 Nov 2026 the bridge wrote:\r\n> Где мой заказ?\r\n"
        "-- \r\nHelpdesk\r\n"
    ).encode()
    code, text = await send(bridge.smtp_port, reply, sender="agent@desk.example",
                            recipients=[str(original["Reply-To"])])
    assert code == 250, text
    [sms] = await provider.wait_for_accepted(1)
    assert (sms.phone, sms.message) == ("79161234567", "Заказ отправлен сегодня.")


async def test_health_readiness_metrics_and_redacted_access_log(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver, caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = await start(bridge_factory, mailbox, hook, script)
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(bridge, "/healthz"))).json() == {"status": "ok"}
        assert (await client.get(url(bridge, "/readyz"))).json() == {"status": "ready"}
        await client.get(url(bridge, "/in/st/src-secret/shortcode"), params={
            "phone": "79161234567", "message": "x", "shortcode": "4444",
            "password": "sc-pass", "sms_id": "m1"})
        await client.get(url(bridge, "/in/st/src-secret/mo"),
                         params={"phone": "79161234567", "message": "x", "sms_id": "m2"})
        await client.get(url(bridge, "/in/st/src-secret/mo"),
                         params={"phone": "79161234567", "message": "x", "sms_id": "m2"})
        text = (await client.get(url(bridge, "/metrics"))).text
    for name in ("bridge_inbound_total", "bridge_inbound_duplicates_total",
                 "bridge_reply_script_calls_total", "bridge_queue_depth",
                 "bridge_dead_letters", "bridge_mails_rejected_total", "bridge_sends_total"):
        assert name in text
    logged = " ".join(str(vars(r)) for r in caplog.records if r.name == "aiohttp.access")
    assert "/in/st/********/shortcode" in logged
    assert "src-secret" not in logged and "sc-pass" not in logged



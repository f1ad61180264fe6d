"""Each forward's attempts, with the target's answers, in the admin API and on the
console's inbound page (issue 17: "each message's forwards with their attempts, answers and
dead letters"): a webhook that answers 500 then 200, a mailbox that refuses with 550; the
history is kept per job (its last 50 attempts) and pruned with the console's traces."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import pytest

from bridge.app import Bridge
from bridge.models import ForwardJob
from bridge.store import OutboxStore
from tests.conftest import BOTH_STORES, BridgeFactory
from tests.console_traffic import wait_until
from tests.doubles.mailbox import MailboxDouble
from tests.doubles.receiver import HttpReceiver, Scripted
from tests.test_console import sign_in
from tests.test_forwarding import config, send_mo
from tests.test_store_contract import mo, record

ADMIN = {"Authorization": "Bearer admin-token"}
# A webhook's error page: markup that must stay text, a secret parameter that must not be
# kept, and more than the 512 bytes an attempt keeps of an answer.
ERROR_PAGE = (b"<h1>busy</h1> <script>window.__xss=1</script> password=hunter22 "
              + b"x" * 1000)


@pytest.fixture
async def hook() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
async def script() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver() as receiver:
        yield receiver


async def inbound_detail(bridge: Bridge, inbound_id: int) -> dict[str, Any]:
    """``GET /api/v1/inbound/ID``, checked against the OpenAPI document."""
    base = f"http://127.0.0.1:{bridge.http_port}/api/v1"
    async with httpx.AsyncClient(headers=ADMIN) as client:
        doc = (await client.get(f"{base}/openapi.json")).json()
        answer = await client.get(f"{base}/inbound/{inbound_id}")
    assert answer.status_code == 200, answer.text
    schema = {**doc["paths"]["/inbound/{inbound_id}"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"], "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(answer.json())
    detail: dict[str, Any] = answer.json()
    return detail


async def inbound_page(bridge: Bridge, inbound_id: int) -> str:
    base = f"http://127.0.0.1:{bridge.http_port}"
    async with httpx.AsyncClient() as client:
        assert (await sign_in(client, base, password="admin-token")).status_code == 303
        page = await client.get(f"{base}/admin/inbound/{inbound_id}")
    assert page.status_code == 200
    return page.text


def page_attempts(page: str) -> list[tuple[str, str]]:
    """(outcome, detail as shown) of every attempt row of the page, in order."""
    rows = re.findall(r'<tr class="attempt (\w+)">.*?<td class="detail">(.*?)</td>', page,
                      re.DOTALL)
    return [(outcome, detail) for outcome, detail in rows]


async def only_inbound_id(bridge: Bridge) -> int:
    [inbound] = await bridge.store.list_inbound(limit=10)
    return int(inbound["id"])


@BOTH_STORES
async def test_a_webhook_answering_500_then_200_shows_a_retry_then_a_delivery(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, hook: HttpReceiver,
    script: HttpReceiver,
) -> None:
    hook.then(Scripted(500, ERROR_PAGE), Scripted(200, b'{"received": true}'))
    bridge = await bridge_factory(**config(mailbox, script, webhooks={"crm": hook.url + "/in"},
                                           routes=[{"webhooks": ["crm"]}]))
    await send_mo(bridge, "mo-1")
    await hook.wait_for(2)
    inbound_id = await only_inbound_id(bridge)

    async def delivered() -> bool:
        [forward] = (await inbound_detail(bridge, inbound_id))["forwards"]
        return bool(forward["status"] == "delivered")

    await wait_until(delivered)
    [forward] = (await inbound_detail(bridge, inbound_id))["forwards"]
    assert forward["attempts"] == 2
    [retry, done] = forward["attempt_history"]
    assert (retry["outcome"], done["outcome"]) == ("retry", "delivered")
    assert retry["at"] <= done["at"]
    assert retry["detail"].startswith("HTTP 500: <h1>busy</h1> <script>")
    assert "hunter22" not in retry["detail"] and "password=********" in retry["detail"]
    assert len(retry["detail"]) < 600  # the first 512 bytes of the answer
    assert done["detail"] == 'HTTP 200: {"received": true}'

    page = await inbound_page(bridge, inbound_id)
    [(first, first_detail), (second, second_detail)] = page_attempts(page)
    assert (first, second) == ("retry", "delivered")
    assert "HTTP 500" in first_detail and "&lt;script&gt;window.__xss=1" in first_detail
    assert "<script>window.__xss" not in page and "hunter22" not in page
    assert html.unescape(second_detail) == 'HTTP 200: {"received": true}'


@BOTH_STORES
async def test_a_mail_refused_with_550_shows_one_dead_attempt_with_the_smtp_reply(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, script: HttpReceiver,
) -> None:
    mailbox.refuse("RCPT", "550 5.1.1 <desk@help.example>: no such mailbox")
    bridge = await bridge_factory(**config(mailbox, script,
                                           routes=[{"emails": ["desk@help.example"]}]))
    await send_mo(bridge, "mo-1")
    inbound_id = await only_inbound_id(bridge)

    async def status_is(status: str) -> bool:
        [forward] = (await inbound_detail(bridge, inbound_id))["forwards"]
        return bool(forward["status"] == status)

    await wait_until(lambda: status_is("dead"))
    [forward] = (await inbound_detail(bridge, inbound_id))["forwards"]
    [dead] = forward["attempt_history"]
    assert dead["outcome"] == "dead"
    assert dead["detail"] == "SMTP 550 5.1.1 <desk@help.example>: no such mailbox"
    [(outcome, shown)] = page_attempts(await inbound_page(bridge, inbound_id))
    assert outcome == "dead" and "SMTP 550 5.1.1 &lt;desk@help.example&gt;" in shown

    # Redelivered, it is taken: the history goes on with the smarthost's answer.
    async with httpx.AsyncClient(headers=ADMIN) as client:
        answer = await client.post(f"http://127.0.0.1:{bridge.http_port}/api/v1/dead-letters/"
                                   f"{forward['id']}/redeliver")
    assert answer.status_code == 200, answer.text
    await mailbox.wait_for(1)
    await wait_until(lambda: status_is("delivered"))
    [forward] = (await inbound_detail(bridge, inbound_id))["forwards"]
    assert [a["outcome"] for a in forward["attempt_history"]] == ["dead", "delivered"]
    assert forward["attempt_history"][1]["detail"].startswith("SMTP 250")


@BOTH_STORES
async def test_a_forwards_history_keeps_its_last_50_attempts_and_is_pruned(
    store: OutboxStore,
) -> None:
    now = 1_800_000_000.0
    inbound = await record(store, mo("s1"), now=now,
                           jobs=[ForwardJob("webhook", "crm", b"{}")])
    for attempt in range(1, 56):
        (job,) = await store.claim_forward_jobs("o1", now + attempt, 10, 60.0)
        await store.forward_retry(job.id, "o1", f"WebhookFailed: HTTP 503 ({attempt})",
                                  now + attempt + 1, now=now + attempt,
                                  detail=f"HTTP 503: try {attempt}")
    (job,) = await store.claim_forward_jobs("o1", now + 100, 10, 60.0)
    await store.forward_retry(job.id, "someone-else", "late", now + 101)  # not the holder
    await store.forward_done(job.id, "o1", now + 100, detail="HTTP 204: ")
    detail = await store.inbound_detail(inbound.id)
    assert detail is not None
    [forward] = detail["forwards"]
    history = forward["attempt_history"]
    assert len(history) == 50
    assert [h["detail"] for h in history[:2]] == ["HTTP 503: try 7", "HTTP 503: try 8"]
    assert (history[-1]["outcome"], history[-1]["detail"]) == ("delivered", "HTTP 204: ")
    assert [h["at"] for h in history] == sorted(h["at"] for h in history)
    # Attempts are traces: the console's housekeeping forgets those older than the retention.
    await store.prune_traces(now + 56)
    detail = await store.inbound_detail(inbound.id)
    assert detail is not None
    assert [h["detail"] for h in detail["forwards"][0]["attempt_history"]] == ["HTTP 204: "]

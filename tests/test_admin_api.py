"""The admin API under /api/v1/: its OpenAPI 3.1 document validates, and every answer the
tests get — successes and refusals — matches the document; searches, timelines, dead
letters, redelivery, reply-script test calls, upstream health; secrets never leave."""

from __future__ import annotations

import base64
import csv
import io
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from tests.conftest import BOTH_STORES
from tests.console_traffic import (
    ADMIN_TOKEN,
    CUSTOMER_PHONE,
    DELIVERED_PHONE,
    FAILED_PHONE,
    PROVIDER_PASSWORD,
    SECRETS,
    SOURCE_SECRET,
    V2_PASSWORD,
    V2_PHONE,
    Traffic,
    send_mail,
    traffic,
    wait_until,
)
from tests.doubles.receiver import Scripted

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Api:
    """A client that checks every answer against the OpenAPI document."""

    def __init__(self, world: Traffic, client: httpx.AsyncClient, doc: dict[str, Any]) -> None:
        self.world = world
        self.client = client
        self.doc = doc
        self.checked: set[tuple[str, str, int]] = set()

    async def call(self, method: str, template: str, path: str | None = None, *,
                   status: int = 200, auth: bool = True, **kwargs: Any) -> httpx.Response:
        url = f"{self.world.base}/api/v1{path or template}"
        headers = {**(AUTH if auth else {}), **kwargs.pop("headers", {})}
        answer = await self.client.request(method, url, headers=headers, **kwargs)
        assert answer.status_code == status, (method, url, answer.status_code, answer.text)
        self.conforms(method, template, answer)
        return answer

    def conforms(self, method: str, template: str, answer: httpx.Response) -> None:
        operation = self.doc["paths"][template][method.lower()]
        documented = operation["responses"].get(str(answer.status_code))
        assert documented is not None, f"{method} {template}: {answer.status_code} undocumented"
        content = documented.get("content")
        if content is None:
            assert answer.content == b""
        else:
            media = answer.headers["content-type"].split(";")[0]
            assert media in content, (template, media)
            if media == "application/json":
                schema = {**content[media]["schema"], "components": self.doc["components"]}
                jsonschema.Draft202012Validator(schema).validate(answer.json())
        for secret in SECRETS:
            assert secret not in answer.text, (template, secret)
        self.checked.add((method, template, answer.status_code))


@pytest.fixture
async def api(tmp_path: Path, store_url: str) -> Any:
    async with traffic(tmp_path, store_url=store_url) as world, httpx.AsyncClient() as client:
        doc = (await client.get(f"{world.base}/api/v1/openapi.json")).json()
        yield Api(world, client, doc)


async def test_the_openapi_document_is_valid_openapi_3_1(api: Api) -> None:
    validate(api.doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert api.doc["openapi"] == "3.1.0"
    # Every route the API serves is described.
    routes = {(r.method, r.resource.canonical.removeprefix("/api/v1"))
              for r in api.world.bridge._http.app.router.routes()  # type: ignore[union-attr]
              if r.resource is not None and r.resource.canonical.startswith("/api/v1/")
              and r.method != "HEAD"}
    documented = {(m.upper(), p) for p, item in api.doc["paths"].items() for m in item}
    assert routes == documented


@BOTH_STORES
async def test_every_answer_matches_the_document(api: Api) -> None:
    ids = api.world.ids
    delivered, failed, v2 = ids[DELIVERED_PHONE], ids[FAILED_PHONE], ids[V2_PHONE]
    listing = (await api.call("GET", "/messages")).json()
    assert {m["phone"] for m in listing["messages"]} == {DELIVERED_PHONE, FAILED_PHONE, V2_PHONE}
    await api.call("GET", "/messages", params={"phone": "1234567", "status": "delivered",
                                               "since": "2020-01-01", "limit": "1"})
    await api.call("GET", "/messages.csv")
    await api.call("GET", "/messages/{message_id}", f"/messages/{delivered}")
    for message_id in (delivered, failed, v2):
        await api.call("GET", "/messages/{message_id}/timeline", f"/messages/{message_id}/timeline")
    await api.call("GET", "/inbound")
    await api.call("GET", "/inbound/{inbound_id}", f"/inbound/{ids['inbound']}")
    await api.call("GET", "/forwards", params={"status": "dead"})
    await api.call("GET", "/dead-letters")
    await api.call("GET", "/stats")
    await api.call("GET", "/upstreams")
    await api.call("GET", "/upstreams/{name}/balance", "/upstreams/st1/balance")
    await api.call("GET", "/config")
    created = (await api.call("POST", "/reply-scripts", status=201, json={
        "shortcode": "4444", "url": api.world.script.url + "/balance"})).json()
    script = f"/reply-scripts/{created['id']}"
    await api.call("GET", "/reply-scripts")
    await api.call("GET", "/reply-scripts/{script_id}", script)
    await api.call("PUT", "/reply-scripts/{script_id}", script, json={
        "shortcode": "4444", "keyword": "bal", "url": api.world.script.url + "/b2"})
    await api.call("POST", "/reply-scripts/{script_id}/test", script + "/test",
                   json={"phone": "79001112233", "text": "bal"})
    await api.call("POST", "/dead-letters/{job_id}/redeliver",
                   f"/dead-letters/{ids['dead']}/redeliver")
    await api.call("DELETE", "/reply-scripts/{script_id}", script, status=204)
    await api.call("GET", "/audit")
    # Refusals are documented too.
    await api.call("GET", "/messages", status=400, params={"status": "lost"})
    await api.call("GET", "/messages", status=400, params={"since": "yesterday"})
    await api.call("GET", "/inbound", status=400, params={"limit": "abc"})
    await api.call("GET", "/messages/{message_id}/timeline", "/messages/999999/timeline",
                   status=404)
    await api.call("GET", "/stats", status=401, auth=False)
    await api.call("POST", "/dead-letters/{job_id}/redeliver",
                   f"/dead-letters/{ids['dead']}/redeliver", status=409)
    await api.call("POST", "/reply-scripts", status=400, json={"shortcode": "4444",
                                                               "url": "ftp://x"})
    await api.call("GET", "/openapi.json", auth=False)
    # A second dead letter, resolved.
    api.world.mailbox.refuse("DATA", "554 5.7.1 Refused again")
    async with httpx.AsyncClient() as client:
        pushed = await client.get(f"{api.world.base}/in/st/{SOURCE_SECRET}/mo", params={
            "phone": CUSTOMER_PHONE, "message": "again", "sms_id": "mo-2"})
        assert pushed.status_code == 200

    async def dead_letter() -> list[dict[str, Any]]:
        listing = await api.call("GET", "/dead-letters")
        return [f for f in listing.json()["forwards"] if f["id"] != ids["dead"]]

    await wait_until(lambda: _true(dead_letter()))
    [second] = await dead_letter()
    await api.call("POST", "/dead-letters/{job_id}/resolve",
                   f"/dead-letters/{second['id']}/resolve")
    # A message held as ambiguous (two answers lost after the request went out), resolved.
    api.world.provider.fail_next(2, "http500")
    await send_mail(api.world.bridge.smtp_port, "79160000077.alerts@sms.example", "held")

    async def held() -> bool:
        found = await api.call("GET", "/messages", params={"status": "ambiguous"})
        return bool(found.json()["messages"])

    await wait_until(held)
    [message] = (await api.call("GET", "/messages", params={"status": "ambiguous"})
                 ).json()["messages"]
    resolve = "/messages/{message_id}/resolve"
    await api.call("POST", resolve, f"/messages/{message['id']}/resolve", status=400,
                   json={"outcome": "maybe"})
    done = await api.call("POST", resolve, f"/messages/{message['id']}/resolve",
                          json={"outcome": "sent"})
    assert done.json() == {"id": message["id"], "status": "sent"}
    await api.call("POST", resolve, f"/messages/{message['id']}/resolve", status=409,
                   json={"outcome": "sent"})
    exercised = {(method, template) for method, template, status in api.checked if status < 300}
    documented = {(m.upper(), p) for p, item in api.doc["paths"].items() for m in item}
    assert exercised == documented


async def _true(rows: Any) -> bool:
    return bool(await rows)


async def test_searches_narrow_by_phone_account_status_date_and_text(api: Api) -> None:
    async def phones(**params: str) -> list[str]:
        answer = await api.call("GET", "/messages", params=params)
        return sorted(m["phone"] for m in answer.json()["messages"])

    everything = sorted([DELIVERED_PHONE, FAILED_PHONE, V2_PHONE])
    assert await phones() == everything
    assert await phones(phone="+7 (916) 123-45-67") == [DELIVERED_PHONE]  # exact number
    assert await phones(phone="555") == [FAILED_PHONE]  # part of one
    assert await phones(account="billing") == [V2_PHONE]
    assert await phones(status="failed") == [FAILED_PHONE]
    assert await phones(status="delivered") == [DELIVERED_PHONE]
    assert await phones(text="DISK FULL") == [DELIVERED_PHONE]  # case-insensitive
    assert await phones(since=str(time.time() - 600)) == everything
    assert await phones(until="2020-01-01") == []
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert await phones(since=today, until=today) == everything
    first = (await api.call("GET", "/messages", params={"limit": "2"})).json()
    assert len(first["messages"]) == 2 and first["next_before"] is not None
    rest = (await api.call("GET", "/messages", params={
        "limit": "2", "before": str(first["next_before"])})).json()
    assert [m["phone"] for m in rest["messages"]] == [DELIVERED_PHONE]
    assert rest["next_before"] is None
    refused = await api.call("GET", "/messages", params={"before": "-1"}, status=400)
    assert refused.json() == {"error": "before: not a whole number", "field": "before"}
    inbound = await api.call("GET", "/inbound", params={"phone": CUSTOMER_PHONE[-4:],
                                                        "text": "order"})
    [found] = inbound.json()["inbound"]
    assert (found["phone"], found["dead"]) == (CUSTOMER_PHONE, 1)
    none = await api.call("GET", "/inbound", params={"text": "nothing like it"})
    assert none.json()["inbound"] == []


async def test_a_timeline_runs_from_the_mail_to_the_delivery_report(api: Api) -> None:
    message_id = api.world.ids[DELIVERED_PHONE]
    timeline = (await api.call("GET", "/messages/{message_id}/timeline",
                               f"/messages/{message_id}/timeline")).json()
    mail = timeline["mail"]
    assert mail["rcpt_to"] == [f"{DELIVERED_PHONE}.alerts@sms.example"]
    assert mail["mail_from"] == "monitor@example.com" and mail["format"] == "v1"
    assert "Disk full on db-1" in mail["raw"] and mail["message_id"] in mail["raw"]
    assert mail["raw_size"] >= len(mail["raw"]) and not mail["raw_truncated"]
    [exchange] = timeline["provider_exchanges"]
    assert exchange["upstream"] == "st1" and exchange["status"] == 200
    assert exchange["url"].endswith("/multi.php") and exchange["method"] == "POST"
    assert f"phones={DELIVERED_PHONE}" in exchange["request"]
    assert "password=********" in exchange["request"]  # the provider's password masked
    assert "<result>OK</result>" in exchange["response"]
    [report] = timeline["delivery_reports"]
    assert (report["raw_status"], report["status"]) == ("Delivered", "delivered")
    assert report["provider_id"] in timeline["message"]["provider_ids"]
    assert timeline["bounce"] is None
    kinds = [step["kind"] for step in timeline["timeline"]]
    assert kinds[0] == "mail" and "provider" in kinds and kinds[-1] in ("report", "status")
    assert [s["at"] for s in timeline["timeline"]] == sorted(s["at"] for s in timeline["timeline"])
    failed_id = api.world.ids[FAILED_PHONE]
    failed = (await api.call("GET", "/messages/{message_id}/timeline",
                             f"/messages/{failed_id}/timeline")).json()
    assert failed["message"]["status"] == "failed" and "428" in failed["message"]["last_error"]
    bounce = failed["bounce"]
    assert bounce["mail_to"] == "ops@example.com" and "multipart/report" in bounce["content"]
    assert failed["timeline"][-1]["kind"] == "bounce"


async def test_the_v2_password_is_not_kept_plain_or_encoded(tmp_path: Path) -> None:
    async with traffic(tmp_path) as world, httpx.AsyncClient(headers=AUTH) as client:
        body = (f"login: billing\n\npassword: {V2_PASSWORD}\n\nphones: 79260000001\n\n"
                "message: Encoded invoice\n").encode()
        raw = (b"From: monitor@example.com\r\nTo: multi@sms.example\r\nSubject: x\r\n"
               b"Message-ID: <enc-1@monitor.example>\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes(body).replace(b"\n", b"\r\n"))
        reply = await send_mail(world.bridge.smtp_port, "multi@sms.example", "", raw=raw)
        assert reply.startswith("2.0.0 Queued"), reply
        listing = (await client.get(f"{world.base}/api/v1/messages",
                                    params={"phone": "79260000001"})).json()
        [message] = listing["messages"]
        for phone_id in (message["id"], world.ids[V2_PHONE]):
            timeline = (await client.get(
                f"{world.base}/api/v1/messages/{phone_id}/timeline")).text
            assert V2_PASSWORD not in timeline
            assert base64.b64encode(V2_PASSWORD.encode()).decode()[:12] not in timeline
            assert "password: ********" in timeline


async def test_traces_are_pruned_after_the_retention_and_off_with_zero(tmp_path: Path) -> None:
    async with traffic(tmp_path) as world, httpx.AsyncClient(headers=AUTH) as client:
        url = f"{world.base}/api/v1/messages/{world.ids[DELIVERED_PHONE]}/timeline"
        before = (await client.get(url)).json()
        assert before["mail"]["raw"] and before["provider_exchanges"]
        # What the hourly housekeeping does once the retention has passed.
        assert await world.bridge.store.prune_traces(time.time() + 1) >= 2
        after = (await client.get(url)).json()
        assert after["mail"]["raw"] is None and after["provider_exchanges"] == []
        assert after["mail"]["headers"]  # the header block (for the bounce) stays
        assert after["delivery_reports"] == before["delivery_reports"]
    async with traffic(tmp_path / "off", store={"trace_retention_days": 0}) as world, \
            httpx.AsyncClient(headers=AUTH) as client:
        timeline = (await client.get(
            f"{world.base}/api/v1/messages/{world.ids[DELIVERED_PHONE]}/timeline")).json()
        assert timeline["mail"]["raw"] is None and timeline["provider_exchanges"] == []
        health = (await client.get(f"{world.base}/api/v1/upstreams")).json()
        [st1] = [u for u in health["upstreams"] if u["name"] == "st1"]
        assert st1["last_success_at"] is not None


async def test_unauthenticated_and_disabled_requests_are_refused(api: Api,
                                                                 tmp_path: Path) -> None:
    paths = [p for p in api.doc["paths"] if p != "/openapi.json"]
    for template in paths:
        concrete = (template.replace("{message_id}", "1").replace("{inbound_id}", "1")
                    .replace("{job_id}", "1").replace("{script_id}", "1")
                    .replace("{name}", "st1"))
        for method in api.doc["paths"][template]:
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            {"Authorization": f"Basic {ADMIN_TOKEN}"}):
                await api.call(method.upper(), template, concrete, status=401, auth=False,
                               headers=headers)
    # Nothing was done by those requests.
    assert (await api.call("GET", "/audit")).json()["audit"] == []


async def test_redelivering_a_dead_letter_delivers_it_and_is_audited(api: Api) -> None:
    dead = api.world.ids["dead"]
    letters = (await api.call("GET", "/dead-letters")).json()["forwards"]
    assert [(f["id"], f["phone"], f["status"]) for f in letters] == [
        (dead, CUSTOMER_PHONE, "dead")]
    assert "554" in letters[0]["last_error"]
    mails = len(api.world.mailbox.mails)
    await api.call("POST", "/dead-letters/{job_id}/redeliver", f"/dead-letters/{dead}/redeliver")
    await api.world.mailbox.wait_for(mails + 1)
    forwarded = api.world.mailbox.mails[-1].message
    assert forwarded.get_payload(decode=True) == b"Where is my order 1234?\n"
    await wait_until(lambda: _forward_is(api, dead, "delivered"))
    again = await api.call("POST", "/dead-letters/{job_id}/redeliver",
                           f"/dead-letters/{dead}/redeliver", status=409)
    assert "not a dead letter" in again.json()["error"]
    [entry] = (await api.call("GET", "/audit")).json()["audit"]
    assert (entry["who"], entry["via"], entry["action"], entry["target"]) == (
        "api", "api", "redeliver", f"forward {dead}")


async def _forward_is(api: Api, job_id: int, status: str) -> bool:
    detail = (await api.call("GET", "/inbound/{inbound_id}",
                             f"/inbound/{api.world.ids['inbound']}")).json()
    return any(f["id"] == job_id and f["status"] == status for f in detail["forwards"])


async def test_a_reply_script_test_call_shows_the_answer_and_its_time(api: Api) -> None:
    created = (await api.call("POST", "/reply-scripts", status=201, json={
        "shortcode": "4444", "keyword": "balance", "url": api.world.script.url + "/b"})).json()
    result = (await api.call("POST", "/reply-scripts/{script_id}/test",
                             f"/reply-scripts/{created['id']}/test",
                             json={"phone": "79001112233", "text": "balance please"})).json()
    # The subscriber gets the answer without its formatting (002 line 1976).
    assert result["reply"] == "Your balance: 100 RUB"
    assert result["answer"] == "Your balance: <b>100</b> RUB" and result["error"] is None
    assert 0 <= result["seconds"] < 5
    [call] = api.world.script.requests
    assert "phone=79001112233" in call.path_qs and "message=balance+please" in call.path_qs
    api.world.script.then(Scripted(500))
    failed = (await api.call("POST", "/reply-scripts/{script_id}/test",
                             f"/reply-scripts/{created['id']}/test", json={})).json()
    assert failed["fallback"] and failed["reply"] == "Try later" and "500" in failed["error"]
    refused = await api.call("POST", "/reply-scripts/{script_id}/test",
                             f"/reply-scripts/{created['id']}/test",
                             json={"phone": "x1"}, status=400)
    assert refused.json()["field"] == "phone"
    actions = [e["action"] for e in (await api.call("GET", "/audit")).json()["audit"]]
    assert actions == ["script.test", "script.test", "script.create"]


async def test_upstream_health_counts_failures_and_the_balance_is_asked(api: Api) -> None:
    # Provider code 1000 (002 "Коды ошибок API": a temporary failure): surely not sent,
    # retried.
    api.world.provider.fail_next(2, "error", code=1000)
    reply = await send_mail(api.world.bridge.smtp_port, "79160000009.alerts@sms.example", "x")
    assert reply.startswith("2.0.0")
    assert api.world.bridge.traces is not None

    async def sent() -> bool:
        listing = (await api.call("GET", "/messages", params={"phone": "79160000009"})).json()
        return listing["messages"][0]["status"] == "sent"

    async def failures(count: int) -> bool:
        await api.world.bridge.traces.flush()  # type: ignore[union-attr]
        return bool((await st1())["consecutive_failures"] == count)

    async def st1() -> dict[str, Any]:
        upstreams = (await api.call("GET", "/upstreams")).json()["upstreams"]
        return next(u for u in upstreams if u["name"] == "st1")

    await wait_until(sent)
    await wait_until(lambda: failures(0))
    health = await st1()
    assert "1000" in health["last_error"] and health["last_success_at"] >= health["last_error_at"]
    assert health["base_url"] == api.world.provider.url and health["has_balance"]
    api.world.provider.fail_next(3, "error", code=1000)
    await send_mail(api.world.bridge.smtp_port, "79160000010.alerts@sms.example", "y")
    await wait_until(lambda: failures(2))
    balance = (await api.call("GET", "/upstreams/{name}/balance", "/upstreams/st1/balance")).json()
    assert balance["error"] is None and balance["balance"] == "10025"
    config = (await api.call("GET", "/config")).json()
    assert config["upstreams"]["st1"]["password"] == "********"
    assert PROVIDER_PASSWORD not in str(config)


async def test_csv_export_quotes_formulas(tmp_path: Path) -> None:
    async with traffic(tmp_path, text="=HYPERLINK(\"http://evil\")") as world, \
            httpx.AsyncClient(headers=AUTH) as client:
        answer = await client.get(f"{world.base}/api/v1/messages.csv",
                                  params={"phone": DELIVERED_PHONE})
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0][:5] == ["id", "created_at", "account", "phone", "status"]
    [row] = rows[1:]
    assert row[3] == DELIVERED_PHONE and row[10] == "'=HYPERLINK(\"http://evil\")"


def test_provider_credentials_are_masked_in_every_body_form() -> None:
    from bridge.redact import redact_exchange, redact_mail

    def masked(data: bytes) -> str:
        return redact_exchange(data, 65536).decode()

    assert masked(b'{"login": "a", "password": "p\\"w", "apiKey": 12}') == (
        '{"login": "a", "password": "********", "apiKey": "********"}')
    assert masked(b"<soap:Body><login>a</login><password>pw</password>"
                  b"<sessionID>abc</sessionID></soap:Body>") == (
        "<soap:Body><login>a</login><password>********</password>"
        "<sessionID>********</sessionID></soap:Body>")
    assert masked(b"https://h/sms?SessionID=abc&psw=1&phone=7") == (
        "https://h/sms?SessionID=********&psw=********&phone=7")
    assert len(redact_exchange(b"x" * 100_000, 65536)) == 65536
    v2 = (b"Subject: x\r\n\r\nlogin: billing\r\n\r\nPassword : one\r\ntwo\r\n\r\n"
          b"phones: 7916\r\n")
    assert redact_mail(v2, v2_text="", limit=65536) == (
        b"Subject: x\r\n\r\nlogin: billing\r\n\r\nPassword : ********\r\n\r\nphones: 7916\r\n")
    # A v1 mail is kept as it is (but cut).
    assert redact_mail(b"Subject: 7916\r\n\r\npassword: is text here\r\n", v2_text=None,
                       limit=20) == b"Subject: 7916\r\n\r\npas"

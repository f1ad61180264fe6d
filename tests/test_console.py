"""The operators' console at /admin/, over HTTP: sign-in and its cookie, CSRF and
unauthenticated refusals, hostile SMS text made inert on every page, no secret rendered,
the audit log kept across a restart. (A real browser drives it in test_console_browser.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridge.app import Bridge
from tests.conftest import make_settings
from tests.console_traffic import (
    ADMIN_TOKEN,
    CUSTOMER_PHONE,
    DELIVERED_PHONE,
    OPERATOR,
    OPERATOR_PASSWORD,
    SECRETS,
    Traffic,
    traffic,
)

# Hostile SMS text: markup that would run, a right-to-left override that would reverse what
# follows (an "exe.txt" shown as "txt.exe"), control characters, and 10 KB of text.
HOSTILE = ('<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
           '"><svg onload=window.__xss=3> \u202egnp.exe\u202c \u2066iso\u2069 '
           'bell\x07esc\x1b[31m zero\u200bwidth ' + "W" * 10_240)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, base: str, *, operator: str = "",
                  password: str = ADMIN_TOKEN, headers: dict[str, str] | None = None
                  ) -> httpx.Response:
    form = await client.get(f"{base}/admin/login")
    assert form.status_code == 200
    return await client.post(f"{base}/admin/login", headers=headers, data={
        "operator": operator, "password": password, "csrf": csrf_of(form.text)})


def next_of(answer: httpx.Response) -> str:
    """Where a redirect to the sign-in page says to go back to."""
    location = httpx.URL(answer.headers["location"])
    assert location.path == "/admin/login"
    return str(location.params["next"])


def pages(world: Traffic) -> list[str]:
    ids = world.ids
    return ["/admin/dashboard", "/admin/messages", f"/admin/messages?phone={DELIVERED_PHONE}",
            f"/admin/messages/{ids[DELIVERED_PHONE]}", "/admin/inbound",
            f"/admin/inbound/{ids['inbound']}", "/admin/dead-letters", "/admin/scripts",
            "/admin/scripts/new", "/admin/config", "/admin/audit"]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Traffic]:
    async with traffic(tmp_path) as world:
        yield world


async def test_sign_in_gives_a_strict_http_only_cookie_secure_behind_tls(world: Traffic) -> None:
    async with httpx.AsyncClient() as client:
        answer = await sign_in(client, world.base)
        assert answer.status_code == 303 and answer.headers["location"] == "/admin/dashboard"
        cookie = next(v for v in answer.headers.get_list("set-cookie")
                      if v.startswith("bridge_session="))
        flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite", "path", "max-age"} <= flags and "secure" not in flags
        assert "SameSite=Strict" in cookie and "Path=/admin/" in cookie
        assert ADMIN_TOKEN not in cookie
        dashboard = await client.get(f"{world.base}/admin/dashboard")
        assert dashboard.status_code == 200 and ">admin<" in dashboard.text
    async with httpx.AsyncClient() as client:
        proxied = await sign_in(client, world.base, operator=OPERATOR,
                                password=OPERATOR_PASSWORD,
                                headers={"X-Forwarded-Proto": "https"})
        cookie = next(v for v in proxied.headers.get_list("set-cookie")
                      if v.startswith("bridge_session="))
        assert "Secure" in cookie


async def test_wrong_passwords_are_refused_then_limited(world: Traffic) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(10):
            answer = await sign_in(client, world.base, password="guess")
            assert answer.status_code == 401 and "Wrong name or password" in answer.text
            assert "bridge_session" not in answer.headers.get("set-cookie", "")
        limited = await sign_in(client, world.base)  # even the right token, for a while
        assert limited.status_code == 429
        wrong_operator = await sign_in(client, world.base, operator=OPERATOR,
                                       password=ADMIN_TOKEN)
        assert wrong_operator.status_code == 429


async def test_unauthenticated_requests_go_to_the_sign_in_and_change_nothing(
    world: Traffic,
) -> None:
    dead = world.ids["dead"]
    async with httpx.AsyncClient() as client:
        for path in pages(world):
            answer = await client.get(world.base + path)
            assert answer.status_code == 303, path
            assert next_of(answer) == path
        for path in (f"/admin/forwards/{dead}/redeliver", f"/admin/forwards/{dead}/resolve",
                     "/admin/scripts", "/admin/scripts/1/delete", "/admin/scripts/config:0/test",
                     "/admin/logout"):
            answer = await client.post(world.base + path, data={"csrf": "x"})
            assert answer.status_code == 303, path
    async with httpx.AsyncClient(cookies={"bridge_session": "eyJ1IjoiYWRtaW4ifQ.AAAA"}) as forged:
        answer = await forged.get(f"{world.base}/admin/dashboard")
        assert answer.status_code == 303
    assert [j["status"] for j in await world.bridge.store.list_forward_jobs()] == ["dead"]
    assert world.script.requests == []


async def test_every_form_refuses_a_post_without_its_csrf_token(world: Traffic) -> None:
    dead = world.ids["dead"]
    async with httpx.AsyncClient() as client, httpx.AsyncClient() as other:
        await sign_in(client, world.base)
        await sign_in(other, world.base, operator=OPERATOR, password=OPERATOR_PASSWORD)
        token = csrf_of((await client.get(f"{world.base}/admin/dead-letters")).text)
        foreign = csrf_of((await other.get(f"{world.base}/admin/dead-letters")).text)
        assert token != foreign
        targets = [f"/admin/forwards/{dead}/redeliver", f"/admin/forwards/{dead}/resolve",
                   "/admin/scripts", "/admin/scripts/config:0/test", "/admin/logout"]
        for path in targets:
            for data, headers in (({}, {}), ({"csrf": "0" * 64}, {}),
                                  ({"csrf": foreign}, {}),
                                  ({"csrf": token}, {"Origin": "https://evil.example"})):
                answer = await client.post(world.base + path, data={
                    **data, "shortcode": "4444", "url": "http://127.0.0.1:9/x"},
                    headers=headers)
                assert answer.status_code == 403, (path, data, headers)
                assert "CSRF" in answer.text
        # The sign-in form is protected the same way (login CSRF).
        answer = await client.post(f"{world.base}/admin/login",
                                   data={"password": ADMIN_TOKEN, "csrf": "x"})
        assert answer.status_code == 403
        # Nothing happened ...
        assert [j["status"] for j in await world.bridge.store.list_forward_jobs()] == ["dead"]
        assert await world.bridge.store.list_reply_scripts() == []
        assert world.script.requests == []
        # ... and the right token does it.
        answer = await client.post(f"{world.base}/admin/forwards/{dead}/redeliver",
                                   data={"csrf": token})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/admin/dead-letters?done=redelivered"


async def test_hostile_sms_text_is_inert_on_every_page(tmp_path: Path) -> None:
    async with traffic(tmp_path, text=HOSTILE, inbound_text=HOSTILE) as world, \
            httpx.AsyncClient() as client:
        await sign_in(client, world.base)
        stored = await world.bridge.store.list_messages(limit=10)
        assert any("<script>window.__xss=1</script>" in m.text for m in stored)
        for path in [*pages(world), f"/admin/inbound?phone={CUSTOMER_PHONE}"]:
            page = await client.get(world.base + path)
            assert page.status_code == 200, path
            html = page.text
            assert "<script>window" not in html and "<img src=x" not in html, path
            assert "<svg" not in html and "onerror=\"window" not in html, path
            for char in "\u202e\u202c\u2066\u2069\x07\x1b\u200b":
                assert char not in html, (path, hex(ord(char)))
            assert page.headers["content-security-policy"].startswith("default-src 'none'")
            assert page.headers["x-content-type-options"] == "nosniff"
            check_no_secret(html, path)
        message = (await client.get(
            f"{world.base}/admin/messages/{world.ids[DELIVERED_PHONE]}")).text
        assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in message
        assert '<span class="ctl" title="invisible character">U+202E</span>' in message
        assert "W" * 10_240 in message  # the whole text on its own page ...
        listing = (await client.get(f"{world.base}/admin/messages")).text
        assert "more characters" in listing and "W" * 10_240 not in listing  # ... cut in lists
        inbound = (await client.get(f"{world.base}/admin/inbound/{world.ids['inbound']}")).text
        assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in inbound


def check_no_secret(html: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in html, (where, secret)


async def test_no_secret_is_rendered_and_sign_out_ends_the_session(world: Traffic) -> None:
    async with httpx.AsyncClient() as client:
        await sign_in(client, world.base)
        old_cookie = client.cookies.get("bridge_session")
        for path in pages(world):
            page = await client.get(world.base + path)
            assert page.status_code == 200, path
            check_no_secret(page.text, path)
        config = (await client.get(f"{world.base}/admin/config")).text
        assert "********" in config and "st1" in config
        exported = await client.get(f"{world.base}/admin/messages.csv?status=failed")
        assert exported.headers["content-type"] == "text/csv; charset=utf-8"
        assert exported.text.splitlines()[1].split(",")[3] == "79035550000"
        check_no_secret(exported.text, "messages.csv")
        token = csrf_of(config)
        answer = await client.post(f"{world.base}/admin/logout", data={"csrf": token})
        assert answer.status_code == 303
    async with httpx.AsyncClient(cookies={"bridge_session": old_cookie or ""}) as replay:
        answer = await replay.get(f"{world.base}/admin/dashboard")
        assert answer.status_code == 303  # the signed-out session is revoked


async def test_the_audit_log_survives_a_restart(tmp_path: Path) -> None:
    async with traffic(tmp_path) as world, httpx.AsyncClient() as client:
        await sign_in(client, world.base, operator=OPERATOR, password=OPERATOR_PASSWORD)
        token = csrf_of((await client.get(f"{world.base}/admin/dead-letters")).text)
        await client.post(f"{world.base}/admin/forwards/{world.ids['dead']}/resolve",
                          data={"csrf": token})
        settings = world.bridge.settings
    bridge = Bridge(settings)
    await bridge.start()
    try:
        async with httpx.AsyncClient() as client:
            base = f"http://127.0.0.1:{bridge.http_port}"
            await sign_in(client, base)
            audit = (await client.get(f"{base}/admin/audit")).text
    finally:
        await bridge.stop()
    rows = re.findall(r'<td>([^<]*)</td><td>[^<]*</td><td class="action">([^<]*)</td>', audit)
    assert rows[-3:] == [("admin", "sign-in"), (OPERATOR, "resolve"), (OPERATOR, "sign-in")]


async def test_the_console_is_off_without_an_admin_token(tmp_path: Path) -> None:
    bridge = Bridge(make_settings(tmp_path))
    await bridge.start()
    try:
        async with httpx.AsyncClient() as client:
            base = f"http://127.0.0.1:{bridge.http_port}"
            for path in ("/admin/login", "/admin/dashboard"):
                answer = await client.get(base + path)
                assert answer.status_code == 404 and "admin_token" in answer.text
            api = await client.get(f"{base}/api/v1/messages")
            assert api.status_code == 404
    finally:
        await bridge.stop()


async def test_a_sign_in_goes_back_to_the_page_asked_for_but_never_off_site(
    world: Traffic,
) -> None:
    async with httpx.AsyncClient() as client:
        asked = await client.get(f"{world.base}/admin/messages?phone=79161234567")
        assert next_of(asked) == "/admin/messages?phone=79161234567"
        form = (await client.get(world.base + asked.headers["location"])).text
        answer = await client.post(f"{world.base}/admin/login", data={
            "password": ADMIN_TOKEN, "csrf": csrf_of(form),
            "next": "/admin/messages?phone=79161234567"})
        assert answer.headers["location"] == "/admin/messages?phone=79161234567"
        for target in ("https://evil.example/", "//evil.example/admin/", "/\\evil.example"):
            form = (await client.get(f"{world.base}/admin/login")).text
            answer = await client.post(f"{world.base}/admin/login", data={
                "password": ADMIN_TOKEN, "csrf": csrf_of(form), "next": target})
            assert answer.headers["location"] == "/admin/dashboard", target

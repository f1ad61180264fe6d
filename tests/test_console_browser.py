"""The operators' console in a real browser: headless Chromium (Debian's ``chromium``
package, driven by Playwright's Python API; no browser is downloaded) against a bridge
with real traffic from the test doubles.

Each page is saved as a screenshot in the test's temporary directory (printed with ``-s``;
``BRIDGE_SCREENSHOT_DIR`` names a directory that gets copies). Without Chromium the tests
are skipped, except in CI (``CI=true``), whose ``.ci/run`` installs it: there they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.console_traffic import (
    ADMIN_TOKEN,
    CUSTOMER_PHONE,
    DELIVERED_PHONE,
    FAILED_PHONE,
    OPERATOR,
    OPERATOR_PASSWORD,
    SECRETS,
    Traffic,
    traffic,
    wait_until,
)
from tests.doubles.receiver import HttpReceiver, Scripted
from tests.test_console import HOSTILE

CHROMIUM = next((path for path in (os.environ.get("BRIDGE_CHROMIUM"), "/usr/bin/chromium",
                                   shutil.which("chromium"), shutil.which("chromium-browser"))
                 if path and Path(path).is_file()), None)

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    async_playwright = None  # type: ignore[assignment]


def _unavailable() -> str | None:
    if async_playwright is None:
        return "playwright is not installed (pip install -e '.[test]')"
    if CHROMIUM is None:
        return ("no Chromium found (/usr/bin/chromium): `apt-get install chromium` "
                "(.ci/run does), or set BRIDGE_CHROMIUM")
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run in CI: {reason}")
        pytest.skip(reason)
    assert async_playwright is not None and CHROMIUM is not None
    async with async_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            await launched.close()


class Shots:
    """Screenshots of the pages, in the test's temporary directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.copies = Path(os.environ["BRIDGE_SCREENSHOT_DIR"]) \
            if os.environ.get("BRIDGE_SCREENSHOT_DIR") else None
        self.taken: list[Path] = []

    async def take(self, page: Page, name: str) -> Path:
        path = self.directory / f"{len(self.taken) + 1:02d}-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        if self.copies is not None:
            self.copies.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.copies / path.name)
        return path


async def signed_in_page(browser: Browser, world: Traffic, *, operator: str = "",
                         password: str = ADMIN_TOKEN) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    page = await context.new_page()
    await page.goto(f"{world.base}/admin/dashboard")
    assert page.url.startswith(f"{world.base}/admin/login")  # not signed in yet
    await page.fill("input[name=operator]", operator)
    await page.fill("input[name=password]", password)
    await page.click("form[action='/admin/login'] button[type=submit]")
    await page.wait_for_url(f"{world.base}/admin/dashboard")
    return page


async def text_of(page: Page, selector: str) -> str:
    return str(await page.locator(selector).inner_text())


async def test_an_operator_works_through_every_page(
    browser: Browser, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    shots = Shots(tmp_path / "screenshots")
    async with traffic(tmp_path) as world:
        page = await signed_in_page(browser, world, operator=OPERATOR,
                                    password=OPERATOR_PASSWORD)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        # Dashboard: counts now and the chart of the last hour, drawn by the vendored uPlot.
        await page.reload()
        await page.wait_for_selector("#chart[data-drawn='1'] canvas")
        assert await text_of(page, "#count-sent") == "2"  # one of them delivered since
        assert await text_of(page, "#count-failed") == "1"
        assert await text_of(page, "#count-dead") == "1"
        assert "st1" in await text_of(page, "#upstreams")
        assert "10025" in await text_of(page, "#upstreams")  # the provider's balance
        await shots.take(page, "dashboard")
        # Messages: found by phone as a person types it; its whole timeline.
        await page.click("nav >> text=Messages")
        await page.fill("input[name=phone]", "+7 (916) 123-45-67")
        await page.click("form.search button[type=submit]")
        rows = page.locator("#messages tbody tr")
        assert await rows.count() == 1
        assert DELIVERED_PHONE in await rows.first.inner_text()
        await shots.take(page, "messages")
        await rows.first.locator("a").first.click()
        await page.wait_for_selector("#timeline")
        timeline = await text_of(page, "#timeline")
        for kind in ("mail", "provider", "status", "report"):
            assert kind in timeline, kind
        assert "Disk full on db-1" in await text_of(page, "#raw-mail")
        exchange = await text_of(page, "details.exchange")
        assert "/multi.php" in exchange and "password=********" in exchange
        assert "Delivered" in await text_of(page, "#reports")
        await shots.take(page, "message-timeline")
        # The failed message: its bounce.
        await page.goto(f"{world.base}/admin/messages/{world.ids[FAILED_PHONE]}")
        assert "multipart/report" in await text_of(page, "#bounce")
        await shots.take(page, "message-bounce")
        # Inbound: the customer's SMS and its dead forward, redelivered from the page.
        await page.click("nav >> text=Inbound")
        await page.fill("input[name=phone]", CUSTOMER_PHONE)
        await page.click("form.search button[type=submit]")
        await shots.take(page, "inbound")
        await page.locator("#inbound tbody tr a").first.click()
        await page.wait_for_selector("table.forwards")
        assert "dead" in await text_of(page, "table.forwards")
        await shots.take(page, "inbound-detail")
        await page.click("nav >> text=Dead letters")
        await shots.take(page, "dead-letters")
        mails = len(world.mailbox.mails)
        await page.click("button.redeliver")
        await page.wait_for_selector("p.notice")
        assert "queued again" in await text_of(page, "p.notice")
        await world.mailbox.wait_for(mails + 1)

        async def delivered() -> bool:
            jobs = await world.bridge.store.list_forward_jobs()
            return [j["status"] for j in jobs] == ["delivered"]

        await wait_until(delivered)
        # Reply scripts: create, edit, test-call, delete.
        await page.click("nav >> text=Reply scripts")
        await page.click("#new-script")
        await page.select_option("select[name=shortcode]", "4444")
        await page.fill("input[name=keyword]", "balance")
        await page.fill("input[name=url]", world.script.url + "/balance")
        await page.click("#script-form button[type=submit]")
        await page.wait_for_selector("#scripts")
        assert "registered" in await text_of(page, "p.notice")
        row = page.locator("#scripts tbody tr", has_text="/balance")
        await row.locator("a", has_text="Edit").click()
        await page.fill("input[name=timeout]", "2.5")
        await page.click("#script-form button[type=submit]")
        await page.wait_for_selector("#scripts")
        assert "2.5 s" in await row.inner_text()
        await shots.take(page, "reply-scripts")
        await row.locator("form.test input[name=text]").fill("balance please")
        await row.locator("form.test button").click()
        await page.wait_for_selector("#test-reply")
        assert await text_of(page, "#test-reply") == "Your balance: 100 RUB"
        assert float((await text_of(page, "#test-seconds")).split()[0]) < 5
        assert "message=balance+please" in world.script.requests[-1].path_qs
        await shots.take(page, "script-test")
        await page.click("nav >> text=Reply scripts")
        await row.locator("button.danger").click()
        await page.wait_for_selector("p.notice")
        assert await page.locator("#scripts tbody tr", has_text="/balance").count() == 0
        # Routes and upstreams, secrets masked.
        await page.click("nav >> text=Routes")
        config = await page.content()
        assert "desk@help.example" in config and "********" in config
        await shots.take(page, "config")
        # The audit page lists what this operator did.
        await page.click("nav >> text=Audit")
        audit = await text_of(page, "#audit")
        for action in ("sign-in", "redeliver", "script.create", "script.update",
                       "script.test", "script.delete"):
            assert f"{OPERATOR}\tconsole\t{action}" in audit, action
        await shots.take(page, "audit")
        for path in shots.taken:
            assert path.stat().st_size > 5_000, path
        for secret in SECRETS:
            assert secret not in await page.content()
        await page.click("header form.signout button")
        await page.wait_for_url(f"{world.base}/admin/login?done=signed-out")
        assert errors == []
    with capsys.disabled():
        print(f"\nconsole screenshots: {shots.directory}")


async def test_hostile_sms_text_stays_inert_and_readable_in_a_browser(
    browser: Browser, tmp_path: Path,
) -> None:
    shots = Shots(tmp_path / "screenshots")
    async with traffic(tmp_path, text=HOSTILE, inbound_text=HOSTILE) as world:
        page = await signed_in_page(browser, world)
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        ids = world.ids
        for path in ("/admin/dashboard", "/admin/messages",
                     f"/admin/messages/{ids[DELIVERED_PHONE]}", "/admin/inbound",
                     f"/admin/inbound/{ids['inbound']}", "/admin/dead-letters", "/admin/audit"):
            await page.goto(world.base + path)
            assert await page.evaluate("typeof window.__xss") == "undefined", path
            injected = page.locator("img[src=x], svg[onload], main script:not(#chart-data)")
            assert await injected.count() == 0, path
            # Readable: nothing wider than the window, however long the text.
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, (path, overflow)
        await page.goto(f"{world.base}/admin/messages/{ids[DELIVERED_PHONE]}")
        shown = await text_of(page, "pre.sms")
        assert shown.startswith('<script>window.__xss=1</script><img src=x onerror=')
        # The right-to-left override is shown as a mark and does not reverse the text.
        assert "U+202Egnp.exeU+202C" in shown.replace(" ", "")
        assert "\u202e" not in shown
        await shots.take(page, "hostile-message")
        await page.goto(f"{world.base}/admin/inbound/{ids['inbound']}")
        await shots.take(page, "hostile-inbound")
        assert dialogs == []


async def test_a_cross_site_form_cannot_act_for_a_signed_in_operator(
    browser: Browser, tmp_path: Path,
) -> None:
    async with traffic(tmp_path) as world:
        page = await signed_in_page(browser, world)
        dead = world.ids["dead"]
        attack = (f'<form id="f" method="post" action="{world.base}/admin/forwards/{dead}'
                  f'/redeliver"><input name="csrf" value="guess"></form>'
                  '<script>document.getElementById("f").submit()</script>').encode()
        async with HttpReceiver(Scripted(200, attack, headers={
                "Content-Type": "text/html"})) as evil:
            # Another site (another origin: another port), opened by the signed-in operator.
            await page.goto(evil.url.replace("127.0.0.1", "localhost") + "/prize")
            await page.wait_for_load_state("networkidle")
            landed: Any = page.url
        # SameSite=Strict: the cookie was not sent, so the request was not signed in.
        assert landed.startswith(f"{world.base}/admin/login")
        assert [j["status"] for j in await world.bridge.store.list_forward_jobs()] == ["dead"]
        await page.goto(f"{world.base}/admin/audit")
        assert "redeliver" not in await text_of(page, "#audit")

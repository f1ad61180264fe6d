"""The serving event loop: the bridge runs under uvloop (``sms-bridge[fast]``) as under
asyncio's own loop — mail in and sent, an inbound SMS committed and its retry answered the
same — and ``serve`` takes uvloop where it is installed unless ``SMS_BRIDGE_LOOP=asyncio``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from bridge.app import Bridge, LoopUnavailable, event_loop_factory, loop_name, run_serving
from tests.conftest import make_settings
from tests.test_serve_process import clean_env, free_port, serve, stop, write_config
from tests.test_smtp_intake import mail, send, wait_status

uvloop = pytest.importorskip("uvloop")


async def _mail_and_sms(tmp_path: Path) -> None:
    assert loop_name(asyncio.get_running_loop()) == "uvloop"
    settings = make_settings(
        tmp_path,
        smtp={"host": "127.0.0.1"},
        http={"host": "127.0.0.1"},
        accounts={"alerts": {"password": "pw", "upstream": "dryrun",
                             "mail_rate_per_minute": 0}},
        inbound={"sources": {"shop": {"secret": "s3cret"}},
                 "routes": [{"emails": ["desk@example.com"]}]},
    )
    bridge = Bridge(settings)
    await bridge.start()
    try:
        code, text = await send(bridge.smtp_port,
                                mail("alerts@sms.example", "+7 916 123-45-67", "disk full"))
        assert code == 250, text
        await wait_status(bridge, 1, "sent")
        url = f"http://127.0.0.1:{bridge.http_port}/in/shop/s3cret/mo"
        form = {"phone": "79161234567", "message": "где заказ?", "sms_id": "u-1"}
        async with aiohttp.ClientSession() as session:
            for _ in range(2):  # the first request, then the provider's retry
                async with session.post(url, data=form) as response:
                    assert (response.status, await response.text()) == (200, "OK")
        [record] = await bridge.store.list_inbound(limit=10)
        assert (record["sms_id"], record["text"]) == ("u-1", "где заказ?")
    finally:
        await bridge.stop()


def test_the_bridge_takes_mail_and_inbound_sms_under_uvloop(tmp_path: Path) -> None:
    run_serving(_mail_and_sms(tmp_path), "uvloop")


def test_the_loop_is_uvloop_where_installed_unless_asyncio_is_asked_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMS_BRIDGE_LOOP", raising=False)
    assert event_loop_factory() is uvloop.new_event_loop
    assert event_loop_factory("asyncio") is asyncio.new_event_loop
    monkeypatch.setenv("SMS_BRIDGE_LOOP", "asyncio")
    assert event_loop_factory() is asyncio.new_event_loop
    monkeypatch.setenv("SMS_BRIDGE_LOOP", "trio")
    with pytest.raises(LoopUnavailable, match="SMS_BRIDGE_LOOP='trio'"):
        event_loop_factory()


async def _started_loop(tmp_path: Path, **env: str) -> str:
    config = write_config(tmp_path / "bridge.toml", free_port(), free_port(),
                          tmp_path / "bridge.sqlite3")
    process = await serve(config, env=clean_env(**env))
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):
            while True:
                line = await process.stderr.readline()
                assert line, "the bridge exited during start-up"
                record = json.loads(line)
                if record["msg"] == "sms-bridge started":
                    return str(record["loop"])
    finally:
        await stop(process)


async def test_serve_runs_on_uvloop_and_on_asyncio_when_asked(tmp_path: Path) -> None:
    assert await _started_loop(tmp_path / "a", SMS_BRIDGE_LOOP="auto") == "uvloop"
    assert await _started_loop(tmp_path / "b", SMS_BRIDGE_LOOP="asyncio") == "asyncio"

"""A message's options travel as one typed value, ``SendOptions``: parsed at intake, stored
with the message through one codec, handed to the provider inside the request, with nothing
dropped on the way (v2 ``push_id`` and ``start_date`` included, 002 "HTTP API v1")."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import datetime, timedelta
from typing import Any

from bridge.app import Bridge
from bridge.models import OutboundSms, SendOptions
from bridge.parsing.requests import PROVIDER_TZ
from tests.conftest import BOTH_STORES, BridgeFactory
from tests.test_smtp_intake import mail, send

OPTIONS = SendOptions(originator="Shop", flash=True, max_parts=3, not_before=1_700_000_000.5,
                      validity=3600, transliterate=True, two_byte_concat=True, push_id="p-7",
                      fallbacks=("backup", "last"))


def test_the_codec_gives_back_the_value_it_was_given() -> None:
    assert SendOptions.from_json(OPTIONS.to_json()) == OPTIONS
    assert SendOptions.from_json(SendOptions().to_json()) == SendOptions()


def test_rows_written_before_a_field_existed_read_with_its_default() -> None:
    assert SendOptions.from_json("{}") == SendOptions()
    row = {"originator": None, "flash": False, "max_parts": 255, "not_before": None,
           "validity": None, "transliterate": False, "two_byte_concat": False,
           "push_id": None, "fallbacks": ["b"]}  # the layout both engines store today
    assert SendOptions.from_json(json.dumps(row)) == SendOptions(fallbacks=("b",))


def record_sends(bridge: Bridge) -> asyncio.Queue[OutboundSms]:
    """The provider double's view: each request the dryrun upstream is handed."""
    upstream: Any = bridge.upstreams["dryrun"]
    sent: asyncio.Queue[OutboundSms] = asyncio.Queue()
    send_one = upstream.send

    async def send_recorded(sms: OutboundSms) -> Any:
        sent.put_nowait(sms)
        return await send_one(sms)

    upstream.send = send_recorded
    return sent


@BOTH_STORES
async def test_push_id_and_start_date_reach_the_provider_request(
    bridge_factory: BridgeFactory,
) -> None:
    bridge = await bridge_factory(accounts={"alerts": {"password": "pw", "upstream": "dryrun",
                                                       "fallback_upstreams": ["dryrun"]}})
    sent = record_sends(bridge)
    due = datetime.now(PROVIDER_TZ).replace(microsecond=0) + timedelta(seconds=1)
    body = ("login: alerts\n\npassword: pw\n\nindividual_messages: 1\n\nwith_push_id: 1\n\n"
            "phones: p-7:79161234567 hello\n\noriginator: Shop\n\ntimeout: 3600\n\n"
            f"flash: 1\n\nstart_date: {due:%Y-%m-%d %H:%M:%S}\n")
    code, reply = await send(bridge.smtp_port, mail("multi@x", "s", body))
    assert code == 250, reply
    async with asyncio.timeout(10):
        sms = await sent.get()
    assert sms.options == SendOptions(originator="Shop", flash=True, not_before=due.timestamp(),
                                      validity=3600, push_id="p-7", fallbacks=("dryrun",))
    [stored] = await bridge.store.list_messages()
    assert stored.options == sms.options


def test_a_request_carries_the_options_value_it_was_given() -> None:
    sms = OutboundSms(1, "b-1", 1, "79161234567", "hi", "gsm7", options=OPTIONS)
    assert sms.options is OPTIONS
    assert OutboundSms(1, "b-1", 1, "79161234567", "hi", "gsm7").options == SendOptions()
    moved = dataclasses.replace(sms, options=dataclasses.replace(OPTIONS, originator="Other"))
    assert (moved.options.originator, moved.message_id, moved.options.push_id) == (
        "Other", 1, "p-7")

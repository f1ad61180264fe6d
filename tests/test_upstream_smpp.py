"""The SMPP 3.4 upstream against the test SMSC (tests/doubles/smpp_smsc.py): submit_sm as
002 Table 2 wants it (GSM 03.38, UCS-2, UDH concatenation), the window, throttling,
receipts, MO SMS, failover, reconnects, enquire_link and bad input (spec
002_e7d2ff51d5c777f0.txt, "SMPP протокол", line 1367)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr, ValidationError

from bridge.app import Bridge
from bridge.errors import PermanentUpstreamError, TransientUpstreamError
from bridge.models import DeliveryReport, InboundMessage
from bridge.settings import load_settings
from bridge.upstreams.base import OutboundSms, ReceivingUpstream
from bridge.upstreams.smpp import SmppUpstream
from bridge.upstreams.smpp.coding import encode_message, parse_receipt_text
from bridge.upstreams.smpp.settings import SmppSettings
from tests.conftest import BOTH_STORES, BridgeFactory
from tests.doubles.mailbox import MailboxDouble
from tests.doubles.receiver import HttpReceiver, Scripted
from tests.doubles.smpp_smsc import ROK, RTHROTTLED, SmppSmscDouble, Submit
from tests.sms import outbound_sms
from tests.test_inbound import WEBHOOK_SECRET
from tests.test_smtp_intake import mail, send

LOGIN, PASSWORD = "acme", "s3cret"
PHONE = "79161234567"


@pytest.fixture
async def smsc() -> AsyncIterator[SmppSmscDouble]:
    async with SmppSmscDouble(system_id=LOGIN, password=PASSWORD,
                              enquire_link_interval=0.3, dead_after=1.5) as double:
        yield double


def config(url: str, **extra: Any) -> SmppSettings:
    values: dict[str, Any] = {"kind": "smpp", "base_url": url, "login": LOGIN,
                              "password": SecretStr(PASSWORD), "timeout": 2.0,
                              "enquire_link_interval": 0.2, "link_dead_after": 1.0, **extra}
    return SmppSettings(**values)


def quick(upstream: SmppUpstream) -> SmppUpstream:
    """Test timers: reconnects and throttling pauses in tens of milliseconds."""
    upstream.reconnect_base, upstream.reconnect_max = 0.05, 0.2
    upstream.throttle_base, upstream.throttle_max = 0.05, 0.2
    return upstream


@dataclass
class RecordingSink:
    """Plays the bridge's side of the seam: records commits, can fail some first."""

    reports: list[DeliveryReport] = field(default_factory=list)
    messages: list[InboundMessage] = field(default_factory=list)
    committed_at: list[float] = field(default_factory=list)
    fail_next: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _maybe_fail(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("store unavailable")

    async def delivery_reports(self, upstream: str, reports: Sequence[DeliveryReport]) -> None:
        self._maybe_fail()
        self.reports.extend(reports)
        self.changed.set()

    async def inbound_message(self, message: InboundMessage) -> None:
        self._maybe_fail()
        self.messages.append(message)
        self.committed_at.append(asyncio.get_running_loop().time())
        self.changed.set()

    async def claim_receiver(self, upstream: str, ttl: float) -> bool:
        return True  # a bridge alone: the claim is always its own

    async def release_receiver(self, upstream: str) -> None:
        return None


@asynccontextmanager
async def running(upstream: SmppUpstream,
                  sink: RecordingSink | None = None) -> AsyncIterator[RecordingSink]:
    sink = sink or RecordingSink()
    task = asyncio.create_task(upstream.run(sink))
    try:
        yield sink
    finally:
        await upstream.aclose()
        async with asyncio.timeout(5):
            await task


def sms(text: str, message_id: int = 1, **extra: Any) -> OutboundSms:
    values: dict[str, Any] = {"message_id": message_id, "idempotency_key": f"b-{message_id}",
                              "attempt": 1, "phone": PHONE, "text": text, "encoding": "gsm7",
                              **extra}
    return outbound_sms(**values)


def texts(submits: list[Submit]) -> str:
    return "".join(s.text for s in submits)


# -- encoding (pure) ----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "coding"), [
    ("Hello_world @ £5 ¥ è é ù ì ò Ø ø Å å Æ æ ß É ¤ Ä Ö Ñ Ü ä ö ñ ü à", 0),
    ("line one\nline two", 0),
    ("{price}", 8), ("[x]", 8), ("5 €", 8), ("a~b", 8), ("a^b", 8), ("a|b", 8), ("a\\b", 8),
    ("Δ", 8), ("Ω", 8), ("Ç", 8), ("¿Qué?", 8), ("§1", 8), ("Привет", 8),
])
def test_data_coding_0_only_for_the_characters_of_002s_table(text: str, coding: int) -> None:
    assert encode_message(text, reference=1).data_coding == coding


def test_a_surrogate_pair_is_never_split_between_parts() -> None:
    text = "a" * 66 + "😀" + "b" * 10
    encoded = encode_message(text, reference=1)
    first = encoded.parts[0][6:]
    assert len(first) == 132  # 66 units: the pair does not fit after 66 "a" in 67
    assert "".join(p[6:].decode("utf-16-be") for p in encoded.parts) == text


def test_receipt_text_fields_of_table_3() -> None:
    fields = parse_receipt_text("id:1000000001 sub:001 dlvrd:000 submit date:2405011230 "
                                "done date:2405011231 stat:UNDELIV err:011 text:Hello there")
    assert fields == {"id": "1000000001", "sub": "001", "dlvrd": "000",
                      "submit date": "2405011230", "done date": "2405011231",
                      "stat": "UNDELIV", "err": "011", "text": "Hello there"}


# -- submit_sm -------------------------------------------------------------------------------

async def test_bind_is_a_transceiver_with_interface_version_34(smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    assert isinstance(upstream, ReceivingUpstream)
    async with running(upstream):
        await smsc.wait_for_receiver()
    [bind] = smsc.binds
    assert (bind.mode, bind.system_id, bind.password, bind.interface_version) == (
        "transceiver", LOGIN, PASSWORD, 0x34)


async def test_gsm7_text_goes_as_one_submit_sm_as_table_2_wants(smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    async with running(upstream):
        receipt = await upstream.send(sms("Hello_world @ £5\nbye", originator="ACME"))
    [submit] = await smsc.wait_for_submits(1)
    assert receipt.provider_ids == (submit.message_id,)
    assert (submit.source_ton, submit.source_npi, submit.source) == (5, 0, "ACME")
    assert (submit.dest_ton, submit.dest_npi, submit.destination) == (1, 1, PHONE)
    assert (submit.data_coding, submit.esm_class, submit.udh) == (0, 0, b"")
    assert submit.registered_delivery == 1
    assert submit.text == "Hello_world @ £5\nbye"
    assert smsc.violations == []


async def test_numeric_originator_is_ton_1_npi_1_and_validity_relative(
        smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    async with running(upstream):
        await upstream.send(sms("hi", originator="+79001112233", validity=3723))
    [submit] = await smsc.wait_for_submits(1)
    assert (submit.source_ton, submit.source_npi, submit.source) == (1, 1, "79001112233")
    assert submit.validity == "000000010203000R"
    assert smsc.violations == []


async def test_long_gsm_text_goes_in_parts_of_153_under_one_udh_reference(
        smsc: SmppSmscDouble) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(320))
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    async with running(upstream):
        receipt = await upstream.send(sms(text, message_id=0x1D4))
    submits = await smsc.wait_for_submits(3)
    assert [len(s.text) for s in submits] == [153, 153, 14]
    assert [s.concat for s in submits] == [(0xD4, 3, 1), (0xD4, 3, 2), (0xD4, 3, 3)]
    assert all(s.esm_class == 0x40 and s.udh[:3] == b"\x05\x00\x03" for s in submits)
    assert texts(submits) == text
    assert receipt.provider_ids == tuple(s.message_id for s in submits)
    assert smsc.violations == []


async def test_two_byte_reference_gives_152_and_66_per_part(smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    latin, cyrillic = "x" * 200, "ж" * 100
    async with running(upstream):
        await upstream.send(sms(latin, message_id=0xA7D4, two_byte_concat=True))
        await upstream.send(sms(cyrillic, message_id=0xA7D5, two_byte_concat=True))
    submits = await smsc.wait_for_submits(4)
    assert [len(s.text) for s in submits] == [152, 48, 66, 34]
    assert [s.concat for s in submits] == [(0xA7D4, 2, 1), (0xA7D4, 2, 2),
                                           (0xA7D5, 2, 1), (0xA7D5, 2, 2)]
    assert [s.udh[:3] for s in submits] == [b"\x06\x08\x04"] * 4
    assert [s.data_coding for s in submits] == [0, 0, 8, 8]
    assert smsc.violations == []


async def test_more_parts_than_allowed_fail_for_good_before_anything_is_sent(
        smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    async with running(upstream):
        with pytest.raises(PermanentUpstreamError, match="3 SMS"):
            # ASCII, but "{}" are not in 002's table: UCS-2, 3 parts where 2 are allowed.
            await upstream.send(sms("{" + "a" * 140 + "}", max_parts=2))
    assert smsc.submits == []


async def test_window_bounds_the_submit_sm_outstanding(smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url, window=3)))
    smsc.hold_responses = True
    async with running(upstream):
        sends = [asyncio.create_task(upstream.send(sms(f"m{i}", message_id=i)))
                 for i in range(10)]
        await smsc.wait_until(lambda: len(smsc.submits) >= 3)
        # Whatever the upstream wrote before answering this enquire_link has been read.
        await smsc.ping()
        assert len(smsc.submits) == 3
        await smsc.release()
        receipts = await asyncio.gather(*sends)
    assert smsc.max_held == 3
    assert sorted(s.text for s in smsc.submits) == sorted(f"m{i}" for i in range(10))
    assert len({r.provider_ids for r in receipts}) == 10


async def test_throttled_submit_is_resent_after_a_growing_pause(smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    smsc.submit_script.extend([RTHROTTLED, RTHROTTLED, RTHROTTLED])
    async with running(upstream):
        receipt = await upstream.send(sms("once"))
    statuses = [s.status for s in smsc.submits]
    assert statuses == [RTHROTTLED, RTHROTTLED, RTHROTTLED, ROK]
    gaps = [b.at - a.at for a, b in zip(smsc.submits, smsc.submits[1:], strict=False)]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.09  # 0.05 s, then 0.1 s (throttle_base 0.05)
    assert receipt.provider_ids == (smsc.submits[-1].message_id,)


async def test_throttled_past_the_timeout_is_a_clear_transient_failure(
        smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url, timeout=0.3)))
    smsc.submit_script.extend([RTHROTTLED] * 20)
    async with running(upstream):
        with pytest.raises(TransientUpstreamError) as caught:
            await upstream.send(sms("later"))
    assert caught.value.code == "ESME_RTHROTTLED"
    assert not caught.value.ambiguous and caught.value.retry_after
    assert all(s.status == RTHROTTLED for s in smsc.submits)


async def test_rate_above_the_smscs_limit_still_sends_each_sms_once(
        smsc: SmppSmscDouble) -> None:
    smsc.max_rate = 10
    upstream = quick(SmppUpstream("smpp", config(smsc.url, timeout=5.0)))
    async with running(upstream):
        await asyncio.gather(*(upstream.send(sms(f"n{i}", message_id=i)) for i in range(25)))
    accepted = [s.text for s in smsc.submits if s.status == ROK]
    assert sorted(accepted) == sorted(f"n{i}" for i in range(25))
    assert any(s.status == RTHROTTLED for s in smsc.submits)


async def test_refusal_of_a_bad_destination_is_permanent(smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    smsc.submit_script.append(0x0B)  # ESME_RINVDSTADR
    async with running(upstream):
        with pytest.raises(PermanentUpstreamError) as caught:
            await upstream.send(sms("x"))
    assert caught.value.code == "ESME_RINVDSTADR"


# -- end to end from a mail ------------------------------------------------------------------

def bridge_settings(smsc: SmppSmscDouble, **upstream: Any) -> dict[str, Any]:
    return {
        "upstreams": {"smpp": {"kind": "smpp", "base_url": smsc.url, "login": LOGIN,
                               "password": PASSWORD, "timeout": 2.0,
                               "enquire_link_interval": 0.3, "link_dead_after": 1.2,
                               **upstream}},
        "accounts": {"alerts": {"password": "pw", "upstream": "smpp", "originator": "ACME"}},
    }


async def wait_message(bridge: Bridge, predicate: Any, timeout: float = 8.0) -> Any:
    async with asyncio.timeout(timeout):
        # Written by the dispatcher's or the receiver's task; no event marks the commit.
        while True:
            messages = await bridge.store.list_messages()
            if messages and predicate(messages[0]):
                return messages[0]
            await asyncio.sleep(0.05)


async def test_mail_arrives_as_ucs2_concatenated_and_its_receipt_delivers_it(
        bridge_factory: BridgeFactory, smsc: SmppSmscDouble) -> None:
    smsc.auto_receipt = "DELIVRD"
    bridge = await bridge_factory(**bridge_settings(smsc))
    text = "Проверка связи: " + "длинное сообщение " * 8
    code, reply = await send(bridge.smtp_port, mail(f"{PHONE}.alerts@x", "", text))
    assert code == 250, reply
    submits = await smsc.wait_for_submits(3)
    assert texts(submits).strip() == text.strip()
    assert [s.data_coding for s in submits] == [8, 8, 8]
    assert all(len(s.text) <= 67 for s in submits)
    assert [s.concat[1:] for s in submits if s.concat] == [(3, 1), (3, 2), (3, 3)]
    assert (submits[0].source_ton, submits[0].source) == (5, "ACME")
    message = await wait_message(bridge, lambda m: m.delivery_status == "delivered")
    assert message.upstream_ids == [s.message_id for s in submits]
    assert smsc.violations == []


async def test_mail_arrives_as_gsm7_in_parts_of_153(
        bridge_factory: BridgeFactory, smsc: SmppSmscDouble) -> None:
    bridge = await bridge_factory(**bridge_settings(smsc))
    text = "Server db-01: disk usage 97% @ 03:00, action_required. " * 4
    code, reply = await send(bridge.smtp_port, mail(f"{PHONE}.alerts@x", "", text))
    assert code == 250, reply
    submits = await smsc.wait_for_submits(2)
    assert [s.data_coding for s in submits] == [0, 0]
    assert [len(s.text) for s in submits] == [153, len(text.strip()) - 153]
    assert texts(submits) == text.strip()
    assert [s.concat[1:] for s in submits if s.concat] == [(2, 1), (2, 2)]
    message = await wait_message(bridge, lambda m: m.status == "sent")
    assert message.upstream_ids == [s.message_id for s in submits]
    assert smsc.violations == []


async def test_receipt_before_the_submit_sm_resp_is_applied(
        bridge_factory: BridgeFactory, smsc: SmppSmscDouble) -> None:
    smsc.auto_receipt, smsc.receipt_before_resp = "UNDELIV", True
    bridge = await bridge_factory(**bridge_settings(smsc))
    code, _ = await send(bridge.smtp_port, mail(f"{PHONE}.alerts@x", "", "short"))
    assert code == 250
    [submit] = await smsc.wait_for_submits(1)
    message = await wait_message(bridge, lambda m: m.delivery_status == "undelivered")
    assert message.upstream_ids == [submit.message_id]
    [report] = await bridge.store.list_delivery_reports()
    assert report["raw_status"] == "UNDELIV"


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_receipt_for_an_unknown_id_is_kept_and_counted(
        bridge_factory: BridgeFactory, smsc: SmppSmscDouble) -> None:
    bridge = await bridge_factory(**bridge_settings(smsc))
    before = counter("bridge_delivery_reports_total", matched="no")
    assert await smsc.send_receipt("4242424242", "DELIVRD") == ROK
    assert counter("bridge_delivery_reports_total", matched="no") == before + 1
    [report] = await bridge.store.list_delivery_reports(unmatched=True)
    assert (report["provider_id"], report["status"], report["message_id"]) == (
        "4242424242", "delivered", None)


# -- MO SMS ------------------------------------------------------------------------------------

async def test_mo_reaches_a_webhook_and_a_mailbox_once(
        bridge_factory: BridgeFactory, smsc: SmppSmscDouble) -> None:
    async with MailboxDouble() as box, HttpReceiver(Scripted(204)) as hook:
        settings = bridge_settings(smsc)
        settings["inbound"] = {
            "webhooks": {"crm": {"url": hook.url + "/sms", "secret": WEBHOOK_SECRET}},
            "routes": [{"emails": ["desk@example.com"], "webhooks": ["crm"]}],
            "egress_allowed_networks": ["127.0.0.0/8"],
        }
        settings["mail"] = {"smarthost": "127.0.0.1", "smarthost_port": box.port}
        bridge = await bridge_factory(**settings)
        assert await smsc.send_mo("79031234567", "4444", "Привет, это ответ") == [ROK]
        [request] = await hook.wait_for(1)
        await box.wait_for(1)
        assert "Привет, это ответ" in request.body.decode()
        # The SMSC delivers it again (its resp was lost): answered, not forwarded again.
        assert await smsc.send_mo("79031234567", "4444", "Привет, это ответ") == [ROK]
        [inbound] = await bridge.store.list_inbound()
        assert (inbound["source"], inbound["phone"], inbound["recipient"]) == (
            "smpp", "79031234567", "4444")
        assert inbound["text"] == "Привет, это ответ"
        # Two more SMS pass through the same pipeline behind it: the repeat, had it been
        # forwarded, would have arrived before them.
        await smsc.send_mo("79031234567", "4444", "second")
        await hook.wait_for(2)
        await box.wait_for(2)
        assert len(hook.requests) == 2 and len(box.mails) == 2


async def test_mo_is_answered_only_after_its_commit(smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    sink = RecordingSink(fail_next=1)
    async with running(upstream, sink):
        # Not committed: a temporary error, so that the SMSC delivers it again.
        assert await smsc.send_mo("79031234567", "4444", "hello") == [0x64]
        assert sink.messages == []
        assert await smsc.send_mo("79031234567", "4444", "hello") == [ROK]
    [message] = sink.messages
    assert (message.kind, message.phone, message.recipient, message.text, message.charset) == (
        "mo", "79031234567", "4444", "hello", "gsm0338")
    assert message.sms_id is None
    assert sink.committed_at[0] <= smsc.deliver_resps[-1][1]


async def test_concatenated_mo_is_reassembled_and_each_part_answered_after_the_commit(
        smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    long_text = "Длинное входящее сообщение из нескольких частей, " * 4
    async with running(upstream) as sink:
        statuses = await smsc.send_mo("79031234567", "4444", long_text, ucs2=True, parts=3,
                                      two_byte=True, reference=0xBEEF)
        gsm = await smsc.send_mo("79037654321", "4444", "x" * 200, parts=2)
    assert statuses == [ROK, ROK, ROK] and gsm == [ROK, ROK]
    assert [m.text for m in sink.messages] == [long_text.strip(), "x" * 200]
    assert [m.charset for m in sink.messages] == ["ucs2", "gsm0338"]
    assert all(at <= min(t for _, t in smsc.deliver_resps[:3]) for at in sink.committed_at[:1])


async def test_mo_with_a_part_missing_is_committed_after_the_wait_with_a_gap(
        smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    upstream.mo_part_wait = 0.3
    async with running(upstream) as sink:
        statuses = await smsc.send_mo("79031234567", "4444", "aaaabbbbcccc", parts=3,
                                      only=(1, 3))
    assert statuses == [ROK, ROK]
    [message] = sink.messages
    assert message.text == "aaaa[…]cccc"


async def test_mo_with_a_broken_user_data_header_is_refused_for_good(
        smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    async with running(upstream) as sink:
        body = smsc.deliver_body("79031234567", "4444", b"\x09\x00\x03\x01", esm_class=0x40)
        assert await smsc.deliver(body) == 0x65  # ESME_RX_P_APPN: do not offer it again
        assert await smsc.send_mo("79031234567", "4444", "next") == [ROK]
    assert [m.text for m in sink.messages] == ["next"]


# -- receipts (unit of the upstream) ------------------------------------------------------------

async def test_receipt_tlvs_and_text_become_the_bridges_report(smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    async with running(upstream) as sink:
        assert await smsc.send_receipt("1000000077", "UNDELIV", err=11) == ROK
        assert await smsc.send_receipt("1000000078", "DELIVRD", with_tlvs=False) == ROK
        assert await smsc.send_receipt("1000000079", "EXPIRED") == ROK
    assert [(r.provider_id, r.status, r.raw_status, r.error_code) for r in sink.reports] == [
        ("1000000077", "undelivered", "UNDELIV", 11),
        ("1000000078", "delivered", "DELIVRD", None),
        ("1000000079", "expired", "EXPIRED", None),
    ]
    assert sink.reports[0].at[:2] == "20"  # done date as an ISO time, not a Unix number


async def test_receipt_not_committed_is_refused_for_a_later_retry(smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    async with running(upstream, RecordingSink(fail_next=1)) as sink:
        assert await smsc.send_receipt("1000000077", "DELIVRD") == 0x64
        assert await smsc.send_receipt("1000000077", "DELIVRD") == ROK
    assert [r.provider_id for r in sink.reports] == ["1000000077"]


# -- failover, reconnects, enquire_link ------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_backup_host_is_used_when_the_primary_refuses_connections(
        smsc: SmppSmscDouble) -> None:
    primary = f"smpp://127.0.0.1:{closed_port()}"
    upstream = quick(SmppUpstream("smpp", config(primary, backup_url=smsc.url)))
    async with running(upstream):
        await upstream.send(sms("via backup"))
        assert upstream.bound_to is not None and upstream.bound_to.port == smsc.port
    [submit] = await smsc.wait_for_submits(1)
    assert submit.text == "via backup"


async def test_reconnects_after_a_dropped_link_and_sends_again(smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    async with running(upstream):
        await upstream.send(sms("before", message_id=1))
        await smsc.drop_all()
        await smsc.wait_until(lambda: len(smsc.binds) == 2 and len(smsc.bound()) == 1)
        await upstream.send(sms("after", message_id=2))
    assert [s.text for s in smsc.submits] == ["before", "after"]
    assert [b.status for b in smsc.binds] == [ROK, ROK]


async def test_enquire_link_keeps_a_busy_link_alive_both_ways(smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    async with running(upstream):
        session = await smsc.wait_for_receiver()
        # Past the double's dead_after (1.5 s), while submits flow: the link must survive
        # because enquire_links go every interval whatever else is sent.
        deadline = time.monotonic() + 2.0
        count = 0
        while time.monotonic() < deadline:
            await upstream.send(sms(f"busy {count}", message_id=count))
            count += 1
        assert session.enquire_links_received >= 5
        assert not session.closed
    assert smsc.violations == []
    assert len(smsc.binds) == 1


async def test_a_silent_link_is_dropped_and_bound_again(smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    async with running(upstream):
        session = await smsc.wait_for_receiver()
        smsc.silent = True  # reads everything, answers nothing
        await smsc.wait_until(lambda: session.closed, timeout=3.0)
        assert smsc.violations == []  # closed by the upstream, before the SMSC gave up
        smsc.silent = False
        await smsc.wait_until(lambda: len(smsc.bound()) == 1, timeout=3.0)
        await upstream.send(sms("alive again"))
    assert len(smsc.binds) == 2


# -- bad input and faults ----------------------------------------------------------------------

async def test_unframeable_pdu_drops_the_link_and_it_is_bound_again(
        smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    async with running(upstream):
        first = await smsc.wait_for_receiver()
        await smsc.send_raw(struct.pack(">IIII", 8, 0x00000005, 0, 7))  # length below 16
        await smsc.wait_until(lambda: first.closed)
        await upstream.send(sms("after the bad PDU"))
    assert len(smsc.binds) == 2


async def test_unknown_command_is_answered_generic_nack_and_the_link_stays(
        smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    async with running(upstream):
        session = await smsc.wait_for_receiver()
        await smsc.send_raw(struct.pack(">IIII", 16, 0x00000777, 0, 99))
        await smsc.wait_until(lambda: bool(smsc.generic_nacks))
        await upstream.send(sms("still bound"))
        assert not session.closed
    assert smsc.generic_nacks == [(0x03, 99)]  # ESME_RINVCMDID
    assert len(smsc.binds) == 1


async def test_generic_nack_for_a_submit_fails_it_and_keeps_the_link(
        smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    smsc.submit_script.append("nack")  # generic_nack ESME_RINVCMDLEN
    async with running(upstream):
        with pytest.raises(PermanentUpstreamError) as caught:
            await upstream.send(sms("x", message_id=1))
        await upstream.send(sms("y", message_id=2))
    assert caught.value.code == "ESME_RINVCMDLEN"
    assert len(smsc.binds) == 1


async def test_wrong_password_stops_binding_and_says_so(
        smsc: SmppSmscDouble, caplog: pytest.LogCaptureFixture) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url, password=SecretStr("wrong"))))
    with caplog.at_level(logging.ERROR):
        async with running(upstream):
            with pytest.raises(TransientUpstreamError, match="ESME_RINVPASWD"):
                await upstream.send(sms("x"))
            # A second send is refused at once, without another bind attempt.
            with pytest.raises(TransientUpstreamError, match="restart"):
                await upstream.send(sms("y"))
    assert [b.status for b in smsc.binds] == [0x0E]
    assert any("bind refused for good" in r.message for r in caplog.records)
    assert smsc.submits == []


async def test_throttled_or_unfunded_bind_is_retried_with_backoff(
        smsc: SmppSmscDouble) -> None:
    smsc.bind_refusals.extend([RTHROTTLED, 0x0D])  # throttled, then ESME_RBINDFAIL
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    async with running(upstream):
        await upstream.send(sms("bound at last"))
    assert [b.status for b in smsc.binds] == [RTHROTTLED, 0x0D, ROK]


async def test_link_lost_with_the_submit_outstanding_is_ambiguous(smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    smsc.submit_script.append("drop")
    async with running(upstream):
        with pytest.raises(TransientUpstreamError) as caught:
            await upstream.send(sms("maybe"))
    assert caught.value.ambiguous


async def test_retry_of_a_long_text_resumes_after_the_parts_accepted(
        smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url)))
    smsc.submit_script.extend([ROK, "drop"])  # part 1 accepted, link lost on part 2
    text = "z" * 400
    async with running(upstream):
        with pytest.raises(TransientUpstreamError) as caught:
            await upstream.send(sms(text))
        assert caught.value.ambiguous
        receipt = await upstream.send(sms(text))  # the dispatcher's retry: same key
    indexes = [s.concat[2] for s in smsc.submits if s.concat]
    assert indexes == [1, 2, 2, 3]  # part 1 once; part 2 again (its outcome was unknown)
    accepted = [s.message_id for s in smsc.submits if s.status == ROK]
    assert receipt.provider_ids == tuple(accepted)


async def test_dropped_link_leaves_the_mail_queued_and_sent_on_retry(
        bridge_factory: BridgeFactory, smsc: SmppSmscDouble) -> None:
    smsc.submit_script.append("drop")
    bridge = await bridge_factory(**bridge_settings(smsc))
    upstream = bridge.upstreams["smpp"]
    assert isinstance(upstream, SmppUpstream)
    quick(upstream)
    code, _ = await send(bridge.smtp_port, mail(f"{PHONE}.alerts@x", "", "retry me"))
    assert code == 250
    message = await wait_message(bridge, lambda m: m.status == "sent")
    assert message.attempts == 2
    assert [s.text for s in smsc.submits] == ["retry me", "retry me"]


# -- a cluster of bridges ----------------------------------------------------------------------

@BOTH_STORES
async def test_one_bridge_of_two_holds_the_receiver_the_other_sends_over_a_transmitter(
        bridge_factory: BridgeFactory, smsc: SmppSmscDouble) -> None:
    """002: "на один наш хост+system_id не более одного receiver/transceiver". Two bridges
    on one store: one binds a transceiver, the other a transmitter — without first being
    refused ESME_RALYBND — and takes the receiver over when the first stops."""
    first = await bridge_factory(**bridge_settings(smsc))
    await smsc.wait_for_receiver()
    second = await bridge_factory(**bridge_settings(smsc))
    await smsc.wait_until(lambda: len(smsc.bound()) == 2)
    assert sorted(s.mode for s in smsc.bound()) == ["transceiver", "transmitter"]
    for number, bridge in enumerate((first, second)):
        code, _ = await send(bridge.smtp_port, mail(f"{PHONE}.alerts@x", "", f"from {number}"))
        assert code == 250
    await smsc.wait_for_submits(2)
    await first.stop()
    await smsc.wait_until(lambda: [s.mode for s in smsc.bound()] == ["transceiver"],
                          timeout=5.0)
    assert all(b.status == ROK for b in smsc.binds)
    code, _ = await send(second.smtp_port, mail(f"{PHONE}.alerts@x", "", "after takeover"))
    assert code == 250
    assert [s.text for s in await smsc.wait_for_submits(3)][-1] == "after takeover"


async def test_transceiver_refused_already_bound_sends_over_a_transmitter_meanwhile(
        smsc: SmppSmscDouble) -> None:
    holder = quick(SmppUpstream("holder", config(smsc.url)))
    latecomer = quick(SmppUpstream("latecomer", config(smsc.url)))
    async with running(holder):
        await smsc.wait_for_receiver()
        async with running(latecomer):
            await latecomer.send(sms("sent meanwhile"))
            assert sorted(s.mode for s in smsc.bound()) == ["transceiver", "transmitter"]
            await holder.aclose()
            # The latecomer asks again every enquire_link_interval and binds the receiver.
            await smsc.wait_until(lambda: [s.mode for s in smsc.bound()] == ["transceiver"])
            await latecomer.send(sms("after the takeover", message_id=2))
    assert [b.status for b in smsc.binds] == [ROK, 0x05, ROK, ROK]  # … ESME_RALYBND …
    assert [s.text for s in smsc.submits] == ["sent meanwhile", "after the takeover"]


async def test_transmitter_and_receiver_binds_split_the_two_directions(
        smsc: SmppSmscDouble) -> None:
    upstream = quick(SmppUpstream("smpp", config(smsc.url, bind_mode="transmitter_receiver")))
    async with running(upstream) as sink:
        await upstream.send(sms("out"))
        assert await smsc.send_mo("79031234567", "4444", "in") == [ROK]
        assert sorted(s.mode for s in smsc.bound()) == ["receiver", "transmitter"]
    assert [s.text for s in smsc.submits] == ["out"]
    assert [m.text for m in sink.messages] == ["in"]


# -- TLS ---------------------------------------------------------------------------------------

@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    cert, key = tmp_path / "smsc.crt", tmp_path / "smsc.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=smsc.test", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


async def test_tls_bind_verified_against_the_configured_ca(
        certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with SmppSmscDouble(system_id=LOGIN, password=PASSWORD, tls=context) as smsc:
        assert smsc.url.startswith("smpps://")
        trusted = quick(SmppUpstream("tls", config(smsc.url, tls_ca_file=cert)))
        async with running(trusted):
            await trusted.send(sms("over TLS"))
        # Without the CA the system store does not know the SMSC: no bind, nothing sent.
        untrusted = quick(SmppUpstream("tls", config(smsc.url, timeout=0.5)))
        async with running(untrusted):
            with pytest.raises(TransientUpstreamError, match="no SMPP session"):
                await untrusted.send(sms("refused"))
    assert [s.text for s in smsc.submits] == ["over TLS"]
    assert len(smsc.binds) == 1


# -- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("upstream", "message"), [
    ({"base_url": "smpp://h:4442"}, "login is required"),
    ({"base_url": "http://h:4442", "login": "a", "password": "b"}, "smpp://HOST:PORT"),
    ({"base_url": "smpp://h", "login": "a", "password": "b"}, "port is required"),
    ({"base_url": "smpp://h:1", "login": "a", "password": "123456789"}, "at most 8"),
    ({"base_url": "smpp://h:1", "login": "a" * 16, "password": "b"}, "at most 15"),
    ({"base_url": "smpp://h:1", "login": "a", "password": "b", "enquire_link_interval": 60,
      "link_dead_after": 30}, "longer than enquire_link_interval"),
    ({"base_url": "smpp://h:1", "login": "a", "password": "b", "bind_mode": "receiver"},
     "bind_mode"),
])
def test_settings_refuse_what_cannot_bind(upstream: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_settings(None, upstreams={"s": {"kind": "smpp", **upstream}})

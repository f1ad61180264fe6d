"""The SMSC upstream (spec 004, an excerpt: error formats and codes 1–11; the rest follows the
SMSC.ru HTTP API conventions) against its test double, and end to end through a bridge."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bridge.app import Bridge
from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.settings import upstream_settings
from bridge.upstreams.base import BatchSending, OutboundSms, SendReceipt, StatusPolling
from bridge.upstreams.smsc.upstream import (
    AUTH_FAILURE_TTL,
    IP_BLOCK_RETRY_AFTER,
    REPEAT_RETRY_AFTER,
    SmscUpstream,
    client_id,
    parse_send_reply,
    parse_smsc_error,
)
from tests.conftest import BridgeFactory
from tests.doubles.smsc import SmscDouble
from tests.sms import outbound_sms
from tests.test_smtp_intake import mail, send, wait_status

PHONE = "79161234567"


@pytest.fixture
async def double() -> AsyncIterator[SmscDouble]:
    async with SmscDouble(login="acme", password="s3cret", senders={"ACME"}) as provider:
        yield provider


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as http:
        yield http


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_upstream(double: SmscDouble, client: httpx.AsyncClient, **extra: Any) -> SmscUpstream:
    settings = upstream_settings(kind="smsc", base_url=double.url, login="acme",
                                password=SecretStr(extra.pop("password", "s3cret")),
                                timeout=extra.pop("timeout", 5.0), **extra)
    SmscUpstream.validate("p", settings)
    return SmscUpstream("p", settings, client)


def status_url(double: SmscDouble) -> str:
    return f"{double.url}/sys/status.php"


@pytest.fixture
def upstream(double: SmscDouble, client: httpx.AsyncClient) -> SmscUpstream:
    """Without ``status_url``: sends only, no status requests."""
    return make_upstream(double, client)


@pytest.fixture
def polling(double: SmscDouble, client: httpx.AsyncClient) -> SmscUpstream:
    """With ``status_url``, and a double that names ids in its replies (SMSC.ru convention)."""
    double.success_form = "ids"
    return make_upstream(double, client, status_url=status_url(double))


def sms(phone: str = PHONE, text: str = "hello", key: str = "k1", attempt: int = 1,
        **extra: Any) -> OutboundSms:
    return outbound_sms(message_id=1, idempotency_key=key, attempt=attempt, phone=phone, text=text,
                       encoding=extra.pop("encoding", "gsm7"), **extra)


# ---------------------------------------------------------------------------- parse_smsc_error

@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # 004: "ERROR = N (описание)"
        ("ERROR = 2 (Неверный логин или пароль.)".encode(), (2, "Неверный логин или пароль.")),
        ("ERROR = 2 (Неверный логин)".encode("cp1251"), (2, "Неверный логин")),
        (b"ERROR = 9", (9, "")),
        (b"ERROR=4(blocked)\n", (4, "blocked")),
        (b"\xef\xbb\xbfERROR = 7 (bad phone)", (7, "bad phone")),
        # 004, fmt=1: "0,-N"
        (b"0,-7", (7, "")),
        (b" 0, -3\r\n", (3, "")),
        (b"123,-8", (8, "")),
        # 004, fmt=2
        ("<result>\n<error>Неверный формат номера.</error>\n<error_code>7</error_code>\n"
         "</result>".encode(), (7, "Неверный формат номера.")),
        (b'<?xml version="1.0" encoding="utf-8"?><result><error_code>4</error_code></result>',
         (4, "")),
        # 004, fmt=3
        ('{"error": "Ошибка в параметрах.", "error_code": 1}'.encode(),
         (1, "Ошибка в параметрах.")),
        (b'{"error": "duplicate", "error_code": "9", "id": 5}', (9, "duplicate")),
        # not errors
        (b'{"id": 5, "cnt": 1}', None),
        (b'{"status": 1, "err": 0}', None),
        (b"OK - 1 SMS, ID - 5", None),
        (b"5,1", None),
        (b"-1,0,0", None),
        (b"", None),
        (b"<result>OK</result>", None),
        (b"<result><error>no code</error>", None),
        (b'{"error": "no code"}', None),
        (b'{"error": "x", "error_code": "many"}', None),
        (b"[1, 2]", None),
        (b"<html><body>502 Bad Gateway</body></html>", None),
        (b'<!DOCTYPE r [<!ENTITY a "x">]><result><error_code>&a;</error_code></result>', None),
    ],
)
def test_parse_smsc_error(body: bytes, expected: tuple[int, str] | None) -> None:
    assert parse_smsc_error(body) == expected


def test_validate_names_missing_credentials() -> None:
    with pytest.raises(ValueError, match=r"upstreams\.p\.login"):
        SmscUpstream.validate("p", upstream_settings(kind="smsc", base_url="http://127.0.0.1:1"))
    with pytest.raises(ValueError, match=r"upstreams\.p\.password"):
        SmscUpstream.validate("p", upstream_settings(kind="smsc", base_url="http://127.0.0.1:1",
                                                    login="acme"))


# ---------------------------------------------------------------------------- requests

async def test_send_one_exact_request(upstream: SmscUpstream, double: SmscDouble) -> None:
    receipt = await upstream.send(sms(text="Привет, мир"))
    [request] = double.requests
    assert (request.method, request.path) == ("POST", "/sys/send.php")
    assert request.content_type == "application/x-www-form-urlencoded"
    assert request.query == {}
    assert request.form == {
        "login": "acme", "psw": "s3cret", "phones": PHONE, "mes": "Привет, мир", "fmt": "3",
        "charset": "utf-8", "id": str(client_id(["k1"])),
    }
    [accepted] = double.accepted
    assert accepted.message == "Привет, мир"
    # 004 shows no success reply naming an id; the double answers {"result": "OK"}.
    assert receipt.provider_ids == ()


@pytest.mark.parametrize(
    "body",
    ['{"result": "OK"}', "OK", "<result>OK</result>", "", "accepted", '{"id": 12',
     '{"cnt": "x", "id": "y"}', "<html>oops</html>", "[1, 2]"],
)
async def test_any_reply_without_an_error_is_a_success(
    upstream: SmscUpstream, double: SmscDouble, body: str
) -> None:
    # 004, l. 79: "В случае успешного запроса Сервер возвращает ответ в виде строки" — an answer
    # that carries none of the four error forms is a success, whatever its body.
    double.success_body = body
    receipt = await upstream.send(sms())
    assert receipt.provider_ids == ()
    assert double.count() == 1 and len(double.accepted) == 1


@pytest.mark.parametrize(
    ("body", "parts"),
    [('{"id": 77, "cnt": 2}', 2), ('{"id": "77"}', None),
     ("<result>\n<cnt>2</cnt>\n<id>77</id>\n</result>", 2),
     ("77,2", 2), ("OK - 2 SMS, ID - 77", 2)],
)
async def test_ids_and_parts_are_taken_when_the_reply_names_them(
    upstream: SmscUpstream, double: SmscDouble, body: str, parts: int | None
) -> None:
    double.success_body = body
    receipt = await upstream.send(sms())
    assert receipt.provider_ids == (f"{PHONE}:77",)
    assert parse_send_reply(body.encode()) == (77, parts)


async def test_a_success_is_never_sent_again(upstream: SmscUpstream, double: SmscDouble) -> None:
    receipt = await upstream.send(sms(attempt=2))  # a retry, after whatever came before
    assert receipt.provider_ids == ()
    assert [r.path for r in double.requests] == ["/sys/send.php"]  # no status request


@pytest.mark.parametrize(
    ("validity", "hours"), [(5400, "2"), (60, "1"), (3600, "1"), (3 * 86400, "24")]
)
async def test_originator_validity_flash_and_max_parts(
    upstream: SmscUpstream, double: SmscDouble, validity: int, hours: str
) -> None:
    await upstream.send(sms(originator="ACME", validity=validity, flash=True, max_parts=3))
    form = double.requests[0].form
    assert (form["sender"], form["valid"], form["flash"], form["maxsms"]) == (
        "ACME", hours, "1", "3")
    assert double.accepted[0].sender == "ACME"


async def test_client_id_is_stable_across_attempts_and_unique_per_key() -> None:
    assert client_id(["k1"]) == client_id(["k1"])
    assert client_id(["k1"]) != client_id(["k2"])
    assert all(1 <= client_id([f"key{i}"]) <= 2147483647 for i in range(200))


async def test_send_batch_groups_by_text_and_maps_ids_per_phone(
    upstream: SmscUpstream, double: SmscDouble
) -> None:
    double.success_form = "ids"
    assert isinstance(upstream, BatchSending)
    batch = [
        sms("79161234567", "alert", "a"),
        sms("79161234568", "alert", "b"),
        sms("79161234569", "other", "c"),
        sms("79161234570", "alert", "d"),
        sms("79161234567", "alert", "e"),  # the same phone again: its own request
        sms("79161234571", "alert", "f", originator="ACME"),  # another sender
    ]
    results = await upstream.send_batch(batch)
    sends = [r.form for r in double.requests]
    assert [(f["phones"], f["mes"], f.get("sender")) for f in sends] == [
        ("79161234567,79161234568,79161234570", "alert", None),
        ("79161234569", "other", None),
        ("79161234567", "alert", None),
        ("79161234571", "alert", "ACME"),
    ]
    assert all(isinstance(r, SendReceipt) for r in results)
    ids = [r.provider_ids for r in results if isinstance(r, SendReceipt)]
    first = client_id(["a", "b", "d"])
    assert ids == [
        (f"79161234567:{first}",), (f"79161234568:{first}",), (f"79161234569:{client_id(['c'])}",),
        (f"79161234570:{first}",), (f"79161234567:{client_id(['e'])}",),
        (f"79161234571:{client_id(['f'])}",),
    ]
    assert sorted(a.provider_id for a in double.accepted) == sorted(i[0] for i in ids)


async def test_send_batch_multi_part_text_counts_parts(
    upstream: SmscUpstream, double: SmscDouble
) -> None:
    double.success_form = "ids"
    text = "ы" * 100  # 2 UCS-2 parts per phone
    results = await upstream.send_batch([sms("79161234567", text, "a", encoding="ucs2"),
                                         sms("79161234568", text, "b", encoding="ucs2")])
    assert [r.provider_ids for r in results if isinstance(r, SendReceipt)] == [
        (accepted.provider_id,) for accepted in double.accepted]
    assert len(double.requests) == 1


async def test_send_batch_failure_of_the_only_request_is_raised(
    upstream: SmscUpstream, double: SmscDouble
) -> None:
    double.fail_next(1, "error", code=1)
    with pytest.raises(PermanentUpstreamError) as info:
        await upstream.send_batch([sms("79161234567", "x", "a"), sms("79161234568", "x", "b")])
    assert info.value.code == 1


async def test_send_batch_per_group_errors(upstream: SmscUpstream, double: SmscDouble) -> None:
    batch = [sms("7916", "bad number", "a"), sms("79161234568", "fine", "b"),
             sms("79161234569", "fine too", "c")]
    results = await upstream.send_batch(batch)
    assert isinstance(results[0], PermanentUpstreamError) and results[0].code == 7
    assert isinstance(results[1], SendReceipt) and isinstance(results[2], SendReceipt)
    assert len(double.accepted) == 2


async def test_send_batch_stops_after_a_transient_failure(
    upstream: SmscUpstream, double: SmscDouble
) -> None:
    double.fail_next(1, "http500")
    batch = [sms("79161234567", "one", "a"), sms("79161234568", "two", "b"),
             sms("79161234569", "three", "c")]
    results = await upstream.send_batch(batch)
    assert all(isinstance(r, TransientUpstreamError) for r in results)
    assert isinstance(results[0], UpstreamError) and results[0].ambiguous
    assert isinstance(results[1], UpstreamError) and not results[1].ambiguous
    assert len(double.requests) == 1


async def test_send_batch_retries_go_one_by_one(upstream: SmscUpstream,
                                                double: SmscDouble) -> None:
    double.success_form = "ids"
    # Resends (maybe_sent: an earlier request may have been taken) go one by one.
    results = await upstream.send_batch([sms("79161234567", "x", "a", attempt=2, maybe_sent=1),
                                         sms("79161234568", "x", "b", attempt=2, maybe_sent=1)])
    assert [r.path for r in double.requests] == ["/sys/send.php", "/sys/send.php"]
    assert [r.provider_ids for r in results if isinstance(r, SendReceipt)] == [
        (f"79161234567:{client_id(['a'])}",), (f"79161234568:{client_id(['b'])}",)]


async def test_send_batch_retries_with_status_url_ask_first(polling: SmscUpstream,
                                                            double: SmscDouble) -> None:
    results = await polling.send_batch([sms("79161234567", "x", "a", attempt=2, maybe_sent=1),
                                        sms("79161234568", "x", "b", attempt=2, maybe_sent=1)])
    assert [r.path for r in double.requests] == [
        "/sys/status.php", "/sys/send.php", "/sys/status.php", "/sys/send.php"]
    assert [r.provider_ids for r in results if isinstance(r, SendReceipt)] == [
        (f"79161234567:{client_id(['a'])}",), (f"79161234568:{client_id(['b'])}",)]


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize("form", ["plain", "fmt1", "xml", "json"])
@pytest.mark.parametrize(
    ("code", "cls", "min_retry_after"),
    [(1, PermanentUpstreamError, None), (2, PermanentUpstreamError, None),
     (3, PermanentUpstreamError, None), (4, TransientUpstreamError, 600.0),
     (5, PermanentUpstreamError, None), (7, PermanentUpstreamError, None),
     (8, PermanentUpstreamError, None), (9, TransientUpstreamError, 60.0),
     (10, TransientUpstreamError, 8 * 3600.0), (11, PermanentUpstreamError, None)],
)
async def test_provider_codes_in_every_form(
    upstream: SmscUpstream, double: SmscDouble, form: str, code: int,
    cls: type[UpstreamError], min_retry_after: float | None
) -> None:
    double.fail_next(1, "error", code=code, form=form)
    with pytest.raises(UpstreamError) as info:
        await upstream.send(sms())
    assert type(info.value) is cls
    assert info.value.code == code
    assert not info.value.ambiguous
    if min_retry_after is None:
        assert info.value.retry_after is None
    else:
        assert info.value.retry_after is not None
        assert info.value.retry_after >= min_retry_after


async def test_real_refusals_from_the_double(upstream: SmscUpstream, double: SmscDouble) -> None:
    with pytest.raises(PermanentUpstreamError) as bad_phone:
        await upstream.send(sms(phone="12"))
    with pytest.raises(PermanentUpstreamError) as bad_sender:
        await upstream.send(sms(originator="NOTMINE"))
    assert (bad_phone.value.code, bad_sender.value.code) == (7, 3)
    assert double.accepted == []


async def test_bad_credentials_are_cached_without_requests(
    double: SmscDouble, client: httpx.AsyncClient
) -> None:
    upstream = make_upstream(double, client, password="wrong", status_url=status_url(double))
    assert isinstance(upstream, StatusPolling)
    clock = FakeClock()
    upstream.clock = clock
    with pytest.raises(PermanentUpstreamError) as first:
        await upstream.send(sms(key="a"))
    assert first.value.code == 2
    assert len(double.requests) == 1
    for key in ("b", "c"):
        with pytest.raises(PermanentUpstreamError) as cached:
            await upstream.send(sms(key=key))
        assert cached.value.code == 2
    with pytest.raises(PermanentUpstreamError):
        await upstream.poll_statuses([f"{PHONE}:1"])
    with pytest.raises(PermanentUpstreamError):
        await upstream.send_batch([sms(key="d")])
    assert len(double.requests) == 1  # no request while the failure is remembered
    clock.now += AUTH_FAILURE_TTL - 1
    with pytest.raises(PermanentUpstreamError):
        await upstream.send(sms(key="e"))
    assert len(double.requests) == 1
    clock.now += 2
    with pytest.raises(PermanentUpstreamError):
        await upstream.send(sms(key="f"))
    assert len(double.requests) == 2  # expired: asked again


async def test_ip_block_is_waited_out_without_requests(
    upstream: SmscUpstream, double: SmscDouble
) -> None:
    clock = FakeClock()
    upstream.clock = clock
    double.fail_next(1, "error", code=4)
    with pytest.raises(TransientUpstreamError) as first:
        await upstream.send(sms(key="a"))
    assert first.value.retry_after is not None and first.value.retry_after >= 600
    clock.now += 100
    with pytest.raises(TransientUpstreamError) as cached:
        await upstream.send(sms(key="b"))
    assert cached.value.code == 4
    assert cached.value.retry_after == pytest.approx(IP_BLOCK_RETRY_AFTER - 100)
    assert len(double.requests) == 1
    clock.now += IP_BLOCK_RETRY_AFTER
    await upstream.send(sms(key="c"))
    assert len(double.requests) == 2 and len(double.accepted) == 1


async def test_error_9_pauses_every_call_for_a_minute(
    double: SmscDouble, client: httpx.AsyncClient
) -> None:
    upstream = make_upstream(double, client, status_url=status_url(double))
    clock = FakeClock()
    upstream.clock = clock
    double.fail_next(1, "error", code=9)
    with pytest.raises(TransientUpstreamError) as info:
        await upstream.send(sms(key="a"))
    assert info.value.retry_after is not None and info.value.retry_after >= REPEAT_RETRY_AFTER
    clock.now += 30
    with pytest.raises(TransientUpstreamError) as paused:
        await upstream.send(sms(key="b"))  # another message: paused as well
    assert paused.value.code == 9 and not paused.value.ambiguous
    assert paused.value.retry_after == pytest.approx(REPEAT_RETRY_AFTER - 30)
    assert isinstance(upstream, StatusPolling)
    with pytest.raises(TransientUpstreamError):
        await upstream.poll_statuses([f"{PHONE}:1"])  # status requests too
    assert double.count() == 1
    clock.now += REPEAT_RETRY_AFTER - 30
    await upstream.send(sms(key="b"))
    assert double.count() == 2 and len(double.accepted) == 1


async def test_identical_request_again_is_refused_by_the_double_with_9(
    upstream: SmscUpstream, double: SmscDouble
) -> None:
    await upstream.send(sms(key="a"))
    with pytest.raises(TransientUpstreamError) as info:
        await upstream.send(sms(key="a"))  # attempt 1 again: no pre-check, same request
    assert info.value.code == 9


@pytest.mark.parametrize(
    ("mode", "kw", "code", "ambiguous"),
    [("http500", {}, "http_500", True), ("http429", {"retry_after": 7}, "http_429", False),
     ("drop", {}, None, True)],
)
async def test_http_failures_are_transient(
    upstream: SmscUpstream, double: SmscDouble, mode: str, kw: dict[str, Any],
    code: str | None, ambiguous: bool
) -> None:
    double.fail_next(1, mode, **kw)
    with pytest.raises(TransientUpstreamError) as info:
        await upstream.send(sms())
    assert info.value.code == code
    assert info.value.ambiguous is ambiguous
    if mode == "http429":
        assert info.value.retry_after == 7


async def test_timeout_is_transient_and_ambiguous(
    double: SmscDouble, client: httpx.AsyncClient
) -> None:
    upstream = make_upstream(double, client, timeout=0.2)
    double.fail_next(1, "delay", seconds=1.0)
    with pytest.raises(TransientUpstreamError) as info:
        await upstream.send(sms())
    assert info.value.ambiguous


async def test_connection_refused_is_transient(client: httpx.AsyncClient) -> None:
    async with SmscDouble() as gone:
        url = gone.url
    upstream = SmscUpstream("p", upstream_settings(kind="smsc", base_url=url, login="acme",
                                                  password=SecretStr("s3cret")), client)
    with pytest.raises(TransientUpstreamError) as info:
        await upstream.send(sms())
    assert not info.value.ambiguous


async def test_retry_after_ambiguous_failure_does_not_send_twice(
    polling: SmscUpstream, double: SmscDouble
) -> None:
    double.fail_next(1, "accept_then_500", path="/sys/send.php")
    with pytest.raises(TransientUpstreamError) as info:
        await polling.send(sms(attempt=1))
    assert info.value.ambiguous and len(double.accepted) == 1
    receipt = await polling.send(sms(attempt=2, maybe_sent=1))  # the dispatcher counts it
    assert receipt.provider_ids == (double.accepted[0].provider_id,)
    assert [r.path for r in double.requests] == ["/sys/send.php", "/sys/status.php"]
    assert len(double.accepted) == 1


async def test_retry_after_lost_request_sends(polling: SmscUpstream, double: SmscDouble) -> None:
    double.fail_next(1, "drop", path="/sys/send.php")
    with pytest.raises(TransientUpstreamError):
        await polling.send(sms(attempt=1))
    receipt = await polling.send(sms(attempt=2, maybe_sent=1))
    assert [r.path for r in double.requests] == ["/sys/send.php", "/sys/status.php",
                                                 "/sys/send.php"]
    assert receipt.provider_ids == (double.accepted[0].provider_id,)


async def test_retry_without_status_url_sends_without_asking(
    upstream: SmscUpstream, double: SmscDouble
) -> None:
    double.fail_next(1, "drop", path="/sys/send.php")
    with pytest.raises(TransientUpstreamError):
        await upstream.send(sms(attempt=1))
    await upstream.send(sms(attempt=2))
    assert [r.path for r in double.requests] == ["/sys/send.php", "/sys/send.php"]
    assert len(double.accepted) == 1


async def test_retry_precheck_refused_still_sends(polling: SmscUpstream,
                                                  double: SmscDouble) -> None:
    double.fail_next(1, "error", code=1, path="/sys/status.php")
    receipt = await polling.send(sms(attempt=3, maybe_sent=1))
    assert [r.path for r in double.requests] == ["/sys/status.php", "/sys/send.php"]
    assert receipt.provider_ids == (double.accepted[0].provider_id,)


async def test_retry_precheck_transient_failure_does_not_send(
    polling: SmscUpstream, double: SmscDouble
) -> None:
    double.fail_next(1, "http500", path="/sys/status.php")
    with pytest.raises(TransientUpstreamError):
        await polling.send(sms(attempt=2, maybe_sent=1))
    assert double.accepted == []


async def test_precheck_follows_maybe_sent_not_the_attempt_number(
    polling: SmscUpstream, double: SmscDouble
) -> None:
    """A first attempt re-claimed after a crash (attempt 1, maybe_sent 1) asks first and
    finds the SMS its crashed predecessor sent; a later attempt after failures that surely
    sent nothing (maybe_sent 0) asks nothing."""
    await polling.send(sms())  # the request of the process that was killed
    await polling.send(sms(attempt=1, maybe_sent=1))
    await polling.send(sms(key="k2", attempt=3))
    assert [r.path for r in double.requests] == ["/sys/send.php", "/sys/status.php",
                                                 "/sys/send.php"]
    assert len(double.accepted) == 2


# ---------------------------------------------------------------------------- statuses

@pytest.mark.parametrize(
    ("raw", "status"),
    [(-1, "sent"), (0, "sent"), (1, "delivered"), (3, "expired"), (20, "undelivered"),
     (22, "rejected"), (23, "rejected"), (24, "rejected"), (25, "undelivered"),
     (99, "unknown")],
)
async def test_status_table(polling: SmscUpstream, double: SmscDouble, raw: int,
                            status: str) -> None:
    assert isinstance(polling, StatusPolling)
    [provider_id] = (await polling.send(sms())).provider_ids
    double.set_status(provider_id, raw, err=0 if raw in (-1, 0, 1) else 7)
    [report] = await polling.poll_statuses([provider_id])
    assert (report.provider_id, report.status, report.raw_status) == (provider_id, status,
                                                                      str(raw))
    assert report.error_code == (None if raw in (-1, 0, 1) else 7)
    request = double.requests[-1]
    assert (request.method, request.path) == ("GET", "/sys/status.php")
    phone, _, sms_id = provider_id.partition(":")
    assert request.query == {"login": "acme", "psw": "s3cret", "phone": phone, "id": sms_id,
                             "fmt": "3", "charset": "utf-8"}


async def test_poll_several_in_one_request(polling: SmscUpstream, double: SmscDouble) -> None:
    assert isinstance(polling, StatusPolling)
    receipts = await polling.send_batch([sms("79161234567", "x", "a"),
                                         sms("79161234568", "x", "b"),
                                         sms("79161234569", "y", "c")])
    ids = [r.provider_ids[0] for r in receipts if isinstance(r, SendReceipt)]
    double.set_status(ids[0], 1)
    double.set_status(ids[2], 20, err=6)
    reports = await polling.poll_statuses([*ids, "79160000000:42", "garbage", ids[0]])
    assert [(r.provider_id, r.status, r.error_code) for r in reports] == [
        (ids[0], "delivered", None), (ids[1], "sent", None), (ids[2], "undelivered", 6)]
    [request] = [r for r in double.requests if r.path == "/sys/status.php"]
    assert request.query["phone"] == "79161234567,79161234568,79161234569,79160000000"


async def test_poll_unknown_single_id_is_left_out(polling: SmscUpstream,
                                                  double: SmscDouble) -> None:
    assert isinstance(polling, StatusPolling)
    assert await polling.poll_statuses([f"{PHONE}:42"]) == []
    assert len(double.requests) == 1


async def test_poll_error_is_raised(polling: SmscUpstream, double: SmscDouble) -> None:
    assert isinstance(polling, StatusPolling)
    double.fail_next(1, "error", code=4, form="plain")
    with pytest.raises(TransientUpstreamError) as info:
        await polling.poll_statuses([f"{PHONE}:42"])
    assert info.value.code == 4


def test_status_polling_only_with_a_status_url(double: SmscDouble,
                                               client: httpx.AsyncClient) -> None:
    assert not isinstance(make_upstream(double, client), StatusPolling)
    assert isinstance(make_upstream(double, client, status_url=status_url(double)),
                      StatusPolling)
    with pytest.raises(ValueError, match=r"upstreams\.p\.status_url"):
        make_upstream(double, client, status_url="/sys/status.php")


# ---------------------------------------------------------------------------- end to end

def delivery(bridge: Bridge) -> list[tuple[str | None, str | None]]:
    path = bridge.settings.store.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT delivery_status, delivery_detail FROM messages"))


async def test_end_to_end_sent_and_delivered_by_polling(
    bridge_factory: BridgeFactory, double: SmscDouble
) -> None:
    double.success_form = "ids"
    bridge = await bridge_factory(
        upstreams={"p": {"kind": "smsc", "base_url": double.url, "login": "acme",
                         "password": "s3cret", "status_poll_interval": 0.2,
                         "status_url": status_url(double)}},
        accounts={"alerts": {"password": "pw", "upstream": "p", "originator": "ACME"}},
    )
    code, reply = await send(bridge.smtp_port, mail(f"{PHONE}.alerts@x", "", "text"))
    assert code == 250, reply
    [accepted] = await double.wait_for_accepted(1)
    form = double.requests[0].form
    assert double.requests[0].path == "/sys/send.php"
    assert {k: form[k] for k in ("login", "psw", "phones", "mes", "fmt", "charset", "sender")} \
        == {"login": "acme", "psw": "s3cret", "phones": PHONE, "mes": "text", "fmt": "3",
            "charset": "utf-8", "sender": "ACME"}
    await wait_status(bridge, 1, "sent")
    [message] = await bridge.store.list_messages()
    assert message.upstream_ids == [accepted.provider_id]
    await double.wait_for_requests(1, path="/sys/status.php")
    double.set_status(accepted.provider_id, 1)
    async with asyncio.timeout(10):
        # The status is written by the poller task; no event marks that commit.
        while delivery(bridge)[0][0] != "delivered":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert delivery(bridge)[0][1] == f"1 ({accepted.provider_id})"


async def test_end_to_end_bad_password_fails_fast(
    bridge_factory: BridgeFactory, double: SmscDouble
) -> None:
    bridge = await bridge_factory(
        upstreams={"p": {"kind": "smsc", "base_url": double.url, "login": "acme",
                         "password": "wrong", "status_poll_interval": 0.2}},
        accounts={"alerts": {"password": "pw", "upstream": "p"}},
    )
    for phone in ("79161234567", "79161234568", "79161234569"):
        code, reply = await send(bridge.smtp_port, mail(f"{phone}.alerts@x", "", "text"))
        assert code == 250, reply
    await wait_status(bridge, 3, "failed")
    assert len(double.requests) == 1
    errors = [m.last_error or "" for m in await bridge.store.list_messages()]
    assert len(errors) == 3 and all("SMSC error 2" in e for e in errors), errors


@pytest.mark.parametrize("success_form", ["ok", "ids"])
async def test_end_to_end_a_success_is_sent_once_and_never_polled_without_status_url(
    bridge_factory: BridgeFactory, double: SmscDouble, success_form: str
) -> None:
    double.success_form = success_form
    bridge = await bridge_factory(
        upstreams={"p": {"kind": "smsc", "base_url": double.url, "login": "acme",
                         "password": "s3cret", "status_poll_interval": 0.05}},
        accounts={"alerts": {"password": "pw", "upstream": "p", "originator": "ACME"}},
    )
    code, reply = await send(bridge.smtp_port, mail(f"{PHONE}.alerts@x", "", "text"))
    assert code == 250, reply
    await wait_status(bridge, 1, "sent")
    # Settled: nothing is queued, and no status poll is scheduled, now or ever.
    assert await bridge.store.next_due_at() is None
    assert await bridge.store.due_status_polls("p", time.time() + 10**7, 10) == []
    assert [r.path for r in double.requests] == ["/sys/send.php"]
    [message] = await bridge.store.list_messages()
    expected = [] if success_form == "ok" else [double.accepted[0].provider_id]
    assert message.upstream_ids == expected


async def wait_events(bridge: Bridge, status: str, count: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        # Events are written by the dispatcher task; no event marks that commit.
        while True:
            [message] = await bridge.store.list_messages()
            events = await bridge.store.message_events(message.id)
            if sum(e["status"] == status for e in events) >= count:
                return
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(("code", "pause"), [(4, IP_BLOCK_RETRY_AFTER), (9, REPEAT_RETRY_AFTER)])
async def test_end_to_end_errors_4_and_9_pause_the_upstream_without_failing(
    bridge_factory: BridgeFactory, double: SmscDouble, code: int, pause: float
) -> None:
    bridge = await bridge_factory(
        upstreams={"p": {"kind": "smsc", "base_url": double.url, "login": "acme",
                         "password": "s3cret"}},
        accounts={"alerts": {"password": "pw", "upstream": "p", "originator": "ACME"}},
    )
    upstream = bridge.upstreams["p"]
    assert isinstance(upstream, SmscUpstream)
    clock = FakeClock()
    upstream.clock = clock
    double.fail_next(1, "error", code=code)
    code_, reply = await send(bridge.smtp_port, mail(f"{PHONE}.alerts@x", "", "text"))
    assert code_ == 250, reply
    # The dispatcher retries (the test settings cap its delay at 0.2 s) while paused ...
    await wait_events(bridge, "retry", 4)
    assert double.count() == 1  # ... but no request goes out during the pause
    [message] = await bridge.store.list_messages()
    assert message.status in ("queued", "sending")
    assert "failed" not in [e["status"] for e in await bridge.store.message_events(message.id)]
    clock.now += pause
    await wait_status(bridge, 1, "sent")
    assert double.count() == 2 and len(double.accepted) == 1

"""Tests of the SMS Traffic test double (tests/doubles/smstraffic.py).

Wire formats are those of tests/specs/002_e7d2ff51d5c777f0.txt: HTTP API v1 at l. 794,
HTTP API v2 at l. 105, error codes at l. 1988.  The tests talk to the double over a real socket
with httpx.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.doubles.smstraffic import FIRST_SMS_ID, SmsTrafficDouble

pytestmark = pytest.mark.asyncio

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
KEY = "1837/secretkey"
BEARER = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def double() -> AsyncIterator[SmsTrafficDouble]:
    async with SmsTrafficDouble() as d:
        yield d


@pytest.fixture
async def client(double: SmsTrafficDouble) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=double.url, timeout=5.0) as c:
        yield c


def xml(resp: httpx.Response) -> ET.Element:
    return ET.fromstring(resp.content)


async def v1_send(client: httpx.AsyncClient, body: str) -> httpx.Response:
    return await client.post("/multi.php", content=body.encode("ascii"), headers=FORM)


async def v2_send(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v2/send", json=body, headers=BEARER)


async def test_v1_auth_errors_are_case_sensitive_and_recorded(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """Spec l. 887-909: ``LOGIN=`` is "login param is missing" (401); 402; 411."""
    cases = {
        "LOGIN=mylogin&password=mypassword&phones=79051112233&message=hi": "401",
        "login=mylogin&phones=79051112233&message=hi": "402",
        "login=mylogin&password=bad&phones=79051112233&message=hi": "411",
    }
    for body, code in cases.items():
        resp = await v1_send(client, body)
        assert resp.status_code == 200
        root = xml(resp)
        assert root.findtext("result") == "ERROR"
        assert root.findtext("code") == code
    assert xml(await v1_send(client, next(iter(cases)))).findtext("description") == (
        "login param is missing"
    )
    assert double.accepted == []
    assert len(double.requests) == 4
    assert double.requests[0].form["LOGIN"] == "mylogin"


async def test_v1_requires_form_content_type(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """Spec l. 796: POST needs application/x-www-form-urlencoded; otherwise no params seen."""
    body = b"login=mylogin&password=mypassword&phones=79051112233&message=hi"
    resp = await client.post("/multi.php", content=body, headers={"Content-Type": "text/plain"})
    assert xml(resp).findtext("result") == "ERROR"
    assert xml(resp).findtext("code") == "401"
    assert double.accepted == []
    assert double.requests[0].raw_body == body


async def test_v1_cp1251_default_and_utf8_with_rus5(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """Spec l. 811-814 and the example at l. 857: ``test+%F2%E5%F1%F2`` is cp1251 "test тест"."""
    resp = await v1_send(
        client, "login=mylogin&password=mypassword&phones=78001234567&message=test+%F2%E5%F1%F2"
    )
    root = xml(resp)
    assert root.findtext("result") == "OK"
    assert root.findtext("code") == "0"
    assert root.findtext("description") == "queued 1 messages"
    utf8 = "%D1%82%D0%B5%D1%81%D1%82"  # "тест" in UTF-8
    resp = await v1_send(
        client,
        f"login=mylogin&password=mypassword&phones=78001234567&message={utf8}&rus=5&flash=1",
    )
    assert xml(resp).findtext("result") == "OK"
    first, second = double.accepted
    assert first.message == "test тест"
    assert first.api == "v1"
    assert first.originator is None
    assert second.message == "тест"
    assert second.params == {"rus": "5", "flash": "1"}
    assert double.requests[0].form["message"] == "test тест"


async def test_v1_want_sms_ids_reply(double: SmsTrafficDouble, client: httpx.AsyncClient) -> None:
    """Spec l. 913-944: ``<message_infos>`` with one ``<message_info>`` per phone."""
    resp = await v1_send(
        client,
        "login=mylogin&password=mypassword&want_sms_ids=1&phones=79051112233,79261112233"
        "&message=test+%F2%E5%F1%F2&originator=MyCompany",
    )
    assert resp.headers["content-type"].startswith("text/xml")
    assert resp.text.startswith('<?xml version="1.0" ?>')
    root = xml(resp)
    assert root.findtext("description") == "queued 2 messages"
    infos = [(i.findtext("phone"), i.findtext("sms_id")) for i in root.iter("message_info")]
    assert infos == [
        ("79051112233", str(FIRST_SMS_ID)),
        ("79261112233", str(FIRST_SMS_ID + 1)),
    ]
    assert [a.sms_id for a in double.accepted] == [str(FIRST_SMS_ID), str(FIRST_SMS_ID + 1)]
    assert {a.originator for a in double.accepted} == {"MyCompany"}


async def test_v1_validation_errors(double: SmsTrafficDouble, client: httpx.AsyncClient) -> None:
    """Codes from the table at spec l. 1988: 403, 405, 428, 421, 416, 418."""
    auth = "login=mylogin&password=mypassword"
    cases = {
        f"{auth}&message=hi": "403",
        f"{auth}&phones=79051112233": "405",
        f"{auth}&phones=%2B79051112233&message=hi": "428",
        f"{auth}&phones=79051112233,123&message=hi": "428",
        f"{auth}&phones=79051112233&message=hi&originator=TwelveChars1": "421",
        f"{auth}&phones=79051112233&message=hi&start_date=2020-05-09T09:00:00": "416",
        f"{auth}&phones=79051112233&message=hi&start_date=2020-05-09+09:00:00&want_sms_ids=1": (
            "418"
        ),
    }
    for body, code in cases.items():
        root = xml(await v1_send(client, body))
        assert (root.findtext("result"), root.findtext("code")) == ("ERROR", code), body
    assert double.accepted == []
    # 15 digits is a valid numeric originator; a valid start_date alone is accepted.
    ok = (
        f"{auth}&phones=79051112233&message=hi&originator=74957873595"
        "&start_date=2020-05-09+09:00:00"
    )
    assert xml(await v1_send(client, ok)).findtext("result") == "OK"
    assert double.accepted[0].params["start_date"] == "2020-05-09 09:00:00"


async def test_v1_individual_messages_with_push_id(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """Spec l. 826-841 and the example at l. 946-979 (``delimiter=ABC``, ``push_id:phone``)."""
    resp = await v1_send(
        client,
        "login=mylogin&password=mypassword&want_sms_ids=1&with_push_id=1&individual_messages=1"
        "&delimiter=ABC&phones=a:79051112233+line1%0Aline2ABCb:79261112233+hello+test",
    )
    root = xml(resp)
    assert root.findtext("result") == "OK"
    infos = [(i.findtext("phone"), i.findtext("push_id")) for i in root.iter("message_info")]
    assert infos == [("79051112233", "a"), ("79261112233", "b")]
    assert [(a.phone, a.message, a.params["push_id"]) for a in double.accepted] == [
        ("79051112233", "line1\nline2", "a"),
        ("79261112233", "hello test", "b"),
    ]
    # Default delimiter is a line break.
    resp = await v1_send(
        client,
        "login=mylogin&password=mypassword&individual_messages=1"
        "&phones=79051112233+one%0D%0A79261112233+two",
    )
    assert xml(resp).findtext("description") == "queued 2 messages"
    assert [a.message for a in double.accepted[2:]] == ["one", "two"]


async def test_v1_get_and_status(double: SmsTrafficDouble, client: httpx.AsyncClient) -> None:
    """GET is allowed (spec l. 796); ``operation=status`` (l. 987-1098), one and several ids."""
    resp = await client.get(
        "/multi.php",
        params={
            "login": "mylogin",
            "password": "mypassword",
            "phones": "79051112233",
            "message": "hi",
            "want_sms_ids": "1",
        },
    )
    sms_id = xml(resp).findtext("message_infos/message_info/sms_id")
    assert sms_id == str(FIRST_SMS_ID)
    auth = "login=mylogin&password=mypassword&operation=status"
    single = xml(await v1_send(client, f"{auth}&sms_id={sms_id}"))
    assert single.tag == "reply"
    assert single.findtext("status") == "Delivered"
    assert single.findtext("sms_id") == sms_id
    several = xml(await v1_send(client, f"{auth}&sms_id={sms_id},82877133031"))
    sms = several.findall("sms")
    assert [s.findtext("status") for s in sms] == ["Delivered", None]
    assert sms[1].findtext("error") == "no such message or this message does not belong to you"
    assert len(double.accepted) == 1


async def test_v2_auth(double: SmsTrafficDouble, client: httpx.AsyncClient) -> None:
    """Spec l. 107 and l. 117: Bearer key; missing -> 401, wrong key -> 403 Access denied."""
    body = {"destinations": [{"to": 79051112233}], "channels": {"sms": {"message": "hi"}}}
    missing = await client.post("/v2/send", json=body)
    assert missing.status_code == 401
    assert missing.json()["success"] is False
    wrong = await client.post("/v2/send", json=body, headers={"Authorization": "Bearer 1837/x"})
    assert wrong.status_code == 403
    assert wrong.json() == {"success": False, "error": {"code": 403, "message": "Access denied"}}
    assert double.accepted == []
    assert len(double.requests) == 2
    assert double.requests[1].headers["Authorization"] == "Bearer 1837/x"
    assert double.requests[1].json == body
    assert double.requests[1].form == {}


async def test_v2_send_success_and_per_destination_error(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """Spec l. 130-294: request/response tables; a bad phone gets its own error (428)."""
    resp = await v2_send(
        client,
        {
            "channels": {"sms": {"message": "Hello, [[name]]!", "maxParts": 3}},
            "destinations": [
                {"to": 78000000001, "params": {"name": "Ivan"}, "trackingData": "t-1"},
                {"to": "78000000002", "content": {"sms": {"message": "Individual"}}},
                {"to": "+78000000003"},
            ],
            "originator": "Originator",
            "scheduling": {"startTime": "2025-01-01T10:30:00+03:00", "localtime": False},
            "restrictiveId": "ba52-5ad86d408887",
        },
    )
    assert resp.status_code == 200
    reply = resp.json()
    assert reply["success"] is True
    ok1, ok2, bad = reply["destinations"]
    assert ok1["phone"] == 78000000001 and ok1["trackingData"] == "t-1"
    assert ok2["phone"] == 78000000002 and ok2["id"].isdigit() and "error" not in ok2
    assert bad["error"]["code"] == 428
    first, second = double.accepted
    assert (first.api, first.phone, first.message) == ("v2", "78000000001", "Hello, Ivan!")
    assert first.sms_id == ok1["id"]
    assert first.originator == "Originator"
    assert first.params["maxParts"] == 3
    assert first.params["startTime"] == "2025-01-01T10:30:00+03:00"
    assert first.params["restrictiveId"] == "ba52-5ad86d408887"
    assert second.message == "Individual"


async def test_v2_request_level_errors(double: SmsTrafficDouble, client: httpx.AsyncClient) -> None:
    """Codes 103 (empty destinations), 106 (restrictiveId > 36), and a non-JSON body."""
    empty = await v2_send(client, {"destinations": [], "channels": {"sms": {"message": "x"}}})
    assert empty.json()["error"]["code"] == 103
    long_id = await v2_send(
        client,
        {"destinations": [{"to": 79051112233}], "restrictiveId": "x" * 37},
    )
    assert long_id.json()["error"]["code"] == 106
    not_json = await client.post(
        "/v2/send", content=b"to=1", headers={**BEARER, "Content-Type": "text/plain"}
    )
    assert not_json.status_code == 400
    assert not_json.json()["success"] is False
    assert double.accepted == []


async def test_v2_restrictive_id_duplicate_within_an_hour(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """Spec l. 179 and l. 296-306: same restrictiveId within an hour -> 105 Duplicated request."""
    now = [1000.0]
    double.clock = lambda: now[0]
    body = {
        "destinations": [{"to": 79051112233}],
        "channels": {"sms": {"message": "hi"}},
        "restrictiveId": "r-1",
    }
    assert (await v2_send(client, body)).json()["success"] is True
    now[0] += 3599
    dup = await v2_send(client, body)
    assert dup.status_code == 200
    assert dup.json() == {
        "success": False,
        "error": {"code": 105, "message": "Duplicated request"},
    }
    assert len(double.accepted) == 1
    now[0] += 2
    assert (await v2_send(client, body)).json()["success"] is True
    assert len(double.accepted) == 2


async def test_fail_next_http_modes(double: SmsTrafficDouble, client: httpx.AsyncClient) -> None:
    """http500, http429 (Retry-After, spec l. 119), error, malformed are FIFO; nothing accepted."""
    double.fail_next(1, "http500")
    double.fail_next(1, "http429", retry_after=7)
    double.fail_next(1, "error", code=1000)
    double.fail_next(1, "malformed")
    body = "login=mylogin&password=mypassword&phones=79051112233&message=hi"
    assert (await v1_send(client, body)).status_code == 500
    r429 = await v2_send(
        client, {"destinations": [{"to": 79051112233}], "channels": {"sms": {"message": "hi"}}}
    )
    assert r429.status_code == 429
    assert r429.headers["Retry-After"] == "7"
    err = xml(await v1_send(client, body))
    assert (err.findtext("result"), err.findtext("code")) == ("ERROR", "1000")
    bad = await v1_send(client, body)
    assert (bad.status_code, bad.text) == (200, "<reply><result>OK")
    assert double.accepted == []
    assert xml(await v1_send(client, body)).findtext("result") == "OK"
    assert len(double.accepted) == 1
    assert len(double.requests) == 5


async def test_fail_next_v2_error_and_accept_then_500(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """``error`` in v2 shape (spec l. 296-306); ``accept_then_500`` accepts yet answers 500."""
    double.fail_next(1, "error", code=1000, text="Temporary problems")
    double.fail_next(1, "accept_then_500")
    body = {"destinations": [{"to": 79051112233}], "channels": {"sms": {"message": "hi"}}}
    err = await v2_send(client, body)
    assert err.json() == {
        "success": False,
        "error": {"code": 1000, "message": "Temporary problems"},
    }
    ambiguous = await v2_send(client, body)
    assert ambiguous.status_code == 500
    assert [a.phone for a in double.accepted] == ["79051112233"]


async def test_fail_next_drop_gives_connection_error(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """``drop`` closes the socket: the client sees a transport error, never an HTTP status."""
    double.fail_next(1, "drop")
    body = "login=mylogin&password=mypassword&phones=79051112233&message=hi"
    with pytest.raises(httpx.TransportError):
        await v1_send(client, body)
    assert double.accepted == []
    assert len(double.requests) == 1
    # The double keeps serving afterwards.
    assert xml(await v1_send(client, body)).findtext("result") == "OK"


async def test_fail_next_delay_then_accepts_and_wait_for_accepted(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """``delay`` sleeps and then processes normally; ``wait_for_accepted`` wakes on accept."""
    double.fail_next(1, "delay", seconds=0.3)
    body = "login=mylogin&password=mypassword&phones=79051112233&message=hi"
    started = time.monotonic()
    task = asyncio.create_task(v1_send(client, body))
    requests = await double.wait_for_requests(1, timeout=2)
    assert requests[0].form["phones"] == "79051112233"
    assert double.accepted == []
    accepted = await double.wait_for_accepted(1, timeout=5)
    assert time.monotonic() - started >= 0.3
    assert accepted[0].phone == "79051112233"
    assert xml(await task).findtext("result") == "OK"
    with pytest.raises(AssertionError, match="expected >= 2 accepted SMS"):
        await double.wait_for_accepted(2, timeout=0.1)


async def test_fail_next_accept_then_drop_processes_and_gives_no_answer(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """``accept_then_drop``: the SMS is accepted, then the socket closes without an answer."""
    double.fail_next(1, "accept_then_drop")
    body = {"destinations": [{"to": 79051112233}], "channels": {"sms": {"message": "hi"}}}
    with pytest.raises(httpx.TransportError):
        await v2_send(client, body)
    assert [a.phone for a in double.accepted] == ["79051112233"]
    assert (await v2_send(client, body)).json()["success"] is True


async def test_v2_statuses_list_by_tracking_data_names_it(
    double: SmsTrafficDouble, client: httpx.AsyncClient
) -> None:
    """Spec l. 306-425: ``trackingData`` selects messages; each ``data`` item carries its
    ``trackingData`` (StatusesListResponse.Data, l. 353)."""
    sent = await v2_send(client, {"destinations": [{"to": 79051112233, "trackingData": "t-1"},
                                                   {"to": 79261112233}],
                                  "channels": {"sms": {"message": "hi"}}})
    first, second = (d["id"] for d in sent.json()["destinations"])
    listed = await client.post("/v2/statuses/list", headers=BEARER,
                               json={"trackingData": ["t-1", "t-unknown"]})
    assert [(i["smsId"], i["trackingData"]) for i in listed.json()["data"]] == [(first, "t-1")]
    by_id = await client.post("/v2/statuses/list", headers=BEARER, json={"ids": [second]})
    [item] = by_id.json()["data"]
    assert item["smsId"] == second and "trackingData" not in item


@pytest.mark.parametrize(("rus", "text", "parts"), [
    ("0", "a" * 160, 1), ("0", "a" * 161, 2), ("0", "a" * 282, 2), ("0", "a" * 307, 3),
    ("0", "{" * 80, 1), ("0", "{" * 81, 2),  # GSM 03.38 extension: two septets each
    ("5", "a" * 70, 1), ("5", "a" * 71, 2), ("5", "a" * 282, 5),  # the stricter reading
    ("5", "é" * 134, 2), ("5", "😀" * 35, 1), ("5", "😀" * 36, 2),  # UTF-16 units
    ("1", "a" * 71, 2),
])
async def test_v1_split_parts_follow_rus_by_the_stricter_reading(
    rus: str, text: str, parts: int
) -> None:
    """Spec l. 808-813: rus=0 160/153, rus=1/5 70/67 even for Latin-only text (one of the two
    readings of "максимальное количество символов не изменяется"; the stricter one)."""
    async with SmsTrafficDouble(split_parts=True) as double, \
            httpx.AsyncClient(base_url=double.url, timeout=5.0) as client:
        charset = "utf-8" if rus == "5" else "cp1251"
        form = {"login": "mylogin", "password": "mypassword", "phones": "79051112233",
                "message": text, "rus": rus, "want_sms_ids": "1"}
        body = urllib.parse.urlencode(form, encoding=charset, errors="replace")
        root = xml(await v1_send(client, body))
        assert root.findtext("result") == "OK"
        [accepted] = double.accepted
        assert len(accepted.part_ids) == parts
        assert len(list(root.iter("message_info"))) == parts

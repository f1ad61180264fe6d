"""SMSC against the answers of its spec (004_82738aa6f58320d8.txt, "Ответ сервера и коды
ошибок"), table-driven: the four error forms (l. 48-64) with each code of the table
(l. 65-77) filled in for ``N`` and "описание", and the success forms (l. 175-185). Each
answer → the receipt or the error the bridge makes of it."""

from __future__ import annotations

import itertools

import httpx
import pytest
from pydantic import SecretStr

from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.upstreams.base import OutboundSms, SendReceipt
from bridge.upstreams.smsc.settings import SmscSettings
from bridge.upstreams.smsc.upstream import SmscUpstream, parse_smsc_error
from tests.sms import outbound_sms
from tests.upstreams.canned import Canned, payload

ERROR_FORMS = ["error_fmt0.txt", "error_fmt1.txt", "error_fmt2.xml", "error_fmt3.json"]
# code → (error class, the pause before the same request may succeed)
CODES: dict[int, tuple[type[UpstreamError], float | None]] = {
    1: (PermanentUpstreamError, None), 2: (PermanentUpstreamError, None),
    3: (PermanentUpstreamError, None), 4: (TransientUpstreamError, 600.0),
    5: (PermanentUpstreamError, None), 7: (PermanentUpstreamError, None),
    8: (PermanentUpstreamError, None), 9: (TransientUpstreamError, 60.0),
    10: (TransientUpstreamError, 8 * 3600.0), 11: (PermanentUpstreamError, None),
}


def answer(name: str, code: int) -> bytes:
    return payload("smsc", name).replace(b"N", str(code).encode()).replace(
        "описание".encode(), "Ошибка".encode())


def sms() -> OutboundSms:
    return outbound_sms(message_id=1, idempotency_key="k", attempt=1, phone="79161234567",
                       text="hello", encoding="gsm7")


def make(client: httpx.AsyncClient) -> SmscUpstream:
    return SmscUpstream("smsc", SmscSettings(base_url="http://smsc.test", login="acme",
                                             password=SecretStr("pw")), client)


@pytest.mark.parametrize(("name", "code"), list(itertools.product(ERROR_FORMS, CODES)))
async def test_error_answer(name: str, code: int) -> None:
    body = answer(name, code)
    assert parse_smsc_error(body) == (code, "" if name == "error_fmt1.txt" else "Ошибка")
    kind, retry_after = CODES[code]
    async with Canned(body, content_type="text/plain").client() as client:
        with pytest.raises(kind) as caught:
            await make(client).send(sms())
    assert caught.value.code == code
    assert caught.value.retry_after == retry_after


@pytest.mark.parametrize("name", ["ok_fmt0.txt", "ok_fmt2.xml", "ok_fmt3.json"])
async def test_an_answer_without_an_error_is_a_send_without_an_id(name: str) -> None:
    """l. 79: success is "a string"; these (l. 175-185) name no id: sent, never resent."""
    async with Canned(payload("smsc", name), content_type="text/plain").client() as client:
        assert await make(client).send(sms()) == SendReceipt(())

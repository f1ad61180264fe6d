"""SMS Traffic: HTTP API v1 (``/multi.php``, XML) and v2 (``/v2/send``, JSON + Bearer key).

Spec: ``002_e7d2ff51d5c777f0.txt`` — HTTP API v1 (line 794), HTTP API v2 (line 105), API error
codes (line 1988), backup host (line 88).
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlencode
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.upstreams.base import HttpUpstream, OutboundSms, SendReceipt

# 002 line 1988. 1000 is "temporary problems on the server" (retry, or use the backup host).
# 415 (insufficient funds) is transient: the message waits, within ``give_up_after``, for a
# top-up instead of bouncing. Every other code describes the request itself: retrying the
# same request cannot succeed.
TRANSIENT_CODES = frozenset({1000, 415})


def error_for_code(code: int, text: str, *, upstream: str) -> UpstreamError:
    message = f"{upstream}: {text}".strip()
    if code in TRANSIENT_CODES:
        return TransientUpstreamError(message, code)
    return PermanentUpstreamError(message, code)


def parse_v1_reply(body: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    """``<reply><result/><code/><description/><message_infos>…`` → code, text, (phone, id).

    Parsed with defusedxml (no entities, no external resources). The spec's own examples
    differ in declaration and encoding (specs/README.md), so only the elements are used.
    """
    try:
        root: Element = SafeET.fromstring(body.strip())
    except (SafeET.ParseError, DefusedXmlException, ValueError) as exc:
        raise ValueError("malformed XML reply") from exc
    if root.tag != "reply":
        raise ValueError(f"unexpected XML root {root.tag!r}")
    result = (root.findtext("result") or "").strip().upper()
    code_text = (root.findtext("code") or "").strip()
    description = (root.findtext("description") or "").strip()
    if not code_text.lstrip("-").isdigit() or result not in ("OK", "ERROR"):
        raise ValueError("reply without result/code")
    infos = [
        ((info.findtext("phone") or "").strip(), (info.findtext("sms_id") or "").strip())
        for info in root.iter("message_info")
    ]
    return int(code_text), description, infos


class SmsTrafficV1Upstream(HttpUpstream):
    """HTTP API v1: ``POST /multi.php`` form, XML reply (002 line 794).

    No idempotency key exists in v1: after an ambiguous failure (5xx, timeout after the
    request was written) a retry may send a second copy. Use v2 where that matters.
    """

    kind: ClassVar[str] = "smstraffic_v1"
    idempotent: ClassVar[bool] = False
    required: ClassVar[tuple[str, ...]] = ("login", "password")

    def form(self, sms: OutboundSms) -> bytes:
        assert self.settings.login and self.settings.password
        # rus=5: UTF-8 text; rus=0: windows-1251 text the provider transliterates (we already
        # did, so the text is Latin). Parameter table, 002 line 794.
        charset = "cp1251" if sms.transliterate else "utf-8"
        params: list[tuple[str, str]] = [
            ("login", self.settings.login),
            ("password", self.settings.password.get_secret_value()),
            ("phones", sms.phone),
            ("message", sms.text),
            ("rus", "0" if sms.transliterate else "5"),
            ("want_sms_ids", "1"),
            ("max_parts", str(sms.max_parts)),
        ]
        if sms.originator:
            params.append(("originator", sms.originator))
        if sms.flash:
            params.append(("flash", "1"))
        if sms.validity:
            params.append(("timeout", str(sms.validity)))
        if sms.two_byte_concat:
            params.append(("two_byte_concat", "1"))
        return urlencode(params, encoding=charset, errors="replace").encode("ascii")

    async def send(self, sms: OutboundSms) -> SendReceipt:
        response = await self.request(
            sms.attempt,
            "POST",
            "/multi.php",
            content=self.form(sms),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            code, description, infos = parse_v1_reply(response.content)
        except ValueError as exc:
            raise TransientUpstreamError(f"{self.name}: {exc}", "malformed",
                                         ambiguous=True) from exc
        if code != 0:
            raise error_for_code(code, description, upstream=self.name)
        ids = tuple(sms_id for _, sms_id in infos if sms_id)
        return SendReceipt(ids, note=description)


class SmsTrafficV2Upstream(HttpUpstream):
    """HTTP API v2: ``POST /v2/send`` JSON with ``Authorization: Bearer`` (002 line 105).

    ``restrictiveId`` (≤ 36 characters) makes the provider refuse the same request again
    within an hour, so the message's idempotency key is sent as it: a retry after an
    ambiguous failure cannot send twice.
    """

    kind: ClassVar[str] = "smstraffic_v2"
    idempotent: ClassVar[bool] = True
    required: ClassVar[tuple[str, ...]] = ("api_key",)

    def body(self, sms: OutboundSms) -> dict[str, Any]:
        channel: dict[str, Any] = {
            "message": sms.text,
            "maxParts": sms.max_parts,
            "transliterate": sms.transliterate,
        }
        if sms.validity:
            channel["timeout"] = sms.validity  # only in the spec's example, see specs/README.md
        body: dict[str, Any] = {
            "channels": {"sms": channel},
            "destinations": [{"to": int(sms.phone)}],
            "restrictiveId": sms.idempotency_key[:36],
        }
        if sms.originator:
            body["originator"] = sms.originator
        return body

    async def send(self, sms: OutboundSms) -> SendReceipt:
        assert self.settings.api_key is not None
        response = await self.request(
            sms.attempt,
            "POST",
            "/v2/send",
            json=self.body(sms),
            headers={"Authorization": f"Bearer {self.settings.api_key.get_secret_value()}"},
        )
        try:
            reply = response.json()
            success = reply["success"]
        except (ValueError, KeyError, TypeError) as exc:
            raise TransientUpstreamError(f"{self.name}: malformed JSON reply", "malformed",
                                         ambiguous=True) from exc
        if not success:
            error = reply.get("error") or {}
            code = int(error.get("code", 0) or 0)
            text = str(error.get("message", ""))
            # 105 means "restrictiveId duplicate" in the code table and "Invalid request
            # format" in an example (specs/README.md). On a retry it can only be the former:
            # the first attempt reached the provider, so the SMS is already accepted.
            if code == 105 and sms.attempt > 1:
                return SendReceipt((), note="accepted by an earlier attempt (restrictiveId)")
            raise error_for_code(code, text, upstream=self.name)
        ids: list[str] = []
        for destination in reply.get("destinations") or []:
            error = destination.get("error")
            if error:
                raise error_for_code(int(error.get("code", 0) or 0),
                                     str(error.get("message", "")), upstream=self.name)
            if destination.get("id"):
                ids.append(str(destination["id"]))
        return SendReceipt(tuple(ids))

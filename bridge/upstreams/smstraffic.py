"""SMS Traffic: HTTP API v1 (``/multi.php``, XML) and v2 (``/v2/send``, JSON + Bearer key).

Spec: ``002_e7d2ff51d5c777f0.txt`` — HTTP API v1 (line 794), HTTP API v2 (line 105), API error
codes (line 1988), backup host (line 88), statuses (line 2048).

Besides sending, v1 offers status polling (``operation=status``, line 998), batches
(``individual_messages=1`` with ``with_push_id=1``, lines 826-979), inbound polling
(``operation=incoming``, line 1931) and ``operation=set_checked`` (line 1136); v2 offers
``/v2/statuses/list`` (line 306) and ``/v2/statuses/checked`` (line 501).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar
from urllib.parse import urlencode
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
import httpx
from defusedxml import DefusedXmlException

from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.inbound.parsing import map_status
from bridge.models import DeliveryReport, InboundMessage
from bridge.settings import UpstreamSettings
from bridge.upstreams.base import HttpUpstream, OutboundSms, SendReceipt

# 002 line 1988. 1000 is "temporary problems on the server" (retry, or use the backup host).
# 415 (insufficient funds) is transient: the message waits, within ``give_up_after``, for a
# top-up instead of bouncing. Every other code describes the request itself: retrying the
# same request cannot succeed.
TRANSIENT_CODES = frozenset({1000, 415})

# Codes that blame one line of an ``individual_messages`` request (a text or a phone, 002
# line 1988: 420, 422-432, 437); they come with "no message has been sent". In a batch the
# messages are then sent one per request, so that each gets its own verdict and only the
# faulty one fails.
PER_MESSAGE_CODES = frozenset({420, 422, 423, 424, *range(425, 433), 437})

# 434: "no such message or it is not yours" (002 line 1988).
NO_SUCH_MESSAGE = 434

# v1 dates are "ГГГГ-ММ-ДД ЧЧ:ММ:СС" in UTC+3 (002 lines 1018 and 1941).
MSK = timezone(timedelta(hours=3))
V1_DATE = "%Y-%m-%d %H:%M:%S"

# Ids per status request (v1 and v2 give no limit; set_checked takes at most 5000, line 1156).
STATUS_CHUNK = 500
CHECKED_CHUNK = 5000

# operation=incoming (line 1931): messages are kept for two days; the poll re-reads the last
# INBOUND_OVERLAP before the newest delivery_date seen, so a message the provider lists late
# (or within the same second) is not missed; the pipeline drops the repeats by sms_id.
INBOUND_KEEP = timedelta(days=2)
INBOUND_OVERLAP = timedelta(seconds=120)
INBOUND_PAGE = 1000


def error_for_code(code: int, text: str, *, upstream: str) -> UpstreamError:
    message = f"{upstream}: {text}".strip()
    if code in TRANSIENT_CODES:
        return TransientUpstreamError(message, code)
    return PermanentUpstreamError(message, code)


def _xml_root(body: bytes) -> Element:
    """defusedxml (no entities, no external resources). The spec's examples differ in
    declaration and encoding (``set_checked`` declares windows-1251, the single status reply
    has no declaration; specs/README.md): bytes are handed over as they are, so the parser
    follows whatever declaration there is and defaults to UTF-8."""
    try:
        root: Element = SafeET.fromstring(body.strip())
    except (SafeET.ParseError, DefusedXmlException, ValueError) as exc:
        raise ValueError("malformed XML reply") from exc
    if root.tag != "reply":
        raise ValueError(f"unexpected XML root {root.tag!r}")
    return root


def _v1_result(root: Element) -> tuple[int, str] | None:
    """``<result>``/``<code>``/``<description>`` of a reply (002 lines 858-911), or None when
    the reply has none (status and incoming replies carry data only)."""
    code_text = (root.findtext("code") or "").strip()
    result = (root.findtext("result") or "").strip().upper()
    if not code_text and not result:
        return None
    if not code_text.lstrip("-").isdigit() or result not in ("OK", "ERROR"):
        raise ValueError("reply without result/code")
    return int(code_text), (root.findtext("description") or "").strip()


def parse_v1_reply(body: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    """``<reply><result/><code/><description/><message_infos>…`` → code, text, (phone, id).

    Parsed with defusedxml (no entities, no external resources). The spec's own examples
    differ in declaration and encoding (specs/README.md), so only the elements are used.
    """
    root = _xml_root(body)
    result = _v1_result(root)
    if result is None:
        raise ValueError("reply without result/code")
    infos = [
        ((info.findtext("phone") or "").strip(), (info.findtext("sms_id") or "").strip())
        for info in root.iter("message_info")
    ]
    return result[0], result[1], infos


def parse_v1_push_ids(body: bytes) -> dict[str, list[str]]:
    """``with_push_id=1`` reply (002 lines 950-995): one ``<message_info>`` per part, each
    with ``<push_id>``; → push_id → the part ids, in reply order."""
    parts: dict[str, list[str]] = {}
    for info in _xml_root(body).iter("message_info"):
        push_id = (info.findtext("push_id") or "").strip()
        sms_id = (info.findtext("sms_id") or "").strip()
        if push_id and sms_id:
            parts.setdefault(push_id, []).append(sms_id)
    return parts


def _int_or_none(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() else None


def parse_v1_statuses(body: bytes) -> tuple[int, str, list[DeliveryReport]]:
    """``operation=status`` reply (002 lines 998-1097) → code, text, reports.

    One id: the fields sit directly in ``<reply>`` (l. 1040); several: one ``<sms>`` each
    (l. 1069). Both forms are read whatever the number of ids asked. An id the provider does
    not know comes back as ``<error>no such message …</error><sms_id>`` without ``<status>``
    (l. 1090-1095); there is no code for it, so it is recognised by the missing ``<status>``
    element (an *empty* ``<status>`` is the "no status yet" of l. 2051) and left out.
    ``<error>`` is taken as the delivery error code where it is a number.
    """
    root = _xml_root(body)
    result = _v1_result(root)
    if result is not None and result[0] != 0:
        return result[0], result[1], []
    entries = root.findall("sms")
    if not entries and root.find("sms_id") is not None:
        entries = [root]
    reports: list[DeliveryReport] = []
    for entry in entries:
        sms_id = (entry.findtext("sms_id") or "").strip()
        status = entry.find("status")
        if not sms_id or status is None:
            continue
        raw = (status.text or "").strip()
        reports.append(DeliveryReport(
            sms_id, map_status(raw), raw, _int_or_none(entry.findtext("error")),
            (entry.findtext("last_status_change_date") or "").strip(),
        ))
    return 0, "", reports


def _msk(value: str | None) -> datetime | None:
    try:
        return datetime.strptime((value or "").strip(), V1_DATE).replace(tzinfo=MSK)
    except ValueError:
        return None


def parse_v1_incoming(body: bytes, source: str) -> tuple[int, str, list[tuple[InboundMessage,
                                                                          datetime | None]]]:
    """``operation=incoming`` reply (002 lines 1948-1970) → code, text, (message, its
    ``delivery_date``). ``raw`` is the ``<message>`` record as JSON."""
    root = _xml_root(body)
    result = _v1_result(root)
    if result is not None and result[0] != 0:
        return result[0], result[1], []
    found: list[tuple[InboundMessage, datetime | None]] = []
    for record in root.iter("message"):
        fields = {child.tag: child.text or "" for child in record}
        phone = "".join(ch for ch in fields.get("from_phone", "") if ch.isdigit())
        sms_id = fields.get("sms_id", "").strip() or None
        message = InboundMessage(
            source=source, kind="mo", sms_id=sms_id, phone=phone, text=fields.get("text", ""),
            recipient=None, raw=json.dumps(fields, ensure_ascii=False).encode("utf-8"),
            charset="utf-8",
        )
        found.append((message, _msk(fields.get("delivery_date")) or _msk(fields.get("send_date"))))
    return 0, "", found


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    unique = list(dict.fromkeys(i for i in items if i))
    return [unique[i:i + size] for i in range(0, len(unique), size)]


def push_id_for(sms: OutboundSms) -> str:
    """``with_push_id`` (002 line 833): the id must not contain ':'; it precedes the phone,
    which is separated from the text by a space, so whitespace goes too."""
    return "".join(ch for ch in sms.idempotency_key if ch != ":" and not ch.isspace())


def _delimiter(lines: list[str]) -> str | None:
    """``delimiter`` (002 line 829) is needed only when a text holds a line break (the default
    separator). The chosen token must split the joined value exactly at the separators."""
    if not any("\n" in line or "\r" in line for line in lines):
        return None
    token = "|~|"
    while "".join(lines).count(token) or token.join(lines).count(token) != len(lines) - 1:
        token += "~|"
    return token


class SmsTrafficV1Upstream(HttpUpstream):
    """HTTP API v1: ``POST /multi.php`` form, XML reply (002 line 794).

    No idempotency key exists in v1: after an ambiguous failure (5xx, timeout after the
    request was written) a retry may send a second copy. Use v2 where that matters.
    """

    kind: ClassVar[str] = "smstraffic_v1"
    idempotent: ClassVar[bool] = False
    required: ClassVar[tuple[str, ...]] = ("login", "password")
    # want_sms_ids allows at most 6000 messages per request (002 line 830); a smaller batch
    # keeps one failed request cheap.
    BATCH: ClassVar[int] = 200

    def __init__(self, name: str, settings: UpstreamSettings, client: httpx.AsyncClient) -> None:
        super().__init__(name, settings, client)
        # The operator's ``batch_size`` caps it; 1 sends one message per request.
        self.max_batch: int = min(self.BATCH, settings.batch_size or self.BATCH)

    def _auth(self) -> list[tuple[str, str]]:
        assert self.settings.login and self.settings.password
        return [("login", self.settings.login),
                ("password", self.settings.password.get_secret_value())]

    @staticmethod
    def _options(sms: OutboundSms) -> list[tuple[str, str]]:
        params = [("max_parts", str(sms.max_parts))]
        if sms.originator:
            params.append(("originator", sms.originator))
        if sms.flash:
            params.append(("flash", "1"))
        if sms.validity:
            params.append(("timeout", str(sms.validity)))
        if sms.two_byte_concat:
            params.append(("two_byte_concat", "1"))
        return params

    def form(self, sms: OutboundSms) -> bytes:
        # rus=5: UTF-8 text; rus=0: windows-1251 text the provider transliterates (we already
        # did, so the text is Latin). Parameter table, 002 line 794.
        charset = "cp1251" if sms.transliterate else "utf-8"
        params: list[tuple[str, str]] = [
            *self._auth(),
            ("phones", sms.phone),
            ("message", sms.text),
            ("rus", "0" if sms.transliterate else "5"),
            ("want_sms_ids", "1"),
            *self._options(sms),
        ]
        return urlencode(params, encoding=charset, errors="replace").encode("ascii")

    def batch_form(self, batch: Sequence[OutboundSms]) -> bytes:
        """One request for messages that share every per-request option (002 lines 826-833):
        ``individual_messages=1``, ``with_push_id=1``, ``want_sms_ids=1``, ``phones`` holding
        ``push_id:phone text`` lines, no ``message``."""
        first = batch[0]
        charset = "cp1251" if first.transliterate else "utf-8"
        lines = [f"{push_id_for(sms)}:{sms.phone} {sms.text}" for sms in batch]
        delimiter = _delimiter(lines)
        params: list[tuple[str, str]] = [
            *self._auth(),
            ("phones", (delimiter or "\n").join(lines)),
            ("rus", "0" if first.transliterate else "5"),
            ("want_sms_ids", "1"),
            ("individual_messages", "1"),
            ("with_push_id", "1"),
        ]
        if delimiter is not None:
            params.append(("delimiter", delimiter))
        params.extend(self._options(first))
        return urlencode(params, encoding=charset, errors="replace").encode("ascii")

    async def _post(self, attempt: int, params: list[tuple[str, str]] | bytes) -> bytes:
        content = params if isinstance(params, bytes) else urlencode(params).encode("ascii")
        response = await self.request(
            attempt,
            "POST",
            "/multi.php",
            content=content,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        return response.content

    def _malformed(self, exc: Exception, *, ambiguous: bool) -> TransientUpstreamError:
        return TransientUpstreamError(f"{self.name}: {exc}", "malformed", ambiguous=ambiguous)

    async def send(self, sms: OutboundSms) -> SendReceipt:
        body = await self._post(sms.attempt, self.form(sms))
        try:
            code, description, infos = parse_v1_reply(body)
        except ValueError as exc:
            raise self._malformed(exc, ambiguous=True) from exc
        if code != 0:
            raise error_for_code(code, description, upstream=self.name)
        ids = tuple(sms_id for _, sms_id in infos if sms_id)
        return SendReceipt(ids, note=description)

    # -- BatchSending ---------------------------------------------------------------------

    async def send_batch(self, batch: Sequence[OutboundSms]) -> list[SendReceipt | UpstreamError]:
        """Messages sharing the per-request options (charset, originator, flash, max_parts,
        timeout, two_byte_concat) go in one ``individual_messages`` request; the part ids
        come back per ``push_id`` (002 lines 950-995). With one request, its failure is
        raised; with several, a failed request fails its own messages only."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, sms in enumerate(batch):
            key = (sms.transliterate, sms.originator or None, sms.flash, sms.max_parts,
                   sms.validity or None, sms.two_byte_concat)
            groups.setdefault(key, []).append(index)
        results: list[SendReceipt | UpstreamError | None] = [None] * len(batch)
        for indexes in groups.values():
            group = [batch[i] for i in indexes]
            try:
                outcome = await self._send_group(group)
            except UpstreamError as exc:
                if len(groups) == 1:
                    raise
                outcome = [exc] * len(group)
            for index, result in zip(indexes, outcome, strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    async def _send_group(self, group: list[OutboundSms]) -> list[SendReceipt | UpstreamError]:
        if len(group) == 1:
            return [await self.send(group[0])]
        body = await self._post(max(sms.attempt for sms in group), self.batch_form(group))
        try:
            code, description, _ = parse_v1_reply(body)
            parts = parse_v1_push_ids(body)
        except ValueError as exc:
            raise self._malformed(exc, ambiguous=True) from exc
        if code in PER_MESSAGE_CODES:
            # Nothing was sent (the code's own text says so): one request per message
            # finds the culprit without guessing it from the description.
            results: list[SendReceipt | UpstreamError] = []
            for sms in group:
                try:
                    results.append(await self.send(sms))
                except UpstreamError as exc:
                    results.append(exc)
            return results
        if code != 0:
            raise error_for_code(code, description, upstream=self.name)
        receipts: list[SendReceipt | UpstreamError] = []
        for sms in group:
            ids = parts.get(push_id_for(sms), [])
            # queued, but its ids missing from the reply: still accepted, never resent
            receipts.append(SendReceipt(tuple(ids), note=description if ids else
                                        f"{description}; no sms_id for this message"))
        return receipts

    # -- StatusPolling --------------------------------------------------------------------

    async def poll_statuses(self, provider_ids: Sequence[str]) -> list[DeliveryReport]:
        """``operation=status`` with comma-separated ``sms_id`` (002 line 998). A whole-request
        434 ("no such message", the answer for ids older than two days, l. 1020) means none of
        the ids is known: an empty list."""
        reports: list[DeliveryReport] = []
        for chunk in _chunks(provider_ids, STATUS_CHUNK):
            body = await self._post(1, [*self._auth(), ("operation", "status"),
                                        ("sms_id", ",".join(chunk))])
            try:
                code, description, found = parse_v1_statuses(body)
            except ValueError as exc:
                raise self._malformed(exc, ambiguous=False) from exc
            if code == NO_SUCH_MESSAGE:
                continue
            if code != 0:
                raise error_for_code(code, description, upstream=self.name)
            reports.extend(found)
        return reports

    # -- set_checked ----------------------------------------------------------------------

    async def set_checked(self, sms_ids: Sequence[str]) -> list[str]:
        """``operation=set_checked`` (002 line 1136; idempotent, ≤ 5000 ids per request):
        the ids the provider marked ``Checked`` (``<sms_ids><sms_id>``, l. 1183)."""
        done: list[str] = []
        for chunk in _chunks(sms_ids, CHECKED_CHUNK):
            body = await self._post(1, [*self._auth(), ("operation", "set_checked"),
                                        ("sms_id", ",".join(chunk))])
            try:
                root = _xml_root(body)
                result = _v1_result(root)
                if result is None:
                    raise ValueError("reply without result/code")
            except ValueError as exc:
                raise self._malformed(exc, ambiguous=False) from exc
            if result[0] != 0:
                raise error_for_code(result[0], result[1], upstream=self.name)
            done.extend((e.text or "").strip() for e in root.iter("sms_id") if e.text)
        return done

    # -- balance --------------------------------------------------------------------------

    async def balance(self) -> Decimal:
        """``operation=account`` (002 line 1209): ``<reply><account>10025</account>``."""
        body = await self._post(1, [*self._auth(), ("operation", "account")])
        try:
            root = _xml_root(body)
            result = _v1_result(root)
            if result is not None and result[0] != 0:
                raise error_for_code(result[0], result[1], upstream=self.name)
            return Decimal((root.findtext("account") or "").strip())
        except (ValueError, InvalidOperation) as exc:
            raise self._malformed(exc, ambiguous=False) from exc

    # -- InboundPolling -------------------------------------------------------------------

    async def poll_inbound(self, cursor: str | None) -> tuple[list[InboundMessage], str | None]:
        """``operation=incoming`` (002 line 1931) with ``from_date`` (UTC+3), ``want_sms_ids=1``
        and ``count``.

        The cursor is the newest ``delivery_date`` seen ("ГГГГ-ММ-ДД ЧЧ:ММ:СС", UTC+3). The
        next poll asks from INBOUND_OVERLAP before it, so messages listed late or sharing the
        second are read again rather than lost; the pipeline drops repeats by ``sms_id``. With
        no cursor the poll starts two days back, the provider's whole retention (l. 1972).
        The cursor never moves back, and it survives a restart in the store.
        """
        newest = _msk(cursor)
        if newest is None:
            since = datetime.now(MSK) - INBOUND_KEEP
        else:
            since = newest - INBOUND_OVERLAP
        body = await self._post(1, [
            *self._auth(), ("operation", "incoming"), ("from_date", since.strftime(V1_DATE)),
            ("want_sms_ids", "1"), ("count", str(INBOUND_PAGE)),
        ])
        try:
            code, description, found = parse_v1_incoming(body, self.name)
        except ValueError as exc:
            raise self._malformed(exc, ambiguous=False) from exc
        if code != 0:
            raise error_for_code(code, description, upstream=self.name)
        dates = [at for _, at in found if at is not None]
        if newest is not None:
            dates.append(newest)
        new_cursor = max(dates).strftime(V1_DATE) if dates else cursor
        return [message for message, _ in found], new_cursor


class SmsTrafficV2Upstream(HttpUpstream):
    """HTTP API v2: ``POST /v2/send`` JSON with ``Authorization: Bearer`` (002 line 105).

    ``restrictiveId`` (≤ 36 characters) makes the provider refuse the same request again
    within an hour, so the message's idempotency key is sent as it: a retry after an
    ambiguous failure cannot send twice.

    No BatchSending: ``restrictiveId`` belongs to the whole request, so a batch retried after
    a partial change (one message dropped or added) would be a new request and could send its
    messages twice. One message per request keeps retries safe.
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

    def _headers(self) -> dict[str, str]:
        assert self.settings.api_key is not None
        return {"Authorization": f"Bearer {self.settings.api_key.get_secret_value()}"}

    async def send(self, sms: OutboundSms) -> SendReceipt:
        response = await self.request(
            sms.attempt,
            "POST",
            "/v2/send",
            json=self.body(sms),
            headers=self._headers(),
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

    async def _call(self, path: str, payload: Any) -> Any:
        """A v2 call that is not a send: POST JSON, ``{"success", "error", "data"}`` back
        (002 lines 117-119 and 238-256). Nothing is sent by it, so nothing is ambiguous."""
        response = await self.request(1, "POST", path, json=payload, headers=self._headers())
        try:
            reply = response.json()
            success = reply["success"]
            if not success:
                error = reply.get("error") or {}
                code = int(error.get("code", 0) or 0)
                raise error_for_code(code, str(error.get("message", "")), upstream=self.name)
            return reply.get("data")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TransientUpstreamError(f"{self.name}: malformed JSON reply",
                                         "malformed") from exc

    async def balance(self) -> Decimal:
        """``GET /v2/account`` (002 line 583): ``data.account``, a string, may be negative."""
        response = await self.request(1, "GET", "/v2/account", headers=self._headers())
        try:
            reply = response.json()
            if not reply["success"]:
                error = reply.get("error") or {}
                raise error_for_code(int(error.get("code", 0) or 0),
                                     str(error.get("message", "")), upstream=self.name)
            return Decimal(str(reply["data"]["account"]).strip())
        except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
            raise TransientUpstreamError(f"{self.name}: malformed balance reply",
                                         "malformed") from exc

    async def poll_statuses(self, provider_ids: Sequence[str]) -> list[DeliveryReport]:
        """``POST /v2/statuses/list`` with ``ids`` and ``extendedInfo`` (002 line 306);
        ``data[]`` holds ``smsId``, ``status``, ``deliveryDate`` and, with ``extendedInfo``,
        ``statusExtended.code`` (the operator's error code). Unknown ids are not listed."""
        reports: list[DeliveryReport] = []
        for chunk in _chunks(provider_ids, STATUS_CHUNK):
            data = await self._call("/v2/statuses/list", {"ids": chunk, "extendedInfo": True})
            if not isinstance(data, list):
                raise TransientUpstreamError(f"{self.name}: statuses without data", "malformed")
            for item in data:
                if not isinstance(item, dict) or not item.get("smsId"):
                    continue
                raw = str(item.get("status") or "").strip()
                extended = item.get("statusExtended")
                code = extended.get("code") if isinstance(extended, dict) else None
                reports.append(DeliveryReport(
                    str(item["smsId"]), map_status(raw), raw,
                    code if isinstance(code, int) and not isinstance(code, bool) else None,
                    str(item.get("deliveryDate") or item.get("sendDate") or ""),
                ))
        return reports

    async def set_checked(self, sms_ids: Sequence[str]) -> list[str]:
        """``POST /v2/statuses/checked`` with a JSON array of ids (002 line 501): the ids in
        ``data.updated``; those in ``data.failed`` (unknown, not ours) are left out."""
        done: list[str] = []
        for chunk in _chunks(sms_ids, CHECKED_CHUNK):
            data = await self._call("/v2/statuses/checked", chunk)
            updated = data.get("updated") if isinstance(data, dict) else None
            if not isinstance(updated, list):
                raise TransientUpstreamError(f"{self.name}: reply without data.updated",
                                             "malformed")
            done.extend(str(i) for i in updated)
        return done

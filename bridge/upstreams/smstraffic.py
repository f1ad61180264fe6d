"""SMS Traffic: HTTP API v1 (``/multi.php``, XML) and v2 (``/v2/send``, JSON + Bearer key).

Spec: ``002_e7d2ff51d5c777f0.txt`` — HTTP API v1 (line 794), HTTP API v2 (line 105), API error
codes (line 1988), backup host (line 88), statuses (line 2048).

Besides sending, v1 offers status polling (``operation=status``, line 998), batches
(``individual_messages=1`` with ``with_push_id=1``, lines 826-979), inbound polling
(``operation=incoming``, line 1931) and ``operation=set_checked`` (line 1136); v2 offers
``/v2/statuses/list`` (line 306) and ``/v2/statuses/checked`` (line 501).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
from bridge.parsing.text import fits_latin_mode
from bridge.settings import UpstreamSettings
from bridge.upstreams.base import HttpUpstream, OutboundSms, SendReceipt

log = logging.getLogger(__name__)

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

# operation=incoming (line 1931): messages are kept for two days (line 1972). A poll re-reads
# from INBOUND_OVERLAP before the newest delivery_date seen, so that a message the provider
# lists up to 30 minutes after its date is still fetched (every date seen so far is at most
# the time it was seen, before the late message became visible; 5 minutes spare for clocks).
# The ids listed in that span are kept in the cursor, so a message is handed out once.
INBOUND_KEEP = timedelta(days=2)
INBOUND_OVERLAP = timedelta(minutes=35)
INBOUND_PAGE = 1000
# Requests per poll at most; a longer backlog resumes where the poll stopped.
INBOUND_PAGES = 10
# Ids kept in the cursor at most (the newest): a bound on its size; beyond it the store's
# deduplication by sms_id still records a repeat once.
INBOUND_SEEN_MAX = 5000

# v2 restrictiveId: "Уникальный идентификатор, предотвращающий повторную отправку в течение
# часа" (002 line 163). A retry relies on it only within RESTRICTIVE_SAFE of the first attempt
# that may have reached the provider (the margin covers clocks and the request's own time);
# later, or when that time is unknown (a restart, another instance), the retry first looks
# the message up by trackingData.
RESTRICTIVE_WINDOW = 3600.0
RESTRICTIVE_SAFE = RESTRICTIVE_WINDOW - 300.0
# restrictiveId takes at most 36 characters (line 163), trackingData 40 (line 160).
MARK_LENGTH = 36
# How long an upstream remembers a message's earlier attempts (its retries end long before).
TRIED_KEEP = 2 * 86400.0


def error_for_code(code: int, text: str, *, upstream: str) -> UpstreamError:
    message = f"{upstream}: {text}".strip()
    if code in TRANSIENT_CODES:
        return TransientUpstreamError(message, code)
    return PermanentUpstreamError(message, code)


def _xml_root(body: bytes) -> Element:
    """defusedxml (no entities, no external resources). The spec's examples differ in
    declaration and encoding (``set_checked`` declares windows-1251, line 1179; the single
    status reply has no declaration, line 1040): bytes are handed over as they are, so the parser
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
    differ in declaration and encoding (see ``_xml_root``), so only the elements are used.
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


def inbound_key(message: InboundMessage) -> str:
    """What tells inbound messages apart: the provider's ``sms_id``; without one (a reply
    without ``want_sms_ids``), a digest of the whole record."""
    if message.sms_id:
        return message.sms_id
    return "raw:" + hashlib.sha256(message.raw).hexdigest()[:32]


@dataclass
class InboundCursor:
    """The state ``operation=incoming`` polling keeps between polls, stored as JSON:
    ``newest`` delivery_date seen, the ``seen`` ids with their dates (those listed since
    INBOUND_OVERLAP before ``newest``, at most INBOUND_SEEN_MAX), and ``resume``, the date
    an unfinished backlog goes on from. Dates are "ГГГГ-ММ-ДД ЧЧ:ММ:СС" in UTC+3 as on the
    wire. A cursor of an earlier version (a bare date) is read as ``newest``."""

    newest: datetime | None = None
    seen: dict[str, datetime] = field(default_factory=dict)
    resume: datetime | None = None

    @classmethod
    def load(cls, text: str | None) -> InboundCursor:
        if not text:
            return cls()
        if not text.startswith("{"):
            return cls(_msk(text))
        try:
            data = json.loads(text)
            seen = {str(key): at for key, value in dict(data.get("seen") or {}).items()
                    if (at := _msk(str(value))) is not None}
            return cls(_msk(data.get("newest")), seen, _msk(data.get("resume")))
        except (ValueError, TypeError, AttributeError):
            # Unreadable: start over from the provider's whole retention; the store's
            # deduplication by sms_id records each message once.
            log.warning("unreadable inbound cursor ignored")
            return cls()

    def dump(self) -> str:
        def day(at: datetime | None) -> str | None:
            return at.astimezone(MSK).strftime(V1_DATE) if at is not None else None

        return json.dumps({"newest": day(self.newest), "resume": day(self.resume),
                           "seen": {key: day(at) for key, at in sorted(self.seen.items())}},
                          separators=(",", ":"), sort_keys=True)


# The charset of each ``rus`` value (002 line 811-813).
RUS_CHARSET = {"0": "cp1251", "5": "utf-8"}


def rus_for(text: str) -> str:
    """``rus`` for a text (parameter table, 002 lines 811-813). ``rus=0`` is windows-1251 sent
    as a Latin SMS, 160/153 per part: only for text made of the ASCII characters of GSM 03.38
    (``fits_latin_mode``; windows-1251 has no é, ü, Δ, and the provider would transliterate
    Cyrillic). Anything else goes ``rus=5`` (UTF-8), 70/67 per part by the stricter reading
    of "если сообщение состоит исключительно из латинских символов, максимальное количество
    символов не изменяется" — the count ``count_segments`` gives, so the bridge records the
    parts the provider bills. A transliterated text (account ``encoding = "transliterate"``)
    is Latin already and goes ``rus=0`` unless a character survived that Latin mode would lose.
    """
    return "0" if fits_latin_mode(text) else "5"


class SmsTrafficV1Upstream(HttpUpstream):
    """HTTP API v1: ``POST /multi.php`` form, XML reply (002 line 794).

    No idempotency key exists in v1, and no lookup by a client id: after an ambiguous failure
    (5xx, timeout after the request was written) or a crash mid-request, the account's
    ``ambiguous`` policy decides whether the SMS is sent again (at most one extra copy) or
    held (none). Use v2 where that matters.
    """

    kind: ClassVar[str] = "smstraffic_v1"
    idempotent: ClassVar[bool] = False
    required: ClassVar[tuple[str, ...]] = ("login", "password")
    # want_sms_ids allows at most 6000 messages per request (002 line 830); a smaller batch
    # keeps one failed request cheap.
    BATCH: ClassVar[int] = 200
    # ``count`` of one operation=incoming request (002 line 1941).
    inbound_page: ClassVar[int] = INBOUND_PAGE

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
        rus = rus_for(sms.text)
        params: list[tuple[str, str]] = [
            *self._auth(),
            ("phones", sms.phone),
            ("message", sms.text),
            ("rus", rus),
            ("want_sms_ids", "1"),
            *self._options(sms),
        ]
        return urlencode(params, encoding=RUS_CHARSET[rus], errors="replace").encode("ascii")

    def batch_form(self, batch: Sequence[OutboundSms]) -> bytes:
        """One request for messages that share every per-request option (002 lines 826-833):
        ``individual_messages=1``, ``with_push_id=1``, ``want_sms_ids=1``, ``phones`` holding
        ``push_id:phone text`` lines, no ``message``."""
        first = batch[0]
        rus = rus_for(first.text)  # the same for the whole batch (send_batch groups by it)
        lines = [f"{push_id_for(sms)}:{sms.phone} {sms.text}" for sms in batch]
        delimiter = _delimiter(lines)
        params: list[tuple[str, str]] = [
            *self._auth(),
            ("phones", (delimiter or "\n").join(lines)),
            ("rus", rus),
            ("want_sms_ids", "1"),
            ("individual_messages", "1"),
            ("with_push_id", "1"),
        ]
        if delimiter is not None:
            params.append(("delimiter", delimiter))
        params.extend(self._options(first))
        return urlencode(params, encoding=RUS_CHARSET[rus], errors="replace").encode("ascii")

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
        body = await self._post(sms.host_turn, self.form(sms))
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
        """Messages sharing the per-request options (``rus``, originator, flash, max_parts,
        timeout, two_byte_concat) go in one ``individual_messages`` request; the part ids
        come back per ``push_id`` (002 lines 950-995). With one request, its failure is
        raised; with several, a failed request fails its own messages only."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, sms in enumerate(batch):
            key = (rus_for(sms.text), sms.originator or None, sms.flash, sms.max_parts,
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
        body = await self._post(max(sms.host_turn for sms in group), self.batch_form(group))
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

    async def _incoming_page(self, since: datetime) -> list[tuple[InboundMessage,
                                                                  datetime | None]]:
        body = await self._post(1, [
            *self._auth(), ("operation", "incoming"), ("from_date", since.strftime(V1_DATE)),
            ("want_sms_ids", "1"), ("count", str(self.inbound_page)),
        ])
        try:
            code, description, found = parse_v1_incoming(body, self.name)
        except ValueError as exc:
            raise self._malformed(exc, ambiguous=False) from exc
        if code != 0:
            raise error_for_code(code, description, upstream=self.name)
        return found

    async def poll_inbound(self, cursor: str | None) -> tuple[list[InboundMessage], str | None]:
        """``operation=incoming`` (002 line 1931) with ``from_date`` (UTC+3), ``want_sms_ids=1``
        and ``count``.

        Each poll reads from INBOUND_OVERLAP (35 min) before the newest ``delivery_date`` seen,
        so a message the provider lists late, dated before messages already fetched, is still
        read; with no cursor it starts two days back, the provider's whole retention
        (l. 1972). The cursor (:class:`InboundCursor`) keeps that date and the ids listed
        since INBOUND_OVERLAP before it: a message is handed out once however often it is
        listed. A full page (``count`` messages, oldest first as in the example, l. 1948) is
        followed by one from its last date, up to INBOUND_PAGES per poll; the next poll
        resumes a longer backlog. The cursor survives a restart in the store.
        """
        state = InboundCursor.load(cursor)
        now = datetime.now(MSK)
        if state.resume is not None:
            since = state.resume
        elif state.newest is not None:
            since = state.newest - INBOUND_OVERLAP
        else:
            since = now - INBOUND_KEEP
        listed: dict[str, tuple[InboundMessage, datetime | None]] = {}
        resume: datetime | None = since
        for _ in range(INBOUND_PAGES):
            page = await self._incoming_page(since)
            for message, at in page:
                listed.setdefault(inbound_key(message), (message, at))
            if len(page) < self.inbound_page:
                resume = None
                break
            last = max((at for _, at in page if at is not None), default=since)
            if last <= since:
                # A whole page within one second: from_date ("ГГГГ-ММ-ДД ЧЧ:ММ:СС") has no
                # finer unit, so the rest of that second cannot be listed.
                log.warning("inbound page of one second skipped past",
                            extra={"upstream": self.name, "from_date": since.strftime(V1_DATE)})
                last = since + timedelta(seconds=1)
            since = resume = last
        fresh = [message for key, (message, _) in listed.items() if key not in state.seen]
        dates = [at for _, at in listed.values() if at is not None]
        if state.newest is not None:
            dates.append(state.newest)
        newest = max(dates) if dates else None
        # An undated record is kept as if dated now, for as long as the overlap re-reads it.
        seen = {**state.seen, **{key: at or now for key, (_, at) in listed.items()}}
        if newest is not None:
            seen = {key: at for key, at in seen.items() if at >= newest - INBOUND_OVERLAP}
        if len(seen) > INBOUND_SEEN_MAX:
            seen = dict(sorted(seen.items(), key=lambda item: item[1])[-INBOUND_SEEN_MAX:])
        new_cursor = InboundCursor(newest, seen, resume).dump()
        return fresh, (new_cursor if newest is not None or resume is not None or seen
                       else cursor)


def request_mark(sms: OutboundSms) -> str:
    """The message's ``restrictiveId`` and ``trackingData`` (002 lines 160-163): its
    idempotency key, constant across retries; a key longer than those fields allow is
    replaced by a digest rather than cut, so that two messages never share a mark."""
    key = sms.idempotency_key
    if len(key) <= MARK_LENGTH:
        return key
    return "h" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:MARK_LENGTH - 1]


@dataclass
class _Tried:
    """What this upstream saw of a message's earlier attempts."""

    since: float  # clock() at the first of them
    # clock() when the first attempt that may have reached the provider began; None while
    # every attempt surely sent nothing (refused connection, HTTP 429, an error answer)
    first: float | None = None
    refused: bool = False  # answered 105: an earlier attempt was accepted, never send again


@dataclass
class _Lookup:
    ids: tuple[str, ...] = ()
    error: UpstreamError | None = None
    notes: list[str] = field(default_factory=list)


class SmsTrafficV2Upstream(HttpUpstream):
    """HTTP API v2: ``POST /v2/send`` JSON with ``Authorization: Bearer`` (002 line 105).

    Every request carries the message's mark (:func:`request_mark`) as ``restrictiveId``
    and as the destination's ``trackingData``. ``restrictiveId`` makes the provider refuse
    the same request for an hour (code 105, line 163); ``trackingData`` finds the message in
    ``/v2/statuses/list`` (line 314), which is how a retry learns the provider's id of an SMS
    whose answer was lost:

    * a resend (``maybe_sent``: an earlier request may have been taken) within the hour sends
      again; a 105 answer means an earlier request was accepted, and the ids are looked up
      by ``trackingData`` — never sent again;
    * a resend later than that, or one whose earlier request this process did not see (a
      restart, another instance), looks up first and sends only if nothing is listed.
    * while ``maybe_sent`` is 0 nothing earlier can have been taken: no lookup, and a 105
      is an error like any other.

    No BatchSending: ``restrictiveId`` belongs to the whole request, so a batch retried after
    a partial change (one message dropped or added) would be a new request and could send its
    messages twice. One message per request keeps retries safe.
    """

    kind: ClassVar[str] = "smstraffic_v2"
    idempotent: ClassVar[bool] = True
    finds_earlier_sends: ClassVar[bool] = True
    required: ClassVar[tuple[str, ...]] = ("api_key",)
    # Seconds after a first attempt during which a retry relies on restrictiveId.
    restrictive_safe: ClassVar[float] = RESTRICTIVE_SAFE

    def __init__(self, name: str, settings: UpstreamSettings, client: httpx.AsyncClient) -> None:
        super().__init__(name, settings, client)
        self.clock: Callable[[], float] = time.monotonic
        # mark -> earlier attempts, in insertion order (so the oldest are pruned first).
        self._tried: dict[str, _Tried] = {}

    def body(self, sms: OutboundSms) -> dict[str, Any]:
        channel: dict[str, Any] = {
            "message": sms.text,
            "maxParts": sms.max_parts,
            "transliterate": sms.transliterate,
        }
        if sms.validity:
            # "timeout" is in the request example (002 line 201), not in the parameter table
            channel["timeout"] = sms.validity
        mark = request_mark(sms)
        body: dict[str, Any] = {
            "channels": {"sms": channel},
            "destinations": [{"to": int(sms.phone), "trackingData": mark}],
            "restrictiveId": mark,
        }
        if sms.originator:
            body["originator"] = sms.originator
        return body

    def _headers(self) -> dict[str, str]:
        assert self.settings.api_key is not None
        return {"Authorization": f"Bearer {self.settings.api_key.get_secret_value()}"}

    def _remember(self, mark: str, started: float, *, reached: bool,
                  refused: bool = False) -> None:
        """Note a failed attempt begun at ``started``: whether it may have ``reached`` the
        provider (an ambiguous failure), whether it was ``refused`` as a duplicate."""
        tried = self._tried.setdefault(mark, _Tried(started))
        if reached and tried.first is None:
            tried.first = started
        tried.refused = tried.refused or refused
        while self._tried:  # prune from the oldest
            oldest = next(iter(self._tried))
            if self._tried[oldest].since >= started - TRIED_KEEP:
                break
            del self._tried[oldest]

    def _must_look_up(self, sms: OutboundSms, tried: _Tried | None) -> bool:
        """Whether the provider may take this request as new although an earlier attempt
        was accepted: its restrictiveId window may be over, or this process cannot tell."""
        if sms.maybe_sent == 0:
            return False  # no earlier request can have been taken
        if tried is None or tried.refused or tried.first is None:
            # The doubt comes from a request this process did not see (a restart, another
            # instance), or one was accepted already: its time is unknown, so ask.
            return True
        return self.clock() - tried.first >= self.restrictive_safe

    async def send(self, sms: OutboundSms) -> SendReceipt:
        mark = request_mark(sms)
        tried = self._tried.get(mark)
        if self._must_look_up(sms, tried):
            # The provider may take this request as new: find an earlier copy first.
            found = await self._lookup(mark)
            if isinstance(found.error, TransientUpstreamError):
                raise found.error  # nothing was sent; the next attempt looks up again
            if found.ids:
                self._tried.pop(mark, None)
                return SendReceipt(found.ids, note="accepted by an earlier attempt; found by "
                                                   "trackingData")
            if tried is not None and tried.refused:
                return await self._accepted_earlier(mark, tried.since, found)
            # Nothing listed: send. (A lookup this key may not make, HTTP 403, leaves
            # restrictiveId as the only guard, as it is within the hour.)
        started = self.clock()
        try:
            response = await self.request(
                sms.host_turn,
                "POST",
                "/v2/send",
                json=self.body(sms),
                headers=self._headers(),
            )
        except TransientUpstreamError as exc:
            self._remember(mark, started, reached=exc.ambiguous)
            raise
        try:
            reply = response.json()
            success = reply["success"]
        except (ValueError, KeyError, TypeError) as exc:
            self._remember(mark, started, reached=True)
            raise TransientUpstreamError(f"{self.name}: malformed JSON reply", "malformed",
                                         ambiguous=True) from exc
        if not success:
            error = reply.get("error") or {}
            code = int(error.get("code", 0) or 0)
            text = str(error.get("message", ""))
            # 105 means "restrictiveId duplicate" in the code table (line 1988) and "Invalid
            # request format" in an example (line 296-306). On a resend of a well-formed
            # request that may have been taken before it can only be the former: an earlier
            # request was accepted. Its ids are looked up by trackingData; it is never sent
            # again.
            if code == 105 and sms.maybe_sent > 0:
                return await self._accepted_earlier(mark, started)
            self._remember(mark, started, reached=False)  # refused: nothing was sent
            raise error_for_code(code, text, upstream=self.name)
        ids: list[str] = []
        for destination in reply.get("destinations") or []:
            error = destination.get("error")
            if error:
                raise error_for_code(int(error.get("code", 0) or 0),
                                     str(error.get("message", "")), upstream=self.name)
            if destination.get("id"):
                ids.append(str(destination["id"]))
        self._tried.pop(mark, None)
        return SendReceipt(tuple(ids))

    async def _accepted_earlier(self, mark: str, started: float,
                                found: _Lookup | None = None) -> SendReceipt:
        """After a 105 on a retry: the ids of the accepted copy. A lookup that fails for now
        is retried (the next attempt looks up without sending); one that lists nothing, or
        that this key may not make, leaves the SMS sent without an id."""
        if found is None:
            found = await self._lookup(mark)
        if isinstance(found.error, TransientUpstreamError):
            self._remember(mark, started, reached=True, refused=True)
            raise TransientUpstreamError(
                f"{self.name}: accepted by an earlier attempt (restrictiveId); its id is not "
                f"known yet: {found.error.text}", found.error.code,
                retry_after=found.error.retry_after)
        self._tried.pop(mark, None)
        if not found.ids and found.error is None:
            found.notes.append("not listed by trackingData, so its id is unknown")
        return SendReceipt(found.ids, note="accepted by an earlier attempt (restrictiveId)"
                           + "".join(f"; {note}" for note in found.notes))

    async def _lookup(self, mark: str) -> _Lookup:
        """The ids of the SMS sent with ``trackingData`` ``mark``: ``POST /v2/statuses/list``
        with ``trackingData`` (002 line 314); each ``data`` item has ``smsId`` and
        ``trackingData`` (line 353). An error is returned, not raised: what it means depends
        on why the lookup was made."""
        try:
            data = await self._call("/v2/statuses/list", {"trackingData": [mark]})
            if not isinstance(data, list):
                raise TransientUpstreamError(f"{self.name}: statuses without data", "malformed")
        except UpstreamError as exc:
            log.warning("lookup by trackingData failed",
                        extra={"upstream": self.name, "error": str(exc)})
            return _Lookup(error=exc, notes=[f"lookup by trackingData failed: {exc.text}"])
        ids = [str(item["smsId"]) for item in data
               if isinstance(item, dict) and item.get("smsId")
               and item.get("trackingData", mark) == mark]
        return _Lookup(tuple(dict.fromkeys(ids)))

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

"""SMS Traffic HTTP API v1: ``POST /multi.php`` form, XML reply.

Spec: ``002_e7d2ff51d5c777f0.txt`` — HTTP API v1 (line 794), API error codes (line 1988),
backup host (line 88), statuses (line 2048).

Besides sending, v1 offers status polling (``operation=status``, line 998), batches
(``individual_messages=1`` with ``with_push_id=1``, lines 826-979), inbound polling
(``operation=incoming``, line 1931) and the balance (``operation=account``, line 1209).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import ClassVar
from urllib.parse import urlencode
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
import httpx
from defusedxml import DefusedXmlException

from bridge.errors import TransientUpstreamError, UpstreamError
from bridge.models import DeliveryReport, InboundMessage
from bridge.parsing.status import map_status
from bridge.parsing.text import fits_latin_mode
from bridge.upstreams._batch import send_grouped
from bridge.upstreams.base import HttpUpstream, OutboundSms, SendReceipt
from bridge.upstreams.config import UpstreamSettings
from bridge.upstreams.smstraffic.common import error_for_code, poll_in_chunks
from bridge.upstreams.smstraffic.settings import SmsTrafficV1Settings

log = logging.getLogger(__name__)

# Codes that blame one line of an ``individual_messages`` request (a text or a phone, 002
# line 1988: 420, 422-432, 437); they come with "no message has been sent". In a batch the
# messages are then sent one per request, so that each gets its own verdict and only the
# faulty one fails.
PER_MESSAGE_CODES = frozenset({420, 422, 423, 424, *range(425, 433), 437})

# v1 dates are "ГГГГ-ММ-ДД ЧЧ:ММ:СС" in UTC+3 (002 lines 1018 and 1941).
MSK = timezone(timedelta(hours=3))
V1_DATE = "%Y-%m-%d %H:%M:%S"

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
    settings: SmsTrafficV1Settings
    idempotent: ClassVar[bool] = False
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
        params = [("max_parts", str(sms.options.max_parts))]
        if sms.options.originator:
            params.append(("originator", sms.options.originator))
        if sms.options.flash:
            params.append(("flash", "1"))
        if sms.options.validity:
            params.append(("timeout", str(sms.options.validity)))
        if sms.options.two_byte_concat:
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
        return SendReceipt(ids)

    # -- BatchSending ---------------------------------------------------------------------

    async def send_batch(self, batch: Sequence[OutboundSms]) -> list[SendReceipt | UpstreamError]:
        """Messages sharing the per-request options (``rus``, originator, flash, max_parts,
        timeout, two_byte_concat) go in one ``individual_messages`` request; the part ids
        come back per ``push_id`` (002 lines 950-995). With one request, its failure is
        raised; with several, a failed request fails its own messages only."""
        return await send_grouped(
            batch, self._send_group, upstream=self.name,
            key=lambda sms: (rus_for(sms.text), sms.options.originator or None,
                             sms.options.flash, sms.options.max_parts,
                             sms.options.validity or None, sms.options.two_byte_concat))

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
            # queued, but its ids missing from the reply: still accepted, never resent
            receipts.append(SendReceipt(tuple(parts.get(push_id_for(sms), []))))
        return receipts

    # -- StatusPolling --------------------------------------------------------------------

    async def poll_statuses(self, provider_ids: Sequence[str]) -> list[DeliveryReport]:
        """``operation=status`` with comma-separated ``sms_id`` (002 line 998). A whole-request
        434 ("no such message", the answer for ids older than two days, l. 1020) means none of
        the ids is known: an empty list."""
        async def ask(chunk: list[str]) -> tuple[int, str, list[DeliveryReport]]:
            body = await self._post(1, [*self._auth(), ("operation", "status"),
                                        ("sms_id", ",".join(chunk))])
            try:
                return parse_v1_statuses(body)
            except ValueError as exc:
                raise self._malformed(exc, ambiguous=False) from exc

        return await poll_in_chunks(provider_ids, ask, upstream=self.name)

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

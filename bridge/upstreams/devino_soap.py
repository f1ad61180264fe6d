"""Devino Telecom SOAP 1.2 (``/SmsService.asmx``).

Spec: ``001_600c633d74a81c97.txt`` — faults (line 36), ``GetSessionID`` (line 50, Табл. 1),
``GetBalance`` (line 98, Табл. 2), ``SendMessage`` (line 212, Табл. 4), ``GetMessageState``
(line 352, Табл. 6/7), ``GetIncomingMessages`` (line 491, Табл. 10/11), message states
(line 563, Табл. 16). Requests are UTF-8, at most 10 per second (line 34): every request of
one upstream (session, sends, status and inbound polls, balance) is paced, see
:data:`MIN_REQUEST_GAP`.

Element names: the service is ASP.NET (ASMX), whose XmlSerializer binds a parameter only by
its exact name, case included, and skips any other element — a ``Login`` where ``login`` is
expected leaves the login null and the call fails. The tables and the examples spell some names
differently (Табл. 1 ``Login``, Табл. 2/4 ``SessionID``, Табл. 10 ``sessionId``); the
request examples are what the serializer was generated from, so their names are sent:
``login``/``password`` (lines 65-66), ``sessionID`` (lines 109, 229, 365, 502), ``messageID``
(line 366), ``maxDateUTC``/``minDateUTC`` (lines 503-504), and in ``<message>`` ``Data``,
``DestinationAddresses``/``string``, ``SourceAddress``, ``ReceiptRequested``, ``Validity``
(lines 231-239). (``sessionId`` belongs to ``GetStatistics`` only, line 436, not used.)

``base_url`` is the host (``https://ws.devinotele.com``); the endpoint path is appended.

What the API does not have, and how the bridge copes:

* no client-side message id: a retry after an ambiguous failure may send twice
  (``idempotent = False``);
* no flash SMS, no part limit: ``sms.flash`` and ``sms.max_parts`` are not sent;
* ``SourceAddress`` is mandatory (Табл. 4) and there is no account default: an SMS without an
  originator fails permanently before any request (code ``no_source_address``);
* scheduling (``DelayUntilUtc``) is not used: the bridge's outbox holds a message until its
  time, and ``OutboundSms`` carries no send time;
* inbound messages carry no id (Табл. 11): the id is derived from the record's content, see
  :func:`inbound_id`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import ClassVar
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
import httpx
from defusedxml import DefusedXmlException

from bridge.errors import (
    PermanentUpstreamError,
    SessionFault,
    SoapFault,
    TransientUpstreamError,
    UpstreamError,
)
from bridge.models import DeliveryReport, InboundMessage
from bridge.settings import UpstreamSettings
from bridge.upstreams.base import HttpUpstream, OutboundSms, SendReceipt

NAMESPACE = "http://ws.devinosms.com"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
# Line 26-30: the endpoint is ``/SmsService.asmx`` (the examples write ``/smsservice.asmx``;
# IIS paths are case-insensitive).
PATH = "/SmsService.asmx"

# Line 52: a session id lives 120 minutes. It is renewed 10 minutes early.
SESSION_TTL = 120 * 60.0
SESSION_RENEW_MARGIN = 10 * 60.0
# Line 214: up to 1000 addresses in one SendMessage.
MAX_ADDRESSES = 1000
# Line 34: "Количество запросов 10 запросов/1 сек." Requests start at least 1/9 s apart: ten
# gaps then span 1.11 s, so a request that is up to ~0.1 s slower on its way than the next one
# still cannot put an eleventh request into one second of the provider's count.
MIN_REQUEST_GAP = 1 / 9

# Inbound windows overlap by this much: a message may become visible to GetIncomingMessages
# up to 30 minutes after its CreateDateUtc and still be fetched, with 5 minutes to spare for a
# skew between our clock and the provider's.
INBOUND_OVERLAP = timedelta(minutes=35)
# An inbound cursor remembers at most this many ids (it is stored after every poll).
MAX_SEEN_INBOUND = 5000

_ENVELOPE = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<soap12:Envelope xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
    f'xmlns:soap12="{SOAP12}">'
    "<soap12:Body>"
    '<{method} xmlns="{namespace}">{inner}</{method}>'
    "</soap12:Body>"
    "</soap12:Envelope>"
)


def _el(name: str, value: str) -> str:
    return f"<{name}>{escape(value)}</{name}>"


def envelope(method: str, inner: str) -> bytes:
    """A SOAP 1.2 request as in the spec's examples (lines 58-69, 218-244, 358-370, 496-508).

    ``inner`` is already-escaped XML of the parameters."""
    return _ENVELOPE.format(method=method, namespace=NAMESPACE, inner=inner).encode("utf-8")


def content_type(method: str) -> str:
    """Line 71: ``application/soap+xml; charset=utf-8``; SOAP 1.2 carries the action as a
    media-type parameter (RFC 3902), the WSDL's ``soapAction`` is namespace + method."""
    return f'application/soap+xml; charset=utf-8; action="{NAMESPACE}/{method}"'


def soap_datetime(moment: datetime) -> str:
    """``xsd:dateTime`` in UTC without a zone suffix, as the spec's examples write it
    (``2012-01-18T23:59:00``, Табл. 8 and 10)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def parse_datetime(value: str) -> datetime | None:
    """A dateTime as .NET serialises it (``…T…``, optional fraction, optional ``Z``/offset);
    a value without a zone is UTC (the fields are all ``…Utc``)."""
    text = value.strip()
    if not text:
        return None
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # .NET writes up to 7 fractional digits; fromisoformat takes at most 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# ---------------------------------------------------------------------------- XML replies


def _local(tag: str) -> str:
    """Element name without namespace: replies are matched whatever prefix they use."""
    return tag.rsplit("}", 1)[-1]


def _child(element: Element, name: str) -> Element | None:
    """First child named ``name`` (any namespace, any case: the spec's tables and examples
    spell names differently)."""
    wanted = name.lower()
    for child in element:
        if _local(child.tag).lower() == wanted:
            return child
    return None


def _text(element: Element, name: str) -> str:
    child = _child(element, name)
    return (child.text or "").strip() if child is not None else ""


class SoapReplyError(ValueError):
    """The reply is not a SOAP envelope of the expected shape."""


def parse_reply(body: bytes, method: str) -> Element | SoapFault:
    """The ``<method>Result`` element of a reply, or its fault.

    Parsed with defusedxml (no entities, no external resources); namespace prefixes are
    ignored (``soap:``, ``soap12:`` and ``env:`` are all seen in the wild)."""
    try:
        root: Element = SafeET.fromstring(body.strip())
    except (SafeET.ParseError, DefusedXmlException, ValueError) as exc:
        raise SoapReplyError("malformed XML reply") from exc
    if _local(root.tag) != "Envelope":
        raise SoapReplyError(f"unexpected XML root {_local(root.tag)!r}")
    soap_body = _child(root, "Body")
    if soap_body is None or len(soap_body) == 0:
        raise SoapReplyError("SOAP reply without a body")
    first = soap_body[0]
    if _local(first.tag) == "Fault":
        code = _child(first, "Code")
        value = _text(code, "Value") if code is not None else ""
        subcode = _child(code, "Subcode") if code is not None else None
        reason = _child(first, "Reason")
        reason_text = _text(reason, "Text") if reason is not None else ""
        return SoapFault(
            code=value.rsplit(":", 1)[-1],
            subcode=(_text(subcode, "Value").rsplit(":", 1)[-1] if subcode is not None else ""),
            reason=" ".join(reason_text.split()),
        )
    if _local(first.tag).lower() != f"{method}Response".lower():
        raise SoapReplyError(f"unexpected reply element {_local(first.tag)!r}")
    result = _child(first, f"{method}Result")
    if result is None:
        raise SoapReplyError(f"{method}Result missing")
    return result


def _looks_like_fault(body: bytes) -> bool:
    return b"Fault" in body and b"Envelope" in body


# ---------------------------------------------------------------------------- faults

# The SOAP service carries no error number: the fault code is the only code, and the spec
# says (line 36) that an authentication failure comes as ``soap:Receiver`` just like a server
# failure. Within ``Receiver`` the service's exception message (the fixed texts of the same
# backend's error table, 003 Табл. 10, and of the examples at 001 line 45 / 003 lines 97, 158,
# 243) is therefore what tells them apart. Patterns are matched in order, case-insensitively.
_RECEIVER_MESSAGES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"session\s*id|invalid session|session expired", re.I), "session"),
    (re.compile(r"login or password|unauthori[sz]ed", re.I), "permanent"),
    # Like SMS Traffic's 415: the message waits (within give_up_after) for a top-up.
    (re.compile(r"not enough credits|insufficient|balance", re.I), "transient"),
    (re.compile(r"forbidden|invalid (source|destination) address|incompatible destination"
                r"|invalid argument|invalid operation|cannot be null|can not be null"
                r"|too long|invalid", re.I), "permanent"),
)


def fault_error(fault: SoapFault, upstream: str) -> UpstreamError:
    """A fault → transient or permanent, decided by its code.

    * ``VersionMismatch``, ``MustUnderstand``, ``DataEncodingUnknown``, ``Sender``: our request
      is at fault; repeating it cannot help → permanent (a refused session excepted).
    * ``Receiver``: by the service's message (see ``_RECEIVER_MESSAGES``); anything else is a
      server failure → transient, and ambiguous: the service may have acted before failing.
    """
    code = fault.code or "Fault"
    if fault.subcode:
        code = f"{code}/{fault.subcode}"
    text = f"{upstream}: {fault.message or fault.reason or 'SOAP fault'}"
    kind = next((found for pattern, found in _RECEIVER_MESSAGES
                 if pattern.search(fault.message)), None)
    if kind == "session":
        return SessionFault(text, code)
    if fault.code != "Receiver" or kind == "permanent":
        return PermanentUpstreamError(text, code)
    if kind == "transient":
        return TransientUpstreamError(text, code)
    return TransientUpstreamError(text, code, ambiguous=True)


# ---------------------------------------------------------------------------- statuses

# Табл. 16 (line 565): state numbers (the "БД Devino" column), written in decimal or in hex
# (``0x0000000B``), or by their names (the "Описание" column).
STATE_NAMES: dict[str, int] = {
    "errors": -200, "tarificated": -100, "errorsendingdatetimeinterpretation": -3,
    "sent": -1, "localqueued": -2, "queued": -40, "sending_to_gateway": -30,
    "sending_to_recipient": -20, "delivered_to_recipient": 0,
    "error_invalid_destination_address": 11, "error_invalid_source_address": 10,
    "error_incompatible_destination": 41, "error_rejected": 42, "error_expired": 46,
    "deleted": 47, "devino_rejected": 48, "unknown": 255, "system_error": 8,
    # The statistics categories (Табл. 9): "InProcess" in the table, "InProgress" in the
    # example (line 469 vs 487); both are accepted, as are the other category names.
    "inprocess": -2, "inprogress": -2, "delivered": 0, "expired": 46, "rejected": 42,
}

STATUS_BY_STATE: dict[int, str] = {
    0: "delivered",
    -1: "sent", -2: "sent", -20: "sent", -30: "sent", -40: "sent", -100: "sent",
    -3: "rejected", -200: "undelivered",
    10: "rejected", 11: "rejected", 41: "rejected", 42: "rejected", 48: "rejected",
    46: "expired", 47: "expired",  # 47 "Deleted" is described as "Просрочено"
    8: "undelivered",
    # States of the same backend's REST table (003 Табл. 11): -98 stopped, 69 rejected.
    -98: "undelivered", 69: "rejected", 99: "unknown",
}

# 255: "Unknown" — per 003 line 709 the message is not in the database yet, or older than
# 48 hours: the provider does not know the id (left out of the poll's answer).
UNKNOWN_STATE = 255


def parse_state(raw: str) -> int | None:
    text = raw.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
        return int(text, 16)
    return STATE_NAMES.get(text.lower())


def bridge_status(state: int) -> str:
    """Табл. 16 → the bridge's status. A state not in the table follows the table's pattern:
    negative states are on the way (sent), positive ones are errors (undelivered)."""
    if state in STATUS_BY_STATE:
        return STATUS_BY_STATE[state]
    return "sent" if state < 0 else "undelivered"


# ---------------------------------------------------------------------------- inbound


def inbound_id(record: dict[str, str], occurrence: int) -> str:
    """Табл. 11 gives no message id. The REST interface of the same backend has ``ID``
    (003 line 549): taken when present. Otherwise the id is a digest of the record (created
    time, addresses, text) and its occurrence among identical records of the reply, so the
    same record gets the same id in every poll and across restarts."""
    for key in ("ID", "Id", "MessageID", "MessageId"):
        if record.get(key):
            return record[key]
    created = parse_datetime(record.get("CreateDateUtc", ""))
    stamp = created.isoformat() if created else record.get("CreateDateUtc", "")
    material = "\x1f".join(
        (stamp, record.get("SourceAddress", ""), record.get("DestinationAddress", ""),
         record.get("Data", ""), str(occurrence))
    )
    return "d" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:31]


@dataclass(frozen=True)
class InboundCursor:
    """Where the next inbound window starts, and the ids already handed out from there on:
    successive windows overlap, and what was handed out is not handed out again. Used by both
    Devino interfaces (``GetIncomingMessages`` here, ``Sms/In`` in ``devino_rest``)."""

    since: datetime
    seen: frozenset[str]

    def dump(self) -> str:
        return json.dumps({"v": 1, "since": soap_datetime(self.since), "seen": sorted(self.seen)},
                          separators=(",", ":"))

    @classmethod
    def load(cls, text: str | None) -> InboundCursor | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            since = parse_datetime(str(data["since"]))
            seen = frozenset(str(item) for item in data.get("seen", []))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return cls(since, seen) if since is not None else None

    @classmethod
    def after_poll(cls, window_start: datetime, now: datetime, overlap: timedelta,
                   records: Sequence[tuple[datetime | None, str]], limit: int) -> InboundCursor:
        """The cursor after a poll at ``now`` whose window began at ``window_start`` and
        answered ``records`` (creation time, id).

        The next window starts ``overlap`` before ``now`` (never before this one), on a whole
        second as the requests carry it, and the ids of the records from there on are
        remembered. A record without a readable time is remembered while it is answered.

        At most ``limit`` ids are kept: with more, the next window starts just after the
        second of the ``limit``-th newest record, so that what is forgotten is no longer
        asked for (never handed out twice, nor again and again); only for such a burst the
        overlap is shorter than ``overlap``."""
        since = max(window_start, now - overlap).replace(microsecond=0)
        kept = [(created or now, sms_id) for created, sms_id in records
                if created is None or created >= since]
        if len(kept) > limit:
            kept.sort(reverse=True)
            since = kept[max(limit, 1) - 1][0].replace(microsecond=0) + timedelta(seconds=1)
            kept = [(created, sms_id) for created, sms_id in kept if created >= since]
        return cls(since, frozenset(sms_id for _, sms_id in kept))


# ---------------------------------------------------------------------------- the upstream


class DevinoSoapUpstream(HttpUpstream):
    """Devino Telecom over SOAP 1.2: sends, batches, status and inbound polling, balance."""

    kind: ClassVar[str] = "devino_soap"
    idempotent: ClassVar[bool] = False
    required: ClassVar[tuple[str, ...]] = ("login", "password")

    max_batch: int = MAX_ADDRESSES
    #: With no cursor, inbound polling starts this far back (the provider keeps no "unread"
    #: flag; a first start forwards the last day).
    initial_lookback: timedelta = timedelta(days=1)
    #: Every window starts this far before the previous poll: a message that becomes visible
    #: late (or a clock skew) within this margin is still found.
    inbound_overlap: timedelta = INBOUND_OVERLAP
    #: The most inbound ids a cursor remembers (see :meth:`InboundCursor.after_poll`).
    max_seen_inbound: int = MAX_SEEN_INBOUND

    def __init__(self, name: str, settings: UpstreamSettings, client: httpx.AsyncClient) -> None:
        super().__init__(name, settings, client)
        self.session_lifetime = SESSION_TTL - SESSION_RENEW_MARGIN
        self._session_id: str | None = None
        self._session_expires = 0.0
        self._generation = 0
        self._session_lock = asyncio.Lock()
        # The operator's rate_per_second may ask for fewer requests than the spec allows.
        rate = settings.rate_per_second
        self.request_gap = max(MIN_REQUEST_GAP, 1 / rate if rate > 0 else 0.0)
        self._next_slot = 0.0

    # -- transport -------------------------------------------------------------------------

    def _check_status(self, response: httpx.Response) -> None:
        # SOAP 1.2 over HTTP sends faults with 400 (Sender) or 500 (Receiver): the fault's
        # code decides, not the HTTP status.
        if response.status_code in (400, 500) and _looks_like_fault(response.content):
            return
        super()._check_status(response)

    async def _soap(self, method: str, inner: str, attempt: int) -> Element:
        await self._pace()
        response = await self.request(
            attempt, "POST", PATH, content=envelope(method, inner),
            headers={"Content-Type": content_type(method)},
        )
        try:
            result = parse_reply(response.content, method)
        except SoapReplyError as exc:
            if response.status_code != 200:
                raise PermanentUpstreamError(
                    f"{self.name}: HTTP {response.status_code}", f"http_{response.status_code}"
                ) from exc
            raise TransientUpstreamError(f"{self.name}: {exc}", "malformed",
                                         ambiguous=True) from exc
        if isinstance(result, SoapFault):
            raise fault_error(result, self.name)
        return result

    async def _new_session(self, attempt: int) -> str:
        """``GetSessionID`` (line 50; names as in the example, lines 65-66: ``login``,
        ``password`` — Табл. 1's ``Login``/``Password`` would not be read)."""
        assert self.settings.login and self.settings.password
        inner = _el("login", self.settings.login) + _el(
            "password", self.settings.password.get_secret_value())
        try:
            result = await self._soap("GetSessionID", inner, attempt)
        except SessionFault as exc:  # a refused login is not a session to renew
            raise PermanentUpstreamError(exc.text, exc.code) from exc
        session_id = (result.text or "").strip()
        if not session_id:
            raise TransientUpstreamError(f"{self.name}: empty session id", "malformed")
        return session_id

    async def session(self, attempt: int = 1) -> tuple[str, int]:
        """The cached session id and its generation, fetched when missing or near expiry."""
        if self._session_id is not None and time.monotonic() < self._session_expires:
            return self._session_id, self._generation
        return await self.renew_session(self._generation, attempt)

    async def renew_session(self, stale: int, attempt: int = 1) -> tuple[str, int]:
        """One renewal for all callers that saw generation ``stale`` fail or expire: the
        first takes the lock and asks; the others find a newer generation and use it."""
        async with self._session_lock:
            if (self._generation != stale and self._session_id is not None
                    and time.monotonic() < self._session_expires):
                return self._session_id, self._generation
            session_id = await self._new_session(attempt)
            self._session_id = session_id
            self._session_expires = time.monotonic() + self.session_lifetime
            self._generation += 1
            return session_id, self._generation

    async def call(self, method: str, params: str, attempt: int = 1) -> Element:
        """``method`` with the session id first (line 52), as ``sessionID`` — the name every
        request example of the methods used here writes (lines 109, 229, 365, 502). A refused
        session is renewed once (shared with concurrent callers) and the call repeated: the
        refusal came before the service acted, so repeating cannot duplicate."""
        session_id, generation = await self.session(attempt)
        try:
            return await self._soap(method, _el("sessionID", session_id) + params, attempt)
        except SessionFault:
            session_id, _ = await self.renew_session(generation, attempt)
            return await self._soap(method, _el("sessionID", session_id) + params, attempt)

    async def _pace(self) -> None:
        """Line 34: at most 10 requests per second, counted over every request of this
        upstream. Each request takes the next free start slot, ``request_gap`` after the
        previous one, and waits for it; slots are handed out in call order. (A switch to the
        backup host after a refused connection is not paced again: nothing reached the
        provider.)"""
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self.request_gap
        if slot > now:
            await asyncio.sleep(slot - now)

    # -- sending ---------------------------------------------------------------------------

    def _message(self, sms: OutboundSms, phones: Sequence[str]) -> str:
        """``<message>`` of SendMessage (lines 230-240; the example's names, which here are
        also Табл. 4's)."""
        assert sms.originator
        inner = _el("Data", sms.text)
        inner += "<DestinationAddresses>" + "".join(_el("string", p) for p in phones)
        inner += "</DestinationAddresses>"
        inner += _el("SourceAddress", sms.originator)
        inner += _el("ReceiptRequested", "true")
        if sms.validity:
            # Табл. 4: Validity in minutes (default 2880); the bridge's validity is seconds.
            inner += _el("Validity", str(max(1, math.ceil(sms.validity / 60))))
        return f"<message>{inner}</message>"

    async def _send_message(self, sms: OutboundSms, phones: Sequence[str],
                            attempt: int) -> list[tuple[str, ...]]:
        """One ``SendMessage`` (line 212) of ``sms``'s text to ``phones``; the ids per phone.

        The reply is a flat list of ids, several per address when the text takes several
        SMS (line 189). The spec does not give their order; it is taken as the addresses'
        order, each address's parts together: n addresses and k·n ids give k per address.
        When the count does not divide, the SMS were accepted but their ids cannot be told
        apart: each address gets none (no status polling for them)."""
        result = await self.call("SendMessage", self._message(sms, phones), attempt)
        ids = [(item.text or "").strip() for item in result if _local(item.tag) == "string"]
        ids = [i for i in ids if i]
        count = len(phones)
        if count == 1:
            return [tuple(ids)]
        if ids and len(ids) % count == 0:
            per = len(ids) // count
            return [tuple(ids[i * per:(i + 1) * per]) for i in range(count)]
        return [() for _ in phones]

    def _no_source(self) -> PermanentUpstreamError:
        return PermanentUpstreamError(
            f"{self.name}: SourceAddress is mandatory (001 Табл. 4); set the account's "
            "originator", "no_source_address")

    async def send(self, sms: OutboundSms) -> SendReceipt:
        if not sms.originator:
            raise self._no_source()
        [ids] = await self._send_message(sms, [sms.phone], sms.attempt)
        return SendReceipt(ids)

    async def send_batch(self, batch: Sequence[OutboundSms]) -> list[SendReceipt | UpstreamError]:
        """Messages with the same text, originator and validity share one ``SendMessage`` (one
        text to up to 1000 addresses, line 214); each group is one request.

        A batch that is one request raises its failure; with several requests, a failed
        request's messages get its error and the others their receipts."""
        results: list[SendReceipt | UpstreamError | None] = [None] * len(batch)
        groups: dict[tuple[str, str, int | None], list[int]] = {}
        for index, sms in enumerate(batch):
            if not sms.originator:
                results[index] = self._no_source()
                continue
            groups.setdefault((sms.text, sms.originator, sms.validity), []).append(index)
        chunks = [indexes[i:i + MAX_ADDRESSES] for indexes in groups.values()
                  for i in range(0, len(indexes), MAX_ADDRESSES)]
        for chunk in chunks:
            first = batch[chunk[0]]
            attempt = max(batch[i].attempt for i in chunk)
            try:
                per_phone = await self._send_message(first, [batch[i].phone for i in chunk],
                                                     attempt)
            except UpstreamError as exc:
                if len(chunks) == 1 and len(chunk) == len(batch):
                    raise
                for index in chunk:
                    results[index] = exc
                continue
            for index, ids in zip(chunk, per_phone, strict=True):
                note = "" if ids else "accepted; the reply's ids could not be matched"
                results[index] = SendReceipt(ids, note=note)
        return [r for r in results if r is not None]

    # -- statuses --------------------------------------------------------------------------

    async def message_state(self, provider_id: str) -> DeliveryReport | None:
        """``GetMessageState`` (line 352, Табл. 6/7): one id (segment) per request."""
        # Табл. 6 and the example (line 366) agree on ``messageID``.
        result = await self.call("GetMessageState", _el("messageID", provider_id))
        raw = _text(result, "State")
        state = parse_state(raw)
        if state is None:
            raise TransientUpstreamError(f"{self.name}: unreadable State {raw!r}", "malformed")
        if state == UNKNOWN_STATE:
            return None
        description = _text(result, "StateDescription")
        at = _text(result, "ReportedDateUtc") or _text(result, "SubmittedDateUtc")
        return DeliveryReport(
            provider_id=provider_id,
            status=bridge_status(state),
            raw_status=f"{raw} {description}".strip(),
            error_code=state if state > 0 else None,
            at=at,
        )

    async def poll_statuses(self, provider_ids: Sequence[str]) -> list[DeliveryReport]:
        """One request per id (each paced with all other requests, line 34). A transient
        failure ends the round (the rest is asked next time); an id the provider refuses is
        left out."""
        reports: list[DeliveryReport] = []
        refused: PermanentUpstreamError | None = None
        for provider_id in provider_ids:
            try:
                report = await self.message_state(provider_id)
            except TransientUpstreamError:
                if not reports:
                    raise
                break
            except PermanentUpstreamError as exc:
                refused = exc
                continue
            if report is not None:
                reports.append(report)
        if not reports and refused is not None:
            raise refused
        return reports

    # -- inbound ---------------------------------------------------------------------------

    async def poll_inbound(self, cursor: str | None) -> tuple[list[InboundMessage], str | None]:
        """``GetIncomingMessages`` (line 491) for ``[since, now + 1 min]``.

        The cursor (:class:`InboundCursor`) starts the next window ``inbound_overlap`` before
        this poll (never earlier than this window), and remembers the ids seen from there on,
        so a message that becomes visible up to that late is fetched, and handed out once.
        After a restart the saved cursor resumes from its window start: no gap; what is handed
        out again (a crash before the cursor was saved) the pipeline drops by ``sms_id``."""
        now = datetime.now(UTC).replace(microsecond=0)
        state = InboundCursor.load(cursor) or InboundCursor(now - self.initial_lookback,
                                                            frozenset())
        until = now + timedelta(minutes=1)
        # The example's names (lines 502-504); Табл. 10's ``sessionId`` would not be read.
        params = _el("maxDateUTC", soap_datetime(until)) + _el("minDateUTC",
                                                                  soap_datetime(state.since))
        result = await self.call("GetIncomingMessages", params)
        records: list[tuple[datetime | None, str, dict[str, str]]] = []
        occurrences: dict[tuple[tuple[str, str], ...], int] = {}
        for item in result:
            if _local(item.tag).lower() != "incomingmessage":
                continue
            record = {_local(field.tag): (field.text or "") for field in item}
            key = tuple(sorted(record.items()))
            occurrence = occurrences.get(key, 0)
            occurrences[key] = occurrence + 1
            records.append((parse_datetime(record.get("CreateDateUtc", "")),
                            inbound_id(record, occurrence), record))
        following = InboundCursor.after_poll(
            state.since, now, self.inbound_overlap,
            [(created, sms_id) for created, sms_id, _ in records], self.max_seen_inbound)
        fresh = [r for r in records if r[1] not in state.seen]
        fresh.sort(key=lambda r: r[0] or now)
        messages = [
            InboundMessage(
                source=self.name, kind="mo", sms_id=sms_id,
                phone=record.get("SourceAddress", "").strip().lstrip("+"),
                text=record.get("Data", ""),
                recipient=record.get("DestinationAddress", "").strip() or None,
                raw=json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8"),
                charset="utf-8",
            )
            for _, sms_id, record in fresh
        ]
        return messages, following.dump()

    # -- balance ---------------------------------------------------------------------------

    async def balance(self) -> Decimal:
        """``GetBalance`` (line 98; ``sessionID`` as in the example, line 109, where Табл. 2
        writes ``SessionID``): overdraft included."""
        result = await self.call("GetBalance", "")
        try:
            return Decimal((result.text or "").strip())
        except InvalidOperation as exc:
            raise TransientUpstreamError(f"{self.name}: unreadable balance",
                                         "malformed") from exc

"""Devino Telecom SOAP 1.2 (``/SmsService.asmx``).

Spec: ``001_600c633d74a81c97.txt`` — faults (line 36), ``GetSessionID`` (line 50, Табл. 1),
``GetBalance`` (line 98, Табл. 2), ``SendMessage`` (line 212, Табл. 4), ``GetMessageState``
(line 352, Табл. 6/7), ``GetIncomingMessages`` (line 491, Табл. 10/11), message states
(line 563, Табл. 16). Requests are UTF-8, at most 10 per second (line 34): the limit covers
every request of one upstream (session, sends, status and inbound polls, balance), and is
declared as :attr:`DevinoSoapUpstream.requests_per_second` for the dispatcher's rate limiter to
keep.

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

import hashlib
import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import ClassVar
from xml.etree.ElementTree import Element

import httpx

from bridge.errors import (
    PermanentUpstreamError,
    SessionFault,
    SoapFault,
    TransientUpstreamError,
    UpstreamError,
)
from bridge.models import DeliveryReport, InboundMessage
from bridge.upstreams._batch import send_grouped
from bridge.upstreams._session import SessionKeeper
from bridge.upstreams._soap import (
    SOAP12,
    SoapReplyError,
    SoapUpstream,
    child,
    element,
    local,
    parse_envelope,
    text,
)
from bridge.upstreams.base import OutboundSms, SendReceipt
from bridge.upstreams.config import UpstreamSettings
from bridge.upstreams.devino.common import (
    INBOUND_OVERLAP,
    MAX_SEEN_INBOUND,
    REQUESTS_PER_SECOND,
    InboundCursor,
    parse_datetime,
    soap_datetime,
)
from bridge.upstreams.devino.settings import DevinoSoapSettings

NAMESPACE = "http://ws.devinosms.com"
# Line 26-30: the endpoint is ``/SmsService.asmx`` (the examples write ``/smsservice.asmx``;
# IIS paths are case-insensitive).
PATH = "/SmsService.asmx"

# Line 52: a session id lives 120 minutes. It is renewed 10 minutes early.
SESSION_TTL = 120 * 60.0
SESSION_RENEW_MARGIN = 10 * 60.0
# Line 214: up to 1000 addresses in one SendMessage.
MAX_ADDRESSES = 1000

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


def envelope(method: str, inner: str) -> bytes:
    """A SOAP 1.2 request as in the spec's examples (lines 58-69, 218-244, 358-370, 496-508).

    ``inner`` is already-escaped XML of the parameters."""
    return _ENVELOPE.format(method=method, namespace=NAMESPACE, inner=inner).encode("utf-8")


def content_type(method: str) -> str:
    """Line 71: ``application/soap+xml; charset=utf-8``; SOAP 1.2 carries the action as a
    media-type parameter (RFC 3902), the WSDL's ``soapAction`` is namespace + method."""
    return f'application/soap+xml; charset=utf-8; action="{NAMESPACE}/{method}"'


def parse_reply(body: bytes, method: str) -> Element:
    """The ``<method>Result`` element of a reply; a fault is raised as :class:`SoapFault`,
    a reply of another shape as :class:`SoapReplyError`."""
    first = parse_envelope(body)
    if local(first.tag).lower() != f"{method}Response".lower():
        raise SoapReplyError(f"unexpected reply element {local(first.tag)!r}")
    result = child(first, f"{method}Result")
    if result is None:
        raise SoapReplyError(f"{method}Result missing")
    return result


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


# ---------------------------------------------------------------------------- the upstream


class DevinoSoapUpstream(SoapUpstream):
    """Devino Telecom over SOAP 1.2: sends, batches, status and inbound polling, balance."""

    kind: ClassVar[str] = "devino_soap"
    settings: DevinoSoapSettings
    idempotent: ClassVar[bool] = False

    max_batch: int = MAX_ADDRESSES
    requests_per_second: ClassVar[float] = REQUESTS_PER_SECOND
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
        self.sessions = SessionKeeper(self._new_session, SESSION_TTL - SESSION_RENEW_MARGIN)

    # -- transport -------------------------------------------------------------------------

    async def _soap(self, method: str, inner: str, attempt: int) -> Element:
        response = await self.request(
            attempt, "POST", PATH, content=envelope(method, inner),
            headers={"Content-Type": content_type(method)},
        )
        try:
            return parse_reply(response.content, method)
        except SoapFault as fault:
            raise fault_error(fault, self.name) from fault
        except SoapReplyError as exc:
            if response.status_code != 200:
                raise PermanentUpstreamError(
                    f"{self.name}: HTTP {response.status_code}", f"http_{response.status_code}"
                ) from exc
            raise TransientUpstreamError(f"{self.name}: {exc}", "malformed",
                                         ambiguous=True) from exc

    async def _new_session(self, attempt: int) -> str:
        """``GetSessionID`` (line 50; names as in the example, lines 65-66: ``login``,
        ``password`` — Табл. 1's ``Login``/``Password`` would not be read)."""
        assert self.settings.login and self.settings.password
        inner = element("login", self.settings.login) + element(
            "password", self.settings.password.get_secret_value())
        try:
            result = await self._soap("GetSessionID", inner, attempt)
        except SessionFault as exc:  # a refused login is not a session to renew
            raise PermanentUpstreamError(exc.text, exc.code) from exc
        session_id = (result.text or "").strip()
        if not session_id:
            raise TransientUpstreamError(f"{self.name}: empty session id", "malformed")
        return session_id

    async def call(self, method: str, params: str, attempt: int = 1) -> Element:
        """``method`` with the session id first (line 52), as ``sessionID`` — the name every
        request example of the methods used here writes (lines 109, 229, 365, 502). A refused
        session is renewed once (shared with concurrent callers) and the call repeated: the
        refusal came before the service acted, so repeating cannot duplicate."""
        return await self.sessions.call(
            attempt, lambda session: self._soap(method, element("sessionID", session) + params,
                                                attempt),
            lambda exc: isinstance(exc, SessionFault))

    # -- sending ---------------------------------------------------------------------------

    def _message(self, sms: OutboundSms, phones: Sequence[str]) -> str:
        """``<message>`` of SendMessage (lines 230-240; the example's names, which here are
        also Табл. 4's)."""
        assert sms.options.originator
        inner = element("Data", sms.text)
        inner += "<DestinationAddresses>" + "".join(element("string", p) for p in phones)
        inner += "</DestinationAddresses>"
        inner += element("SourceAddress", sms.options.originator)
        inner += element("ReceiptRequested", "true")
        if sms.options.validity:
            # Табл. 4: Validity in minutes (default 2880); the bridge's validity is seconds.
            inner += element("Validity", str(max(1, math.ceil(sms.options.validity / 60))))
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
        ids = [(item.text or "").strip() for item in result if local(item.tag) == "string"]
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
        if not sms.options.originator:
            raise self._no_source()
        [ids] = await self._send_message(sms, [sms.phone], sms.attempt)
        return SendReceipt(ids)

    async def send_batch(self, batch: Sequence[OutboundSms]) -> list[SendReceipt | UpstreamError]:
        """Messages with the same text, originator and validity share one ``SendMessage`` (one
        text to up to 1000 addresses, line 214); each group is one request.

        A batch that is one request raises its failure; with several requests, a failed
        request's messages get its error and the others their receipts."""
        async def no_source(sms: OutboundSms) -> UpstreamError | None:
            return None if sms.options.originator else self._no_source()

        async def send_group(group: list[OutboundSms]) -> list[SendReceipt]:
            attempt = max(sms.attempt for sms in group)
            per_phone = await self._send_message(group[0], [sms.phone for sms in group], attempt)
            return [SendReceipt(ids) for ids in per_phone]

        return await send_grouped(batch, send_group,
                                  key=lambda sms: (sms.text, sms.options.originator,
                                                   sms.options.validity),
                                  upstream=self.name, max_group=MAX_ADDRESSES, settle=no_source)

    # -- statuses --------------------------------------------------------------------------

    async def message_state(self, provider_id: str) -> DeliveryReport | None:
        """``GetMessageState`` (line 352, Табл. 6/7): one id (segment) per request."""
        # Табл. 6 and the example (line 366) agree on ``messageID``.
        result = await self.call("GetMessageState", element("messageID", provider_id))
        raw = text(result, "State")
        state = parse_state(raw)
        if state is None:
            raise TransientUpstreamError(f"{self.name}: unreadable State {raw!r}", "malformed")
        if state == UNKNOWN_STATE:
            return None
        description = text(result, "StateDescription")
        at = text(result, "ReportedDateUtc") or text(result, "SubmittedDateUtc")
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
        params = element("maxDateUTC", soap_datetime(until)) + element("minDateUTC",
                                                                  soap_datetime(state.since))
        result = await self.call("GetIncomingMessages", params)
        records: list[tuple[datetime | None, str, dict[str, str]]] = []
        occurrences: dict[tuple[tuple[str, str], ...], int] = {}
        for item in result:
            if local(item.tag).lower() != "incomingmessage":
                continue
            record = {local(field.tag): (field.text or "") for field in item}
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

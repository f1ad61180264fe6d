"""Test double of the SMS Traffic HTTP API (v1 XML ``/multi.php``, v2 JSON ``/v2/...``) and SOAP.

Built from the vendor spec ``tests/specs/002_e7d2ff51d5c777f0.txt`` ("Протоколы работы
с СМС-сообщениями" v2.3).  Line numbers below refer to that file:

* 55   phone number format: international, digits only, no leading ``+``.
* 69   sender (originator): at most 11 alphanumeric characters or 15 digits.
* 88   reliability: primary ``api.smstraffic.ru`` and backup ``api2.smstraffic.ru``.  The
       double is one host; start two instances to test fail-over between primary and backup.
* 105  HTTP API v2 (JSON + ``Authorization: Bearer <API_KEY>``), ``POST /v2/send`` (l. 130-318).
* 306  ``POST /v2/statuses/list``; 501 ``POST /v2/statuses/checked``.
* 794  HTTP API v1 (XML), ``POST|GET /multi.php`` send parameters (l. 800-845), replies
       (l. 847-995), ``operation=status`` (l. 998-1097), ``operation=set_checked`` (l. 1136).
* 1529 SOAP 1.2 at ``/soap.php``: ``BulkSms``, ``IndividualSms``, ``StatusRequest``,
       ``BalanceRequest`` (l. 1585-1766).
* 1931 ``operation=incoming``: inbound SMS from ``from_date`` on (UTC+3), ``count``,
       ``from_phone``, ``want_sms_ids``; kept two days (l. 1972).
* 1988 API error codes (1xx are v2 only; 401-442, 501-504, 1000).

The double is strict where the spec is explicit and tolerant where the spec contradicts itself
(it does: e.g. code 105 is "restrictiveId duplicate" in the table and "Invalid request
format" in an example); each such choice is written down beside the code.

Simplifications (documented deviations from a real provider):

* one ``AcceptedSms`` and one ``sms_id`` per phone; long texts are not split into parts (the
  real v1 API assigns one id per part, l. 950-995) unless the double is built with
  ``split_parts=True``: then v1 and SOAP texts get one id per part (``AcceptedSms.part_ids``),
  160/153 GSM septets with ``rus=0`` or ``LatinEncoding=true``, 70/67 UTF-16 units otherwise
  -- ``rus=1/5`` with a Latin-only text too, the stricter of the two readings of l. 812-813 --,
  152/66 with ``two_byte_concat`` (l. 811-813, 837), cut at ``max_parts``; v2 keeps one id per
  destination as its reply has one;
* no groups (``group=`` always answers 413), no status callbacks, no inbound pushes (inbound
  SMS are listed by ``operation=incoming`` from :meth:`add_incoming`);
* ``start_date`` in the past (417) and message length limits (420/424) are not checked;
* every known id reports status ``Delivered`` unless changed with :meth:`set_status`.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import re
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

from aiohttp import web

from tests.doubles.base import LoopbackDouble

__all__ = ["AcceptedSms", "RecordedRequest", "SmsTrafficDouble"]

#: First id handed out; the value is the one of the want_sms_ids example (spec l. 933-942).
FIRST_SMS_ID = 1000472891

#: English descriptions for the error codes of the table at spec l. 1988-2046 (the spec only
#: gives Russian texts; l. 873 says descriptions are sent in English; 401 is verbatim, l. 907).
ERROR_TEXTS: dict[int, str] = {
    103: "Empty destinations field",
    104: "trackingData value is too long",
    105: "Duplicated request",
    106: "restrictiveId value is too long",
    401: "login param is missing",
    402: "password param is missing",
    403: "phones param is missing",
    404: "Incompatible request parameters",
    405: "message param is missing",
    407: "No phones given",
    411: "Authentication failed",
    413: "No such group",
    416: "Wrong start_date format",
    418: "Ids are not provided for delayed messages",
    421: "Originator is too long",
    422: "No phone in line",
    423: "Empty message for phone",
    428: "Wrong phone format",
    433: "sms_id param is missing",
    434: "no such message or this message does not belong to you",
    440: "Parameter phones is not set or is incorrect",
    1000: "Temporary server problems",
}

FAIL_MODES = frozenset(
    {"http500", "http429", "error", "malformed", "drop", "delay", "accept_then_500",
     "accept_then_drop", "fault"}
)

#: Which requests a queued failure is for (``fail_next(..., on=...)``): sends (v1 without
#: ``operation``, ``/v2/send``, SOAP ``BulkSms``/``IndividualSms``), status requests (v1
#: ``operation=status``, ``/v2/statuses/list``, SOAP ``StatusRequest``), ``operation=incoming``,
#: and set_checked (v1 ``operation=set_checked``, ``/v2/statuses/checked``).
FAIL_TARGETS = frozenset({"send", "status", "incoming", "checked"})

#: SOAP 1.2 envelope and the service namespace of the spec's examples (l. 1593).
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
SOAP_SERVICE_NS = "http://soap.smstraffic.ru/soap.wsdl"
#: SOAP dates as in the GetSmsStatus example (l. 1716): ``2020-05-09T15:19:00``.
_SOAP_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
#: Spec l. 1972: incoming messages are kept and listed for two days.
INCOMING_KEEP = timedelta(days=2)

#: Body of the "malformed" failure mode: a truncated reply.
MALFORMED_BODY = "<reply><result>OK"

#: Spec l. 55: international format, digits only, no "+".  Length 10..15 (E.164 max is 15;
#: the shortest example, "34 6400 12345" / "371 2231 1234", has 11 digits).
_PHONE_RE = re.compile(r"[0-9]{10,15}")
#: Spec l. 69 and l. 816-817: numeric originator up to 15 digits, otherwise up to 11 chars.
_MAX_DIGIT_ORIGINATOR = 15
_MAX_ALNUM_ORIGINATOR = 11
#: Spec l. 822: start_date is "ГГГГ-ММ-ДД ЧЧ:ММ:СС", example "2020-05-09 09:00:00".
_START_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_START_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
#: Spec l. 1044: all v1 dates are UTC+3.
_MSK = timezone(timedelta(hours=3))
#: Spec l. 163: restrictiveId prevents re-sending "в течение часа", at most 36 characters.
RESTRICTIVE_WINDOW = 3600.0
_MAX_RESTRICTIVE_ID = 36
#: Spec l. 160 and l. 179: trackingData at most 40 characters.
_MAX_TRACKING_DATA = 40
#: v1 ``operation`` -> the failure queue its requests consume (FAIL_TARGETS).
_V1_TARGETS: dict[str | None, str] = {
    None: "send", "status": "status", "incoming": "incoming", "set_checked": "checked"
}
#: GSM 03.38 (the alphabet named at spec l. 1441) sends these as escape + character: two
#: septets each in a Latin (7-bit) message.
_GSM_EXTENSION = frozenset("\f^{}\\[~]|€")
#: v1 parameters that are stored in dedicated AcceptedSms fields, not in ``params``.
_V1_OWN_FIELDS = frozenset({"login", "password", "phones", "message", "originator"})


class _Headers(dict[str, str]):
    """A plain ``dict`` of headers with lower-case keys and case-insensitive look-ups."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


@dataclass
class RecordedRequest:
    """One HTTP request as the double received it (recorded before any processing)."""

    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    #: v1: decoded form params (query string and url-encoded body; body wins); {} for v2.
    form: dict[str, str]
    #: v2: parsed JSON body (None when absent or not valid JSON); None for v1.
    json: Any


@dataclass
class AcceptedSms:
    """One SMS accepted for sending: one per phone."""

    api: str  # "v1" or "v2"
    phone: str
    message: str
    originator: str | None
    sms_id: str  # decimal digits; the first part's id when parts are split
    params: dict[str, Any] = field(default_factory=dict)
    #: Every id given to this SMS: one per part with ``split_parts=True``, else ``[sms_id]``.
    part_ids: list[str] = field(default_factory=list)


@dataclass
class IncomingSms:
    """An inbound (MO) SMS the provider lists for ``operation=incoming`` (spec l. 1948-1970)."""

    phone: str
    text: str
    sms_id: str
    send_date: datetime
    delivery_date: datetime


@dataclass
class _Failure:
    mode: str
    kw: dict[str, Any]


@dataclass
class _StatusRecord:
    submitted: datetime
    status: str = "Delivered"
    error: str = ""


class _V1Error(Exception):
    def __init__(self, code: int, description: str | None = None) -> None:
        super().__init__(code, description)
        self.code = code
        self.description = description or ERROR_TEXTS.get(code, f"error {code}")


class _V2Error(Exception):
    def __init__(self, code: int, message: str | None = None, http_status: int = 200) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message or ERROR_TEXTS.get(code, f"error {code}")
        self.http_status = http_status


def _v1_xml(inner: str, *, declaration: bool = True) -> web.Response:
    """Wrap ``inner`` into ``<reply>``; spec l. 861-868 (declaration ``<?xml version="1.0" ?>``,
    ``Content-Type: text/xml``)."""
    head = '<?xml version="1.0" ?>\n' if declaration else ""
    return web.Response(
        text=f"{head}<reply>{inner}</reply>\n",
        content_type="text/xml",
        charset="utf-8",
    )


def _v1_error_response(code: int, description: str) -> web.Response:
    """Spec l. 870-873 and l. 902-909: ``<result>ERROR</result><code>N</code><description>``."""
    return _v1_xml(
        f"<result>ERROR</result><code>{code}</code><description>{escape(description)}</description>"
    )


def _v2_json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _v2_error_body(code: int, message: str) -> dict[str, Any]:
    """Spec l. 238-256 and l. 296-306: ``{"success": false, "error": {code, message}}``."""
    return {"success": False, "error": {"code": code, "message": message}}


def _soap_envelope(inner: str) -> str:
    """The response envelope of the spec's examples (l. 1612-1625): SOAP 1.2, the service
    namespace as the default one."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<env:Envelope xmlns:env="{SOAP12_NS}" xmlns="{SOAP_SERVICE_NS}">'
        f"<env:Body>{inner}</env:Body></env:Envelope>"
    )


def _soap_status(code: int, description: str) -> str:
    """``Status`` (spec l. 1565-1570).  The examples write ``<IsSuccess>>true</IsSuccess>``;
    the double sends the well-formed value (the upstream's parser is tested with the quirk)."""
    success = "true" if code == 0 else "false"
    return (
        f"<Status><IsSuccess>{success}</IsSuccess><Code>{code}</Code>"
        f"<Description>{escape(description)}</Description></Status>"
    )


def _soap_response(name: str, inner: str) -> web.Response:
    return web.Response(
        text=_soap_envelope(f"<{name}>{inner}</{name}>"),
        content_type="application/soap+xml",
        charset="utf-8",
    )


def _soap_fault(code: str, text: str) -> web.Response:
    """A SOAP 1.2 fault (``Code/Value``, ``Reason/Text``).  ``soap.php`` is PHP, whose
    SoapServer answers every fault with HTTP 500, Sender faults included."""
    body = _soap_envelope(
        f"<env:Fault><env:Code><env:Value>env:{escape(code)}</env:Value></env:Code>"
        f'<env:Reason><env:Text xml:lang="en">{escape(text)}</env:Text></env:Reason>'
        "</env:Fault>"
    )
    return web.Response(
        status=500, text=body, content_type="application/soap+xml", charset="utf-8"
    )


class _SoapFault(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


def _valid_phone(phone: str) -> bool:
    return _PHONE_RE.fullmatch(phone) is not None


def _originator_too_long(originator: str) -> bool:
    """Spec l. 69-71 and l. 816-817: 15 digits for a numeric sender, 11 characters otherwise."""
    if originator.isdigit():
        return len(originator) > _MAX_DIGIT_ORIGINATOR
    return len(originator) > _MAX_ALNUM_ORIGINATOR


def _parse_form(raw: bytes, encoding: str) -> dict[str, str]:
    """Decode ``a=b&c=d`` with the percent-encoded bytes taken as ``encoding``.

    Duplicate names: the last one wins (PHP semantics of the real ``multi.php``)."""
    # Raw (not percent-encoded) 8-bit bytes are re-encoded as %XX so that they, too, are
    # decoded with ``encoding`` rather than taken as Latin-1 characters.
    text = "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)
    return dict(
        urllib.parse.parse_qsl(text, keep_blank_values=True, encoding=encoding, errors="replace")
    )


class SmsTrafficDouble(LoopbackDouble):
    """In-process HTTP server speaking SMS Traffic HTTP API v1 and v2 (see module docstring)."""

    def __init__(
        self,
        *,
        login: str = "mylogin",
        password: str = "mypassword",
        api_key: str = "1837/secretkey",
        port: int = 0,
        split_parts: bool = False,
    ) -> None:
        super().__init__(port)
        #: One id per part for v1 and SOAP sends (see the module docstring).
        self.split_parts = split_parts
        #: Inbound SMS listed by ``operation=incoming`` (see :meth:`add_incoming`).
        self.incoming: list[IncomingSms] = []
        #: Ids marked ``Checked`` by set_checked requests, in order.
        self.checked: list[str] = []
        #: What ``operation=account`` and ``GET /v2/account`` answer (spec l. 1209, l. 583).
        self.account_balance = "10025"
        #: SOAP: phones answered ``ProcessResult=Unroutable`` (spec l. 1579-1583).
        self.unroutable: set[str] = set()
        #: SOAP ``GetBalance`` answer (``Amount``, spec l. 1730-1766).
        self.balance = "52782.35"
        self.login = login
        self.password = password
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.accepted: list[AcceptedSms] = []
        #: Monotonic clock used for the restrictiveId window; tests may replace it.
        self.clock: Callable[[], float] = time.monotonic
        #: Seconds during which a restrictiveId is refused again (spec l. 163: one hour).
        self.restrictive_window = RESTRICTIVE_WINDOW
        self._failures: dict[str, deque[_Failure]] = {t: deque() for t in FAIL_TARGETS}
        self._next_id = FIRST_SMS_ID
        self._statuses: dict[str, _StatusRecord] = {}
        self._restrictive_ids: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/multi.php", self._handle_v1)
        app.router.add_route("*", "/v2/send", self._handle_v2_send)
        app.router.add_route("*", "/v2/statuses/list", self._handle_v2_statuses)
        app.router.add_route("*", "/v2/statuses/checked", self._handle_v2_checked)
        app.router.add_route("*", "/v2/account", self._handle_v2_account)
        app.router.add_route("*", "/soap.php", self._handle_soap)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)

    # ------------------------------------------------------------------ test controls

    def fail_next(self, count: int, mode: str, *, on: str = "send", **kw: Any) -> None:
        """Queue ``count`` failures for the next requests of kind ``on`` (see FAIL_TARGETS;
        by default sends: v1 sends, v2 ``/v2/send``, SOAP sends).

        Modes: ``http500``, ``http429`` (``retry_after``=1), ``error`` (``code``, ``text``),
        ``malformed``, ``drop``, ``delay`` (``seconds``; then processed normally),
        ``accept_then_500``, ``accept_then_drop`` (processed, then the connection is closed
        without an answer: the client cannot tell whether anything was done), ``fault``
        (SOAP only: ``code`` "Sender"/"Receiver", ``text``; HTTP 500 as PHP's SoapServer
        answers every fault).  Requests of other kinds do not
        consume the failures queued for sends.

        ``delay`` keeps processing even when the client gives up meanwhile (aiohttp does not
        cancel handlers on disconnect), so a client timeout still ends with the SMS accepted:
        the ambiguous case a real provider produces.  :meth:`stop` waits at most 1 s for such
        handlers."""
        if mode not in FAIL_MODES:
            raise ValueError(f"unknown fail mode {mode!r}; expected one of {sorted(FAIL_MODES)}")
        if on not in FAIL_TARGETS:
            raise ValueError(f"unknown target {on!r}; expected one of {sorted(FAIL_TARGETS)}")
        if mode == "error" and not isinstance(kw.get("code"), int):
            raise ValueError("fail_next(mode='error') needs code=<int>")
        if mode == "delay" and "seconds" not in kw:
            raise ValueError("fail_next(mode='delay') needs seconds=<float>")
        for _ in range(count):
            self._failures[on].append(_Failure(mode, dict(kw)))

    def set_status(self, sms_id: str, status: str, error: str = "") -> None:
        """Change what ``operation=status`` reports for ``sms_id`` (spec l. 2048 statuses)."""
        self._statuses[sms_id].status = status
        self._statuses[sms_id].error = error

    def add_incoming(
        self,
        phone: str,
        text: str,
        *,
        sms_id: str | None = None,
        delivery_date: datetime | None = None,
        send_date: datetime | None = None,
    ) -> str:
        """Queue an inbound SMS for ``operation=incoming``; returns its ``sms_id``.

        ``delivery_date`` defaults to now; naive datetimes are taken as UTC+3 (spec l. 1941)."""
        delivered = delivery_date or datetime.now(_MSK)
        if delivered.tzinfo is None:
            delivered = delivered.replace(tzinfo=_MSK)
        sent = send_date or delivered
        if sent.tzinfo is None:
            sent = sent.replace(tzinfo=_MSK)
        sms_id = sms_id or self._new_id()
        self.incoming.append(IncomingSms(phone, text, sms_id, sent, delivered))
        return sms_id

    async def wait_for_accepted(
        self,
        n: int,
        timeout: float = 10.0,
    ) -> list[AcceptedSms]:
        """Wait until at least ``n`` SMS were accepted; return all accepted SMS."""
        try:
            await self._wait(lambda: len(self.accepted) >= n, timeout)
        except TimeoutError:
            raise AssertionError(
                f"SmsTrafficDouble: expected >= {n} accepted SMS within {timeout}s, got "
                f"{len(self.accepted)}: {self.accepted!r}; {len(self.requests)} requests: "
                f"{[(r.method, r.path) for r in self.requests]!r}"
            ) from None
        return list(self.accepted)

    async def wait_for_requests(
        self,
        n: int,
        timeout: float = 10.0,
    ) -> list[RecordedRequest]:
        """Wait until at least ``n`` requests were received; return all of them."""
        try:
            await self._wait(lambda: len(self.requests) >= n, timeout)
        except TimeoutError:
            raise AssertionError(
                f"SmsTrafficDouble: expected >= {n} requests within {timeout}s, got "
                f"{len(self.requests)}: {[(r.method, r.path) for r in self.requests]!r}"
            ) from None
        return list(self.requests)



    # ------------------------------------------------------------------ shared helpers

    def _new_id(self) -> str:
        sms_id = str(self._next_id)
        self._next_id += 1
        return sms_id

    async def _accept(self, sms: AcceptedSms) -> None:
        if not sms.part_ids:
            sms.part_ids = [sms.sms_id]
        self.accepted.append(sms)
        now = datetime.now(_MSK)
        for part_id in sms.part_ids:
            self._statuses[part_id] = _StatusRecord(submitted=now)
        await self._notify()

    def _part_ids(self, text: str, latin: bool, two_byte: bool, max_parts: str) -> list[str]:
        """One id, or one per part with ``split_parts`` (spec l. 808, 811-813, 821, 837).

        ``latin`` (``rus=0``, SOAP ``LatinEncoding=true``, l. 811 and l. 1557): 160/153 per
        part, counted in GSM 03.38 septets (the alphabet of l. 1441), where the characters of
        the GSM 03.38 extension table (``^{}\\[~]|``, sent as escape + character) take two.
        Otherwise (``rus=1/5``, ``LatinEncoding=false``): 70/67 UTF-16 units per part.
        ``rus=1/5`` with a Latin-only text keeps 160/153 in one reading of l. 812-813 ("если
        сообщение состоит исключительно из латинских символов, максимальное количество
        символов не изменяется") and 70/67 in the other; the double takes the stricter one,
        70/67, so that a client counting the other way is caught."""
        if not self.split_parts:
            return [self._new_id()]
        if latin:
            units = len(text) + sum(text.count(ch) for ch in _GSM_EXTENSION)
            single, part = 160, 153
        else:
            units = len(text.encode("utf-16-le")) // 2
            single, part = 70, 67
        if two_byte:
            part -= 1
        count = 1 if units <= single else -(-units // part)
        limit = int(max_parts) if max_parts.isdigit() and int(max_parts) > 0 else 255
        return [self._new_id() for _ in range(min(count, limit))]

    async def _record(self, request: web.Request, form: dict[str, str], body: Any) -> None:
        raw = await request.read()
        headers = _Headers()
        for key, value in request.headers.items():
            headers[key.lower()] = value
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers=headers,
                raw_body=raw,
                form=form,
                json=body,
            )
        )
        await self._notify()

    async def _apply_failure(
        self, api: str, target: str = "send", soap_response: str = "SmsResponse"
    ) -> tuple[web.Response | None, str | None]:
        """Pop the next failure queued for ``target``.  Returns (response to send instead,
        what to do after processing the request normally: "500", "drop" or None)."""
        queue = self._failures[target]
        if not queue:
            return None, None
        failure = queue.popleft()
        mode, kw = failure.mode, failure.kw
        if mode == "delay":
            await asyncio.sleep(float(kw["seconds"]))
            return None, None
        if mode == "accept_then_500":
            return None, "500"
        if mode == "accept_then_drop":
            return None, "drop"
        if mode == "http500":
            return web.Response(status=500, text="500 Internal Server Error"), None
        if mode == "http429":
            # Spec l. 119: HTTP 429, optionally with Retry-After.
            retry_after = str(kw.get("retry_after", 1))
            headers = {"Retry-After": retry_after}
            if api == "v2":
                return _v2_json(_v2_error_body(429, "Too many requests"), 429, headers), None
            return web.Response(status=429, text="Too many requests", headers=headers), None
        if mode == "error":
            code = int(kw["code"])
            text = str(kw.get("text") or ERROR_TEXTS.get(code, f"error {code}"))
            if api == "v2":
                return _v2_json(_v2_error_body(code, text)), None
            if api == "soap":
                return _soap_response(soap_response, _soap_status(code, text)), None
            return _v1_error_response(code, text), None
        if mode == "fault":
            return _soap_fault(str(kw.get("code", "Receiver")),
                               str(kw.get("text", "Internal error"))), None
        if mode == "malformed":
            ctype = {"v2": "application/json", "soap": "application/soap+xml"}.get(api, "text/xml")
            return web.Response(text=MALFORMED_BODY, content_type=ctype), None
        # "drop": close the socket without a response; the client sees a connection error
        # (server disconnected), never an HTTP status.
        raise _Drop

    @classmethod
    def _after(cls, request: web.Request, after: str | None) -> web.StreamResponse | None:
        """What replaces the answer of a request that was processed normally: a 500
        (``accept_then_500``), no answer at all (``accept_then_drop``), or nothing."""
        if after == "500":
            return web.Response(status=500, text="500 Internal Server Error")
        if after == "drop":
            return cls._drop(request)
        return None

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()
        # Raising CancelledError makes aiohttp drop the connection silently, without trying
        # to write a 500 onto the closed socket and without logging a traceback.
        raise asyncio.CancelledError

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        await self._record(request, {}, None)
        return web.Response(status=404, text="404 Not Found")

    # ------------------------------------------------------------------ v1 (XML)

    async def _v1_form(self, request: web.Request) -> dict[str, str]:
        """Parameters of a v1 request, decoded per ``rus`` (spec l. 811-814).

        ``rus=5``: the text is UTF-8; ``rus=0``/``1`` or absent: windows-1251.  The charset
        applies to the whole request (the real ``multi.php`` takes one encoding per request).
        The query string is read for GET and POST alike (PHP ``$_REQUEST``); a POST body is
        read only with ``Content-Type: application/x-www-form-urlencoded`` (spec l. 796) -- with
        any other type the body is invisible, as it is to PHP, and the request fails with
        ``401 login param is missing``."""
        raw_query = request.raw_path.partition("?")[2].encode("latin-1", "replace")
        body = b""
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            body = await request.read()
        probe = _parse_form(raw_query, "latin-1") | _parse_form(body, "latin-1")
        encoding = "utf-8" if probe.get("rus", "").strip() == "5" else "windows-1251"
        return _parse_form(raw_query, encoding) | _parse_form(body, encoding)

    async def _handle_v1(self, request: web.Request) -> web.StreamResponse:
        """``GET|POST /multi.php`` (spec l. 794-1098)."""
        form = await self._v1_form(request)
        await self._record(request, form, None)
        if request.method not in ("GET", "POST"):
            return web.Response(status=405, text="405 Method Not Allowed")
        operation = form.get("operation")
        after: str | None = None
        target = _V1_TARGETS.get(operation)
        if target is not None:
            try:
                failure, after = await self._apply_failure("v1", target)
            except _Drop:
                return self._drop(request)
            if failure is not None:
                return failure
        try:
            self._v1_auth(form)
            if operation is None:
                response = await self._v1_send(form)
            elif operation == "status":
                response = self._v1_status(form)
            elif operation == "set_checked":
                response = self._v1_set_checked(form)
            elif operation == "incoming":
                response = self._v1_incoming(form)
            elif operation == "account":
                # Spec l. 1209-1240: <reply><account>10025</account></reply>.
                response = web.Response(
                    text=f'<?xml version="1.0" ?>\n<reply>\n  <account>'
                         f"{self.account_balance}</account>\n</reply>\n",
                    content_type="text/xml")
            else:
                raise _V1Error(404, f"Unsupported operation: {operation}")
        except _V1Error as exc:
            response = _v1_error_response(exc.code, exc.description)
        return self._after(request, after) or response

    def _v1_auth(self, form: dict[str, str]) -> None:
        """Names are case-sensitive: ``LOGIN=`` is "login param is missing" (spec l. 887-909)."""
        if not form.get("login"):
            raise _V1Error(401)
        if not form.get("password"):
            raise _V1Error(402)
        if form["login"] != self.login or form["password"] != self.password:
            raise _V1Error(411)

    @staticmethod
    def _v1_entries(form: dict[str, str]) -> list[tuple[str, str, str | None]]:
        """(phone, message, push_id) per recipient.

        Plain: ``phones`` is a comma-separated list (spec l. 806), one ``message`` (l. 807).
        ``individual_messages=1`` (l. 826): ``phones`` holds "phone message" lines separated by
        LF/CR, or by ``delimiter`` when given (l. 830); phone and text separated by one space.
        ``with_push_id=1`` (l. 838): each line is ``push_id:phone message``."""
        phones = form.get("phones")
        if phones is None:
            if form.get("group"):
                raise _V1Error(413, f'No such group: "{form["group"]}"')
            raise _V1Error(403)
        if form.get("individual_messages") != "1":
            numbers = [p.strip() for p in phones.split(",") if p.strip()]
            if not numbers:
                raise _V1Error(440, 'Parameter "phones" is not set or is incorrect')
            message = form.get("message", "")
            if not message:
                raise _V1Error(405)
            return [(number, message, None) for number in numbers]
        delimiter = form.get("delimiter") or None
        if delimiter is None:
            lines = re.split(r"[\r\n]+", phones)
        else:
            # Spec l. 830 example puts the delimiter at the end of a line; a line break right
            # after (or before) the delimiter belongs to the layout, not to the texts.
            lines = [line.strip("\r\n") for line in phones.split(delimiter)]
        with_push_id = form.get("with_push_id") == "1"
        entries: list[tuple[str, str, str | None]] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            push_id: str | None = None
            if with_push_id and ":" in line.split(" ", 1)[0]:
                push_id, line = line.split(":", 1)
            phone, _, text = line.partition(" ")
            if not phone:
                raise _V1Error(422, f'No phone in line {number}: "{line}"')
            if not text:
                raise _V1Error(423, f'Empty message for phone "{phone}"')
            entries.append((phone, text, push_id))
        if not entries:
            raise _V1Error(440, 'Parameter "phones" is not set or is incorrect')
        return entries

    async def _v1_send(self, form: dict[str, str]) -> web.Response:
        """Send (no ``operation``); reply per spec l. 861-868 and, with ``want_sms_ids=1``,
        ``<message_infos>`` (l. 913-944), with ``<push_id>`` for ``with_push_id=1`` (l. 946-979)."""
        entries = self._v1_entries(form)
        # Spec l. 843: with ignore_phone_format=1 the numbers are not checked.  The spec names
        # error 418 there, but 418 is "no ids for delayed messages" and phone errors are
        # 425-432 (the spec contradicts itself); the double answers 428.
        if form.get("ignore_phone_format") != "1":
            for phone, _, _ in entries:
                if not _valid_phone(phone):
                    raise _V1Error(428, f'"{phone}": wrong phone format. No messages has been sent')
        originator = form.get("originator") or None
        if originator is not None and _originator_too_long(originator):
            raise _V1Error(421)
        start_date = form.get("start_date", "")
        if start_date:
            if _START_DATE_RE.fullmatch(start_date) is None:
                raise _V1Error(416, f'Wrong start_date format: "{start_date}"')
            try:
                datetime.strptime(start_date, _START_DATE_FORMAT)
            except ValueError:
                raise _V1Error(416, f'Wrong start_date format: "{start_date}"') from None
        want_ids = form.get("want_sms_ids") == "1"
        # Spec l. 834: want_sms_ids=1 cannot be combined with start_date (l. 822 says only
        # more than 5 minutes ahead; the double takes the stricter reading: any start_date).
        if want_ids and start_date:
            raise _V1Error(418)
        extra = {k: v for k, v in form.items() if k not in _V1_OWN_FIELDS}
        latin = form.get("rus", "0").strip() not in ("1", "5")
        infos: list[str] = []
        for phone, text, push_id in entries:
            part_ids = self._part_ids(text, latin, form.get("two_byte_concat") == "1",
                                      form.get("max_parts", ""))
            params = dict(extra)
            if push_id is not None:
                params["push_id"] = push_id
            await self._accept(
                AcceptedSms("v1", phone, text, originator, part_ids[0], params, part_ids)
            )
            push = f"<push_id>{escape(push_id)}</push_id>" if push_id is not None else ""
            infos.extend(
                f"<message_info><phone>{escape(phone)}</phone><sms_id>{sms_id}</sms_id>"
                f"{push}</message_info>"
                for sms_id in part_ids
            )
        inner = f"<result>OK</result><code>0</code><description>queued {len(entries)} messages"
        inner += "</description>"
        if want_ids:
            inner += f"<message_infos>{''.join(infos)}</message_infos>"
        return _v1_xml(inner)

    def _v1_status(self, form: dict[str, str]) -> web.Response:
        """``operation=status`` (spec l. 987-1098): one id -> fields directly in ``<reply>``
        (l. 1050-1064, no XML declaration, as in the example); several ids -> one ``<sms>``
        per id (l. 1066-1098).  Unknown ids carry the error text of l. 1093 and ``<sms_id>``
        only; the single-id form uses the same shape inside ``<reply>``."""
        raw_ids = form.get("sms_id", "")
        ids = [i.strip() for i in raw_ids.split(",") if i.strip()]
        if not ids:
            raise _V1Error(433)
        parts: list[str] = []
        for sms_id in ids:
            record = self._statuses.get(sms_id)
            if record is None:
                parts.append(f"<error>{ERROR_TEXTS[434]}</error><sms_id>{escape(sms_id)}</sms_id>")
                continue
            submitted = record.submitted.strftime(_START_DATE_FORMAT)
            parts.append(
                f"<submission_date>{submitted}</submission_date>"
                f"<send_date>{submitted}</send_date>"
                f"<last_status_change_date>{submitted}</last_status_change_date>"
                f"<status>{escape(record.status)}</status>"
                f"<error>{escape(record.error)}</error>"
                f"<sms_id>{sms_id}</sms_id>"
            )
        if len(parts) == 1:
            return _v1_xml(parts[0], declaration=False)
        return _v1_xml("".join(f"<sms>{p}</sms>" for p in parts))

    def _v1_set_checked(self, form: dict[str, str]) -> web.Response:
        """``operation=set_checked`` (spec l. 1136-1207): marks the ids ``Checked``; any id
        the double does not know fails the whole request with 434 listing the ids (l. 1204)
        and changes nothing.  The example replies declare windows-1251 (l. 1179): so does the
        double."""
        ids = [i.strip() for i in form.get("sms_id", "").split(",") if i.strip()]
        if not ids:
            raise _V1Error(433)
        unknown = [i for i in ids if i not in self._statuses]
        if unknown:
            raise _V1Error(
                434, "No such sms_id or this sms_id does not belong to you : " + ",".join(unknown)
            )
        for sms_id in ids:
            self._statuses[sms_id].status = "Checked"
            self.checked.append(sms_id)
        listed = "".join(f"<sms_id>{escape(i)}</sms_id>" for i in ids)
        return web.Response(
            body=(
                '<?xml version="1.0" encoding="windows-1251" ?>\n<reply><result>OK</result>'
                f"<code>0</code><sms_ids>{listed}</sms_ids></reply>\n"
            ).encode("cp1251"),
            content_type="text/xml",
            charset="windows-1251",
        )

    def _v1_incoming(self, form: dict[str, str]) -> web.Response:
        """``operation=incoming`` (spec l. 1931-1972): messages with ``delivery_date`` at or
        after ``from_date`` ("ГГГГ-ММ-ДД" or "ГГГГ-ММ-ДД ЧЧ:ММ:СС", UTC+3), from
        ``from_phone`` if given, oldest first, at most ``count``; ``<sms_id>`` only with
        ``want_sms_ids=1``.  Messages older than two days are no longer listed (l. 1972).
        ``<count>`` is the number of messages in the reply (the example, l. 1950, leaves open
        whether it is the total)."""
        now = datetime.now(_MSK)
        since = now - INCOMING_KEEP
        raw_from = form.get("from_date", "").strip()
        if raw_from:
            parsed = None
            for fmt in (_START_DATE_FORMAT, "%Y-%m-%d"):
                try:
                    parsed = datetime.strptime(raw_from, fmt).replace(tzinfo=_MSK)
                    break
                except ValueError:
                    continue
            if parsed is None:
                raise _V1Error(416, f'Wrong from_date format: "{raw_from}"')
            since = max(since, parsed)
        from_phone = form.get("from_phone", "").strip()
        count_text = form.get("count", "").strip()
        if count_text and not count_text.isdigit():
            raise _V1Error(404, f'Wrong count: "{count_text}"')
        found = sorted(
            (m for m in self.incoming
             if m.delivery_date >= since and (not from_phone or m.phone == from_phone)),
            key=lambda m: m.delivery_date,
        )
        if count_text:
            found = found[: int(count_text)]
        want_ids = form.get("want_sms_ids") == "1"
        items = "".join(
            f"<message><from_phone>{escape(m.phone)}</from_phone><text>{escape(m.text)}</text>"
            f"<send_date>{m.send_date.astimezone(_MSK).strftime(_START_DATE_FORMAT)}</send_date>"
            f"<delivery_date>{m.delivery_date.astimezone(_MSK).strftime(_START_DATE_FORMAT)}"
            "</delivery_date>"
            + (f"<sms_id>{escape(m.sms_id)}</sms_id>" if want_ids else "")
            + "</message>"
            for m in found
        )
        return _v1_xml(f"<count>{len(found)}</count><messages>{items}</messages>")

    # ------------------------------------------------------------------ v2 (JSON)

    async def _v2_read(
        self, request: web.Request, target: str
    ) -> tuple[Any, web.StreamResponse | None]:
        """Record a v2 request; check method, queued failure, auth and content type.
        Returns the JSON body, or the response to give instead."""
        raw = await request.read()
        body: Any = None
        try:
            body = jsonlib.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            body = None
        await self._record(request, {}, body)
        if request.method != "POST":
            return None, web.Response(status=405, text="405 Method Not Allowed")
        try:
            failure, _ = await self._apply_failure("v2", target)
        except _Drop:
            return None, self._drop(request)
        if failure is not None:
            return None, failure
        try:
            self._v2_auth(request)
        except _V2Error as exc:
            return None, _v2_json(_v2_error_body(exc.code, exc.message), exc.http_status)
        if request.content_type != "application/json" or body is None:
            # Spec l. 109: JSON with Content-Type: application/json; the example of l. 412
            # answers 105 "Invalid request format".
            return None, _v2_json(_v2_error_body(105, "Invalid request format"), 400)
        return body, None

    async def _handle_v2_statuses(self, request: web.Request) -> web.StreamResponse:
        """``POST /v2/statuses/list`` (spec l. 306-425): ``ids`` and/or ``trackingData``,
        ``extendedInfo``; ``data`` lists the known messages only.  ``statusExtended`` comes
        with ``extendedInfo=true`` for a numeric error set by :meth:`set_status`."""
        body, response = await self._v2_read(request, "status")
        if response is not None:
            return response
        ids = body.get("ids") if isinstance(body, dict) else None
        tracking = body.get("trackingData") if isinstance(body, dict) else None
        if (ids is not None and not isinstance(ids, list)) or (
            tracking is not None and not isinstance(tracking, list)
        ) or not (ids or tracking):
            return _v2_json(_v2_error_body(105, "Invalid request format"), 400)
        extended = bool(body.get("extendedInfo", False))
        wanted = {str(i) for i in ids or []}
        tracking_of = {a.sms_id: a.params["trackingData"] for a in self.accepted
                       if a.api == "v2" and isinstance(a.params.get("trackingData"), str)}
        if tracking:
            wanted |= {sms_id for sms_id, mark in tracking_of.items() if mark in tracking}
        data: list[dict[str, Any]] = []
        for sms_id in (ids or []) + sorted(wanted - {str(i) for i in ids or []}):
            record = self._statuses.get(str(sms_id))
            if record is None:
                continue
            stamp = record.submitted.isoformat(timespec="milliseconds")
            item: dict[str, Any] = {"smsId": str(sms_id)}
            if str(sms_id) in tracking_of:  # StatusesListResponse.Data.trackingData (l. 353)
                item["trackingData"] = tracking_of[str(sms_id)]
            item.update({"submissionDate": stamp, "sendDate": stamp, "status": record.status})
            if record.status:
                item["deliveryDate"] = stamp
            if extended and record.error.isdigit():
                item["statusExtended"] = {"code": int(record.error), "description": "error"}
            data.append(item)
        return _v2_json({"success": True, "data": data})

    async def _handle_v2_account(self, request: web.Request) -> web.StreamResponse:
        """``GET /v2/account`` without parameters (spec l. 583-612): ``data.account``."""
        await self._record(request, {}, None)
        if request.method != "GET":
            return web.Response(status=405, text="405 Method Not Allowed")
        try:
            self._v2_auth(request)
        except _V2Error as exc:
            return _v2_json(_v2_error_body(exc.code, exc.message), exc.http_status)
        return _v2_json({"success": True, "data": {"account": self.account_balance}})

    async def _handle_v2_checked(self, request: web.Request) -> web.StreamResponse:
        """``POST /v2/statuses/checked`` (spec l. 501-566): a JSON array of ids; ``updated``
        and ``failed`` (unknown ids, with the error text of l. 560)."""
        body, response = await self._v2_read(request, "checked")
        if response is not None:
            return response
        if not isinstance(body, list) or not all(isinstance(i, str) for i in body):
            return _v2_json(_v2_error_body(105, "Invalid request format"), 400)
        updated: list[str] = []
        failed: list[dict[str, str]] = []
        for sms_id in body:
            record = self._statuses.get(sms_id)
            if record is None:
                failed.append({"id": sms_id, "error": f"{ERROR_TEXTS[434]} {sms_id}"})
                continue
            record.status = "Checked"
            self.checked.append(sms_id)
            updated.append(sms_id)
        return _v2_json({"success": True, "data": {"updated": updated, "failed": failed}})

    async def _handle_v2_send(self, request: web.Request) -> web.StreamResponse:
        """``POST /v2/send`` (spec l. 105-318)."""
        raw = await request.read()
        body: Any = None
        try:
            body = jsonlib.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            body = None
        await self._record(request, {}, body)
        if request.method != "POST":
            return web.Response(status=405, text="405 Method Not Allowed")
        try:
            failure, after = await self._apply_failure("v2")
        except _Drop:
            return self._drop(request)
        if failure is not None:
            return failure
        try:
            self._v2_auth(request)
            if request.content_type != "application/json" or not isinstance(body, dict):
                # Spec l. 109: JSON body with Content-Type: application/json is mandatory.
                # The spec's example at l. 415-423 answers 105 "Invalid request format"
                # while the table (l. 1994) says 105 is the restrictiveId refusal
                # (the spec contradicts itself); the double sends 105 "Invalid request format"
                # with HTTP 400 so that it differs from the duplicate (HTTP 200).
                raise _V2Error(105, "Invalid request format", http_status=400)
            reply = await self._v2_send(body)
        except _V2Error as exc:
            return _v2_json(_v2_error_body(exc.code, exc.message), exc.http_status)
        return self._after(request, after) or _v2_json(reply)

    def _v2_auth(self, request: web.Request) -> None:
        """Spec l. 107 and l. 117: ``Authorization: Bearer <API_KEY>``; a key without the
        permission gets HTTP 403 ("Access denied", l. 576-579).  The spec gives no status for a
        missing key; the double answers HTTP 401."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _V2Error(401, "Unauthorized", http_status=401)
        if token.strip() != self.api_key:
            raise _V2Error(403, "Access denied", http_status=403)

    async def _v2_send(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate and accept a send request; parameter tables at spec l. 134-187, reply
        format at l. 233-294."""
        destinations = body.get("destinations")
        if not isinstance(destinations, list) or not destinations:
            raise _V2Error(103)
        restrictive_id = body.get("restrictiveId")
        if restrictive_id is not None and (
            not isinstance(restrictive_id, str) or len(restrictive_id) > _MAX_RESTRICTIVE_ID
        ):
            raise _V2Error(106)
        global_tracking = body.get("trackingData")
        self._check_tracking(global_tracking)
        for dest in destinations:
            if isinstance(dest, dict):
                self._check_tracking(dest.get("trackingData"))
        originator = body.get("originator")
        if originator is not None:
            if not isinstance(originator, str):
                raise _V2Error(105, "Invalid request format", http_status=400)
            if _originator_too_long(originator):
                raise _V2Error(421)
        channels = body.get("channels") or {}
        sms_channel = channels.get("sms") if isinstance(channels, dict) else None
        sms_channel = sms_channel if isinstance(sms_channel, dict) else {}
        scheduling = body.get("scheduling") or {}
        scheduling = scheduling if isinstance(scheduling, dict) else {}
        # Scheduling: the table (l. 185) says startDateTime, the example (l. 229) startTime;
        # both are accepted (the spec contradicts itself) and validated as RFC 3339.
        for key in ("startDateTime", "startTime"):
            value = scheduling.get(key)
            if value is not None:
                try:
                    datetime.fromisoformat(str(value))
                except ValueError:
                    raise _V2Error(416, f'Wrong start date format: "{value}"') from None
        # Spec l. 163: same restrictiveId within an hour -> success=false, 105 (l. 296-306).
        now = self.clock()
        if restrictive_id is not None:
            seen = self._restrictive_ids.get(restrictive_id)
            if seen is not None and now - seen < self.restrictive_window:
                raise _V2Error(105, "Duplicated request")
            self._restrictive_ids[restrictive_id] = now

        common: dict[str, Any] = {}
        # channels.sms (l. 171-176); "timeout" appears only in the example (l. 201): kept too.
        common.update({k: v for k, v in sms_channel.items() if k != "message"})
        common.update(scheduling)
        common.update(
            {
                k: v
                for k, v in body.items()
                if k not in ("destinations", "channels", "originator", "scheduling")
            }
        )
        default_text = sms_channel.get("message")
        replies: list[dict[str, Any]] = []
        for dest in destinations:
            replies.append(
                await self._v2_destination(dest, default_text, originator, global_tracking, common)
            )
        return {"success": True, "destinations": replies}

    @staticmethod
    def _check_tracking(value: Any) -> None:
        if value is not None and (not isinstance(value, str) or len(value) > _MAX_TRACKING_DATA):
            raise _V2Error(104)

    async def _v2_destination(
        self,
        dest: Any,
        default_text: Any,
        originator: str | None,
        global_tracking: Any,
        common: dict[str, Any],
    ) -> dict[str, Any]:
        """One SendRequest.Destinations entry (l. 157-169) -> SendResponse.Destinations (l. 245).

        ``to`` is a number per the table; a digit string is accepted too.  A bad phone yields
        a per-destination error 428; the spec marks ``id`` mandatory even then (l. 249 and the
        example at l. 283-291), so a fresh id is given but nothing is accepted."""
        dest = dest if isinstance(dest, dict) else {}
        to = dest.get("to")
        phone = str(to) if isinstance(to, (int, str)) and not isinstance(to, bool) else ""
        tracking = dest.get("trackingData", global_tracking)
        reply: dict[str, Any] = {
            "phone": int(phone) if _valid_phone(phone) else to,
            "id": self._new_id(),
        }
        if tracking is not None:
            reply["trackingData"] = tracking
        if not _valid_phone(phone):
            reply["error"] = {
                "code": 428,
                "message": f'"{to}": wrong phone format. No messages has been sent',
            }
            return reply
        content = dest.get("content")
        individual = None
        if isinstance(content, dict) and isinstance(content.get("sms"), dict):
            individual = content["sms"].get("message")
        text = individual if individual is not None else default_text
        if not isinstance(text, str) or not text:
            reply["error"] = {"code": 423, "message": f'Empty message for phone "{phone}"'}
            return reply
        subst = dest.get("params")
        if isinstance(subst, dict):
            # "[[name]]" placeholders filled from destination params (example l. 197, 206).
            for key, value in subst.items():
                text = text.replace(f"[[{key}]]", str(value))
        params = dict(common)
        if tracking is not None:
            params["trackingData"] = tracking
        if isinstance(subst, dict):
            params["params"] = subst
        await self._accept(AcceptedSms("v2", phone, text, originator, reply["id"], params))
        return reply


    # ------------------------------------------------------------------ SOAP

    async def _handle_soap(self, request: web.Request) -> web.StreamResponse:
        """``POST /soap.php`` (spec l. 1529-1766), SOAP 1.2 document/literal as in the
        examples.  Strict: ``Content-Type: application/soap+xml`` (SOAP 1.2 HTTP binding; 415
        otherwise), the SOAP 1.2 envelope namespace (else a VersionMismatch fault), the
        service namespace on the body element (else "Procedure not present", as PHP's
        SoapServer says).  Request-level errors are ``Status`` codes of the API table
        (l. 1988: the codes are shared with SOAP)."""
        raw = await request.read()
        await self._record(request, {}, None)
        if request.method != "POST":
            return web.Response(status=405, text="405 Method Not Allowed")
        if request.content_type != "application/soap+xml":
            return web.Response(status=415, text="415 Unsupported Media Type")
        try:
            operation = self._soap_operation(raw)
        except _SoapFault as fault:
            return _soap_fault(fault.code, fault.text)
        name = _local_name(operation.tag)
        target = {"StatusRequest": "status"}.get(name, "send")
        reply_name = {"StatusRequest": "StatusResponse",
                      "BalanceRequest": "BalanceResponse"}.get(name, "SmsResponse")
        after: str | None = None
        if name != "BalanceRequest":
            try:
                failure, after = await self._apply_failure("soap", target, reply_name)
            except _Drop:
                return self._drop(request)
            if failure is not None:
                return failure
        try:
            if name in ("BulkSms", "IndividualSms"):
                inner = await self._soap_send(operation, name)
            elif name == "StatusRequest":
                inner = self._soap_status_reply(operation)
            else:
                self._soap_auth(operation)
                inner = _soap_status(0, "") + f"<Amount>{escape(self.balance)}</Amount>"
        except _V1Error as exc:
            inner = _soap_status(exc.code, exc.description)
        except _SoapFault as fault:
            return _soap_fault(fault.code, fault.text)
        return self._after(request, after) or _soap_response(reply_name, inner)

    @staticmethod
    def _soap_operation(raw: bytes) -> ET.Element:
        try:
            root = ET.fromstring(raw)
        except ET.ParseError:
            raise _SoapFault("Sender", "Bad Request") from None
        if root.tag != f"{{{SOAP12_NS}}}Envelope":
            raise _SoapFault("VersionMismatch", "Wrong Version")
        body = root.find(f"{{{SOAP12_NS}}}Body")
        if body is None or len(body) != 1:
            raise _SoapFault("Sender", "Bad Request")
        operation = body[0]
        known = ("BulkSms", "IndividualSms", "StatusRequest", "BalanceRequest")
        if not operation.tag.startswith(f"{{{SOAP_SERVICE_NS}}}") or (
            _local_name(operation.tag) not in known
        ):
            raise _SoapFault("Sender", f"Procedure '{_local_name(operation.tag)}' not present")
        return operation

    def _soap_auth(self, element: ET.Element) -> None:
        """Login and Password (in ``Options`` for sends, directly for status and balance,
        l. 1687 and 1742): 401, 402, 411 as in HTTP API v1."""
        login = _soap_text(element, "Login")
        password = _soap_text(element, "Password")
        if not login:
            raise _V1Error(401)
        if not password:
            raise _V1Error(402)
        if login != self.login or password != self.password:
            raise _V1Error(411)

    async def _soap_send(self, operation: ET.Element, name: str) -> str:
        """``BulkSms`` (Message + Phone*, l. 1585) and ``IndividualSms`` (Pairs of Phone and
        Message, l. 1628).  ``MessageInfo`` per phone (per part with ``split_parts``) when
        ``WantSmsIds`` is true; the text says ``WantsSmsIds`` (l. 1572) while the table says
        ``WantSmsIds`` (l. 1553): both are accepted."""
        options = operation.find(f"{{{SOAP_SERVICE_NS}}}Options")
        if options is None:
            raise _V1Error(401)
        self._soap_auth(options)
        values = {_local_name(o.tag): (o.text or "").strip() for o in options}
        for key in ("WantSmsIds", "WantsSmsIds", "IgnorePhoneFormat", "LatinEncoding", "Flash",
                    "TwoByteConcat"):
            if key in values and values[key] not in ("true", "false", "1", "0"):
                raise _SoapFault("Sender", f"Invalid xsd:boolean value for {key}")
        want_ids = values.get("WantSmsIds", values.get("WantsSmsIds")) in ("true", "1")
        latin = values.get("LatinEncoding") in ("true", "1")
        two_byte = values.get("TwoByteConcat") in ("true", "1")
        originator = values.get("Originator") or None
        if originator is not None and _originator_too_long(originator):
            raise _V1Error(421)
        pairs: list[tuple[str, str]] = []
        if name == "BulkSms":
            message = _soap_text(operation, "Message", strip=False)
            phones = [(p.text or "").strip()
                      for p in operation.findall(f"{{{SOAP_SERVICE_NS}}}Phone")]
            if not phones:
                raise _V1Error(403)
            if not message:
                raise _V1Error(405)
            pairs = [(phone, message) for phone in phones]
        else:
            for pair in operation.findall(f"{{{SOAP_SERVICE_NS}}}Pairs"):
                phone = _soap_text(pair, "Phone")
                message = _soap_text(pair, "Message", strip=False)
                if not message:
                    raise _V1Error(423, f'Empty message for phone "{phone}"')
                pairs.append((phone, message))
            if not pairs:
                raise _V1Error(407)
        if values.get("IgnorePhoneFormat") not in ("true", "1"):
            for phone, _ in pairs:
                if not _valid_phone(phone):
                    raise _V1Error(428, f'"{phone}": wrong phone format. No messages has been sent')
        params = {k: v for k, v in values.items() if k not in ("Login", "Password", "Originator")}
        infos: list[str] = []
        for phone, message in pairs:
            if phone in self.unroutable:
                infos.append(f"<MessageInfo><Phone>{escape(phone)}</Phone>"
                             "<ProcessResult>Unroutable</ProcessResult></MessageInfo>")
                continue
            part_ids = self._part_ids(message, latin, two_byte, values.get("MaxParts", ""))
            await self._accept(
                AcceptedSms("soap", phone, message, originator, part_ids[0], dict(params),
                            part_ids)
            )
            infos.extend(
                f"<MessageInfo><Phone>{escape(phone)}</Phone>"
                f"<ProcessResult>Accepted</ProcessResult><SmsId>{sms_id}</SmsId></MessageInfo>"
                for sms_id in part_ids
            )
        inner = _soap_status(0, f"queued {len(pairs)} messages")
        return inner + ("".join(infos) if want_ids else "")

    def _soap_status_reply(self, operation: ET.Element) -> str:
        """``StatusRequest`` -> ``StatusResponse`` (l. 1679-1727): ``SmsInfo`` per id;
        an unknown id has ``Error`` and no ``Status`` (l. 1721-1724)."""
        self._soap_auth(operation)
        ids = [(e.text or "").strip() for e in operation.findall(f"{{{SOAP_SERVICE_NS}}}SmsId")]
        if not ids:
            raise _V1Error(433)
        infos: list[str] = []
        for sms_id in ids:
            record = self._statuses.get(sms_id)
            if record is None:
                infos.append(f"<SmsInfo><SmsId>{escape(sms_id)}</SmsId>"
                             f"<Error>{ERROR_TEXTS[434]}</Error></SmsInfo>")
                continue
            stamp = record.submitted.strftime(_SOAP_DATE_FORMAT)
            infos.append(
                f"<SmsInfo><SmsId>{escape(sms_id)}</SmsId><Error>{escape(record.error)}</Error>"
                f"<SubmissionDate>{stamp}</SubmissionDate><SendDate>{stamp}</SendDate>"
                f"<LastStatusChangeDate>{stamp}</LastStatusChangeDate>"
                f"<Status>{escape(record.status)}</Status></SmsInfo>"
            )
        return _soap_status(0, "") + "".join(infos)


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _soap_text(element: ET.Element, name: str, *, strip: bool = True) -> str:
    """A child's text; a ``Message`` keeps its blanks (they are part of the SMS)."""
    text = element.findtext(f"{{{SOAP_SERVICE_NS}}}{name}") or ""
    return text.strip() if strip else text


class _Drop(Exception):
    """Internal signal: the queued failure is "drop"."""

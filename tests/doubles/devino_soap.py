"""Test double of the Devino Telecom SOAP 1.2 service (``/SmsService.asmx``).

Built from the vendor's spec ``001_600c633d74a81c97.txt`` (Devino Telecom SOAP 1.2) only;
line numbers refer to it:

* 26-34  endpoint ``/SmsService.asmx``; requests in UTF-8.
* 36-48  faults: ``soap:Code/soap:Value`` + ``soap:Reason/soap:Text`` ("Server was unable to
         process request. ---> <message>"), sent with HTTP 500 as ASP.NET does.
* 50-96  ``GetSessionID`` (Табл. 1): a session id of 36 characters, valid 120 minutes.
* 98-136 ``GetBalance`` (Табл. 2).
* 212-281 ``SendMessage`` (Табл. 4): one text, up to 1000 addresses; one id per address and
         part (line 189: 70 Cyrillic / 160 Latin characters per SMS; parts of 67/153).
* 352-411 ``GetMessageState`` (Табл. 6/7).
* 491-561 ``GetIncomingMessages`` (Табл. 10/11): messages with ``minDateUTC <= CreateDateUtc
         <= maxDateUTC``.
* 563-587 states (Табл. 16).

Strict: ``POST``, ``Content-Type: application/soap+xml`` with ``charset=utf-8`` (else HTTP
415, as ASP.NET answers), an ``action`` parameter — when given — naming the body's method, a
SOAP 1.2 envelope (else a ``VersionMismatch`` fault), the method in the
``http://ws.devinosms.com`` namespace, a valid session, mandatory parameters present and
well-formed.

Parameter binding is that of an ASP.NET (ASMX) service, whose XmlSerializer matches element
names exactly, case included, in the service namespace, and silently skips any other element.
The names are those of the request examples (:data:`PARAMETERS`, :data:`MESSAGE_FIELDS`); the
tables spell some differently (Табл. 1 ``Login``, Табл. 2/4 ``SessionID``, Табл. 10
``sessionId``), and an element spelled so is ignored: the parameter is null, and the call
fails as the service fails for a null value (a Receiver fault: ``Invalid user login or
password`` for a null login, ``SessionID can not be null or empty`` for a null session). A
missing ``DateTime`` is ``DateTime.MinValue`` (0001-01-01), the default XmlSerializer leaves in
a value type it did not read: a window without ``maxDateUTC`` holds no message.

Simplifications: every accepted SMS stays in state -1 (Sent) until :meth:`set_status`; no
``SendMessageByTimeZone*`` and no ``GetStatistics`` (a Sender fault "Unknown method").
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
from aiohttp import web
from defusedxml import DefusedXmlException

from tests.doubles.base import LoopbackDouble

__all__ = ["AcceptedSms", "DevinoSoapDouble", "IncomingSms", "RecordedRequest"]

NAMESPACE = "http://ws.devinosms.com"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
SESSION_TTL = 7200.0
FIRST_ID = 6098210000001
FAIL_MODES = frozenset({"http500", "http429", "fault", "malformed", "drop", "delay",
                        "accept_then_500"})
MALFORMED_BODY = '<?xml version="1.0"?><soap12:Envelope xmlns:soap12="' + SOAP12 + '"><soap12:B'

_PHONE_RE = re.compile(r"\+?[0-9]{10,15}")  # Табл. 4: 79031234567, +79031234567, 89031234567
_SOURCE_RE = re.compile(r"[0-9]{1,15}|[A-Za-z0-9 ._\-!]{1,11}")  # Табл. 4: 11 Latin / 15 digits
_GSM_RE = re.compile(r"[\x20-\x7e\r\n]*")

#: The parameters of each method, named exactly as in its request example (line numbers).
PARAMETERS: dict[str, tuple[str, ...]] = {
    "GetSessionID": ("login", "password"),  # 64-67
    "GetBalance": ("sessionID",),  # 108-110
    "SendMessage": ("sessionID", "message"),  # 228-241
    "GetMessageState": ("sessionID", "messageID"),  # 364-367
    "GetIncomingMessages": ("sessionID", "maxDateUTC", "minDateUTC"),  # 501-505
}
#: The children of SendMessage's ``<message>`` (lines 230-240); the addresses are ``<string>``.
MESSAGE_FIELDS = ("Data", "DelayUntilUtc", "DestinationAddresses", "SourceAddress",
                  "ReceiptRequested", "Validity")
#: ``default(DateTime)``: what a ``DateTime`` parameter is when its element was not read.
DATETIME_MIN = datetime(1, 1, 1, tzinfo=UTC)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    action: str = ""  # the SOAP method in the body
    #: the method's parameters, names as sent; SendMessage's <message> is flattened into it
    params: dict[str, Any] = field(default_factory=dict)
    #: the parameters the service bound (exact names of the examples); the rest is ignored
    bound: dict[str, Any] = field(default_factory=dict)
    #: elements the service skipped (a name in another case, another namespace, unknown)
    ignored: list[str] = field(default_factory=list)
    #: ``time.monotonic()`` when the request arrived (line 34: 10 requests per second)
    at: float = 0.0


@dataclass
class AcceptedSms:
    phone: str
    text: str
    source: str
    ids: list[str]
    params: dict[str, Any]


@dataclass
class IncomingSms:
    data: str
    source: str
    destination: str
    created: datetime


class SoapFaultReply(Exception):
    def __init__(self, message: str, code: str = "Receiver", status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class _Drop(Exception):
    pass


def fault_response(message: str, code: str = "Receiver", status: int = 500,
                   prefix: str = "soap") -> web.Response:
    """Line 38-47: ``<soap:Code><soap:Value>soap:Receiver</soap:Value></soap:Code>`` and the
    ASP.NET reason text."""
    text = f"Server was unable to process request. ---&gt; {escape(message)}"
    body = (
        f'<?xml version="1.0" encoding="utf-8"?><{prefix}:Envelope xmlns:{prefix}="{SOAP12}" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
        f"<{prefix}:Body><{prefix}:Fault><{prefix}:Code><{prefix}:Value>{prefix}:{code}"
        f"</{prefix}:Value></{prefix}:Code><{prefix}:Reason><{prefix}:Text xml:lang=\"en\">"
        f"{text}</{prefix}:Text></{prefix}:Reason><{prefix}:Detail /></{prefix}:Fault>"
        f"</{prefix}:Body></{prefix}:Envelope>"
    )
    return web.Response(status=status, body=body.encode("utf-8"),
                        content_type="application/soap+xml", charset="utf-8")


def result_response(method: str, inner: str) -> web.Response:
    """The replies of lines 82-95, 122-135, 259-279, 380-400, 519-549."""
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<soap12:Envelope xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:soap12="{SOAP12}">'
        f'<soap12:Body><{method}Response xmlns="{NAMESPACE}"><{method}Result>{inner}'
        f"</{method}Result></{method}Response></soap12:Body></soap12:Envelope>"
    )
    return web.Response(body=body.encode("utf-8"), content_type="application/soap+xml",
                        charset="utf-8")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ns(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def _parse_dt(value: str) -> datetime | None:
    """``xsd:dateTime``; the spec's own examples include ``2014-11-01T11:30`` (no seconds)."""
    text = value.strip().replace("Z", "+00:00")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:\d{2})?", text):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parts_of(text: str) -> int:
    """Line 189: 160 Latin or 70 Cyrillic characters in one SMS; 153/67 per part beyond."""
    single, multi = (160, 153) if _GSM_RE.fullmatch(text) else (70, 67)
    return 1 if len(text) <= single else -(-len(text) // multi)


class DevinoSoapDouble(LoopbackDouble):
    """In-process HTTP server speaking the Devino SOAP 1.2 service (see module docstring)."""

    def __init__(self, *, login: str = "devino_user", password: str = "devino_pass",
                 port: int = 0, session_ttl: float = SESSION_TTL) -> None:
        super().__init__(port)
        self.login = login
        self.password = password
        self.session_ttl = session_ttl
        self.requests: list[RecordedRequest] = []
        self.accepted: list[AcceptedSms] = []
        self.incoming: list[IncomingSms] = []
        self.balance = Decimal("1234.50")
        self.sessions_issued: list[str] = []
        self._sessions: dict[str, float] = {}
        self._states: dict[str, tuple[str, str]] = {}
        self._failures: deque[tuple[str, str, dict[str, Any]]] = deque()
        self._next_id = FIRST_ID

    # -- lifecycle -------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    # -- test controls ---------------------------------------------------------------------

    def fail_next(self, count: int, mode: str, *, method: str = "SendMessage",
                  **kw: Any) -> None:
        """The next ``count`` calls of ``method`` fail. Modes: ``http500`` (plain HTML 500, no
        fault), ``http429`` (``retry_after``), ``fault`` (``message``, ``code`` = Receiver /
        Sender / VersionMismatch …, ``status`` = 500), ``malformed``, ``drop``, ``delay``
        (``seconds``, then processed), ``accept_then_500`` (processed, then HTTP 500)."""
        if mode not in FAIL_MODES:
            raise ValueError(f"unknown fail mode {mode!r}")
        for _ in range(count):
            self._failures.append((method, mode, dict(kw)))

    def expire_sessions(self) -> None:
        """Every session id issued so far is refused from now on."""
        self._sessions.clear()

    def set_status(self, sms_id: str, state: int | str, description: str = "") -> None:
        """What ``GetMessageState`` answers for ``sms_id`` (Табл. 16; any text is sent as is,
        e.g. ``"0x0000000B"`` or ``"InProgress"``)."""
        if sms_id not in self._states:
            raise KeyError(sms_id)
        self._states[sms_id] = (str(state), description)

    def add_incoming(self, phone: str, text: str, recipient: str = "79037654321",
                     created: datetime | None = None) -> IncomingSms:
        """Queue an inbound SMS for ``GetIncomingMessages`` (it stays visible, as at the
        provider, to every poll whose window covers its ``created``). Added with a ``created``
        in the past, it is a message that becomes visible late."""
        sms = IncomingSms(text, phone, recipient, created or datetime.now(UTC))
        self.incoming.append(sms)
        return sms

    async def wait_for_accepted(self, n: int, timeout: float = 10.0) -> list[AcceptedSms]:
        try:
            await self._wait(lambda: len(self.accepted) >= n, timeout)
        except TimeoutError:
            raise AssertionError(
                f"DevinoSoapDouble: expected >= {n} accepted SMS, got {len(self.accepted)}; "
                f"requests: {[(r.action, r.params) for r in self.requests]!r}") from None
        return list(self.accepted)

    async def wait_for_requests(self, n: int, timeout: float = 10.0,
                                action: str | None = None) -> list[RecordedRequest]:
        def matching() -> list[RecordedRequest]:
            return [r for r in self.requests if action is None or r.action == action]

        try:
            await self._wait(lambda: len(matching()) >= n, timeout)
        except TimeoutError:
            raise AssertionError(
                f"DevinoSoapDouble: expected >= {n} {action or ''} requests, got "
                f"{[(r.action, r.params) for r in self.requests]!r}") from None
        return matching()

    def calls(self, action: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.action == action]



    # -- request handling ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        raw = await request.read()
        recorded = RecordedRequest(request.method, request.path,
                                   {k.lower(): v for k, v in request.headers.items()}, raw,
                                   at=arrived)
        self.requests.append(recorded)
        try:
            response = await self._process(request, raw, recorded)
        finally:
            await self._notify()
        return response

    async def _process(self, request: web.Request, raw: bytes,
                       recorded: RecordedRequest) -> web.StreamResponse:
        if request.path.lower() != "/smsservice.asmx":
            return web.Response(status=404, text="404 Not Found")
        if request.method != "POST":
            return web.Response(status=405, text="405 Method Not Allowed")
        # Line 71 / 34: application/soap+xml in UTF-8. text/xml would be SOAP 1.1: refused.
        if request.content_type != "application/soap+xml" or (request.charset or "").lower() \
                not in ("utf-8", "utf8"):
            return web.Response(status=415, text="415 Unsupported Media Type")
        try:
            text = raw.decode("utf-8")
            root: Element = SafeET.fromstring(text)
        except (UnicodeDecodeError, SafeET.ParseError, DefusedXmlException, ValueError):
            return fault_response("Server was unable to read request.", "Sender", 400)
        if root.tag != f"{{{SOAP12}}}Envelope":
            return fault_response("Wrong SOAP version: a SOAP 1.2 envelope is expected.",
                                  "VersionMismatch")
        body = next((c for c in root if c.tag == f"{{{SOAP12}}}Body"), None)
        if body is None or len(body) != 1 or _ns(body[0].tag) != NAMESPACE:
            return fault_response("Server did not recognize the request element.", "Sender",
                                  400)
        call = body[0]
        method = _local(call.tag)
        recorded.action = method
        recorded.params = self._params(call)
        recorded.bound, recorded.ignored = self._bind(method, call)
        action = _action(request.headers.get("Content-Type", ""))
        if action is not None and action != f"{NAMESPACE}/{method}":
            return fault_response(f"Action {action!r} does not match {method}.", "Sender", 400)
        failure = self._take_failure(method)
        accept_then_500 = False
        if failure is not None:
            mode, kw = failure
            if mode == "delay":
                await asyncio.sleep(float(kw["seconds"]))
            elif mode == "accept_then_500":
                accept_then_500 = True
            else:
                return self._failure(request, mode, kw)
        handler = {
            "GetSessionID": self._get_session_id,
            "GetBalance": self._get_balance,
            "SendMessage": self._send_message,
            "GetMessageState": self._get_message_state,
            "GetIncomingMessages": self._get_incoming,
        }.get(method)
        try:
            if handler is None:
                raise SoapFaultReply(f"Unknown method {method}", "Sender", 400)
            response = await handler(recorded.bound)
        except SoapFaultReply as exc:
            return fault_response(exc.message, exc.code, exc.status)
        if accept_then_500:
            return web.Response(status=500, text="500 Internal Server Error")
        return response

    @staticmethod
    def _params(call: Element) -> dict[str, Any]:
        """The parameters as sent (names as written, any namespace), for the tests to see."""
        params: dict[str, Any] = {}
        for child in call:
            name = _local(child.tag)
            if name.lower() == "message":
                for sub in child:
                    sub_name = _local(sub.tag)
                    if sub_name.lower() == "destinationaddresses":
                        params[sub_name] = [(s.text or "") for s in sub
                                            if _local(s.tag).lower() == "string"]
                    else:
                        params[sub_name] = sub.text or ""
                params["@message"] = True
            else:
                params[name] = child.text or ""
        return params

    @staticmethod
    def _bind(method: str, call: Element) -> tuple[dict[str, Any], list[str]]:
        """What XmlSerializer binds: elements whose namespace and name (case included) are
        those of the example; everything else is skipped. SendMessage's ``<message>`` fields
        are flattened into the result, with ``@message`` set when it was read."""
        bound: dict[str, Any] = {}
        ignored: list[str] = []
        wanted = PARAMETERS.get(method, ())
        for child in call:
            name = _local(child.tag)
            if _ns(child.tag) != NAMESPACE or name not in wanted:
                ignored.append(name)
                continue
            if method != "SendMessage" or name != "message":
                bound[name] = child.text or ""
                continue
            bound["@message"] = True
            for sub in child:
                sub_name = _local(sub.tag)
                if _ns(sub.tag) != NAMESPACE or sub_name not in MESSAGE_FIELDS:
                    ignored.append(f"message/{sub_name}")
                elif sub_name == "DestinationAddresses":
                    bound[sub_name] = [(s.text or "") for s in sub
                                       if s.tag == f"{{{NAMESPACE}}}string"]
                else:
                    bound[sub_name] = sub.text or ""
        return bound, ignored

    def _take_failure(self, method: str) -> tuple[str, dict[str, Any]] | None:
        for index, (wanted, mode, kw) in enumerate(self._failures):
            if wanted == method:
                del self._failures[index]
                return mode, kw
        return None

    def _failure(self, request: web.Request, mode: str, kw: dict[str, Any]) -> web.Response:
        if mode == "http500":
            return web.Response(status=500, text="<html>Internal Server Error</html>",
                                content_type="text/html")
        if mode == "http429":
            return web.Response(status=429, text="Too many requests",
                                headers={"Retry-After": str(kw.get("retry_after", 1))})
        if mode == "fault":
            return fault_response(str(kw.get("message", "Internal server error")),
                                  str(kw.get("code", "Receiver")), int(kw.get("status", 500)),
                                  str(kw.get("prefix", "soap")))
        if mode == "malformed":
            return web.Response(body=MALFORMED_BODY.encode(), content_type="application/soap+xml",
                                charset="utf-8")
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError

    def _check_session(self, params: dict[str, Any]) -> None:
        session = params.get("sessionID")
        if not session:
            raise SoapFaultReply("SessionID can not be null or empty")
        expires = self._sessions.get(str(session))
        if expires is None:
            raise SoapFaultReply("Invalid session id")
        if time.monotonic() >= expires:
            raise SoapFaultReply("SessionID expired")

    # -- methods ---------------------------------------------------------------------------

    async def _get_session_id(self, params: dict[str, Any]) -> web.Response:
        """Line 50-96; a wrong login is the fault of line 38-47."""
        # A null login or password (an element in another case is not read) fails so too.
        if params.get("login") != self.login or params.get("password") != self.password:
            raise SoapFaultReply("Invalid user login or password")
        session = str(uuid.uuid4()).upper()  # 36 characters (Табл. 3)
        self._sessions[session] = time.monotonic() + self.session_ttl
        self.sessions_issued.append(session)
        return result_response("GetSessionID", session)

    async def _get_balance(self, params: dict[str, Any]) -> web.Response:
        self._check_session(params)
        return result_response("GetBalance", str(self.balance))

    async def _send_message(self, params: dict[str, Any]) -> web.Response:
        """Line 212-281 and the checks of line 180-187."""
        self._check_session(params)
        if not params.get("@message"):
            raise SoapFaultReply("Message can not be null or empty")
        data = params.get("Data")
        if not data:
            raise SoapFaultReply("Data can not be null or empty")
        if len(data) > 2000:
            raise SoapFaultReply("Data is too long")
        phones = params.get("DestinationAddresses") or []
        if not phones or len(phones) > 1000:
            raise SoapFaultReply("Invalid destination addresses count")
        source = params.get("SourceAddress")
        if not source or not _SOURCE_RE.fullmatch(source):
            raise SoapFaultReply("Invalid source address")
        for phone in phones:
            if not _PHONE_RE.fullmatch(phone):
                raise SoapFaultReply("Invalid destination address")
        validity = params.get("Validity")
        if validity is not None and not re.fullmatch(r"[0-9]+", validity):
            raise SoapFaultReply("Invalid argument Validity", "Sender", 400)
        receipt = params.get("ReceiptRequested")
        if receipt is not None and receipt not in ("true", "false", "1", "0"):
            raise SoapFaultReply("Invalid argument ReceiptRequested", "Sender", 400)
        delay = params.get("DelayUntilUtc")
        if delay is not None and _parse_dt(delay) is None:
            raise SoapFaultReply("Invalid argument DelayUntilUtc", "Sender", 400)
        ids: list[str] = []
        for phone in phones:
            own = [self._new_id() for _ in range(parts_of(data))]
            for sms_id in own:
                self._states[sms_id] = ("-1", "Отправлено")
            self.accepted.append(AcceptedSms(phone, data, source, own, dict(params)))
            ids.extend(own)
        return result_response("SendMessage", "".join(f"<string>{i}</string>" for i in ids))

    def _new_id(self) -> str:
        sms_id = str(self._next_id)
        self._next_id += 1
        return sms_id

    async def _get_message_state(self, params: dict[str, Any]) -> web.Response:
        """Line 352-411; an unknown id has State 255 (003 line 487, 709)."""
        self._check_session(params)
        message_id = params.get("messageID")
        if not message_id:
            raise SoapFaultReply("MessageID can not be null or empty Parameter name: messageId")
        state, description = self._states.get(message_id, ("255", "Неизвестный"))
        now = _fmt(datetime.now(UTC))
        inner = (f"<State>{escape(state)}</State><CreationDateUtc>{now}</CreationDateUtc>"
                 f"<SubmittedDateUtc>{now}</SubmittedDateUtc>"
                 f"<ReportedDateUtc>{now}</ReportedDateUtc>"
                 f"<StateDescription>{escape(description)}</StateDescription>"
                 "<Price>1.25</Price>")
        return result_response("GetMessageState", inner)

    async def _get_incoming(self, params: dict[str, Any]) -> web.Response:
        """Line 491-561: messages with ``minDateUTC <= CreateDateUtc <= maxDateUTC``."""
        self._check_session(params)
        low = _read_dt(params.get("minDateUTC"))
        high = _read_dt(params.get("maxDateUTC"))
        inner = "".join(
            f"<IncomingMessage><Data>{escape(m.data)}</Data>"
            f"<SourceAddress>{escape(m.source)}</SourceAddress>"
            f"<DestinationAddress>{escape(m.destination)}</DestinationAddress>"
            f"<CreateDateUtc>{_fmt(m.created)}</CreateDateUtc></IncomingMessage>"
            for m in self.incoming if low <= m.created <= high
        )
        return result_response("GetIncomingMessages", inner)


def _read_dt(value: str | None) -> datetime:
    """A ``DateTime`` parameter: MinValue when it was not read; an unreadable value is the
    XmlSerializer's read error (a Sender fault)."""
    if value is None:
        return DATETIME_MIN
    moment = _parse_dt(value)
    if moment is None:
        raise SoapFaultReply(f"There is an error in XML document: the string {value!r} is "
                             "not a valid AllXsd value.", "Sender", 400)
    return moment


def _action(header: str) -> str | None:
    match = re.search(r';\s*action\s*=\s*"?([^";]*)"?', header, re.I)
    return match.group(1) if match else None

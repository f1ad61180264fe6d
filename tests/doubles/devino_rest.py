"""Test double of the Devino Telecom REST API (``https://integrationapi.net/rest/``).

Built from the vendor spec ``003_2ae1dc9e2c3c1732.txt`` (Devino Telecom REST API) only; line
numbers below refer to that file:

* 22   base URL ``…/rest/`` + resource; parameters GET or POST, UTF-8 (l. 24), URL-encoded
       with ``Content-Type: application/x-www-form-urlencoded`` (l. 36).
* 28   ``GET /user/sessionid?Login&Password`` → the session id as a quoted string (l. 69-81),
       valid 120 minutes (l. 101); bad credentials → ``Code 4`` (l. 92-99).
* 103  ``GET /User/Balance?SessionID`` → a bare number; expired session → ``Code 4`` (l. 155).
* 164  ``POST /Sms/Send`` (Табл. 3, l. 180): one id per segment (l. 220-227).
* 339  ``POST /Sms/SendBulk`` (Табл. 5, l. 357): ``DestinationAddresses`` repeated (l. 352);
       all segment ids of one number, then the next (l. 402-416).
* 438  ``GET /Sms/State?sessionId&messageId`` (Табл. 6/7): ``{"State": …}`` (l. 471-488).
* 519  ``GET /Sms/In?sessionId&minDateUTC&maxDateUTC`` (Табл. 8): a list (l. 546-569) of the
       messages with ``minDateUTC <= CreateDateUtc <= maxDateUTC`` that are visible now (a
       test can make one visible late, with an older ``CreateDateUtc``); without
       ``maxDateUTC`` → ``Code 9`` with HTTP 500 (l. 583-591).
* 677  Табл. 10 error codes with their HTTP statuses; 691 Табл. 11 message states.

Strictness and tolerance (where the spec contradicts itself, every form it shows is taken):

* parameter names are matched case-insensitively (the spec writes ``SessionID``, ``SessionId``
  and ``sessionId``, ``Login`` and ``login``; the real service is ASP.NET MVC, whose binding
  ignores case) — but a name the endpoint does not know is refused with ``Code 2``, so that a
  typo cannot pass unnoticed (the real service would ignore it);
* error bodies are written as the spec shows them, with unquoted keys
  (``{ Code: 4, Desc: "…" }``); ``error_style = "json"`` sends strict JSON instead;
* dates in replies are .NET JSON dates, ``"\\/Date(ms)\\/"``;
* segments: 70/160 characters in one SMS (l. 223), 67/153 per part (not in the spec: the
  sizes left by a 6-byte concatenation header);
* a POST body is read only with ``application/x-www-form-urlencoded`` and must be UTF-8.

Simplifications: no ``Sms/SendByTimeZone``, no ``Sms/Statistics``; ``SendDate`` is validated
and recorded, not acted upon; an unknown ``messageId`` answers ``State 255`` as in the example
at l. 487; every accepted segment reports ``State -1`` until :meth:`set_status`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.doubles.base import LoopbackDouble

__all__ = ["AcceptedSms", "DevinoRestDouble", "Incoming", "RecordedRequest"]

#: First ids handed out: the values of the spec's examples (l. 220, l. 563).
FIRST_SMS_ID = 579700854169272358
FIRST_INCOMING_ID = 539187174

#: Табл. 10 (l. 677-689).
ERRORS: dict[int, tuple[int, str]] = {
    1: (400, "Argument cannot be null or empty"),
    2: (400, "Invalid argument"),
    3: (400, "Invalid session id"),
    4: (401, "Unauthorized access"),
    5: (403, "Not enough credits"),
    6: (400, "Invalid operation"),
    7: (403, "Forbidden"),
    8: (500, "Gateway error"),
    9: (500, "Internal server error"),
}

#: Табл. 11 (l. 691-709): descriptions of states.
STATE_TEXTS: dict[int, str] = {
    -1: "Отправлено (передано в мобильную сеть)", -2: "В очереди", 47: "Удалено",
    -98: "Остановлено", 0: "Доставлено абоненту", 10: "Неверно введен адрес отправителя",
    11: "Неверно введен адрес получателя", 41: "Недопустимый адрес получателя",
    42: "Отклонено смс-центром", 46: "Просрочено (истек срок жизни сообщения)",
    48: "Отклонено Платформой", 69: "Отклонено", 99: "Неизвестный", 255: "Неизвестный",
}

FAIL_MODES = frozenset({"http500", "http429", "error", "malformed", "reply", "drop", "delay"})

#: Табл. 3 / 5: "79031234567; +79031234567".
_PHONE_RE = re.compile(r"\+?[0-9]{10,15}")
#: Табл. 3 l. 187: at most 11 Latin characters or 15 digits.
_SOURCE_RE = re.compile(r"[0-9]{1,15}|[A-Za-z0-9 ._\-!]{1,11}")
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
_GSM = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXT = set("\f^{}\\[~]|€")

#: endpoint (lower case, after ``/rest/``) → (method, required names, optional names);
#: names in lower case. ``sessionid`` is checked separately for every endpoint but the login.
_ENDPOINTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "user/sessionid": ("GET", ("login", "password"), ()),
    "user/balance": ("GET", (), ()),
    "sms/send": ("POST", ("destinationaddress", "data", "sourceaddress"),
                 ("validity", "senddate")),
    "sms/sendbulk": ("POST", ("destinationaddresses", "data", "sourceaddress"),
                     ("validity", "senddate")),
    "sms/state": ("GET", ("messageid",), ()),
    # maxDateUTC is required too, but its absence is the binding error of l. 583-591.
    "sms/in": ("GET", (), ("mindateutc", "maxdateutc")),
}


def segments(text: str) -> int:
    """70/160 in one SMS (l. 223); 67/153 per part (not in the spec: a 6-byte UDH's)."""
    if all(ch in _GSM or ch in _GSM_EXT for ch in text):
        units, single, multi = sum(2 if ch in _GSM_EXT else 1 for ch in text), 160, 153
    else:
        units, single, multi = len(text.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else -(-units // multi)


def dotnet_date(moment: datetime | None) -> str | None:
    """.NET JSON date, before JSON escaping: ``/Date(1294045911213)/``."""
    if moment is None:
        return None
    return f"/Date({int(moment.timestamp() * 1000)})/"


def dotnet_json(value: Any) -> str:
    """JSON as ASP.NET writes it: ``"\\/Date(…)\\/"`` (l. 487, 564)."""
    return json.dumps(value, ensure_ascii=False).replace('"/Date(', '"\\/Date(').replace(
        ')/"', ')\\/"')


@dataclass
class RecordedRequest:
    """One request as received (before any processing)."""

    method: str
    path: str
    endpoint: str  # lower case, after /rest/
    headers: dict[str, str]
    query: str
    raw_body: bytes
    #: query and form body merged, names as sent, values in order (names may repeat)
    params: list[tuple[str, str]]
    #: time.monotonic() when the request arrived
    at: float = 0.0

    def get(self, name: str) -> list[str]:
        """Values of ``name`` (exact case)."""
        return [v for k, v in self.params if k == name]

    @property
    def names(self) -> list[str]:
        return [k for k, _ in self.params]


@dataclass
class AcceptedSms:
    """One number of an accepted send: its text, sender and segment ids."""

    endpoint: str  # "sms/send" or "sms/sendbulk"
    phone: str
    text: str
    source: str
    ids: list[str]
    validity: int | None = None
    send_date: str | None = None


@dataclass
class Incoming:
    """A mobile-originated message for ``Sms/In``."""

    id: int
    phone: str
    text: str
    recipient: str
    created: datetime


@dataclass
class _Failure:
    mode: str
    endpoint: str
    kw: dict[str, Any] = field(default_factory=dict)


class _Error(Exception):
    def __init__(self, code: int, desc: str | None = None, status: int | None = None) -> None:
        super().__init__(code, desc)
        self.code = code
        self.desc = desc or ERRORS[code][1]
        self.status = status or ERRORS[code][0]


class _Drop(Exception):
    pass


class DevinoRestDouble(LoopbackDouble):
    """In-process HTTP server speaking the Devino REST API (see the module docstring)."""

    url_suffix = "/rest"  # the API root

    def __init__(self, *, login: str = "devino", password: str = "a+b==13!", port: int = 0,
                 balance: float = 1234.5) -> None:
        super().__init__(port)
        self.login = login
        self.password = password
        self.balance = balance
        #: "spec": ``{ Code: 4, Desc: "…" }`` as the spec prints it; "json": strict JSON.
        self.error_style = "spec"
        #: Seconds a session lives (l. 101); tests may shorten it.
        self.session_lifetime = 120 * 60.0
        self.clock: Callable[[], float] = time.monotonic
        self.requests: list[RecordedRequest] = []
        self.accepted: list[AcceptedSms] = []
        self.incoming: list[Incoming] = []
        self.sessions: dict[str, float] = {}  # id -> expiry (clock)
        self._expired: dict[str, int] = {}  # id -> code answered for it
        self._states: dict[str, int] = {}
        self._failures: deque[_Failure] = deque()
        self._next_id = FIRST_SMS_ID
        self._next_incoming = FIRST_INCOMING_ID

    # ------------------------------------------------------------------ lifecycle

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    # ------------------------------------------------------------------ test controls

    def fail_next(self, count: int, mode: str, *, endpoint: str = "sms/send", **kw: Any) -> None:
        """Queue ``count`` failures for the next requests to ``endpoint`` (lower case, after
        ``/rest/``; "*" for any). Modes: ``http500``, ``http429`` (``retry_after``), ``error``
        (``code``, optional ``desc``, ``status``), ``malformed`` (a truncated JSON reply),
        ``reply`` (``body``, optional ``status``: any answer), ``drop`` (close the connection),
        ``delay`` (``seconds``; then processed normally)."""
        if mode not in FAIL_MODES:
            raise ValueError(f"unknown fail mode {mode!r}")
        for _ in range(count):
            self._failures.append(_Failure(mode, endpoint, dict(kw)))

    def expire_sessions(self, code: int = 4) -> None:
        """End every session: their next use answers ``code`` (4 "SessionID expired" as at
        l. 155-159, or 3 "Invalid session id" of Табл. 10)."""
        for session in self.sessions:
            self._expired[session] = code
        self.sessions.clear()

    def set_status(self, sms_id: str, state: int) -> None:
        """What ``Sms/State`` answers for ``sms_id`` (Табл. 11)."""
        self._states[sms_id] = state

    def add_incoming(self, phone: str, text: str, *, recipient: str = "7916000000",
                     created: datetime | None = None) -> Incoming:
        """Queue an inbound message for ``Sms/In``; it stays visible to every poll whose
        window includes its ``created`` time, as with the real service. Added with a
        ``created`` in the past, it is a message that becomes visible late."""
        message = Incoming(self._next_incoming, phone, text, recipient,
                           created or datetime.now(UTC).replace(microsecond=0))
        self._next_incoming += 40
        self.incoming.append(message)
        return message

    def calls(self, endpoint: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]

    async def wait_for_accepted(self, n: int, timeout: float = 10.0) -> list[AcceptedSms]:
        await self._expect(lambda: len(self.accepted) >= n, timeout,
                         lambda: f"{n} accepted, got {self.accepted!r}")
        return list(self.accepted)

    async def wait_for_requests(self, n: int, endpoint: str | None = None,
                                timeout: float = 10.0) -> list[RecordedRequest]:
        def matching() -> list[RecordedRequest]:
            return [r for r in self.requests if endpoint is None or r.endpoint == endpoint]

        await self._expect(lambda: len(matching()) >= n, timeout,
                         lambda: f"{n} requests to {endpoint}, got "
                                 f"{[(r.method, r.path) for r in self.requests]}")
        return matching()

    async def _expect(self, predicate: Callable[[], bool], seconds: float,
                      describe: Callable[[], str]) -> None:
        try:
            async with asyncio.timeout(seconds):
                async with self._changed:
                    await self._changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(f"DevinoRestDouble: expected {describe()}") from None


    # ------------------------------------------------------------------ plumbing

    def _error(self, exc: _Error) -> web.Response:
        if self.error_style == "json":
            text = json.dumps({"Code": exc.code, "Desc": exc.desc}, ensure_ascii=False)
        else:
            desc = json.dumps(exc.desc, ensure_ascii=False)
            text = f"{{\n  Code: {exc.code},\n  Desc: {desc}\n}}"
        return web.Response(status=exc.status, text=text, content_type="application/json",
                            charset="utf-8")

    @staticmethod
    def _ok(value: Any) -> web.Response:
        return web.Response(text=dotnet_json(value), content_type="application/json",
                            charset="utf-8", headers={"Cache-Control": "private"})

    async def _read(self, request: web.Request) -> tuple[bytes, list[tuple[str, str]]]:
        raw = await request.read()
        query = request.raw_path.partition("?")[2]
        params = urllib.parse.parse_qsl(query, keep_blank_values=True, encoding="utf-8",
                                        errors="strict")
        if raw and request.content_type == "application/x-www-form-urlencoded":
            params += urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True,
                                             encoding="utf-8", errors="strict")
        return raw, params

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        endpoint = path.lower().removeprefix("/rest/").strip("/")
        try:
            raw, params = await self._read(request)
            bad_encoding = False
        except UnicodeDecodeError:
            raw, params, bad_encoding = await request.read(), [], True
        self.requests.append(RecordedRequest(
            request.method, path, endpoint, {k.lower(): v for k, v in request.headers.items()},
            request.raw_path.partition("?")[2], raw, params, time.monotonic()))
        await self._notify()
        if not path.lower().startswith("/rest/") or endpoint not in _ENDPOINTS:
            return web.Response(status=404, text="404 Not Found")
        method, required, optional = _ENDPOINTS[endpoint]
        if request.method != method:
            return web.Response(status=405, text="405 Method Not Allowed")
        failure = self._take_failure(endpoint)
        if failure is not None:
            try:
                response = await self._fail(failure)
            except _Drop:
                transport = request.transport
                if transport is not None:
                    transport.abort()
                raise asyncio.CancelledError from None
            if response is not None:
                return response
        try:
            if bad_encoding:
                raise _Error(2, "Parameters are not valid UTF-8")
            if raw and request.content_type != "application/x-www-form-urlencoded":
                raise _Error(1, f"Unsupported content type {request.content_type}")
            values = self._params(endpoint, params, required, optional)
            handler: Callable[[dict[str, list[str]]], Awaitable[web.Response]] = getattr(
                self, "_" + endpoint.replace("/", "_"))
            return await handler(values)
        except _Error as exc:
            return self._error(exc)

    def _params(self, endpoint: str, params: list[tuple[str, str]], required: tuple[str, ...],
                optional: tuple[str, ...]) -> dict[str, list[str]]:
        values: dict[str, list[str]] = {}
        for name, value in params:
            values.setdefault(name.lower(), []).append(value)
        known = {*required, *optional, *(() if endpoint == "user/sessionid" else ("sessionid",))}
        for name in values:
            if name not in known:
                raise _Error(2, f"Unknown parameter {name!r}")
        if endpoint != "user/sessionid":
            self._check_session((values.get("sessionid") or [""])[0])
        for name in required:
            if not any(v.strip() for v in values.get(name, [])):
                raise _Error(1, f"{name} can not be null or empty Parameter name: {name}")
        return values

    def _check_session(self, session: str) -> None:
        if not session:
            raise _Error(1, "SessionID can not be null or empty Parameter name: sessionId")
        if session in self._expired:
            code = self._expired[session]
            raise _Error(code, "SessionID expired" if code == 4 else None)
        expiry = self.sessions.get(session)
        if expiry is None:
            raise _Error(3)
        if self.clock() >= expiry:
            del self.sessions[session]
            self._expired[session] = 4
            raise _Error(4, "SessionID expired")

    def _take_failure(self, endpoint: str) -> _Failure | None:
        for failure in self._failures:
            if failure.endpoint in ("*", endpoint):
                self._failures.remove(failure)
                return failure
        return None

    async def _fail(self, failure: _Failure) -> web.Response | None:
        mode, kw = failure.mode, failure.kw
        if mode == "delay":
            await asyncio.sleep(float(kw["seconds"]))
            return None
        if mode == "http500":
            return web.Response(status=500, text="<html>Runtime Error</html>",
                                content_type="text/html")
        if mode == "http429":
            return web.Response(status=429, text="Too many requests",
                                headers={"Retry-After": str(kw.get("retry_after", 1))})
        if mode == "error":
            code = int(kw["code"])
            status = kw.get("status")
            return self._error(_Error(code, kw.get("desc"), int(status) if status else None))
        if mode == "malformed":
            return web.Response(text='["5797008541', content_type="application/json")
        if mode == "reply":
            return web.Response(status=int(kw.get("status", 200)), text=str(kw["body"]),
                                content_type="application/json", charset="utf-8")
        raise _Drop

    def _new_id(self) -> str:
        sms_id = str(self._next_id)
        self._next_id += 1
        return sms_id

    # ------------------------------------------------------------------ endpoints

    async def _user_sessionid(self, values: dict[str, list[str]]) -> web.Response:
        """l. 28-101: ``"Z5CYSZEKDL1DPICU37WENQVOYKP0T1GSLHX1"`` (36 characters, l. 184)."""
        if values["login"][0] != self.login or values["password"][0] != self.password:
            raise _Error(4, "Invalid user login or password")
        session = uuid.uuid4().hex.upper()[:36].ljust(36, "0")
        self.sessions[session] = self.clock() + self.session_lifetime
        return self._ok(session)

    async def _user_balance(self, values: dict[str, list[str]]) -> web.Response:
        return self._ok(self.balance)

    def _common(self, values: dict[str, list[str]]) -> tuple[str, str, int | None, str | None]:
        text = values["data"][0]
        if len(text) > 2000:
            raise _Error(2, "Data is longer than 2000 characters")
        source = values["sourceaddress"][0]
        if _SOURCE_RE.fullmatch(source) is None:
            raise _Error(6, "Invalid source address")  # the example at l. 240-245
        validity: int | None = None
        if "validity" in values:
            try:
                validity = int(values["validity"][0])
            except ValueError:
                raise _Error(2, "Validity must be an integer (minutes)") from None
        send_date = values.get("senddate", [None])[0]
        if send_date is not None:
            try:
                datetime.strptime(send_date, _DATE_FORMAT)
            except ValueError:
                raise _Error(2, f"Invalid SendDate {send_date!r}") from None
        return text, source, validity, send_date

    async def _accept(self, endpoint: str, phones: list[str],
                      values: dict[str, list[str]]) -> web.Response:
        text, source, validity, send_date = self._common(values)
        for phone in phones:
            if _PHONE_RE.fullmatch(phone) is None:
                raise _Error(2, f"Invalid destination address {phone!r}")
        ids: list[str] = []
        for phone in phones:
            own = [self._new_id() for _ in range(segments(text))]
            ids += own
            for sms_id in own:
                self._states[sms_id] = -1
            self.accepted.append(AcceptedSms(endpoint, phone.lstrip("+"), text, source, own,
                                             validity, send_date))
        await self._notify()
        return self._ok(ids)

    async def _sms_send(self, values: dict[str, list[str]]) -> web.Response:
        """Табл. 3 (l. 180): one number."""
        if len(values["destinationaddress"]) != 1:
            raise _Error(2, "DestinationAddress given more than once")
        return await self._accept("sms/send", values["destinationaddress"], values)

    async def _sms_sendbulk(self, values: dict[str, list[str]]) -> web.Response:
        """Табл. 5 (l. 357): ``DestinationAddresses`` repeated (l. 352)."""
        return await self._accept("sms/sendbulk", values["destinationaddresses"], values)

    async def _sms_state(self, values: dict[str, list[str]]) -> web.Response:
        """l. 466-488."""
        sms_id = values["messageid"][0]
        state = self._states.get(sms_id, 255)
        known = sms_id in self._states
        now = datetime.now(UTC).replace(microsecond=0)
        return self._ok({
            "State": state,
            "CreationDateUtc": dotnet_date(now) if known else None,
            "SubmittedDateUtc": dotnet_date(now) if known else None,
            "ReportedDateUtc": dotnet_date(now) if known and state >= 0 else None,
            "TimeStampUtc": dotnet_date(now) if known else "/Date(-62135596800000)/",
            "StateDescription": STATE_TEXTS.get(state, "Неизвестный"),
            "Price": 0.35 if known else None,
        })

    async def _sms_in(self, values: dict[str, list[str]]) -> web.Response:
        """l. 529-570; a missing ``maxDateUTC`` is the binding error of l. 583-591."""
        if not values.get("maxdateutc"):
            raise _Error(9, "The parameters dictionary contains a null entry for parameter "
                            "'maxDateUtc' of non-nullable type 'DateTime'", 500)
        try:
            high = datetime.strptime(values["maxdateutc"][0], _DATE_FORMAT).replace(tzinfo=UTC)
            low = (datetime.strptime(values["mindateutc"][0], _DATE_FORMAT).replace(tzinfo=UTC)
                   if "mindateutc" in values else None)
        except ValueError:
            raise _Error(2, "Invalid date") from None
        return self._ok([
            {"Data": m.text, "SourceAddress": m.phone, "DestinationAddress": m.recipient,
             "ID": m.id, "CreateDateUtc": dotnet_date(m.created)}
            for m in self.incoming
            if (low is None or m.created >= low) and m.created <= high
        ])

"""Test double of Kcell / Sberbank-Telecom SC.CPA "JSONv2".

Built from spec ``000_11f12833dd23f0e5.txt``; line numbers refer to that file:

* 38-131   ``POST /{client_id}/json2/simple``: Basic auth, ``Content-Type: application/json``,
           reply ``{"message_id": "<uuid>"}`` or ``{"error_code": N, "error_text": "…"}``;
* 134-360  ``POST /{client_id}/json2/batch/sync``: ``messages`` (≤ 50000) with per-message
           ``phone_number``, ``extra_id``, ``text``; reply ``{"messages": [{processed,
           phone_number (string), message_id, extra_id, accepted}]}``;
* 448-562  delivery reports POSTed to ``callback_url``: one object (``number`` a JSON number,
           3.1) or an array (``number`` a string, 3.2) — :meth:`KcellDouble.push_reports`;
* 565-715  ``GET /{client_id}/dr/{message_id}/simple`` and ``/dr/external/{extra_id}/simple``;
           ``status`` is -1 until a final status is set (l. 713-715);
* 783-911  request parameters (table 5); 1118-1323 statuses and error codes (tables 8-11).

Strict where the spec is explicit: Basic auth, the JSON content type, the parameter names of
table 5 (an unknown key is refused with 36015), ``phone_number`` a JSON number (as in every
request example), ``channels == ["sms"]``, ``ttl`` 15..259200 and ``alpha_name`` (both marked
mandatory, l. 885 and 902), ``extra_id`` ≤ 64, ``callback_url`` ≤ 256, text limits 1005 Cyrillic
/ 2295 Latin (table 5; the broadcast section says 1340/3060 — the spec contradicts itself; the
table is used for simple and batch).

The HTTP status of error replies is not given by the spec: the double answers them with
:attr:`KcellDouble.error_http_status` (200 by default) so tests can try others.

Simplifications: one ``message_id`` per message (a long text is not split, the reports count
``total_sms_parts``); no async ``/json2/batch`` + job status, no broadcast, no advanced DR;
``start_time`` is checked for its format only; a missing Basic auth gets HTTP 401, a wrong one
HTTP 401 as well (nginx-style, no JSON body).

A DR query for an id the platform does not know: 4.1 names no reply for it. The double answers
HTTP 404 with an error body in the form of l. 131, ``{"error_code": 36020, "error_text":
"Message not found"}`` (:attr:`KcellDouble.dr_not_found_body`; ``None`` for a bare 404): the
code is one of table 11's internal errors, so a client that decides by the code alone takes
"not found" for a transient failure and never sends. HTTP 404 is what says "unknown".
"""

from __future__ import annotations

import asyncio
import base64
import json as jsonlib
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.doubles.base import LoopbackDouble

__all__ = ["STATUSES", "AcceptedSms", "KcellDouble", "RecordedRequest"]

#: Table 11 texts (English halves) for the codes the double produces.
ERROR_TEXTS: dict[int, str] = {
    36014: "One of the mandatory parameters is missing",
    36015: "Incorrect data format in one of the fields",
    36016: "Incorrect data field type in the message",
    36017: "No permission to send this message",
    36020: "Internal message processing error",
    36024: "Incorrect Recipient number format",
    36027: 'Parameter "extra_id" more than 64 characters',
    36028: "Delivery channels not found",
    36029: "One of the delivery channels is prohibited",
    36048: "Invalid TTL value for one of the channels",
    36049: "SMS message text is too long",
    36054: "SMS message text is empty",
    36055: "The use of this alpha name is not allowed",
    36057: "Quota is exhausted",
    36059: "Recipient field not found",
    36060: "Recipient field is empty",
    36071: "Maximum queue size exceeded",
}

#: Named statuses → (status, substatus, msg_status, status_text), tables 8-10 (l. 1126-1183).
STATUSES: dict[str, tuple[int, int | None, int | None, str]] = {
    "pending": (-1, None, None, "SMS not final"),  # l. 713-715
    "accepted": (1, 12, 12011, "SMS accepted"),
    "enroute": (1, 12, 36011, "SMS sent"),
    "delivered": (2, 23, 23011, "SMS delivered"),
    "expired": (3, 35, 35015, "SMS expired"),
    "deleted": (3, 36, 36021, "SMS deleted"),
    "undelivered": (3, 36, 36031, "SMS undeliverable"),
    "unknown": (3, 36, 36041, "SMS status unknown"),
    "rejected": (3, 10, 36051, "SMS rejected"),
}

FAIL_MODES = frozenset(
    {"http500", "http429", "error", "malformed", "drop", "delay", "accept_then_500"}
)
MALFORMED_BODY = '{"message_id": '

_SIMPLE_KEYS = frozenset({"phone_number", "extra_id", "callback_url", "start_time", "tag",
                          "channels", "channel_options"})
_BATCH_KEYS = frozenset({"messages", "callback_url", "start_time", "tag", "channels",
                         "channel_options"})
_MESSAGE_KEYS = frozenset({"phone_number", "extra_id", "text"})
_SMS_KEYS = frozenset({"text", "alpha_name", "ttl"})
_PHONE_RE = re.compile(r"[1-9][0-9]{9,14}")
#: Table 5, l. 858-861: "YYYY-MM-DD hh:mm:ss±hh:mm", the offset optional.
_START_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}([+-][0-9]{2}:[0-9]{2})?")
_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
    "\f^{}\\[~]|€"
)
MAX_BATCH = 50000  # l. 138


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    json: Any  # parsed body, None when absent or not JSON


@dataclass
class AcceptedSms:
    message_id: str
    phone: str
    text: str
    alpha_name: str | None
    ttl: int
    extra_id: str | None
    callback_url: str | None
    endpoint: str  # "simple" or "batch"
    params: dict[str, Any] = field(default_factory=dict)
    status: str = "pending"
    time_ms: int = 0


@dataclass
class _Failure:
    mode: str
    kw: dict[str, Any]


class _Error(Exception):
    def __init__(self, code: int, text: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.text = text or ERROR_TEXTS.get(code, f"error {code}")


class KcellDouble(LoopbackDouble):
    """In-process JSONv2 server on 127.0.0.1 (see the module docstring)."""

    def __init__(self, *, login: str = "kc-user", password: str = "kc-pass",
                 client_id: str = "acme", port: int = 0,
                 alpha_names: set[str] | None = None) -> None:
        super().__init__(port)
        self.login = login
        self.password = password
        self.client_id = client_id
        #: Alpha names the connection may use (None: any well-formed one); else 36055.
        self.alpha_names = alpha_names
        #: HTTP status of error replies (the spec does not say which).
        self.error_http_status = 200
        #: JSON body of the HTTP 404 answering a DR query for an unknown id (None: no body).
        self.dr_not_found_body: dict[str, Any] | None = {
            "error_code": 36020, "error_text": "Message not found"}
        self.requests: list[RecordedRequest] = []
        self.accepted: list[AcceptedSms] = []
        self.callbacks_sent: list[tuple[str, Any, int]] = []  # (url, body, HTTP status)
        self._by_id: dict[str, AcceptedSms] = {}
        self._by_extra: dict[str, AcceptedSms] = {}
        self._failures: deque[_Failure] = deque()
        self._dr_failures: deque[_Failure] = deque()

    # -- lifecycle ----------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{client_id}/json2/simple", self._simple)
        app.router.add_post("/{client_id}/json2/batch/sync", self._batch)
        app.router.add_get("/{client_id}/dr/external/{extra_id}/simple", self._dr_external)
        app.router.add_get("/{client_id}/dr/{message_id}/simple", self._dr)
        app.router.add_route("*", "/{tail:.*}", self._unknown)

    # -- test controls ------------------------------------------------------------------------

    def fail_next(self, count: int, mode: str, *, target: str = "send", after: int = 0,
                  **kw: Any) -> None:
        """Queue failures for the next send requests (``target="send"``: simple and batch) or
        DR queries (``target="dr"``), after letting ``after`` of them through. Modes:
        ``http500``, ``http429`` (``retry_after``), ``error`` (``code``, optional ``text`` and
        ``http_status``), ``malformed``, ``drop``, ``delay`` (``seconds``; then processed
        normally), ``accept_then_500``."""
        if mode not in FAIL_MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "error" and not isinstance(kw.get("code"), int):
            raise ValueError("mode 'error' needs code=<int>")
        queue = self._dr_failures if target == "dr" else self._failures
        for _ in range(after):
            queue.append(_Failure("pass", {}))
        for _ in range(count):
            queue.append(_Failure(mode, dict(kw)))

    def set_status(self, message_id: str, status: str) -> None:
        """What the DR endpoints (and :meth:`push_reports`) give for ``message_id``; a name of
        :data:`STATUSES`."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        sms = self._by_id[message_id]
        sms.status = status
        sms.time_ms = int(time.time() * 1000)

    def report(self, message_id: str, *, batched: bool = False) -> dict[str, Any]:
        """A delivery report as pushed to ``callback_url`` (3.1 l. 458-476; 3.2 l. 528-560:
        ``number`` a number in a single report, a string in a batched one)."""
        sms = self._by_id[message_id]
        status, substatus, msg_status, _ = STATUSES[sms.status]
        body: dict[str, Any] = {
            "number": sms.phone if batched else int(sms.phone),
            "time": sms.time_ms,
            "status": status,
        }
        if substatus is not None:
            body["substatus"] = substatus
        if msg_status is not None:
            body["msg_status"] = msg_status
        body["message_id"] = sms.message_id
        if sms.extra_id is not None:
            body["extra_id"] = sms.extra_id
        body["sent_via"] = "sms"
        return body

    async def push_reports(self, message_ids: list[str], *, batched: bool = False,
                           url: str | None = None) -> int:
        """POST the reports of ``message_ids`` as the platform does: to the ``callback_url`` of
        their request (or ``url``), one object, or with ``batched`` an array. Returns the HTTP
        status the receiver answered."""
        target = url or self._by_id[message_ids[0]].callback_url
        if target is None:
            raise AssertionError("the messages were sent without callback_url")
        body: Any = [self.report(m, batched=True) for m in message_ids] if batched \
            else self.report(message_ids[0])
        async with aiohttp.ClientSession() as session, session.post(
                target, data=jsonlib.dumps(body).encode(),
                headers={"Content-Type": "application/json"}) as response:
            await response.read()
            self.callbacks_sent.append((target, body, response.status))
            return response.status

    async def wait_for_accepted(self, n: int, timeout: float = 10.0) -> list[AcceptedSms]:
        try:
            await self._wait(lambda: len(self.accepted) >= n, timeout)
        except TimeoutError:
            raise AssertionError(
                f"KcellDouble: expected >= {n} accepted within {timeout}s, got "
                f"{len(self.accepted)}; requests: {[(r.method, r.path) for r in self.requests]}"
            ) from None
        return list(self.accepted)

    async def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        try:
            await self._wait(lambda: len(self.requests) >= n, timeout)
        except TimeoutError:
            raise AssertionError(
                f"KcellDouble: expected >= {n} requests within {timeout}s, got "
                f"{[(r.method, r.path) for r in self.requests]}"
            ) from None
        return list(self.requests)



    # -- plumbing -----------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        try:
            body = jsonlib.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            body = None
        recorded = RecordedRequest(request.method, request.path,
                                   {k.lower(): v for k, v in request.headers.items()}, raw, body)
        self.requests.append(recorded)
        await self._notify()
        return recorded

    def _authorized(self, request: web.Request) -> bool:
        """Tables 1, 2 and 4: HTTP Basic."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(token.strip(), validate=True).decode(
                "utf-8").partition(":")
        except ValueError:
            return False
        return user == self.login and password == self.password

    def _error(self, exc: _Error) -> web.Response:
        return web.json_response({"error_code": exc.code, "error_text": exc.text},
                                 status=self.error_http_status)

    async def _failure(self, queue: deque[_Failure],
                       request: web.Request) -> tuple[web.StreamResponse | None, bool]:
        """(a response that replaces the normal one, accept-then-500)."""
        if not queue:
            return None, False
        failure = queue.popleft()
        if failure.mode == "pass":
            return None, False
        if failure.mode == "http500":
            return web.Response(status=500, text="500 Internal Server Error"), False
        if failure.mode == "http429":
            return web.Response(status=429, text="Too Many Requests",
                                headers={"Retry-After": str(failure.kw.get("retry_after", 1))}
                                ), False
        if failure.mode == "error":
            code = failure.kw["code"]
            return web.json_response(
                {"error_code": code, "error_text": failure.kw.get("text")
                 or ERROR_TEXTS.get(code, f"error {code}")},
                status=failure.kw.get("http_status", self.error_http_status)), False
        if failure.mode == "malformed":
            return web.Response(text=MALFORMED_BODY, content_type="application/json"), False
        if failure.mode == "drop":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500), False
        if failure.mode == "delay":
            await asyncio.sleep(float(failure.kw["seconds"]))
            return None, False
        return None, True  # accept_then_500

    def _check_request(self, request: web.Request) -> web.Response | None:
        if request.match_info["client_id"] != self.client_id:
            return web.Response(status=404, text="404 Not Found")
        if not self._authorized(request):
            return web.Response(status=401, text="401 Authorization Required",
                                headers={"WWW-Authenticate": 'Basic realm="api"'})
        return None

    # -- send ---------------------------------------------------------------------------------

    async def _simple(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        refused = self._check_request(request)
        if refused is not None:
            return refused
        failure, then_500 = await self._failure(self._failures, request)
        if failure is not None:
            return failure
        try:
            body = self._json_body(request, recorded)
            self._keys(body, _SIMPLE_KEYS)
            common = self._common(body)
            options = common.pop("_options")
            text = self._text(options.get("text"))
            phone = self._phone(body)
            extra_id = self._extra_id(body.get("extra_id"))
        except _Error as exc:
            return self._error(exc)
        sms = await self._accept(phone, text, common, extra_id, "simple", body)
        if then_500:
            return web.Response(status=500, text="500 Internal Server Error")
        return web.json_response({"message_id": sms.message_id})

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        refused = self._check_request(request)
        if refused is not None:
            return refused
        failure, then_500 = await self._failure(self._failures, request)
        if failure is not None:
            return failure
        try:
            body = self._json_body(request, recorded)
            self._keys(body, _BATCH_KEYS)
            common = self._common(body)
            options = common.pop("_options")
            if "text" in options:
                raise _Error(36015, "text is given per message in a batch request")
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _Error(36014, 'Parameter "messages" is missing or empty')
            if len(messages) > MAX_BATCH:
                raise _Error(36015, f"more than {MAX_BATCH} messages")
        except _Error as exc:
            return self._error(exc)
        replies: list[dict[str, Any]] = []
        for item in messages:
            item = item if isinstance(item, dict) else {}
            try:
                self._keys(item, _MESSAGE_KEYS)
                phone = self._phone(item)
                extra_id = self._extra_id(item.get("extra_id"))
                text = self._text(item.get("text"))
            except _Error as exc:
                reply = {"processed": False, "phone_number": str(item.get("phone_number", "")),
                         "accepted": False, "error_code": exc.code, "error_text": exc.text}
                if item.get("extra_id") is not None:
                    reply["extra_id"] = item["extra_id"]
                replies.append(reply)
                continue
            sms = await self._accept(phone, text, common, extra_id, "batch", body)
            reply = {"processed": True, "phone_number": phone, "message_id": sms.message_id}
            if extra_id is not None:
                reply["extra_id"] = extra_id
            reply["accepted"] = True
            replies.append(reply)
        if then_500:
            return web.Response(status=500, text="500 Internal Server Error")
        return web.json_response({"messages": replies})

    def _json_body(self, request: web.Request, recorded: RecordedRequest) -> dict[str, Any]:
        # Tables 1 and 2: "Content-Type: application/json" is mandatory.
        if request.content_type != "application/json":
            raise _Error(36015, "Content-Type must be application/json")
        if not isinstance(recorded.json, dict):
            raise _Error(36015, "body is not a JSON object")
        return recorded.json

    @staticmethod
    def _keys(body: dict[str, Any], allowed: frozenset[str]) -> None:
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise _Error(36015, f"unknown parameter(s): {', '.join(unknown)}")

    def _common(self, body: dict[str, Any]) -> dict[str, Any]:
        """channels, channel_options.sms (alpha_name, ttl), callback_url, start_time, tag."""
        channels = body.get("channels")
        if channels is None:
            raise _Error(36028)
        if channels != ["sms"]:
            raise _Error(36029)  # l. 913: only the SMS channel in this installation
        options_all = body.get("channel_options")
        options = options_all.get("sms") if isinstance(options_all, dict) else None
        if not isinstance(options, dict):
            raise _Error(36014, 'Parameter "channel_options.sms" is missing')
        self._keys(options, _SMS_KEYS)
        ttl = options.get("ttl")
        if ttl is None:
            raise _Error(36014, 'Parameter "ttl" is missing')
        if not isinstance(ttl, int) or isinstance(ttl, bool):
            raise _Error(36016, 'Parameter "ttl" must be a number')
        if not 15 <= ttl <= 259200:
            raise _Error(36048)
        alpha = options.get("alpha_name")
        if alpha is None:
            raise _Error(36014, 'Parameter "alpha_name" is missing')
        if not isinstance(alpha, str) or not 0 < len(alpha) <= 11 \
                or any(ch not in _GSM7 for ch in alpha):
            raise _Error(36015, 'Parameter "alpha_name" is malformed')
        if self.alpha_names is not None and alpha not in self.alpha_names:
            raise _Error(36055)
        callback = body.get("callback_url")
        if callback is not None and (not isinstance(callback, str) or len(callback) > 256):
            raise _Error(36015, 'Parameter "callback_url" is malformed')
        start = body.get("start_time")
        if start is not None and (not isinstance(start, str) or not _START_RE.fullmatch(start)):
            raise _Error(36015, 'Parameter "start_time" is malformed')
        tag = body.get("tag")
        if tag is not None and (not isinstance(tag, str) or len(tag) > 64):
            raise _Error(36015, 'Parameter "tag" is malformed')
        return {"_options": options, "alpha_name": alpha, "ttl": ttl, "callback_url": callback}

    @staticmethod
    def _phone(body: dict[str, Any]) -> str:
        if "phone_number" not in body:
            raise _Error(36059)
        value = body["phone_number"]
        if value in ("", None):
            raise _Error(36060)
        # Every request example sends a JSON number (l. 90, 185, 236).
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Error(36016, 'Parameter "phone_number" must be a number')
        phone = str(value)
        if not _PHONE_RE.fullmatch(phone):
            raise _Error(36024)
        return phone

    @staticmethod
    def _extra_id(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise _Error(36016, 'Parameter "extra_id" must be a string')
        if len(value) > 64:
            raise _Error(36027)
        return value

    @staticmethod
    def _text(value: Any) -> str:
        if value is None or value == "":
            raise _Error(36054)
        if not isinstance(value, str):
            raise _Error(36016, 'Parameter "text" must be a string')
        latin = all(ord(ch) < 128 for ch in value)
        if len(value) > (2295 if latin else 1005):  # table 5, l. 881-883
            raise _Error(36049)
        return value

    async def _accept(self, phone: str, text: str, common: dict[str, Any],
                      extra_id: str | None, endpoint: str, body: dict[str, Any]) -> AcceptedSms:
        sms = AcceptedSms(str(uuid.uuid4()), phone, text, common["alpha_name"], common["ttl"],
                          extra_id, common["callback_url"], endpoint,
                          {k: v for k, v in body.items() if k != "messages"},
                          time_ms=int(time.time() * 1000))
        self.accepted.append(sms)
        self._by_id[sms.message_id] = sms
        if extra_id is not None:
            self._by_extra[extra_id] = sms
        await self._notify()
        return sms

    # -- DR -----------------------------------------------------------------------------------

    async def _dr(self, request: web.Request) -> web.StreamResponse:
        return await self._dr_reply(request, self._by_id.get(request.match_info["message_id"]))

    async def _dr_external(self, request: web.Request) -> web.StreamResponse:
        return await self._dr_reply(request, self._by_extra.get(request.match_info["extra_id"]))

    async def _dr_reply(self, request: web.Request, sms: AcceptedSms | None) -> web.StreamResponse:
        """4.1 (l. 614-638): the simple report."""
        await self._record(request)
        refused = self._check_request(request)
        if refused is not None:
            return refused
        failure, _ = await self._failure(self._dr_failures, request)
        if failure is not None:
            return failure
        if sms is None:
            if self.dr_not_found_body is None:
                return web.Response(status=404, text="404 Not Found")
            return web.json_response(self.dr_not_found_body, status=404)
        status, substatus, msg_status, text = STATUSES[sms.status]
        body: dict[str, Any] = {"phone_number": sms.phone, "last_partner": "sms",
                                "message_id": sms.message_id}
        if sms.extra_id is not None:
            body["extra_id"] = sms.extra_id
        body.update({"time": sms.time_ms, "status": status})
        if substatus is not None:
            body["substatus"] = substatus
        if msg_status is not None:
            body["msg_status"] = msg_status
        body["total_sms_parts"] = max(1, -(-len(sms.text) // 153))
        if sms.status == "delivered":
            body["delivered_sms_parts"] = body["total_sms_parts"]
        body["status_text"] = text
        return web.json_response(body)

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.Response(status=404, text="404 Not Found")

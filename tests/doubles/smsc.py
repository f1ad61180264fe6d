"""Test double of an SMSC-style HTTP API (``/sys/send.php``, ``/sys/status.php``).

Built from spec ``004_82738aa6f58320d8.txt``, an excerpt that gives only the error reply
formats ("Ответ сервера и коды ошибок": ``ERROR = N (описание)``, ``fmt=1`` ``0,-N``, ``fmt=2``
XML, ``fmt=3`` JSON), the error codes 1–11, and (l. 79) "В случае успешного запроса Сервер
возвращает ответ в виде строки": a success is answered by a string whose form the excerpt shows
only for other requests (l. 175-185: ``OK``; ``<result>OK</result>``; ``{"result": "OK"}``).
So by default the double answers a successful send with exactly that ``OK`` form
(:attr:`SmscDouble.success_form` ``"ok"``), which names no id; ``"ids"`` answers in the SMSC.ru
convention instead, and :attr:`SmscDouble.success_body` sets any literal body. Script and
parameter names are not in the excerpt; they follow the public SMSC.ru HTTP API conventions:

* ``/sys/send.php`` (GET or POST form): ``login``, ``psw``, ``phones`` (comma-separated),
  ``mes``, ``fmt``, ``charset`` (default windows-1251), ``sender``, ``valid`` (hours 1–24),
  ``id`` (client id 1…2147483647), ``flash``, ``maxsms``, ``translit``; with ``success_form``
  ``"ids"`` the SMSC.ru success replies, e.g. ``fmt=3`` ``{"id": N, "cnt": parts}`` (one id for
  all phones of the request);
* ``/sys/status.php``: ``login``, ``psw``, ``phone``, ``id`` (comma-separated lists of the same
  length), ``fmt``; one message → ``{"status": N, "last_date": …, "last_timestamp": …,
  "err": E}``, several → an array of such objects with ``id`` and ``phone``. Status codes:
  -3 not found, -1 waiting, 0 transferred, 1 delivered, 3 expired, 20, 22–25 failures.

Strictness: unknown parameter names → error 1; login/psw mismatch → 2; a sender not in
``senders`` → 3 (004: "Имя отправителя не найдено"); a phone that is not 10–15 digits → 7; a POST
body is read only with ``Content-Type: application/x-www-form-urlencoded`` (as PHP does); the
same send request repeated within ``repeat_window`` seconds → 9 (004, error 9: identical
requests "в течение минуты"; SMSC's send.php refuses a repeated send the same way). Errors are
answered with HTTP 200 in the form of the request's ``fmt``. Every request is recorded in
:attr:`SmscDouble.requests` before it is processed.

Simplifications: every message starts as -1 (waiting) and changes only by :meth:`set_status`;
no balance, no sender management, no inbound; ``cnt`` counts parts with 160/153 (ASCII) or
70/67 characters.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from tests.doubles.base import LoopbackDouble

__all__ = ["AcceptedSms", "RecordedRequest", "SmscDouble"]

#: 004, the error table (verbatim).
ERROR_TEXTS: dict[int, str] = {
    1: "Ошибка в параметрах.",
    2: "Неверный логин или пароль.",
    3: "Имя отправителя не найдено.",
    4: "IP-адрес временно заблокирован.",
    5: "Ошибка сохранения или удаления имени отправителя.",
    7: "Неверный формат номера.",
    8: "Код подтверждения на указанный номер не может быть доставлен.",
    9: ("Попытка отправки более трех одинаковых запросов на получение списка доступных имен "
        "отправителей или пяти запросов на создание нового имени отправителя в течение минуты."),
    10: "Код уже был отправлен на указанный номер. Повторная попытка возможна через 8 часов.",
    11: "Неверный код подтверждения.",
}

SEND_PARAMS = frozenset({"login", "psw", "phones", "mes", "fmt", "charset", "sender", "valid",
                         "id", "flash", "maxsms", "translit"})
STATUS_PARAMS = frozenset({"login", "psw", "phone", "id", "fmt", "charset", "all"})
FAIL_MODES = frozenset({"http500", "http429", "error", "malformed", "drop", "delay",
                        "accept_then_500"})
ERROR_FORMS = frozenset({"plain", "fmt1", "xml", "json"})
SUCCESS_FORMS = frozenset({"ok", "ids"})
MALFORMED_BODY = '{"id": 12'

_PHONE = re.compile(r"[0-9]{10,15}")
_MAX_ID = 2147483647


@dataclass
class RecordedRequest:
    """One HTTP request as received (recorded before any processing)."""

    method: str
    path: str
    content_type: str
    headers: dict[str, str]
    raw_body: bytes
    query: dict[str, str]  # decoded with the request's charset
    form: dict[str, str]  # the POST body, decoded likewise ({} for GET)

    @property
    def params(self) -> dict[str, str]:
        """Query and body together; the body wins (PHP ``$_REQUEST``)."""
        return {**self.query, **self.form}


@dataclass
class AcceptedSms:
    """One SMS accepted for one phone."""

    phone: str
    message: str
    sender: str | None
    sms_id: int
    params: dict[str, str] = field(default_factory=dict)

    @property
    def provider_id(self) -> str:
        return f"{self.phone}:{self.sms_id}"


@dataclass
class _Failure:
    mode: str
    path: str | None
    kw: dict[str, Any]


@dataclass
class _Status:
    status: int = -1
    err: int = 0
    changed: float = field(default_factory=time.time)


class _SmscError(Exception):
    def __init__(self, code: int, text: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.text = text or ERROR_TEXTS.get(code, f"error {code}")


class _Drop(Exception):
    pass


def error_body(code: int, text: str, form: str) -> tuple[str, str]:
    """The four error forms of 004 → (body, content type)."""
    if form == "plain":
        return f"ERROR = {code} ({text})", "text/plain"
    if form == "fmt1":
        return f"0,-{code}", "text/plain"
    if form == "xml":
        return (f"<result>\n<error>{escape(text)}</error>\n<error_code>{code}</error_code>\n"
                "</result>", "text/xml")
    return json.dumps({"error": text, "error_code": code}, ensure_ascii=False), "application/json"


def _form_for_fmt(fmt: str) -> str:
    return {"1": "fmt1", "2": "xml", "3": "json"}.get(fmt, "plain")


def _parts(text: str) -> int:
    single, multi = (160, 153) if all(ord(c) < 128 for c in text) else (70, 67)
    return 1 if len(text) <= single else -(-len(text) // multi)


def _decode_pairs(raw: bytes) -> list[tuple[str, str]]:
    """Parse ``a=b&c=d`` in the request's ``charset`` (SMSC default: windows-1251)."""
    text = "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)
    probe = dict(urllib.parse.parse_qsl(text, keep_blank_values=True, encoding="latin-1"))
    charset = probe.get("charset", "windows-1251") or "windows-1251"
    try:
        return urllib.parse.parse_qsl(text, keep_blank_values=True, encoding=charset,
                                      errors="strict")
    except (LookupError, UnicodeDecodeError):
        return [("charset", "\ufffd")]  # forces error 1


class SmscDouble(LoopbackDouble):
    """In-process HTTP server speaking the SMSC-style API (see the module docstring)."""

    def __init__(self, *, login: str = "acme", password: str = "s3cret",
                 senders: set[str] | None = None, port: int = 0) -> None:
        super().__init__(port)
        self.login = login
        self.password = password
        #: Registered sender names; None accepts any (004, error 3 otherwise).
        self.senders = senders
        self.requests: list[RecordedRequest] = []
        self.accepted: list[AcceptedSms] = []
        #: Seconds within which the same send request is refused with error 9.
        self.repeat_window = 60.0
        #: How a successful send is answered: "ok" (004's success string, no id) or "ids"
        #: (the SMSC.ru convention: id and part count).
        self.success_form = "ok"
        #: A literal body for every successful send (overrides ``success_form``).
        self.success_body: str | None = None
        self.clock: Callable[[], float] = time.monotonic
        self._failures: deque[_Failure] = deque()
        self._statuses: dict[tuple[str, int], _Status] = {}
        self._recent: dict[tuple[tuple[str, str], ...], float] = {}
        self._next_id = 1

    # ------------------------------------------------------------------ lifecycle

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/sys/send.php", self._handle_send)
        app.router.add_route("*", "/sys/status.php", self._handle_status)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)

    # ------------------------------------------------------------------ test controls

    def fail_next(self, count: int, mode: str, *, path: str | None = None, **kw: Any) -> None:
        """Queue ``count`` failures for the next requests (to ``path`` only, if given).

        Modes: ``http500``, ``http429`` (``retry_after``), ``error`` (``code``, ``text``,
        ``form`` = plain/fmt1/xml/json, default the request's ``fmt``), ``malformed``
        (``body``), ``drop``, ``delay`` (``seconds``; then processed normally),
        ``accept_then_500`` (processed, then HTTP 500)."""
        if mode not in FAIL_MODES:
            raise ValueError(f"unknown fail mode {mode!r}")
        if mode == "error" and not isinstance(kw.get("code"), int):
            raise ValueError("fail_next(mode='error') needs code=<int>")
        if mode == "error" and kw.get("form", "json") not in ERROR_FORMS:
            raise ValueError(f"form must be one of {sorted(ERROR_FORMS)}")
        if mode == "delay" and "seconds" not in kw:
            raise ValueError("fail_next(mode='delay') needs seconds=<float>")
        for _ in range(count):
            self._failures.append(_Failure(mode, path, dict(kw)))

    def set_status(self, provider_id: str | int, status: int, err: int = 0) -> None:
        """What status.php reports: ``"phone:id"`` for one phone, or an id for all its phones."""
        text = str(provider_id)
        if ":" in text:
            phone, _, sms_id = text.partition(":")
            keys = [(phone, int(sms_id))]
        else:
            keys = [key for key in self._statuses if key[1] == int(text)]
        if not keys or any(key not in self._statuses for key in keys):
            raise KeyError(provider_id)
        for key in keys:
            self._statuses[key] = _Status(status, err)

    async def wait_for_accepted(self, n: int, timeout: float = 10.0) -> list[AcceptedSms]:
        try:
            await self._wait(lambda: len(self.accepted) >= n, timeout)
        except TimeoutError:
            raise AssertionError(
                f"SmscDouble: expected >= {n} accepted SMS within {timeout}s, got "
                f"{self.accepted!r}; requests {[(r.path, r.params) for r in self.requests]!r}"
            ) from None
        return list(self.accepted)

    def count(self, path: str | None = None) -> int:
        """Requests received so far (to ``path`` only, if given)."""
        return sum(1 for r in self.requests if path is None or r.path == path)

    async def wait_for_requests(self, n: int, timeout: float = 10.0,
                                path: str | None = None) -> list[RecordedRequest]:
        def matching() -> list[RecordedRequest]:
            return [r for r in self.requests if path is None or r.path == path]

        try:
            await self._wait(lambda: len(matching()) >= n, timeout)
        except TimeoutError:
            raise AssertionError(
                f"SmscDouble: expected >= {n} requests to {path or 'any path'} within "
                f"{timeout}s, got {[(r.method, r.path) for r in self.requests]!r}"
            ) from None
        return matching()



    # ------------------------------------------------------------------ plumbing

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        raw_query = request.raw_path.partition("?")[2].encode("latin-1", "replace")
        form: dict[str, str] = {}
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            form = dict(_decode_pairs(raw))
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            content_type=request.content_type,
            headers={k.lower(): v for k, v in request.headers.items()},
            raw_body=raw,
            query=dict(_decode_pairs(raw_query)),
            form=form,
        )
        self.requests.append(recorded)
        await self._notify()
        return recorded

    def _take_failure(self, path: str) -> _Failure | None:
        for failure in self._failures:
            if failure.path is None or failure.path == path:
                self._failures.remove(failure)
                return failure
        return None

    async def _failure_response(self, failure: _Failure | None,
                                fmt: str) -> web.StreamResponse | None:
        if failure is None or failure.mode == "accept_then_500":
            return None
        kw = failure.kw
        if failure.mode == "delay":
            await asyncio.sleep(float(kw["seconds"]))
            return None
        if failure.mode == "http500":
            return web.Response(status=500, text="500 Internal Server Error")
        if failure.mode == "http429":
            return web.Response(status=429, text="Too Many Requests",
                                headers={"Retry-After": str(kw.get("retry_after", 1))})
        if failure.mode == "error":
            code = int(kw["code"])
            text = str(kw.get("text") or ERROR_TEXTS.get(code, f"error {code}"))
            return self._error(code, text, str(kw.get("form") or _form_for_fmt(fmt)))
        if failure.mode == "malformed":
            return web.Response(text=str(kw.get("body", MALFORMED_BODY)),
                                content_type="application/json")
        raise _Drop

    @staticmethod
    def _error(code: int, text: str, form: str) -> web.Response:
        body, ctype = error_body(code, text, form)
        return web.Response(text=body, content_type=ctype, charset="utf-8")

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError

    def _check_common(self, params: dict[str, str], allowed: frozenset[str]) -> None:
        unknown = set(params) - allowed
        if unknown:
            raise _SmscError(1, f"unknown parameters: {', '.join(sorted(unknown))}")
        if params.get("charset", "windows-1251") not in ("utf-8", "windows-1251", "koi8-r"):
            raise _SmscError(1, "bad charset")
        if params.get("fmt", "0") not in ("0", "1", "2", "3"):
            raise _SmscError(1, "bad fmt")
        if params.get("login") != self.login or params.get("psw") != self.password:
            raise _SmscError(2)

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.Response(status=404, text="404 Not Found")

    # ------------------------------------------------------------------ send.php

    async def _handle_send(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        params = recorded.params
        fmt = params.get("fmt", "0")
        failure = self._take_failure(request.path)
        try:
            response = await self._failure_response(failure, fmt)
        except _Drop:
            return self._drop(request)
        if response is not None:
            return response
        if request.method not in ("GET", "POST"):
            return web.Response(status=405)
        try:
            reply = await self._send(params)
        except _SmscError as exc:
            return self._error(exc.code, exc.text, _form_for_fmt(fmt))
        if failure is not None and failure.mode == "accept_then_500":
            return web.Response(status=500, text="500 Internal Server Error")
        sms_id, cnt = reply
        if self.success_body is not None:
            return web.Response(text=self.success_body)
        if self.success_form not in SUCCESS_FORMS:
            raise ValueError(f"success_form must be one of {sorted(SUCCESS_FORMS)}")
        if self.success_form == "ok":
            # 004, l. 175-185: "при fmt = 0, 1: OK", "<result>OK</result>", {"result": "OK"}.
            if fmt == "3":
                return web.json_response({"result": "OK"})
            if fmt == "2":
                return web.Response(text="<result>OK</result>", content_type="text/xml")
            return web.Response(text="OK")
        if fmt == "3":
            return web.json_response({"id": sms_id, "cnt": cnt})
        if fmt == "2":
            return web.Response(text=f"<result>\n<cnt>{cnt}</cnt>\n<id>{sms_id}</id>\n</result>",
                                content_type="text/xml")
        if fmt == "1":
            return web.Response(text=f"{sms_id},{cnt}")
        return web.Response(text=f"OK - {cnt} SMS, ID - {sms_id}")

    async def _send(self, params: dict[str, str]) -> tuple[int, int]:
        self._check_common(params, SEND_PARAMS)
        phones = [p.strip() for p in params.get("phones", "").split(",") if p.strip()]
        text = params.get("mes", "")
        if not phones or not text:
            raise _SmscError(1, "phones and mes are required")
        if any(_PHONE.fullmatch(p) is None for p in phones):
            raise _SmscError(7)
        sender = params.get("sender")
        if sender is not None and self.senders is not None and sender not in self.senders:
            raise _SmscError(3)
        for name, low, high in (("valid", 1, 24), ("id", 1, _MAX_ID), ("maxsms", 1, 255),
                                ("flash", 0, 1), ("translit", 0, 2)):
            value = params.get(name)
            if value is not None and (not value.isdigit() or not low <= int(value) <= high):
                raise _SmscError(1, f"bad {name}")
        # Error 9: the same request again within the window.
        fingerprint = tuple(sorted(params.items()))
        now = self.clock()
        seen = self._recent.get(fingerprint)
        if seen is not None and now - seen < self.repeat_window:
            raise _SmscError(9)
        self._recent[fingerprint] = now
        if "id" in params:
            sms_id = int(params["id"])
        else:
            sms_id, self._next_id = self._next_id, self._next_id + 1
        for phone in phones:
            self.accepted.append(AcceptedSms(phone, text, sender, sms_id, dict(params)))
            self._statuses[(phone, sms_id)] = _Status()
        await self._notify()
        return sms_id, _parts(text) * len(phones)

    # ------------------------------------------------------------------ status.php

    async def _handle_status(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        params = recorded.params
        fmt = params.get("fmt", "0")
        try:
            response = await self._failure_response(self._take_failure(request.path), fmt)
        except _Drop:
            return self._drop(request)
        if response is not None:
            return response
        try:
            self._check_common(params, STATUS_PARAMS)
            if fmt != "3":
                raise _SmscError(1, "the double answers statuses in fmt=3 only")
            phones = params.get("phone", "").split(",")
            ids = params.get("id", "").split(",")
            if len(phones) != len(ids) or not all(phones) or not all(i.isdigit() for i in ids):
                raise _SmscError(1, "phone and id lists differ")
        except _SmscError as exc:
            return self._error(exc.code, exc.text, _form_for_fmt(fmt))
        entries: list[dict[str, Any]] = []
        for phone, sms_id in zip(phones, ids, strict=True):
            record = self._statuses.get((phone, int(sms_id)))
            if record is None:
                entry: dict[str, Any] = {"status": -3, "last_date": "", "last_timestamp": 0,
                                         "err": 0}
            else:
                entry = {
                    "status": record.status,
                    "last_date": time.strftime("%d.%m.%Y %H:%M:%S",
                                               time.localtime(record.changed)),
                    "last_timestamp": int(record.changed),
                    "err": record.err,
                }
            if len(ids) > 1:
                entry.update({"id": int(sms_id), "phone": phone})
            entries.append(entry)
        return web.json_response(entries[0] if len(entries) == 1 else entries)

"""SMSC-style HTTP API: ``/sys/send.php`` and ``/sys/status.php`` with ``fmt=3`` (JSON).

Spec: ``004_82738aa6f58320d8.txt`` is an excerpt: it gives only the error formats
("Ответ сервера и коды ошибок": ``ERROR = N (описание)``, ``fmt=1`` ``0,-N``, ``fmt=2`` XML,
``fmt=3`` JSON) and the error codes 1–11. It names no script, no parameter and no success
format, so everything else here follows the public SMSC.ru HTTP API conventions, not the spec:

* send: ``POST {base_url}/sys/send.php``, form ``login``, ``psw``, ``phones`` (comma-separated),
  ``mes``, ``fmt=3``, ``charset=utf-8``, ``sender``, ``valid`` (hours, 1–24), ``id`` (a
  client-assigned message id, 1…2147483647), ``flash=1``, ``maxsms``; success
  ``{"id": N, "cnt": parts}``;
* status: ``GET {base_url}/sys/status.php?login=&psw=&phone=&id=&fmt=3`` → ``{"status": N,
  "err": E, "last_date": …}``; several messages at once as comma-separated ``phone`` and ``id``
  lists, answered by a JSON array of such objects carrying ``phone`` and ``id``.

Errors arrive in HTTP 200 bodies (specs/README.md). Two codes punish careless clients
(notes/pitfalls.md, "Providers"): 4 blocks the caller's IP after frequent errors, 9 refuses the
same request repeated within a minute. So: error 2 (bad login/password) is remembered for
:data:`AUTH_FAILURE_TTL` seconds and every call fails fast without a request; error 4 is
remembered for :data:`IP_BLOCK_RETRY_AFTER` seconds likewise (transient); error 9 is transient
with ``retry_after`` ≥ :data:`REPEAT_RETRY_AFTER`; a retry of a single SMS first asks
``status.php`` whether the client id of the first attempt already arrived, so that an ambiguous
failure is not followed by an identical request (a duplicate SMS, or error 9).

A provider id is ``"<phone>:<id>"``: ``status.php`` needs both, and a request to several phones
returns one id for all of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import urlencode
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.models import DeliveryReport
from bridge.upstreams.base import HttpUpstream, OutboundSms, SendReceipt

SEND_PATH = "/sys/send.php"
STATUS_PATH = "/sys/status.php"

#: Seconds a bad login/password (error 2) is remembered: no request is made meanwhile.
AUTH_FAILURE_TTL = 300.0
#: Error 4, "IP-адрес временно заблокирован" (004, error table): wait at least this long, and
#: make no request to the provider meanwhile.
IP_BLOCK_RETRY_AFTER = 600.0
#: Error 9, the same request repeated too often "в течение минуты" (004, error table).
REPEAT_RETRY_AFTER = 60.0
#: Error 10, "Повторная попытка возможна через 8 часов" (004, error table).
CODE_RESEND_RETRY_AFTER = 8 * 3600.0

#: The excerpt's table comes from the sender-name section: its 3 is "sender not found" and its
#: 9 speaks of repeated sender-name requests, while in SMSC's send.php 9 refuses a repeated
#: send request within a minute (notes/pitfalls.md). Both readings lead to the same handling:
#: 3 permanent, 9 transient after at least a minute, never retried at once.
#: Error codes after which the same request may succeed later, with the wait each needs.
#: Every other code (1 parameters, 2 login, 3 sender, 5, 7 number format, 8 undeliverable,
#: 11, and codes outside the excerpt) describes the request or the account: repeating the
#: request cannot help, and each repeated error brings error 4 closer.
TRANSIENT_CODES: dict[int, float] = {
    4: IP_BLOCK_RETRY_AFTER,
    9: REPEAT_RETRY_AFTER,
    10: CODE_RESEND_RETRY_AFTER,
}
AUTH_CODE = 2
IP_BLOCKED_CODE = 4

#: SMSC status codes (status.php) → the bridge's statuses. -3 (not found) is left out of the
#: answer (the poller asks again later). 2 "read" and 4 "link followed" imply delivery.
STATUS_MAP: dict[int, str] = {
    -1: "sent",  # waiting to be sent
    0: "sent",  # transferred to the operator
    1: "delivered",
    2: "delivered",
    3: "expired",
    4: "delivered",
    20: "undelivered",  # impossible to deliver
    22: "rejected",  # wrong number
    23: "rejected",  # forbidden
    24: "rejected",  # not enough money
    25: "undelivered",  # unavailable number
}
NOT_FOUND_STATUS = -3

#: Client ids are 32-bit positive integers in the SMSC API.
MAX_CLIENT_ID = 2147483647
#: ``valid`` is a number of hours from 1 to 24 in the SMSC API.
MAX_VALID_HOURS = 24
#: Phones per status.php request (the URL stays well under common 8 KiB limits).
STATUS_CHUNK = 100

_PLAIN_ERROR = re.compile(r"\AERROR\s*=\s*(-?\d+)\s*(?:\((.*)\))?", re.DOTALL)
_FMT1_ERROR = re.compile(r"\A(\d+)\s*,\s*-(\d+)\Z")


def _decode(body: bytes) -> str:
    """We ask for ``charset=utf-8``; SMSC's own default is windows-1251, accepted as well."""
    raw = body.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1251", errors="replace")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def parse_smsc_error(body: bytes) -> tuple[int, str] | None:
    """``(code, description)`` when ``body`` is an SMSC error reply, else ``None``.

    004, "Ответ сервера и коды ошибок": the four forms are ``ERROR = N (описание)``;
    ``fmt=1`` ``0,-N``; ``fmt=2`` ``<result><error>описание</error><error_code>N</error_code>
    </result>``; ``fmt=3`` ``{"error": "описание", "error_code": N}``. Every form is accepted
    whatever ``fmt`` was asked for (a server may fall back to the plain form, e.g. before it
    has read ``fmt``). Tolerances, as the excerpt is terse: the description in parentheses is
    optional, ``fmt=1`` may carry a message id instead of ``0`` before ``-N``, and the JSON
    ``error_code`` may be a number or a numeric string. An error without a numeric code is not
    recognised (the caller then treats the reply as malformed).
    """
    text = _decode(body).strip()
    if not text:
        return None
    if match := _PLAIN_ERROR.match(text):
        return int(match.group(1)), (match.group(2) or "").strip()
    if match := _FMT1_ERROR.match(text):
        return int(match.group(2)), ""
    if text.startswith("{"):
        try:
            reply = json.loads(text)
        except ValueError:
            return None
        if isinstance(reply, dict) and "error_code" in reply:
            code = _as_int(reply["error_code"])
            if code is not None:
                return code, str(reply.get("error") or "").strip()
        return None
    if text.startswith("<"):
        try:
            root: Element = SafeET.fromstring(text.encode("utf-8"))
        except (SafeET.ParseError, DefusedXmlException, ValueError):
            return None
        code = _as_int(root.findtext("error_code"))
        if code is not None:
            return code, (root.findtext("error") or "").strip()
    return None


def error_for_code(code: int, text: str, *, upstream: str) -> UpstreamError:
    """Map an SMSC error code (004, error table) to the bridge's error classes."""
    message = f"{upstream}: SMSC error {code}" + (f" ({text})" if text else "")
    if code in TRANSIENT_CODES:
        return TransientUpstreamError(message, code, retry_after=TRANSIENT_CODES[code])
    return PermanentUpstreamError(message, code)


def client_id(keys: Sequence[str]) -> int:
    """A stable SMSC ``id`` (1…2147483647) for the message(s) of one request: the same keys
    give the same id on every attempt."""
    digest = hashlib.sha256("\n".join(keys).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % MAX_CLIENT_ID + 1


def valid_hours(validity: int | None) -> int | None:
    """``valid`` in whole hours, at least 1 and at most 24 (the SMSC range): a validity under an
    hour cannot be expressed, and one beyond a day is capped."""
    if not validity:
        return None
    return min(MAX_VALID_HOURS, max(1, math.ceil(validity / 3600)))


def split_provider_id(provider_id: str) -> tuple[str, str] | None:
    phone, sep, sms_id = provider_id.partition(":")
    if not sep or not phone.isdigit() or not sms_id.lstrip("-").isdigit():
        return None
    return phone, sms_id


def _group_key(sms: OutboundSms) -> tuple[Any, ...]:
    return (sms.text, sms.originator, valid_hours(sms.validity), sms.flash, sms.max_parts)


class SmscUpstream(HttpUpstream):
    """SMSC HTTP API (see the module docstring for what comes from 004 and what does not).

    Not ``idempotent``: the API takes a client ``id`` but does not promise to refuse a second
    request with it. A retry of a single SMS checks the id first (:meth:`send`), which closes
    most of the gap but not all of it (a first attempt still in flight is not yet visible).
    """

    kind: ClassVar[str] = "smsc"
    idempotent: ClassVar[bool] = False
    required: ClassVar[tuple[str, ...]] = ("login", "password")
    max_batch: int = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Monotonic clock for the error caches; tests may replace it.
        self.clock: Callable[[], float] = time.monotonic
        self._auth_failed_until = 0.0
        self._auth_failure: tuple[int, str] = (AUTH_CODE, "")
        self._blocked_until = 0.0

    # ------------------------------------------------------------------ plumbing

    def _credentials(self) -> list[tuple[str, str]]:
        assert self.settings.login and self.settings.password
        return [("login", self.settings.login), ("psw", self.settings.password.get_secret_value())]

    def _check_caches(self) -> None:
        """Fail fast, without a request, while an error 2 or 4 is remembered."""
        now = self.clock()
        if now < self._auth_failed_until:
            code, text = self._auth_failure
            raise PermanentUpstreamError(
                f"{self.name}: SMSC error {code} ({text or 'bad login or password'}), "
                f"not asking again for {self._auth_failed_until - now:.0f}s", code)
        if now < self._blocked_until:
            remaining = self._blocked_until - now
            raise TransientUpstreamError(
                f"{self.name}: SMSC error 4 (IP blocked), not asking again for {remaining:.0f}s",
                IP_BLOCKED_CODE, retry_after=remaining)

    def _error(self, code: int, text: str) -> UpstreamError:
        """The error for ``code``, remembering 2 and 4 so that no request follows for a while."""
        if code == AUTH_CODE:
            self._auth_failed_until = self.clock() + AUTH_FAILURE_TTL
            self._auth_failure = (code, text)
        elif code == IP_BLOCKED_CODE:
            self._blocked_until = self.clock() + IP_BLOCK_RETRY_AFTER
        return error_for_code(code, text, upstream=self.name)

    def _malformed(self, what: str) -> TransientUpstreamError:
        return TransientUpstreamError(f"{self.name}: malformed reply ({what})", "malformed",
                                      ambiguous=True)

    async def _call(self, attempt: int, method: str, path: str, **kwargs: Any) -> Any:
        """One request; returns the decoded JSON reply (``fmt=3``) or raises the mapped error.

        Errors come in HTTP 200 bodies in any of the four forms of 004 (:func:`parse_smsc_error`).
        """
        self._check_caches()
        response = await self.request(attempt, method, path, **kwargs)
        error = parse_smsc_error(response.content)
        if error is not None:
            raise self._error(*error)
        try:
            return json.loads(_decode(response.content))
        except ValueError as exc:
            raise self._malformed("not JSON") from exc

    # ------------------------------------------------------------------ sending

    def form(self, group: Sequence[OutboundSms], sms_id: int) -> bytes:
        """The send.php form for messages sharing text, sender and options (SMSC convention;
        004 names no parameters)."""
        first = group[0]
        params = [
            *self._credentials(),
            ("phones", ",".join(sms.phone for sms in group)),
            ("mes", first.text),
            ("fmt", "3"),
            ("charset", "utf-8"),
            ("id", str(sms_id)),
        ]
        if first.originator:
            params.append(("sender", first.originator))
        hours = valid_hours(first.validity)
        if hours is not None:
            params.append(("valid", str(hours)))
        if first.flash:
            params.append(("flash", "1"))
        if first.max_parts < 255:
            params.append(("maxsms", str(first.max_parts)))
        return urlencode(params, encoding="utf-8").encode("ascii")

    async def _send_group(self, group: Sequence[OutboundSms]) -> list[SendReceipt]:
        """One send.php request to the (distinct) phones of ``group``; raises on failure."""
        sms_id = client_id([sms.idempotency_key for sms in group])
        reply = await self._call(
            max(sms.attempt for sms in group),
            "POST",
            SEND_PATH,
            content=self.form(group, sms_id),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        # Success (SMSC convention): {"id": N, "cnt": parts}. The id is ours, echoed; a reply
        # with "cnt" but no "id" is taken as accepted under the id we sent.
        if not isinstance(reply, dict) or ("id" not in reply and "cnt" not in reply):
            raise self._malformed("no id")
        returned = _as_int(reply.get("id", sms_id))
        if returned is None:
            raise self._malformed("id is not a number")
        parts = _as_int(reply.get("cnt"))
        note = f"{parts} SMS for {len(group)} phone(s)" if parts is not None else ""
        return [SendReceipt((f"{sms.phone}:{returned}",), note=note) for sms in group]

    async def _accepted_earlier(self, sms: OutboundSms) -> SendReceipt | None:
        """On a retry: did the first attempt's request arrive (status.php knows its id)?"""
        provider_id = f"{sms.phone}:{client_id([sms.idempotency_key])}"
        try:
            reports = await self._poll_chunk(sms.attempt, [provider_id])
        except PermanentUpstreamError as exc:
            if exc.code == AUTH_CODE:
                raise
            # A refusal of the question (not of the SMS) must not fail the SMS: send it.
            return None
        if reports:
            return SendReceipt((provider_id,), note="accepted by an earlier attempt")
        return None

    async def send(self, sms: OutboundSms) -> SendReceipt:
        if sms.attempt > 1:
            earlier = await self._accepted_earlier(sms)
            if earlier is not None:
                return earlier
        [receipt] = await self._send_group([sms])
        return receipt

    async def send_batch(self, batch: Sequence[OutboundSms]) -> list[SendReceipt | UpstreamError]:
        """Messages sharing text, sender, validity and options go in one request with several
        phones (each phone once per request; the single returned id becomes ``phone:id`` for
        each). Retries (``attempt`` > 1) go one by one through :meth:`send`. A failure of the
        only request is raised; with several requests it is the result of its messages, and
        after a transient failure the remaining requests are not made (their messages get a
        non-ambiguous transient error: nothing was sent for them)."""
        groups: list[list[int]] = []
        open_groups: dict[tuple[Any, ...], list[int]] = {}
        for index, sms in enumerate(batch):
            if sms.attempt > 1:
                groups.append([index])
                continue
            key = _group_key(sms)
            group = open_groups.get(key)
            if group is None or any(batch[i].phone == sms.phone for i in group):
                group = open_groups[key] = []
                groups.append(group)
            group.append(index)
        results: list[SendReceipt | UpstreamError | None] = [None] * len(batch)
        stop: TransientUpstreamError | None = None
        for group in groups:
            messages = [batch[i] for i in group]
            try:
                if stop is not None:
                    raise TransientUpstreamError(f"{self.name}: not tried after: {stop.text}",
                                                 stop.code, retry_after=stop.retry_after)
                if len(messages) == 1 and messages[0].attempt > 1:
                    receipts = [await self.send(messages[0])]
                else:
                    receipts = await self._send_group(messages)
            except UpstreamError as exc:
                if len(groups) == 1:
                    raise
                if isinstance(exc, TransientUpstreamError) and stop is None:
                    stop = exc
                for i in group:
                    results[i] = exc
                continue
            for i, receipt in zip(group, receipts, strict=True):
                results[i] = receipt
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ statuses

    async def poll_statuses(self, provider_ids: Sequence[str]) -> list[DeliveryReport]:
        """Statuses by status.php, up to :data:`STATUS_CHUNK` messages per request. Ids that are
        not ``phone:id`` and messages SMSC does not know (status -3) are left out."""
        valid = [p for p in dict.fromkeys(provider_ids) if split_provider_id(p) is not None]
        reports: list[DeliveryReport] = []
        for start in range(0, len(valid), STATUS_CHUNK):
            reports.extend(await self._poll_chunk(1, valid[start:start + STATUS_CHUNK]))
        return reports

    async def _poll_chunk(self, attempt: int, provider_ids: Sequence[str]) -> list[DeliveryReport]:
        pairs = [split_provider_id(p) for p in provider_ids]
        params = [
            *self._credentials(),
            ("phone", ",".join(p[0] for p in pairs if p)),
            ("id", ",".join(p[1] for p in pairs if p)),
            ("fmt", "3"),
            ("charset", "utf-8"),
        ]
        reply = await self._call(attempt, "GET", STATUS_PATH, params=params)
        # One message: a JSON object; several: an array of objects naming "phone" and "id".
        # An object is also accepted for several ids, and an array without "phone"/"id" is
        # matched by position, as the SMSC documentation shows both shapes.
        items = reply if isinstance(reply, list) else [reply]
        reports: list[DeliveryReport] = []
        by_key = {f"{p[0]}:{p[1]}": p for p in pairs if p}
        for position, item in enumerate(items):
            if not isinstance(item, dict):
                raise self._malformed("status entry is not an object")
            provider_id = self._match(item, position, provider_ids, by_key, len(items))
            status = _as_int(item.get("status"))
            if provider_id is None or status is None:
                continue
            if status == NOT_FOUND_STATUS:
                continue
            err = _as_int(item.get("err"))
            reports.append(DeliveryReport(
                provider_id=provider_id,
                status=STATUS_MAP.get(status, "unknown"),
                raw_status=str(status),
                error_code=err or None,
                at=str(item.get("last_date") or ""),
            ))
        return reports

    @staticmethod
    def _match(item: dict[str, Any], position: int, provider_ids: Sequence[str],
               by_key: dict[str, tuple[str, str]], count: int) -> str | None:
        phone, sms_id = item.get("phone"), item.get("id")
        if phone is not None and sms_id is not None:
            key = f"{str(phone).lstrip('+')}:{sms_id}"
            return key if key in by_key else None
        if count == len(provider_ids):
            return provider_ids[position]
        return None

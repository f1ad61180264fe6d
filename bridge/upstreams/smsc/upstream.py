"""SMSC-style HTTP API: sends by ``/sys/send.php``; statuses only where ``status_url`` is set.

Spec: ``004_82738aa6f58320d8.txt``, an excerpt ("Ответ сервера и коды ошибок"). It gives:

* the four error forms (l. 48-64): ``ERROR = N (описание)``; ``fmt=1`` ``0,-N``; ``fmt=2``
  ``<result><error>…</error><error_code>N</error_code></result>``; ``fmt=3``
  ``{"error": "…", "error_code": N}``; and the codes 1–11 (l. 65-77);
* l. 79, "В случае успешного запроса Сервер возвращает ответ в виде строки": a successful
  request is answered by a string, whose form the excerpt shows only for other requests
  (l. 175-185: ``OK``, ``<result>OK</result>``, ``{"result": "OK"}``).

So **an answer that carries no error is a success, whatever its body**, and it is never sent
again: a resend would be a second SMS, or the identical request that error 9 punishes. Where
the body names an id and a part count (the SMSC.ru forms: ``{"id": N, "cnt": C}``, XML ``<id>``
and ``<cnt>``, ``N,C``, ``OK - C SMS, ID - N``) they are taken; otherwise the message is
recorded as sent without a provider id.

Everything else follows the public SMSC.ru HTTP API conventions, not the spec: the send script
``POST {base_url}/sys/send.php`` with the form ``login``, ``psw``, ``phones`` (comma-separated),
``mes``, ``fmt=3``, ``charset=utf-8``, ``sender``, ``valid`` (hours, 1–24), ``id`` (a
client-assigned message id, 1…2147483647), ``flash=1``, ``maxsms``. The excerpt names no status
script, so statuses are asked for only where the operator configures one (``status_url``, e.g.
``https://smsc.ru/sys/status.php``: :class:`SmscStatusUpstream`): ``GET status_url?login=&psw=
&phone=&id=&fmt=3`` → ``{"status": N, "err": E, "last_date": …}``, or for several messages
(comma-separated ``phone`` and ``id`` lists) a JSON array of such objects carrying ``phone`` and
``id``. Without ``status_url`` SMSC sends have no provider status and no status request is ever
made; with it, a resend of a single SMS whose earlier request may have been taken
(``maybe_sent``) first asks whether that request's client id arrived, which narrows the
chance of a second copy. (A batch's client id is the whole request's, so a message sent in
a batch is not found this way: the account's ``ambiguous`` policy still decides whether it
may be resent.)

Errors arrive in HTTP 200 bodies. Two codes punish careless clients: 4, "IP-адрес временно
заблокирован" (the caller's IP is blocked after frequent errors, for every account behind it),
and 9, identical requests repeated "в течение минуты". Each pauses *every* call to the upstream,
sends and status requests alike: for :data:`IP_BLOCK_RETRY_AFTER` and
:data:`REPEAT_RETRY_AFTER` seconds no request goes out, and the calls fail at once with a
transient error carrying the remaining pause as ``retry_after`` (the messages wait, they do not
fail). Error 2 (bad login or password) is remembered for :data:`AUTH_FAILURE_TTL` seconds
likewise, as a permanent error. The pause is kept per process.

A provider id is ``"<phone>:<id>"``: a status request needs both, and a request to several
phones returns one id for all of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit, urlunsplit
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
import httpx
from defusedxml import DefusedXmlException

from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.models import DeliveryReport
from bridge.upstreams._batch import send_grouped
from bridge.upstreams.base import HttpUpstream, OutboundSms, SendReceipt
from bridge.upstreams.smsc.settings import SmscSettings

SEND_PATH = "/sys/send.php"

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
#: 9 speaks of repeated sender-name requests, while SMSC's send.php answers 9 to the same send
#: request repeated within a minute. Both readings lead to the same handling: 3 permanent,
#: 9 a pause of at least a minute, never retried at once.
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
REPEAT_CODE = 9
#: Codes that pause every call to the upstream, for this many seconds.
PAUSE_CODES: dict[int, float] = {IP_BLOCKED_CODE: IP_BLOCK_RETRY_AFTER,
                                 REPEAT_CODE: REPEAT_RETRY_AFTER}

#: SMSC status codes (the status script) → the bridge's statuses. -3 (not found) is left out of the
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
#: Phones per status request (the URL stays well under common 8 KiB limits).
STATUS_CHUNK = 100

_PLAIN_ERROR = re.compile(r"\AERROR\s*=\s*(-?\d+)\s*(?:\((.*)\))?", re.DOTALL)
_FMT1_ERROR = re.compile(r"\A(\d+)\s*,\s*-(\d+)\Z")
# Success forms of SMSC.ru's send.php (not in 004): fmt=1 "id,cnt[,cost,balance]" and fmt=0
# "OK - cnt SMS, ID - id".
_FMT1_SUCCESS = re.compile(r"\A(\d+)\s*,\s*(\d+)\s*(?:,|\Z)")
_PLAIN_SUCCESS = re.compile(r"\AOK\s*-\s*(\d+)\s*SMS\s*,\s*ID\s*-\s*(\d+)", re.IGNORECASE)


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
        root = _xml_root(text)
        if root is None:
            return None
        code = _as_int(root.findtext("error_code"))
        if code is not None:
            return code, (root.findtext("error") or "").strip()
    return None


def _xml_root(text: str) -> Element | None:
    try:
        root: Element = SafeET.fromstring(text.encode("utf-8"))
    except (SafeET.ParseError, DefusedXmlException, ValueError):
        return None
    return root


def parse_send_reply(body: bytes) -> tuple[int | None, int | None]:
    """``(id, parts)`` named by a send reply that carries no error, each None when absent.

    004 (l. 79) promises only "a string" on success; these forms are SMSC.ru's: ``fmt=3``
    ``{"id": N, "cnt": C}``, ``fmt=2`` ``<result><cnt>C</cnt><id>N</id></result>``, ``fmt=1``
    ``N,C``, ``fmt=0`` ``OK - C SMS, ID - N``. An id that is not a positive number is no id.
    """
    text = _decode(body).strip()
    sms_id: int | None = None
    parts: int | None = None
    if text.startswith("{"):
        try:
            reply = json.loads(text)
        except ValueError:
            reply = None
        if isinstance(reply, dict):
            sms_id, parts = _as_int(reply.get("id")), _as_int(reply.get("cnt"))
    elif text.startswith("<"):
        root = _xml_root(text)
        if root is not None:
            sms_id, parts = _as_int(root.findtext("id")), _as_int(root.findtext("cnt"))
    elif match := _FMT1_SUCCESS.match(text):
        sms_id, parts = int(match.group(1)), int(match.group(2))
    elif match := _PLAIN_SUCCESS.match(text):
        parts, sms_id = int(match.group(1)), int(match.group(2))
    if sms_id is not None and sms_id <= 0:
        sms_id = None
    return sms_id, parts


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
    """What one send.php request shares; a resend (``maybe_sent``) goes alone."""
    if sms.maybe_sent:
        return ("alone", sms.message_id, sms.idempotency_key)
    options = sms.options
    return (sms.text, options.originator, valid_hours(options.validity), options.flash,
            options.max_parts)


class SmscUpstream(HttpUpstream):
    """SMSC HTTP API without a status script: sends only (see the module docstring).

    Built with ``status_url`` set, the class gives a :class:`SmscStatusUpstream` instead, the
    only form that polls statuses. Not ``idempotent``: the API takes a client ``id`` but does
    not promise to refuse a second request with it.
    """

    kind: ClassVar[str] = "smsc"
    settings: SmscSettings
    idempotent: ClassVar[bool] = False
    max_batch: int = 100

    def __new__(cls, name: str, settings: SmscSettings,
                client: httpx.AsyncClient) -> SmscUpstream:
        del name, client
        if cls is SmscUpstream and settings.status_url:
            return super().__new__(SmscStatusUpstream)
        return super().__new__(cls)

    def __init__(self, name: str, settings: SmscSettings, client: httpx.AsyncClient) -> None:
        super().__init__(name, settings, client)
        #: Monotonic clock for the error caches; tests may replace it.
        self.clock: Callable[[], float] = time.monotonic
        self._auth_failed_until = 0.0
        self._auth_failure: tuple[int, str] = (AUTH_CODE, "")
        self._paused_until = 0.0
        self._pause: tuple[int, str] = (IP_BLOCKED_CODE, "")

    # ------------------------------------------------------------------ plumbing

    def _credentials(self) -> list[tuple[str, str]]:
        assert self.settings.login and self.settings.password
        return [("login", self.settings.login), ("psw", self.settings.password.get_secret_value())]

    def _check_caches(self) -> None:
        """Fail at once, without a request, while an error 2 is remembered or a pause (error 4
        or 9) lasts."""
        now = self.clock()
        if now < self._auth_failed_until:
            code, text = self._auth_failure
            raise PermanentUpstreamError(
                f"{self.name}: SMSC error {code} ({text or 'bad login or password'}), "
                f"not asking again for {self._auth_failed_until - now:.0f}s", code)
        if now < self._paused_until:
            remaining = self._paused_until - now
            code, text = self._pause
            reason = text or ("IP blocked" if code == IP_BLOCKED_CODE else "repeated request")
            raise TransientUpstreamError(
                f"{self.name}: SMSC error {code} ({reason}), every call paused for another "
                f"{remaining:.0f}s", code, retry_after=remaining)

    def _error(self, code: int, text: str) -> UpstreamError:
        """The error for ``code``; 2 is remembered and 4 and 9 start a pause, so that no
        request follows for a while."""
        now = self.clock()
        if code == AUTH_CODE:
            self._auth_failed_until = now + AUTH_FAILURE_TTL
            self._auth_failure = (code, text)
        elif code in PAUSE_CODES and now + PAUSE_CODES[code] > self._paused_until:
            self._paused_until = now + PAUSE_CODES[code]
            self._pause = (code, text)
        return error_for_code(code, text, upstream=self.name)

    async def _exchange(self, attempt: int, method: str, path: str, *,
                        via: HttpUpstream | None = None, **kwargs: Any) -> bytes:
        """One request (through ``via``'s hosts, else this upstream's); the body of an answer
        that carries no error, or the mapped error raised.

        Errors come in HTTP 200 bodies in any of the four forms of 004
        (:func:`parse_smsc_error`). An HTTP error status without such a body (a wrong URL, a
        proxy's page) is no answer of the API: 429 and 5xx are transient (mapped by
        :meth:`HttpUpstream.request`), anything else outside 2xx permanent.
        """
        self._check_caches()
        response = await (via or self).request(attempt, method, path, **kwargs)
        error = parse_smsc_error(response.content)
        if error is not None:
            raise self._error(*error)
        status = response.status_code
        if not 200 <= status < 300:
            raise PermanentUpstreamError(f"{self.name}: HTTP {status}", f"http_{status}")
        return response.content

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
        if first.options.originator:
            params.append(("sender", first.options.originator))
        hours = valid_hours(first.options.validity)
        if hours is not None:
            params.append(("valid", str(hours)))
        if first.options.flash:
            params.append(("flash", "1"))
        if first.options.max_parts < 255:
            params.append(("maxsms", str(first.options.max_parts)))
        return urlencode(params, encoding="utf-8").encode("ascii")

    async def _send_group(self, group: Sequence[OutboundSms]) -> list[SendReceipt]:
        """One send.php request to the (distinct) phones of ``group``; raises on failure. Any
        answer without an error is a success (004, l. 79); its id, when it names one, becomes
        ``phone:id`` for each phone."""
        sms_id = client_id([sms.idempotency_key for sms in group])
        body = await self._exchange(
            max(sms.host_turn for sms in group),
            "POST",
            SEND_PATH,
            content=self.form(group, sms_id),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        returned, _parts = parse_send_reply(body)
        if returned is None:  # accepted; the reply names no id
            return [SendReceipt(()) for _ in group]
        return [SendReceipt((f"{sms.phone}:{returned}",)) for sms in group]

    async def send(self, sms: OutboundSms) -> SendReceipt:
        [receipt] = await self._send_group([sms])
        return receipt

    async def send_batch(self, batch: Sequence[OutboundSms]) -> list[SendReceipt | UpstreamError]:
        """Messages sharing text, sender, validity and options go in one request with several
        phones (each phone once per request; the single returned id becomes ``phone:id`` for
        each). Resends (``maybe_sent``) go one by one through :meth:`send`. A failure of the
        only request is raised; with several requests it is the result of its messages, and
        after a transient failure the remaining requests are not made (their messages get a
        non-ambiguous transient error: nothing was sent for them)."""
        async def send_group(group: list[OutboundSms]) -> list[SendReceipt]:
            if len(group) == 1:
                return [await self.send(group[0])]
            return await self._send_group(group)

        return await send_grouped(batch, send_group, upstream=self.name, key=_group_key,
                                  distinct_phones=True, stop_after_transient=True)


class SmscStatusUpstream(SmscUpstream):
    """SMSC with the status script the operator configured (``status_url``): statuses are
    polled (StatusPolling), and a resend of a single SMS whose earlier request may have been
    taken (``maybe_sent``) first asks whether that request's client id arrived.
    :class:`SmscUpstream` gives this class when ``status_url`` is set."""

    def __init__(self, name: str, settings: SmscSettings, client: httpx.AsyncClient) -> None:
        super().__init__(name, settings, client)
        assert settings.status_url, "SmscStatusUpstream needs upstreams.<name>.status_url"
        url = urlsplit(settings.status_url)
        # The status script's own host, with the plumbing (deadline, error mapping) of the
        # send host; the backup host is for sends only.
        self._status_host = HttpUpstream(name, settings.model_copy(update={
            "base_url": f"{url.scheme}://{url.netloc}", "backup_url": None}), client)
        self._status_path = urlunsplit(("", "", url.path or "/", url.query, ""))

    async def _accepted_earlier(self, sms: OutboundSms) -> SendReceipt | None:
        """On a resend: did the earlier request arrive (the status script knows its client
        id)?"""
        provider_id = f"{sms.phone}:{client_id([sms.idempotency_key])}"
        try:
            reports = await self._poll_chunk(sms.host_turn, [provider_id])
        except PermanentUpstreamError as exc:
            if exc.code == AUTH_CODE:
                raise
            # A refusal of the question (not of the SMS) must not fail the SMS: send it.
            return None
        if reports:
            return SendReceipt((provider_id,))  # accepted by an earlier attempt
        return None

    async def send(self, sms: OutboundSms) -> SendReceipt:
        if sms.maybe_sent:
            earlier = await self._accepted_earlier(sms)
            if earlier is not None:
                return earlier
        return await super().send(sms)

    # ------------------------------------------------------------------ statuses

    async def poll_statuses(self, provider_ids: Sequence[str]) -> list[DeliveryReport]:
        """Statuses from the status script, up to :data:`STATUS_CHUNK` messages per request.
        Ids that are not ``phone:id`` and messages SMSC does not know (status -3) are left
        out."""
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
        body = await self._exchange(attempt, "GET", self._status_path, via=self._status_host,
                                    params=params)
        try:
            reply = json.loads(_decode(body))
        except ValueError as exc:
            raise TransientUpstreamError(f"{self.name}: malformed status reply (not JSON)",
                                         "malformed") from exc
        # One message: a JSON object; several: an array of objects naming "phone" and "id".
        # An object is also accepted for several ids, and an array without "phone"/"id" is
        # matched by position, as the SMSC documentation shows both shapes.
        items = reply if isinstance(reply, list) else [reply]
        reports: list[DeliveryReport] = []
        by_key = {f"{p[0]}:{p[1]}": p for p in pairs if p}
        for position, item in enumerate(items):
            if not isinstance(item, dict):
                raise TransientUpstreamError(
                    f"{self.name}: malformed status reply (entry is not an object)", "malformed")
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

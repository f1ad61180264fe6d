"""Devino Telecom REST API (``https://integrationapi.net/rest/``): session id, send, bulk send,
status polling, inbound polling, balance.

Spec: ``003_2ae1dc9e2c3c1732.txt`` (line numbers below refer to it) — overview (line 5),
authentication ``/user/sessionid`` (line 28, Табл. 1 line 56), balance ``/User/Balance``
(line 103), ``Sms/Send`` (line 164, Табл. 3 line 180), ``Sms/SendBulk`` (line 339, Табл. 5
line 357), ``Sms/State`` (line 438, Табл. 6/7 lines 458/508), ``Sms/In`` (line 519, Табл. 8
line 529), error codes (Табл. 10, line 677), message states (Табл. 11, line 691).

Settings: ``base_url`` is the API root including ``/rest`` (``https://integrationapi.net/rest``);
``login`` and ``password`` obtain the session id; ``client_id``, when set, is the default
``SourceAddress`` for messages without an originator (the spec makes the sender mandatory,
Табл. 3 line 187).

Rate limit: Devino accepts at most 10 requests per second per account (001 line 34, the same
backend). It is declared as :attr:`DevinoRestUpstream.requests_per_second`: the dispatcher's
rate limiter paces every request of the upstream (session, send, status and inbound polls,
balance) with it, so that polls of many ids cannot burst past the limit. The operator's
``rate_per_second`` may ask for fewer.

Idempotency: the API has no client-side id or idempotency key, so ``idempotent`` is False: a
retry after an ambiguous failure (timeout, HTTP 5xx, code 8/9) may send a second copy.

Not offered by the REST API, so not sent: flash SMS, ``max_parts``, an encoding choice (the
provider picks it from the text). ``SendDate`` (delayed sending) is not used: the bridge holds a
scheduled message in its own queue until it is due. ``Sms/SendByTimeZone`` (line 247) is not
used for the same reason.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import urlencode

import httpx

from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.models import DeliveryReport, InboundMessage
from bridge.parsing.text import count_segments
from bridge.upstreams._batch import send_grouped
from bridge.upstreams._poll import poll_each
from bridge.upstreams._session import SessionKeeper
from bridge.upstreams.base import HttpUpstream, OutboundSms, SendReceipt
from bridge.upstreams.config import UpstreamSettings
from bridge.upstreams.devino.common import MAX_SEEN_INBOUND, REQUESTS_PER_SECOND, InboundCursor
from bridge.upstreams.devino.settings import DevinoRestSettings

#: Line 101: "Полученный идентификатор сессии действителен в течение 120 минут."
SESSION_LIFETIME = 120 * 60.0
#: A session is renewed this long before its life ends, so that no call races its expiry.
SESSION_RENEW_MARGIN = 5 * 60.0

#: Табл. 10 (line 677): code -> (HTTP status, description). Code 3 (invalid session id) and 4
#: (unauthorized; the spec's own examples answer an expired session with 4, lines 155-159) make
#: the module renew the session once and repeat the call once (see ``_call``).
ERROR_CODES: dict[int, tuple[int, str]] = {
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
SESSION_CODES = frozenset({3, 4})
#: 5 (not enough credits) is transient: the message waits (within ``give_up_after``) for a
#: top-up instead of bouncing, as 415 does for SMS Traffic. 8 and 9 come with HTTP 500 and may
#: follow a processed request, so they are ambiguous as well. Every other code describes the
#: request itself: repeating it cannot succeed.
TRANSIENT_CODES = frozenset({5, 8, 9})
AMBIGUOUS_CODES = frozenset({8, 9})

#: Табл. 11 (line 691): message state -> the bridge's status.
STATES: dict[int, str] = {
    -1: "sent",  # передано в мобильную сеть
    -2: "sent",  # в очереди
    -98: "rejected",  # остановлено
    0: "delivered",
    10: "rejected",  # неверно введён адрес отправителя
    11: "rejected",  # неверно введён адрес получателя
    41: "rejected",  # недопустимый адрес получателя
    42: "rejected",  # отклонено смс-центром
    46: "expired",
    47: "undelivered",  # удалено
    48: "rejected",  # отклонено платформой
    69: "rejected",
    99: "unknown",
    # 255: "the message has not reached the database yet, or is older than 48 hours". Right
    # after a send it is the former, so it must not end polling (``unknown`` is final); the
    # latter ends by ``status_poll_max``.
    255: "sent",
}

#: Dates in requests: ``2011-01-28T16:00:00`` (Табл. 3 line 189, Табл. 8 line 533).
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
#: ``Sms/In`` windows start this far before the previous poll: a message that becomes visible
#: up to 30 minutes after its ``CreateDateUtc`` is still fetched, with 5 minutes to spare for a
#: skew between our clock and the provider's. The ids seen in the overlap are kept in the
#: cursor, so nothing is handed out twice (and the pipeline deduplicates by sms_id as well).
INBOUND_OVERLAP = timedelta(minutes=35)
#: ``maxDateUTC`` is this far after now: a provider clock ahead of ours hides nothing.
INBOUND_AHEAD = timedelta(minutes=10)

_DOTNET_DATE = re.compile(r"Date\((-?\d+)(?:[+-]\d{4})?\)")
_ERROR_CODE = re.compile(r"""["']?\bCode\b["']?\s*:\s*["']?(-?\d+)""", re.IGNORECASE)
_ERROR_DESC = re.compile(r"""["']?\bDesc\b["']?\s*:\s*"((?:[^"\\]|\\.)*)"?""",
                         re.IGNORECASE | re.DOTALL)


def error_for_code(code: int, text: str, *, upstream: str, http_status: int | None = None
                   ) -> UpstreamError:
    """An ``UpstreamError`` for a Табл. 10 code; decided by the code, never by the text.

    A code the table does not list is judged by the HTTP status it came with: 5xx transient
    and ambiguous, anything else permanent."""
    message = f"{upstream}: {text or ERROR_CODES.get(code, (0, 'error'))[1]}"
    if code in TRANSIENT_CODES:
        return TransientUpstreamError(message, code, ambiguous=code in AMBIGUOUS_CODES)
    if code not in ERROR_CODES and http_status is not None and http_status >= 500:
        return TransientUpstreamError(message, code, ambiguous=True)
    return PermanentUpstreamError(message, code)


def parse_error(body: bytes) -> tuple[int, str] | None:
    """``{Code, Desc}`` (Табл. 10) → (code, text), or None when the body is no such error.

    The spec shows these bodies with unquoted keys (``{ Code: 4, Desc: "…" }``, lines 86-99)
    and once with a line break inside the text (line 585); the real service sends JSON. Both
    are accepted: strict JSON first (keys matched case-insensitively), then a tolerant scan.
    """
    text = body.decode("utf-8", "replace").strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text, strict=False)
    except ValueError:
        value = None
    if isinstance(value, dict):
        keys = {str(k).lower(): v for k, v in value.items()}
        code = keys.get("code")
        if isinstance(code, int | str) and str(code).lstrip("-").isdigit():
            return int(code), str(keys.get("desc") or "")
        return None
    found = _ERROR_CODE.search(text)
    if found is None:
        return None
    desc = _ERROR_DESC.search(text)
    return int(found.group(1)), " ".join(desc.group(1).split()) if desc else ""


def parse_ids(body: bytes) -> list[str]:
    """``["579700854169272358", …]`` (lines 220, 226, 405): one id per segment, in order.

    Ids are 64-bit numbers sent as strings; a number or a single bare string is accepted too.
    """
    value = json.loads(body.decode("utf-8"))
    if isinstance(value, str | int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("no message ids in reply")
    ids: list[str] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int) or not str(item).strip():
            raise ValueError(f"bad message id {item!r}")
        ids.append(str(item).strip())
    return ids


def parse_date(value: Any) -> str:
    """``"\\/Date(1294045911213)\\/"`` (lines 487, 564; milliseconds since the epoch, UTC) or
    an ISO string → ISO 8601 UTC; "" for null or the .NET "no date" (year 1)."""
    if value is None:
        return ""
    text = str(value)
    found = _DOTNET_DATE.search(text)
    if found is None:
        return text.strip()
    millis = int(found.group(1))
    if millis < 0:
        return ""  # DateTime.MinValue: no date (the example at line 487)
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


def segments_of(text: str) -> int:
    """How many ids the provider answers for ``text``: 70/160 characters in one SMS (line 223),
    67/153 per part — the spec gives no multipart sizes; those of a 6-byte concatenation
    header (the usual UDH) are taken. The provider encodes GSM 03.38 itself, so é or Δ keep a
    text 7-bit there."""
    return max(1, count_segments(text, whole_gsm_alphabet=True).parts)


def _created(record: Any) -> datetime | None:
    """``CreateDateUtc`` of an ``Sms/In`` item (line 564: ``"\\/Date(ms)\\/"``), or None."""
    keys = {str(k).lower(): v for k, v in record.items()}
    text = parse_date(keys.get("createdateutc"))
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class DevinoRestUpstream(HttpUpstream):
    """Devino Telecom REST API; see the module docstring."""

    kind: ClassVar[str] = "devino_rest"
    settings: DevinoRestSettings
    idempotent: ClassVar[bool] = False
    #: No recipient limit is given for ``Sms/SendBulk``; one request carries at most this many.
    max_batch: int = 100
    #: See :data:`INBOUND_OVERLAP`.
    inbound_overlap: timedelta = INBOUND_OVERLAP
    #: The most inbound ids a cursor remembers (see :meth:`InboundCursor.after_poll`).
    max_seen_inbound: int = MAX_SEEN_INBOUND
    requests_per_second: ClassVar[float] = REQUESTS_PER_SECOND

    def __init__(self, name: str, settings: UpstreamSettings, client: httpx.AsyncClient) -> None:
        super().__init__(name, settings, client)
        self.sessions = SessionKeeper(self._login, SESSION_LIFETIME - SESSION_RENEW_MARGIN)
        #: Wall clock (UTC) for ``Sms/In`` windows; tests may replace it.
        self.now: Callable[[], datetime] = lambda: datetime.now(UTC)

    # ------------------------------------------------------------------ HTTP and errors

    def _check_status(self, response: httpx.Response) -> None:
        """Табл. 10: errors are ``{Code, Desc}`` with HTTP 400/401/403/500. The provider's code
        decides; the base class's mapping applies to answers without one (and to 429)."""
        status = response.status_code
        if status != 429 and status >= 400:
            error = parse_error(response.content)
            if error is not None:
                code, text = error
                raise error_for_code(code, text, upstream=self.name, http_status=status)
        super()._check_status(response)
        if status >= 400:
            raise PermanentUpstreamError(f"{self.name}: HTTP {status}", f"http_{status}")

    async def _raw(self, attempt: int, method: str, path: str, params: list[tuple[str, str]]
                   ) -> httpx.Response:
        """One request; a ``{Code, Desc}`` error is raised even when it came with HTTP 200."""
        if method == "GET":
            response = await self.request(attempt, method, path, params=params)
        else:
            # Line 36: parameters URL-encoded, UTF-8 (line 24), spaces as "+".
            response = await self.request(
                attempt, method, path, content=urlencode(params).encode("ascii"),
                headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
            )
        error = parse_error(response.content)
        if error is not None:
            raise error_for_code(error[0], error[1], upstream=self.name)
        return response

    async def _call(self, attempt: int, method: str, path: str,
                    params: list[tuple[str, str]]) -> httpx.Response:
        """A call with ``SessionID`` first: on code 3 or 4 the session is renewed (once, shared
        by concurrent callers) and the call repeated once. A request refused for its session
        was not processed, so repeating it cannot send twice."""
        try:
            return await self.sessions.call(
                attempt, lambda session: self._raw(attempt, method, path,
                                                   [("SessionID", session), *params]),
                lambda exc: exc.code in SESSION_CODES)
        except UpstreamError as exc:
            if exc.code == 3:
                # A fresh session refused again: the provider's trouble, not the message's.
                raise TransientUpstreamError(exc.text, 3) from exc
            raise

    def _malformed(self, what: str, *, ambiguous: bool) -> TransientUpstreamError:
        return TransientUpstreamError(f"{self.name}: malformed {what} reply", "malformed",
                                      ambiguous=ambiguous)

    # ------------------------------------------------------------------ session

    async def _login(self, attempt: int) -> str:
        """``GET /user/sessionid`` (line 28). Табл. 1 names the parameters ``Login`` and
        ``Password``, the URL template ``login``/``password``: the table's form is sent (the
        service binds names case-insensitively, as its mixed examples show). The answer is the
        id as a quoted string "not as JSON" (line 69): a bare id is accepted too."""
        assert self.settings.login is not None and self.settings.password is not None
        response = await self._raw(attempt, "GET", "/user/sessionid", [
            ("Login", self.settings.login),
            ("Password", self.settings.password.get_secret_value()),
        ])
        body = response.content.decode("utf-8", "replace").strip()
        try:
            value = json.loads(body)
        except ValueError:
            value = body
        if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Za-z-]{8,64}", value.strip()):
            raise self._malformed("session id", ambiguous=False)
        return value.strip()

    # ------------------------------------------------------------------ sending

    def _common(self, sms: OutboundSms) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = [("Data", sms.text)]
        source = sms.options.originator or self.settings.client_id
        if not source:
            raise PermanentUpstreamError(
                f"{self.name}: no sender: SourceAddress is mandatory (003 Табл. 3); set the "
                "account's originator or the upstream's client_id", "no_source_address")
        params.append(("SourceAddress", source))
        if sms.options.validity:
            # Табл. 3 line 190: minutes; the bridge's validity is seconds. Rounded up, so a
            # message never dies earlier than asked.
            params.append(("Validity", str(max(1, math.ceil(sms.options.validity / 60)))))
        return params

    async def send(self, sms: OutboundSms) -> SendReceipt:
        """``POST /Sms/Send`` (line 164, Табл. 3): one id per segment (line 223)."""
        params = [("DestinationAddress", sms.phone), *self._common(sms)]
        response = await self._call(sms.attempt, "POST", "/Sms/Send", params)
        try:
            ids = parse_ids(response.content)
        except ValueError as exc:
            raise self._malformed("send", ambiguous=True) from exc
        return SendReceipt(tuple(ids))

    async def send_batch(self, batch: Sequence[OutboundSms]) -> list[SendReceipt | UpstreamError]:
        """``POST /Sms/SendBulk`` (line 339, Табл. 5): one text to several numbers.

        Messages with the same text, sender and validity share a request (a phone at most once
        per request, so the answer maps back unambiguously); a lone message goes by
        ``Sms/Send``. The answer lists all segment ids of the first number, then of the next
        (line 402): each number takes ``segments_of(text)`` ids. A failed request fails the
        messages it carried; when the batch was a single request, the error is raised."""
        return await send_grouped(batch, self._send_group, upstream=self.name,
                                  key=lambda sms: (sms.text, sms.options.originator,
                                                   sms.options.validity),
                                  max_group=self.max_batch, distinct_phones=True)

    async def _send_group(self, group: list[OutboundSms]) -> list[SendReceipt]:
        if len(group) == 1:
            return [await self.send(group[0])]
        first = group[0]
        params = [("DestinationAddresses", sms.phone) for sms in group]  # repeated (line 352)
        params += self._common(first)
        response = await self._call(first.attempt, "POST", "/Sms/SendBulk", params)
        try:
            ids = parse_ids(response.content)
        except ValueError as exc:
            raise self._malformed("bulk send", ambiguous=True) from exc
        per = segments_of(first.text)
        if len(ids) != per * len(group):
            if len(ids) % len(group):
                # Accepted, but the ids cannot be told apart: no resend (it would duplicate),
                # no status polling for these messages.
                return [SendReceipt(()) for _ in group]
            per = len(ids) // len(group)  # the provider counted the segments otherwise
        return [SendReceipt(tuple(ids[i * per:(i + 1) * per])) for i in range(len(group))]

    # ------------------------------------------------------------------ statuses

    async def poll_statuses(self, provider_ids: Sequence[str]) -> list[DeliveryReport]:
        """``GET /Sms/State`` (line 438), one request per segment id (line 452).

        Табл. 6 names the id parameter ``DestinationAddress`` — a slip: its description, the URL
        template (line 443), the example (line 449) and the error text (line 504) all say
        ``messageId``, which is sent. Ids the provider rejects (codes 1, 2) are left out; if no
        id could be asked for, the first error is raised."""
        return await poll_each(provider_ids, self._state, concurrency=self.settings.concurrency,
                               unknown=lambda exc: exc.code in (1, 2))

    async def _state(self, provider_id: str) -> DeliveryReport:
        response = await self._call(1, "GET", "/Sms/State", [("messageId", provider_id)])
        try:
            value = json.loads(response.content.decode("utf-8"))
            keys = {str(k).lower(): v for k, v in value.items()}
            state = int(keys["state"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._malformed("state", ambiguous=False) from exc
        status = STATES.get(state, "sent" if state < 0 else "unknown")
        at = parse_date(keys.get("reporteddateutc")) or parse_date(keys.get("timestamputc"))
        return DeliveryReport(provider_id, status, str(state), None, at)

    # ------------------------------------------------------------------ inbound

    async def poll_inbound(self, cursor: str | None) -> tuple[list[InboundMessage], str | None]:
        """``GET /Sms/In`` (line 519, Табл. 8): messages created within a window of UTC dates.

        The cursor (:class:`InboundCursor`, JSON) holds where the next window starts —
        ``inbound_overlap`` before this poll, never earlier than this window — and the ids
        seen from there on, which are not handed out again. So a message that becomes visible
        up to that late, with an older ``CreateDateUtc``, is fetched, and fetched once. Each
        window ends at now plus :data:`INBOUND_AHEAD`. No cursor means the provider's earliest
        (``minDateUTC`` is optional). A restart resumes from the stored cursor: no gap; what
        is handed out again after a crash before the cursor was saved the pipeline drops by
        ``sms_id``."""
        now = self.now().replace(microsecond=0)
        state = self._load_cursor(cursor, now)
        params: list[tuple[str, str]] = []
        if state is not None:
            params.append(("minDateUTC", state.since.strftime(DATE_FORMAT)))
        params.append(("maxDateUTC", (now + INBOUND_AHEAD).strftime(DATE_FORMAT)))
        response = await self._call(1, "GET", "/Sms/In", params)
        try:
            records = json.loads(response.content.decode("utf-8"))
            if not isinstance(records, list):
                raise ValueError("not a list")
            messages = [self._inbound(record) for record in records]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._malformed("inbound", ambiguous=False) from exc
        seen = state.seen if state is not None else frozenset()
        fresh = [m for m in messages if m.sms_id not in seen]
        following = InboundCursor.after_poll(
            state.since if state is not None else datetime.min.replace(tzinfo=UTC), now,
            self.inbound_overlap,
            [(_created(record), str(m.sms_id)) for record, m in zip(records, messages,
                                                                   strict=True)],
            self.max_seen_inbound)
        return fresh, following.dump()

    def _load_cursor(self, cursor: str | None, now: datetime) -> InboundCursor | None:
        """The stored cursor. Before the overlap was kept in the cursor, it was the bare
        date of the previous poll: that window is re-read ``inbound_overlap`` back (what was
        handed out already the pipeline drops by ``sms_id``). A cursor that is neither starts
        at now less the overlap, not at the provider's earliest."""
        if cursor is None:
            return None
        state = InboundCursor.load(cursor)
        if state is not None:
            return state
        try:
            previous = datetime.strptime(cursor, DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            previous = now
        return InboundCursor(previous - self.inbound_overlap, frozenset())

    def _inbound(self, record: dict[str, Any]) -> InboundMessage:
        """One item of the answer (lines 546-569): ``Data``, ``SourceAddress``,
        ``DestinationAddress``, ``ID`` (a number in the example; a string is accepted),
        ``CreateDateUtc``. Keys are matched case-insensitively."""
        keys = {str(k).lower(): v for k, v in record.items()}
        sms_id = keys["id"]
        if sms_id is None or isinstance(sms_id, bool) or not str(sms_id).strip():
            raise ValueError("inbound message without ID")
        phone = "".join(ch for ch in str(keys.get("sourceaddress") or "") if ch.isdigit())
        recipient = str(keys.get("destinationaddress") or "").strip().lstrip("+") or None
        return InboundMessage(
            source=self.name, kind="mo", sms_id=str(sms_id).strip(), phone=phone,
            text=str(keys.get("data") or ""), recipient=recipient,
            raw=json.dumps(record, ensure_ascii=False).encode("utf-8"), charset="utf-8",
        )

    # ------------------------------------------------------------------ balance

    async def balance(self) -> Decimal:
        """``GET /User/Balance`` (line 103): the balance as a bare JSON number."""
        response = await self._call(1, "GET", "/User/Balance", [])
        try:
            value = json.loads(response.content.decode("utf-8"), parse_float=Decimal)
            if isinstance(value, bool) or not isinstance(value, int | Decimal):
                raise TypeError(f"not a number: {value!r}")
            return Decimal(value)
        except (ValueError, TypeError) as exc:
            raise self._malformed("balance", ambiguous=False) from exc

"""Kcell / Sberbank-Telecom SC.CPA "JSONv2": JSON over HTTPS with HTTP Basic auth.

Spec: ``000_11f12833dd23f0e5.txt`` ("Описание протокола JSONv2", 1.1.240307). Line numbers:

* 38   one message: ``POST /{client_id}/json2/simple`` (table 1, l. 42-57), request l. 86-120,
       reply ``{"message_id": …}`` or ``{"error_code", "error_text"}`` (l. 121-131);
* 134  several messages: ``POST /{client_id}/json2/batch/sync`` (table 2, l. 142-165), request
       l. 179-229, per-message reply with ``message_id`` (l. 320-360); at most 50000 recipients;
* 448  delivery reports pushed to ``callback_url``: one object (3.1, l. 450-476) or an array
       (3.2, l. 480-562);
* 565  DR by id: ``GET /{client_id}/dr/{message_id}/simple`` and
       ``/dr/external/{extra_id}/simple`` (table 4, l. 573-612), reply l. 614-638, ``-1`` while
       not final (l. 713-715);
* 783  request parameters (table 5), reply parameters (table 6, l. 914), report parameters
       (table 7, l. 973);
* 1118 statuses: ``status`` (table 8), ``substatus`` (table 9), ``msg_status`` (table 10) and
       error codes (table 11, l. 1186-1323).

Not used: ``start_time`` (the bridge holds scheduled messages itself), ``tag``, the async
``/json2/batch`` + job status (the ``/sync`` form answers the ids at once) and broadcast
(one text for all; batch covers it). The protocol has no flash, encoding or max-parts field:
the platform picks the coding from the text (section 5, l. 720) and ``sms.flash`` /
``sms.max_parts`` are not sent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from bridge.errors import (
    InboundError,
    PermanentUpstreamError,
    TransientUpstreamError,
    UpstreamError,
)
from bridge.models import DeliveryReport
from bridge.upstreams._batch import send_grouped
from bridge.upstreams._poll import poll_each
from bridge.upstreams.base import HttpUpstream, OutboundSms, SendReceipt, parse_retry_after
from bridge.upstreams.kcell.settings import KcellSettings

# Table 11 (l. 1186-1323) lists most errors twice, an old 102xx and a new 360xx code; both are
# mapped. Transient: internal errors (10216/36020; 36020 is listed twice, once as "security
# module" and once as "message processing": both internal), quota exhausted (10229/36057: the
# message waits, within ``give_up_after``, for the quota to be renewed instead of bouncing) and
# the queue being full (36071).
TRANSIENT_CODES = frozenset({10216, 36020, 10229, 36057, 36071})
# Everything else in table 11 describes the request itself (a bad number, a forbidden alpha
# name, a missing or badly formatted field, spam …): resending it cannot succeed.
PERMANENT_CODES = frozenset({
    10217, 36014,  # mandatory parameter missing
    10218, 36015,  # incorrect data format
    10219, 36016,  # incorrect field type
    10220, 36017,  # no permission to send this message
    10221, 36018,  # message type not supported
    10222, 36019,  # connection deactivated
    10234, 36058,  # blocked as spam
    10240, 36059,  # recipient field not found
    10241, 36060,  # recipient field empty
    10243, 36024,  # incorrect recipient number format
    10244, 36025,  # delayed delivery time in the past
    10245, 36026,  # delayed delivery time more than a day ahead
    10246, 36027,  # extra_id longer than 64
    10247, 36028,  # delivery channels not found
    10248, 36029,  # a delivery channel is prohibited
    10259, 36048,  # invalid TTL
    10260, 36049,  # text too long
    10261, 36054,  # text empty
    10262, 36055,  # alpha name not allowed
    36065,  # mobile network not found
})
# l. 1319: "all other statuses not listed in the tables are internal errors of the platform"
# — so a code in neither set is treated as transient (see ``error_for_code``).

# Table 5 (l. 833-841, 885-911): field limits.
MAX_EXTRA_ID = 64
MAX_CALLBACK_URL = 256
MAX_ALPHA_NAME = 11
TTL_MIN, TTL_MAX = 15, 259200
# l. 138: at most 50000 recipients per batch request; a smaller batch keeps one request (and
# its reply) to a reasonable size and the timeout meaningful.
MAX_BATCH = 1000

GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
    "\f^{}\\[~]|€"
)

# Table 10 (l. 1163-1183): ``msg_status`` for SMS.
MSG_STATUS: dict[int, str] = {
    12011: "sent",  # ACCEPTD
    36011: "sent",  # ENROUTE
    23011: "delivered",  # DELIVRD
    35015: "expired",  # EXPIRED
    36021: "undelivered",  # DELETED
    36031: "undelivered",  # UNDELIV
    36041: "unknown",  # UNKNOWN
    36051: "rejected",  # REJECTED
    12000: "sent",  # table 11: "Message accepted"
}
# Table 9 (l. 1140-1158): ``substatus``.
SUBSTATUS: dict[int, str] = {
    10: "rejected",  # not accepted for processing
    12: "sent",  # accepted for processing
    23: "delivered",
    24: "expired",  # not delivered within TTL (24, 28 and 35 are worded the same)
    28: "expired",
    35: "expired",
    36: "undelivered",  # delivery error
}
# Table 8 (l. 1126-1135): ``status``; -1 is "not sent yet or not final" (l. 713-715).
STATUS: dict[int, str] = {-1: "sent", 1: "sent", 2: "delivered", 3: "undelivered"}


def error_for_code(code: int, text: str, *, upstream: str,
                   retry_after: float | None = None) -> UpstreamError:
    """Table 11 code → error class. Decided by code only, never by ``error_text``."""
    message = f"{upstream}: {text}".strip()
    if code in PERMANENT_CODES:
        return PermanentUpstreamError(message, code)
    return TransientUpstreamError(message, code, retry_after=retry_after)


def extra_id_for(key: str) -> str:
    """``extra_id`` ≤ 64 characters (table 5, l. 833): the idempotency key, or its SHA-256
    (64 hex digits) when longer, so that it stays unique and stable across retries."""
    if len(key) <= MAX_EXTRA_ID:
        return key
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def ttl_for(validity: int | None) -> int:
    """``ttl`` is mandatory (table 5, l. 885-887: SMS 15..259200 s). Without a validity the
    longest one is sent, the closest to "no limit"."""
    if validity is None:
        return TTL_MAX
    return max(TTL_MIN, min(TTL_MAX, int(validity)))


def _int(value: Any) -> int | None:
    """A number the spec shows as a JSON number; a digit string is accepted too."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _error_of(data: Any) -> tuple[int, str] | None:
    """``{"error_code": N, "error_text": "…"}`` (l. 131) → (N, text); None otherwise."""
    if not isinstance(data, dict) or "error_code" not in data:
        return None
    code = _int(data.get("error_code"))
    if code is None:
        return None
    return code, str(data.get("error_text") or "")


def map_status(status: Any, substatus: Any = None, msg_status: Any = None,
               error_code: Any = None) -> str | None:
    """The bridge's status for a report of section 7; None when it names no status at all.

    The most detailed field the tables know wins: ``msg_status`` (table 10/11), then
    ``error_code`` (the job report of l. 409-411 carries only ``error_code: 35015``), then
    ``substatus`` (table 9), then ``status`` (table 8). ``msg_status`` 36011 (ENROUTE) shows why
    the order matters: its leading 36 is not substatus 36 "delivery error". A table 11 error
    code (without a known substatus) means the platform refused the message, and a code in no
    table is an internal platform error (l. 1319): both "rejected".
    """
    codes = [_int(msg_status), _int(error_code)]
    for code in codes:
        if code is not None and code in MSG_STATUS:
            return MSG_STATUS[code]
    sub = _int(substatus)
    if sub is not None and sub in SUBSTATUS:
        return SUBSTATUS[sub]
    if any(code is not None for code in codes):
        return "rejected"  # a table 11 error code, or an unlisted (internal) one
    top = _int(status)
    if top is not None and top in STATUS:
        return STATUS[top]
    if top is None and sub is None:
        return None
    return "rejected"


def _raw_status(item: dict[str, Any]) -> str:
    """``status/substatus/msg_status`` as received ("2/23/23011"; "-" for a missing one)."""
    parts = [item.get(key) for key in ("status", "substatus", "msg_status")]
    raw = "/".join("-" if value is None else str(value) for value in parts)
    if parts[2] is None and item.get("error_code") is not None:
        raw += f" error {item['error_code']}"
    return raw


def _at(value: Any) -> str:
    """``time`` is a Unix timestamp in milliseconds (l. 462: 1477417294667); a value in seconds
    is accepted too. Given as ISO 8601 UTC."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value.strip()
    if number is None:
        return ""
    seconds = number / 1000 if number > 1e11 else number
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return str(value)


def report_from(item: dict[str, Any]) -> DeliveryReport | None:
    """One report object (3.1 l. 458-476, 4.1 l. 616-638) → DeliveryReport; None when it
    carries no ``message_id`` or no status."""
    provider_id = str(item.get("message_id") or "").strip()
    status = map_status(item.get("status"), item.get("substatus"), item.get("msg_status"),
                        item.get("error_code"))
    if not provider_id or status is None:
        return None
    error = _int(item.get("error_code"))
    if error is None:
        msg_status = _int(item.get("msg_status"))
        if msg_status is not None and msg_status not in MSG_STATUS:
            error = msg_status  # a table 11 error code given as msg_status
    return DeliveryReport(provider_id, status, _raw_status(item), error, _at(item.get("time")))


def parse_delivery_reports(
    content_type: str, query: bytes, body: bytes, charset: str
) -> list[DeliveryReport]:
    """Reports POSTed to ``callback_url``: one JSON object (3.1, l. 450-476) or an array of them
    (3.2, l. 480-562).

    ``number`` is a JSON number in 3.1 and a string in 3.2 (the spec contradicts itself): it
    is not needed (the report is matched by ``message_id``), so either form is accepted. The
    body is read as JSON whatever ``Content-Type`` says (the spec names none for reports);
    UTF-8 first, then the declared or configured ``charset``. The query string is ignored.
    """
    del content_type, query
    try:
        try:
            data = json.loads(body)
        except UnicodeDecodeError:
            data = json.loads(body.decode(charset or "utf-8"))
    except (ValueError, UnicodeDecodeError, LookupError) as exc:
        raise InboundError(400, "body is not valid JSON", field="body") from exc
    single = isinstance(data, dict)
    items = [data] if single else data
    if not isinstance(items, list):
        raise InboundError(400, "expected a report object or an array of them", field="body")
    reports: list[DeliveryReport] = []
    for index, item in enumerate(items):
        where = "" if single else f"[{index}]"
        prefix = "report" if single else f"item {index}"
        if not isinstance(item, dict):
            raise InboundError(400, f"{prefix} is not an object", field=where or "body")
        if not str(item.get("message_id") or "").strip():
            raise InboundError(400, f"{prefix}: missing message_id",
                               field=f"{where}.message_id" if where else "message_id")
        report = report_from(item)
        if report is None:
            raise InboundError(400, f"{prefix}: missing status",
                               field=f"{where}.status" if where else "status")
        reports.append(report)
    return reports


class KcellUpstream(HttpUpstream):
    """JSONv2 upstream: one SMS per ``/json2/simple``, many per ``/json2/batch/sync``, statuses
    by ``/dr/{message_id}/simple`` (BatchSending, StatusPolling).

    ``extra_id`` carries the message's idempotency key. The spec promises no deduplication on
    it, so ``idempotent`` is False; but a send whose earlier request may have been taken
    (``maybe_sent``: a process died with it in flight, or it ended in an ambiguous failure)
    first asks ``/dr/external/{extra_id}/simple`` whether the platform knows it, and if so
    returns its ``message_id`` without sending again. This narrows, but cannot close, the
    window for a duplicate (a platform that lists the message only later). HTTP 404 to that
    lookup means the platform does not know the message: it is sent.

    While ``maybe_sent`` is 0 (every earlier request surely sent nothing: HTTP 429, a refusal
    with a table 11 code, a connection that could not be opened) no lookup is made. The count
    is the store's, so it holds across restarts and processes.
    """

    kind: ClassVar[str] = "kcell"
    settings: KcellSettings
    idempotent: ClassVar[bool] = False
    finds_earlier_sends: ClassVar[bool] = True
    max_batch: int = MAX_BATCH

    # -- wire helpers ------------------------------------------------------------------------

    @property
    def _auth(self) -> httpx.BasicAuth:
        """Tables 1, 2 and 4: HTTP Basic authentication."""
        assert self.settings.login is not None and self.settings.password is not None
        return httpx.BasicAuth(self.settings.login, self.settings.password.get_secret_value())

    def _path(self, tail: str) -> str:
        assert self.settings.client_id is not None
        return f"/{quote(self.settings.client_id, safe='')}{tail}"

    def _check_status(self, response: httpx.Response) -> None:
        # The spec does not say which HTTP status error replies carry: a body with
        # ``error_code`` is decided by its code whatever the status, by the caller. Only replies
        # without one fall back to the HTTP mapping (429, 5xx, 401/403) of the base class.
        if _error_of(_json(response)) is None:
            super()._check_status(response)

    def _raise_for_error(self, response: httpx.Response, data: Any) -> None:
        error = _error_of(data)
        if error is not None:
            code, text = error
            raise error_for_code(code, text or f"error {code}", upstream=self.name,
                                 retry_after=parse_retry_after(response.headers.get("Retry-After")))
        if response.status_code >= 400:
            # 4xx without an error body (wrong path or client_id, say): retrying cannot help.
            # (429, 401, 403 and 5xx were mapped by the base class already.)
            raise PermanentUpstreamError(f"{self.name}: HTTP {response.status_code}",
                                         f"http_{response.status_code}")

    def _channel_options(self, sms: OutboundSms, *, with_text: bool) -> dict[str, Any]:
        """``channel_options.sms`` (table 5, l. 874-911): ``text``, ``alpha_name``, ``ttl``."""
        options: dict[str, Any] = {}
        if with_text:
            options["text"] = sms.text
        if sms.options.originator:
            options["alpha_name"] = sms.options.originator
        options["ttl"] = ttl_for(sms.options.validity)
        return options

    def _check_originator(self, sms: OutboundSms) -> None:
        """l. 904-911: the alpha name is at most 11 characters of the GSM 03.38 alphabet.
        Refused here, as the platform would with 36015, without spending a request."""
        originator = sms.options.originator
        if originator and (len(originator) > MAX_ALPHA_NAME
                           or any(ch not in GSM7 for ch in originator)):
            raise PermanentUpstreamError(
                f"{self.name}: alpha_name {originator!r} must be at most {MAX_ALPHA_NAME} "
                "GSM 03.38 characters", 36015)

    def simple_body(self, sms: OutboundSms) -> dict[str, Any]:
        """Request of 1.1 (l. 86-120). ``phone_number`` is a JSON number as in the example;
        ``alpha_name`` is marked mandatory (l. 902) but is left out when the SMS has no
        originator (the connection's default applies, or the platform answers 36014)."""
        body: dict[str, Any] = {
            "phone_number": int(sms.phone),
            "extra_id": extra_id_for(sms.idempotency_key),
        }
        if self.settings.callback_url:
            body["callback_url"] = self.settings.callback_url
        body["channels"] = ["sms"]
        body["channel_options"] = {"sms": self._channel_options(sms, with_text=True)}
        return body

    async def _post(self, attempt: int, tail: str, body: dict[str, Any]) -> tuple[
            httpx.Response, Any]:
        response = await self.request(
            attempt, "POST", self._path(tail),
            content=json.dumps(body, ensure_ascii=False).encode("utf-8"),
            headers={"Content-Type": "application/json"},  # tables 1 and 2: mandatory
            auth=self._auth,
        )
        return response, _json(response)

    async def _earlier_attempt(self, sms: OutboundSms) -> SendReceipt | None:
        """When an earlier request may have been taken (``maybe_sent``): the ``message_id``
        it got, found by ``extra_id`` (4.1, l. 608-612); None when the platform does not
        know it, or when no earlier request can have been taken (no lookup then)."""
        if sms.maybe_sent == 0:
            return None
        extra_id = quote(extra_id_for(sms.idempotency_key), safe="")
        report = await self._dr(sms.host_turn, f"/dr/external/{extra_id}/simple")
        if report is None or not report.get("message_id"):
            return None
        return SendReceipt((str(report["message_id"]),))  # accepted by an earlier attempt

    # -- Upstream ----------------------------------------------------------------------------

    async def send(self, sms: OutboundSms) -> SendReceipt:
        """``POST /{client_id}/json2/simple`` (1, l. 38-131). One ``message_id`` per message,
        however many parts the text takes (the report counts ``total_sms_parts``)."""
        self._check_originator(sms)
        earlier = await self._earlier_attempt(sms)
        if earlier is not None:
            return earlier
        response, data = await self._post(sms.host_turn, "/json2/simple", self.simple_body(sms))
        self._raise_for_error(response, data)
        message_id = data.get("message_id") if isinstance(data, dict) else None
        if not isinstance(message_id, str) or not message_id.strip():
            raise TransientUpstreamError(f"{self.name}: reply without message_id", "malformed",
                                         ambiguous=True)
        return SendReceipt((message_id.strip(),))

    # -- BatchSending ------------------------------------------------------------------------

    def batch_body(self, group: Sequence[OutboundSms]) -> dict[str, Any]:
        """Request of 2.1 (l. 179-229): per message ``phone_number``, ``extra_id``, ``text``;
        ``alpha_name`` and ``ttl`` are per request, so messages are grouped by them."""
        first = group[0]
        body: dict[str, Any] = {
            "messages": [
                {"phone_number": int(sms.phone), "extra_id": extra_id_for(sms.idempotency_key),
                 "text": sms.text}
                for sms in group
            ],
        }
        if self.settings.callback_url:
            body["callback_url"] = self.settings.callback_url
        body["channels"] = ["sms"]
        body["channel_options"] = {"sms": self._channel_options(first, with_text=False)}
        return body

    async def send_batch(self, batch: Sequence[OutboundSms]) -> list[SendReceipt | UpstreamError]:
        """``POST /{client_id}/json2/batch/sync`` (2, l. 134-360), one request per distinct
        (alpha name, ttl), after the originator check and, for a message an earlier request
        may have sent, the lookup by ``extra_id`` (:func:`bridge.upstreams._batch.send_grouped`
        says which failure is raised)."""

        async def settle(sms: OutboundSms) -> SendReceipt | None:
            self._check_originator(sms)
            return await self._earlier_attempt(sms)

        return await send_grouped(
            batch, self._send_group, upstream=self.name, settle=settle,
            key=lambda sms: (sms.options.originator or None, ttl_for(sms.options.validity)))

    async def _send_group(self, group: list[OutboundSms]) -> list[SendReceipt | UpstreamError]:
        turn = max(sms.host_turn for sms in group)
        response, data = await self._post(turn, "/json2/batch/sync", self.batch_body(group))
        self._raise_for_error(response, data)
        entries = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise TransientUpstreamError(f"{self.name}: batch reply without messages",
                                         "malformed", ambiguous=True)
        # Per-message entries (l. 326-360) are matched by extra_id (unique per message: the same
        # phone may appear twice with different texts); by position when extra_id is missing.
        by_extra = {str(e["extra_id"]): e for e in entries
                    if isinstance(e, dict) and e.get("extra_id") is not None}
        outcomes: list[SendReceipt | UpstreamError] = []
        for position, sms in enumerate(group):
            entry = by_extra.get(extra_id_for(sms.idempotency_key))
            if entry is None and position < len(entries) and isinstance(entries[position], dict) \
                    and entries[position].get("extra_id") is None:
                entry = entries[position]
            outcomes.append(self._batch_outcome(entry))
        return outcomes

    def _batch_outcome(self, entry: dict[str, Any] | None) -> SendReceipt | UpstreamError:
        if entry is None:
            # The reply does not mention the message: it may or may not have been taken.
            return TransientUpstreamError(f"{self.name}: message missing from the batch reply",
                                          "malformed", ambiguous=True)
        error = _error_of(entry)
        message_id = str(entry.get("message_id") or "").strip()
        if entry.get("accepted") is False or (error is not None and not message_id):
            if error is not None:
                return error_for_code(error[0], error[1] or f"error {error[0]}",
                                      upstream=self.name)
            return PermanentUpstreamError(f"{self.name}: message not accepted", "not_accepted")
        if not message_id:
            return TransientUpstreamError(f"{self.name}: batch entry without message_id",
                                          "malformed", ambiguous=True)
        return SendReceipt((message_id,))

    # -- StatusPolling -----------------------------------------------------------------------

    async def _dr(self, attempt: int, tail: str) -> dict[str, Any] | None:
        """``GET /{client_id}{tail}`` (table 4, l. 573-594): the report object, or None when the
        platform does not know the id.

        4.1 names no reply for an unknown id. HTTP 404 is taken to mean "unknown" whatever its
        body says: a platform may well add an error body whose code is one of table 11's
        internal errors (36020), and reading that code as "try again later" would make a retry
        ask forever and never send. Without a 404, an error code decides: an internal one
        (36020, 10216, a code in no table: l. 1319) or a full queue is transient and raised; a
        permanent one refused the question, not a message, and counts as unknown."""
        response = await self.request(attempt, "GET", self._path(tail), auth=self._auth)
        if response.status_code == 404:
            return None
        data = _json(response)
        # A report may name its outcome in ``error_code`` too (l. 409-411): a body with a
        # status or a message_id is a report, not a refusal.
        is_report = isinstance(data, dict) and ("status" in data or "message_id" in data
                                                or "reports" in data)
        error = None if is_report else _error_of(data)
        if error is not None:
            code, text = error
            if code not in PERMANENT_CODES:
                raise error_for_code(code, text, upstream=self.name)
            return None
        if response.status_code >= 400 or not isinstance(data, dict):
            return None  # other 4xx: unknown id (429, 401/403, 5xx were raised already)
        # The advanced form (4.2, l. 664-711) wraps reports in "reports": accepted as well.
        reports = data.get("reports")
        if isinstance(reports, list) and reports and isinstance(reports[-1], dict):
            return dict(reports[-1])
        return data

    async def poll_statuses(self, provider_ids: Sequence[str]) -> list[DeliveryReport]:
        """One ``/dr/{message_id}/simple`` per id (4.1, l. 596-638), ``concurrency`` at a time.
        Ids the platform does not know are left out; an error is raised only when no id could
        be asked for."""
        async def one(provider_id: str) -> DeliveryReport | None:
            data = await self._dr(1, f"/dr/{quote(provider_id, safe='')}/simple")
            if data is None:
                return None
            data.setdefault("message_id", provider_id)
            report = report_from(data)
            if report is not None and report.provider_id != provider_id:
                report = DeliveryReport(provider_id, report.status, report.raw_status,
                                        report.error_code, report.at)
            return report

        return await poll_each(provider_ids, one, concurrency=self.settings.concurrency)


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content) if response.content else None
    except (ValueError, UnicodeDecodeError):
        return None

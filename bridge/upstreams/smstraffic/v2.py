"""SMS Traffic HTTP API v2: ``POST /v2/send`` JSON with ``Authorization: Bearer`` (002 line 105).

Spec: ``002_e7d2ff51d5c777f0.txt`` — HTTP API v2 (line 105), ``/v2/statuses/list`` (line 306),
``/v2/account`` (line 583), API error codes (line 1988), backup host (line 88), statuses
(line 2048).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

import httpx

from bridge.errors import TransientUpstreamError, UpstreamError
from bridge.models import DeliveryReport
from bridge.parsing.status import map_status
from bridge.upstreams.base import HttpUpstream, OutboundSms, SendReceipt
from bridge.upstreams.config import UpstreamSettings
from bridge.upstreams.smstraffic.common import STATUS_CHUNK, chunks, error_for_code
from bridge.upstreams.smstraffic.settings import SmsTrafficV2Settings

log = logging.getLogger(__name__)

# v2 restrictiveId: "Уникальный идентификатор, предотвращающий повторную отправку в течение
# часа" (002 line 163). A retry relies on it only within RESTRICTIVE_SAFE of the first attempt
# that may have reached the provider (the margin covers clocks and the request's own time);
# later, or when that time is unknown (a restart, another instance), the retry first looks
# the message up by trackingData.
RESTRICTIVE_WINDOW = 3600.0
RESTRICTIVE_SAFE = RESTRICTIVE_WINDOW - 300.0
# restrictiveId takes at most 36 characters (line 163), trackingData 40 (line 160).
MARK_LENGTH = 36
# How long an upstream remembers a message's earlier attempts (its retries end long before).
TRIED_KEEP = 2 * 86400.0


def request_mark(sms: OutboundSms) -> str:
    """The message's ``restrictiveId`` and ``trackingData`` (002 lines 160-163): its
    idempotency key, constant across retries; a key longer than those fields allow is
    replaced by a digest rather than cut, so that two messages never share a mark."""
    key = sms.idempotency_key
    if len(key) <= MARK_LENGTH:
        return key
    return "h" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:MARK_LENGTH - 1]


@dataclass
class _Tried:
    """What this upstream saw of a message's earlier attempts."""

    since: float  # clock() at the first of them
    # clock() when the first attempt that may have reached the provider began; None while
    # every attempt surely sent nothing (refused connection, HTTP 429, an error answer)
    first: float | None = None
    refused: bool = False  # answered 105: an earlier attempt was accepted, never send again


@dataclass
class _Lookup:
    ids: tuple[str, ...] = ()
    error: UpstreamError | None = None


class SmsTrafficV2Upstream(HttpUpstream):
    """HTTP API v2: ``POST /v2/send`` JSON with ``Authorization: Bearer`` (002 line 105).

    Every request carries the message's mark (:func:`request_mark`) as ``restrictiveId``
    and as the destination's ``trackingData``. ``restrictiveId`` makes the provider refuse
    the same request for an hour (code 105, line 163); ``trackingData`` finds the message in
    ``/v2/statuses/list`` (line 314), which is how a retry learns the provider's id of an SMS
    whose answer was lost:

    * a resend (``maybe_sent``: an earlier request may have been taken) within the hour sends
      again; a 105 answer means an earlier request was accepted, and the ids are looked up
      by ``trackingData`` — never sent again;
    * a resend later than that, or one whose earlier request this process did not see (a
      restart, another instance), looks up first and sends only if nothing is listed.
    * while ``maybe_sent`` is 0 nothing earlier can have been taken: no lookup, and a 105
      is an error like any other.

    No BatchSending: ``restrictiveId`` belongs to the whole request, so a batch retried after
    a partial change (one message dropped or added) would be a new request and could send its
    messages twice. One message per request keeps retries safe.
    """

    kind: ClassVar[str] = "smstraffic_v2"
    settings: SmsTrafficV2Settings
    idempotent: ClassVar[bool] = True
    finds_earlier_sends: ClassVar[bool] = True
    # Seconds after a first attempt during which a retry relies on restrictiveId.
    restrictive_safe: ClassVar[float] = RESTRICTIVE_SAFE

    def __init__(self, name: str, settings: UpstreamSettings, client: httpx.AsyncClient) -> None:
        super().__init__(name, settings, client)
        self.clock: Callable[[], float] = time.monotonic
        # mark -> earlier attempts, in insertion order (so the oldest are pruned first).
        self._tried: dict[str, _Tried] = {}

    def body(self, sms: OutboundSms) -> dict[str, Any]:
        channel: dict[str, Any] = {
            "message": sms.text,
            "maxParts": sms.options.max_parts,
            "transliterate": sms.options.transliterate,
        }
        if sms.options.validity:
            # "timeout" is in the request example (002 line 201), not in the parameter table
            channel["timeout"] = sms.options.validity
        mark = request_mark(sms)
        body: dict[str, Any] = {
            "channels": {"sms": channel},
            "destinations": [{"to": int(sms.phone), "trackingData": mark}],
            "restrictiveId": mark,
        }
        if sms.options.originator:
            body["originator"] = sms.options.originator
        return body

    def _headers(self) -> dict[str, str]:
        assert self.settings.api_key is not None
        return {"Authorization": f"Bearer {self.settings.api_key.get_secret_value()}"}

    def _remember(self, mark: str, started: float, *, reached: bool,
                  refused: bool = False) -> None:
        """Note a failed attempt begun at ``started``: whether it may have ``reached`` the
        provider (an ambiguous failure), whether it was ``refused`` as a duplicate."""
        tried = self._tried.setdefault(mark, _Tried(started))
        if reached and tried.first is None:
            tried.first = started
        tried.refused = tried.refused or refused
        while self._tried:  # prune from the oldest
            oldest = next(iter(self._tried))
            if self._tried[oldest].since >= started - TRIED_KEEP:
                break
            del self._tried[oldest]

    def _must_look_up(self, sms: OutboundSms, tried: _Tried | None) -> bool:
        """Whether the provider may take this request as new although an earlier attempt
        was accepted: its restrictiveId window may be over, or this process cannot tell."""
        if sms.maybe_sent == 0:
            return False  # no earlier request can have been taken
        if tried is None or tried.refused or tried.first is None:
            # The doubt comes from a request this process did not see (a restart, another
            # instance), or one was accepted already: its time is unknown, so ask.
            return True
        return self.clock() - tried.first >= self.restrictive_safe

    async def send(self, sms: OutboundSms) -> SendReceipt:
        mark = request_mark(sms)
        tried = self._tried.get(mark)
        if self._must_look_up(sms, tried):
            # The provider may take this request as new: find an earlier copy first.
            found = await self._lookup(mark)
            if isinstance(found.error, TransientUpstreamError):
                raise found.error  # nothing was sent; the next attempt looks up again
            if found.ids:
                self._tried.pop(mark, None)
                return SendReceipt(found.ids)  # accepted by an earlier attempt
            if tried is not None and tried.refused:
                return await self._accepted_earlier(mark, tried.since, found)
            # Nothing listed: send. (A lookup this key may not make, HTTP 403, leaves
            # restrictiveId as the only guard, as it is within the hour.)
        started = self.clock()
        try:
            response = await self.request(
                sms.host_turn,
                "POST",
                "/v2/send",
                json=self.body(sms),
                headers=self._headers(),
            )
        except TransientUpstreamError as exc:
            self._remember(mark, started, reached=exc.ambiguous)
            raise
        try:
            reply = response.json()
            success = reply["success"]
        except (ValueError, KeyError, TypeError) as exc:
            self._remember(mark, started, reached=True)
            raise TransientUpstreamError(f"{self.name}: malformed JSON reply", "malformed",
                                         ambiguous=True) from exc
        if not success:
            error = reply.get("error") or {}
            code = int(error.get("code", 0) or 0)
            text = str(error.get("message", ""))
            # 105 means "restrictiveId duplicate" in the code table (line 1988) and "Invalid
            # request format" in an example (line 296-306). On a resend of a well-formed
            # request that may have been taken before it can only be the former: an earlier
            # request was accepted. Its ids are looked up by trackingData; it is never sent
            # again.
            if code == 105 and sms.maybe_sent > 0:
                return await self._accepted_earlier(mark, started)
            self._remember(mark, started, reached=False)  # refused: nothing was sent
            raise error_for_code(code, text, upstream=self.name)
        ids: list[str] = []
        for destination in reply.get("destinations") or []:
            error = destination.get("error")
            if error:
                raise error_for_code(int(error.get("code", 0) or 0),
                                     str(error.get("message", "")), upstream=self.name)
            if destination.get("id"):
                ids.append(str(destination["id"]))
        self._tried.pop(mark, None)
        return SendReceipt(tuple(ids))

    async def _accepted_earlier(self, mark: str, started: float,
                                found: _Lookup | None = None) -> SendReceipt:
        """After a 105 on a retry: the ids of the accepted copy. A lookup that fails for now
        is retried (the next attempt looks up without sending); one that lists nothing, or
        that this key may not make, leaves the SMS sent without an id."""
        if found is None:
            found = await self._lookup(mark)
        if isinstance(found.error, TransientUpstreamError):
            self._remember(mark, started, reached=True, refused=True)
            raise TransientUpstreamError(
                f"{self.name}: accepted by an earlier attempt (restrictiveId); its id is not "
                f"known yet: {found.error.text}", found.error.code,
                retry_after=found.error.retry_after)
        self._tried.pop(mark, None)
        # Not listed by trackingData (or not askable): sent, its id unknown.
        return SendReceipt(found.ids)

    async def _lookup(self, mark: str) -> _Lookup:
        """The ids of the SMS sent with ``trackingData`` ``mark``: ``POST /v2/statuses/list``
        with ``trackingData`` (002 line 314); each ``data`` item has ``smsId`` and
        ``trackingData`` (line 353). An error is returned, not raised: what it means depends
        on why the lookup was made."""
        try:
            data = await self._call("/v2/statuses/list", {"trackingData": [mark]})
            if not isinstance(data, list):
                raise TransientUpstreamError(f"{self.name}: statuses without data", "malformed")
        except UpstreamError as exc:
            log.warning("lookup by trackingData failed",
                        extra={"upstream": self.name, "error": str(exc)})
            return _Lookup(error=exc)
        ids = [str(item["smsId"]) for item in data
               if isinstance(item, dict) and item.get("smsId")
               and item.get("trackingData", mark) == mark]
        return _Lookup(tuple(dict.fromkeys(ids)))

    async def _call(self, path: str, payload: Any) -> Any:
        """A v2 call that is not a send: POST JSON, ``{"success", "error", "data"}`` back
        (002 lines 117-119 and 238-256). Nothing is sent by it, so nothing is ambiguous."""
        response = await self.request(1, "POST", path, json=payload, headers=self._headers())
        try:
            reply = response.json()
            success = reply["success"]
            if not success:
                error = reply.get("error") or {}
                code = int(error.get("code", 0) or 0)
                raise error_for_code(code, str(error.get("message", "")), upstream=self.name)
            return reply.get("data")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TransientUpstreamError(f"{self.name}: malformed JSON reply",
                                         "malformed") from exc

    async def balance(self) -> Decimal:
        """``GET /v2/account`` (002 line 583): ``data.account``, a string, may be negative."""
        response = await self.request(1, "GET", "/v2/account", headers=self._headers())
        try:
            reply = response.json()
            if not reply["success"]:
                error = reply.get("error") or {}
                raise error_for_code(int(error.get("code", 0) or 0),
                                     str(error.get("message", "")), upstream=self.name)
            return Decimal(str(reply["data"]["account"]).strip())
        except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
            raise TransientUpstreamError(f"{self.name}: malformed balance reply",
                                         "malformed") from exc

    async def poll_statuses(self, provider_ids: Sequence[str]) -> list[DeliveryReport]:
        """``POST /v2/statuses/list`` with ``ids`` and ``extendedInfo`` (002 line 306);
        ``data[]`` holds ``smsId``, ``status``, ``deliveryDate`` and, with ``extendedInfo``,
        ``statusExtended.code`` (the operator's error code). Unknown ids are not listed."""
        reports: list[DeliveryReport] = []
        for chunk in chunks(provider_ids, STATUS_CHUNK):
            data = await self._call("/v2/statuses/list", {"ids": chunk, "extendedInfo": True})
            if not isinstance(data, list):
                raise TransientUpstreamError(f"{self.name}: statuses without data", "malformed")
            for item in data:
                if not isinstance(item, dict) or not item.get("smsId"):
                    continue
                raw = str(item.get("status") or "").strip()
                extended = item.get("statusExtended")
                code = extended.get("code") if isinstance(extended, dict) else None
                reports.append(DeliveryReport(
                    str(item["smsId"]), map_status(raw), raw,
                    code if isinstance(code, int) and not isinstance(code, bool) else None,
                    str(item.get("deliveryDate") or item.get("sendDate") or ""),
                ))
        return reports

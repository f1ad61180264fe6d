"""Inbound HTTP endpoints: MO SMS, short-code hits, delivery reports, reply-script admin API.

URLs (``SOURCE`` is a configured ``[inbound.sources.SOURCE]``; its secret goes in the path,
where a provider's URL template keeps it, or in an ``X-Bridge-Secret`` header)::

    GET|POST /in/SOURCE/SECRET/mo          (or /in/SOURCE/mo + X-Bridge-Secret)
    GET|POST /in/SOURCE/SECRET/shortcode
    GET|POST /in/SOURCE/SECRET/dlr         form (002 line 1100) or JSON (002 line 427)

Every first request with an ``sms_id`` is committed with its forwarding jobs before it is
answered; every repeat gets the stored answer and forwards nothing (002 line 1897: "если
sms_id повторяется, то необходимо дать тот же ответ").
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from pydantic import ValidationError

from bridge import metrics
from bridge.errors import EgressRefused, InboundError, StoreUnavailable
from bridge.inbound.answers import AnswerCache
from bridge.inbound.parsing import (
    DecodedParams,
    clean_reply,
    declared_charset,
    decode_params,
    parse_mo,
    parse_shortcode,
)
from bridge.models import ForwardJob, InboundMessage, InboundRecord, StoredResponse
from bridge.redact import redact_params, redact_path, redact_text
from bridge.relays.egress import EgressPolicy
from bridge.relays.forward import plan_forwarding
from bridge.relays.replies import call_reply_script
from bridge.relays.routing import ReplyScript, select_script
from bridge.settings import InboundSourceSettings, ReplyScriptSettings, Settings
from bridge.store.base import OutboxStore
from bridge.store.common import inbound_content_hash
from bridge.upstreams.registry import dlr_parser

log = logging.getLogger(__name__)

OK_RESPONSE = StoredResponse(200, b"OK", "text/plain; charset=utf-8")
# Seconds a client is asked to wait after a 503 (store unavailable): nothing was committed,
# and a provider's retry is answered as the first request would have been.
RETRY_AFTER = "5"
# Counters resolved once, not per request.
DUPLICATE_MO = metrics.INBOUND_DUPLICATES.labels(kind="mo")
INBOUND_BY_KIND = {kind: metrics.INBOUND.labels(kind=kind) for kind in ("mo", "shortcode")}


def json_error(status: int, message: str, field: str | None = None) -> web.Response:
    return web.json_response(InboundError(status, message, field=field).body(), status=status)


def stored(response: StoredResponse) -> web.Response:
    return web.Response(status=response.status, body=response.body,
                        headers={"Content-Type": response.content_type})


class InboundService:
    """The state behind the inbound endpoints: settings, store and reply-script calls."""

    SCRIPT_CACHE_SECONDS = 5.0

    def __init__(self, settings: Settings, store: OutboxStore, client: httpx.AsyncClient,
                 *, on_forward: Callable[[list[ForwardJob]], None] = lambda jobs: None) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.on_forward = on_forward
        self.egress = EgressPolicy(settings.inbound.egress_allowed_networks,
                                   settings.inbound.egress_allowed_ports)
        # Short-code hits being answered in this process, so that concurrent repeats wait
        # for the one script call instead of making their own.
        self._inflight: dict[tuple[str, str], asyncio.Future[StoredResponse]] = {}
        self.answers = AnswerCache(settings.inbound.answer_cache_size)
        self._scripts: list[ReplyScript] | None = None
        self._scripts_at = 0.0
        self._secrets: dict[str, bytes] = {}  # each source's secret, encoded once

    # -- request plumbing -------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> tuple[str, InboundSourceSettings]:
        match_info = request.match_info
        name = match_info["source"]
        source = self.settings.inbound.sources.get(name)
        given = match_info.get("secret") or request.headers.get("X-Bridge-Secret") or ""
        expected = self._secrets.get(name) if source else b"\0none"
        if expected is None:
            assert source is not None
            expected = self._secrets[name] = source.secret.get_secret_value().encode()
        # Bytes, not str: hmac.compare_digest raises TypeError on non-ASCII str.
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected) \
                or source is None:
            raise InboundError(403, "forbidden")
        if source.allowed_networks:
            try:
                remote = ipaddress.ip_address(request.remote or "")
            except ValueError:
                raise InboundError(403, "forbidden") from None
            if not any(remote in ipaddress.ip_network(net, strict=False)
                       for net in source.allowed_networks):
                raise InboundError(403, "forbidden")
        return name, source

    async def read_raw(self, request: web.Request) -> bytes:
        """Query string and form body as received (one ``a=b&c=d`` byte string). The
        server escapes raw 8-bit bytes of the request line as ``%XX`` (see
        :mod:`bridge.inbound.app`), which decodes to the same bytes."""
        body = body_at_once(request, self.settings.http.max_body_bytes)
        if body is None:
            body = await read_body(request, self.settings.http.max_body_bytes)
        query = raw_query(request)
        if not query:
            return body
        return query + (b"&" if body else b"") + body

    async def read_params(
        self, request: web.Request, source: InboundSourceSettings
    ) -> tuple[DecodedParams, bytes]:
        """Query string and form body, decoded from raw bytes with the right charset."""
        raw = await self.read_raw(request)
        return decode_request(request, source, raw), raw

    # -- MO SMS -------------------------------------------------------------------------------

    async def mo(self, request: web.Request) -> web.Response:
        name, source = self.authenticate(request)
        raw = await self.read_raw(request)
        # A provider's retry that this process answered is answered from memory before
        # anything else is decoded. Any other request goes straight to the insert-or-fetch
        # of record_inbound, which returns the stored answer of a retry first answered
        # elsewhere: no store read ahead of every new message.
        answer = self.answers.get(name, "mo", raw)
        if answer is not None:
            DUPLICATE_MO.inc()
            return stored(answer)
        # The stored request keeps no secret a provider may add (``password=``).
        message = parse_mo(name, decode_request(request, source, raw), redact_params(raw))
        record = await self._record(message, "routed", OK_RESPONSE, looked_up=True)
        answer = record.response or OK_RESPONSE
        self.answers.put(name, "mo", message.sms_id, answer, raw)
        return stored(answer)

    async def accept_polled(self, message: InboundMessage) -> InboundRecord:
        """A message fetched by polling enters the same pipeline as a pushed one: same
        routes, forwarding and deduplication (by its provider's ``sms_id``)."""
        return await self._record(message, "routed", OK_RESPONSE)

    async def _record(self, message: InboundMessage, state: str,
                      response: StoredResponse | None, *, looked_up: bool = False
                      ) -> InboundRecord:
        now = time.time()
        if message.sms_id is not None and not looked_up:
            # A replay is answered from a store read, without building the forwarding jobs.
            earlier = await self.store.get_inbound(message.source, message.sms_id)
            if earlier is not None:
                self._repeated(message, earlier)
                return earlier
        jobs, routed = plan_forwarding(self.settings, message, now)
        if state == "routed" and not routed:
            state = "unrouted"  # kept and listed by `sms-bridge inbound`, never dropped
        config = self.settings.inbound
        record = await self.store.record_inbound(
            message, now=now, dedup_window=config.dedup_window_without_id, state=state,
            response=response, jobs=jobs, forward_deadline=now + config.forward_retry_period,
        )
        if record.duplicate:
            self._repeated(message, record)
        else:
            counter = INBOUND_BY_KIND.get(message.kind)
            (counter or metrics.INBOUND.labels(kind=message.kind)).inc()
            if log.isEnabledFor(logging.INFO):
                log.info("inbound sms", extra={"inbound_id": record.id, "kind": message.kind,
                                               "sms_id": message.sms_id, "jobs": len(jobs),
                                               "routed": routed})
            if jobs:
                self.on_forward(jobs)
        return record

    @staticmethod
    def _repeated(message: InboundMessage, earlier: InboundRecord) -> None:
        """A repeat gets the first answer and forwards nothing (002 line 1897). One whose
        sms_id comes back with other content is most likely a provider reusing ids: it is
        logged and counted, so that the message it drops does not go unnoticed."""
        metrics.INBOUND_DUPLICATES.labels(kind=message.kind).inc()
        if message.sms_id is not None and earlier.content_hash \
                and earlier.content_hash != inbound_content_hash(message):
            metrics.INBOUND_CONFLICTS.labels(kind=message.kind).inc()
            log.warning("sms_id repeated with other content: answered as a repeat, not forwarded",
                        extra={"inbound_id": earlier.id, "source": message.source,
                               "sms_id": message.sms_id, "phone": message.phone})

    # -- short codes --------------------------------------------------------------------------

    async def shortcode(self, request: web.Request) -> web.Response:
        name, source = self.authenticate(request)
        params, raw = await self.read_params(request, source)
        # The stored request keeps no ``password``; repeats are recognised by a keyed
        # digest of the request as received (see AnswerCache).
        message, password = parse_shortcode(name, params, redact_params(raw))
        assert message.recipient is not None
        code = self.settings.inbound.shortcodes.get(message.recipient)
        expected = code.password.get_secret_value().encode() if code else b"\0none"
        if not hmac.compare_digest(password.encode("utf-8", "surrogateescape"), expected) \
                or code is None:
            raise InboundError(403, "wrong short code or password", field="password")
        deadline = asyncio.get_running_loop().time() + self.settings.inbound.reply_budget
        return stored(await self._answer(message, source, raw, deadline))

    # Short-code answers (002 line 1976: "В случае повторного поступления запроса с одним и
    # тем же sms_id необходимо дать абоненту точно такой же ответ"). The request that
    # records the sms_id first (the store's insert-or-fetch decides, across processes and
    # instances) calls the reply script; every other one waits for the answer it stores.
    # Every answer, a fallback too, is stored before it is given, and the first one stored
    # stands: a retry always gets the first answer's bytes.

    # Part of the reply budget kept for storing the answer after the script call.
    COMMIT_RESERVE = 0.2
    # How long the caller of a script holds the call, in reply budgets: a pending hit whose
    # caller held it longer (it died mid-call) is taken over by a repeat, once per hold.
    # Two budgets, so that a caller that is slow to store its answer is not replaced.
    ANSWER_HOLD = 2.0
    # Waiting for another process's answer: store reads at growing intervals.
    POLL_FIRST = 0.005
    POLL_MAX = 0.1

    async def _answer(self, message: InboundMessage, source: InboundSourceSettings,
                      raw: bytes, deadline: float) -> StoredResponse:
        """The answer to a short-code hit, stored before it is returned; ``deadline`` (event
        loop time) ends the reply budget."""
        key = (message.source, message.sms_id or "")
        if message.sms_id is not None:
            answer = self.answers.get(message.source, "shortcode", raw)
            if answer is not None:
                metrics.INBOUND_DUPLICATES.labels(kind="shortcode").inc()
                return answer
            inflight = self._inflight.get(key)
            if inflight is not None:
                # A request of this process is answering this sms_id: its answer is stored
                # before its deadline, which comes before this one's. Should the store be
                # too slow for that, this request asks the store itself, below.
                metrics.INBOUND_DUPLICATES.labels(kind="shortcode").inc()
                try:
                    async with asyncio.timeout_at(deadline):
                        return await asyncio.shield(inflight)
                except TimeoutError:
                    pass
        future: asyncio.Future[StoredResponse] = asyncio.get_running_loop().create_future()
        if message.sms_id is not None and key not in self._inflight:
            self._inflight[key] = future
        try:
            result = await self._settle(message, source, deadline)
            self.answers.put(message.source, "shortcode", message.sms_id, result, raw)
            future.set_result(result)
            return result
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: waiters see it, nobody logs it as lost
            raise
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]

    async def _settle(self, message: InboundMessage, source: InboundSourceSettings,
                      deadline: float) -> StoredResponse:
        record = await self._record(message, "pending", None)
        if record.response is not None:
            return record.response
        if not record.duplicate:
            return await self._run_script(record, message, source, deadline)
        return await self._await_answer(record, message, source, deadline)

    async def _await_answer(self, record: InboundRecord, message: InboundMessage,
                            source: InboundSourceSettings, deadline: float) -> StoredResponse:
        """A repeat of a pending hit: another request (in any process or instance) calls the
        script, and its stored answer is awaited. If that caller's hold ran out (it died
        mid-call) this request takes the call over; at the deadline, the fallback is stored
        (unless an answer was stored first) and the answer that stands is returned."""
        loop = asyncio.get_running_loop()
        hold = self.settings.inbound.reply_budget * self.ANSWER_HOLD
        delay = self.POLL_FIRST
        while True:
            answer = await self.store.inbound_answer(record.id)
            if answer is not None:
                return answer
            now = time.time()
            if now >= record.received_at + hold \
                    and await self.store.claim_inbound_answer(record.id, now, hold):
                log.warning("reply script call taken over from a caller that did not answer",
                            extra={"inbound_id": record.id})
                return await self._run_script(record, message, source, deadline)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, self.POLL_MAX)
        return await self._store_fallback(
            record, message, source, "no answer within the reply budget: another request "
            "was calling the reply script")

    async def _store_fallback(self, record: InboundRecord, message: InboundMessage,
                              source: InboundSourceSettings, error: str) -> StoredResponse:
        assert message.recipient is not None
        code = self.settings.inbound.shortcodes[message.recipient]
        response = self._reply_response(code.fallback_reply, source.charset)
        return await self.store.complete_inbound(record.id, response, error)

    async def _run_script(self, record: InboundRecord, message: InboundMessage,
                          source: InboundSourceSettings, deadline: float) -> StoredResponse:
        """Call the reply script within what is left of the budget (less the time kept for
        storing the answer) and store its cleaned answer, or the fallback; return the answer
        that stands (one stored first by a repeat that gave up waiting wins)."""
        assert message.recipient is not None
        code = self.settings.inbound.shortcodes[message.recipient]
        script = select_script(await self.scripts(), message.recipient, message.keyword)
        budget = self.settings.inbound.reply_budget
        timeout = deadline - asyncio.get_running_loop().time() - budget * self.COMMIT_RESERVE
        error: str | None = None
        if script is None:
            text, error = code.fallback_reply, "no reply script registered"
        elif timeout <= 0:
            text, error = code.fallback_reply, "reply budget spent before the script was called"
        else:
            try:
                answer = await call_reply_script(self.client, self.egress, script, message,
                                                 timeout=min(script.timeout, timeout))
                text = clean_reply(answer, code.max_parts)
                metrics.REPLY_SCRIPTS.labels(outcome="ok").inc()
            except Exception as exc:  # any failure yields the fallback and is recorded
                text = code.fallback_reply
                error = redact_text(f"{type(exc).__name__}: {exc}")[:300]
                metrics.REPLY_SCRIPTS.labels(outcome="failed").inc()
                log.warning("reply script failed", extra={"inbound_id": record.id,
                                                          "script": script.id, "error": error})
        response = self._reply_response(text, source.charset)
        return await self.store.complete_inbound(record.id, response, error)

    @staticmethod
    def _reply_response(text: str, charset: str) -> StoredResponse:
        return StoredResponse(200, text.encode(charset, errors="replace"),
                              f"text/plain; charset={charset}")

    def scripts_changed(self) -> None:
        """Registered scripts changed (through the console): the next hit reads them again."""
        self._scripts = None

    async def scripts(self) -> list[ReplyScript]:
        """Reply scripts from the configuration and the admin API (cached for a few seconds)."""
        now = time.monotonic()
        if self._scripts is None or now - self._scripts_at > self.SCRIPT_CACHE_SECONDS:
            configured = [
                ReplyScript(f"config:{i}", s.shortcode, s.keyword, s.url, s.method, s.timeout,
                            s.secret.get_secret_value() if s.secret else None)
                for i, s in enumerate(self.settings.inbound.reply_scripts)
            ]
            registered = [
                ReplyScript(str(row["id"]), row["shortcode"], row["keyword"], row["url"],
                            row["method"], row["timeout"], row["secret"])
                for row in await self.store.list_reply_scripts()
            ]
            self._scripts, self._scripts_at = configured + registered, now
        return self._scripts

    # -- delivery reports -------------------------------------------------------------------

    async def dlr(self, request: web.Request) -> web.Response:
        name, source = self.authenticate(request)
        content_type = request.headers.get("Content-Type", "")
        body = await read_body(request, self.settings.http.max_body_bytes)
        query = raw_query(request)
        charset = declared_charset(content_type) or source.charset
        reports = dlr_parser(source.dlr_format)(content_type, query, body, charset)
        matched = await self.store.record_delivery_reports(name, reports, time.time())
        metrics.DELIVERY_REPORTS.labels(matched="yes").inc(matched)
        metrics.DELIVERY_REPORTS.labels(matched="no").inc(len(reports) - matched)
        # 002 lines 427 and 1100: answer 200 or 204, or the provider slows its reports down.
        return web.Response(status=200, text="OK")

    # -- admin API for reply scripts ----------------------------------------------------------

    def check_admin(self, request: web.Request) -> None:
        token = self.settings.http.admin_token
        if token is None:
            raise InboundError(404, "the admin API is disabled (set http.admin_token)")
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                   token.get_secret_value().encode()):
            raise InboundError(401, "missing or wrong bearer token")

    async def _script_body(self, request: web.Request) -> dict[str, Any]:
        try:
            data = json.loads(await read_body(request, self.settings.http.max_body_bytes))
        except ValueError as exc:
            raise InboundError(400, f"invalid reply script: {_first_error(exc)}") from None
        return await self.script_values(data)

    async def script_values(self, data: Any) -> dict[str, Any]:
        """A reply script's fields as the store keeps them, from the admin API's JSON or
        the console's form; :class:`InboundError` 400 naming the field otherwise."""
        try:
            script = ReplyScriptSettings.model_validate(data)
        except ValueError as exc:
            field = None
            if isinstance(exc, ValidationError) and exc.errors():
                field = ".".join(str(p) for p in exc.errors()[0]["loc"]) or None
            raise InboundError(400, f"invalid reply script: {_first_error(exc)}",
                               field=field) from None
        if script.shortcode not in self.settings.inbound.shortcodes:
            raise InboundError(400, f"unknown short code {script.shortcode!r}", field="shortcode")
        # Refuse a URL that is not reachable under the egress policy now, not at the first hit.
        from urllib.parse import urlsplit

        parts = urlsplit(script.url)
        try:
            await self.egress.resolve(parts.hostname or "",
                                      parts.port or (443 if parts.scheme == "https" else 80))
        except EgressRefused as exc:
            raise InboundError(400, f"url refused: {exc}", field="url") from None
        values = script.model_dump()
        values["secret"] = script.secret.get_secret_value() if script.secret else None
        return values

    async def list_scripts(self, request: web.Request) -> web.Response:
        self.check_admin(request)
        configured = [_public({"id": f"config:{i}", "source": "config", **s.model_dump()})
                      for i, s in enumerate(self.settings.inbound.reply_scripts)]
        registered = [_public({**row, "source": "api"})
                      for row in await self.store.list_reply_scripts()]
        return web.json_response({"reply_scripts": configured + registered})

    async def create_script(self, request: web.Request) -> web.Response:
        self.check_admin(request)
        saved = await self.store.save_reply_script(await self._script_body(request), time.time())
        self._scripts = None
        assert saved is not None
        return web.json_response(_public({**saved, "source": "api"}), status=201)

    async def get_script(self, request: web.Request) -> web.Response:
        self.check_admin(request)
        script_id = _script_id(request)
        for row in await self.store.list_reply_scripts():
            if row["id"] == script_id:
                return web.json_response(_public({**row, "source": "api"}))
        raise InboundError(404, "no such reply script")

    async def update_script(self, request: web.Request) -> web.Response:
        self.check_admin(request)
        saved = await self.store.save_reply_script(await self._script_body(request), time.time(),
                                                   _script_id(request))
        if saved is None:
            raise InboundError(404, "no such reply script")
        self._scripts = None
        return web.json_response(_public({**saved, "source": "api"}))

    async def delete_script(self, request: web.Request) -> web.Response:
        self.check_admin(request)
        if not await self.store.delete_reply_script(_script_id(request)):
            raise InboundError(404, "no such reply script")
        self._scripts = None
        return web.Response(status=204)


def raw_query(request: web.Request) -> bytes:
    """The query string as the client sent it (8-bit bytes arrive escaped as ``%XX``)."""
    return request.raw_path.partition("?")[2].encode("utf-8", "surrogateescape")


def decode_request(request: web.Request, source: InboundSourceSettings,
                   raw: bytes) -> DecodedParams:
    """Parameters decoded with the request's declared charset, else the source's; only the
    source's default is second-guessed when the bytes are valid UTF-8 (see
    :func:`decode_params`)."""
    declared = declared_charset(request.headers.get("Content-Type"))
    return decode_params(raw, declared or source.charset, sniff_utf8=declared is None)


def _script_id(request: web.Request) -> int:
    value = request.match_info["script_id"]
    if not value.isascii() or not value.isdigit():
        raise InboundError(404, "no such reply script (configured scripts are read-only)")
    return int(value)


def _public(script: dict[str, Any]) -> dict[str, Any]:
    """A script as the API shows it: the secret is never echoed."""
    shown = {k: v for k, v in script.items() if k != "secret"}
    shown["has_secret"] = bool(script.get("secret"))
    return shown


def _first_error(exc: ValueError) -> str:
    if isinstance(exc, ValidationError) and exc.errors():
        return str(exc.errors()[0]["msg"])
    return str(exc).splitlines()[0]


def body_at_once(request: web.Request, limit: int) -> bytes | None:
    """The body when it came whole with the head (a provider's form, almost always): taken
    from the buffer at once, without a coroutine, an iterator and a wait per chunk. None
    when it must be read (:func:`read_body`)."""
    if not request.body_exists:
        return b""
    length = request.content_length
    if length is not None and length > limit:
        raise InboundError(413, f"body larger than {limit} bytes")
    content = request.content
    if not content.is_eof() or content.exception() is not None:
        return None
    body = content.read_nowait()
    if len(body) > limit:
        raise InboundError(413, f"body larger than {limit} bytes")
    return body


async def read_body(request: web.Request, limit: int) -> bytes:
    body = body_at_once(request, limit)
    if body is not None:
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise InboundError(413, f"body larger than {limit} bytes")
            chunks.append(chunk)
    except (RequestPayloadError, HttpProcessingError):
        # Broken chunked framing, a body shorter than its Content-Length, bad compression.
        raise InboundError(400, "malformed request body") from None
    return b"".join(chunks)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def refused(request: web.Request, status: int, error: str) -> None:
    """Count and log a refusal: the path only through the redactor, never the query."""
    metrics.INBOUND_REJECTED.labels(reason=str(status)).inc()
    log.info("http request refused",
             extra={"status": status, "error": error, "method": request.method,
                    "path": redact_path(request.raw_path), "remote": request.remote})


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal is an HTTP status with a JSON body; nothing internal leaks."""
    try:
        return await handler(request)
    except InboundError as exc:
        refused(request, exc.status, exc.message)
        return web.json_response(exc.body(), status=exc.status)
    except StoreUnavailable:
        metrics.INBOUND_REJECTED.labels(reason="store").inc()
        # Nothing was committed: the provider's retry is safe and will be answered.
        response = json_error(503, "store unavailable, retry later")
        response.headers["Retry-After"] = RETRY_AFTER
        return response
    except web.HTTPException as exc:
        # aiohttp's own refusals (404, 405, 413 …) as JSON, keeping what the client needs.
        if exc.status < 400:
            raise
        refused(request, exc.status, exc.reason.lower())
        response = json_error(exc.status, exc.reason.lower())
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path.split("/")[1])
        return json_error(500, "internal error")

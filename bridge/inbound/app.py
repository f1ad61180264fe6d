"""The aiohttp application — inbound endpoints, reply-script API, health, readiness,
metrics — and the HTTP server under it, whose refusals are the bridge's own.

aiohttp's server, left as it is, refuses what real providers send and logs what must not be
logged: its C parser refuses a request target with raw 8-bit bytes (a provider pushing
windows-1251 by GET without escaping it) or longer than 8,190 bytes (a long SMS by GET),
logs the whole request line — the source secret in the path, a short-code ``password`` in
the query — at ERROR with a traceback, and answers with its own plain-text page quoting the
request. :func:`make_http_runner` builds a server whose protocol

* looks at each request line before it is parsed, where it can (at the start of a
  connection, and after a request that ended its data): one with raw 8-bit bytes or spaces
  in its target — which the C parser refuses and cannot be told to accept — makes the
  connection switch to aiohttp's pure-Python parser, which escapes them as ``%XX`` before
  parsing the line. The handlers read the provider's bytes from ``raw_path`` and decode them
  with the source's charset. Other connections keep the C parser (the Python one costs
  about 10 µs more CPU per request);
* accepts request lines up to ``http.max_request_line`` bytes and answers longer ones 414;
* answers every refusal of the HTTP layer (bad request line, header too long or too many,
  bad framing, timeouts, errors) with the bridge's JSON, ``{"error": "..."}``, and logs
  one line with the status and the reason — never the request line, a header or the text
  of the exception, which quotes them.
"""

from __future__ import annotations

import http
import logging
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.http_parser import HttpRequestParserPy, RawRequestMessage
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server
from prometheus_client import CONTENT_TYPE_LATEST

from bridge import metrics
from bridge.errors import StoreUnavailable
from bridge.inbound.views import RETRY_AFTER, InboundService, json_errors
from bridge.redact import redact_path, redact_text
from bridge.settings import HttpSettings
from bridge.store.base import OutboxStore

log = logging.getLogger(__name__)

STORE_KEY = web.AppKey("store", OutboxStore)
SERVER_NAME = "sms-bridge"  # aiohttp's default header advertises its and Python's versions
# Header lines: aiohttp's default, which no provider's request comes near.
MAX_HEADER_LINE = 8190


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's default access log prints the whole request line, query included: a
    short-code ``password`` or a source secret would be logged. This one logs the path
    through :func:`bridge.redact.redact_path` only."""

    @property
    def enabled(self) -> bool:
        # Checked once per connection by aiohttp: no per-request work when not logging.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            "http request",
            extra={"method": request.method, "path": redact_path(request.raw_path),
                   "status": response.status, "ms": round(time * 1000, 1),
                   "remote": request.remote},
        )


# -- the HTTP server under the application ------------------------------------------------


class HttpRefusal(BadHttpMessage):
    """A request refused before any handler runs: the status and text its client gets."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


_ESCAPED = [bytes((byte,)) if byte < 0x80 else b"%%%02X" % byte for byte in range(256)]
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")


def escape_request_line(line: bytes) -> bytes:
    """The request line as a client that escapes would have sent it: bytes ≥ 0x80 of the
    target as ``%XX``, and spaces inside it (a provider that does not escape its text does
    not escape spaces either) as ``%20`` — the target is what lies between the method and
    the last space, before a valid ``HTTP/x.y``. A handler unescapes ``%CF`` and a raw
    ``0xCF`` to the same byte, so the target's meaning is kept."""
    if line.isascii() and line.count(b" ") <= 2:
        return line
    method, _, rest = line.partition(b" ")
    target, space, version = rest.rpartition(b" ")
    if not space or not _VERSION.fullmatch(version):
        return line  # not a request line: the parser refuses it as it is
    target = b"".join(map(_ESCAPED.__getitem__, target)).replace(b" ", b"%20")
    return b"%s %s %s" % (method, target, version)


class RequestParser(HttpRequestParserPy):
    """aiohttp's pure-Python request parser, accepting raw 8-bit bytes and spaces in the
    request target (escaped before the line is parsed) and telling an overlong request line
    (414) from an overlong header line (431)."""

    def parse_message(self, lines: list[bytes]) -> RawRequestMessage:
        lines[0] = escape_request_line(lines[0])
        return super().parse_message(lines)

    def feed_data(self, data: bytes, *args: Any, **kwargs: Any
                  ) -> tuple[list[tuple[RawRequestMessage, Any]], bool, bytes]:
        try:
            return super().feed_data(data, *args, **kwargs)
        except LineTooLong:
            # Before the request line is complete no line has been kept.
            if not self._lines:
                raise HttpRefusal(414, f"request line longer than {self.max_line_size} bytes"
                                  ) from None
            raise HttpRefusal(431, f"header line longer than {self.max_field_size} bytes"
                              ) from None
        except HttpProcessingError:
            if len(self._lines) > self.max_headers:
                raise HttpRefusal(431, f"more than {self.max_headers} header lines") from None
            raise
        except (ValueError, UnicodeError):
            # Anything else the parser trips on is a malformed request, not a server error.
            raise HttpRefusal(400, "malformed request") from None


def refusal(status: int, exc: BaseException | None, *, max_line: int = 0,
            max_headers: int = 0) -> tuple[int, str]:
    """The status and text of an error answer, from what aiohttp reports. Never the
    exception's own text: aiohttp's quotes the request line or a header."""
    if isinstance(exc, HttpRefusal):
        return exc.status, exc.text
    if isinstance(exc, LineTooLong):  # from the C parser: its limit says which line
        limit = exc.args[1]
        if limit == max_line:
            return 414, f"request line longer than {limit} bytes"
        return 431, f"header line longer than {limit} bytes"
    if isinstance(exc, BadHttpMessage) and exc.message == "Too many headers received":
        return 431, f"more than {max_headers} header lines"
    if isinstance(exc, BadHttpMethod | BadStatusLine):
        return 400, "bad request line"
    if isinstance(exc, InvalidURLError):
        return 400, "invalid request target"
    if isinstance(exc, InvalidHeader):
        return 400, "invalid header"
    if isinstance(exc, HttpProcessingError):
        return 400, "malformed request"
    try:
        return status, http.HTTPStatus(status).phrase.lower()
    except ValueError:
        return status, "error"


def _where(exc: BaseException) -> str:
    """An exception's place, for a log line: the frames of its traceback, without its
    message or any value."""
    return "".join(traceback.format_tb(exc.__traceback__)[-5:])


def needs_python_parser(line: bytes) -> bool:
    """A request line aiohttp's C parser refuses but :class:`RequestParser` reads: raw 8-bit
    bytes or spaces in the target."""
    return not line.isascii() or line.count(b" ") > 2


class BridgeRequestHandler(RequestHandler):
    """aiohttp's protocol with the bridge's error answers, switching a connection to
    :class:`RequestParser` when a request line needs it.

    A request line can only be looked at where a request begins, and with the C parser
    that is known in two cases: at the start of the connection, and after data that ended
    with the end of a request — it ended with the blank line of a head, the parser gave a
    request whose body is complete, and it did not stop early on a full queue. (Data ending
    with a blank line cannot hold the beginning of another head: that head would be
    complete, and given.) There the bytes are held until the request line is complete
    (at most ``max_line_size``), looked at, and fed to the parser that reads it. Elsewhere
    (pipelined requests, a request after a POST body) the C parser reads on, and refuses
    8-bit bytes in a request line with a 400 as before.
    """

    def __init__(self, manager: Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._c_parser = True  # still aiohttp's C parser
        self._at_request_start = True  # the parser holds nothing: a request begins here
        self._held = b""  # the start of a request, held until its line is complete
        if isinstance(self._parser, HttpRequestParserPy):  # aiohttp without its C parts
            self._use_python_parser()

    def data_received(self, data: bytes) -> None:
        if (not self._c_parser or not data or self._upgraded
                or self._payload_parser is not None):
            super().data_received(data)
            return
        if self._at_request_start:
            if self._held:
                data, self._held = self._held + data, b""
            # Empty lines before a request line are allowed (RFC 9112 section 2.2).
            start = len(data) - len(data.lstrip(b"\r\n"))
            end = data.find(b"\n", start)
            if end < 0 and len(data) <= self.max_line_size:
                self._held = data  # the parser sees the line when it is whole
                return
            line = data[start:end] if end >= 0 else data[start:]
            if not self._messages and needs_python_parser(line):
                self._use_python_parser()
                super().data_received(data)
                return
        queued = len(self._messages)
        super().data_received(data)
        self._at_request_start = self._ended_a_request(data, queued)

    def _ended_a_request(self, data: bytes, queued: int) -> bool:
        if len(self._messages) <= queued or not data.endswith(b"\r\n\r\n"):
            return False
        if self._upgraded or len(self._messages) >= MAX_MSG_QUEUE_SIZE // 2:
            return False  # the parser may have stopped before the end of the data
        message, payload = self._messages[-1]
        return isinstance(message, RawRequestMessage) and payload.is_eof()

    def _use_python_parser(self) -> None:
        self._parser = RequestParser(
            self, self._loop, self._read_bufsize,
            max_line_size=self.max_line_size, max_field_size=self.max_field_size,
            max_headers=self.max_headers, payload_exception=RequestPayloadError,
            max_msg_queue_size=MAX_MSG_QUEUE_SIZE,
        )
        self._c_parser = False

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> StreamResponse:
        status, text = refusal(status, exc, max_line=self.max_line_size,
                               max_headers=self.max_headers)
        metrics.INBOUND_REJECTED.labels(reason=str(status)).inc()
        if status >= 500 and exc is not None:
            log.error("http request failed", extra={
                "status": status, "error": type(exc).__name__, "where": _where(exc),
                "remote": request.remote})
        else:
            # A client speaking something else (TLS, garbage) on the port is not news.
            level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO
            log.log(level, "http request refused",
                    extra={"status": status, "error": text, "remote": request.remote})
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; connection closed")
        response = web.json_response({"error": text}, status=status,
                                     headers={"Server": SERVER_NAME})
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp's messages here may quote the request or the handler's return value.
        exc = kw.get("exc_info")
        if isinstance(exc, BaseException):
            log.error("http connection failed", extra={"error": type(exc).__name__,
                                                       "where": _where(exc)})
        else:
            log.error("http connection failed")


class BridgeServer(Server):
    """aiohttp's low-level server, making :class:`BridgeRequestHandler` protocols."""

    def __call__(self) -> RequestHandler:
        return BridgeRequestHandler(self, loop=self._loop, **self._kwargs)


class BridgeRunner(web.AppRunner):
    async def _make_server(self) -> Server:
        server = await super()._make_server()
        return BridgeServer(server.request_handler, request_factory=server.request_factory,
                            handler_cancellation=server.handler_cancellation,
                            loop=server._loop, **server._kwargs)


def make_http_runner(app: web.Application, settings: HttpSettings) -> web.AppRunner:
    return BridgeRunner(
        app,
        access_log_class=RedactingAccessLogger,
        keepalive_timeout=settings.keepalive_timeout,
        max_line_size=settings.max_request_line,
        max_field_size=MAX_HEADER_LINE,
    )


# -- the application ----------------------------------------------------------------------


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the store can commit a write now: a store that answers reads but cannot
    write (a full disk, a read-only database) is not ready."""
    try:
        await request.app[STORE_KEY].ping()
    except StoreUnavailable as exc:
        return web.json_response({"status": "unavailable", "error": redact_text(str(exc))},
                                 status=503, headers={"Retry-After": RETRY_AFTER})
    return web.json_response({"status": "ready"})


async def metrics_view(request: web.Request) -> web.Response:
    try:
        stats = await request.app[STORE_KEY].queue_stats(time.time())
    except StoreUnavailable:
        stats = {}
    if stats:
        metrics.QUEUE_DEPTH.set(stats["messages_queued"])
        metrics.QUEUE_AGE.set(stats["oldest_queued_age"])
        metrics.FORWARDS_QUEUED.set(stats["forwards_queued"])
        metrics.DEAD_LETTERS.set(stats["dead_letters"])
    # Under serve --workers N: every worker's counters, summed (bridge.metrics).
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Wraps an endpoint that changes the reply scripts: the console records its calls.
Audit = Callable[[str, Handler], Handler]


def make_http_app(store: OutboxStore, service: InboundService, *,
                  audited: Audit | None = None) -> web.Application:
    """The inbound endpoints, the reply-script API, health, readiness and metrics. The
    composition root adds the operators' console and the rest of the admin API, and passes
    their audit as ``audited``."""
    app = web.Application(middlewares=[json_errors],
                          client_max_size=service.settings.http.max_body_bytes)
    app.on_response_prepare.append(_server_header)
    app[STORE_KEY] = store
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    for kind, handler in (("mo", service.mo), ("shortcode", service.shortcode),
                          ("dlr", service.dlr)):
        for path in (f"/in/{{source}}/{{secret}}/{kind}", f"/in/{{source}}/{kind}"):
            app.router.add_route("GET", path, handler)
            app.router.add_route("POST", path, handler)
    audit = audited or (lambda action, handler: handler)
    app.router.add_get("/api/v1/reply-scripts", service.list_scripts)
    app.router.add_post("/api/v1/reply-scripts", audit("script.create", service.create_script))
    app.router.add_get("/api/v1/reply-scripts/{script_id}", service.get_script)
    app.router.add_put("/api/v1/reply-scripts/{script_id}",
                       audit("script.update", service.update_script))
    app.router.add_delete("/api/v1/reply-scripts/{script_id}",
                          audit("script.delete", service.delete_script))
    return app

"""The aiohttp application: inbound endpoints, reply-script API, health, readiness, metrics."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge import metrics
from bridge.errors import StoreUnavailable
from bridge.inbound.views import InboundService, json_errors, redacted_path
from bridge.store.base import OutboxStore

STORE_KEY = web.AppKey("store", OutboxStore)

class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's default access log prints the whole request line, query included: a
    short-code ``password`` or a source secret would be logged (notes/pitfalls.md)."""

    @property
    def enabled(self) -> bool:
        # Checked once per connection by aiohttp: no per-request work when not logging.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            "http request",
            extra={"method": request.method, "path": redacted_path(request.path),
                   "status": response.status, "ms": round(time * 1000, 1),
                   "remote": request.remote},
        )


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp's default advertises its and Python's versions.
    response.headers["Server"] = "sms-bridge"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[STORE_KEY].ping()
    except StoreUnavailable as exc:
        return web.json_response({"status": "unavailable", "error": str(exc)}, status=503)
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
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_http_app(store: OutboxStore, service: InboundService) -> web.Application:
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
    app.router.add_get("/api/v1/reply-scripts", service.list_scripts)
    app.router.add_post("/api/v1/reply-scripts", service.create_script)
    app.router.add_get("/api/v1/reply-scripts/{script_id}", service.get_script)
    app.router.add_put("/api/v1/reply-scripts/{script_id}", service.update_script)
    app.router.add_delete("/api/v1/reply-scripts/{script_id}", service.delete_script)
    return app

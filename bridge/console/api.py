"""The admin JSON API under ``/api/v1/`` (besides the reply-script endpoints of
:class:`bridge.inbound.views.InboundService`): messages and their timelines, inbound SMS,
forwards and dead letters, redelivery, reply-script test calls, upstream health, the
effective configuration and the audit log. Every endpoint but ``/api/v1/openapi.json``
needs ``Authorization: Bearer <http.admin_token>``; every action is audited (who:
``api``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bridge.console.openapi import document
from bridge.console.ops import ConsoleService, iso, page_query
from bridge.errors import InboundError
from bridge.inbound.views import read_body

API_USER = "api"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSV_COLUMNS = ("id", "created_at", "account", "phone", "status", "delivery_status",
               "attempts", "upstream_used", "provider_ids", "parts", "text", "last_error")


def _id(request: web.Request, name: str) -> int:
    value = request.match_info[name]
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise InboundError(404, "not found")
    return int(value)


def _remote(request: web.Request) -> str:
    return request.remote or ""


class AdminApi:
    """The handlers; :meth:`add_routes` puts them on an application."""

    def __init__(self, console: ConsoleService) -> None:
        self.console = console
        self._document = json.dumps(document()).encode()

    def check(self, request: web.Request) -> None:
        self.console.inbound.check_admin(request)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._document, content_type="application/json")

    async def messages(self, request: web.Request) -> web.Response:
        self.check(request)
        return web.json_response(await self.console.messages(request.query))

    async def messages_csv(self, request: web.Request) -> web.Response:
        self.check(request)
        return csv_response(await self.console.messages(request.query))

    async def message(self, request: web.Request) -> web.Response:
        self.check(request)
        timeline = await self.console.timeline(_id(request, "message_id"))
        return web.json_response(timeline["message"])

    async def timeline(self, request: web.Request) -> web.Response:
        self.check(request)
        return web.json_response(await self.console.timeline(_id(request, "message_id")))

    async def resolve_message(self, request: web.Request) -> web.Response:
        self.check(request)
        data = await self._json(request)
        unknown = sorted(set(data) - {"outcome"})
        if unknown:
            raise InboundError(400, f"{unknown[0]}: unknown field", field=unknown[0])
        return web.json_response(await self.console.resolve_message(
            _id(request, "message_id"), str(data.get("outcome", "")), who=API_USER,
            remote=_remote(request), via="api"))

    async def _json(self, request: web.Request) -> dict[str, Any]:
        body = await read_body(request, self.console.settings.http.max_body_bytes)
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            raise InboundError(400, "body: not JSON") from None
        if not isinstance(data, dict):
            raise InboundError(400, "body: a JSON object expected")
        return data

    async def inbound(self, request: web.Request) -> web.Response:
        self.check(request)
        return web.json_response(await self.console.inbound_list(request.query))

    async def inbound_one(self, request: web.Request) -> web.Response:
        self.check(request)
        return web.json_response(await self.console.inbound_one(_id(request, "inbound_id")))

    async def forwards(self, request: web.Request) -> web.Response:
        self.check(request)
        return web.json_response(await self.console.forwards(request.query))

    async def dead_letters(self, request: web.Request) -> web.Response:
        self.check(request)
        return web.json_response(await self.console.forwards(request.query, status="dead"))

    async def redeliver(self, request: web.Request) -> web.Response:
        self.check(request)
        job_id = _id(request, "job_id")
        await self.console.redeliver(job_id, who=API_USER, remote=_remote(request), via="api")
        return web.json_response({"id": job_id, "status": "queued"})

    async def resolve(self, request: web.Request) -> web.Response:
        self.check(request)
        job_id = _id(request, "job_id")
        await self.console.resolve(job_id, who=API_USER, remote=_remote(request), via="api")
        return web.json_response({"id": job_id, "status": "resolved"})

    async def stats(self, request: web.Request) -> web.Response:
        self.check(request)
        return web.json_response(await self.console.stats())

    async def upstreams(self, request: web.Request) -> web.Response:
        self.check(request)
        return web.json_response({"upstreams": await self.console.upstream_list()})

    async def balance(self, request: web.Request) -> web.Response:
        self.check(request)
        return web.json_response(await self.console.balance(request.match_info["name"]))

    async def config(self, request: web.Request) -> web.Response:
        self.check(request)
        return web.json_response(self.console.configuration())

    async def audit(self, request: web.Request) -> web.Response:
        self.check(request)
        before, limit = page_query(request.query)
        rows = await self.console.store.list_audit(before_id=before, limit=limit)
        return web.json_response({"audit": rows,
                                  "next_before": rows[-1]["id"] if len(rows) == limit else None})

    async def test_script(self, request: web.Request) -> web.Response:
        self.check(request)
        data = await self._json(request)
        unknown = sorted(set(data) - {"phone", "text"})
        if unknown:
            raise InboundError(400, f"{unknown[0]}: unknown field", field=unknown[0])
        return web.json_response(await self.console.test_script(
            request.match_info["script_id"], data, who=API_USER, remote=_remote(request),
            via="api"))

    def audited(self, action: str, handler: Handler) -> Handler:
        """A reply-script endpoint of the inbound service, with its successful calls in the
        audit log."""

        async def run(request: web.Request) -> web.StreamResponse:
            response = await handler(request)
            if response.status < 300:
                target = request.match_info.get("script_id", "")
                if not target and isinstance(response, web.Response) and response.body:
                    target = str(json.loads(bytes(response.body)).get("id", ""))  # type: ignore[arg-type]
                await self.console.audit(API_USER, action, f"reply script {target}",
                                         remote=_remote(request), via="api")
            return response

        return run

    def add_routes(self, app: web.Application) -> None:
        routes = app.router
        routes.add_get("/api/v1/openapi.json", self.openapi)
        routes.add_get("/api/v1/messages", self.messages)
        routes.add_get("/api/v1/messages.csv", self.messages_csv)
        routes.add_get("/api/v1/messages/{message_id}", self.message)
        routes.add_get("/api/v1/messages/{message_id}/timeline", self.timeline)
        routes.add_post("/api/v1/messages/{message_id}/resolve", self.resolve_message)
        routes.add_get("/api/v1/inbound", self.inbound)
        routes.add_get("/api/v1/inbound/{inbound_id}", self.inbound_one)
        routes.add_get("/api/v1/forwards", self.forwards)
        routes.add_get("/api/v1/dead-letters", self.dead_letters)
        routes.add_post("/api/v1/dead-letters/{job_id}/redeliver", self.redeliver)
        routes.add_post("/api/v1/dead-letters/{job_id}/resolve", self.resolve)
        routes.add_get("/api/v1/stats", self.stats)
        routes.add_get("/api/v1/upstreams", self.upstreams)
        routes.add_get("/api/v1/upstreams/{name}/balance", self.balance)
        routes.add_get("/api/v1/config", self.config)
        routes.add_get("/api/v1/audit", self.audit)
        routes.add_post("/api/v1/reply-scripts/{script_id}/test", self.test_script)


def csv_rows(listing: dict[str, Any]) -> str:
    """Messages as CSV (UTC times). A cell that a spreadsheet would read as a formula
    (``=``, ``+``, ``-``, ``@`` first) gets a leading apostrophe: SMS text is anyone's."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for m in listing["messages"]:
        row = [m["id"], iso(m["created_at"]), m["account"], m["phone"], m["status"],
               m["delivery_status"] or "", m["attempts"], m["upstream_used"] or "",
               " ".join(m["provider_ids"]), m["parts"], m["text"], m["last_error"] or ""]
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_response(listing: dict[str, Any]) -> web.Response:
    return web.Response(body=csv_rows(listing).encode("utf-8"),
                        headers={"Content-Type": "text/csv; charset=utf-8",
                                 "Content-Disposition": 'attachment; filename="messages.csv"'})

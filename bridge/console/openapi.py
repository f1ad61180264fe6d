"""The admin API's OpenAPI 3.1 document, served at ``/api/v1/openapi.json``.

Written by hand, beside the handlers (:mod:`bridge.console.api`) and the shapes they return
(:mod:`bridge.console.ops`); the tests validate the document and check every response the
tests receive against it. Objects are closed (``additionalProperties: false``), so a field
added to a response without being described here fails those tests.
"""

from __future__ import annotations

from typing import Any

from bridge import __version__ as BRIDGE_VERSION
from bridge.store.console import OUTBOX_STATUSES, PROVIDER_STATUSES

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kind = schema["type"]
    widened = {**schema, "type": [*(kind if isinstance(kind, list) else [kind]), "null"]}
    if "enum" in schema:
        widened["enum"] = [*schema["enum"], None]
    return widened


def obj(properties: dict[str, Schema], *, optional: tuple[str, ...] = (),
        description: str = "") -> Schema:
    schema: Schema = {"type": "object", "properties": properties,
                      "required": [k for k in properties if k not in optional],
                      "additionalProperties": False}
    if description:
        schema["description"] = description
    return schema


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
TIME: Schema = {"type": "number", "description": "Unix time, seconds"}

FORWARD: dict[str, Schema] = {
    "id": INTEGER, "inbound_id": INTEGER, "kind": {"type": "string",
                                                   "enum": ["email", "webhook"]},
    "target": STRING, "status": {"type": "string", "enum": [
        "queued", "sending", "delivered", "dead", "resolved"]},
    "attempts": INTEGER, "last_error": nullable(STRING), "created_at": TIME,
    "next_attempt_at": NUMBER, "deadline": NUMBER, "phone": STRING, "source": STRING,
}

SCHEMAS: dict[str, Schema] = {
    "Error": obj({"error": STRING, "field": STRING}, optional=("field",)),
    "Message": obj({
        "id": INTEGER, "account": STRING, "upstream": STRING,
        "upstream_used": nullable(STRING), "phone": STRING, "text": STRING,
        "parts": INTEGER, "encoding": STRING,
        "status": {"type": "string", "enum": list(OUTBOX_STATUSES),
                   "description": "ambiguous: held, an earlier request may have sent it; "
                                  "nothing is sent until an operator resolves it"},
        "delivery_status": nullable({"type": "string", "enum": [
            "sent", "delivered", "undelivered", "expired", "rejected", "unknown"]}),
        "attempts": INTEGER, "created_at": TIME, "last_error": nullable(STRING),
        "mail_from": STRING, "mail_message_id": nullable(STRING),
        "provider_ids": array(STRING), "originator": nullable(STRING),
    }, description="One outbound SMS (one phone)."),
    "MessageList": obj({"messages": array(ref("Message")),
                        "next_before": nullable(INTEGER)},
                       description="A page, newest first; pass next_before as before for "
                                   "the next one."),
    "Mail": obj({
        "id": INTEGER, "received_at": TIME, "mail_from": STRING, "rcpt_to": array(STRING),
        "message_id": nullable(STRING), "peer": STRING,
        "format": {"type": "string", "enum": ["v1", "v2"]},
        "headers": STRING,
        "raw": {**nullable(STRING), "description":
                "The mail as received, its first 64 KiB, secrets and v2 passwords masked; "
                "null when not kept (older than the retention, or traces off)."},
        "raw_size": nullable(INTEGER), "raw_truncated": BOOLEAN,
    }),
    "Event": obj({"at": TIME, "status": STRING, "detail": nullable(STRING)}),
    "DeliveryReport": obj({
        "id": INTEGER, "source": STRING, "provider_id": STRING, "status": STRING,
        "raw_status": STRING, "error_code": nullable(INTEGER), "received_at": TIME,
        "reported_at": nullable(NUMBER)}),
    "ProviderExchange": obj({
        "id": INTEGER, "at": TIME, "upstream": STRING, "method": STRING, "url": STRING,
        "request": STRING, "status": nullable(INTEGER), "response": STRING,
        "error": nullable(STRING), "duration": nullable(NUMBER)},
        description="One HTTP request of a send and the provider's answer (each capped at "
                    "64 KiB, credentials masked)."),
    "Bounce": obj({
        "id": INTEGER, "mail_to": STRING, "status": STRING, "attempts": INTEGER,
        "last_error": nullable(STRING), "created_at": TIME, "content": nullable(STRING),
        "truncated": BOOLEAN}),
    "Step": obj({"at": TIME, "kind": {"type": "string", "enum": [
        "mail", "status", "provider", "report", "bounce"]}, "summary": STRING}),
    "OtherMessage": obj({"id": INTEGER, "phone": STRING, "status": STRING}),
    "Timeline": obj({
        "message": ref("Message"), "delivery_detail": nullable(STRING),
        "mail": nullable(ref("Mail")), "other_messages": array(ref("OtherMessage")),
        "events": array(ref("Event")), "delivery_reports": array(ref("DeliveryReport")),
        "provider_exchanges": array(ref("ProviderExchange")),
        "bounce": nullable(ref("Bounce")), "timeline": array(ref("Step")),
    }, description="A message's life from the mail to the last delivery report."),
    "Inbound": obj({
        "id": INTEGER, "source": STRING, "kind": {"type": "string",
                                                   "enum": ["mo", "shortcode"]},
        "sms_id": nullable(STRING), "phone": STRING, "recipient": nullable(STRING),
        "text": STRING, "charset_error": BOOLEAN, "state": STRING,
        "script_error": nullable(STRING), "received_at": TIME, "forwards": INTEGER,
        "delivered": INTEGER, "dead": INTEGER}),
    "InboundList": obj({"inbound": array(ref("Inbound")), "next_before": nullable(INTEGER)}),
    "Forward": obj(FORWARD, optional=("phone", "source")),
    "Attempt": obj({
        "at": TIME,
        "outcome": {"type": "string", "enum": ["delivered", "retry", "dead"]},
        "detail": {"type": "string", "description":
                   "What the target answered: `HTTP 500: ` and the first 512 bytes of a "
                   "webhook's body, `SMTP 550 5.1.1 ...` for a mail; else the error. "
                   "Credentials masked."}},
        description="One attempt of a forward."),
    "ForwardWithAttempts": obj({
        **FORWARD, "attempt_history": {**array(ref("Attempt")), "description":
                                       "Its attempts, oldest first: the last 50, kept for "
                                       "store.trace_retention_days."}},
        optional=("phone", "source")),
    "ForwardList": obj({"forwards": array(ref("Forward")), "next_before": nullable(INTEGER)}),
    "InboundDetail": obj({
        "id": INTEGER, "source": STRING, "kind": STRING, "sms_id": nullable(STRING),
        "phone": STRING, "recipient": nullable(STRING), "text": STRING, "charset": STRING,
        "charset_error": BOOLEAN, "state": STRING, "script_error": nullable(STRING),
        "received_at": TIME,
        "request": {"type": "string", "description":
                    "The provider's parameters as received, secret parameters masked."},
        "response": nullable(obj({"status": INTEGER, "content_type": STRING,
                                  "body": STRING})),
        "forwards": array(ref("ForwardWithAttempts"))}),
    "Stats": obj({
        "at": TIME,
        "messages": obj({k: INTEGER for k in (*OUTBOX_STATUSES, "unknown")}),
        "forwards": obj({k: INTEGER for k in ("queued", "sending", "dead")}),
        "sent_per_minute": {**array(INTEGER), "minItems": 60, "maxItems": 60,
                            "description": "Sends per minute over the last hour, oldest "
                                           "first."},
        "inbound_per_minute": {**array(INTEGER), "minItems": 60, "maxItems": 60},
    }),
    "Upstream": obj({
        "name": STRING, "kind": STRING, "base_url": nullable(STRING),
        "backup_url": nullable(STRING), "last_success_at": nullable(NUMBER),
        "last_error_at": nullable(NUMBER), "last_error": nullable(STRING),
        "consecutive_failures": INTEGER, "paused_until": nullable(NUMBER),
        "has_balance": BOOLEAN}),
    "UpstreamList": obj({"upstreams": array(ref("Upstream"))}),
    "Balance": obj({"upstream": STRING, "balance": nullable(STRING), "at": TIME,
                    "error": nullable(STRING)}),
    "ReplyScript": obj({
        "id": {"type": ["integer", "string"],
               "description": "A number, or config:N for a configured (read-only) script"},
        "source": {"type": "string", "enum": ["config", "api"]},
        "shortcode": STRING, "keyword": nullable(STRING), "url": STRING,
        "method": {"type": "string", "enum": ["GET", "POST"]}, "timeout": NUMBER,
        "has_secret": BOOLEAN, "created_at": NUMBER, "updated_at": NUMBER,
    }, optional=("created_at", "updated_at")),
    "ReplyScriptList": obj({"reply_scripts": array(ref("ReplyScript"))}),
    "ReplyScriptInput": {
        "type": "object", "required": ["shortcode", "url"], "additionalProperties": False,
        "properties": {"shortcode": STRING, "keyword": nullable(STRING), "url": STRING,
                       "method": {"type": "string", "enum": ["GET", "POST"]},
                       "timeout": NUMBER, "secret": nullable(STRING)}},
    "ScriptTestInput": {
        "type": "object", "additionalProperties": False,
        "properties": {"phone": STRING, "text": STRING}},
    "ScriptTest": obj({
        "script": STRING, "phone": STRING, "text": STRING,
        "reply": {"type": "string", "description": "What the subscriber would get."},
        "answer": nullable(STRING), "error": nullable(STRING), "seconds": NUMBER,
        "fallback": BOOLEAN}),
    "AuditEntry": obj({
        "id": INTEGER, "at": TIME, "who": STRING,
        "via": {"type": "string", "enum": ["console", "api"]}, "action": STRING,
        "target": STRING, "detail": STRING, "remote": STRING}),
    "AuditList": obj({"audit": array(ref("AuditEntry")), "next_before": nullable(INTEGER)}),
    "Configuration": {"type": "object", "description":
                      "Upstreams, accounts, routes, sources, short codes and webhooks as "
                      "configured, every secret masked.",
                      "required": ["upstreams", "accounts", "routes", "sources",
                                   "shortcodes", "webhooks"],
                      "additionalProperties": False,
                      "properties": {k: {"type": "object"} for k in (
                          "upstreams", "accounts", "sources", "shortcodes", "webhooks")}
                      | {"routes": array({"type": "object"})}},
    "ActionResult": obj({"id": INTEGER, "status": STRING}),
    "ResolveInput": {
        "type": "object", "required": ["outcome"], "additionalProperties": False,
        "properties": {"outcome": {
            "type": "string", "enum": ["sent", "resend"],
            "description": "sent: it went out, record it so (never sent again); resend: "
                           "send it now, at the risk of a second copy"}}},
}


def json_body(name: str, description: str) -> Schema:
    return {"description": description,
            "content": {"application/json": {"schema": ref(name)}}}


ERRORS: dict[str, Schema] = {
    "400": json_body("Error", "A parameter is invalid (the field is named)."),
    "401": json_body("Error", "Missing or wrong bearer token."),
    "404": json_body("Error", "Not found, or the admin API is disabled (no http.admin_token)."),
}


def query(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or STRING}


def path_id(name: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema or INTEGER}


PAGE = [query("before", "Only entries with a smaller id (the next page).", INTEGER),
        query("limit", "At most this many (1-500).", INTEGER)]
SEARCH = [query("phone", "Digits; 11 or more match the number, fewer any number containing "
                         "them."),
          query("since", "From this time: Unix seconds, YYYY-MM-DD or ISO 8601 (UTC unless "
                         "a zone is given)."),
          query("until", "Before this time (a date includes that whole day)."),
          query("text", "Text containing this, case-insensitive.")]


def operation(summary: str, responses: dict[str, Schema], *,
              parameters: list[Schema] | None = None,
              body: str | None = None, errors: tuple[str, ...] = ("401", "404"),
              tag: str = "") -> Schema:
    op: Schema = {"summary": summary, "responses": {**responses,
                                                    **{e: ERRORS[e] for e in errors}}}
    if parameters:
        op["parameters"] = list(parameters)
    if body:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": ref(body)}}}
    if tag:
        op["tags"] = [tag]
    return op


def document() -> Schema:
    """The OpenAPI document (a new dict each call)."""
    status_values = [*OUTBOX_STATUSES, *PROVIDER_STATUSES]
    message_search = [*SEARCH,
                      query("account", "The account (login) that sent it."),
                      query("status", "An outbox or provider status.",
                            {"type": "string", "enum": status_values}), *PAGE]
    inbound_search = [*SEARCH, query("source", "The source (or polling upstream)."),
                      query("state", "Routed, unrouted, pending or answered.",
                            {"type": "string",
                             "enum": ["routed", "unrouted", "pending", "answered"]}), *PAGE]
    ok = "200"
    paths: dict[str, Schema] = {
        "/messages": {"get": operation(
            "Search outbound messages", {ok: json_body("MessageList", "Newest first.")},
            parameters=message_search, errors=("400", "401", "404"), tag="messages")},
        "/messages.csv": {"get": operation(
            "Search outbound messages, as CSV",
            {ok: {"description": "One message a row, with a header row.",
                  "content": {"text/csv": {"schema": STRING}}}},
            parameters=message_search, errors=("400", "401", "404"), tag="messages")},
        "/messages/{message_id}": {"get": operation(
            "One message", {ok: json_body("Message", "The message.")},
            parameters=[path_id("message_id")], tag="messages")},
        "/messages/{message_id}/resolve": {"post": operation(
            "Settle a message held as ambiguous: it was sent, or send it again",
            {ok: json_body("ActionResult", "Recorded as sent, or queued again."),
             "409": json_body("Error", "The message is not held.")},
            parameters=[path_id("message_id")], body="ResolveInput",
            errors=("400", "401", "404"), tag="messages")},
        "/messages/{message_id}/timeline": {"get": operation(
            "A message's timeline", {ok: json_body("Timeline", "Mail, status history, "
                                                   "provider exchanges, reports, bounce.")},
            parameters=[path_id("message_id")], tag="messages")},
        "/inbound": {"get": operation(
            "Search inbound SMS", {ok: json_body("InboundList", "Newest first.")},
            parameters=inbound_search, errors=("400", "401", "404"), tag="inbound")},
        "/inbound/{inbound_id}": {"get": operation(
            "One inbound SMS with its forwards and their attempts",
            {ok: json_body("InboundDetail", "The SMS, its answer, and its forwards with "
                                            "their attempts.")},
            parameters=[path_id("inbound_id")], tag="inbound")},
        "/forwards": {"get": operation(
            "Forwarding jobs", {ok: json_body("ForwardList", "Newest first.")},
            parameters=[query("status", "Only jobs in this status.", {
                "type": "string",
                "enum": ["queued", "sending", "delivered", "dead", "resolved"]}), *PAGE],
            errors=("400", "401", "404"), tag="inbound")},
        "/dead-letters": {"get": operation(
            "Dead letters (forwards given up)", {ok: json_body("ForwardList", "Newest first.")},
            parameters=PAGE, errors=("400", "401", "404"), tag="inbound")},
        "/dead-letters/{job_id}/redeliver": {"post": operation(
            "Queue a dead letter again (a new retry period)",
            {ok: json_body("ActionResult", "Queued."),
             "409": json_body("Error", "Not a dead letter.")},
            parameters=[path_id("job_id")], tag="inbound")},
        "/dead-letters/{job_id}/resolve": {"post": operation(
            "Close a dead letter without sending it again",
            {ok: json_body("ActionResult", "Resolved."),
             "409": json_body("Error", "Not a dead letter.")},
            parameters=[path_id("job_id")], tag="inbound")},
        "/stats": {"get": operation(
            "Counts now and per minute over the last hour",
            {ok: json_body("Stats", "The dashboard's figures.")}, tag="health")},
        "/upstreams": {"get": operation(
            "Upstreams and their health", {ok: json_body("UpstreamList", "By name.")},
            tag="health")},
        "/upstreams/{name}/balance": {"get": operation(
            "The provider's balance (asked at most once a minute)",
            {ok: json_body("Balance", "The balance, or the provider's error.")},
            parameters=[path_id("name", STRING)], tag="health")},
        "/config": {"get": operation(
            "Effective configuration, secrets masked",
            {ok: json_body("Configuration", "Read-only.")}, tag="health")},
        "/audit": {"get": operation(
            "Operators' actions", {ok: json_body("AuditList", "Newest first.")},
            parameters=PAGE, errors=("400", "401", "404"), tag="audit")},
        "/reply-scripts": {
            "get": operation("Reply scripts (configured ones are read-only)",
                             {ok: json_body("ReplyScriptList", "Configured, then registered.")},
                             tag="reply scripts"),
            "post": operation("Register a reply script",
                              {"201": json_body("ReplyScript", "Registered.")},
                              body="ReplyScriptInput", errors=("400", "401", "404"),
                              tag="reply scripts")},
        "/reply-scripts/{script_id}": {
            "get": operation("One registered reply script",
                             {ok: json_body("ReplyScript", "The script.")},
                             parameters=[path_id("script_id")], tag="reply scripts"),
            "put": operation("Replace a registered reply script",
                             {ok: json_body("ReplyScript", "Replaced.")},
                             parameters=[path_id("script_id")], body="ReplyScriptInput",
                             errors=("400", "401", "404"), tag="reply scripts"),
            "delete": operation("Remove a registered reply script",
                                {"204": {"description": "Removed."}},
                                parameters=[path_id("script_id")], tag="reply scripts")},
        "/reply-scripts/{script_id}/test": {"post": operation(
            "Call a reply script as a subscriber's SMS would",
            {ok: json_body("ScriptTest", "The answer and the time it took.")},
            parameters=[path_id("script_id", {"type": "string"})], body="ScriptTestInput",
            errors=("400", "401", "404"), tag="reply scripts")},
        "/openapi.json": {"get": {
            "summary": "This document", "security": [], "tags": ["meta"],
            "responses": {ok: {"description": "OpenAPI 3.1",
                               "content": {"application/json": {"schema": {
                                   "type": "object"}}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "sms-bridge admin API", "version": BRIDGE_VERSION,
                 "description": "Messages and their timelines, inbound SMS and forwards, "
                                "dead letters, reply scripts and upstream health. Every "
                                "request but this document's needs the bearer token "
                                "http.admin_token; without one configured the API answers "
                                "404. Operator actions are recorded in the audit log."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }

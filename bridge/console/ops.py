"""What the operators' console and the admin API do, shared by both: search filters read
from a query, the JSON shapes of messages, timelines, inbound SMS and forwards, operator
actions (each audited), upstream health and the effective configuration, secrets masked.

The pages render these shapes; the API returns them as they are, as
:mod:`bridge.console.openapi` describes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bridge.errors import InboundError
from bridge.inbound.parsing import clean_reply
from bridge.inbound.views import InboundService
from bridge.models import ForwardJob, InboundMessage, StoredMessage
from bridge.redact import redact_text
from bridge.relays.replies import call_reply_script
from bridge.relays.routing import ReplyScript
from bridge.settings import Settings, masked_dump
from bridge.store.base import OutboxStore
from bridge.store.console import (
    MAX_PAGE,
    OUTBOX_STATUSES,
    PROVIDER_STATUSES,
    AuditEntry,
    InboundFilter,
    MessageFilter,
)
from bridge.upstreams.base import BalanceQuery

INBOUND_STATES = ("routed", "unrouted", "pending", "answered")
FORWARD_STATUSES = ("queued", "sending", "delivered", "dead", "resolved")
BALANCE_CACHE_SECONDS = 60.0
BALANCE_TIMEOUT = 5.0


def text_of(data: bytes | memoryview | None) -> str | None:
    """Stored bytes (a mail, a provider's answer) as text to show: UTF-8 where they are,
    else each byte as itself (Latin-1), so nothing is lost to replacement characters."""
    if data is None:
        return None
    raw = bytes(data)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def iso(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


# -- reading filters from a query ---------------------------------------------------------


def _time(query: Mapping[str, str], name: str, *, end: bool = False) -> float | None:
    """A time given as Unix seconds, ``YYYY-MM-DD`` (UTC; as ``until`` the whole day is
    included) or ISO 8601 date-time (UTC unless it names a zone)."""
    value = (query.get(name) or "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InboundError(400, f"{name}: not a date, date-time or Unix time",
                           field=name) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    stamp = when.timestamp()
    if end and len(value) == 10:  # a date: up to the end of that day
        stamp += 86400
    return stamp


def _int(query: Mapping[str, str], name: str, default: int | None, *, low: int = 1,
         high: int | None = None) -> int | None:
    value = (query.get(name) or "").strip()
    if not value:
        return default
    if not value.isascii() or not value.isdigit():
        raise InboundError(400, f"{name}: not a whole number", field=name)
    number = int(value)
    if number < low or (high is not None and number > high):
        raise InboundError(400, f"{name}: must be between {low} and {high}", field=name)
    return number


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = (query.get(name) or "").strip()
    if value and value not in allowed:
        raise InboundError(400, f"{name}: one of {', '.join(allowed)}", field=name)
    return value or None


def _plain(query: Mapping[str, str], name: str) -> str | None:
    value = (query.get(name) or "").strip()
    if len(value) > 1000:
        raise InboundError(400, f"{name}: longer than 1000 characters", field=name)
    return value or None


def message_filter(query: Mapping[str, str]) -> tuple[MessageFilter, int]:
    limit = _int(query, "limit", 50, high=MAX_PAGE)
    assert limit is not None
    return MessageFilter(
        phone=_plain(query, "phone"), account=_plain(query, "account"),
        status=_choice(query, "status", OUTBOX_STATUSES + PROVIDER_STATUSES),
        since=_time(query, "since"), until=_time(query, "until", end=True),
        text=_plain(query, "text"), before_id=_int(query, "before", None),
    ), limit


def inbound_filter(query: Mapping[str, str]) -> tuple[InboundFilter, int]:
    limit = _int(query, "limit", 50, high=MAX_PAGE)
    assert limit is not None
    return InboundFilter(
        phone=_plain(query, "phone"), source=_plain(query, "source"),
        state=_choice(query, "state", INBOUND_STATES),
        since=_time(query, "since"), until=_time(query, "until", end=True),
        text=_plain(query, "text"), before_id=_int(query, "before", None),
    ), limit


def page_query(query: Mapping[str, str]) -> tuple[int | None, int]:
    """``before`` and ``limit`` of a plain list."""
    limit = _int(query, "limit", 100, high=MAX_PAGE)
    assert limit is not None
    return _int(query, "before", None), limit


def forward_status(query: Mapping[str, str]) -> str | None:
    return _choice(query, "status", FORWARD_STATUSES)


# -- JSON shapes ----------------------------------------------------------------------------


def message_json(message: StoredMessage) -> dict[str, Any]:
    return {
        "id": message.id, "account": message.account, "upstream": message.upstream,
        "upstream_used": message.upstream_used, "phone": message.phone, "text": message.text,
        "parts": message.parts, "encoding": message.encoding, "status": message.status,
        "delivery_status": message.delivery_status, "attempts": message.attempts,
        "created_at": message.created_at, "last_error": message.last_error,
        "mail_from": message.mail_from, "mail_message_id": message.mail_message_id,
        "provider_ids": list(message.upstream_ids),
        "originator": message.options.originator,
    }


def _recipients(value: str | None) -> list[str]:
    with contextlib.suppress(ValueError, TypeError):
        return [str(r) for r in json.loads(value or "[]")]
    return []


def timeline_json(trace: dict[str, Any]) -> dict[str, Any]:
    """A message's trace (``OutboxStore.message_trace``) as the API returns it, with
    ``timeline``: every step from the mail to the last report, in time order."""
    message: StoredMessage = trace["message"]
    mail = None
    if trace["mail"] is not None:
        row = trace["mail"]
        raw = row["raw"]
        mail = {
            "id": row["id"], "received_at": row["received_at"], "mail_from": row["mail_from"],
            "rcpt_to": _recipients(row["rcpt_to"]), "message_id": row["message_id"],
            "peer": row["peer"], "format": row["format"],
            "headers": text_of(row["headers"]) or "",
            "raw": text_of(raw), "raw_size": row["raw_size"],
            "raw_truncated": raw is not None and row["raw_size"] is not None
            and len(bytes(raw)) < row["raw_size"],
        }
    reports = [{k: r[k] for k in ("id", "source", "provider_id", "status", "raw_status",
                                  "error_code", "received_at", "reported_at")}
               for r in trace["reports"]]
    exchanges = [{
        "id": e["id"], "at": e["at"], "upstream": e["upstream"], "method": e["method"],
        "url": e["url"], "request": text_of(e["request"]) or "", "status": e["status"],
        "response": text_of(e["response"]) or "", "error": e["error"],
        "duration": e["duration"]} for e in trace["exchanges"]]
    bounce = None
    if trace["bounce"] is not None:
        b = trace["bounce"]
        content = bytes(b["content"])
        bounce = {"id": b["id"], "mail_to": b["mail_to"], "status": b["status"],
                  "attempts": b["attempts"], "last_error": b["last_error"],
                  "created_at": b["created_at"], "content": text_of(content[:65536]),
                  "truncated": len(content) > 65536}
    steps: list[dict[str, Any]] = []
    if mail is not None:
        steps.append({"at": mail["received_at"], "kind": "mail",
                      "summary": f"mail from <{mail['mail_from']}> to "
                                 f"{', '.join(mail['rcpt_to']) or '?'} ({mail['format']})"})
    for event in trace["events"]:
        steps.append({"at": event["at"], "kind": "status",
                      "summary": event["status"] + (f": {event['detail']}"
                                                    if event["detail"] else "")})
    for ex in exchanges:
        answer = f"HTTP {ex['status']}" if ex["status"] is not None else (ex["error"] or "")
        steps.append({"at": ex["at"], "kind": "provider",
                      "summary": f"{ex['method']} {ex['url']} → {answer}"})
    for report in reports:
        steps.append({"at": report["received_at"], "kind": "report",
                      "summary": f"{report['status']} (raw {report['raw_status']!r}, "
                                 f"{report['provider_id']})"})
    if bounce is not None:
        steps.append({"at": bounce["created_at"], "kind": "bounce",
                      "summary": f"bounce to <{bounce['mail_to']}>: {bounce['status']}"})
    steps.sort(key=lambda step: step["at"])
    return {"message": message_json(message), "delivery_detail": trace["delivery_detail"],
            "mail": mail, "other_messages": trace["siblings"], "events": trace["events"],
            "delivery_reports": reports, "provider_exchanges": exchanges, "bounce": bounce,
            "timeline": steps}


def inbound_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "source": row["source"], "kind": row["kind"], "sms_id": row["sms_id"],
        "phone": row["phone"], "recipient": row["recipient"], "text": row["text"],
        "charset_error": bool(row["charset_error"]), "state": row["state"],
        "script_error": row["script_error"], "received_at": row["received_at"],
        "forwards": int(row["forwards"]), "delivered": int(row["delivered"]),
        "dead": int(row["dead"]),
    }


def forward_json(row: dict[str, Any]) -> dict[str, Any]:
    shown = {k: row[k] for k in ("id", "inbound_id", "kind", "target", "status", "attempts",
                                 "last_error", "created_at", "next_attempt_at", "deadline")}
    for key in ("phone", "source"):
        if key in row:
            shown[key] = row[key]
    return shown


def inbound_detail_json(row: dict[str, Any]) -> dict[str, Any]:
    body = row["response_body"]
    return {
        "id": row["id"], "source": row["source"], "kind": row["kind"], "sms_id": row["sms_id"],
        "phone": row["phone"], "recipient": row["recipient"], "text": row["text"],
        "charset": row["charset"], "charset_error": bool(row["charset_error"]),
        "state": row["state"], "script_error": row["script_error"],
        "received_at": row["received_at"],
        # The request's parameters as stored: secret parameters were masked on the way in.
        "request": text_of(row["raw"]) or "",
        "response": None if row["response_status"] is None else {
            "status": row["response_status"], "content_type": row["response_type"],
            "body": text_of(body) or ""},
        "forwards": [{**forward_json(f), "attempt_history": [
            {"at": a["at"], "outcome": a["outcome"], "detail": a["detail"]}
            for a in f["attempt_history"]]} for f in row["forwards"]],
    }


def public_script(script: dict[str, Any]) -> dict[str, Any]:
    shown = {k: v for k, v in script.items() if k != "secret"}
    shown["has_secret"] = bool(script.get("secret"))
    return shown


# -- the service ------------------------------------------------------------------------


class ConsoleService:
    """The console's and the admin API's operations over the store and the settings."""

    def __init__(self, settings: Settings, store: OutboxStore, inbound: InboundService,
                 upstreams: Mapping[str, Any]) -> None:
        self.settings = settings
        self.store = store
        self.inbound = inbound
        self.upstreams = upstreams
        self._balances: dict[str, tuple[float, dict[str, Any]]] = {}

    async def audit(self, who: str, action: str, target: str = "", detail: str = "", *,
                    remote: str = "", via: str = "console") -> None:
        await self.store.record_audit(AuditEntry(
            at=time.time(), who=who, via=via, action=action, target=target,
            detail=redact_text(detail)[:500], remote=remote))

    # -- messages ---------------------------------------------------------------------------

    async def messages(self, query: Mapping[str, str]) -> dict[str, Any]:
        search, limit = message_filter(query)
        found = await self.store.search_messages(search, limit=limit)
        return {"messages": [message_json(m) for m in found],
                "next_before": found[-1].id if len(found) == limit else None}

    async def resolve_message(self, message_id: int, outcome: str, *, who: str, remote: str,
                              via: str) -> dict[str, Any]:
        """Settle a message held as ``ambiguous`` (as ``sms-bridge resolve``): ``sent``
        records it as sent, ``resend`` queues it again; 409 if it is not held."""
        if outcome not in ("sent", "resend"):
            raise InboundError(400, "outcome: sent or resend", field="outcome")
        if not await self.store.resolve_ambiguous(message_id, sent=outcome == "sent",
                                                  now=time.time()):
            raise InboundError(409, f"message {message_id} is not held as ambiguous")
        await self.audit(who, "resolve", f"message {message_id}", outcome, remote=remote,
                         via=via)
        return {"id": message_id, "status": "sent" if outcome == "sent" else "queued"}

    async def timeline(self, message_id: int) -> dict[str, Any]:
        trace = await self.store.message_trace(message_id)
        if trace is None:
            raise InboundError(404, "no such message")
        return timeline_json(trace)

    # -- inbound ----------------------------------------------------------------------------

    async def inbound_list(self, query: Mapping[str, str]) -> dict[str, Any]:
        search, limit = inbound_filter(query)
        found = await self.store.search_inbound(search, limit=limit)
        return {"inbound": [inbound_json(r) for r in found],
                "next_before": found[-1]["id"] if len(found) == limit else None}

    async def inbound_one(self, inbound_id: int) -> dict[str, Any]:
        row = await self.store.inbound_detail(inbound_id)
        if row is None:
            raise InboundError(404, "no such inbound message")
        return inbound_detail_json(row)

    async def forwards(self, query: Mapping[str, str], *, status: str | None = None
                       ) -> dict[str, Any]:
        before, limit = page_query(query)
        chosen = status or forward_status(query)
        rows = await self.store.list_forwards(status=chosen, before_id=before, limit=limit)
        return {"forwards": [forward_json(r) for r in rows],
                "next_before": rows[-1]["id"] if len(rows) == limit else None}

    async def redeliver(self, job_id: int, *, who: str, remote: str, via: str) -> None:
        """Queue a dead letter again, with a new retry period; 409 if it is not one."""
        now = time.time()
        count = await self.store.redeliver(
            [job_id], now, now + self.settings.inbound.forward_retry_period)
        if count == 0:
            raise InboundError(409, f"forward {job_id} is not a dead letter")
        await self.audit(who, "redeliver", f"forward {job_id}", remote=remote, via=via)
        # Wake the forwarding worker now rather than at its next poll.
        self.inbound.on_forward([ForwardJob(kind, "", b"") for kind in ("email", "webhook")])

    async def resolve(self, job_id: int, *, who: str, remote: str, via: str) -> None:
        """Close a dead letter without sending it again; 409 if it is not one."""
        if await self.store.resolve_dead_letters([job_id]) == 0:
            raise InboundError(409, f"forward {job_id} is not a dead letter")
        await self.audit(who, "resolve", f"forward {job_id}", remote=remote, via=via)

    # -- dashboard and upstreams ------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        now = time.time()
        stats = await self.store.console_stats(now)
        return {"at": now, **stats}

    async def upstream_list(self) -> list[dict[str, Any]]:
        health = {row["upstream"]: row for row in await self.store.upstream_health()}
        dump = masked_dump(self.settings)["upstreams"]
        shown = []
        for name, upstream in sorted(self.upstreams.items()):
            row = health.get(name, {})
            config = dump.get(name, {})
            shown.append({
                "name": name, "kind": getattr(upstream, "kind", config.get("kind", "")),
                "base_url": config.get("base_url"), "backup_url": config.get("backup_url"),
                "last_success_at": row.get("last_success_at"),
                "last_error_at": row.get("last_error_at"), "last_error": row.get("last_error"),
                "consecutive_failures": int(row.get("consecutive_failures") or 0),
                "paused_until": row.get("paused_until"),
                "has_balance": isinstance(upstream, BalanceQuery),
            })
        return shown

    async def balance(self, name: str, *, fresh: bool = False) -> dict[str, Any]:
        """The provider's balance (cached for a minute): ``{"balance": "12.50"}`` or
        ``{"error": …}``; 404 for an unknown upstream or one without a balance call."""
        upstream = self.upstreams.get(name)
        if upstream is None or not isinstance(upstream, BalanceQuery):
            raise InboundError(404, "no such upstream with a balance")
        now = time.monotonic()
        cached = self._balances.get(name)
        if cached is not None and not fresh and now - cached[0] < BALANCE_CACHE_SECONDS:
            return cached[1]
        try:
            async with asyncio.timeout(BALANCE_TIMEOUT):
                amount = await upstream.balance()
            answer: dict[str, Any] = {"upstream": name, "balance": str(amount),
                                      "at": time.time(), "error": None}
        except Exception as exc:  # the provider's failure is shown, not raised
            answer = {"upstream": name, "balance": None, "at": time.time(),
                      "error": redact_text(f"{type(exc).__name__}: {exc}")[:300]}
        self._balances[name] = (now, answer)
        return answer

    async def balances(self, names: list[str]) -> dict[str, dict[str, Any]]:
        results = await asyncio.gather(*(self.balance(name) for name in names))
        return dict(zip(names, results, strict=True))

    def configuration(self) -> dict[str, Any]:
        """Routes, sources, short codes, webhooks and upstreams as configured, every secret
        masked (the same masking as ``check-config``)."""
        dump = masked_dump(self.settings)
        inbound = dump["inbound"]
        return {"upstreams": dump["upstreams"], "accounts": dump["accounts"],
                "routes": inbound["routes"], "sources": inbound["sources"],
                "shortcodes": inbound["shortcodes"], "webhooks": inbound["webhooks"]}

    # -- reply scripts ----------------------------------------------------------------------

    async def scripts(self) -> list[dict[str, Any]]:
        configured = [public_script({"id": f"config:{i}", "source": "config",
                                     **s.model_dump()})
                      for i, s in enumerate(self.settings.inbound.reply_scripts)]
        registered = [public_script({**row, "source": "api"})
                      for row in await self.store.list_reply_scripts()]
        return configured + registered

    async def save_script(self, data: dict[str, Any], script_id: int | None, *, who: str,
                          remote: str, via: str) -> dict[str, Any]:
        if script_id is not None and "secret" not in data:
            # A form or request that leaves the secret out keeps the one stored.
            for row in await self.store.list_reply_scripts():
                if row["id"] == script_id and row["secret"]:
                    data = {**data, "secret": row["secret"]}
        values = await self.inbound.script_values(data)
        saved = await self.store.save_reply_script(values, time.time(), script_id)
        if saved is None:
            raise InboundError(404, "no such reply script")
        self.inbound.scripts_changed()
        await self.audit(who, "script.update" if script_id else "script.create",
                         f"reply script {saved['id']}",
                         f"{saved['shortcode']} {saved['keyword'] or ''} {saved['url']}",
                         remote=remote, via=via)
        return public_script({**saved, "source": "api"})

    async def delete_script(self, script_id: int, *, who: str, remote: str, via: str) -> None:
        if not await self.store.delete_reply_script(script_id):
            raise InboundError(404, "no such reply script")
        self.inbound.scripts_changed()
        await self.audit(who, "script.delete", f"reply script {script_id}", remote=remote,
                         via=via)

    async def _script(self, script_id: str) -> ReplyScript:
        for script in await self.inbound.scripts():
            if script.id == script_id:
                return script
        raise InboundError(404, "no such reply script")

    async def test_script(self, script_id: str, data: Mapping[str, Any], *, who: str,
                          remote: str, via: str) -> dict[str, Any]:
        """Call a reply script as a subscriber's SMS would (``phone``, ``text``): the
        answer the subscriber would get (cleaned and cut to the short code's parts), the
        script's own answer, and the time it took. The call is marked by an ``sms_id``
        beginning with ``console-test-``; nothing is stored but the audit entry."""
        script = await self._script(script_id)
        phone = str(data.get("phone") or "79000000000")
        text = str(data.get("text") or script.keyword or "test")
        if not phone.isascii() or not phone.isdigit() or len(phone) > 15:
            raise InboundError(400, "phone: digits only, at most 15", field="phone")
        if len(text) > 1000:
            raise InboundError(400, "text: longer than 1000 characters", field="text")
        code = self.settings.inbound.shortcodes.get(script.shortcode)
        max_parts = code.max_parts if code else 1
        message = InboundMessage(source="console", kind="shortcode",
                                 sms_id=f"console-test-{int(time.time() * 1000)}", phone=phone,
                                 text=text, recipient=script.shortcode)
        started = time.perf_counter()
        answer: str | None = None
        error: str | None = None
        try:
            answer = await call_reply_script(self.inbound.client, self.inbound.egress, script,
                                             message, timeout=script.timeout)
        except Exception as exc:  # the script's failure is the result shown
            error = redact_text(f"{type(exc).__name__}: {exc}")[:300]
        seconds = round(time.perf_counter() - started, 3)
        reply = clean_reply(answer, max_parts) if answer is not None else (
            code.fallback_reply if code else "")
        await self.audit(who, "script.test", f"reply script {script_id}",
                         f"{'ok' if error is None else 'failed'} in {seconds} s",
                         remote=remote, via=via)
        return {"script": script_id, "phone": phone, "text": text, "reply": reply,
                "answer": answer, "error": error, "seconds": seconds,
                "fallback": error is not None}

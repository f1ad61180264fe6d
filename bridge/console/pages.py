"""The operators' console: server-rendered pages under ``/admin/``.

* **Sign-in** with ``http.admin_token`` (as ``admin``) or an operator's own password
  (``http.operators``); failures are limited per client address (in each process). The
  session is a signed cookie (HMAC-SHA256 under a key derived from the admin token: a new
  token ends every session), ``HttpOnly``, ``SameSite=Strict``, ``Path=/admin/``, and
  ``Secure`` when the request came over TLS (directly, or ``X-Forwarded-Proto: https`` from
  a proxy). It lasts :data:`SESSION_SECONDS`; signing out revokes it in the store.
* **CSRF**: every form carries a token derived from the session (the sign-in form, a
  double-submit cookie); every POST without the right one, or with an ``Origin`` of another
  site, is refused (403) and changes nothing.
* **Hostile text**: templates escape everything (Jinja2 autoescaping); SMS text, mail and
  provider answers go through :func:`visible`, which shows control and bidirectional
  formatting characters as ``U+202E`` marks instead of letting them act, and the page is
  sent with a Content-Security-Policy that runs only the console's own script files.
* No secret is rendered: configuration is shown through ``masked_dump``, scripts without
  their secret, traces were redacted before they were stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
import jinja2
from aiohttp import web
from markupsafe import Markup, escape

from bridge.console.api import csv_response
from bridge.console.ops import ConsoleService, iso, message_filter
from bridge.errors import InboundError, StoreUnavailable
from bridge.store.console import REVOKED_SESSION as REVOKED_META

HERE = Path(__file__).parent
SESSION_COOKIE = "bridge_session"
LOGIN_COOKIE = "bridge_login"
SESSION_SECONDS = 8 * 3600
LOGIN_FAILURES = 10  # per client address ...
LOGIN_WINDOW = 300.0  # ... in this many seconds, then sign-in is refused for a while

CONSOLE_KEY = web.AppKey("console", ConsoleService)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

# Messages shown after an action (the query names one; no text is taken from the request).
NOTICES = {
    "redelivered": "The dead letter was queued again.",
    "resolved": "The dead letter was marked resolved.",
    "created": "The reply script was registered.",
    "saved": "The reply script was saved.",
    "deleted": "The reply script was removed.",
    "signed-out": "You are signed out.",
    "settled": "The held message was settled.",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Characters that would act instead of show: C0 and C1 controls (but tab and line feed),
# DEL, and the bidirectional formatting characters (LRM, RLM, ALM, the embeddings and
# overrides U+202A-U+202E, the isolates U+2066-U+2069), zero-width and line separators,
# and the BOM.
_INVISIBLE = frozenset(
    [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0), 0x061C, 0x200B,
     0x200C, 0x200D, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F),
     *range(0x2060, 0x2070), 0xFEFF])


def visible(value: Any, limit: int | None = None) -> Markup:
    """Text escaped for HTML, with every invisible or direction-changing character shown
    as a ``U+XXXX`` mark; cut after ``limit`` characters with the rest counted."""
    if value is None:
        return Markup("")
    # A line break written CRLF (mail, HTTP) is a line break, not a control character.
    text = str(value).replace("\r\n", "\n")
    more = 0
    if limit is not None and len(text) > limit:
        more = len(text) - limit
        text = text[:limit]
    parts: list[str] = []
    run: list[str] = []
    for char in text:
        code = ord(char)
        if code in _INVISIBLE or 0xD800 <= code <= 0xDFFF:
            if run:
                parts.append(str(escape("".join(run))))
                run = []
            parts.append(f'<span class="ctl" title="invisible character">U+{code:04X}</span>')
        else:
            run.append(char)
    if run:
        parts.append(str(escape("".join(run))))
    if more:
        parts.append(f'<span class="more">… {more} more characters</span>')
    return Markup("".join(parts))


def when(at: Any) -> str:
    return iso(at) + " UTC" if isinstance(at, int | float) else ""


# -- sessions and CSRF --------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ConsoleAuth:
    """Signed session cookies, CSRF tokens and the sign-in failure limit."""

    def __init__(self, console: ConsoleService) -> None:
        self.console = console
        self._key: bytes | None = None
        self._failures: dict[str, deque[float]] = {}

    @property
    def enabled(self) -> bool:
        return self.console.settings.http.admin_token is not None

    async def key(self) -> bytes:
        """The signing key, the same in every worker and instance on one store without
        anything to agree on: the admin token's HMAC of the store's id. A new token ends
        every session; whoever has the token is an administrator anyway."""
        if self._key is None:
            token = self.console.settings.http.admin_token
            assert token is not None
            bridge_id = await self.console.store.bridge_id()
            self._key = hmac.new(token.get_secret_value().encode(),
                                 f"sms-bridge console sessions {bridge_id}".encode(),
                                 hashlib.sha256).digest()
        return self._key

    def check_password(self, name: str, password: str) -> str | None:
        """The operator signed in, or None. An empty name (or ``admin``) takes the admin
        token; another name, that operator's password."""
        http = self.console.settings.http
        given = password.encode("utf-8", "surrogateescape")
        name = name.strip()
        if name in ("", "admin") and http.admin_token is not None:
            expected = http.admin_token.get_secret_value().encode()
            return "admin" if hmac.compare_digest(given, expected) else None
        operator = http.operators.get(name)
        expected = operator.get_secret_value().encode() if operator else b"\0none"
        if hmac.compare_digest(given, expected) and operator is not None:
            return name
        return None

    def limited(self, remote: str) -> bool:
        now = time.monotonic()
        failures = self._failures.get(remote)
        while failures and failures[0] < now - LOGIN_WINDOW:
            failures.popleft()
        return bool(failures) and len(failures or ()) >= LOGIN_FAILURES

    def failed(self, remote: str) -> None:
        if len(self._failures) > 10_000:
            self._failures.clear()  # a flood of addresses: start over rather than grow
        self._failures.setdefault(remote, deque()).append(time.monotonic())

    async def issue(self, who: str) -> tuple[str, str]:
        """A session cookie value for ``who`` and its nonce."""
        nonce = secrets.token_hex(16)
        payload = _b64(json.dumps({"u": who, "n": nonce,
                                   "e": int(time.time() + SESSION_SECONDS)}).encode())
        mac = hmac.new(await self.key(), payload.encode(), hashlib.sha256).digest()
        return f"{payload}.{_b64(mac)}", nonce

    async def session(self, request: web.Request) -> dict[str, Any] | None:
        """The signed-in session of a request: ``{"u": who, "n": nonce, "e": expiry}``."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        payload, _, mac = cookie.partition(".")
        if not payload or not mac or len(cookie) > 1024:
            return None
        try:
            expected = hmac.new(await self.key(), payload.encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(_unb64(mac), expected):
                return None
            data = json.loads(_unb64(payload))
        except (ValueError, UnicodeError):
            return None
        if not isinstance(data, dict) or float(data.get("e", 0)) < time.time():
            return None
        if await self.console.store.get_meta(REVOKED_META + str(data.get("n"))) is not None:
            return None
        return data

    async def csrf(self, session: dict[str, Any]) -> str:
        return hmac.new(await self.key(), f"csrf|{session['n']}".encode(),
                        hashlib.sha256).hexdigest()

    async def revoke(self, session: dict[str, Any]) -> None:
        await self.console.store.set_meta(REVOKED_META + str(session["n"]), str(session["e"]))


def secure(request: web.Request) -> bool:
    """Came over TLS: to the bridge itself, or to a proxy that says so."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def same_origin(request: web.Request) -> bool:
    """A POST from the console's own pages: no ``Origin`` (older clients), or the host the
    request was sent to."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    host = request.headers.get("Host", "")
    return origin in (f"http://{host}", f"https://{host}")


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str,
               max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/admin/", httponly=True,
                        samesite="Strict", secure=secure(request))


# -- the application ----------------------------------------------------------------------


@web.middleware
async def console_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Console refusals as pages, with the security headers on every answer."""
    try:
        response = await handler(request)
    except InboundError as exc:
        response = await error_page(request, exc.status, exc.message)
    except StoreUnavailable:
        response = await error_page(request, 503, "The store is unavailable; try again.")
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers.update(_security_headers())
            raise
        response = await error_page(request, exc.status, exc.reason)
    response.headers.update(_security_headers())
    return response


def _security_headers() -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            # Not no-referrer: with it Chrome sends "Origin: null" on the console's own
            # forms. same-origin gives other sites nothing (paths hold phone numbers).
            "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
            "Cache-Control": "no-store"}


async def error_page(request: web.Request, status: int, message: str) -> web.Response:
    return aiohttp_jinja2.render_template(
        "error.html", request, {"status": status, "message": message, "who": None,
                                "csrf": "", "nav": "", "notice": None}, status=status)


def add_console(app: web.Application, console: ConsoleService) -> None:
    """The console as a sub-application at ``/admin/``."""
    pages = ConsolePages(console)
    sub = web.Application(middlewares=[console_errors])
    sub[CONSOLE_KEY] = console
    filters: dict[str, Callable[..., str]] = {"visible": visible, "when": when}
    aiohttp_jinja2.setup(
        sub, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined,
        filters=filters)
    pages.add_routes(sub)
    app.add_subapp("/admin/", sub)


def _id(request: web.Request, name: str) -> int:
    value = request.match_info[name]
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise InboundError(404, "Not found.")
    return int(value)


class ConsolePages:
    def __init__(self, console: ConsoleService) -> None:
        self.console = console
        self.auth = ConsoleAuth(console)

    # -- plumbing ---------------------------------------------------------------------------

    async def _signed_in(self, request: web.Request) -> dict[str, Any]:
        if not self.auth.enabled:
            raise InboundError(404, "The console is disabled: set http.admin_token.")
        session = await self.auth.session(request)
        if session is None:
            target = request.path_qs if request.method == "GET" else "/admin/"
            raise web.HTTPSeeOther("/admin/login?" + urlencode({"next": target}))
        return session

    async def _form(self, request: web.Request) -> tuple[dict[str, Any], dict[str, str]]:
        """A POST from a signed-in operator with the right CSRF token: (session, form)."""
        session = await self._signed_in(request)
        form = {k: str(v) for k, v in (await request.post()).items()}
        expected = await self.auth.csrf(session)
        if not same_origin(request) or not hmac.compare_digest(
                form.get("csrf", "").encode("utf-8", "surrogateescape"), expected.encode()):
            raise InboundError(403, "The form has expired or did not come from this console "
                               "(CSRF check failed). Reload the page and try again.")
        return session, form

    async def _render(self, template: str, request: web.Request, session: dict[str, Any],
                      nav: str, **context: Any) -> web.Response:
        notice = NOTICES.get(request.query.get("done", ""))
        return aiohttp_jinja2.render_template(template, request, {
            "who": session["u"], "csrf": await self.auth.csrf(session), "nav": nav,
            "notice": notice, **context})

    @staticmethod
    def _remote(request: web.Request) -> str:
        return request.remote or ""

    # -- sign-in ----------------------------------------------------------------------------

    async def login_form(self, request: web.Request, *, error: str = "",
                         status: int = 200) -> web.Response:
        if not self.auth.enabled:
            raise InboundError(404, "The console is disabled: set http.admin_token.")
        token = secrets.token_hex(16)
        response = aiohttp_jinja2.render_template("login.html", request, {
            "who": None, "csrf": token, "nav": "", "error": error,
            "notice": NOTICES.get(request.query.get("done", "")),
            "next": _safe_next(request.query.get("next", ""))}, status=status)
        set_cookie(response, request, LOGIN_COOKIE, token, 900)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        if not self.auth.enabled:
            raise InboundError(404, "The console is disabled: set http.admin_token.")
        form = {k: str(v) for k, v in (await request.post()).items()}
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not same_origin(request) or not cookie or not hmac.compare_digest(
                form.get("csrf", "").encode("utf-8", "surrogateescape"), cookie.encode()):
            raise InboundError(403, "The sign-in form has expired (CSRF check failed). "
                               "Reload the page and try again.")
        remote = self._remote(request)
        if self.auth.limited(remote):
            return await self.login_form(request, error="Too many failed sign-ins from your "
                                         "address; wait a few minutes.", status=429)
        who = self.auth.check_password(form.get("operator", ""), form.get("password", ""))
        if who is None:
            self.auth.failed(remote)
            await self.console.audit(form.get("operator", "")[:64] or "admin",
                                     "sign-in failed", remote=remote)
            return await self.login_form(request, error="Wrong name or password.",
                                         status=401)
        cookie_value, _ = await self.auth.issue(who)
        await self.console.audit(who, "sign-in", remote=remote)
        response = web.HTTPSeeOther(_safe_next(form.get("next", "")) or "/admin/dashboard")
        set_cookie(response, request, SESSION_COOKIE, cookie_value, SESSION_SECONDS)
        response.del_cookie(LOGIN_COOKIE, path="/admin/")
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session, _ = await self._form(request)
        await self.auth.revoke(session)
        await self.console.audit(session["u"], "sign-out", remote=self._remote(request))
        response = web.HTTPSeeOther("/admin/login?done=signed-out")
        response.del_cookie(SESSION_COOKIE, path="/admin/")
        raise response

    async def index(self, request: web.Request) -> web.StreamResponse:
        await self._signed_in(request)
        raise web.HTTPSeeOther("/admin/dashboard")

    # -- pages ------------------------------------------------------------------------------

    async def dashboard(self, request: web.Request) -> web.Response:
        session = await self._signed_in(request)
        stats = await self.console.stats()
        upstreams = await self.console.upstream_list()
        balances = await self.console.balances(
            [u["name"] for u in upstreams if u["has_balance"]])
        now = stats["at"]
        chart = {"start": int(now // 60 * 60 - 59 * 60), "sent": stats["sent_per_minute"],
                 "inbound": stats["inbound_per_minute"]}
        dead = await self.console.forwards({"limit": "10"}, status="dead")
        return await self._render("dashboard.html", request, session, "dashboard",
                                  stats=stats, upstreams=upstreams, balances=balances,
                                  chart=chart, dead=dead["forwards"], now=now)

    async def messages(self, request: web.Request) -> web.Response:
        session = await self._signed_in(request)
        error = ""
        listing: dict[str, Any] = {"messages": [], "next_before": None}
        try:
            listing = await self.console.messages(request.query)
        except InboundError as exc:
            error = exc.message
        query = {k: v for k, v in request.query.items() if k != "before"}
        return await self._render("messages.html", request, session, "messages",
                                  listing=listing, q=query, error=error,
                                  csv_query=urlencode(query),
                                  next_query=urlencode({**query,
                                                        "before": listing["next_before"]}))

    async def messages_csv(self, request: web.Request) -> web.Response:
        await self._signed_in(request)
        message_filter(request.query)  # refuse a bad filter before anything is read
        return csv_response(await self.console.messages(request.query))

    async def message(self, request: web.Request) -> web.Response:
        session = await self._signed_in(request)
        timeline = await self.console.timeline(_id(request, "message_id"))
        return await self._render("message.html", request, session, "messages", t=timeline)

    async def resolve_message(self, request: web.Request) -> web.StreamResponse:
        session, form = await self._form(request)
        message_id = _id(request, "message_id")
        await self.console.resolve_message(message_id, form.get("outcome", ""),
                                           who=session["u"], remote=self._remote(request),
                                           via="console")
        raise web.HTTPSeeOther(f"/admin/messages/{message_id}?done=settled")

    async def inbound(self, request: web.Request) -> web.Response:
        session = await self._signed_in(request)
        error = ""
        listing: dict[str, Any] = {"inbound": [], "next_before": None}
        try:
            listing = await self.console.inbound_list(request.query)
        except InboundError as exc:
            error = exc.message
        query = {k: v for k, v in request.query.items() if k != "before"}
        return await self._render("inbound.html", request, session, "inbound",
                                  listing=listing, q=query, error=error,
                                  next_query=urlencode({**query,
                                                        "before": listing["next_before"]}))

    async def inbound_one(self, request: web.Request) -> web.Response:
        session = await self._signed_in(request)
        detail = await self.console.inbound_one(_id(request, "inbound_id"))
        return await self._render("inbound_one.html", request, session, "inbound", m=detail)

    async def dead_letters(self, request: web.Request) -> web.Response:
        session = await self._signed_in(request)
        listing = await self.console.forwards(request.query, status="dead")
        return await self._render("dead_letters.html", request, session, "dead",
                                  listing=listing)

    async def redeliver(self, request: web.Request) -> web.StreamResponse:
        session, form = await self._form(request)
        job_id = _id(request, "job_id")
        await self.console.redeliver(job_id, who=session["u"], remote=self._remote(request),
                                     via="console")
        raise web.HTTPSeeOther(_back(form, "/admin/dead-letters") + "done=redelivered")

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        session, form = await self._form(request)
        job_id = _id(request, "job_id")
        await self.console.resolve(job_id, who=session["u"], remote=self._remote(request),
                                   via="console")
        raise web.HTTPSeeOther(_back(form, "/admin/dead-letters") + "done=resolved")

    async def scripts(self, request: web.Request) -> web.Response:
        session = await self._signed_in(request)
        return await self._render("scripts.html", request, session, "scripts",
                                  scripts=await self.console.scripts(),
                                  shortcodes=sorted(self.console.settings.inbound.shortcodes))

    async def script_form(self, request: web.Request) -> web.Response:
        session = await self._signed_in(request)
        script: dict[str, Any] = {"id": None, "shortcode": "", "keyword": "", "url": "",
                                  "method": "GET", "timeout": 3.0, "has_secret": False}
        if "script_id" in request.match_info:
            script_id = _id(request, "script_id")
            found = [s for s in await self.console.scripts() if s["id"] == script_id]
            if not found:
                raise InboundError(404, "No such reply script.")
            script = found[0]
        return await self._render("script_form.html", request, session, "scripts",
                                  script=script, error="", field="",
                                  shortcodes=sorted(self.console.settings.inbound.shortcodes))

    async def script_save(self, request: web.Request) -> web.StreamResponse:
        session, form = await self._form(request)
        script_id = _id(request, "script_id") if "script_id" in request.match_info else None
        data: dict[str, Any] = {
            "shortcode": form.get("shortcode", "").strip(),
            "keyword": form.get("keyword", "").strip() or None,
            "url": form.get("url", "").strip(),
            "method": form.get("method", "GET"),
            "timeout": form.get("timeout", "").strip() or 3.0,
        }
        if form.get("secret"):
            data["secret"] = form["secret"]
        elif form.get("clear_secret"):
            data["secret"] = None
        try:
            saved = await self.console.save_script(
                data, script_id, who=session["u"], remote=self._remote(request), via="console")
        except InboundError as exc:
            if exc.status != 400:
                raise
            shown = {**data, "id": script_id, "has_secret": bool(form.get("secret"))}
            shown.pop("secret", None)
            return await self._render(
                "script_form.html", request, session, "scripts", script=shown,
                error=exc.message, field=exc.field or "",
                shortcodes=sorted(self.console.settings.inbound.shortcodes))
        raise web.HTTPSeeOther(f"/admin/scripts?done={'saved' if script_id else 'created'}"
                               f"#script-{saved['id']}")

    async def script_delete(self, request: web.Request) -> web.StreamResponse:
        session, _ = await self._form(request)
        await self.console.delete_script(_id(request, "script_id"), who=session["u"],
                                         remote=self._remote(request), via="console")
        raise web.HTTPSeeOther("/admin/scripts?done=deleted")

    async def script_test(self, request: web.Request) -> web.Response:
        session, form = await self._form(request)
        script_id = request.match_info["script_id"]
        result = await self.console.test_script(
            script_id, {"phone": form.get("phone", ""), "text": form.get("text", "")},
            who=session["u"], remote=self._remote(request), via="console")
        return await self._render("script_test.html", request, session, "scripts",
                                  result=result)

    async def config(self, request: web.Request) -> web.Response:
        session = await self._signed_in(request)
        configuration = self.console.configuration()
        return await self._render(
            "config.html", request, session, "config", config=configuration,
            upstreams=await self.console.upstream_list(),
            config_json={k: json.dumps(v, indent=2, ensure_ascii=False)
                         for k, v in configuration.items()})

    async def audit(self, request: web.Request) -> web.Response:
        session = await self._signed_in(request)
        before = request.query.get("before", "")
        rows = await self.console.store.list_audit(
            before_id=int(before) if before.isascii() and before.isdigit() else None,
            limit=100)
        return await self._render("audit.html", request, session, "audit", rows=rows,
                                  next_before=rows[-1]["id"] if len(rows) == 100 else None)

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/login", self.login_form)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/dashboard", self.dashboard)
        r.add_get("/messages", self.messages)
        r.add_get("/messages.csv", self.messages_csv)
        r.add_get("/messages/{message_id}", self.message)
        r.add_post("/messages/{message_id}/resolve", self.resolve_message)
        r.add_get("/inbound", self.inbound)
        r.add_get("/inbound/{inbound_id}", self.inbound_one)
        r.add_get("/dead-letters", self.dead_letters)
        r.add_post("/forwards/{job_id}/redeliver", self.redeliver)
        r.add_post("/forwards/{job_id}/resolve", self.resolve)
        r.add_get("/scripts", self.scripts)
        r.add_get("/scripts/new", self.script_form)
        r.add_post("/scripts", self.script_save)
        r.add_get("/scripts/{script_id}", self.script_form)
        r.add_post("/scripts/{script_id}", self.script_save)
        r.add_post("/scripts/{script_id}/delete", self.script_delete)
        r.add_post("/scripts/{script_id}/test", self.script_test)
        r.add_get("/config", self.config)
        r.add_get("/audit", self.audit)
        r.add_static("/static/", HERE / "static", append_version=False)


def _safe_next(target: str) -> str:
    """A console page to go to after sign-in: a path under /admin/ only (an absolute or
    protocol-relative URL would make the sign-in page an open redirect)."""
    if target.startswith("/admin/") and not target.startswith("//") and "\\" not in target \
            and all(ch.isprintable() for ch in target):
        return target
    return ""


def _back(form: dict[str, str], default: str) -> str:
    target = _safe_next(form.get("back", "")) or default
    return target + ("&" if "?" in target else "?")

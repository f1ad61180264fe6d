"""SMTP server wiring: aiosmtpd protocol with our limits, TLS and AUTH.

Defaults of aiosmtpd 1.4.6 revisited: the hostname is configured instead of
``socket.getfqdn()`` (a DNS lookup that leaks the internal name); the greeting does not
advertise a version; AUTH attempts are capped per connection (``command_call_limit``) and,
across connections, per client address and per login (:mod:`bridge.smtp.throttle`);
connections are capped in total and per client address, a connection that never sent a
command being closed after ``first_command_timeout`` or evicted to make room; lines up to
``max_line_length`` are accepted so legacy clients do not lose mail to "500 Line too long".
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import socket
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from bridge import metrics
from bridge.settings import Settings, SmtpSettings
from bridge.smtp.handler import IntakeHandler, in_networks
from bridge.smtp.throttle import AuthThrottle, client_key

log = logging.getLogger(__name__)

THROTTLED = "454 4.7.0 Temporary authentication failure: too many failed attempts, try later"


class ConnectionLimiter:
    """Connections in total and per client address (an IPv6 /64 counts as one address).

    aiosmtpd has no connection cap at all. When a cap is reached, the oldest connection that
    has not sent a command yet is closed to make room: a flood of idle connections from one
    address cannot lock out a client that speaks, and only the silent ones pay for it.
    Connections that spoke are never evicted; with every slot held by those, 421."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        # Insertion order is age order: the first silent one found is the oldest.
        self._all: dict[BridgeSMTP, str] = {}
        self._by_key: dict[str, dict[BridgeSMTP, None]] = {}

    def acquire(self, key: str, connection: BridgeSMTP) -> bool:
        same = self._by_key.get(key, {})
        if len(same) >= self.per_address and not self._evict_oldest_silent(same):
            return False
        if len(self._all) >= self.total and not self._evict_oldest_silent(self._all):
            return False
        self._all[connection] = key
        self._by_key.setdefault(key, {})[connection] = None
        return True

    def release(self, connection: BridgeSMTP) -> None:
        key = self._all.pop(connection, None)
        if key is None:
            return  # evicted: released when it was chosen
        same = self._by_key[key]
        del same[connection]
        if not same:
            del self._by_key[key]

    def _evict_oldest_silent(self, connections: dict[BridgeSMTP, Any]) -> bool:
        victim = next((c for c in connections if not c.spoke), None)
        if victim is None:
            return False
        self.release(victim)  # now: its connection_lost comes only on a later loop turn
        victim.evict()
        return True


class BridgeSMTP(SMTP):
    def __init__(self, handler: IntakeHandler, *, config: SmtpSettings,
                 limiter: ConnectionLimiter, **kwargs: Any) -> None:
        # Read by SMTP.__init__ as the StreamReader limit, so set it first.
        self.line_length_limit = config.max_line_length
        # Until a valid command arrives the connection is "silent": it may be evicted, and
        # first_command_timeout applies instead of timeout.
        self.spoke = False
        super().__init__(handler, **kwargs)
        self.config = config
        self.limiter = limiter
        self._idle_deadline = 0.0

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd cancels its idle timer and schedules a new one for every command. Here
        one timer stays scheduled and each command only moves the deadline; when the timer
        fires before the deadline it is scheduled again for the rest.

        aiosmtpd calls this from ``connection_made`` (no timer yet: the greeting is about to
        go out) and after each valid command; its ``timeout`` is one value for both, so the
        shorter wait for the first command is applied here."""
        if self._timeout_handle is None:
            duration = min(self.config.first_command_timeout, self._timeout_duration)
        else:
            self.spoke = True
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._idle_deadline = deadline
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(deadline, self._idle_timer)

    def _idle_timer(self) -> None:
        if self.loop.time() < self._idle_deadline:
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_timer)
        else:
            if not self.spoke:
                metrics.SMTP_SILENT_CLOSED.labels(reason="first_command_timeout").inc()
            self._timeout_cb()  # type: ignore[no-untyped-call]

    def evict(self) -> None:
        """Close this silent connection to make room for a new one (see ConnectionLimiter)."""
        metrics.SMTP_SILENT_CLOSED.labels(reason="evicted").inc()
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(b"421 4.7.0 Too many connections, closing an idle one\r\n")
        if transport is not None:
            transport.close()  # after the buffered reply is written

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd parses every MAIL/RCPT address with the email package's RFC 5322 parser,
        the largest single cost of a mail in the profile. A plain ``<dot-atom@domain>`` (what
        nearly every client sends) is read with one regular expression; anything else goes
        to aiosmtpd's parser unchanged."""
        match = _SIMPLE_PATH.match(arg)
        if match is None or (
            self.local_part_limit and len(match.group(1).rpartition("@")[0]) > self.local_part_limit
        ):
            result: tuple[str | None, str | None] = super()._getaddr(arg)
            return result
        return match.group(1), match.group(2) or ""

    async def _handle_client(self) -> None:
        assert self.session is not None and self.transport is not None
        peer = self.session.peer
        address = peer[0] if isinstance(peer, tuple) else str(peer)
        if not self.limiter.acquire(client_key(address), self):
            await self.push("421 4.7.0 Too many connections, try again later")
            self.transport.close()
            return
        try:
            if self.config.auth_allow_plaintext_on_loopback and _is_loopback(address):
                self._auth_require_tls = False
            await super()._handle_client()
        finally:
            self.limiter.release(self)


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]+(\S.*))?\Z"
)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def make_authenticator(settings: Settings, throttle: AuthThrottle) -> Any:
    """aiosmtpd's ``authenticator``: the password check, behind the failure windows.

    A throttled attempt is answered ``454 4.7.0`` before the password is looked at, so the
    right password cannot be found by trying on; an unknown login and a wrong password get
    the same answers. Clients inside the account's ``allowed_networks`` are throttled per
    address only: outsiders locking the login must not silence the monitoring system it
    serves."""

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        # handled=False makes aiosmtpd send 535 (or our message) on failure; without it the
        # client hangs.
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        shown = login[:64]
        address = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        account = settings.account(login)
        inside = account is not None and in_networks(address, account.allowed_networks)
        blocked = throttle.blocked(address, None if inside else login)
        if blocked is not None:
            # Counted, and logged only at DEBUG: a client knocking thousands of times a second
            # must not flood the log (the moment a window fills is a WARNING below).
            metrics.SMTP_AUTH_FAILURES.labels(reason=f"throttled_{blocked}").inc()
            log.debug("SMTP AUTH throttled",
                      extra={"login": shown, "peer": address, "window": blocked})
            return AuthResult(success=False, handled=False, message=THROTTLED)
        expected = account.password.get_secret_value().encode() if account else b"\0invalid"
        if account is None or not hmac.compare_digest(auth_data.password, expected):
            metrics.SMTP_AUTH_FAILURES.labels(reason="invalid").inc()
            log.info("SMTP AUTH failed", extra={"login": shown, "peer": address})
            for window in throttle.failed(address, login):
                log.warning("SMTP AUTH failures reached the limit: throttling",
                            extra={"login": shown, "peer": address, "window": window})
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=settings.canonical_login(login))

    return authenticator


def tls_context(config: SmtpSettings) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    return context


async def start_smtp_server(
    settings: Settings, handler: IntakeHandler, sockets: list[socket.socket]
) -> list[asyncio.Server]:
    """One server per listening socket (bound beforehand, see :mod:`bridge.listen`), all
    sharing the limiter and the AUTH throttle of this process."""
    config = settings.smtp
    limiter = ConnectionLimiter(config.max_connections, config.max_connections_per_ip)
    throttle = AuthThrottle(config.auth_failure_window, config.auth_failures_per_ip,
                            config.auth_failures_per_login)
    context = tls_context(config)
    authenticator = make_authenticator(settings, throttle)
    loop = asyncio.get_running_loop()

    def factory() -> BridgeSMTP:
        return BridgeSMTP(
            handler,
            config=config,
            limiter=limiter,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            hostname=config.hostname,
            ident="ESMTP",  # the greeting reads "220 <hostname> ESMTP": no version
            tls_context=context,
            timeout=config.timeout,
            auth_required=config.auth == "required",
            auth_require_tls=config.auth_require_tls,
            auth_exclude_mechanism=["LOGIN", "PLAIN"] if config.auth == "off" else None,
            authenticator=authenticator,
            command_call_limit={"AUTH": config.auth_attempts_per_connection, "*": 100_000},
            loop=loop,
        )

    return [await loop.create_server(factory, sock=sock) for sock in sockets]

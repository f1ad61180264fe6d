"""SMTP server wiring: aiosmtpd protocol with our limits, TLS and AUTH.

Defaults of aiosmtpd revisited (notes/pitfalls.md): the hostname is configured instead of
``socket.getfqdn()``; the greeting does not advertise a version; AUTH attempts per
connection are capped; connections are capped in total and per client address; lines up to
``max_line_length`` are accepted so legacy clients do not lose mail to "500 Line too long".
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import ssl
from collections import Counter
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from bridge.settings import Settings, SmtpSettings
from bridge.smtp.handler import IntakeHandler

log = logging.getLogger(__name__)


class ConnectionLimiter:
    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.active: Counter[str] = Counter()

    def acquire(self, address: str) -> bool:
        if sum(self.active.values()) >= self.total or self.active[address] >= self.per_address:
            return False
        self.active[address] += 1
        return True

    def release(self, address: str) -> None:
        self.active[address] -= 1
        if self.active[address] <= 0:
            del self.active[address]


class BridgeSMTP(SMTP):
    def __init__(self, handler: IntakeHandler, *, config: SmtpSettings,
                 limiter: ConnectionLimiter, **kwargs: Any) -> None:
        # Read by SMTP.__init__ as the StreamReader limit, so set it first.
        self.line_length_limit = config.max_line_length
        super().__init__(handler, **kwargs)
        self.config = config
        self.limiter = limiter
        self._idle_deadline = 0.0

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd cancels its idle timer and schedules a new one for every command. Here
        one timer stays scheduled and each command only moves the deadline; when the timer
        fires before the deadline it is scheduled again for the rest."""
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
            self._timeout_cb()  # type: ignore[no-untyped-call]

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
        if not self.limiter.acquire(address):
            await self.push("421 4.7.0 Too many connections, try again later")
            self.transport.close()
            return
        try:
            if self.config.auth_allow_plaintext_on_loopback and _is_loopback(address):
                self._auth_require_tls = False
            await super()._handle_client()
        finally:
            self.limiter.release(address)


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]+(\S.*))?\Z"
)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def make_authenticator(settings: Settings) -> Any:
    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        # handled=False makes aiosmtpd send 535 on failure; without it the client hangs.
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        account = settings.account(login)
        expected = account.password.get_secret_value().encode() if account else b"\0invalid"
        if account is None or not hmac.compare_digest(auth_data.password, expected):
            log.info("SMTP AUTH failed", extra={"login": login[:64]})
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
    settings: Settings, handler: IntakeHandler, *, reuse_port: bool = False
) -> asyncio.Server:
    config = settings.smtp
    limiter = ConnectionLimiter(config.max_connections, config.max_connections_per_ip)
    context = tls_context(config)
    authenticator = make_authenticator(settings)
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

    return await loop.create_server(factory, host=config.host, port=config.port,
                                    reuse_port=reuse_port or None)

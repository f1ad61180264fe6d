"""Failed SMTP AUTH attempts across connections, per client address and per login.

aiosmtpd 1.4.6 only limits AUTH per connection (``command_call_limit``): a client that
reconnects tried 410 passwords a second. This is the part aiosmtpd has no hook for.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable


def client_key(address: str) -> str:
    """The unit a limit applies to: an IPv4 address, or an IPv6 /64 (one subscriber's
    network: a host that owns a /64 has 2**64 addresses to rotate through)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class FailureWindow:
    """At most ``limit`` failures per ``window`` seconds per key: the key is blocked while the
    last ``limit`` failures all lie within the window. Only failures are recorded; attempts
    answered "blocked" are not, so a key is free again one window after its last counted
    failure however long the other side keeps knocking."""

    MAX_KEYS = 100_000  # unknown logins are keys too (else the answer would tell them apart)

    def __init__(self, window: float, limit: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.limit = limit
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, key: str) -> bool:
        failures = self._failures.get(key)
        if failures is None or len(failures) < self.limit:
            return False
        return failures[0] > self.clock() - self.window

    def record(self, key: str) -> bool:
        """Count a failure; ``True`` when it fills the window (the key is blocked now)."""
        failures = self._failures.pop(key, None)  # re-inserted last: the dict stays by age
        if failures is None:
            failures = deque(maxlen=self.limit)
        failures.append(self.clock())
        self._failures[key] = failures
        if len(self._failures) > self.MAX_KEYS:
            self._forget_old()
        return self.blocked(key)

    def _forget_old(self) -> None:
        horizon = self.clock() - self.window
        for key in [k for k, v in self._failures.items() if v[-1] <= horizon]:
            del self._failures[key]
        while len(self._failures) > self.MAX_KEYS:  # all recent: the longest-quiet go first
            del self._failures[next(iter(self._failures))]


class AuthThrottle:
    """The two windows of failed AUTH: per client address and per login."""

    def __init__(self, window: float, per_address: int, per_login: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.by_address = FailureWindow(window, per_address, clock)
        self.by_login = FailureWindow(window, per_login, clock)

    def blocked(self, address: str, login: str | None) -> str | None:
        """``"address"`` or ``"login"`` while that window is full, else ``None``. ``login``
        is ``None`` for a client the login's lockout does not apply to."""
        if self.by_address.blocked(client_key(address)):
            return "address"
        if login is not None and self.by_login.blocked(_login_key(login)):
            return "login"
        return None

    def failed(self, address: str, login: str) -> list[str]:
        """Count a failed attempt; the windows (``"address"``, ``"login"``) it filled."""
        filled = []
        if self.by_address.record(client_key(address)):
            filled.append("address")
        if self.by_login.record(_login_key(login)):
            filled.append("login")
        return filled


def _login_key(login: str) -> str:
    # Logins are case-insensitive; the length cap bounds what a client can make us keep.
    return login.lower()[:256]

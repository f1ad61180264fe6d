"""The listening sockets, bound once by the process the operator started.

``serve --workers N`` used to have every worker bind the ports with ``SO_REUSEPORT``; the
kernel then also lets any *other* process that sets the option bind them, and a second
bridge with another store silently took 5 of 6 mails. Now the parent binds each port once,
without ``SO_REUSEPORT``, and hands the sockets to its workers: a second process on the
same port gets "address already in use", and connections wait in the backlog while a
worker is restarted instead of being refused.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from bridge.errors import ListenError as ListenError
from bridge.settings import Settings


@dataclass
class Listeners:
    smtp: list[socket.socket]
    http: list[socket.socket]

    def close(self) -> None:
        for sock in (*self.smtp, *self.http):
            sock.close()


def bind_listeners(settings: Settings, *, reuse_port: bool = False) -> Listeners:
    """Bind the SMTP and HTTP ports. ``reuse_port`` is for benchmarks that run several
    bridges in one test process; ``serve`` never sets it."""
    smtp = _bind("SMTP", settings.smtp.host, settings.smtp.port, reuse_port)
    try:
        http = _bind("HTTP", settings.http.host, settings.http.port, reuse_port)
    except ListenError:
        for sock in smtp:
            sock.close()
        raise
    return Listeners(smtp, http)


def _bind(what: str, host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    """One listening socket per address ``host`` resolves to, as asyncio's
    ``create_server`` would bind them (which takes no pre-bound list of them)."""
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen for {what} on {where}: {exc.strerror}") from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            # Only lets a restart bind while old connections linger in TIME_WAIT; on Linux it
            # never lets two sockets listen on one port (SO_REUSEPORT would).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = exc.strerror or str(exc)
        raise ListenError(f"cannot listen for {what} on {where}: {reason.lower()}") from exc
    return sockets

"""SSRF guard for outgoing HTTP calls to URLs our users register (webhooks, reply scripts).

A user-registered URL must never let a user make the bridge talk to the bridge's own
network: the loopback admin endpoints, the store, the cloud metadata service at
169.254.169.254, and so on. What goes wrong, each checked on this stack:

* The check must look at the address **actually connected to**, on every call. Checking the
  name at registration (or resolving twice, once to check and once to connect) loses to DNS
  rebinding. So :func:`guarded_request` resolves once, checks every address, and connects to
  the checked IP itself; the name only travels in the ``Host`` header and in TLS SNI.
* ``127.1``, ``2130706433`` and ``0177.0.0.1`` are not parsed by :mod:`ipaddress` but do
  resolve to loopback: we never try to parse the URL host, we check what ``getaddrinfo``
  returns.
* 100.64.0.0/10 (CGNAT) is neither private nor global in :mod:`ipaddress`, multicast and
  site-local IPv6 count as "global" there: we ask for ``is_global`` *and* refuse every special
  range explicitly.
* IPv6 forms that embed an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo) are judged by the
  embedded address too, or ``::ffff:127.0.0.1`` would reach loopback.
* A redirect is a new, unchecked request: redirects are never followed.
* httpx timeouts are per socket operation, so a server dripping bytes outlives them: the whole
  call runs under one ``asyncio.timeout``.
* httpx honours ``HTTPS_PROXY``/``ALL_PROXY`` unless ``trust_env=False``: a proxy would connect
  on our behalf to whatever it resolves. Callers create the client with ``trust_env=False``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import httpx

from bridge.errors import BridgeError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Refused whatever ``ipaddress`` thinks of them: its ``is_global``/``is_private`` tables have
# changed between CPython patch releases, and they call multicast and CGNAT "global" or
# neither. This list keeps the guard's behaviour independent of the interpreter version.
_SPECIAL_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), why)
    for cidr, why in (
        ("0.0.0.0/8", "'this network'"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),  # before 240/4: the more specific reason
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("::ffff:0:0:0/96", "IPv4-translated"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignments (incl. Teredo)"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("fc00::/7", "unique local (private)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
    )
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class EgressRefused(BridgeError):
    """An outgoing call was refused: the target address (or URL) is not one we may reach."""


class EgressPolicy:
    """Which addresses outgoing calls to user-registered URLs may connect to.

    Only globally reachable unicast addresses, unless an address falls inside one of
    ``allowed_networks``: CIDRs an operator explicitly opens although they are private or
    loopback (``"127.0.0.0/8"`` for a reply script running next to the bridge).
    """

    def __init__(self, allowed_networks: Sequence[str] = ()) -> None:
        if isinstance(allowed_networks, str):  # a lone "10.0.0.0/8" would iterate characters
            raise TypeError("allowed_networks must be a sequence of CIDR strings")
        self.allowed_networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(cidr, strict=True) for cidr in allowed_networks
        )

    def check_address(self, address: str) -> None:
        """Raise :class:`EgressRefused` unless ``address`` (an IP literal) may be connected to.

        An address inside an allowed network passes (for an IPv4-mapped address, its IPv4
        form is tried too: it is the same host). Otherwise the address must be global and
        outside every special range, and so must any IPv4 address it embeds.
        """
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise EgressRefused(f"{address!r} is not an IP address") from None
        if self._allowed(ip):
            return
        reason = _refusal(ip)
        if reason is not None:
            raise EgressRefused(f"address {address} refused: {reason}")

    def _allowed(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(
            c.version == net.version and c in net
            for c in candidates
            for net in self.allowed_networks
        )

    async def resolve(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` (IPv4 and IPv6, TCP) and check every address it resolves to.

        Every address is checked, not only the first: a name resolving to one public and one
        private address is refused, since we cannot know which one a later connect would use.
        Raises :class:`EgressRefused` when the name does not resolve or any address is refused;
        returns the addresses in resolver order, without duplicates.
        """
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM,
                proto=socket.IPPROTO_TCP,
            )
        except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
            raise EgressRefused(f"cannot resolve {host!r}: {exc}") from exc
        addresses: list[str] = []
        for family, _type, _proto, _canon, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = str(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise EgressRefused(f"{host!r} resolves to no IP address")
        for address in addresses:
            try:
                self.check_address(address)
            except EgressRefused as exc:
                raise EgressRefused(f"{host!r} resolves to a refused address: {exc}") from None
        return addresses


def _refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be connected to (ignoring allowed networks), or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            # The same host as the IPv4 address: judged as that address alone.
            inner = _refusal(ip.ipv4_mapped)
            return None if inner is None else f"IPv4-mapped {ip.ipv4_mapped}: {inner}"
        if ip in _NAT64:
            # Well-known NAT64 prefix (DNS64 networks): the gateway connects to the embedded
            # IPv4 address, so that address decides. ipaddress calls the prefix "reserved".
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            inner = _refusal(embedded)
            return None if inner is None else f"NAT64 to {embedded}: {inner}"
        if ip.sixtofour is not None:
            inner = _refusal(ip.sixtofour)
            if inner is not None:
                return f"6to4 for {ip.sixtofour}: {inner}"
        if ip.teredo is not None:
            server, client = ip.teredo
            for part, embedded in (("server", server), ("client", client)):
                inner = _refusal(embedded)
                if inner is not None:
                    return f"Teredo {part} {embedded}: {inner}"
    for network, why in _SPECIAL_NETWORKS:
        if ip.version == network.version and ip in network:
            return f"{why} ({network})"
    for flag in ("loopback", "private", "link_local", "unspecified", "multicast", "reserved"):
        if getattr(ip, f"is_{flag}"):
            return flag.replace("_", "-")
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if not ip.is_global:
        return "not globally reachable"
    return None


async def guarded_request(
    client: httpx.AsyncClient,
    policy: EgressPolicy,
    method: str,
    url: str,
    *,
    timeout: float,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request to a user-registered ``url``, connecting only to checked addresses.

    The host is resolved once through ``policy`` (every address checked), and the request goes
    to the checked IP itself: the URL host is replaced by the IP (port kept), ``Host`` carries
    the original ``host[:port]``, and for https the ``sni_hostname`` extension keeps SNI and
    certificate verification on the name. Resolving again at connect time would let a
    rebinding DNS server answer with 127.0.0.1 the second time. If
    connecting to one checked address fails, the next checked one is tried.

    Redirects are never followed: a 3xx is returned as is, since its target was never
    checked. ``timeout`` bounds the whole call, resolution and body included, because httpx
    timeouts are per operation and a dripping server would outlive them; on expiry
    :class:`TimeoutError` is raised. ``kwargs`` go to :meth:`httpx.AsyncClient.request`
    (``headers``, ``content``, ``json`` …).

    https requests are sent with ``Connection: close``: httpcore pools connections by origin,
    here the IP, so a kept-alive connection verified for one name could otherwise carry a
    later request for another name on the same IP. ``client`` must be created with
    ``trust_env=False`` (a proxy would resolve and connect on its own) and HTTP/1.1 only.

    Raises :class:`EgressRefused` for a non-http(s) URL or a refused/unresolvable host.
    """
    if kwargs.pop("follow_redirects", False):
        raise ValueError("guarded_request never follows redirects")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise EgressRefused(f"invalid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise EgressRefused(f"URL scheme {parsed.scheme!r} refused: only http and https")
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded; IPv6 literals without brackets
    if not host:
        raise EgressRefused("URL has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)

    headers = httpx.Headers(kwargs.pop("headers", None))
    headers["Host"] = parsed.netloc.decode("ascii")  # host[:port], brackets for IPv6
    extensions = dict(kwargs.pop("extensions", None) or {})
    if parsed.scheme == "https":
        extensions["sni_hostname"] = host
        headers["Connection"] = "close"

    async with asyncio.timeout(timeout):
        addresses = await policy.resolve(host, port)
        last: httpx.TransportError | None = None
        for address in addresses:
            target = parsed.copy_with(host=address, port=parsed.port)
            try:
                return await client.request(
                    method,
                    target,
                    headers=headers,
                    extensions=extensions,
                    follow_redirects=False,
                    **kwargs,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = exc  # nothing was sent: the next checked address may answer
        assert last is not None  # resolve() returns at least one address
        raise last

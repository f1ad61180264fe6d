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
* An allowed network (a reply script on 127.0.0.1) also opens that host's other services:
  a URL naming the port of Redis, PostgreSQL or an SMTP server would make the bridge speak
  HTTP to them. Well-known non-HTTP ports are refused unless opened explicitly.
* Answers are read with a cap on the bytes received and decoded (:mod:`bridge.bounded_http`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import httpx

from bridge.bounded_http import DEFAULT_MAX_ANSWER_BYTES, identity_headers, send_bounded
from bridge.errors import EgressRefused as EgressRefused
from bridge.errors import ResolutionFailed as ResolutionFailed

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

# Ports of services that do not speak HTTP, refused unless opened with ``allowed_ports``:
# the "bad ports" browsers never connect to (WHATWG Fetch, "port blocking"), plus the
# databases, caches and queues a bridge's own network typically runs.
BLOCKED_PORTS: dict[int, str] = {
    1: "tcpmux", 7: "echo", 9: "discard", 11: "systat", 13: "daytime", 15: "netstat",
    17: "qotd", 19: "chargen", 20: "ftp-data", 21: "ftp", 22: "ssh", 23: "telnet",
    25: "smtp", 37: "time", 42: "name", 43: "nicname", 53: "domain", 69: "tftp",
    77: "priv-rjs", 79: "finger", 87: "ttylink", 95: "supdup", 101: "hostname",
    102: "iso-tsap", 103: "gppitnp", 104: "acr-nema", 109: "pop2", 110: "pop3",
    111: "sunrpc", 113: "auth", 115: "sftp", 117: "uucp-path", 119: "nntp", 123: "ntp",
    135: "loc-srv", 137: "netbios-ns", 139: "netbios-ssn", 143: "imap", 161: "snmp",
    179: "bgp", 389: "ldap", 427: "slp", 465: "smtps", 512: "exec", 513: "login",
    514: "shell", 515: "printer", 526: "tempo", 530: "courier", 531: "chat",
    532: "netnews", 540: "uucp", 548: "afp", 554: "rtsp", 556: "remotefs", 563: "nntps",
    587: "submission", 601: "syslog-conn", 636: "ldaps", 989: "ftps-data", 990: "ftps",
    993: "imaps", 995: "pop3s", 1433: "mssql", 1521: "oracle", 1719: "h323gatestat",
    1720: "h323hostcall", 1723: "pptp", 2049: "nfs", 2375: "docker", 2376: "docker-tls",
    2379: "etcd", 2380: "etcd-peer", 3306: "mysql", 3659: "apple-sasl", 4045: "npp",
    4190: "sieve", 5060: "sip", 5061: "sips", 5432: "postgresql", 5672: "amqp",
    6000: "x11", 6379: "redis", 6566: "sane-port", 6665: "ircu", 6666: "ircu",
    6667: "ircu", 6668: "ircu", 6669: "ircu", 6679: "osaut", 6697: "ircs-u",
    9042: "cassandra", 9092: "kafka", 10080: "amanda", 11211: "memcached",
    27017: "mongodb",
}


def parse_network(text: str) -> IPNetwork:
    """An allowed network from its CIDR text, strictly: ``127.0.0.1/8`` has host bits set
    and is refused with the network it most likely means, rather than silently widened or
    narrowed. The settings and :class:`EgressPolicy` both parse with this function, so
    ``check-config`` refuses what ``serve`` would."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            meant = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP network in CIDR form ({exc})") from None
        raise ValueError(f"{text!r} has host bits set: write {str(meant)!r}") from None


class EgressPolicy:
    """Which addresses outgoing calls to user-registered URLs may connect to.

    Only globally reachable unicast addresses, unless an address falls inside one of
    ``allowed_networks``: CIDRs an operator explicitly opens although they are private or
    loopback (``"127.0.0.0/8"`` for a reply script running next to the bridge).
    """

    def __init__(self, allowed_networks: Sequence[str] = (),
                 allowed_ports: Sequence[int] = ()) -> None:
        if isinstance(allowed_networks, str):  # a lone "10.0.0.0/8" would iterate characters
            raise TypeError("allowed_networks must be a sequence of CIDR strings")
        self.allowed_networks: tuple[IPNetwork, ...] = tuple(
            parse_network(cidr) for cidr in allowed_networks
        )
        self.allowed_ports = frozenset(allowed_ports)

    def check_port(self, port: int) -> None:
        """Raise :class:`EgressRefused` for a well-known non-HTTP port not opened."""
        service = BLOCKED_PORTS.get(port)
        if service is not None and port not in self.allowed_ports:
            raise EgressRefused(f"port {port} ({service}) is not an HTTP port; open it with "
                                "inbound.egress_allowed_ports if it really is one")

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
        Raises :class:`EgressRefused` when the port or any address is refused, or the name
        is not a valid host name, and :class:`ResolutionFailed` when it does not resolve;
        returns the addresses in resolver order, without duplicates.
        """
        self.check_port(port)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM,
                proto=socket.IPPROTO_TCP,
            )
        except UnicodeError as exc:  # not IDNA-encodable: no retry will help
            raise EgressRefused(f"cannot resolve {host!r}: {exc}") from exc
        except OSError as exc:  # socket.gaierror is an OSError
            raise ResolutionFailed(f"cannot resolve {host!r}: {exc}") from exc
        addresses: list[str] = []
        for family, _type, _proto, _canon, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = str(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise ResolutionFailed(f"{host!r} resolves to no IP address")
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
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    truncate_answer: bool = False,
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
    :class:`TimeoutError` is raised. It is also given to httpx for every phase, or the
    client's default (5 s) would cut a call allowed 10 s. ``kwargs`` go to
    :meth:`httpx.AsyncClient.build_request` (``headers``, ``content``, ``json`` …).

    The answer is read with :func:`bridge.bounded_http.read_bounded`: ``Accept-Encoding:
    identity`` is asked for, and at most ``max_answer_bytes`` are read and decoded; a longer
    answer raises :class:`bridge.bounded_http.AnswerTooLarge`, or is cut there with
    ``truncate_answer`` (for a caller that only needs the status). The response returned
    holds the body already read.

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

    headers = identity_headers(kwargs.pop("headers", None))
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
            request = client.build_request(method, target, headers=headers,
                                           extensions=extensions,
                                           timeout=httpx.Timeout(timeout), **kwargs)
            try:
                return await send_bounded(client, request, max_answer_bytes,
                                          truncate=truncate_answer)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = exc  # nothing was sent: the next checked address may answer
        assert last is not None  # resolve() returns at least one address
        raise last

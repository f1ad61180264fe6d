"""The SSRF guard for outgoing calls to user-registered URLs (bridge.relays.egress).

I/O goes through real sockets to an aiohttp server on 127.0.0.1; nothing beyond loopback is
ever resolved or contacted (global addresses are only judged by ``check_address``, and fake
names are answered by a patched ``getaddrinfo``).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from bridge.errors import BridgeError
from bridge.relays.egress import EgressPolicy, EgressRefused, guarded_request

LOOPBACK = EgressPolicy(["127.0.0.0/8"])


@dataclass
class Target:
    """A loopback HTTP server that records every request it sees."""

    port: int
    seen: list[web.Request] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str, host: str = "localhost") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    state = Target(port=0)

    async def ok(request: web.Request) -> web.Response:
        state.seen.append(request)
        return web.Response(text="ok")

    async def redirect(request: web.Request) -> web.Response:
        state.seen.append(request)
        # A redirect back to this loopback server: had it been followed, the test server
        # would see a second request (and no traffic ever leaves the machine).
        return web.Response(status=302,
                            headers={"Location": f"http://127.0.0.1:{state.port}/ok"})

    async def drip(request: web.Request) -> web.StreamResponse:
        state.seen.append(request)
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        try:
            for _ in range(200):  # one byte every 0.1 s: each httpx read is quick
                await response.write(b"x")
                try:
                    await asyncio.wait_for(state.stop.wait(), 0.1)
                    break
                except TimeoutError:
                    continue
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass  # the client gave up, as it should
        return response

    app = web.Application()
    app.router.add_get("/x", ok)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/drip", drip)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        state.stop.set()
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as c:
        yield c


Resolver = Callable[[str], list[str]]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Callable[[Resolver], list[str]]:
    """Answer ``loop.getaddrinfo`` for fake names; returns the list of names looked up."""

    def install(answer: Resolver) -> list[str]:
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo
        asked: list[str] = []

        async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else str(host)
            if not name.endswith(".example"):
                return await real(host, port, *args, **kwargs)
            asked.append(name)
            result = []
            for address in answer(name):
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sockaddr = (address, int(port), 0, 0) if ":" in address else (address, int(port))
                result.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
            if not result:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return result

        monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
        return asked

    return install


# --- check_address -------------------------------------------------------------------------

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("169.254.169.254", "link-local"),
    ("169.254.0.1", "link-local"),
    ("fe80::1", "link-local"),
    ("0.0.0.0", "this network"),
    ("0.1.2.3", "this network"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("192.0.0.8", "IETF"),
    ("fec0::1", "site-local"),
    ("100::1", "discard"),
    # IPv6 forms embedding an IPv4 address
    ("::ffff:127.0.0.1", "IPv4-mapped"),
    ("::ffff:10.0.0.1", "IPv4-mapped"),
    ("::ffff:169.254.169.254", "IPv4-mapped"),
    ("::ffff:100.64.0.1", "IPv4-mapped"),
    ("64:ff9b::7f00:1", "NAT64"),
    ("64:ff9b::a9fe:a9fe", "NAT64"),  # 169.254.169.254
    ("64:ff9b::a00:1", "NAT64"),  # 10.0.0.1
    ("64:ff9b:1::808:808", "local-use NAT64"),
    ("2002:7f00:1::", "6to4"),
    ("2002:a9fe:a9fe::1", "6to4"),
    ("2002:c0a8:101::1", "6to4"),  # 192.168.1.1
    # Teredo: server 65.54.227.120, client 127.0.0.1 (obfuscated as 80ff:fffe)
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo"),
    # Teredo with global server and client: still not a globally reachable address
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "Teredo"),
    ("::7f00:1", "IPv4-compatible"),
    ("::ffff:0:7f00:1", "IPv4-translated"),
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.32.0.1",  # just above 172.16/12
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",  # IPv4-mapped global: the same host as 8.8.8.8
    "64:ff9b::808:808",  # NAT64 to 8.8.8.8 (DNS64 networks)
    "2002:808:808::1",  # 6to4 for 8.8.8.8
]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_check_address_refuses_special_ranges(address: str, why: str) -> None:
    with pytest.raises(EgressRefused) as info:
        EgressPolicy().check_address(address)
    message = str(info.value)
    assert address in message
    assert why.lower() in message.lower()


@pytest.mark.parametrize("address", ALLOWED)
def test_check_address_allows_global(address: str) -> None:
    EgressPolicy().check_address(address)


@pytest.mark.parametrize("text", ["localhost", "127.1", "2130706433", "", "1.2.3.4.5", "::g"])
def test_check_address_refuses_non_ip(text: str) -> None:
    with pytest.raises(EgressRefused, match="not an IP address"):
        EgressPolicy().check_address(text)


def test_refusal_is_a_bridge_error() -> None:
    assert issubclass(EgressRefused, BridgeError)


def test_allowed_networks_open_only_what_they_name() -> None:
    policy = EgressPolicy(["127.0.0.0/8", "10.1.0.0/16", "fd00::/8"])
    for address in ["127.0.0.1", "127.9.9.9", "::ffff:127.0.0.1", "10.1.2.3", "fd00::5"]:
        policy.check_address(address)
    for address in ["::1", "10.2.0.1", "169.254.169.254", "192.168.0.1", "fc00::1",
                    "64:ff9b::7f00:1", "2002:7f00:1::"]:
        with pytest.raises(EgressRefused):
            policy.check_address(address)
    policy.check_address("8.8.8.8")  # global stays allowed


def test_allowed_networks_must_be_cidrs() -> None:
    with pytest.raises(ValueError):
        EgressPolicy(["localhost"])
    with pytest.raises(ValueError):
        EgressPolicy(["10.0.0.1/8"])  # host bits set: almost certainly a typo
    with pytest.raises(TypeError):
        EgressPolicy("127.0.0.0/8")


# --- resolve -------------------------------------------------------------------------------

LOOPBACK_SPELLINGS = ["127.1", "2130706433", "0177.0.0.1", "0x7f.1", "localhost", "127.0.0.1",
                      "::1", "::ffff:127.0.0.1"]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
async def test_resolve_refuses_loopback_spellings(host: str) -> None:
    with pytest.raises(EgressRefused, match="loopback"):
        await EgressPolicy().resolve(host, 80)


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0177.0.0.1", "0x7f.1"])
async def test_resolve_odd_spellings_are_loopback(host: str) -> None:
    assert await LOOPBACK.resolve(host, 80) == ["127.0.0.1"]


async def test_resolve_checks_every_address(fake_dns: Callable[[Resolver], list[str]]) -> None:
    fake_dns(lambda name: ["8.8.8.8", "2001:4860:4860::8888", "10.0.0.1"])
    with pytest.raises(EgressRefused, match=r"10\.0\.0\.1"):
        await EgressPolicy().resolve("mixed.example", 443)


async def test_resolve_returns_checked_addresses(
    fake_dns: Callable[[Resolver], list[str]],
) -> None:
    fake_dns(lambda name: ["8.8.8.8", "8.8.8.8", "2001:4860:4860::8888"])
    assert await EgressPolicy().resolve("public.example", 443) == [
        "8.8.8.8", "2001:4860:4860::8888"
    ]


async def test_resolve_failure_is_refused(fake_dns: Callable[[Resolver], list[str]]) -> None:
    fake_dns(lambda name: [])
    with pytest.raises(EgressRefused, match="cannot resolve"):
        await EgressPolicy().resolve("nowhere.example", 80)


# --- guarded_request through a real loopback server -----------------------------------------

async def test_allowed_policy_reaches_server_with_original_host(
    target: Target, client: httpx.AsyncClient
) -> None:
    response = await guarded_request(client, LOOPBACK, "GET", target.url("/x"), timeout=5)
    assert response.status_code == 200
    assert response.text == "ok"
    assert len(target.seen) == 1
    assert target.seen[0].headers["Host"] == f"localhost:{target.port}"
    assert target.seen[0].remote == "127.0.0.1"


async def test_caller_headers_and_kwargs_are_passed(
    target: Target, client: httpx.AsyncClient
) -> None:
    response = await guarded_request(
        client, LOOPBACK, "GET", target.url("/x"), timeout=5,
        headers={"X-Test": "1", "Host": "evil.example"}, params={"q": "v"},
    )
    assert response.status_code == 200
    seen = target.seen[0]
    assert seen.headers["X-Test"] == "1"
    assert seen.headers["Host"] == f"localhost:{target.port}"  # the caller cannot override it
    assert seen.query_string == "q=v"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.1", "[::1]"])
async def test_default_policy_refuses_loopback_and_sends_nothing(
    target: Target, client: httpx.AsyncClient, host: str
) -> None:
    with pytest.raises(EgressRefused):
        await guarded_request(client, EgressPolicy(), "GET", target.url("/x", host), timeout=5)
    assert target.seen == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://localhost/x", "gopher://127.0.0.1:70/", "localhost/x"]
)
async def test_other_schemes_refused(client: httpx.AsyncClient, url: str) -> None:
    with pytest.raises(EgressRefused):
        await guarded_request(client, LOOPBACK, "GET", url, timeout=5)


async def test_redirect_is_returned_not_followed(
    target: Target, client: httpx.AsyncClient
) -> None:
    response = await guarded_request(client, LOOPBACK, "GET", target.url("/redirect"), timeout=5)
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/ok")
    assert len(target.seen) == 1


async def test_follow_redirects_cannot_be_requested(
    target: Target, client: httpx.AsyncClient
) -> None:
    with pytest.raises(ValueError):
        await guarded_request(client, LOOPBACK, "GET", target.url("/redirect"), timeout=5,
                              follow_redirects=True)
    assert target.seen == []


async def test_dripping_server_hits_overall_deadline(
    target: Target, client: httpx.AsyncClient
) -> None:
    deadline = 1.0
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await guarded_request(client, LOOPBACK, "GET", target.url("/drip"), timeout=deadline)
    elapsed = time.monotonic() - started
    assert deadline - 0.05 <= elapsed < deadline + 1.0
    assert len(target.seen) == 1


async def test_connects_to_checked_address_without_resolving_again(
    target: Target, client: httpx.AsyncClient, fake_dns: Callable[[Resolver], list[str]]
) -> None:
    # A rebinding name: loopback (allowed here) on the first lookup, then 10.0.0.1. Had
    # anything resolved the name again, the connect would go elsewhere or fail.
    answers = iter([["127.0.0.1"]])
    asked = fake_dns(lambda name: next(answers, ["10.0.0.1"]))
    url = f"http://rebind.example:{target.port}/x"
    response = await guarded_request(client, LOOPBACK, "GET", url, timeout=5)
    assert response.status_code == 200
    assert asked == ["rebind.example"]
    assert target.seen[0].headers["Host"] == f"rebind.example:{target.port}"


async def test_falls_back_to_next_checked_address(
    target: Target, client: httpx.AsyncClient, fake_dns: Callable[[Resolver], list[str]]
) -> None:
    # 127.0.0.2 listens on nothing (the server is bound to 127.0.0.1 only).
    fake_dns(lambda name: ["127.0.0.2", "127.0.0.1"])
    url = f"http://two.example:{target.port}/x"
    response = await guarded_request(client, LOOPBACK, "GET", url, timeout=5)
    assert response.status_code == 200
    assert len(target.seen) == 1


async def test_https_request_shape() -> None:
    # No I/O here: a mock transport shows what would go on the wire for an https URL.
    captured: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        captured.append(request)
        return httpx.Response(204)

    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport, trust_env=False) as mock_client:
        response = await guarded_request(
            mock_client, LOOPBACK, "POST", "https://localhost:8443/hook?a=1", timeout=5,
            content=b"{}",
        )
        v6 = await guarded_request(
            mock_client, EgressPolicy(["::1/128"]), "GET", "https://[::1]/h", timeout=5
        )
    assert response.status_code == 204 and v6.status_code == 204
    request = captured[0]
    assert request.url.host == "127.0.0.1"
    assert request.url.port == 8443
    assert request.url.raw_path == b"/hook?a=1"
    assert request.headers["Host"] == "localhost:8443"
    assert request.extensions["sni_hostname"] == "localhost"
    assert request.headers["Connection"] == "close"
    assert request.content == b"{}"
    assert str(captured[1].url) == "https://[::1]/h"
    assert captured[1].headers["Host"] == "[::1]"

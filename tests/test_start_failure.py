"""A start that fails part-way leaves nothing behind: the ports it bound are free again, no
task of the bridge is left running, and the store and HTTP client it opened are closed."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from bridge.app import Bridge
from bridge.errors import StoreUnavailable
from bridge.listen import Listeners
from tests.conftest import make_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def tasks_left() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


async def test_a_store_unreachable_after_the_ports_are_bound_frees_them(
    tmp_path: Path,
) -> None:
    smtp, http = free_port(), free_port()
    settings = make_settings(tmp_path, smtp={"host": "127.0.0.1", "port": smtp},
                             http={"host": "127.0.0.1", "port": http},
                             store={"url": f"postgresql://127.0.0.1:{free_port()}/bridge"})
    bridge = Bridge(settings)
    # The error is kept, as a caller reporting it does: nothing may rely on it being dropped.
    with pytest.raises(StoreUnavailable) as failure:
        await bridge.start()
    assert port_is_free(smtp) and port_is_free(http), failure.value
    assert tasks_left() == set()


async def test_a_failure_after_the_workers_started_stops_them_and_frees_the_ports(
    tmp_path: Path,
) -> None:
    # The SMTP certificate is read when the SMTP server starts, after the dispatcher, the
    # relays and the trace recorder are running.
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    smtp, http = free_port(), free_port()
    settings = make_settings(tmp_path, smtp={"host": "127.0.0.1", "port": smtp,
                                             "tls_cert": str(tmp_path / "cert.pem"),
                                             "tls_key": str(tmp_path / "key.pem")},
                             http={"host": "127.0.0.1", "port": http},
                             mail={"smarthost": "127.0.0.1", "smarthost_port": free_port()})
    bridge = Bridge(settings)
    with pytest.raises(ssl.SSLError):
        await bridge.start()
    assert port_is_free(smtp) and port_is_free(http)
    assert tasks_left() == set()
    assert bridge._client is None or bridge._client.is_closed


async def test_an_http_listener_failing_after_smtp_serves_closes_the_smtp_server(
    tmp_path: Path,
) -> None:
    smtp_sock = socket.create_server(("127.0.0.1", 0))
    smtp_sock.setblocking(False)
    smtp = smtp_sock.getsockname()[1]
    not_a_stream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    not_a_stream.bind(("127.0.0.1", 0))
    bridge = Bridge(make_settings(tmp_path), listeners=Listeners([smtp_sock], [not_a_stream]))
    with pytest.raises(ValueError, match="Stream Socket"):
        await bridge.start()
    assert port_is_free(smtp)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", smtp), timeout=1).close()
    assert tasks_left() == set()

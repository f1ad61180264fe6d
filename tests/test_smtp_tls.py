"""STARTTLS: AUTH offered only over TLS, and the STARTTLS command-injection fix
(CVE-2024-34083) kept by a test of ours (aiosmtpd has none upstream)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import aiosmtplib
import pytest

from tests.conftest import BridgeFactory
from tests.smtp_client import RawSmtp

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=sms-bridge.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def test_auth_is_offered_only_after_starttls(
    bridge_factory: BridgeFactory, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    bridge = await bridge_factory(
        smtp={"tls_cert": str(cert), "tls_key": str(key),
              "auth_allow_plaintext_on_loopback": False},
        accounts={"alerts": {"password": "pw", "upstream": "dryrun"}},
    )
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=bridge.smtp_port, timeout=10,
                             tls_context=client_context(), start_tls=False)
    await client.connect()
    await client.ehlo()
    assert client.supports_extension("starttls")
    assert not client.supports_extension("auth")
    await client.starttls()
    await client.ehlo()
    assert client.supports_extension("auth")
    await client.login("alerts", "pw")
    response = await client.sendmail("a@example.com", ["79161234567.alerts@x"], b"\r\nhi")
    assert response[0] == {}
    await client.quit()


async def test_commands_pipelined_after_starttls_are_discarded(
    bridge_factory: BridgeFactory, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    bridge = await bridge_factory(smtp={"tls_cert": str(cert), "tls_key": str(key)})
    client = await RawSmtp.connect(bridge.smtp_port)
    await client.cmd("EHLO attacker")
    # The injected command rides in the same packet as STARTTLS, in clear text.
    await client.write(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n")
    code, _ = await client.reply()
    assert code == 220
    await client.writer.start_tls(client_context())
    # Had the injected MAIL been executed inside the TLS session, its reply (503, no EHLO
    # yet) would come first; the first reply must be the one to this NOOP.
    code, text = await client.cmd("NOOP")
    assert (code, text) == (250, "OK")
    code, _ = await client.cmd("EHLO t")
    assert code == 250
    code, text = await client.cmd("MAIL FROM:<real@example.com>")
    assert code == 250, text
    await client.cmd("QUIT")
    await client.close()

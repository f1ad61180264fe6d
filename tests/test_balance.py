"""``sms-bridge balance``: each provider's account balance, asked through its own API
(SMS Traffic v1 ``operation=account`` 002 l. 1209, v2 ``GET /v2/account`` 002 l. 583,
Devino REST ``GET /User/Balance``, Devino SOAP ``GetBalance`` 001 l. 98) of test doubles."""

from __future__ import annotations

import asyncio
import socket
from decimal import Decimal
from pathlib import Path

import pytest

from bridge.cli import main
from tests.doubles.devino_rest import DevinoRestDouble
from tests.doubles.devino_soap import DevinoSoapDouble
from tests.doubles.smstraffic import SmsTrafficDouble


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_balance_of_every_provider_that_offers_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    async with SmsTrafficDouble(login="acme", password="s3cret", api_key="1837/key") as st, \
            DevinoRestDouble(login="dv", password="pw") as rest, \
            DevinoSoapDouble(login="dv", password="pw") as soap:
        st.account_balance = "-15.5"
        rest.balance = 321.25
        soap.balance = Decimal("77.10")
        config = tmp_path / "bridge.toml"
        config.write_text(f"""
[store]
url = "sqlite:///{tmp_path / 'store.sqlite3'}"
[upstreams.st1]
kind = "smstraffic_v1"
base_url = "{st.url}"
login = "acme"
password = "s3cret"
[upstreams.st2]
kind = "smstraffic_v2"
base_url = "{st.url}"
api_key = "1837/key"
[upstreams.dvr]
kind = "devino_rest"
base_url = "{rest.url}"
login = "dv"
password = "pw"
[upstreams.dvs]
kind = "devino_soap"
base_url = "{soap.url}"
login = "dv"
password = "pw"
[upstreams.down]
kind = "smstraffic_v1"
base_url = "http://127.0.0.1:{closed_port()}"
login = "acme"
password = "s3cret"
timeout = 1.0
""", encoding="utf-8")
        code = await asyncio.to_thread(main, ["--config", str(config), "balance"])
        out = capsys.readouterr().out
        lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
        assert code == 1  # "down" could not be asked
        assert lines["st1"] == ["smstraffic_v1", "-15.5"]
        assert lines["st2"] == ["smstraffic_v2", "-15.5"]
        assert lines["dvr"] == ["devino_rest", "321.25"]
        assert lines["dvs"] == ["devino_soap", "77.10"]
        assert lines["dryrun"][:2] == ["dryrun", "-"]
        assert lines["down"][:2] == ["smstraffic_v1", "?"]
        # v2 asked with its key, v1 with login and password.
        v2_calls = [r for r in st.requests if r.path == "/v2/account"]
        assert [r.headers.get("authorization") for r in v2_calls] == ["Bearer 1837/key"]

        wrong = tmp_path / "wrong.toml"
        wrong.write_text(config.read_text().replace('password = "s3cret"', 'password = "x"', 1),
                         encoding="utf-8")
        assert await asyncio.to_thread(main, ["--config", str(wrong), "balance", "st1"]) == 1
        assert "?" in capsys.readouterr().out
        assert await asyncio.to_thread(main, ["--config", str(config), "balance", "nope"]) == 2
        assert "no such upstream: nope" in capsys.readouterr().err

"""The SMPP link's pure parts: which binds a ``bind_mode`` holds, the hosts of
``smpp://``/``smpps://`` URLs, sender addresses and validity periods (002, "SMPP протокол";
SMPP 3.4)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from bridge.upstreams.smpp.pdu import BIND_RECEIVER, BIND_TRANSCEIVER, BIND_TRANSMITTER

_NUMERIC_SENDER = re.compile(r"\+?[0-9]{1,15}")


@dataclass(frozen=True)
class Role:
    """What one bound session is for."""

    name: str
    command_id: int
    sends: bool
    receives: bool


TRANSCEIVER = Role("transceiver", BIND_TRANSCEIVER, sends=True, receives=True)
TRANSMITTER = Role("transmitter", BIND_TRANSMITTER, sends=True, receives=False)
RECEIVER = Role("receiver", BIND_RECEIVER, sends=False, receives=True)
ROLES = {
    "transceiver": (TRANSCEIVER,),
    "transmitter_receiver": (TRANSMITTER, RECEIVER),
    "transmitter": (TRANSMITTER,),
}


@dataclass(frozen=True)
class Host:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'smpps' if self.tls else 'smpp'}://{self.host}:{self.port}"


def parse_host(url: str) -> Host:
    """``smpp://host:port`` (plain TCP; 4442 at SMS Traffic) or ``smpps://host:port`` (TLS;
    4441) — 002 line 96-97."""
    parts = urlsplit(url)
    if parts.scheme not in ("smpp", "smpps") or not parts.hostname:
        raise ValueError(f"{url!r} is not smpp://HOST:PORT or smpps://HOST:PORT")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: bad port: {exc}") from None
    if port is None:
        raise ValueError(f"{url!r}: the port is required (SMS Traffic: 4442, TLS 4441)")
    return Host(parts.hostname, port, parts.scheme == "smpps")


def relative_validity(seconds: int) -> str:
    """A relative ``validity_period`` (SMPP 3.4 §7.1.1: ``YYMMDDhhmmss`` + ``000R``)."""
    days, rest = divmod(max(0, seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"0000{min(days, 99):02d}{hours:02d}{minutes:02d}{secs:02d}000R"


def source_address(originator: str | None) -> tuple[int, int, str]:
    """TON, NPI and address of the sender (002 Table 2: 1/1 for a numeric sender, 5/0 for an
    alphanumeric one). No sender: an empty address, the SMSC's default."""
    if not originator:
        return 0, 0, ""
    if _NUMERIC_SENDER.fullmatch(originator):
        return 1, 1, originator.lstrip("+")
    return 5, 0, originator
